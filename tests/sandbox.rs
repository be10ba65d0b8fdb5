//! The sandbox against hostile plugins: one test per hole a sweep of hostile plugins found (see
//! plugins/fixtures/README.md), each named after what it guards, each on a real workspace with
//! the real `nestr` binary, asserting from the JSON report, the terminal output and the store.
//! The whole set also runs in one process in `plugins::after_every_fault_in_one_process_…`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::api::{Server, get};
use crate::plugins::{fixture_ws, probe, stored, wasm};
use crate::support::{Run, Sandbox, TestResult, git, isolate, pid_alive};

fn metric(m: &serde_json::Value, key: &str) -> String {
    m[key].as_str().unwrap_or("missing").to_string()
}

/// Bytes of the database and its WAL.
fn db_bytes(ws: &Path) -> Vec<u8> {
    let mut all = std::fs::read(ws.join(".nestr/state.db")).unwrap_or_default();
    all.extend(std::fs::read(ws.join(".nestr/state.db-wal")).unwrap_or_default());
    all
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

/// Processes whose environment carries a `NESTR_STEP` marker starting with `prefix`.
fn marked(prefix: &str) -> Vec<i32> {
    let want = format!("NESTR_STEP={prefix}");
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let pid: i32 = e.file_name().to_str()?.parse().ok()?;
            let env = std::fs::read(e.path().join("environ")).ok()?;
            env.split(|&b| b == 0)
                .any(|v| v.starts_with(want.as_bytes()))
                .then_some(pid)
        })
        .filter(|pid| pid_alive(&pid.to_string()))
        .collect()
}

// --- 1. Code execution through git -------------------------------------------------------------

#[test]
fn a_plugin_cannot_reach_a_repositorys_git_through_its_filesystem() -> TestResult {
    let sb = Sandbox::new();
    let ws = fixture_ws(
        &sb,
        "git_tamper",
        "fs = \"read-write\", exec = [\"true\"], env = [\"PATH\"]",
        "",
    );
    let svc = ws.join("app");
    let config_before = std::fs::read(svc.join(".git/config"))?;
    // A nested repository, a folder to plant a gitdir file in, a symlink to .git.
    std::fs::create_dir_all(svc.join("nested"))?;
    git(&svc.join("nested"), &["init", "-q"]);
    let nested_before = std::fs::read(svc.join("nested/.git/config"))?;
    std::fs::create_dir_all(svc.join("sub"))?;
    std::os::unix::fs::symlink(".git", svc.join("gitlink"))?;
    let (_, step) = probe(&sb, &ws);
    assert_eq!(step["status"], "succeeded", "{step}");
    let s = stored(&ws);
    for p in [
        "append_config",
        "write_hook",
        "read_config",
        "list_git",
        "stat_git",
        "nested_config",
        "gitfile",
        "via_symlink",
        "rename_git",
        "upper_case",
        "remove_git",
        "exec_in_git",
    ] {
        let v = metric(&s.metrics, p);
        assert!(v.starts_with("denied"), "{p}: {v}");
    }
    assert_eq!(metric(&s.metrics, "listing"), "hidden");
    assert_eq!(
        metric(&s.metrics, "write_tracked"),
        "ok",
        "tracked files stay writable (documented)"
    );
    assert_eq!(std::fs::read(svc.join(".git/config"))?, config_before);
    assert_eq!(
        std::fs::read(svc.join("nested/.git/config"))?,
        nested_before
    );
    assert!(!svc.join(".git/hooks/pre-commit").exists());
    assert!(!svc.join("sub/.git").exists());
    assert!(svc.join(".git").is_dir());
    assert!(
        s.audit.iter().any(|(cap, _)| cap == "fs"),
        "refusals are audited: {:?}",
        s.audit
    );
    assert!(s.log.contains("[nestr: denied fs"), "{}", s.log);
    // git itself still works and runs nothing planted.
    git(&svc, &["status", "--short"]);
    Ok(())
}

// --- 2. Relative PATH entries ------------------------------------------------------------------

