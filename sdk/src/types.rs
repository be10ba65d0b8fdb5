//! The contract as a plugin author sees it: plain Rust types (no raw WIT records), each
//! serializable, so that a test tape ([`crate::tape`]) holds exactly what crossed the boundary.

use serde::{Deserialize, Serialize};

/// The service a step runs for.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Service {
    pub name: String,
    pub repo: String,
    /// Folder of the service inside its repository (`.` for the repository itself).
    pub path: String,
    pub tags: Vec<String>,
    pub depends_on: Vec<String>,
}

/// A service the step's service depends on, with its checkout.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Dependency {
    pub service: String,
    pub repo: String,
    /// The dependency repository's head commit, if it has one.
    pub commit: Option<String>,
    /// Its service folder as the programs the plugin runs see it (an absolute path on the
    /// engine's machine; the plugin's own filesystem does not contain it).
    pub folder: String,
    /// The manifest asks for builds to use this checkout instead of a published package.
    pub wired: bool,
}

/// Where a deploy step deploys.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Target {
    pub environment: String,
    /// The commit deployed there before this step, when one is recorded.
    pub previous: Option<String>,
    /// This step returns the service to `previous`.
    pub rollback: bool,
}

/// One step: an operation on a service.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Request {
    pub operation: String,
    pub run_id: String,
    pub service: Service,
    /// The repository's head commit, if it has one.
    pub commit: Option<String>,
    /// The checked-out branch, if any.
    pub branch: Option<String>,
    /// The operation's `config` table from the manifest (an object). The plugin's
    /// [`crate::Plugin::Config`] is read from it; this is the same data, untyped.
    pub config: serde_json::Value,
    /// Where the service folder is in the plugin's own filesystem (`/service`).
    pub workdir: String,
    /// The service folder as the programs the plugin runs see it.
    pub folder: String,
    /// The services this one depends on directly.
    pub dependencies: Vec<Dependency>,
    /// The environment of a deploy step.
    pub target: Option<Target>,
}

impl Request {
    /// A request for tests: operation `operation` on service `service` (repository `app`,
    /// path `.`), run `test-run`, an empty config, the service folder at `/service`.
    pub fn new(operation: &str, service: &str) -> Request {
        Request {
            operation: operation.to_string(),
            run_id: "test-run".to_string(),
            service: Service {
                name: service.to_string(),
                repo: "app".to_string(),
                path: ".".to_string(),
                ..Service::default()
            },
            config: serde_json::json!({}),
            workdir: "/service".to_string(),
            folder: "/service".to_string(),
            ..Request::default()
        }
    }

    /// The same request with this `config` table.
    pub fn with_config(mut self, config: serde_json::Value) -> Request {
        self.config = config;
        self
    }

    /// The same request with a dependency.
    pub fn with_dependency(mut self, dep: Dependency) -> Request {
        self.service.depends_on.push(dep.service.clone());
        self.dependencies.push(dep);
        self
    }

    /// The `config` table read as `T`; a mismatch is an [`Error::InvalidConfig`] naming it.
    /// An absent or `null` config reads as `{}`.
    pub fn config<T: serde::de::DeserializeOwned>(&self) -> Result<T, Error> {
        let value = if self.config.is_null() {
            serde_json::json!({})
        } else {
            self.config.clone()
        };
        serde_json::from_value(value).map_err(|e| Error::InvalidConfig(e.to_string()))
    }

    /// The path of `rel` inside the service folder, in the plugin's own filesystem.
    pub fn path(&self, rel: &str) -> String {
        format!(
            "{}/{}",
            self.workdir.trim_end_matches('/'),
            rel.trim_start_matches('/')
        )
    }

    /// The dependencies the manifest wires (`wire = true`).
    pub fn wired(&self) -> impl Iterator<Item = &Dependency> {
        self.dependencies.iter().filter(|d| d.wired)
    }
}

/// How much of the service folder the plugin sees through its own filesystem.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FsAccess {
    None,
    #[default]
    ReadOnly,
    ReadWrite,
}

/// What a plugin needs; the engine grants the intersection with the manifest's grants.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Capabilities {
    /// Programs run through [`crate::exec`].
    pub exec: Vec<String>,
    /// Environment variables passed to programs.
    pub env: Vec<String>,
    /// Like `env`, masked in every log line.
    pub secrets: Vec<String>,
    /// Origins (`scheme://host[:port]`) of [`crate::http`] requests.
    pub http: Vec<String>,
    pub fs: FsAccess,
}

/// One field of the plugin's `config` table (derived from [`crate::Plugin::Config`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigField {
    pub name: String,
    /// `string`, `bool`, `integer`, `number`, `array`, `object`, or `any`.
    #[serde(rename = "type")]
    pub ty: String,
    pub required: bool,
    pub description: String,
}

/// What `describe` says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginInfo {
    pub name: String,
    pub version: String,
    pub description: String,
    /// Operations the plugin supports; empty: any.
    pub operations: Vec<String>,
    pub capabilities: Capabilities,
    /// Filled from [`crate::Plugin::Config`] by [`crate::export!`].
    pub config: Vec<ConfigField>,
    pub cacheable: bool,
}

