//! The plugin sandbox against the misbehaving fixtures in plugins/fixtures/ (see its README):
//! each runs as a real `nestr run` step on a real workspace, and the test asserts the exact
//! outcome, from the JSON report and from the store (steps, log lines, audit).

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::support::{Run, Sandbox, TestResult, git, pid_alive};

pub fn wasm(name: &str) -> PathBuf {
    Path::new(env!("NESTR_PLUGIN_WASM_DIR")).join(format!("{name}.wasm"))
}

/// A workspace with one repository `app` and one service `svc` whose operation `probe` runs the
/// fixture `fixture` with `grants` (a TOML inline table body) and `config`.
pub fn fixture_ws(sb: &Sandbox, fixture: &str, grants: &str, config: &str) -> PathBuf {
    let r = sb.remote("app");
    let _ = r;
    let ws = sb.workspace(&format!(
        r#"
[workspace]
name = "fx"

[repos.app]
url = "{{remotes}}/app.git"

[services.svc]
repo = "app"

[services.svc.operations]
probe = {{ plugin = "fx", config = {{ {config} }} }}

[plugins.fx]
path = "{}"
grants = {{ {grants} }}
"#,
        wasm(fixture).display()
    ));
    sb.nestr(&ws, &["assemble", "-q"]).ok();
    ws
}

pub fn probe(sb: &Sandbox, ws: &Path) -> (Run, serde_json::Value) {
    let run = sb.nestr(ws, &["run", "probe", "--json"]);
    let json = run.json();
    let step = json["steps"][0].clone();
    (run, step)
}

/// Everything stored for the run's first step: status, reason, metrics, log text.
pub struct Stored {
    pub status: String,
    pub reason: String,
    pub metrics: serde_json::Value,
    pub log: String,
    pub audit: Vec<(String, String)>,
}

