//! Turns the raw, spanned manifest into the typed model, collecting every problem with its span:
//! names, references, cycles, pins, repository paths, URLs, plugins and grants.

use std::collections::{HashMap, HashSet};
use std::ops::Range;
use std::path::{Path, PathBuf};

use indexmap::IndexMap;
use toml::Spanned;

use super::diagnostic::{InvalidManifest, Problems};
use super::raw::{
    Named, RawApi, RawCache, RawGrants, RawHealth, RawManifest, RawOperation, RawPlugin, RawRepo,
    RawServiceOperation,
};
use super::{
    ApiSettings, BUILTIN_PLUGINS, CacheSettings, ConfigKey, ConfigSite, DEFAULT_REMOTE_TIMEOUT,
    Environment, EnvironmentService, ExecGrant, FsGrant, Grants, HealthSpec, Manifest,
    OperationSpec, Pin, PluginDecl, PluginSource, RemoteAuth, RemoteCache, Repo, Service,
    remote_url,
};

const NAME_HELP: &str = "names use lower-case letters, digits, `-` and `_`, start with a letter or \
                         digit, and are at most 64 characters long";
/// wasm32 addresses at most 4 GiB.
const MAX_MEMORY_MB: i64 = 4096;
/// Largest `disk_mb` grant (1 TiB).
const MAX_DISK_MB: i64 = 1024 * 1024;
/// Largest `pids` grant.
const MAX_PIDS: i64 = 1 << 22;

pub(crate) fn validate(path: &Path, source: &str) -> Result<Manifest, InvalidManifest> {
    use serde::Deserialize;
    let mut problems = Problems::new(source);
    // The document is parsed once: unknown keys first, all of them (the typed reading below
    // stops at the first), then the typed reading of the same document.
    let raw = toml::de::DeTable::parse(source).and_then(|doc| {
        unknown_keys(doc.get_ref(), &mut problems);
        RawManifest::deserialize(toml::de::Deserializer::from(doc))
    });
    if !problems.list.is_empty() {
        return Err(InvalidManifest::new(path, source, problems.list));
    }
    let raw: RawManifest = match raw {
        Ok(raw) => raw,
        Err(e) => {
            let span = e.span().unwrap_or(0..0);
            let key = source.get(span.clone()).unwrap_or("").trim().to_string();
            let (message, help) = explain_toml_error(e.message(), &key);
            problems.push(span, message, help);
            return Err(InvalidManifest::new(path, source, problems.list));
        }
    };
    let root = path
        .parent()
        .map_or_else(|| PathBuf::from("/"), Path::to_path_buf);

    let mut v = Validator { p: problems };
    let ws = raw.workspace.get_ref();
    v.name(&ws.name, "workspace");

    let repos = v.repos(&raw.repos, source);
    let plugins = v.plugins(&raw.plugins);
    let declared_plugins: HashSet<&str> =
        raw.plugins.keys().map(|k| k.get_ref().as_str()).collect();
    let operations = v.operations(&raw.operations, &declared_plugins);
    let services = v.services(&raw, &declared_plugins);
    v.cycles(&raw);
    let api = v.api(raw.api.as_ref());
    let cache = v.cache(raw.cache.as_ref());
    let environments = v.environments(&raw);

    if !v.p.list.is_empty() {
        return Err(InvalidManifest::new(path, source, v.p.list));
    }
    Ok(Manifest {
        path: path.to_path_buf(),
        root,
        name: ws.name.get_ref().clone(),
        description: ws.description.clone(),
        repos,
        services,
        operations,
        plugins,
        api,
        cache,
        environments,
        source: std::sync::Arc::from(source),
        service_index: Default::default(),
    })
}

/// The keys each table of the manifest takes (in the order `raw.rs` declares them); `config`
/// tables are the plugins' own and take anything.
mod keys {
    pub const ROOT: &[&str] = &[
        "workspace",
        "repos",
        "services",
        "operations",
        "plugins",
        "api",
        "cache",
        "environments",
    ];
    pub const ENVIRONMENT: &[&str] = &[
        "approval",
        "max_parallel",
        "operation",
        "config",
        "health",
        "services",
    ];
    pub const ENVIRONMENT_SERVICE: &[&str] = &["config", "health"];
    pub const HEALTH: &[&str] = &["url", "passes", "failures", "interval", "timeout"];
    pub const WORKSPACE: &[&str] = &["name", "description"];
    pub const REPO: &[&str] = &["url", "branch", "tag", "rev", "path"];
    pub const SERVICE: &[&str] = &["repo", "path", "depends_on", "wire", "tags", "operations"];
    pub const OPERATION: &[&str] = &[
        "plugin",
        "config",
        "concurrency",
        "cache",
        "inputs",
        "outputs",
    ];
    pub const CACHE: &[&str] = &[
        "max_size",
        "remote",
        "remote_read_only",
        "remote_secret",
        "remote_auth",
        "remote_timeout",
    ];
    pub const PLUGIN: &[&str] = &["path", "sha256", "grants"];
    pub const GRANTS: &[&str] = &[
        "exec",
        "env",
        "secrets",
        "http",
        "fs",
        "memory_mb",
        "output_mb",
        "disk_mb",
        "pids",
        "timeout",
    ];
    pub const API: &[&str] = &[
        "cors_origins",
        "rate_limit",
        "max_runs",
        "max_queued",
        "max_connections",
    ];
}

