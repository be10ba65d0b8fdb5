//! The workspace manifest, `nestr.toml`: discovery (search upward from a folder), parsing, and
//! validation into the typed model the rest of the engine uses. No I/O beyond reading the file.
//!
//! Every problem is reported with the file, line and column at fault and what to write instead
//! (see [`diagnostic`]). The format is documented in `docs/manifest.md`.

mod config;
pub(crate) mod diagnostic;
mod raw;
mod validate;

use std::path::{Path, PathBuf};
use std::time::Duration;

use indexmap::IndexMap;
use serde::Serialize;

pub use config::PluginDoc;
pub use diagnostic::{InvalidManifest, Problem};
pub use validate::{did_you_mean, normalize_origin, origin_of_url, parse_size_text, valid_name};

/// The file name nestr looks for.
pub const FILE_NAME: &str = "nestr.toml";

/// Plugins compiled into the engine; they need no `path`, only grants.
pub const BUILTIN_PLUGINS: &[&str] = &["command", "cargo", "npm", "http-deploy"];

/// A validated manifest.
#[derive(Debug, Clone)]
pub struct Manifest {
    /// Absolute path of the manifest file.
    pub path: PathBuf,
    /// The folder holding the manifest: the workspace root.
    pub root: PathBuf,
    pub name: String,
    pub description: Option<String>,
    /// Repositories in manifest order.
    pub repos: Vec<Repo>,
    /// Services in manifest order.
    pub services: Vec<Service>,
    /// Workspace-wide operation defaults, used by services that do not define their own.
    pub operations: IndexMap<String, OperationSpec>,
    /// Plugin declarations (built-in plugins appear only when given grants).
    pub plugins: IndexMap<String, PluginDecl>,
    /// `[api]`: settings of `nestr serve`.
    pub api: ApiSettings,
    /// `[cache]`: the local operation cache.
    pub cache: CacheSettings,
    /// `[environments.NAME]`: where deploys go, in manifest order.
    pub environments: IndexMap<String, Environment>,
    /// The text it was read from, for problems found after validation (plugin config).
    source: std::sync::Arc<str>,
    /// Service name → position in `services`, built on first lookup.
    service_index: std::sync::OnceLock<std::collections::HashMap<String, usize>>,
}

/// An environment deploys go to (`[environments.NAME]`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Environment {
    pub name: String,
    /// A second person must approve a plan before it is applied.
    pub approval: bool,
    /// Services of one wave deployed at once (default 1).
    pub max_parallel: u32,
    /// The operation that deploys (default `deploy`).
    pub operation: String,
    /// Merged over every service's deploy `config` here.
    pub config: serde_json::Map<String, serde_json::Value>,
    /// The engine's health gate after each service's deploy here (`{service}` in its URL).
    pub health: Option<HealthSpec>,
    /// Per service: its overrides here.
    pub services: IndexMap<String, EnvironmentService>,
}

/// One service's overrides in an environment.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct EnvironmentService {
    /// Merged over its deploy `config` here (after the environment's `config`).
    pub config: serde_json::Map<String, serde_json::Value>,
    /// Its own health gate here (instead of the environment's).
    pub health: Option<HealthSpec>,
}

/// `health = { url, passes = 3, failures = 3, interval = "2s", timeout = "2m" }`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HealthSpec {
    pub url: String,
    pub passes: u32,
    pub failures: u32,
    #[serde(with = "humantime_serde_ms")]
    pub interval: std::time::Duration,
    #[serde(with = "humantime_serde_ms")]
    pub timeout: std::time::Duration,
}

impl Environment {
    /// The deploy `config` of `service` in this environment: its operation's own, then this
    /// environment's `config`, then its own overrides here (each key replaced as a whole).
    pub fn config_for(&self, service: &str, base: &serde_json::Value) -> serde_json::Value {
        let mut merged = base.as_object().cloned().unwrap_or_default();
        for (k, v) in self.config.iter().chain(
            self.services
                .get(service)
                .into_iter()
                .flat_map(|s| &s.config),
        ) {
            merged.insert(k.clone(), v.clone());
        }
        serde_json::Value::Object(merged)
    }

