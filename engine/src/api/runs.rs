//! Handlers for the run history: `/api/runs` (filtered, paginated by cursor), `/api/runs/{id}`,
//! `/api/runs/{id}/cancel` and `/api/runs/{id}/rerun` (the logs are `logs.rs`).

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};

use super::error::{ApiError, ErrorBody};
use super::state::AppState;
use crate::model::RunStatus;
use crate::store::{RunFilter, RunPage, RunRow};

/// Filters and paging of `/api/runs`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct RunsQuery {
    /// queued, running, succeeded, failed, cancelled or interrupted (anything else, empty
    /// included, is a 400).
    #[param(value_type = Option<RunStatus>)]
    pub status: Option<String>,
    /// Operation name (`build`, `sync`, `assemble`, …).
    pub operation: Option<String>,
    /// Runs per page (1–500, default 50).
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<usize>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// Runs, newest first; filter by status and operation; paginated with `cursor`.
#[utoipa::path(get, path = "/api/runs", tag = "runs", params(RunsQuery),
    responses((status = 200, body = RunPage), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    query: Result<Query<RunsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<RunPage>, ApiError> {
    let Query(mut q) = query.map_err(super::bad_query)?;
    // An empty parameter is an absent one, except `status`: an empty word is not one of its
    // words.
    q.operation = q.operation.filter(|s| !s.is_empty());
    q.cursor = q.cursor.filter(|s| !s.is_empty());
    let limit = q.limit.unwrap_or(50);
    if !(1..=500).contains(&limit) {
        return Err(ApiError::bad_request("`limit` must be between 1 and 500").with_field("limit"));
    }
    if let Some(s) = &q.status
        && s.parse::<RunStatus>().is_err()
    {
        return Err(ApiError::bad_request(format!(
            "`status` must be one of {}",
            RunStatus::words().join(", ")
        ))
        .with_field("status"));
    }
    let before = match &q.cursor {
        None => None,
        Some(c) => Some(parse_run_cursor(c).ok_or_else(|| {
            ApiError::bad_request("`cursor` is not one this server gave out").with_field("cursor")
        })?),
    };
    let filter = RunFilter {
        status: q.status,
        operation: q.operation,
        before,
    };
    Ok(Json(
        state
            .store(move |s| Ok(s.runs_page(&filter, limit)?))
            .await?,
    ))
}

fn parse_run_cursor(c: &str) -> Option<(i64, String)> {
    let (at, id) = c.split_once('_')?;
    let ok = !id.is_empty() && id.len() <= 64 && id.chars().all(|c| c.is_ascii_alphanumeric());
    ok.then_some((at.parse().ok()?, id.to_string()))
}

/// The run `id`, or 404.
pub(super) async fn find_run(state: &AppState, id: &str) -> Result<RunRow, ApiError> {
    let key = id.to_string();
    state
        .store(move |s| Ok(s.run(&key)?))
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no run `{id}`; GET /api/runs lists them")))
}

/// A run with its steps.
#[utoipa::path(get, path = "/api/runs/{id}", tag = "runs",
    params(("id" = String, Path, description = "Run id")),
    responses((status = 200, body = RunRow), (status = 404, body = ErrorBody), (status = 401, body = ErrorBody)))]
pub async fn get(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<RunRow>, ApiError> {
    Ok(Json(find_run(&state, &id).await?))
}

/// The answer to a cancel request.
#[derive(Serialize, utoipa::ToSchema)]
pub struct CancelAccepted {
    pub run_id: String,
    /// `cancelling`: running steps get SIGTERM, then SIGKILL after the grace period; steps not
    /// started are cancelled.
    pub status: String,
}

/// Cancels a run this server is executing.
#[utoipa::path(post, path = "/api/runs/{id}/cancel", tag = "runs",
    params(("id" = String, Path, description = "Run id")),
    responses(
        (status = 202, description = "Cancelling", body = CancelAccepted),
        (status = 404, body = ErrorBody),
        (status = 409, description = "Already finished, or executed by another process", body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn cancel(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<CancelAccepted>), ApiError> {
    let cancel = state.runs().get(&id).map(|r| r.cancel.clone());
    if let Some(cancel) = cancel {
        tracing::info!(run = %id, "cancel requested over the API");
        cancel.cancel();
        return Ok((
            StatusCode::ACCEPTED,
            Json(CancelAccepted {
                run_id: id,
                status: "cancelling".into(),
            }),
        ));
    }
    let run = find_run(&state, &id).await?;
    if run.run.status.is_active() {
        return Err(ApiError::conflict(format!(
            "run `{id}` is executed by another nestr process (started by {}); cancel it there \
             (Ctrl-C at its terminal)",
            run.run.started_by
        )));
    }
    Err(ApiError::conflict(format!(
        "run `{id}` has already finished ({})",
        run.run.status.as_str()
    )))
}
