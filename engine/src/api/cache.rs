//! Handlers for the change-aware parts: a step's key manifest
//! (`/api/runs/{id}/steps/{service}/key`) and why it differs from the nearest other
//! (`…/explain`), a run's provenance (`/api/runs/{id}/provenance`), the cache's figures
//! (`/api/cache/stats`) and what a change affects (`/api/affected`). Each answers the JSON the
//! CLI prints for the same question.

use axum::Json;
use axum::extract::{Path, Query, State};
use serde::{Deserialize, Serialize};

use super::error::{ApiError, ErrorBody};
use super::state::AppState;
use crate::affected::Affected;
use crate::cache::explain::{ExplainError, Explanation};
use crate::cache::provenance::ProvenanceError;
use crate::store::CacheStats;

/// A step's key and the manifest it is the sha256 of.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct StepKeyBody {
    pub run_id: String,
    pub service: String,
    pub key: String,
    pub hit: bool,
    /// The key manifest (canonical JSON, keys sorted).
    #[schema(value_type = Object)]
    pub manifest: serde_json::Value,
}

fn explain_error(e: ExplainError) -> ApiError {
    match e {
        ExplainError::Store(e) => ApiError::internal("reading the store", e),
        other => ApiError::not_found(other.to_string()),
    }
}

/// The key manifest of a step.
#[utoipa::path(get, path = "/api/runs/{id}/steps/{service}/key", tag = "runs",
    params(("id" = String, Path, description = "Run id"), ("service" = String, Path, description = "Service")),
    responses((status = 200, body = StepKeyBody), (status = 404, body = ErrorBody), (status = 401, body = ErrorBody)))]
pub async fn key(
    State(state): State<AppState>,
    Path((id, service)): Path<(String, String)>,
) -> Result<Json<StepKeyBody>, ApiError> {
    state
        .store(move |s| {
            let run = s.run(&id)?.ok_or_else(|| {
                ApiError::not_found(format!("no run `{id}`; GET /api/runs lists them"))
            })?;
            let step = run
                .steps
                .iter()
                .find(|st| st.service == service)
                .ok_or_else(|| {
                    ApiError::not_found(format!("run `{id}` has no step for `{service}`"))
                })?;
            let cache = step.cache.clone().ok_or_else(|| {
                ApiError::not_found(format!(
                    "the step of `{service}` in run `{id}` has no cache key"
                ))
            })?;
            let manifest = s
                .key_manifest(&cache.key)?
                .and_then(|t| serde_json::from_str(&t).ok())
                .unwrap_or(serde_json::Value::Null);
            Ok(Json(StepKeyBody {
                run_id: id,
                service,
                key: cache.key,
                hit: cache.hit,
                manifest,
            }))
        })
        .await
}

/// `?against=RUN2` of `…/explain`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ExplainQuery {
    /// Compare with this run's step of the service (default: the nearest other key).
    pub against: Option<String>,
}

/// Which parts of a step's key differ from the nearest other one (what `nestr cache explain`
/// says).
#[utoipa::path(get, path = "/api/runs/{id}/steps/{service}/explain", tag = "runs",
    params(("id" = String, Path, description = "Run id"), ("service" = String, Path, description = "Service"), ExplainQuery),
    responses((status = 200, body = Explanation), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 401, body = ErrorBody)))]
pub async fn explain(
    State(state): State<AppState>,
    Path((id, service)): Path<(String, String)>,
    Query(q): Query<ExplainQuery>,
) -> Result<Json<Explanation>, ApiError> {
    let manifest = state.manifest();
    state
        .store(move |s| {
            crate::cache::explain::explain(&manifest, s, &id, &service, q.against.as_deref())
                .map(Json)
                .map_err(explain_error)
        })
        .await
}

/// `?service=` of `/api/runs/{id}/provenance`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ProvenanceQuery {
    /// Only this service's step.
    pub service: Option<String>,
}

/// A run's provenance.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ProvenanceBody {
    pub run_id: String,
    /// One in-toto Statement v1 (SLSA Provenance v1 predicate) per step that ran or was cached.
    #[schema(value_type = Vec<Object>)]
    pub statements: Vec<serde_json::Value>,
}

/// What produced each step's result, as in-toto statements (what `nestr runs provenance`
/// prints, one per line).
#[utoipa::path(get, path = "/api/runs/{id}/provenance", tag = "runs",
    params(("id" = String, Path, description = "Run id"), ProvenanceQuery),
    responses((status = 200, body = ProvenanceBody), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 401, body = ErrorBody)))]
pub async fn provenance(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<ProvenanceQuery>,
) -> Result<Json<ProvenanceBody>, ApiError> {
    state
        .store(move |s| {
            let statements = crate::cache::provenance::for_run(s, &id, q.service.as_deref())
                .map_err(|e| match e {
                    ProvenanceError::Store(e) => ApiError::internal("reading the store", e),
                    other => ApiError::not_found(other.to_string()),
                })?;
            Ok(Json(ProvenanceBody {
                run_id: id,
                statements,
            }))
        })
        .await
}

/// The operation cache's figures (what `nestr cache stats --json` prints).
#[utoipa::path(get, path = "/api/cache/stats", tag = "runs",
    responses((status = 200, body = CacheStats), (status = 401, body = ErrorBody)))]
pub async fn stats(State(state): State<AppState>) -> Result<Json<CacheStats>, ApiError> {
    state.store(|s| Ok(Json(s.cache_stats()?))).await
}

/// `?base=&operation=` of `/api/affected`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AffectedQuery {
    /// A revision every repository resolves (default: each one's upstream branch).
    pub base: Option<String>,
    /// Count only the files this operation's `inputs` globs match.
    pub operation: Option<String>,
}

/// The services a change affects across repositories, with why (what `nestr affected --json`
/// prints).
#[utoipa::path(get, path = "/api/affected", tag = "workspace",
    params(AffectedQuery),
    responses((status = 200, body = Affected), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
pub async fn affected(
    State(state): State<AppState>,
    Query(q): Query<AffectedQuery>,
) -> Result<Json<Affected>, ApiError> {
    if q.base
        .as_deref()
        .is_some_and(|b| b.trim().is_empty() || b.starts_with('-'))
    {
        return Err(ApiError::bad_request("`base` must name a revision"));
    }
    let manifest = state.manifest();
    tokio::task::spawn_blocking(move || {
        let base = match q.base {
            Some(b) => crate::affected::Base::Ref(b),
            None => crate::affected::Base::Upstream,
        };
        crate::affected::affected(&manifest, &base, None, q.operation.as_deref())
            .map(Json)
            .map_err(ApiError::bad_request)
    })
    .await
    .map_err(|e| ApiError::internal("computing what is affected", e))?
}
