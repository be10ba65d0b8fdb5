//! The wasmtime host for operation plugins.
//!
//! One [`Host`] per process ([`Host::shared`]) holds one `Engine` (component model, async, epoch
//! interruption) and one `Linker` (WASI p2, wasi:http through checking hooks, and the nestr
//! imports), built once. Loading a plugin compiles it (through wasmtime's on-disk cache in
//! [`compile_cache_dir`]), checks it against the contract, keeps an `InstancePre`, calls
//! `describe()`, and keeps both by digest for the next load. Every step gets a fresh `Store`
//! with its own limits and capabilities ([`Host::run_step`]). Submodules: `bindings` (the one
//! `bindgen!`), `caps` (grants), `limits`, `sink` (step log and the redaction boundary), `state`
//! (store data, `log`), `exec`, `fs` (the filtered `wasi:filesystem`), `http`.
//!
//! What a plugin returns is bounded and masked here before anything keeps it: each report field
//! is capped (a note in the step log says what was cut), every string is masked, and a `denied`
//! error is shown as the engine's refusal only when the engine did refuse that request; otherwise
//! it is the plugin's own claim, and the step `failed`.

pub mod bindings;
pub mod caps;
mod compat;
mod exec;
pub(crate) mod fs;
pub mod gate;
mod http;
pub(crate) mod limits;
pub mod sink;
pub mod state;
pub mod tape;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use sha2::{Digest, Sha256};
use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime::{Config, Engine, Store, Trap, UpdateDeadline};
use wasmtime_wasi::{FsPerms, WasiCtxBuilder};
use wasmtime_wasi_http::WasiHttpCtx;

use bindings::types;
use caps::{Declared, Effective};
use limits::{Limiter, Ticker};
use sink::StepLog;
use state::{Cancel, Denials, GuestOutput, StepContext, StepState};

use crate::manifest::{FsGrant, Manifest, PluginSource};
use crate::model::{StepStatus, Stream};

pub use bindings::{Operation, OperationPre};
pub use exec::{Ended, Program, kill_marked, kill_marked_prefix, run_program};

include!(concat!(env!("OUT_DIR"), "/builtin_plugins.rs"));

/// The package of the contract this host speaks (and builds its built-in plugins against).
pub const CONTRACT: &str = "nestr:plugin@0.2.0";
/// Older contracts it still loads plugins of (frozen under `wit/frozen/`).
pub const OLDER_CONTRACTS: &[&str] = &["nestr:plugin@0.1.0"];
/// Where the service folder appears in a plugin's filesystem.
pub const GUEST_WORKDIR: &str = "/service";

/// Why a plugin could not be loaded.
#[derive(Debug, thiserror::Error)]
#[error("plugin `{plugin}`: {message}")]
pub struct LoadError {
    pub plugin: String,
    pub message: String,
}

fn load_error(plugin: &str, message: impl Into<String>) -> LoadError {
    LoadError {
        plugin: plugin.to_string(),
        message: message.into(),
    }
}

/// What a plugin's `describe()` said.
#[derive(Debug, Clone, Serialize)]
pub struct PluginInfo {
    pub name: String,
    pub version: String,
    pub description: String,
    /// Empty: any operation.
    pub operations: Vec<String>,
    pub capabilities: Declared,
    pub config: Vec<ConfigField>,
    /// Whether its results may be cached (`describe()` says; a 0.1.0 plugin always may be).
    pub cacheable: bool,
    /// The contract it was built against (`nestr:plugin@0.2.0`).
    pub contract: String,
}

impl PluginInfo {
    /// What the manifest is checked against.
    pub fn doc(&self) -> crate::manifest::PluginDoc {
        crate::manifest::PluginDoc {
            config: self.config.clone(),
            cacheable: self.cacheable,
        }
    }
}

pub use crate::model::ConfigField;

/// A plugin ready to run steps.
pub struct LoadedPlugin {
    pub name: String,
    /// sha256 of the component, hex.
    pub digest: String,
    /// `builtin` or the file it came from.
    pub source: String,
    pub info: PluginInfo,
    pre: Pre,
}

/// A component ready to instantiate, by the contract it was built against.
#[derive(Clone)]
enum Pre {
    Current(OperationPre<StepState>),
    V0_1(bindings::v0_1::OperationPre<StepState>),
}

impl Pre {
    /// Checks a component's exports against the current contract, then the older ones.
    fn new(pre: wasmtime::component::InstancePre<StepState>) -> wasmtime::Result<Pre> {
        match OperationPre::new(pre.clone()) {
            Ok(p) => Ok(Pre::Current(p)),
            Err(current) => bindings::v0_1::OperationPre::new(pre)
                .map(Pre::V0_1)
                .map_err(|_| current),
        }
    }

    fn contract(&self) -> &'static str {
        match self {
            Pre::Current(_) => CONTRACT,
            Pre::V0_1(_) => OLDER_CONTRACTS[0],
        }
    }

    async fn describe(&self, store: &mut Store<StepState>) -> wasmtime::Result<types::PluginInfo> {
        match self {
            Pre::Current(p) => {
                p.instantiate_async(&mut *store)
                    .await?
                    .call_describe(store)
                    .await
            }
            Pre::V0_1(p) => Ok(compat::info_from_old(
                p.instantiate_async(&mut *store)
                    .await?
                    .call_describe(store)
                    .await?,
            )),
        }
    }

    /// Instantiates (timing it), then calls `run(request)`.
    async fn run(
        &self,
        store: &mut Store<StepState>,
        request: &types::Request,
    ) -> wasmtime::Result<Result<types::Report, types::Error>> {
        let t = Instant::now();
        let observe = || {
            if let Some(m) = crate::metrics::global() {
                m.plugin_instantiate_seconds
                    .observe(t.elapsed().as_secs_f64());
            }
        };
        match self {
            Pre::Current(p) => {
                let instance = p.instantiate_async(&mut *store).await?;
                observe();
                instance.call_run(store, request).await
            }
            Pre::V0_1(p) => {
                let instance = p.instantiate_async(&mut *store).await?;
                observe();
                let old = compat::request_to_old(request);
                Ok(compat::result_from_old(
                    instance.call_run(store, &old).await?,
                ))
            }
        }
    }
}

