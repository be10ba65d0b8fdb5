//! Per-step process containment: no program a step starts may outlive it, however it tries to
//! leave (a new process group, a new session with `setsid`, a cleared environment with `env -i`,
//! SIGTERM ignored, a double fork), and a fork bomb stays inside a `pids` limit.
//!
//! The primary mechanism is a cgroup per step, made at the step's first `exec`:
//! - a cgroup v2 folder `nestr-<marker>` below this process's own cgroup, on the cgroup2 mount
//!   found in `/proc/mounts` (a hybrid hierarchy mounts it beside the v1 controllers, e.g. at
//!   `/sys/fs/cgroup/unified`); each program enters it before it runs a single instruction of
//!   its own, so every descendant is born inside: a trampoline shell (dash, spawned with
//!   `posix_spawn`) enters the cgroups and `exec`s the program, or where there is no dash, the
//!   child enters them between `fork` and `exec`; at the end of each `exec` call the whole cgroup
//!   is killed at once with `cgroup.kill`;
//! - the `pids` limit (`pids` grant) in that cgroup when the v2 `pids` controller is enabled
//!   there, else in a v1 `pids` hierarchy beside it.
//!
//! In both modes this process is a child subreaper (`PR_SET_CHILD_SUBREAPER`, set before the
//! first program starts), so orphaned descendants are re-parented to it instead of to init, and it
//! reaps them itself when it ends a step's programs: no zombie is left for an init that reaps
//! slowly.
//!
//! Where no cgroup can be made (no cgroup2 mount, no permission) the step falls back, and says so
//! in its log: at the end of each `exec` call a walk of this process's descendants kills every
//! process that no running step still owns (plus the `NESTR_STEP` marker sweep of
//! `plugin::exec`). `NESTR_CONTAIN=process` forces this fallback (tests use it).
//!
//! [`kill_run`] ends what a dead engine's run left behind (used by crash recovery).

use std::collections::HashSet;
use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{Id, WaitPidFlag, waitid, waitpid};
use nix::unistd::Pid;

/// How long the end of a step waits for its killed processes to be gone.
const KILL_WAIT: Duration = Duration::from_secs(2);

/// The containment of one step. Nothing is made until the first program is placed.
pub struct Containment {
    marker: String,
    pids: u64,
    state: Mutex<State>,
}

enum State {
    Unmade,
    Cgroup(Cgroups),
    Fallback,
}

/// The cgroup folders of a step.
struct Cgroups {
    /// The cgroup v2 folder (killed with `cgroup.kill`).
    v2: PathBuf,
    /// The v1 `pids` folder holding the limit, when the limit is not in `v2`.
    pids_v1: Option<PathBuf>,
    /// `cgroup.procs` of each, written by the trampoline (or the child) before the program runs.
    procs: Vec<CString>,
}

impl Containment {
    /// The containment of the step marked `marker` (run id and step id), with a `pids` limit.
    pub fn new(marker: &str, pids: u64) -> Containment {
        Containment {
            marker: marker.to_string(),
            pids,
            state: Mutex::new(State::Unmade),
        }
    }

    /// The command that starts `program` with `args` inside the step's containment, making the
    /// containment first if needed. `note` receives what the step log should say about it
    /// (once). `keep_pwd`: `PWD` or `OLDPWD` are among the variables the program is given.
    ///
    /// The program enters the step's cgroups before it runs an instruction of its own: through
    /// the trampoline shell (spawned with `posix_spawn`, cheap), or where there is none, in the
    /// child between `fork` and `exec` (a `fork` of the engine costs milliseconds).
    pub fn command(
        &self,
        program: &Path,
        args: &[String],
        keep_pwd: bool,
        note: &dyn Fn(String),
    ) -> tokio::process::Command {
        let procs = self.prepare(note);
        match (procs, trampoline()) {
            (Some(procs), Some(shell)) => {
                let mut cmd = tokio::process::Command::new(shell);
                let unset = if keep_pwd { "" } else { "unset PWD OLDPWD; " };
                cmd.arg("-c")
                    .arg(format!("{ENTER}{unset}exec \"$@\""))
                    .arg("nestr-enter");
                for p in &procs {
                    use std::os::unix::ffi::OsStrExt;
                    cmd.arg(std::ffi::OsStr::from_bytes(p.as_bytes()));
                }
                cmd.arg("--").arg(program).args(args);
                cmd
            }
            (Some(procs), None) => {
                let mut cmd = tokio::process::Command::new(program);
                cmd.args(args);
                enter_before_exec(cmd.as_std_mut(), procs);
                cmd
            }
            (None, _) => {
                let mut cmd = tokio::process::Command::new(program);
                cmd.args(args);
                cmd
            }
        }
    }

