//! Conversions between the curated types and the generated WIT records, and the calls into the
//! engine's imports (wasm32). Nothing else in the crate touches the bindings.

use crate::bindings::nestr::plugin::{exec as wexec, http as whttp, log as wlog, types as w};
use crate::{
    Artifact, Command, Dependency, Error, Failure, FsAccess, Level, Outcome, Output, Plugin,
    Request, Service, Target, TestCounts, http,
};

/// `describe` for [`crate::export!`].
pub fn describe<P: Plugin>() -> w::PluginInfo {
    let i = crate::describe::<P>();
    let c = i.capabilities;
    w::PluginInfo {
        name: i.name,
        version: i.version,
        description: i.description,
        operations: i.operations,
        capabilities: w::Capabilities {
            exec: c.exec,
            env: c.env,
            secrets: c.secrets,
            http: c.http,
            fs: match c.fs {
                FsAccess::None => w::FsAccess::None,
                FsAccess::ReadOnly => w::FsAccess::ReadOnly,
                FsAccess::ReadWrite => w::FsAccess::ReadWrite,
            },
        },
        config: i
            .config
            .into_iter()
            .map(|f| w::ConfigField {
                name: f.name,
                type_: f.ty,
                required: f.required,
                description: f.description,
            })
            .collect(),
        cacheable: i.cacheable,
    }
}

/// `run` for [`crate::export!`].
pub fn run<P: Plugin>(r: w::Request) -> Result<w::Report, w::Error> {
    let config = match serde_json::from_str(&r.config) {
        Ok(v) => v,
        Err(e) => return Err(w::Error::InvalidConfig(format!("not JSON: {e}"))),
    };
    let request = Request {
        operation: r.operation,
        run_id: r.run_id,
        service: Service {
            name: r.service.name,
            repo: r.service.repo,
            path: r.service.path,
            tags: r.service.tags,
            depends_on: r.service.depends_on,
        },
        commit: r.commit,
        branch: r.branch,
        config,
        workdir: r.workdir,
        folder: r.folder,
        dependencies: r
            .dependencies
            .into_iter()
            .map(|d| Dependency {
                service: d.service,
                repo: d.repo,
                commit: d.commit,
                folder: d.folder,
                wired: d.wired,
            })
            .collect(),
        target: r.target.map(|t| Target {
            environment: t.environment,
            previous: t.previous,
            rollback: t.rollback,
        }),
    };
    match crate::run::<P>(request) {
        Ok(report) => Ok(w::Report {
            outcome: match report.outcome {
                Outcome::Succeeded => w::Outcome::Succeeded,
                Outcome::Skipped(why) => w::Outcome::Skipped(why),
            },
            summary: report.summary,
            tests: report.tests.map(tests),
            artifacts: report.artifacts.into_iter().map(artifact).collect(),
            metrics: report.metrics,
        }),
        Err(e) => Err(error_to_wit(e)),
    }
}

fn tests(t: TestCounts) -> w::TestCounts {
    w::TestCounts {
        passed: t.passed,
        failed: t.failed,
        skipped: t.skipped,
    }
}

fn artifact(a: Artifact) -> w::Artifact {
    w::Artifact {
        path: a.path,
        kind: a.kind,
        sha256: a.sha256,
    }
}

fn error_to_wit(e: Error) -> w::Error {
    match e {
        Error::Denied(d) => w::Error::Denied(w::Denial {
            capability: d.capability,
            requested: d.requested,
            grant: d.grant,
        }),
        Error::InvalidConfig(m) => w::Error::InvalidConfig(m),
        Error::Failed(f) => w::Error::Failed(w::Failure {
            message: f.message,
            tests: f.tests.map(tests),
            artifacts: f.artifacts.into_iter().map(artifact).collect(),
            metrics: f.metrics,
        }),
    }
}

fn error_from_wit(e: w::Error) -> Error {
    match e {
        w::Error::Denied(d) => Error::Denied(crate::Denial {
            capability: d.capability,
            requested: d.requested,
            grant: d.grant,
        }),
        w::Error::InvalidConfig(m) => Error::InvalidConfig(m),
        w::Error::Failed(f) => Error::Failed(Failure {
            message: f.message,
            tests: f.tests.map(|t| TestCounts {
                passed: t.passed,
                failed: t.failed,
                skipped: t.skipped,
            }),
            artifacts: f
                .artifacts
                .into_iter()
                .map(|a| Artifact {
                    path: a.path,
                    kind: a.kind,
                    sha256: a.sha256,
                })
                .collect(),
            metrics: f.metrics,
        }),
    }
}

#[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
pub fn log(level: Level, message: &str) {
    let level = match level {
        Level::Trace => wlog::Level::Trace,
        Level::Debug => wlog::Level::Debug,
        Level::Info => wlog::Level::Info,
        Level::Warn => wlog::Level::Warn,
        Level::Error => wlog::Level::Error,
    };
    wlog::log(level, message);
}

#[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
pub fn exec(c: &Command) -> Result<Output, Error> {
    let command = wexec::Command {
        program: c.program.clone(),
        args: c.args.clone(),
        cwd: c.cwd.clone(),
        env: c.env.clone(),
        timeout_ms: c.timeout_ms,
        capture: c.capture,
    };
    wexec::run(&command)
        .map(|o| Output {
            exit_code: o.exit_code,
            signal: o.signal,
            duration_ms: o.duration_ms,
            tail: o.tail,
            tail_truncated: o.tail_truncated,
            log_truncated: o.log_truncated,
            stdout: o.stdout,
            stdout_truncated: o.stdout_truncated,
            timed_out: o.timed_out,
        })
        .map_err(error_from_wit)
}

#[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
pub fn http(r: &http::Request) -> Result<http::Response, Error> {
    let request = whttp::Request {
        method: r.method.clone(),
        url: r.url.clone(),
        headers: r.headers.clone(),
        body: r.body.clone(),
        timeout_ms: r.timeout_ms,
    };
    whttp::send(&request)
        .map(|o| http::Response {
            status: o.status,
            headers: o.headers,
            body: o.body,
            truncated: o.truncated,
        })
        .map_err(error_from_wit)
}
