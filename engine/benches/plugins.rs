//! Benchmark of the plugin host, in one run (`cargo bench --bench plugins`):
//! - first compile of each built-in plugin (empty cache) and load from the compiled cache
//!   (a fresh engine over the same cache folder: hash, deserialize, pre-instantiate, describe);
//! - instantiate + describe + run of the no-op fixture on a fresh store each call, median over
//!   NESTR_BENCH_CALLS calls (default 2,000), with on-demand and pooling allocation;
//! - the same through `Host::run_step` (the whole step: WASI context, log, limits);
//! - spawning `/bin/true` (median of 300) as the baseline.
//!
//! Prints a table for docs/PERFORMANCE.md.

use std::sync::Arc;
use std::time::{Duration, Instant};

use nestr::manifest::Grants;
use nestr::plugin::bindings::types;
use nestr::plugin::caps::{self, Declared};
use nestr::plugin::sink::{Redactor, StepLog};
use nestr::plugin::state::{Cancel, StepContext};
use nestr::plugin::{Host, StepRequest};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn us(d: Duration) -> String {
    format!("{:.1} µs", d.as_secs_f64() * 1e6)
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

/// A step context with no log subscribers, no audit and `deadline` from now.
fn step_context(
    caps: &caps::Effective,
    service_dir: &std::path::Path,
    deadline: Duration,
) -> Arc<StepContext> {
    Arc::new(StepContext {
        run_id: "bench".into(),
        step_id: 1,
        caps: caps.clone(),
        log: StepLog::new(1, Arc::new(Redactor::default()), 1024, vec![]),
        service_dir: service_dir.to_path_buf(),
        started: Instant::now(),
        deadline: Instant::now() + deadline,
        cancel: Cancel::default(),
        marker: String::new(),
        audit: Arc::new(|_| {}),
        denials: Default::default(),
        containment: nestr::contain::Containment::new("bench", 256),
        programs: Default::default(),
        tape: None,
        gate: None,
    })
}

fn main() -> Result<()> {
    let calls: usize = std::env::var("NESTR_BENCH_CALLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let cache = tempfile::tempdir()?;
    let wasm_dir = std::path::Path::new(env!("NESTR_PLUGIN_WASM_DIR"));

    println!("| measurement | value |");
    println!("|---|---:|");

    // Compile each built-in into an empty cache, then load it through a fresh engine.
    let cold = Host::new(Some(cache.path())).map_err(|e| e.to_string())?;
    let mut compile_times = Vec::new();
    for name in ["command", "cargo", "npm", "http-deploy"] {
        let bytes = Host::builtin(name).ok_or("builtin")?;
        let t = Instant::now();
        rt.block_on(cold.load(name, "builtin", bytes))
            .map_err(|e| e.to_string())?;
        let took = t.elapsed();
        compile_times.push((name, took, bytes.len()));
        println!(
            "| first compile + load of `{name}` ({} KiB) | {} |",
            bytes.len() / 1024,
            ms(took)
        );
    }
    drop(cold);
    // The cache writes in the background: give it a moment.
    std::thread::sleep(Duration::from_millis(500));
    let warm = Host::new(Some(cache.path())).map_err(|e| e.to_string())?;
    for (name, _, _) in &compile_times {
        let bytes = Host::builtin(name).ok_or("builtin")?;
        let mut times = Vec::new();
        for _ in 0..20 {
            let t = Instant::now();
            rt.block_on(warm.load(name, "builtin", bytes))
                .map_err(|e| e.to_string())?;
            times.push(t.elapsed());
        }
        println!(
            "| load of `{name}` from the compiled cache (median of 20) | {} |",
            ms(median(times))
        );
    }

    // Instantiate + describe + run of a no-op plugin on a fresh store per call.
    let noop = std::fs::read(wasm_dir.join("noop.wasm"))?;
    let service = tempfile::tempdir()?;
    let service_dir = std::fs::canonicalize(service.path())?;
    let request = StepRequest {
        operation: "build".into(),
        run_id: "bench".into(),
        service: types::Service {
            name: "svc".into(),
            repo: "r".into(),
            path: ".".into(),
            tags: vec![],
            depends_on: vec![],
        },
        commit: None,
        branch: None,
        config: serde_json::json!({}),
        folder: service_dir.clone(),
        dependencies: vec![],
        target: None,
    };
    let mut call_medians = Vec::new();
    for pooling in [false, true] {
        let host = Host::with_pooling(None, pooling).map_err(|e| e.to_string())?;
        let plugin = rt
            .block_on(host.load("noop", "noop", &noop))
            .map_err(|e| e.to_string())?;
        let caps = caps::effective("noop", &Declared::default(), &Grants::default())?;
        let mut phases: [Vec<Duration>; 4] = Default::default();
        let mut dispatch = Vec::with_capacity(calls);
        let mut step = Vec::with_capacity(calls);
        for i in 0..calls + 100 {
            let ctx = step_context(&caps, &service_dir, Duration::from_secs(10));
            let p = rt
                .block_on(host.dispatch_phases(&plugin, &request, ctx.clone()))
                .map_err(|e| e.to_string())?;
            let t = Instant::now();
            let outcome = rt.block_on(host.run_step(&plugin, &request, ctx));
            let s = t.elapsed();
            if outcome.status != nestr::model::StepStatus::Succeeded {
                return Err(format!("noop step ended {:?}", outcome.status).into());
            }
            if i >= 100 {
                for (all, d) in phases.iter_mut().zip(p) {
                    all.push(d);
                }
                // What a step does: store, instantiate, run (describe was answered at load).
                dispatch.push(p[0] + p[1] + p[3]);
                step.push(s);
            }
        }
        let label = if pooling { "pooling" } else { "on-demand" };
        let dispatch = median(dispatch);
        call_medians.push((label, dispatch));
        let [build, instantiate, describe, run] = phases.map(median);
        println!(
            "| dispatch of a no-op step (store + instantiate + run), {label} allocation (median of {calls}) | {} |",
            us(dispatch)
        );
        println!(
            "| … of which: store with WASI context {} · instantiate {} · run {}; describe (not per step) {} | |",
            us(build),
            us(instantiate),
            us(run),
            us(describe)
        );
        println!(
            "| whole step via run_step (WASI ctx, log, limits), {label} (median of {calls}) | {} |",
            us(median(step))
        );
    }

    // How soon after its deadline an infinite loop is stopped (deadline 500 ms, 9 runs).
    let looping = std::fs::read(wasm_dir.join("loop.wasm"))?;
    let host = Host::new(None).map_err(|e| e.to_string())?;
    let plugin = rt
        .block_on(host.load("loop", "loop", &looping))
        .map_err(|e| e.to_string())?;
    let caps = caps::effective("loop", &Declared::default(), &Grants::default())?;
    let mut late = Vec::new();
    for _ in 0..9 {
        let deadline = Duration::from_millis(500);
        let ctx = step_context(&caps, &service_dir, deadline);
        let t = Instant::now();
        let outcome = rt.block_on(host.run_step(&plugin, &request, ctx));
        if outcome.status != nestr::model::StepStatus::TimedOut {
            return Err(format!("loop ended {:?}", outcome.status).into());
        }
        late.push(t.elapsed().saturating_sub(deadline));
    }
    let worst = late.iter().max().copied().unwrap_or_default();
    println!(
        "| infinite loop stopped after its deadline, median / worst of 9 (target ≤ 100 ms) | {} / {} |",
        ms(median(late)),
        ms(worst)
    );

    let mut spawns = Vec::new();
    for _ in 0..300 {
        let t = Instant::now();
        std::process::Command::new("/bin/true").status()?;
        spawns.push(t.elapsed());
    }
    let spawn = median(spawns);
    println!(
        "| spawn + wait of `/bin/true` (median of 300) | {} |",
        us(spawn)
    );
    for (label, d) in call_medians {
        println!(
            "| ratio dispatch / spawn, {label} | {:.3}× |",
            d.as_secs_f64() / spawn.as_secs_f64()
        );
    }
    Ok(())
}
