//! Runs an operation across services: plan (`plan.rs`), record ([`record`]: the run and its
//! queued steps, through the one run lifecycle in `record.rs`), then execute
//! ([`Started::execute`]) — steps start as soon as all their dependencies' steps are done, up to
//! `-j` at once and the operation's `concurrency`, honouring the continue mode, until done or
//! cancelled. The recorder writes the history (runs, steps, batched log lines in `logs.rs`,
//! audit), the metrics and one event per transition (`events.rs`). `repo_run.rs` takes
//! assemble/sync through the same recorder; `recover.rs` marks runs of dead engines
//! `interrupted`.

pub mod events;
pub(crate) mod logs;
pub(crate) mod plan;
pub(crate) mod record;
pub(crate) mod recover;
pub(crate) mod repo_run;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tokio::task::JoinSet;

use crate::cache::provenance::StepProvenance;
use crate::cache::{Blobs, StepKey};
use crate::contain::Containment;
use crate::git;
use crate::manifest::Manifest;
use crate::model::{CacheMode, ContinueMode};
use crate::model::{RunStatus, StepStatus};
use crate::plugin::caps::{self, Effective};
use crate::plugin::sink::{DEFAULT_OUTPUT_CAP, StepLog};
use crate::plugin::state::{Cancel, StepContext};
use crate::plugin::{Host, LoadedPlugin, StepOutcome, StepRequest, bindings::types};
use crate::redact::Redactor;
use crate::store::{StepEnd, Store, StoreError};
pub mod exec_run;
pub use plan::{
    Plan, PlanView, PlanViewStep, PlannedStep, Selection, SelectionError, plan, select,
};
use record::{Recorder, RunSpec};
pub use record::{RunMeta, panic_text};

/// How to run an operation (who runs it is [`RunMeta`]).
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Steps at once.
    pub jobs: usize,
    pub continue_mode: ContinueMode,
    /// How operations with `cache = true` use the cache.
    pub cache: CacheMode,
    /// Write each step's host calls as a tape into this folder (`SERVICE.OPERATION.json`).
    pub record: Option<PathBuf>,
    /// A deploy to an environment: each step's target and config there.
    pub deploy: Option<Arc<DeployTargets>>,
}

/// What the steps of a deploy run are told: the environment, and for each service where its
/// deploy goes and with which config.
#[derive(Debug, Clone, Default)]
pub struct DeployTargets {
    pub environment: String,
    pub services: HashMap<String, DeployTarget>,
}

/// One service's deploy (or rollback) in an environment.
#[derive(Debug, Clone)]
pub struct DeployTarget {
    /// The version deployed there before this apply (what a rollback returns to).
    pub previous: Option<String>,
    pub rollback: bool,
    /// Its deploy `config` with the environment's overrides merged in.
    pub config: serde_json::Value,
    /// The engine's health gate after it, when the environment has one.
    pub gate: Option<crate::plugin::gate::HealthGate>,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            jobs: std::thread::available_parallelism().map_or(2, |n| n.get()),
            continue_mode: ContinueMode::Never,
            cache: CacheMode::ReadWrite,
            record: None,
            deploy: None,
        }
    }
}

/// Why a run could not start.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("{0}")]
    Selection(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<SelectionError> for PlanError {
    fn from(e: SelectionError) -> Self {
        PlanError::Selection(e.0)
    }
}

/// A step as reported by `nestr run --json`.
#[derive(Debug, Clone, Serialize)]
pub struct StepReport {
    pub service: String,
    pub status: StepStatus,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub duration_ms: u64,
    pub summary: String,
    pub tests: Option<crate::model::TestCounts>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Files the step produced: `[{"path", "kind", "sha256"}]`.
    pub artifacts: Vec<crate::model::Artifact>,
    /// Its cache key and whether it was a hit.
    pub cache: Option<crate::store::StepCache>,
}

/// The result of a run.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    pub run_id: String,
    pub operation: String,
    pub status: RunStatus,
    pub steps: Vec<StepReport>,
}

pub use crate::model::rfc3339;

/// A time-ordered, unique run id.
pub fn new_run_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(ms);
    h.write_u32(std::process::id());
    format!("{ms:013x}{:06x}", h.finish() & 0xff_ffff)
}

/// A recorded operation run, ready to execute.
pub struct Started {
    plan: Plan,
    recorder: Recorder,
    opts: RunOptions,
    /// The repositories' state, read while the run was being recorded (see
    /// [`record_reading_ahead`]).
    repos: Option<crate::cache::key::RepoStates>,
}

/// Records a run of `plan` (its steps queued) and returns it ready to [`Started::execute`].
pub fn record(
    store: Store,
    state_dir: &Path,
    meta: &RunMeta,
    plan: Plan,
    sel: &Selection,
    opts: &RunOptions,
) -> Result<Started, PlanError> {
    let steps: Vec<(&str, &str)> = plan
        .steps
        .iter()
        .map(|s| (s.service.as_str(), s.plugin.as_deref().unwrap_or("-")))
        .collect();
    let recorder = Recorder::start(
        store,
        state_dir,
        meta,
        RunSpec {
            operation: &plan.operation,
            selection: serde_json::to_value(sel).unwrap_or_default(),
            options: serde_json::json!({
                "jobs": opts.jobs,
                "continue": opts.continue_mode.as_str(),
                "cache": opts.cache.as_str(),
            }),
            steps: &steps,
        },
    )?;
    Ok(Started {
        plan,
        recorder,
        opts: opts.clone(),
        repos: None,
    })
}

/// The services of `plan` whose steps will have a key: those that start with a plugin.
fn keyed(plan: &Plan) -> Vec<&str> {
    plan.steps
        .iter()
        .filter(|s| s.skip.is_none() && s.plugin.is_some())
        .map(|s| s.service.as_str())
        .collect()
}

