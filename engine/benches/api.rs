//! Benchmark of the HTTP API under load (`cargo bench --bench api`), with `wrk` (Debian package
//! `wrk`) on the same machine, 64 connections, NESTR_BENCH_SECS (default 30) seconds each:
//! - `GET /health`;
//! - `GET /api/services` on a 1,000-service workspace (the default page of 100, and all 1,000);
//! - `GET /api/runs/{id}/logs` (a page of 1,000 lines) of a stored 100,000-line run;
//! - a minimal axum hello-world in this process, measured in the same run, as the ceiling;
//! - `/api/services` again while two runs execute (errors must be zero);
//! - concurrent runs, three cycles: 100 `POST /api/operations/run` from 16 clients at once while
//!   wrk loads `/api/services`; runs accepted per second, refusals (503 `queue_full`), the time
//!   until every accepted run has ended, p99 of `/api/services` meanwhile, and the server's RSS
//!   and open descriptors after each cycle (after the first they must stay level);
//!   NESTR_BENCH_CYCLES (default 3) cycles.
//!
//! The server is the release `nestr serve --rate-limit 0`; its RSS is sampled before and after
//! every load.

use std::path::Path;
use std::process::Command;

mod common;

use common::{Result, big_workspace, serve};

/// Operations and grants of the benchmark's workspace.
const TAIL: &str = "\n[operations.lines]\nplugin = \"command\"\nconfig = { run = [[\"sh\", \"-c\", \"seq 1 100000 | sed 's/^/log line number /'\"]] }\n\
         \n[operations.slow]\nplugin = \"command\"\nconfig = { run = [[\"sh\", \"-c\", \"for i in $(seq 1 600); do echo tick $i; sleep 0.1; done\"]] }\n\
         \n[operations.quick]\nplugin = \"command\"\nconfig = { run = [[\"sh\", \"-c\", \"echo quick; sleep 0.05\"]] }\n\
         \n[plugins.command]\ngrants = { exec = [\"sh\"], env = [\"PATH\"], output_mb = 64, timeout = \"10m\" }\n";

