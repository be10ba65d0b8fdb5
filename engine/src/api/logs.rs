//! A run's stored log over HTTP: `GET /api/runs/{id}/logs` (pages of lines, by cursor or straight
//! from any line number, with the number of lines stored so far), `/logs/search` (the lines that
//! hold a text, or that look like errors, counted over the whole log) and `/logs/text` (the whole
//! log as a text file, streamed). Lines are numbered run-wide (`line`: every step interleaved in
//! the order stored) and per step (`seq`); the dashboard's log view reads any window of a log of
//! millions of lines through these without holding it.

use std::collections::HashMap;
use std::convert::Infallible;

use aho_corasick::{AhoCorasick, AhoCorasickBuilder};
use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::error::{ApiError, ErrorBody};
use super::runs::find_run;
use super::state::AppState;
use crate::model::Stream;
use crate::store::{LogChunk, LogPart, RunRow, ServiceLogLine};

/// A page of log lines (the shape of the answer; it is written straight from the stored
/// chunks by [`PageOut`]).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct LogPage {
    pub run_id: String,
    pub lines: Vec<ServiceLogLine>,
    /// Pass as `after` to get the lines that follow (also once more lines arrive); null when
    /// the page is empty.
    pub next: Option<String>,
    /// True while the run may still add lines.
    pub running: bool,
    /// Lines stored so far: of the run, or with `service` of that step.
    pub total: i64,
}

/// A [`LogPage`] as it is sent: written straight from the stored chunks its lines are in —
/// what the lines of one chunk share (service, step, time, stream, level) encoded once per chunk,
/// a line's text copied as it is unless JSON needs it escaped. `a_page_written_from_chunks_is_a_log_page`
/// checks that the bytes are those serde writes for the [`LogPage`] of the same lines.
struct PageOut<'a> {
    run_id: &'a str,
    parts: &'a [LogPart],
    names: &'a HashMap<i64, String>,
    next: Option<String>,
    running: bool,
    total: i64,
}

impl PageOut<'_> {
    fn to_json(&self) -> Result<Vec<u8>, serde_json::Error> {
        let text_bytes: usize = self.parts.iter().map(|p| p.chunk.text.len()).sum();
        let mut out = Vec::with_capacity(256 + text_bytes.min(1 << 20) + 160 * 1000);
        out.extend_from_slice(b"{\"run_id\":");
        serde_json::to_writer(&mut out, self.run_id)?;
        out.extend_from_slice(b",\"lines\":[");
        let mut first = true;
        let mut num = itoa::Buffer::new();
        for part in self.parts {
            let c = &part.chunk;
            let service = self.names.get(&c.step_id).map_or("", String::as_str);
            let mut head = b"{\"service\":".to_vec();
            serde_json::to_writer(&mut head, service)?;
            head.extend_from_slice(b",\"step_id\":");
            head.extend_from_slice(num.format(c.step_id).as_bytes());
            head.extend_from_slice(b",\"seq\":");
            let mut mid = b",\"at\":".to_vec();
            serde_json::to_writer(&mut mid, &crate::model::rfc3339(c.at))?;
            mid.extend_from_slice(b",\"stream\":");
            serde_json::to_writer(&mut mid, &c.stream)?;
            mid.extend_from_slice(b",\"level\":");
            serde_json::to_writer(&mut mid, &c.level)?;
            mid.extend_from_slice(b",\"text\":");
            for (i, text) in part.lines() {
                if !first {
                    out.push(b',');
                }
                first = false;
                out.extend_from_slice(&head);
                out.extend_from_slice(num.format(c.first_seq + i).as_bytes());
                out.extend_from_slice(b",\"line\":");
                out.extend_from_slice(num.format(c.line0 + i).as_bytes());
                out.extend_from_slice(&mid);
                json_string(&mut out, text)?;
                out.push(b'}');
            }
        }
        out.extend_from_slice(b"],\"next\":");
        serde_json::to_writer(&mut out, &self.next)?;
        out.extend_from_slice(b",\"running\":");
        out.extend_from_slice(if self.running { b"true" } else { b"false" });
        out.extend_from_slice(b",\"total\":");
        out.extend_from_slice(num.format(self.total).as_bytes());
        out.push(b'}');
        Ok(out)
    }
}

