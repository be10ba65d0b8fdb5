//! Handlers for the run history: `/api/runs` (filtered, paginated by cursor), `/api/runs/{id}`,
//! `/api/runs/{id}/logs` (paginated by sequence) and `/api/runs/{id}/cancel`.

use std::collections::HashMap;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};

use super::error::{ApiError, ErrorBody};
use super::state::AppState;
use crate::model::RunStatus;
use crate::store::{RunFilter, RunPage, RunRow, ServiceLogLine};

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

/// A page of log lines.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct LogPage {
    pub run_id: String,
    pub lines: Vec<ServiceLogLine>,
    /// Pass as `after` to get the lines that follow (also once more lines arrive); null when
    /// the page is empty.
    pub next: Option<String>,
    /// True while the run may still add lines.
    pub running: bool,
}

/// Paging of `/api/runs/{id}/logs`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct LogsQuery {
    /// Only this service's step.
    pub service: Option<String>,
    /// Lines after this position: the `next` of the previous page. With `service`, a plain
    /// sequence number of that step's log works too.
    pub after: Option<String>,
    /// Lines per page (1–10000, default 1000).
    #[param(minimum = 1, maximum = 10000)]
    pub limit: Option<usize>,
}

/// A position in a run's log: after line `seq` of chunk `chunk` (run-wide order), or after line
/// `seq` of one step.
enum After {
    Start,
    Chunk(i64, i64),
    Seq(i64),
}

fn parse_after(s: &str) -> Option<After> {
    match s.split_once('.') {
        Some((c, q)) => Some(After::Chunk(c.parse().ok()?, q.parse().ok()?)),
        None => Some(After::Seq(s.parse().ok()?)),
    }
}

/// Log chunks read per query when paging a run's log.
const LOG_CHUNK_BATCH: usize = 8;

/// Log lines of a run (or of one service's step), in order, paginated by sequence.
#[utoipa::path(get, path = "/api/runs/{id}/logs", tag = "runs",
    params(("id" = String, Path, description = "Run id"), LogsQuery),
    responses((status = 200, body = LogPage), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 401, body = ErrorBody)))]
pub async fn logs(
    State(state): State<AppState>,
    Path(id): Path<String>,
    query: Result<Query<LogsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<LogPage>, ApiError> {
    let Query(mut q) = query.map_err(super::bad_query)?;
    q.after = q.after.filter(|s| !s.is_empty());
    q.service = q.service.filter(|s| !s.is_empty());
    let limit = q.limit.unwrap_or(1000);
    if !(1..=10_000).contains(&limit) {
        return Err(
            ApiError::bad_request("`limit` must be between 1 and 10000").with_field("limit")
        );
    }
    let after = match q.after.as_deref() {
        None => After::Start,
        Some(a) => parse_after(a).ok_or_else(|| {
            ApiError::bad_request("`after` must be the `next` of a previous page")
                .with_field("after")
        })?,
    };
    let run = find_run(&state, &id).await?;
    let names: HashMap<i64, String> = run
        .steps
        .iter()
        .map(|s| (s.id, s.service.clone()))
        .collect();
    let running = run.run.status.is_active();
    if let Some(service) = &q.service {
        let Some(step) = run.steps.iter().find(|s| &s.service == service) else {
            return Err(ApiError::not_found(format!(
                "run `{id}` has no step for service `{service}`"
            ))
            .with_field("service"));
        };
        let after_seq = match after {
            After::Start => -1,
            After::Seq(s) => s,
            After::Chunk(..) => {
                return Err(ApiError::bad_request(
                    "with `service`, `after` is a sequence number of that step's log",
                )
                .with_field("after"));
            }
        };
        let step_id = step.id;
        let lines = state
            .store(move |s| Ok(s.step_logs_after(step_id, after_seq, limit)?))
            .await?;
        let next = lines.last().map(|l| l.seq.to_string());
        let lines = lines
            .into_iter()
            .map(|l| ServiceLogLine {
                service: service.clone(),
                line: l,
            })
            .collect();
        return Ok(Json(LogPage {
            run_id: run.run.id,
            lines,
            next,
            running,
        }));
    }
    let (from_chunk, after_seq) = match after {
        After::Start => (0, -1),
        After::Chunk(c, s) => (c, s),
        After::Seq(_) => {
            return Err(ApiError::bad_request(
                "without `service`, `after` must be the `next` of a previous page (CHUNK.SEQ)",
            )
            .with_field("after"));
        }
    };
    let run_id = run.run.id.clone();
    let (lines, next) = state
        .store(move |s| {
            let mut out = Vec::new();
            let mut next = None;
            let mut from = from_chunk;
            'pages: loop {
                // Chunks can hold many lines: read a few at a time, only as many as the page needs.
                let chunks = s.run_chunks_from(&run_id, from, LOG_CHUNK_BATCH)?;
                let full = chunks.len() == LOG_CHUNK_BATCH;
                for (cid, chunk) in &chunks {
                    for line in chunk.lines() {
                        if *cid == from_chunk && line.seq <= after_seq {
                            continue;
                        }
                        next = Some(format!("{cid}.{}", line.seq));
                        out.push((line, *cid));
                        if out.len() >= limit {
                            break 'pages;
                        }
                    }
                    from = cid + 1;
                }
                if !full {
                    break;
                }
            }
            Ok((out, next))
        })
        .await?;
    let lines = lines
        .into_iter()
        .map(|(l, _)| {
            let service = names.get(&l.step_id).cloned().unwrap_or_default();
            ServiceLogLine { service, line: l }
        })
        .collect();
    Ok(Json(LogPage {
        run_id: run.run.id,
        lines,
        next,
        running,
    }))
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