/// Every unknown key of every table of the document, each at its own span.
fn unknown_keys(root: &toml::de::DeTable<'_>, problems: &mut Problems<'_>) {
    use toml::de::{DeTable, DeValue};
    fn check(t: &DeTable<'_>, allowed: &[&str], problems: &mut Problems<'_>) {
        for key in t.keys() {
            let name: &str = key.get_ref();
            if !allowed.contains(&name) {
                let (message, help) = unknown_key(name, allowed);
                problems.push(key.span(), message, Some(help));
            }
        }
    }
    fn table<'a>(t: &'a DeTable<'_>, key: &str) -> Option<&'a DeTable<'a>> {
        t.iter()
            .find(|(k, _)| k.get_ref() == key)
            .and_then(|(_, v)| match v.get_ref() {
                DeValue::Table(t) => Some(t),
                _ => None,
            })
    }
    /// The tables inside a table of named entries (`[repos.NAME]`).
    fn named<'a>(t: Option<&'a DeTable<'a>>) -> impl Iterator<Item = &'a DeTable<'a>> {
        t.into_iter()
            .flat_map(|t| t.values())
            .filter_map(|v| match v.get_ref() {
                DeValue::Table(t) => Some(t),
                _ => None,
            })
    }
    check(root, keys::ROOT, problems);
    if let Some(ws) = table(root, "workspace") {
        check(ws, keys::WORKSPACE, problems);
    }
    for repo in named(table(root, "repos")) {
        check(repo, keys::REPO, problems);
    }
    for svc in named(table(root, "services")) {
        check(svc, keys::SERVICE, problems);
        for op in named(table(svc, "operations")) {
            check(op, keys::OPERATION, problems);
        }
    }
    for op in named(table(root, "operations")) {
        check(op, keys::OPERATION, problems);
    }
    for plugin in named(table(root, "plugins")) {
        check(plugin, keys::PLUGIN, problems);
        if let Some(grants) = table(plugin, "grants") {
            check(grants, keys::GRANTS, problems);
        }
    }
    if let Some(api) = table(root, "api") {
        check(api, keys::API, problems);
    }
    if let Some(cache) = table(root, "cache") {
        check(cache, keys::CACHE, problems);
    }
    for env in named(table(root, "environments")) {
        check(env, keys::ENVIRONMENT, problems);
        if let Some(h) = table(env, "health") {
            check(h, keys::HEALTH, problems);
        }
        for svc in named(table(env, "services")) {
            check(svc, keys::ENVIRONMENT_SERVICE, problems);
            if let Some(h) = table(svc, "health") {
                check(h, keys::HEALTH, problems);
            }
        }
    }
}

/// `unknown key `x``, with "did you mean" over the keys allowed there.
fn unknown_key(field: &str, allowed: &[&str]) -> (String, String) {
    let help = match closest(field, allowed.iter().copied()) {
        Some(b) => format!(
            "did you mean `{b}`? Keys allowed here: {}",
            allowed.join(", ")
        ),
        None if allowed.is_empty() => "remove this key".to_string(),
        None => format!("remove it; keys allowed here: {}", allowed.join(", ")),
    };
    (format!("unknown key `{field}`"), help)
}

/// Rewords the TOML parser's messages into what to do about them.
fn explain_toml_error(message: &str, at: &str) -> (String, Option<String>) {
    let message = message.trim().to_string();
    if let Some(rest) = message.strip_prefix("unknown field `") {
        let (field, expected) = rest.split_once('`').unwrap_or((rest, ""));
        let allowed: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
        let (message, help) = unknown_key(field, &allowed);
        return (message, Some(help));
    }
    if let Some(rest) = message.strip_prefix("missing field `") {
        let field = rest.split('`').next().unwrap_or(rest);
        let help = if field == "workspace" {
            "start the file with a `[workspace]` table holding `name = \"…\"`".to_string()
        } else {
            format!("add `{field} = …` to this table (see docs/manifest.md)")
        };
        return (format!("missing key `{field}`"), Some(help));
    }
    if message.starts_with("duplicate key") {
        let name = at.trim_matches(|c| c == '[' || c == ']' || c == '"');
        return (
            format!("duplicate key `{name}`"),
            Some("every name may appear once: remove or rename one of them".to_string()),
        );
    }
    if message.starts_with("invalid type") {
        let help = if message.contains("expected a sequence") {
            "this key takes a list, e.g. [\"a\", \"b\"]"
        } else if message.contains("expected a string") {
            "this key takes a quoted string"
        } else if message.contains("expected i64") || message.contains("integer") {
            "this key takes a whole number"
        } else if message.contains("expected a map") || message.contains("struct") {
            "this key takes a table, e.g. { key = \"value\" }"
        } else {
            "see docs/manifest.md for the type each key takes"
        };
        return (message, Some(help.to_string()));
    }
    (
        message,
        Some("fix the TOML syntax here (see docs/manifest.md)".to_string()),
    )
}

/// The candidate most like `word`: the best Jaro-Winkler match above 0.8, else one a single edit
/// (or swap of two neighbours) away, which catches typos of short names (`po` for `op`).
pub(crate) fn closest<'a>(
    word: &str,
    candidates: impl Iterator<Item = &'a str> + Clone,
) -> Option<&'a str> {
    candidates
        .clone()
        .map(|c| (strsim::jaro_winkler(word, c), c))
        .filter(|(score, _)| *score > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
        .or_else(|| {
            candidates
                .into_iter()
                .find(|c| strsim::damerau_levenshtein(word, c) <= 1)
        })
}

/// `did you mean `x`?` for the closest candidate, else the list of candidates.
pub fn did_you_mean<'a>(word: &str, candidates: impl Iterator<Item = &'a str> + Clone) -> String {
    let all: Vec<&str> = candidates.clone().collect();
    match closest(word, candidates) {
        Some(best) => format!("did you mean `{best}`?"),
        None if all.is_empty() => "None is defined yet.".to_string(),
        None => format!("Defined: {}.", all.join(", ")),
    }
}

pub fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c.is_ascii_digit())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
        && name.len() <= 64
}

fn suggested_name(name: &str) -> String {
    let s: String = name
        .to_ascii_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    let s = s.trim_start_matches(['-', '_']).to_string();
    if s.is_empty() {
        "my-name".to_string()
    } else {
        s.chars().take(64).collect()
    }
}

/// A size in bytes: a whole number, or a string with a K/M/G/T suffix (powers of 1024; `B`,
/// `iB` and `b` accepted after it): `"2G"`, `"500MiB"`, `"1024"`.
pub(crate) fn parse_size(v: &toml::Value) -> Option<u64> {
    match v {
        toml::Value::Integer(n) => u64::try_from(*n).ok(),
        toml::Value::String(s) => parse_size_text(s),
        _ => None,
    }
}

/// [`parse_size`] of a text (also the CLI's `--max-size`).
pub fn parse_size_text(s: &str) -> Option<u64> {
    let s = s.trim();
    let digits = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(digits);
    let n: u64 = n.parse().ok()?;
    let unit = unit.trim().to_ascii_lowercase();
    let unit = unit
        .strip_suffix("ib")
        .or_else(|| unit.strip_suffix('b'))
        .unwrap_or(&unit);
    let shift = match unit {
        "" => 0,
        "k" => 10,
        "m" => 20,
        "g" => 30,
        "t" => 40,
        _ => return None,
    };
    n.checked_mul(1u64 << shift)
}

fn valid_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit())
}

struct Validator<'s> {
    p: Problems<'s>,
}