impl std::fmt::Debug for LoadedPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedPlugin")
            .field("name", &self.name)
            .field("digest", &self.digest)
            .finish()
    }
}

/// The request of one step, in engine terms.
#[derive(Debug, Clone)]
pub struct StepRequest {
    pub operation: String,
    pub run_id: String,
    pub service: types::Service,
    pub commit: Option<String>,
    pub branch: Option<String>,
    pub config: serde_json::Value,
    /// The service folder on this machine.
    pub folder: PathBuf,
    pub dependencies: Vec<types::Dependency>,
    pub target: Option<types::Target>,
}

impl StepRequest {
    /// The request as the plugin receives it.
    fn to_wit(&self) -> types::Request {
        types::Request {
            operation: self.operation.clone(),
            run_id: self.run_id.clone(),
            service: self.service.clone(),
            commit: self.commit.clone(),
            branch: self.branch.clone(),
            config: self.config.to_string(),
            workdir: GUEST_WORKDIR.to_string(),
            folder: self.folder.to_string_lossy().into_owned(),
            dependencies: self.dependencies.clone(),
            target: self.target.clone(),
        }
    }
}

/// How a step ended.
#[derive(Debug, Clone, Serialize)]
pub struct StepOutcome {
    pub status: StepStatus,
    pub summary: String,
    /// Why it failed, was skipped or refused.
    pub reason: Option<String>,
    pub tests: Option<crate::model::TestCounts>,
    pub artifacts: Vec<crate::model::Artifact>,
    pub metrics: serde_json::Value,
    pub duration: Duration,
    /// The programs it ran (and how many more were not recorded).
    pub programs: (Vec<crate::cache::provenance::ProgramRun>, u64),
}

impl StepOutcome {
    pub fn new(
        status: StepStatus,
        summary: impl Into<String>,
        reason: Option<String>,
    ) -> StepOutcome {
        StepOutcome {
            status,
            summary: summary.into(),
            reason,
            tests: None,
            artifacts: Vec::new(),
            metrics: serde_json::json!({}),
            duration: Duration::ZERO,
            programs: Default::default(),
        }
    }
}

/// The wasmtime engine, linker and epoch ticker shared by every plugin and step.
pub struct Host {
    engine: Engine,
    linker: Linker<StepState>,
    /// One permit per store that may hold pool slots at once (see `limits`).
    slots: Arc<tokio::sync::Semaphore>,
    /// Plugins already compiled, checked and described, by the sha256 of their bytes.
    compiled: std::sync::Mutex<std::collections::HashMap<String, Compiled>>,
    _ticker: Ticker,
}

/// What loading a component produced; it depends on the bytes only, not on the name used.
#[derive(Clone)]
struct Compiled {
    pre: Pre,
    info: PluginInfo,
}

/// At most this many compiled plugins are kept in memory by one host (a long-running server
/// whose plugin files keep changing must not grow without bound); past it the cache starts over.
const MAX_COMPILED: usize = 32;

/// Where compiled plugins are cached across processes: `$NESTR_CACHE_DIR`, else
/// `$XDG_CACHE_HOME/nestr`, else `~/.cache/nestr`; none without a home folder.
pub fn compile_cache_dir() -> Option<PathBuf> {
    let var = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    var("NESTR_CACHE_DIR")
        .or_else(|| var("XDG_CACHE_HOME").map(|d| d.join("nestr")))
        .or_else(|| var("HOME").map(|d| d.join(".cache").join("nestr")))
        .filter(|d| d.is_absolute())
        .map(|d| d.join("wasm"))
}

static SHARED: std::sync::OnceLock<Result<Arc<Host>, String>> = std::sync::OnceLock::new();

impl Host {
    /// The process's one host: one engine, one linker, one pool, one compiled-plugin cache for
    /// every run the process makes (the CLI's and the server's alike). Compiled code is cached
    /// on disk in [`compile_cache_dir`]; a cache that cannot be created means no disk cache.
    pub fn shared() -> Result<Arc<Host>, String> {
        SHARED
            .get_or_init(|| {
                let dir = compile_cache_dir();
                Host::new(dir.as_deref())
                    .or_else(|e| {
                        tracing::warn!(error = %e, "no compile cache; compiling in memory only");
                        Host::new(None)
                    })
                    .map(Arc::new)
                    .map_err(|e| format!("cannot start the plugin host: {e}"))
            })
            .clone()
    }

    /// A host caching compiled components in `cache_dir` (none: no disk cache), with the
    /// pooling instance allocator (chosen by measurement, docs/PERFORMANCE.md), or on-demand
    /// allocation where the pool's address space cannot be reserved.
    pub fn new(cache_dir: Option<&Path>) -> wasmtime::Result<Host> {
        Host::with_pooling(cache_dir, true).or_else(|e| {
            tracing::warn!(error = %e, "pooling allocator unavailable; using on-demand allocation");
            Host::with_pooling(cache_dir, false)
        })
    }

