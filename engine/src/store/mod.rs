//! The embedded SQLite store at `<state dir>/state.db` (`.nestr/` beside the manifest by default):
//! opening with WAL, `busy_timeout` and foreign keys, applying the migrations in `migrations/`
//! (embedded in the binary), refusing databases newer than this binary, and typed queries per
//! table group (`repos.rs`, `runs.rs`, `tokens.rs`, `cache.rs`). Every write runs in a `BEGIN IMMEDIATE` transaction.

mod cache;
mod deploys;
mod repos;
mod runs;
mod tokens;

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use include_dir::{Dir, include_dir};
use rusqlite::{Connection, OpenFlags, TransactionBehavior};
use rusqlite_migration::{M, Migrations};

pub use cache::{CacheEntry, CacheStats};
pub use deploys::{DeployEvent, DeploymentRow, LockRefused, LockRow, PlanRow};
pub use repos::{RepoRecord, RepoRow, SyncEvent};
pub use runs::{
    AuditEntry, CachedStepRecord, JournalEntry, LogChunk, LogLine, LogPart, NewRun, RunFilter,
    RunHead, RunOwner, RunPage, RunRow, RunSummary, STORED_CHUNK_BYTES, ServiceLogLine,
    ServiceStep, StepCache, StepEnd, StepRow,
};
pub use tokens::{ActiveToken, TokenRow, token_hash};

static MIGRATIONS_DIR: Dir<'static> = include_dir!("$CARGO_MANIFEST_DIR/../migrations");

/// File name of the database inside the state folder.
pub const DB_FILE: &str = "state.db";

const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the store could not be used.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create the state folder {}: {source}", path.display())]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot open the state database {}: {source}", path.display())]
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error(
        "the state database {} has schema version {found}, but this nestr knows only up to {known}: \
         it was written by a newer nestr",
        path.display()
    )]
    TooNew {
        path: PathBuf,
        found: usize,
        known: usize,
    },
    #[error("cannot migrate the state database {}: {source}", path.display())]
    Migrate {
        path: PathBuf,
        source: rusqlite_migration::Error,
    },
    #[error("state database error: {0}")]
    Sql(#[from] rusqlite::Error),
}

impl StoreError {
    /// What the user should do about it.
    pub fn help(&self) -> Option<String> {
        match self {
            StoreError::TooNew { .. } => Some(
                "upgrade nestr, or point --state at another folder; nestr never downgrades a \
                 database"
                    .to_string(),
            ),
            StoreError::CreateDir { .. } | StoreError::Open { .. } => {
                Some("check the folder's permissions, or choose another with --state DIR".into())
            }
            _ => None,
        }
    }
}

/// The migrations embedded in this binary, in file-name order.
pub fn migrations() -> Vec<(&'static str, &'static str)> {
    let mut files: Vec<(&'static str, &'static str)> = MIGRATIONS_DIR
        .files()
        .filter(|f| f.path().extension().is_some_and(|e| e == "sql"))
        .filter_map(|f| Some((f.path().to_str()?, f.contents_utf8()?)))
        .collect();
    files.sort_by_key(|(name, _)| *name);
    files
}

/// An open store.
pub struct Store {
    conn: Connection,
    path: PathBuf,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

impl Store {
    /// Opens (creating if needed) `state_dir/state.db` and brings its schema up to date.
    pub fn open(state_dir: &Path) -> Result<Store, StoreError> {
        std::fs::create_dir_all(state_dir).map_err(|source| StoreError::CreateDir {
            path: state_dir.to_path_buf(),
            source,
        })?;
        let path = state_dir.join(DB_FILE);
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn =
            Connection::open_with_flags(&path, flags).map_err(|source| StoreError::Open {
                path: path.clone(),
                source,
            })?;
        let mut store = Store { conn, path };
        store.configure().map_err(|source| StoreError::Open {
            path: store.path.clone(),
            source,
        })?;
        store.migrate()?;
        Ok(store)
    }

