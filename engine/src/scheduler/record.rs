//! The one run lifecycle. A [`Recorder`] takes every kind of run — operation runs
//! (`scheduler::execute`) and assemble/sync runs (`repo_run`) — through the same transitions:
//! created with its queued steps → each step started, logged, finished → the run finished. At
//! each transition it writes the store (runs, steps and their journal in one transaction; log
//! lines and audit entries batched by the log writer in `logs.rs`), updates the metrics, and
//! publishes one [`Event`] for the CLI renderer and the API's event streams, in that order, so a
//! subscriber that sees an event can read it back from the store.

use std::path::Path;
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use crate::model::{RunStatus, StepStatus};
use crate::plugin::sink::Subscriber;
use crate::store::{LogChunk, NewRun, StepEnd, Store, StoreError};

use super::events::{Event, Events};
use super::logs::{LogWriter, LogWriterThread};
use super::{StepReport, rfc3339};

/// Who starts a run, the id it gets, and where its events go: the identity every kind of run
/// carries.
#[derive(Clone)]
pub struct RunMeta {
    /// `cli` or `api`.
    pub started_by: String,
    /// The id the run gets (a new one when `None`).
    pub run_id: Option<String>,
    pub events: Events,
}

impl Default for RunMeta {
    fn default() -> Self {
        RunMeta {
            started_by: "cli".into(),
            run_id: None,
            events: Events::default(),
        }
    }
}

/// What a run is, as recorded when it is created.
pub(crate) struct RunSpec<'a> {
    pub operation: &'a str,
    pub selection: serde_json::Value,
    pub options: serde_json::Value,
    /// One step per (service or repository, plugin), in plan order.
    pub steps: &'a [(&'a str, &'a str)],
}

/// A step of the run being recorded.
struct Slot {
    name: String,
    plugin: String,
    id: i64,
    /// When it started (Unix ms), once it has.
    started: Option<(i64, Instant)>,
}

/// Records one run; shared by the tasks or threads that execute its steps.
pub(crate) struct Recorder {
    run_id: String,
    operation: String,
    events: Events,
    store: Mutex<Store>,
    slots: Mutex<Vec<Slot>>,
    writer: LogWriterThread,
    _active: ActiveGuard,
}

impl Recorder {
    /// Records a new run with its queued steps (one transaction) and publishes `run_started`
    /// and a `step_queued` per step.
    pub fn start(
        mut store: Store,
        state_dir: &Path,
        meta: &RunMeta,
        spec: RunSpec<'_>,
    ) -> Result<Recorder, StoreError> {
        let run_id = meta.run_id.clone().unwrap_or_else(super::new_run_id);
        let writer = LogWriterThread::start(state_dir)?;
        let ids = store.create_run(
            &NewRun {
                id: run_id.clone(),
                operation: spec.operation.to_string(),
                selection: spec.selection,
                options: spec.options,
                started_by: if meta.started_by.is_empty() {
                    "cli".into()
                } else {
                    meta.started_by.clone()
                },
            },
            spec.steps,
        )?;
        let metrics = crate::metrics::global();
        if let Some(m) = metrics {
            m.runs_active.inc();
        }
        let events = meta.events.clone();
        events.send(Event::RunStarted {
            run_id: run_id.clone(),
            operation: spec.operation.to_string(),
            steps: ids.len(),
        });
        for (name, _) in spec.steps {
            events.send(Event::StepQueued {
                run_id: run_id.clone(),
                service: name.to_string(),
            });
        }
        let slots = spec
            .steps
            .iter()
            .zip(ids)
            .map(|((name, plugin), id)| Slot {
                name: name.to_string(),
                plugin: plugin.to_string(),
                id,
                started: None,
            })
            .collect();
        Ok(Recorder {
            run_id,
            operation: spec.operation.to_string(),
            events,
            store: Mutex::new(store),
            slots: Mutex::new(slots),
            writer,
            _active: ActiveGuard(metrics),
        })
    }

    pub fn run_id(&self) -> &str {
        &self.run_id
    }

    pub fn operation(&self) -> &str {
        &self.operation
    }

    /// The batched writer of this run's log lines and audit entries.
    pub fn writer(&self) -> LogWriter {
        self.writer.writer()
    }

