//! Recording a step's host calls as a tape (`nestr run OP --record DIR`), in nestr-sdk's tape
//! format (`nestr_sdk::tape`), so that a plugin author can replay a real step in a native test
//! (`nestr_sdk::testing::replay`). Every string is masked at the step's redaction boundary
//! before the tape is written; what is kept is bounded.

use std::path::PathBuf;
use std::sync::Mutex;

use nestr_sdk::tape::{Call, LogLine, Tape};

use super::bindings::nestr::plugin::{exec as wexec, http as whttp, log as wlog};
use super::bindings::types;
use crate::redact::Redactor;

/// At most this many calls and log lines are kept per step.
const MAX_ENTRIES: usize = 100_000;
/// At most this many bytes of log text are kept per step.
const MAX_LOG_BYTES: usize = 64 * 1024 * 1024;

/// Collects one step's host calls; [`Recorder::finish`] writes the tape.
pub struct Recorder {
    path: PathBuf,
    calls: Mutex<Vec<Call>>,
    logs: Mutex<(Vec<LogLine>, usize)>,
}

impl Recorder {
    /// A recorder writing to `path` when the step ends.
    pub fn new(path: PathBuf) -> Recorder {
        Recorder {
            path,
            calls: Mutex::default(),
            logs: Mutex::default(),
        }
    }

    fn push(&self, call: Call) {
        if let Ok(mut calls) = self.calls.lock()
            && calls.len() < MAX_ENTRIES
        {
            calls.push(call);
        }
    }

    /// An `exec` call and its answer.
    pub fn exec(&self, c: &wexec::Command, result: &Result<wexec::Output, types::Error>) {
        self.push(Call::Exec {
            command: nestr_sdk::Command {
                program: c.program.clone(),
                args: c.args.clone(),
                cwd: c.cwd.clone(),
                env: c.env.clone(),
                timeout_ms: c.timeout_ms,
                capture: c.capture,
            },
            result: match result {
                Ok(o) => Ok(nestr_sdk::Output {
                    exit_code: o.exit_code,
                    signal: o.signal,
                    duration_ms: o.duration_ms,
                    tail: o.tail.clone(),
                    tail_truncated: o.tail_truncated,
                    log_truncated: o.log_truncated,
                    stdout: o.stdout.clone(),
                    stdout_truncated: o.stdout_truncated,
                    timed_out: o.timed_out,
                }),
                Err(e) => Err(error(e)),
            },
        });
    }

    /// An `http.send` call and its answer.
    pub fn http(&self, r: &whttp::Request, result: &Result<whttp::Response, types::Error>) {
        self.push(Call::Http {
            request: nestr_sdk::http::Request {
                method: r.method.clone(),
                url: r.url.clone(),
                headers: r.headers.clone(),
                body: r.body.clone(),
                timeout_ms: r.timeout_ms,
            },
            result: match result {
                Ok(o) => Ok(nestr_sdk::http::Response {
                    status: o.status,
                    headers: o.headers.clone(),
                    body: o.body.clone(),
                    truncated: o.truncated,
                }),
                Err(e) => Err(error(e)),
            },
        });
    }

    /// A `log` call.
    pub fn log(&self, level: wlog::Level, message: &str) {
        let Ok(mut logs) = self.logs.lock() else {
            return;
        };
        if logs.0.len() >= MAX_ENTRIES || logs.1 + message.len() > MAX_LOG_BYTES {
            return;
        }
        logs.1 += message.len();
        logs.0.push(LogLine {
            level: match level {
                wlog::Level::Trace => nestr_sdk::Level::Trace,
                wlog::Level::Debug => nestr_sdk::Level::Debug,
                wlog::Level::Info => nestr_sdk::Level::Info,
                wlog::Level::Warn => nestr_sdk::Level::Warn,
                wlog::Level::Error => nestr_sdk::Level::Error,
            },
            message: message.to_string(),
        });
    }

