//! `nestr deploy` against a real receiver on loopback (a deploy platform stand-in that records
//! every call, keeps the version each service runs, and can be told to fail or stall a service's
//! health): plan then apply in dependency order; a failed health gate on the third service rolls
//! back the second and the first, in that order, to their old versions; a stale plan is refused;
//! approval is required and never by the plan's author; a second apply while one holds the
//! environment is refused with its holder; `kill -9` mid-apply leaves the next command reporting
//! it interrupted, with the lock free; `deploy status` after each.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::support::{Sandbox, TestResult, git};

/// What the receiver saw and holds.
#[derive(Default)]
struct Platform {
    /// `POST /hooks/a`, `POST /rollback/b`, `GET /healthz/c`, in order.
    calls: Vec<String>,
    /// The version each service runs (the hook's `commit`, a rollback's `previous`).
    running: HashMap<String, String>,
    /// Services whose health answers 503.
    failing: HashSet<String>,
    /// Services whose health check never answers in time (it sleeps 2 s).
    stalled: HashSet<String>,
    /// Services whose health check takes 300 ms (then passes).
    slow: HashSet<String>,
    /// Health checks being answered now, and the most at once.
    in_flight: usize,
    most_in_flight: usize,
}

struct Receiver {
    port: u16,
    state: Arc<Mutex<Platform>>,
}

impl Receiver {
    fn start() -> std::io::Result<Receiver> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let state = Arc::new(Mutex::new(Platform::default()));
        let shared = state.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { break };
                let state = shared.clone();
                std::thread::spawn(move || serve(stream, &state));
            }
        });
        Ok(Receiver { port, state })
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn calls(&self) -> Vec<String> {
        self.state
            .lock()
            .map(|s| s.calls.clone())
            .unwrap_or_default()
    }

    fn posts(&self) -> Vec<String> {
        self.calls()
            .into_iter()
            .filter(|c| c.starts_with("POST"))
            .collect()
    }

    fn running(&self, service: &str) -> Option<String> {
        self.state
            .lock()
            .ok()
            .and_then(|s| s.running.get(service).cloned())
    }

    fn with(&self, f: impl FnOnce(&mut Platform)) {
        if let Ok(mut s) = self.state.lock() {
            f(&mut s);
        }
    }
}

fn serve(stream: std::net::TcpStream, state: &Mutex<Platform>) {
    let Ok(read_half) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(read_half);
    let mut first = String::new();
    if reader.read_line(&mut first).unwrap_or(0) == 0 {
        return;
    }
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = v.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0u8; length];
    let _ = reader.read_exact(&mut body);
    let mut parts = first.split_whitespace();
    let (method, path) = (
        parts.next().unwrap_or_default().to_string(),
        parts.next().unwrap_or_default().to_string(),
    );
    let service = path.rsplit('/').next().unwrap_or_default().to_string();
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let mut stall = false;
    let mut slow = false;
    let status = {
        let Ok(mut s) = state.lock() else { return };
        s.calls.push(format!("{method} {path}"));
        match (method.as_str(), path.split('/').nth(1).unwrap_or_default()) {
            ("POST", "hooks") => {
                if let Some(c) = json["commit"].as_str() {
                    s.running.insert(service.clone(), c.to_string());
                }
                202
            }
            ("POST", "rollback") => {
                if let Some(c) = json["previous"].as_str() {
                    s.running.insert(service.clone(), c.to_string());
                }
                202
            }
            ("GET", "healthz") if s.stalled.contains(&service) => {
                stall = true;
                200
            }
            ("GET", "healthz") if s.slow.contains(&service) => {
                slow = true;
                s.in_flight += 1;
                s.most_in_flight = s.most_in_flight.max(s.in_flight);
                200
            }
            ("GET", "healthz") if s.failing.contains(&service) => 503,
            ("GET", "healthz") => 200,
            _ => 404,
        }
    };
    if stall {
        std::thread::sleep(Duration::from_secs(2));
    }
    if slow {
        std::thread::sleep(Duration::from_millis(300));
        if let Ok(mut s) = state.lock() {
            s.in_flight -= 1;
        }
    }
    let mut stream = stream;
    let _ = write!(
        stream,
        "HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
}