#[test]
fn a_granted_program_is_never_found_through_a_relative_path_entry_or_in_a_service_folder()
-> TestResult {
    let sb = Sandbox::new();
    let r = sb.remote("app");
    // The repository carries its own `true` that would leave a mark if it ever ran.
    let mark = sb.path().join("planted-true-ran");
    let planted = r.work.join("true");
    std::fs::write(&planted, format!("#!/bin/sh\ntouch {}\n", mark.display()))?;
    std::fs::set_permissions(
        &planted,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )?;
    git(&r.work, &["add", "-A"]);
    git(&r.work, &["commit", "-qm", "plant"]);
    git(&r.work, &["push", "-q", "origin", "HEAD"]);
    let ws = sb.workspace(&format!(
        "[workspace]\nname = \"p\"\n[repos.app]\nurl = \"{{remotes}}/app.git\"\n[services.svc]\nrepo = \"app\"\n\
         [services.svc.operations]\nprobe = {{ plugin = \"fx\", config = {{ program = \"true\" }} }}\n\
         [plugins.fx]\npath = \"{}\"\ngrants = {{ exec = [\"true\"] }}\n",
        wasm("run_program").display()
    ));
    sb.nestr(&ws, &["assemble", "-q"]).ok();
    let svc = std::fs::canonicalize(ws.join("app"))?;
    let path = std::env::var("PATH").unwrap_or_default();
    for entry in [".", "", "app", "./"] {
        let run = sb.nestr_with(
            &svc,
            &["run", "probe", "--json"],
            &[("PATH", &format!("{entry}:{path}"))],
        );
        assert_eq!(run.code, 0, "{}", run.all());
        let s = stored(&ws);
        assert!(
            metric(&s.metrics, "result").starts_with("ran: exited with code 0"),
            "PATH entry {entry:?}: {}",
            s.metrics
        );
        assert!(
            !mark.exists(),
            "the planted `true` ran (PATH entry {entry:?})"
        );
    }
    // An absolute PATH entry inside the service folder is refused, not used.
    let run = sb.nestr_with(
        &ws,
        &["run", "probe", "--json"],
        &[("PATH", &format!("{}:{path}", svc.display()))],
    );
    assert_eq!(run.code, 0, "{}", run.all());
    let s = stored(&ws);
    let result = metric(&s.metrics, "result");
    assert!(
        result.starts_with("denied: exec `true`")
            && result.contains("a repository of the workspace"),
        "{result}"
    );
    assert!(!mark.exists(), "the planted `true` ran");
    Ok(())
}

// --- 3. Grant patterns that do not compile -----------------------------------------------------

#[test]
fn an_argument_pattern_that_does_not_compile_is_a_manifest_error_and_never_allows_more()
-> TestResult {
    let sb = Sandbox::new();
    // A pattern that compiles is enforced on every argument: `-c` only, so `sh -c "touch …"`
    // is refused at its second argument.
    let ws = fixture_ws(
        &sb,
        "run_program",
        "exec = [{ program = \"sh\", args = [\"-c\"] }]",
        "program = \"sh\", args = [\"-c\", \"touch smuggled\"]",
    );
    let (_, step) = probe(&sb, &ws);
    assert_eq!(step["status"], "succeeded", "{step}");
    let s = stored(&ws);
    assert!(
        metric(&s.metrics, "result").starts_with("denied"),
        "{}",
        s.metrics
    );
    assert!(!ws.join("app/smuggled").exists());
    for (pattern, why) in [
        ("args = [\"{build,test\"]", "not compile"),
        ("args = [\"[abc\"]", "not compile"),
        ("args = []", "empty `args` list"),
    ] {
        let ws = sb.workspace_at(
            "bad",
            &format!(
                "[workspace]\nname = \"x\"\n[repos.app]\nurl = \"{{remotes}}/app.git\"\n[services.a]\nrepo = \"app\"\n\
                 [services.a.operations]\nbuild = {{ plugin = \"command\", config = {{ run = [[\"make\"]] }} }}\n\
                 [plugins.command]\ngrants = {{ exec = [{{ program = \"make\", {pattern} }}] }}\n"
            ),
        );
        let run = sb.nestr(&ws, &["services"]).expect(2);
        assert!(
            run.stderr.contains("nestr.toml:10"),
            "{pattern}: {}",
            run.stderr
        );
        assert!(run.stderr.contains(why), "{pattern}: {}", run.stderr);
    }
    Ok(())
}

// --- 4. A FIFO hangs the engine ----------------------------------------------------------------

