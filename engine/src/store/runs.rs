//! Queries on the run history: `runs`, `steps`, `log_chunks` (log lines, stored in chunks) and
//! the capability `audit` trail.

use rusqlite::{OptionalExtension, params};
use serde::Serialize;

use crate::model::{Artifact, JournalKind, RunStatus, StepStatus, Stream, TestCounts};

use super::{Store, StoreError, now_ms};

/// What every view of a run starts with: its identity, operation, status and times.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct RunHead {
    #[serde(rename = "run_id")]
    pub id: String,
    pub operation: String,
    pub status: RunStatus,
    pub started_by: String,
    #[serde(with = "crate::model::time")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: i64,
    #[serde(with = "crate::model::time_opt")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub finished_at: Option<i64>,
    /// While `queued`: its place in the queue of the server that will execute it (1 = next).
    pub queue_position: Option<i64>,
}

/// The columns [`RunHead::from_row`] reads, from `runs r`.
const HEAD_COLUMNS: &str = "r.id, r.operation, r.status, r.started_by, r.created_at, r.finished_at,
    CASE WHEN r.status = 'queued' THEN (
        SELECT count(*) FROM runs q WHERE q.status = 'queued' AND q.pid IS r.pid
            AND q.pid_start IS r.pid_start AND q.rowid <= r.rowid) END";

impl RunHead {
    /// From [`HEAD_COLUMNS`] (0–6). A queued run's place counts the runs queued before it by
    /// the same server: a server records its queued runs in the order it admits them.
    fn from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<RunHead> {
        Ok(RunHead {
            id: r.get(0)?,
            operation: r.get(1)?,
            status: r.get(2)?,
            started_by: r.get(3)?,
            created_at: r.get(4)?,
            finished_at: r.get(5)?,
            queue_position: r.get(6)?,
        })
    }
}

/// A line of `nestr runs`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct RunSummary {
    #[serde(flatten)]
    pub run: RunHead,
    pub steps: i64,
    pub succeeded: i64,
    pub failed: i64,
    /// Steps that ended `cached` (not run: their stored result was used).
    pub cached: i64,
    /// What those hits saved: the stored steps' durations, in milliseconds.
    pub saved_ms: i64,
}

/// A page of runs, newest first: the body of `GET /api/runs` and what `nestr runs --json` prints.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RunPage {
    pub runs: Vec<RunSummary>,
    /// Pass as `cursor` for the next page; null on the last page.
    pub next_cursor: Option<String>,
}

/// Which runs to list, and where a page starts.
#[derive(Debug, Clone, Default)]
pub struct RunFilter {
    pub status: Option<String>,
    pub operation: Option<String>,
    /// Only runs older than this (created_at, id): the last run of the previous page.
    pub before: Option<(i64, String)>,
}

/// A transition from a run's journal.
#[derive(Debug, Clone, Serialize)]
pub struct JournalEntry {
    pub id: i64,
    pub step_id: Option<i64>,
    pub service: Option<String>,
    pub kind: JournalKind,
    pub status: Option<String>,
    #[serde(with = "crate::model::time")]
    pub at: i64,
}

/// A running run and the process that executes it.
#[derive(Debug, Clone)]
pub struct RunOwner {
    pub id: String,
    pub pid: Option<i64>,
    /// The process's start time (clock ticks since boot).
    pub start: Option<i64>,
}

/// A new run.
#[derive(Debug, Clone)]
pub struct NewRun {
    pub id: String,
    pub operation: String,
    pub selection: serde_json::Value,
    pub options: serde_json::Value,
    pub started_by: String,
}

/// What is known when a step ends.
#[derive(Debug, Clone, Default)]
pub struct StepEnd {
    pub summary: String,
    pub reason: Option<String>,
    pub tests: Option<TestCounts>,
    pub artifacts: Vec<Artifact>,
    pub metrics: serde_json::Value,
    pub duration_ms: u64,
    /// A hit: where it came from (`local`, `remote`) and the time it saved, ms.
    pub cache_hit: Option<(&'static str, u64)>,
    /// What produced the result (JSON, see `crate::cache::provenance`).
    pub provenance: Option<String>,
}

/// One stored line of a step's log.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct LogLine {
    pub step_id: i64,
    /// Position of the line in its step's log (from 0).
    pub seq: i64,
    /// Position of the line in its run's log, all steps interleaved in the order stored (from 0).
    pub line: i64,
    /// When it was received.
    #[serde(with = "crate::model::time")]
    #[schema(value_type = String, format = DateTime)]
    pub at: i64,
    pub stream: Stream,
    /// The level of a plugin log line.
    pub level: Option<String>,
    pub text: String,
}

/// A line of a run's log with its service: how the API and `nestr logs --json` show one.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ServiceLogLine {
    pub service: String,
    #[serde(flatten)]
    pub line: LogLine,
}

/// Consecutive lines of one stream of a step that arrived together: the unit that is stored and
/// sent to subscribers. `text` holds the lines joined with `\n`, numbered `first_seq` onwards.
#[derive(Debug, Clone, Serialize)]
pub struct LogChunk {
    pub step_id: i64,
    pub first_seq: i64,
    pub count: i64,
    /// Run-wide number of the chunk's first line: the lines of the run stored before it. The
    /// store assigns it (a chunk not yet stored has 0).
    #[serde(skip)]
    pub line0: i64,
    #[serde(with = "crate::model::time")]
    pub at: i64,
    pub stream: Stream,
    pub level: Option<String>,
    pub text: String,
}

impl LogChunk {
    /// A chunk of the same step, stream, level and time, from the same first line, with no text.
    fn clone_empty(&self) -> LogChunk {
        LogChunk {
            step_id: self.step_id,
            first_seq: self.first_seq,
            count: 0,
            line0: self.line0,
            at: self.at,
            stream: self.stream,
            level: self.level.clone(),
            text: String::new(),
        }
    }