    /// Like [`Host::new`], choosing the allocator explicitly.
    pub fn with_pooling(cache_dir: Option<&Path>, pooling: bool) -> wasmtime::Result<Host> {
        let mut config = Config::new();
        if pooling {
            config
                .allocation_strategy(wasmtime::InstanceAllocationStrategy::Pooling(limits::pool()));
        }
        config
            .wasm_component_model(true)
            .epoch_interruption(true)
            .max_wasm_stack(limits::MAX_WASM_STACK);
        if let Some(dir) = cache_dir {
            std::fs::create_dir_all(dir)?;
            let mut cache = wasmtime::CacheConfig::new();
            cache.with_directory(dir);
            config.cache(Some(wasmtime::Cache::new(cache)?));
        }
        let engine = Engine::new(&config)?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
        fs::add_to_linker(&mut linker)?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
        Operation::add_to_linker::<StepState, HasSelf<StepState>>(&mut linker, |s| s)?;
        bindings::v0_1::Operation::add_to_linker::<StepState, HasSelf<StepState>>(
            &mut linker,
            |s| s,
        )?;
        let ticker = Ticker::start(&engine);
        Ok(Host {
            engine,
            linker,
            slots: Arc::new(tokio::sync::Semaphore::new(
                limits::CONCURRENT_STORES as usize,
            )),
            compiled: std::sync::Mutex::default(),
            _ticker: ticker,
        })
    }

