//! The embedded SQLite store at `<state dir>/state.db` (`.nestr/` beside the manifest by default):
//! opening with WAL, `busy_timeout` and foreign keys, applying the migrations in `migrations/`
//! (embedded in the binary), refusing databases newer than this binary, and typed queries per
//! table group (`repos.rs`, `runs.rs`, `tokens.rs`). Every write runs in a `BEGIN IMMEDIATE` transaction.

mod repos;
mod runs;
mod tokens;

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use include_dir::{Dir, include_dir};
use rusqlite::{Connection, OpenFlags, TransactionBehavior};
use rusqlite_migration::{M, Migrations};

pub use repos::{RepoRecord, RepoRow, SyncEvent};
pub use runs::{
    AuditEntry, JournalEntry, LogChunk, LogLine, NewRun, RunFilter, RunHead, RunOwner, RunPage,
    RunRow, RunSummary, ServiceLogLine, StepEnd, StepRow,
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
        let migrations = Migrations::new(files.iter().map(|(_, sql)| M::up(sql)).collect());
        if let Err(source) = migrations.to_latest(&mut self.conn) {
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
}