#[test]
fn a_fifo_or_socket_in_the_service_folder_cannot_hang_the_engine() -> TestResult {
    let sb = Sandbox::new();
    let ws = fixture_ws(
        &sb,
        "fifo_reader",
        "exec = [\"mkfifo\"], env = [\"PATH\"], fs = \"read-write\", timeout = \"20s\"",
        "",
    );
    let svc = ws.join("app");
    std::fs::write(svc.join("inside.txt"), "regular\n")?;
    std::os::unix::fs::symlink("fifo", svc.join("fifo-link"))?;
    let _socket = std::os::unix::net::UnixListener::bind(svc.join("sock"))?;
    let t = Instant::now();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_nestr"));
    cmd.current_dir(&ws)
        .args(["--color", "never", "run", "probe", "--json"]);
    isolate(&mut cmd, sb.path());
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    let exited = loop {
        if let Some(status) = child.try_wait()? {
            break Some(status);
        }
        if t.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let run = Run::from(child.wait_with_output()?);
    assert!(exited.is_some(), "nestr run did not exit: {}", run.all());
    let step = run.json()["steps"][0].clone();
    assert_eq!(step["status"], "succeeded", "{step}");
    let s = stored(&ws);
    for p in ["read_fifo", "write_fifo", "read_fifo_link", "read_socket"] {
        let v = metric(&s.metrics, p);
        assert!(v.starts_with("denied"), "{p}: {v}");
    }
    assert_eq!(metric(&s.metrics, "read_regular"), "ok: regular");
    assert!(s.log.contains("a FIFO"), "{}", s.log);
    Ok(())
}

// --- 5. Daemons outlive the step ---------------------------------------------------------------

/// True when this machine gives a `pids` limit to a process tree (a v1 `pids` hierarchy, or the
/// v2 `pids` controller delegated to this process's cgroup).
fn pids_controller() -> bool {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    mounts.lines().any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.len() > 3 && f[2] == "cgroup" && f[3].split(',').any(|o| o == "pids")
    }) || mounts.lines().any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.len() > 2
            && f[2] == "cgroup2"
            && std::fs::read_to_string(Path::new(f[1]).join("cgroup.subtree_control"))
                .is_ok_and(|c| c.split_whitespace().any(|c| c == "pids"))
    })
}

#[test]
fn no_program_outlives_its_step_whatever_it_does_to_leave() -> TestResult {
    // The cgroup entered through the trampoline shell, the cgroup entered between fork and exec
    // (where there is no dash), and the subreaper fallback (where no cgroup can be made).
    for (mode, env) in [
        ("cgroup", vec![]),
        ("cgroup-fork", vec![("NESTR_CONTAIN", "fork")]),
        ("fallback", vec![("NESTR_CONTAIN", "process")]),
    ] {
        let sb = Sandbox::new();
        let ws = fixture_ws(
            &sb,
            "escaping_daemon",
            "exec = [\"sh\"], env = [\"PATH\"]",
            "mode = \"daemon\"",
        );
        let run = sb.nestr_with(&ws, &["run", "probe", "--json"], &env);
        assert_eq!(run.code, 0, "{mode}: {}", run.all());
        let s = stored(&ws);
        let mut pids = Vec::new();
        for file in ["daemon.pid", "grandchild.pid"] {
            let pid = std::fs::read_to_string(ws.join("app").join(file))
                .map_err(|e| format!("{mode}: {file}: {e}"))?;
            pids.push(pid.trim().to_string());
        }
        // Not even a zombie is left (nestr reaps what it kills; an init may reap late).
        let alive: Vec<&String> = pids
            .iter()
            .filter(|p| Path::new(&format!("/proc/{p}")).exists())
            .collect();
        for p in &alive {
            let _ = Command::new("kill").args(["-9", p]).status();
        }
        assert!(alive.is_empty(), "{mode}: survivors {alive:?}");
        let says_fallback = s.log.contains("no cgroup could be made");
        assert_eq!(says_fallback, mode == "fallback", "{mode}: {}", s.log);
    }
    Ok(())
}

