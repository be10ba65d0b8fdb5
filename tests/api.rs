//! The HTTP API end to end: the real `nestr serve` on a loopback port, a real HTTP client, real
//! git repositories, real plugins and child processes.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use crate::scheduler::ws;
use crate::support::{Sandbox, TestResult, isolate, pid_alive, tools, wait_for};

/// A running `nestr serve`.
pub(crate) struct Server {
    child: Child,
    url: String,
    /// Kept open: the server writes to it.
    _stdout: BufReader<ChildStdout>,
}

impl Server {
    pub(crate) fn start(
        sb: &Sandbox,
        ws: &Path,
        args: &[&str],
    ) -> Result<Server, Box<dyn std::error::Error>> {
        Server::start_limited(sb, ws, args, None)
    }

    /// Starts the server with its open-descriptor limit at `(soft, hard)`.
    #[allow(unsafe_code)]
    pub(crate) fn start_limited(
        sb: &Sandbox,
        ws: &Path,
        args: &[&str],
        nofile: Option<(u64, u64)>,
    ) -> Result<Server, Box<dyn std::error::Error>> {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_nestr"));
        if let Some((soft, hard)) = nofile {
            use std::os::unix::process::CommandExt;
            // SAFETY: setrlimit is async-signal-safe; nothing else runs between fork and exec.
            unsafe {
                cmd.pre_exec(move || {
                    nix::sys::resource::setrlimit(
                        nix::sys::resource::Resource::RLIMIT_NOFILE,
                        soft,
                        hard,
                    )
                    .map_err(std::io::Error::from)
                });
            }
        }
        cmd.current_dir(ws)
            .args(["--color", "never", "serve", "--bind", "127.0.0.1:0"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::from(std::fs::File::create(
                sb.path().join("serve.log"),
            )?));
        isolate(&mut cmd, sb.path());
        let mut child = cmd.spawn()?;
        let mut stdout = BufReader::new(child.stdout.take().ok_or("no stdout")?);
        let mut line = String::new();
        stdout.read_line(&mut line)?;
        let url = line
            .split_whitespace()
            .find(|w| w.starts_with("http://"))
            .ok_or_else(|| format!("no address in the start-up line {line:?}"))?
            .to_string();
        Ok(Server {
            child,
            url,
            _stdout: stdout,
        })
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    pub(crate) fn u(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }

    /// SIGTERM, then wait (at most 60 s); the exit code.
    pub(crate) fn stop(&mut self) -> Option<i32> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(60) {
            if let Ok(Some(s)) = self.child.try_wait() {
                return s.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) struct Resp {
    pub(crate) status: u16,
    headers: ureq::http::HeaderMap,
    pub(crate) body: String,
}

impl Resp {
    pub(crate) fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The error envelope's code.
    pub(crate) fn error_code(&self) -> String {
        self.json()["error"]["code"]
            .as_str()
            .unwrap_or("")
            .to_string()
    }
}

pub(crate) fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .allow_non_standard_methods(true)
        .timeout_global(Some(Duration::from_secs(120)))
        .build()
        .into()
}

pub(crate) fn call(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> Result<Resp, Box<dyn std::error::Error>> {
    let mut b = ureq::http::Request::builder().method(method).uri(url);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let mut res = match body {
        Some(text) => agent().run(b.body(text.as_bytes().to_vec())?)?,
        None => agent().run(b.body(())?)?,
    };
    Ok(Resp {
        status: res.status().as_u16(),
        headers: res.headers().clone(),
        body: res
            .body_mut()
            .with_config()
            .limit(100 << 20)
            .read_to_string()?,
    })
}

pub(crate) fn get(url: &str) -> Result<Resp, Box<dyn std::error::Error>> {
    call("GET", url, &[], None)
}

pub(crate) fn post_json(url: &str, body: &str) -> Result<Resp, Box<dyn std::error::Error>> {
    call(
        "POST",
        url,
        &[("content-type", "application/json")],
        Some(body),
    )
}

/// One Server-Sent Event.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Sse {
    pub(crate) id: String,
    pub(crate) event: String,
    pub(crate) data: serde_json::Value,
}

/// Reads a run's event stream until it ends, or until `stop_after` events.
pub(crate) fn events(
    url: &str,
    last_id: Option<&str>,
    stop_after: Option<usize>,
) -> Result<(Vec<Sse>, bool), Box<dyn std::error::Error>> {
    let mut b = ureq::http::Request::builder().method("GET").uri(url);
    if let Some(id) = last_id {
        b = b.header("last-event-id", id);
    }
    let mut res = agent().run(b.body(())?)?;
    assert_eq!(res.status().as_u16(), 200, "event stream status");
    let reader = BufReader::new(res.body_mut().as_reader());
    let mut out = Vec::new();
    let (mut id, mut event, mut data) = (String::new(), String::new(), String::new());
    for line in reader.lines() {
        let line = line?;
        if line.is_empty() {
            if !event.is_empty() {
                out.push(Sse {
                    id: std::mem::take(&mut id),
                    event: std::mem::take(&mut event),
                    data: serde_json::from_str(&std::mem::take(&mut data))?,
                });
                if stop_after.is_some_and(|n| out.len() >= n) {
                    return Ok((out, false));
                }
            }
            continue;
        }
        if let Some(v) = line.strip_prefix("id: ") {
            id = v.to_string();
        } else if let Some(v) = line.strip_prefix("event: ") {
            event = v.to_string();
        } else if let Some(v) = line.strip_prefix("data: ") {
            data.push_str(v);
        }
    }
    Ok((out, true))
}

/// The log events (`log = true`) or the transitions of a stream, without their ids: live and
/// replayed streams may interleave the two differently, each on its own must be the same.
fn part(evs: &[Sse], log: bool) -> Vec<(String, serde_json::Value)> {
    evs.iter()
        .filter(|e| (e.event == "log") == log)
        .map(|e| (e.event.clone(), e.data.clone()))
        .collect()
}

fn log_texts(evs: &[Sse]) -> Vec<String> {
    evs.iter()
        .filter(|e| e.event == "log")
        .map(|e| {
            format!(
                "{}:{}",
                e.data["service"].as_str().unwrap_or(""),
                e.data["text"].as_str().unwrap_or("")
            )
        })
        .collect()
}

/// Every log line of a run through `/logs`, `limit` per page.
fn all_logs(
    srv: &Server,
    run: &str,
    limit: usize,
) -> Result<Vec<String>, Box<dyn std::error::Error>> {
    let mut out = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let mut url = srv.u(&format!("/api/runs/{run}/logs?limit={limit}"));
        if let Some(a) = &after {
            url.push_str(&format!("&after={a}"));
        }
        let page = get(&url)?;
        assert_eq!(page.status, 200, "{}", page.body);
        let page = page.json();
        let lines = page["lines"].as_array().ok_or("no lines")?;
        if lines.is_empty() {
            return Ok(out);
        }
        for l in lines {
            out.push(format!(
                "{}:{}",
                l["service"].as_str().unwrap_or(""),
                l["text"].as_str().unwrap_or("")
            ));
        }
        after = page["next"].as_str().map(str::to_string);
    }
}

pub(crate) fn wait_run_status(
    srv: &Server,
    run: &str,
    timeout: Duration,
) -> Result<String, Box<dyn std::error::Error>> {
    let t = Instant::now();
    loop {
        let st = get(&srv.u(&format!("/api/runs/{run}")))?.json()["status"]
            .as_str()
            .unwrap_or("")
            .to_string();
        if !matches!(st.as_str(), "queued" | "running") || t.elapsed() > timeout {
            return Ok(st);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub(crate) fn start_run(srv: &Server, body: &str) -> Result<String, Box<dyn std::error::Error>> {
    let r = post_json(&srv.u("/api/operations/run"), body)?;
    assert_eq!(r.status, 202, "{}", r.body);
    let id = r.json()["run_id"].as_str().ok_or("no run_id")?.to_string();
    assert_eq!(
        r.header("location"),
        Some(format!("/api/runs/{id}").as_str())
    );
    // The handler records the run before it answers: it can be read at once.
    let now = get(&srv.u(&format!("/api/runs/{id}")))?;
    assert_eq!(
        now.status, 200,
        "run {id} is not recorded yet: {}",
        now.body
    );
    Ok(id)
}

const CHATTY: &str = "i=0; while [ $i -lt 400 ]; do i=$((i+1)); echo \"line $i\"; if [ $((i % 100)) -eq 0 ]; then sleep 0.2; fi; done";

#[test]
fn seed_endpoints_answer_json_with_request_ids_and_security_headers() -> TestResult {
    let sb = Sandbox::new();
    let w = ws(
        &sb,
        &[("a", &[], "echo built a"), ("b", &["a"], "echo built b")],
        "",
    );
    // A repository URL with credentials must never show.
    let manifest = std::fs::read_to_string(w.join("nestr.toml"))?
        + "\n[repos.secretive]\nurl = \"https://deploy:hunter2@127.0.0.1:9/x.git\"\n";
    std::fs::write(w.join("nestr.toml"), manifest)?;
    let srv = Server::start(&sb, &w, &[])?;
    assert_eq!(get(&srv.u("/health"))?.json()["status"], "ok");
    let ready = get(&srv.u("/ready"))?;
    assert_eq!(
        (ready.status, ready.json()["status"].clone()),
        (200, "ready".into())
    );
    let wsv = get(&srv.u("/api/workspace"))?;
    assert_eq!(wsv.status, 200);
    assert_eq!(wsv.json()["name"], "sched");
    assert_eq!(wsv.json()["counts"]["services"], 2);
    assert!(
        !wsv.body.contains("hunter2"),
        "credentials leaked: {}",
        wsv.body
    );
    let repos = get(&srv.u("/api/repos"))?.json();
    assert_eq!(repos[0]["name"], "app");
    assert_eq!(repos[0]["state"], "clean");
    // The `nestr status --json` fields, plus the last sync.
    let status = sb.nestr(&w, &["status", "--json"]).ok().json();
    for (k, v) in status[0].as_object().ok_or("status row")? {
        assert_eq!(&repos[0][k], v, "field {k}");
    }
    assert_eq!(repos[0]["last_sync_result"], "cloned");
    let services = get(&srv.u("/api/services"))?.json();
    let b = &services["services"][1];
    assert_eq!(
        (b["name"].as_str(), b["depends_on"][0].as_str()),
        (Some("b"), Some("a"))
    );
    assert_eq!(b["operations"][0]["last_status"], serde_json::Value::Null);
    let page = get(&srv.u("/api/services?limit=1"))?.json();
    assert_eq!(page["next_cursor"], "a");
    let page2 = get(&srv.u("/api/services?limit=1&cursor=a"))?.json();
    assert_eq!(
        (
            page2["services"][0]["name"].as_str(),
            page2["next_cursor"].is_null()
        ),
        (Some("b"), true)
    );
    assert_eq!(get(&srv.u("/api/services/a"))?.json()["tags"][0], "t-a");
    let missing = get(&srv.u("/api/services/zzz"))?;
    assert_eq!(
        (missing.status, missing.error_code()),
        (404, "not_found".into())
    );
    let plugins = get(&srv.u("/api/plugins"))?.json();
    let command = plugins
        .as_array()
        .ok_or("array")?
        .iter()
        .find(|p| p["name"] == "command")
        .ok_or("command")?;
    assert_eq!(command["digest"].as_str().map(str::len), Some(64));
    assert!(command["grants"].as_str().unwrap_or("").contains("sh"));
    // Errors: JSON envelope, request id passed through, security headers everywhere.
    let nope = call(
        "GET",
        &srv.u("/api/nope"),
        &[("x-request-id", "req-123")],
        None,
    )?;
    assert_eq!((nope.status, nope.error_code()), (404, "not_found".into()));
    assert_eq!(nope.json()["error"]["request_id"], "req-123");
    assert_eq!(nope.header("x-request-id"), Some("req-123"));
    let wrong = call("DELETE", &srv.u("/api/runs"), &[], None)?;
    assert_eq!(
        (wrong.status, wrong.error_code()),
        (405, "method_not_allowed".into())
    );
    assert!(
        !wrong.json()["error"]["request_id"]
            .as_str()
            .unwrap_or("")
            .is_empty()
    );
    for r in [&wsv, &nope, &wrong] {
        assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
        assert_eq!(r.header("x-frame-options"), Some("DENY"));
        assert_eq!(r.header("referrer-policy"), Some("no-referrer"));
        assert!(
            r.header("content-security-policy")
                .is_some_and(|c| c.contains("default-src 'none'"))
        );
    }
    let spec = get(&srv.u("/api/openapi.json"))?;
    assert_eq!(
        spec.body,
        nestr::api::openapi::json(),
        "served spec is the generated one"
    );
    Ok(())
}

#[test]
fn a_run_over_http_streams_over_sse_to_the_end_and_matches_the_stored_logs() -> TestResult {
    let sb = Sandbox::new();
    let w = ws(
        &sb,
        &[("a", &[], CHATTY), ("b", &["a"], "echo built b")],
        "",
    );
    let srv = Server::start(&sb, &w, &[])?;
    let run = start_run(&srv, r#"{"operation":"op"}"#)?;
    let (live, ended) = events(&srv.u(&format!("/api/runs/{run}/events")), None, None)?;
    assert!(ended, "the stream ends when the run ends");
    assert_eq!(live.last().map(|e| e.event.as_str()), Some("run_finished"));
    assert_eq!(
        live.last().map(|e| e.data["status"].clone()),
        Some("succeeded".into())
    );
    let kinds: Vec<String> = live
        .iter()
        .map(|e| {
            format!(
                "{}:{}@{}",
                e.event,
                e.data["service"].as_str().unwrap_or("-"),
                e.data["at"]
            )
        })
        .collect();
    assert!(kinds[0].starts_with("run_started"));
    // Each step: queued, started, its lines, finished — in that order.
    for svc in ["a", "b"] {
        let pos = |k: &str| {
            live.iter()
                .position(|e| e.event == k && e.data["service"] == svc)
        };
        let first_log = live
            .iter()
            .position(|e| e.event == "log" && e.data["service"] == svc);
        let last_log = live
            .iter()
            .rposition(|e| e.event == "log" && e.data["service"] == svc);
        assert!(pos("step_queued") < pos("step_started"));
        assert!(
            pos("step_started") < first_log && last_log < pos("step_finished"),
            "{kinds:?}"
        );
    }
    let sse_lines = log_texts(&live);
    assert!(sse_lines.contains(&"a:line 400".to_string()));
    assert_eq!(
        sse_lines,
        all_logs(&srv, &run, 37)?,
        "SSE and /logs agree, line for line"
    );
    // Per service, paginated by sequence number.
    let page = get(&srv.u(&format!("/api/runs/{run}/logs?service=a&after=10&limit=5")))?.json();
    let seqs: Vec<i64> = page["lines"]
        .as_array()
        .ok_or("lines")?
        .iter()
        .filter_map(|l| l["seq"].as_i64())
        .collect();
    assert_eq!(seqs, vec![11, 12, 13, 14, 15]);
    assert_eq!(page["next"], "15");
    let run_row = get(&srv.u(&format!("/api/runs/{run}")))?.json();
    assert_eq!(
        (run_row["status"].as_str(), run_row["started_by"].as_str()),
        (Some("succeeded"), Some("api"))
    );
    assert_eq!(run_row["steps"].as_array().map(Vec::len), Some(2));
    // The last status now shows on the service.
    let a = get(&srv.u("/api/services/a"))?.json();
    assert_eq!(a["operations"][0]["last_status"], "succeeded");
    // A finished run replays the same events and ends.
    let (replay, ended) = events(&srv.u(&format!("/api/runs/{run}/events")), None, None)?;
    assert!(ended);
    assert_eq!(part(&replay, true), part(&live, true));
    assert_eq!(part(&replay, false), part(&live, false));
    Ok(())
}

#[test]
fn last_event_id_resumes_without_gaps_or_duplicates() -> TestResult {
    let sb = Sandbox::new();
    let w = ws(&sb, &[("a", &[], CHATTY), ("b", &[], CHATTY)], "");
    let srv = Server::start(&sb, &w, &[])?;
    let run = start_run(&srv, r#"{"operation":"op"}"#)?;
    let url = srv.u(&format!("/api/runs/{run}/events"));
    // Live: read some, drop the connection, resume, repeatedly.
    let mut got: Vec<Sse> = Vec::new();
    loop {
        let last = got.last().map(|e| e.id.clone());
        let (part, ended) = events(&url, last.as_deref(), Some(97))?;
        got.extend(part);
        if ended {
            break;
        }
    }
    let (full, _) = events(&url, None, None)?;
    // Transitions and lines may interleave differently live and in a replay; each kind, in
    // order, must be exactly the same: nothing missed, nothing twice.
    assert_eq!(
        part(&got, true),
        part(&full, true),
        "log lines: resumed live = replay"
    );
    assert_eq!(
        part(&got, false),
        part(&full, false),
        "transitions: resumed live = replay"
    );
    assert_eq!(got.len(), full.len());
    assert_eq!(log_texts(&full).len(), 2 * 401, "every line of both steps");
    let ids: std::collections::HashSet<&str> = full.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids.len(), full.len(), "ids are unique");
    // From a finished run, resuming after any event gives exactly the rest.
    for k in [0, 1, full.len() / 3, full.len() / 2, full.len() - 2] {
        let (rest, ended) = events(&url, Some(&full[k].id), None)?;
        assert!(ended);
        let expected = &full[k + 1..];
        assert_eq!(
            part(&rest, true),
            part(expected, true),
            "lines after event {k}"
        );
        assert_eq!(
            part(&rest, false),
            part(expected, false),
            "transitions after event {k}"
        );
    }
    let bad = call("GET", &url, &[("last-event-id", "banana")], None)?;
    assert_eq!((bad.status, bad.error_code()), (400, "bad_request".into()));
    Ok(())
}

#[test]
fn cancel_over_http_leaves_no_child_process() -> TestResult {
    let sb = Sandbox::new();
    let script = "sleep 60 & echo $! > child.pid; wait";
    let w = ws(&sb, &[("a", &[], script)], "");
    let srv = Server::start(&sb, &w, &[])?;
    let run = start_run(&srv, r#"{"operation":"op"}"#)?;
    let pid_file = w.join("app").join("child.pid");
    assert!(
        wait_for(&pid_file, Duration::from_secs(30)),
        "the step started its child"
    );
    let pid = std::fs::read_to_string(&pid_file)?.trim().to_string();
    assert!(pid_alive(&pid));
    let r = post_json(&srv.u(&format!("/api/runs/{run}/cancel")), "")?;
    assert_eq!(
        (r.status, r.json()["status"].clone()),
        (202, "cancelling".into())
    );
    assert_eq!(
        wait_run_status(&srv, &run, Duration::from_secs(30))?,
        "cancelled"
    );
    assert!(!pid_alive(&pid), "the child {pid} survived the cancel");
    let again = post_json(&srv.u(&format!("/api/runs/{run}/cancel")), "")?;
    assert_eq!((again.status, again.error_code()), (409, "conflict".into()));
    let none = post_json(&srv.u("/api/runs/nosuchrun/cancel"), "")?;
    assert_eq!(none.status, 404);
    Ok(())
}

#[test]
fn tokens_scopes_local_mode_and_hashes_only() -> TestResult {
    let sb = Sandbox::new();
    let w = ws(&sb, &[("a", &[], "echo hi")], "");
    let srv = Server::start(&sb, &w, &[])?;
    // Local mode: loopback and no token.
    assert_eq!(get(&srv.u("/api/workspace"))?.status, 200);
    let read = sb
        .nestr(
            &w,
            &["token", "create", "--scope", "read", "--name", "ci-read"],
        )
        .ok()
        .stdout
        .trim()
        .to_string();
    let write = sb
        .nestr(&w, &["token", "create", "--scope", "write"])
        .ok()
        .stdout
        .trim()
        .to_string();
    assert!(read.starts_with("nestr_") && read.len() > 40);
    // Only hashes are stored.
    let db = std::fs::read(w.join(".nestr").join("state.db"))?;
    let wal = std::fs::read(w.join(".nestr").join("state.db-wal")).unwrap_or_default();
    for t in [&read, &write] {
        let needle = t.as_bytes();
        for bytes in [&db, &wal] {
            assert!(
                !bytes.windows(needle.len()).any(|w| w == needle),
                "a token is stored in clear"
            );
        }
    }
    let bearer = |t: &str| format!("Bearer {t}");
    let url = srv.u("/api/workspace");
    let no = get(&url)?;
    assert_eq!((no.status, no.error_code()), (401, "unauthorized".into()));
    assert!(no.header("www-authenticate").is_some());
    let bad = call(
        "GET",
        &url,
        &[("authorization", "Bearer nestr_wrong")],
        None,
    )?;
    assert_eq!(bad.status, 401);
    assert_eq!(
        call("GET", &url, &[("authorization", &bearer(&read))], None)?.status,
        200
    );
    let body = r#"{"operation":"op"}"#;
    let json = ("content-type", "application/json");
    let forbidden = call(
        "POST",
        &srv.u("/api/operations/run"),
        &[json, ("authorization", &bearer(&read))],
        Some(body),
    )?;
    assert_eq!(
        (forbidden.status, forbidden.error_code()),
        (403, "forbidden".into())
    );
    let ok = call(
        "POST",
        &srv.u("/api/operations/run"),
        &[json, ("authorization", &bearer(&write))],
        Some(body),
    )?;
    assert_eq!(ok.status, 202, "{}", ok.body);
    // Open routes stay open; /metrics is open on loopback.
    assert_eq!(get(&srv.u("/health"))?.status, 200);
    assert_eq!(get(&srv.u("/metrics"))?.status, 200);
    let list = sb.nestr(&w, &["token", "list", "--json"]).ok().json();
    assert_eq!(list[0]["name"], "ci-read");
    assert!(
        !list.to_string().contains(&read[12..]),
        "list shows only a prefix"
    );
    sb.nestr(&w, &["token", "revoke", &list[0]["id"].to_string()])
        .ok();
    assert_eq!(
        call("GET", &url, &[("authorization", &bearer(&read))], None)?.status,
        401
    );
    sb.nestr(&w, &["token", "revoke", "999"]).expect(1);
    Ok(())
}

#[test]
fn binding_a_public_address_without_a_token_is_refused() -> TestResult {
    let sb = Sandbox::new();
    let w = ws(&sb, &[("a", &[], "echo hi")], "");
    let refused = sb.nestr(&w, &["serve", "--bind", "0.0.0.0:0"]).expect(2);
    assert!(
        refused.stderr.contains("nestr token create"),
        "{}",
        refused.stderr
    );
    sb.nestr(&w, &["token", "create", "--scope", "read"]).ok();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_nestr"));
    cmd.current_dir(&w)
        .args(["serve", "--bind", "0.0.0.0:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    isolate(&mut cmd, sb.path());
    let mut child = cmd.spawn()?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().ok_or("stdout")?).read_line(&mut line)?;
    let _ = child.kill();
    let _ = child.wait();
    assert!(line.contains("needs a token"), "{line}");
    Ok(())
}

#[test]
fn limits_and_malformed_requests_get_json_errors() -> TestResult {
    let sb = Sandbox::new();
    let w = ws(&sb, &[("a", &[], "echo hi")], "");
    let srv = Server::start(&sb, &w, &["--rate-limit", "40"])?;
    let run = srv.u("/api/operations/run");
    // A body over the limit is refused from its Content-Length, before it is read.
    let addr = srv.url.trim_start_matches("http://").to_string();
    let mut sock = std::net::TcpStream::connect(&addr)?;
    std::io::Write::write_all(
        &mut sock,
        format!("POST /api/operations/run HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{{\"operation\":\"", 2 << 20).as_bytes(),
    )?;
    let mut head = String::new();
    BufReader::new(sock).read_line(&mut head)?;
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");
    // And one sent in chunks, without a length, once it grows past the limit: a writer thread
    // sends 2 MiB in 64 KiB chunks (stopping when the server closes), while the response is read.
    let sock = std::net::TcpStream::connect(&addr)?;
    sock.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut writer = sock.try_clone()?;
    let head_line = format!(
        "POST /api/operations/run HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n"
    );
    let sender = std::thread::spawn(move || {
        use std::io::Write;
        let chunk = vec![b'a'; 64 * 1024];
        let mut ok = writer.write_all(head_line.as_bytes()).is_ok();
        for _ in 0..32 {
            if !ok {
                break;
            }
            ok = writer
                .write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
                .and_then(|()| writer.write_all(&chunk))
                .and_then(|()| writer.write_all(b"\r\n"))
                .is_ok();
        }
        if ok {
            let _ = writer.write_all(b"0\r\n\r\n");
        }
    });
    let mut response = BufReader::new(sock);
    let mut head = String::new();
    response.read_line(&mut head)?;
    assert!(head.starts_with("HTTP/1.1 413"), "chunked: {head}");
    let mut rest = String::new();
    while response.read_line(&mut rest).is_ok_and(|n| n > 0) {
        if rest.contains("payload_too_large") {
            break;
        }
    }
    assert!(rest.contains("payload_too_large"), "{rest}");
    let _ = sender.join();
    let r = post_json(&run, r#"{"operation": 5}"#)?;
    assert_eq!(
        (r.status, r.json()["error"]["field"].clone()),
        (400, "operation".into())
    );
    let r = post_json(&run, r#"{"operation": "op", "colour": 1}"#)?;
    assert_eq!(
        (r.status, r.json()["error"]["field"].clone()),
        (400, "colour".into())
    );
    let r = post_json(&run, r#"{"operation": "op", "concurrency": 0}"#)?;
    assert_eq!(
        (r.status, r.json()["error"]["field"].clone()),
        (400, "concurrency".into())
    );
    let r = post_json(&run, r#"{"operation": "op""#)?;
    assert_eq!(r.status, 400);
    let r = post_json(&run, r#"{"operation": "op", "services": ["nope"]}"#)?;
    assert_eq!(
        r.status, 400,
        "an unknown service is refused before anything runs"
    );
    let r = call(
        "POST",
        &run,
        &[("content-type", "text/plain")],
        Some("operation=op"),
    )?;
    assert_eq!(r.status, 415);
    let r = get(&srv.u("/api/runs?limit=0"))?;
    assert_eq!(
        (r.status, r.json()["error"]["field"].clone()),
        (400, "limit".into())
    );
    let r = get(&srv.u("/api/runs?status=great"))?;
    assert_eq!(
        (r.status, r.json()["error"]["field"].clone()),
        (400, "status".into())
    );
    let r = get(&srv.u("/api/runs?colour=red"))?;
    assert_eq!(r.status, 400);
    let r = get(&srv.u("/api/runs/nope"))?;
    assert_eq!((r.status, r.error_code()), (404, "not_found".into()));
    // Probes are never rate-limited (a load balancer's probe answered 429 takes the server out),
    // even past the limit of everything else.
    for _ in 0..60 {
        for probe in ["/health", "/ready"] {
            let r = get(&srv.u(probe))?;
            assert_eq!(r.status, 200, "{probe}: {}", r.body);
        }
    }
    // The rate limit: 40 a minute per client, then 429 with Retry-After.
    let mut limited = None;
    for _ in 0..60 {
        let r = get(&srv.u("/api/workspace"))?;
        if r.status == 429 {
            limited = Some(r);
            break;
        }
    }
    let r = limited.ok_or("never rate limited")?;
    assert_eq!(r.error_code(), "rate_limited");
    assert!(
        r.header("retry-after")
            .and_then(|v| v.parse::<u64>().ok())
            .is_some_and(|s| s >= 1)
    );
    Ok(())
}

#[test]
fn ready_is_503_while_the_store_is_not_this_servers_schema() -> TestResult {
    let sb = Sandbox::new();
    let w = ws(&sb, &[("a", &[], "echo hi")], "");
    let srv = Server::start(&sb, &w, &[])?;
    assert_eq!(get(&srv.u("/ready"))?.status, 200);
    let db = rusqlite::Connection::open(w.join(".nestr").join("state.db"))?;
    let version: i64 = db.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    // As if a newer nestr had migrated it.
    db.execute_batch(&format!("PRAGMA user_version = {}", version + 5))?;
    let r = get(&srv.u("/ready"))?;
    assert_eq!(
        (r.status, r.error_code()),
        (503, "not_ready".into()),
        "{}",
        r.body
    );
    assert_eq!(
        get(&srv.u("/health"))?.status,
        200,
        "the process is still up"
    );
    db.execute_batch(&format!("PRAGMA user_version = {version}"))?;
    assert_eq!(get(&srv.u("/ready"))?.status, 200);
    Ok(())
}

#[test]
fn slow_requests_time_out_but_event_streams_do_not() -> TestResult {
    let sb = Sandbox::new();
    let w = ws(&sb, &[("a", &[], "echo hi")], "");
    sb.nestr(&w, &["run", "op", "-q"]).ok();
    let run = sb
        .nestr(&w, &["runs", "--json", "--operation", "op"])
        .ok()
        .json()["runs"][0]["run_id"]
        .as_str()
        .ok_or("run id")?
        .to_string();
    // Any request that has to wait (for the store, for git) outlives a 1 ns budget.
    let srv = Server::start(&sb, &w, &["--request-timeout", "1ns"])?;
    let r = get(&srv.u("/api/workspace"))?;
    assert_eq!(
        (r.status, r.error_code()),
        (408, "request_timeout".into()),
        "{}",
        r.body
    );
    assert!(
        !r.json()["error"]["request_id"]
            .as_str()
            .unwrap_or("")
            .is_empty()
    );
    // The event stream is exempt: it replays the whole run.
    let (evs, ended) = events(&srv.u(&format!("/api/runs/{run}/events")), None, None)?;
    assert!(ended);
    assert_eq!(evs.last().map(|e| e.event.as_str()), Some("run_finished"));
    Ok(())
}

#[test]
fn a_client_too_slow_to_send_its_headers_is_cut_off() -> TestResult {
    let sb = Sandbox::new();
    let w = ws(&sb, &[("a", &[], "echo hi")], "");
    let srv = Server::start(&sb, &w, &["--header-timeout", "1s"])?;
    let addr = srv.url.trim_start_matches("http://").to_string();
    let mut sock = std::net::TcpStream::connect(&addr)?;
    sock.set_read_timeout(Some(Duration::from_secs(20)))?;
    std::io::Write::write_all(&mut sock, b"GET /health HTTP/1.1\r\nhost: x\r\n")?;
    let started = Instant::now();
    let mut buf = Vec::new();
    // The server answers 408 or just closes; either way the connection ends, without a 200.
    let _ = std::io::Read::read_to_end(&mut sock, &mut buf);
    let text = String::from_utf8_lossy(&buf);
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "the connection was kept open"
    );
    assert!(!text.contains("200 OK"), "{text}");
    // A prompt client on another connection is served meanwhile and after.
    assert_eq!(get(&srv.u("/health"))?.status, 200);
    Ok(())
}

#[test]
fn cors_preflight_allows_listed_origins_only() -> TestResult {
    let sb = Sandbox::new();
    let w = ws(
        &sb,
        &[("a", &[], "echo hi")],
        "\n[api]\ncors_origins = [\"https://dash.example.com\"]\n",
    );
    let srv = Server::start(&sb, &w, &["--cors-origin", "http://localhost:3000"])?;
    let preflight = |origin: &str| {
        call(
            "OPTIONS",
            &srv.u("/api/operations/run"),
            &[
                ("origin", origin),
                ("access-control-request-method", "POST"),
                (
                    "access-control-request-headers",
                    "content-type,authorization",
                ),
            ],
            None,
        )
    };
    for origin in ["https://dash.example.com", "http://localhost:3000"] {
        let ok = preflight(origin)?;
        assert_eq!(ok.header("access-control-allow-origin"), Some(origin));
        assert!(
            ok.header("access-control-allow-methods")
                .is_some_and(|m| m.contains("POST"))
        );
        assert_ne!(ok.header("access-control-allow-origin"), Some("*"));
    }
    let denied = preflight("https://evil.example.net")?;
    assert_eq!(denied.header("access-control-allow-origin"), None);
    let simple = call(
        "GET",
        &srv.u("/api/workspace"),
        &[("origin", "https://evil.example.net")],
        None,
    )?;
    assert_eq!(simple.header("access-control-allow-origin"), None);
    // A wildcard in the manifest is refused with file:line.
    let bad = sb.workspace_at(
        "bad",
        "[workspace]\nname = \"bad\"\n\n[api]\ncors_origins = [\"*\"]\n",
    );
    let r = sb.nestr(&bad, &["serve"]).expect(2);
    assert!(
        r.stderr.contains("nestr.toml:") && r.stderr.contains("not an origin"),
        "{}",
        r.stderr
    );
    Ok(())
}

#[test]
fn graceful_shutdown_during_a_run_leaves_nothing_running() -> TestResult {
    let sb = Sandbox::new();
    let script = "sleep 60 & echo $! > child.pid; wait";
    let w = ws(&sb, &[("a", &[], script)], "");
    let mut srv = Server::start(&sb, &w, &[])?;
    let run = start_run(&srv, r#"{"operation":"op"}"#)?;
    let pid_file = w.join("app").join("child.pid");
    assert!(wait_for(&pid_file, Duration::from_secs(30)));
    let pid = std::fs::read_to_string(&pid_file)?.trim().to_string();
    // An open event stream must not hold the shutdown up.
    let url = srv.u(&format!("/api/runs/{run}/events"));
    let reader = std::thread::spawn(move || events(&url, None, None).map(|(e, _)| e.len()).ok());
    std::thread::sleep(Duration::from_millis(300));
    let code = srv.stop();
    assert_eq!(code, Some(0), "the server exits cleanly");
    assert!(reader.join().ok().flatten().is_some(), "the stream ended");
    assert!(!pid_alive(&pid), "the run's child {pid} survived");
    let runs = sb.nestr(&w, &["runs", "--json"]).ok().json();
    let row = runs["runs"]
        .as_array()
        .ok_or("runs")?
        .iter()
        .find(|r| r["run_id"] == run.as_str())
        .ok_or("run")?
        .clone();
    assert_eq!(row["status"], "cancelled", "{row}");
    Ok(())
}

#[test]
fn sync_and_assemble_are_runs_with_a_step_per_repository() -> TestResult {
    let sb = Sandbox::new();
    let w = ws(&sb, &[("a", &[], "echo hi")], "");
    let second = sb.remote("lib");
    let m = std::fs::read_to_string(w.join("nestr.toml"))?
        + &format!("\n[repos.lib]\nurl = \"{}\"\n", second.url());
    std::fs::write(w.join("nestr.toml"), m)?;
    second.push_commit("new work");
    let srv = Server::start(&sb, &w, &[])?;
    let r = post_json(&srv.u("/api/operations/assemble"), "")?;
    assert_eq!(r.status, 202, "{}", r.body);
    let assemble = r.json()["run_id"].as_str().ok_or("id")?.to_string();
    assert_eq!(
        wait_run_status(&srv, &assemble, Duration::from_secs(60))?,
        "succeeded"
    );
    let row = get(&srv.u(&format!("/api/runs/{assemble}")))?.json();
    let steps: HashMap<String, String> = row["steps"]
        .as_array()
        .ok_or("steps")?
        .iter()
        .map(|s| {
            (
                s["service"].as_str().unwrap_or("").to_string(),
                s["summary"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    assert_eq!(
        steps.get("lib").map(String::as_str),
        Some("cloned"),
        "{row}"
    );
    assert_eq!(
        steps.get("app").map(String::as_str),
        Some("up to date"),
        "{row}"
    );
    second.push_commit("more work");
    let r = post_json(&srv.u("/api/operations/sync"), r#"{"atomic": true}"#)?;
    let sync = r.json()["run_id"].as_str().ok_or("id")?.to_string();
    let now = get(&srv.u(&format!("/api/runs/{sync}")))?;
    assert_eq!(now.status, 200, "recorded before the answer: {}", now.body);
    let (evs, ended) = events(&srv.u(&format!("/api/runs/{sync}/events")), None, None)?;
    assert!(ended);
    assert!(
        log_texts(&evs).iter().any(|l| l.starts_with("lib:updated")),
        "{evs:?}"
    );
    let page = get(&srv.u("/api/runs?operation=sync"))?.json();
    assert_eq!(page["runs"].as_array().map(Vec::len), Some(1));
    assert_eq!(page["runs"][0]["run_id"], sync.as_str());
    // Paging: one run per page, newest first, every run once.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let url = match &cursor {
            Some(c) => srv.u(&format!("/api/runs?limit=1&cursor={c}")),
            None => srv.u("/api/runs?limit=1"),
        };
        let page = get(&url)?.json();
        seen.extend(
            page["runs"]
                .as_array()
                .ok_or("runs")?
                .iter()
                .map(|r| r["operation"].as_str().unwrap_or("").to_string()),
        );
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    // The sandbox's own `nestr assemble`, then the two over HTTP.
    assert_eq!(seen, vec!["sync", "assemble", "assemble"]);
    let metrics = get(&srv.u("/metrics"))?.body;
    assert!(
        metrics.contains("nestr_runs_total{operation=\"sync\",status=\"succeeded\"} 1"),
        "{metrics}"
    );
    // One lifecycle: a repository's step is timed like an operation's.
    assert!(
        metrics.contains("nestr_step_duration_seconds_count{operation=\"sync\",plugin=\"git\"} 2"),
        "{metrics}"
    );
    Ok(())
}

/// Target folder for the provisioned tools.
#[test]
fn metrics_pass_promtool_and_the_spec_holds_under_schemathesis() -> TestResult {
    let tools = tools()?;
    let sb = Sandbox::new();
    let other = sb.remote("other");
    let w = ws(
        &sb,
        &[("a", &[], "echo built a"), ("b", &["a"], "echo built b")],
        &format!(
            "[repos.other]\nurl = \"{}\"\n[services.c]\nrepo = \"app\"\n\
             [services.c.operations]\nsnoop = {{ plugin = \"command\", config = {{ run = [[\"cat\", \"/etc/hostname\"]] }} }}\n",
            other.url()
        ),
    );
    let srv = Server::start(&sb, &w, &["--rate-limit", "0"])?;
    let run = start_run(&srv, r#"{"operation":"op"}"#)?;
    let (_, ended) = events(&srv.u(&format!("/api/runs/{run}/events")), None, None)?;
    assert!(ended);
    // Make every metric family have a sample: a refused exec, a repository status read, a
    // failed sync.
    let snoop = start_run(&srv, r#"{"operation":"snoop"}"#)?;
    assert_eq!(
        wait_run_status(&srv, &snoop, Duration::from_secs(30))?,
        "failed"
    );
    assert_eq!(get(&srv.u("/api/repos"))?.status, 200);
    std::fs::remove_dir_all(&other.bare)?;
    let r = post_json(&srv.u("/api/operations/sync"), "{}")?;
    assert_eq!(r.status, 202, "{}", r.body);
    let sync = r.json()["run_id"].as_str().ok_or("run_id")?.to_string();
    wait_run_status(&srv, &sync, Duration::from_secs(30))?;
    let metrics = get(&srv.u("/metrics"))?.body;
    // Every metric docs/api.md documents, each with a sample line.
    let doc =
        std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/api.md"))?;
    let table = doc
        .split("## Metrics")
        .nth(1)
        .ok_or("the Metrics section")?;
    let documented: Vec<&str> = table
        .split('`')
        .filter(|w| w.starts_with("http_") || w.starts_with("nestr_"))
        .collect();
    assert!(documented.len() >= 11, "{documented:?}");
    for name in documented
        .iter()
        .copied()
        .chain(["process_resident_memory_bytes", "process_cpu_seconds_total"])
    {
        assert!(
            metrics
                .lines()
                .any(|l| !l.starts_with('#') && l.starts_with(name)),
            "{name} has no sample:\n{metrics}"
        );
    }
    // CPU time is not truncated to whole seconds.
    let cpu: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("process_cpu_seconds_total "))
        .ok_or("cpu line")?
        .trim()
        .parse()?;
    assert!(
        cpu > 0.0 && cpu.fract() != 0.0,
        "process_cpu_seconds_total {cpu}"
    );
    assert!(
        metrics.contains("route=\"/api/runs/{id}/events\""),
        "routes are templates"
    );
    let mut promtool = Command::new(&tools["promtool"])
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    std::io::Write::write_all(
        &mut promtool.stdin.take().ok_or("stdin")?,
        metrics.as_bytes(),
    )?;
    let out = promtool.wait_with_output()?;
    assert!(
        out.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // From here on the API needs a token (the server notices new tokens at once).
    let token = sb
        .nestr(&w, &["token", "create", "--scope", "write"])
        .ok()
        .stdout
        .trim()
        .to_string();
    let out = Command::new(&tools["st"])
        .current_dir(sb.path())
        .env("SCHEMATHESIS_HOOKS", "")
        .args([
            "run",
            &srv.u("/api/openapi.json"),
            "-H",
            &format!("Authorization: Bearer {token}"),
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,response_headers_conformance,ignored_auth,missing_required_header,negative_data_rejection",
            "--phases",
            "examples,coverage,fuzzing,stateful",
            "--max-examples",
            "40",
            "--seed",
            "1",
            "--no-color",
        ])
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "schemathesis found problems:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

#[test]
fn the_committed_openapi_copy_is_the_generated_document() -> TestResult {
    let generated = nestr::api::openapi::json();
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/openapi.json");
    if std::env::var_os("NESTR_BLESS").is_some() {
        std::fs::write(&path, &generated)?;
    }
    let committed = std::fs::read_to_string(&path)?;
    assert!(
        committed == generated,
        "docs/openapi.json differs from the generated document: regenerate it with \
         `NESTR_BLESS=1 cargo test openapi` and commit it"
    );
    let doc: serde_json::Value = serde_json::from_str(&generated)?;
    assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with('3')));
    let routes = [
        ("/health", "get"),
        ("/ready", "get"),
        ("/metrics", "get"),
        ("/api/workspace", "get"),
        ("/api/repos", "get"),
        ("/api/services", "get"),
        ("/api/services/{name}", "get"),
        ("/api/plugins", "get"),
        ("/api/operations/run", "post"),
        ("/api/operations/sync", "post"),
        ("/api/operations/assemble", "post"),
        ("/api/runs", "get"),
        ("/api/runs/{id}", "get"),
        ("/api/runs/{id}/logs", "get"),
        ("/api/runs/{id}/logs/search", "get"),
        ("/api/runs/{id}/logs/text", "get"),
        ("/api/runs/{id}/events", "get"),
        ("/api/runs/{id}/cancel", "post"),
        ("/api/runs/{id}/rerun", "post"),
        ("/api/services/{name}/steps", "get"),
        ("/api/session", "get"),
        ("/api/plan", "get"),
        ("/api/runs/{id}/provenance", "get"),
        ("/api/runs/{id}/steps/{service}/key", "get"),
        ("/api/runs/{id}/steps/{service}/explain", "get"),
        ("/api/cache/stats", "get"),
        ("/api/affected", "get"),
        ("/api/environments", "get"),
        ("/api/environments/{env}/plans", "post"),
        ("/api/deploys/{plan}", "get"),
        ("/api/deploys/{plan}/approve", "post"),
        ("/api/deploys/{plan}/apply", "post"),
        ("/api/deploys/{plan}/resume", "post"),
        ("/api/deploys/{plan}/abort", "post"),
        ("/api/deploys/{plan}/events", "get"),
        ("/api/openapi.json", "get"),
    ];
    for (path, method) in routes {
        let op = &doc["paths"][path][method];
        assert!(op.is_object(), "{method} {path} is not documented");
        assert!(
            ["200", "201", "202"]
                .iter()
                .any(|c| op["responses"][c].is_object()),
            "{method} {path}: no success response"
        );
        if path.starts_with("/api/") && path != "/api/openapi.json" {
            assert!(
                op["responses"]["401"].is_object(),
                "{method} {path}: 401 undocumented"
            );
        }
    }
    assert_eq!(
        doc["paths"].as_object().map(|p| p.len()),
        Some(routes.len()),
        "an undocumented or stale path"
    );
    Ok(())
}

#[test]
fn demo_serve_leaves_a_working_api() -> TestResult {
    let sb = Sandbox::new();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_nestr"));
    cmd.current_dir(sb.path())
        .args([
            "--color",
            "never",
            "demo",
            "--dir",
            "d",
            "--serve",
            "--bind",
            "127.0.0.1:0",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    isolate(&mut cmd, sb.path());
    let mut child = cmd.spawn()?;
    let mut stdout = BufReader::new(child.stdout.take().ok_or("stdout")?);
    let mut url = None;
    let mut line = String::new();
    while stdout.read_line(&mut line)? > 0 {
        if line.contains("API listening on") {
            url = line
                .split_whitespace()
                .find(|w| w.starts_with("http://"))
                .map(str::to_string);
            break;
        }
        line.clear();
    }
    let mut srv = Server {
        child,
        url: url.ok_or("the demo never started the API")?,
        _stdout: stdout,
    };
    let services = get(&srv.u("/api/services"))?.json();
    assert!(
        services["services"]
            .as_array()
            .is_some_and(|s| s.len() >= 3),
        "{services}"
    );
    // The demo's last build was all hits.
    assert_eq!(
        services["services"][0]["operations"][0]["last_status"],
        "cached"
    );
    let run = start_run(&srv, r#"{"operation":"deploy"}"#)?;
    let (evs, ended) = events(&srv.u(&format!("/api/runs/{run}/events")), None, None)?;
    assert!(ended);
    assert_eq!(
        evs.last().map(|e| e.data["status"].clone()),
        Some("succeeded".into()),
        "{evs:?}"
    );
    assert_eq!(srv.stop(), Some(0));
    Ok(())
}

/// A mistyped operation, or one none of the selected services defines, is refused before
/// anything is recorded: exit 2 with "did you mean" from the CLI, 400 from the API (it was a
/// green run of skipped steps).
#[test]
fn an_operation_no_selected_service_defines_is_a_usage_error_with_a_suggestion() -> TestResult {
    let sb = Sandbox::new();
    let ws = ws(
        &sb,
        &[("a", &[], "true"), ("b", &[], "true")],
        "\n[services.c]\nrepo = \"app\"\n",
    );
    let count = || -> rusqlite::Result<i64> {
        rusqlite::Connection::open(ws.join(".nestr/state.db"))?.query_row(
            "SELECT count(*) FROM runs WHERE operation NOT IN ('assemble', 'sync')",
            [],
            |r| r.get(0),
        )
    };
    let before = count()?;
    let typo = sb.nestr(&ws, &["run", "po", "-s", "a"]).expect(2);
    assert!(
        typo.stderr.contains("did you mean `op`?"),
        "{}",
        typo.stderr
    );
    let typo = sb.nestr(&ws, &["run", "po"]).expect(2);
    assert!(
        typo.stderr.contains("did you mean `op`?"),
        "{}",
        typo.stderr
    );
    let wrong = sb.nestr(&ws, &["run", "op", "-s", "c"]).expect(2);
    assert!(
        wrong.stderr.contains("none of the selected services (c)")
            && wrong.stderr.contains("services that define it: a, b"),
        "{}",
        wrong.stderr
    );
    assert_eq!(count()?, before, "nothing was recorded");
    // Selecting a service without the operation beside one with it still runs (and skips it).
    sb.nestr(&ws, &["run", "op", "-s", "a", "-s", "c"]).ok();
    let srv = Server::start(&sb, &ws, &[])?;
    let r = post_json(
        &srv.u("/api/operations/run"),
        r#"{"operation":"po","services":["a"]}"#,
    )?;
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("did you mean `op`?"), "{}", r.body);
    assert_eq!(
        count()?,
        before + 1,
        "only the CLI run that ran was recorded"
    );
    Ok(())
}

#[test]
fn serve_reloads_the_manifest_and_keeps_the_last_good_one_while_an_edit_is_broken() -> TestResult {
    let sb = Sandbox::new();
    let ws = ws(&sb, &[("a", &[], "sleep 2")], "");
    let manifest = std::fs::read_to_string(ws.join("nestr.toml"))?;
    let mut srv = Server::start(&sb, &ws, &[])?;
    let names = |srv: &Server| -> Result<Vec<String>, Box<dyn std::error::Error>> {
        let v = get(&srv.u("/api/services"))?.json();
        Ok(v["services"]
            .as_array()
            .ok_or("services")?
            .iter()
            .filter_map(|s| s["name"].as_str().map(String::from))
            .collect())
    };
    let until = |what: &dyn Fn() -> bool| {
        let t = Instant::now();
        while !what() && t.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(50));
        }
        what()
    };
    assert_eq!(names(&srv)?, ["a"]);
    // A run started now keeps the manifest it started with, whatever happens to the file.
    let run = start_run(&srv, r#"{"operation":"op"}"#)?;
    let b = "\n[services.b]\nrepo = \"app\"\n[services.b.operations]\nhello = { plugin = \"command\", config = { run = [[\"sh\", \"-c\", \"true\"]] } }\n";
    std::fs::write(ws.join("nestr.toml"), format!("{manifest}{b}"))?;
    assert!(
        until(&|| names(&srv).is_ok_and(|n| n == ["a", "b"])),
        "service b appeared: {:?}",
        names(&srv)
    );
    // A broken edit: the last good manifest keeps serving, /ready says what and where.
    let broken = format!("{manifest}{b}\n[services.c]\nrepo = \"app\"\ndepnds_on = []\n");
    std::fs::write(ws.join("nestr.toml"), &broken)?;
    let line = broken.lines().count();
    let ready = || get(&srv.u("/ready")).map(|r| r.json());
    assert!(
        until(&|| ready().is_ok_and(|r| r["manifest_problem"].is_string())),
        "{:?}",
        ready().ok()
    );
    let r = ready()?;
    let problem = r["manifest_problem"].as_str().unwrap_or("");
    assert!(
        problem.contains(&format!("nestr.toml:{line}:")) && problem.contains("depnds_on"),
        "{r}"
    );
    assert_eq!(r["status"], "ready", "{r}");
    assert_eq!(names(&srv)?, ["a", "b"]);
    let hello = start_run(&srv, r#"{"operation":"hello"}"#)?;
    assert_eq!(
        wait_run_status(&srv, &hello, Duration::from_secs(30))?,
        "succeeded"
    );
    // The next good edit clears it.
    std::fs::write(ws.join("nestr.toml"), &manifest)?;
    assert!(
        until(&|| ready().is_ok_and(|r| r["manifest_problem"].is_null())),
        "{:?}",
        ready().ok()
    );
    assert_eq!(names(&srv)?, ["a"]);
    assert_eq!(
        wait_run_status(&srv, &run, Duration::from_secs(30))?,
        "succeeded"
    );
    assert_eq!(srv.stop(), Some(0));
    let log = std::fs::read_to_string(sb.path().join("serve.log"))?;
    for want in [
        "serving the new manifest",
        "keeping the last good manifest",
        "shutting down",
        "stopped",
    ] {
        assert!(log.contains(want), "no {want:?} in the server log:\n{log}");
    }
    Ok(())
}

#[test]
fn cli_json_and_api_json_are_one_shape_per_entity() -> TestResult {
    let sb = Sandbox::new();
    let w = ws(
        &sb,
        &[("a", &[], "echo from-a"), ("b", &["a"], "echo from-b")],
        "",
    );
    let run = sb.nestr(&w, &["run", "op", "--json"]).ok().json();
    let id = run["run_id"].as_str().ok_or("run_id")?.to_string();
    let srv = Server::start(&sb, &w, &[])?;
    let api = |path: &str| -> Result<serde_json::Value, Box<dyn std::error::Error>> {
        Ok(get(&srv.u(path))?.json())
    };
    let cli = |args: &[&str]| sb.nestr(&w, args).ok().json();
    // A run: what `run --json` printed, `runs show --json`, and GET /api/runs/{id}.
    let stored = api(&format!("/api/runs/{id}"))?;
    assert_eq!(run, stored);
    assert_eq!(cli(&["runs", "show", &id, "--json"]), stored);
    assert!(
        stored["created_at"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z') && t.contains('T')),
        "times are RFC 3339: {stored}"
    );
    assert!(stored["steps"][0]["started_at"].is_string(), "{stored}");
    // Lists: the same page bodies.
    assert_eq!(cli(&["runs", "--json"]), api("/api/runs")?);
    assert_eq!(cli(&["services", "--json"]), api("/api/services")?);
    assert_eq!(cli(&["status", "--json"]), api("/api/repos")?);
    assert_eq!(cli(&["plugin", "list", "--json"]), api("/api/plugins")?);
    // Log lines: `logs --json` prints one API line per line.
    let lines: Vec<serde_json::Value> = sb
        .nestr(&w, &["logs", &id, "--json"])
        .ok()
        .stdout
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    let page = api(&format!("/api/runs/{id}/logs"))?;
    let mut api_lines = page["lines"].as_array().ok_or("lines")?.clone();
    let mut lines = lines;
    let key = |v: &serde_json::Value| (v["step_id"].as_i64(), v["seq"].as_i64());
    api_lines.sort_by_key(key);
    lines.sort_by_key(key);
    assert_eq!(lines, api_lines);
    Ok(())
}

#[test]
fn credentials_a_child_process_prints_are_masked_in_stored_logs_and_streams() -> TestResult {
    let sb = Sandbox::new();
    let script = "echo remote https://deployer:pa55-w0rd-xyz@git.example.com/app.git; \
                  echo token s3cr3t-t0ken-abc alone; echo done";
    let w = ws(&sb, &[("a", &[], script)], "");
    // A repository whose URL carries a credential (never cloned here): its token is masked
    // wherever it appears, even outside a URL.
    let manifest = std::fs::read_to_string(w.join("nestr.toml"))?;
    std::fs::write(
        w.join("nestr.toml"),
        format!(
            "{manifest}\n[repos.private]\nurl = \"https://ci:s3cr3t-t0ken-abc@git.example.com/p.git\"\n"
        ),
    )?;
    let cli = sb.nestr(&w, &["run", "op", "-s", "a"]).ok();
    let srv = Server::start(&sb, &w, &[])?;
    let run = start_run(&srv, r#"{"operation":"op","services":["a"]}"#)?;
    let (evs, ended) = events(&srv.u(&format!("/api/runs/{run}/events")), None, None)?;
    assert!(ended);
    let streamed = log_texts(&evs).join("\n");
    let id = sb.nestr(&w, &["runs", "--json"]).ok().json()["runs"][1]["run_id"]
        .as_str()
        .ok_or("the CLI run")?
        .to_string();
    let stored = sb.nestr(&w, &["logs", &id]).ok().stdout;
    let api_logs = get(&srv.u(&format!("/api/runs/{run}/logs")))?.body;
    for (what, text) in [
        ("terminal", cli.all()),
        ("stored", stored),
        ("streamed", streamed),
        ("api logs", api_logs),
    ] {
        assert!(text.contains("done"), "{what}: {text}");
        for secret in ["pa55-w0rd-xyz", "deployer:", "s3cr3t-t0ken-abc"] {
            assert!(!text.contains(secret), "{what} shows {secret}: {text}");
        }
        assert!(text.contains("git.example.com/app.git"), "{what}: {text}");
    }
    Ok(())
}
