//! Deploys over HTTP, the same calls the CLI makes (`crate::deploy`): `GET /api/environments`
//! (what runs where), `POST /api/environments/{env}/plans` (record a plan), `GET
//! /api/deploys/{plan}` (a plan, its state and audit trail), `POST …/approve` (a token with the
//! `approve` scope; never the planner's own), `POST …/apply`, `…/resume`, `…/abort` (202 once the
//! environment is held and the work started; a refusal is a 409 with the reason), and `GET
//! …/events` (the audit trail as it grows, over SSE). Each apply runs on a thread of its own, its
//! deploy and rollback runs recorded like any run (follow them at `/api/runs/{id}/events`).

use std::convert::Infallible;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::error::{ApiError, ErrorBody};
use super::state::AppState;
use super::workspace::Session;
use crate::deploy::{self, DeployError};
use crate::plugin::state::Cancel;
use crate::scheduler::Selection;
use crate::workspace::Workspace;

/// `POST /api/environments/{env}/plans`.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PlanRequest {
    /// Only these services (default: every service with the environment's deploy operation).
    #[serde(default)]
    pub services: Vec<String>,
    /// Only services with any of these tags.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Add the selected services' dependencies.
    #[serde(default)]
    pub with_deps: bool,
}

/// Every environment's status (`nestr deploy status --json`).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct EnvironmentsBody {
    /// `[{name, approval, lock, services: [{service, repo, commit, at, run_id, plan_id, action,
    /// unknown, workspace, behind}]}]`.
    #[schema(value_type = Vec<Object>)]
    pub environments: serde_json::Value,
}

/// A plan (`nestr deploy plan --json`): `{nestr_plan, id, environment, operation, created_at,
/// created_by, approval, after, repos, waves, services}`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(value_type = Object)]
pub struct PlanBody(serde_json::Value);

/// A plan with its record and audit trail (`nestr deploy show --json`).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DeployBody {
    #[schema(value_type = Object)]
    pub plan: serde_json::Value,
    /// `{id, environment, created_at, created_by, state, approved_by, approved_at, run_id,
    /// rollback_run_id, finished_at}`.
    #[schema(value_type = Object)]
    pub record: serde_json::Value,
    /// `[{id, environment, plan_id, at, kind, actor, detail}]`, oldest first.
    #[schema(value_type = Vec<Object>)]
    pub events: serde_json::Value,
}

/// An apply, resume or abort that started.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DeployAccepted {
    pub plan: String,
    pub environment: String,
    /// Follow it at `/api/deploys/{plan}/events`.
    pub events: String,
}

fn deploy_error(e: DeployError) -> ApiError {
    match e {
        DeployError::NotFound(m) => ApiError::not_found(m),
        DeployError::Refused(m) => ApiError::conflict(crate::redact::text(&m)),
        DeployError::Workspace(crate::workspace::WorkspaceError::Plan(m)) => {
            ApiError::bad_request(m)
        }
        DeployError::Workspace(e) => ApiError::internal("the deploy could not be carried out", e),
        DeployError::Store(e) => ApiError::internal("reading the store", e),
    }
}

/// A workspace over the manifest the server serves, for a blocking call.
fn workspace(state: &AppState) -> Workspace {
    Workspace::with_manifest((*state.manifest()).clone(), state.state_dir().to_path_buf())
}

/// Runs `f` over a fresh workspace on the blocking pool.
async fn blocking<T: Send + 'static>(
    state: &AppState,
    f: impl FnOnce(&mut Workspace) -> Result<T, DeployError> + Send + 'static,
) -> Result<T, ApiError> {
    let mut ws = workspace(state);
    tokio::task::spawn_blocking(move || f(&mut ws))
        .await
        .map_err(|e| ApiError::internal("a deploy task failed", e))?
        .map_err(deploy_error)
}

fn session(s: Option<axum::Extension<Session>>) -> Result<Session, ApiError> {
    s.map(|s| s.0)
        .ok_or_else(|| ApiError::internal("no session", "the auth layer set none"))
}

/// What runs where in every environment.
#[utoipa::path(get, path = "/api/environments", tag = "deploys",
    responses((status = 200, body = EnvironmentsBody), (status = 401, body = ErrorBody)))]
pub async fn environments(
    State(state): State<AppState>,
) -> Result<Json<EnvironmentsBody>, ApiError> {
    let envs = blocking(&state, |ws| deploy::status(ws, None)).await?;
    Ok(Json(EnvironmentsBody {
        environments: serde_json::to_value(envs).map_err(|e| ApiError::internal("encoding", e))?,
    }))
}