impl PluginInfo {
    /// A cacheable plugin for any operation that needs nothing but read access to its folder.
    pub fn new(name: &str, version: &str, description: &str) -> PluginInfo {
        PluginInfo {
            name: name.to_string(),
            version: version.to_string(),
            description: description.to_string(),
            operations: Vec::new(),
            capabilities: Capabilities::default(),
            config: Vec::new(),
            cacheable: true,
        }
    }

    /// Restricts the plugin to these operations.
    pub fn operations<'a>(mut self, ops: impl IntoIterator<Item = &'a str>) -> Self {
        self.operations.extend(ops.into_iter().map(str::to_string));
        self
    }

    /// Declares programs the plugin runs.
    pub fn exec<'a>(mut self, programs: impl IntoIterator<Item = &'a str>) -> Self {
        let list = &mut self.capabilities.exec;
        list.extend(programs.into_iter().map(str::to_string));
        self
    }

    /// Declares environment variables passed to programs (`*`: any the manifest grants).
    pub fn env<'a>(mut self, names: impl IntoIterator<Item = &'a str>) -> Self {
        let list = &mut self.capabilities.env;
        list.extend(names.into_iter().map(str::to_string));
        self
    }

    /// Declares secrets (masked in logs; usable in `{{secret:NAME}}` HTTP headers).
    pub fn secrets<'a>(mut self, names: impl IntoIterator<Item = &'a str>) -> Self {
        let list = &mut self.capabilities.secrets;
        list.extend(names.into_iter().map(str::to_string));
        self
    }

    /// Declares HTTP origins (`*`: any the manifest grants).
    pub fn http<'a>(mut self, origins: impl IntoIterator<Item = &'a str>) -> Self {
        let list = &mut self.capabilities.http;
        list.extend(origins.into_iter().map(str::to_string));
        self
    }

    /// Declares the filesystem access the plugin needs.
    pub fn fs(mut self, access: FsAccess) -> Self {
        self.capabilities.fs = access;
        self
    }

    /// The plugin acts on the world (deploys, notifies): its results are never cached, and
    /// `cache = true` on it is a manifest error.
    pub fn not_cacheable(mut self) -> Self {
        self.cacheable = false;
        self
    }
}

/// Tests a step ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct TestCounts {
    pub passed: u32,
    pub failed: u32,
    pub skipped: u32,
}

/// A file a step produced, relative to the service folder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Artifact {
    pub path: String,
    pub kind: String,
    pub sha256: Option<String>,
}

/// How a step that did not fail ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Succeeded,
    /// Not run, with the reason.
    Skipped(String),
}

/// What `run` returns when the step succeeded or was skipped. A failure is an [`Error`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    pub outcome: Outcome,
    /// One line for humans.
    pub summary: String,
    pub tests: Option<TestCounts>,
    pub artifacts: Vec<Artifact>,
    pub metrics: Vec<(String, String)>,
}

impl Report {
    /// Succeeded, with a summary.
    pub fn success(summary: impl Into<String>) -> Report {
        Report {
            outcome: Outcome::Succeeded,
            summary: summary.into(),
            tests: None,
            artifacts: Vec::new(),
            metrics: Vec::new(),
        }
    }

    /// Skipped, with the reason (also the summary).
    pub fn skipped(reason: impl Into<String>) -> Report {
        let reason = reason.into();
        Report {
            outcome: Outcome::Skipped(reason.clone()),
            ..Report::success(reason)
        }
    }

    /// Succeeded when the program exited 0, else the failure as an [`Error`].
    pub fn from_exit(out: &crate::Output, what: &str) -> Result<Report, Error> {
        if out.success() {
            Ok(Report::success(format!(
                "{what} succeeded in {} ms",
                out.duration_ms
            )))
        } else {
            Err(Error::failed(format!("{what} {}", out.describe())))
        }
    }

    /// Adds test counts.
    pub fn with_tests(mut self, tests: TestCounts) -> Self {
        self.tests = Some(tests);
        self
    }

    /// Adds an artifact.
    pub fn artifact(mut self, path: &str, kind: &str, sha256: Option<String>) -> Self {
        self.artifacts.push(Artifact {
            path: path.to_string(),
            kind: kind.to_string(),
            sha256,
        });
        self
    }

    /// Adds a metric.
    pub fn metric(mut self, key: &str, value: impl ToString) -> Self {
        self.metrics.push((key.to_string(), value.to_string()));
        self
    }
}

/// A request the engine refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Denial {
    /// `exec`, `env`, `http`, `secrets` or `fs`.
    pub capability: String,
    /// What was asked for.
    pub requested: String,
    /// The manifest grant that would allow it.
    pub grant: String,
}

/// A failed step: why, and what it produced all the same.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    pub message: String,
    pub tests: Option<TestCounts>,
    pub artifacts: Vec<Artifact>,
    pub metrics: Vec<(String, String)>,
}