    /// The store id of step `idx`.
    pub fn step_id(&self, idx: usize) -> i64 {
        lock(&self.slots)[idx].id
    }

    /// The index of the step named `name`.
    pub fn index(&self, name: &str) -> Option<usize> {
        lock(&self.slots).iter().position(|s| s.name == name)
    }

    /// Marks step `idx` running with the plugin's digest and the capabilities it was given, and
    /// publishes `step_started`. A step already started is left as it is.
    pub fn start_step(
        &self,
        idx: usize,
        digest: &str,
        grants: &serde_json::Value,
    ) -> Result<(), StoreError> {
        let (id, name) = {
            let mut slots = lock(&self.slots);
            let slot = &mut slots[idx];
            if slot.started.is_some() {
                return Ok(());
            }
            slot.started = Some((crate::store::now_ms(), Instant::now()));
            (slot.id, slot.name.clone())
        };
        lock(&self.store).start_step(id, digest, grants)?;
        self.events.send(Event::StepStarted {
            run_id: self.run_id.clone(),
            service: name,
            step_id: id,
        });
        Ok(())
    }

    /// Where the log of step `idx` goes: the log writer, then a `log` event.
    pub fn log_sink(&self, idx: usize) -> Subscriber {
        let service = lock(&self.slots)[idx].name.clone();
        let writer = self.writer();
        let events = self.events.clone();
        let run_id = self.run_id.clone();
        std::sync::Arc::new(move |chunk: &LogChunk| {
            writer.chunk(chunk);
            events.send(Event::Log {
                run_id: run_id.clone(),
                service: service.clone(),
                chunk: chunk.clone(),
            });
        })
    }

    /// How long step `idx` has been running, if it started.
    pub fn running_for(&self, idx: usize) -> Option<std::time::Duration> {
        lock(&self.slots)[idx].started.map(|(_, t)| t.elapsed())
    }

    /// Finishes step `idx`: its last log lines are committed first, then its end; a step that
    /// ran counts in `nestr_step_duration_seconds`; publishes `step_finished`.
    pub fn finish_step(
        &self,
        idx: usize,
        status: StepStatus,
        end: StepEnd,
    ) -> Result<StepReport, StoreError> {
        let (id, name, plugin, started) = {
            let slots = lock(&self.slots);
            let s = &slots[idx];
            (s.id, s.name.clone(), s.plugin.clone(), s.started)
        };
        self.writer.writer().flush();
        lock(&self.store).finish_step(id, status, &end)?;
        if let (Some(m), Some(_)) = (crate::metrics::global(), started) {
            m.step_duration_seconds
                .with_label_values(&[self.operation.as_str(), plugin.as_str()])
                .observe(end.duration_ms as f64 / 1000.0);
        }
        let report = StepReport {
            service: name,
            status,
            started_at: started.map(|(at, _)| rfc3339(at)),
            finished_at: Some(rfc3339(crate::store::now_ms())),
            duration_ms: end.duration_ms,
            summary: end.summary,
            tests: end.tests,
            reason: end.reason,
            artifacts: end.artifacts,
        };
        self.events.send(Event::StepFinished {
            run_id: self.run_id.clone(),
            report: report.clone(),
        });
        Ok(report)
    }

    /// Finishes the run: every pending log line is committed, then its status; counts it in
    /// `nestr_runs_total`; publishes `run_finished`. Gives the store connection back.
    pub fn finish(self, status: RunStatus) -> Result<Store, StoreError> {
        let Recorder {
            run_id,
            operation,
            events,
            store,
            writer,
            _active,
            ..
        } = self;
        drop(writer);
        let mut store = store.into_inner().unwrap_or_else(|p| p.into_inner());
        store.finish_run(&run_id, status)?;
        if let Some(m) = crate::metrics::global() {
            m.runs_total
                .with_label_values(&[operation.as_str(), status.as_str()])
                .inc();
        }
        drop(_active);
        events.send(Event::RunFinished { run_id, status });
        Ok(store)
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Counts a run as active while it lives.
struct ActiveGuard(Option<&'static crate::metrics::Metrics>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        if let Some(m) = self.0 {
            m.runs_active.dec();
        }
    }
}
