//! The operation cache. A step of an operation with `cache = true` has a key ([`key`]: the hash
//! of a stored, human-readable key manifest); a succeeded step's result — its report, its log
//! and the files its `outputs` globs match — is stored under that key ([`local`]: blobs by
//! digest, entries in the state database), and a later step with the same key is not run: it
//! ends `cached` with the stored report, its log replayed and its outputs restored, each verified
//! by sha256 (a missing or corrupt piece makes it a miss, never a false success). [`explain`]
//! says which parts of a key manifest changed; [`provenance`] turns what a step recorded into an
//! in-toto statement.

pub mod explain;
pub mod key;
pub mod local;
pub mod provenance;
pub mod remote;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::model::{Artifact, Stream, TestCounts};
use crate::store::{CacheEntry, Store};
pub use key::{Keys, StepKey};
pub use local::Blobs;

/// The size the local cache is pruned to after a run stores results, unless `[cache] max_size`
/// says otherwise: 2 GiB.
pub const DEFAULT_MAX_SIZE: u64 = 2 << 30;

/// Most output files one step may store.
const MAX_OUTPUT_FILES: usize = 100_000;

/// A file a step produced, as stored.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct OutputFile {
    /// Relative to the service folder, `/`-separated.
    pub path: String,
    pub sha256: String,
    pub size: u64,
    pub executable: bool,
}

/// One chunk of a stored log.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LogPiece {
    pub stream: Stream,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub level: Option<String>,
    pub text: String,
}

/// A stored result: what a hit reports instead of running.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredResult {
    pub summary: String,
    pub tests: Option<TestCounts>,
    pub artifacts: Vec<Artifact>,
    pub metrics: serde_json::Value,
    /// How long the step ran when it was stored: what a hit saves.
    pub duration_ms: u64,
    /// The blob of its log (JSON lines of [`LogPiece`]).
    pub log: String,
    pub outputs: Vec<OutputFile>,
    /// Where it was produced.
    pub run_id: String,
    pub service: String,
}

/// A usable stored result, its outputs already restored.
pub struct Hit {
    pub result: StoredResult,
    pub log: Arc<Vec<LogPiece>>,
}

/// Logs a run has already read and verified, by digest: many entries share one (an empty log,
/// the same few lines), and each is then read, decompressed and checked once per run. Only
/// small logs are kept.
#[derive(Default)]
pub struct LogMemo(std::sync::Mutex<HashMap<String, Arc<Vec<LogPiece>>>>);

/// The largest log (its text, in bytes) a [`LogMemo`] keeps.
const MEMO_LOG_BYTES: usize = 64 * 1024;

impl LogMemo {
    fn read(&self, blobs: &Blobs, digest: &str) -> Result<Arc<Vec<LogPiece>>, String> {
        let memo = |m: &Self| {
            m.0.lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(digest)
                .cloned()
        };
        if let Some(log) = memo(self) {
            return Ok(log);
        }
        let log = Arc::new(read_log(blobs, digest)?);
        if log.iter().map(|p| p.text.len()).sum::<usize>() <= MEMO_LOG_BYTES {
            self.0
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(digest.to_string(), log.clone());
        }
        Ok(log)
    }
}

/// Uses `entry`, a result stored in the local cache: verifies its log and outputs and restores
/// the outputs into the service folder (`service_dir` resolves it, only for an entry with
/// outputs). `Ok(None)`: outputs but no service folder to restore them into. `Err`: the entry is
/// unusable (the reason; the entry is dropped from `store` and the step runs).
pub fn lookup(
    store: &mut Store,
    blobs: &Blobs,
    logs: &LogMemo,
    entry: CacheEntry,
    service_dir: impl FnOnce() -> Result<PathBuf, String>,
) -> Result<Option<Hit>, String> {
    let key = entry.key.as_str();
    let result: Result<StoredResult, String> =
        serde_json::from_str(&entry.result).map_err(|e| format!("its record cannot be read ({e})"));
    let dir = match &result {
        Ok(r) if !r.outputs.is_empty() => match service_dir() {
            Ok(d) => Some(d),
            Err(_) => return Ok(None),
        },
        _ => None,
    };
    let usable = result.and_then(|result| {
        let log = logs.read(blobs, &result.log)?;
        if let Some(dir) = &dir {
            restore_outputs(blobs, &result.outputs, dir)?;
        }
        Ok(Hit { result, log })
    });
    if usable.is_err() {
        // Every corrupt blob of the entry goes, so that storing the result again rewrites it.
        if let Ok(r) = serde_json::from_str::<StoredResult>(&entry.result) {
            for d in std::iter::once(&r.log).chain(r.outputs.iter().map(|o| &o.sha256)) {
                let _ = blobs.copy_to(d, &mut std::io::sink(), u64::MAX / 2);
            }
        }
        let _ = store.drop_cache_entry(key);
    }
    usable.map(Some)
}