    /// The component bytes of a built-in plugin.
    pub fn builtin(name: &str) -> Option<&'static [u8]> {
        BUILTIN_WASM
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, b)| *b)
    }

    /// The sha256 of a built-in plugin's component, hex (computed once per process).
    pub fn builtin_digest(name: &str) -> Option<String> {
        static DIGESTS: std::sync::OnceLock<Vec<(&'static str, String)>> =
            std::sync::OnceLock::new();
        DIGESTS
            .get_or_init(|| {
                BUILTIN_WASM
                    .iter()
                    .map(|(n, b)| (*n, hex::encode(Sha256::digest(b))))
                    .collect()
            })
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, d)| d.clone())
    }

    /// Reads a plugin file, refusing anything but a regular file (a symbolic link to a device or
    /// a FIFO included: the file is opened once, without blocking, and checked as opened),
    /// oversized files (read with a hard cap, whatever size the file claims) and a sha256 that
    /// differs from the pin.
    pub fn read_file(plugin: &str, path: &Path, pin: Option<&str>) -> Result<Vec<u8>, LoadError> {
        use std::io::Read;
        use std::os::unix::fs::OpenOptionsExt;
        let cannot =
            |e: std::io::Error| load_error(plugin, format!("cannot read {}: {e}", path.display()));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(nix::libc::O_NONBLOCK)
            .open(path)
            .map_err(cannot)?;
        let meta = file.metadata().map_err(cannot)?;
        if !meta.is_file() {
            return Err(load_error(
                plugin,
                format!(
                    "{} is not a regular file (it is a device, a FIFO, a socket or a folder); \
                     point `path` at the plugin's .wasm file",
                    path.display()
                ),
            ));
        }
        let too_big = || {
            load_error(
                plugin,
                format!(
                    "{} is larger than {} MiB, the most a plugin may be",
                    path.display(),
                    limits::MAX_PLUGIN_BYTES / (1024 * 1024)
                ),
            )
        };
        if meta.len() > limits::MAX_PLUGIN_BYTES {
            return Err(too_big());
        }
        let mut bytes = Vec::new();
        file.take(limits::MAX_PLUGIN_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(cannot)?;
        if bytes.len() as u64 > limits::MAX_PLUGIN_BYTES {
            return Err(too_big());
        }
        if let Some(pin) = pin {
            let digest = hex::encode(Sha256::digest(&bytes));
            if digest != pin {
                return Err(load_error(
                    plugin,
                    format!(
                        "{} has sha256 {digest}, but nestr.toml pins {pin}; nothing was run. If \
                         you trust the new file, update `sha256` in [plugins.{plugin}]",
                        path.display()
                    ),
                ));
            }
        }
        Ok(bytes)
    }

    /// Compiles (or loads from the cache), checks against the contract, and describes a plugin.
    pub async fn load(
        &self,
        name: &str,
        source: &str,
        bytes: &[u8],
    ) -> Result<LoadedPlugin, LoadError> {
        let digest = hex::encode(Sha256::digest(bytes));
        let known = self
            .compiled
            .lock()
            .ok()
            .and_then(|m| m.get(&digest).cloned());
        if let Some(c) = known {
            return Ok(LoadedPlugin {
                name: name.to_string(),
                digest,
                source: source.to_string(),
                info: c.info,
                pre: c.pre,
            });
        }
        let component = Component::new(&self.engine, bytes).map_err(|e| {
            load_error(
                name,
                format!("{source} is not a valid WebAssembly component ({}); build plugins with `cargo build --target wasm32-wasip2`", root_cause(&e)),
            )
        })?;
        let pre = self
            .linker
            .instantiate_pre(&component)
            .and_then(Pre::new)
            .map_err(|e| {
                load_error(
                    name,
                    format!(
                        "{source} was built for a different plugin contract than this nestr \
                         speaks ({CONTRACT}, or the older {}): {}. Rebuild it against nestr-sdk {}",
                        OLDER_CONTRACTS.join(", "),
                        root_cause(&e),
                        env!("CARGO_PKG_VERSION")
                    ),
                )
            })?;
        let mut plugin = LoadedPlugin {
            name: name.to_string(),
            digest,
            source: source.to_string(),
            info: empty_info(name),
            pre,
        };
        plugin.info = self.describe(&plugin).await?;
        if let Ok(mut m) = self.compiled.lock() {
            if m.len() >= MAX_COMPILED {
                m.clear();
            }
            m.insert(
                plugin.digest.clone(),
                Compiled {
                    pre: plugin.pre.clone(),
                    info: plugin.info.clone(),
                },
            );
        }
        Ok(plugin)
    }

    async fn describe(&self, plugin: &LoadedPlugin) -> Result<PluginInfo, LoadError> {
        let log = StepLog::new(0, Arc::default(), sink::DEFAULT_OUTPUT_CAP, vec![]);
        let ctx = Arc::new(StepContext {
            run_id: String::new(),
            step_id: 0,
            caps: caps::effective(
                &plugin.name,
                &Declared {
                    fs: FsGrant::None,
                    ..Declared::default()
                },
                &crate::manifest::Grants {
                    fs: FsGrant::None,
                    ..Default::default()
                },
            )
            .map_err(|e| load_error(&plugin.name, e))?,
            log,
            service_dir: PathBuf::from("/nonexistent"),
            started: Instant::now(),
            deadline: Instant::now() + limits::DESCRIBE_TIMEOUT,
            cancel: Cancel::default(),
            marker: String::new(),
            audit: Arc::new(|_| {}),
            denials: Denials::default(),
            containment: crate::contain::Containment::new("describe", caps::DEFAULT_PIDS),
            programs: Default::default(),
            tape: None,
            gate: None,
        });
        let mut store = self
            .store(ctx, caps::DEFAULT_MEMORY_MB, limits::DESCRIBE_TIMEOUT, None)
            .map_err(|e| load_error(&plugin.name, e.to_string()))?;
        let call = async {
            let _slot = self.slot().await?;
            plugin.pre.describe(&mut store).await
        };
        let info = tokio::time::timeout(limits::DESCRIBE_TIMEOUT, call)
            .await
            .map_err(|_| load_error(&plugin.name, "describe() did not return within 5 s"))?
            .map_err(|e| {
                load_error(
                    &plugin.name,
                    format!("describe() failed: {}", root_cause(&e)),
                )
            })?;
        let mut info = convert_info(info);
        info.contract = plugin.pre.contract().to_string();
        Ok(info)
    }

    /// Waits for a pool slot (see [`limits::CONCURRENT_STORES`]).
    async fn slot(&self) -> wasmtime::Result<tokio::sync::OwnedSemaphorePermit> {
        self.slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| wasmtime::Error::msg("the plugin host is shutting down"))
    }

    /// A fresh store for one call.
    fn store(
        &self,
        ctx: Arc<StepContext>,
        memory_mb: u64,
        timeout: Duration,
        preopen: Option<(&Path, FsGrant)>,
    ) -> wasmtime::Result<Store<StepState>> {
        let mut wasi = WasiCtxBuilder::new();
        wasi.stdout(GuestOutput::new(ctx.log.clone(), Stream::Stdout))
            .stderr(GuestOutput::new(ctx.log.clone(), Stream::Stderr))
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false);
        match preopen {
            Some((dir, FsGrant::ReadOnly)) => {
                wasi.preopened_dir(dir, GUEST_WORKDIR, FsPerms::ReadOnly)?;
            }
            Some((dir, FsGrant::ReadWrite)) => {
                wasi.preopened_dir(dir, GUEST_WORKDIR, FsPerms::ReadWrite)?;
            }
            _ => {}
        }
        let mut table = ResourceTable::new();
        table.set_max_capacity(limits::MAX_RESOURCES);
        let mut http_ctx = WasiHttpCtx::new();
        http_ctx.set_field_size_limit(limits::FIELD_SIZE_LIMIT);
        let state = StepState {
            wasi: wasi.build(),
            table,
            http: http_ctx,
            hooks: http::HttpHooks { ctx: ctx.clone() },
            limiter: Limiter::new(memory_mb),
            fs_guard: fs::FsGuard::new(ctx.clone()),
            ctx,
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limiter);
        // Every epoch tick the guest yields to the executor (so a spinning plugin never holds a
        // runtime worker), and at the deadline it stops.
        let deadline = Instant::now() + timeout;
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(move |_| {
            if Instant::now() >= deadline {
                Err(Trap::Interrupt.into())
            } else {
                Ok(UpdateDeadline::Yield(1))
            }
        });
        Ok(store)
    }

    /// The phases of one dispatch, timed one by one (for the benchmark): building the store
    /// (WASI context, resource table, limits), instantiating, `describe()` (which a step never
    /// calls: its answer is fixed per loaded plugin and kept from the load), and `run(request)`.
    pub async fn dispatch_phases(
        &self,
        plugin: &LoadedPlugin,
        request: &StepRequest,
        ctx: Arc<StepContext>,
    ) -> wasmtime::Result<[Duration; 4]> {
        let timeout = ctx.deadline.saturating_duration_since(Instant::now());
        let t = Instant::now();
        let mut store = self.store(ctx, caps::DEFAULT_MEMORY_MB, timeout, None)?;
        let build = t.elapsed();
        let _slot = self.slot().await?;
        let Pre::Current(pre) = &plugin.pre else {
            return Err(wasmtime::Error::msg(
                "the benchmark plugin speaks an older contract",
            ));
        };
        let t = Instant::now();
        let instance = pre.instantiate_async(&mut store).await?;
        let instantiate = t.elapsed();
        let t = Instant::now();
        instance.call_describe(&mut store).await?;
        let describe = t.elapsed();
        let req = request.to_wit();
        let t = Instant::now();
        instance
            .call_run(&mut store, &req)
            .await?
            .map_err(|e| wasmtime::Error::msg(format!("the no-op plugin failed: {e:?}")))?;
        Ok([build, instantiate, describe, t.elapsed()])
    }

    /// Runs one step: a fresh store with the step's limits and capabilities, `run(request)`, and
    /// the outcome. A trap, a panic, a timeout or exhausted memory ends this step only.
    pub async fn run_step(
        &self,
        plugin: &LoadedPlugin,
        request: &StepRequest,
        ctx: Arc<StepContext>,
    ) -> StepOutcome {
        let started = Instant::now();
        let caps = ctx.caps.clone();
        let timeout = ctx.deadline.saturating_duration_since(started);
        let preopen = (caps.fs != FsGrant::None).then_some((ctx.service_dir.as_path(), caps.fs));
        let mut store = match self.store(ctx.clone(), caps.memory_mb, timeout, preopen) {
            Ok(s) => s,
            Err(e) => {
                return StepOutcome::new(
                    StepStatus::Failed,
                    "the sandbox could not be prepared",
                    Some(root_cause(&e)),
                );
            }
        };
        let wit_request = request.to_wit();
        let call = async {
            let _slot = self.slot().await?;
            plugin.pre.run(&mut store, &wit_request).await
        };
        // The wall-clock bound: beyond the deadline (plus the grace a program gets to exit), the
        // call is dropped wherever it is, even inside a host function.
        let wall = ctx.deadline + limits::KILL_GRACE + Duration::from_millis(250);
        let result = tokio::select! {
            r = call => Some(r),
            () = tokio::time::sleep_until(wall.into()) => None,
            () = ctx.cancel.cancelled() => {
                // Give a running program its SIGTERM grace, then drop the call.
                tokio::time::sleep(limits::KILL_GRACE + Duration::from_millis(100)).await;
                None
            }
        };
        let hit_memory = store.data().limiter.hit_memory_limit;
        drop(store);
        if let Some(tape) = &ctx.tape {
            let returned = result.as_ref().and_then(|r| r.as_ref().ok());
            match tape.finish(
                &plugin.name,
                &plugin.info.contract,
                &wit_request,
                returned,
                ctx.log.masker(),
            ) {
                Ok(path) => ctx.log.system(format!(
                    "[nestr: host calls recorded in {}]",
                    path.display()
                )),
                Err(e) => ctx.log.system(format!("[nestr: {e}]")),
            }
        }
        let deadline_passed = Instant::now() >= ctx.deadline;
        // Show the configured limit when the deadline is the step's own (not a shorter one).
        let shown = if caps.timeout.saturating_sub(timeout) < Duration::from_millis(100) {
            caps.timeout
        } else {
            timeout
        };
        let mut cuts = Vec::new();
        let mut outcome = classify(
            result,
            hit_memory,
            ctx.cancel.is_cancelled(),
            &caps,
            shown,
            &ctx.denials,
            &mut cuts,
        );
        if !cuts.is_empty() {
            ctx.log.system(format!(
                "[nestr: the plugin's report was cut to fit: {}]",
                cuts.join("; ")
            ));
        }
        // The step's deadline ended a program the plugin was waiting for: whatever the plugin
        // reported afterwards, the step ran out of time.
        if deadline_passed
            && !matches!(
                outcome.status,
                StepStatus::Succeeded | StepStatus::Cancelled | StepStatus::TimedOut
            )
        {
            let limit = humantime::format_duration(round_ms(shown));
            let why = outcome
                .reason
                .clone()
                .unwrap_or_else(|| outcome.summary.clone());
            outcome.status = StepStatus::TimedOut;
            outcome.summary = format!("timed out after {limit}");
            outcome.reason = Some(format!(
                "the step reached its deadline of {limit} ({why}); raise it with `timeout` in the plugin's grants"
            ));
        }
        if outcome.status == StepStatus::Succeeded
            && let Some(gate) = ctx.gate.clone()
        {
            judge(&gate, &ctx, &mut outcome).await;
        }
        seal(&mut outcome, ctx.log.masker());
        outcome.duration = ctx.started.elapsed();
        outcome.programs = ctx.programs.take();
        ctx.log.finish();
        outcome
    }
}