impl Validator<'_> {
    /// The `[api]` table: CORS origins (no wildcard) and the rate limit.
    fn api(&mut self, raw: Option<&RawApi>) -> ApiSettings {
        let mut out = ApiSettings::default();
        let Some(raw) = raw else { return out };
        for origin in &raw.cors_origins {
            match normalize_origin(origin.get_ref()) {
                Ok(o) => out.cors_origins.push(o),
                Err(why) => self.p.err(
                    origin.span(),
                    format!("`{}` is not an origin: {why}", origin.get_ref()),
                    "write scheme://host[:port], e.g. \"https://dash.example.com\"; a wildcard is never allowed",
                ),
            }
        }
        if let Some(r) = &raw.rate_limit {
            match u32::try_from(*r.get_ref()) {
                Ok(n) => out.rate_limit = Some(n),
                Err(_) => self.p.err(
                    r.span(),
                    format!("rate_limit {} is out of range", r.get_ref()),
                    "write requests per minute per client address (0 turns the limit off)",
                ),
            }
        }
        let mut count = |v: &Option<Spanned<i64>>, key: &str, min: i64, help: &str| {
            let v = v.as_ref()?;
            match usize::try_from(*v.get_ref()) {
                Ok(n) if *v.get_ref() >= min && n <= 1_000_000 => Some(n),
                _ => {
                    self.p.err(
                        v.span(),
                        format!("{key} {} is out of range", v.get_ref()),
                        help,
                    );
                    None
                }
            }
        };
        out.max_runs = count(
            &raw.max_runs,
            "max_runs",
            1,
            "write how many runs may execute at once (at least 1)",
        );
        out.max_queued = count(
            &raw.max_queued,
            "max_queued",
            0,
            "write how many runs may wait for a slot (0: none wait; a run beyond the slots is refused)",
        );
        out.max_connections = count(
            &raw.max_connections,
            "max_connections",
            1,
            "write how many connections may be open at once (at least 1)",
        );
        out
    }

    /// `inputs`/`outputs` globs: relative to the service folder, never leaving it, compiling.
    fn globs(&mut self, raw: &[Spanned<String>], key: &str) -> Vec<String> {
        let mut out = Vec::new();
        for g in raw {
            let pat = g.get_ref();
            let leaves = pat.starts_with('/') || pat.split('/').any(|part| part == "..");
            if pat.is_empty() || leaves {
                self.p.err(
                    g.span(),
                    format!("`{key}` pattern {pat:?} does not name files inside the service folder"),
                    "write a pattern relative to the service folder, e.g. \"src/**/*.rs\" or \"dist/**\" \
                     (no leading `/`, no `..`)",
                );
                continue;
            }
            if let Err(e) = globset::Glob::new(pat) {
                self.p.err(
                    g.span(),
                    format!("`{key}` pattern {pat:?} does not compile ({})", e.kind()),
                    "write a glob such as \"src/**/*.rs\" (braces and brackets must be closed)",
                );
                continue;
            }
            out.push(pat.clone());
        }
        out
    }

    /// The `[environments.NAME]` tables.
    fn environments(&mut self, raw: &RawManifest) -> IndexMap<String, Environment> {
        let table = |c: &Option<Spanned<Named<toml::Value>>>| {
            let mut out = serde_json::Map::new();
            for (k, v) in c.iter().flat_map(|c| c.get_ref()) {
                out.insert(k.get_ref().clone(), toml_to_json(v.get_ref()));
            }
            out
        };
        let mut out = IndexMap::new();
        for (name, env) in &raw.environments {
            let env = env.get_ref();
            self.name(name, "environment");
            let max_parallel = match &env.max_parallel {
                Some(m) if !(1..=64).contains(m.get_ref()) => {
                    self.p.err(
                        m.span(),
                        format!("max_parallel {} is out of range", m.get_ref()),
                        "write how many services of a wave may deploy at once, from 1 to 64",
                    );
                    1
                }
                Some(m) => u32::try_from(*m.get_ref()).unwrap_or(1),
                None => 1,
            };
            let operation = env
                .operation
                .as_ref()
                .map_or_else(|| "deploy".to_string(), |o| o.get_ref().clone());
            let mut services = IndexMap::new();
            for (svc, o) in &env.services {
                let o = o.get_ref();
                if raw.services.keys().all(|k| k.get_ref() != svc.get_ref()) {
                    self.p.err(
                        svc.span(),
                        format!(
                            "environment `{}` configures `{}`, which is not a service",
                            name.get_ref(),
                            svc.get_ref()
                        ),
                        did_you_mean(
                            svc.get_ref(),
                            raw.services.keys().map(|k| k.get_ref().as_str()),
                        ),
                    );
                }
                let health = o.health.as_ref().and_then(|h| self.health(h));
                services.insert(
                    svc.get_ref().clone(),
                    EnvironmentService {
                        config: table(&o.config),
                        health,
                    },
                );
            }
            let health = env.health.as_ref().and_then(|h| self.health(h));
            out.insert(
                name.get_ref().clone(),
                Environment {
                    name: name.get_ref().clone(),
                    approval: env.approval.as_ref().is_some_and(|a| *a.get_ref()),
                    max_parallel,
                    operation,
                    config: table(&env.config),
                    health,
                    services,
                },
            );
        }
        out
    }

    /// A `health = { … }` gate.
    fn health(&mut self, raw: &Spanned<RawHealth>) -> Option<HealthSpec> {
        let h = raw.get_ref();
        let url = h.url.get_ref();
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            self.p.err(
                h.url.span(),
                format!("health `url` {url:?} is not an http:// or https:// URL"),
                "write the URL the engine polls after each deploy, e.g. \
                 \"https://{service}.staging.example.com/healthz\"",
            );
            return None;
        }
        let count = |v: &Option<Spanned<i64>>, what: &str, default: u32, p: &mut Problems| match v {
            Some(n) if !(1..=100).contains(n.get_ref()) => {
                p.err(
                    n.span(),
                    format!("health `{what}` {} is out of range", n.get_ref()),
                    "write a whole number from 1 to 100",
                );
                default
            }
            Some(n) => u32::try_from(*n.get_ref()).unwrap_or(default),
            None => default,
        };
        let passes = count(&h.passes, "passes", 3, &mut self.p);
        let failures = count(&h.failures, "failures", 3, &mut self.p);
        let duration =
            |v: &Option<Spanned<String>>, what: &str, default: u64, p: &mut Problems| match v {
                Some(d) => match humantime::parse_duration(d.get_ref()) {
                    Ok(d) if !d.is_zero() => d,
                    _ => {
                        p.err(
                            d.span(),
                            format!("health `{what}` {:?} is not a duration", d.get_ref()),
                            "write a duration such as \"2s\", \"500ms\" or \"2m\"",
                        );
                        std::time::Duration::from_secs(default)
                    }
                },
                None => std::time::Duration::from_secs(default),
            };
        let interval = duration(&h.interval, "interval", 2, &mut self.p);
        let timeout = duration(&h.timeout, "timeout", 120, &mut self.p);
        Some(HealthSpec {
            url: url.clone(),
            passes,
            failures,
            interval,
            timeout,
        })
    }

    /// The `[cache]` table: the local store's size bound.
    fn cache(&mut self, raw: Option<&RawCache>) -> CacheSettings {
        let mut out = CacheSettings::default();
        let Some(raw) = raw else { return out };
        if let Some(v) = &raw.max_size {
            match parse_size(v.get_ref()) {
                Some(n) if n > 0 => out.max_size = Some(n),
                _ => self.p.err(
                    v.span(),
                    "`max_size` is not a size",
                    "write a size such as \"2G\", \"500M\" or a number of bytes",
                ),
            }
        }
        let remote_keys = [
            raw.remote_read_only.as_ref().map(|v| v.span()),
            raw.remote_secret.as_ref().map(|v| v.span()),
            raw.remote_auth.as_ref().map(|v| v.span()),
            raw.remote_timeout.as_ref().map(|v| v.span()),
        ];
        let Some(url) = &raw.remote else {
            if let Some(span) = remote_keys.into_iter().flatten().next() {
                self.p.err(
                    span,
                    "a remote cache setting without `remote`",
                    "add `remote = \"https://cache.example.com/nestr\"` (the server's URL) or remove it",
                );
            }
            return out;
        };
        let mut remote = RemoteCache {
            url: String::new(),
            read_only: raw.remote_read_only.as_ref().is_some_and(|v| *v.get_ref()),
            secret: None,
            auth: RemoteAuth::Bearer,
            timeout: DEFAULT_REMOTE_TIMEOUT,
        };
        match remote_url(url.get_ref()) {
            Ok(u) => remote.url = u,
            Err(why) => self.p.err(
                url.span(),
                format!("`remote` {why}"),
                "write the cache server's URL, such as \"https://cache.example.com/nestr\"; a \
                 credential goes in `remote_secret`",
            ),
        }
        if let Some(s) = &raw.remote_secret {
            if valid_env_name(s.get_ref()) {
                remote.secret = Some(s.get_ref().clone());
            } else {
                self.p.err(
                    s.span(),
                    "`remote_secret` is not an environment variable name",
                    "name the environment variable that holds the credential, such as \"NESTR_CACHE_TOKEN\"",
                );
            }
        }
        if let Some(a) = &raw.remote_auth {
            match a.get_ref().as_str() {
                "bearer" => remote.auth = RemoteAuth::Bearer,
                "basic" => remote.auth = RemoteAuth::Basic,
                other => self.p.err(
                    a.span(),
                    format!("unknown `remote_auth` {other:?}"),
                    "write \"bearer\" (the secret is a token) or \"basic\" (the secret is user:password)",
                ),
            }
            if remote.secret.is_none() && raw.remote_secret.is_none() {
                self.p.err(
                    a.span(),
                    "`remote_auth` without `remote_secret`",
                    "add `remote_secret = \"VARIABLE\"`, the environment variable holding the credential",
                );
            }
        }
        if let Some(t) = &raw.remote_timeout {
            match humantime::parse_duration(t.get_ref()) {
                Ok(d) if !d.is_zero() && d <= std::time::Duration::from_secs(600) => {
                    remote.timeout = d;
                }
                _ => self.p.err(
                    t.span(),
                    "`remote_timeout` is not a duration from 1ms to 10m",
                    "write a duration such as \"5s\" or \"500ms\"",
                ),
            }
        }
        if !remote.url.is_empty() {
            out.remote = Some(remote);
        }
        out
    }

    fn name(&mut self, name: &Spanned<String>, what: &str) -> bool {
        if valid_name(name.get_ref()) {
            return true;
        }
        self.p.err(
            name.span(),
            format!("invalid {what} name `{}`", name.get_ref()),
            format!(
                "write `{}` instead: {NAME_HELP}",
                suggested_name(name.get_ref())
            ),
        );
        false
    }

    fn repos(&mut self, raw: &Named<RawRepo>, source: &str) -> Vec<Repo> {
        let mut repos = Vec::new();
        let mut paths: Vec<(Vec<String>, Range<usize>, String)> = Vec::new();
        let lines = super::diagnostic::Lines::of(source);
        for (name, repo) in raw {
            self.name(name, "repository");
            let r = repo.get_ref();
            self.url(&r.url);
            let pin = self.pin(name.get_ref(), r);
            let path_raw = r.path.as_ref();
            let rel = match path_raw {
                Some(p) => self.rel_path(p, "repository path", false),
                None => Some(PathBuf::from(name.get_ref())),
            };
            let Some(rel) = rel else { continue };
            let components: Vec<String> = rel
                .iter()
                .map(|c| c.to_string_lossy().into_owned())
                .collect();
            let span = path_raw.map_or_else(|| name.span(), Spanned::span);
            if components.first().is_some_and(|c| c == ".nestr") {
                self.p.err(
                    span.clone(),
                    format!(
                        "repository path `{}` is inside nestr's state folder",
                        rel.display()
                    ),
                    "choose a path that does not start with `.nestr`",
                );
            }
            for (other, other_span, other_name) in &paths {
                let lower = |v: &[String]| v.iter().map(|c| c.to_lowercase()).collect::<Vec<_>>();
                let (a, b) = (lower(&components), lower(other));
                let line = lines.line(other_span.start);
                if a == b {
                    self.p.err(
                        span.clone(),
                        format!(
                            "repository `{}` has the same path `{}` as repository `{other_name}` \
                             (line {line})",
                            name.get_ref(),
                            rel.display()
                        ),
                        "give each repository a folder of its own with `path = \"…\"`",
                    );
                } else if a.starts_with(&b) || b.starts_with(&a) {
                    let (inner, outer) = if a.len() > b.len() {
                        (name.get_ref().as_str(), other_name.as_str())
                    } else {
                        (other_name.as_str(), name.get_ref().as_str())
                    };
                    self.p.err(
                        span.clone(),
                        format!(
                            "repository `{inner}` would be nested inside repository `{outer}` \
                             (paths `{}` and `{}`, line {line})",
                            rel.display(),
                            other.join("/")
                        ),
                        "repositories may not contain each other: give them sibling paths",
                    );
                }
            }
            paths.push((components, span, name.get_ref().clone()));
            let line = lines.line(name.span().start);
            repos.push(Repo {
                name: name.get_ref().clone(),
                url: r.url.get_ref().clone(),
                pin,
                path: rel,
                line,
            });
        }
        repos
    }

    fn pin(&mut self, repo: &str, r: &RawRepo) -> Pin {
        let set: Vec<(&str, &Spanned<String>)> =
            [("branch", &r.branch), ("tag", &r.tag), ("rev", &r.rev)]
                .into_iter()
                .filter_map(|(k, v)| v.as_ref().map(|v| (k, v)))
                .collect();
        if set.len() > 1 {
            let keys: Vec<&str> = set.iter().map(|(k, _)| *k).collect();
            self.p.err(
                set[1].1.span(),
                format!(
                    "repository `{repo}` sets {}: only one may be given",
                    keys.join(" and ")
                ),
                format!("keep only one of `{}`", keys.join("`, `")),
            );
        }
        match set.first() {
            None => Pin::Default,
            Some(("rev", v)) => {
                let rev = v.get_ref();
                if !is_hex(rev, 40) {
                    self.p.err(
                        v.span(),
                        format!("rev `{rev}` is not a full commit id"),
                        "write the full 40-character hex id (`git rev-parse REV` prints it), \
                         or use `branch = \"…\"` / `tag = \"…\"` instead",
                    );
                }
                Pin::Rev(rev.to_ascii_lowercase())
            }
            Some((kind, v)) => {
                let name = v.get_ref();
                let full = if *kind == "branch" {
                    format!("refs/heads/{name}")
                } else {
                    format!("refs/tags/{name}")
                };
                if name.starts_with('-') || !git2::Reference::is_valid_name(&full) {
                    self.p.err(
                        v.span(),
                        format!("`{name}` is not a valid git {kind} name"),
                        format!(
                            "write the {kind} name as git shows it (no spaces, `..`, `~`, `^`, \
                             `:`, `?`, `*`, `[` or leading `-`)"
                        ),
                    );
                }
                if *kind == "branch" {
                    Pin::Branch(name.clone())
                } else {
                    Pin::Tag(name.clone())
                }
            }
        }
    }

    fn url(&mut self, url: &Spanned<String>) {
        let u = url.get_ref();
        let span = url.span();
        let shown = crate::redact::url(u);
        if u.trim().is_empty() {
            self.p.err(
                span,
                "the repository url is empty",
                "write the clone URL or a local path",
            );
            return;
        }
        if u.chars().any(char::is_control) {
            self.p.err(
                span,
                "the repository url contains control characters",
                "remove newlines, tabs and other control characters from the URL",
            );
            return;
        }
        if u.starts_with('-') {
            self.p.err(
                span,
                format!("the repository url `{shown}` starts with `-`"),
                "a URL may not start with `-` (git would read it as an option); \
                 write `./-name` for a local folder with such a name",
            );
            return;
        }
        if let Some((transport, _)) = u.split_once("::")
            && !transport.is_empty()
            && transport
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "+.-_".contains(c))
        {
            let why = if transport.eq_ignore_ascii_case("ext") {
                "the `ext::` transport runs an arbitrary command and is refused".to_string()
            } else {
                format!("the `{transport}::` remote-helper transport is not supported")
            };
            self.p.err(
                span,
                format!("the repository url `{shown}` uses a remote-helper transport: {why}"),
                "use an https://, ssh://, git://, file:// URL, `user@host:path`, or a local path",
            );
            return;
        }
        if let Some((scheme, _)) = u.split_once("://") {
            let scheme = scheme.to_ascii_lowercase();
            let ok = ["https", "http", "ssh", "git", "file", "git+ssh", "ssh+git"];
            if !ok.contains(&scheme.as_str()) {
                self.p.err(
                    span,
                    format!("the repository url `{shown}` uses the unsupported scheme `{scheme}`"),
                    "use https://, http://, ssh://, git://, file://, `user@host:path` or a \
                     local path",
                );
            }
        }
    }

    /// A relative path that stays inside its base folder; returns it normalised.
    fn rel_path(&mut self, p: &Spanned<String>, what: &str, allow_dot: bool) -> Option<PathBuf> {
        let base = if allow_dot {
            "the repository's folder"
        } else {
            "the workspace folder"
        };
        let s = p.get_ref();
        let span = p.span();
        let fail = |v: &mut Self, message: String, help: String| {
            v.p.err(span.clone(), message, help);
            None
        };
        if s.chars().any(char::is_control) {
            return fail(
                self,
                format!("{what} contains control characters"),
                "remove them".into(),
            );
        }
        if s.starts_with('/') || s.starts_with('~') || s.contains('\\') || s.get(1..2) == Some(":")
        {
            return fail(
                self,
                format!("{what} `{s}` is not a relative path"),
                format!("write a path relative to {base}, with `/` separators, e.g. `repos/api`"),
            );
        }
        let mut parts = Vec::new();
        for c in s.split('/') {
            match c {
                "" | "." => {}
                ".." => {
                    return fail(
                        self,
                        format!("{what} `{s}` contains `..` and could leave {base}"),
                        format!("write a path inside {base} without `..`"),
                    );
                }
                c if c.eq_ignore_ascii_case(".git") => {
                    return fail(
                        self,
                        format!("{what} `{s}` names a `.git` folder"),
                        "`.git` folders belong to git: choose another folder name".into(),
                    );
                }
                c => parts.push(c),
            }
        }
        if parts.is_empty() && !allow_dot {
            return fail(
                self,
                format!("{what} `{s}` is the workspace folder itself"),
                "write a sub-folder, e.g. `repos/NAME`".into(),
            );
        }
        Some(if parts.is_empty() {
            PathBuf::from(".")
        } else {
            parts.iter().collect()
        })
    }

    fn operations(
        &mut self,
        raw: &Named<RawOperation>,
        plugins: &HashSet<&str>,
    ) -> IndexMap<String, OperationSpec> {
        let mut out = IndexMap::new();
        for (name, op) in raw {
            self.name(name, "operation");
            if let Some(spec) = self.operation(op.get_ref(), plugins) {
                out.insert(name.get_ref().clone(), spec);
            }
        }
        out
    }

    fn operation(&mut self, op: &RawOperation, plugins: &HashSet<&str>) -> Option<OperationSpec> {
        let plugin = op.plugin.get_ref();
        if !BUILTIN_PLUGINS.contains(&plugin.as_str()) && !plugins.contains(plugin.as_str()) {
            let known = BUILTIN_PLUGINS
                .iter()
                .copied()
                .chain(plugins.iter().copied());
            self.p.err(
                op.plugin.span(),
                format!("unknown plugin `{plugin}`"),
                format!(
                    "{} Built-in plugins: {}; others need a `[plugins.{plugin}]` table with \
                     `path = \"….wasm\"`",
                    did_you_mean(plugin, known),
                    BUILTIN_PLUGINS.join(", ")
                ),
            );
        }
        let concurrency = match &op.concurrency {
            Some(c) if *c.get_ref() < 1 || *c.get_ref() > 1024 => {
                self.p.err(
                    c.span(),
                    format!("concurrency {} is out of range", c.get_ref()),
                    "write a whole number from 1 to 1024",
                );
                None
            }
            Some(c) => u32::try_from(*c.get_ref()).ok(),
            None => None,
        };
        let mut config = serde_json::Map::new();
        let mut site = ConfigSite {
            table: op.plugin.span(),
            keys: Vec::new(),
        };
        if let Some(c) = &op.config {
            site.table = c.span();
            for (k, v) in c.get_ref() {
                config.insert(k.get_ref().clone(), toml_to_json(v.get_ref()));
                site.keys.push(ConfigKey {
                    name: k.get_ref().clone(),
                    key: k.span(),
                    value: v.span(),
                });
            }
        }
        let inputs = op.inputs.as_ref().map(|globs| self.globs(globs, "inputs"));
        let outputs = self.globs(&op.outputs, "outputs");
        Some(OperationSpec {
            plugin: plugin.clone(),
            config: serde_json::Value::Object(config),
            concurrency,
            cache: op.cache.as_ref().is_some_and(|c| *c.get_ref()),
            cache_site: op.cache.as_ref().map(|c| c.span()),
            inputs,
            outputs,
            site,
        })
    }

    fn services(&mut self, raw: &RawManifest, plugins: &HashSet<&str>) -> Vec<Service> {
        let repo_names = || raw.repos.keys().map(|k| k.get_ref().as_str());
        let service_names = || raw.services.keys().map(|k| k.get_ref().as_str());
        let repo_set: HashSet<&str> = repo_names().collect();
        let service_set: HashSet<&str> = service_names().collect();
        let mut services = Vec::new();
        for (name, svc) in &raw.services {
            self.name(name, "service");
            let s = svc.get_ref();
            let repo = s.repo.get_ref();
            if !repo_set.contains(repo.as_str()) {
                self.p.err(
                    s.repo.span(),
                    format!(
                        "service `{}` names repository `{repo}`, which is not defined",
                        name.get_ref()
                    ),
                    format!(
                        "{} Add a `[repos.{repo}]` table or name an existing repository",
                        did_you_mean(repo, repo_names())
                    ),
                );
            }
            let path = match &s.path {
                Some(p) => self.rel_path(p, "service path", true),
                None => Some(PathBuf::from(".")),
            };
            let mut seen = HashSet::new();
            for dep in &s.depends_on {
                let d = &dep.get_ref().service;
                if !seen.insert(d) {
                    self.p.err(
                        dep.span(),
                        format!("`{d}` appears twice in depends_on"),
                        "list each dependency once",
                    );
                } else if !service_set.contains(d.as_str()) {
                    self.p.err(
                        dep.span(),
                        format!(
                            "service `{}` depends on `{d}`, which is not a service",
                            name.get_ref()
                        ),
                        format!(
                            "{} Add a `[services.{d}]` table or remove it from depends_on",
                            did_you_mean(d, service_names())
                        ),
                    );
                }
            }
            let mut tags_seen = HashSet::new();
            for tag in &s.tags {
                if self.name(tag, "tag") && !tags_seen.insert(tag.get_ref()) {
                    self.p.err(
                        tag.span(),
                        format!("tag `{}` appears twice", tag.get_ref()),
                        "list each tag once",
                    );
                }
            }
            let mut operations = IndexMap::new();
            let mut opted_out = Vec::new();
            for (op_name, op) in &s.operations {
                self.name(op_name, "operation");
                let n = op_name.get_ref();
                match op.get_ref() {
                    RawServiceOperation::Own(o) => {
                        if let Some(spec) = self.operation(o, plugins) {
                            operations.insert(n.clone(), spec);
                        }
                    }
                    RawServiceOperation::Switch(false) if raw.operations.keys().any(|k| k.get_ref() == n) => {
                        opted_out.push(n.clone());
                    }
                    RawServiceOperation::Switch(false) => self.p.err(
                        op.span(),
                        format!(
                            "service `{}` turns off `{n}`, but there is no workspace-wide `[operations.{n}]` to turn off",
                            name.get_ref()
                        ),
                        format!(
                            "`{n} = false` opts a service out of a default; remove it, or define the default. {}",
                            did_you_mean(n, raw.operations.keys().map(|k| k.get_ref().as_str()))
                        ),
                    ),
                    RawServiceOperation::Switch(true) => self.p.err(
                        op.span(),
                        format!("`{n} = true` does not define an operation"),
                        format!(
                            "define it with `{n} = {{ plugin = \"…\" }}`, or write `{n} = false` to opt this service out of the workspace default"
                        ),
                    ),
                }
            }
            services.push(Service {
                name: name.get_ref().clone(),
                repo: repo.clone(),
                path: path.unwrap_or_else(|| PathBuf::from(".")),
                depends_on: s
                    .depends_on
                    .iter()
                    .map(|d| d.get_ref().service.clone())
                    .collect(),
                wired: s
                    .depends_on
                    .iter()
                    .filter(|d| d.get_ref().wire || s.wire.as_ref().is_some_and(|w| *w.get_ref()))
                    .map(|d| d.get_ref().service.clone())
                    .collect(),
                tags: s.tags.iter().map(|t| t.get_ref().clone()).collect(),
                operations,
                opted_out,
            });
        }
        services
    }

    /// Reports every dependency cycle once, with its whole path, at the edge that closes it.
    fn cycles(&mut self, raw: &RawManifest) {
        let names: Vec<&str> = raw.services.keys().map(|k| k.get_ref().as_str()).collect();
        let index: HashMap<&str, usize> = names.iter().enumerate().map(|(i, n)| (*n, i)).collect();
        let edges: Vec<Vec<(usize, Range<usize>)>> = raw
            .services
            .values()
            .map(|s| {
                s.get_ref()
                    .depends_on
                    .iter()
                    .filter_map(|d| {
                        index
                            .get(d.get_ref().service.as_str())
                            .map(|&i| (i, d.span()))
                    })
                    .collect()
            })
            .collect();
        // 0 = unvisited, 1 = on the current path, 2 = done.
        let mut state = vec![0u8; names.len()];
        let mut reported: HashSet<Vec<usize>> = HashSet::new();
        for start in 0..names.len() {
            if state[start] != 0 {
                continue;
            }
            let mut path = vec![start];
            let mut stack = vec![(start, 0usize)];
            state[start] = 1;
            while let Some((node, next)) = stack.last_mut() {
                let node = *node;
                if let Some((to, span)) = edges[node].get(*next).cloned() {
                    *next += 1;
                    match state[to] {
                        0 => {
                            state[to] = 1;
                            path.push(to);
                            stack.push((to, 0));
                        }
                        1 => {
                            let from = path.iter().position(|&n| n == to).unwrap_or(0);
                            let cycle: Vec<usize> = path[from..].to_vec();
                            let mut key = cycle.clone();
                            key.sort_unstable();
                            if reported.insert(key) {
                                let mut shown: Vec<&str> =
                                    cycle.iter().map(|&i| names[i]).collect();
                                shown.push(names[to]);
                                self.p.err(
                                    span,
                                    format!("dependency cycle: {}", shown.join(" -> ")),
                                    "services cannot depend on themselves, directly or through \
                                     others: remove one of these depends_on entries",
                                );
                            }
                        }
                        _ => {}
                    }
                } else {
                    state[node] = 2;
                    path.pop();
                    stack.pop();
                }
            }
        }
    }

    fn plugins(&mut self, raw: &Named<RawPlugin>) -> IndexMap<String, PluginDecl> {
        let mut out = IndexMap::new();
        for (name, plugin) in raw {
            self.name(name, "plugin");
            let p = plugin.get_ref();
            let n = name.get_ref();
            let builtin = BUILTIN_PLUGINS.contains(&n.as_str());
            let source = if builtin {
                for (key, v) in [("path", &p.path), ("sha256", &p.sha256)] {
                    if let Some(v) = v {
                        self.p.err(
                            v.span(),
                            format!("`{n}` is a built-in plugin and takes no `{key}`"),
                            format!(
                                "remove `{key}` to use the built-in `{n}`, or give your plugin \
                                 another name"
                            ),
                        );
                    }
                }
                PluginSource::Builtin
            } else {
                let path = match &p.path {
                    Some(path) if path.get_ref().trim().is_empty() => {
                        self.p.err(
                            path.span(),
                            "the plugin path is empty",
                            "write the path of the .wasm file",
                        );
                        PathBuf::new()
                    }
                    Some(path) => PathBuf::from(path.get_ref()),
                    None => {
                        self.p.err(
                            name.span(),
                            format!("plugin `{n}` has no `path`"),
                            format!(
                                "add `path = \"plugins/{n}.wasm\"` (relative to nestr.toml), or \
                                 use one of the built-in plugins: {}",
                                BUILTIN_PLUGINS.join(", ")
                            ),
                        );
                        PathBuf::new()
                    }
                };
                let sha256 = p.sha256.as_ref().map(|s| {
                    if !is_hex(s.get_ref(), 64) {
                        self.p.err(
                            s.span(),
                            "sha256 must be 64 hex characters",
                            "write the output of `sha256sum FILE.wasm` (the first field)",
                        );
                    }
                    s.get_ref().to_ascii_lowercase()
                });
                PluginSource::File { path, sha256 }
            };
            let grants = p
                .grants
                .as_ref()
                .map(|g| self.grants(g.get_ref()))
                .unwrap_or_default();
            out.insert(
                n.clone(),
                PluginDecl {
                    name: n.clone(),
                    source,
                    grants,
                },
            );
        }
        out
    }

    fn grants(&mut self, g: &RawGrants) -> Grants {
        let mut out = Grants::default();
        for e in &g.exec {
            if let Some(grant) = self.exec_grant(e) {
                out.exec.push(grant);
            }
        }
        for (list, into, what) in [
            (&g.env, &mut out.env, "env"),
            (&g.secrets, &mut out.secrets, "secrets"),
        ] {
            for v in list {
                if valid_env_name(v.get_ref()) {
                    into.push(v.get_ref().clone());
                } else {
                    self.p.err(
                        v.span(),
                        format!(
                            "`{}` is not an environment variable name ({what})",
                            v.get_ref()
                        ),
                        "write the variable's name only (letters, digits and `_`), not its value",
                    );
                }
            }
        }
        for origin in &g.http {
            match normalize_origin(origin.get_ref()) {
                Ok(o) => out.http.push(o),
                Err(why) => self.p.err(
                    origin.span(),
                    format!("`{}` is not an origin: {why}", origin.get_ref()),
                    "write scheme://host[:port], e.g. \"https://deploy.example.com\"",
                ),
            }
        }
        if let Some(fs) = &g.fs {
            out.fs = match fs.get_ref().as_str() {
                "none" => FsGrant::None,
                "read-only" => FsGrant::ReadOnly,
                "read-write" => FsGrant::ReadWrite,
                other => {
                    self.p.err(
                        fs.span(),
                        format!("unknown fs grant `{other}`"),
                        "write \"none\", \"read-only\" or \"read-write\"",
                    );
                    FsGrant::ReadOnly
                }
            };
        }
        if let Some(m) = &g.memory_mb {
            let v = *m.get_ref();
            if (1..=MAX_MEMORY_MB).contains(&v) {
                out.memory_mb = u64::try_from(v).ok();
            } else {
                self.p.err(
                    m.span(),
                    format!("memory_mb {v} is out of range"),
                    format!("write a whole number of MiB from 1 to {MAX_MEMORY_MB}"),
                );
            }
        }
        for (value, into, what, max, unit) in [
            (
                &g.output_mb,
                &mut out.output_mb,
                "output_mb",
                MAX_MEMORY_MB,
                "MiB",
            ),
            (&g.disk_mb, &mut out.disk_mb, "disk_mb", MAX_DISK_MB, "MiB"),
            (&g.pids, &mut out.pids, "pids", MAX_PIDS, "processes"),
        ] {
            if let Some(m) = value {
                let v = *m.get_ref();
                if (1..=max).contains(&v) {
                    *into = u64::try_from(v).ok();
                } else {
                    self.p.err(
                        m.span(),
                        format!("{what} {v} is out of range"),
                        format!("write a whole number of {unit} from 1 to {max}"),
                    );
                }
            }
        }
        if let Some(t) = &g.timeout {
            match humantime::parse_duration(t.get_ref()) {
                Ok(d) if !d.is_zero() => out.timeout = Some(d),
                _ => self.p.err(
                    t.span(),
                    format!("`{}` is not a duration", t.get_ref()),
                    "write a positive duration such as \"90s\", \"5m\" or \"1h 30m\"",
                ),
            }
        }
        out
    }

    fn exec_grant(&mut self, e: &Spanned<toml::Value>) -> Option<ExecGrant> {
        let help = "write a program name such as \"make\", an absolute path, or \
                    { program = \"cargo\", args = [\"build\", \"test*\"] }";
        let (program, args) = match e.get_ref() {
            toml::Value::String(s) => (s.clone(), Vec::new()),
            toml::Value::Table(t) => {
                let unknown: Vec<&String> = t
                    .keys()
                    .filter(|k| *k != "program" && *k != "args")
                    .collect();
                let program = t.get("program").and_then(|v| v.as_str());
                let args = t.get("args").map(|a| {
                    a.as_array().map(|a| {
                        a.iter()
                            .map(|v| v.as_str().map(str::to_owned))
                            .collect::<Option<Vec<_>>>()
                    })
                });
                match (program, args, unknown.is_empty()) {
                    (Some(p), None, true) => (p.to_string(), Vec::new()),
                    (Some(p), Some(Some(Some(a))), true) if a.is_empty() => {
                        self.p.err(
                            e.span(),
                            format!("exec grant `{p}` has an empty `args` list"),
                            "list the argument patterns to allow, e.g. args = [\"build\", \"--release\"], \
                             or leave `args` out to allow any arguments",
                        );
                        return None;
                    }
                    (Some(p), Some(Some(Some(a))), true) => {
                        let broken: Vec<String> = a
                            .iter()
                            .filter_map(|pat| {
                                globset::Glob::new(pat)
                                    .err()
                                    .map(|err| format!("{pat:?} ({})", err.kind()))
                            })
                            .collect();
                        if !broken.is_empty() {
                            self.p.err(
                                e.span(),
                                format!(
                                    "argument pattern{} of `{p}` do{} not compile: {}",
                                    if broken.len() == 1 { "" } else { "s" },
                                    if broken.len() == 1 { "es" } else { "" },
                                    broken.join(", ")
                                ),
                                "write glob patterns such as \"build\", \"--features=*\" or \"{build,test}\" \
                                 (braces and brackets must be closed; escape a literal one as [{] or [[])",
                            );
                            return None;
                        }
                        (p.to_string(), a)
                    }
                    _ => {
                        self.p.err(e.span(), "invalid exec grant", help);
                        return None;
                    }
                }
            }
            _ => {
                self.p.err(e.span(), "invalid exec grant", help);
                return None;
            }
        };
        let bad = program.is_empty()
            || program.chars().any(char::is_control)
            || (program.contains('/') && !program.starts_with('/'));
        if bad {
            self.p.err(
                e.span(),
                format!("exec grant `{program}` is neither a program name nor an absolute path"),
                help,
            );
            return None;
        }
        Some(ExecGrant { program, args })
    }
}