pub fn stored(ws: &Path) -> Stored {
    let conn = rusqlite::Connection::open(ws.join(".nestr/state.db")).expect("db");
    let (id, status, reason, metrics): (i64, String, Option<String>, String) = conn
        .query_row(
            "SELECT id, status, reason, metrics FROM steps ORDER BY id DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
        .expect("a step");
    let store = nestr::store::Store::open(&ws.join(".nestr")).expect("store");
    let log: Vec<String> = store
        .step_logs(id)
        .expect("logs")
        .into_iter()
        .map(|l| l.text)
        .collect();
    let audit: Vec<(String, String)> = conn
        .prepare("SELECT capability, requested FROM audit WHERE step_id = ?1 ORDER BY id")
        .expect("prepare")
        .query_map([id], |r| Ok((r.get(0)?, r.get(1)?)))
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows");
    Stored {
        status,
        reason: reason.unwrap_or_default(),
        metrics: serde_json::from_str(&metrics).unwrap_or_default(),
        log: log.join("\n"),
        audit,
    }
}

#[test]
fn infinite_loop_is_stopped_at_its_deadline() -> TestResult {
    let sb = Sandbox::new();
    let ws = fixture_ws(&sb, "loop", "timeout = \"1s\"", "");
    let (run, step) = probe(&sb, &ws);
    assert_eq!(run.code, 1);
    assert_eq!(step["status"], "timed_out", "{step}");
    let ms = step["duration_ms"].as_u64().ok_or("duration")?;
    // Stopped by its deadline, not before and not by something else; how close to the deadline
    // (typically ~10 ms after it) is measured by `cargo bench --bench plugins`, not asserted
    // here, where parallel tests load the machine.
    assert!(
        (1000..2000).contains(&ms),
        "stopped {ms} ms after start; the deadline is 1000 ms"
    );
    assert!(stored(&ws).reason.contains("deadline"));
    Ok(())
}

#[test]
fn a_program_stopped_by_the_step_deadline_times_the_step_out() -> TestResult {
    let sb = Sandbox::new();
    let r = sb.remote("app");
    let _ = r;
    let ws = sb.workspace(
        "[workspace]\nname = \"t\"\n[repos.app]\nurl = \"{remotes}/app.git\"\n[services.svc]\nrepo = \"app\"\n\
         [services.svc.operations]\nprobe = { plugin = \"command\", config = { run = [[\"sleep\", \"30\"]] } }\n\
         [plugins.command]\ngrants = { exec = [\"sleep\"], timeout = \"1s\" }\n",
    );
    sb.nestr(&ws, &["assemble", "-q"]).ok();
    let (run, step) = probe(&sb, &ws);
    assert_eq!(run.code, 1);
    assert_eq!(step["status"], "timed_out", "{step}");
    assert_eq!(step["summary"], "timed out after 1s");
    assert!(
        step["reason"]
            .as_str()
            .is_some_and(|r| r.contains("raise it with `timeout`")),
        "{step}"
    );
    Ok(())
}

#[test]
fn memory_bomb_and_recursion_exhaust_resources() -> TestResult {
    for (fixture, grants) in [("memory_bomb", "memory_mb = 32"), ("recursion", "")] {
        let sb = Sandbox::new();
        let ws = fixture_ws(&sb, fixture, grants, "");
        let (run, step) = probe(&sb, &ws);
        assert_eq!(run.code, 1);
        assert_eq!(step["status"], "resource_exhausted", "{fixture}: {step}");
    }
    Ok(())
}

#[test]
fn trap_and_panic_fail_the_step_only() -> TestResult {
    for fixture in ["trap", "panic"] {
        let sb = Sandbox::new();
        let ws = fixture_ws(&sb, fixture, "", "");
        let (_, step) = probe(&sb, &ws);
        assert_eq!(step["status"], "failed", "{fixture}: {step}");
        assert!(
            step["summary"]
                .as_str()
                .is_some_and(|s| s.contains("trapped")),
            "{step}"
        );
        if fixture == "panic" {
            assert!(
                stored(&ws).log.contains("fixture panic: boom"),
                "the panic message is in the step log"
            );
        }
    }
    Ok(())
}

#[test]
fn ungranted_exec_is_a_typed_denial_with_an_audit_row() -> TestResult {
    let sb = Sandbox::new();
    let ws = fixture_ws(
        &sb,
        "exec_ungranted",
        "exec = [\"sh\"]",
        "program = \"true\"",
    );
    let (run, step) = probe(&sb, &ws);
    assert_eq!(run.code, 1);
    assert_eq!(step["status"], "denied", "{step}");
    let s = stored(&ws);
    assert_eq!(s.status, "denied", "the stored step agrees with the report");
    assert!(
        s.reason
            .contains("[plugins.fx] grants = { exec = [\"sh\", \"true\"] }"),
        "{}",
        s.reason
    );
    assert_eq!(s.audit, vec![("exec".to_string(), "true".to_string())]);
    Ok(())
}

#[test]
fn declared_but_not_granted_is_refused_before_start_with_the_toml() -> TestResult {
    let sb = Sandbox::new();
    // env-dump declares exec ["env"]; nothing is granted.
    let ws = fixture_ws(&sb, "env_dump", "", "");
    let (run, step) = probe(&sb, &ws);
    assert_eq!(run.code, 1);
    assert_eq!(step["status"], "denied");
    let s = stored(&ws);
    assert!(s.reason.contains("needs exec env"), "{}", s.reason);
    assert!(
        s.reason
            .contains("[plugins.fx]\ngrants = { exec = [\"env\"] }"),
        "{}",
        s.reason
    );
    assert!(step["started_at"].is_null(), "it never started: {step}");
    assert_eq!(
        s.audit.first().map(|a| a.0.as_str()),
        Some("grants"),
        "the refusal is audited"
    );
    Ok(())
}

#[test]
fn escapes_through_exec_cwd_and_the_filesystem_are_denied() -> TestResult {
    let sb = Sandbox::new();
    let ws = fixture_ws(&sb, "escape", "exec = [\"true\"]", "");
    let svc = ws.join("app");
    std::fs::write(svc.join("inside.txt"), "inside content\n")?;
    std::os::unix::fs::symlink("/", svc.join("root-link"))?;
    std::os::unix::fs::symlink("/etc/passwd", svc.join("passwd-link"))?;
    let (_, step) = probe(&sb, &ws);
    assert_eq!(step["status"], "succeeded", "{step}");
    let m = stored(&ws).metrics;
    for probe in [
        "exec_cwd_parent",
        "exec_cwd_symlink",
        "read_parent",
        "read_absolute",
        "read_symlink",
        "read_dotdot",
        "write_readonly",
    ] {
        let v = m[probe].as_str().unwrap_or("missing");
        assert!(v.starts_with("denied"), "{probe}: {v}");
    }
    assert_eq!(m["read_own"], "ok: inside content");
    assert!(!svc.join("written-by-plugin").exists());
    Ok(())
}

#[test]
fn programs_see_only_granted_environment_and_secrets_are_masked() -> TestResult {
    let sb = Sandbox::new();
    let ws = fixture_ws(
        &sb,
        "env_dump",
        "exec = [\"env\"], env = [\"NESTR_T_OK\"], secrets = [\"NESTR_T_SECRET\"]",
        "",
    );
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_nestr"));
    cmd.current_dir(&ws)
        .args(["--color", "never", "run", "probe", "--json"])
        .env("NESTR_T_OK", "visible")
        .env("NESTR_T_SECRET", "s3cr3t-value-42")
        .env("NESTR_T_NOT_GRANTED", "hidden")
        .env("GITHUB_TOKEN", "ghp_should_never_leak");
    let out = Run::from(cmd.output()?);
    assert_eq!(out.code, 0, "{}", out.all());
    let s = stored(&ws);
    assert_eq!(
        s.metrics["guest_env"], "",
        "the plugin itself has no environment"
    );
    assert_eq!(
        s.metrics["child_env"],
        "NESTR_STEP,NESTR_T_OK,NESTR_T_SECRET"
    );
    for leak in ["s3cr3t-value-42", "hidden", "ghp_should"] {
        assert!(!s.log.contains(leak), "{leak} in the log");
        assert!(
            !s.metrics.to_string().contains(leak),
            "{leak} in the metrics"
        );
        assert!(!out.all().contains(leak), "{leak} in the output");
    }
    assert!(s.log.contains("NESTR_T_SECRET=***"), "{}", s.log);
    Ok(())
}

#[test]
fn secrets_printed_raw_base64_or_split_are_never_stored() -> TestResult {
    let sb = Sandbox::new();
    let ws = fixture_ws(
        &sb,
        "secret_printer",
        "exec = [\"sh\"], env = [\"PATH\"], secrets = [\"DEPLOY_KEY\"]",
        "name = \"DEPLOY_KEY\"",
    );
    let secret = "k3y-Zx9-very-private";
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_nestr"));
    cmd.current_dir(&ws)
        .args(["--color", "never", "run", "probe"])
        .env("DEPLOY_KEY", secret);
    let out = Run::from(cmd.output()?);
    assert_eq!(out.code, 0, "{}", out.all());
    let s = stored(&ws);
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(secret);
    for leak in [secret, &b64[..b64.len() - 2], "very-private", "Zx9-very"] {
        assert!(!s.log.contains(leak), "`{leak}` stored: {}", s.log);
        assert!(!out.all().contains(leak), "`{leak}` printed");
    }
    assert!(s.log.contains("raw:***"), "{}", s.log);
    assert!(s.log.contains("split:***"), "{}", s.log);
    // Nothing else in the database holds it either.
    let db = std::fs::read(ws.join(".nestr/state.db"))?;
    let wal = std::fs::read(ws.join(".nestr/state.db-wal")).unwrap_or_default();
    for bytes in [db, wal] {
        assert!(!String::from_utf8_lossy(&bytes).contains(secret));
    }
    Ok(())
}

#[test]
fn a_child_ignoring_sigterm_is_killed_after_the_grace() -> TestResult {
    let sb = Sandbox::new();
    let ws = fixture_ws(
        &sb,
        "sigterm_ignorer",
        "exec = [\"sh\"], env = [\"PATH\"], fs = \"read-write\"",
        "",
    );
    let (_, step) = probe(&sb, &ws);
    assert_eq!(step["status"], "succeeded", "{step}");
    let s = stored(&ws);
    assert_eq!(s.metrics["timed_out"], "true", "{}", s.metrics);
    assert_eq!(s.metrics["signal"], "9", "{}", s.metrics);
    let ms: u64 = s.metrics["duration_ms"]
        .as_str()
        .and_then(|d| d.parse().ok())
        .ok_or("duration")?;
    assert!(
        (2400..6000).contains(&ms),
        "500 ms timeout + 2 s grace, took {ms} ms"
    );
    let pid = std::fs::read_to_string(ws.join("app/ignorer.pid"))?;
    assert!(!pid_alive(&pid), "pid {pid} survived");
    assert!(s.log.contains("SIGKILL"), "{}", s.log);
    Ok(())
}

#[test]
fn a_setsid_daemon_does_not_survive_the_step() -> TestResult {
    let sb = Sandbox::new();
    let ws = fixture_ws(&sb, "daemon", "exec = [\"sh\"], env = [\"PATH\"]", "");
    let (_, step) = probe(&sb, &ws);
    assert_eq!(step["status"], "succeeded", "{step}");
    let pid = std::fs::read_to_string(ws.join("app/daemon.pid"))?;
    std::thread::sleep(Duration::from_millis(100));
    assert!(!pid_alive(&pid), "daemon {pid} survived the step");
    Ok(())
}

#[test]
fn an_output_flood_is_capped_and_marked() -> TestResult {
    let sb = Sandbox::new();
    let ws = fixture_ws(&sb, "flood", "exec = [\"sh\"], env = [\"PATH\"]", "");
    let (_, step) = probe(&sb, &ws);
    assert_eq!(
        step["status"], "succeeded",
        "the outcome is still right: {step}"
    );
    let s = stored(&ws);
    assert_eq!(s.metrics["truncated"], "true");
    assert!(
        s.log.len() <= 16 * 1024 * 1024 + 4096,
        "stored {} bytes",
        s.log.len()
    );
    assert!(
        s.log.len() >= 15 * 1024 * 1024,
        "stored {} bytes",
        s.log.len()
    );
    assert_eq!(s.log.matches("output truncated at 16 MiB").count(), 1);
    assert!(s.log.contains("bytes of output were not stored"));
    Ok(())
}

#[test]
fn output_streams_line_by_line_while_the_program_runs() -> TestResult {
    let sb = Sandbox::new();
    let ws = fixture_ws(&sb, "slow_output", "exec = [\"sh\"], env = [\"PATH\"]", "");
    let (_, step) = probe(&sb, &ws);
    assert_eq!(step["status"], "succeeded", "{step}");
    let conn = rusqlite::Connection::open(ws.join(".nestr/state.db"))?;
    let at = |text: &str| -> rusqlite::Result<i64> {
        conn.query_row("SELECT at FROM log_chunks WHERE text = ?1", [text], |r| {
            r.get(0)
        })
    };
    let gap = at("second")? - at("first")?;
    assert!(
        gap >= 800,
        "`first` was logged {gap} ms before `second`: not streamed"
    );
    Ok(())
}

#[test]
fn http_only_to_granted_origins_even_through_redirects() -> TestResult {
    use std::io::{Read, Write};
    let ungranted = std::net::TcpListener::bind("127.0.0.1:0")?;
    let ungranted_port = ungranted.local_addr()?.port();
    let granted = std::net::TcpListener::bind("127.0.0.1:0")?;
    let granted_port = granted.local_addr()?.port();
    let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let h = hits.clone();
    std::thread::spawn(move || {
        for s in ungranted.incoming().take(10) {
            let Ok(mut s) = s else { break };
            h.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let _ = s.read(&mut [0u8; 4096]);
            let _ =
                s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok");
        }
    });
    std::thread::spawn(move || {
        for s in granted.incoming().take(10) {
            let Ok(mut s) = s else { break };
            let _ = s.read(&mut [0u8; 4096]);
            let reply = format!(
                "HTTP/1.1 302 Found\r\nLocation: http://127.0.0.1:{ungranted_port}/secret\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
            let _ = s.write_all(reply.as_bytes());
        }
    });
    let sb = Sandbox::new();
    let ws = fixture_ws(
        &sb,
        "http_escape",
        &format!("http = [\"http://127.0.0.1:{granted_port}\"]"),
        &format!(
            "ungranted_url = \"http://127.0.0.1:{ungranted_port}/direct\", redirect_url = \"http://127.0.0.1:{granted_port}/hop\""
        ),
    );
    let (_, step) = probe(&sb, &ws);
    assert_eq!(step["status"], "succeeded", "{step}");
    let s = stored(&ws);
    assert_eq!(s.metrics["redirect_status"], "302", "{}", s.metrics);
    for k in ["ungranted", "redirect"] {
        assert!(
            s.metrics[k]
                .as_str()
                .is_some_and(|v| v.starts_with("denied")),
            "{k}: {}",
            s.metrics
        );
    }
    assert_eq!(
        hits.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "the ungranted origin was never contacted"
    );
    let origin = format!("http://127.0.0.1:{ungranted_port}");
    assert_eq!(
        s.audit,
        vec![
            ("http".to_string(), origin.clone()),
            ("http".to_string(), origin)
        ]
    );
    Ok(())
}

#[test]
fn a_component_for_another_contract_is_refused_by_name() -> TestResult {
    let sb = Sandbox::new();
    let ws = fixture_ws(&sb, "wrong_contract", "", "");
    let (_, step) = probe(&sb, &ws);
    assert_eq!(step["status"], "failed");
    let s = stored(&ws);
    assert!(
        s.reason.contains("plugin `fx`") && s.reason.contains("different plugin contract"),
        "{}",
        s.reason
    );
    let check = sb
        .nestr(
            sb.path(),
            &[
                "plugin",
                "check",
                wasm("wrong_contract").to_str().ok_or("utf8")?,
            ],
        )
        .expect(1);
    assert!(
        check.stderr.contains("nestr:plugin@0.1.0"),
        "{}",
        check.stderr
    );
    let junk = sb.path().join("junk.wasm");
    std::fs::write(&junk, b"\0asm\x01\0\0\0 not really")?;
    let bad = sb
        .nestr(
            sb.path(),
            &["plugin", "check", junk.to_str().ok_or("utf8")?],
        )
        .expect(1);
    assert!(
        bad.stderr.contains("not a valid WebAssembly component"),
        "{}",
        bad.stderr
    );
    Ok(())
}

#[test]
fn plugin_config_is_checked_when_the_manifest_loads_and_by_plugin_check() -> TestResult {
    let sb = Sandbox::new();
    let ws = fixture_ws(
        &sb,
        "run_program",
        "exec = [\"true\"]",
        "program = \"true\"",
    );
    sb.nestr(&ws, &["services"]).ok();
    let manifest = std::fs::read_to_string(ws.join("nestr.toml"))?;
    std::fs::write(
        ws.join("nestr.toml"),
        manifest.replace("program = \"true\"", "progam = \"true\", args = \"-v\""),
    )?;
    let line = manifest
        .lines()
        .position(|l| l.starts_with("probe"))
        .ok_or("probe line")?
        + 1;
    for args in [
        vec!["services"],
        vec!["run", "probe"],
        vec![
            "plugin",
            "check",
            wasm("run_program").to_str().ok_or("utf8")?,
        ],
    ] {
        let run = sb.nestr(&ws, &args).expect(2);
        for want in [
            format!("nestr.toml:{line}:"),
            "plugin `fx` has no config field `progam`".to_string(),
            "did you mean `program`?".to_string(),
            "`args` (array)".to_string(),
            "config field `args` of plugin `fx` must be an array, not a string".to_string(),
        ] {
            assert!(
                run.stderr.contains(&want),
                "{args:?}: no {want:?} in\n{}",
                run.stderr
            );
        }
        assert!(!run.stderr.contains("lacks"), "{}", run.stderr);
    }
    // Nothing ran: the typo was caught before any run was recorded.
    std::fs::write(ws.join("nestr.toml"), &manifest)?;
    let runs = sb.nestr(&ws, &["runs", "--json"]).ok().json();
    let ops: Vec<&serde_json::Value> = runs["runs"]
        .as_array()
        .ok_or("a list")?
        .iter()
        .filter(|r| r["operation"] == "probe")
        .collect();
    assert!(ops.is_empty(), "{runs}");
    // Outside the workspace the file alone is checked, and a built-in can be inspected.
    sb.nestr(
        sb.path(),
        &[
            "plugin",
            "check",
            wasm("run_program").to_str().ok_or("utf8")?,
        ],
    )
    .ok();
    let inspect = sb
        .nestr(sb.path(), &["plugin", "inspect", "command", "--json"])
        .ok();
    assert_eq!(
        inspect.json()["info"]["name"],
        "command",
        "{}",
        inspect.stdout
    );
    let unknown = sb.nestr(sb.path(), &["plugin", "inspect", "fx"]);
    assert_ne!(unknown.code, 0, "{}", unknown.stdout);
    Ok(())
}

#[test]
fn a_sha256_pin_that_does_not_match_refuses_to_load() -> TestResult {
    let sb = Sandbox::new();
    let ws = fixture_ws(&sb, "noop", "", "");
    let manifest = std::fs::read_to_string(ws.join("nestr.toml"))?;
    let pinned = manifest.replace(
        "grants = {  }",
        &format!("sha256 = \"{}\"\ngrants = {{ }}", "0".repeat(64)),
    );
    std::fs::write(ws.join("nestr.toml"), pinned)?;
    let (_, step) = probe(&sb, &ws);
    assert_eq!(step["status"], "failed", "{step}");
    assert!(
        stored(&ws).reason.contains("but nestr.toml pins 0000"),
        "{}",
        stored(&ws).reason
    );
    let _ = git;
    Ok(())
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .map(str::to_owned)
        })
        .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        .unwrap_or(0)
}

