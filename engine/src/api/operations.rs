//! Handlers that start work: `POST /api/operations/run`, `/sync` and `/assemble`. Each records a
//! run, answers `202 Accepted` with its id and a `Location` at once, and executes it on a thread
//! of its own through the same `Workspace` calls the CLI makes (`started_by = "api"`).

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::error::{ApiError, ErrorBody};
use super::state::{ActiveRun, AppState};
use crate::git::NoProgress;
use crate::plugin::state::Cancel;
use crate::scheduler::events::Events;
use crate::scheduler::repo_run::RunMeta;
use crate::scheduler::{ContinueMode, RunOptions, Selection};
use crate::workspace::Workspace;

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

/// Parses a JSON body; an empty body is the default request. Errors name the field at fault.
fn parse<T: DeserializeOwned + Default>(
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

/// What a launched thread runs.
enum Job {
    Operation(String, Selection, RunOptions),
    Sync { atomic: bool },
    Assemble,
}

const GIT_JOBS: usize = 4;

/// Starts `job` on its own thread as run `run_id`; answers 202 once the run is recorded.
async fn launch(state: &AppState, job: Job) -> Result<Response, ApiError> {
    if state.shutting_down() {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting_down",
            "the server is shutting down",
        ));
    }
    let run_id = crate::scheduler::new_run_id();
    let events = Events::default();
    let mut rx = events.subscribe();
    let cancel = Cancel::default();
    state.runs().insert(
        run_id.clone(),
        ActiveRun {
            cancel: cancel.clone(),
        },
    );
    let (done_tx, mut done) = tokio::sync::oneshot::channel::<Result<(), String>>();
    let manifest = (*state.manifest()).clone();
    let dir = state.state_dir().to_path_buf();
    let id = run_id.clone();
    let spawned = std::thread::Builder::new()
        .name("nestr-api-run".into())
        .spawn(move || {
            let mut ws = Workspace::with_manifest(manifest, dir);
            ws.meta = RunMeta {
                started_by: "api".into(),
                events: events.clone(),
                run_id: Some(id.clone()),
            };
            let result = match job {
                Job::Operation(op, sel, mut opts) => {
                    opts.run_id = Some(id);
                    ws.run_operation(&op, &sel, &opts, events, cancel)
                        .map(|_| ())
                }
                Job::Sync { atomic } => ws.sync(GIT_JOBS, atomic, false, &NoProgress).map(|_| ()),
                Job::Assemble => ws.assemble(GIT_JOBS, false, &NoProgress).map(|_| ()),
            };
            let _ = done_tx.send(result.map_err(|e| e.to_string()));
        });
    if let Err(e) = spawned {
        state.runs().remove(&run_id);
        return Err(ApiError::internal("could not start the run's thread", e));
    }
    // Answer once the run is recorded (its first event), or with why it could not start.
    let started = loop {
        tokio::select! {
            biased;
            ev = rx.recv() => match ev {
                Ok(crate::scheduler::events::Event::RunStarted { .. })
                | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => break Ok(()),
                Ok(_) => continue,
                Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                    break (&mut done).await.unwrap_or_else(|_| Err("the run's thread stopped".into()));
                }
            },
            r = &mut done => break r.unwrap_or_else(|_| Err("the run's thread stopped".into())),
        }
    };
    let forget = {
        let state = state.clone();
        let run_id = run_id.clone();
        move || {
            state.runs().remove(&run_id);
        }
    };
    if let Err(e) = started {
        forget();
        return Err(ApiError::internal(
            "the run could not start",
            crate::redact::text(&e),
        ));
    }
    tokio::spawn(async move {
        if let Ok(Err(e)) = done.await {
            tracing::error!(error = %e, "an API run failed to complete");
        }
        forget();
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

/// Runs an operation over the selected services in dependency order.
#[utoipa::path(post, path = "/api/operations/run", tag = "operations",
    request_body = RunRequest,
    responses(
        (status = 202, description = "Recorded and started; follow /api/runs/{id}/events", body = RunAccepted,
            headers(("Location" = String, description = "/api/runs/{run_id}"))),
        (status = 400, description = "Malformed body or a selection that matches nothing", body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 415, body = ErrorBody)))]
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
    crate::scheduler::plan(&state.manifest(), &req.operation, &selection)
        .map_err(|e| ApiError::bad_request(e.0))?;
    let mut opts = RunOptions {
        started_by: "api".into(),
        ..RunOptions::default()
    };
    if let Some(c) = req.concurrency {
        opts.jobs = c;
    }
    if let Some(m) = req.continue_mode {
        opts.continue_mode = m;
    }
    launch(&state, Job::Operation(req.operation, selection, opts)).await
}

/// Fetches every repository, then fast-forwards what can be updated without losing local work;
/// recorded as a run with one step per repository.
#[utoipa::path(post, path = "/api/operations/sync", tag = "operations",
    request_body(content = Option<SyncRequest>, description = "Optional; `{}` when empty"),
    responses(
        (status = 202, body = RunAccepted, headers(("Location" = String, description = "/api/runs/{run_id}"))),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 415, body = ErrorBody)))]
pub async fn sync(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let req: SyncRequest = parse(&headers, &body, true)?;
    launch(&state, Job::Sync { atomic: req.atomic }).await
}

/// Clones every missing repository; recorded as a run with one step per repository.
#[utoipa::path(post, path = "/api/operations/assemble", tag = "operations",
    request_body(content = Option<AssembleRequest>, description = "Optional; `{}` when empty"),
    responses(
        (status = 202, body = RunAccepted, headers(("Location" = String, description = "/api/runs/{run_id}"))),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 415, body = ErrorBody)))]
pub async fn assemble(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let _: AssembleRequest = parse(&headers, &body, true)?;
    launch(&state, Job::Assemble).await
}
