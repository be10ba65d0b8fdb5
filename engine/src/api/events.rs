//! `GET /api/runs/{id}/events`: a run's transitions and log lines as Server-Sent Events, read
//! from the store (the one source of truth, whichever process executes the run) and followed
//! live until the run ends.
//!
//! Every event's id is a cursor `E-C-N`: the last journal entry sent (`run_events.id`), and the
//! last log line sent (chunk id `C`; `N` is the sequence number after it in that step's log). Both parts only grow, so a
//! client that reconnects with `Last-Event-ID` gets exactly what follows — no gap, no duplicate.
//! Transitions and lines are merged in causal order (a step's start before its lines, its lines
//! before its end; each read is one database snapshot); a run that has finished replays its stored events and the stream ends with
//! `run_finished`.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream::{self, StreamExt};
use serde_json::json;

use super::error::{ApiError, ErrorBody};
use super::runs::find_run;
use super::state::AppState;
use crate::model::JournalKind;
use crate::store::{JournalEntry, LogChunk};

/// Journal entries and chunks read per poll.
const JOURNAL_BATCH: usize = 512;
const CHUNK_BATCH: usize = 64;
/// How often a live run is polled for new events.
const POLL: Duration = Duration::from_millis(100);

/// Where a stream stands: see the module doc.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Cursor {
    journal: i64,
    chunk: i64,
    seq: i64,
}

impl Cursor {
    const START: Cursor = Cursor {
        journal: 0,
        chunk: 0,
        seq: -1,
    };

    fn parse(s: &str) -> Option<Cursor> {
        let mut parts = s.trim().splitn(3, '-');
        let journal = parts.next()?.parse().ok()?;
        let chunk = parts.next()?.parse().ok()?;
        let next: i64 = parts.next()?.parse().ok()?;
        Some(Cursor {
            journal,
            chunk,
            seq: next.checked_sub(1)?,
        })
    }

    /// `E-C-N`: N is the sequence number of the next line of chunk C's step.
    fn id(&self) -> String {
        format!("{}-{}-{}", self.journal, self.chunk, self.seq + 1)
    }
}

struct Feed {
    state: AppState,
    run_id: String,
    /// Service of each step id (every step exists from the start of a run).
    services: std::collections::HashMap<i64, String>,
    cursor: Cursor,
    done: bool,
}

impl Feed {
    /// The next batch of events; `None` ends the stream.
    async fn next(mut self) -> Option<(Vec<Result<SseEvent, Infallible>>, Feed)> {
        let mut shutdown = self.state.shutdown_signal();
        loop {
            if self.done || *shutdown.borrow() {
                return None;
            }
            let run_id = self.run_id.clone();
            let c = self.cursor;
            let read = self
                .state
                .store(move |s| {
                    // One snapshot: a line visible means its step's start is too, and a step's
                    // end visible means all its lines are.
                    Ok(s.snapshot(|s| {
                        let journal = s.journal_after(&run_id, c.journal, JOURNAL_BATCH)?;
                        let chunks = s.run_chunks_from(&run_id, c.chunk, CHUNK_BATCH)?;
                        let end = s.run_end_event(&run_id)?;
                        Ok((journal, chunks, end))
                    })?)
                })
                .await;
            let (journal, chunks, end) = match read {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(run = %self.run_id, error = %e.message, "event stream read failed");
                    return None;
                }
            };
            let events = self.merge(journal, chunks);
            if !events.is_empty() {
                return Some((events, self));
            }
            // Nothing new and the run has ended at or before the cursor: nothing will come.
            if end.is_some_and(|end| self.cursor.journal >= end) {
                return None;
            }
            tokio::select! {
                _ = tokio::time::sleep(POLL) => {}
                _ = shutdown.changed() => {}
            }
        }
    }

    fn merge(
        &mut self,
        journal: Vec<JournalEntry>,
        chunks: Vec<(i64, LogChunk)>,
    ) -> Vec<Result<SseEvent, Infallible>> {
        let chunks_full = chunks.len() == CHUNK_BATCH;
        let mut out = Vec::new();
        let mut j = journal.into_iter().peekable();
        let mut next_chunk = 0;
        loop {
            let rest = &chunks[next_chunk..];
            // Transitions go first, except that a step's end waits for its lines (and the run's
            // end for every line): a batch that filled up may have more lines behind it.
            let take_journal = match j.peek() {
                None => false,
                Some(e) if e.kind == JournalKind::StepFinished => {
                    !chunks_full && rest.iter().all(|(_, ch)| Some(ch.step_id) != e.step_id)
                }
                Some(e) if e.kind == JournalKind::RunFinished => !chunks_full && rest.is_empty(),
                Some(_) => true,
            };
            if !take_journal && rest.is_empty() {
                break;
            }
            if take_journal {
                let Some(e) = j.next() else { break };
                self.cursor.journal = e.id;
                if e.kind == JournalKind::RunFinished {
                    self.done = true;
                }
                out.push(Ok(self.transition(&e)));
            } else {
                let Some((cid, chunk)) = chunks.get(next_chunk) else {
                    break;
                };
                let cid = *cid;
                next_chunk += 1;
                for line in chunk.lines() {
                    if cid == self.cursor.chunk && line.seq <= self.cursor.seq {
                        continue;
                    }
                    self.cursor.chunk = cid;
                    self.cursor.seq = line.seq;
                    let data = json!({
                        "run_id": self.run_id,
                        "step_id": line.step_id,
                        "service": self.services.get(&line.step_id),
                        "seq": line.seq,
                        "line": line.line,
                        "at": crate::model::rfc3339(line.at),
                        "stream": line.stream,
                        "level": line.level,
                        "text": line.text,
                    });
                    out.push(Ok(SseEvent::default()
                        .id(self.cursor.id())
                        .event("log")
                        .data(data.to_string())));
                }
                // Everything of this chunk is sent: later polls start after it.
                self.cursor.chunk = cid;
                self.cursor.seq = chunk.first_seq + chunk.count - 1;
            }
        }
        out
    }

    fn transition(&self, e: &JournalEntry) -> SseEvent {
        let data = json!({
            "run_id": self.run_id,
            "step_id": e.step_id,
            "service": e.service,
            "status": e.status,
            "at": crate::model::rfc3339(e.at),
        });
        SseEvent::default()
            .id(self.cursor.id())
            .event(e.kind.as_str())
            .data(data.to_string())
    }
}