    fn configure(&mut self) -> rusqlite::Result<()> {
        self.conn.busy_timeout(BUSY_TIMEOUT)?;
        self.conn.pragma_update(None, "journal_mode", "WAL")?;
        self.conn.pragma_update(None, "synchronous", "NORMAL")?;
        self.conn.pragma_update(None, "foreign_keys", "ON")?;
        // 16 MiB of page cache (the default is 2 MiB): a run that records a thousand steps in
        // one transaction keeps its pages in memory instead of spilling them mid-transaction.
        self.conn.pragma_update(None, "cache_size", -16384)?;
        self.conn
            .set_transaction_behavior(TransactionBehavior::Immediate);
        Ok(())
    }

    fn migrate(&mut self) -> Result<(), StoreError> {
        let files = migrations();
        let known = files.len();
        let found = self.schema_version()?;
        if found > known {
            return Err(StoreError::TooNew {
                path: self.path.clone(),
                found,
                known,
            });
        }
        if found == known {
            return Ok(());
        }
        let migrations = Migrations::new(
            files
                .iter()
                .map(|(_, sql)| M::up(sql).foreign_key_check())
                .collect(),
        );
        // A migration that rebuilds a table (SQLite cannot alter a constraint in place) must not
        // let the DROP of the old one cascade into its children: foreign keys are off while
        // migrating (a no-op inside a transaction, hence here) and checked per migration.
        self.conn.pragma_update(None, "foreign_keys", "OFF")?;
        let migrated = migrations.to_latest(&mut self.conn);
        self.conn.pragma_update(None, "foreign_keys", "ON")?;
        if let Err(source) = migrated {
            // Another process may have migrated between our version check and our transaction.
            if self.schema_version()? == known {
                return Ok(());
            }
            return Err(StoreError::Migrate {
                path: self.path.clone(),
                source,
            });
        }
        Ok(())
    }

