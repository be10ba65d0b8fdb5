//! The shared remote cache: a server speaking the Bazel remote-cache HTTP protocol (`GET`, `PUT`
//! and `HEAD` on `/ac/<key>` for a step's result and `/cas/<sha256>` for blobs; nginx with
//! WebDAV `PUT`, bazel-remote and most artifact stores do). The action-cache body is nestr's own
//! JSON ([`RemoteEntry`]), so a server shared with Bazel never mixes their entries up.
//!
//! Everything fetched is checked before it is used: an entry must name the key it was fetched
//! by and nestr's cache format, each blob must hash to its name. Anything wrong with the remote —
//! unreachable, slow (past `remote_timeout`), refusing the credential, serving a corrupt blob —
//! is a warning and a local miss, never a failed run or a false hit; after the first failure to
//! reach it the rest of the run does not wait on it again. What a step restores from a remote
//! entry is checked like a local one (outputs stay inside the service folder); what an entry
//! *reports* (its summary and test counts) is trusted as the workspace owner trusts the server:
//! give write access to it as you would push access.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{Blobs, StoredResult};
use crate::manifest::{CacheSettings, RemoteAuth, RemoteCache, remote_url};
use crate::store::CacheEntry;

/// The format an action-cache entry must carry to be used.
pub const FORMAT: &str = "nestr-cache-1";

/// The largest action-cache entry read.
const MAX_ENTRY: u64 = 16 * 1024 * 1024;

/// The largest blob fetched.
const MAX_BLOB: u64 = 4 << 30;

/// Requests made at once when fetching or uploading many entries.
const PARALLEL: usize = 16;

/// The body of `/ac/<key>`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RemoteEntry {
    pub format: String,
    pub key: String,
    pub operation: String,
    pub service: String,
    pub result: StoredResult,
}

/// A configured remote cache.
pub struct Remote {
    base: String,
    read_only: bool,
    /// The `Authorization` header's value (never shown).
    auth: Option<String>,
    agent: ureq::Agent,
    /// Set on the first failure to reach the server.
    down: AtomicBool,
    /// Where fetched blobs are written while they are checked.
    tmp: PathBuf,
    /// Keys whose entry named a blob the server served corrupt: when this run stores their
    /// result, every blob is uploaded again (not skipped because the server has one by that name).
    repair: std::sync::Mutex<std::collections::HashSet<String>>,
}

/// An entry fetched and checked, its blobs already in the local store: ready to be recorded.
pub struct Fetched {
    pub entry: CacheEntry,
    /// Its blobs with the bytes they take locally.
    pub held: Vec<(String, u64)>,
}

impl std::fmt::Debug for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Remote")
            .field("base", &self.base)
            .field("read_only", &self.read_only)
            .finish_non_exhaustive()
    }
}

fn env_flag(name: &str) -> Result<Option<bool>, String> {
    match std::env::var(name) {
        Err(_) => Ok(None),
        Ok(v) => match v.trim().to_ascii_lowercase().as_str() {
            "" => Ok(None),
            "1" | "true" | "yes" | "on" => Ok(Some(true)),
            "0" | "false" | "no" | "off" => Ok(Some(false)),
            _ => Err(format!("{name}={v:?} is not a yes or no; write 1 or 0")),
        },
    }
}

