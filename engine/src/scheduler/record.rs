//! The one run lifecycle. A [`Recorder`] takes every kind of run — operation runs
//! (`scheduler::execute`) and assemble/sync runs (`repo_run`) — through the same transitions:
//! created with its queued steps (running, or `queued` until a slot of `nestr serve` frees, when
//! it begins) → each step started, logged, finished → the run finished. At
//! each transition it writes the store (runs, steps and their journal in one transaction; log
//! lines and audit entries batched by the log writer in `logs.rs`), updates the metrics, and
//! publishes one [`Event`] for the CLI renderer and the API's event streams, in that order, so a
//! subscriber that sees an event can read it back from the store.

use std::path::{Path, PathBuf};
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
    /// Record the run `queued`: it waits for a slot and begins when its executor starts it.
    pub queued: bool,
}

impl Default for RunMeta {
    fn default() -> Self {
        RunMeta {
            started_by: "cli".into(),
            run_id: None,
            events: Events::default(),
            queued: false,
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
    /// Its cache key, once computed.
    key: Option<String>,
}

/// Records one run; shared by the tasks or threads that execute its steps.
pub(crate) struct Recorder {
    run_id: String,
    operation: String,
    events: Events,
    store: Mutex<Store>,
    slots: Mutex<Vec<Slot>>,
    state_dir: PathBuf,
    /// Recorded `queued`: beginning marks it running.
    queued: bool,
    /// Started when the run begins: a queued run holds no thread.
    writer: Option<LogWriterThread>,
    _active: Option<ActiveGuard>,
}

impl Recorder {
    /// Records a new run with its queued steps (one transaction), running unless `meta.queued`;
    /// a running one begins at once (see [`Recorder::begin`]).
    pub fn start(
        mut store: Store,
        state_dir: &Path,
        meta: &RunMeta,
        spec: RunSpec<'_>,
    ) -> Result<Recorder, StoreError> {
        let run_id = meta.run_id.clone().unwrap_or_else(super::new_run_id);
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
            meta.queued,
        )?;
        let slots = spec
            .steps
            .iter()
            .zip(ids)
            .map(|((name, plugin), id)| Slot {
                name: name.to_string(),
                plugin: plugin.to_string(),
                id,
                started: None,
                key: None,
            })
            .collect();
        let mut rec = Recorder {
            run_id,
            operation: spec.operation.to_string(),
            events: meta.events.clone(),
            store: Mutex::new(store),
            slots: Mutex::new(slots),
            state_dir: state_dir.to_path_buf(),
            queued: meta.queued,
            writer: None,
            _active: None,
        };
        if !meta.queued {
            rec.begin()?;
        }
        Ok(rec)
    }

    /// The run begins: a queued one is marked running; the log writer starts; publishes
    /// `run_started` and a `step_queued` per step. False when a queued run ended while it
    /// waited (recovered by another process): there is nothing to execute. Once begun, true.
    pub fn begin(&mut self) -> Result<bool, StoreError> {
        if self.writer.is_some() {
            return Ok(true);
        }
        if self.queued && !lock(&self.store).begin_run(&self.run_id)? {
            return Ok(false);
        }
        self.writer = Some(LogWriterThread::start(&self.state_dir)?);
        let metrics = crate::metrics::global();
        if let Some(m) = metrics {
            m.runs_active.inc();
        }
        self._active = Some(ActiveGuard(metrics));
        let slots = lock(&self.slots);
        self.events.send(Event::RunStarted {
            run_id: self.run_id.clone(),
            operation: self.operation.clone(),
            steps: slots.len(),
        });
        for slot in slots.iter() {
            self.events.send(Event::StepQueued {
                run_id: self.run_id.clone(),
                service: slot.name.clone(),
            });
        }
        drop(slots);
        tracing::debug!(run = %self.run_id, queued = self.queued, "run begins");
        Ok(true)
    }

    pub fn run_id(&self) -> &str {
        &self.run_id
    }

    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    pub fn operation(&self) -> &str {
        &self.operation
    }

    /// The batched writer of this run's log lines and audit entries (once begun; before, lines
    /// go nowhere — nothing executes a run before it begins).
    pub fn writer(&self) -> LogWriter {
        match &self.writer {
            Some(w) => w.writer(),
            None => LogWriter::detached(),
        }
    }

    /// The run's store connection (held while the guard lives: keep it short).
    pub fn store(&self) -> MutexGuard<'_, Store> {
        lock(&self.store)
    }