fn nestr(ws: &Path, args: &[&str]) -> Result<String> {
    let out = Command::new(env!("CARGO_BIN_EXE_nestr"))
        .current_dir(ws)
        .args(args)
        .output()?;
    if !out.status.success() {
        return Err(format!("nestr {args:?}: {}", String::from_utf8_lossy(&out.stderr)).into());
    }
    Ok(String::from_utf8(out.stdout)?)
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// What wrk reported.
struct Load {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    errors: u64,
    requests: u64,
}

fn ms(v: &str) -> f64 {
    let num: f64 = v
        .trim_end_matches(|c: char| c.is_ascii_alphabetic())
        .parse()
        .unwrap_or(f64::NAN);
    if v.ends_with("us") {
        num / 1000.0
    } else if v.ends_with("ms") {
        num
    } else if v.ends_with('s') {
        num * 1000.0
    } else {
        num
    }
}

fn wrk(url: &str, secs: u64) -> Result<Load> {
    let out = Command::new("wrk")
        .args(["-t2", "-c64", &format!("-d{secs}s"), "--latency", url])
        .output()
        .map_err(|e| format!("wrk is needed (apt-get install wrk): {e}"))?;
    let text = String::from_utf8(out.stdout)?;
    let find = |prefix: &str| {
        text.lines()
            .map(str::trim)
            .find(|l| l.starts_with(prefix))
            .map(|l| l.split_whitespace().map(str::to_string).collect::<Vec<_>>())
    };
    let rps = find("Requests/sec:")
        .and_then(|v| v.get(1)?.parse().ok())
        .ok_or(format!("no rate in\n{text}"))?;
    let p50 = find("50%")
        .and_then(|v| v.get(1).map(|s| ms(s)))
        .unwrap_or(f64::NAN);
    let p99 = find("99%")
        .and_then(|v| v.get(1).map(|s| ms(s)))
        .unwrap_or(f64::NAN);
    let requests = text
        .lines()
        .find(|l| l.contains("requests in"))
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    let mut errors = 0;
    if let Some(v) = find("Non-2xx or 3xx responses:") {
        errors += v.last().and_then(|n| n.parse::<u64>().ok()).unwrap_or(0);
    }
    if let Some(v) = find("Socket errors:") {
        errors += v
            .iter()
            .filter_map(|w| w.trim_end_matches(',').parse::<u64>().ok())
            .sum::<u64>();
    }
    Ok(Load {
        rps,
        p50_ms: p50,
        p99_ms: p99,
        errors,
        requests,
    })
}

fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// One cycle of the concurrent-runs load: 100 POSTs from 16 clients; (accepted ids, refused,
/// seconds the POSTs took).
fn burst_of_runs(url: &str) -> Result<(Vec<String>, usize, f64)> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let sent = AtomicUsize::new(0);
    let refused = AtomicUsize::new(0);
    let ids = std::sync::Mutex::new(Vec::new());
    let started = std::time::Instant::now();
    std::thread::scope(|s| {
        for _ in 0..16 {
            s.spawn(|| {
                while sent.fetch_add(1, Ordering::SeqCst) < 100 {
                    let r = agent
                        .post(url)
                        .header("content-type", "application/json")
                        .send(r#"{"operation":"quick","services":["r03-s00"]}"#);
                    let Ok(mut r) = r else { continue };
                    if r.status() == 202 {
                        let body: serde_json::Value = r.body_mut().read_json().unwrap_or_default();
                        if let (Some(id), Ok(mut ids)) = (body["run_id"].as_str(), ids.lock()) {
                            ids.push(id.to_string());
                        }
                    } else if r.status() == 503 {
                        refused.fetch_add(1, Ordering::SeqCst);
                    }
                }
            });
        }
    });
    let secs = started.elapsed().as_secs_f64();
    let ids = ids.into_inner().map_err(|_| "poisoned")?;
    Ok((ids, refused.into_inner(), secs))
}

/// Waits until no run is queued or running; seconds waited.
fn wait_idle(base: &str) -> Result<f64> {
    let started = std::time::Instant::now();
    loop {
        let mut busy = false;
        for st in ["queued", "running"] {
            let out = Command::new("curl")
                .args(["-s", &format!("{base}/api/runs?status={st}&limit=1")])
                .output()?;
            let page: serde_json::Value = serde_json::from_slice(&out.stdout)?;
            busy |= page["runs"].as_array().is_some_and(|r| !r.is_empty());
        }
        if !busy {
            return Ok(started.elapsed().as_secs_f64());
        }
        if started.elapsed().as_secs() > 600 {
            return Err("runs did not end within 10 minutes".into());
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

fn post(url: &str, body: &str) -> Result<String> {
    let out = Command::new("curl")
        .args([
            "-s",
            "-X",
            "POST",
            "-H",
            "content-type: application/json",
            "-d",
            body,
            url,
        ])
        .output()?;
    Ok(String::from_utf8(out.stdout)?)
}

fn main() -> Result<()> {
    let secs: u64 = std::env::var("NESTR_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30);
    let tmp = tempfile::tempdir()?;
    let root = tmp.path();
    let ws = big_workspace(
        root,
        |r, s| {
            let deps = if s > 0 {
                format!("depends_on = [\"r{r:02}-s{:02}\"]\n", s - 1)
            } else {
                String::new()
            };
            format!("tags = [\"team-{}\"]\n{deps}", r % 4)
        },
        TAIL,
    )?;

    // A stored run of 100,000 lines (one step), with its history.
    nestr(&ws, &["-q", "run", "lines", "-s", "r00-s00"])?;
    let runs: serde_json::Value =
        serde_json::from_str(&nestr(&ws, &["runs", "--json", "--operation", "lines"])?)?;
    let run_id = runs["runs"][0]["run_id"]
        .as_str()
        .ok_or("no run")?
        .to_string();

    // The ceiling: a minimal axum server in this process.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let hello = rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let app = axum::Router::new().route("/", axum::routing::get(|| async { "ok" }));
        tokio::spawn(async move { axum::serve(listener, app).await });
        Ok::<_, std::io::Error>(addr)
    })?;

    let srv = serve(&ws)?;
    let pid = srv.child.id();
    let u = |p: &str| format!("{}{p}", srv.url);
    // Warm up (first requests compile nothing, but fill caches).
    for p in ["/health", "/api/services", "/api/services?limit=1000"] {
        Command::new("curl")
            .args(["-sf", "-o", "/dev/null", &u(p)])
            .status()?;
    }
    // A page from the middle of the log: follow `next` cursors to line ~50,000.
    let mut after = String::new();
    for _ in 0..50 {
        let path = format!("/api/runs/{run_id}/logs?limit=1000{after}");
        let out = Command::new("curl").args(["-s", &u(&path)]).output()?;
        let page: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        if page["lines"].as_array().map(Vec::len) != Some(1000) {
            return Err(format!(
                "a logs page is not 1,000 lines: {}",
                String::from_utf8_lossy(&out.stdout)
            )
            .into());
        }
        after = format!("&after={}", page["next"].as_str().ok_or("no next")?);
    }
    let logs = format!("/api/runs/{run_id}/logs?limit=1000{after}");
    let step_logs = format!("/api/runs/{run_id}/logs?service=r00-s00&after=50000&limit=1000");

    println!(
        "wrk -t2 -c64 -d{secs}s --latency, nestr serve (release) vs axum hello-world in one run\n"
    );
    println!("| endpoint | req/s | p50 | p99 | errors | vs hello-world | RSS before → after |");
    println!("|---|---|---|---|---|---|---|");
    let ceiling = wrk(&format!("http://{hello}/"), secs)?;
    println!(
        "| axum hello-world (ceiling) | {:.0} | {:.2} ms | {:.2} ms | {} | 1.00× | - |",
        ceiling.rps, ceiling.p50_ms, ceiling.p99_ms, ceiling.errors
    );
    let mut peak_growth = 0i64;
    let mut row = |name: &str, path: &str| -> Result<Load> {
        let before = rss_kib(pid);
        let l = wrk(&u(path), secs)?;
        let after = rss_kib(pid);
        peak_growth = peak_growth.max(after as i64 - before as i64);
        println!(
            "| {name} | {:.0} | {:.2} ms | {:.2} ms | {} | {:.2}× | {:.1} → {:.1} MiB |",
            l.rps,
            l.p50_ms,
            l.p99_ms,
            l.errors,
            l.rps / ceiling.rps,
            before as f64 / 1024.0,
            after as f64 / 1024.0
        );
        Ok(l)
    };
    row("GET /health", "/health")?;
    row("GET /api/services (page of 100 of 1,000)", "/api/services")?;
    row(
        "GET /api/services?limit=1000 (all 1,000)",
        "/api/services?limit=1000",
    )?;
    row(
        "GET /api/runs/{id}/logs (1,000 lines from line 50,000 of 100k)",
        &logs,
    )?;
    row(
        "GET /api/runs/{id}/logs?service= (same, by step sequence)",
        &step_logs,
    )?;
    // Two runs executing while the load goes on.
    let a = post(
        &u("/api/operations/run"),
        r#"{"operation":"slow","services":["r01-s00"]}"#,
    )?;
    let b = post(
        &u("/api/operations/run"),
        r#"{"operation":"slow","services":["r02-s00"]}"#,
    )?;
    if !a.contains("run_id") || !b.contains("run_id") {
        return Err(format!("runs did not start: {a} {b}").into());
    }
    let busy = row("GET /api/services with 2 runs executing", "/api/services")?;
    row("GET /api/services again (RSS once warm)", "/api/services")?;
    println!(
        "\nrequests during the two runs: {}, errors: {}; largest RSS growth over one load: {} KiB",
        busy.requests, busy.errors, peak_growth
    );
    wait_idle(&srv.url)?;

    // Concurrent runs: three cycles of 100 POSTs from 16 clients while wrk loads /api/services.
    println!(
        "\nconcurrent runs: 100 POST /api/operations/run from 16 clients per cycle (max_runs and \
         max_queued at their defaults), wrk -c64 on /api/services meanwhile\n"
    );
    println!(
        "| cycle | accepted | refused (503) | accepted/s | all ended after | /api/services p99 (req/s) | RSS after | fds after | WAL after |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    let wal = || {
        std::fs::metadata(ws.join(".nestr/state.db-wal"))
            .map_or(0.0, |m| m.len() as f64 / 1048576.0)
    };
    println!(
        "| before | - | - | - | - | - | {:.1} MiB | {} | {:.1} MiB |",
        rss_kib(pid) as f64 / 1024.0,
        fds(pid),
        wal()
    );
    let load_secs = secs.clamp(5, 15);
    let cycles: usize = std::env::var("NESTR_BENCH_CYCLES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    for cycle in 1..=cycles {
        let services = u("/api/services");
        let load = std::thread::spawn(move || wrk(&services, load_secs).map_err(|e| e.to_string()));
        let (ids, refused, post_secs) = burst_of_runs(&u("/api/operations/run"))?;
        let ended = wait_idle(&srv.url)? + post_secs;
        let load = load.join().map_err(|_| "wrk thread")??;
        std::thread::sleep(std::time::Duration::from_secs(1));
        println!(
            "| {cycle} | {} | {refused} | {:.0} | {ended:.1} s | {:.2} ms ({:.0}) | {:.1} MiB | {} | {:.1} MiB |",
            ids.len(),
            ids.len() as f64 / post_secs,
            load.p99_ms,
            load.rps,
            rss_kib(pid) as f64 / 1024.0,
            fds(pid),
            wal()
        );
    }
    drop(srv);
    drop(rt);
    Ok(())
}