/// Records a run of `plan`, as [`record`] does, while two threads read the state of its
/// repositories that its keys need (`cache::key::read_repos`): a run that executes at once
/// (the CLI's) overlaps the two. A queued run reads them when it begins.
pub fn record_reading_ahead(
    manifest: &Manifest,
    store: Store,
    state_dir: &Path,
    meta: &RunMeta,
    plan: Plan,
    sel: &Selection,
    opts: &RunOptions,
) -> Result<Started, PlanError> {
    let names: Vec<String> = keyed(&plan).into_iter().map(str::to_string).collect();
    std::thread::scope(|scope| {
        let ahead = scope.spawn(|| {
            let names: Vec<&str> = names.iter().map(String::as_str).collect();
            crate::cache::key::read_repos(manifest, &names, |_| false)
        });
        let started = record(store, state_dir, meta, plan, sel, opts);
        let repos = ahead.join().ok();
        started.map(|s| Started { repos, ..s })
    })
}

impl Started {
    pub fn run_id(&self) -> &str {
        self.recorder.run_id()
    }

    /// Executes the run on a runtime of its own (the CLI's way; the API executes a run on the
    /// server's runtime with [`Started::execute`]).
    pub fn execute_blocking(
        self,
        manifest: &Manifest,
        cancel: Cancel,
    ) -> Result<(RunReport, Store), PlanError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            // Check timers and I/O after every task poll: plugin code yields every 10 ms, and a
            // worker that runs it must not leave other steps' deadlines waiting for 61 polls.
            .event_interval(1)
            .enable_all()
            .build()
            .map_err(|e| PlanError::Selection(format!("cannot start the async runtime: {e}")))?;
        let result = runtime.block_on(self.execute(manifest, cancel));
        // A blocking task a plugin left stuck (abandoned at its deadline) must not hold the run
        // up: the runtime is shut down without waiting for it.
        runtime.shutdown_background();
        result
    }

    /// Begins the run (a queued one is marked running), executes it to its end and records how
    /// it ended; gives the store connection back. A run whose execution fails or panics still
    /// ends in the store: `failed`, with the reason on its unfinished steps.
    pub async fn execute(
        self,
        manifest: &Manifest,
        cancel: Cancel,
    ) -> Result<(RunReport, Store), PlanError> {
        use futures_util::FutureExt;
        let run_id = self.run_id().to_string();
        let state_dir = self.recorder.state_dir().to_path_buf();
        let outcome = std::panic::AssertUnwindSafe(self.execute_inner(manifest, cancel))
            .catch_unwind()
            .await;
        let why = match outcome {
            Ok(Ok(done)) => return Ok(done),
            Ok(Err(e)) => e.to_string(),
            Err(panic) => format!(
                "the engine failed while executing this run (a bug: please report it): {}",
                record::panic_text(panic.as_ref())
            ),
        };
        record::end_failed(&state_dir, &run_id, &why);
        Err(PlanError::Selection(why))
    }

    async fn execute_inner(
        self,
        manifest: &Manifest,
        cancel: Cancel,
    ) -> Result<(RunReport, Store), PlanError> {
        let Started {
            plan,
            mut recorder,
            opts,
            repos,
        } = self;
        if !recorder.begin()? {
            return Err(PlanError::Selection(
                "the run ended while it was queued (its server stopped)".into(),
            ));
        }
        // The unit test of the guard in `execute` (compiled out of the engine).
        #[cfg(test)]
        if plan.operation == "panic-for-test" {
            panic!("a fault injected by a test");
        }
        // Every service folder lies inside its repository's folder (`service_dir` makes sure),
        // so refusing programs inside any repository folder covers them all, at one lookup per
        // repository rather than per service.
        let repo_real: HashMap<String, PathBuf> = manifest
            .repos
            .iter()
            .filter_map(|repo| {
                let real = std::fs::canonicalize(manifest.repo_dir(repo)).ok()?;
                Some((repo.name.clone(), real))
            })
            .collect();
        let protected = repo_real.values().cloned().collect();
        let blobs = Blobs::new(recorder.state_dir());
        let remote = if opts.cache == CacheMode::Off {
            None
        } else {
            match crate::cache::remote::Remote::configure(&manifest.cache, recorder.state_dir()) {
                Ok(r) => r,
                Err(why) => {
                    tracing::warn!("remote cache: {why}");
                    None
                }
            }
        };
        let exec = Executor {
            manifest,
            protected,
            repo_real,
            rec: &recorder,
            cancel: cancel.clone(),
            opts,
            blobs,
            stored: std::sync::atomic::AtomicUsize::new(0),
            remote,
            from_remote: Default::default(),
            to_upload: Default::default(),
            used: Default::default(),
            entries: Default::default(),
            logs: Default::default(),
            maskers: Default::default(),
        };
        let reports = exec.execute(&plan, repos).await?;
        let status = if cancel.is_cancelled() {
            RunStatus::Cancelled
        } else if reports.iter().all(|r| r.status.is_ok()) {
            RunStatus::Succeeded
        } else {
            RunStatus::Failed
        };
        let run_id = recorder.run_id().to_string();
        let store = recorder.finish(status)?;
        Ok((
            RunReport {
                run_id,
                operation: plan.operation,
                status,
                steps: reports,
            },
            store,
        ))
    }
}

/// Each repository's checked-out commit and branch, by name (read once per run).
type Heads = HashMap<String, (Option<String>, Option<String>)>;

