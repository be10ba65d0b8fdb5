//! The API under load and abuse, against the real `nestr serve` on loopback: bursts of runs
//! (bounded, queued in order, refused beyond the queue, every run ending recorded), event
//! streams of finished runs that end, runs of a killed CLI recovered by the server, the bearer
//! scheme in any case, connection and descriptor limits, and the errors answered below the
//! handlers.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::api::{Server, call, events, get, post_json, wait_run_status};
use crate::scheduler::ws;
use crate::support::{Sandbox, TestResult, isolate};

/// Resident memory (KiB) and open descriptors of process `pid`.
fn usage(pid: u32) -> (u64, usize) {
    let rss = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0);
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count());
    (rss, fds)
}

/// Runs of the store in `ws` by status.
fn statuses(ws: &Path) -> Vec<(String, String)> {
    let conn = rusqlite::Connection::open(ws.join(".nestr/state.db")).expect("db");
    conn.prepare("SELECT id, status FROM runs ORDER BY rowid")
        .expect("prepare")
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows")
}

/// The most steps of operation `op` that ran at the same time (from their stored times).
fn most_at_once(ws: &Path, op: &str) -> usize {
    let conn = rusqlite::Connection::open(ws.join(".nestr/state.db")).expect("db");
    let spans: Vec<(i64, i64)> = conn
        .prepare(
            "SELECT s.started_at, s.finished_at FROM steps s JOIN runs r ON r.id = s.run_id
             WHERE r.operation = ?1 AND s.started_at IS NOT NULL",
        )
        .expect("prepare")
        .query_map([op], |r| Ok((r.get(0)?, r.get(1)?)))
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows");
    spans
        .iter()
        .map(|(start, _)| {
            spans
                .iter()
                .filter(|(s, f)| s <= start && start < f)
                .count()
        })
        .max()
        .unwrap_or(0)
}

