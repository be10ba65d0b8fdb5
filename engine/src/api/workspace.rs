//! Handlers for the workspace itself: `/health`, `/ready`, `/metrics`, `/api/workspace`,
//! `/api/repos`, `/api/services[/{name}[/steps]]`, `/api/plugins`, `/api/session` (what the
//! request's credentials allow) and `/api/plan` (a selection planned, nothing run).

use std::collections::HashMap;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::error::{ApiError, ErrorBody};
use super::state::{AppState, lock};
use crate::git::{self, RepoStatus};
use crate::views::{self, PluginView, RepoView, ServicePage, ServiceView};

/// `{"status": "ok"}`.
#[derive(Serialize, utoipa::ToSchema)]
pub struct Health {
    pub status: String,
}

/// The process is up.
#[utoipa::path(get, path = "/health", tag = "system", security(()),
    responses((status = 200, description = "The process is up", body = Health)))]
pub async fn health() -> Json<Health> {
    Json(Health {
        status: "ok".into(),
    })
}

/// Readiness: the store answers and its schema is this binary's.
#[derive(Serialize, utoipa::ToSchema)]
pub struct Ready {
    pub status: String,
    pub schema_version: usize,
    /// Set when `nestr.toml` on disk was changed into something invalid: the first problem
    /// (file:line:col: what). The last good manifest is still served.
    pub manifest_problem: Option<String>,
}

/// The store is reachable and migrated.
#[utoipa::path(get, path = "/ready", tag = "system", security(()),
    responses(
        (status = 200, description = "Ready to serve", body = Ready),
        (status = 503, description = "The store is not reachable or not migrated", body = ErrorBody)))]
pub async fn ready(State(state): State<AppState>) -> Result<Json<Ready>, ApiError> {
    let known = crate::store::migrations().len();
    let version = state
        .store(|s| Ok(s.schema_version()?))
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "not_ready",
                format!("the store is not reachable: {}", e.message),
            )
        })?;
    if version != known {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            format!("the store has schema version {version}, this server needs {known}"),
        ));
    }
    Ok(Json(Ready {
        status: "ready".into(),
        schema_version: version,
        manifest_problem: state.manifest_problem(),
    }))
}

/// Prometheus metrics (text format).
#[utoipa::path(get, path = "/metrics", tag = "system", security(()),
    responses(
        (status = 200, description = "Metrics in the Prometheus text format", body = String, content_type = "text/plain"),
        (status = 401, description = "Called from another host without a token", body = ErrorBody)))]
pub async fn metrics() -> Response {
    let text = crate::metrics::global()
        .map(|m| m.render())
        .unwrap_or_default();
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        text,
    )
        .into_response()
}

/// The workspace at a glance.
#[derive(Serialize, utoipa::ToSchema)]
pub struct WorkspaceView {
    pub name: String,
    pub description: Option<String>,
    /// Absolute path of `nestr.toml`.
    pub manifest: String,
    pub counts: Counts,
    pub repos: Vec<RepoView>,
}

/// How many of each.
#[derive(Serialize, utoipa::ToSchema)]
pub struct Counts {
    pub repos: usize,
    pub services: usize,
    pub plugins: usize,
    /// Runs this server is executing now.
    pub runs_active: usize,
}

/// Status of every repository (blocking git work), updating the drift gauges.
async fn statuses(state: &AppState) -> Result<Vec<Result<RepoStatus, String>>, ApiError> {
    let m = state.manifest().clone();
    let rows = tokio::task::spawn_blocking(move || git::status_all(&m, 4))
        .await
        .map_err(|e| ApiError::internal("the status task failed", e))?;
    if let Some(metrics) = crate::metrics::global() {
        for s in rows.iter().flatten() {
            let ahead = i64::try_from(s.ahead).unwrap_or(i64::MAX);
            let behind = i64::try_from(s.behind).unwrap_or(i64::MAX);
            metrics.repo_ahead.with_label_values(&[&s.name]).set(ahead);
            metrics
                .repo_behind
                .with_label_values(&[&s.name])
                .set(behind);
        }
    }
    Ok(rows)
}

/// Name, manifest, counts, and the repositories with their sync state.
#[utoipa::path(get, path = "/api/workspace", tag = "workspace",
    responses((status = 200, body = WorkspaceView), (status = 401, body = ErrorBody)))]