/// Every fault fixture in one host and one process; afterwards a normal plugin still runs, and
/// the engine's memory is back where it was (the memory bomb lived in its own store). Runs in a
/// child process of its own (this test binary, re-executed) so that other tests running in
/// parallel do not disturb the memory figure.
#[test]
fn after_every_fault_in_one_process_a_normal_plugin_still_runs() -> TestResult {
    if let Some(verdict) = crate::support::in_own_process(
        "plugins::after_every_fault_in_one_process_a_normal_plugin_still_runs",
        "NESTR_FAULTS_CHILD",
    ) {
        return verdict;
    }
    use std::sync::Arc;
    use std::time::Instant;

    use nestr::manifest::{ExecGrant, FsGrant, Grants};
    use nestr::model::StepStatus;
    use nestr::plugin::bindings::types;
    use nestr::plugin::caps;
    use nestr::plugin::sink::{Redactor, StepLog};
    use nestr::plugin::state::{Cancel, StepContext};
    use nestr::plugin::{Host, StepRequest};

    let dir = tempfile::tempdir()?;
    let service = std::fs::canonicalize(dir.path())?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let host = Host::new(None).map_err(|e| e.to_string())?;
    let grants = Grants {
        exec: ["sh", "mkfifo", "true"]
            .iter()
            .map(|p| ExecGrant {
                program: p.to_string(),
                args: vec![],
            })
            .collect(),
        env: vec!["PATH".into()],
        fs: FsGrant::ReadWrite,
        memory_mb: Some(32),
        disk_mb: Some(8),
        pids: Some(64),
        timeout: Some(Duration::from_secs(5)),
        ..Grants::default()
    };
    let runs = std::sync::atomic::AtomicUsize::new(0);
    let run_with = |name: &str,
                    secs: u64,
                    config: serde_json::Value|
     -> Result<StepStatus, Box<dyn std::error::Error>> {
        let bytes = std::fs::read(wasm(name))?;
        let plugin = rt
            .block_on(host.load(name, name, &bytes))
            .map_err(|e| e.to_string())?;
        let caps = caps::effective(name, &plugin.info.capabilities, &grants)?;
        let ctx = Arc::new(StepContext {
            run_id: "r".into(),
            step_id: 1,
            caps,
            log: StepLog::new(1, Arc::new(Redactor::default()), 1024 * 1024, vec![]),
            service_dir: {
                // A fresh service folder per step (fixtures leave files behind).
                let n = runs.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let d = service.join(format!("step-{n}"));
                std::fs::create_dir_all(&d)?;
                d
            },
            started: Instant::now(),
            deadline: Instant::now() + Duration::from_secs(secs),
            cancel: Cancel::default(),
            marker: format!("inproc-{name}"),
            audit: Arc::new(|_| {}),
            denials: Default::default(),
            containment: nestr::contain::Containment::new(&format!("inproc-{name}"), 256),
            programs: Default::default(),
            tape: None,
            gate: None,
        });
        let request = StepRequest {
            operation: "probe".into(),
            run_id: "r".into(),
            service: types::Service {
                name: "svc".into(),
                repo: "app".into(),
                path: ".".into(),
                tags: vec![],
                depends_on: vec![],
            },
            commit: None,
            branch: None,
            config,
            folder: std::path::PathBuf::from("/nonexistent"),
            dependencies: vec![],
            target: None,
        };
        Ok(rt.block_on(host.run_step(&plugin, &request, ctx)).status)
    };
    let run = |name: &str, secs: u64| run_with(name, secs, serde_json::json!({}));
    use serde_json::json;
    // Every fault fixture, the first ones of round 1, then the hostile sweep's (tests/sandbox.rs
    // has a test for each), all in this one host.
    let faults = [
        ("loop", 1, json!({}), StepStatus::TimedOut),
        ("memory_bomb", 5, json!({}), StepStatus::ResourceExhausted),
        ("recursion", 5, json!({}), StepStatus::ResourceExhausted),
        ("trap", 5, json!({}), StepStatus::Failed),
        ("panic", 5, json!({}), StepStatus::Failed),
        ("memory_bomb", 5, json!({}), StepStatus::ResourceExhausted),
        ("daemon", 5, json!({}), StepStatus::Succeeded),
        ("sigterm_ignorer", 5, json!({}), StepStatus::Succeeded),
        ("git_tamper", 5, json!({}), StepStatus::Succeeded),
        ("fifo_reader", 5, json!({}), StepStatus::Succeeded),
        (
            "escaping_daemon",
            5,
            json!({"mode": "daemon"}),
            StepStatus::Succeeded,
        ),
        (
            "escaping_daemon",
            5,
            json!({"mode": "bomb"}),
            StepStatus::Succeeded,
        ),
        (
            "amplifier",
            5,
            json!({"mode": "names"}),
            StepStatus::Succeeded,
        ),
        (
            "amplifier",
            5,
            json!({"mode": "newlines"}),
            StepStatus::Succeeded,
        ),
        (
            "secret_smuggler",
            5,
            json!({"name": "NESTR_UNSET_SECRET"}),
            StepStatus::Succeeded,
        ),
        (
            "resource_hoard",
            5,
            json!({"mode": "big"}),
            StepStatus::Failed,
        ),
        ("terminal_forger", 5, json!({}), StepStatus::Succeeded),
        ("liar", 5, json!({"mode": "denial"}), StepStatus::Failed),
        ("liar", 5, json!({"mode": "disk"}), StepStatus::Succeeded),
        (
            "run_program",
            5,
            json!({"program": "true"}),
            StepStatus::Succeeded,
        ),
    ];
    let round = || -> TestResult {
        for (fixture, secs, config, want) in &faults {
            assert_eq!(
                run_with(fixture, *secs, config.clone())?,
                *want,
                "{fixture} {config}"
            );
        }
        Ok(())
    };
    // Round 1 warms the host (compiled code, a pool slot per plugin that keeps up to 2 MiB of
    // its memory resident for the next instance); round 2 must not grow it further.
    assert_eq!(run("noop", 5)?, StepStatus::Succeeded);
    round()?;
    let before = rss_kib();
    round()?;
    let grown_mib = rss_kib().saturating_sub(before) / 1024;
    assert!(
        grown_mib < 16,
        "engine memory grew by {grown_mib} MiB across a second round of the faults"
    );
    assert_eq!(run("noop", 5)?, StepStatus::Succeeded);
    assert!(
        rt.block_on(host.load("wrong", "wrong", &std::fs::read(wasm("wrong_contract"))?))
            .is_err()
    );
    // A component with more memories than a store may have is refused when loaded; the
    // hoarder of host handles and the unbounded report run after the memory figure (what they
    // make the host allocate is freed, but the allocator may keep it).
    let many = crate::sandbox::multi_memory_bytes(1, 8, 1000)?;
    assert!(rt.block_on(host.load("many", "many", &many)).is_err());
    assert_eq!(run("noop", 5)?, StepStatus::Succeeded);
    assert_eq!(
        run_with("resource_hoard", 5, serde_json::json!({}))?,
        StepStatus::Failed
    );
    // Under this host's 32 MiB the 30 MiB report cannot even be built (sandbox.rs stores one
    // capped under 512 MiB).
    assert_eq!(
        run_with("liar", 5, serde_json::json!({"mode": "report"}))?,
        StepStatus::ResourceExhausted
    );
    assert_eq!(run("noop", 5)?, StepStatus::Succeeded);
    Ok(())
}