/// Three services in three repositories, c → b → a, each deployed through http-deploy to the
/// receiver (which checks health itself), in an environment `staging` (`extra` added to its
/// table).
fn workspace(sb: &Sandbox, r: &Receiver, extra: &str) -> PathBuf {
    workspace_gated(sb, r, extra, true)
}

/// The same; without `plugin_health` the plugin does not check health (the environment's
/// engine gate does).
fn workspace_gated(sb: &Sandbox, r: &Receiver, extra: &str, plugin_health: bool) -> PathBuf {
    for name in ["alpha", "beta", "gamma"] {
        sb.remote(name);
    }
    let u = r.url();
    let svc = |name: &str, repo: &str, deps: &str| {
        let health = if plugin_health {
            format!("health_url = \"{u}/healthz/{name}\", ")
        } else {
            String::new()
        };
        format!(
            "[services.{name}]\nrepo = \"{repo}\"\ndepends_on = [{deps}]\n[services.{name}.operations]\n\
             deploy = {{ plugin = \"http-deploy\", config = {{ url = \"{u}/hooks/{name}\", {health}\
             rollback_url = \"{u}/rollback/{name}\", health_timeout_secs = 2, poll_interval_ms = 100, timeout_secs = 1 }} }}\n"
        )
    };
    let ws = sb.workspace(&format!(
        "[workspace]\nname = \"d\"\n\n[repos.alpha]\nurl = \"{{remotes}}/alpha.git\"\n[repos.beta]\nurl = \"{{remotes}}/beta.git\"\n\
         [repos.gamma]\nurl = \"{{remotes}}/gamma.git\"\n\n[environments.staging]\n{extra}\n\n\
         [plugins.http-deploy]\ngrants = {{ http = [\"{u}\"], timeout = \"30s\" }}\n\n{}{}{}",
        svc("a", "alpha", ""),
        svc("b", "beta", "\"a\""),
        svc("c", "gamma", "\"b\"")
    ));
    sb.nestr(&ws, &["assemble", "-q"]).ok();
    ws
}

fn head(ws: &Path, repo: &str) -> String {
    git(&ws.join(repo), &["rev-parse", "HEAD"])
        .trim()
        .to_string()
}

/// A new commit in the workspace's checkout of `repo`.
fn commit(ws: &Path, repo: &str, what: &str) {
    let dir = ws.join(repo);
    std::fs::write(dir.join("CHANGES"), what).expect("write");
    git(&dir, &["add", "CHANGES"]);
    git(&dir, &["commit", "-qm", what]);
}

fn status(sb: &Sandbox, ws: &Path) -> serde_json::Value {
    let st = sb
        .nestr(ws, &["deploy", "status", "staging", "--json"])
        .ok();
    st.json()["environments"][0].clone()
}

fn service<'a>(st: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    st["services"]
        .as_array()
        .and_then(|a| a.iter().find(|s| s["service"] == name))
        .unwrap_or(&serde_json::Value::Null)
}

fn plan(sb: &Sandbox, ws: &Path, file: &str) -> serde_json::Value {
    let out = sb
        .nestr(ws, &["deploy", "plan", "staging", "--out", file, "--json"])
        .ok();
    out.json()
}