struct Executor<'a> {
    manifest: &'a Manifest,
    /// Every repository folder of the workspace (canonical; they hold every service folder):
    /// programs are never found on PATH there.
    protected: Arc<[PathBuf]>,
    /// Each repository's folder, canonical (those that exist).
    repo_real: HashMap<String, PathBuf>,
    rec: &'a Recorder,
    cancel: Cancel,
    opts: RunOptions,
    blobs: Blobs,
    /// Results stored in the cache by this run.
    stored: std::sync::atomic::AtomicUsize,
    /// The shared remote cache, if one is configured and usable.
    remote: Option<crate::cache::remote::Remote>,
    /// Keys whose entries this run fetched from the remote cache.
    from_remote: std::sync::Mutex<std::collections::HashSet<String>>,
    /// Keys this run stored, to upload to the remote cache when it ends.
    to_upload: std::sync::Mutex<Vec<String>>,
    /// Keys whose entries this run used, marked used when it ends (in one statement).
    used: std::sync::Mutex<Vec<String>>,
    /// The entries stored under this run's keys, read once before the first lookup (with those
    /// the remote cache served); a lookup takes its entry out.
    entries: std::sync::Mutex<HashMap<String, crate::store::CacheEntry>>,
    /// The stored logs this run's hits replayed, each read once.
    logs: crate::cache::LogMemo,
    /// The masker of each plugin's hits (its granted secrets' values), made once.
    maskers: std::sync::Mutex<HashMap<String, Arc<Redactor>>>,
}

/// What a step that runs keeps for when it ends: where it ran and what produced it.
struct Running {
    service_dir: PathBuf,
    provenance: StepProvenance,
}

/// A step ready to start, or the outcome that ends it before it starts.
enum Prepared {
    Ready(StepRequest, Arc<StepContext>),
    Refused(StepOutcome),
}

/// How a finished step counts for the steps that depend on it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Done {
    Ok,
    NotOk,
}

type Finished = (usize, StepOutcome);