pub async fn workspace(State(state): State<AppState>) -> Result<Json<WorkspaceView>, ApiError> {
    let status = statuses(&state).await?;
    let stored = state.store(|s| Ok(s.repos()?)).await?;
    let m = state.manifest();
    let mut plugins: Vec<&str> = crate::manifest::BUILTIN_PLUGINS.to_vec();
    plugins.extend(m.plugins.keys().map(String::as_str));
    plugins.sort_unstable();
    plugins.dedup();
    Ok(Json(WorkspaceView {
        name: m.name.clone(),
        description: m.description.clone(),
        manifest: m.path.display().to_string(),
        counts: Counts {
            repos: m.repos.len(),
            services: m.services.len(),
            plugins: plugins.len(),
            runs_active: state.runs().len(),
        },
        repos: views::repos(&m, status, &stored),
    }))
}

/// The `nestr status` rows.
#[utoipa::path(get, path = "/api/repos", tag = "workspace",
    responses((status = 200, body = Vec<RepoView>), (status = 401, body = ErrorBody)))]
pub async fn repos(State(state): State<AppState>) -> Result<Json<Vec<RepoView>>, ApiError> {
    let status = statuses(&state).await?;
    let stored = state.store(|s| Ok(s.repos()?)).await?;
    Ok(Json(views::repos(&state.manifest(), status, &stored)))
}

/// Paging of `/api/services`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ServicesQuery {
    /// Services per page (1–1000, default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<usize>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// Services in manifest order with tags, dependencies, operations and the last step status of
/// each operation.
#[utoipa::path(get, path = "/api/services", tag = "workspace", params(ServicesQuery),
    responses((status = 200, body = ServicePage), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
pub async fn services(
    State(state): State<AppState>,
    query: Result<Query<ServicesQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(mut q) = query.map_err(super::bad_query)?;
    q.cursor = q.cursor.filter(|s| !s.is_empty());
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::bad_request("`limit` must be between 1 and 1000").with_field("limit"));
    }
    let key = format!("{limit}/{}", q.cursor.as_deref().unwrap_or(""));
    let generation = state.store(|s| Ok(s.history_generation()?)).await?;
    {
        let cache = lock(&state.0.services_cache);
        if cache.0 == generation
            && let Some(body) = cache.1.get(&key)
        {
            return Ok(json_bytes(body.clone()));
        }
    }
    let m = state.manifest().clone();
    let start = match &q.cursor {
        None => 0,
        Some(c) => {
            m.services
                .iter()
                .position(|s| &s.name == c)
                .ok_or_else(|| {
                    ApiError::bad_request("`cursor` is not a service of this workspace")
                        .with_field("cursor")
                })?
                + 1
        }
    };
    let wanted = views::wanted_statuses(&m, m.services.iter().skip(start).take(limit));
    let last = state
        .store(move |s| Ok(s.last_step_statuses(&wanted)?))
        .await?;
    let page: Vec<ServiceView> = m
        .services
        .iter()
        .skip(start)
        .take(limit)
        .map(|s| views::service_view(&m, s, &last))
        .collect();
    let next_cursor = (start + page.len() < m.services.len())
        .then(|| page.last().map(|s| s.name.clone()))
        .flatten();
    let body = serde_json::to_vec(&ServicePage {
        services: page,
        next_cursor,
    })
    .map_err(|e| ApiError::internal("could not encode the services", e))?;
    let body = Bytes::from(body);
    let mut cache = lock(&state.0.services_cache);
    if cache.0 != generation {
        *cache = (generation, HashMap::new());
    }
    cache.1.insert(key, body.clone());
    Ok(json_bytes(body))
}

fn json_bytes(body: Bytes) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response()
}

/// One service.
#[utoipa::path(get, path = "/api/services/{name}", tag = "workspace",
    params(("name" = String, Path, description = "Service name")),
    responses((status = 200, body = ServiceView), (status = 404, body = ErrorBody), (status = 401, body = ErrorBody)))]
pub async fn service(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<ServiceView>, ApiError> {
    let m = state.manifest().clone();
    let Some(s) = m.service(&name) else {
        return Err(ApiError::not_found(format!(
            "no service `{name}` in this workspace; GET /api/services lists them"
        )));
    };
    let wanted = views::wanted_statuses(&m, [s]);
    let last = state
        .store(move |st| Ok(st.last_step_statuses(&wanted)?))
        .await?;
    Ok(Json(views::service_view(&m, s, &last)))
}

/// Built-in and declared plugins: source, digest, declared capabilities, grants.
#[utoipa::path(get, path = "/api/plugins", tag = "workspace",
    responses((status = 200, body = Vec<PluginView>), (status = 401, body = ErrorBody)))]