#[test]
fn plan_apply_in_order_roll_back_in_reverse_and_refuse_a_stale_plan() -> TestResult {
    let r = Receiver::start()?;
    let sb = Sandbox::new();
    let ws = workspace(&sb, &r, "");
    let (a1, b1, c1) = (head(&ws, "alpha"), head(&ws, "beta"), head(&ws, "gamma"));

    // 1. A plan: waves in dependency order, each service's target, nothing deployed yet.
    let p1 = plan(&sb, &ws, "p1.json");
    assert_eq!(
        p1["waves"],
        serde_json::json!([["a"], ["b"], ["c"]]),
        "{p1}"
    );
    assert_eq!(p1["services"][0]["target"], a1.as_str());
    assert_eq!(p1["services"][0]["current"], serde_json::Value::Null);
    assert!(r.calls().is_empty(), "planning deploys nothing");
    let id = p1["id"].as_str().unwrap_or_default().to_string();
    assert_eq!(id.len(), 64);

    // 2. Applied in dependency order, each health-checked.
    let apply = sb.nestr(&ws, &["deploy", "apply", "p1.json"]);
    assert_eq!(apply.code, 0, "{}", apply.all());
    assert_eq!(
        r.posts(),
        ["POST /hooks/a", "POST /hooks/b", "POST /hooks/c"]
    );
    let calls = r.calls();
    let pos = |c: &str| calls.iter().position(|x| x == c).unwrap_or(usize::MAX);
    assert!(pos("GET /healthz/a") < pos("POST /hooks/b"), "{calls:?}");
    let st = status(&sb, &ws);
    assert_eq!(service(&st, "a")["commit"], a1.as_str(), "{st}");
    assert_eq!(service(&st, "c")["commit"], c1.as_str());
    assert_eq!(service(&st, "b")["behind"], 0);
    // Applied once only.
    let again = sb.nestr(&ws, &["deploy", "apply", &id[..12]]);
    assert_eq!(again.code, 1);
    assert!(again.stderr.contains("is applied"), "{}", again.stderr);

    // 3. A stale plan: a repository moved since it was made.
    plan(&sb, &ws, "p2.json");
    commit(&ws, "alpha", "second");
    let a2 = head(&ws, "alpha");
    let stale = sb.nestr(&ws, &["deploy", "apply", "p2.json"]);
    assert_eq!(stale.code, 1, "{}", stale.all());
    assert!(
        stale.stderr.contains("stale") && stale.stderr.contains("alpha moved"),
        "{}",
        stale.stderr
    );
    assert_eq!(r.posts().len(), 3, "nothing deployed");
    assert_eq!(service(&status(&sb, &ws), "a")["behind"], 1);

    // 4. c's health fails: c, then b, then a are rolled back, each to what ran before.
    commit(&ws, "beta", "second");
    r.with(|p| {
        p.calls.clear();
        p.failing.insert("c".into());
    });
    let p3 = plan(&sb, &ws, "p3.json");
    assert_eq!(p3["services"][0]["current"], a1.as_str());
    assert_eq!(p3["services"][0]["behind"], 1);
    assert_eq!(p3["services"][2]["behind"], 0);
    let failed = sb.nestr(&ws, &["deploy", "apply", "p3.json", "--json"]);
    assert_eq!(failed.code, 1, "{}", failed.all());
    let report = failed.json();
    // c's own rollback cannot pass its gate (its health still fails); b's and a's do.
    assert_eq!(report["state"], "rollback_failed", "{report}");
    assert_eq!(
        r.posts(),
        [
            "POST /hooks/a",
            "POST /hooks/b",
            "POST /hooks/c",
            "POST /rollback/c",
            "POST /rollback/b",
            "POST /rollback/a"
        ]
    );
    // Each rollback was health-gated, and a and b run their old versions again.
    let calls = r.calls();
    let pos = |c: &str| calls.iter().rposition(|x| x == c).unwrap_or(0);
    assert!(pos("GET /healthz/b") > pos("POST /rollback/b"), "{calls:?}");
    assert_eq!(r.running("a").as_deref(), Some(a1.as_str()));
    assert_eq!(r.running("b").as_deref(), Some(b1.as_str()));
    let st = status(&sb, &ws);
    assert_eq!(service(&st, "a")["commit"], a1.as_str(), "{st}");
    assert_eq!(service(&st, "a")["action"], "rolled_back");
    assert_ne!(service(&st, "a")["commit"], a2.as_str());
    // c's rollback did not pass its gate: what runs there is unknown.
    assert_eq!(service(&st, "c")["unknown"], true, "{st}");

    // The audit trail says what happened, in order.
    let show = sb.nestr(&ws, &["deploy", "show", "p3.json", "--json"]).ok();
    let kinds: Vec<String> = show.json()["events"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|e| e["kind"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(
        kinds.first().map(String::as_str),
        Some("planned"),
        "{kinds:?}"
    );
    for k in [
        "apply_started",
        "deployed",
        "deploy_failed",
        "rollback",
        "rolled_back_service",
    ] {
        assert!(kinds.iter().any(|x| x == k), "{k} missing: {kinds:?}");
    }
    // A plan made before that apply ended is stale too.
    r.with(|p| p.failing.clear());
    let p4 = plan(&sb, &ws, "p4.json");
    let p5 = plan(&sb, &ws, "p5.json");
    assert_ne!(p4["id"], p5["id"], "each plan is its own");
    assert_eq!(sb.nestr(&ws, &["deploy", "apply", "p4.json"]).code, 0);
    let after = sb.nestr(&ws, &["deploy", "apply", "p5.json"]);
    assert_eq!(after.code, 1);
    assert!(
        after.stderr.contains("another deploy to staging finished"),
        "{}",
        after.stderr
    );
    Ok(())
}

#[test]
fn approval_is_required_and_never_the_authors() -> TestResult {
    let r = Receiver::start()?;
    let sb = Sandbox::new();
    let ws = workspace(&sb, &r, "approval = true");
    let planned = sb.nestr_with(
        &ws,
        &["deploy", "plan", "staging", "--out", "p.json", "--json"],
        &[("NESTR_USER", "alice")],
    );
    assert_eq!(planned.code, 0, "{}", planned.all());
    let refused = sb.nestr_with(
        &ws,
        &["deploy", "apply", "p.json"],
        &[("NESTR_USER", "alice")],
    );
    assert_eq!(refused.code, 1);
    assert!(
        refused.stderr.contains("needs an approval"),
        "{}",
        refused.stderr
    );
    let own = sb.nestr_with(
        &ws,
        &["deploy", "approve", "p.json"],
        &[("NESTR_USER", "alice")],
    );
    assert_eq!(own.code, 1);
    assert!(
        own.stderr.contains("someone else must approve"),
        "{}",
        own.stderr
    );
    let ok = sb.nestr(
        &ws,
        &["deploy", "approve", "p.json", "--as", "bob", "--json"],
    );
    assert_eq!(ok.code, 0, "{}", ok.all());
    assert_eq!(ok.json()["approved_by"], "bob");
    assert!(r.posts().is_empty());
    let apply = sb.nestr_with(
        &ws,
        &["deploy", "apply", "p.json"],
        &[("NESTR_USER", "alice")],
    );
    assert_eq!(apply.code, 0, "{}", apply.all());
    assert_eq!(r.posts().len(), 3);
    Ok(())
}

#[test]
fn one_apply_per_environment_and_a_killed_one_is_reported_and_frees_it() -> TestResult {
    let r = Receiver::start()?;
    let sb = Sandbox::new();
    let ws = workspace(&sb, &r, "");
    // a's health check stalls: the first apply holds staging for a while.
    r.with(|p| {
        p.stalled.insert("a".into());
    });
    plan(&sb, &ws, "p1.json");
    plan(&sb, &ws, "p2.json");
    let mut first = sb.command(&ws, &["deploy", "apply", "p1.json"]);
    let mut child = first
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let waited = std::time::Instant::now();
    while !r.calls().iter().any(|c| c == "GET /healthz/a") {
        assert!(
            waited.elapsed() < Duration::from_secs(30),
            "{:?}",
            r.calls()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let second = sb.nestr(&ws, &["deploy", "apply", "p2.json"]);
    assert_eq!(second.code, 1, "{}", second.all());
    assert!(
        second.stderr.contains("staging is being deployed by plan")
            && second.stderr.contains(&child.id().to_string()),
        "{}",
        second.stderr
    );
    let st = status(&sb, &ws);
    assert_eq!(st["lock"]["pid"], child.id(), "{st}");
    // kill -9 in the middle of the apply.
    child.kill()?;
    child.wait()?;
    let st = status(&sb, &ws);
    assert_eq!(
        st["lock"],
        serde_json::Value::Null,
        "the lock is free: {st}"
    );
    let show = sb.nestr(&ws, &["deploy", "show", "p1.json", "--json"]).ok();
    assert_eq!(show.json()["record"]["state"], "interrupted");
    assert!(
        show.json()["events"]
            .as_array()
            .is_some_and(|e| e.iter().any(|e| e["kind"] == "interrupted"))
    );
    // The run it left is recovered as interrupted too, and a new plan applies.
    r.with(|p| p.stalled.clear());
    plan(&sb, &ws, "p3.json");
    let apply = sb.nestr(&ws, &["deploy", "apply", "p3.json"]);
    assert_eq!(apply.code, 0, "{}", apply.all());
    Ok(())
}

/// The environment's own gate (the plugin checks nothing): passes, and a gate with no verdict
/// pauses the apply with the environment held; `resume` goes on, `abort` rolls back in reverse.
#[test]
fn an_inconclusive_engine_gate_pauses_then_resume_or_abort() -> TestResult {
    let r = Receiver::start()?;
    let sb = Sandbox::new();
    let u = r.url();
    let ws = workspace_gated(
        &sb,
        &r,
        &format!(
            "health = {{ url = \"{u}/healthz/{{service}}\", passes = 2, failures = 2, interval = \"100ms\", timeout = \"1500ms\" }}"
        ),
        false,
    );
    plan(&sb, &ws, "p1.json");
    let first = sb.nestr(&ws, &["deploy", "apply", "p1.json", "--json"]);
    assert_eq!(first.code, 0, "{}", first.all());
    let healthz_a = r.calls().iter().filter(|c| *c == "GET /healthz/a").count();
    assert!(healthz_a >= 2, "two passes in a row: {:?}", r.calls());

    // b's health never answers in time: no verdict, the apply pauses after b.
    commit(&ws, "alpha", "a2");
    commit(&ws, "beta", "b2");
    r.with(|p| {
        p.calls.clear();
        p.stalled.insert("b".into());
    });
    plan(&sb, &ws, "p2.json");
    let paused = sb.nestr(&ws, &["deploy", "apply", "p2.json", "--json"]);
    assert_eq!(paused.code, 1, "{}", paused.all());
    assert_eq!(paused.json()["state"], "paused", "{}", paused.stdout);
    assert_eq!(r.posts(), ["POST /hooks/a", "POST /hooks/b"]);
    let st = status(&sb, &ws);
    assert_eq!(st["lock"]["pid"], 0, "held by the paused plan: {st}");
    plan(&sb, &ws, "other.json");
    let other = sb.nestr(&ws, &["deploy", "apply", "other.json"]);
    assert_eq!(other.code, 1);
    assert!(
        other.stderr.contains("is paused on plan"),
        "{}",
        other.stderr
    );
    // A person decides b is fine: the rest of the plan goes on.
    r.with(|p| {
        p.stalled.clear();
    });
    let resumed = sb.nestr(&ws, &["deploy", "resume", "p2.json", "--json"]);
    assert_eq!(resumed.code, 0, "{}", resumed.all());
    assert_eq!(resumed.json()["state"], "applied");
    assert_eq!(
        r.posts(),
        ["POST /hooks/a", "POST /hooks/b", "POST /hooks/c"]
    );
    assert_eq!(status(&sb, &ws)["lock"], serde_json::Value::Null);

    // Again, and this time the person aborts: b then a are rolled back.
    let (a2, b2) = (head(&ws, "alpha"), head(&ws, "beta"));
    commit(&ws, "alpha", "a3");
    commit(&ws, "beta", "b3");
    r.with(|p| {
        p.calls.clear();
        p.stalled.insert("b".into());
    });
    plan(&sb, &ws, "p3.json");
    assert_eq!(sb.nestr(&ws, &["deploy", "apply", "p3.json"]).code, 1);
    r.with(|p| {
        p.stalled.clear();
    });
    let aborted = sb.nestr(&ws, &["deploy", "abort", "p3.json", "--json"]);
    assert_eq!(aborted.code, 1, "{}", aborted.all());
    assert_eq!(aborted.json()["state"], "rolled_back", "{}", aborted.stdout);
    assert_eq!(
        r.posts(),
        [
            "POST /hooks/a",
            "POST /hooks/b",
            "POST /rollback/b",
            "POST /rollback/a"
        ]
    );
    assert_eq!(r.running("a").as_deref(), Some(a2.as_str()));
    assert_eq!(r.running("b").as_deref(), Some(b2.as_str()));
    let st = status(&sb, &ws);
    assert_eq!(service(&st, "b")["commit"], b2.as_str(), "{st}");
    assert_eq!(st["lock"], serde_json::Value::Null);
    Ok(())
}

/// The same over HTTP: a plan and its apply by a `write` token, followed over SSE; approval
/// only by a token with the `approve` scope (a `write` token is refused), and a stale plan a 409.
#[test]
fn deploys_over_http_with_approval_by_scope() -> TestResult {
    use crate::api::{Server, call};
    let r = Receiver::start()?;
    let sb = Sandbox::new();
    let ws = workspace(&sb, &r, "approval = true");
    let srv = Server::start(&sb, &ws, &["--rate-limit", "0"])?;
    let token = |scope: &str| {
        sb.nestr(&ws, &["token", "create", "--scope", scope])
            .ok()
            .stdout
            .trim()
            .to_string()
    };
    let (write, approve) = (token("write"), token("approve"));
    let with = |t: &str| format!("Bearer {t}");
    let post = |path: &str, t: &str, body: Option<&str>| {
        call(
            "POST",
            &srv.u(path),
            &[
                ("authorization", &with(t)),
                ("content-type", "application/json"),
            ],
            body,
        )
    };
    let planned = post("/api/environments/staging/plans", &write, Some("{}"))?;
    assert_eq!(planned.status, 201, "{}", planned.body);
    let plan = planned.json();
    let id = plan["id"].as_str().unwrap_or_default().to_string();
    assert_eq!(plan["created_by"], "token:1");
    assert_eq!(plan["waves"], serde_json::json!([["a"], ["b"], ["c"]]));
    let missing = post("/api/environments/nowhere/plans", &write, Some("{}"))?;
    assert_eq!(missing.status, 404, "{}", missing.body);

    // Not approved yet: refused; a write token cannot approve; an approve token can.
    let early = post(&format!("/api/deploys/{id}/apply"), &write, None)?;
    assert_eq!(early.status, 409, "{}", early.body);
    assert!(early.body.contains("needs an approval"), "{}", early.body);
    let by_writer = post(&format!("/api/deploys/{id}/approve"), &write, None)?;
    assert_eq!(by_writer.status, 403, "{}", by_writer.body);
    let approver_applies = post(&format!("/api/deploys/{id}/apply"), &approve, None)?;
    assert_eq!(approver_applies.status, 403, "{}", approver_applies.body);
    let approved = post(
        &format!("/api/deploys/{}/approve", &id[..12]),
        &approve,
        None,
    )?;
    assert_eq!(approved.status, 200, "{}", approved.body);
    assert_eq!(approved.json()["approved_by"], "token:2");

    // Applied in the background, followed over SSE to its end.
    let started = post(&format!("/api/deploys/{id}/apply"), &write, None)?;
    assert_eq!(started.status, 202, "{}", started.body);
    assert_eq!(started.json()["environment"], "staging");
    let mut req = ureq::http::Request::builder()
        .method("GET")
        .uri(srv.u(&format!("/api/deploys/{id}/events")))
        .header("authorization", with(&write));
    req = req.header("accept", "text/event-stream");
    let mut res = crate::api::agent().run(req.body(())?)?;
    assert_eq!(res.status().as_u16(), 200);
    let text = res.body_mut().read_to_string()?;
    let kinds: Vec<String> = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str::<serde_json::Value>(d).ok())
        .filter_map(|e| e["kind"].as_str().map(str::to_string))
        .collect();
    assert_eq!(
        kinds.first().map(String::as_str),
        Some("planned"),
        "{kinds:?}"
    );
    assert!(kinds.iter().any(|k| k == "approved"), "{kinds:?}");
    assert_eq!(
        kinds.last().map(String::as_str),
        Some("applied"),
        "{kinds:?}"
    );
    assert_eq!(
        r.posts(),
        ["POST /hooks/a", "POST /hooks/b", "POST /hooks/c"]
    );
    let envs = call(
        "GET",
        &srv.u("/api/environments"),
        &[("authorization", &with(&write))],
        None,
    )?
    .json();
    let st = &envs["environments"][0];
    assert_eq!(
        service(st, "a")["commit"],
        head(&ws, "alpha").as_str(),
        "{st}"
    );
    let shown = call(
        "GET",
        &srv.u(&format!("/api/deploys/{id}")),
        &[("authorization", &with(&approve))],
        None,
    )?;
    assert_eq!(shown.json()["record"]["state"], "applied", "{}", shown.body);
    // Applied once only.
    let again = post(&format!("/api/deploys/{id}/apply"), &write, None)?;
    assert_eq!(again.status, 409, "{}", again.body);
    Ok(())
}

/// Waves: services that depend only on deployed ones deploy together, at most `max_parallel` at
/// once (three in the second wave, two at a time).
#[test]
fn a_wave_deploys_at_most_max_parallel_services_at_once() -> TestResult {
    let r = Receiver::start()?;
    let sb = Sandbox::new();
    sb.remote("alpha");
    let u = r.url();
    let svc = |name: &str, deps: &str| {
        format!(
            "[services.{name}]\nrepo = \"alpha\"\ndepends_on = [{deps}]\n[services.{name}.operations]\n\
             deploy = {{ plugin = \"http-deploy\", config = {{ url = \"{u}/hooks/{name}\", health_url = \"{u}/healthz/{name}\", \
             health_timeout_secs = 5, poll_interval_ms = 100 }} }}\n"
        )
    };
    let ws = sb.workspace(&format!(
        "[workspace]\nname = \"w\"\n\n[repos.alpha]\nurl = \"{{remotes}}/alpha.git\"\n\n\
         [environments.staging]\nmax_parallel = 2\n\n[plugins.http-deploy]\ngrants = {{ http = [\"{u}\"] }}\n\n{}{}{}{}",
        svc("a", ""),
        svc("b", "\"a\""),
        svc("c", "\"a\""),
        svc("d", "\"a\"")
    ));
    sb.nestr(&ws, &["assemble", "-q"]).ok();
    r.with(|p| {
        for s in ["b", "c", "d"] {
            p.slow.insert(s.into());
        }
    });
    let p = plan(&sb, &ws, "p.json");
    assert_eq!(
        p["waves"],
        serde_json::json!([["a"], ["b", "c", "d"]]),
        "{p}"
    );
    let apply = sb.nestr(&ws, &["deploy", "apply", "p.json"]);
    assert_eq!(apply.code, 0, "{}", apply.all());
    assert_eq!(r.posts().first().map(String::as_str), Some("POST /hooks/a"));
    let most = r.state.lock().map(|s| s.most_in_flight).unwrap_or(0);
    assert_eq!(most, 2, "two of the wave at once, never three");
    Ok(())
}