impl Executor<'_> {
    async fn execute(
        &self,
        plan: &Plan,
        repos: Option<crate::cache::key::RepoStates>,
    ) -> Result<Vec<StepReport>, PlanError> {
        // The plugin host starts with the first step that runs (a run of hits needs none).
        let mut host_cell: Option<Result<Arc<Host>, String>> = None;
        let mut plugins: HashMap<String, Result<Arc<LoadedPlugin>, String>> = HashMap::new();

        let limit = self
            .opts
            .jobs
            .max(1)
            .min(plan.concurrency().map_or(usize::MAX, |c| c as usize));
        let mut reports: Vec<Option<StepReport>> = vec![None; plan.steps.len()];
        let mut done: HashMap<&str, Done> = HashMap::new();
        let mut pending: Vec<usize> = (0..plan.steps.len()).collect();
        let mut running: JoinSet<Finished> = JoinSet::new();
        // Which step each task runs: a task that panics still ends its step.
        let mut tasks: HashMap<tokio::task::Id, usize> = HashMap::new();
        let mut first_failure: Option<String> = None;
        // Each repository's commit and branch, as the keys read them (for the steps' provenance).
        let (keys, mut heads) = self.keys(plan, repos);
        self.prefetch(plan, &keys);
        let mut running_info: Vec<Option<Running>> = (0..plan.steps.len()).map(|_| None).collect();
        // Hits found and not yet recorded; the steps whose cache entry was looked up.
        let mut hits: Vec<record::CachedEnd> = Vec::new();
        let mut tried = vec![false; plan.steps.len()];

        loop {
            let mut i = 0;
            while i < pending.len() {
                let idx = pending[i];
                let step = &plan.steps[idx];
                let blocked: Option<(StepStatus, String)> = if self.cancel.is_cancelled() {
                    Some((
                        StepStatus::Cancelled,
                        "the run was cancelled before this step started".into(),
                    ))
                } else if let Some(why) = &step.skip {
                    Some((StepStatus::Skipped, why.clone()))
                } else if let (ContinueMode::Never, Some(f)) =
                    (self.opts.continue_mode, &first_failure)
                {
                    Some((StepStatus::Skipped, format!("not started: {f}")))
                } else if !step
                    .depends_on
                    .iter()
                    .all(|d| done.contains_key(d.as_str()))
                {
                    i += 1;
                    continue;
                } else if self.opts.continue_mode != ContinueMode::Always
                    && let Some(d) = step
                        .depends_on
                        .iter()
                        .find(|d| done.get(d.as_str()) == Some(&Done::NotOk))
                {
                    Some((
                        StepStatus::Skipped,
                        format!("not started: its dependency `{d}` did not succeed"),
                    ))
                } else {
                    None
                };
                if let Some((status, why)) = blocked {
                    self.record_hits(&mut hits, &mut reports)?;
                    let ok = status == StepStatus::Skipped && step.skip.is_some();
                    let outcome = StepOutcome::new(status, short_reason(&why), Some(why));
                    reports[idx] = Some(self.finish(idx, outcome)?);
                    done.insert(
                        step.service.as_str(),
                        if ok { Done::Ok } else { Done::NotOk },
                    );
                    pending.remove(i);
                    continue;
                }
                // Start it: from the cache when its result is stored (a hit takes no slot),
                // else by its plugin.
                let key = keys.get(idx).and_then(Option::as_deref);
                if let Some(key) = key
                    && self.cached(step)
                    && self.opts.cache.reads()
                    && !tried[idx]
                {
                    tried[idx] = true;
                    match self.try_hit(idx, step, key, &mut heads)? {
                        Ok(hit) => {
                            // A hit is a success: its dependents may start in this pass; it is
                            // recorded with the other hits before anything else is.
                            done.insert(step.service.as_str(), Done::Ok);
                            hits.push(hit);
                            pending.remove(i);
                            continue;
                        }
                        Err(None) => {}
                        Err(Some(why)) => {
                            tracing::warn!(service = %step.service, "cache entry unusable: {why}");
                        }
                    }
                }
                if running.len() >= limit {
                    i += 1;
                    continue;
                }
                pending.remove(i);
                self.record_hits(&mut hits, &mut reports)?;
                let host = host_cell.get_or_insert_with(Host::shared).clone();
                let plugin_name = step.plugin.clone().unwrap_or_default();
                let plugin = match plugins.get(&plugin_name) {
                    Some(p) => p.clone(),
                    None => {
                        let p = match &host {
                            Ok(h) => crate::plugin::load_named(h, self.manifest, &plugin_name)
                                .await
                                .map(Arc::new),
                            Err(e) => Err(format!("the plugin host could not start: {e}")),
                        };
                        plugins.insert(plugin_name.clone(), p.clone());
                        p
                    }
                };
                let prepared = match (&host, plugin) {
                    (Ok(h), Ok(p)) => match self.prepare(idx, step, &p, &mut heads)? {
                        Prepared::Ready(req, ctx) => {
                            let repo = m_repo(self.manifest, &step.service);
                            running_info[idx] = Some(Running {
                                service_dir: ctx.service_dir.clone(),
                                provenance: StepProvenance {
                                    repo: repo.map(|r| r.name.clone()),
                                    url: repo.map(|r| crate::redact::text(&r.url)),
                                    commit: req.commit.clone(),
                                    branch: req.branch.clone(),
                                    ..StepProvenance::default()
                                },
                            });
                            Ok((h.clone(), p, req, ctx))
                        }
                        Prepared::Refused(outcome) => Err(outcome),
                    },
                    (_, Err(e)) => Err(StepOutcome::new(
                        StepStatus::Failed,
                        "the plugin could not be loaded",
                        Some(e),
                    )),
                    (Err(e), _) => Err(StepOutcome::new(
                        StepStatus::Failed,
                        "the plugin host could not start",
                        Some(e.clone()),
                    )),
                };
                match prepared {
                    Err(outcome) => {
                        // Refused before it started: no start time.
                        let report = self.finish(idx, outcome)?;
                        settle(&mut done, &mut first_failure, step, &report);
                        reports[idx] = Some(report);
                    }
                    Ok((host, plugin, request, ctx)) => {
                        #[cfg(test)]
                        let inject = plan.operation == "panic-in-step-for-test";
                        let task = running.spawn(async move {
                            // The unit test of the step-task guard (compiled out of the engine).
                            #[cfg(test)]
                            if inject {
                                panic!("a fault injected into a step by a test");
                            }
                            let outcome = host.run_step(&plugin, &request, ctx).await;
                            (idx, outcome)
                        });
                        tasks.insert(task.id(), idx);
                    }
                }
            }
            self.record_hits(&mut hits, &mut reports)?;
            if pending.is_empty() && running.is_empty() {
                break;
            }
            let Some(joined) = running.join_next_with_id().await else {
                // Nothing runs but steps wait: cannot happen with a valid plan; do not hang.
                for idx in std::mem::take(&mut pending) {
                    let o = StepOutcome::new(
                        StepStatus::Skipped,
                        "not started",
                        Some("its dependencies never finished".into()),
                    );
                    reports[idx] = Some(self.finish(idx, o)?);
                }
                break;
            };
            let (idx, outcome) = match joined {
                Ok((id, f)) => {
                    tasks.remove(&id);
                    f
                }
                Err(e) => {
                    let Some(idx) = tasks.remove(&e.id()) else {
                        return Err(PlanError::Selection(format!("a step task failed: {e}")));
                    };
                    let why = if e.is_panic() {
                        format!(
                            "the engine failed while running this step (a bug: please report \
                             it): {}",
                            record::panic_text(e.into_panic().as_ref())
                        )
                    } else {
                        format!("the step's task ended: {e}")
                    };
                    (
                        idx,
                        StepOutcome::new(StepStatus::Failed, "the engine failed", Some(why)),
                    )
                }
            };
            let step = &plan.steps[idx];
            let report = match running_info[idx].take() {
                Some(info) => self.finish_ran(
                    idx,
                    step,
                    keys.get(idx).and_then(Option::as_deref),
                    outcome,
                    info,
                )?,
                None => self.finish(idx, outcome)?,
            };
            settle(&mut done, &mut first_failure, step, &report);
            reports[idx] = Some(report);
        }
        self.upload();
        let used = std::mem::take(&mut *self.used.lock().unwrap_or_else(|p| p.into_inner()));
        if let Err(e) = self.rec.store().touch_cache_entries(&used) {
            tracing::debug!("cache entries not marked used: {e}");
        }
        if self.stored.load(std::sync::atomic::Ordering::Relaxed) > 0 {
            let max = self
                .manifest
                .cache
                .max_size
                .unwrap_or(crate::cache::DEFAULT_MAX_SIZE);
            if let Err(e) = crate::cache::prune(&mut self.rec.store(), &self.blobs, Some(max), None)
            {
                tracing::warn!("the cache could not be pruned: {e}");
            }
        }
        Ok(reports.into_iter().flatten().collect())
    }

    /// Reads the local cache's entries under the keys of the steps that may be hits, at once.
    fn read_entries(&self, plan: &Plan, keys: &[Option<Arc<StepKey>>]) {
        if !self.opts.cache.reads() {
            return;
        }
        let wanted: Vec<&str> = plan
            .steps
            .iter()
            .zip(keys)
            .filter(|(step, _)| self.cached(step))
            .filter_map(|(_, k)| Some(k.as_ref()?.key.as_str()))
            .collect();
        if wanted.is_empty() {
            return;
        }
        // Unreadable: every step misses (and runs).
        match self.rec.store().cache_entries(&wanted) {
            Ok(found) => *self.entries.lock().unwrap_or_else(|p| p.into_inner()) = found,
            Err(e) => tracing::warn!("the local cache cannot be read: {e}"),
        }
    }

    /// Fetches, from the remote cache, the entries of the cached steps the local cache lacks
    /// (many at once, each checked), and records them locally: the steps then hit as if they
    /// were stored here, with source `remote`. A remote that fails is one warning; its steps
    /// miss and run.
    fn prefetch(&self, plan: &Plan, keys: &[Option<Arc<StepKey>>]) {
        let Some(remote) = &self.remote else { return };
        if !self.opts.cache.reads() {
            return;
        }
        let wanted: Vec<String> = {
            let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
            plan.steps
                .iter()
                .zip(keys)
                .filter(|(step, _)| self.cached(step))
                .filter_map(|(_, k)| k.as_ref())
                .filter(|k| !entries.contains_key(&k.key))
                .map(|k| k.key.clone())
                .collect()
        };
        if wanted.is_empty() {
            return;
        }
        let fetched = remote.fetch_all(&wanted, &self.blobs);
        let mut failures: Vec<String> = Vec::new();
        let mut found = Vec::new();
        for (key, r) in wanted.iter().zip(fetched) {
            match r {
                Ok(Some(f)) => found.push((key, f)),
                Ok(None) => {}
                Err(why) => failures.push(why),
            }
        }
        // Kept locally in one transaction.
        let rows: Vec<(&crate::store::CacheEntry, &[(String, u64)])> = found
            .iter()
            .map(|(_, f)| (&f.entry, f.held.as_slice()))
            .collect();
        match self.rec.store().put_cache_entries(&rows) {
            Ok(()) => {
                let mut got = self.from_remote.lock().unwrap_or_else(|p| p.into_inner());
                got.extend(found.iter().map(|(k, _)| (*k).clone()));
                let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
                for (key, f) in found {
                    entries.insert(key.clone(), f.entry);
                }
            }
            Err(e) => failures.push(format!("{} entries not kept: {e}", found.len())),
        }
        failures.dedup();
        if let Some(first) = failures.first() {
            tracing::warn!(
                "remote cache {}: {first}{}; the steps it could not serve run",
                remote.url(),
                match failures.len() {
                    1 => String::new(),
                    n => format!(" (and {} more problems)", n - 1),
                }
            );
        }
    }

    /// Uploads what this run stored to the remote cache (unless it is read-only); a failure is
    /// a warning.
    fn upload(&self) {
        let Some(remote) = &self.remote else { return };
        let keys = std::mem::take(&mut *self.to_upload.lock().unwrap_or_else(|p| p.into_inner()));
        if keys.is_empty() || remote.read_only() || remote.is_down() {
            return;
        }
        let entries: Vec<crate::store::CacheEntry> = {
            let mut store = self.rec.store();
            keys.iter()
                .filter_map(|k| store.cache_entry(k).ok().flatten())
                .collect()
        };
        let failures = remote.upload_all(&entries, &self.blobs);
        if let Some((key, why)) = failures.first() {
            tracing::warn!(
                "remote cache {}: the result under {}… was not uploaded: {why}{}",
                remote.url(),
                &key[..key.len().min(12)],
                match failures.len() {
                    1 => String::new(),
                    n => format!(" (and {} more)", n - 1),
                }
            );
        }
    }

    /// Records the hits found so far, in one transaction (see `Recorder::finish_cached`).
    fn record_hits(
        &self,
        hits: &mut Vec<record::CachedEnd>,
        reports: &mut [Option<StepReport>],
    ) -> Result<(), PlanError> {
        if hits.is_empty() {
            return Ok(());
        }
        let idxs: Vec<usize> = hits.iter().map(|h| h.idx).collect();
        let ended = self.rec.finish_cached(std::mem::take(hits))?;
        for (idx, report) in idxs.into_iter().zip(ended) {
            reports[idx] = Some(report);
        }
        Ok(())
    }

    /// Whether `step`'s operation has `cache = true` (and this run uses the cache at all).
    fn cached(&self, step: &PlannedStep) -> bool {
        self.opts.cache != CacheMode::Off
            && self
                .manifest
                .service(&step.service)
                .and_then(|s| self.manifest.operation(s, self.rec.operation()))
                .is_some_and(|o| o.cache)
    }

    /// The key of every step that will start (computed before any runs; none for a step that
    /// is skipped by plan, or whose key cannot be computed: it runs uncached), recorded with the
    /// steps.
    fn keys(
        &self,
        plan: &Plan,
        repos: Option<crate::cache::key::RepoStates>,
    ) -> (Vec<Option<Arc<StepKey>>>, Heads) {
        let state_dir = self.rec.state_dir().to_path_buf();
        let (keys, learned, heads) = {
            let store = self.rec.store();
            let mut k = crate::cache::Keys::new(
                self.manifest,
                self.rec.operation(),
                &state_dir,
                Some(&store),
            );
            if let Some(read) = repos {
                k.use_repos(read);
            }
            k.preload(&keyed(plan));
            let keys: Vec<Option<Arc<StepKey>>> = plan
                .steps
                .iter()
                .map(|step| {
                    if step.skip.is_some() || step.plugin.is_none() {
                        return None;
                    }
                    match k.key(&step.service) {
                        Ok(key) => Some(key),
                        Err(e) => {
                            tracing::debug!(service = %step.service, "no cache key: {e}");
                            None
                        }
                    }
                })
                .collect();
            (keys, std::mem::take(&mut k.learned), k.heads())
        };
        if let Err(e) = self.rec.store().remember_program_digests(&learned) {
            tracing::debug!("program digests not remembered: {e}");
        }
        let rows: Vec<(usize, &StepKey)> = keys
            .iter()
            .enumerate()
            .filter_map(|(i, k)| k.as_deref().map(|k| (i, k)))
            .collect();
        // The entries stored under the keys are read now: the manifest of a key with a local
        // entry was recorded by the run that stored it (manifests are never deleted).
        self.read_entries(plan, &keys);
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = self.rec.record_keys(&rows, |k| entries.contains_key(k)) {
            tracing::warn!("the steps' cache keys could not be recorded: {e}");
        }
        (keys, heads)
    }

    /// How step `idx` ends from the cache when a usable result is stored under `key`: its
    /// outputs restored, its log replayed, its report the stored one, status `cached` (recorded
    /// with other hits by `Recorder::finish_cached`). `Err(None)`: nothing stored;
    /// `Err(Some(why))`: stored but unusable (the step runs).
    fn try_hit(
        &self,
        idx: usize,
        step: &PlannedStep,
        key: &StepKey,
        heads: &mut Heads,
    ) -> Result<Result<record::CachedEnd, Option<String>>, PlanError> {
        let m = self.manifest;
        let Some(service) = m.service(&step.service) else {
            return Ok(Err(None));
        };
        let Some(repo) = m.repo(&service.repo) else {
            return Ok(Err(None));
        };
        // The service folder is resolved (and checked) only for a hit that restores outputs
        // into it: the key already holds the folder's state.
        let dir = || match self.repo_real.get(&repo.name) {
            Some(real) => service_dir_in(&m.repo_dir(repo), real, &service.path),
            // Not resolved at the run's start: `service_dir` resolves it (or says it is missing).
            None => service_dir(&m.repo_dir(repo), &service.path),
        };
        let started = Instant::now();
        let entry = self
            .entries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&key.key);
        let Some(entry) = entry else {
            return Ok(Err(None));
        };
        let hit = match crate::cache::lookup(
            &mut self.rec.store(),
            &self.blobs,
            &self.logs,
            entry,
            dir,
        ) {
            Ok(Some(hit)) => hit,
            Ok(None) => return Ok(Err(None)),
            Err(why) => return Ok(Err(Some(why))),
        };
        let Some(parts) = key.plugin.clone() else {
            return Ok(Err(None));
        };
        let plugin = step.plugin.as_deref().unwrap_or_default();
        let masker = self
            .maskers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(plugin.to_string())
            .or_insert_with(|| {
                let secrets: Vec<String> = m
                    .plugins
                    .get(plugin)
                    .map(|d| {
                        d.grants
                            .secrets
                            .iter()
                            .filter_map(|n| std::env::var(n).ok())
                            .collect()
                    })
                    .unwrap_or_default();
                Arc::new(Redactor::new(secrets.iter().map(String::as_str)))
            })
            .clone();
        let chunks = Arc::new(std::sync::Mutex::new(Vec::new()));
        let collect = {
            let chunks = chunks.clone();
            Arc::new(move |c: &crate::store::LogChunk| {
                chunks
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(c.clone());
            })
        };
        let log = StepLog::new(self.rec.step_id(idx), masker, u64::MAX / 4, vec![collect]);
        let r = hit.result;
        log.system(format!(
            "[nestr: cached — not run; the result stored by run {} under key {}… is used, its \
             log follows{}]",
            r.run_id,
            &key.key[..12],
            if r.outputs.is_empty() {
                String::new()
            } else {
                format!(" ({} output files restored)", r.outputs.len())
            }
        ));
        for piece in hit.log.iter() {
            log.lines(piece.stream, piece.level.as_deref(), &piece.text);
        }
        let (commit, branch) = heads
            .entry(repo.name.clone())
            .or_insert_with(|| git::head_and_branch(m, repo))
            .clone();
        self.used
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(key.key.clone());
        let provenance = StepProvenance {
            repo: Some(repo.name.clone()),
            url: Some(crate::redact::text(&repo.url)),
            commit,
            branch,
            outputs: r.outputs.clone(),
            cached_from: Some(r.run_id.clone()),
            ..StepProvenance::default()
        };
        let end = StepEnd {
            summary: r.summary,
            reason: None,
            tests: r.tests,
            artifacts: r.artifacts,
            metrics: r.metrics,
            duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            cache_hit: Some((
                if self
                    .from_remote
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .contains(&key.key)
                {
                    "remote"
                } else {
                    "local"
                },
                r.duration_ms,
            )),
            provenance: serde_json::to_string(&provenance).ok(),
        };
        drop(log);
        let chunks = std::mem::take(&mut *chunks.lock().unwrap_or_else(|p| p.into_inner()));
        Ok(Ok(record::CachedEnd {
            idx,
            plugin: parts,
            chunks,
            end,
        }))
    }

    /// Records how a step that ran ended, with what produced it; a succeeded step of a cached
    /// operation is stored under its key first.
    fn finish_ran(
        &self,
        idx: usize,
        step: &PlannedStep,
        key: Option<&StepKey>,
        mut outcome: StepOutcome,
        info: Running,
    ) -> Result<StepReport, PlanError> {
        let mut provenance = info.provenance;
        let (runs, more) = std::mem::take(&mut outcome.programs);
        provenance.programs_run = runs;
        provenance.programs_not_recorded = more;
        if let Some(key) = key
            && outcome.status == StepStatus::Succeeded
            && self.cached(step)
            && self.opts.cache.writes()
        {
            self.rec.writer().flush();
            let outputs = self
                .manifest
                .service(&step.service)
                .and_then(|s| self.manifest.operation(s, self.rec.operation()))
                .map(|o| o.outputs.clone())
                .unwrap_or_default();
            let stored = crate::cache::store_result(
                &mut self.rec.store(),
                &self.blobs,
                &crate::cache::ToStore {
                    key: &key.key,
                    operation: self.rec.operation(),
                    service: &step.service,
                    run_id: self.rec.run_id(),
                    step_id: self.rec.step_id(idx),
                    summary: &outcome.summary,
                    tests: outcome.tests,
                    artifacts: &outcome.artifacts,
                    metrics: &outcome.metrics,
                    duration_ms: u64::try_from(outcome.duration.as_millis()).unwrap_or(u64::MAX),
                    service_dir: &info.service_dir,
                    outputs: &outputs,
                },
            );
            match stored {
                Ok(outputs) => {
                    provenance.outputs = outputs;
                    self.stored
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if self.remote.is_some() {
                        self.to_upload
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .push(key.key.clone());
                    }
                }
                Err(e) => tracing::warn!(service = %step.service, "result not cached: {e}"),
            }
        }
        let status = outcome.status;
        let end = step_end(outcome, serde_json::to_string(&provenance).ok());
        Ok(self.rec.finish_step(idx, status, end)?)
    }

    /// Capabilities, service folder, log and request of a step; or why it cannot start.
    fn prepare(
        &self,
        idx: usize,
        step: &PlannedStep,
        plugin: &LoadedPlugin,
        heads: &mut Heads,
    ) -> Result<Prepared, PlanError> {
        let m = self.manifest;
        let Some(service) = m.service(&step.service) else {
            return Ok(Prepared::Refused(StepOutcome::new(
                StepStatus::Failed,
                "service missing from the manifest",
                None,
            )));
        };
        let step_id = self.rec.step_id(idx);
        let subscribers = vec![self.rec.log_sink(idx)];
        let grants = m
            .plugins
            .get(&plugin.name)
            .map(|d| d.grants.clone())
            .unwrap_or_default();
        let caps: Effective =
            match caps::effective(&plugin.name, &plugin.info.capabilities, &grants) {
                Ok(mut c) => {
                    c.protected = self.protected.clone();
                    c
                }
                Err(msg) => {
                    let log =
                        StepLog::new(step_id, Arc::default(), DEFAULT_OUTPUT_CAP, subscribers);
                    log.system(format!("[nestr: {msg}]"));
                    self.rec.writer().audit(crate::store::AuditEntry {
                        run_id: Some(self.rec.run_id().to_string()),
                        step_id: Some(step_id),
                        plugin: plugin.name.clone(),
                        capability: "grants".into(),
                        requested: msg.lines().next().unwrap_or_default().to_string(),
                        decision: "denied".into(),
                        detail: Some(msg.clone()),
                    });
                    return Ok(Prepared::Refused(StepOutcome::new(
                        StepStatus::Denied,
                        "refused before it started: a needed capability is not granted",
                        Some(msg),
                    )));
                }
            };
        if !plugin.info.operations.is_empty()
            && !plugin
                .info
                .operations
                .iter()
                .any(|o| o == self.rec.operation())
        {
            return Ok(Prepared::Refused(StepOutcome::new(
                StepStatus::Failed,
                format!(
                    "plugin `{}` has no operation `{}`",
                    plugin.name,
                    self.rec.operation()
                ),
                Some(format!(
                    "plugin `{}` supports: {}",
                    plugin.name,
                    plugin.info.operations.join(", ")
                )),
            )));
        }
        let Some(repo) = m.repo(&service.repo) else {
            return Ok(Prepared::Refused(StepOutcome::new(
                StepStatus::Failed,
                "repository missing from the manifest",
                None,
            )));
        };
        let service_dir = match service_dir(&m.repo_dir(repo), &service.path) {
            Ok(d) => d,
            Err(e) => {
                return Ok(Prepared::Refused(StepOutcome::new(
                    StepStatus::Failed,
                    e.clone(),
                    Some(e),
                )));
            }
        };
        let (commit, branch) = heads
            .entry(repo.name.clone())
            .or_insert_with(|| git::head_and_branch(m, repo))
            .clone();
        let masker = Arc::new(Redactor::new(
            caps.secret_values().iter().map(String::as_str),
        ));
        let log = StepLog::new(step_id, masker, caps.output_cap, subscribers);
        self.rec.start_step(idx, &plugin.digest, &caps.to_json())?;
        let audit_writer = self.rec.writer();
        let run_id = self.rec.run_id().to_string();
        let marker = format!("{run_id}-{step_id}");
        let pids = caps.pids;
        let ctx = Arc::new(StepContext {
            run_id: run_id.clone(),
            step_id,
            started: Instant::now(),
            deadline: Instant::now() + caps.timeout,
            caps,
            log,
            service_dir,
            cancel: self.cancel.clone(),
            marker: marker.clone(),
            audit: Arc::new(move |e| audit_writer.audit(e)),
            denials: Default::default(),
            containment: Containment::new(&marker, pids),
            programs: Default::default(),
            gate: self
                .opts
                .deploy
                .as_ref()
                .and_then(|d| d.services.get(&service.name))
                .and_then(|t| t.gate.clone())
                .map(Arc::new),
            tape: self.opts.record.as_ref().map(|dir| {
                let file = format!("{}.{}.json", service.name, self.rec.operation());
                Arc::new(crate::plugin::tape::Recorder::new(dir.join(file)))
            }),
        });
        // Each dependency with its checkout (a folder that cannot be resolved is left out: the
        // plugin is told only of folders that exist).
        let mut dependencies = Vec::new();
        for dep in &service.depends_on {
            let Some(ds) = m.service(dep) else { continue };
            let Some(drepo) = m.repo(&ds.repo) else {
                continue;
            };
            let Ok(folder) = self::service_dir(&m.repo_dir(drepo), &ds.path) else {
                continue;
            };
            let (dcommit, _) = heads
                .entry(drepo.name.clone())
                .or_insert_with(|| git::head_and_branch(m, drepo))
                .clone();
            dependencies.push(types::Dependency {
                service: ds.name.clone(),
                repo: ds.repo.clone(),
                commit: dcommit,
                folder: folder.to_string_lossy().into_owned(),
                wired: service.wired.contains(dep),
            });
        }
        let request = StepRequest {
            folder: ctx.service_dir.clone(),
            dependencies,
            target: None,
            operation: self.rec.operation().to_string(),
            run_id,
            service: types::Service {
                name: service.name.clone(),
                repo: service.repo.clone(),
                path: service.path.to_string_lossy().into_owned(),
                tags: service.tags.clone(),
                depends_on: service.depends_on.clone(),
            },
            commit,
            branch,
            config: m
                .operation(service, self.rec.operation())
                .map(|o| o.config.clone())
                .unwrap_or_default(),
        };
        let mut request = request;
        if let Some(d) = &self.opts.deploy
            && let Some(t) = d.services.get(&service.name)
        {
            request.config = t.config.clone();
            request.target = Some(types::Target {
                environment: d.environment.clone(),
                previous: t.previous.clone(),
                rollback: t.rollback,
            });
        }
        Ok(Prepared::Ready(request, ctx))
    }

    /// Records how a step ended (`outcome.duration` is how long it ran).
    fn finish(&self, idx: usize, outcome: StepOutcome) -> Result<StepReport, PlanError> {
        let status = outcome.status;
        Ok(self.rec.finish_step(idx, status, step_end(outcome, None))?)
    }
}

