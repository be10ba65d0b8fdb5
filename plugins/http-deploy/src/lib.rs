//! The `http-deploy` built-in plugin: the deploy-hook pattern of Render, Vercel, Railway and
//! others. It sends the step's identity as JSON to a hook URL, fails on any answer but 2xx, and
//! can then poll a health URL until the new deployment answers 2xx.
//!
//! ```toml
//! deploy = { plugin = "http-deploy", config = {
//!     url = "https://deploy.example.com/hooks/api",
//!     headers = { Authorization = "{{secret:DEPLOY_TOKEN}}" },
//!     health_url = "https://api.example.com/healthz" } }
//!
//! [plugins.http-deploy]
//! grants = { http = ["https://deploy.example.com", "https://api.example.com"],
//!            secrets = ["DEPLOY_TOKEN"] }
//! ```
//!
//! The hook receives `{"service", "repo", "commit", "branch", "run_id", "operation",
//! "artifacts"}` (and `environment`, `previous`, `rollback` for a deploy to an environment). A
//! rollback (a failed deploy undone by `nestr deploy apply`) is posted to `rollback_url` with
//! `previous`, the version to return to; without one it is the hook again with `commit` set to
//! `previous` (`rolled_back_from`: the version left). A header value
//! of exactly `{{secret:NAME}}` is filled in by the engine with the granted secret `NAME`; the
//! plugin never sees it. Requests go through `nestr_sdk::http`; a refused origin or secret is
//! the engine's denial, passed on as it is. It acts on the world: never cached.

mod url;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use nestr_sdk::http::{self, Response};
use nestr_sdk::{Error, FsAccess, Plugin, PluginInfo, Report, Request, info, warn};
use serde::Deserialize;
use serde_json::json;

use crate::url::Url;

/// The most of a response body quoted in a summary, in characters.
const MAX_EXCERPT_CHARS: usize = 200;

/// The shortest pause between health checks, so that a typo cannot hammer a server.
const MIN_POLL_INTERVAL_MS: u64 = 100;

/// The http-deploy plugin's `config` table.
#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
struct Config {
    /// The deploy hook (http or https); grant its origin.
    #[schemars(required)]
    url: Option<String>,
    /// Method of the hook request (default "POST").
    #[serde(default = "default_method")]
    method: String,
    /// Headers of the hook request; a value of exactly "{{secret:NAME}}" becomes the granted
    /// secret NAME.
    #[serde(default)]
    headers: BTreeMap<String, String>,
    /// Polled with GET after the hook until it answers 2xx; grant its origin.
    health_url: Option<String>,
    /// How long health_url has to answer 2xx (default 120).
    #[serde(default = "default_health_timeout_secs")]
    health_timeout_secs: u64,
    /// Pause before each health check (default 1000, at least 100).
    #[serde(default = "default_poll_interval_ms")]
    poll_interval_ms: u64,
    /// Limit of each request (default 30).
    #[serde(default = "default_timeout_secs")]
    timeout_secs: u64,
    /// Receives a rollback: a POST with the step as JSON and `previous`, the version to return
    /// to (health-checked like a deploy). Without it a rollback redeploys `previous` through `url`.
    rollback_url: Option<String>,
}

fn default_method() -> String {
    "POST".to_string()
}
fn default_health_timeout_secs() -> u64 {
    120
}
fn default_poll_interval_ms() -> u64 {
    1000
}
fn default_timeout_secs() -> u64 {
    30
}

/// The config, checked and parsed.
struct Plan {
    url: Url,
    /// Where a rollback is posted, when configured.
    rollback_url: Option<Url>,
    method: String,
    /// Whether the hook request carries the JSON body (not for GET and HEAD).
    sends_body: bool,
    headers: BTreeMap<String, String>,
    /// Names used by `{{secret:NAME}}` header values.
    secrets: Vec<String>,
    timeout_secs: u64,
    health: Option<Health>,
}

/// What to poll after the hook, and for how long.
struct Health {
    url: Url,
    timeout_secs: u64,
    poll_interval_ms: u64,
    /// Each check's own limit, the hook's `timeout_secs`.
    request_timeout_secs: u64,
}