#[test]
fn a_fork_bomb_stays_inside_the_steps_pids_limit_and_leaves_nothing() -> TestResult {
    if !pids_controller() {
        eprintln!("skipped: no pids cgroup controller on this machine (the step log says so)");
        return Ok(());
    }
    let sb = Sandbox::new();
    let ws = fixture_ws(
        &sb,
        "escaping_daemon",
        "exec = [\"sh\"], env = [\"PATH\"], pids = 48",
        "mode = \"bomb\"",
    );
    let (run, step) = probe(&sb, &ws);
    assert_eq!(run.code, 0, "{}", run.all());
    assert_eq!(step["status"], "succeeded", "{step}");
    let s = stored(&ws);
    // Without the limit the tree holds 8,191 processes and its 4,096 `sleep 30` leaves keep the
    // call until its 1.5 s timeout; under it, forks fail (dash says `Cannot fork`).
    assert!(
        s.log.contains("Cannot fork") || s.log.contains("Resource temporarily unavailable"),
        "forks were refused: {}",
        s.log
    );
    let run_id = run.json()["run_id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    std::thread::sleep(Duration::from_millis(100));
    let left = marked(&format!("{run_id}-"));
    assert!(left.is_empty(), "survivors: {left:?}");
    Ok(())
}

// --- 6. Log and audit amplification ------------------------------------------------------------

#[test]
fn what_a_plugin_makes_the_engine_store_stays_within_its_output_cap() -> TestResult {
    let sb = Sandbox::new();
    let ws = fixture_ws(
        &sb,
        "amplifier",
        "exec = [\"sh\"], env = [\"PATH\"], output_mb = 1, memory_mb = 128",
        "mode = \"all\"",
    );
    sb.nestr(&ws, &["status"]).ok();
    let before = db_bytes(&ws).len();
    let (run, step) = probe(&sb, &ws);
    assert_eq!(step["status"], "succeeded", "{step}: {}", run.all());
    let conn = rusqlite::Connection::open(ws.join(".nestr/state.db"))?;
    let (rows, text, longest): (i64, i64, i64) = conn.query_row(
        "SELECT count(*), coalesce(sum(length(text)), 0), coalesce(max(length(text)), 0) FROM log_chunks",
        [],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )?;
    let (audits, audit_text): (i64, i64) = conn.query_row(
        "SELECT count(*), coalesce(max(length(requested) + length(coalesce(detail, ''))), 0) FROM audit",
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    drop(conn);
    let grown = db_bytes(&ws).len().saturating_sub(before);
    let mib: i64 = 1024 * 1024;
    assert!(
        text <= mib + 64 * 1024,
        "{text} bytes of log text stored under a 1 MiB cap"
    );
    assert!(rows <= 20_000, "{rows} log rows");
    assert!(longest <= mib, "a stored chunk of {longest} bytes");
    assert!((1..=1000).contains(&audits), "{audits} audit rows");
    assert!(audit_text <= 4096, "an audit row of {audit_text} bytes");
    assert!(
        grown as i64 <= 6 * mib,
        "the database grew by {grown} bytes for a 1 MiB cap"
    );
    let s = stored(&ws);
    assert_eq!(s.log.matches("output truncated at 1 MiB").count(), 1);
    assert!(s.log.contains("bytes of output were not stored"));
    Ok(())
}

// --- 7. Secrets through side doors -------------------------------------------------------------

#[test]
fn a_secret_a_plugin_learns_is_masked_in_every_stored_or_served_field() -> TestResult {
    use base64::Engine as _;
    let secret = "Zq7-sidedoor-3f9c1e0b8a7d6c5b4a39281706f5e4d3c2b1a0-ffffeeeeddd";
    let b64 = base64::engine::general_purpose::STANDARD.encode(secret);
    let wrapped: Vec<String> = b64
        .as_bytes()
        .chunks(76)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect();
    assert!(wrapped.len() >= 2, "the base64 form wraps");
    let mut leaks: Vec<String> = vec![
        secret.to_string(),
        secret[..12].to_string(),
        secret[20..40].to_string(),
        b64[..b64.len() - 3].to_string(),
        wrapped[0].clone(),
        wrapped[1][..8.min(wrapped[1].len() - 3)].to_string(),
    ];
    leaks.retain(|l| l.len() >= 8);
    for mode in ["report", "fail"] {
        let sb = Sandbox::new();
        let ws = fixture_ws(
            &sb,
            "secret_smuggler",
            "exec = [\"sh\"], env = [\"PATH\"], secrets = [\"SIDE_SECRET\"], fs = \"read-write\"",
            &format!("name = \"SIDE_SECRET\", mode = \"{mode}\""),
        );
        let run = sb.nestr_with(&ws, &["run", "probe", "--json"], &[("SIDE_SECRET", secret)]);
        let run_id = run.json()["run_id"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let shown = sb.nestr(&ws, &["runs", "show", &run_id]);
        let shown_json = sb.nestr(&ws, &["runs", "show", &run_id, "--json"]);
        let logs = sb.nestr(&ws, &["logs", &run_id]);
        let mut srv = Server::start(&sb, &ws, &[])?;
        let api = get(&srv.u(&format!("/api/runs/{run_id}")))?;
        let api_logs = get(&srv.u(&format!("/api/runs/{run_id}/logs")))?;
        srv.stop();
        assert_eq!(api.status, 200, "{}", api.body);
        let s = stored(&ws);
        assert!(s.log.contains("learned: ***"), "{mode}: {}", s.log);
        let db = db_bytes(&ws);
        for leak in &leaks {
            for (place, text) in [
                ("run --json", run.all()),
                ("runs show", shown.all()),
                ("runs show --json", shown_json.all()),
                ("logs", logs.all()),
                ("GET /api/runs/{id}", api.body.clone()),
                ("GET /api/runs/{id}/logs", api_logs.body.clone()),
            ] {
                assert!(
                    !text.contains(leak.as_str()),
                    "{mode}: `{leak}` in {place}:\n{text}"
                );
            }
            assert!(
                !contains(&db, leak),
                "{mode}: `{leak}` stored in the database"
            );
        }
    }
    Ok(())
}

// --- 8. The memory limit can be bypassed -------------------------------------------------------

/// The hand-written multi-memory component with `fillers` extra memories of `filler_pages`,
/// written to `NAME.wasm` in the sandbox.
fn multi_memory(
    sb: &Sandbox,
    name: &str,
    main_pages: u32,
    fillers: u32,
    filler_pages: u32,
) -> Result<PathBuf, Box<dyn std::error::Error>> {
    let path = sb.path().join(format!("{name}.wasm"));
    std::fs::write(
        &path,
        multi_memory_bytes(main_pages, fillers, filler_pages)?,
    )?;
    Ok(path)
}

/// The component bytes of the hand-written multi-memory fixture.
pub fn multi_memory_bytes(
    main_pages: u32,
    fillers: u32,
    filler_pages: u32,
) -> Result<Vec<u8>, Box<dyn std::error::Error>> {
    let template = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../plugins/fixtures/multi-memory/component.wat"),
    )?;
    let instances: String = (0..fillers)
        .map(|i| format!("(core instance $f{i} (instantiate $filler))\n"))
        .collect();
    let text = template
        .replace("@MAIN_PAGES@", &main_pages.to_string())
        .replace("@FILLER_PAGES@", &filler_pages.to_string())
        .replace(";; @FILLERS@", &instances);
    Ok(wat::parse_str(&text)?)
}

fn wat_ws(sb: &Sandbox, plugins: &[(&str, &Path, &str)]) -> PathBuf {
    sb.remote("app");
    let mut m =
        String::from("[workspace]\nname = \"mem\"\n[repos.app]\nurl = \"{remotes}/app.git\"\n");
    for (name, path, grants) in plugins {
        m.push_str(&format!(
            "[services.{name}]\nrepo = \"app\"\n[services.{name}.operations]\nprobe = {{ plugin = \"{name}\" }}\n\
             [plugins.{name}]\npath = \"{}\"\ngrants = {{ {grants} }}\n",
            path.display()
        ));
    }
    let ws = sb.workspace(&m);
    sb.nestr(&ws, &["assemble", "-q"]).ok();
    ws
}

#[test]
fn all_memories_of_a_plugin_share_one_memory_budget_and_cannot_starve_other_steps() -> TestResult {
    let sb = Sandbox::new();
    let plain = multi_memory(&sb, "plain", 1, 0, 1)?;
    let many = multi_memory(&sb, "many", 1, 8, 1000)?;
    let two = multi_memory(&sb, "two", 500, 1, 500)?;
    let noop = wasm("noop");
    let ws = wat_ws(
        &sb,
        &[
            ("plain", &plain, ""),
            ("many", &many, ""),
            ("many2", &many, ""),
            ("two", &two, "memory_mb = 48"),
            ("noop", &noop, ""),
        ],
    );
    let run = sb.nestr(
        &ws,
        &["run", "probe", "-j", "5", "--json", "--continue", "always"],
    );
    let steps: std::collections::HashMap<String, serde_json::Value> = run.json()["steps"]
        .as_array()
        .ok_or("steps")?
        .iter()
        .map(|s| {
            (
                s["service"].as_str().unwrap_or_default().to_string(),
                s.clone(),
            )
        })
        .collect();
    assert_eq!(
        steps["plain"]["status"], "succeeded",
        "the hand-written component works: {}",
        steps["plain"]
    );
    assert_eq!(steps["plain"]["summary"], "ok");
    assert_eq!(steps["noop"]["status"], "succeeded", "{}", steps["noop"]);
    // More memories than a store may have: refused when the plugin is loaded.
    for name in ["many", "many2"] {
        let step = &steps[name];
        assert_eq!(step["status"], "failed", "{name}: {step}");
        let reason = step["reason"].as_str().unwrap_or_default();
        assert!(reason.contains("memor"), "{name}: {reason}");
    }
    // Two memories that each fit but together do not: out of memory at instantiation.
    assert_eq!(
        steps["two"]["status"], "resource_exhausted",
        "{}",
        steps["two"]
    );
    assert!(
        steps["two"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("48 MiB")),
        "{}",
        steps["two"]
    );
    Ok(())
}

#[test]
fn host_handles_a_plugin_holds_are_bounded() -> TestResult {
    let sb = Sandbox::new();
    let ws = fixture_ws(&sb, "resource_hoard", "", "mode = \"big\"");
    probe(&sb, &ws);
    let s = stored(&ws);
    assert!(s.log.contains("trying a 100 KiB header value"), "{}", s.log);
    assert!(!s.log.contains("100 KiB value accepted"), "{}", s.log);
    let manifest = std::fs::read_to_string(ws.join("nestr.toml"))?;
    std::fs::write(
        ws.join("nestr.toml"),
        manifest.replace("\"big\"", "\"hoard\""),
    )?;
    let (_, step) = probe(&sb, &ws);
    let s = stored(&ws);
    // The plugin counts what it holds in its log; it is stopped long before 4,000 handles.
    let held = s
        .log
        .lines()
        .filter_map(|l| l.strip_prefix("held "))
        .filter_map(|n| n.trim().parse::<usize>().ok())
        .max()
        .unwrap_or(0);
    assert!(held >= 100, "it could hold some: {held}\n{}", s.log);
    assert!(held <= 1024, "held {held} handles: {step}");
    assert!(!s.log.contains("held 4000"), "{}", s.log);
    Ok(())
}

// --- 9. Terminal injection ---------------------------------------------------------------------

#[test]
fn control_bytes_from_plugins_reach_the_terminal_escaped_and_notices_cannot_be_forged() -> TestResult
{
    let sb = Sandbox::new();
    let ws = fixture_ws(
        &sb,
        "terminal_forger",
        "exec = [\"sh\"], env = [\"PATH\"]",
        "",
    );
    let plain = sb.nestr(&ws, &["run", "probe"]).ok();
    let run_id = plain
        .stdout
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("run "))
        .and_then(|l| l.split_whitespace().next())
        .ok_or("run id")?
        .to_string();
    let logs = sb.nestr(&ws, &["logs", &run_id]).ok();
    let shown = sb.nestr(&ws, &["runs", "show", &run_id]).ok();
    let control = |c: char| c.is_control() && c != '\n' || ('\u{202a}'..='\u{202e}').contains(&c);
    for (what, text) in [
        ("run", &plain.stdout),
        ("logs", &logs.stdout),
        ("runs show", &shown.stdout),
    ] {
        assert!(
            !text.chars().any(control),
            "{what}: a raw control character:\n{text:?}"
        );
    }
    for text in [&plain.stdout, &logs.stdout] {
        assert!(text.contains("clear\\x1b[2J\\x1b[Hscreen"), "{text}");
        assert!(text.contains("hidden progress\\rOVERWRITTEN"), "{text}");
        assert!(
            text.contains("svc | [nestr: denied exec `rm`"),
            "forged notice as plugin output: {text}"
        );
        assert!(text.contains("svc | [nestr: denied exec `curl`"), "{text}");
        assert!(!text.contains("svc ! [nestr: denied exec `rm`"), "{text}");
    }
    assert!(
        shown.stdout.contains("forged\\x1b[2J summary"),
        "{}",
        shown.stdout
    );
    // With colour, plain SGR colours pass and are closed on their line; nothing else does.
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_nestr"));
    cmd.current_dir(&ws)
        .args(["--color", "always", "logs", &run_id]);
    isolate(&mut cmd, sb.path());
    let coloured = Run::from(cmd.output()?).ok();
    for line in coloured.stdout.lines() {
        let mut rest = line;
        while let Some(at) = rest.find('\x1b') {
            rest = &rest[at + 1..];
            let params: String = rest
                .strip_prefix('[')
                .map(|r| {
                    r.chars()
                        .take_while(|c| c.is_ascii_digit() || *c == ';')
                        .collect()
                })
                .ok_or_else(|| format!("an escape that is not SGR: {line:?}"))?;
            assert!(
                rest[1 + params.len()..].starts_with('m'),
                "an escape that is not SGR: {line:?}"
            );
        }
        if line.contains("fake red") {
            assert!(
                line.ends_with("\x1b[0m"),
                "colour closed on its line: {line:?}"
            );
        }
    }
    Ok(())
}

// --- 10. One step's guest code starves another's deadline --------------------------------------

#[test]
fn spinning_plugins_never_delay_another_steps_deadline() -> TestResult {
    let sb = Sandbox::new();
    sb.remote("app");
    let ws = sb.workspace(&format!(
        "[workspace]\nname = \"spin\"\n[repos.app]\nurl = \"{{remotes}}/app.git\"\n\
         [services.spin1]\nrepo = \"app\"\n[services.spin1.operations]\nprobe = {{ plugin = \"spin\" }}\n\
         [services.spin2]\nrepo = \"app\"\n[services.spin2.operations]\nprobe = {{ plugin = \"spin\" }}\n\
         [services.sleeper]\nrepo = \"app\"\n[services.sleeper.operations]\n\
         probe = {{ plugin = \"fx\", config = {{ program = \"sleep\", args = [\"5\"], timeout_ms = 1000 }} }}\n\
         [plugins.spin]\npath = \"{}\"\ngrants = {{ timeout = \"7s\" }}\n\
         [plugins.fx]\npath = \"{}\"\ngrants = {{ exec = [\"sleep\"], env = [\"PATH\"] }}\n",
        wasm("loop").display(),
        wasm("run_program").display()
    ));
    sb.nestr(&ws, &["assemble", "-q"]).ok();
    let run = sb.nestr(
        &ws,
        &["run", "probe", "-j", "3", "--json", "--continue", "always"],
    );
    let json = run.json();
    let sleeper = json["steps"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["service"] == "sleeper"))
        .ok_or("sleeper step")?;
    assert_eq!(sleeper["status"], "succeeded", "{sleeper}");
    let conn = rusqlite::Connection::open(ws.join(".nestr/state.db"))?;
    let (metrics, wall): (String, i64) = conn.query_row(
        "SELECT metrics, finished_at - started_at FROM steps WHERE service = 'sleeper' ORDER BY id DESC LIMIT 1",
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    let m: serde_json::Value = serde_json::from_str(&metrics)?;
    assert_eq!(metric(&m, "timed_out"), "true", "{m}");
    let ms: u64 = metric(&m, "duration_ms").parse()?;
    // The spinners run for 7 s; the exec deadline of 1 s fires while they spin, and the step
    // ends then too (before, its end waited for a free runtime worker: 7.6 s).
    assert!(
        ms < 3000,
        "`sleep 5` under a 1 s timeout ran {ms} ms beside two spinning plugins"
    );
    assert!(
        wall < 4000,
        "the step ended {wall} ms after it started, beside two spinning plugins"
    );
    Ok(())
}

// --- 11. Plugin file size check bypass ---------------------------------------------------------

#[test]
fn a_plugin_path_that_is_not_a_regular_file_or_too_big_is_refused_without_reading_it() -> TestResult
{
    let sb = Sandbox::new();
    let zero = sb.path().join("zero.wasm");
    std::os::unix::fs::symlink("/dev/zero", &zero)?;
    let fifo = sb.path().join("fifo.wasm");
    let made = Command::new("mkfifo").arg(&fifo).status()?;
    assert!(made.success());
    let big = sb.path().join("big.wasm");
    std::fs::File::create(&big)?.set_len(65 * 1024 * 1024)?;
    for (path, why) in [
        (&zero, "not a regular file"),
        (&fifo, "not a regular file"),
        (&big, "larger than 64 MiB"),
    ] {
        let t = Instant::now();
        let run = sb
            .nestr(
                sb.path(),
                &["plugin", "check", path.to_str().ok_or("utf8")?],
            )
            .expect(1);
        assert!(
            run.stderr.contains(why),
            "{}: {}",
            path.display(),
            run.stderr
        );
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "took {:?}",
            t.elapsed()
        );
    }
    // The same through a manifest's plugin path.
    let ws = fixture_ws(&sb, "noop", "", "");
    let manifest = std::fs::read_to_string(ws.join("nestr.toml"))?;
    std::fs::write(
        ws.join("nestr.toml"),
        manifest.replace(
            &wasm("noop").display().to_string(),
            &zero.display().to_string(),
        ),
    )?;
    let (_, step) = probe(&sb, &ws);
    assert_eq!(step["status"], "failed", "{step}");
    assert!(stored(&ws).reason.contains("not a regular file"));
    Ok(())
}