/// The origin a URL names, as the `url` crate serialises it (WHATWG rules: lower case,
/// punycode, default port dropped): `https://Host:443/` → `https://host`. The engine compares
/// granted and requested origins in this one form.
pub fn origin_of_url(url: &url::Url) -> Option<String> {
    matches!(url.scheme(), "http" | "https")
        .then(|| url.origin().ascii_serialization())
        .filter(|o| o != "null")
}

/// An origin granted in the manifest or on the command line, normalised like [`origin_of_url`];
/// refuses other schemes, paths, queries, fragments, credentials and port 0.
pub fn normalize_origin(s: &str) -> Result<String, &'static str> {
    let (scheme, _) = s.split_once("://").ok_or("it has no scheme")?;
    if !matches!(scheme.to_ascii_lowercase().as_str(), "http" | "https") {
        return Err("only http and https origins can be granted");
    }
    let url = url::Url::parse(s).map_err(|e| match e {
        url::ParseError::InvalidPort => "the port is not a number from 1 to 65535",
        url::ParseError::EmptyHost => "it has no host",
        _ => "the host is not valid",
    })?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err("an origin carries no credentials");
    }
    if url.path() != "/" || url.query().is_some() || url.fragment().is_some() {
        return Err("an origin has no path, query or fragment");
    }
    if url.port() == Some(0) {
        return Err("the port is not a number from 1 to 65535");
    }
    origin_of_url(&url).ok_or("the host is not valid")
}