    /// The chunk's lines with their sequence numbers.
    pub fn lines(&self) -> impl Iterator<Item = LogLine> + '_ {
        self.texts().map(|(i, text)| self.line(i, text))
    }

    /// The text of each line with its index in the chunk, borrowed.
    pub fn texts(&self) -> impl Iterator<Item = (i64, &str)> + '_ {
        self.text
            .split('\n')
            .enumerate()
            .map(|(i, t)| (i as i64, t))
    }

    /// Line `i` of the chunk, whose text is `text`.
    pub fn line(&self, i: i64, text: &str) -> LogLine {
        LogLine {
            step_id: self.step_id,
            seq: self.first_seq + i,
            line: self.line0 + i,
            at: self.at,
            stream: self.stream,
            level: self.level.clone(),
            text: text.to_string(),
        }
    }
}

/// Part of a window of a log: a stored chunk (with its id) and which of its lines the window
/// holds.
#[derive(Debug, Clone)]
pub struct LogPart {
    pub id: i64,
    pub chunk: LogChunk,
    /// Lines of the chunk before the window.
    pub skip: usize,
    /// Lines of the chunk in the window.
    pub take: usize,
}

impl LogPart {
    /// The lines in the window, with their index in the chunk.
    pub fn lines(&self) -> impl Iterator<Item = (i64, &str)> + '_ {
        self.chunk.texts().skip(self.skip).take(self.take)
    }
}

/// A capability decision.
#[derive(Debug, Clone, Serialize)]
pub struct AuditEntry {
    pub run_id: Option<String>,
    pub step_id: Option<i64>,
    pub plugin: String,
    pub capability: String,
    pub requested: String,
    pub decision: String,
    pub detail: Option<String>,
}

/// A run as stored.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct RunRow {
    #[serde(flatten)]
    pub run: RunHead,
    pub steps: Vec<StepRow>,
}

/// A step as stored.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct StepRow {
    pub id: i64,
    pub service: String,
    pub plugin: String,
    pub plugin_digest: Option<String>,
    pub status: StepStatus,
    #[serde(with = "crate::model::time_opt")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub started_at: Option<i64>,
    #[serde(with = "crate::model::time_opt")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub finished_at: Option<i64>,
    pub duration_ms: Option<i64>,
    pub summary: Option<String>,
    pub reason: Option<String>,
    pub tests: Option<TestCounts>,
    pub artifacts: Vec<Artifact>,
    pub metrics: serde_json::Value,
    /// The step's cache key and whether it was a hit (steps of operation runs).
    pub cache: Option<StepCache>,
    /// What produced its result (JSON of `crate::cache::provenance::StepProvenance`).
    #[serde(skip)]
    pub provenance: Option<String>,
}

/// A run's status and its steps' (id, service): see [`Store::run_services`].
pub type RunServices = (RunStatus, Vec<(i64, String)>);

/// A step of a service with the run it belongs to: `GET /api/services/{name}/steps`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ServiceStep {
    pub run_id: String,
    pub operation: String,
    /// When the run was created.
    #[serde(with = "crate::model::time")]
    #[schema(value_type = String, format = DateTime)]
    pub run_created_at: i64,
    #[serde(flatten)]
    pub step: StepRow,
}

/// The columns [`step_from`] reads, of `steps s`.
const STEP_COLUMNS: &str = "s.id, s.service, s.plugin, s.plugin_digest, s.status, s.started_at,
    s.finished_at, s.duration_ms, s.summary, s.reason, s.tests_passed, s.tests_failed,
    s.tests_skipped, s.metrics, s.artifacts, s.cache_key, s.cache_source, s.saved_ms, s.provenance";

/// A step from [`STEP_COLUMNS`] of a row, starting at column `c`.
fn step_from(r: &rusqlite::Row<'_>, c: usize) -> rusqlite::Result<StepRow> {
    let passed: Option<i64> = r.get(c + 10)?;
    let metrics: String = r.get(c + 13)?;
    Ok(StepRow {
        id: r.get(c)?,
        service: r.get(c + 1)?,
        plugin: r.get(c + 2)?,
        plugin_digest: r.get(c + 3)?,
        status: r.get(c + 4)?,
        started_at: r.get(c + 5)?,
        finished_at: r.get(c + 6)?,
        duration_ms: r.get(c + 7)?,
        summary: r.get(c + 8)?,
        reason: r.get(c + 9)?,
        tests: match passed {
            Some(passed) => {
                let count = |n: i64| u32::try_from(n).unwrap_or(u32::MAX);
                Some(TestCounts {
                    passed: count(passed),
                    failed: count(r.get::<_, Option<i64>>(c + 11)?.unwrap_or(0)),
                    skipped: count(r.get::<_, Option<i64>>(c + 12)?.unwrap_or(0)),
                })
            }
            None => None,
        },
        metrics: serde_json::from_str(&metrics).unwrap_or(serde_json::Value::Null),
        artifacts: serde_json::from_str(&r.get::<_, String>(c + 14)?).unwrap_or_default(),
        cache: r.get::<_, Option<String>>(c + 15)?.map(|key| StepCache {
            key,
            hit: matches!(r.get::<_, Option<String>>(c + 16), Ok(Some(_))),
            source: r.get(c + 16).ok().flatten(),
            saved_ms: r.get(c + 17).ok().flatten(),
        }),
        provenance: r.get(c + 18)?,
    })
}

/// A step's place in the operation cache.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct StepCache {
    /// sha256 of its key manifest (`GET /api/runs/{id}/steps/{service}/key`).
    pub key: String,
    /// Not run: the stored result under this key was used.
    pub hit: bool,
    /// Where a hit came from: `local` or `remote`.
    pub source: Option<String>,
    /// The time a hit saved (how long the step ran when its result was stored), ms.
    pub saved_ms: Option<i64>,
}

/// The columns [`chunk_from`] reads, of `log_chunks c`.
const CHUNK_COLUMNS: &str =
    "c.step_id, c.first_seq, c.last_seq, c.at, c.stream, c.level, c.text, coalesce(c.line0, 0)";