/// Records a plan of deploying to an environment; nothing is deployed.
#[utoipa::path(post, path = "/api/environments/{env}/plans", tag = "deploys",
    params(("env" = String, Path, description = "Environment")),
    request_body(content = PlanRequest, content_type = "application/json"),
    responses(
        (status = 201, body = PlanBody),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 415, body = ErrorBody)))]
pub async fn plan(
    State(state): State<AppState>,
    s: Option<axum::Extension<Session>>,
    Path(env): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let who = session(s)?.actor();
    let req: PlanRequest = super::operations::parse(&headers, &body, true)?;
    let plan = blocking(&state, move |ws| {
        let selection = Selection {
            services: req.services,
            tags: req.tags,
            with_deps: req.with_deps,
            with_dependents: false,
        };
        deploy::plan(ws, &env, &selection, &who)
    })
    .await?;
    let body = serde_json::to_value(&plan).map_err(|e| ApiError::internal("encoding", e))?;
    Ok((StatusCode::CREATED, Json(PlanBody(body))).into_response())
}

/// A plan, its state and its audit trail.
#[utoipa::path(get, path = "/api/deploys/{plan}", tag = "deploys",
    params(("plan" = String, Path, description = "The plan's hash, or a unique prefix of it")),
    responses((status = 200, body = DeployBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn show(
    State(state): State<AppState>,
    Path(plan): Path<String>,
) -> Result<Json<DeployBody>, ApiError> {
    let plan = id_only(plan)?;
    blocking(&state, move |ws| {
        let (p, row) = deploy::find_id(ws, &plan)?;
        let events = ws
            .store()?
            .deploy_events(&p.body.environment, Some(&row.id))?;
        Ok(DeployBody {
            plan: serde_json::to_value(&p).unwrap_or_default(),
            record: serde_json::to_value(&row).unwrap_or_default(),
            events: serde_json::to_value(&events).unwrap_or_default(),
        })
    })
    .await
    .map(Json)
}

/// A plan is named by its hash here, never by a file of the server's.
fn id_only(plan: String) -> Result<String, ApiError> {
    if plan.is_empty() || plan.len() > 64 || !plan.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ApiError::not_found(format!(
            "`{}` is not a plan's hash",
            plan.chars().take(80).collect::<String>()
        )));
    }
    Ok(plan.to_ascii_lowercase())
}

/// Approves a plan (a token with the `approve` scope; not the planner's own).
#[utoipa::path(post, path = "/api/deploys/{plan}/approve", tag = "deploys",
    params(("plan" = String, Path, description = "The plan's hash, or a unique prefix of it")),
    responses(
        (status = 200, description = "The plan's record, approved", body = Object),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn approve(
    State(state): State<AppState>,
    s: Option<axum::Extension<Session>>,
    Path(plan): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let who = session(s)?.actor();
    let plan = id_only(plan)?;
    let row = blocking(&state, move |ws| deploy::approve(ws, &plan, &who)).await?;
    Ok(Json(
        serde_json::to_value(row).map_err(|e| ApiError::internal("encoding", e))?,
    ))
}

/// What to do with a plan.
#[derive(Clone, Copy)]
enum Action {
    Apply,
    Resume,
    Abort,
}

/// Starts `action` on a thread of its own; answers 202 once the environment is held and the
/// work started, or the refusal (409) when it did not start.
async fn start(
    state: &AppState,
    session: Session,
    plan: String,
    action: Action,
) -> Result<Response, ApiError> {
    if state.shutting_down() {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting_down",
            "the server is shutting down",
        ));
    }
    let plan = id_only(plan)?;
    let who = session.actor();
    let mut ws = workspace(state);
    let (tx, rx) = tokio::sync::oneshot::channel::<Result<(String, String), ApiError>>();
    let tx = std::sync::Mutex::new(Some(tx));
    let send = move |r: Result<(String, String), ApiError>| {
        if let Some(tx) = tx.lock().ok().and_then(|mut t| t.take()) {
            let _ = tx.send(r);
        }
    };
    // A thread, not the blocking pool: each run of the apply builds a runtime of its own.
    std::thread::Builder::new()
        .name("nestr-deploy".into())
        .spawn(move || {
            let found = deploy::find_id(&mut ws, &plan);
            let (id, env) = match &found {
                Ok((p, row)) => (row.id.clone(), p.body.environment.clone()),
                Err(_) => (plan.clone(), String::new()),
            };
            if let Err(e) = found {
                send(Err(deploy_error(e)));
                return;
            }
            let started = || send(Ok((id.clone(), env.clone())));
            let result = match action {
                Action::Apply => deploy::apply(&mut ws, &id, &who, Cancel::default(), &started),
                Action::Resume => deploy::resume(&mut ws, &id, &who, Cancel::default(), &started),
                Action::Abort => deploy::abort(&mut ws, &id, &who, &started),
            };
            match result {
                Ok(r) => tracing::info!(plan = %r.plan, state = %r.state, "deploy ended"),
                Err(e) => send(Err(deploy_error(e))),
            }
        })
        .map_err(|e| ApiError::internal("cannot start the deploy", e))?;
    let (id, env) = rx
        .await
        .map_err(|_| ApiError::internal("the deploy ended", "without a word"))??;
    Ok((
        StatusCode::ACCEPTED,
        Json(DeployAccepted {
            events: format!("/api/deploys/{id}/events"),
            plan: id,
            environment: env,
        }),
    )
        .into_response())
}

