//! What the benchmarks share: running commands, git with the machine's configuration switched
//! off, the generated 1,000-service workspace (20 repositories of 50 service folders), and the
//! release `nestr serve` on a free loopback port.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

pub type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

pub const REPOS: usize = 20;
pub const PER_REPO: usize = 50;

/// Runs `cmd`; its output in the error when it fails.
pub fn run(cmd: &mut Command) -> Result<()> {
    let out = cmd.env("GIT_CONFIG_GLOBAL", "/dev/null").output()?;
    if !out.status.success() {
        return Err(format!(
            "{cmd:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    Ok(())
}

pub fn git(dir: &Path, args: &[&str]) -> Result<()> {
    run(Command::new("git")
        .current_dir(dir)
        .args([
            "-c",
            "user.name=b",
            "-c",
            "user.email=b@b",
            "-c",
            "init.defaultBranch=main",
        ])
        .args(args))
}

/// Writes 20 local repositories with 50 service folders each under `root/src`, and a manifest in
/// `root/ws` naming each folder as service `rRR-sSS` (plus `service_extra(r, s)` lines) followed
/// by `tail`; assembles it and returns `root/ws`.
pub fn big_workspace(
    root: &Path,
    service_extra: impl Fn(usize, usize) -> String,
    tail: &str,
) -> Result<PathBuf> {
    let mut manifest = String::from("[workspace]\nname = \"big\"\n");
    for r in 0..REPOS {
        let src = root.join(format!("src/r{r:02}"));
        std::fs::create_dir_all(&src)?;
        git(&src, &["init", "-q"])?;
        for s in 0..PER_REPO {
            let dir = src.join(format!("svc{s:02}"));
            std::fs::create_dir_all(&dir)?;
            std::fs::write(dir.join("README"), "service\n")?;
        }
        git(&src, &["add", "-A"])?;
        git(&src, &["commit", "-qm", "init"])?;
        manifest.push_str(&format!("\n[repos.r{r:02}]\nurl = \"{}\"\n", src.display()));
        for s in 0..PER_REPO {
            manifest.push_str(&format!(
                "\n[services.r{r:02}-s{s:02}]\nrepo = \"r{r:02}\"\npath = \"svc{s:02}\"\n{}",
                service_extra(r, s)
            ));
        }
    }
    manifest.push_str(tail);
    let ws = root.join("ws");
    std::fs::create_dir_all(&ws)?;
    std::fs::write(ws.join("nestr.toml"), &manifest)?;
    run(Command::new(env!("CARGO_BIN_EXE_nestr"))
        .current_dir(&ws)
        .args(["-q", "assemble", "-j", "4"]))?;
    Ok(ws)
}

/// A running `nestr serve`, stopped (SIGTERM) when dropped.
pub struct Server {
    pub child: Child,
    pub url: String,
    /// Kept open: the server wrote its start-up line there.
    _stdout: BufReader<std::process::ChildStdout>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

/// Starts `nestr serve` in `ws` on a free loopback port (rate limit off for the load).
pub fn serve(ws: &Path) -> Result<Server> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_nestr"))
        .current_dir(ws)
        .args(["serve", "--bind", "127.0.0.1:0", "--rate-limit", "0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let mut stdout = BufReader::new(child.stdout.take().ok_or("stdout")?);
    let mut line = String::new();
    stdout.read_line(&mut line)?;
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .ok_or_else(|| format!("no address in {line:?}"))?
        .to_string();
    Ok(Server {
        child,
        url,
        _stdout: stdout,
    })
}