    /// Makes the containment at first use; the `cgroup.procs` files a program must enter, or
    /// none in the fallback.
    fn prepare(&self, note: &dyn Fn(String)) -> Option<Vec<CString>> {
        // A poisoned lock still holds the state: never start a program uncontained for it.
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if matches!(*state, State::Unmade) {
            // Orphans of the step's programs are re-parented to this process, which reaps them
            // when it ends the step's programs (an init that reaps slowly would leave zombies).
            become_subreaper();
            *state = match make(&self.marker, self.pids, note) {
                Ok(c) => State::Cgroup(c),
                Err(why) => {
                    note(format!(
                        "[nestr: no cgroup could be made for this step ({why}); its programs are \
                         contained by a subreaper and a walk of descendants instead, without a \
                         pids limit]"
                    ));
                    State::Fallback
                }
            };
        }
        match &*state {
            State::Cgroup(c) => Some(c.procs.clone()),
            _ => None,
        }
    }

    /// Kills every process of the step and waits (briefly) until they are gone. True when the
    /// step's cgroup held them all: no program of the step can be elsewhere, so no further sweep
    /// is needed; false in the fallback (and before any program started).
    pub fn kill_all(&self) -> bool {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        match &*state {
            State::Unmade => false,
            State::Cgroup(c) => {
                let mut killed = kill_cgroup(&c.v2);
                if let Some(v1) = &c.pids_v1 {
                    killed |= kill_listed(v1);
                }
                // This process is a subreaper: orphans of the step are its zombie children now
                // (re-parented as their parents die; after a kill, that takes a moment).
                if SUBREAPER.load(std::sync::atomic::Ordering::Relaxed) {
                    reap_zombies(killed);
                }
                true
            }
            State::Fallback => {
                reap_orphans(&self.marker);
                false
            }
        }
    }
}

impl Drop for Containment {
    /// Every `exec` call ends its programs itself; this removes the cgroups (killing what might
    /// be left first, which costs a read when nothing is).
    fn drop(&mut self) {
        let state = self.state.get_mut().unwrap_or_else(|p| p.into_inner());
        if let State::Cgroup(c) = &*state {
            kill_cgroup(&c.v2);
            for dir in c.pids_v1.iter().chain(std::iter::once(&c.v2)) {
                remove_dir(dir);
            }
        }
    }
}

/// The script of the trampoline shell: `sh -c SCRIPT nestr-enter PROCS… -- PROGRAM ARGS…` writes
/// `0` (itself) into each `cgroup.procs`, then becomes the program. A write that fails ends it
/// with exit code 125 before the program runs (fail closed).
const ENTER: &str = "for f do [ \"$f\" = -- ] && break; echo 0 > \"$f\" || { echo \"[nestr: cannot enter the step's cgroup ($f); the program was not started]\" >&2; exit 125; }; done; while [ \"$1\" != -- ]; do shift; done; shift; ";