/// 100 POSTs from 16 clients at once; every answer, and the ids of the runs accepted.
fn burst(srv: &Server) -> Result<(Vec<String>, usize), Box<dyn std::error::Error>> {
    type Answer = (u16, Option<String>, Option<String>, String);
    let answers: Arc<Mutex<Vec<Answer>>> = Arc::default();
    let sent = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let url = srv.u("/api/operations/run");
    std::thread::scope(|s| {
        for _ in 0..16 {
            let (answers, sent, url) = (answers.clone(), sent.clone(), url.clone());
            s.spawn(move || {
                while sent.fetch_add(1, std::sync::atomic::Ordering::SeqCst) < 100 {
                    let r = post_json(&url, r#"{"operation":"op"}"#);
                    if let (Ok(r), Ok(mut a)) = (r, answers.lock()) {
                        let id = (r.status == 202)
                            .then(|| r.json()["run_id"].as_str().map(str::to_string))
                            .flatten();
                        let retry = r.header("retry-after").map(str::to_string);
                        let code = if r.status == 202 {
                            String::new()
                        } else {
                            r.error_code()
                        };
                        a.push((r.status, id, retry, code));
                    }
                }
            });
        }
    });
    let answers = answers.lock().map_err(|_| "poisoned")?.clone();
    assert_eq!(answers.len(), 100, "every POST is answered");
    for (status, _, retry, code) in &answers {
        assert!(
            *status == 202 || (*status == 503 && code == "queue_full" && retry.is_some()),
            "an answer that is neither accepted nor a queue_full 503 with Retry-After: {status} {code}"
        );
    }
    let accepted: Vec<String> = answers.iter().filter_map(|a| a.1.clone()).collect();
    Ok((accepted, answers.len()))
}

#[test]
fn a_burst_of_runs_is_bounded_queued_in_order_and_every_run_ends_recorded() -> TestResult {
    let sb = Sandbox::new();
    let w = ws(&sb, &[("a", &[], "sleep 0.2; echo done")], "");
    let srv = Server::start(
        &sb,
        &w,
        &["--rate-limit", "0", "--max-runs", "2", "--max-queued", "40"],
    )?;
    let mut after = Vec::new();
    for cycle in 0..2 {
        let (accepted, answered) = burst(&srv)?;
        // 2 executing + 40 waiting at most; the burst overflows that.
        assert!(
            accepted.len() >= 42 && accepted.len() < answered,
            "{} of {answered} accepted",
            accepted.len()
        );
        if cycle == 0 {
            // Queued runs say so, with their place.
            let queued = get(&srv.u("/api/runs?status=queued&limit=500"))?.json();
            let queued = queued["runs"].as_array().ok_or("runs")?.clone();
            assert!(!queued.is_empty(), "nothing queued right after the burst");
            let mut places: Vec<i64> = queued
                .iter()
                .filter_map(|r| r["queue_position"].as_i64())
                .collect();
            places.sort_unstable();
            assert_eq!(places.first(), Some(&1), "{queued:?}");
            assert!(places.windows(2).all(|w| w[1] == w[0] + 1), "{places:?}");
            let ready = get(&srv.u("/ready"))?;
            assert_eq!(ready.status, 200, "{}", ready.body);
        }
        for id in &accepted {
            let st = wait_run_status(&srv, id, Duration::from_secs(240))?;
            assert_eq!(st, "succeeded", "run {id}");
        }
        assert_eq!(get(&srv.u("/health"))?.status, 200);
        std::thread::sleep(Duration::from_secs(1));
        after.push(usage(srv.pid()));
    }
    for (id, st) in statuses(&w) {
        assert!(
            !matches!(st.as_str(), "queued" | "running"),
            "run {id} is still {st}"
        );
    }
    let at_once = most_at_once(&w, "op");
    assert!(at_once <= 2, "{at_once} runs executed at once (max_runs 2)");
    // After the first load, memory and descriptors stay where it left them.
    let ((rss1, fds1), (rss2, fds2)) = (after[0], after[1]);
    assert!(
        fds2 <= fds1 + 4,
        "descriptors {fds1} after the first burst, {fds2} after the second"
    );
    assert!(
        rss2 <= rss1 + rss1 / 5 + 8 * 1024,
        "resident memory {rss1} KiB after the first burst, {rss2} KiB after the second"
    );
    let log = std::fs::read_to_string(sb.path().join("serve.log"))?;
    for bad in [
        "panicked",
        "aborting",
        "sigaltstack",
        "Cannot allocate memory",
    ] {
        assert!(!log.contains(bad), "{bad} in the server log:\n{log}");
    }
    Ok(())
}

#[test]
fn a_queued_run_cancelled_ends_without_executing() -> TestResult {
    let sb = Sandbox::new();
    let w = ws(&sb, &[("a", &[], "sleep 2; echo done")], "");
    let srv = Server::start(
        &sb,
        &w,
        &["--rate-limit", "0", "--max-runs", "1", "--max-queued", "1"],
    )?;
    let start = |body: &str| -> Result<crate::api::Resp, Box<dyn std::error::Error>> {
        post_json(&srv.u("/api/operations/run"), body)
    };
    let running = start(r#"{"operation":"op"}"#)?;
    assert_eq!(running.status, 202, "{}", running.body);
    let waiting = start(r#"{"operation":"op"}"#)?;
    assert_eq!(waiting.status, 202, "{}", waiting.body);
    let id = waiting.json()["run_id"]
        .as_str()
        .ok_or("run_id")?
        .to_string();
    let full = start(r#"{"operation":"op"}"#)?;
    assert_eq!(full.status, 503, "{}", full.body);
    assert_eq!(full.error_code(), "queue_full");
    assert_eq!(full.header("retry-after"), Some("5"));
    let run = get(&srv.u(&format!("/api/runs/{id}")))?.json();
    assert_eq!(run["status"], "queued", "{run}");
    assert_eq!(run["queue_position"], 1, "{run}");
    let c = call("POST", &srv.u(&format!("/api/runs/{id}/cancel")), &[], None)?;
    assert_eq!(c.status, 202, "{}", c.body);
    assert_eq!(
        wait_run_status(&srv, &id, Duration::from_secs(30))?,
        "cancelled"
    );
    let run = get(&srv.u(&format!("/api/runs/{id}")))?.json();
    assert_eq!(run["queue_position"], serde_json::Value::Null);
    let step = &run["steps"][0];
    assert_eq!(step["status"], "cancelled", "{run}");
    assert!(step["started_at"].is_null(), "it never started: {run}");
    // Its stream tells the whole story and ends.
    let (evs, ended) = events(&srv.u(&format!("/api/runs/{id}/events")), None, None)?;
    assert!(ended);
    let kinds: Vec<&str> = evs.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(
        kinds,
        ["run_queued", "step_queued", "step_finished", "run_finished"]
    );
    Ok(())
}

#[test]
fn a_finished_runs_stream_resumed_at_or_beyond_its_end_answers_204_at_once() -> TestResult {
    let sb = Sandbox::new();
    let w = ws(&sb, &[("a", &[], "echo one; echo two")], "");
    let srv = Server::start(&sb, &w, &["--rate-limit", "0"])?;
    let id = crate::api::start_run(&srv, r#"{"operation":"op"}"#)?;
    let url = srv.u(&format!("/api/runs/{id}/events"));
    let (evs, ended) = events(&url, None, None)?;
    assert!(ended);
    let last = evs.last().ok_or("no events")?;
    assert_eq!(last.event, "run_finished");
    let (j, rest) = last.id.split_once('-').ok_or("cursor")?;
    let beyond = format!("{}-{rest}", j.parse::<i64>()? + 1000);
    for cursor in [last.id.clone(), beyond] {
        let t = Instant::now();
        let r = call("GET", &url, &[("last-event-id", &cursor)], None)?;
        assert_eq!(r.status, 204, "resumed at {cursor}: {}", r.body);
        assert!(r.body.is_empty());
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    }
    // Resumed before the end, it replays the rest and ends.
    let before = &evs[evs.len() - 2].id;
    let (rest, ended) = events(&url, Some(before), None)?;
    assert!(ended);
    assert_eq!(
        rest.iter().map(|e| e.event.as_str()).collect::<Vec<_>>(),
        ["run_finished"]
    );
    Ok(())
}

#[test]
fn the_server_marks_a_killed_cli_run_interrupted_within_seconds() -> TestResult {
    let sb = Sandbox::new();
    let w = ws(&sb, &[("a", &[], "echo started; sleep 60")], "");
    let srv = Server::start(&sb, &w, &["--rate-limit", "0"])?;
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_nestr"));
    cmd.current_dir(&w)
        .args(["run", "op", "-q"])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    isolate(&mut cmd, sb.path());
    let mut cli = cmd.spawn()?;
    // Wait until its step runs.
    let t = Instant::now();
    let id = loop {
        let runs = get(&srv.u("/api/runs?status=running"))?.json();
        if let Some(id) = runs["runs"][0]["run_id"].as_str() {
            break id.to_string();
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "the CLI run never ran"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    // A stream opened while it runs.
    let url = srv.u(&format!("/api/runs/{id}/events"));
    let stream = std::thread::spawn(move || events(&url, None, None).map_err(|e| e.to_string()));
    std::thread::sleep(Duration::from_millis(500));
    cli.kill()?;
    cli.wait()?;
    let killed = Instant::now();
    let st = wait_run_status(&srv, &id, Duration::from_secs(20))?;
    assert_eq!(st, "interrupted");
    assert!(
        killed.elapsed() < Duration::from_secs(8),
        "recovered after {:?}",
        killed.elapsed()
    );
    let (evs, ended) = stream.join().map_err(|_| "stream thread")??;
    assert!(ended, "the stream ended");
    assert_eq!(evs.last().map(|e| e.event.as_str()), Some("run_finished"));
    assert_eq!(
        evs.last().map(|e| e.data["status"].clone()),
        Some("interrupted".into())
    );
    Ok(())
}

#[test]
fn the_bearer_scheme_is_case_insensitive() -> TestResult {
    let sb = Sandbox::new();
    let w = ws(&sb, &[("a", &[], "true")], "");
    let out = sb.nestr(&w, &["token", "create", "--scope", "read"]).ok();
    let token = out.stdout.trim().to_string();
    let srv = Server::start(&sb, &w, &["--rate-limit", "0"])?;
    let url = srv.u("/api/workspace");
    for scheme in ["Bearer", "BEARER", "bearer", "bEaReR"] {
        let auth = format!("{scheme} {token}");
        let r = call("GET", &url, &[("authorization", &auth)], None)?;
        assert_eq!(r.status, 200, "{scheme}: {}", r.body);
    }
    for bad in [
        format!("Basic {token}"),
        format!("Bearer{token}"),
        "Bearer ".into(),
    ] {
        let r = call("GET", &url, &[("authorization", &bad)], None)?;
        assert_eq!(r.status, 401, "{bad}: {}", r.body);
    }
    Ok(())
}

/// Sends `request` on a fresh connection; the whole answer (until the server closes or 3 s).
fn raw(addr: &str, request: &[u8]) -> Result<String, Box<dyn std::error::Error>> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(3)))?;
    s.write_all(request)?;
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    Ok(String::from_utf8_lossy(&out).into_owned())
}

#[test]
fn connections_beyond_the_cap_are_refused_fast_and_descriptors_are_raised() -> TestResult {
    let sb = Sandbox::new();
    let w = ws(&sb, &[("a", &[], "true")], "");
    // Soft limit below the hard one: the server raises it; the cap follows the hard limit.
    let srv = Server::start_limited(
        &sb,
        &w,
        &["--rate-limit", "0", "--max-connections", "1000"],
        Some((64, 256)),
    )?;
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", srv.pid()))?;
    let files = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .ok_or("limits")?;
    let nums: Vec<&str> = files.split_whitespace().skip(3).take(2).collect();
    assert_eq!(nums, ["256", "256"], "{files}");
    let addr = srv.u("").trim_start_matches("http://").to_string();
    // 128 (half the descriptors) idle connections are held; more are refused at once.
    let mut idle = Vec::new();
    for _ in 0..128 {
        idle.push(TcpStream::connect(&addr)?);
    }
    std::thread::sleep(Duration::from_millis(300));
    let t = Instant::now();
    let refused = raw(&addr, b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n")?;
    assert!(
        refused.starts_with("HTTP/1.1 503") && refused.contains("too_many_connections"),
        "{refused}"
    );
    assert!(
        refused.to_ascii_lowercase().contains("retry-after: 1"),
        "{refused}"
    );
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    // Many more at once: every one answered or refused, none hangs, the log is not flooded.
    for _ in 0..200 {
        if let Ok(s) = TcpStream::connect(&addr) {
            idle.push(s);
        }
    }
    drop(idle);
    std::thread::sleep(Duration::from_millis(500));
    let r = get(&srv.u("/health"))?;
    assert_eq!(r.status, 200);
    let log = std::fs::read_to_string(sb.path().join("serve.log"))?;
    let accept_lines = log.matches("accept failed").count();
    assert!(accept_lines <= 10, "{accept_lines} accept-failure lines");
    Ok(())
}

#[test]
fn limits_below_the_handlers_answer_with_the_envelope_and_bad_shapes_name_the_field() -> TestResult
{
    let sb = Sandbox::new();
    let w = ws(&sb, &[("a", &[], "true")], "");
    let srv = Server::start(&sb, &w, &["--rate-limit", "0"])?;
    let addr = srv.u("").trim_start_matches("http://").to_string();
    // A long request target: 414 from the router, with the envelope and headers.
    let long = format!(
        "GET /api/runs?operation={} HTTP/1.1\r\nhost: x\r\n\r\n",
        "x".repeat(20_000)
    );
    let answer = raw(&addr, long.as_bytes())?;
    assert!(
        answer.starts_with("HTTP/1.1 414"),
        "{}",
        &answer[..answer.len().min(300)]
    );
    let lower = answer.to_ascii_lowercase();
    for h in [
        "x-request-id:",
        "x-content-type-options: nosniff",
        "content-type: application/json",
    ] {
        assert!(lower.contains(h), "{h} missing: {answer}");
    }
    assert!(answer.contains("\"uri_too_long\""), "{answer}");
    // Too many header fields: 431, the same way.
    let mut many = String::from("GET /health HTTP/1.1\r\nhost: x\r\n");
    for i in 0..150 {
        many.push_str(&format!("x-h{i}: v\r\n"));
    }
    many.push_str("\r\n");
    let answer = raw(&addr, many.as_bytes())?;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
    assert!(
        answer.contains("\"headers_too_large\"")
            && answer.to_ascii_lowercase().contains("x-request-id:"),
        "{answer}"
    );
    // An array is not an object.
    for path in [
        "/api/operations/sync",
        "/api/operations/assemble",
        "/api/operations/run",
    ] {
        let r = post_json(&srv.u(path), "[]")?;
        assert_eq!(r.status, 400, "{path}: {}", r.body);
        assert_eq!(r.json()["error"]["field"], "body", "{path}: {}", r.body);
    }
    // A status word outside the list, the empty one included.
    for q in ["status=", "status=bogus", "status=RUNNING"] {
        let r = get(&srv.u(&format!("/api/runs?{q}")))?;
        assert_eq!(r.status, 400, "{q}: {}", r.body);
        assert_eq!(r.json()["error"]["field"], "status", "{q}: {}", r.body);
    }
    let r = get(&srv.u("/api/runs?status=queued"))?;
    assert_eq!(r.status, 200, "{}", r.body);
    Ok(())
}
