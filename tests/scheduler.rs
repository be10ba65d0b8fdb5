//! The scheduler through the real binary: dependency order and parallelism from the recorded
//! times, `concurrency`, continue modes on a diamond, selection, dry runs, cancellation with no
//! survivors, kill -9 recovery (in a loop), `logs --follow` exactly once, two processes at once.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::{Run, Sandbox, TestResult, pid_alive, wait_for};

/// A workspace with one repo and services `a`..: `deps` are (service, depends_on), `scripts`
/// the shell script each service's `op` runs (via the command plugin and sh).
pub fn ws(sb: &Sandbox, services: &[(&str, &[&str], &str)], extra: &str) -> PathBuf {
    sb.remote("app");
    let mut m =
        String::from("[workspace]\nname = \"sched\"\n\n[repos.app]\nurl = \"{remotes}/app.git\"\n");
    for (name, deps, script) in services {
        let deps: Vec<String> = deps.iter().map(|d| format!("{d:?}")).collect();
        m.push_str(&format!(
            "\n[services.{name}]\nrepo = \"app\"\ndepends_on = [{}]\ntags = [\"t-{name}\"]\n\n[services.{name}.operations]\nop = {{ plugin = \"command\", config = {{ run = [[\"sh\", \"-c\", {script:?}]] }} }}\n",
            deps.join(", ")
        ));
    }
    m.push_str("\n[plugins.command]\ngrants = { exec = [\"sh\"], env = [\"PATH\"], fs = \"read-write\" }\n");
    m.push_str(extra);
    let ws = sb.workspace(&m);
    sb.nestr(&ws, &["assemble", "-q"]).ok();
    ws
}

/// (service, status, started_at ms, finished_at ms) of the newest run.
fn steps(ws: &Path) -> Vec<(String, String, Option<i64>, Option<i64>)> {
    let conn = rusqlite::Connection::open(ws.join(".nestr/state.db")).expect("db");
    let run: String = conn
        .query_row(
            "SELECT id FROM runs WHERE operation = 'op' ORDER BY created_at DESC, id DESC LIMIT 1",
            [],
            |r| r.get(0),
        )
        .expect("run");
    conn.prepare(
        "SELECT service, status, started_at, finished_at FROM steps WHERE run_id = ?1 ORDER BY id",
    )
    .expect("prepare")
    .query_map([run], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
    .expect("query")
    .collect::<Result<_, _>>()
    .expect("rows")
}

fn status_of<'a>(steps: &'a [(String, String, Option<i64>, Option<i64>)], name: &str) -> &'a str {
    steps
        .iter()
        .find(|s| s.0 == name)
        .map_or("missing", |s| s.1.as_str())
}

const DIAMOND: &[(&str, &[&str], &str)] = &[
    ("a", &[], "sleep 0.2; echo a"),
    ("b", &["a"], "sleep 0.3; echo b"),
    ("c", &["a"], "sleep 0.3; echo c"),
    ("d", &["b", "c"], "echo d"),
];

#[test]
fn steps_start_after_their_dependencies_and_independent_ones_overlap() -> TestResult {
    let sb = Sandbox::new();
    let ws = ws(&sb, DIAMOND, "");
    sb.nestr(&ws, &["run", "op", "-j", "4"]).ok();
    let s = steps(&ws);
    let get = |n: &str| s.iter().find(|x| x.0 == n).cloned().ok_or("step");
    let (a, b, c, d) = (get("a")?, get("b")?, get("c")?, get("d")?);
    for (step, deps) in [(&b, vec![&a]), (&c, vec![&a]), (&d, vec![&b, &c])] {
        for dep in deps {
            assert!(
                step.2 >= dep.3,
                "{} started at {:?} before {} finished at {:?}",
                step.0,
                step.2,
                dep.0,
                dep.3
            );
        }
    }
    // b and c are independent: with -j 4 they overlap.
    assert!(
        b.2 < c.3 && c.2 < b.3,
        "b {:?}..{:?} and c {:?}..{:?} did not overlap",
        b.2,
        b.3,
        c.2,
        c.3
    );
    Ok(())
}

