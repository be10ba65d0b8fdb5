//! Runs an operation across services: selection (`-s`, `-t`), dependency order, one step per
//! service through its plugin, and the run history (runs, steps, batched log lines, audit).
//!
//! Steps run one after another in dependency order; after the first step that does not succeed,
//! no new step starts and the rest are recorded `skipped` with the reason. (The parallel
//! scheduler with continue modes and cancellation builds on this.)

pub mod logs;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::git;
use crate::manifest::{Manifest, PluginSource, Service};
use crate::plugin::caps::{self, Effective};
use crate::plugin::sink::{DEFAULT_OUTPUT_CAP, Masker, StepLog, Subscriber};
use crate::plugin::state::{Cancel, StepContext};
use crate::plugin::{Host, LoadedPlugin, StepOutcome, StepRequest, bindings::types};
use crate::store::{NewRun, RunStatus, StepEnd, StepStatus, Store, StoreError};
use logs::LogWriterThread;

/// Sees every log line of a run (service name, line), after masking.
pub type LineObserver = Arc<dyn Fn(&str, &crate::store::LogLine) + Send + Sync>;
/// Sees each step's report as the step finishes.
pub type StepObserver<'a> = Box<dyn Fn(&StepReport) + 'a>;

/// Which services a run covers.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Selection {
    pub services: Vec<String>,
    pub tags: Vec<String>,
}