impl Plan {
    fn new(config: Config) -> Result<Plan, Error> {
        let invalid = |message: String| Error::InvalidConfig(message);
        let Some(url) = &config.url else {
            return Err(invalid(
                "`url` is missing: set the deploy hook, e.g. \
                 config = { url = \"https://deploy.example.com/hooks/api\" }"
                    .into(),
            ));
        };
        let url = Url::parse(url).map_err(|e| invalid(format!("`url` {e}")))?;
        let method = config.method.to_ascii_uppercase();
        let token = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
        if method.is_empty() || !method.chars().all(token) {
            return Err(invalid(format!(
                "`method`: {:?} is not an HTTP method; write e.g. \"POST\"",
                config.method
            )));
        }
        let sends_body = !matches!(method.as_str(), "GET" | "HEAD");
        if config.timeout_secs == 0 {
            return Err(invalid("`timeout_secs` must be at least 1".into()));
        }
        let secrets = check_headers(&config.headers)?;
        let health = match &config.health_url {
            None => None,
            Some(text) => {
                let url = Url::parse(text).map_err(|e| invalid(format!("`health_url` {e}")))?;
                if config.health_timeout_secs == 0 {
                    return Err(invalid("`health_timeout_secs` must be at least 1".into()));
                }
                if config.poll_interval_ms < MIN_POLL_INTERVAL_MS {
                    return Err(invalid(format!(
                        "`poll_interval_ms` must be at least {MIN_POLL_INTERVAL_MS}"
                    )));
                }
                if config.poll_interval_ms >= config.health_timeout_secs.saturating_mul(1000) {
                    return Err(invalid(format!(
                        "`poll_interval_ms` ({}) leaves no time for a health check within \
                         `health_timeout_secs` ({}); make it shorter",
                        config.poll_interval_ms, config.health_timeout_secs
                    )));
                }
                Some(Health {
                    url,
                    timeout_secs: config.health_timeout_secs,
                    poll_interval_ms: config.poll_interval_ms,
                    request_timeout_secs: config.timeout_secs,
                })
            }
        };
        let rollback_url = match &config.rollback_url {
            Some(text) => {
                Some(Url::parse(text).map_err(|e| invalid(format!("`rollback_url` {e}")))?)
            }
            None => None,
        };
        Ok(Plan {
            url,
            rollback_url,
            method,
            sends_body,
            headers: config.headers,
            secrets,
            timeout_secs: config.timeout_secs,
            health,
        })
    }
}

struct HttpDeploy;

impl Plugin for HttpDeploy {
    type Config = Config;

    fn describe() -> PluginInfo {
        PluginInfo::new(
            "http-deploy",
            env!("CARGO_PKG_VERSION"),
            "Calls a deploy hook with the step as JSON, then optionally waits for a health URL",
        )
        .http(["*"])
        .secrets(["*"])
        .fs(FsAccess::None)
        .not_cacheable()
    }