#[test]
fn concurrency_one_serialises_independent_steps() -> TestResult {
    let sb = Sandbox::new();
    let services: &[(&str, &[&str], &str)] = &[("x", &[], "sleep 0.4"), ("y", &[], "sleep 0.4")];
    let ws = ws(&sb, services, "");
    // A workspace default with concurrency = 1 replaces the services' own: rewrite them.
    let m = std::fs::read_to_string(ws.join("nestr.toml"))?.replace(
        "op = { plugin = \"command\", config = { run = [[\"sh\", \"-c\", \"sleep 0.4\"]] } }",
        "",
    ) + "\n[operations.op]\nplugin = \"command\"\nconcurrency = 1\nconfig = { run = [[\"sh\", \"-c\", \"sleep 0.4\"]] }\n";
    std::fs::write(ws.join("nestr.toml"), m)?;
    sb.nestr(&ws, &["run", "op", "-j", "4"]).ok();
    let s = steps(&ws);
    assert_eq!(s.len(), 2);
    let (x, y) = (&s[0], &s[1]);
    assert!(
        x.3 <= y.2 || y.3 <= x.2,
        "concurrency = 1, yet {x:?} and {y:?} overlap"
    );
    Ok(())
}

#[test]
fn continue_modes_on_a_diamond_with_a_failing_node() -> TestResult {
    let failing: &[(&str, &[&str], &str)] = &[
        ("a", &[], "echo a"),
        ("b", &["a"], "echo b; exit 3"),
        ("c", &["a"], "sleep 0.3; echo c"),
        ("d", &["b", "c"], "echo d"),
        ("e", &["c"], "echo e"),
    ];
    for (mode, want) in [
        (
            "never",
            [
                ("a", "succeeded"),
                ("b", "failed"),
                ("c", "skipped"),
                ("d", "skipped"),
                ("e", "skipped"),
            ],
        ),
        (
            "dependencies-ok",
            [
                ("a", "succeeded"),
                ("b", "failed"),
                ("c", "succeeded"),
                ("d", "skipped"),
                ("e", "succeeded"),
            ],
        ),
        (
            "always",
            [
                ("a", "succeeded"),
                ("b", "failed"),
                ("c", "succeeded"),
                ("d", "succeeded"),
                ("e", "succeeded"),
            ],
        ),
    ] {
        let sb = Sandbox::new();
        let ws = ws(&sb, failing, "");
        // -j 1 makes `never` deterministic: b runs (and fails) before c starts.
        let run = sb
            .nestr(&ws, &["run", "op", "-j", "1", "--continue", mode, "--json"])
            .expect(1);
        let s = steps(&ws);
        for (svc, status) in want {
            assert_eq!(status_of(&s, svc), status, "{mode}: {svc} in {s:?}");
        }
        let json = run.json();
        assert_eq!(json["status"], "failed");
        let reason = |svc: &str| {
            json["steps"]
                .as_array()
                .and_then(|a| a.iter().find(|x| x["service"] == svc))
                .map(|x| x["reason"].to_string())
        };
        if mode == "dependencies-ok" {
            assert!(
                reason("d").is_some_and(|r| r.contains("dependency `b`")),
                "{json}"
            );
        }
        if mode == "never" {
            assert!(
                reason("c").is_some_and(|r| r.contains("step `b` failed")),
                "{json}"
            );
        }
    }
    Ok(())
}

#[test]
fn selection_by_tag_with_deps_and_dependents_and_dry_run() -> TestResult {
    let sb = Sandbox::new();
    let ws = ws(&sb, DIAMOND, "");
    let plan = |args: &[&str]| -> Result<Vec<String>, Box<dyn std::error::Error>> {
        let mut all = vec!["run", "op", "--dry-run", "--json"];
        all.extend_from_slice(args);
        let v = sb.nestr(&ws, &all).ok().json();
        Ok(v["levels"]
            .as_array()
            .ok_or("levels")?
            .iter()
            .flat_map(|l| l.as_array().cloned().unwrap_or_default())
            .map(|s| s["service"].as_str().unwrap_or_default().to_string())
            .collect())
    };
    assert_eq!(plan(&["-t", "t-b"])?, ["b"]);
    assert_eq!(plan(&["-t", "t-b", "--with-deps"])?, ["a", "b"]);
    assert_eq!(plan(&["-s", "b", "--with-dependents"])?, ["b", "d"]);
    assert_eq!(plan(&["-s", "b", "-t", "t-c"])?, ["b", "c"]);
    assert_eq!(plan(&[])?, ["a", "b", "c", "d"]);
    let text = sb.nestr(&ws, &["run", "op", "--dry-run"]).ok();
    assert!(
        text.stdout.contains("level 2") && text.stdout.contains("d (command) after b, c"),
        "{}",
        text.stdout
    );
    sb.nestr(&ws, &["run", "op", "-t", "nope"]).expect(2);
    sb.nestr(&ws, &["run", "op", "-s", "zz"]).expect(2);
    assert!(
        !ws.join(".nestr/state.db").exists() || steps_count(&ws) == 0,
        "a dry run records nothing"
    );
    Ok(())
}