    /// Records the cache keys of steps (`(index, key)`): their manifests now, once each (but
    /// those `stored` says are stored already); each step's key with its start or its end.
    pub fn record_keys(
        &self,
        keys: &[(usize, &crate::cache::StepKey)],
        stored: impl Fn(&str) -> bool,
    ) -> Result<(), StoreError> {
        {
            let mut slots = lock(&self.slots);
            for (idx, k) in keys {
                slots[*idx].key = Some(k.key.clone());
            }
        }
        let rows: Vec<(&str, &str)> = keys
            .iter()
            .filter(|(_, k)| !stored(&k.key))
            .map(|(_, k)| (k.key.as_str(), k.text.as_str()))
            .collect();
        lock(&self.store).record_key_manifests(&self.run_id, &rows)
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
        let (id, name, key) = {
            let mut slots = lock(&self.slots);
            let slot = &mut slots[idx];
            if slot.started.is_some() {
                return Ok(());
            }
            slot.started = Some((crate::store::now_ms(), Instant::now()));
            (slot.id, slot.name.clone(), slot.key.clone())
        };
        lock(&self.store).start_step(id, digest, grants, key.as_deref())?;
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
        let (id, name, plugin, started, key) = {
            let slots = lock(&self.slots);
            let s = &slots[idx];
            (
                s.id,
                s.name.clone(),
                s.plugin.clone(),
                s.started,
                s.key.clone(),
            )
        };
        self.writer().flush();
        lock(&self.store).finish_step(id, status, &end, key.as_deref())?;
        Ok(self.ended(status, end, (name, plugin, started, key)))
    }

    /// Ends steps from the cache, together: each is started, given its replayed log (chunks its
    /// `StepLog` made) and finished `cached` in one transaction, then publishes what a step that
    /// runs publishes (`step_started`, its log, `step_finished`), in that order.
    pub fn finish_cached(&self, steps: Vec<CachedEnd>) -> Result<Vec<StepReport>, StoreError> {
        let now = (crate::store::now_ms(), Instant::now());
        let slots: Vec<_> = {
            let mut slots = lock(&self.slots);
            steps
                .iter()
                .map(|c| {
                    let s = &mut slots[c.idx];
                    s.started = Some(now);
                    (s.id, s.name.clone(), s.plugin.clone(), s.key.clone())
                })
                .collect()
        };
        let records: Vec<crate::store::CachedStepRecord<'_>> = steps
            .iter()
            .zip(&slots)
            .map(|(c, (id, _, _, key))| crate::store::CachedStepRecord {
                step_id: *id,
                digest: &c.plugin.digest,
                grants: &c.plugin.grants,
                chunks: &c.chunks,
                end: &c.end,
                key: key.as_deref(),
            })
            .collect();
        lock(&self.store).record_cached_steps(&records)?;
        drop(records);
        let mut reports = Vec::with_capacity(steps.len());
        for (c, (id, name, plugin, key)) in steps.into_iter().zip(slots) {
            self.events.send(Event::StepStarted {
                run_id: self.run_id.clone(),
                service: name.clone(),
                step_id: id,
            });
            for chunk in c.chunks {
                self.events.send(Event::Log {
                    run_id: self.run_id.clone(),
                    service: name.clone(),
                    chunk,
                });
            }
            reports.push(self.ended(StepStatus::Cached, c.end, (name, plugin, Some(now), key)));
        }
        Ok(reports)
    }

    /// The report of a step that ended (counted in `nestr_step_duration_seconds` if it
    /// started), published as `step_finished`.
    fn ended(
        &self,
        status: StepStatus,
        end: StepEnd,
        (name, plugin, started, key): (String, String, Option<(i64, Instant)>, Option<String>),
    ) -> StepReport {
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
            cache: key.map(|key| crate::store::StepCache {
                key,
                hit: end.cache_hit.is_some(),
                source: end.cache_hit.map(|(s, _)| s.to_string()),
                saved_ms: end
                    .cache_hit
                    .map(|(_, ms)| i64::try_from(ms).unwrap_or(i64::MAX)),
            }),
        };
        self.events.send(Event::StepFinished {
            run_id: self.run_id.clone(),
            report: report.clone(),
        });
        report
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

/// Ends run `run_id` `failed` with `why` on its unfinished steps, through a connection of its
/// own (the executor's may be what failed): for a run whose execution failed or panicked.
pub fn end_failed(state_dir: &Path, run_id: &str, why: &str) {
    let why = crate::redact::text(why);
    tracing::error!(run = %run_id, error = %why, "a run failed to complete; it is recorded failed");
    let ended =
        Store::open(state_dir).and_then(|mut s| s.end_abandoned(run_id, RunStatus::Failed, &why));
    if let Err(e) = ended {
        tracing::error!(run = %run_id, error = %e, "could not record the run failed");
    }
}

/// The message of a panic's payload (also read by the binary's panic hook).
pub fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "(no message)".into()
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

/// A step that ends from the cache, for [`Recorder::finish_cached`].
pub struct CachedEnd {
    pub idx: usize,
    /// What its key took from its plugin: the digest and grants recorded as it starts.
    pub plugin: std::sync::Arc<crate::cache::key::PluginParts>,
    /// Its replayed log.
    pub chunks: Vec<LogChunk>,
    pub end: StepEnd,
}
