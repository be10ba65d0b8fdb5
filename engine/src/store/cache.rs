//! Queries of the operation cache: key manifests (`key_manifests`), each step's key and hit
//! (`steps.cache_key`, `cache_source`, `saved_ms`, `provenance`), stored results
//! (`cache_entries` with the blobs each holds, `cache_blobs`), and remembered program digests
//! (`program_digests`). The blobs themselves are files (see `crate::cache::local`).

use std::collections::HashMap;

use rusqlite::{OptionalExtension, params};
use serde::Serialize;

use super::{Store, StoreError, now_ms};

/// A stored result.
#[derive(Debug, Clone)]
pub struct CacheEntry {
    pub key: String,
    pub operation: String,
    pub service: String,
    /// JSON: see `crate::cache::StoredResult`.
    pub result: String,
    pub run_id: Option<String>,
    pub created_at: i64,
}

/// What `nestr cache stats` shows.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct CacheStats {
    pub entries: i64,
    /// Bytes of blobs the entries hold (compressed; a blob shared by two entries counts once).
    pub bytes: i64,
    pub blobs: i64,
    /// Steps that were hits, over all recorded runs.
    pub hits: i64,
    /// Steps with a key that ran (misses), over all recorded runs.
    pub misses: i64,
    /// Time the hits saved, ms.
    pub saved_ms: i64,
}

impl Store {
    /// Records the key manifests of run `run_id`'s steps (`(key, manifest text)`), each once
    /// (with the first run that had it). A step's own key is written with its start or its end
    /// (`Store::start_step`, `Store::finish_step`, `Store::record_cached_steps`): a run of hits
    /// writes each step's row once, not once more for its key.
    pub fn record_key_manifests(
        &mut self,
        run_id: &str,
        keys: &[(&str, &str)],
    ) -> Result<(), StoreError> {
        if keys.is_empty() {
            return Ok(());
        }
        self.write(|tx| {
            let mut put = tx.prepare_cached(
                "INSERT OR IGNORE INTO key_manifests (key, manifest, run_id) VALUES (?1, ?2, ?3)",
            )?;
            for (key, text) in keys {
                put.execute(params![key, text, run_id])?;
            }
            Ok(())
        })
    }

