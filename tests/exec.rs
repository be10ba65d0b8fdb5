//! `nestr exec`: the user's own command in each repository's or service's folder, through the
//! real binary on real git repositories — in parallel, output prefixed or grouped, exit codes,
//! `--continue never`, selection by repository, service and tag, recorded as a run with its logs,
//! Ctrl-C ending every command's whole process tree (a `setsid` child included), and never
//! started or re-run over HTTP.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::api::{Server, post_json};
use crate::support::{Sandbox, TestResult, isolate, pid_alive, wait_for};

const MANIFEST: &str = r#"[workspace]
name = "ex"

[repos.alpha]
url = "{remotes}/alpha.git"
[repos.beta]
url = "{remotes}/beta.git"
[repos.gamma]
url = "{remotes}/gamma.git"

[services.a]
repo = "alpha"
tags = ["back"]
[services.b]
repo = "beta"
tags = ["back"]
[services.c]
repo = "gamma"
tags = ["front"]
"#;

fn workspace(sb: &Sandbox) -> PathBuf {
    for r in ["alpha", "beta", "gamma"] {
        sb.remote(r);
    }
    let ws = sb.workspace(MANIFEST);
    sb.nestr(&ws, &["assemble", "-q"]).ok();
    ws
}

#[test]
fn exec_runs_in_every_folder_at_once_and_is_recorded_as_a_run() -> TestResult {
    let sb = Sandbox::new();
    let ws = workspace(&sb);
    let out = sb
        .nestr(
            &ws,
            &[
                "exec",
                "-j",
                "3",
                "--",
                "sh",
                "-c",
                "sleep 0.5; echo \"in $(basename \"$PWD\")\"",
            ],
        )
        .ok();
    let text = out.all();
    for r in ["alpha", "beta", "gamma"] {
        assert!(text.contains(&format!("{r} | in {r}")), "{text}");
    }
    assert!(
        text.contains("FOLDER") && text.contains("succeeded"),
        "{text}"
    );
    // Recorded: operation exec, a step per folder, each ran at the same time as the others.
    let runs = sb
        .nestr(&ws, &["runs", "--json", "--operation", "exec"])
        .ok()
        .json();
    let id = runs["runs"][0]["run_id"]
        .as_str()
        .ok_or("no exec run")?
        .to_string();
    let run = sb.nestr(&ws, &["runs", "show", &id, "--json"]).ok().json();
    let steps = run["steps"].as_array().ok_or("steps")?;
    let names: Vec<&str> = steps.iter().filter_map(|s| s["service"].as_str()).collect();
    assert_eq!(names, ["alpha", "beta", "gamma"]);
    assert!(
        steps
            .iter()
            .all(|s| s["plugin"] == "exec" && s["status"] == "succeeded")
    );
    let at = |s: &serde_json::Value, k: &str| s[k].as_str().unwrap_or("").to_string();
    let last_start = steps
        .iter()
        .map(|s| at(s, "started_at"))
        .max()
        .unwrap_or_default();
    let first_end = steps
        .iter()
        .map(|s| at(s, "finished_at"))
        .min()
        .unwrap_or_default();
    assert!(last_start < first_end, "the three overlapped: {run}");
    // Its log is stored, the command line first.
    let logs = sb.nestr(&ws, &["logs", &id]).ok().all();
    assert!(logs.contains("beta ! $ sh -c 'sleep 0.5; echo"), "{logs}");
    assert!(logs.contains("beta | in beta"), "{logs}");
    // --json: the run as stored; --output grouped: a block per folder.
    let json = sb
        .nestr(&ws, &["exec", "--json", "-r", "alpha", "--", "true"])
        .ok()
        .json();
    assert_eq!(json["operation"], "exec");
    assert_eq!(json["steps"][0]["summary"], "exit 0");
    let grouped = sb
        .nestr(
            &ws,
            &[
                "exec", "--output", "grouped", "-r", "alpha", "-r", "beta", "--", "pwd",
            ],
        )
        .ok()
        .all();
    assert!(grouped.contains("── alpha succeeded"), "{grouped}");
    Ok(())
}