/// The trampoline: `/bin/sh` when it is dash, which starts in well under a millisecond and
/// exports nothing of its own but `PWD` and `OLDPWD` (the script unsets them unless granted).
/// `NESTR_CONTAIN=fork` does without it (tests use it).
fn trampoline() -> Option<&'static Path> {
    static SHELL: OnceLock<Option<PathBuf>> = OnceLock::new();
    SHELL
        .get_or_init(|| {
            if std::env::var("NESTR_CONTAIN").is_ok_and(|v| v == "fork") {
                return None;
            }
            let real = std::fs::canonicalize("/bin/sh").ok()?;
            real.file_name()?
                .to_str()?
                .starts_with("dash")
                .then(|| PathBuf::from("/bin/sh"))
        })
        .as_deref()
}

/// How programs are contained in this process: `NESTR_CONTAIN=process` forces the fallback.
fn cgroups_wanted() -> bool {
    std::env::var("NESTR_CONTAIN").map_or(true, |v| v != "process")
}

/// The cgroup2 mount point and this process's cgroup on it.
fn v2_base() -> Result<PathBuf, String> {
    let mounts =
        std::fs::read_to_string("/proc/mounts").map_err(|e| format!("/proc/mounts: {e}"))?;
    let mount = mounts
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.len() > 2 && f[2] == "cgroup2")
        .map(|f| unescape(f[1]))
        .ok_or("no cgroup2 file system is mounted")?;
    let own = own_cgroup(|h, _| h == "0").ok_or("this process has no cgroup v2 path")?;
    Ok(join_cgroup(Path::new(&mount), &own))
}

/// The v1 `pids` hierarchy's mount point and this process's cgroup in it.
fn v1_pids_base() -> Option<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/mounts").ok()?;
    let mount = mounts
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.len() > 3 && f[2] == "cgroup" && f[3].split(',').any(|o| o == "pids"))
        .map(|f| unescape(f[1]))?;
    let own = own_cgroup(|_, controllers| controllers.split(',').any(|c| c == "pids"))?;
    Some(join_cgroup(Path::new(&mount), &own))
}

