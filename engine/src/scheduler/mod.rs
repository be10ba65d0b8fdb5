//! Runs an operation across services: plan (`plan.rs`), then execute — steps start as soon as
//! all their dependencies' steps are done, up to `-j` at once and the operation's `concurrency`,
//! honouring the continue mode, until done or cancelled — with the run history recorded (runs,
//! steps, batched log lines in `logs.rs`, audit) and every transition published as an event
//! (`events.rs`). `recover.rs` marks runs of dead engines `interrupted`.

pub mod events;
pub(crate) mod logs;
pub(crate) mod plan;
pub(crate) mod recover;
pub(crate) mod repo_run;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tokio::task::JoinSet;

use crate::contain::Containment;
use crate::git;
use crate::manifest::Manifest;
use crate::plugin::caps::{self, Effective};
use crate::plugin::sink::{DEFAULT_OUTPUT_CAP, StepLog, Subscriber};
use crate::plugin::state::{Cancel, StepContext};
use crate::plugin::{Host, LoadedPlugin, StepOutcome, StepRequest, bindings::types};
use crate::redact::Redactor;
use crate::store::{NewRun, RunStatus, StepEnd, StepStatus, Store, StoreError};
use events::{Event, Events};
pub use plan::{Plan, PlannedStep, Selection, SelectionError, plan};

/// What happens after a step does not succeed.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    Serialize,
    serde::Deserialize,
    clap::ValueEnum,
    utoipa::ToSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum ContinueMode {
    /// Start nothing new after the first failure (running steps finish).
    #[default]
    Never,
    /// Go on with every step whose dependencies all succeeded.
    DependenciesOk,
    /// Run everything regardless of failures.
    Always,
}

impl ContinueMode {
    pub fn as_str(self) -> &'static str {
        match self {
            ContinueMode::Never => "never",
            ContinueMode::DependenciesOk => "dependencies-ok",
            ContinueMode::Always => "always",
        }
    }
}

/// How to run.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Steps at once.
    pub jobs: usize,
    pub continue_mode: ContinueMode,
    /// `cli` or `api`.
    pub started_by: String,
    /// The id the run gets (a new one when `None`), so a caller can answer with it at once.
    pub run_id: Option<String>,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            jobs: std::thread::available_parallelism().map_or(2, |n| n.get()),
            continue_mode: ContinueMode::Never,
            started_by: "cli".into(),
            run_id: None,
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
}

/// The result of a run.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    pub run_id: String,
    pub operation: String,
    pub status: RunStatus,
    pub steps: Vec<StepReport>,
}

/// What a run needs from the workspace.
pub struct RunContext<'a> {
    pub manifest: &'a Manifest,
    pub store: &'a mut Store,
    pub state_dir: &'a Path,
    pub events: Events,
    pub cancel: Cancel,
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