/// A deploy's health gate after its plugin succeeded: a pass keeps the step succeeded, a fail
/// fails it, no verdict ends it timed out with [`crate::plugin::gate::INCONCLUSIVE`].
async fn judge(
    gate: &Arc<crate::plugin::gate::HealthGate>,
    ctx: &Arc<StepContext>,
    outcome: &mut StepOutcome,
) {
    use crate::plugin::gate::Verdict;
    let (g, c) = (gate.clone(), ctx.clone());
    let judged = tokio::task::spawn_blocking(move || {
        g.judge(&|line| c.log.system(line), &|| c.cancel.is_cancelled())
    })
    .await;
    let (verdict, text) = judged.unwrap_or_else(|e| {
        (
            Verdict::Inconclusive,
            format!(
                "{}: the gate failed: {e}",
                crate::plugin::gate::INCONCLUSIVE
            ),
        )
    });
    if let serde_json::Value::Object(m) = &mut outcome.metrics {
        m.insert("health_gate".into(), verdict.as_str().into());
    }
    match verdict {
        Verdict::Pass => outcome.summary = format!("{}; {text}", outcome.summary),
        Verdict::Fail => {
            outcome.status = StepStatus::Failed;
            outcome.reason = Some(text.clone());
            outcome.summary = text;
        }
        Verdict::Inconclusive => {
            outcome.status = StepStatus::TimedOut;
            outcome.reason = Some(format!(
                "{text}; the apply waits for a decision: `nestr deploy resume PLAN` or `nestr deploy abort PLAN`"
            ));
            outcome.summary = text;
        }
    }
}