// --- 12. Invented denials, unbounded reports, no disk quota ------------------------------------

#[test]
fn a_denial_the_engine_did_not_make_is_shown_as_the_plugins_claim() -> TestResult {
    let sb = Sandbox::new();
    let ws = fixture_ws(&sb, "liar", "fs = \"read-write\"", "mode = \"denial\"");
    let (run, step) = probe(&sb, &ws);
    assert_eq!(run.code, 1);
    assert_eq!(step["status"], "failed", "{step}");
    assert_eq!(
        step["summary"],
        "the plugin claims a refusal the engine did not make"
    );
    let s = stored(&ws);
    assert!(
        s.audit.is_empty(),
        "no audit row for a refusal nobody made: {:?}",
        s.audit
    );
    let text = sb.nestr(&ws, &["run", "probe"]);
    assert!(
        !text.stdout.contains("\n[plugins.liar] grants"),
        "no grant hint printed as the engine's: {}",
        text.stdout
    );
    Ok(())
}

#[test]
fn an_unbounded_report_is_stored_and_printed_capped() -> TestResult {
    let sb = Sandbox::new();
    let ws = fixture_ws(
        &sb,
        "liar",
        "fs = \"read-write\", memory_mb = 512",
        "mode = \"report\"",
    );
    let (run, step) = probe(&sb, &ws);
    assert_eq!(step["status"], "succeeded", "{step}");
    assert!(
        run.stdout.len() < 512 * 1024,
        "run --json printed {} bytes",
        run.stdout.len()
    );
    let summary = step["summary"].as_str().unwrap_or_default();
    assert!(summary.len() <= 1100, "summary of {} bytes", summary.len());
    let artifacts = step["artifacts"].as_array().ok_or("artifacts")?;
    assert_eq!(artifacts.len(), 1000);
    assert!(
        artifacts.iter().all(|a| a["sha256"].is_null()),
        "a bad digest is dropped"
    );
    let s = stored(&ws);
    assert_eq!(s.metrics.as_object().map(|m| m.len()), Some(256));
    assert!(s.log.contains("report was cut to fit"), "{}", s.log);
    Ok(())
}