/// A plugin built against the frozen `nestr:plugin@0.1.0` (the fixture uses the frozen WIT, not
/// nestr-sdk) loads in the same host as 0.2.0 plugins, and each of its outcomes reads as a
/// 0.2.0 plugin's would: its log line and program output in the step log, a `failed` report with
/// test counts, the engine's own refusal of an undeclared program.
#[test]
fn a_plugin_built_against_the_frozen_0_1_contract_still_runs() -> TestResult {
    let sb = Sandbox::new();
    let ws = fixture_ws(
        &sb,
        "contract_0_1",
        "exec = [\"sh\", \"rm\"], env = [\"PATH\"]",
        "",
    );
    let inspect = sb.nestr(&ws, &["plugin", "inspect", "fx", "--json"]).ok();
    assert_eq!(
        inspect.json()["info"]["contract"],
        "nestr:plugin@0.1.0",
        "{}",
        inspect.stdout
    );
    let (run, step) = probe(&sb, &ws);
    assert_eq!(run.code, 0, "{}", run.all());
    assert_eq!(step["summary"], "probe svc via 0.1.0");
    let s = stored(&ws);
    assert!(s.log.contains("a 0.1.0 plugin speaking"), "{}", s.log);
    assert!(s.log.contains("hello from 0.1"), "{}", s.log);
    assert_eq!(s.metrics["tail"], "hello from 0.1");

    let manifest = std::fs::read_to_string(ws.join("nestr.toml"))?;
    std::fs::write(
        ws.join("nestr.toml"),
        manifest.replace("config = {  }", "config = { mode = \"fail\" }"),
    )?;
    let (run, step) = probe(&sb, &ws);
    assert_eq!(run.code, 1, "{}", run.all());
    assert_eq!(step["status"], "failed");
    assert_eq!(step["summary"], "2 of 5 tests failed");
    assert_eq!(
        step["tests"],
        serde_json::json!({"passed": 3, "failed": 2, "skipped": 0})
    );

    std::fs::write(
        ws.join("nestr.toml"),
        manifest.replace("config = {  }", "config = { mode = \"deny\" }"),
    )?;
    let (_, step) = probe(&sb, &ws);
    assert_eq!(step["status"], "denied", "{step}");
    let s = stored(&ws);
    assert!(s.reason.contains("rm"), "{}", s.reason);
    Ok(())
}