/// `text` as a JSON string: copied between quotes when nothing in it needs escaping (most log
/// lines), else escaped by serde_json.
fn json_string(out: &mut Vec<u8>, text: &str) -> Result<(), serde_json::Error> {
    if text.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.push(b'"');
        out.extend_from_slice(text.as_bytes());
        out.push(b'"');
        Ok(())
    } else {
        serde_json::to_writer(out, text)
    }
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
    /// Lines from this one on (not with `after`): a run-wide line number (`line`), or with
    /// `service` a sequence number of that step's log (`seq`).
    #[param(minimum = 0)]
    pub line: Option<i64>,
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

/// The step of `service` in `run`, or 404 naming the field.
fn step_of(run: &RunRow, service: &str) -> Result<i64, ApiError> {
    step_named(
        &run.run.id,
        run.steps.iter().map(|s| (s.id, s.service.as_str())),
        service,
    )
}

fn step_named<'a>(
    run_id: &str,
    mut steps: impl Iterator<Item = (i64, &'a str)>,
    service: &str,
) -> Result<i64, ApiError> {
    steps
        .find(|(_, s)| *s == service)
        .map(|(id, _)| id)
        .ok_or_else(|| {
            ApiError::not_found(format!(
                "run `{run_id}` has no step for service `{service}`"
            ))
            .with_field("service")
        })
}

/// The service of each step of `run`.
fn services(run: &RunRow) -> HashMap<i64, String> {
    run.steps
        .iter()
        .map(|s| (s.id, s.service.clone()))
        .collect()
}

/// Which window of the log a request asks for.
enum Want {
    Step(i64, i64),
    Line(i64),
    After(i64, i64),
}

/// Log lines of a run (or of one service's step), in order: a page after a cursor, or from a
/// line number.
#[utoipa::path(get, path = "/api/runs/{id}/logs", tag = "runs",
    params(("id" = String, Path, description = "Run id"), LogsQuery),
    responses((status = 200, body = LogPage), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 401, body = ErrorBody)))]
pub async fn logs(
    State(state): State<AppState>,
    Path(id): Path<String>,
    query: Result<Query<LogsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(mut q) = query.map_err(super::bad_query)?;
    q.after = q.after.filter(|s| !s.is_empty());
    q.service = q.service.filter(|s| !s.is_empty());
    let limit = q.limit.unwrap_or(1000);
    if !(1..=10_000).contains(&limit) {
        return Err(
            ApiError::bad_request("`limit` must be between 1 and 10000").with_field("limit")
        );
    }
    if let Some(line) = q.line {
        if line < 0 {
            return Err(ApiError::bad_request("`line` must be 0 or more").with_field("line"));
        }
        if q.after.is_some() {
            return Err(
                ApiError::bad_request("give `line` or `after`, not both").with_field("line")
            );
        }
    }
    let after = match q.after.as_deref() {
        None => After::Start,
        Some(a) => parse_after(a).ok_or_else(|| {
            ApiError::bad_request("`after` must be the `next` of a previous page")
                .with_field("after")
        })?,
    };
    // Checked before the store is read: which window, by what numbering.
    let by_step = q.service.is_some();
    let line = q.line;
    let want = move |step: Option<i64>| -> Result<Want, ApiError> {
        Ok(match (step, after, line) {
            (Some(step), _, Some(line)) => Want::Step(step, line - 1),
            (Some(step), After::Start, None) => Want::Step(step, -1),
            (Some(step), After::Seq(s), None) => Want::Step(step, s),
            (Some(_), After::Chunk(..), None) => {
                return Err(ApiError::bad_request(
                    "with `service`, `after` is a sequence number of that step's log",
                )
                .with_field("after"));
            }
            (None, _, Some(line)) => Want::Line(line),
            (None, After::Start, None) => Want::After(0, -1),
            (None, After::Chunk(c, s), None) => Want::After(c, s),
            (None, After::Seq(_), None) => {
                return Err(ApiError::bad_request(
                    "without `service`, `after` must be the `next` of a previous page \
                     (CHUNK.SEQ)",
                )
                .with_field("after"));
            }
        })
    };
    let service = q.service.clone();
    let key = id.clone();
    // One trip to the store: the run's steps and the window, in one snapshot.
    let read = state
        .store(move |s| {
            Ok(s.snapshot(|s| {
                let Some((status, steps)) = s.run_services(&key)? else {
                    return Ok(Read::NoRun);
                };
                let step = match &service {
                    Some(name) => match steps.iter().find(|(_, n)| n == name) {
                        Some((id, _)) => Some(*id),
                        None => return Ok(Read::NoStep(steps)),
                    },
                    None => None,
                };
                let (parts, total) = match want(step) {
                    Err(e) => return Ok(Read::Bad(e)),
                    Ok(Want::Step(step, after)) => {
                        (s.step_window(step, after, limit)?, s.step_log_lines(step)?)
                    }
                    Ok(Want::Line(from)) => {
                        (s.run_window(&key, from, limit)?, s.run_log_lines(&key)?)
                    }
                    Ok(Want::After(chunk, seq)) => (
                        s.run_window_after(&key, chunk, seq, limit)?,
                        s.run_log_lines(&key)?,
                    ),
                };
                Ok(Read::Page(status, steps, parts, total))
            })?)
        })
        .await?;
    let (status, steps, parts, total) = match read {
        Read::NoRun => {
            return Err(ApiError::not_found(format!(
                "no run `{id}`; GET /api/runs lists them"
            )));
        }
        Read::NoStep(steps) => {
            let service = q.service.as_deref().unwrap_or_default();
            return Err(
                step_named(&id, steps.iter().map(|(i, s)| (*i, s.as_str())), service)
                    .err()
                    .unwrap_or_else(|| ApiError::not_found("no such step")),
            );
        }
        Read::Bad(e) => return Err(e),
        Read::Page(status, steps, parts, total) => (status, steps, parts, total),
    };
    // Written here, on the server's workers: in the store tasks it lengthened the tail (measured).
    let next = parts.last().and_then(|p| {
        let last = p.chunk.first_seq + i64::try_from(p.skip + p.take).ok()? - 1;
        Some(if by_step {
            last.to_string()
        } else {
            format!("{}.{last}", p.id)
        })
    });
    let names: HashMap<i64, String> = steps.into_iter().collect();
    let body = PageOut {
        run_id: &id,
        parts: &parts,
        names: &names,
        next,
        running: status.is_active(),
        total,
    }
    .to_json()
    .map_err(|e| ApiError::internal("could not encode the log page", e))?;
    Ok((
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        Bytes::from(body),
    )
        .into_response())
}

