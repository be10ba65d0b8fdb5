//! API tokens (`api_tokens`): create (the caller gets the token once; only its SHA-256 hash is
//! stored), list, revoke, and the active hashes the API compares a presented token against.

use rusqlite::params;
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::{Store, StoreError, now_ms};
use crate::model::Scope;

/// A token as listed (never the token itself).
#[derive(Debug, Clone, Serialize)]
pub struct TokenRow {
    pub id: i64,
    pub name: Option<String>,
    pub scope: Scope,
    /// The first characters of the token.
    pub prefix: String,
    #[serde(with = "crate::model::time")]
    pub created_at: i64,
    #[serde(with = "crate::model::time_opt")]
    pub revoked_at: Option<i64>,
}

/// An active token's hash, for comparison.
#[derive(Debug, Clone)]
pub struct ActiveToken {
    pub id: i64,
    pub scope: Scope,
    pub hash: [u8; 32],
}

/// The SHA-256 of a token.
pub fn token_hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Characters of a token shown in listings.
const PREFIX_LEN: usize = 12;

impl Store {
    /// Stores the hash of `token` (made by the caller from a secure random source).
    pub fn create_token(
        &mut self,
        token: &str,
        scope: Scope,
        name: Option<&str>,
    ) -> Result<TokenRow, StoreError> {
        let hash = hex::encode(token_hash(token));
        let prefix: String = token.chars().take(PREFIX_LEN).collect();
        let now = now_ms();
        let id = self.write(|tx| {
            tx.execute(
                "INSERT INTO api_tokens (name, scope, hash, prefix, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![name, scope.as_str(), hash, prefix, now],
            )?;
            Ok(tx.last_insert_rowid())
        })?;
        Ok(TokenRow {
            id,
            name: name.map(str::to_string),
            scope,
            prefix,
            created_at: now,
            revoked_at: None,
        })
    }

    /// Every token, revoked ones included, oldest first.
    pub fn tokens(&self) -> Result<Vec<TokenRow>, StoreError> {
        let mut stmt = self.conn().prepare_cached(
            "SELECT id, name, scope, prefix, created_at, revoked_at FROM api_tokens ORDER BY id",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(TokenRow {
                id: r.get(0)?,
                name: r.get(1)?,
                scope: r.get(2)?,
                prefix: r.get(3)?,
                created_at: r.get(4)?,
                revoked_at: r.get(5)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Revokes token `id`; false when there is no such active token.
    pub fn revoke_token(&mut self, id: i64) -> Result<bool, StoreError> {
        let now = now_ms();
        let n = self.write(|tx| {
            tx.execute(
                "UPDATE api_tokens SET revoked_at = ?2 WHERE id = ?1 AND revoked_at IS NULL",
                params![id, now],
            )
        })?;
        Ok(n > 0)
    }

    /// The tokens that are not revoked.
    pub fn active_tokens(&self) -> Result<Vec<ActiveToken>, StoreError> {
        let mut stmt = self
            .conn()
            .prepare_cached("SELECT id, scope, hash FROM api_tokens WHERE revoked_at IS NULL")?;
        let rows = stmt.query_map([], |r| {
            let hex_hash: String = r.get(2)?;
            let mut hash = [0u8; 32];
            // A malformed stored hash matches nothing (all zeros is no token's hash).
            let _ = hex::decode_to_slice(hex_hash, &mut hash);
            Ok(ActiveToken {
                id: r.get(0)?,
                scope: r.get(1)?,
                hash,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// A number that changes whenever another connection commits to the database (`PRAGMA
    /// data_version`): what this connection read stays true while it stays the same.
    pub fn data_version(&self) -> Result<i64, StoreError> {
        Ok(self
            .conn()
            .query_row("PRAGMA data_version", [], |r| r.get(0))?)
    }
}