fn empty_info(name: &str) -> PluginInfo {
    PluginInfo {
        name: name.to_string(),
        version: String::new(),
        description: String::new(),
        operations: vec![],
        capabilities: Declared::default(),
        config: vec![],
        cacheable: true,
        contract: CONTRACT.to_string(),
    }
}

/// What `describe()` said, in engine terms, each field bounded (a plugin chooses these strings;
/// they are shown in `plugin list`, `plugin check` and the API).
fn convert_info(i: types::PluginInfo) -> PluginInfo {
    let text = |s: String, max: usize| caps::clip(&s, max);
    let list = |l: Vec<String>, max: usize| -> Vec<String> {
        l.into_iter()
            .take(max)
            .map(|s| caps::clip(&s, caps::MAX_ECHO))
            .collect()
    };
    PluginInfo {
        name: text(i.name, 128),
        version: text(i.version, 64),
        description: text(i.description, 1024),
        operations: list(i.operations, 64),
        capabilities: Declared {
            exec: list(i.capabilities.exec, 256),
            env: list(i.capabilities.env, 256),
            secrets: list(i.capabilities.secrets, 256),
            http: list(i.capabilities.http, 256),
            fs: match i.capabilities.fs {
                types::FsAccess::None => FsGrant::None,
                types::FsAccess::ReadOnly => FsGrant::ReadOnly,
                types::FsAccess::ReadWrite => FsGrant::ReadWrite,
            },
        },
        config: i
            .config
            .into_iter()
            .take(128)
            .map(|f| ConfigField {
                name: text(f.name, 128),
                ty: text(f.type_, 32),
                required: f.required,
                description: text(f.description, 1024),
            })
            .collect(),
        cacheable: i.cacheable,
        contract: CONTRACT.to_string(),
    }
}

/// Loads a plugin named in the manifest: built-in bytes or its file (with the sha256 pin).
pub fn load_plugin(
    runtime: &tokio::runtime::Runtime,
    host: &Host,
    manifest: &Manifest,
    name: &str,
) -> Result<LoadedPlugin, String> {
    runtime.block_on(load_named(host, manifest, name))
}

/// Like [`load_plugin`], inside a runtime.
pub async fn load_named(
    host: &Host,
    manifest: &Manifest,
    name: &str,
) -> Result<LoadedPlugin, String> {
    let decl = manifest.plugins.get(name);
    let (bytes, source) = match decl.map(|d| &d.source) {
        Some(PluginSource::File { path, sha256 }) => {
            let full = manifest.root.join(path);
            let bytes =
                Host::read_file(name, &full, sha256.as_deref()).map_err(|e| e.to_string())?;
            (bytes, full.display().to_string())
        }
        _ => match Host::builtin(name) {
            Some(b) => (b.to_vec(), "builtin".to_string()),
            None => {
                return Err(format!(
                    "plugin `{name}` is neither built in nor declared with a path"
                ));
            }
        },
    };
    host.load(name, &source, &bytes)
        .await
        .map_err(|e| e.to_string())
}

/// What each plugin documents, remembered by the sha256 of its component in
/// `<cache>/nestr/describe/` beside the compiled code ([`compile_cache_dir`]): checking a
/// manifest then reads a small file instead of starting the plugin host and loading the plugin.
/// A document is only ever written from a plugin this build of nestr loaded; one written by
/// another build is not used.
mod described {
    use crate::manifest::PluginDoc;

    /// This build of nestr: its version, contract and executable (size and modification time:
    /// a rebuilt nestr does not trust what an earlier build remembered).
    fn stamp() -> String {
        use std::os::unix::fs::MetadataExt;
        let exe = std::env::current_exe()
            .and_then(std::fs::metadata)
            .map(|m| format!("{}.{}.{}", m.len(), m.mtime(), m.mtime_nsec()))
            .unwrap_or_default();
        format!("{} {} {exe}", env!("CARGO_PKG_VERSION"), super::CONTRACT)
    }

    #[derive(serde::Serialize, serde::Deserialize)]
    struct File {
        nestr: String,
        doc: PluginDoc,
    }

    fn path(digest: &str) -> Option<std::path::PathBuf> {
        if !crate::cache::key::is_digest(digest) {
            return None;
        }
        let dir = super::compile_cache_dir()?.with_file_name("describe");
        Some(dir.join(format!("{digest}.json")))
    }

    pub fn read(digest: &str) -> Option<PluginDoc> {
        let text = std::fs::read(path(digest)?).ok()?;
        let file: File = serde_json::from_slice(&text).ok()?;
        (file.nestr == stamp()).then_some(file.doc)
    }