fn steps_count(ws: &Path) -> i64 {
    rusqlite::Connection::open(ws.join(".nestr/state.db"))
        .and_then(|c| {
            c.query_row(
                "SELECT count(*) FROM runs WHERE operation = 'op'",
                [],
                |r| r.get(0),
            )
        })
        .unwrap_or(0)
}

fn spawn_nestr(sb: &Sandbox, ws: &Path, args: &[&str]) -> std::io::Result<std::process::Child> {
    Command::new(env!("CARGO_BIN_EXE_nestr"))
        .current_dir(ws)
        .arg("--color")
        .arg("never")
        .args(args)
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("HOME", sb.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
}

#[test]
fn ctrl_c_cancels_the_run_and_no_process_survives() -> TestResult {
    let sb = Sandbox::new();
    let script = "trap '' TERM; sleep 60 & echo $! > child.pid; setsid sh -c 'echo $$ > daemon.pid; exec sleep 60' & wait";
    let services: &[(&str, &[&str], &str)] =
        &[("long", &[], script), ("after", &["long"], "echo never")];
    let ws = ws(&sb, services, "");
    let child = spawn_nestr(&sb, &ws, &["run", "op"])?;
    assert!(
        wait_for(&ws.join("app/daemon.pid"), Duration::from_secs(20)),
        "the step did not start"
    );
    assert!(wait_for(&ws.join("app/child.pid"), Duration::from_secs(5)));
    let started = Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(child.id())?),
        nix::sys::signal::Signal::SIGINT,
    )?;
    let out = Run::from(child.wait_with_output()?);
    assert_eq!(out.code, 130, "{}", out.all());
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "cancelled within the grace, took {:?}",
        started.elapsed()
    );
    for pid_file in ["child.pid", "daemon.pid"] {
        let pid = std::fs::read_to_string(ws.join("app").join(pid_file))?;
        assert!(!pid_alive(&pid), "{pid_file} {pid} survived the cancel");
    }
    let s = steps(&ws);
    assert_eq!(status_of(&s, "long"), "cancelled", "{s:?}");
    assert_eq!(status_of(&s, "after"), "cancelled", "{s:?}");
    let runs = sb.nestr(&ws, &["runs", "--json"]).ok().json();
    assert_eq!(runs["runs"][0]["status"], "cancelled");
    Ok(())
}

/// kill -9 of `nestr run` in the middle of a chatty step, `rounds` times: each time the run is
/// reported interrupted by the next command, every stored line is contiguous from the first
/// (nothing lost before the last committed batch, nothing invented), and the database is intact.
pub fn kill_nine_rounds(rounds: usize) -> TestResult {
    let sb = Sandbox::new();
    let chatty = "i=0; while [ $i -lt 200000 ]; do i=$((i+1)); echo \"line $i\"; done; sleep 30";
    let ws = ws(&sb, &[("chatty", &[], chatty)], "");
    for round in 0..rounds {
        let (previous_step, _) = newest_step(&ws);
        let mut child = spawn_nestr(&sb, &ws, &["run", "op", "--json"])?;
        // Once the step is writing, let it go on for a varying moment, then kill without warning.
        let start = Instant::now();
        while !matches!(newest_step(&ws), (step, chunks) if step > previous_step && chunks > 0) {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "round {round}: no output"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(Duration::from_millis((round as u64 * 37) % 300));
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(i32::try_from(child.id())?),
            nix::sys::signal::Signal::SIGKILL,
        )?;
        child.wait()?;
        let shown = sb
            .nestr(&ws, &["runs", "show", &latest_run(&ws)?, "--json"])
            .ok()
            .json();
        assert_eq!(shown["status"], "interrupted", "round {round}: {shown}");
        assert_eq!(
            shown["steps"][0]["status"], "interrupted",
            "round {round}: {shown}"
        );
        let logs = sb
            .nestr(&ws, &["logs", shown["run_id"].as_str().ok_or("id")?])
            .ok();
        let numbers: Vec<u64> = logs
            .stdout
            .lines()
            .filter_map(|l| l.split("| line ").nth(1))
            .filter_map(|n| n.trim().parse().ok())
            .collect();
        assert!(
            !numbers.is_empty(),
            "round {round}: no line was committed before the kill"
        );
        for (i, n) in numbers.iter().enumerate() {
            assert_eq!(
                *n,
                i as u64 + 1,
                "round {round}: line {} is `line {n}`: a gap or duplicate",
                i + 1
            );
        }
        // integrity_check reads the whole database: every round for the first 20, then every
        // 50th and the last, so that long loops (tests/kill-loop.sh) stay linear.
        if round < 20 || round % 50 == 49 || round + 1 == rounds {
            let conn = rusqlite::Connection::open(ws.join(".nestr/state.db"))?;
            let check: String = conn.query_row("PRAGMA integrity_check", [], |r| r.get(0))?;
            assert_eq!(check, "ok", "round {round}");
        }
    }
    // The killed engines' programs (the chatty shells) were killed by the recovery.
    std::thread::sleep(Duration::from_millis(100));
    let conn = rusqlite::Connection::open(ws.join(".nestr/state.db"))?;
    let runs: Vec<String> = conn
        .prepare("SELECT id FROM runs WHERE operation = 'op'")?
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    assert_eq!(runs.len(), rounds);
    let survivors: Vec<String> = std::fs::read_dir("/proc")?
        .flatten()
        .filter_map(|e| {
            let env = std::fs::read(e.path().join("environ")).ok()?;
            let env = String::from_utf8_lossy(&env).into_owned();
            runs.iter()
                .any(|r| env.contains(&format!("NESTR_STEP={r}-")))
                .then(|| e.file_name().to_string_lossy().into_owned())
        })
        .collect();
    assert!(
        survivors.is_empty(),
        "programs of killed runs survived: {survivors:?}"
    );
    Ok(())
}

