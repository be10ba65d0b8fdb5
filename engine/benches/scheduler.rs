//! Benchmark of the scheduler, in one run (`cargo bench --bench scheduler`):
//! - a generated workspace of 1,000 services in 20 repositories, `nestr run` at `-j 2` of a no-op
//!   plugin and of the `command` plugin running `/bin/true`, history recorded; baseline:
//!   `xargs -P2` running `/bin/true` once in each service folder;
//! - log ingestion: a step whose child writes 100 MB of lines, all stored; the stored rate and the
//!   engine's peak RSS compared with a no-op run's.
//!
//! NESTR_BENCH_ROUNDS (default 3) sets the repetitions; medians are printed.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;

use common::{Result, big_workspace};

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Runs `nestr` and samples its peak RSS (VmHWM) while it runs; returns (wall, peak KiB).
fn timed_nestr(ws: &Path, args: &[&str]) -> Result<(Duration, u64)> {
    let start = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_nestr"))
        .current_dir(ws)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let status_file = format!("/proc/{}/status", child.id());
    let mut peak = 0;
    loop {
        if let Ok(s) = std::fs::read_to_string(&status_file)
            && let Some(v) = s
                .lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        {
            peak = v;
        }
        if let Some(status) = child.try_wait()? {
            if !status.success() {
                let mut err = String::new();
                if let Some(mut e) = child.stderr.take() {
                    std::io::Read::read_to_string(&mut e, &mut err)?;
                }
                return Err(format!("nestr {args:?} failed: {err}").into());
            }
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok((start.elapsed(), peak))
}

fn main() -> Result<()> {
    let rounds: usize = std::env::var("NESTR_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let tmp = tempfile::Builder::new()
        .prefix("nestr-bench-sched-")
        .tempdir()?;
    let root = tmp.path();
    let noop = Path::new(env!("NESTR_PLUGIN_WASM_DIR")).join("noop.wasm");

    // 20 repositories with 50 service folders each.
    let mut folders: Vec<PathBuf> = Vec::new();
    let tail = format!(
        "\n[operations.noop]\nplugin = \"noop\"\n\n[operations.true]\nplugin = \"command\"\nconfig = {{ run = [[\"/bin/true\"]] }}\n\n\
         [operations.flood]\nplugin = \"command\"\nconfig = {{ run = [[\"sh\", \"-c\", \"yes 'a log line of the flood, 0123456789 abcdefghijklmnopqrstuvwxyz' | head -c 100000000\"]] }}\n\n\
         [plugins.noop]\npath = \"{}\"\n\n[plugins.command]\ngrants = {{ exec = [\"/bin/true\", \"sh\"], env = [\"PATH\"], output_mb = 200 }}\n",
        noop.display()
    );
    let ws = big_workspace(root, |_, _| String::new(), &tail)?;
    for r in 0..common::REPOS {
        for s in 0..common::PER_REPO {
            folders.push(ws.join(format!("r{r:02}/svc{s:02}")));
        }
    }
    // Warm the compile cache.
    timed_nestr(&ws, &["-q", "run", "noop", "-j", "2", "-s", "r00-s00"])?;
    timed_nestr(&ws, &["-q", "run", "true", "-j", "2", "-s", "r00-s00"])?;

    let (mut noop_t, mut true_t, mut xargs_t) = (vec![], vec![], vec![]);
    let list: String = folders
        .iter()
        .map(|f| format!("{}\n", f.display()))
        .collect();
    for _ in 0..rounds {
        noop_t.push(timed_nestr(&ws, &["-q", "run", "noop", "-j", "2"])?.0);
        true_t.push(timed_nestr(&ws, &["-q", "run", "true", "-j", "2"])?.0);
        let start = Instant::now();
        let mut xargs = Command::new("xargs")
            .args(["-P2", "-I{}", "env", "-C", "{}", "/bin/true"])
            .stdin(Stdio::piped())
            .spawn()?;
        if let Some(mut stdin) = xargs.stdin.take() {
            std::io::Write::write_all(&mut stdin, list.as_bytes())?;
        }
        if !xargs.wait()?.success() {
            return Err("xargs failed".into());
        }
        xargs_t.push(start.elapsed());
    }
    let (noop_m, true_m, xargs_m) = (median(noop_t), median(true_t), median(xargs_t));
    println!(
        "| measurement (1,000 services in 20 repos, -j 2, median of {rounds}) | wall | vs xargs -P2 |"
    );
    println!("|---|---:|---:|");
    println!(
        "| `nestr run noop` (no-op plugin, history recorded) | {:.3} s | {:.2}× |",
        noop_m.as_secs_f64(),
        noop_m.as_secs_f64() / xargs_m.as_secs_f64()
    );
    println!(
        "| `nestr run true` (command plugin running /bin/true) | {:.3} s | {:.2}× |",
        true_m.as_secs_f64(),
        true_m.as_secs_f64() / xargs_m.as_secs_f64()
    );
    println!(
        "| `xargs -P2 env -C DIR /bin/true` (baseline) | {:.3} s | 1.00× |",
        xargs_m.as_secs_f64()
    );

    // Log ingestion: 100 MB of lines from one step, all stored.
    let (_, base_peak) = timed_nestr(&ws, &["-q", "run", "noop", "-s", "r00-s00"])?;
    let (wall, peak) = timed_nestr(&ws, &["-q", "run", "flood", "-s", "r00-s00"])?;
    let conn = rusqlite::Connection::open(ws.join(".nestr/state.db"))?;
    let (stored, ms): (i64, i64) = conn.query_row(
        "SELECT (SELECT sum(length(text) + 1) FROM log_chunks WHERE step_id = s.id), s.duration_ms
         FROM steps s JOIN runs r ON r.id = s.run_id WHERE r.operation = 'flood' ORDER BY s.id DESC LIMIT 1",
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    let mb = stored as f64 / 1e6;
    println!("\n| log ingestion (one step writing 100 MB of lines) | value |");
    println!("|---|---:|");
    println!(
        "| stored | {mb:.1} MB in {:.2} s (step), {:.2} s (whole run) |",
        ms as f64 / 1000.0,
        wall.as_secs_f64()
    );
    println!("| stored rate | {:.1} MB/s |", mb / (ms as f64 / 1000.0));
    println!(
        "| engine peak RSS: no-op run / flood run / growth | {} / {} / {} MiB |",
        base_peak / 1024,
        peak / 1024,
        peak.saturating_sub(base_peak) / 1024
    );
    Ok(())
}