    fn run(request: Request, config: Config) -> Result<Report, Error> {
        let plan = Plan::new(config)?;
        let rollback = request.target.as_ref().is_some_and(|t| t.rollback);
        if rollback
            && request
                .target
                .as_ref()
                .and_then(|t| t.previous.as_ref())
                .is_none()
        {
            return Ok(Report::skipped(
                "nothing to roll back to: no earlier version is recorded",
            ));
        }
        // A rollback goes to `rollback_url` (always a POST), or redeploys the previous version
        // through the hook.
        let (method, url, sends_body) = match (&plan.rollback_url, rollback) {
            (Some(u), true) => ("POST".to_string(), u, true),
            _ => (plan.method.clone(), &plan.url, plan.sends_body),
        };
        let body = if sends_body {
            hook_body(&request).into_bytes()
        } else {
            Vec::new()
        };
        let mut hook = http::request(&method, &url.full())
            .body(body.clone())
            .timeout(Duration::from_secs(plan.timeout_secs));
        for (k, v) in hook_headers(&plan.headers, &body) {
            hook = hook.header(&k, &v);
        }
        let shown = url.display();
        let what = if rollback {
            "rollback hook"
        } else {
            "deploy hook"
        };

        info!("{method} {shown}");
        let started = Instant::now();
        let answer = match hook.send() {
            Ok(answer) => answer,
            Err(Error::Failed(f)) => {
                return Err(Error::failed(format!(
                    "{what} {shown} failed: {}",
                    f.message
                )));
            }
            Err(other) => {
                if let Error::Denied(d) = &other
                    && d.capability == "http"
                    && !plan.secrets.is_empty()
                {
                    warn!(
                        "grant the hook's origin and the secrets its headers use ({})",
                        plan.secrets.join(", ")
                    );
                }
                return Err(other);
            }
        };
        let hook_ms = millis(started);
        let status = answer.status;
        if !answer.is_success() {
            return Err(
                Error::failed(format!("{what} {shown} answered {}", describe(&answer)))
                    .metric("hook_status", status)
                    .metric("hook_ms", hook_ms),
            );
        }
        info!("{what} answered {} in {hook_ms} ms", describe(&answer));

        let report = match &plan.health {
            None => Ok(Report::success(format!(
                "{what} {shown} answered {} in {hook_ms} ms",
                status_text(status)
            ))),
            Some(health) => wait_healthy(health, if rollback { "rolled back" } else { "deployed" }),
        };
        match report {
            Ok(r) => Ok(r.metric("hook_status", status).metric("hook_ms", hook_ms)),
            Err(e) => Err(e.metric("hook_status", status).metric("hook_ms", hook_ms)),
        }
    }
}