/// The newest step's id and how many log chunks it has stored (cheap however large the history
/// grows).
fn newest_step(ws: &Path) -> (i64, i64) {
    rusqlite::Connection::open(ws.join(".nestr/state.db"))
        .and_then(|c| {
            c.query_row(
                "SELECT s.id, (SELECT count(*) FROM log_chunks WHERE step_id = s.id)
                 FROM steps s ORDER BY s.id DESC LIMIT 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
        })
        .unwrap_or((0, 0))
}

fn latest_run(ws: &Path) -> Result<String, Box<dyn std::error::Error>> {
    let conn = rusqlite::Connection::open(ws.join(".nestr/state.db"))?;
    Ok(conn.query_row(
        "SELECT id FROM runs WHERE operation = 'op' ORDER BY created_at DESC, id DESC LIMIT 1",
        [],
        |r| r.get(0),
    )?)
}

#[test]
fn kill_nine_twenty_times_loses_nothing_committed() -> TestResult {
    let rounds = std::env::var("NESTR_KILL_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    kill_nine_rounds(rounds)
}

#[test]
fn logs_follow_sees_every_line_exactly_once() -> TestResult {
    let sb = Sandbox::new();
    let script = "i=0; while [ $i -lt 3000 ]; do i=$((i+1)); echo \"line $i\"; if [ $((i % 300)) -eq 0 ]; then sleep 0.1; fi; done";
    let ws = ws(&sb, &[("chatty", &[], script)], "");
    let runner = spawn_nestr(&sb, &ws, &["run", "op", "--json"])?;
    let start = Instant::now();
    let run_id = loop {
        if let Ok(id) = latest_run(&ws) {
            break id;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the run did not start"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    let follow = spawn_nestr(&sb, &ws, &["logs", &run_id, "--follow"])?;
    let follow_out = Run::from(follow.wait_with_output()?);
    let run_out = Run::from(runner.wait_with_output()?);
    assert_eq!(run_out.code, 0, "{}", run_out.all());
    assert_eq!(follow_out.code, 0, "{}", follow_out.all());
    let numbers: Vec<u64> = follow_out
        .stdout
        .lines()
        .filter_map(|l| l.split("| line ").nth(1))
        .filter_map(|n| n.trim().parse().ok())
        .collect();
    assert_eq!(
        numbers,
        (1..=3000).collect::<Vec<u64>>(),
        "every line exactly once, in order"
    );
    Ok(())
}

#[test]
fn two_processes_on_one_workspace_both_work() -> TestResult {
    let sb = Sandbox::new();
    let services: &[(&str, &[&str], &str)] = &[
        ("slow", &[], "sleep 1.5; echo slow done"),
        ("quick", &[], "echo quick"),
    ];
    let ws = ws(&sb, services, "");
    let slow = spawn_nestr(&sb, &ws, &["run", "op", "-s", "slow", "--json"])?;
    std::thread::sleep(Duration::from_millis(500));
    // A second process opens the store (and runs recovery) while the first still runs.
    sb.nestr(&ws, &["run", "op", "-s", "quick"]).ok();
    sb.nestr(&ws, &["runs"]).ok();
    let out = Run::from(slow.wait_with_output()?);
    assert_eq!(out.code, 0, "{}", out.all());
    assert_eq!(
        out.json()["status"],
        "succeeded",
        "the live run was not taken for a dead one"
    );
    Ok(())
}

#[test]
fn grouped_output_and_pruning_old_runs() -> TestResult {
    let sb = Sandbox::new();
    let services: &[(&str, &[&str], &str)] =
        &[("a", &[], "echo one; echo two"), ("b", &[], "echo three")];
    let ws = ws(&sb, services, "");
    let grouped = sb.nestr(&ws, &["run", "op", "--output", "grouped"]).ok();
    let block_a = grouped
        .stdout
        .find("── a succeeded")
        .ok_or("no block for a")?;
    let a_lines = &grouped.stdout[block_a..];
    assert!(
        a_lines
            .find("a | one")
            .is_some_and(|i| a_lines.find("a | two").is_some_and(|j| i < j)),
        "{}",
        grouped.stdout
    );
    for _ in 0..4 {
        sb.nestr(&ws, &["run", "op", "-q"]).ok();
    }
    let all = sb
        .nestr(&ws, &["runs", "--json", "--operation", "op"])
        .ok()
        .json()["runs"]
        .clone();
    assert_eq!(all.as_array().map(Vec::len), Some(5));
    // The sandbox's `nestr assemble` is a run too.
    let everything = sb.nestr(&ws, &["runs", "--json"]).ok().json();
    assert_eq!(everything["runs"].as_array().map(Vec::len), Some(6));
    let oldest = all[4]["run_id"].as_str().ok_or("id")?.to_string();
    sb.nestr(&ws, &["runs", "prune", "--keep", "2"]).ok();
    let kept = sb.nestr(&ws, &["runs", "--json"]).ok().json();
    assert_eq!(kept["runs"].as_array().map(Vec::len), Some(2));
    assert_eq!(
        kept["runs"][0]["run_id"], all[0]["run_id"],
        "the newest are kept"
    );
    sb.nestr(&ws, &["logs", &oldest]).expect(2);
    let conn = rusqlite::Connection::open(ws.join(".nestr/state.db"))?;
    let orphans: i64 = conn.query_row(
        "SELECT count(*) FROM log_chunks WHERE step_id NOT IN (SELECT id FROM steps)",
        [],
        |r| r.get(0),
    )?;
    assert_eq!(orphans, 0, "logs of pruned runs are gone");
    sb.nestr(&ws, &["runs", "prune", "--older-than", "1h"]).ok();
    assert_eq!(
        sb.nestr(&ws, &["runs", "--json"]).ok().json()["runs"]
            .as_array()
            .map(Vec::len),
        Some(2)
    );
    sb.nestr(&ws, &["runs", "prune"]).expect(2);
    Ok(())
}

#[test]
fn a_subscriber_that_never_reads_slows_nothing_and_loses_nothing() -> TestResult {
    // The scheduler runs in-process here, and an engine process reaps every child it has (it is
    // their subreaper): in a process of its own, so that it never reaps another test's git.
    if let Some(verdict) = crate::support::in_own_process(
        "scheduler::a_subscriber_that_never_reads_slows_nothing_and_loses_nothing",
        "NESTR_SUBSCRIBER_CHILD",
    ) {
        return verdict;
    }
    let sb = Sandbox::new();
    // 400 services: well over the channel's 1024 events (queued, started, log, finished each).
    let names: Vec<String> = (0..400).map(|i| format!("s{i}")).collect();
    let specs: Vec<(&str, &[&str], &str)> = names
        .iter()
        .map(|n| (n.as_str(), &[][..], "echo line-of-this-step"))
        .collect();
    let w = ws(&sb, &specs, "");
    let mut workspace = nestr::workspace::Workspace::load(&nestr::workspace::Location {
        manifest: None,
        state: None,
        cwd: w.clone(),
    })?;
    // Holds its place in the channel and never reads: the run must not wait for it.
    let mut never_read = workspace.meta.events.subscribe();
    let report = workspace.run_operation(
        "op",
        &nestr::scheduler::Selection::default(),
        &nestr::scheduler::RunOptions::default(),
        nestr::plugin::state::Cancel::default(),
    )?;
    assert_eq!(report.status, nestr::model::RunStatus::Succeeded);
    assert!(
        matches!(
            never_read.try_recv(),
            Err(tokio::sync::broadcast::error::TryRecvError::Lagged(_))
        ),
        "the subscriber fell behind (else this test proves nothing)"
    );
    assert_eq!(report.steps.len(), 400);
    let logs = sb.nestr(&w, &["logs", &report.run_id]).ok().stdout;
    let lines = logs
        .lines()
        .filter(|l| l.ends_with("| line-of-this-step"))
        .count();
    assert_eq!(lines, 400, "every step's line is stored");
    Ok(())
}
