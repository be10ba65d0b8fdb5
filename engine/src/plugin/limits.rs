//! Every limit a plugin runs under, in one place: guest CPU (epoch deadline, ticked by a
//! background thread), the wall-clock deadline around the whole call, memory (a resource limiter
//! that remembers when it refused), wasm stack depth, plugin file size, and the grace period
//! between SIGTERM and SIGKILL for programs a plugin runs.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use wasmtime::{Engine, ResourceLimiter};

/// How often the epoch advances; guest CPU deadlines are enforced to this resolution.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);
/// Deepest wasm stack a plugin may use.
pub const MAX_WASM_STACK: usize = 1024 * 1024;
/// Largest plugin file accepted.
pub const MAX_PLUGIN_BYTES: u64 = 64 * 1024 * 1024;
/// Between SIGTERM and SIGKILL for a program's process group.
pub const KILL_GRACE: Duration = Duration::from_secs(2);
/// Deadline of `describe()` when a plugin is loaded.
pub const DESCRIBE_TIMEOUT: Duration = Duration::from_secs(5);
/// Most table elements and instances a plugin may create.
const MAX_TABLE_ELEMENTS: usize = 100_000;
const MAX_INSTANCES: usize = 64;

/// Epoch ticks for a deadline `d` from now (at least one).
pub fn ticks(d: Duration) -> u64 {
    (d.as_millis() / EPOCH_TICK.as_millis()).max(1) as u64 + 1
}

/// Memory and table limits of one store; records whether it ever refused to grow memory, so that
/// the resulting trap is reported as `resource_exhausted`.
#[derive(Debug)]
pub struct Limiter {
    pub max_memory: usize,
    pub hit_memory_limit: bool,
}

impl Limiter {
    pub fn new(memory_mb: u64) -> Limiter {
        let bytes = usize::try_from(memory_mb.saturating_mul(1024 * 1024)).unwrap_or(usize::MAX);
        Limiter {
            max_memory: bytes,
            hit_memory_limit: false,
        }
    }
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _max: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.max_memory {
            self.hit_memory_limit = true;
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _max: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }

    fn instances(&self) -> usize {
        MAX_INSTANCES
    }
}

/// Advances the engine's epoch every [`EPOCH_TICK`] until dropped.
pub struct Ticker {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Ticker {
    pub fn start(engine: &Engine) -> Ticker {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let engine = engine.weak();
        let thread = std::thread::Builder::new()
            .name("nestr-epoch".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    match engine.upgrade() {
                        Some(e) => e.increment_epoch(),
                        None => break,
                    }
                }
            })
            .ok();
        Ticker { stop, thread }
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