fn read_log(blobs: &Blobs, digest: &str) -> Result<Vec<LogPiece>, String> {
    let bytes = blobs.get(digest).map_err(|e| format!("its log: {e}"))?;
    let text = String::from_utf8(bytes).map_err(|_| "its log is not UTF-8".to_string())?;
    text.lines()
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_str(l).map_err(|e| format!("its log cannot be read ({e})")))
        .collect()
}

/// A stored output path, checked again before anything is written: relative, no `..`.
fn safe_rel(path: &str) -> Option<PathBuf> {
    let p = Path::new(path);
    let ok = !path.is_empty()
        && p.components()
            .all(|c| matches!(c, std::path::Component::Normal(_)));
    ok.then(|| p.to_path_buf())
}

/// Writes every output into a temporary file beside its place, verified by sha256, and only
/// when all are good renames them into place (nothing is left half-restored).
fn restore_outputs(
    blobs: &Blobs,
    outputs: &[OutputFile],
    service_dir: &Path,
) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let mut staged: Vec<(PathBuf, PathBuf)> = Vec::new();
    let result = (|| {
        for o in outputs {
            let rel = safe_rel(&o.path)
                .ok_or_else(|| format!("output path {:?} leaves the service folder", o.path))?;
            let dest = service_dir.join(&rel);
            let parent = dest.parent().unwrap_or(service_dir);
            std::fs::create_dir_all(parent)
                .map_err(|e| format!("cannot make {}: {e}", parent.display()))?;
            let real = std::fs::canonicalize(parent)
                .map_err(|e| format!("cannot resolve {}: {e}", parent.display()))?;
            if !real.starts_with(service_dir) {
                return Err(format!(
                    "output {} would be written outside the service folder (through a symbolic link)",
                    o.path
                ));
            }
            let name = dest
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let tmp = real.join(format!(".{name}.nestr-restore.{}", std::process::id()));
            let mut f = std::fs::File::create(&tmp)
                .map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
            staged.push((tmp.clone(), real.join(&name)));
            let n = blobs
                .copy_to(&o.sha256, &mut f, o.size)
                .map_err(|e| format!("output {}: {e}", o.path))?;
            if n != o.size {
                return Err(format!("output {}: its blob has the wrong size", o.path));
            }
            let mode = if o.executable { 0o755 } else { 0o644 };
            let _ = f.set_permissions(std::fs::Permissions::from_mode(mode));
        }
        Ok(())
    })();
    if let Err(e) = result {
        for (tmp, _) in &staged {
            let _ = std::fs::remove_file(tmp);
        }
        return Err(e);
    }
    for (tmp, dest) in &staged {
        // A folder or link where a file goes: replaced only when it is a file or link.
        if let Ok(m) = std::fs::symlink_metadata(dest)
            && m.is_dir()
        {
            let _ = std::fs::remove_file(tmp);
            return Err(format!(
                "{} is a folder; the output cannot be restored",
                dest.display()
            ));
        }
        std::fs::rename(tmp, dest)
            .map_err(|e| format!("cannot restore {}: {e}", dest.display()))?;
    }
    Ok(())
}

/// What a succeeded step left to store.
pub struct ToStore<'a> {
    pub key: &'a str,
    pub operation: &'a str,
    pub service: &'a str,
    pub run_id: &'a str,
    pub step_id: i64,
    pub summary: &'a str,
    pub tests: Option<TestCounts>,
    pub artifacts: &'a [Artifact],
    pub metrics: &'a serde_json::Value,
    pub duration_ms: u64,
    pub service_dir: &'a Path,
    pub outputs: &'a [String],
}