/// The `data` of an event (a JSON object; which fields are set depends on the event).
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct EventData {
    pub run_id: String,
    /// Null for `run_started` and `run_finished`.
    pub step_id: Option<i64>,
    /// The step's service (for assemble/sync runs: the repository); null for run events.
    pub service: Option<String>,
    /// The status the transition sets (not on `log`).
    #[schema(required = false)]
    pub status: Option<String>,
    /// When it happened.
    #[serde(with = "crate::model::time")]
    #[schema(value_type = String, format = DateTime)]
    pub at: i64,
    /// `log` only: the line's sequence number in its step's log.
    #[schema(required = false)]
    pub seq: Option<i64>,
    /// `log` only: the line's number in the run's log (every step, in the order stored).
    #[schema(required = false)]
    pub line: Option<i64>,
    /// `log` only: stdout, stderr, log or system.
    #[schema(required = false)]
    pub stream: Option<String>,
    /// `log` only: the level of a plugin log line.
    #[schema(required = false)]
    pub level: Option<String>,
    /// `log` only: the line.
    #[schema(required = false)]
    pub text: Option<String>,
}

/// One Server-Sent Event as it travels.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct SseMessage {
    /// The resume cursor (`E-C-N`): send it back as `Last-Event-ID`.
    pub id: String,
    /// run_queued, run_started, step_queued, step_started, log, step_finished or run_finished.
    pub event: String,
    /// An `EventData` object as JSON.
    pub data: String,
}

/// The run's events, live: `run_queued` (when it waits for a slot), `run_started`,
/// `step_queued`, `step_started`, `log`, `step_finished`, `run_finished` (the last one; the
/// stream ends after it). Resumed at or beyond the end of a run that has ended, the answer is
/// `204 No Content`, which tells a browser's `EventSource` to stop reconnecting.
#[utoipa::path(get, path = "/api/runs/{id}/events", tag = "runs",
    params(
        ("id" = String, Path, description = "Run id"),
        ("Last-Event-ID" = Option<String>, Header, description = "Resume after this event id")),
    responses(
        (status = 200, description = "Server-Sent Events: `id` (the resume cursor), `event` (the kind) and `data` (a JSON object)", content_type = "text/event-stream", body = SseMessage),
        (status = 204, description = "The run has ended and `Last-Event-ID` is at or beyond its end: nothing more will come"),
        (status = 400, description = "Malformed Last-Event-ID", body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 401, body = ErrorBody)))]
pub async fn events(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let cursor = match headers.get("last-event-id") {
        None => Cursor::START,
        Some(v) => v.to_str().ok().and_then(Cursor::parse).ok_or_else(|| {
            ApiError::bad_request("Last-Event-ID must be the id of an event of this stream")
                .with_field("Last-Event-ID")
        })?,
    };
    let run = find_run(&state, &id).await?;
    if !run.run.status.is_active() {
        let rid = run.run.id.clone();
        let end = state.store(move |s| Ok(s.run_end_event(&rid)?)).await?;
        if end.is_some_and(|end| cursor.journal >= end) {
            return Ok(StatusCode::NO_CONTENT.into_response());
        }
    }
    let feed = Feed {
        state,
        services: run
            .steps
            .iter()
            .map(|s| (s.id, s.service.clone()))
            .collect(),
        run_id: run.run.id,
        cursor,
        done: false,
    };
    let stream = stream::unfold(feed, Feed::next).flat_map(stream::iter);
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response())
}