/// What reading a page of a log found.
enum Read {
    NoRun,
    NoStep(Vec<(i64, String)>),
    Bad(ApiError),
    Page(
        crate::model::RunStatus,
        Vec<(i64, String)>,
        Vec<LogPart>,
        i64,
    ),
}

/// What `/api/runs/{id}/logs/search` looks for.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct SearchQuery {
    /// The text to find (case-insensitive for ASCII letters), in the line as shown: colour
    /// codes removed, control characters escaped.
    pub q: Option<String>,
    /// Instead of `q`: lines that look like errors — that start (after punctuation or spaces)
    /// with the word `error`, `fatal`, `failed` or `panic` in any case (`error[E0433]: …`,
    /// `[ERROR] …`, `fatal: …`), or say `panicked at` or `ERR!`; or a plugin log line of level
    /// `error`.
    pub errors: Option<bool>,
    /// Only this service's step.
    pub service: Option<String>,
    /// Only from this line on: a run-wide line number, or with `service` a sequence number.
    #[param(minimum = 0)]
    pub from: Option<i64>,
    /// Matching lines returned (1–10000, default 1000); all of them are counted.
    #[param(minimum = 1, maximum = 10000)]
    pub limit: Option<usize>,
}

/// The lines of a log that match.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct LogSearch {
    pub run_id: String,
    /// The first `limit` matching lines, in order.
    pub matches: Vec<ServiceLogLine>,
    /// How many lines match in all (from `from` on).
    pub total: u64,
    /// Lines stored so far: of the run, or with `service` of that step.
    pub lines: i64,
}

/// Longest search text.
const MAX_QUERY: usize = 1000;

/// How a line is tested.
enum Matcher {
    Text(AhoCorasick),
    Errors(regex::Regex),
}

impl Matcher {
    /// Whether nothing in `chunk` can match, told without looking at its lines one by one.
    fn skips(&self, chunk: &LogChunk) -> bool {
        // Only text shown as it is can be tested whole (colour codes can split a word).
        if !crate::views::shown_as_is(&chunk.text) {
            return false;
        }
        match self {
            Matcher::Text(ac) => !ac.is_match(&chunk.text),
            Matcher::Errors(re) => {
                chunk.level.as_deref() != Some("error") && !re.is_match(&chunk.text)
            }
        }
    }

    fn matches(&self, chunk: &LogChunk, text: &str) -> bool {
        let shown = crate::views::untrusted(text, false);
        match self {
            Matcher::Text(ac) => ac.is_match(&shown),
            Matcher::Errors(re) => chunk.level.as_deref() == Some("error") || re.is_match(&shown),
        }
    }
}

