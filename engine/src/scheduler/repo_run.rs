//! Assemble and sync as runs: operation `assemble` or `sync`, one step per repository (plugin
//! `git`), taken through the one run lifecycle ([`Recorder`]): each step started when work on its
//! repository starts and finished with the repository's outcome (its message is the step's log
//! line) — so the CLI and the API list, show and stream them like operation runs.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::git::{Progress, RepoOutcome};
use crate::model::{RunStatus, StepStatus, Stream};
use crate::store::{LogChunk, StepEnd, Store, StoreError};

use super::record::{Recorder, RunMeta, RunSpec};

/// A recorded assemble/sync run; also the `Progress` the git actions report to.
pub struct RepoRun<'a> {
    rec: Recorder,
    inner: &'a dyn Progress,
    failed: AtomicBool,
}

impl<'a> RepoRun<'a> {
    /// Records a new run of `operation` with a queued step per repository.
    pub fn start(
        store: Store,
        state_dir: &Path,
        operation: &'static str,
        repos: &[String],
        options: serde_json::Value,
        meta: &RunMeta,
        inner: &'a dyn Progress,
    ) -> Result<RepoRun<'a>, StoreError> {
        let steps: Vec<(&str, &str)> = repos.iter().map(|r| (r.as_str(), "git")).collect();
        let rec = Recorder::start(
            store,
            state_dir,
            meta,
            RunSpec {
                operation,
                selection: serde_json::json!({ "repos": repos }),
                options,
                steps: &steps,
            },
        )?;
        Ok(RepoRun {
            rec,
            inner,
            failed: AtomicBool::new(false),
        })
    }

    pub fn run_id(&self) -> &str {
        self.rec.run_id()
    }

    /// The run begins (see [`Recorder::begin`]); false when a queued run ended while it waited.
    pub fn begin(&mut self) -> Result<bool, StoreError> {
        self.rec.begin()
    }

    pub fn state_dir(&self) -> &Path {
        self.rec.state_dir()
    }

    /// Marks the step of `repo` running (once); returns its index.
    fn begin_repo(&self, repo: &str) -> Option<usize> {
        let idx = self.rec.index(repo)?;
        let grants = serde_json::json!({"git": self.rec.operation()});
        if let Err(e) = self.rec.start_step(idx, "", &grants) {
            tracing::error!(repo, error = %e, "could not record the step start");
        }
        Some(idx)
    }

    /// Closes the run; returns its status.
    pub fn close(self) -> Result<RunStatus, StoreError> {
        let status = if self.failed.load(Ordering::Relaxed) {
            RunStatus::Failed
        } else {
            RunStatus::Succeeded
        };
        self.rec.finish(status)?;
        Ok(status)
    }
}

/// The step status a repository outcome stands for.
fn step_status(o: &RepoOutcome) -> StepStatus {
    use crate::model::SyncResult::*;
    match o.result {
        Cloned | Updated | UpToDate => StepStatus::Succeeded,
        Skipped => StepStatus::Skipped,
        Failed => StepStatus::Failed,
    }
}

impl Progress for RepoRun<'_> {
    fn start(&self, repo: &str, what: &str) {
        self.begin_repo(repo);
        self.inner.start(repo, what);
    }

    fn transfer(&self, repo: &str, received: usize, total: usize, bytes: usize) {
        self.inner.transfer(repo, received, total, bytes);
    }

    fn finish(&self, o: &RepoOutcome) {
        self.inner.finish(o);
        let Some(idx) = self.begin_repo(&o.name) else {
            return;
        };
        let status = step_status(o);
        if status == StepStatus::Failed {
            self.failed.store(true, Ordering::Relaxed);
            if let Some(m) = crate::metrics::global() {
                m.sync_failures_total.with_label_values(&[&o.name]).inc();
            }
        }
        (self.rec.log_sink(idx))(&LogChunk {
            line0: 0,
            step_id: self.rec.step_id(idx),
            first_seq: 0,
            count: 1,
            at: crate::store::now_ms(),
            stream: Stream::System,
            level: None,
            text: format!("{}: {}", o.result.as_str(), o.message),
        });
        let duration = self.rec.running_for(idx).unwrap_or_default();
        let end = StepEnd {
            summary: o.result.as_str().replace('_', " "),
            reason: (status != StepStatus::Succeeded).then(|| o.message.clone()),
            tests: None,
            artifacts: Vec::new(),
            metrics: serde_json::json!({"old_head": o.old_head, "head": o.head}),
            duration_ms: u64::try_from(duration.as_millis()).unwrap_or(u64::MAX),
            cache_hit: None,
            provenance: None,
        };
        if let Err(e) = self.rec.finish_step(idx, status, end) {
            tracing::error!(repo = %o.name, error = %e, "could not record the step end");
        }
    }
}
