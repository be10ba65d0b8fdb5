//! What every request handler shares: the manifest the server loaded, a small pool of store
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
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            bind: SocketAddr::from(([127, 0, 0, 1], 7878)),
            rate_limit_per_minute: 100,
            cors_origins: Vec::new(),
            body_limit: 1024 * 1024,
            request_timeout: Duration::from_secs(30),
            header_timeout: Duration::from_secs(10),
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

/// The shared state of the server; cheap to clone.
#[derive(Clone)]
pub struct AppState(pub(super) Arc<Inner>);

pub(super) struct Inner {
    pub manifest: Arc<Manifest>,
    pub state_dir: PathBuf,
    pub config: ServeConfig,
    /// Bound to a loopback address (local mode is possible).
    pub loopback: bool,
    pool: Pool,
    pub runs: Mutex<HashMap<String, ActiveRun>>,
    /// `/api/services` bodies by query, valid while the run history generation is unchanged.
    pub services_cache: Mutex<(i64, HashMap<String, Bytes>)>,
    /// `/api/plugins`, computed once (loading plugins compiles them).
    pub plugins_cache: tokio::sync::OnceCell<Bytes>,
    /// Set when the server begins to shut down: event streams end.
    pub shutdown: watch::Sender<bool>,
}

impl AppState {
    pub fn new(manifest: Manifest, state_dir: &Path, config: ServeConfig) -> AppState {
        AppState(Arc::new(Inner {
            manifest: Arc::new(manifest),
            state_dir: state_dir.to_path_buf(),
            loopback: config.bind.ip().is_loopback(),
            config,
            pool: Pool {
                dir: state_dir.to_path_buf(),
                idle: Mutex::new(Vec::new()),
            },
            runs: Mutex::new(HashMap::new()),
            services_cache: Mutex::new((-1, HashMap::new())),
            plugins_cache: tokio::sync::OnceCell::new(),
            shutdown: watch::channel(false).0,
        }))
    }

    pub fn manifest(&self) -> &Arc<Manifest> {
        &self.0.manifest
    }

    pub fn state_dir(&self) -> &Path {
        &self.0.state_dir
    }

    pub fn config(&self) -> &ServeConfig {
        &self.0.config
    }

    /// Runs `f` with a store connection on the blocking pool.
    pub async fn store<T, F>(&self, f: F) -> Result<T, ApiError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Store) -> Result<T, ApiError> + Send + 'static,
    {
        let inner = self.0.clone();
        tokio::task::spawn_blocking(move || {
            let mut store = inner.pool.take()?;
            let out = f(&mut store);
            inner.pool.give(store);
            out
        })
        .await
        .map_err(|e| ApiError::internal("a store task failed", e))?
    }

    pub fn runs(&self) -> MutexGuard<'_, HashMap<String, ActiveRun>> {
        lock(&self.0.runs)
    }

    /// True once shutdown has begun.
    pub fn shutting_down(&self) -> bool {
        *self.0.shutdown.borrow()
    }

    pub fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.0.shutdown.subscribe()
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