    /// The schema version recorded in the database (`PRAGMA user_version`).
    pub fn schema_version(&self) -> Result<usize, StoreError> {
        let v: i64 = self
            .conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))?;
        Ok(usize::try_from(v).unwrap_or(0))
    }

    /// Path of the database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` in a `BEGIN IMMEDIATE` transaction, committing when it returns `Ok`.
    pub(crate) fn write<T>(
        &mut self,
        f: impl FnOnce(&rusqlite::Transaction<'_>) -> rusqlite::Result<T>,
    ) -> Result<T, StoreError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let out = f(&tx)?;
        tx.commit()?;
        Ok(out)
    }

    /// Runs the reads of `f` on one snapshot of the database (a deferred read transaction), so
    /// that what it sees is consistent across queries.
    pub fn snapshot<T>(
        &self,
        f: impl FnOnce(&Store) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let tx = self.conn.unchecked_transaction()?;
        let out = f(self)?;
        tx.commit()?;
        Ok(out)
    }

    pub(crate) fn conn(&self) -> &Connection {
        &self.conn
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_are_numbered_and_ordered() {
        let files = migrations();
        assert!(!files.is_empty());
        for (i, (name, _)) in files.iter().enumerate() {
            let prefix: usize = name[..4].parse().expect("NNNN_ prefix");
            assert_eq!(prefix, i + 1, "{name} is out of sequence");
        }
    }

    /// A page of runs walks an index and stops: no full scan, no sort of the whole history.
    #[test]
    fn a_page_of_runs_walks_an_index_whatever_the_filter() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("store");
        let filters = [
            runs::RunFilter::default(),
            runs::RunFilter {
                operation: Some("build".into()),
                before: Some((5, "x".into())),
                ..Default::default()
            },
        ];
        for filter in &filters {
            let (sql, args) = runs::page_query(filter, 20);
            let mut stmt = store
                .conn()
                .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
                .expect("plan");
            let plan: Vec<String> = stmt
                .query_map(rusqlite::params_from_iter(args.iter()), |r| r.get(3))
                .expect("query")
                .collect::<Result<_, _>>()
                .expect("rows");
            let plan = plan.join("\n");
            assert!(!plan.contains("TEMP B-TREE"), "{filter:?}:\n{plan}");
            assert!(
                plan.contains("USING INDEX runs_page"),
                "{filter:?}:\n{plan}"
            );
        }
    }

    /// A database at `path` with the migrations before `first` applied (foreign keys off).
    fn migrated_before(path: &Path, first: &str) -> Connection {
        let mut conn = Connection::open(path).expect("open");
        let before: Vec<_> = migrations()
            .iter()
            .filter(|(name, _)| *name < first)
            .map(|(_, sql)| M::up(sql))
            .collect();
        Migrations::new(before)
            .to_latest(&mut conn)
            .unwrap_or_else(|e| panic!("migrate to before {first}: {e}"));
        conn
    }

    /// Migration 0007 rebuilds `runs` (a parent of `steps`, `run_events`, …): the history of a
    /// database written before it survives, and a queued run can be recorded after it.
    #[test]
    fn rebuilding_the_runs_table_keeps_every_step_log_and_journal_row() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(DB_FILE);
        {
            let mut conn = Connection::open(&path).expect("open");
            conn.pragma_update(None, "foreign_keys", "ON").expect("fk");
            let before: Vec<_> = migrations()
                .iter()
                .filter(|(name, _)| *name < "0007")
                .map(|(_, sql)| M::up(sql))
                .collect();
            Migrations::new(before)
                .to_latest(&mut conn)
                .expect("migrate to 6");
            conn.execute_batch(
                "INSERT INTO runs (id, operation, selection, started_by, status, created_at, finished_at)
                     VALUES ('r1', 'build', '{}', 'cli', 'succeeded', 1, 2);
                 INSERT INTO steps (run_id, service, plugin, status) VALUES ('r1', 'a', 'command', 'succeeded');
                 INSERT INTO log_chunks (step_id, first_seq, last_seq, at, stream, text)
                     VALUES (1, 0, 0, 1, 'stdout', 'hello');
                 INSERT INTO run_events (run_id, step_id, kind, status, at) VALUES ('r1', NULL, 'run_started', 'running', 1);
                 INSERT INTO run_events (run_id, step_id, kind, status, at) VALUES ('r1', 1, 'step_finished', 'succeeded', 2);",
            )
            .expect("history");
        }
        let mut store = Store::open(dir.path()).expect("migrated");
        fn count_in(store: &Store, sql: &str) -> i64 {
            store
                .conn()
                .query_row(sql, [], |r| r.get(0))
                .expect("count")
        }
        assert_eq!(count_in(&store, "SELECT count(*) FROM steps"), 1);
        assert_eq!(count_in(&store, "SELECT count(*) FROM log_chunks"), 1);
        assert_eq!(count_in(&store, "SELECT count(*) FROM run_events"), 2);
        assert_eq!(
            count_in(&store, "PRAGMA foreign_keys"),
            1,
            "foreign keys are back on"
        );
        let ids = store
            .create_run(
                &crate::store::NewRun {
                    id: "r2".into(),
                    operation: "build".into(),
                    selection: serde_json::json!({}),
                    options: serde_json::json!({}),
                    started_by: "api".into(),
                },
                &[("a", "command")],
                true,
            )
            .expect("a queued run");
        assert_eq!(ids.len(), 1);
        let run = store.run("r2").expect("read").expect("r2");
        assert_eq!(run.run.status, crate::model::RunStatus::Queued);
        assert_eq!(run.run.queue_position, Some(1));
        // New journal ids keep growing past the old ones.
        assert!(count_in(&store, "SELECT max(id) FROM run_events") > 2);
        // Deleting a run still cascades to its steps.
        store
            .conn()
            .execute("DELETE FROM runs WHERE id = 'r1'", [])
            .expect("delete");
        assert_eq!(
            count_in(&store, "SELECT count(*) FROM steps WHERE run_id = 'r1'"),
            0
        );
    }

    /// Migration 0014 rebuilds `steps`, `run_events` and `log_chunks` with their checks written
    /// as comparisons: every row, id and AUTOINCREMENT counter survives (a deleted run's ids are
    /// not given out again), and the checks still refuse what they refused.
    #[test]
    fn plain_checks_keep_rows_counters_and_what_they_refuse() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(DB_FILE);
        {
            let conn = migrated_before(&path, "0014");
            conn.execute_batch(
                "INSERT INTO runs (id, operation, selection, started_by, status, created_at)
                     VALUES ('r1', 'build', '{}', 'cli', 'succeeded', 1),
                            ('r2', 'build', '{}', 'cli', 'succeeded', 2);
                 INSERT INTO steps (run_id, service, plugin, status, cache_source) VALUES
                     ('r1', 'a', 'command', 'succeeded', NULL), ('r2', 'a', 'command', 'cached', 'local');
                 INSERT INTO log_chunks (step_id, first_seq, last_seq, at, stream, text, run_id, line0)
                     VALUES (1, 0, 0, 1, 'stdout', 'hello', 'r1', 0), (2, 0, 0, 1, 'system', 'x', 'r2', 0);
                 INSERT INTO run_events (run_id, step_id, kind, status, at) VALUES
                     ('r1', 1, 'step_finished', 'succeeded', 2), ('r2', 2, 'step_finished', 'cached', 2);
                 DELETE FROM runs WHERE id = 'r2';",
            )
            .expect("history");
        }
        let store = Store::open(dir.path()).expect("migrated");
        let one = |sql: &str| -> i64 { store.conn().query_row(sql, [], |r| r.get(0)).expect(sql) };
        assert_eq!(one("SELECT count(*) FROM steps"), 1);
        assert_eq!(one("SELECT count(*) FROM log_chunks"), 1);
        assert_eq!(one("SELECT count(*) FROM run_events"), 1);
        for table in ["steps", "log_chunks", "run_events"] {
            assert_eq!(
                one(&format!(
                    "SELECT seq FROM sqlite_sequence WHERE name = '{table}'"
                )),
                2,
                "{table}: the counter stays past the deleted run's rows"
            );
            let sql = one(&format!(
                "SELECT instr(sql, ' IN (') FROM sqlite_master WHERE name = '{table}'"
            ));
            assert_eq!(sql, 0, "{table} has no IN list left");
        }
        assert_eq!(
            one("SELECT count(*) FROM sqlite_sequence WHERE name LIKE '%_new'"),
            0
        );
        let conn = store.conn();
        let refused = [
            "INSERT INTO steps (run_id, service, plugin, status) VALUES ('r1', 'b', 'p', 'bogus')",
            "INSERT INTO steps (run_id, service, plugin, status, cache_source)
                 VALUES ('r1', 'c', 'p', 'cached', 'elsewhere')",
            "INSERT INTO run_events (run_id, kind, at) VALUES ('r1', 'step_paused', 1)",
            "INSERT INTO log_chunks (step_id, first_seq, last_seq, at, stream, text)
                 VALUES (1, 5, 5, 1, 'stdin', 'x')",
        ];
        for sql in refused {
            assert!(conn.execute(sql, []).is_err(), "refused: {sql}");
        }
        conn.execute(
            "INSERT INTO steps (run_id, service, plugin, status, cache_source)
                 VALUES ('r1', 'd', 'p', 'cached', 'remote')",
            [],
        )
        .expect("a value the checks allow");
        assert_eq!(
            one("SELECT max(id) FROM steps"),
            3,
            "ids go on past the counter"
        );
    }

    /// Migration 0009 numbers the lines of runs stored before it, run by run, in the order their
    /// chunks were stored.
    #[test]
    fn earlier_runs_get_their_lines_numbered() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(DB_FILE);
        {
            let conn = migrated_before(&path, "0009");
            conn.execute_batch(
                "INSERT INTO runs (id, operation, selection, started_by, status, created_at)
                     VALUES ('r1', 'build', '{}', 'cli', 'succeeded', 1), ('r2', 'build', '{}', 'cli', 'succeeded', 2);
                 INSERT INTO steps (run_id, service, plugin, status) VALUES
                     ('r1', 'a', 'command', 'succeeded'), ('r1', 'b', 'command', 'succeeded'),
                     ('r2', 'a', 'command', 'succeeded');
                 INSERT INTO log_chunks (step_id, first_seq, last_seq, at, stream, text) VALUES
                     (1, 0, 1, 1, 'stdout', 'a0\na1'), (3, 0, 0, 1, 'stdout', 'x0'),
                     (2, 0, 2, 1, 'stdout', 'b0\nb1\nb2'), (1, 2, 2, 1, 'stdout', 'a2');",
            )
            .expect("history");
        }
        let store = Store::open(dir.path()).expect("migrated");
        let texts = |from: i64| -> Vec<(i64, String)> {
            store
                .run_window("r1", from, 10)
                .expect("window")
                .iter()
                .flat_map(|p| p.lines().map(|(i, t)| (p.chunk.line0 + i, t.to_string())))
                .collect()
        };
        let want: Vec<(i64, String)> = ["a0", "a1", "b0", "b1", "b2", "a2"]
            .iter()
            .enumerate()
            .map(|(i, t)| (i as i64, t.to_string()))
            .collect();
        assert_eq!(texts(0), want);
        assert_eq!(texts(3), want[3..].to_vec());
        assert_eq!(store.run_log_lines("r1").expect("count"), 6);
        assert_eq!(store.run_log_lines("r2").expect("count"), 1);
    }

    /// Key manifests stored before 0012 learn the newest run that had their key; later ones
    /// the first run that recorded them; `key_run` names it once no entry does.
    #[test]
    fn a_key_names_the_run_that_had_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(DB_FILE);
        {
            let conn = migrated_before(&path, "0012");
            conn.execute_batch(
                "INSERT INTO runs (id, operation, selection, started_by, status, created_at)
                     VALUES ('r1', 'build', '{}', 'cli', 'succeeded', 1), ('r2', 'build', '{}', 'cli', 'succeeded', 2);
                 INSERT INTO steps (run_id, service, plugin, status, cache_key) VALUES
                     ('r1', 'a', 'command', 'succeeded', 'k1'), ('r2', 'a', 'command', 'cached', 'k1'),
                     ('r1', 'b', 'command', 'succeeded', 'k2');
                 INSERT INTO key_manifests (key, manifest) VALUES ('k1', '{}'), ('k2', '{}'), ('k3', '{}');",
            )
            .expect("history");
        }
        let mut store = Store::open(dir.path()).expect("migrated");
        assert_eq!(store.key_run("k1").expect("k1").as_deref(), Some("r2"));
        assert_eq!(store.key_run("k2").expect("k2").as_deref(), Some("r1"));
        assert_eq!(store.key_run("k3").expect("k3"), None);
        let ids = store
            .create_run(
                &crate::store::NewRun {
                    id: "r3".into(),
                    operation: "build".into(),
                    selection: serde_json::json!({}),
                    options: serde_json::json!({}),
                    started_by: "cli".into(),
                },
                &[("a", "command"), ("c", "command")],
                false,
            )
            .expect("run");
        store
            .record_key_manifests("r3", &[("k1", "{}"), ("k4", "{}")])
            .expect("keys");
        // A step's key is written as it starts (or ends, when it never started).
        store
            .start_step(ids[1], "digest", &serde_json::json!({}), Some("k4"))
            .expect("start");
        store
            .finish_step(
                ids[0],
                crate::model::StepStatus::Skipped,
                &StepEnd::default(),
                Some("k1"),
            )
            .expect("finish");
        assert_eq!(
            store.step_key("r3", "a").expect("step key").as_deref(),
            Some("k1")
        );
        // k1 was known: it keeps its run; k4 is new: r3 had it first.
        assert_eq!(store.key_run("k1").expect("k1").as_deref(), Some("r2"));
        assert_eq!(store.key_run("k4").expect("k4").as_deref(), Some("r3"));
        assert_eq!(
            store.step_key("r3", "c").expect("step key").as_deref(),
            Some("k4")
        );
        let gone: i64 = store
            .conn()
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE name = 'steps_key'",
                [],
                |r| r.get(0),
            )
            .expect("schema");
        assert_eq!(gone, 0, "the index of steps by key is dropped");
    }

    /// A service's history is read by walking the runs newest first and probing each for the
    /// service: neither query scans the steps or sorts them (there is no index of steps by
    /// service: each run would write one entry per service at as many places of it).
    #[test]
    fn a_service_history_walks_the_runs_not_the_steps() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("store");
        let last: &[&dyn rusqlite::ToSql] = &[&"svc"];
        let page: &[&dyn rusqlite::ToSql] = &[&"svc", &"build", &5];
        for (sql, args) in [
            (runs::LAST_STATUSES.to_string(), last),
            (runs::service_steps_query(), page),
        ] {
            let plan: Vec<String> = store
                .conn()
                .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
                .expect("plan")
                .query_map(args, |r| r.get(3))
                .expect("query")
                .collect::<Result<_, _>>()
                .expect("rows");
            let plan = plan.join("\n");
            assert!(
                plan.contains("SCAN r USING INDEX runs_page"),
                "{sql}:\n{plan}"
            );
            assert!(plan.contains("SEARCH s USING"), "{sql}:\n{plan}");
            assert!(!plan.contains("TEMP B-TREE"), "{sql}:\n{plan}");
        }
    }

    /// Pruning to a size evicts the entry used least recently: a hit marks its entry used (in
    /// `cache_use`), so the older entry that was used stays and the newer unused one goes.
    #[test]
    fn pruning_evicts_the_least_recently_used_entry() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut store = Store::open(dir.path()).expect("store");
        let entry = |key: &str| CacheEntry {
            key: key.into(),
            operation: "build".into(),
            service: format!("svc-{key}"),
            result: "{}".into(),
            run_id: None,
            created_at: 0,
        };
        let pause = || std::thread::sleep(std::time::Duration::from_millis(5));
        store
            .put_cache_entry(&entry("old"), &[("d-old".into(), 10)])
            .expect("put");
        pause();
        store
            .put_cache_entry(&entry("new"), &[("d-new".into(), 10)])
            .expect("put");
        pause();
        store.touch_cache_entries(&["old".into()]).expect("touch");
        let (removed, orphans) = store.prune_cache(Some(10), None).expect("prune");
        assert_eq!((removed, orphans), (1, vec!["d-new".to_string()]));
        assert!(store.cache_entry("old").expect("read").is_some());
        assert!(store.cache_entry("new").expect("read").is_none());
        // Unused since before now: it goes too, and so does its record of use.
        pause();
        let (removed, _) = store.prune_cache(None, Some(now_ms())).expect("prune");
        assert_eq!(removed, 1);
        let uses: i64 = store
            .conn()
            .query_row("SELECT count(*) FROM cache_use", [], |r| r.get(0))
            .expect("count");
        assert_eq!(uses, 0);
    }

    /// Each (service, operation) asked for gets the status of its newest step, whatever other
    /// operations ran on the service since; one never run is absent.
    #[test]
    fn last_statuses_are_those_of_the_newest_step_of_each_operation() {
        use crate::model::StepStatus;
        let dir = tempfile::tempdir().expect("tempdir");
        let mut store = Store::open(dir.path()).expect("open");
        let mut run = |id: &str, op: &str, steps: &[(&str, StepStatus)]| {
            let names: Vec<(&str, &str)> = steps.iter().map(|(s, _)| (*s, "command")).collect();
            let ids = store
                .create_run(
                    &crate::store::NewRun {
                        id: id.into(),
                        operation: op.into(),
                        selection: serde_json::json!({}),
                        options: serde_json::json!({}),
                        started_by: "cli".into(),
                    },
                    &names,
                    false,
                )
                .expect("run");
            for (id, (_, status)) in ids.iter().zip(steps) {
                store
                    .finish_step(*id, *status, &crate::store::StepEnd::default(), None)
                    .expect("finish");
            }
        };
        run(
            "r1",
            "build",
            &[("a", StepStatus::Failed), ("b", StepStatus::Succeeded)],
        );
        run("r2", "test", &[("a", StepStatus::Succeeded)]);
        run("r3", "build", &[("a", StepStatus::Succeeded)]);
        run("r4", "test", &[("a", StepStatus::Failed)]);
        let ops = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let last = store
            .last_step_statuses(&[
                ("a".into(), ops(&["build", "test", "deploy"])),
                ("b".into(), ops(&["build"])),
            ])
            .expect("statuses");
        let get = |s: &str, o: &str| last.get(&(s.to_string(), o.to_string())).copied();
        assert_eq!(get("a", "build"), Some(StepStatus::Succeeded));
        assert_eq!(get("a", "test"), Some(StepStatus::Failed));
        assert_eq!(get("a", "deploy"), None);
        assert_eq!(get("b", "build"), Some(StepStatus::Succeeded));
        assert_eq!(last.len(), 3);
    }

    /// A long chunk is stored in pieces of at most `STORED_CHUNK_BYTES`; any line of the run or of
    /// a step is read from its own piece, with run-wide numbers that follow on across steps.
    #[test]
    fn long_chunks_are_stored_in_pieces_and_any_line_is_read_directly() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut store = Store::open(dir.path()).expect("open");
        let ids = store
            .create_run(
                &crate::store::NewRun {
                    id: "r1".into(),
                    operation: "build".into(),
                    selection: serde_json::json!({}),
                    options: serde_json::json!({}),
                    started_by: "cli".into(),
                },
                &[("a", "command"), ("b", "command")],
                false,
            )
            .expect("run");
        let chunk = |step: i64, first: i64, n: i64, tag: &str| crate::store::LogChunk {
            step_id: step,
            first_seq: first,
            count: n,
            line0: 0,
            at: 1,
            stream: crate::model::Stream::Stdout,
            level: None,
            text: (first..first + n)
                .map(|i| format!("{tag} line {i}"))
                .collect::<Vec<_>>()
                .join("\n"),
        };
        store
            .insert_logs(&[chunk(ids[0], 0, 3, "a"), chunk(ids[1], 0, 50_000, "b")])
            .expect("insert");
        store
            .insert_logs(&[chunk(ids[0], 3, 2, "a")])
            .expect("insert");
        let (rows, longest): (i64, i64) = store
            .conn()
            .query_row(
                "SELECT count(*), max(length(text)) FROM log_chunks",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .expect("rows");
        assert!(rows > 40, "{rows} rows");
        assert!(
            longest <= crate::store::STORED_CHUNK_BYTES as i64,
            "{longest}"
        );
        assert_eq!(store.run_log_lines("r1").expect("count"), 50_005);
        let lines: Vec<(i64, String)> = store
            .run_window("r1", 25_003, 1000)
            .expect("window")
            .iter()
            .flat_map(|p| p.lines().map(|(i, t)| (p.chunk.line0 + i, t.to_string())))
            .collect();
        assert_eq!(lines.len(), 1000);
        assert_eq!(lines[0], (25_003, "b line 25000".to_string()));
        assert_eq!(lines[999], (26_002, "b line 25999".to_string()));
        let tail = store.run_window("r1", 50_002, 1000).expect("tail");
        let tail: Vec<String> = tail
            .iter()
            .flat_map(|p| p.lines().map(|(_, t)| t.to_string()))
            .collect();
        assert_eq!(tail, ["b line 49999", "a line 3", "a line 4"]);
        let step = store.step_logs_after(ids[1], 41_999, 2).expect("step");
        assert_eq!(
            step.iter()
                .map(|l| (l.seq, l.text.as_str()))
                .collect::<Vec<_>>(),
            [(42_000, "b line 42000"), (42_001, "b line 42001")]
        );
        assert_eq!(store.step_log_lines(ids[1]).expect("count"), 50_000);
        let after = store
            .run_window_after("r1", lines_chunk(&store, ids[1], 30_000), 30_000, 1)
            .expect("after");
        assert_eq!(
            after[0].lines().next().map(|(_, t)| t),
            Some("b line 30001")
        );
    }

    fn lines_chunk(store: &Store, step: i64, seq: i64) -> i64 {
        store
            .conn()
            .query_row(
                "SELECT id FROM log_chunks WHERE step_id = ?1 AND first_seq <= ?2 AND last_seq >= ?2",
                [step, seq],
                |r| r.get(0),
            )
            .expect("chunk")
    }
}