impl Remote {
    /// The remote cache of `[cache]`, with the environment's say: `NESTR_CACHE_REMOTE` sets or
    /// replaces the URL (`off` turns it off), `NESTR_CACHE_REMOTE_READ_ONLY=1` makes it
    /// read-only. `Ok(None)`: none configured. `Err`: configured but unusable (the warning to
    /// show; the run goes on with the local cache only).
    pub fn configure(settings: &CacheSettings, state_dir: &Path) -> Result<Option<Remote>, String> {
        let mut conf: Option<RemoteCache> = settings.remote.clone();
        if let Ok(v) = std::env::var("NESTR_CACHE_REMOTE") {
            let v = v.trim();
            if v.eq_ignore_ascii_case("off") {
                return Ok(None);
            }
            if !v.is_empty() {
                let url = remote_url(v).map_err(|why| format!("NESTR_CACHE_REMOTE {why}"))?;
                let mut c = conf.unwrap_or(RemoteCache {
                    url: String::new(),
                    read_only: false,
                    secret: None,
                    auth: RemoteAuth::Bearer,
                    timeout: crate::manifest::DEFAULT_REMOTE_TIMEOUT,
                });
                c.url = url;
                conf = Some(c);
            }
        }
        let Some(mut conf) = conf else {
            return Ok(None);
        };
        if let Some(ro) = env_flag("NESTR_CACHE_REMOTE_READ_ONLY")? {
            conf.read_only = ro;
        }
        let auth = match &conf.secret {
            None => None,
            Some(name) => {
                let value = std::env::var(name).unwrap_or_default();
                if value.is_empty() {
                    return Err(format!(
                        "the remote cache's credential `{name}` is not set in the environment; \
                         the remote cache is not used (set {name}, or remove `remote_secret`)"
                    ));
                }
                Some(match conf.auth {
                    RemoteAuth::Bearer => format!("Bearer {value}"),
                    RemoteAuth::Basic => {
                        use base64::Engine;
                        format!(
                            "Basic {}",
                            base64::engine::general_purpose::STANDARD.encode(value)
                        )
                    }
                })
            }
        };
        let config = ureq::Agent::config_builder()
            .timeout_global(Some(conf.timeout))
            .timeout_connect(Some(conf.timeout.min(Duration::from_secs(3))))
            .http_status_as_error(false)
            .max_idle_connections_per_host(PARALLEL)
            .max_redirects(0)
            .user_agent(concat!("nestr/", env!("CARGO_PKG_VERSION")))
            .build();
        let agent = ureq::Agent::with_parts(
            config,
            ureq::unversioned::transport::DefaultConnector::default(),
            MemoResolver::default(),
        );
        Ok(Some(Remote {
            base: conf.url,
            read_only: conf.read_only,
            auth,
            agent,
            down: AtomicBool::new(false),
            tmp: state_dir.join("cache").join("tmp"),
            repair: Default::default(),
        }))
    }

    /// The server's URL (without credentials).
    pub fn url(&self) -> &str {
        &self.base
    }

    pub fn read_only(&self) -> bool {
        self.read_only
    }

    /// Whether a request failed to reach it during this run.
    pub fn is_down(&self) -> bool {
        self.down.load(Ordering::Relaxed)
    }

    fn get(&self, path: &str, head: bool) -> Result<ureq::http::Response<ureq::Body>, String> {
        if self.is_down() {
            return Err(NOT_ANSWERING.into());
        }
        let url = format!("{}/{path}", self.base);
        let mut r = if head {
            self.agent.head(&url)
        } else {
            self.agent.get(&url)
        };
        if let Some(a) = &self.auth {
            r = r.header("Authorization", a);
        }
        r.call().map_err(|e| self.failed(&e))
    }

    /// Notes a request that did not get an answer; the reason to show.
    fn failed(&self, e: &ureq::Error) -> String {
        self.down.store(true, Ordering::Relaxed);
        match e {
            ureq::Error::Timeout(_) => "it did not answer in time".into(),
            ureq::Error::Io(io) => format!("it cannot be reached ({io})"),
            other => format!("it cannot be reached ({other})"),
        }
    }

    fn status_error(path: &str, status: u16) -> String {
        match status {
            401 | 403 => format!("the server refused the credential for {path} ({status})"),
            _ => format!("the server answered {status} for {path}"),
        }
    }

    /// Fetches the entry stored under `key` and every blob it names that the local store lacks,
    /// each checked. `Ok(None)`: the server has no entry for it.
    pub fn fetch(&self, key: &str, blobs: &Blobs) -> Result<Option<Fetched>, String> {
        let path = format!("ac/{key}");
        let resp = self.get(&path, false)?;
        match resp.status().as_u16() {
            200 => {}
            404 => return Ok(None),
            s => return Err(Self::status_error(&path, s)),
        }
        let body = resp
            .into_body()
            .into_with_config()
            .limit(MAX_ENTRY)
            .read_to_vec()
            .map_err(|e| format!("its entry {}… could not be read ({e})", &key[..12]))?;
        let entry: RemoteEntry = serde_json::from_slice(&body)
            .map_err(|e| format!("its entry {}… is not a nestr result ({e})", &key[..12]))?;
        if entry.format != FORMAT {
            return Err(format!(
                "its entry {}… has format {:?}, not {FORMAT:?}",
                &key[..12],
                entry.format
            ));
        }
        if entry.key != key {
            return Err(format!(
                "its entry {}… names another key; it is not used",
                &key[..12]
            ));
        }
        // What nestr itself shows of an entry (its run id in the replay notice, its service and
        // operation) must be what nestr writes: a server cannot put words into a notice.
        let word = |t: &str| {
            !t.is_empty()
                && t.len() <= 64
                && t.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        };
        if !word(&entry.result.run_id) || !word(&entry.service) || !word(&entry.operation) {
            return Err(format!(
                "its entry {}… names a run, service or operation nestr would not write; it is not used",
                &key[..12]
            ));
        }
        if entry.result.outputs.len() > super::MAX_OUTPUT_FILES {
            return Err(format!("its entry {}… names too many outputs", &key[..12]));
        }
        let mut held = Vec::new();
        let digests = std::iter::once((entry.result.log.as_str(), None)).chain(
            entry
                .result
                .outputs
                .iter()
                .map(|o| (o.sha256.as_str(), Some(o.size))),
        );
        for (digest, size) in digests {
            if !blobs.has(digest)
                && let Err(why) = self.fetch_blob(digest, size, blobs)
            {
                if why.contains("corrupt") || why.contains("missing") {
                    self.repair
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(key.to_string());
                }
                return Err(why);
            }
            let stored = blobs
                .stored_size(digest)
                .ok_or_else(|| format!("blob {digest} was not kept"))?;
            held.push((digest.to_string(), stored));
        }
        held.sort();
        held.dedup();
        let result = serde_json::to_string(&entry.result).map_err(|e| e.to_string())?;
        Ok(Some(Fetched {
            entry: CacheEntry {
                key: entry.key,
                operation: entry.operation,
                service: entry.service,
                result,
                run_id: Some(entry.result.run_id.clone()),
                created_at: crate::store::now_ms(),
            },
            held,
        }))
    }