#[test]
fn exit_codes_continue_never_and_selection_by_service_and_tag() -> TestResult {
    let sb = Sandbox::new();
    let ws = workspace(&sb);
    // One failure: exit 1, the others still ran (the default is to go on).
    let out = sb
        .nestr(
            &ws,
            &[
                "exec",
                "--",
                "sh",
                "-c",
                "test \"$(basename \"$PWD\")\" != beta",
            ],
        )
        .expect(1);
    let text = out.all();
    assert!(text.contains("exit 1"), "{text}");
    let run = sb
        .nestr(&ws, &["runs", "show", &last_exec(&sb, &ws)?, "--json"])
        .ok()
        .json();
    let statuses: Vec<&str> = run["steps"]
        .as_array()
        .ok_or("steps")?
        .iter()
        .filter_map(|s| s["status"].as_str())
        .collect();
    assert_eq!(statuses, ["succeeded", "failed", "succeeded"]);
    // --continue never, one at a time: nothing starts after the failure.
    sb.nestr(
        &ws,
        &[
            "exec",
            "-j",
            "1",
            "--continue",
            "never",
            "--",
            "sh",
            "-c",
            "test \"$(basename \"$PWD\")\" != alpha",
        ],
    )
    .expect(1);
    let run = sb
        .nestr(&ws, &["runs", "show", &last_exec(&sb, &ws)?, "--json"])
        .ok()
        .json();
    let statuses: Vec<&str> = run["steps"]
        .as_array()
        .ok_or("steps")?
        .iter()
        .filter_map(|s| s["status"].as_str())
        .collect();
    assert_eq!(statuses, ["failed", "skipped", "skipped"]);
    // By tag and by service: the services' folders, named by the services.
    let by_tag = sb
        .nestr(
            &ws,
            &["exec", "-t", "back", "-s", "c", "--json", "--", "true"],
        )
        .ok()
        .json();
    let names: Vec<&str> = by_tag["steps"]
        .as_array()
        .ok_or("steps")?
        .iter()
        .filter_map(|s| s["service"].as_str())
        .collect();
    assert_eq!(names, ["a", "b", "c"]);
    // Mistakes are usage errors, and nothing is recorded for them.
    let before = sb.nestr(&ws, &["runs", "--json"]).ok().json()["runs"]
        .as_array()
        .map(Vec::len);
    let e = sb
        .nestr(&ws, &["exec", "-r", "nope", "--", "true"])
        .expect(2);
    assert!(
        e.all().contains("there is no repository `nope`"),
        "{}",
        e.all()
    );
    sb.nestr(&ws, &["exec", "-r", "alpha", "-s", "a", "--", "true"])
        .expect(2);
    sb.nestr(&ws, &["exec", "-r", "alpha"]).expect(2);
    let e = sb
        .nestr(
            &ws,
            &["exec", "-r", "alpha", "--", "no-such-program-anywhere"],
        )
        .expect(1);
    assert!(e.all().contains("no-such-program-anywhere"), "{}", e.all());
    let after = sb.nestr(&ws, &["runs", "--json"]).ok().json()["runs"]
        .as_array()
        .map(Vec::len);
    assert_eq!(
        after,
        before.map(|n| n + 1),
        "only the run that started is recorded"
    );
    Ok(())
}

fn last_exec(sb: &Sandbox, ws: &std::path::Path) -> Result<String, Box<dyn std::error::Error>> {
    let runs = sb
        .nestr(ws, &["runs", "--json", "--operation", "exec"])
        .ok()
        .json();
    Ok(runs["runs"][0]["run_id"]
        .as_str()
        .ok_or("no exec run")?
        .to_string())
}

#[test]
fn ctrl_c_ends_every_commands_whole_process_tree() -> TestResult {
    let sb = Sandbox::new();
    let ws = workspace(&sb);
    let pids = sb.path().join("pids");
    std::fs::create_dir_all(&pids)?;
    // Each command leaves a child in a session of its own, then waits.
    let script = format!(
        "setsid sleep 300 & echo $! > {p}/$(basename \"$PWD\").child; echo $$ > {p}/$(basename \"$PWD\").sh; sleep 300",
        p = pids.display()
    );
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_nestr"));
    cmd.current_dir(&ws)
        .args([
            "--color", "never", "exec", "-j", "3", "--", "sh", "-c", &script,
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    isolate(&mut cmd, sb.path());
    let mut child = cmd.spawn()?;
    for r in ["alpha", "beta", "gamma"] {
        for kind in ["child", "sh"] {
            assert!(
                wait_for(&pids.join(format!("{r}.{kind}")), Duration::from_secs(30)),
                "{r}.{kind} was not written"
            );
        }
    }
    std::thread::sleep(Duration::from_millis(200));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(child.id())?),
        nix::sys::signal::Signal::SIGINT,
    )?;
    let started = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break s;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "nestr exec did not end after Ctrl-C"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(130), "Ctrl-C's exit code");
    for r in ["alpha", "beta", "gamma"] {
        for kind in ["child", "sh"] {
            let pid = std::fs::read_to_string(pids.join(format!("{r}.{kind}")))?;
            assert!(
                !pid_alive(&pid),
                "{r}'s {kind} ({}) outlived the run",
                pid.trim()
            );
        }
    }
    let run = sb
        .nestr(&ws, &["runs", "show", &last_exec(&sb, &ws)?, "--json"])
        .ok()
        .json();
    assert_eq!(run["status"], "cancelled", "{run}");
    Ok(())
}

#[test]
fn an_exec_run_is_never_started_or_run_again_over_http() -> TestResult {
    let sb = Sandbox::new();
    let ws = workspace(&sb);
    sb.nestr(&ws, &["exec", "-r", "alpha", "--", "false"])
        .expect(1);
    let id = last_exec(&sb, &ws)?;
    let srv = Server::start(&sb, &ws, &[])?;
    let again = post_json(&srv.u(&format!("/api/runs/{id}/rerun")), "")?;
    assert_eq!(again.status, 400, "{}", again.body);
    assert!(again.body.contains("never over HTTP"), "{}", again.body);
    let started = post_json(&srv.u("/api/operations/run"), r#"{"operation":"exec"}"#)?;
    assert_eq!(
        started.status, 400,
        "exec is no operation: {}",
        started.body
    );
    assert_eq!(post_json(&srv.u("/api/operations/exec"), "{}")?.status, 404);
    // It shows over HTTP like any run.
    let run = crate::api::get(&srv.u(&format!("/api/runs/{id}")))?.json();
    assert_eq!(run["operation"], "exec");
    Ok(())
}