    /// Best effort: a cache that cannot be written only means loading the plugin next time.
    pub fn write(digest: &str, doc: &PluginDoc) {
        let Some(path) = path(digest) else { return };
        let Some(dir) = path.parent() else { return };
        let file = File {
            nestr: stamp(),
            doc: doc.clone(),
        };
        let Ok(text) = serde_json::to_vec(&file) else {
            return;
        };
        let tmp = dir.join(format!(".{digest}.{}.tmp", std::process::id()));
        let written = std::fs::create_dir_all(dir)
            .and_then(|()| std::fs::write(&tmp, text))
            .and_then(|()| std::fs::rename(&tmp, &path));
        if written.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
    }
}

/// Checks every operation's `config` against the fields its plugin documents (see
/// [`Manifest::check_config`]): what each plugin documents is read from the describe cache by
/// its component's digest, or else the plugin is loaded through the shared host (and what it
/// documents remembered). A plugin that cannot be loaded is not checked here: its steps say why
/// it cannot run. Blocking, callable from anywhere (it runs on a thread of its own).
pub fn check_config(manifest: &Manifest) -> Result<(), crate::manifest::InvalidManifest> {
    let mut used: Vec<&str> = manifest
        .operations
        .values()
        .chain(manifest.services.iter().flat_map(|s| s.operations.values()))
        .map(|op| op.plugin.as_str())
        .collect();
    used.sort_unstable();
    used.dedup();
    let mut docs: std::collections::HashMap<String, crate::manifest::PluginDoc> =
        Default::default();
    let mut digests: std::collections::HashMap<&str, String> = Default::default();
    used.retain(|name| {
        let Ok(digest) = crate::cache::key::plugin_digest(manifest, name) else {
            return true;
        };
        if let Some(doc) = described::read(&digest) {
            docs.insert(name.to_string(), doc);
            return false;
        }
        digests.insert(name, digest);
        true
    });
    if used.is_empty() {
        return manifest.check_config(&|name| docs.get(name).cloned());
    }
    let loaded: std::collections::HashMap<String, crate::manifest::PluginDoc> =
        std::thread::scope(|s| {
            s.spawn(|| {
                let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                else {
                    return Default::default();
                };
                let Ok(host) = Host::shared() else {
                    return Default::default();
                };
                rt.block_on(async {
                    let mut out = std::collections::HashMap::new();
                    for name in used {
                        match load_named(&host, manifest, name).await {
                            Ok(p) => {
                                let doc = p.info.doc();
                                // Remembered under the digest of the bytes just loaded.
                                if let Some(d) = digests.get(name)
                                    && *d == p.digest
                                {
                                    described::write(d, &doc);
                                }
                                out.insert(name.to_string(), doc);
                            }
                            Err(e) => {
                                tracing::debug!(plugin = name, error = %e, "config not checked")
                            }
                        }
                    }
                    out
                })
            })
            .join()
            .unwrap_or_default()
        });
    docs.extend(loaded);
    manifest.check_config(&|name| docs.get(name).cloned())
}

/// The innermost message of an error chain.
fn root_cause(e: &wasmtime::Error) -> String {
    e.root_cause().to_string()
}

/// Masks every string of an outcome (summary, reason, and every key and value of its artifacts
/// and metrics) at the step's one redaction boundary.
fn seal(outcome: &mut StepOutcome, masker: &crate::redact::Redactor) {
    outcome.summary = masker.mask(&outcome.summary);
    outcome.reason = outcome.reason.as_deref().map(|r| masker.mask(r));
    for a in &mut outcome.artifacts {
        a.path = masker.mask(&a.path);
        a.kind = masker.mask(&a.kind);
        a.sha256 = a.sha256.as_deref().map(|h| masker.mask(h));
    }
    masker.mask_json(&mut outcome.metrics);
}

/// Caps on what a plugin's report may make the engine keep.
mod report_caps {
    pub const SUMMARY: usize = 1024;
    pub const REASON: usize = 16 * 1024;
    pub const METRICS: usize = 256;
    pub const METRIC_KEY: usize = 128;
    pub const METRIC_VALUE: usize = 4096;
    pub const ARTIFACTS: usize = 1000;
    pub const ARTIFACT_PATH: usize = 4096;
    pub const ARTIFACT_KIND: usize = 64;
}

/// `s` cut to `max` bytes; notes the cut in `cuts` as `what`.
fn capped(s: String, max: usize, what: &str, cuts: &mut Vec<String>) -> String {
    if s.len() <= max {
        return s;
    }
    cuts.push(format!("{what} of {} bytes to {max}", s.len()));
    caps::clip(&s, max)
}

