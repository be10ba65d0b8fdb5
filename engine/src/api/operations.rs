//! Handlers that start work: `POST /api/operations/run`, `/sync` and `/assemble`. Each admits
//! the run to the server's run queue (`queue.rs`), records it (`started_by = "api"`, running or
//! `queued`) through the same calls the CLI makes, carries it out on the server's runtime once it
//! holds a slot (an operation run as a task, git work on the blocking pool), and answers
//! `202 Accepted` with its id and a `Location`.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::error::{ApiError, ErrorBody};
use super::queue::{Admission, Full};
use super::state::{ActiveRun, AppState};
use crate::git::NoProgress;
use crate::model::{ContinueMode, RunStatus, StepStatus};
use crate::plugin::state::Cancel;
use crate::scheduler::events::Events;
use crate::scheduler::{Plan, RunMeta, RunOptions, Selection, Started};
use crate::store::Store;
use crate::workspace::{RepoJob, RepoWork, Workspace};

/// `POST /api/operations/run`.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RunRequest {
    /// The operation (`build`, `test`, `deploy`, or any the manifest defines).
    #[schema(min_length = 1, pattern = "\\S")]
    pub operation: String,
    /// Only these services (default: every service that has the operation).
    #[serde(default)]
    pub services: Vec<String>,
    /// Only services with any of these tags.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Add the selected services' dependencies.
    #[serde(default)]
    pub with_deps: bool,
    /// Add the services that depend on the selected ones.
    #[serde(default)]
    pub with_dependents: bool,
    /// Steps at once (1–256; default: the number of CPUs).
    #[schema(minimum = 1, maximum = 256)]
    pub concurrency: Option<usize>,
    /// What happens after a step fails: never (default), dependencies-ok, always.
    #[serde(rename = "continue")]
    pub continue_mode: Option<ContinueMode>,
    /// How steps of operations with `cache = true` use the cache: read-write (default), read,
    /// write, off.
    pub cache: Option<crate::model::CacheMode>,
}

/// `POST /api/operations/sync`.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SyncRequest {
    /// Update nothing unless every fetch succeeds.
    #[serde(default)]
    pub atomic: bool,
}

/// `POST /api/operations/assemble` (no fields; the body may be empty).
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AssembleRequest {}

/// A run was recorded and started.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RunAccepted {
    pub run_id: String,
}

/// The answers of every endpoint that starts a run (documentation only).
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
enum StartAnswers {
    /// Recorded and started; follow /api/runs/{id}/events
    #[response(status = 202, headers(("Location" = String, description = "/api/runs/{run_id}")))]
    Accepted(RunAccepted),
    /// A malformed body, or a selection that matches nothing
    #[response(status = 400)]
    BadRequest(ErrorBody),
    /// No token, or an unknown one
    #[response(status = 401)]
    Unauthorized(ErrorBody),
    /// The token may only read
    #[response(status = 403)]
    Forbidden(ErrorBody),
    /// The body is larger than the limit
    #[response(status = 413)]
    TooLarge(ErrorBody),
    /// The body is not JSON
    #[response(status = 415)]
    NotJson(ErrorBody),
    /// The server is shutting down, or its run queue is full (`queue_full`, with `Retry-After`)
    #[response(status = 503, headers(("Retry-After" = u32, description = "Seconds to wait (queue_full)")))]
    Unavailable(ErrorBody),
}

