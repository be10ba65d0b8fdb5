//! Every limit a plugin runs under, in one place: guest CPU (an epoch deadline ticked by a
//! background thread; at every tick the guest yields to the async executor, so that a spinning
//! plugin never holds a runtime worker and every other step's timers fire on time), the
//! wall-clock deadline around the whole call, memory (one budget per store for all of its
//! linear memories and tables together, with bounded counts of instances, memories and tables,
//! and a limiter that remembers when it refused), host-side resources a plugin can make the
//! engine hold (resource-table entries, header bytes), the pooling allocator's slots and the
//! number of stores that may hold them at once, wasm stack depth, plugin file size, and the grace
//! period between SIGTERM and SIGKILL for programs a plugin runs.

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
/// Most table elements one table may have.
const MAX_TABLE_ELEMENTS: usize = 20_000;
/// What one table element is counted as against the memory budget (a function reference).
const TABLE_ELEMENT_BYTES: usize = 16;
/// Most core instances, linear memories and tables one store (one plugin call) may create: a
/// component built by `cargo build --target wasm32-wasip2` uses one memory, two tables and a
/// handful of instances; a second memory allows for an adapter.
pub const MAX_INSTANCES: usize = 16;
pub const MAX_MEMORIES: usize = 2;
pub const MAX_TABLES: usize = 4;
/// Stores that may hold pool slots at once; the pool has slots for this many of the largest
/// allowed stores, so a plugin that asks for the most it may have never starves another step
/// (a step beyond this waits for a slot; it does not fail).
pub const CONCURRENT_STORES: u32 = 64;
/// Unused slots kept warm (resident) for the next instance.
const WARM_SLOTS: u32 = 4;
/// Entries a plugin may hold in its resource table (streams, pollables, fields, …).
pub const MAX_RESOURCES: usize = 1024;
/// Bytes of headers one wasi:http `fields` may hold (wasmtime's default is 128 KiB); with
/// [`MAX_RESOURCES`] this bounds what header handles can make the host keep.
pub const FIELD_SIZE_LIMIT: usize = 16 * 1024;

/// The pooling allocator's configuration: slots for [`CONCURRENT_STORES`] stores of the largest
/// allowed shape; each memory may grow to wasm32's 4 GiB (address space is reserved, not
/// committed).
pub fn pool() -> wasmtime::PoolingAllocationConfig {
    let mut pool = wasmtime::PoolingAllocationConfig::default();
    let stores = CONCURRENT_STORES;
    pool.total_component_instances(stores)
        .total_core_instances(stores * MAX_INSTANCES as u32)
        .total_memories(stores * MAX_MEMORIES as u32)
        .total_tables(stores * MAX_TABLES as u32)
        .max_core_instances_per_component(MAX_INSTANCES as u32)
        .max_memories_per_component(MAX_MEMORIES as u32)
        .max_tables_per_component(MAX_TABLES as u32)
        .max_memories_per_module(MAX_MEMORIES as u32)
        .max_tables_per_module(MAX_TABLES as u32)
        .table_elements(MAX_TABLE_ELEMENTS)
        .max_memory_size(4 << 30)
        .linear_memory_keep_resident(2 << 20)
        .table_keep_resident(64 << 10)
        // Reuse warm slots rather than warm up new ones: over a long-lived process the slots
        // ever used (each keeping up to 2 MiB resident) stay near the most instances that ran
        // at once, not the whole pool.
        .max_unused_warm_slots(WARM_SLOTS);
    pool
}

/// Memory and table limits of one store: every linear memory and table it creates or grows
/// draws on one budget of `memory_mb`; records whether it ever refused memory, so that the
/// resulting trap is reported as `resource_exhausted`.
#[derive(Debug)]
pub struct Limiter {
    pub max_memory: usize,
    /// Bytes of memories and tables granted so far.
    pub used: usize,
    pub hit_memory_limit: bool,
}

impl Limiter {
    pub fn new(memory_mb: u64) -> Limiter {
        let bytes = usize::try_from(memory_mb.saturating_mul(1024 * 1024)).unwrap_or(usize::MAX);
        Limiter {
            max_memory: bytes,
            used: 0,
            hit_memory_limit: false,
        }
    }

    fn take(&mut self, bytes: usize) -> bool {
        match self.used.checked_add(bytes) {
            Some(total) if total <= self.max_memory => {
                self.used = total;
                true
            }
            _ => {
                self.hit_memory_limit = true;
                false
            }
        }
    }
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _max: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(self.take(desired.saturating_sub(current)))
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        _max: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > MAX_TABLE_ELEMENTS {
            return Ok(false);
        }
        Ok(self.take(
            desired
                .saturating_sub(current)
                .saturating_mul(TABLE_ELEMENT_BYTES),
        ))
    }

    fn instances(&self) -> usize {
        MAX_INSTANCES
    }

    fn tables(&self) -> usize {
        MAX_TABLES
    }

    fn memories(&self) -> usize {
        MAX_MEMORIES
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