/// The lines of a run's log (or of one step's) that hold a text or look like errors, counted over
/// the whole log; the first `limit` of them returned with their line numbers.
#[utoipa::path(get, path = "/api/runs/{id}/logs/search", tag = "runs",
    params(("id" = String, Path, description = "Run id"), SearchQuery),
    responses((status = 200, body = LogSearch), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 401, body = ErrorBody)))]
pub async fn search(
    State(state): State<AppState>,
    Path(id): Path<String>,
    query: Result<Query<SearchQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<LogSearch>, ApiError> {
    let Query(q) = query.map_err(super::bad_query)?;
    let limit = q.limit.unwrap_or(1000);
    if !(1..=10_000).contains(&limit) {
        return Err(
            ApiError::bad_request("`limit` must be between 1 and 10000").with_field("limit")
        );
    }
    let text = q.q.filter(|t| !t.is_empty());
    let matcher = match (text, q.errors.unwrap_or(false)) {
        (Some(_), true) => {
            return Err(
                ApiError::bad_request("give `q` or `errors=true`, not both").with_field("q")
            );
        }
        (None, false) => {
            return Err(ApiError::bad_request(
                "give the text to find as `q`, or `errors=true` for lines that look like errors",
            )
            .with_field("q"));
        }
        (Some(t), false) => {
            if t.len() > MAX_QUERY {
                return Err(
                    ApiError::bad_request(format!("`q` is longer than {MAX_QUERY} bytes"))
                        .with_field("q"),
                );
            }
            Matcher::Text(
                AhoCorasickBuilder::new()
                    .ascii_case_insensitive(true)
                    .build([t])
                    .map_err(|e| ApiError::bad_request(format!("bad `q`: {e}")).with_field("q"))?,
            )
        }
        (None, true) => Matcher::Errors(
            regex::Regex::new(r"(?im)^\W*(error|fatal|failed|panic)\b|\bpanicked at\b|\bERR!")
                .map_err(|e| ApiError::internal("the error pattern does not compile", e))?,
        ),
    };
    let from = q.from.unwrap_or(0);
    if from < 0 {
        return Err(ApiError::bad_request("`from` must be 0 or more").with_field("from"));
    }
    let run = find_run(&state, &id).await?;
    let step = match q.service.as_deref().filter(|s| !s.is_empty()) {
        Some(service) => Some(step_of(&run, service)?),
        None => None,
    };
    let names = services(&run);
    let rid = run.run.id.clone();
    let (matches, total, lines) = state
        .store(move |s| {
            Ok(s.snapshot(|s| {
                let lines = match step {
                    Some(step) => s.step_log_lines(step)?,
                    None => s.run_log_lines(&rid)?,
                };
                let mut found = Vec::new();
                let mut total = 0u64;
                // With `service`, lines are numbered by their sequence in the step.
                let number = |c: &LogChunk| if step.is_some() { c.first_seq } else { c.line0 };
                s.each_chunk(&rid, step, |chunk| {
                    let first = number(chunk);
                    if first + chunk.count <= from || matcher.skips(chunk) {
                        return true;
                    }
                    for (i, text) in chunk.texts() {
                        if first + i >= from && matcher.matches(chunk, text) {
                            total += 1;
                            if found.len() < limit {
                                found.push(chunk.line(i, text));
                            }
                        }
                    }
                    true
                })?;
                Ok((found, total, lines))
            })?)
        })
        .await?;
    let matches = matches
        .into_iter()
        .map(|l| ServiceLogLine {
            service: names.get(&l.step_id).cloned().unwrap_or_default(),
            line: l,
        })
        .collect();
    Ok(Json(LogSearch {
        run_id: run.run.id,
        matches,
        total,
        lines,
    }))
}

/// Which log `/api/runs/{id}/logs/text` serves.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct TextQuery {
    /// Only this service's step (its lines without the service prefix).
    pub service: Option<String>,
}

/// Lines read from the store per piece of the download.
const TEXT_PIECE_LINES: usize = 5000;

/// The whole log as text, the form `nestr logs` prints without colour: `SERVICE | line` (`!` for
/// the engine's own notices), control characters escaped; with `service`, that step's lines
/// alone. Streamed a piece at a time (each piece one short read of the store), so any size of log
/// downloads in constant memory and a slow client holds no store connection.
#[utoipa::path(get, path = "/api/runs/{id}/logs/text", tag = "runs",
    params(("id" = String, Path, description = "Run id"), TextQuery),
    responses(
        (status = 200, description = "The log as text", content_type = "text/plain", body = String),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 401, body = ErrorBody)))]