/// Parses a JSON body; an empty body is the default request. Errors name the field at fault.
pub(super) fn parse<T: DeserializeOwned + Default>(
    headers: &HeaderMap,
    body: &Bytes,
    empty_ok: bool,
) -> Result<T, ApiError> {
    let blank = body.iter().all(u8::is_ascii_whitespace);
    if blank || (empty_ok && body.trim_ascii() == b"null") {
        if empty_ok {
            return Ok(T::default());
        }
        return Err(ApiError::bad_request("the request needs a JSON body"));
    }
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            let v = v.trim().to_ascii_lowercase();
            v.starts_with("application/json")
                || (v.starts_with("application/") && v.contains("+json"))
        });
    if !json {
        return Err(ApiError::for_status(StatusCode::UNSUPPORTED_MEDIA_TYPE));
    }
    // Every request body is an object (serde would take a struct from an array, too).
    if body.trim_ascii_start().first() != Some(&b'{') {
        return Err(ApiError::bad_request(
            "malformed JSON body: it must be a JSON object, e.g. {}",
        )
        .with_field("body"));
    }
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let mut err = ApiError::bad_request(format!("malformed JSON body: {inner}"));
        if path != "." {
            err = err.with_field(path);
        } else if let Some(f) = super::error::field_named_in(&inner.to_string()) {
            err = err.with_field(f);
        }
        err
    })
}

/// What a launched run does.
enum Job {
    Operation(Plan, Selection, RunOptions),
    Repos(RepoJob),
}

/// A run recorded and ready to be carried out.
enum Recorded {
    Operation(Started),
    Repos(Box<Workspace>, RepoWork<'static>),
}

const GIT_JOBS: usize = 4;

/// How long a client refused by a full queue should wait.
const RETRY_AFTER_SECS: u32 = 5;

/// Admits `job` to the run queue and records it as a run — running when a slot is free, else
/// `queued` — (on the blocking pool), starts carrying it out on the server's runtime once it
/// has a slot, and answers 202 with its id. A full queue is a 503 before anything is recorded.
async fn launch(state: &AppState, job: Job) -> Result<Response, ApiError> {
    if state.shutting_down() {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting_down",
            "the server is shutting down",
        ));
    }
    let manifest = state.manifest();
    let run_id = crate::scheduler::new_run_id();
    let mut meta = RunMeta {
        started_by: "api".into(),
        run_id: Some(run_id.clone()),
        events: Events::default(),
        queued: false,
    };
    let dir = state.state_dir().to_path_buf();
    let m = manifest.clone();
    let queue = state.queue().clone();
    let id = run_id.clone();
    // Known before it is recorded, so that a cancel never finds it recorded but unknown.
    let cancel = Cancel::default();
    state.runs().insert(
        run_id.clone(),
        ActiveRun {
            cancel: cancel.clone(),
        },
    );
    let recorded = tokio::task::spawn_blocking(move || {
        // Admission and recording under one lock: the queue's order is the store's. The
        // admission is declared first so that it is dropped last: a slot dropped while the lock
        // is held (an unwinding panic) would take the lock again.
        let admission: Admission;
        let mut waiting = queue.lock();
        admission = queue.admit(&mut waiting, &id).map_err(Refused::Full)?;
        meta.queued = matches!(admission, Admission::Wait(_));
        let recorded = match job {
            Job::Operation(plan, sel, opts) => Store::open(&dir)
                .map_err(|e| e.to_string())
                .and_then(|store| {
                    crate::scheduler::record(store, &dir, &meta, plan, &sel, &opts)
                        .map(Recorded::Operation)
                        .map_err(|e| e.to_string())
                }),
            Job::Repos(job) => {
                let mut ws = Workspace::with_manifest((*m).clone(), dir);
                ws.meta = meta;
                ws.begin_repo_work(job, GIT_JOBS, false, &NoProgress)
                    .map(|work| Recorded::Repos(Box::new(ws), work))
                    .map_err(|e| e.to_string())
            }
        };
        match recorded {
            Ok(r) => Ok((r, admission)),
            Err(e) => {
                queue.withdraw(&mut waiting, &id);
                drop(waiting);
                // A slot given to a run that was not recorded goes back (dropped here).
                drop(admission);
                Err(Refused::NotRecorded(e))
            }
        }
    })
    .await
    .map_err(|e| ApiError::internal("a store task failed", e));
    if !matches!(recorded, Ok(Ok(_))) {
        state.runs().remove(&run_id);
    }
    let (recorded, admission) = match recorded? {
        Ok(r) => r,
        Err(Refused::Full(full)) => {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "queue_full",
                format!(
                    "{} runs are executing and {} are waiting, the most this server takes \
                     (`[api] max_runs`, `max_queued`); try again later",
                    full.max_runs, full.max_queued
                ),
            )
            .with_header(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS)));
        }
        Err(Refused::NotRecorded(e)) => {
            return Err(ApiError::internal(
                "the run could not start",
                crate::redact::text(&e),
            ));
        }
    };
    let task_state = state.clone();
    let id = run_id.clone();
    tokio::spawn(async move {
        let state = task_state;
        let slot = match admission {
            Admission::Now(slot) => Some(slot),
            Admission::Wait(rx) => tokio::select! {
                slot = rx => slot.ok(),
                () = cancel.cancelled() => None,
            },
        };
        let result = match slot {
            None => {
                // Cancelled while it waited: it ends without executing.
                state.queue().withdraw(&mut state.queue().lock(), &id);
                let rid = id.clone();
                state
                    .store(move |s| {
                        Ok(s.end_abandoned(
                            &rid,
                            RunStatus::Cancelled,
                            "the run was cancelled while it waited for a slot",
                        )?)
                    })
                    .await
                    .map_err(|e| e.message)
            }
            Some(slot) => {
                let result = match recorded {
                    Recorded::Operation(run) => run
                        .execute(&manifest, cancel)
                        .await
                        .map(|_| ())
                        .map_err(|e| e.to_string()),
                    // git work blocks: it runs on the blocking pool.
                    Recorded::Repos(mut ws, work) => {
                        tokio::task::spawn_blocking(move || ws.carry_out(work))
                            .await
                            .map_err(|e| e.to_string())
                            .and_then(|r| r.map(|_| ()).map_err(|e| e.to_string()))
                    }
                };
                drop(slot);
                result
            }
        };
        if let Err(e) = result {
            tracing::error!(run_id = %id, error = %crate::redact::text(&e), "an API run failed to complete");
        }
        state.runs().remove(&id);
    });
    let location = HeaderValue::from_str(&format!("/api/runs/{run_id}"))
        .map_err(|e| ApiError::internal("bad run id", e))?;
    Ok((
        StatusCode::ACCEPTED,
        [(header::LOCATION, location)],
        Json(RunAccepted { run_id }),
    )
        .into_response())
}