/// Runs `operation` over the selection, recording everything in the store.
pub fn run(
    rc: RunContext<'_>,
    operation: &str,
    sel: &Selection,
    opts: &RunOptions,
) -> Result<RunReport, PlanError> {
    let plan = plan(rc.manifest, operation, sel)?;
    let RunContext {
        manifest,
        store,
        state_dir,
        events,
        cancel,
    } = rc;
    let run_id = opts.run_id.clone().unwrap_or_else(new_run_id);
    let services: Vec<(&str, &str)> = plan
        .steps
        .iter()
        .map(|s| (s.service.as_str(), s.plugin.as_deref().unwrap_or("-")))
        .collect();
    let ids = store.create_run(
        &NewRun {
            id: run_id.clone(),
            operation: operation.to_string(),
            selection: serde_json::to_value(sel).unwrap_or_default(),
            options: serde_json::json!({"jobs": opts.jobs, "continue": opts.continue_mode.as_str()}),
            started_by: opts.started_by.clone(),
        },
        &services,
    )?;
    events.send(Event::RunStarted {
        run_id: run_id.clone(),
        operation: operation.to_string(),
        steps: ids.len(),
    });
    for s in &plan.steps {
        events.send(Event::StepQueued {
            run_id: run_id.clone(),
            service: s.service.clone(),
        });
    }
    let metrics = crate::metrics::global();
    if let Some(m) = metrics {
        m.runs_active.inc();
    }
    let _active = ActiveGuard(metrics);
    let writer_thread = logs::LogWriterThread::start(state_dir)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        // Check timers and I/O after every task poll: plugin code yields every 10 ms, and a
        // worker that runs it must not leave other steps' deadlines waiting for 61 polls.
        .event_interval(1)
        .enable_all()
        .build()
        .map_err(|e| PlanError::Selection(format!("cannot start the async runtime: {e}")))?;
    // Every service folder lies inside its repository's folder (`service_dir` makes sure), so
    // refusing programs inside any repository folder covers them all, at one lookup per
    // repository rather than per service.
    let protected = manifest
        .repos
        .iter()
        .filter_map(|repo| std::fs::canonicalize(manifest.repo_dir(repo)).ok())
        .collect();
    let exec = Executor {
        manifest,
        protected,
        run_id: run_id.clone(),
        operation: operation.to_string(),
        writer: writer_thread.writer(),
        events: events.clone(),
        cancel: cancel.clone(),
        opts: opts.clone(),
    };
    let result = runtime.block_on(exec.execute(&plan, &ids, store));
    // A blocking task a plugin left stuck (abandoned at its deadline) must not hold the run up:
    // the runtime is shut down without waiting for it.
    runtime.shutdown_background();
    drop(writer_thread);
    let reports = result?;
    let status = if cancel.is_cancelled() {
        RunStatus::Cancelled
    } else if reports.iter().all(|r| r.status.is_ok()) {
        RunStatus::Succeeded
    } else {
        RunStatus::Failed
    };
    store.finish_run(&run_id, status)?;
    if let Some(m) = metrics {
        m.runs_total
            .with_label_values(&[operation, status.as_str()])
            .inc();
    }
    events.send(Event::RunFinished {
        run_id: run_id.clone(),
        status,
    });
    Ok(RunReport {
        run_id,
        operation: operation.to_string(),
        status,
        steps: reports,
    })
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

struct Executor<'a> {
    manifest: &'a Manifest,
    /// Every repository folder of the workspace (canonical; they hold every service folder):
    /// programs are never found on PATH there.
    protected: Arc<[PathBuf]>,
    run_id: String,
    operation: String,
    writer: logs::LogWriter,
    events: Events,
    cancel: Cancel,
    opts: RunOptions,
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

type Finished = (usize, StepOutcome, i64);

impl Executor<'_> {
    async fn execute(
        &self,
        plan: &Plan,
        ids: &[i64],
        store: &mut Store,
    ) -> Result<Vec<StepReport>, PlanError> {
        let host = Host::shared();
        let mut plugins: HashMap<String, Result<Arc<LoadedPlugin>, String>> = HashMap::new();
        let mut heads: HashMap<String, (Option<String>, Option<String>)> = HashMap::new();
        let limit = self
            .opts
            .jobs
            .max(1)
            .min(plan.concurrency().map_or(usize::MAX, |c| c as usize));
        let mut reports: Vec<Option<StepReport>> = vec![None; plan.steps.len()];
        let mut done: HashMap<&str, Done> = HashMap::new();
        let mut pending: Vec<usize> = (0..plan.steps.len()).collect();
        let mut running: JoinSet<Finished> = JoinSet::new();
        let mut first_failure: Option<String> = None;

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
                    let ok = status == StepStatus::Skipped && step.skip.is_some();
                    let outcome = StepOutcome::new(status, short_reason(&why), Some(why));
                    reports[idx] = Some(self.finish(store, ids[idx], step, outcome, None)?);
                    done.insert(
                        step.service.as_str(),
                        if ok { Done::Ok } else { Done::NotOk },
                    );
                    pending.remove(i);
                    continue;
                }
                if running.len() >= limit {
                    i += 1;
                    continue;
                }
                // Start it.
                pending.remove(i);
                let started = crate::store::now_ms();
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
                    (Ok(h), Ok(p)) => match self.prepare(store, ids[idx], step, &p, &mut heads)? {
                        Prepared::Ready(req, ctx) => Ok((h.clone(), p, req, ctx)),
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
                        let report = self.finish(store, ids[idx], step, outcome, None)?;
                        settle(&mut done, &mut first_failure, step, &report);
                        reports[idx] = Some(report);
                    }
                    Ok((host, plugin, request, ctx)) => {
                        self.events.send(Event::StepStarted {
                            run_id: self.run_id.clone(),
                            service: step.service.clone(),
                            step_id: ids[idx],
                        });
                        running.spawn(async move {
                            let outcome = host.run_step(&plugin, &request, ctx).await;
                            (idx, outcome, started)
                        });
                    }
                }
            }
            if pending.is_empty() && running.is_empty() {
                break;
            }
            let Some(joined) = running.join_next().await else {
                // Nothing runs but steps wait: cannot happen with a valid plan; do not hang.
                for idx in std::mem::take(&mut pending) {
                    let o = StepOutcome::new(
                        StepStatus::Skipped,
                        "not started",
                        Some("its dependencies never finished".into()),
                    );
                    reports[idx] = Some(self.finish(store, ids[idx], &plan.steps[idx], o, None)?);
                }
                break;
            };
            let (idx, outcome, started) = match joined {
                Ok(f) => f,
                Err(e) => return Err(PlanError::Selection(format!("a step task failed: {e}"))),
            };
            let step = &plan.steps[idx];
            let report = self.finish(store, ids[idx], step, outcome, Some(started))?;
            settle(&mut done, &mut first_failure, step, &report);
            reports[idx] = Some(report);
        }
        Ok(reports.into_iter().flatten().collect())
    }

    /// Capabilities, service folder, log and request of a step; or why it cannot start.
    fn prepare(
        &self,
        store: &mut Store,
        step_id: i64,
        step: &PlannedStep,
        plugin: &LoadedPlugin,
        heads: &mut HashMap<String, (Option<String>, Option<String>)>,
    ) -> Result<Prepared, PlanError> {
        let m = self.manifest;
        let Some(service) = m.service(&step.service) else {
            return Ok(Prepared::Refused(StepOutcome::new(
                StepStatus::Failed,
                "service missing from the manifest",
                None,
            )));
        };
        let subscribers = self.subscribers(&step.service);
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
                    self.writer.audit(crate::store::AuditEntry {
                        run_id: Some(self.run_id.clone()),
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
            && !plugin.info.operations.iter().any(|o| o == &self.operation)
        {
            return Ok(Prepared::Refused(StepOutcome::new(
                StepStatus::Failed,
                format!(
                    "plugin `{}` has no operation `{}`",
                    plugin.name, self.operation
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
        store.start_step(step_id, &plugin.digest, &caps.to_json())?;
        let audit_writer = self.writer.clone();
        let marker = format!("{}-{step_id}", self.run_id);
        let pids = caps.pids;
        let ctx = Arc::new(StepContext {
            run_id: self.run_id.clone(),
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
        });
        let request = StepRequest {
            operation: self.operation.clone(),
            run_id: self.run_id.clone(),
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
                .operation(service, &self.operation)
                .map(|o| o.config.clone())
                .unwrap_or_default(),
        };
        Ok(Prepared::Ready(request, ctx))
    }

    fn subscribers(&self, service: &str) -> Vec<Subscriber> {
        let w = self.writer.clone();
        let events = self.events.clone();
        let run_id = self.run_id.clone();
        let service = service.to_string();
        vec![
            Arc::new(move |c| w.chunk(c)),
            Arc::new(move |c| {
                events.send(Event::Log {
                    run_id: run_id.clone(),
                    service: service.clone(),
                    chunk: c.clone(),
                })
            }),
        ]
    }

    fn finish(
        &self,
        store: &mut Store,
        step_id: i64,
        step: &PlannedStep,
        outcome: StepOutcome,
        started: Option<i64>,
    ) -> Result<StepReport, PlanError> {
        // The step's last log lines are committed before it is marked finished.
        self.writer.flush();
        let duration_ms = u64::try_from(outcome.duration.as_millis()).unwrap_or(u64::MAX);
        store.finish_step(
            step_id,
            outcome.status,
            &StepEnd {
                summary: outcome.summary.clone(),
                reason: outcome.reason.clone(),
                tests: outcome.tests,
                artifacts: outcome.artifacts.clone(),
                metrics: outcome.metrics.clone(),
                duration_ms,
            },
        )?;
        if let (Some(m), Some(_)) = (crate::metrics::global(), started) {
            m.step_duration_seconds
                .with_label_values(&[
                    self.operation.as_str(),
                    step.plugin.as_deref().unwrap_or("-"),
                ])
                .observe(outcome.duration.as_secs_f64());
        }
        let report = StepReport {
            service: step.service.clone(),
            status: outcome.status,
            started_at: started.map(rfc3339),
            finished_at: Some(rfc3339(crate::store::now_ms())),
            duration_ms,
            summary: outcome.summary,
            tests: outcome.tests,
            reason: outcome.reason,
            artifacts: outcome.artifacts,
        };
        self.events.send(Event::StepFinished {
            run_id: self.run_id.clone(),
            report: report.clone(),
        });
        Ok(report)
    }
}

/// Records how a step that ran (or was refused) ended: for its dependents, and as the run's first
/// failure when it is one.
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
fn service_dir(repo_dir: &Path, rel: &Path) -> Result<PathBuf, String> {
    let repo_real = std::fs::canonicalize(repo_dir)
        .map_err(|_| format!("{} is missing: run `nestr assemble`", repo_dir.display()))?;
    let real = std::fs::canonicalize(repo_dir.join(rel)).map_err(|_| {
        format!(
            "the service folder {} does not exist",
            repo_dir.join(rel).display()
        )
    })?;
    if !real.starts_with(&repo_real) {
        return Err(format!(
            "the service folder {} leads outside its repository",
            repo_dir.join(rel).display()
        ));
    }
    Ok(real)
}