/// Applies a plan exactly as it was made (refused when stale, unapproved, applied, or while
/// another apply holds the environment).
#[utoipa::path(post, path = "/api/deploys/{plan}/apply", tag = "deploys",
    params(("plan" = String, Path, description = "The plan's hash, or a unique prefix of it")),
    responses(
        (status = 202, body = DeployAccepted),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 503, body = ErrorBody)))]
pub async fn apply(
    State(state): State<AppState>,
    s: Option<axum::Extension<Session>>,
    Path(plan): Path<String>,
) -> Result<Response, ApiError> {
    start(&state, session(s)?, plan, Action::Apply).await
}

/// Goes on with an apply paused on an inconclusive health gate.
#[utoipa::path(post, path = "/api/deploys/{plan}/resume", tag = "deploys",
    params(("plan" = String, Path, description = "The plan's hash, or a unique prefix of it")),
    responses(
        (status = 202, body = DeployAccepted),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 503, body = ErrorBody)))]
pub async fn resume(
    State(state): State<AppState>,
    s: Option<axum::Extension<Session>>,
    Path(plan): Path<String>,
) -> Result<Response, ApiError> {
    start(&state, session(s)?, plan, Action::Resume).await
}

/// Ends a paused apply by rolling back what it deployed, in reverse order.
#[utoipa::path(post, path = "/api/deploys/{plan}/abort", tag = "deploys",
    params(("plan" = String, Path, description = "The plan's hash, or a unique prefix of it")),
    responses(
        (status = 202, body = DeployAccepted),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 503, body = ErrorBody)))]
pub async fn abort(
    State(state): State<AppState>,
    s: Option<axum::Extension<Session>>,
    Path(plan): Path<String>,
) -> Result<Response, ApiError> {
    start(&state, session(s)?, plan, Action::Abort).await
}

/// States after which a plan's trail grows no more.
const FINAL: &[&str] = &[
    "applied",
    "rolled_back",
    "rollback_failed",
    "failed",
    "interrupted",
    "paused",
];

/// The plan's audit trail as Server-Sent Events (`event: deploy`, data: one record), from the
/// first record; the stream ends once the plan is applied, rolled back, paused or interrupted.
#[utoipa::path(get, path = "/api/deploys/{plan}/events", tag = "deploys",
    params(("plan" = String, Path, description = "The plan's hash, or a unique prefix of it")),
    responses(
        (status = 200, description = "Server-Sent Events", content_type = "text/event-stream", body = String),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn events(
    State(state): State<AppState>,
    Path(plan): Path<String>,
) -> Result<Response, ApiError> {
    let plan = id_only(plan)?;
    let (id, env) = blocking(&state, move |ws| {
        let (p, row) = deploy::find_id(ws, &plan)?;
        Ok((row.id, p.body.environment))
    })
    .await?;
    let stream = futures_util::stream::unfold(
        (state, id, env, 0i64, false),
        |(state, id, env, mut last, done)| async move {
            if done {
                return None;
            }
            loop {
                let (i, e) = (id.clone(), env.clone());
                let read = state
                    .store(move |s| {
                        let events = s.deploy_events(&e, Some(&i))?;
                        let state = s.plan(&i)?.map(|r| r.state).unwrap_or_default();
                        Ok((events, state))
                    })
                    .await;
                let Ok((events, plan_state)) = read else {
                    return None;
                };
                let fresh: Vec<_> = events.into_iter().filter(|e| e.id > last).collect();
                let finished = FINAL.contains(&plan_state.as_str());
                if !fresh.is_empty() {
                    let mut out = Vec::new();
                    for e in fresh {
                        last = e.id;
                        out.push(Ok::<_, Infallible>(
                            Event::default()
                                .event("deploy")
                                .id(e.id.to_string())
                                .data(serde_json::to_string(&e).unwrap_or_default()),
                        ));
                    }
                    let stream = futures_util::stream::iter(out);
                    return Some((stream, (state, id, env, last, finished)));
                }
                if finished {
                    return None;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        },
    );
    use futures_util::StreamExt;
    Ok(Sse::new(stream.flatten())
        .keep_alive(KeepAlive::default())
        .into_response())
}