/// A TOML value as JSON (datetimes become their RFC 3339 text).
pub(crate) fn toml_to_json(v: &toml::Value) -> serde_json::Value {
    use serde_json::Value as J;
    match v {
        toml::Value::String(s) => J::String(s.clone()),
        toml::Value::Integer(i) => J::from(*i),
        toml::Value::Float(f) => serde_json::Number::from_f64(*f).map_or(J::Null, J::Number),
        toml::Value::Boolean(b) => J::Bool(*b),
        toml::Value::Datetime(d) => J::String(d.to_string()),
        toml::Value::Array(a) => J::Array(a.iter().map(toml_to_json).collect()),
        toml::Value::Table(t) => J::Object(
            t.iter()
                .map(|(k, v)| (k.clone(), toml_to_json(v)))
                .collect(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["api", "a", "0x", "shared-lib", "w_2"] {
            assert!(valid_name(ok), "{ok}");
        }
        for bad in ["", "Api", "-a", "_a", "a.b", "a b", "é", &"a".repeat(65)] {
            assert!(!valid_name(bad), "{bad}");
        }
    }

    #[test]
    fn origins() {
        assert_eq!(
            normalize_origin("https://Deploy.Example.com/").as_deref(),
            Ok("https://deploy.example.com")
        );
        assert_eq!(
            normalize_origin("http://127.0.0.1:8080").as_deref(),
            Ok("http://127.0.0.1:8080")
        );
        assert!(normalize_origin("https://h/path").is_err());
        assert!(normalize_origin("ftp://h").is_err());
        assert!(normalize_origin("https://u:p@h").is_err());
        assert!(normalize_origin("https://h:0").is_err());
        assert!(normalize_origin("https://h:99999").is_err());
        assert!(normalize_origin("https://h?q").is_err());
        assert!(normalize_origin("https://h#f").is_err());
        assert!(normalize_origin("h:80").is_err());
        // One form: default ports dropped, IPv6 bracketed, international names in punycode.
        assert_eq!(
            normalize_origin("HTTPS://h:443").as_deref(),
            Ok("https://h")
        );
        assert_eq!(
            normalize_origin("http://[::1]:8080/").as_deref(),
            Ok("http://[::1]:8080")
        );
        assert_eq!(
            normalize_origin("https://bücher.example").as_deref(),
            Ok("https://xn--bcher-kva.example")
        );
    }
}