/// A chunk from [`CHUNK_COLUMNS`] of a row, starting at column `col`.
fn chunk_from(r: &rusqlite::Row<'_>, col: usize) -> rusqlite::Result<LogChunk> {
    let first: i64 = r.get(col + 1)?;
    let last: i64 = r.get(col + 2)?;
    Ok(LogChunk {
        step_id: r.get(col)?,
        first_seq: first,
        count: last - first + 1,
        line0: r.get(col + 7)?,
        at: r.get(col + 3)?,
        stream: r.get(col + 4)?,
        level: r.get(col + 5)?,
        text: r.get(col + 6)?,
    })
}

/// Appends a transition to the run journal (`run_events`).
fn journal(
    tx: &rusqlite::Transaction<'_>,
    run_id: &str,
    step_id: Option<i64>,
    kind: JournalKind,
    status: &str,
    at: i64,
) -> Result<(), rusqlite::Error> {
    tx.prepare_cached(
        "INSERT INTO run_events (run_id, step_id, kind, status, at) VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(params![run_id, step_id, kind, status, at])?;
    Ok(())
}

/// The operation and status of service `?1`'s steps, newest first: the runs newest first
/// (`runs_page`), each probed for the service through the steps' `(run_id, service)` index
/// (`CROSS JOIN` keeps that order: the steps table is never scanned).
pub(super) const LAST_STATUSES: &str = "SELECT r.operation, s.status FROM runs r
     CROSS JOIN steps s ON s.run_id = r.id AND s.service = ?1
     ORDER BY r.created_at DESC, r.id DESC";

/// Service `?1`'s steps of operation `?2` (any when null), newest first, at most `?3`, walked
/// as [`LAST_STATUSES`] walks them.
pub(super) fn service_steps_query() -> String {
    format!(
        "SELECT r.id, r.operation, r.created_at, {STEP_COLUMNS} FROM runs r
         CROSS JOIN steps s ON s.run_id = r.id AND s.service = ?1
         WHERE ?2 IS NULL OR r.operation = ?2
         ORDER BY r.created_at DESC, r.id DESC LIMIT ?3"
    )
}

/// Appends a transition of step `step_id` to the journal of its run.
fn step_journal(
    tx: &rusqlite::Transaction<'_>,
    step_id: i64,
    kind: JournalKind,
    status: &str,
    at: i64,
) -> Result<(), rusqlite::Error> {
    tx.prepare_cached(
        "INSERT INTO run_events (run_id, step_id, kind, status, at)
         SELECT run_id, id, ?2, ?3, ?4 FROM steps WHERE id = ?1",
    )?
    .execute(params![step_id, kind, status, at])?;
    Ok(())
}

/// The query of a page of runs (see [`Store::list_runs_page`]) and its arguments. Only the
/// conditions that apply, so that SQLite walks an index (`runs_page`, or `runs_status` for a
/// status) and stops after `limit` runs; the step counts are read for those runs only. The cost
/// of a page does not grow with the history.
pub(crate) fn page_query(
    filter: &RunFilter,
    limit: usize,
) -> (String, Vec<Box<dyn rusqlite::ToSql>>) {
    let mut conditions = Vec::new();
    let mut args: Vec<Box<dyn rusqlite::ToSql>> = Vec::new();
    if let Some(st) = &filter.status {
        args.push(Box::new(st.clone()));
        conditions.push(format!("r.status = ?{}", args.len()));
    }
    if let Some(op) = &filter.operation {
        args.push(Box::new(op.clone()));
        conditions.push(format!("r.operation = ?{}", args.len()));
    }
    if let Some((at, id)) = &filter.before {
        args.push(Box::new(*at));
        args.push(Box::new(id.clone()));
        conditions.push(format!(
            "(r.created_at, r.id) < (?{}, ?{})",
            args.len() - 1,
            args.len()
        ));
    }
    args.push(Box::new(i64::try_from(limit).unwrap_or(i64::MAX)));
    let limit_arg = args.len();
    let filter_sql = if conditions.is_empty() {
        String::new()
    } else {
        format!("WHERE {}", conditions.join(" AND "))
    };
    let sql = format!(
        "SELECT {HEAD_COLUMNS},
                (SELECT count(*) FROM steps s WHERE s.run_id = r.id),
                (SELECT count(*) FROM steps s WHERE s.run_id = r.id AND s.status = 'succeeded'),
                (SELECT count(*) FROM steps s WHERE s.run_id = r.id
                    AND s.status IN ('failed', 'denied', 'timed_out', 'resource_exhausted')),
                (SELECT count(*) FROM steps s WHERE s.run_id = r.id AND s.status = 'cached'),
                (SELECT coalesce(sum(s.saved_ms), 0) FROM steps s WHERE s.run_id = r.id)
         FROM runs r {filter_sql}
         ORDER BY r.created_at DESC, r.id DESC LIMIT ?{limit_arg}"
    );
    (sql, args)
}

impl Store {
    /// Creates a run owned by this process, running or (with `queued`) waiting for a slot, with
    /// one queued step per (service, plugin); returns the step ids in the same order. One
    /// transaction.
    pub fn create_run(
        &mut self,
        run: &NewRun,
        steps: &[(&str, &str)],
        queued: bool,
    ) -> Result<Vec<i64>, StoreError> {
        let (status, kind) = if queued {
            (RunStatus::Queued, JournalKind::RunQueued)
        } else {
            (RunStatus::Running, JournalKind::RunStarted)
        };
        let host = std::env::var("HOSTNAME").ok();
        let start = crate::scheduler::recover::own_start();
        self.write(|tx| {
            tx.execute(
                "INSERT INTO runs (id, operation, selection, options, started_by, host, pid, pid_start,
                                   status, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                params![
                    run.id,
                    run.operation,
                    run.selection.to_string(),
                    run.options.to_string(),
                    run.started_by,
                    host,
                    std::process::id(),
                    start,
                    status.as_str(),
                    now_ms()
                ],
            )?;
            let now = now_ms();
            journal(tx, &run.id, None, kind, status.as_str(), now)?;
            let mut stmt = tx.prepare_cached(
                "INSERT INTO steps (run_id, service, plugin, status) VALUES (?1, ?2, ?3, 'queued')",
            )?;
            let mut ids = Vec::with_capacity(steps.len());
            for (service, plugin) in steps {
                stmt.execute(params![run.id, service, plugin])?;
                ids.push(tx.last_insert_rowid());
            }
            // Each step's `step_queued`, in step order, in one statement.
            tx.prepare_cached(
                "INSERT INTO run_events (run_id, step_id, kind, status, at)
                 SELECT run_id, id, ?2, 'queued', ?3 FROM steps WHERE run_id = ?1 ORDER BY id",
            )?
            .execute(params![run.id, JournalKind::StepQueued, now])?;
            Ok(ids)
        })
    }

    /// A queued run begins: it is `running` from now on. False when it was not queued (it
    /// ended while it waited, e.g. recovered after its server died).
    pub fn begin_run(&mut self, run_id: &str) -> Result<bool, StoreError> {
        let now = now_ms();
        self.write(|tx| {
            let changed = tx.execute(
                "UPDATE runs SET status = 'running' WHERE id = ?1 AND status = 'queued'",
                [run_id],
            )?;
            if changed > 0 {
                journal(tx, run_id, None, JournalKind::RunStarted, "running", now)?;
            }
            Ok(changed > 0)
        })
    }

    /// Runs that have not ended (queued or running), with their owner.
    pub fn running_runs(&self) -> Result<Vec<RunOwner>, StoreError> {
        let mut stmt = self.conn().prepare_cached(
            "SELECT id, pid, pid_start FROM runs WHERE status IN ('queued', 'running')",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(RunOwner {
                id: r.get(0)?,
                pid: r.get(1)?,
                start: r.get(2)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Marks a run and its unfinished steps interrupted.
    pub fn interrupt_run(&mut self, run_id: &str) -> Result<(), StoreError> {
        self.end_abandoned(
            run_id,
            RunStatus::Interrupted,
            "the engine running this step stopped (killed or crashed)",
        )
    }

    /// Ends a run that its executor cannot end (its process died, or its task failed or
    /// panicked): the unfinished steps and the run get `status` and the steps `reason`, with
    /// their journal rows. A run that has already ended is left as it is.
    pub fn end_abandoned(
        &mut self,
        run_id: &str,
        status: RunStatus,
        reason: &str,
    ) -> Result<(), StoreError> {
        let now = now_ms();
        self.write(|tx| {
            let changed = tx.execute(
                "UPDATE runs SET status = ?3, finished_at = ?2
                 WHERE id = ?1 AND status IN ('queued', 'running')",
                params![run_id, now, status.as_str()],
            )?;
            if changed == 0 {
                return Ok(());
            }
            tx.execute(
                "INSERT INTO run_events (run_id, step_id, kind, status, at)
                 SELECT run_id, id, 'step_finished', ?3, ?2 FROM steps
                 WHERE run_id = ?1 AND status IN ('queued', 'running') ORDER BY id",
                params![run_id, now, status.as_str()],
            )?;
            tx.execute(
                "UPDATE steps SET status = ?3, finished_at = ?2, reason = ?4
                 WHERE run_id = ?1 AND status IN ('queued', 'running')",
                params![run_id, now, status.as_str(), reason],
            )?;
            journal(
                tx,
                run_id,
                None,
                JournalKind::RunFinished,
                status.as_str(),
                now,
            )
        })
    }

    /// Marks a step running, with the plugin's digest and the capabilities it was given.
    /// Marks a step running with its plugin's digest, its grants and its cache key (if any).
    pub fn start_step(
        &mut self,
        step_id: i64,
        digest: &str,
        grants: &serde_json::Value,
        key: Option<&str>,
    ) -> Result<(), StoreError> {
        let now = now_ms();
        self.write(|tx| start_step_tx(tx, step_id, digest, grants, key, now))
    }

    /// Ends a step (with its cache key, if any and not yet written).
    pub fn finish_step(
        &mut self,
        step_id: i64,
        status: StepStatus,
        end: &StepEnd,
        key: Option<&str>,
    ) -> Result<(), StoreError> {
        let now = now_ms();
        self.write(|tx| finish_step_tx(tx, step_id, status, end, key, now, None))
    }

    /// Steps that end from the cache, together: each is started, given its (replayed) log and
    /// finished `cached` — the rows and journal entries of a step that runs — in one transaction.
    pub fn record_cached_steps(
        &mut self,
        steps: &[CachedStepRecord<'_>],
    ) -> Result<(), StoreError> {
        let now = now_ms();
        self.write(|tx| {
            // The row a step that runs gets from `start_step_tx` then `finish_step_tx`, written
            // once; the journal rows of both transitions.
            for s in steps {
                update_finished_step(
                    tx,
                    s.step_id,
                    StepStatus::Cached,
                    s.end,
                    s.key,
                    now,
                    Some((s.digest, s.grants)),
                )?;
            }
            // Each step's `step_started` then `step_finished`, step after step, in one
            // statement.
            let ids = serde_json::to_string(&steps.iter().map(|s| s.step_id).collect::<Vec<_>>())
                .unwrap_or_else(|_| "[]".into());
            tx.prepare_cached(
                "INSERT INTO run_events (run_id, step_id, kind, status, at)
                 SELECT s.run_id, s.id, k.kind, k.status, ?2
                 FROM json_each(?1) AS j JOIN steps s ON s.id = j.value
                 CROSS JOIN (SELECT 0 AS o, ?3 AS kind, 'running' AS status
                             UNION ALL SELECT 1, ?4, ?5) AS k
                 ORDER BY j.key, k.o",
            )?
            .execute(params![
                ids,
                now,
                JournalKind::StepStarted,
                JournalKind::StepFinished,
                StepStatus::Cached.as_str()
            ])?;
            insert_logs_tx(tx, steps.iter().flat_map(|s| s.chunks))
        })
    }

    pub fn finish_run(&mut self, run_id: &str, status: RunStatus) -> Result<(), StoreError> {
        let now = now_ms();
        self.write(|tx| {
            tx.execute(
                "UPDATE runs SET status = ?2, finished_at = ?3 WHERE id = ?1",
                params![run_id, status.as_str(), now],
            )?;
            journal(
                tx,
                run_id,
                None,
                JournalKind::RunFinished,
                status.as_str(),
                now,
            )
        })
    }

    /// Appends log chunks in one transaction.
    pub fn insert_logs(&mut self, chunks: &[LogChunk]) -> Result<(), StoreError> {
        if chunks.is_empty() {
            return Ok(());
        }
        self.write(|tx| insert_logs_tx(tx, chunks))
    }

    pub fn audit(&mut self, e: &AuditEntry) -> Result<(), StoreError> {
        self.write(|tx| {
            tx.execute(
                "INSERT INTO audit (at, run_id, step_id, plugin, capability, requested, decision, detail)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![now_ms(), e.run_id, e.step_id, e.plugin, e.capability, e.requested, e.decision, e.detail],
            )?;
            Ok(())
        })
    }

    /// Ids of runs that start with `prefix` (at most `limit`, newest first).
    pub fn run_ids_with_prefix(
        &self,
        prefix: &str,
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        let mut stmt = self.conn().prepare_cached(
            "SELECT id FROM runs WHERE substr(id, 1, length(?1)) = ?1 ORDER BY created_at DESC, id DESC LIMIT ?2",
        )?;
        let rows = stmt.query_map(
            params![prefix, i64::try_from(limit).unwrap_or(i64::MAX)],
            |r| r.get(0),
        )?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// A run with its steps.
    pub fn run(&self, run_id: &str) -> Result<Option<RunRow>, StoreError> {
        let run = self
            .conn()
            .query_row(
                &format!("SELECT {HEAD_COLUMNS} FROM runs r WHERE r.id = ?1"),
                [run_id],
                |r| {
                    Ok(RunRow {
                        run: RunHead::from_row(r)?,
                        steps: Vec::new(),
                    })
                },
            )
            .optional()?;
        let Some(mut run) = run else { return Ok(None) };
        let mut stmt = self.conn().prepare_cached(&format!(
            "SELECT {STEP_COLUMNS} FROM steps s WHERE s.run_id = ?1 ORDER BY s.id"
        ))?;
        let steps = stmt.query_map([run_id], |r| step_from(r, 0))?;
        run.steps = steps.collect::<Result<_, _>>()?;
        Ok(Some(run))
    }

    /// A run's status and the service of each of its steps, if the run exists: what reading
    /// its log needs, without the rest of every step.
    pub fn run_services(&self, run_id: &str) -> Result<Option<RunServices>, StoreError> {
        let status: Option<RunStatus> = self
            .conn()
            .prepare_cached("SELECT status FROM runs WHERE id = ?1")?
            .query_row([run_id], |r| r.get(0))
            .optional()?;
        let Some(status) = status else {
            return Ok(None);
        };
        let mut stmt = self
            .conn()
            .prepare_cached("SELECT id, service FROM steps WHERE run_id = ?1 ORDER BY id")?;
        let steps = stmt
            .query_map([run_id], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        Ok(Some((status, steps)))
    }

    /// The newest `limit` steps of `service` (of `operation` only, when given), newest first,
    /// each with its run's id and operation.
    pub fn service_steps(
        &self,
        service: &str,
        operation: Option<&str>,
        limit: usize,
    ) -> Result<Vec<ServiceStep>, StoreError> {
        let mut stmt = self.conn().prepare_cached(&service_steps_query())?;
        let rows = stmt.query_map(
            params![service, operation, i64::try_from(limit).unwrap_or(i64::MAX)],
            |r| {
                Ok(ServiceStep {
                    run_id: r.get(0)?,
                    operation: r.get(1)?,
                    run_created_at: r.get(2)?,
                    step: step_from(r, 3)?,
                })
            },
        )?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The selection and options a run was recorded with (JSON), if the run exists.
    pub fn run_request(
        &self,
        run_id: &str,
    ) -> Result<Option<(serde_json::Value, serde_json::Value)>, StoreError> {
        let row: Option<(String, String)> = self
            .conn()
            .query_row(
                "SELECT selection, options FROM runs WHERE id = ?1",
                [run_id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        Ok(row.map(|(sel, opts)| {
            (
                serde_json::from_str(&sel).unwrap_or_default(),
                serde_json::from_str(&opts).unwrap_or_default(),
            )
        }))
    }

    /// The newest `limit` runs, newest first, with their step counts by status.
    pub fn list_runs(&self, limit: usize) -> Result<Vec<RunSummary>, StoreError> {
        self.list_runs_page(&RunFilter::default(), limit)
    }

    /// One page of runs, newest first: those matching `filter`, older than its cursor.
    pub fn list_runs_page(
        &self,
        filter: &RunFilter,
        limit: usize,
    ) -> Result<Vec<RunSummary>, StoreError> {
        let (sql, args) = page_query(filter, limit);
        let mut stmt = self.conn().prepare_cached(&sql)?;
        let rows = stmt.query_map(rusqlite::params_from_iter(args.iter()), |r| {
            Ok(RunSummary {
                run: RunHead::from_row(r)?,
                steps: r.get(7)?,
                succeeded: r.get(8)?,
                failed: r.get(9)?,
                cached: r.get(10)?,
                saved_ms: r.get(11)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// A page of at most `limit` runs with the cursor of the next one (`created_at_id` of the
    /// last run shown, when there are more).
    pub fn runs_page(&self, filter: &RunFilter, limit: usize) -> Result<RunPage, StoreError> {
        let mut runs = self.list_runs_page(filter, limit.saturating_add(1))?;
        let more = runs.len() > limit;
        runs.truncate(limit);
        let next_cursor = more
            .then(|| {
                runs.last()
                    .map(|r| format!("{}_{}", r.run.created_at, r.run.id))
            })
            .flatten();
        Ok(RunPage { runs, next_cursor })
    }

    /// Transitions of run `run_id` after journal id `after`, at most `limit`, in order.
    pub fn journal_after(
        &self,
        run_id: &str,
        after: i64,
        limit: usize,
    ) -> Result<Vec<JournalEntry>, StoreError> {
        let mut stmt = self.conn().prepare_cached(
            "SELECT e.id, e.step_id, s.service, e.kind, e.status, e.at
             FROM run_events e LEFT JOIN steps s ON s.id = e.step_id
             WHERE e.run_id = ?1 AND e.id > ?2 ORDER BY e.id LIMIT ?3",
        )?;
        let rows = stmt.query_map(
            params![run_id, after, i64::try_from(limit).unwrap_or(i64::MAX)],
            |r| {
                Ok(JournalEntry {
                    id: r.get(0)?,
                    step_id: r.get(1)?,
                    service: r.get(2)?,
                    kind: r.get(3)?,
                    status: r.get(4)?,
                    at: r.get(5)?,
                })
            },
        )?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Log chunks of run `run_id` from chunk id `from` on (inclusive), in the order they were
    /// stored, at most `limit`; each with its id.
    pub fn run_chunks_from(
        &self,
        run_id: &str,
        from: i64,
        limit: usize,
    ) -> Result<Vec<(i64, LogChunk)>, StoreError> {
        let mut stmt = self.conn().prepare_cached(&format!(
            "SELECT c.id, {CHUNK_COLUMNS} FROM log_chunks c
             WHERE c.run_id = ?1 AND c.id >= ?2 ORDER BY c.id LIMIT ?3"
        ))?;
        let rows = stmt.query_map(
            params![run_id, from, i64::try_from(limit).unwrap_or(i64::MAX)],
            |r| Ok((r.get(0)?, chunk_from(r, 1)?)),
        )?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The journal id of the run's `run_finished` entry, once it has ended.
    pub fn run_end_event(&self, run_id: &str) -> Result<Option<i64>, StoreError> {
        Ok(self
            .conn()
            .prepare_cached(
                "SELECT max(id) FROM run_events WHERE run_id = ?1 AND kind = 'run_finished'",
            )?
            .query_row([run_id], |r| r.get(0))?)
    }

    /// A number that changes whenever any run, step or their status changes (the newest journal
    /// id): views computed from the run history can be cached until it moves.
    pub fn history_generation(&self) -> Result<i64, StoreError> {
        Ok(self.conn().query_row(
            "SELECT coalesce(max(id), 0) + (SELECT count(*) FROM runs) FROM run_events",
            [],
            |r| r.get(0),
        )?)
    }

    /// The status of the newest step of each `(service, its operations)` wanted, by (service,
    /// operation). Each service's steps are walked newest first (the runs newest first, each
    /// probed for the service through the steps' `(run_id, service)` index) until every
    /// operation asked for is found: the cost follows the services asked for and how recently
    /// they ran, not the whole history.
    pub fn last_step_statuses(
        &self,
        wanted: &[(String, Vec<String>)],
    ) -> Result<std::collections::HashMap<(String, String), StepStatus>, StoreError> {
        let mut stmt = self.conn().prepare_cached(LAST_STATUSES)?;
        let mut out = std::collections::HashMap::new();
        for (service, ops) in wanted {
            if ops.is_empty() {
                continue;
            }
            let mut found = 0;
            let mut rows = stmt.query([service])?;
            while let Some(row) = rows.next()? {
                let op: String = row.get(0)?;
                if !ops.contains(&op) {
                    continue;
                }
                if let std::collections::hash_map::Entry::Vacant(v) =
                    out.entry((service.clone(), op))
                {
                    v.insert(row.get::<_, StepStatus>(1)?);
                    found += 1;
                    if found == ops.len() {
                        break;
                    }
                }
            }
        }
        Ok(out)
    }

    /// Log lines of a step after sequence `after`, at most `limit`, in order.
    pub fn step_logs_after(
        &self,
        step_id: i64,
        after: i64,
        limit: usize,
    ) -> Result<Vec<LogLine>, StoreError> {
        Ok(self
            .step_window(step_id, after, limit)?
            .iter()
            .flat_map(|p| p.lines().map(|(i, t)| p.chunk.line(i, t)))
            .collect())
    }

    /// The window of step `step_id`'s log after sequence `after`: at most `limit` lines.
    pub fn step_window(
        &self,
        step_id: i64,
        after: i64,
        limit: usize,
    ) -> Result<Vec<LogPart>, StoreError> {
        // From the chunk holding line `after + 1` (found through the (step_id, first_seq) index),
        // not from the step's first chunk.
        let mut stmt = self.conn().prepare_cached(&format!(
            "SELECT c.id, {CHUNK_COLUMNS} FROM log_chunks c
             WHERE c.step_id = ?1 AND c.first_seq >= coalesce(
                 (SELECT max(first_seq) FROM log_chunks WHERE step_id = ?1 AND first_seq <= ?2 + 1), 0)
             ORDER BY c.first_seq"
        ))?;
        let rows = stmt.query_map(params![step_id, after], |r| {
            Ok((r.get(0)?, chunk_from(r, 1)?))
        })?;
        window(rows, |_, c| after + 1 - c.first_seq, limit)
    }

    /// The window of run `run_id`'s log (every step, in the order stored) from run-wide line
    /// `from` on: at most `limit` lines.
    pub fn run_window(
        &self,
        run_id: &str,
        from: i64,
        limit: usize,
    ) -> Result<Vec<LogPart>, StoreError> {
        let mut stmt = self.conn().prepare_cached(&format!(
            "SELECT c.id, {CHUNK_COLUMNS} FROM log_chunks c
             WHERE c.run_id = ?1 AND c.line0 >= coalesce(
                 (SELECT max(line0) FROM log_chunks WHERE run_id = ?1 AND line0 <= ?2), 0)
             ORDER BY c.line0"
        ))?;
        let rows = stmt.query_map(params![run_id, from], |r| {
            Ok((r.get(0)?, chunk_from(r, 1)?))
        })?;
        window(rows, |_, c| from - c.line0, limit)
    }

    /// The window of run `run_id`'s log after line `seq` of chunk `chunk` (a page's `next`
    /// cursor): at most `limit` lines.
    pub fn run_window_after(
        &self,
        run_id: &str,
        chunk: i64,
        seq: i64,
        limit: usize,
    ) -> Result<Vec<LogPart>, StoreError> {
        let mut stmt = self.conn().prepare_cached(&format!(
            "SELECT c.id, {CHUNK_COLUMNS} FROM log_chunks c
             WHERE c.run_id = ?1 AND c.id >= ?2 ORDER BY c.id"
        ))?;
        let rows = stmt.query_map(params![run_id, chunk], |r| {
            Ok((r.get(0)?, chunk_from(r, 1)?))
        })?;
        window(
            rows,
            |id, c| {
                if id == chunk {
                    seq + 1 - c.first_seq
                } else {
                    0
                }
            },
            limit,
        )
    }

    /// How many lines run `run_id` has stored so far.
    pub fn run_log_lines(&self, run_id: &str) -> Result<i64, StoreError> {
        Ok(self
            .conn()
            .prepare_cached("SELECT log_lines FROM runs WHERE id = ?1")?
            .query_row([run_id], |r| r.get(0))
            .optional()?
            .unwrap_or(0))
    }

    /// How many lines step `step_id` has stored so far.
    pub fn step_log_lines(&self, step_id: i64) -> Result<i64, StoreError> {
        Ok(self
            .conn()
            .prepare_cached(
                "SELECT last_seq + 1 FROM log_chunks WHERE step_id = ?1
                 ORDER BY first_seq DESC LIMIT 1",
            )?
            .query_row([step_id], |r| r.get(0))
            .optional()?
            .unwrap_or(0))
    }

    /// Every chunk of a run's log (or of one of its steps), in the order stored, passed to `each`
    /// until it returns false: searching and downloading a whole log without holding it in memory.
    pub fn each_chunk(
        &self,
        run_id: &str,
        step_id: Option<i64>,
        mut each: impl FnMut(&LogChunk) -> bool,
    ) -> Result<(), StoreError> {
        let mut stmt = self.conn().prepare_cached(&format!(
            "SELECT {CHUNK_COLUMNS} FROM log_chunks c
             WHERE c.run_id = ?1 AND (?2 IS NULL OR c.step_id = ?2) ORDER BY c.line0"
        ))?;
        let mut rows = stmt.query(params![run_id, step_id])?;
        while let Some(r) = rows.next()? {
            if !each(&chunk_from(r, 0)?) {
                break;
            }
        }
        Ok(())
    }

    /// Deletes finished runs beyond the newest `keep`, or created before `before_ms`, in bounded
    /// transactions (at most 1,000 log chunks each); returns how many runs were deleted.
    pub fn prune_runs(
        &mut self,
        keep: Option<usize>,
        before_ms: Option<i64>,
    ) -> Result<usize, StoreError> {
        let ids: Vec<String> = {
            let mut stmt = self.conn().prepare(
                "SELECT id, created_at FROM runs WHERE status NOT IN ('queued', 'running')
                 ORDER BY created_at DESC, id DESC",
            )?;
            let runs: Vec<(String, i64)> = stmt
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<Result<_, _>>()?;
            runs.into_iter()
                .enumerate()
                .filter(|(i, (_, at))| {
                    keep.is_some_and(|k| *i >= k) || before_ms.is_some_and(|b| *at < b)
                })
                .map(|(_, (id, _))| id)
                .collect()
        };
        for id in &ids {
            loop {
                let deleted = self.write(|tx| {
                    tx.execute(
                        "DELETE FROM log_chunks WHERE (step_id, first_seq) IN (
                            SELECT c.step_id, c.first_seq FROM log_chunks c JOIN steps s ON s.id = c.step_id
                            WHERE s.run_id = ?1 LIMIT 1000)",
                        [id],
                    )
                })?;
                if deleted == 0 {
                    break;
                }
            }
            self.write(|tx| {
                tx.execute("DELETE FROM audit WHERE run_id = ?1", [id])?;
                tx.execute("DELETE FROM runs WHERE id = ?1", [id])
            })?;
        }
        Ok(ids.len())
    }

    /// Log lines of a step, in order.
    pub fn step_logs(&self, step_id: i64) -> Result<Vec<LogLine>, StoreError> {
        self.step_logs_after(step_id, -1, usize::MAX)
    }
}

/// What [`Store::record_cached_steps`] records of one step.
pub struct CachedStepRecord<'a> {
    pub step_id: i64,
    pub digest: &'a str,
    /// Its plugin's grants, JSON.
    pub grants: &'a str,
    pub chunks: &'a [LogChunk],
    pub end: &'a StepEnd,
    /// Its cache key.
    pub key: Option<&'a str>,
}

fn start_step_tx(
    tx: &rusqlite::Transaction<'_>,
    step_id: i64,
    digest: &str,
    grants: &serde_json::Value,
    key: Option<&str>,
    now: i64,
) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "UPDATE steps SET status = 'running', started_at = ?2, plugin_digest = ?3, grants = ?4,
            cache_key = coalesce(?5, cache_key)
         WHERE id = ?1",
    )?
    .execute(params![step_id, now, digest, grants.to_string(), key])?;
    step_journal(tx, step_id, JournalKind::StepStarted, "running", now)
}

/// Ends a step; with `started` (the plugin's digest and the grants, as JSON), a step that
/// starts and ends at once (a cache hit: `start_step_tx`'s fields are set by the same update).
fn finish_step_tx(
    tx: &rusqlite::Transaction<'_>,
    step_id: i64,
    status: StepStatus,
    end: &StepEnd,
    key: Option<&str>,
    now: i64,
    started: Option<(&str, &str)>,
) -> rusqlite::Result<()> {
    update_finished_step(tx, step_id, status, end, key, now, started)?;
    step_journal(tx, step_id, JournalKind::StepFinished, status.as_str(), now)
}

/// The row of a step that ended (`started`: the plugin digest and grants of a step that ends
/// as it starts, from the cache); its journal row is the caller's.
fn update_finished_step(
    tx: &rusqlite::Transaction<'_>,
    step_id: i64,
    status: StepStatus,
    end: &StepEnd,
    key: Option<&str>,
    now: i64,
    started: Option<(&str, &str)>,
) -> rusqlite::Result<()> {
    let (p, f, s) = match end.tests {
        Some(t) => (Some(t.passed), Some(t.failed), Some(t.skipped)),
        None => (None, None, None),
    };
    tx.prepare_cached(
        "UPDATE steps SET status = ?2, finished_at = ?3, duration_ms = ?4, summary = ?5,
            reason = ?6, tests_passed = ?7, tests_failed = ?8, tests_skipped = ?9,
            artifacts = ?10, metrics = ?11, cache_source = ?12, saved_ms = ?13,
            provenance = coalesce(?14, provenance),
            started_at = coalesce(?15, started_at), plugin_digest = coalesce(?16, plugin_digest),
            grants = coalesce(?17, grants), cache_key = coalesce(?18, cache_key)
         WHERE id = ?1",
    )?
    .execute(params![
        step_id,
        status.as_str(),
        now,
        i64::try_from(end.duration_ms).unwrap_or(i64::MAX),
        end.summary,
        end.reason,
        p,
        f,
        s,
        serde_json::to_string(&end.artifacts).unwrap_or_else(|_| "[]".into()),
        end.metrics.to_string(),
        end.cache_hit.map(|(s, _)| s),
        end.cache_hit
            .map(|(_, ms)| i64::try_from(ms).unwrap_or(i64::MAX)),
        end.provenance,
        started.map(|_| now),
        started.map(|(digest, _)| digest),
        started.map(|(_, grants)| grants),
        key
    ])?;
    Ok(())
}

/// The parts of `chunks` (read only as far as needed) holding at most `limit` lines, less the
/// first `skip(id, chunk)` lines of each.
fn window(
    chunks: impl Iterator<Item = rusqlite::Result<(i64, LogChunk)>>,
    skip: impl Fn(i64, &LogChunk) -> i64,
    limit: usize,
) -> Result<Vec<LogPart>, StoreError> {
    let mut parts = Vec::new();
    let mut got = 0;
    for row in chunks {
        if got >= limit {
            break;
        }
        let (id, chunk) = row?;
        let count = usize::try_from(chunk.count).unwrap_or(0);
        let skip = usize::try_from(skip(id, &chunk).clamp(0, chunk.count)).unwrap_or(0);
        let take = (count - skip).min(limit - got);
        if take > 0 {
            got += take;
            parts.push(LogPart {
                id,
                chunk,
                skip,
                take,
            });
        }
    }
    Ok(parts)
}

/// Most text a stored chunk holds (a chunk of one longer line holds that line): a page of a log
/// read from any line copies at most about this much it does not send.
pub const STORED_CHUNK_BYTES: usize = 16 * 1024;

/// `c` as stored: cut at line ends into pieces of at most [`STORED_CHUNK_BYTES`] (but at least
/// one line each).
fn stored_pieces(c: &LogChunk) -> Vec<std::borrow::Cow<'_, LogChunk>> {
    use std::borrow::Cow;
    if c.text.len() <= STORED_CHUNK_BYTES {
        return vec![Cow::Borrowed(c)];
    }
    let mut out = Vec::new();
    let mut piece = LogChunk {
        count: 0,
        text: String::new(),
        ..c.clone_empty()
    };
    for line in c.text.split('\n') {
        if piece.count > 0 && piece.text.len() + 1 + line.len() > STORED_CHUNK_BYTES {
            let next_seq = piece.first_seq + piece.count;
            out.push(Cow::Owned(std::mem::replace(
                &mut piece,
                LogChunk {
                    first_seq: next_seq,
                    count: 0,
                    text: String::new(),
                    ..c.clone_empty()
                },
            )));
        }
        if piece.count > 0 {
            piece.text.push('\n');
        }
        piece.text.push_str(line);
        piece.count += 1;
    }
    out.push(Cow::Owned(piece));
    out
}

fn insert_logs_tx<'c>(
    tx: &rusqlite::Transaction<'_>,
    chunks: impl IntoIterator<Item = &'c LogChunk>,
) -> rusqlite::Result<()> {
    // Each chunk takes its run's next line numbers (the run's count is read once per run and
    // written back once); one stored twice (same step and first line) is ignored and numbers
    // nothing. The runs of the chunks' steps are read in one query (a run of hits stores a
    // chunk for each of a thousand steps).
    let chunks: Vec<&LogChunk> = chunks.into_iter().collect();
    let mut ids: Vec<i64> = chunks.iter().map(|c| c.step_id).collect();
    ids.sort_unstable();
    ids.dedup();
    // step → its run; run → its next line number.
    let mut steps: std::collections::HashMap<i64, std::rc::Rc<str>> =
        std::collections::HashMap::with_capacity(ids.len());
    let mut next: std::collections::HashMap<std::rc::Rc<str>, i64> =
        std::collections::HashMap::new();
    {
        let mut runs_of = tx.prepare_cached(
            "SELECT s.id, r.id, r.log_lines FROM json_each(?1) AS j
             JOIN steps s ON s.id = j.value JOIN runs r ON r.id = s.run_id",
        )?;
        let mut rows = runs_of.query([serde_json::to_string(&ids).unwrap_or_default()])?;
        while let Some(r) = rows.next()? {
            let run: String = r.get(1)?;
            let run: std::rc::Rc<str> = match next.get_key_value(run.as_str()) {
                Some((k, _)) => k.clone(),
                None => {
                    let k: std::rc::Rc<str> = run.into();
                    next.insert(k.clone(), r.get(2)?);
                    k
                }
            };
            steps.insert(r.get(0)?, run);
        }
    }
    let mut insert = tx.prepare_cached(
        "INSERT OR IGNORE INTO log_chunks
            (step_id, first_seq, last_seq, at, stream, level, text, run_id, line0)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )?;
    for c in chunks.into_iter().flat_map(stored_pieces) {
        // A chunk of a step not stored (gone with its run) is dropped.
        let Some(run) = steps.get(&c.step_id) else {
            continue;
        };
        let line0 = next.get(run).copied().unwrap_or(0);
        let stored = insert.execute(params![
            c.step_id,
            c.first_seq,
            c.first_seq + c.count - 1,
            c.at,
            c.stream.as_str(),
            c.level,
            c.text,
            &**run,
            line0
        ])?;
        if stored == 1 {
            next.insert(run.clone(), line0 + c.count);
        }
    }
    let mut count = tx.prepare_cached("UPDATE runs SET log_lines = ?2 WHERE id = ?1")?;
    for (run, lines) in &next {
        count.execute(params![&**run, lines])?;
    }
    Ok(())
}