/// Why a run was not recorded.
enum Refused {
    Full(Full),
    NotRecorded(String),
}

/// Runs an operation over the selected services in dependency order.
#[utoipa::path(post, path = "/api/operations/run", tag = "operations",
    request_body = RunRequest, responses(StartAnswers))]
pub async fn run(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let req: RunRequest = parse(&headers, &body, false)?;
    if req.operation.trim().is_empty() {
        return Err(ApiError::bad_request("`operation` is required").with_field("operation"));
    }
    if let Some(c) = req.concurrency
        && !(1..=256).contains(&c)
    {
        return Err(
            ApiError::bad_request("`concurrency` must be between 1 and 256")
                .with_field("concurrency"),
        );
    }
    let selection = Selection {
        services: req.services,
        tags: req.tags,
        with_deps: req.with_deps,
        with_dependents: req.with_dependents,
    };
    // Refuse a bad selection before anything is recorded.
    let plan = crate::scheduler::plan(&state.manifest(), &req.operation, &selection)
        .map_err(|e| ApiError::bad_request(e.0))?;
    let mut opts = RunOptions::default();
    if let Some(c) = req.concurrency {
        opts.jobs = c;
    }
    if let Some(m) = req.continue_mode {
        opts.continue_mode = m;
    }
    if let Some(c) = req.cache {
        opts.cache = c;
    }
    launch(&state, Job::Operation(plan, selection, opts)).await
}