    /// The health gate of `service` here: its own, else the environment's; `{service}` in the
    /// URL replaced by its name.
    pub fn health_for(&self, service: &str) -> Option<HealthSpec> {
        let spec = self
            .services
            .get(service)
            .and_then(|s| s.health.clone())
            .or_else(|| self.health.clone())?;
        Some(HealthSpec {
            url: spec.url.replace("{service}", service),
            ..spec
        })
    }
}

/// The `[api]` table.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ApiSettings {
    /// Origins allowed to call the API from a browser (CORS).
    pub cors_origins: Vec<String>,
    /// Requests per minute per client address (0: no limit); default 100.
    pub rate_limit: Option<u32>,
    /// Runs executing at once; default: the number of CPUs, at least 2.
    pub max_runs: Option<usize>,
    /// Runs waiting for a slot beyond those; default 128. More are refused (503).
    pub max_queued: Option<usize>,
    /// Open connections; default 1,024 (and at most the descriptors the process may open).
    pub max_connections: Option<usize>,
}

/// The `[cache]` table.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct CacheSettings {
    /// Bytes the local cache may hold before the least recently used entries go; default 2 GiB.
    pub max_size: Option<u64>,
    /// The shared remote cache, if any (`NESTR_CACHE_REMOTE` may set or override it).
    pub remote: Option<RemoteCache>,
}

/// A remote cache server speaking the Bazel remote-cache HTTP protocol (`[cache] remote`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RemoteCache {
    /// `http(s)://host[:port][/prefix]`, without a trailing `/` and without credentials.
    pub url: String,
    /// Only read from it (CI consumers); results are never uploaded.
    pub read_only: bool,
    /// The environment variable holding the credential, if the server needs one.
    pub secret: Option<String>,
    pub auth: RemoteAuth,
    /// How long one request may take.
    #[serde(with = "humantime_serde_ms")]
    pub timeout: std::time::Duration,
}

/// How the remote cache's credential is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RemoteAuth {
    /// `Authorization: Bearer SECRET`.
    Bearer,
    /// `Authorization: Basic base64(SECRET)`, the secret being `user:password`.
    Basic,
}

/// The remote cache's request timeout unless `remote_timeout` says otherwise.
pub const DEFAULT_REMOTE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// A remote cache URL as stored: http or https, a host, no credentials, query or fragment, no
/// trailing `/`. The error says what is wrong.
pub fn remote_url(text: &str) -> Result<String, String> {
    let u = url::Url::parse(text).map_err(|e| format!("is not a URL ({e})"))?;
    if !matches!(u.scheme(), "http" | "https") {
        return Err(format!("has scheme `{}`; use http or https", u.scheme()));
    }
    if u.host_str().is_none_or(str::is_empty) {
        return Err("has no host".into());
    }
    if !u.username().is_empty() || u.password().is_some() {
        return Err("carries a credential, which would be shown and stored".into());
    }
    if u.query().is_some() || u.fragment().is_some() {
        return Err("has a query or fragment".into());
    }
    Ok(u.as_str().trim_end_matches('/').to_string())
}

mod humantime_serde_ms {
    pub fn serialize<S: serde::Serializer>(
        d: &std::time::Duration,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.serialize_u128(d.as_millis())
    }
}

/// A repository of the workspace.
#[derive(Debug, Clone, Serialize)]
pub struct Repo {
    pub name: String,
    /// As written in the manifest (may carry credentials: show it through `redact`).
    #[serde(skip)]
    pub url: String,
    pub pin: Pin,
    /// Relative to the workspace root, normalised (no `.`, no trailing `/`).
    pub path: PathBuf,
    /// Line of the `[repos.NAME]` header, for messages that point back at the manifest.
    #[serde(skip)]
    pub line: usize,
}

