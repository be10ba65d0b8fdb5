//! What every request handler shares: the manifest the server serves (swapped whole when
//! `nestr.toml` changes on disk and the new text is valid; see [`watch_manifest`]), a small pool of store
//! connections (SQLite work runs on the blocking pool), the runs this process is executing (for
//! cancel and shutdown), caches of views that only change when the run history does, and the
//! server's settings.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::watch;

use super::error::ApiError;
use crate::manifest::Manifest;
use crate::plugin::state::Cancel;
use crate::store::{Store, StoreError};

/// Settings of `nestr serve`.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub bind: SocketAddr,
    /// Requests per minute per client address; 0 turns the limit off.
    pub rate_limit_per_minute: u32,
    /// Origins allowed to call the API from a browser (no wildcard).
    pub cors_origins: Vec<String>,
    /// Largest request body, bytes.
    pub body_limit: usize,
    /// Longest a request may take (not the event streams).
    pub request_timeout: Duration,
    /// Longest a client may take to send its request headers.
    pub header_timeout: Duration,
    /// Runs executing at once (see `queue.rs`).
    pub max_runs: usize,
    /// Runs waiting for a slot; more are refused.
    pub max_queued: usize,
    /// Open connections; one more is answered 503 and closed.
    pub max_connections: usize,
}

/// Runs executing at once by default: the number of CPUs, at least 2.
pub fn default_max_runs() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get().max(2))
}

/// Runs waiting by default.
pub const DEFAULT_MAX_QUEUED: usize = 128;

/// Open connections by default.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            bind: SocketAddr::from(([127, 0, 0, 1], 7878)),
            rate_limit_per_minute: 100,
            cors_origins: Vec::new(),
            body_limit: 1024 * 1024,
            request_timeout: Duration::from_secs(30),
            header_timeout: Duration::from_secs(10),
            max_runs: default_max_runs(),
            max_queued: DEFAULT_MAX_QUEUED,
            max_connections: DEFAULT_MAX_CONNECTIONS,
        }
    }
}

/// A run this process executes.
pub struct ActiveRun {
    pub cancel: Cancel,
}

/// Store connections kept for reuse.
struct Pool {
    dir: PathBuf,
    idle: Mutex<Vec<Store>>,
}

/// Threads for blocking work (store, git) in `nestr serve`'s runtime.
pub const BLOCKING_THREADS: usize = 32;

/// Idle connections kept (as many as blocking threads can use at once).
const POOL_IDLE: usize = BLOCKING_THREADS;

/// Store tasks of requests that run at once: two per CPU. More wait their turn in order, so that
/// under load each request's latency stays even (a few tasks run to completion) rather than
/// dozens of blocking threads sharing the cores by time slices (measured on a 2-core machine,
/// `cargo bench --bench api`: 1,000-line log pages under 64 connections 3,812 req/s with a p99 of
/// 64 ms with no bound, 6,562 req/s and 14 ms with two per CPU; docs/PERFORMANCE.md).
fn store_slots() -> usize {
    std::thread::available_parallelism().map_or(4, |n| 2 * n.get())
}

/// The active tokens as last read, and the `PRAGMA data_version` of a connection of the cache's own
/// observed before they were read: while it is the same, nothing was committed to the database
/// since, so they are still the active tokens.
#[derive(Default)]
struct TokenCache {
    conn: Option<Store>,
    version: Option<i64>,
    tokens: Arc<Vec<crate::store::ActiveToken>>,
}

/// The shared state of the server; cheap to clone.
#[derive(Clone)]
pub struct AppState(pub(super) Arc<Inner>);

pub(super) struct Inner {
    /// The last good manifest, and why the file on disk is not it (when it is not).
    manifest: std::sync::RwLock<(Arc<Manifest>, Option<String>)>,
    pub state_dir: PathBuf,
    pub config: ServeConfig,
    /// Bound to a loopback address (local mode is possible).
    pub loopback: bool,
    pool: Pool,
    /// At most [`store_slots`] store tasks at once.
    store_slots: tokio::sync::Semaphore,
    /// The active API tokens as last read (see [`AppState::active_tokens`]).
    tokens: Mutex<TokenCache>,
    pub runs: Mutex<HashMap<String, ActiveRun>>,
    /// Who may execute now, who waits.
    pub queue: Arc<super::queue::RunQueue>,
    /// `/api/services` bodies by query, valid while the run history generation is unchanged.
    pub services_cache: Mutex<(i64, HashMap<String, Bytes>)>,
    /// `/api/plugins` for the manifest of that generation (loading plugins compiles them).
    pub plugins_cache: Mutex<Option<(u64, Bytes)>>,
    /// Bumped each time another manifest is installed.
    pub manifest_generation: std::sync::atomic::AtomicU64,
    /// Set when the server begins to shut down: event streams end.
    pub shutdown: watch::Sender<bool>,
}