    /// The key manifest stored for `key`.
    pub fn key_manifest(&self, key: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .conn()
            .query_row(
                "SELECT manifest FROM key_manifests WHERE key = ?1",
                [key],
                |r| r.get(0),
            )
            .optional()?)
    }

    /// The key of the step of `service` in run `run_id`, if it has one.
    pub fn step_key(&self, run_id: &str, service: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .conn()
            .query_row(
                "SELECT cache_key FROM steps WHERE run_id = ?1 AND service = ?2",
                [run_id, service],
                |r| r.get::<_, Option<String>>(0),
            )
            .optional()?
            .flatten())
    }

    /// The run that stored the entry under `key`, or else the first run with a step of that
    /// key (that is still recorded).
    pub fn key_run(&self, key: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .conn()
            .query_row(
                "SELECT coalesce(
                    (SELECT run_id FROM cache_entries WHERE key = ?1),
                    (SELECT k.run_id FROM key_manifests k JOIN runs r ON r.id = k.run_id
                     WHERE k.key = ?1))",
                [key],
                |r| r.get(0),
            )
            .optional()?
            .flatten())
    }

    /// Other keys `service`'s steps of `operation` had, newest first (at most `limit`): what
    /// `cache explain` compares against. Stored entries come first.
    pub fn other_keys(
        &self,
        operation: &str,
        service: &str,
        not: &str,
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let mut stmt = self.conn().prepare_cached(
            "SELECT key FROM (
                SELECT key, 0 AS o, created_at AS at FROM cache_entries
                    WHERE operation = ?1 AND service = ?2 AND key != ?3
                UNION ALL
                SELECT s.cache_key, 1, r.created_at FROM runs r
                    CROSS JOIN steps s ON s.run_id = r.id AND s.service = ?2
                    WHERE r.operation = ?1 AND s.cache_key IS NOT NULL AND s.cache_key != ?3)
             ORDER BY o, at DESC LIMIT ?4",
        )?;
        let rows = stmt.query_map(params![operation, service, not, limit * 4], |r| r.get(0))?;
        let mut out: Vec<String> = Vec::new();
        for k in rows {
            let k: String = k?;
            if !out.contains(&k) {
                out.push(k);
            }
            if out.len() >= usize::try_from(limit).unwrap_or(usize::MAX) {
                break;
            }
        }
        Ok(out)
    }

    /// Marks the entries under `keys` used now (what least-recently-used pruning goes by), in
    /// one transaction.
    pub fn touch_cache_entries(&mut self, keys: &[String]) -> Result<(), StoreError> {
        if keys.is_empty() {
            return Ok(());
        }
        let now = now_ms();
        self.write(|tx| touch_cache_entries_tx(tx, keys, now))
    }

    /// The stored result under `key` (see [`Store::touch_cache_entries`] to mark it used).
    pub fn cache_entry(&mut self, key: &str) -> Result<Option<CacheEntry>, StoreError> {
        Ok(self.cache_entries(&[key])?.remove(key))
    }

    /// The stored results under `keys` (those there are), by key, read by one query (a run
    /// looks up the keys of all its steps at once).
    pub fn cache_entries(&self, keys: &[&str]) -> Result<HashMap<String, CacheEntry>, StoreError> {
        let mut stmt = self.conn().prepare_cached(
            "SELECT c.key, c.operation, c.service, c.result, c.run_id, c.created_at
             FROM json_each(?1) AS j JOIN cache_entries c ON c.key = j.value",
        )?;
        let keys = serde_json::to_string(keys).unwrap_or_else(|_| "[]".into());
        let rows = stmt.query_map([keys], |r| {
            Ok(CacheEntry {
                key: r.get(0)?,
                operation: r.get(1)?,
                service: r.get(2)?,
                result: r.get(3)?,
                run_id: r.get(4)?,
                created_at: r.get(5)?,
            })
        })?;
        let mut found = HashMap::new();
        for entry in rows {
            let entry = entry?;
            found.insert(entry.key.clone(), entry);
        }
        Ok(found)
    }

    /// Stores a result with the blobs it holds (`(digest, stored size)`); an entry already
    /// stored under the key is replaced.
    pub fn put_cache_entry(
        &mut self,
        entry: &CacheEntry,
        blobs: &[(String, u64)],
    ) -> Result<(), StoreError> {
        self.put_cache_entries(&[(entry, blobs)])
    }

    /// Stores results as [`Store::put_cache_entry`] does, all in one transaction (a run that
    /// fetched many from the remote cache).
    pub fn put_cache_entries(
        &mut self,
        entries: &[(&CacheEntry, &[(String, u64)])],
    ) -> Result<(), StoreError> {
        let now = now_ms();
        self.write(|tx| {
            let mut delete = tx.prepare_cached("DELETE FROM cache_entries WHERE key = ?1")?;
            let mut insert = tx.prepare_cached(
                "INSERT INTO cache_entries (key, operation, service, result, size, run_id,
                     created_at, used_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7)",
            )?;
            let mut put = tx.prepare_cached(
                "INSERT OR IGNORE INTO cache_blobs (key, digest, size) VALUES (?1, ?2, ?3)",
            )?;
            for (entry, blobs) in entries {
                let size: u64 = blobs.iter().map(|(_, s)| s).sum();
                delete.execute([&entry.key])?;
                insert.execute(params![
                    entry.key,
                    entry.operation,
                    entry.service,
                    entry.result,
                    i64::try_from(size).unwrap_or(i64::MAX),
                    entry.run_id,
                    now
                ])?;
                for (d, s) in blobs.iter() {
                    put.execute(params![entry.key, d, i64::try_from(*s).unwrap_or(i64::MAX)])?;
                }
            }
            Ok(())
        })
    }

    /// Drops the entry under `key` (its blobs were found missing or corrupt).
    pub fn drop_cache_entry(&mut self, key: &str) -> Result<(), StoreError> {
        self.write(|tx| {
            tx.execute("DELETE FROM cache_entries WHERE key = ?1", [key])?;
            tx.execute("DELETE FROM cache_use WHERE key = ?1", [key])?;
            Ok(())
        })
    }

    /// Deletes entries used before `older_than` (Unix ms), then the least recently used ones
    /// until the blobs they hold fit in `max_size` bytes. Returns how many entries went and the
    /// digests of blobs no entry holds any more (for the caller to delete).
    pub fn prune_cache(
        &mut self,
        max_size: Option<u64>,
        older_than: Option<i64>,
    ) -> Result<(usize, Vec<String>), StoreError> {
        self.write(|tx| {
            let mut removed = 0usize;
            // The digests of the entries that go, to check whether anything else holds them.
            tx.execute_batch("CREATE TEMP TABLE IF NOT EXISTS gone (digest TEXT PRIMARY KEY) WITHOUT ROWID; DELETE FROM gone;")?;
            let forget = |tx: &rusqlite::Transaction<'_>, key: &str| -> rusqlite::Result<()> {
                tx.execute(
                    "INSERT OR IGNORE INTO gone SELECT digest FROM cache_blobs WHERE key = ?1",
                    [key],
                )?;
                tx.execute("DELETE FROM cache_entries WHERE key = ?1", [key])?;
                tx.execute("DELETE FROM cache_use WHERE key = ?1", [key])?;
                Ok(())
            };
            // When each entry was last used: stored, or used since (`cache_use`).
            const USED: &str = "max(e.used_at, coalesce((SELECT u.used_at FROM cache_use u
                                                         WHERE u.key = e.key), 0))";
            if let Some(t) = older_than {
                let keys: Vec<String> = tx
                    .prepare(&format!("SELECT e.key FROM cache_entries e WHERE {USED} < ?1"))?
                    .query_map([t], |r| r.get(0))?
                    .collect::<Result<_, _>>()?;
                for k in &keys {
                    forget(tx, k)?;
                }
                removed += keys.len();
            }
            if let Some(max) = max_size {
                let max = i64::try_from(max).unwrap_or(i64::MAX);
                let mut total: i64 = tx.query_row(
                    "SELECT coalesce(sum(size), 0) FROM (SELECT digest, max(size) AS size
                         FROM cache_blobs GROUP BY digest)",
                    [],
                    |r| r.get(0),
                )?;
                let lru: Vec<String> = tx
                    .prepare(&format!("SELECT e.key FROM cache_entries e ORDER BY {USED}, e.key"))?
                    .query_map([], |r| r.get(0))?
                    .collect::<Result<_, _>>()?;
                for k in lru {
                    if total <= max {
                        break;
                    }
                    // Entries share blobs: what an entry frees is only the blobs no other
                    // entry holds.
                    let blobs: Vec<(String, i64)> = tx
                        .prepare_cached("SELECT digest, size FROM cache_blobs WHERE key = ?1")?
                        .query_map([&k], |r| Ok((r.get(0)?, r.get(1)?)))?
                        .collect::<Result<_, _>>()?;
                    forget(tx, &k)?;
                    for (digest, size) in blobs {
                        let held: bool = tx
                            .prepare_cached("SELECT EXISTS (SELECT 1 FROM cache_blobs WHERE digest = ?1)")?
                            .query_row([&digest], |r| r.get(0))?;
                        if !held {
                            total -= size;
                        }
                    }
                    removed += 1;
                }
            }
            let orphans: Vec<String> = tx
                .prepare(
                    "SELECT digest FROM gone WHERE digest NOT IN (SELECT digest FROM cache_blobs)",
                )?
                .query_map([], |r| r.get(0))?
                .collect::<Result<_, _>>()?;
            tx.execute("DELETE FROM gone", [])?;
            tx.execute(
                "DELETE FROM cache_use WHERE key NOT IN (SELECT key FROM cache_entries)",
                [],
            )?;
            Ok((removed, orphans))
        })
    }

    /// Whether any entry holds blob `digest`.
    pub fn blob_held(&self, digest: &str) -> Result<bool, StoreError> {
        Ok(self
            .conn()
            .query_row(
                "SELECT 1 FROM cache_blobs WHERE digest = ?1 LIMIT 1",
                [digest],
                |_| Ok(()),
            )
            .optional()?
            .is_some())
    }

    pub fn cache_stats(&self) -> Result<CacheStats, StoreError> {
        self.snapshot(|s| {
            let (entries, _): (i64, i64) = s.conn().query_row(
                "SELECT count(*), coalesce(sum(size), 0) FROM cache_entries",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?;
            let (blobs, bytes): (i64, i64) = s.conn().query_row(
                "SELECT count(*), coalesce(sum(size), 0) FROM (SELECT digest, max(size) AS size
                     FROM cache_blobs GROUP BY digest)",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?;
            let (hits, misses, saved): (i64, i64, i64) = s.conn().query_row(
                "SELECT coalesce(sum(status = 'cached'), 0),
                        coalesce(sum(status != 'cached' AND cache_key IS NOT NULL
                                     AND started_at IS NOT NULL), 0),
                        coalesce(sum(saved_ms), 0)
                 FROM steps",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )?;
            Ok(CacheStats {
                entries,
                bytes,
                blobs,
                hits,
                misses,
                saved_ms: saved,
            })
        })
    }

    /// The remembered sha256 of the program file at `path`, if its size and modification time
    /// are still those it was hashed at.
    pub fn program_digest(
        &self,
        path: &str,
        size: u64,
        mtime_ns: i64,
    ) -> Result<Option<String>, StoreError> {
        Ok(self
            .conn()
            .prepare_cached(
                "SELECT sha256 FROM program_digests WHERE path = ?1 AND size = ?2 AND mtime_ns = ?3",
            )?
            .query_row(
                params![path, i64::try_from(size).unwrap_or(i64::MAX), mtime_ns],
                |r| r.get(0),
            )
            .optional()?)
    }

    /// Remembers program digests (`(path, size, mtime ns, sha256)`).
    pub fn remember_program_digests(
        &mut self,
        digests: &[(String, u64, i64, String)],
    ) -> Result<(), StoreError> {
        if digests.is_empty() {
            return Ok(());
        }
        self.write(|tx| {
            let mut put = tx.prepare_cached(
                "INSERT OR REPLACE INTO program_digests (path, size, mtime_ns, sha256)
                 VALUES (?1, ?2, ?3, ?4)",
            )?;
            for (p, size, mtime, d) in digests {
                put.execute(params![
                    p,
                    i64::try_from(*size).unwrap_or(i64::MAX),
                    mtime,
                    d
                ])?;
            }
            Ok(())
        })
    }
}

/// Marks the entries under `keys` used at `now` (in `cache_use`), in one statement.
pub(super) fn touch_cache_entries_tx(
    tx: &rusqlite::Transaction<'_>,
    keys: &[impl AsRef<str>],
    now: i64,
) -> rusqlite::Result<()> {
    let keys: Vec<&str> = keys.iter().map(AsRef::as_ref).collect();
    let keys = serde_json::to_string(&keys).unwrap_or_else(|_| "[]".into());
    tx.prepare_cached(
        "INSERT INTO cache_use (key, used_at) SELECT value, ?2 FROM json_each(?1) WHERE true
         ON CONFLICT (key) DO UPDATE SET used_at = excluded.used_at",
    )?
    .execute(params![keys, now])?;
    Ok(())
}