/// The repository of service `name`.
fn m_repo<'m>(m: &'m Manifest, name: &str) -> Option<&'m crate::manifest::Repo> {
    m.service(name).and_then(|s| m.repo(&s.repo))
}

/// Records how a step that ran (or was refused) ended: for its dependents, and as the run's first
/// failure when it is one.
/// What is recorded of a step that ended by running (or was refused or skipped).
fn step_end(outcome: StepOutcome, provenance: Option<String>) -> StepEnd {
    StepEnd {
        summary: outcome.summary,
        reason: outcome.reason,
        tests: outcome.tests,
        artifacts: outcome.artifacts,
        metrics: outcome.metrics,
        duration_ms: u64::try_from(outcome.duration.as_millis()).unwrap_or(u64::MAX),
        cache_hit: None,
        provenance,
    }
}

fn settle<'p>(
    done: &mut HashMap<&'p str, Done>,
    first_failure: &mut Option<String>,
    step: &'p PlannedStep,
    report: &StepReport,
) {
    let ok = report.status.is_ok();
    if !ok && first_failure.is_none() {
        *first_failure = Some(format!(
            "step `{}` {}",
            step.service,
            report.status.as_str().replace('_', " ")
        ));
    }
    done.insert(
        step.service.as_str(),
        if ok { Done::Ok } else { Done::NotOk },
    );
}

