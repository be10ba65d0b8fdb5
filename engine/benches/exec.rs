//! Benchmark of `nestr exec` (`cargo bench --bench exec`): 50 local repositories, `nestr exec -j 4
//! -- true` (recorded as a run of 50 steps, each program in its folder's containment, its output
//! stored) against the baseline `xargs -P4` running `true` once in each repository's folder, in
//! the same run. NESTR_BENCH_ROUNDS (default 5) rounds of each; the median and the range.

mod common;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Result, git, run};

fn time(cmd: &mut Command) -> Result<Duration> {
    let t = Instant::now();
    let out = cmd.stdout(Stdio::null()).stderr(Stdio::piped()).output()?;
    if !out.status.success() {
        return Err(format!("{cmd:?}: {}", String::from_utf8_lossy(&out.stderr)).into());
    }
    Ok(t.elapsed())
}

fn stats(mut v: Vec<Duration>) -> (Duration, Duration, Duration) {
    v.sort();
    (v[v.len() / 2], v[0], v[v.len() - 1])
}

fn main() -> Result<()> {
    let rounds: usize = std::env::var("NESTR_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5)
        .max(1);
    let tmp = tempfile::Builder::new()
        .prefix("nestr-bench-exec-")
        .tempdir()?;
    let root = tmp.path();
    let mut manifest = String::from("[workspace]\nname = \"ex\"\n");
    for r in 0..50 {
        let src = root.join(format!("src/r{r:02}"));
        std::fs::create_dir_all(&src)?;
        git(&src, &["init", "-q"])?;
        std::fs::write(src.join("README"), "repo\n")?;
        git(&src, &["add", "-A"])?;
        git(&src, &["commit", "-qm", "init"])?;
        manifest.push_str(&format!("\n[repos.r{r:02}]\nurl = \"{}\"\n", src.display()));
    }
    let ws = root.join("ws");
    std::fs::create_dir_all(&ws)?;
    std::fs::write(ws.join("nestr.toml"), manifest)?;
    let nestr = env!("CARGO_BIN_EXE_nestr");
    run(Command::new(nestr)
        .current_dir(&ws)
        .args(["-q", "assemble", "-j", "8"]))?;
    let folders: Vec<PathBuf> = (0..50).map(|r| ws.join(format!("r{r:02}"))).collect();
    let list = folders
        .iter()
        .map(|f| f.display().to_string())
        .collect::<Vec<_>>()
        .join("\n");

    let (mut ours, mut base) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        ours.push(time(
            Command::new(nestr)
                .current_dir(&ws)
                .args(["-q", "exec", "-j", "4", "--", "true"]),
        )?);
        let t = Instant::now();
        let mut xargs = Command::new("xargs")
            .args(["-P4", "-I{}", "env", "-C", "{}", "true"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()?;
        if let Some(mut stdin) = xargs.stdin.take() {
            std::io::Write::write_all(&mut stdin, list.as_bytes())?;
        }
        if !xargs.wait()?.success() {
            return Err("xargs failed".into());
        }
        base.push(t.elapsed());
    }
    let ms = |d: Duration| format!("{:.0} ms", d.as_secs_f64() * 1000.0);
    let (om, olo, ohi) = stats(ours);
    let (bm, blo, bhi) = stats(base);
    println!("50 repositories, -j 4, {rounds} rounds (median, range)\n");
    println!("| command | median | range | vs xargs |");
    println!("|---|---:|---:|---:|");
    println!(
        "| `nestr exec -j 4 -- true` (a run of 50 steps recorded) | {} | {}–{} | {:.2}× |",
        ms(om),
        ms(olo),
        ms(ohi),
        om.as_secs_f64() / bm.as_secs_f64()
    );
    println!(
        "| `xargs -P4 env -C DIR true` (baseline) | {} | {}–{} | 1.00× |",
        ms(bm),
        ms(blo),
        ms(bhi)
    );
    Ok(())
}