/// What a repository is checked out at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(tag = "kind", content = "value", rename_all = "lowercase")]
pub enum Pin {
    /// The remote's default branch.
    Default,
    Branch(String),
    Tag(String),
    /// A full 40-hex commit id, lower case.
    Rev(String),
}

impl Pin {
    /// `branch main`, `tag v1`, `rev 0123…`, `default branch`.
    pub fn describe(&self) -> String {
        match self {
            Pin::Default => "the remote's default branch".to_string(),
            Pin::Branch(b) => format!("branch {b}"),
            Pin::Tag(t) => format!("tag {t}"),
            Pin::Rev(r) => format!("rev {r}"),
        }
    }
}

/// A service: a folder inside a repository with operations and dependencies.
#[derive(Debug, Clone, Serialize)]
pub struct Service {
    pub name: String,
    pub repo: String,
    /// Relative to the repository's folder; `.` for the repository itself.
    pub path: PathBuf,
    pub depends_on: Vec<String>,
    /// The dependencies whose checkouts its builds use instead of published packages
    /// (`wire = true` on the service or on a `depends_on` entry).
    pub wired: Vec<String>,
    pub tags: Vec<String>,
    /// Operations the service defines itself.
    pub operations: IndexMap<String, OperationSpec>,
    /// Workspace defaults this service opts out of (`test = false`).
    pub opted_out: Vec<String>,
}

/// Which plugin runs an operation, with what configuration.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OperationSpec {
    pub plugin: String,
    /// The `config` table as JSON (an object; empty when absent).
    pub config: serde_json::Value,
    /// At most this many steps of the operation run at once, when set.
    pub concurrency: Option<u32>,
    /// `cache = true`: a step whose key is stored is not run again.
    pub cache: bool,
    /// Where `cache = …` is written, if it is.
    #[serde(skip)]
    pub cache_site: Option<std::ops::Range<usize>>,
    /// `inputs = [globs]`: the files of the service folder its key covers (default: all).
    pub inputs: Option<Vec<String>>,
    /// `outputs = [globs]`: the files a step produces, stored and restored with its result.
    pub outputs: Vec<String>,
    /// Where the operation's `config` is written.
    #[serde(skip)]
    pub site: ConfigSite,
}

/// Where an operation's `config` is written in the manifest, for problems found in it later.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ConfigSite {
    /// The `config` table, or the `plugin` value when there is none.
    pub table: std::ops::Range<usize>,
    pub keys: Vec<ConfigKey>,
}

/// One key of an operation's `config`.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigKey {
    pub name: String,
    pub key: std::ops::Range<usize>,
    pub value: std::ops::Range<usize>,
}

/// A `[plugins.NAME]` entry.
#[derive(Debug, Clone, Serialize)]
pub struct PluginDecl {
    pub name: String,
    pub source: PluginSource,
    pub grants: Grants,
}

/// Where a plugin's code comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum PluginSource {
    Builtin,
    File {
        /// As written; relative paths are relative to the workspace root.
        path: PathBuf,
        /// Expected sha256 of the file, lower-case hex.
        sha256: Option<String>,
    },
}

/// Capabilities the workspace owner grants a plugin.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Grants {
    pub exec: Vec<ExecGrant>,
    pub env: Vec<String>,
    pub secrets: Vec<String>,
    /// Origins, `scheme://host[:port]`.
    pub http: Vec<String>,
    pub fs: FsGrant,
    pub memory_mb: Option<u64>,
    /// Output stored per step, MiB (default 16).
    pub output_mb: Option<u64>,
    /// Bytes the plugin itself may write through its filesystem view per step, MiB (default 256).
    pub disk_mb: Option<u64>,
    /// Processes and threads the step's programs may have at once (default 1024).
    pub pids: Option<u64>,
    #[serde(with = "duration_secs")]
    pub timeout: Option<Duration>,
}

/// A program a plugin may run, optionally restricted to argument patterns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ExecGrant {
    /// A program name (looked up on PATH) or an absolute path.
    pub program: String,
    /// Glob patterns every argument must match (each compiles: checked at load); empty means
    /// any arguments (the manifest refuses an explicit empty list).
    pub args: Vec<String>,
}