    /// Fetches one blob into the local store, refusing it unless it hashes to `digest` (and has
    /// `size` bytes, when known).
    fn fetch_blob(&self, digest: &str, size: Option<u64>, blobs: &Blobs) -> Result<(), String> {
        if !super::key::is_digest(digest) {
            return Err(format!("{digest:?} is not a sha256 digest"));
        }
        let short = &digest[..12];
        let path = format!("cas/{digest}");
        let resp = self.get(&path, false)?;
        match resp.status().as_u16() {
            200 => {}
            404 => return Err(format!("its blob {short}… is missing")),
            s => return Err(Self::status_error(&path, s)),
        }
        std::fs::create_dir_all(&self.tmp).map_err(|e| e.to_string())?;
        let tmp = tempfile::NamedTempFile::new_in(&self.tmp).map_err(|e| e.to_string())?;
        let mut reader = resp
            .into_body()
            .into_with_config()
            .limit(size.map_or(MAX_BLOB, |s| s.saturating_add(1)).min(MAX_BLOB))
            .reader();
        let mut h = Sha256::new();
        let mut total = 0u64;
        let mut buf = vec![0u8; 64 * 1024];
        let mut file = tmp.as_file();
        loop {
            let n = reader
                .read(&mut buf)
                .map_err(|e| format!("its blob {short}… could not be read ({e})"))?;
            if n == 0 {
                break;
            }
            total += n as u64;
            h.update(&buf[..n]);
            file.write_all(&buf[..n]).map_err(|e| e.to_string())?;
        }
        if hex::encode(h.finalize()) != digest || size.is_some_and(|s| s != total) {
            return Err(format!(
                "its blob {short}… is corrupt (its content does not hash to its name)"
            ));
        }
        file.flush().map_err(|e| e.to_string())?;
        let (got, _, _) = blobs
            .put_file(tmp.path())
            .map_err(|e| format!("blob {short}… could not be stored locally: {e}"))?;
        if got != digest {
            return Err(format!("blob {short}… changed while it was stored"));
        }
        Ok(())
    }