fn classify(
    result: Option<wasmtime::Result<Result<types::Report, types::Error>>>,
    hit_memory: bool,
    cancelled: bool,
    caps: &Effective,
    timeout: Duration,
    denials: &Denials,
    cuts: &mut Vec<String>,
) -> StepOutcome {
    let timed_out = || {
        StepOutcome::new(
            StepStatus::TimedOut,
            format!(
                "timed out after {}",
                humantime::format_duration(round_ms(timeout))
            ),
            Some(format!(
                "the step did not finish within its deadline of {}; raise it with `timeout` in the \
                 plugin's grants",
                humantime::format_duration(round_ms(timeout))
            )),
        )
    };
    match result {
        None if cancelled => StepOutcome::new(
            StepStatus::Cancelled,
            "cancelled",
            Some("the run was cancelled".into()),
        ),
        None => timed_out(),
        Some(Ok(Ok(report))) => from_report(report, cuts),
        Some(Ok(Err(types::Error::Denied(d)))) => {
            let capability = caps::clip(&d.capability, caps::MAX_ECHO);
            let requested = caps::clip(&d.requested, caps::MAX_ECHO);
            match denials.find(&d.capability, &d.requested) {
                // The engine refused exactly this: its own hint, not the plugin's.
                Some(grant) => StepOutcome::new(
                    StepStatus::Denied,
                    format!("denied {capability} `{requested}`"),
                    Some(format!("denied {capability} `{requested}`: {grant}")),
                ),
                None => StepOutcome::new(
                    StepStatus::Failed,
                    "the plugin claims a refusal the engine did not make",
                    Some(format!(
                        "the plugin returned `denied {capability} `{requested}``, but nestr refused \
                         nothing of the kind in this step{} (the plugin's own text: {})",
                        if denials.any() {
                            " (it refused other requests; see the step log)"
                        } else {
                            ""
                        },
                        caps::clip(&d.grant, caps::MAX_ECHO)
                    )),
                ),
            }
        }
        Some(Ok(Err(types::Error::InvalidConfig(m)))) => {
            let m = capped(m, report_caps::REASON, "the invalid-config message", cuts);
            StepOutcome::new(
                StepStatus::Failed,
                caps::clip(&format!("invalid config: {m}"), report_caps::SUMMARY),
                Some(format!("invalid config: {m}")),
            )
        }
        Some(Ok(Err(types::Error::Failed(f)))) => {
            let m = capped(f.message, report_caps::REASON, "the failure message", cuts);
            let mut o = StepOutcome::new(
                StepStatus::Failed,
                caps::clip(&m, report_caps::SUMMARY),
                Some(m),
            );
            produced(&mut o, f.tests, f.artifacts, f.metrics, cuts);
            o
        }
        Some(Err(e)) => {
            let trap = e.downcast_ref::<Trap>().copied();
            if cancelled {
                return StepOutcome::new(
                    StepStatus::Cancelled,
                    "cancelled",
                    Some("the run was cancelled".into()),
                );
            }
            if hit_memory {
                return StepOutcome::new(
                    StepStatus::ResourceExhausted,
                    format!("out of memory (limit {} MiB)", caps.memory_mb),
                    Some(format!(
                        "the plugin needed more than its {} MiB of memory; raise it with \
                         `memory_mb` in the plugin's grants",
                        caps.memory_mb
                    )),
                );
            }
            match trap {
                Some(Trap::Interrupt) => timed_out(),
                Some(Trap::StackOverflow) => StepOutcome::new(
                    StepStatus::ResourceExhausted,
                    "wasm stack exhausted",
                    Some("the plugin exhausted its stack (unbounded recursion?)".into()),
                ),
                Some(t) => StepOutcome::new(
                    StepStatus::Failed,
                    format!("plugin trapped: {t}"),
                    Some(
                        "if it panicked, its message is in the step log (nestr logs RUN)"
                            .to_string(),
                    ),
                ),
                None => StepOutcome::new(StepStatus::Failed, "plugin failed", Some(root_cause(&e))),
            }
        }
    }
}

fn round_ms(d: Duration) -> Duration {
    Duration::from_millis(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn from_report(r: types::Report, cuts: &mut Vec<String>) -> StepOutcome {
    use report_caps as cap;
    let (status, reason) = match r.outcome {
        types::Outcome::Succeeded => (StepStatus::Succeeded, None),
        types::Outcome::Skipped(why) => (
            StepStatus::Skipped,
            Some(capped(why, cap::REASON, "the skip reason", cuts)),
        ),
    };
    let summary = capped(r.summary, cap::SUMMARY, "the summary", cuts);
    let mut o = StepOutcome::new(status, summary, reason);
    produced(&mut o, r.tests, r.artifacts, r.metrics, cuts);
    o
}

/// What a step produced, succeeded or failed: its test counts, artifacts and metrics, bounded.
fn produced(
    o: &mut StepOutcome,
    tests: Option<types::TestCounts>,
    artifacts: Vec<types::Artifact>,
    metrics: Vec<(String, String)>,
    cuts: &mut Vec<String>,
) {
    use report_caps as cap;
    o.tests = tests.map(|t| crate::model::TestCounts {
        passed: t.passed,
        failed: t.failed,
        skipped: t.skipped,
    });
    if artifacts.len() > cap::ARTIFACTS {
        cuts.push(format!(
            "{} artifacts to {}",
            artifacts.len(),
            cap::ARTIFACTS
        ));
    }
    let mut long = Vec::new();
    o.artifacts = artifacts
        .into_iter()
        .take(cap::ARTIFACTS)
        .map(|a| {
            // A digest is 64 hex digits or nothing.
            let sha = a
                .sha256
                .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()));
            crate::model::Artifact {
                path: capped(a.path, cap::ARTIFACT_PATH, "an artifact path", &mut long),
                kind: capped(a.kind, cap::ARTIFACT_KIND, "an artifact kind", &mut long),
                sha256: sha,
            }
        })
        .collect();
    if metrics.len() > cap::METRICS {
        cuts.push(format!("{} metrics to {}", metrics.len(), cap::METRICS));
    }
    o.metrics = serde_json::Value::Object(
        metrics
            .into_iter()
            .take(cap::METRICS)
            .map(|(k, v)| {
                (
                    capped(k, cap::METRIC_KEY, "a metric name", &mut long),
                    serde_json::Value::String(capped(
                        v,
                        cap::METRIC_VALUE,
                        "a metric value",
                        &mut long,
                    )),
                )
            })
            .collect(),
    );
    if !long.is_empty() {
        cuts.push(format!(
            "{} over-long artifact or metric fields",
            long.len()
        ));
    }
}
