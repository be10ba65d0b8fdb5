//! The host side of the `exec` interface: runs a granted program for a plugin.
//!
//! The program must be granted (checked in `caps`); its working folder must resolve (symbolic
//! links included) inside the service folder; its environment holds only granted names plus the
//! `NESTR_STEP` marker; it runs in its own process group. Its stdout and stderr stream into the
//! step log line by line as they arrive. At its deadline (its own timeout or the step's) or on
//! cancellation the group gets SIGTERM, then SIGKILL after a grace period. It is born inside the
//! step's containment (`crate::contain`: a cgroup per step, or a subreaper fallback); when it
//! ends, the whole containment is killed, and so is anything left in its group or carrying its
//! marker: no process outlives the call, whether it left the group (`setsid`), cleared its
//! environment (`env -i`) or ignores SIGTERM. The program is spawned by the absolute path `caps`
//! resolved (never found through a relative PATH entry, never inside a service folder).

use std::collections::VecDeque;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use tokio::io::AsyncReadExt;

use super::bindings::nestr::plugin::exec::{self, Command, Output};
use super::bindings::nestr::plugin::types;
use super::caps::{Denial, MAX_ECHO, clip};
use super::limits::KILL_GRACE;
use super::sink::{LineBuffer, StepLog};
use super::state::{Cancel, StepContext, StepState};
use crate::contain::Containment;
use crate::model::Stream;

/// Bytes of output returned to the plugin as `tail`.
const TAIL_BYTES: usize = 64 * 1024;

impl exec::Host for StepState {
    async fn run(&mut self, command: Command) -> Result<Output, types::Error> {
        let ctx = self.ctx.clone();
        run(&ctx, command).await
    }
}

/// Bytes of stdout a plugin may capture (`command.capture`).
const CAPTURE_BYTES: usize = 16 * 1024 * 1024;

/// The last bytes of a program's output, masked.
#[derive(Default)]
struct Tail {
    bytes: VecDeque<u8>,
    /// Earlier bytes were dropped to keep [`TAIL_BYTES`].
    cut: bool,
}

impl Tail {
    fn push(&mut self, line: &str) {
        self.bytes.extend(line.as_bytes());
        self.bytes.push_back(b'\n');
        while self.bytes.len() > TAIL_BYTES {
            self.bytes.pop_front();
            self.cut = true;
        }
    }

    fn text(&self) -> String {
        let (a, b) = self.bytes.as_slices();
        let mut v = a.to_vec();
        v.extend_from_slice(b);
        String::from_utf8_lossy(&v).into_owned()
    }
}

/// Ends everything the program started when dropped: at the end of the call, or when the call
/// was abandoned (the step's wall-clock bound dropped it).
struct GroupGuard<'a> {
    pgid: Option<Pid>,
    pid: Option<u32>,
    containment: &'a Containment,
    marker: &'a str,
}

impl GroupGuard<'_> {
    fn end(&mut self) {
        if let Some(pgid) = self.pgid.take() {
            let _ = killpg(pgid, Signal::SIGKILL);
        }
        // Every program a step starts is born inside its cgroup and cannot leave it without
        // write access to another cgroup — which would also let it clear its environment — so
        // the sweep of `/proc` for the step's marker (every process's environment read) is the
        // fallback's, not the cgroup's.
        if !self.containment.kill_all() {
            kill_marked(self.marker);
        }
        if let Some(pid) = self.pid.take() {
            crate::contain::unregister(pid, self.marker);
        }
    }
}

impl Drop for GroupGuard<'_> {
    fn drop(&mut self) {
        if self.pgid.is_some() || self.pid.is_some() {
            self.end();
        }
    }
}

/// A program to run inside a step's containment, its output streaming into the step's log.
pub struct Program<'a> {
    /// The program: an absolute path, or a name looked up on PATH.
    pub program: &'a Path,
    pub args: &'a [String],
    pub cwd: &'a Path,
    /// Its whole environment; `None`: this process's own (the user's command, `nestr exec`).
    pub env: Option<Vec<(String, String)>>,
    pub log: &'a Arc<StepLog>,
    pub containment: &'a Containment,
    /// The step's `NESTR_STEP` marker.
    pub marker: &'a str,
    pub cancel: &'a Cancel,
    /// When it gets SIGTERM (then SIGKILL after the grace period), if ever.
    pub deadline: Option<Instant>,
    /// How it is named in the step log's notices.
    pub shown: &'a str,
    /// Keep stdout (up to 16 MiB) for the caller instead of writing it to the log.
    pub capture: bool,
}