impl AppState {
    pub fn new(manifest: Manifest, state_dir: &Path, config: ServeConfig) -> AppState {
        AppState(Arc::new(Inner {
            manifest: std::sync::RwLock::new((Arc::new(manifest), None)),
            state_dir: state_dir.to_path_buf(),
            loopback: config.bind.ip().is_loopback(),
            queue: super::queue::RunQueue::new(config.max_runs, config.max_queued),
            config,
            pool: Pool {
                dir: state_dir.to_path_buf(),
                idle: Mutex::new(Vec::new()),
            },
            store_slots: tokio::sync::Semaphore::new(store_slots()),
            tokens: Mutex::new(TokenCache::default()),
            runs: Mutex::new(HashMap::new()),
            services_cache: Mutex::new((-1, HashMap::new())),
            plugins_cache: Mutex::new(None),
            manifest_generation: std::sync::atomic::AtomicU64::new(0),
            shutdown: watch::channel(false).0,
        }))
    }

    /// The manifest requests are served from now (a run keeps the one it started with).
    pub fn manifest(&self) -> Arc<Manifest> {
        read(&self.0.manifest).0.clone()
    }

    /// Why `nestr.toml` on disk is not what is served (the first problem, file:line:col), if so.
    pub fn manifest_problem(&self) -> Option<String> {
        read(&self.0.manifest).1.clone()
    }

    /// Serves `manifest` from now on: clears every view cached for the previous one.
    pub fn install(&self, manifest: Manifest) {
        *write(&self.0.manifest) = (Arc::new(manifest), None);
        self.0
            .manifest_generation
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        *lock(&self.0.services_cache) = (-1, HashMap::new());
        *lock(&self.0.plugins_cache) = None;
    }

    /// Keeps serving the last good manifest and remembers why the file is not accepted.
    pub fn reject(&self, problem: String) {
        write(&self.0.manifest).1 = Some(problem);
    }

    pub fn manifest_generation(&self) -> u64 {
        self.0
            .manifest_generation
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn state_dir(&self) -> &Path {
        &self.0.state_dir
    }

    pub fn config(&self) -> &ServeConfig {
        &self.0.config
    }

    /// Runs `f` with a store connection on the blocking pool, once one of the store slots is
    /// free (in the order asked).
    pub async fn store<T, F>(&self, f: F) -> Result<T, ApiError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Store) -> Result<T, ApiError> + Send + 'static,
    {
        let inner = self.0.clone();
        let _slot = self
            .0
            .store_slots
            .acquire()
            .await
            .map_err(|e| ApiError::internal("the store slots are closed", e))?;
        tokio::task::spawn_blocking(move || {
            let mut store = inner.pool.take()?;
            let out = f(&mut store);
            inner.pool.give(store);
            out
        })
        .await
        .map_err(|e| ApiError::internal("a store task failed", e))?
    }

    /// The active API tokens, as every request checks them: read again from the store whenever
    /// anything was committed to it since they were last read (a token created or revoked by the
    /// CLI takes effect at the next request), else the ones read last — without a trip to the
    /// blocking pool (the check reads SQLite's shared-memory header).
    pub async fn active_tokens(&self) -> Result<Arc<Vec<crate::store::ActiveToken>>, ApiError> {
        let observed = {
            let cache = lock(&self.0.tokens);
            match cache.conn.as_ref().map(Store::data_version) {
                Some(Ok(v)) if cache.version == Some(v) => return Ok(cache.tokens.clone()),
                Some(Ok(v)) => Some(v),
                _ => None,
            }
        };
        let dir = self.state_dir().to_path_buf();
        let need_conn = observed.is_none();
        let (tokens, conn) = self
            .store(move |s| {
                // The cache's connection is opened (and its version observed) before the read.
                let conn = if need_conn {
                    Store::open(&dir).ok().and_then(|c| {
                        let v = c.data_version().ok()?;
                        Some((c, v))
                    })
                } else {
                    None
                };
                Ok((Arc::new(s.active_tokens()?), conn))
            })
            .await?;
        let mut cache = lock(&self.0.tokens);
        match (conn, observed) {
            (Some((c, v)), _) => {
                cache.conn = Some(c);
                cache.version = Some(v);
            }
            (None, Some(v)) => cache.version = Some(v),
            (None, None) => cache.version = None,
        }
        cache.tokens = tokens.clone();
        Ok(tokens)
    }