/// The plugin's own view of the service folder.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FsGrant {
    None,
    #[default]
    ReadOnly,
    ReadWrite,
}

mod duration_secs {
    use std::time::Duration;

    pub fn serialize<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_some(&d.as_secs_f64()),
            None => s.serialize_none(),
        }
    }
}

/// Why a manifest could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("no {FILE_NAME} in {} or any folder above it", start.display())]
    NotFound { start: PathBuf },
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Invalid(#[from] InvalidManifest),
}

impl ManifestError {
    /// What the user should do about it.
    pub fn help(&self) -> Option<String> {
        match self {
            ManifestError::NotFound { .. } => Some(format!(
                "run `nestr init` to create a {FILE_NAME} here, or pass --manifest PATH"
            )),
            ManifestError::Read { .. } => {
                Some("check that the path is right and the file is readable".to_string())
            }
            ManifestError::Invalid(_) => None,
        }
    }
}

/// Searches `start` and its ancestors for a `nestr.toml`.
pub fn discover(start: &Path) -> Result<PathBuf, ManifestError> {
    let mut dir = Some(start);
    while let Some(d) = dir {
        let candidate = d.join(FILE_NAME);
        if candidate.is_file() {
            return Ok(candidate);
        }
        dir = d.parent();
    }
    Err(ManifestError::NotFound {
        start: start.to_path_buf(),
    })
}

/// Reads and validates the manifest at `path`.
pub fn load(path: &Path) -> Result<Manifest, ManifestError> {
    let source = std::fs::read_to_string(path).map_err(|source| ManifestError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let abs = std::path::absolute(path).map_err(|source| ManifestError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let manifest = parse(&abs, &source)?;
    Ok(manifest)
}

/// Validates manifest `source` as if read from `path` (which must be absolute).
pub fn parse(path: &Path, source: &str) -> Result<Manifest, InvalidManifest> {
    let manifest = validate::validate(path, source)?;
    for repo in &manifest.repos {
        crate::redact::register_url(&repo.url);
    }
    Ok(manifest)
}

impl Manifest {
    pub fn repo(&self, name: &str) -> Option<&Repo> {
        self.repos.iter().find(|r| r.name == name)
    }

    /// The service named `name`: by an index (a workspace may have thousands), checked against
    /// the list, which is searched when they disagree.
    pub fn service(&self, name: &str) -> Option<&Service> {
        let index = self.service_index.get_or_init(|| {
            self.services
                .iter()
                .enumerate()
                .map(|(i, s)| (s.name.clone(), i))
                .collect()
        });
        match index.get(name).and_then(|&i| self.services.get(i)) {
            Some(s) if s.name == name => Some(s),
            _ => self.services.iter().find(|s| s.name == name),
        }
    }

    /// The absolute folder of a repository.
    pub fn repo_dir(&self, repo: &Repo) -> PathBuf {
        self.root.join(&repo.path)
    }

    /// The operation `op` of `service`: its own, else the workspace default.
    pub fn operation<'a>(&'a self, service: &'a Service, op: &str) -> Option<&'a OperationSpec> {
        service.operations.get(op).or_else(|| {
            if service.opted_out.iter().any(|o| o == op) {
                None
            } else {
                self.operations.get(op)
            }
        })
    }

    /// Every operation name the manifest defines (services' own and workspace defaults), sorted.
    pub fn all_operation_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .services
            .iter()
            .flat_map(|s| s.operations.keys().cloned())
            .chain(self.operations.keys().cloned())
            .collect();
        names.sort();
        names.dedup();
        names
    }

    /// Names of every operation `service` can run (own first, then workspace defaults).
    pub fn operation_names(&self, service: &Service) -> Vec<String> {
        let mut names: Vec<String> = service.operations.keys().cloned().collect();
        for k in self.operations.keys() {
            if !names.contains(k) && !service.opted_out.contains(k) {
                names.push(k.clone());
            }
        }
        names
    }
}