/// Captured stdout: its text (masked) and whether it was cut.
#[derive(Default)]
pub struct Captured {
    pub text: String,
    pub cut: bool,
}

/// How a [`Program`] ended.
pub struct Ended {
    pub status: ExitStatus,
    pub timed_out: bool,
    pub cancelled: bool,
    pub duration: Duration,
    /// The last 64 KiB of its output, masked.
    pub tail: String,
    /// `tail` lost earlier output.
    pub tail_cut: bool,
    /// Its stdout, when captured.
    pub stdout: Option<Captured>,
}

/// Runs `p` to its end: born inside the step's containment, in its own process group, stdin
/// closed, stdout and stderr streamed into the step log line by line; at its deadline or on
/// cancellation its group gets SIGTERM, then SIGKILL after the grace period; when it ends, the
/// whole containment is killed (nothing it started outlives it).
pub async fn run_program(p: Program<'_>) -> Result<Ended, String> {
    let started = Instant::now();
    let keep_pwd = p
        .env
        .as_ref()
        .is_none_or(|e| e.iter().any(|(k, _)| k == "PWD" || k == "OLDPWD"));
    // Born inside the step's containment (see `crate::contain`).
    let mut child_cmd = p
        .containment
        .command(p.program, p.args, keep_pwd, &|note| p.log.system(note));
    if let Some(env) = &p.env {
        child_cmd.env_clear().envs(env.iter().cloned());
    }
    child_cmd
        .current_dir(p.cwd)
        .env("NESTR_STEP", p.marker)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(false);
    let shown = p.shown;
    let mut child = crate::contain::spawn(&mut child_cmd, p.marker)
        .map_err(|e| format!("cannot start `{shown}`: {e}"))?;
    let pid = child.id();
    let pgid = pid.and_then(|id| i32::try_from(id).ok()).map(Pid::from_raw);
    let mut guard = GroupGuard {
        pgid,
        pid,
        containment: p.containment,
        marker: p.marker,
    };

    let tail = Arc::new(Mutex::new(Tail::default()));
    let mut readers = Vec::new();
    let mut captured = None;
    if let Some(out) = child.stdout.take() {
        if p.capture {
            captured = Some(tokio::spawn(capture(out, p.log.clone())));
        } else {
            readers.push(tokio::spawn(pump(
                Box::new(out),
                p.log.clone(),
                Stream::Stdout,
                tail.clone(),
            )));
        }
    }
    if let Some(err) = child.stderr.take() {
        readers.push(tokio::spawn(pump(
            Box::new(err),
            p.log.clone(),
            Stream::Stderr,
            tail.clone(),
        )));
    }

    let never = started + Duration::from_secs(100 * 365 * 24 * 3600);
    let deadline = p.deadline.unwrap_or(never);
    let (mut timed_out, mut cancelled) = (false, false);
    let status: std::io::Result<ExitStatus> = tokio::select! {
        s = child.wait() => s,
        () = tokio::time::sleep_until(deadline.into()) => {
            timed_out = true;
            p.log.system(format!(
                "[nestr: `{shown}` reached its deadline after {} ms; SIGTERM to its process group]",
                started.elapsed().as_millis()
            ));
            terminate(&mut child, pgid, p.log.as_ref()).await
        }
        () = p.cancel.cancelled() => {
            cancelled = true;
            p.log.system(format!("[nestr: cancelled; SIGTERM to `{shown}`]"));
            terminate(&mut child, pgid, p.log.as_ref()).await
        }
    };
    // Nothing of this program may outlive the call.
    guard.end();
    for r in readers {
        // Output still buffered in the pipes is read; a pipe held open by nothing is closed now.
        let _ = tokio::time::timeout(Duration::from_millis(500), r).await;
    }
    let stdout = match captured {
        Some(c) => Some(
            tokio::time::timeout(Duration::from_millis(500), c)
                .await
                .ok()
                .and_then(Result::ok)
                .unwrap_or_default(),
        ),
        None => None,
    };
    let status = status.map_err(|e| format!("waiting for `{shown}`: {e}"))?;
    let (tail, tail_cut) = tail.lock().map(|t| (t.text(), t.cut)).unwrap_or_default();
    Ok(Ended {
        status,
        timed_out,
        cancelled,
        duration: started.elapsed(),
        tail,
        tail_cut,
        stdout,
    })
}