pub async fn plugins(State(state): State<AppState>) -> Result<Response, ApiError> {
    let generation = state.manifest_generation();
    if let Some((g, body)) = lock(&state.0.plugins_cache).as_ref()
        && *g == generation
    {
        return Ok(json_bytes(body.clone()));
    }
    let m = state.manifest();
    let rows = tokio::task::spawn_blocking(move || views::plugins(&m))
        .await
        .map_err(|e| ApiError::internal("the plugin task failed", e))?
        .map_err(|e| ApiError::internal("could not load the plugins", e))?;
    let body = serde_json::to_vec(&rows)
        .map(Bytes::from)
        .map_err(|e| ApiError::internal("could not encode the plugins", e))?;
    *lock(&state.0.plugins_cache) = Some((generation, body.clone()));
    Ok(json_bytes(body))
}

/// What the request's credentials allow: set by the `auth` layer for every `/api` request.
#[derive(Debug, Clone, Copy, Serialize, utoipa::ToSchema)]
pub struct Session {
    /// `read`, `write` or `approve`.
    pub scope: crate::model::Scope,
    /// True in local mode: no token exists and the server is bound to loopback, so none is
    /// needed.
    pub local: bool,
    /// The id of the token presented (none in local mode).
    pub token: Option<i64>,
}

impl Session {
    /// Who the request acts as in deploy records: `token:ID`, or `local`.
    pub fn actor(&self) -> String {
        self.token
            .map_or_else(|| "local".to_string(), |id| format!("token:{id}"))
    }
}

/// What the credentials of this request allow (the dashboard shows its actions only to `write`).
#[utoipa::path(get, path = "/api/session", tag = "workspace",
    responses((status = 200, body = Session), (status = 401, body = ErrorBody)))]
pub async fn session(session: Option<axum::Extension<Session>>) -> Result<Json<Session>, ApiError> {
    session
        .map(|s| Json(s.0))
        .ok_or_else(|| ApiError::internal("no session", "the auth layer set none"))
}

/// A selection, as query parameters.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct PlanQuery {
    /// The operation.
    pub operation: String,
    /// Only these services, separated by commas.
    pub services: Option<String>,
    /// Only services with any of these tags, separated by commas.
    pub tags: Option<String>,
    /// Add the selected services' dependencies.
    pub with_deps: Option<bool>,
    /// Add the services that depend on the selected ones.
    pub with_dependents: Option<bool>,
}

fn list(s: Option<String>) -> Vec<String> {
    s.map(|s| {
        s.split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(String::from)
            .collect()
    })
    .unwrap_or_default()
}

/// What a run would do with this selection, run nothing: the plan `nestr run --dry-run` shows.
#[utoipa::path(get, path = "/api/plan", tag = "operations", params(PlanQuery),
    responses((status = 200, body = crate::scheduler::PlanView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
pub async fn plan(
    State(state): State<AppState>,
    query: Result<Query<PlanQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<crate::scheduler::PlanView>, ApiError> {
    let Query(q) = query.map_err(super::bad_query)?;
    if q.operation.trim().is_empty() {
        return Err(ApiError::bad_request("`operation` is required").with_field("operation"));
    }
    let selection = crate::scheduler::Selection {
        services: list(q.services),
        tags: list(q.tags),
        with_deps: q.with_deps.unwrap_or(false),
        with_dependents: q.with_dependents.unwrap_or(false),
    };
    let plan = crate::scheduler::plan(&state.manifest(), &q.operation, &selection)
        .map_err(|e| ApiError::bad_request(e.0))?;
    Ok(Json(plan.view()))
}

/// Which steps of a service `/api/services/{name}/steps` lists.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct StepsQuery {
    /// Only steps of runs of this operation.
    pub operation: Option<String>,
    /// Steps (1–500, default 20).
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<usize>,
}

/// A service's recent steps.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ServiceSteps {
    pub steps: Vec<crate::store::ServiceStep>,
}

/// The service's newest steps, of every operation or of one, newest first.
#[utoipa::path(get, path = "/api/services/{name}/steps", tag = "workspace",
    params(("name" = String, Path, description = "Service name"), StepsQuery),
    responses((status = 200, body = ServiceSteps), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 401, body = ErrorBody)))]
pub async fn service_steps(
    State(state): State<AppState>,
    Path(name): Path<String>,
    query: Result<Query<StepsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<ServiceSteps>, ApiError> {
    let Query(q) = query.map_err(super::bad_query)?;
    let limit = q.limit.unwrap_or(20);
    if !(1..=500).contains(&limit) {
        return Err(ApiError::bad_request("`limit` must be between 1 and 500").with_field("limit"));
    }
    if state.manifest().service(&name).is_none() {
        return Err(ApiError::not_found(format!(
            "no service `{name}` in this workspace; GET /api/services lists them"
        )));
    }
    let operation = q.operation.filter(|o| !o.is_empty());
    let steps = state
        .store(move |s| Ok(s.service_steps(&name, operation.as_deref(), limit)?))
        .await?;
    Ok(Json(ServiceSteps { steps }))
}
