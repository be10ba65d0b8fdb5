//! The dashboard's budgets in a real browser, against the release `nestr serve` (local mode,
//! rate limit off) over the generated 1,000-service, 20-repository workspace: the first paint of
//! the page of a run of 1,000 steps (against the baseline of fetching that run's JSON alone in the
//! same browser), a log of 1,000,000 lines opened, scrolled to its end, searched (against the
//! search request alone) and its first error line found, and how long a line a program prints
//! takes to show on the page of its run. Debian's Chromium driven by playwright-core
//! (`tests/ui/measure.mjs`; both provided by `tests/ui-tools.sh`). `NESTR_BENCH_ROUNDS` rounds
//! (default 5); each figure is printed as the median and the range over the rounds.
//!
//! `cargo bench --bench dashboard`

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{Result, big_workspace, serve};

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

fn run_id(ws: &Path, args: &[&str]) -> Result<String> {
    let mut all = vec!["run"];
    all.extend_from_slice(args);
    all.push("--json");
    let text = nestr(ws, &all)?;
    let v: serde_json::Value = serde_json::from_str(&text)?;
    Ok(v["run_id"].as_str().ok_or("no run id")?.to_string())
}

fn stats(v: &[f64]) -> (f64, f64, f64) {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    let med = v.get(v.len() / 2).copied().unwrap_or(f64::NAN);
    (
        med,
        v.first().copied().unwrap_or(f64::NAN),
        v.last().copied().unwrap_or(f64::NAN),
    )
}

fn main() -> Result<()> {
    let rounds: usize = std::env::var("NESTR_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let tools = Command::new("bash")
        .arg(root.join("tests/ui-tools.sh"))
        .arg(root.join("target/ui-tools"))
        .output()?;
    let tools: std::collections::HashMap<String, String> = String::from_utf8(tools.stdout)?
        .lines()
        .filter_map(|l| {
            l.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
        })
        .collect();
    if let Some(why) = tools.get("missing").or(tools.get("error")) {
        return Err(why.clone().into());
    }

    let tmp = tempfile::tempdir()?;
    let ws = big_workspace(
        tmp.path(),
        |r, s| {
            if s > 0 {
                format!("depends_on = [\"r{r:02}-s00\"]\n")
            } else {
                String::new()
            }
        },
        r#"
[services.r00-s00.operations]
flood = { plugin = "command", config = { run = [["sh", "-c", "seq 1 1000000 | sed -e 's/^654321$/error: the flux \\x63apacitor broke/' -e 's/^[0-9]*$/line & of the big log/'"]] } }

[services.r00-s02.operations]
ticks = { plugin = "command", config = { run = [["sh", "-c", "sleep 1; for i in $(seq 1 20); do echo tick $i $(date +%s%3N); sleep 0.1; done"]] } }

[operations.noop]
plugin = "command"
config = { run = [["true"]] }

[plugins.command]
grants = { exec = ["sh", "true"], env = ["PATH"], output_mb = 100 }
"#,
    )?;
    let run1000 = run_id(&ws, &["noop", "-j", "4"])?;
    let flood = run_id(&ws, &["flood"])?;

    let srv = serve(&ws)?;
    let cfg = serde_json::json!({
        "modules": tools["modules"],
        "chromium": tools["chromium"],
        "url": srv.url,
        "run1000": run1000,
        "flood": flood,
        "rounds": rounds,
    });
    let out = Command::new(&tools["node"])
        .arg(root.join("tests/ui/measure.mjs"))
        .arg(cfg.to_string())
        .output();
    drop(srv);
    let out = out?;
    if !out.status.success() {
        return Err(format!(
            "measure.mjs failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    let f: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let get = |k: &str| -> Vec<f64> {
        f[k].as_array()
            .map(|a| a.iter().filter_map(|v| v.as_f64()).collect())
            .unwrap_or_default()
    };
    println!(
        "dashboard, {rounds} rounds, release nestr serve, Debian's Chromium (headless) on loopback\n"
    );
    println!("| measure | median | range | baseline (median) | ratio |");
    println!("|---|---:|---:|---:|---:|");
    let row = |name: &str, k: &str, base: Option<&str>| {
        let (m, lo, hi) = stats(&get(k));
        let (b, r) = match base {
            Some(b) => {
                let (bm, _, _) = stats(&get(b));
                (format!("{bm:.0} ms"), format!("{:.1}×", m / bm))
            }
            None => ("-".into(), "-".into()),
        };
        println!("| {name} | {m:.0} ms | {lo:.0}–{hi:.0} ms | {b} | {r} |");
    };
    row(
        "first paint of `/runs/{id}`, 1,000 steps (vs fetching its JSON)",
        "paint_1000",
        Some("api_run_1000"),
    );
    row(
        "1,000,000-line log: open to its first line shown",
        "log_open",
        None,
    );
    row("… scrolled to its last line", "log_end", None);
    row(
        "… searched to the match shown (vs the search request)",
        "log_search",
        Some("api_search"),
    );
    row("… its first error line shown", "log_error", None);
    row(
        "a printed line shown on its run's page (20 lines per round)",
        "live",
        None,
    );
    Ok(())
}