/// The contract's `exec.run`: checked against the grants, run contained, recorded on the step's
/// tape when there is one.
pub async fn run(ctx: &StepContext, cmd: Command) -> Result<Output, types::Error> {
    let Some(tape) = &ctx.tape else {
        return run_checked(ctx, cmd).await;
    };
    let result = run_checked(ctx, cmd.clone()).await;
    tape.exec(&cmd, &result);
    result
}

async fn run_checked(ctx: &StepContext, cmd: Command) -> Result<Output, types::Error> {
    if ctx.cancel.is_cancelled() {
        return Err(failed("the step was cancelled"));
    }
    let program = match ctx.caps.check_exec(&cmd.program, &cmd.args) {
        Err(d) => return Err(ctx.denied(d)),
        Ok(Err(not_found)) => return Err(failed(not_found)),
        Ok(Ok(p)) => p,
    };
    for (name, _) in &cmd.env {
        if let Err(d) = ctx.caps.check_env(name) {
            return Err(ctx.denied(d));
        }
        if name == "NESTR_STEP" {
            return Err(failed("NESTR_STEP is set by the engine"));
        }
    }
    let cwd = match resolve_cwd(&ctx.service_dir, cmd.cwd.as_deref()) {
        Ok(dir) => dir,
        Err(Ok(d)) => return Err(ctx.denied(d)),
        Err(Err(msg)) => return Err(failed(msg)),
    };

    let mut envs = ctx.caps.environment();
    envs.extend(cmd.env.iter().cloned());
    let shown = clip(&cmd.program, MAX_ECHO);
    let own_deadline = cmd
        .timeout_ms
        .map(|ms| Instant::now() + Duration::from_millis(ms));
    let deadline = own_deadline.map_or(ctx.deadline, |d| d.min(ctx.deadline));
    let ended = run_program(Program {
        program: &program,
        args: &cmd.args,
        cwd: &cwd,
        env: Some(envs),
        log: &ctx.log,
        containment: &ctx.containment,
        marker: &ctx.marker,
        cancel: &ctx.cancel,
        deadline: Some(deadline),
        shown: &shown,
        capture: cmd.capture,
    })
    .await
    .map_err(failed)?;
    let duration_ms = u64::try_from(ended.duration.as_millis()).unwrap_or(u64::MAX);
    let masker = ctx.log.masker();
    ctx.programs.push(crate::cache::provenance::ProgramRun {
        argv: std::iter::once(program.to_string_lossy().into_owned())
            .chain(cmd.args.iter().cloned())
            .map(|a| masker.mask(&clip(&a, MAX_ECHO)))
            .collect(),
        exit_code: ended.status.code(),
        signal: ended.status.signal(),
        duration_ms,
    });
    let stdout = ended.stdout.unwrap_or_default();
    Ok(Output {
        exit_code: ended.status.code(),
        signal: ended.status.signal(),
        duration_ms,
        tail: ended.tail,
        tail_truncated: ended.tail_cut,
        log_truncated: ctx.log.truncated(),
        stdout: stdout.text,
        stdout_truncated: stdout.cut,
        timed_out: ended.timed_out,
    })
}

/// A failure the engine reports to the plugin (no tests, artifacts or metrics).
pub fn failed(message: impl Into<String>) -> types::Error {
    types::Error::Failed(types::Failure {
        message: message.into(),
        tests: None,
        artifacts: Vec::new(),
        metrics: Vec::new(),
    })
}

/// SIGTERM to the group, then SIGKILL after the grace period; waits for the child.
async fn terminate(
    child: &mut tokio::process::Child,
    pgid: Option<Pid>,
    log: &StepLog,
) -> std::io::Result<ExitStatus> {
    if let Some(pgid) = pgid {
        let _ = killpg(pgid, Signal::SIGTERM);
    }
    match tokio::time::timeout(KILL_GRACE, child.wait()).await {
        Ok(status) => status,
        Err(_) => {
            log.system(format!(
                "[nestr: still running {} s after SIGTERM; SIGKILL to its process group]",
                KILL_GRACE.as_secs()
            ));
            if let Some(pgid) = pgid {
                let _ = killpg(pgid, Signal::SIGKILL);
            }
            child.wait().await
        }
    }
}