/// Why a step did not succeed: the one failure channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Error {
    /// The engine refused a request (returned by [`crate::exec`] and [`crate::http`]; pass it
    /// on with `?`). A plugin that claims a refusal the engine did not make fails.
    Denied(Denial),
    /// The `config` table is wrong.
    InvalidConfig(String),
    /// The work failed.
    Failed(Failure),
}

impl Error {
    /// The work failed, for this reason.
    pub fn failed(message: impl Into<String>) -> Error {
        Error::Failed(Failure {
            message: message.into(),
            tests: None,
            artifacts: Vec::new(),
            metrics: Vec::new(),
        })
    }

    /// The failure with test counts (other errors are returned as they are).
    pub fn with_tests(mut self, tests: TestCounts) -> Error {
        if let Error::Failed(f) = &mut self {
            f.tests = Some(tests);
        }
        self
    }

    /// The failure with an artifact it produced all the same (other errors are returned as
    /// they are).
    pub fn artifact(mut self, path: &str, kind: &str, sha256: Option<String>) -> Error {
        if let Error::Failed(f) = &mut self {
            f.artifacts.push(Artifact {
                path: path.to_string(),
                kind: kind.to_string(),
                sha256,
            });
        }
        self
    }

    /// The failure with a metric (other errors are returned as they are).
    pub fn metric(mut self, key: &str, value: impl ToString) -> Error {
        if let Error::Failed(f) = &mut self {
            f.metrics.push((key.to_string(), value.to_string()));
        }
        self
    }

    /// A sentence for humans: what was refused and the grant that would allow it, why the
    /// config is invalid, or why the work failed.
    pub fn message(&self) -> String {
        match self {
            Error::Denied(d) => format!(
                "{} `{}` is not granted; add to nestr.toml: {}",
                d.capability, d.requested, d.grant
            ),
            Error::InvalidConfig(m) => format!("invalid config: {m}"),
            Error::Failed(f) => f.message.clone(),
        }
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message())
    }
}

impl std::error::Error for Error {}

/// How a program run through [`crate::exec`] ended.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Output {
    /// Exit code, when it exited.
    pub exit_code: Option<i32>,
    /// Signal number, when a signal killed it.
    pub signal: Option<i32>,
    pub duration_ms: u64,
    /// The last 64 KiB of what it printed to the step log, stdout and stderr together.
    pub tail: String,
    /// `tail` lost earlier output to its cap: do not count on seeing the first lines.
    pub tail_truncated: bool,
    /// The step log reached its cap; later output was counted, not stored.
    pub log_truncated: bool,
    /// With [`crate::Command::capture`]: its stdout (up to 16 MiB).
    pub stdout: String,
    pub stdout_truncated: bool,
    /// It was stopped at its deadline.
    pub timed_out: bool,
}

impl Output {
    /// For tests: a program that exited with `code`.
    pub fn exited(code: i32) -> Output {
        Output {
            exit_code: Some(code),
            ..Output::default()
        }
    }

    /// For tests: the same, having printed `tail`.
    pub fn with_tail(mut self, tail: &str) -> Output {
        self.tail = tail.to_string();
        self
    }

    /// For tests: the same, with captured `stdout`.
    pub fn with_stdout(mut self, stdout: &str) -> Output {
        self.stdout = stdout.to_string();
        self
    }

    /// Exited with code 0.
    pub fn success(&self) -> bool {
        self.exit_code == Some(0)
    }

    /// `exited with code 2`, `was killed by signal 9`, `timed out after 5000 ms`.
    pub fn describe(&self) -> String {
        if self.timed_out {
            return format!("timed out after {} ms", self.duration_ms);
        }
        match (self.exit_code, self.signal) {
            (Some(code), _) => format!("exited with code {code}"),
            (None, Some(sig)) => format!("was killed by signal {sig}"),
            _ => "ended without a status".to_string(),
        }
    }
}

/// How important a log line is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Level {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
}

/// What `run` returns, with the additions that apply to a report and a failure alike.
pub trait StepResult {
    /// Adds a metric to the report, or to the failure.
    fn metric(self, key: &str, value: impl ToString) -> Self;
    /// Adds test counts to the report, or to the failure.
    fn with_tests(self, tests: TestCounts) -> Self;
    /// Adds an artifact to the report, or to the failure.
    fn artifact(self, path: &str, kind: &str, sha256: Option<String>) -> Self;
}

impl StepResult for Result<Report, Error> {
    fn metric(self, key: &str, value: impl ToString) -> Self {
        match self {
            Ok(r) => Ok(r.metric(key, value)),
            Err(e) => Err(e.metric(key, value)),
        }
    }

    fn with_tests(self, tests: TestCounts) -> Self {
        match self {
            Ok(r) => Ok(r.with_tests(tests)),
            Err(e) => Err(e.with_tests(tests)),
        }
    }

    fn artifact(self, path: &str, kind: &str, sha256: Option<String>) -> Self {
        match self {
            Ok(r) => Ok(r.artifact(path, kind, sha256)),
            Err(e) => Err(e.artifact(path, kind, sha256)),
        }
    }
}
