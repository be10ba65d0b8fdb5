//! Queries on the `repos` and `sync_events` tables: what nestr last saw of each repository and
//! the history of assemble and sync results.

use rusqlite::{OptionalExtension, params};
use serde::Serialize;

use super::{Store, StoreError, now_ms};
use crate::model::{SyncAction, SyncResult};
use crate::redact;

/// What to record for one repository after assemble or sync.
#[derive(Debug, Clone)]
pub struct RepoRecord {
    pub name: String,
    pub url: String,
    pub path: String,
    pub branch: Option<String>,
    pub old_head: Option<String>,
    pub head: Option<String>,
    pub result: SyncResult,
    pub message: String,
}

/// A row of the `repos` table.
#[derive(Debug, Clone, Serialize)]
pub struct RepoRow {
    pub name: String,
    pub url: String,
    pub path: String,
    pub branch: Option<String>,
    pub head: Option<String>,
    #[serde(with = "crate::model::time_opt")]
    pub last_sync_at: Option<i64>,
    pub last_sync_result: Option<SyncResult>,
    pub last_sync_message: Option<String>,
}

/// A row of the `sync_events` table.
#[derive(Debug, Clone, Serialize)]
pub struct SyncEvent {
    pub repo: String,
    pub action: SyncAction,
    #[serde(with = "crate::model::time")]
    pub at: i64,
    pub result: SyncResult,
    pub old_head: Option<String>,
    pub new_head: Option<String>,
    pub message: Option<String>,
}

impl Store {
    /// Records the results of one assemble or sync, all in one transaction.
    pub fn record_repo_results(
        &mut self,
        action: SyncAction,
        records: &[RepoRecord],
    ) -> Result<(), StoreError> {
        let at = now_ms();
        self.write(|tx| {
            let mut upsert = tx.prepare_cached(
                "INSERT INTO repos (name, url, path, branch, head, last_sync_at, last_sync_result,
                                    last_sync_message, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?6)
                 ON CONFLICT (name) DO UPDATE SET
                    url = excluded.url, path = excluded.path,
                    branch = coalesce(excluded.branch, repos.branch),
                    head = coalesce(excluded.head, repos.head),
                    last_sync_at = excluded.last_sync_at,
                    last_sync_result = excluded.last_sync_result,
                    last_sync_message = excluded.last_sync_message,
                    updated_at = excluded.updated_at",
            )?;
            let mut event = tx.prepare_cached(
                "INSERT INTO sync_events (repo, action, at, result, old_head, new_head, message)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?;
            for r in records {
                let message = redact::text(&r.message);
                upsert.execute(params![
                    r.name,
                    redact::url(&r.url),
                    r.path,
                    r.branch,
                    r.head,
                    at,
                    r.result.as_str(),
                    message,
                ])?;
                event.execute(params![
                    r.name,
                    action.as_str(),
                    at,
                    r.result.as_str(),
                    r.old_head,
                    r.head,
                    message,
                ])?;
            }
            Ok(())
        })
    }

    /// Every repository nestr has recorded, by name.
    pub fn repos(&self) -> Result<Vec<RepoRow>, StoreError> {
        let mut stmt = self.conn().prepare_cached(
            "SELECT name, url, path, branch, head, last_sync_at, last_sync_result,
                    last_sync_message FROM repos ORDER BY name",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(RepoRow {
                name: r.get(0)?,
                url: r.get(1)?,
                path: r.get(2)?,
                branch: r.get(3)?,
                head: r.get(4)?,
                last_sync_at: r.get(5)?,
                last_sync_result: r.get(6)?,
                last_sync_message: r.get(7)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The head nestr last recorded for `repo`.
    pub fn last_head(&self, repo: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .conn()
            .query_row("SELECT head FROM repos WHERE name = ?1", [repo], |r| {
                r.get(0)
            })
            .optional()?
            .flatten())
    }

    /// The newest `limit` sync events, optionally for one repository, newest first.
    pub fn sync_events(
        &self,
        repo: Option<&str>,
        limit: usize,
    ) -> Result<Vec<SyncEvent>, StoreError> {
        let mut stmt = self.conn().prepare_cached(
            "SELECT repo, action, at, result, old_head, new_head, message FROM sync_events
             WHERE ?1 IS NULL OR repo = ?1 ORDER BY id DESC LIMIT ?2",
        )?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = stmt.query_map(params![repo, limit], |r| {
            Ok(SyncEvent {
                repo: r.get(0)?,
                action: r.get(1)?,
                at: r.get(2)?,
                result: r.get(3)?,
                old_head: r.get(4)?,
                new_head: r.get(5)?,
                message: r.get(6)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_redacted_and_queryable() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let mut store = Store::open(dir.path())?;
        store.record_repo_results(
            SyncAction::Sync,
            &[RepoRecord {
                name: "api".into(),
                url: "https://bob:tok3n@example.com/api.git".into(),
                path: "api".into(),
                branch: Some("main".into()),
                old_head: None,
                head: Some("a".repeat(40)),
                result: SyncResult::Failed,
                message: "fetch https://bob:tok3n@example.com/api.git: refused".into(),
            }],
        )?;
        let rows = store.repos()?;
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].url, "https://***@example.com/api.git");
        assert!(
            !rows[0]
                .last_sync_message
                .as_deref()
                .unwrap_or("")
                .contains("tok3n")
        );
        assert_eq!(store.sync_events(Some("api"), 10)?.len(), 1);
        assert_eq!(store.last_head("api")?, Some("a".repeat(40)));
        Ok(())
    }

    #[test]
    fn newer_database_is_refused() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        drop(Store::open(dir.path())?);
        let conn = rusqlite::Connection::open(dir.path().join(super::super::DB_FILE))?;
        conn.pragma_update(None, "user_version", 999)?;
        drop(conn);
        match Store::open(dir.path()) {
            Err(StoreError::TooNew { found: 999, .. }) => Ok(()),
            other => Err(format!("expected TooNew, got {other:?}").into()),
        }
    }
}