/// Reads a pipe to its end, feeding the step log line by line and the tail.
async fn pump(
    mut reader: Box<dyn tokio::io::AsyncRead + Send + Unpin>,
    log: Arc<StepLog>,
    stream: Stream,
    tail: Arc<Mutex<Tail>>,
) {
    let mut lines = LineBuffer::with_tap(
        log,
        stream,
        Box::new(move |line: &str| {
            if let Ok(mut t) = tail.lock() {
                t.push(line);
            }
        }),
    );
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match reader.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => lines.write(&buf[..n]),
        }
    }
    lines.finish();
}

/// Reads a captured stdout to its end: kept up to [`CAPTURE_BYTES`] (the rest is read and
/// dropped, so the program never blocks on a full pipe), then masked.
async fn capture(mut reader: tokio::process::ChildStdout, log: Arc<StepLog>) -> Captured {
    let mut kept = Vec::new();
    let mut cut = false;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match reader.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let room = CAPTURE_BYTES.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
                cut |= n > room;
            }
        }
    }
    Captured {
        text: log.masker().mask(&String::from_utf8_lossy(&kept)),
        cut,
    }
}

/// The working folder: the service folder, or a folder inside it (symbolic links resolved).
fn resolve_cwd(
    service_dir: &Path,
    cwd: Option<&str>,
) -> Result<std::path::PathBuf, Result<Denial, String>> {
    let Some(rel) = cwd.filter(|c| !c.is_empty() && *c != ".") else {
        return Ok(service_dir.to_path_buf());
    };
    let outside = |what: &str| Denial {
        capability: "fs".into(),
        requested: format!("cwd {}", clip(what, MAX_ECHO)),
        grant: "no grant allows a working folder outside the service folder".into(),
    };
    if Path::new(rel).is_absolute() {
        return Err(Ok(outside(rel)));
    }
    let joined = service_dir.join(rel);
    let real = std::fs::canonicalize(&joined).map_err(|e| {
        if joined
            .components()
            .any(|c| c == std::path::Component::ParentDir)
        {
            Ok(outside(rel))
        } else {
            Err(format!(
                "working folder `{rel}` does not exist in the service folder: {e}"
            ))
        }
    })?;
    if !real.starts_with(service_dir) {
        return Err(Ok(outside(rel)));
    }
    // Not inside a repository's `.git` either (its hooks and config run code), as the plugin's
    // own filesystem view refuses it.
    if real.strip_prefix(service_dir).is_ok_and(|r| {
        r.components()
            .any(|c| c.as_os_str().eq_ignore_ascii_case(".git"))
    }) {
        return Err(Ok(Denial {
            capability: "fs".into(),
            requested: format!("cwd {}", clip(rel, MAX_ECHO)),
            grant: "no grant allows a working folder inside a repository's `.git`".into(),
        }));
    }
    if !real.is_dir() {
        return Err(Err(format!("working folder `{rel}` is not a folder")));
    }
    Ok(real)
}

/// Kills every process whose environment carries `NESTR_STEP=marker` (processes that left the
/// group, e.g. with setsid). Repeats while it finds some, as they may fork while dying.
pub fn kill_marked(marker: &str) {
    kill_where(|value| value == marker);
}

/// Kills every process whose `NESTR_STEP` marker starts with `prefix` (all steps of a run).
pub fn kill_marked_prefix(prefix: &str) {
    kill_where(|value| value.starts_with(prefix));
}

fn kill_where(matches: impl Fn(&str) -> bool) {
    const KEY: &[u8] = b"NESTR_STEP=";
    for _ in 0..5 {
        let mut found = 0;
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return;
        };
        for entry in entries.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<i32>().ok())
            else {
                continue;
            };
            if pid == std::process::id() as i32 {
                continue;
            }
            let Ok(environ) = std::fs::read(entry.path().join("environ")) else {
                continue;
            };
            let marked = environ
                .split(|&b| b == 0)
                .filter_map(|v| v.strip_prefix(KEY))
                .any(|v| std::str::from_utf8(v).is_ok_and(&matches));
            if marked {
                found += 1;
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
        if found == 0 {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
