//! `nestr.lock`: the exact commit of every repository, written by `nestr lock` beside the
//! manifest and read by `assemble --locked` / `sync --locked`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::manifest::Manifest;

/// File name of the lock file, beside `nestr.toml`.
pub const LOCK_FILE: &str = "nestr.lock";
const VERSION: u32 = 1;

/// The lock file's content.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Lockfile {
    pub version: u32,
    #[serde(default)]
    pub repos: BTreeMap<String, LockEntry>,
}

/// One repository's locked commit.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct LockEntry {
    /// Full 40-hex commit id.
    pub commit: String,
    /// The branch checked out when locked (informational).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub branch: Option<String>,
}

impl Lockfile {
    pub fn path(manifest: &Manifest) -> PathBuf {
        manifest.root.join(LOCK_FILE)
    }

    /// Reads and checks the lock file; every commit must be a full id.
    pub fn read(path: &Path) -> Result<Lockfile, String> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            format!(
                "cannot read {}: {e}; run `nestr lock` to write it",
                path.display()
            )
        })?;
        let lock: Lockfile = toml::from_str(&text).map_err(|e| {
            let line = e
                .span()
                .map(|s| crate::manifest::diagnostic::line_col(&text, s.start).0)
                .unwrap_or(1);
            format!("{}:{line}: {}", path.display(), e.message().trim())
        })?;
        if lock.version != VERSION {
            return Err(format!(
                "{}: lock file version {} is not supported (this nestr writes version {VERSION}); \
                 run `nestr lock` again",
                path.display(),
                lock.version
            ));
        }
        for (name, entry) in &lock.repos {
            if git2::Oid::from_str(&entry.commit).is_err() || entry.commit.len() != 40 {
                return Err(format!(
                    "{}: repository `{name}` has an invalid commit `{}`; run `nestr lock` again",
                    path.display(),
                    entry.commit
                ));
            }
        }
        Ok(lock)
    }

    /// Writes the lock file with a header saying what it is.
    pub fn write(&self, path: &Path) -> Result<(), String> {
        let body = toml::to_string_pretty(self).map_err(|e| e.to_string())?;
        let text = format!(
            "# Written by `nestr lock`: the exact commit of every repository.\n\
             # `nestr assemble --locked` and `nestr sync --locked` check out these commits.\n\n{body}"
        );
        let tmp = path.with_extension("lock.tmp");
        std::fs::write(&tmp, text)
            .and_then(|()| std::fs::rename(&tmp, path))
            .map_err(|e| format!("cannot write {}: {e}", path.display()))
    }

    pub fn new(repos: BTreeMap<String, LockEntry>) -> Lockfile {
        Lockfile {
            version: VERSION,
            repos,
        }
    }

    /// The locked commit of `repo`, or an error saying to run `nestr lock`.
    pub fn commit(&self, repo: &str) -> Result<git2::Oid, String> {
        let entry = self.repos.get(repo).ok_or_else(|| {
            format!(
                "{LOCK_FILE} has no entry for repository `{repo}`; run `nestr lock` to update it"
            )
        })?;
        git2::Oid::from_str(&entry.commit).map_err(|e| e.message().to_string())
    }
}