    /// Uploads a locally stored entry and the blobs it names that the server lacks.
    pub fn upload(&self, entry: &CacheEntry, blobs: &Blobs) -> Result<(), String> {
        if self.read_only {
            return Ok(());
        }
        let result: StoredResult =
            serde_json::from_str(&entry.result).map_err(|e| e.to_string())?;
        let repair = self
            .repair
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&entry.key);
        let digests = std::iter::once(&result.log).chain(result.outputs.iter().map(|o| &o.sha256));
        for digest in digests {
            self.upload_blob(digest, blobs, repair)?;
        }
        let body = serde_json::to_vec(&RemoteEntry {
            format: FORMAT.into(),
            key: entry.key.clone(),
            operation: entry.operation.clone(),
            service: entry.service.clone(),
            result,
        })
        .map_err(|e| e.to_string())?;
        self.put(&format!("ac/{}", entry.key), Body::Bytes(body))
    }

    /// Uploads a blob unless the server has one by that name (`always`: even then).
    fn upload_blob(&self, digest: &str, blobs: &Blobs, always: bool) -> Result<(), String> {
        let path = format!("cas/{digest}");
        if !always {
            let resp = self.get(&path, true)?;
            match resp.status().as_u16() {
                200 => return Ok(()),
                404 => {}
                s => return Err(Self::status_error(&path, s)),
            }
        }
        std::fs::create_dir_all(&self.tmp).map_err(|e| e.to_string())?;
        let mut tmp = tempfile::tempfile_in(&self.tmp).map_err(|e| e.to_string())?;
        blobs
            .copy_to(digest, &mut tmp, MAX_BLOB)
            .map_err(|e| format!("cannot upload: {e}"))?;
        tmp.flush().map_err(|e| e.to_string())?;
        std::io::Seek::rewind(&mut tmp).map_err(|e| e.to_string())?;
        self.put(&path, Body::File(tmp))
    }

    fn put(&self, path: &str, body: Body) -> Result<(), String> {
        if self.is_down() {
            return Err(NOT_ANSWERING.into());
        }
        let mut r = self.agent.put(format!("{}/{path}", self.base));
        if let Some(a) = &self.auth {
            r = r.header("Authorization", a);
        }
        let resp = match body {
            Body::Bytes(b) => r.send(&b[..]),
            Body::File(f) => r.send(f),
        }
        .map_err(|e| self.failed(&e))?;
        match resp.status().as_u16() {
            200..=299 => Ok(()),
            s => Err(Self::status_error(path, s)),
        }
    }

    /// Fetches every key in `keys` (at most 16 at once), in order. Each answer is `Ok(None)`
    /// for no entry, `Err` for one that could not be used.
    pub fn fetch_all(
        &self,
        keys: &[String],
        blobs: &Blobs,
    ) -> Vec<Result<Option<Fetched>, String>> {
        self.each(keys, |k| self.fetch(k, blobs))
    }

    /// Uploads every entry (at most 16 at once); the failures, by key.
    pub fn upload_all(&self, entries: &[CacheEntry], blobs: &Blobs) -> Vec<(String, String)> {
        self.each(entries, |e| self.upload(e, blobs))
            .into_iter()
            .zip(entries)
            .filter_map(|(r, e)| r.err().map(|why| (e.key.clone(), why)))
            .collect()
    }

    /// `f` of every item, at most [`PARALLEL`] at once, in the items' order; once the server
    /// fails to answer, the items not yet begun are not tried.
    fn each<I: Sync, T: Send>(
        &self,
        items: &[I],
        f: impl Fn(&I) -> Result<T, String> + Sync,
    ) -> Vec<Result<T, String>> {
        let next = AtomicUsize::new(0);
        let workers = items.len().clamp(1, PARALLEL);
        let mut all: Vec<(usize, Result<T, String>)> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..workers)
                .map(|_| {
                    s.spawn(|| {
                        let mut mine = Vec::new();
                        loop {
                            let i = next.fetch_add(1, Ordering::Relaxed);
                            let Some(item) = items.get(i) else { break };
                            let r = if self.is_down() {
                                Err(NOT_ANSWERING.to_string())
                            } else {
                                f(item)
                            };
                            mine.push((i, r));
                        }
                        mine
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().unwrap_or_default())
                .collect()
        });
        all.sort_by_key(|(i, _)| *i);
        all.into_iter().map(|(_, r)| r).collect()
    }
}

/// Resolves each host once per agent (one run): ureq's resolver, bounded by a timeout, starts a
/// thread for every request, even one that reuses a pooled connection — a thousand threads for
/// a run of a thousand hits.
#[derive(Debug, Default)]
struct MemoResolver {
    inner: ureq::unversioned::resolver::DefaultResolver,
    known: Mutex<HashMap<String, ureq::unversioned::resolver::ResolvedSocketAddrs>>,
}

impl ureq::unversioned::resolver::Resolver for MemoResolver {
    fn resolve(
        &self,
        uri: &ureq::http::Uri,
        config: &ureq::config::Config,
        timeout: ureq::unversioned::transport::NextTimeout,
    ) -> Result<ureq::unversioned::resolver::ResolvedSocketAddrs, ureq::Error> {
        let host = match (uri.scheme(), uri.authority()) {
            (Some(s), Some(a)) => ureq::unversioned::resolver::DefaultResolver::host_and_port(s, a),
            _ => None,
        };
        let Some(host) = host else {
            return self.inner.resolve(uri, config, timeout);
        };
        if let Some(addrs) = self
            .known
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&host)
        {
            return Ok(addrs.clone());
        }
        let addrs = self.inner.resolve(uri, config, timeout)?;
        self.known
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(host, addrs.clone());
        Ok(addrs)
    }
}

/// Why a request is not made once the server failed to answer.
const NOT_ANSWERING: &str = "it did not answer earlier in this run";

enum Body {
    Bytes(Vec<u8>),
    File(std::fs::File),
}