/// Stores a succeeded step's result: its log (read back from the store), the files its
/// `outputs` globs match, and its report. Returns the outputs stored.
pub fn store_result(
    store: &mut Store,
    blobs: &Blobs,
    s: &ToStore<'_>,
) -> Result<Vec<OutputFile>, String> {
    let lines = store.step_logs(s.step_id).map_err(|e| e.to_string())?;
    let mut log = String::new();
    for l in &lines {
        let piece = LogPiece {
            stream: l.stream,
            level: l.level.clone(),
            text: l.text.clone(),
        };
        log.push_str(&serde_json::to_string(&piece).map_err(|e| e.to_string())?);
        log.push('\n');
    }
    let (log_digest, log_size) = blobs
        .put(log.as_bytes())
        .map_err(|e| format!("cannot store the log: {e}"))?;
    let mut held = vec![(log_digest.clone(), log_size)];
    let mut outputs = Vec::new();
    if !s.outputs.is_empty() {
        for (rel, full, executable) in output_files(s.service_dir, s.outputs)? {
            let (digest, size, stored) = blobs
                .put_file(&full)
                .map_err(|e| format!("cannot store output {rel}: {e}"))?;
            held.push((digest.clone(), stored));
            outputs.push(OutputFile {
                path: rel,
                sha256: digest,
                size,
                executable,
            });
        }
    }
    held.sort();
    held.dedup();
    let result = StoredResult {
        summary: s.summary.to_string(),
        tests: s.tests,
        artifacts: s.artifacts.to_vec(),
        metrics: s.metrics.clone(),
        duration_ms: s.duration_ms,
        log: log_digest,
        outputs: outputs.clone(),
        run_id: s.run_id.to_string(),
        service: s.service.to_string(),
    };
    let entry = CacheEntry {
        key: s.key.to_string(),
        operation: s.operation.to_string(),
        service: s.service.to_string(),
        result: serde_json::to_string(&result).map_err(|e| e.to_string())?,
        run_id: Some(s.run_id.to_string()),
        created_at: crate::store::now_ms(),
    };
    store
        .put_cache_entry(&entry, &held)
        .map_err(|e| e.to_string())?;
    Ok(outputs)
}

/// The regular files under `dir` that `globs` match (relative, `/`-separated), with their
/// full paths and whether they are executable; `.git` folders and symbolic links are skipped.
fn output_files(dir: &Path, globs: &[String]) -> Result<Vec<(String, PathBuf, bool)>, String> {
    use std::os::unix::fs::PermissionsExt;
    let mut b = globset::GlobSetBuilder::new();
    for g in globs {
        b.add(
            globset::GlobBuilder::new(g)
                .literal_separator(true)
                .build()
                .map_err(|e| e.to_string())?,
        );
    }
    let set = b.build().map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    let mut stack = vec![(dir.to_path_buf(), String::new())];
    while let Some((folder, rel)) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&folder) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let rel_path = if rel.is_empty() {
                name.clone()
            } else {
                format!("{rel}/{name}")
            };
            let Ok(t) = e.file_type() else { continue };
            if t.is_dir() {
                if name != ".git" {
                    stack.push((e.path(), rel_path));
                }
            } else if t.is_file() && set.is_match(&rel_path) {
                let exec = e
                    .metadata()
                    .map(|m| m.permissions().mode() & 0o111 != 0)
                    .unwrap_or(false);
                out.push((rel_path, e.path(), exec));
                if out.len() > MAX_OUTPUT_FILES {
                    return Err(format!(
                        "the outputs match more than {MAX_OUTPUT_FILES} files; narrow the `outputs` globs"
                    ));
                }
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Bounds the local cache: entries used before `older_than` go, then the least recently used
/// until the rest fit in `max_size`; blobs no entry holds are deleted. Returns (entries, bytes
/// freed).
pub fn prune(
    store: &mut Store,
    blobs: &Blobs,
    max_size: Option<u64>,
    older_than: Option<i64>,
) -> Result<(usize, u64), String> {
    let (entries, orphans) = store
        .prune_cache(max_size, older_than)
        .map_err(|e| e.to_string())?;
    // A blob another process stored for a new entry since is kept.
    let orphans: Vec<String> = orphans
        .into_iter()
        .filter(|d| !store.blob_held(d).unwrap_or(true))
        .collect();
    Ok((entries, blobs.remove(&orphans)))
}
