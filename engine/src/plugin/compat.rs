//! Plugins built against the frozen `nestr:plugin@0.1.0`. Their imports are served by the
//! current host through conversions (one implementation of every rule), and what their exports
//! return is converted into the current contract's types before anything reads it.

use super::bindings::v0_1 as old;
use super::bindings::{self as cur, types};
use super::state::StepState;

use old::nestr::plugin::{exec as old_exec, log as old_log};

impl old::types::Host for StepState {}

impl old_log::Host for StepState {
    async fn log(&mut self, level: old_log::Level, message: String) {
        use cur::nestr::plugin::log::{Host, Level};
        let level = match level {
            old_log::Level::Trace => Level::Trace,
            old_log::Level::Debug => Level::Debug,
            old_log::Level::Info => Level::Info,
            old_log::Level::Warn => Level::Warn,
            old_log::Level::Error => Level::Error,
        };
        Host::log(self, level, message).await;
    }
}

impl old_exec::Host for StepState {
    async fn run(&mut self, c: old_exec::Command) -> Result<old_exec::Output, old::types::Error> {
        let command = cur::nestr::plugin::exec::Command {
            program: c.program,
            args: c.args,
            cwd: c.cwd,
            env: c.env,
            timeout_ms: c.timeout_ms,
            capture: false,
        };
        let ctx = self.ctx.clone();
        match super::exec::run(&ctx, command).await {
            Ok(o) => Ok(old_exec::Output {
                exit_code: o.exit_code,
                signal: o.signal,
                duration_ms: o.duration_ms,
                tail: o.tail,
                truncated: o.log_truncated,
                timed_out: o.timed_out,
            }),
            Err(e) => Err(error_to_old(e)),
        }
    }
}

fn error_to_old(e: types::Error) -> old::types::Error {
    match e {
        types::Error::Denied(d) => old::types::Error::Denied(old::types::Denial {
            capability: d.capability,
            requested: d.requested,
            grant: d.grant,
        }),
        types::Error::InvalidConfig(m) => old::types::Error::InvalidConfig(m),
        types::Error::Failed(f) => old::types::Error::Failed(f.message),
    }
}

/// The request as a 0.1.0 plugin receives it (without what 0.2.0 added).
pub fn request_to_old(r: &types::Request) -> old::types::Request {
    old::types::Request {
        operation: r.operation.clone(),
        run_id: r.run_id.clone(),
        service: old::types::Service {
            name: r.service.name.clone(),
            repo: r.service.repo.clone(),
            path: r.service.path.clone(),
            tags: r.service.tags.clone(),
            depends_on: r.service.depends_on.clone(),
        },
        commit: r.commit.clone(),
        branch: r.branch.clone(),
        config: r.config.clone(),
        workdir: r.workdir.clone(),
    }
}

/// What a 0.1.0 `describe()` said, as 0.2.0 says it: 0.1.0 has no word for "not cacheable", so
/// every such plugin is cacheable.
pub fn info_from_old(i: old::types::PluginInfo) -> types::PluginInfo {
    let c = i.capabilities;
    types::PluginInfo {
        name: i.name,
        version: i.version,
        description: i.description,
        operations: i.operations,
        capabilities: types::Capabilities {
            exec: c.exec,
            env: c.env,
            secrets: c.secrets,
            http: c.http,
            fs: match c.fs {
                old::types::FsAccess::None => types::FsAccess::None,
                old::types::FsAccess::ReadOnly => types::FsAccess::ReadOnly,
                old::types::FsAccess::ReadWrite => types::FsAccess::ReadWrite,
            },
        },
        config: i
            .config
            .into_iter()
            .map(|f| types::ConfigField {
                name: f.name,
                type_: f.type_,
                required: f.required,
                description: f.description,
            })
            .collect(),
        cacheable: true,
    }
}

/// What a 0.1.0 `run` returned, as 0.2.0 says it: a report whose outcome is `failed` becomes
/// the one failure channel, `error::failed`, keeping its tests, artifacts and metrics.
pub fn result_from_old(
    r: Result<old::types::Report, old::types::Error>,
) -> Result<types::Report, types::Error> {
    let tests = |t: Option<old::types::TestCounts>| {
        t.map(|t| types::TestCounts {
            passed: t.passed,
            failed: t.failed,
            skipped: t.skipped,
        })
    };
    let artifacts = |a: Vec<old::types::Artifact>| {
        a.into_iter()
            .map(|a| types::Artifact {
                path: a.path,
                kind: a.kind,
                sha256: a.sha256,
            })
            .collect::<Vec<_>>()
    };
    match r {
        Ok(report) => {
            let outcome = match report.outcome {
                old::types::Outcome::Succeeded => types::Outcome::Succeeded,
                old::types::Outcome::Skipped(why) => types::Outcome::Skipped(why),
                old::types::Outcome::Failed(why) => {
                    return Err(types::Error::Failed(types::Failure {
                        message: if why.is_empty() { report.summary } else { why },
                        tests: tests(report.tests),
                        artifacts: artifacts(report.artifacts),
                        metrics: report.metrics,
                    }));
                }
            };
            Ok(types::Report {
                outcome,
                summary: report.summary,
                tests: tests(report.tests),
                artifacts: artifacts(report.artifacts),
                metrics: report.metrics,
            })
        }
        Err(old::types::Error::Denied(d)) => Err(types::Error::Denied(types::Denial {
            capability: d.capability,
            requested: d.requested,
            grant: d.grant,
        })),
        Err(old::types::Error::InvalidConfig(m)) => Err(types::Error::InvalidConfig(m)),
        Err(old::types::Error::Failed(m)) => Err(super::exec::failed(m)),
    }
}
