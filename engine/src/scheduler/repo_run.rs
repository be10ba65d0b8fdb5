//! Assemble and sync recorded as runs: operation `assemble` or `sync`, one step per repository
//! (plugin `git`), each step started when work on its repository starts and finished with the
//! repository's outcome (its message is the step's log line), every transition published as an
//! event — so the API can list, show and stream them like operation runs.

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::Instant;

use crate::git::{Progress, RepoOutcome};
use crate::store::{LogChunk, NewRun, RunStatus, StepEnd, StepStatus, Store, StoreError, Stream};

use super::events::{Event, Events};
use super::{StepReport, rfc3339};

/// Who asked for the run and who listens to it.
#[derive(Clone, Default)]
pub struct RunMeta {
    /// `cli` or `api`.
    pub started_by: String,
    pub events: Events,
    /// The id the next run gets (a new one when `None`).
    pub run_id: Option<String>,
}

/// A recorded assemble/sync run; also the `Progress` the git actions report to.
pub struct RepoRun<'a> {
    pub run_id: String,
    operation: &'static str,
    inner: &'a dyn Progress,
    events: Events,
    state: Mutex<State>,
}

/// A repository's step: (repo, step id, when it started: Unix ms and instant).
type RepoStep = (String, i64, Option<(i64, Instant)>);

struct State {
    store: Store,
    steps: Vec<RepoStep>,
    failed: bool,
    /// Repositories whose step could not be recorded (logged once).
    broken: HashSet<String>,
}

impl<'a> RepoRun<'a> {
    /// Records a new run of `operation` with a queued step per repository.
    pub fn start(
        store: Store,
        operation: &'static str,
        repos: &[String],
        options: serde_json::Value,
        meta: &RunMeta,
        inner: &'a dyn Progress,
    ) -> Result<RepoRun<'a>, StoreError> {
        let mut store = store;
        let run_id = meta.run_id.clone().unwrap_or_else(super::new_run_id);
        let steps: Vec<(&str, &str)> = repos.iter().map(|r| (r.as_str(), "git")).collect();
        let ids = store.create_run(
            &NewRun {
                id: run_id.clone(),
                operation: operation.to_string(),
                selection: serde_json::json!({ "repos": repos }),
                options,
                started_by: if meta.started_by.is_empty() {
                    "cli".into()
                } else {
                    meta.started_by.clone()
                },
            },
            &steps,
        )?;
        meta.events.send(Event::RunStarted {
            run_id: run_id.clone(),
            operation: operation.to_string(),
            steps: ids.len(),
        });
        for r in repos {
            meta.events.send(Event::StepQueued {
                run_id: run_id.clone(),
                service: r.clone(),
            });
        }
        Ok(RepoRun {
            run_id,
            operation,
            inner,
            events: meta.events.clone(),
            state: Mutex::new(State {
                store,
                steps: repos
                    .iter()
                    .cloned()
                    .zip(ids)
                    .map(|(r, id)| (r, id, None))
                    .collect(),
                failed: false,
                broken: HashSet::new(),
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Marks the step of `repo` running (once); returns its id and start.
    fn begin(&self, st: &mut State, repo: &str) -> Option<(i64, i64, Instant)> {
        let idx = st.steps.iter().position(|(r, _, _)| r == repo)?;
        let (_, id, started) = &st.steps[idx];
        let id = *id;
        if let Some((at, t)) = started {
            return Some((id, *at, *t));
        }
        let at = crate::store::now_ms();
        let t = Instant::now();
        st.steps[idx].2 = Some((at, t));
        if let Err(e) = st
            .store
            .start_step(id, "", &serde_json::json!({"git": self.operation}))
            && st.broken.insert(repo.to_string())
        {
            tracing::error!(repo, error = %e, "could not record the step start");
        }
        self.events.send(Event::StepStarted {
            run_id: self.run_id.clone(),
            service: repo.to_string(),
            step_id: id,
        });
        Some((id, at, t))
    }

    /// Closes the run; returns its status.
    pub fn close(self) -> Result<RunStatus, StoreError> {
        let mut st = self.state.into_inner().unwrap_or_else(|p| p.into_inner());
        let status = if st.failed {
            RunStatus::Failed
        } else {
            RunStatus::Succeeded
        };
        st.store.finish_run(&self.run_id, status)?;
        if let Some(m) = crate::metrics::global() {
            m.runs_total
                .with_label_values(&[self.operation, status.as_str()])
                .inc();
        }
        self.events.send(Event::RunFinished {
            run_id: self.run_id.clone(),
            status,
        });
        Ok(status)
    }
}

/// The step status a repository outcome stands for.
fn step_status(o: &RepoOutcome) -> StepStatus {
    use crate::store::SyncResult::*;
    match o.result {
        Cloned | Updated | UpToDate => StepStatus::Succeeded,
        Skipped => StepStatus::Skipped,
        Failed => StepStatus::Failed,
    }
}

impl Progress for RepoRun<'_> {
    fn start(&self, repo: &str, what: &str) {
        let mut st = self.lock();
        self.begin(&mut st, repo);
        drop(st);
        self.inner.start(repo, what);
    }

    fn transfer(&self, repo: &str, received: usize, total: usize, bytes: usize) {
        self.inner.transfer(repo, received, total, bytes);
    }

    fn finish(&self, o: &RepoOutcome) {
        self.inner.finish(o);
        let mut st = self.lock();
        let Some((id, started_at, t)) = self.begin(&mut st, &o.name) else {
            return;
        };
        let status = step_status(o);
        if status == StepStatus::Failed {
            st.failed = true;
            if let Some(m) = crate::metrics::global() {
                m.sync_failures_total.with_label_values(&[&o.name]).inc();
            }
        }
        let chunk = LogChunk {
            step_id: id,
            first_seq: 0,
            count: 1,
            at: crate::store::now_ms(),
            stream: Stream::System,
            level: None,
            text: format!("{}: {}", o.result.as_str(), o.message),
        };
        let duration = t.elapsed();
        let end = StepEnd {
            summary: o.result.as_str().replace('_', " "),
            reason: (status != StepStatus::Succeeded).then(|| o.message.clone()),
            tests: None,
            artifacts: Vec::new(),
            metrics: serde_json::json!({"old_head": o.old_head, "head": o.head}),
            duration_ms: u64::try_from(duration.as_millis()).unwrap_or(u64::MAX),
        };
        let recorded = st
            .store
            .insert_logs(std::slice::from_ref(&chunk))
            .and_then(|()| st.store.finish_step(id, status, &end));
        if let Err(e) = recorded {
            tracing::error!(repo = %o.name, error = %e, "could not record the step end");
        }
        drop(st);
        self.events.send(Event::Log {
            run_id: self.run_id.clone(),
            service: o.name.clone(),
            chunk,
        });
        self.events.send(Event::StepFinished {
            run_id: self.run_id.clone(),
            report: StepReport {
                service: o.name.clone(),
                status,
                started_at: Some(rfc3339(started_at)),
                finished_at: Some(rfc3339(crate::store::now_ms())),
                duration_ms: end.duration_ms,
                summary: end.summary,
                tests: None,
                reason: end.reason,
                artifacts: Vec::new(),
            },
        });
    }
}