pub async fn text(
    State(state): State<AppState>,
    Path(id): Path<String>,
    query: Result<Query<TextQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(super::bad_query)?;
    let run = find_run(&state, &id).await?;
    let service = q.service.filter(|s| !s.is_empty());
    let step = match service.as_deref() {
        Some(s) => Some(step_of(&run, s)?),
        None => None,
    };
    let names = std::sync::Arc::new(services(&run));
    let width = names.values().map(String::len).max().unwrap_or(0);
    let rid = run.run.id.clone();
    // The position after the last line sent: a sequence number of the step, or a run-wide line.
    let pieces = futures_util::stream::unfold(Some(0i64), move |from| {
        let (state, rid, names) = (state.clone(), rid.clone(), names.clone());
        async move {
            let from = from?;
            let read = state
                .store(move |s| {
                    Ok(match step {
                        Some(step) => s.step_window(step, from - 1, TEXT_PIECE_LINES)?,
                        None => s.run_window(&rid, from, TEXT_PIECE_LINES)?,
                    })
                })
                .await;
            let parts = match read {
                Ok(p) if !p.is_empty() => p,
                Ok(_) => return None,
                Err(e) => {
                    tracing::warn!(error = %e.message, "a log download stopped");
                    return None;
                }
            };
            let mut piece = String::new();
            let mut next = from;
            for part in &parts {
                let c = &part.chunk;
                let name = names.get(&c.step_id).map_or("", String::as_str);
                for (i, text) in part.lines() {
                    if step.is_some() {
                        piece.push_str(&crate::views::untrusted(text, false));
                    } else {
                        piece.push_str(&crate::views::log_text_line(
                            &format!("{name:>width$}"),
                            c.stream == Stream::System,
                            text,
                        ));
                    }
                    piece.push('\n');
                    next = 1 + if step.is_some() {
                        c.first_seq + i
                    } else {
                        c.line0 + i
                    };
                }
            }
            Some((Ok::<_, Infallible>(Bytes::from(piece)), Some(next)))
        }
    });
    let file = format!(
        "attachment; filename=\"nestr-{}{}.log\"",
        run.run.id,
        service.map(|s| format!("-{s}")).unwrap_or_default()
    );
    let mut res = Body::from_stream(pieces).into_response();
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    if let Ok(v) = HeaderValue::from_str(&file) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    Ok(res)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::LogLine;

    /// What is sent is the documented shape: a page written from the chunks reads back as the
    /// [`LogPage`] built from the same lines.
    #[test]
    fn a_page_written_from_chunks_is_a_log_page() {
        let chunk =
            |id: i64, step: i64, first: i64, line0: i64, text: &str, level: Option<&str>| LogPart {
                id,
                chunk: LogChunk {
                    step_id: step,
                    first_seq: first,
                    count: text.split('\n').count() as i64,
                    line0,
                    at: 1_700_000_000_123 + id,
                    stream: if level.is_some() {
                        Stream::Log
                    } else {
                        Stream::Stdout
                    },
                    level: level.map(String::from),
                    text: text.into(),
                },
                skip: 1,
                take: 2,
            };
        let parts = vec![
            chunk(7, 1, 3, 10, "a\nb \"quoted\" <b>\nc\nd", None),
            chunk(
                9,
                2,
                0,
                14,
                "x\n\u{1b}[31my\u{1b}[0m \\ é\t\nz",
                Some("warn"),
            ),
        ];
        let names: HashMap<i64, String> = [(1, "api".to_string()), (2, "web".to_string())].into();
        let sent = String::from_utf8(
            PageOut {
                run_id: "r1",
                parts: &parts,
                names: &names,
                next: Some("9.2".into()),
                running: true,
                total: 17,
            }
            .to_json()
            .expect("json"),
        )
        .expect("utf-8");
        let lines: Vec<ServiceLogLine> = parts
            .iter()
            .flat_map(|p| {
                p.lines().map(|(i, t)| ServiceLogLine {
                    service: names[&p.chunk.step_id].clone(),
                    line: p.chunk.line(i, t),
                })
            })
            .collect();
        assert_eq!(lines.len(), 4);
        let first: &LogLine = &lines[0].line;
        assert_eq!(
            (first.seq, first.line, first.text.as_str()),
            (4, 11, "b \"quoted\" <b>")
        );
        let documented = serde_json::to_string(&LogPage {
            run_id: "r1".into(),
            lines,
            next: Some("9.2".into()),
            running: true,
            total: 17,
        })
        .expect("json");
        assert_eq!(sent, documented);
    }
}