/// This process's cgroup path in the hierarchy that `pick(id, controllers)` selects.
fn own_cgroup(pick: impl Fn(&str, &str) -> bool) -> Option<String> {
    let text = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    text.lines().find_map(|l| {
        let mut parts = l.splitn(3, ':');
        let (id, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        pick(id, controllers).then(|| path.to_string())
    })
}

fn join_cgroup(mount: &Path, path: &str) -> PathBuf {
    mount.join(path.trim_start_matches('/'))
}

/// `/proc/mounts` escapes spaces and a few other bytes as `\ooo`.
fn unescape(field: &str) -> String {
    let mut out = String::new();
    let mut chars = field.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\\' {
            let code: String = chars.by_ref().take(3).collect();
            match u8::from_str_radix(&code, 8) {
                Ok(b) => out.push(char::from(b)),
                Err(_) => {
                    out.push('\\');
                    out.push_str(&code);
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Makes the step's cgroup folders and sets its `pids` limit.
fn make(marker: &str, pids: u64, note: &dyn Fn(String)) -> Result<Cgroups, String> {
    if !cgroups_wanted() {
        return Err("NESTR_CONTAIN=process".into());
    }
    let name = format!("nestr-{marker}");
    let v2 = v2_base()?.join(&name);
    create_dir(&v2)?;
    let procs_v2 = v2.join("cgroup.procs");
    if !procs_v2.exists() {
        remove_dir(&v2);
        return Err(format!("{} is not a cgroup", v2.display()));
    }
    let mut procs = vec![c_path(&procs_v2)?];
    let mut pids_v1 = None;
    let limit = pids.to_string();
    if std::fs::write(v2.join("pids.max"), &limit).is_err() {
        match v1_pids_base().map(|base| base.join(&name)) {
            Some(dir)
                if create_dir(&dir).is_ok()
                    && std::fs::write(dir.join("pids.max"), &limit).is_ok() =>
            {
                procs.push(c_path(&dir.join("cgroup.procs"))?);
                pids_v1 = Some(dir);
            }
            other => {
                if let Some(dir) = other {
                    remove_dir(&dir);
                }
                note(
                    "[nestr: no pids controller is available to this process; this step's \
                     programs are contained but their number is not limited]"
                        .to_string(),
                );
            }
        }
    }
    Ok(Cgroups { v2, pids_v1, procs })
}

fn create_dir(dir: &Path) -> Result<(), String> {
    match std::fs::create_dir(dir) {
        Ok(()) => Ok(()),
        // Left by an engine that died: empty it, then use it.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            kill_cgroup(dir);
            Ok(())
        }
        Err(e) => Err(format!("cannot create {}: {e}", dir.display())),
    }
}

fn c_path(p: &Path) -> Result<CString, String> {
    use std::os::unix::ffi::OsStrExt;
    CString::new(p.as_os_str().as_bytes()).map_err(|_| format!("{} has a NUL byte", p.display()))
}

/// Makes the child write its own pid into each `cgroup.procs` between `fork` and `exec`: it is
/// inside the step's cgroups before it runs a single instruction of the program, so nothing it
/// starts can be born outside. If that fails, the program is not started (fail closed).
#[allow(unsafe_code)]
fn enter_before_exec(cmd: &mut std::process::Command, procs: Vec<CString>) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs in the forked child before exec, where only async-signal-safe
    // functions may be called: it uses only open(2), write(2) and close(2) on paths made before
    // the fork, and allocates nothing (an error is built from errno, without allocating).
    unsafe {
        cmd.pre_exec(move || {
            use nix::libc;
            for path in &procs {
                let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let written = libc::write(fd, b"0".as_ptr().cast(), 1);
                let err = std::io::Error::last_os_error();
                libc::close(fd);
                if written != 1 {
                    return Err(err);
                }
            }
            Ok(())
        });
    }
}

/// Kills every process in the cgroup v2 folder `dir` (with `cgroup.kill` where the kernel has
/// it) and waits until it is empty; false (at once) when it was empty already.
fn kill_cgroup(dir: &Path) -> bool {
    if !populated(dir) {
        return false;
    }
    if std::fs::write(dir.join("cgroup.kill"), "1").is_err() {
        return kill_listed(dir);
    }
    let until = Instant::now() + KILL_WAIT;
    let mut pause = Duration::from_micros(200);
    while Instant::now() < until && populated(dir) {
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(5));
    }
    true
}

/// Whether a cgroup v2 folder holds a live process (`cgroup.events`; its process list where the
/// file cannot be read).
fn populated(dir: &Path) -> bool {
    match std::fs::read_to_string(dir.join("cgroup.events")) {
        Ok(events) => events.lines().any(|l| l.trim() == "populated 1"),
        Err(_) => !listed(dir).is_empty(),
    }
}

/// Kills the processes listed in `dir/cgroup.procs` until none is left (they may fork while it
/// runs; the pids limit bounds how often). True when there were some.
fn kill_listed(dir: &Path) -> bool {
    let until = Instant::now() + KILL_WAIT;
    let mut any = false;
    loop {
        let pids = listed(dir);
        if pids.is_empty() || Instant::now() >= until {
            return any;
        }
        any = true;
        for pid in pids {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn listed(dir: &Path) -> Vec<i32> {
    std::fs::read_to_string(dir.join("cgroup.procs"))
        .map(|t| t.lines().filter_map(|l| l.trim().parse().ok()).collect())
        .unwrap_or_default()
}

fn remove_dir(dir: &Path) {
    for _ in 0..50 {
        match std::fs::remove_dir(dir) {
            Ok(()) => return,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(_) => {
                kill_listed(dir);
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
    tracing::warn!(cgroup = %dir.display(), "could not remove a step's cgroup");
}

/// Ends every contained process of the steps whose marker starts with `prefix` (`RUN-` for a
/// run), wherever their cgroups are, and removes the cgroups. For crash recovery.
pub fn kill_run(prefix: &str) {
    let name = format!("nestr-{prefix}");
    let mut dirs: HashSet<PathBuf> = HashSet::new();
    if let Ok(base) = v2_base() {
        collect_leftovers(&base, &name, &mut dirs);
    }
    if let Some(base) = v1_pids_base() {
        collect_leftovers(&base, &name, &mut dirs);
    }
    for dir in &dirs {
        if dir.join("cgroup.kill").exists() {
            kill_cgroup(dir);
        } else {
            kill_listed(dir);
        }
        remove_dir(dir);
    }
}

fn collect_leftovers(base: &Path, name: &str, into: &mut HashSet<PathBuf>) {
    if let Ok(entries) = std::fs::read_dir(base) {
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with(name) {
                into.insert(e.path());
            }
        }
    }
}

// --- The fallback: a subreaper and a walk of descendants. ---

/// Programs that running steps started and still wait for (their pids), in this process.
fn live() -> &'static Mutex<HashSet<i32>> {
    static LIVE: OnceLock<Mutex<HashSet<i32>>> = OnceLock::new();
    LIVE.get_or_init(Mutex::default)
}

/// Markers of the steps whose programs run now, in this process.
fn live_markers() -> &'static Mutex<HashSet<String>> {
    static MARKERS: OnceLock<Mutex<HashSet<String>>> = OnceLock::new();
    MARKERS.get_or_init(Mutex::default)
}

/// Held while a program is spawned and registered, and while zombies are reaped: a program that
/// exits at once is a zombie child of this process before it is registered, and must not be
/// taken for an orphan (its step's `wait` would find no child).
static SPAWNING: Mutex<()> = Mutex::new(());

/// Spawns `cmd` for the step `marker` and registers the program (see [`register`]).
pub fn spawn(
    cmd: &mut tokio::process::Command,
    marker: &str,
) -> std::io::Result<tokio::process::Child> {
    let _held = SPAWNING.lock();
    let child = cmd.spawn()?;
    if let Some(pid) = child.id() {
        register(pid, marker);
    }
    Ok(child)
}

/// Marks `pid` as a program the step `marker` is waiting for: the walk of other steps leaves
/// it, its descendants, and processes carrying that marker alone.
fn register(pid: u32, marker: &str) {
    if let (Ok(p), Ok(mut l)) = (i32::try_from(pid), live().lock()) {
        l.insert(p);
    }
    if let Ok(mut m) = live_markers().lock() {
        m.insert(marker.to_string());
    }
}

/// The program `pid` of step `marker` has ended.
pub fn unregister(pid: u32, marker: &str) {
    if let (Ok(p), Ok(mut l)) = (i32::try_from(pid), live().lock()) {
        l.remove(&p);
    }
    if let Ok(mut m) = live_markers().lock() {
        m.remove(marker);
    }
}

/// The `NESTR_STEP` marker in a process's environment.
fn marker_of(pid: i32) -> Option<String> {
    let environ = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    environ
        .split(|&b| b == 0)
        .find_map(|v| v.strip_prefix(b"NESTR_STEP="))
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

/// Set once this process is a child subreaper.
static SUBREAPER: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn become_subreaper() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| match nix::sys::prctl::set_child_subreaper(true) {
        Ok(()) => SUBREAPER.store(true, std::sync::atomic::Ordering::Relaxed),
        Err(e) => tracing::warn!(error = %e, "could not become a child subreaper"),
    });
}

/// Reaps this process's zombie children that no step waits for (orphans re-parented to it).
/// `settle`: something was just killed, and re-parenting follows by a moment, so look again a
/// few times over ~10 ms.
fn reap_zombies(settle: bool) {
    let rounds = if settle { 6 } else { 1 };
    for round in 0..rounds {
        if round > 0 {
            std::thread::sleep(Duration::from_millis(2));
        }
        reap_unowned_children();
    }
}

/// One pass: `waitid` without reaping tells which child is waitable; an unowned one is reaped,
/// and where a step's own program is first in line, a scan of `/proc` finds the others.
fn reap_unowned_children() {
    let _held = SPAWNING.lock();
    let owned: HashSet<i32> = live().lock().map(|l| l.clone()).unwrap_or_default();
    for _ in 0..10_000 {
        let peek = waitid(
            Id::All,
            WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT,
        );
        let Some(pid) = peek.ok().and_then(|s| s.pid()) else {
            return;
        };
        if owned.contains(&pid.as_raw()) {
            // Its step reaps it; look for unowned zombies behind it.
            let me = i32::try_from(std::process::id()).unwrap_or(0);
            for (child, ppid, zombie) in parents() {
                if ppid == me && zombie && !owned.contains(&child) {
                    let _ = waitpid(Pid::from_raw(child), Some(WaitPidFlag::WNOHANG));
                }
            }
            return;
        }
        let _ = waitpid(pid, Some(WaitPidFlag::WNOHANG));
    }
}

/// Every process as `(pid, parent pid, zombie)`, from `/proc/PID/stat`.
fn parents() -> Vec<(i32, i32, bool)> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return vec![];
    };
    entries
        .flatten()
        .filter_map(|e| {
            let pid: i32 = e.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
            // The command name (field 2) may hold spaces and parentheses: fields resume after
            // the last `)`, with the state (field 3) and the parent (field 4).
            let mut rest = stat[stat.rfind(')')? + 1..].split_whitespace();
            let zombie = rest.next()? == "Z";
            let ppid: i32 = rest.next()?.parse().ok()?;
            Some((pid, ppid, zombie))
        })
        .collect()
}

/// Kills this process's descendants that no running step owns (orphans re-parented to this
/// subreaper, and everything below them), then reaps them. A process carrying the marker of
/// another step that is still running is that step's, and left alone. nestr starts no child
/// processes other than steps' programs, so an unowned child of the engine is a step's orphan.
fn reap_orphans(marker: &str) {
    let me = i32::try_from(std::process::id()).unwrap_or(0);
    for _ in 0..20 {
        let held = SPAWNING.lock();
        let owned: HashSet<i32> = live().lock().map(|l| l.clone()).unwrap_or_default();
        let others: HashSet<String> = live_markers()
            .lock()
            .map(|m| m.iter().filter(|m| *m != marker).cloned().collect())
            .unwrap_or_default();
        let tree = parents();
        // Descendants of this process, skipping the subtrees of programs still owned.
        let mut doomed: Vec<i32> = Vec::new();
        let mut frontier = vec![me];
        while let Some(p) = frontier.pop() {
            for &(child, parent, _) in &tree {
                if parent == p
                    && child != me
                    && !owned.contains(&child)
                    && !marker_of(child).is_some_and(|m| others.contains(&m))
                {
                    doomed.push(child);
                    frontier.push(child);
                }
            }
        }
        if doomed.is_empty() {
            return;
        }
        for &pid in &doomed {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        drop(held);
        std::thread::sleep(Duration::from_millis(10));
        let _held = SPAWNING.lock();
        // Orphans are this process's children now: reap them (never a program a step waits for).
        for &(child, parent, _) in &tree {
            if parent == me && doomed.contains(&child) {
                let _ = waitpid(Pid::from_raw(child), Some(WaitPidFlag::WNOHANG));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_fields_are_unescaped() {
        assert_eq!(
            unescape("/sys/fs/cgroup/uni\\040fied"),
            "/sys/fs/cgroup/uni fied"
        );
        assert_eq!(unescape("/plain"), "/plain");
    }

    #[test]
    fn cgroup_paths_join_below_the_mount() {
        assert_eq!(
            join_cgroup(Path::new("/sys/fs/cgroup/unified"), "/"),
            PathBuf::from("/sys/fs/cgroup/unified/")
        );
        assert_eq!(
            join_cgroup(Path::new("/sys/fs/cgroup"), "/user.slice/a.scope"),
            PathBuf::from("/sys/fs/cgroup/user.slice/a.scope")
        );
    }
}