    /// Writes the tape: the request, the calls, the logs and what `run` returned (none when it
    /// did not return), every string masked by `masker`.
    pub fn finish(
        &self,
        plugin: &str,
        contract: &str,
        request: &types::Request,
        result: Option<&Result<types::Report, types::Error>>,
        masker: &Redactor,
    ) -> Result<PathBuf, String> {
        let tape = Tape {
            nestr_tape: nestr_sdk::tape::FORMAT,
            plugin: plugin.to_string(),
            contract: contract.to_string(),
            request: self::request(request),
            calls: self.calls.lock().map(|c| c.clone()).unwrap_or_default(),
            logs: self.logs.lock().map(|l| l.0.clone()).unwrap_or_default(),
            result: result.map(|r| match r {
                Ok(report) => Ok(self::report(report)),
                Err(e) => Err(error(e)),
            }),
        };
        let mut value = serde_json::to_value(&tape).map_err(|e| e.to_string())?;
        masker.mask_json(&mut value);
        let text = serde_json::to_string_pretty(&value).map_err(|e| e.to_string())?;
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        }
        std::fs::write(&self.path, text + "\n")
            .map_err(|e| format!("cannot write the tape {}: {e}", self.path.display()))?;
        Ok(self.path.clone())
    }
}

fn request(r: &types::Request) -> nestr_sdk::Request {
    nestr_sdk::Request {
        operation: r.operation.clone(),
        run_id: r.run_id.clone(),
        service: nestr_sdk::Service {
            name: r.service.name.clone(),
            repo: r.service.repo.clone(),
            path: r.service.path.clone(),
            tags: r.service.tags.clone(),
            depends_on: r.service.depends_on.clone(),
        },
        commit: r.commit.clone(),
        branch: r.branch.clone(),
        config: serde_json::from_str(&r.config).unwrap_or(serde_json::Value::Null),
        workdir: r.workdir.clone(),
        folder: r.folder.clone(),
        dependencies: r
            .dependencies
            .iter()
            .map(|d| nestr_sdk::Dependency {
                service: d.service.clone(),
                repo: d.repo.clone(),
                commit: d.commit.clone(),
                folder: d.folder.clone(),
                wired: d.wired,
            })
            .collect(),
        target: r.target.as_ref().map(|t| nestr_sdk::Target {
            environment: t.environment.clone(),
            previous: t.previous.clone(),
            rollback: t.rollback,
        }),
    }
}

fn tests(t: &Option<types::TestCounts>) -> Option<nestr_sdk::TestCounts> {
    t.as_ref().map(|t| nestr_sdk::TestCounts {
        passed: t.passed,
        failed: t.failed,
        skipped: t.skipped,
    })
}

fn artifacts(a: &[types::Artifact]) -> Vec<nestr_sdk::Artifact> {
    a.iter()
        .map(|a| nestr_sdk::Artifact {
            path: a.path.clone(),
            kind: a.kind.clone(),
            sha256: a.sha256.clone(),
        })
        .collect()
}

fn report(r: &types::Report) -> nestr_sdk::Report {
    nestr_sdk::Report {
        outcome: match &r.outcome {
            types::Outcome::Succeeded => nestr_sdk::Outcome::Succeeded,
            types::Outcome::Skipped(why) => nestr_sdk::Outcome::Skipped(why.clone()),
        },
        summary: r.summary.clone(),
        tests: tests(&r.tests),
        artifacts: artifacts(&r.artifacts),
        metrics: r.metrics.clone(),
    }
}

fn error(e: &types::Error) -> nestr_sdk::Error {
    match e {
        types::Error::Denied(d) => nestr_sdk::Error::Denied(nestr_sdk::Denial {
            capability: d.capability.clone(),
            requested: d.requested.clone(),
            grant: d.grant.clone(),
        }),
        types::Error::InvalidConfig(m) => nestr_sdk::Error::InvalidConfig(m.clone()),
        types::Error::Failed(f) => nestr_sdk::Error::Failed(nestr_sdk::Failure {
            message: f.message.clone(),
            tests: tests(&f.tests),
            artifacts: artifacts(&f.artifacts),
            metrics: f.metrics.clone(),
        }),
    }
}
