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
//! "artifacts"}`. A header value of exactly `{{secret:NAME}}` is filled in by the engine with
//! the granted secret `NAME`; the plugin never sees it.

mod http;
mod url;

use std::collections::BTreeMap;
use std::time::Duration;

use nestr_sdk::{Denial, Error, FsAccess, Plugin, PluginInfo, Report, Request, info, warn};
use serde::Deserialize;
use serde_json::json;
use wasi::http::types::Method;

use crate::http::{Failure, Response};
use crate::url::Url;

/// The most of a response body quoted in a summary, in characters.
const MAX_EXCERPT_CHARS: usize = 200;

/// The shortest pause between health checks, so that a typo cannot hammer a server.
const MIN_POLL_INTERVAL_MS: u64 = 100;

const NANOS_PER_SEC: u64 = 1_000_000_000;
const NANOS_PER_MS: u64 = 1_000_000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    /// The deploy hook (required; an `Option` only to say so clearly when it is missing).
    url: Option<String>,
    #[serde(default = "default_method")]
    method: String,
    /// Header name → value; a value may be exactly `{{secret:NAME}}`.
    #[serde(default)]
    headers: BTreeMap<String, String>,
    health_url: Option<String>,
    #[serde(default = "default_health_timeout_secs")]
    health_timeout_secs: u64,
    #[serde(default = "default_poll_interval_ms")]
    poll_interval_ms: u64,
    /// For each request: the hook and every health check.
    #[serde(default = "default_timeout_secs")]
    timeout_secs: u64,
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
    method: Method,
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
        let method = http::method(&config.method).map_err(|e| invalid(format!("`method`: {e}")))?;
        let sends_body = !matches!(method, Method::Get | Method::Head);
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
        Ok(Plan {
            url,
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
    fn describe() -> PluginInfo {
        PluginInfo::new(
            "http-deploy",
            env!("CARGO_PKG_VERSION"),
            "Calls a deploy hook with the step as JSON, then optionally waits for a health URL",
        )
        .http(["*"])
        .secrets(["*"])
        .fs(FsAccess::None)
        .field(
            "url",
            "string",
            true,
            "the deploy hook (http or https); grant its origin",
        )
        .field(
            "method",
            "string",
            false,
            "method of the hook request (default \"POST\")",
        )
        .field(
            "headers",
            "object",
            false,
            "headers of the hook request; a value of exactly \"{{secret:NAME}}\" becomes the \
             granted secret NAME",
        )
        .field(
            "health_url",
            "string",
            false,
            "polled with GET after the hook until it answers 2xx; grant its origin",
        )
        .field(
            "health_timeout_secs",
            "integer",
            false,
            "how long health_url has to answer 2xx (default 120)",
        )
        .field(
            "poll_interval_ms",
            "integer",
            false,
            "pause before each health check (default 1000, at least 100)",
        )
        .field(
            "timeout_secs",
            "integer",
            false,
            "limit of each request (default 30)",
        )
    }

    fn run(request: Request) -> Result<Report, Error> {
        let plan = Plan::new(request.config()?)?;
        let body = if plan.sends_body {
            hook_body(&request).into_bytes()
        } else {
            Vec::new()
        };
        let headers = hook_headers(&plan.headers, &body);
        let hook = http::Request {
            method: &plan.method,
            url: &plan.url,
            headers: &headers,
            body: &body,
        };
        let shown = plan.url.display();

        info!("{} {shown}", http::method_name(&plan.method));
        let started = http::now();
        let answer = match http::send(
            &hook,
            started.saturating_add(secs_to_nanos(plan.timeout_secs)),
        ) {
            Ok(answer) => answer,
            Err(Failure::Denied) => return Err(denied(&plan.url, &plan.secrets)),
            Err(Failure::BadHeader(message)) => return Err(Error::InvalidConfig(message)),
            Err(Failure::TimedOut) => {
                let secs = plan.timeout_secs;
                return Ok(Report::failure(format!(
                    "deploy hook {shown} did not answer within {secs} s"
                )));
            }
            Err(Failure::Other(reason)) => {
                return Ok(Report::failure(format!(
                    "deploy hook {shown} failed: {reason}"
                )));
            }
        };
        let hook_ms = http::now().saturating_sub(started) / NANOS_PER_MS;
        let status = answer.status;
        if !is_success(status) {
            let report = Report::failure(format!(
                "deploy hook {shown} answered {}",
                describe(&answer)
            ));
            return Ok(report
                .metric("hook_status", status)
                .metric("hook_ms", hook_ms));
        }
        info!("deploy hook answered {} in {hook_ms} ms", describe(&answer));

        let report = match &plan.health {
            None => Report::success(format!(
                "deploy hook {shown} answered {} in {hook_ms} ms",
                status_text(status)
            )),
            Some(health) => wait_healthy(health)?,
        };
        Ok(report
            .metric("hook_status", status)
            .metric("hook_ms", hook_ms))
    }
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
    json!({
        "service": request.service.name,
        "repo": request.service.repo,
        "commit": request.commit,
        "branch": request.branch,
        "run_id": request.run_id,
        "operation": request.operation,
        "artifacts": [],
    })
    .to_string()
}

/// Polls the health URL with GET, a pause before each check, until it answers 2xx or its time
/// is up.
fn wait_healthy(health: &Health) -> Result<Report, Error> {
    let shown = health.url.display();
    info!(
        "waiting up to {} s for {shown} to answer 2xx",
        health.timeout_secs
    );
    let check = http::Request {
        method: &Method::Get,
        url: &health.url,
        headers: &[],
        body: &[],
    };
    let started = http::now();
    let deadline = started.saturating_add(secs_to_nanos(health.timeout_secs));
    let pause = health.poll_interval_ms.saturating_mul(NANOS_PER_MS);
    let per_request = secs_to_nanos(health.request_timeout_secs);
    let mut checks: u32 = 0;
    let mut last = String::from("no check ran");
    while http::now().saturating_add(pause) < deadline {
        std::thread::sleep(Duration::from_millis(health.poll_interval_ms));
        checks = checks.saturating_add(1);
        let request_deadline = http::now().saturating_add(per_request).min(deadline);
        let outcome = match http::send(&check, request_deadline) {
            Ok(answer) if is_success(answer.status) => {
                let waited_ms = http::now().saturating_sub(started) / NANOS_PER_MS;
                let status = answer.status;
                info!("health check {checks}: {}", status_text(status));
                let summary = format!(
                    "deployed: {shown} answered {} after {} ({checks} check{})",
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
            Err(Failure::Denied) => return Err(denied(&health.url, &[])),
            Err(Failure::BadHeader(message)) => return Err(Error::Failed(message)),
            Err(Failure::TimedOut) => "no answer in time".to_string(),
            Err(Failure::Other(reason)) => reason,
        };
        // One line per change keeps the log short while a deployment starts up.
        if outcome != last {
            info!("health check {checks}: {outcome}");
            last = outcome;
        }
    }
    let secs = health.timeout_secs;
    warn!("{shown} did not become healthy; last: {last}");
    Ok(Report::failure(format!(
        "health check {shown} did not answer 2xx within {secs} s; last: {last}"
    ))
    .metric("health_checks", checks))
}

/// `12.3 s`.
fn seconds(ms: u64) -> String {
    format!("{}.{} s", ms / 1000, ms % 1000 / 100)
}

/// The denial for a refused request. When headers carry secret placeholders the engine refuses
/// for an ungranted secret too, which the step log then says.
fn denied(url: &Url, secrets: &[String]) -> Error {
    let origin = url.origin();
    if !secrets.is_empty() {
        let list = secrets
            .iter()
            .map(|s| format!("\"{s}\""))
            .collect::<Vec<_>>()
            .join(", ");
        warn!(
            "the engine refused the request to {origin}: grant its origin (http = [\"{origin}\"]) \
             and the secrets its headers use (secrets = [{list}])"
        );
    }
    Error::Denied(Denial {
        capability: "http".to_string(),
        requested: origin.clone(),
        grant: format!("http = [\"{origin}\"]"),
    })
}

fn is_success(status: u16) -> bool {
    (200..300).contains(&status)
}

/// `503 Service Unavailable: <body excerpt>`, plus the target of a redirect.
fn describe(answer: &Response) -> String {
    let mut text = status_text(answer.status);
    if (300..400).contains(&answer.status) {
        match &answer.location {
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

fn secs_to_nanos(secs: u64) -> u64 {
    secs.saturating_mul(NANOS_PER_SEC)
}

/// `text` cut to at most `max` characters, with `…` when cut.
fn shorten(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_string(),
    }
}

nestr_sdk::export!(HttpDeploy);
