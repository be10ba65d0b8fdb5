//! Benchmark: sync of 50 local repositories that each received new commits.
//!
//! `cargo bench --bench sync` builds 50 bare remotes, assembles a workspace once as a template,
//! pushes commits to every remote, then times — on a fresh copy of the template each time — nestr
//! `sync -j 1`, nestr `sync -j 4`, a sequential `git pull --ff-only` loop and
//! `xargs -P4 git pull --ff-only`, in rotating order. Every run is checked: all 50 checkouts must
//! end at their remote's new head. Prints medians and ratios (docs/PERFORMANCE.md).
//!
//! Environment: NESTR_BENCH_REPOS (default 50), NESTR_BENCH_ROUNDS (default 7).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use git2::{Repository, Signature};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

fn env_num(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn run(cmd: &mut Command) -> Result<()> {
    cmd.env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1");
    let out = cmd.output()?;
    if !out.status.success() {
        return Err(format!(
            "{cmd:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    Ok(())
}

/// Adds a commit on `main` of the bare repository changing `file`.
fn commit(bare: &Path, file: &str, content: &str) -> Result<git2::Oid> {
    let git = Repository::open_bare(bare)?;
    let parent = git
        .find_reference("refs/heads/main")
        .ok()
        .and_then(|r| r.peel_to_commit().ok());
    let base = parent.as_ref().map(|p| p.tree()).transpose()?;
    let mut tree = git.treebuilder(base.as_ref())?;
    tree.insert(file, git.blob(content.as_bytes())?, 0o100_644)?;
    let tree = git.find_tree(tree.write()?)?;
    let sig = Signature::now("bench", "bench@nestr.invalid")?;
    let parents: Vec<&git2::Commit<'_>> = parent.iter().collect();
    Ok(git.commit(
        Some("refs/heads/main"),
        &sig,
        &sig,
        "change",
        &tree,
        &parents,
    )?)
}

fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    run(Command::new("cp").arg("-a").arg(from).arg(to))
}

struct Method {
    name: &'static str,
    times: Vec<Duration>,
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() -> Result<()> {
    let n = env_num("NESTR_BENCH_REPOS", 50);
    let rounds = env_num("NESTR_BENCH_ROUNDS", 7);
    let nestr = env!("CARGO_BIN_EXE_nestr");
    let tmp = tempfile::Builder::new().prefix("nestr-bench-").tempdir()?;
    let root = tmp.path();
    let remotes = root.join("remotes");
    std::fs::create_dir_all(&remotes)?;

    // 50 remotes, each with 20 files and a few commits of history.
    let mut manifest = String::from("[workspace]\nname = \"bench\"\n");
    for i in 0..n {
        let bare = remotes.join(format!("r{i:02}.git"));
        let git = Repository::init_bare(&bare)?;
        git.set_head("refs/heads/main")?;
        for f in 0..20 {
            commit(
                &bare,
                &format!("file{f:02}.txt"),
                &format!("repo {i} file {f}\n").repeat(50),
            )?;
        }
        manifest.push_str(&format!(
            "\n[repos.r{i:02}]\nurl = \"{}\"\nbranch = \"main\"\n",
            bare.display()
        ));
    }
    let template = root.join("template");
    std::fs::create_dir_all(&template)?;
    std::fs::write(template.join("nestr.toml"), &manifest)?;
    run(Command::new(nestr)
        .current_dir(&template)
        .args(["-q", "assemble", "-j", "4"]))?;

    // Every remote receives three new commits.
    let mut want = Vec::new();
    for i in 0..n {
        let bare = remotes.join(format!("r{i:02}.git"));
        let mut last = None;
        for c in 0..3 {
            last = Some(commit(
                &bare,
                &format!("new{c}.txt"),
                &format!("upstream change {c}\n"),
            )?);
        }
        want.push(last.ok_or("no commit")?.to_string());
    }
    let dirs: Vec<String> = (0..n).map(|i| format!("r{i:02}")).collect();

    let mut methods = [
        Method {
            name: "nestr sync -j 1",
            times: vec![],
        },
        Method {
            name: "nestr sync -j 4",
            times: vec![],
        },
        Method {
            name: "git pull --ff-only, sequential loop",
            times: vec![],
        },
        Method {
            name: "xargs -P4 git pull --ff-only",
            times: vec![],
        },
    ];
    for round in 0..rounds {
        for k in 0..methods.len() {
            let m = (k + round) % methods.len();
            let ws: PathBuf = root.join(format!("run-{round}-{m}"));
            copy_tree(&template, &ws)?;
            let list = dirs.join("\n");
            let mut cmd = match m {
                0 | 1 => {
                    let mut c = Command::new(nestr);
                    c.current_dir(&ws)
                        .args(["-q", "sync", "-j", if m == 0 { "1" } else { "4" }]);
                    c
                }
                2 => {
                    let mut c = Command::new("bash");
                    c.current_dir(&ws).arg("-c").arg(format!(
                        "for d in {}; do git -C \"$d\" pull -q --ff-only || exit 1; done",
                        dirs.join(" ")
                    ));
                    c
                }
                _ => {
                    let mut c = Command::new("bash");
                    c.current_dir(&ws).arg("-c").arg(format!(
                        "printf '%s\\n' {} | xargs -P4 -I{{}} git -C {{}} pull -q --ff-only",
                        list.replace('\n', " ")
                    ));
                    c
                }
            };
            let start = Instant::now();
            run(&mut cmd)?;
            let took = start.elapsed();
            for (d, w) in dirs.iter().zip(&want) {
                let head = Repository::open(ws.join(d))?
                    .head()?
                    .target()
                    .ok_or("no head")?
                    .to_string();
                if &head != w {
                    return Err(format!("{}: {d} is at {head}, not {w}", methods[m].name).into());
                }
            }
            methods[m].times.push(took);
            std::fs::remove_dir_all(&ws)?;
        }
    }

    let medians: Vec<Duration> = methods.iter_mut().map(|m| median(&mut m.times)).collect();
    let seq = medians[2].as_secs_f64();
    let xargs = medians[3].as_secs_f64();
    println!("sync of {n} local repositories, 3 new commits each; median of {rounds} rounds");
    println!("| method | median | vs sequential git loop | vs xargs -P4 |");
    println!("|---|---:|---:|---:|");
    for (m, d) in methods.iter().zip(&medians) {
        let s = d.as_secs_f64();
        println!(
            "| {} | {:.0} ms | {:.2}× faster | {:.2}× faster |",
            m.name,
            s * 1000.0,
            seq / s,
            xargs / s
        );
    }
    let j4 = medians[1].as_secs_f64();
    println!(
        "\ntarget: -j 4 ≥ 2× faster than the sequential loop ({}), no slower than xargs -P4 ({})",
        if seq / j4 >= 2.0 { "met" } else { "NOT met" },
        if j4 <= xargs { "met" } else { "NOT met" }
    );
    Ok(())
}