    pub fn runs(&self) -> MutexGuard<'_, HashMap<String, ActiveRun>> {
        lock(&self.0.runs)
    }

    pub fn queue(&self) -> &Arc<super::queue::RunQueue> {
        &self.0.queue
    }

    /// True once shutdown has begun.
    pub fn shutting_down(&self) -> bool {
        *self.0.shutdown.borrow()
    }

    pub fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.0.shutdown.subscribe()
    }
}

fn read<T>(l: &std::sync::RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|p| p.into_inner())
}

fn write<T>(l: &std::sync::RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|p| p.into_inner())
}

/// How often `nestr serve` looks at `nestr.toml` for changes.
pub const MANIFEST_POLL: Duration = Duration::from_millis(500);

/// Watches the manifest file until shutdown: when its bytes change, the new text is validated
/// exactly as `nestr` validates it on start (plugin config included) and installed; a text that
/// fails keeps the last good manifest serving and is reported by `/ready` and the log until a
/// good one replaces it.
pub async fn watch_manifest(state: AppState) {
    use sha2::Digest;
    let path = state.manifest().path.clone();
    let digest = |b: &[u8]| sha2::Sha256::digest(b).to_vec();
    let mut last = std::fs::read(&path).ok().map(|b| digest(&b));
    let mut stop = state.shutdown_signal();
    loop {
        tokio::select! {
            () = tokio::time::sleep(MANIFEST_POLL) => {}
            _ = stop.changed() => return,
        }
        let now = match std::fs::read(&path) {
            Ok(b) => Some(digest(&b)),
            Err(e) => {
                if last.is_some() {
                    let problem = format!("cannot read {}: {e}", path.display());
                    tracing::warn!(%problem, "keeping the last good manifest");
                    state.reject(problem);
                }
                last = None;
                continue;
            }
        };
        if now == last {
            continue;
        }
        last = now;
        let p = path.clone();
        let loaded = tokio::task::spawn_blocking(move || {
            let m = crate::manifest::load(&p)?;
            crate::plugin::check_config(&m).map_err(crate::manifest::ManifestError::Invalid)?;
            Ok::<_, crate::manifest::ManifestError>(m)
        })
        .await;
        match loaded {
            Ok(Ok(m)) => {
                if m.api != state.manifest().api {
                    tracing::warn!(
                        "[api] changed in nestr.toml: it takes effect when nestr serve restarts"
                    );
                }
                tracing::info!(
                    manifest = %path.display(),
                    services = m.services.len(),
                    "nestr.toml changed; serving the new manifest"
                );
                state.install(m);
            }
            Ok(Err(e)) => {
                let problem = match &e {
                    crate::manifest::ManifestError::Invalid(inv) if inv.problems.len() > 1 => {
                        format!("{e} (and {} more problems)", inv.problems.len() - 1)
                    }
                    _ => e.to_string(),
                };
                tracing::warn!(%problem, "nestr.toml changed but is not valid; keeping the last good manifest");
                state.reject(crate::redact::text(&problem));
            }
            Err(e) => tracing::error!(error = %e, "the manifest check failed"),
        }
    }
}

/// Locks a mutex, going on with the data if a holder panicked.
pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Pool {
    fn take(&self) -> Result<Store, StoreError> {
        match lock(&self.idle).pop() {
            Some(s) => Ok(s),
            None => Store::open(&self.dir),
        }
    }

    fn give(&self, store: Store) {
        let mut idle = lock(&self.idle);
        if idle.len() < POOL_IDLE {
            idle.push(store);
        }
    }
}