/// Milliseconds since `t`.
fn millis(t: Instant) -> u64 {
    u64::try_from(t.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// Checks the configured headers and returns the secret names their placeholders use. A value
/// that mentions a placeholder but is not exactly one would go out literally, so it is refused.
/// Values are never quoted back: one might hold a token.
fn check_headers(headers: &BTreeMap<String, String>) -> Result<Vec<String>, Error> {
    const SET_BY_CLIENT: [&str; 2] = ["host", "content-length"];
    let mut secrets = Vec::new();
    for (name, value) in headers {
        if SET_BY_CLIENT.contains(&name.to_ascii_lowercase().as_str()) {
            return Err(Error::InvalidConfig(format!(
                "header `{name}` is set by the HTTP client; remove it from `headers`"
            )));
        }
        let placeholder = value
            .strip_prefix("{{secret:")
            .and_then(|rest| rest.strip_suffix("}}"));
        match placeholder {
            Some(secret)
                if !secret.is_empty()
                    && secret
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_') =>
            {
                secrets.push(secret.to_string());
            }
            Some(_) => {
                return Err(Error::InvalidConfig(format!(
                    "header `{name}`: the placeholder does not name a secret; write \
                     \"{{{{secret:NAME}}}}\" with the name of a granted secret \
                     (letters, digits, `_`)"
                )));
            }
            None if value.contains("{{secret:") => {
                return Err(Error::InvalidConfig(format!(
                    "header `{name}`: a secret placeholder must be the whole value, or it is \
                     sent as written; store the full value (e.g. \"Bearer …\") in the secret \
                     and write \"{{{{secret:NAME}}}}\""
                )));
            }
            None => {}
        }
    }
    Ok(secrets)
}

/// The configured headers plus `content-type` (when there is a body) and `user-agent`, unless
/// configured.
fn hook_headers(configured: &BTreeMap<String, String>, body: &[u8]) -> Vec<(String, String)> {
    let has = |name: &str| configured.keys().any(|k| k.eq_ignore_ascii_case(name));
    let mut headers: Vec<(String, String)> = configured
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if !body.is_empty() {
        if !has("content-type") {
            headers.push(("content-type".into(), "application/json".into()));
        }
        headers.push(("content-length".into(), body.len().to_string()));
    }
    if !has("user-agent") {
        headers.push((
            "user-agent".into(),
            format!("nestr-http-deploy/{}", env!("CARGO_PKG_VERSION")),
        ));
    }
    headers
}

/// The JSON the hook receives.
fn hook_body(request: &Request) -> String {
    let mut body = json!({
        "service": request.service.name,
        "repo": request.service.repo,
        "commit": request.commit,
        "branch": request.branch,
        "run_id": request.run_id,
        "operation": request.operation,
        "artifacts": [],
    });
    if let (Some(t), Some(o)) = (&request.target, body.as_object_mut()) {
        o.insert("environment".into(), json!(t.environment));
        o.insert("previous".into(), json!(t.previous));
        o.insert("rollback".into(), json!(t.rollback));
        // Redeploying the previous version through the hook: that is the commit to deploy.
        if t.rollback {
            o.insert("commit".into(), json!(t.previous));
            o.insert("rolled_back_from".into(), json!(request.commit));
        }
    }
    body.to_string()
}

/// Polls the health URL with GET, a pause before each check, until it answers 2xx or its time
/// is up.
fn wait_healthy(health: &Health, done: &str) -> Result<Report, Error> {
    let shown = health.url.display();
    info!(
        "waiting up to {} s for {shown} to answer 2xx",
        health.timeout_secs
    );
    let started = Instant::now();
    let limit = Duration::from_secs(health.timeout_secs);
    let pause = Duration::from_millis(health.poll_interval_ms);
    let mut checks: u32 = 0;
    let mut last = String::from("no check ran");
    while started.elapsed() + pause < limit {
        std::thread::sleep(pause);
        checks = checks.saturating_add(1);
        let left = limit.saturating_sub(started.elapsed());
        let each = Duration::from_secs(health.request_timeout_secs).min(left);
        let outcome = match http::get(&health.url.full()).timeout(each).send() {
            Ok(answer) if answer.is_success() => {
                let waited_ms = millis(started);
                let status = answer.status;
                info!("health check {checks}: {}", status_text(status));
                let summary = format!(
                    "{done}: {shown} answered {} after {} ({checks} check{})",
                    status_text(status),
                    seconds(waited_ms),
                    if checks == 1 { "" } else { "s" }
                );
                return Ok(Report::success(summary)
                    .metric("health_status", status)
                    .metric("health_ms", waited_ms)
                    .metric("health_checks", checks));
            }
            Ok(answer) => describe(&answer),
            Err(Error::Failed(f)) => f.message,
            Err(other) => return Err(other),
        };
        // One line per change keeps the log short while a deployment starts up.
        if outcome != last {
            info!("health check {checks}: {outcome}");
            last = outcome;
        }
    }
    let secs = health.timeout_secs;
    warn!("{shown} did not become healthy; last: {last}");
    Err(Error::failed(format!(
        "health check {shown} did not answer 2xx within {secs} s; last: {last}"
    ))
    .metric("health_checks", checks))
}

/// `12.3 s`.
fn seconds(ms: u64) -> String {
    format!("{}.{} s", ms / 1000, ms % 1000 / 100)
}

/// `503 Service Unavailable: <body excerpt>`, plus the target of a redirect.
fn describe(answer: &Response) -> String {
    let mut text = status_text(answer.status);
    if (300..400).contains(&answer.status) {
        match answer.header("location") {
            Some(location) => text.push_str(&format!(
                " (redirects are not followed; point the URL at {})",
                shorten(location, MAX_EXCERPT_CHARS)
            )),
            None => text.push_str(" (redirects are not followed)"),
        }
    }
    let excerpt = String::from_utf8_lossy(&answer.body)
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    if !excerpt.is_empty() {
        text.push_str(": ");
        text.push_str(&shorten(&excerpt, MAX_EXCERPT_CHARS));
    }
    text
}

/// `404 Not Found`; the bare number for codes without a common reason phrase.
fn status_text(status: u16) -> String {
    let reason = match status {
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        422 => "Unprocessable Content",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => return status.to_string(),
    };
    format!("{status} {reason}")
}

/// `text` cut to at most `max` characters, with `…` when cut.
fn shorten(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_string(),
    }
}

nestr_sdk::export!(HttpDeploy);