#[test]
fn writes_through_the_plugins_filesystem_stop_at_disk_mb() -> TestResult {
    let sb = Sandbox::new();
    let ws = fixture_ws(
        &sb,
        "liar",
        "fs = \"read-write\", disk_mb = 8",
        "mode = \"disk\"",
    );
    let (_, step) = probe(&sb, &ws);
    assert_eq!(step["status"], "succeeded", "{step}");
    let s = stored(&ws);
    let written: u64 = metric(&s.metrics, "written_mib").parse()?;
    assert!(written <= 8, "wrote {written} MiB under disk_mb = 8");
    assert!(written >= 7, "wrote only {written} MiB");
    assert_ne!(metric(&s.metrics, "error"), "none");
    assert!(std::fs::metadata(ws.join("app/big.bin"))?.len() <= 8 * 1024 * 1024);
    assert!(s.log.contains("disk_mb"), "{}", s.log);
    Ok(())
}

// --- Supply chain ------------------------------------------------------------------------------

/// No crate in either lockfile has a known advisory, checked offline against the copy of the
/// RustSec database in tests/data (see its README for how to refresh it).
#[test]
fn no_locked_dependency_has_a_known_advisory() -> TestResult {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let tmp = tempfile::tempdir()?;
    let unpacked = Command::new("tar")
        .arg("-xzf")
        .arg(root.join("tests/data/advisory-db.tar.gz"))
        .arg("-C")
        .arg(tmp.path())
        .status()?;
    assert!(
        unpacked.success(),
        "cannot unpack tests/data/advisory-db.tar.gz"
    );
    let db = rustsec::Database::open(&tmp.path().join("adb"))?;
    let mut found = Vec::new();
    for lock in ["Cargo.lock", "plugins/Cargo.lock"] {
        let lockfile = rustsec::Lockfile::load(root.join(lock))?;
        for vuln in db.vulnerabilities(&lockfile) {
            found.push(format!(
                "{lock}: {} {} — {} ({})",
                vuln.package.name, vuln.package.version, vuln.advisory.id, vuln.advisory.title
            ));
        }
    }
    assert!(found.is_empty(), "known advisories:\n{}", found.join("\n"));
    Ok(())
}