/// Fetches every repository, then fast-forwards what can be updated without losing local work;
/// recorded as a run with one step per repository.
#[utoipa::path(post, path = "/api/operations/sync", tag = "operations",
    request_body(content = Option<SyncRequest>, description = "Optional; `{}` when empty"),
    responses(StartAnswers))]
pub async fn sync(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let req: SyncRequest = parse(&headers, &body, true)?;
    launch(&state, Job::Repos(RepoJob::Sync { atomic: req.atomic })).await
}

/// Clones every missing repository; recorded as a run with one step per repository.
#[utoipa::path(post, path = "/api/operations/assemble", tag = "operations",
    request_body(content = Option<AssembleRequest>, description = "Optional; `{}` when empty"),
    responses(StartAnswers))]
pub async fn assemble(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let _: AssembleRequest = parse(&headers, &body, true)?;
    launch(&state, Job::Repos(RepoJob::Assemble)).await
}

/// Runs again, as a new run, the steps of run `id` that did not succeed (failed, denied, timed
/// out, cancelled, skipped, …), with the operation and options it was started with; the steps
/// that succeeded are not repeated.
#[utoipa::path(post, path = "/api/runs/{id}/rerun", tag = "runs",
    params(("id" = String, Path, description = "Run id")),
    responses(
        (status = 202, description = "Recorded and started", body = RunAccepted,
         headers(("Location" = String, description = "/api/runs/{run_id}"))),
        (status = 400, description = "Not an operation run, or its services are gone from the manifest", body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, description = "Still running, or every step succeeded", body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 503, body = ErrorBody)))]
pub async fn rerun(
    State(state): State<AppState>,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Result<Response, ApiError> {
    let run = super::runs::find_run(&state, &id).await?;
    if run.run.status.is_active() {
        return Err(ApiError::conflict(format!(
            "run `{id}` has not ended ({}); re-run it once it has",
            run.run.status.as_str()
        )));
    }
    if run.steps.iter().any(|s| s.plugin == "git") {
        return Err(ApiError::bad_request(format!(
            "run `{id}` is a `{}` of the repositories; start a new one with POST /api/operations/{}",
            run.run.operation, run.run.operation
        )));
    }
    if run
        .steps
        .iter()
        .any(|s| s.plugin == crate::scheduler::exec_run::EXEC_PLUGIN)
    {
        return Err(ApiError::bad_request(format!(
            "run `{id}` is a `nestr exec` of a user's own command: it can be run again only at the \
             command line, never over HTTP"
        )));
    }
    let services: Vec<String> = run
        .steps
        .iter()
        .filter(|s| !matches!(s.status, StepStatus::Succeeded | StepStatus::Cached))
        .map(|s| s.service.clone())
        .collect();
    if services.is_empty() {
        return Err(ApiError::conflict(format!(
            "every step of run `{id}` succeeded: nothing to re-run"
        )));
    }
    let rid = run.run.id.clone();
    let (_, options) = state
        .store(move |s| Ok(s.run_request(&rid)?))
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no run `{id}`")))?;
    let selection = Selection {
        services,
        ..Selection::default()
    };
    let plan = crate::scheduler::plan(&state.manifest(), &run.run.operation, &selection)
        .map_err(|e| ApiError::bad_request(e.0))?;
    let mut opts = RunOptions::default();
    if let Some(j) = options["jobs"]
        .as_u64()
        .and_then(|j| usize::try_from(j).ok())
    {
        opts.jobs = j.clamp(1, 256);
    }
    if let Some(m) = options["continue"].as_str().and_then(|m| m.parse().ok()) {
        opts.continue_mode = m;
    }
    if let Some(c) = options["cache"].as_str().and_then(|c| c.parse().ok()) {
        opts.cache = c;
    }
    launch(&state, Job::Operation(plan, selection, opts)).await
}