/// Why a run could not start.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("{0}")]
    Selection(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// One planned step.
#[derive(Debug, Clone)]
pub struct PlannedStep {
    pub service: String,
    /// None: the service lacks the operation (skipped).
    pub plugin: Option<String>,
}

/// Selects services and orders them so that dependencies come first.
pub fn plan(m: &Manifest, operation: &str, sel: &Selection) -> Result<Vec<PlannedStep>, PlanError> {
    let mut chosen: HashSet<&str> = HashSet::new();
    for name in &sel.services {
        if m.service(name).is_none() {
            let names: Vec<&str> = m.services.iter().map(|s| s.name.as_str()).collect();
            return Err(PlanError::Selection(format!(
                "there is no service `{name}`; services: {}",
                names.join(", ")
            )));
        }
        chosen.insert(name);
    }
    for tag in &sel.tags {
        let tagged: Vec<&Service> = m.services.iter().filter(|s| s.tags.contains(tag)).collect();
        if tagged.is_empty() {
            return Err(PlanError::Selection(format!(
                "no service has the tag `{tag}`"
            )));
        }
        chosen.extend(tagged.iter().map(|s| s.name.as_str()));
    }
    if sel.services.is_empty() && sel.tags.is_empty() {
        chosen = m
            .services
            .iter()
            .filter(|s| m.operation(s, operation).is_some())
            .map(|s| s.name.as_str())
            .collect();
        if chosen.is_empty() {
            return Err(PlanError::Selection(format!(
                "no service defines the operation `{operation}` (and there is no [operations.{operation}] default)"
            )));
        }
    }
    // Kahn's algorithm, taking ready services in manifest order.
    let mut done: HashSet<&str> = HashSet::new();
    let mut order = Vec::new();
    while order.len() < chosen.len() {
        let next = m.services.iter().find(|s| {
            chosen.contains(s.name.as_str())
                && !done.contains(s.name.as_str())
                && s.depends_on
                    .iter()
                    .all(|d| !chosen.contains(d.as_str()) || done.contains(d.as_str()))
        });
        let Some(next) = next else {
            return Err(PlanError::Selection(
                "the selected services depend on each other in a cycle".into(),
            ));
        };
        done.insert(next.name.as_str());
        order.push(PlannedStep {
            service: next.name.clone(),
            plugin: m.operation(next, operation).map(|o| o.plugin.clone()),
        });
    }
    Ok(order)
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
    pub tests: Option<Tests>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Test counts.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Tests {
    pub passed: u32,
    pub failed: u32,
    pub skipped: u32,
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
    /// Receives every log line as it is produced (after masking).
    pub on_line: Option<LineObserver>,
    /// Receives each step's report as it finishes.
    pub on_step: Option<StepObserver<'a>>,
    pub cancel: Cancel,
}

fn rfc3339(ms: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    humantime::format_rfc3339_millis(t).to_string()
}

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
pub fn run(rc: RunContext<'_>, operation: &str, sel: &Selection) -> Result<RunReport, PlanError> {
    let steps = plan(rc.manifest, operation, sel)?;
    let run_id = new_run_id();
    let RunContext {
        manifest,
        store,
        state_dir,
        on_line,
        on_step,
        cancel,
    } = rc;
    store.create_run(&NewRun {
        id: run_id.clone(),
        operation: operation.to_string(),
        selection: serde_json::to_value(sel).unwrap_or_default(),
        options: serde_json::json!({"continue": "never"}),
        started_by: "cli".into(),
    })?;
    let mut ids = Vec::new();
    for s in &steps {
        let id = store.add_step(
            &run_id,
            &s.service,
            s.plugin.as_deref().unwrap_or("-"),
            StepStatus::Queued,
        )?;
        ids.push(id);
    }
    let writer_thread = LogWriterThread::start(state_dir)?;
    let writer = writer_thread.writer();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| PlanError::Selection(format!("cannot start the async runtime: {e}")))?;
    let host = Host::new(Some(&state_dir.join("cache")))
        .map_err(|e| PlanError::Selection(format!("cannot start the plugin host: {e}")));

    let mut loaded: HashMap<String, Result<Arc<LoadedPlugin>, String>> = HashMap::new();
    let mut reports = Vec::new();
    let mut stop: Option<String> = None;
    for (planned, step_id) in steps.iter().zip(ids) {
        let service = manifest
            .service(&planned.service)
            .ok_or_else(|| PlanError::Selection("service vanished".into()))?;
        let started_ms = crate::store::now_ms();
        let finish = |store: &mut Store,
                      outcome: StepOutcome,
                      started: Option<i64>|
         -> Result<StepReport, PlanError> {
            writer.flush();
            store.finish_step(
                step_id,
                outcome.status,
                &StepEnd {
                    summary: outcome.summary.clone(),
                    reason: outcome.reason.clone(),
                    tests: outcome.tests,
                    artifacts: outcome.artifacts.clone(),
                    metrics: outcome.metrics.clone(),
                    duration_ms: u64::try_from(outcome.duration.as_millis()).unwrap_or(u64::MAX),
                },
            )?;
            let report = StepReport {
                service: planned.service.clone(),
                status: outcome.status,
                started_at: started.map(rfc3339),
                finished_at: Some(rfc3339(crate::store::now_ms())),
                duration_ms: u64::try_from(outcome.duration.as_millis()).unwrap_or(u64::MAX),
                summary: outcome.summary,
                tests: outcome.tests.map(|(passed, failed, skipped)| Tests {
                    passed,
                    failed,
                    skipped,
                }),
                reason: outcome.reason,
            };
            if let Some(cb) = &on_step {
                cb(&report);
            }
            Ok(report)
        };
        let Some(plugin_name) = &planned.plugin else {
            let o = StepOutcome::new(
                StepStatus::Skipped,
                format!("no `{operation}` operation"),
                Some(format!(
                    "service `{}` does not define `{operation}`",
                    planned.service
                )),
            );
            reports.push(finish(store, o, None)?);
            continue;
        };
        if cancel.is_cancelled() {
            let o = StepOutcome::new(
                StepStatus::Cancelled,
                "cancelled before it started",
                Some("the run was cancelled".into()),
            );
            reports.push(finish(store, o, None)?);
            continue;
        }
        if let Some(why) = &stop {
            let o = StepOutcome::new(StepStatus::Skipped, "not started", Some(why.clone()));
            reports.push(finish(store, o, None)?);
            continue;
        }
        let host = match &host {
            Ok(h) => h,
            Err(e) => {
                let o = StepOutcome::new(
                    StepStatus::Failed,
                    "plugin host unavailable",
                    Some(e.to_string()),
                );
                reports.push(finish(store, o, None)?);
                stop = Some(format!("step `{}` failed", planned.service));
                continue;
            }
        };
        let plugin = loaded
            .entry(plugin_name.clone())
            .or_insert_with(|| load_plugin(&runtime, host, manifest, plugin_name).map(Arc::new))
            .clone();
        let outcome = match plugin {
            Err(e) => StepOutcome::new(
                StepStatus::Failed,
                "the plugin could not be loaded",
                Some(e),
            ),
            Ok(plugin) => {
                let subscribers = subscribers(&writer, &planned.service, on_line.clone());
                execute(
                    &runtime,
                    host,
                    &plugin,
                    manifest,
                    service,
                    operation,
                    &run_id,
                    step_id,
                    store,
                    subscribers,
                    &cancel,
                    &writer,
                )?
            }
        };
        if !outcome.status.is_ok() {
            stop = Some(format!(
                "step `{}` {}; later steps are not started",
                planned.service,
                outcome.status.as_str().replace('_', " ")
            ));
        }
        reports.push(finish(store, outcome, Some(started_ms))?);
    }
    drop(writer_thread);
    let status = if cancel.is_cancelled() {
        RunStatus::Cancelled
    } else if reports.iter().all(|r| r.status.is_ok()) {
        RunStatus::Succeeded
    } else {
        RunStatus::Failed
    };
    store.finish_run(&run_id, status)?;
    Ok(RunReport {
        run_id,
        operation: operation.to_string(),
        status,
        steps: reports,
    })
}

fn subscribers(
    writer: &logs::LogWriter,
    service: &str,
    on_line: Option<LineObserver>,
) -> Vec<Subscriber> {
    let w = writer.clone();
    let mut subs: Vec<Subscriber> = vec![Arc::new(move |l| w.line(l))];
    if let Some(cb) = on_line {
        let service = service.to_string();
        subs.push(Arc::new(move |l| cb(&service, l)));
    }
    subs
}

/// Loads a plugin named in the manifest: built-in bytes or its file (with the sha256 pin).
pub fn load_plugin(
    runtime: &tokio::runtime::Runtime,
    host: &Host,
    manifest: &Manifest,
    name: &str,
) -> Result<LoadedPlugin, String> {
    let decl = manifest.plugins.get(name);
    let (bytes, source) = match decl.map(|d| &d.source) {
        Some(PluginSource::File { path, sha256 }) => {
            let full = manifest.root.join(path);
            let bytes =
                Host::read_file(name, &full, sha256.as_deref()).map_err(|e| e.to_string())?;
            (bytes, full.display().to_string())
        }
        _ => match Host::builtin(name) {
            Some(b) => (b.to_vec(), "builtin".to_string()),
            None => {
                return Err(format!(
                    "plugin `{name}` is neither built in nor declared with a path"
                ));
            }
        },
    };
    runtime
        .block_on(host.load(name, &source, &bytes))
        .map_err(|e| e.to_string())
}

#[allow(clippy::too_many_arguments)]
fn execute(
    runtime: &tokio::runtime::Runtime,
    host: &Host,
    plugin: &LoadedPlugin,
    manifest: &Manifest,
    service: &Service,
    operation: &str,
    run_id: &str,
    step_id: i64,
    store: &mut Store,
    subscribers: Vec<Subscriber>,
    cancel: &Cancel,
    writer: &logs::LogWriter,
) -> Result<StepOutcome, PlanError> {
    let grants = manifest
        .plugins
        .get(&plugin.name)
        .map(|d| d.grants.clone())
        .unwrap_or_default();
    let caps: Effective = match caps::effective(&plugin.name, &plugin.info.capabilities, &grants) {
        Ok(c) => c,
        Err(msg) => {
            let log = StepLog::new(step_id, Arc::default(), DEFAULT_OUTPUT_CAP, subscribers);
            log.system(format!("[nestr: {msg}]"));
            return Ok(StepOutcome::new(
                StepStatus::Denied,
                "refused before it started: a needed capability is not granted",
                Some(msg),
            ));
        }
    };
    if !plugin.info.operations.is_empty() && !plugin.info.operations.iter().any(|o| o == operation)
    {
        return Ok(StepOutcome::new(
            StepStatus::Failed,
            format!("plugin `{}` has no operation `{operation}`", plugin.name),
            Some(format!(
                "plugin `{}` supports: {}",
                plugin.name,
                plugin.info.operations.join(", ")
            )),
        ));
    }
    let Some(repo) = manifest.repo(&service.repo) else {
        return Ok(StepOutcome::new(
            StepStatus::Failed,
            "repository missing from the manifest",
            None,
        ));
    };
    let repo_dir = manifest.repo_dir(repo);
    let service_dir = match service_dir(&repo_dir, &service.path) {
        Ok(d) => d,
        Err(e) => return Ok(StepOutcome::new(StepStatus::Failed, e.clone(), Some(e))),
    };
    let status = git::status_of(manifest, repo).ok();
    let masker = Arc::new(Masker::new(caps.secret_values().iter().map(String::as_str)));
    let log = StepLog::new(step_id, masker, DEFAULT_OUTPUT_CAP, subscribers);
    store.start_step(step_id, &plugin.digest, &caps.to_json())?;
    let audit_writer = writer.clone();
    let deadline = Instant::now() + caps.timeout;
    let ctx = Arc::new(StepContext {
        run_id: run_id.to_string(),
        step_id,
        caps: caps.clone(),
        log,
        service_dir,
        deadline,
        cancel: cancel.clone(),
        marker: format!("{run_id}-{step_id}"),
        audit: Arc::new(move |e| audit_writer.audit(e)),
    });
    let request = StepRequest {
        operation: operation.to_string(),
        run_id: run_id.to_string(),
        service: types::Service {
            name: service.name.clone(),
            repo: service.repo.clone(),
            path: service.path.to_string_lossy().into_owned(),
            tags: service.tags.clone(),
            depends_on: service.depends_on.clone(),
        },
        commit: status.as_ref().and_then(|s| s.head.clone()),
        branch: status.as_ref().and_then(|s| s.branch.clone()),
        config: manifest
            .operation(service, operation)
            .map(|o| o.config.clone())
            .unwrap_or_default(),
    };
    Ok(runtime.block_on(host.run_step(plugin, &request, ctx)))
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