fn short_reason(why: &str) -> String {
    if why.starts_with("not started") {
        "not started".into()
    } else if why.contains("does not define") {
        why.rsplit_once("define ")
            .map_or_else(|| why.to_string(), |(_, op)| format!("no {op} operation"))
    } else {
        why.to_string()
    }
}

/// The canonical service folder, which must exist inside its repository.
pub(crate) fn service_dir(repo_dir: &Path, rel: &Path) -> Result<PathBuf, String> {
    let repo_real = std::fs::canonicalize(repo_dir)
        .map_err(|_| format!("{} is missing: run `nestr assemble`", repo_dir.display()))?;
    service_dir_in(repo_dir, &repo_real, rel)
}

/// [`service_dir`] with the repository folder already resolved (`repo_real`, its canonical
/// path): a run resolves each repository once.
fn service_dir_in(repo_dir: &Path, repo_real: &Path, rel: &Path) -> Result<PathBuf, String> {
    let real = std::fs::canonicalize(repo_dir.join(rel)).map_err(|_| {
        format!(
            "the service folder {} does not exist",
            repo_dir.join(rel).display()
        )
    })?;
    if !real.starts_with(repo_real) {
        return Err(format!(
            "the service folder {} leads outside its repository",
            repo_dir.join(rel).display()
        ));
    }
    Ok(real)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A workspace of one service `a` with operation `op` (a `command` running `true`) and a run
    /// of it recorded: the manifest, the state folder and the run ready to execute.
    fn one_service(dir: &Path, op: &str) -> (Manifest, PathBuf, Started) {
        let toml = dir.join("nestr.toml");
        std::fs::create_dir_all(dir.join("app")).expect("repo folder");
        std::fs::write(
            &toml,
            format!(
                "[workspace]\nname = \"w\"\n[repos.app]\nurl = \"/nowhere.git\"\n\
                 [services.a]\nrepo = \"app\"\n[services.a.operations]\n\
                 {op} = {{ plugin = \"command\", config = {{ run = [[\"true\"]] }} }}\n\
                 [plugins.command]\ngrants = {{ exec = [\"true\"] }}\n"
            ),
        )
        .expect("manifest");
        let manifest = crate::manifest::load(&toml).expect("valid manifest");
        let state = dir.join(".nestr");
        let sel = Selection::default();
        let plan = plan(&manifest, op, &sel).expect("plan");
        let store = Store::open(&state).expect("store");
        let started = record(
            store,
            &state,
            &RunMeta::default(),
            plan,
            &sel,
            &RunOptions::default(),
        )
        .expect("recorded");
        (manifest, state, started)
    }

    /// A step whose task panics ends `failed` with the reason, and the run goes on to its end.
    #[test]
    fn a_step_whose_task_panics_ends_failed_and_the_run_ends() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (manifest, _, started) = one_service(dir.path(), "panic-in-step-for-test");
        let (report, _) = started
            .execute_blocking(&manifest, Cancel::default())
            .expect("the run ends");
        assert_eq!(report.status, RunStatus::Failed);
        let step = &report.steps[0];
        assert_eq!(step.status, StepStatus::Failed, "{step:?}");
        assert!(
            step.reason
                .as_deref()
                .is_some_and(|r| r.contains("the engine failed while running this step")
                    && r.contains("a fault injected into a step by a test")),
            "{step:?}"
        );
    }

    /// A run whose execution panics still ends in the store, `failed`, with the reason on its
    /// unfinished steps, and the caller gets an error (not a panic).
    #[test]
    fn a_run_that_panics_while_executing_ends_failed_in_the_store() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (manifest, state, started) = one_service(dir.path(), "panic-for-test");
        let id = started.run_id().to_string();
        let err = match started.execute_blocking(&manifest, Cancel::default()) {
            Ok(_) => panic!("the injected fault did not fail the run"),
            Err(e) => e.to_string(),
        };
        assert!(err.contains("a fault injected by a test"), "{err}");
        let run = Store::open(&state)
            .expect("store")
            .run(&id)
            .expect("read")
            .expect("the run");
        assert_eq!(run.run.status, RunStatus::Failed);
        assert!(run.run.finished_at.is_some());
        let step = &run.steps[0];
        assert_eq!(step.status, StepStatus::Failed);
        assert!(
            step.reason
                .as_deref()
                .is_some_and(|r| r.contains("the engine failed while executing this run")),
            "{:?}",
            step.reason
        );
    }
}
