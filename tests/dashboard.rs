//! The web dashboard in a real browser: Debian's Chromium (installed by `tests/ui-tools.sh` when
//! missing) driven by playwright-core (`tests/ui/dashboard.mjs`) against the real `nestr serve`.
//! Two workspaces: a small one of three repositories in local mode (every page with the right
//! data, the graph's nodes and edges, a run started from the page streaming live, cancel, re-run
//! of failed steps, a log line with markup and crafted escapes shown as text, keyboard and
//! contrast, screenshots light and dark under `target/dashboard-screenshots/`), and one of 1,000
//! services in 20 repositories behind tokens (sign-in, a read-only token sees no actions, a run
//! of 1,000 steps, a log of 1,000,000 lines opened, scrolled to its end and searched). Plus the
//! pages and endpoints the browser relies on, over plain HTTP.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::api::Server;
use crate::support::{Sandbox, TestResult, git};

/// The browser tools, or why there are none (`Err` skips with that message when it is Chromium
/// that cannot be had; any other problem fails).
fn ui_tools()
-> Result<Result<std::collections::HashMap<String, String>, String>, Box<dyn std::error::Error>> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = Command::new("bash")
        .arg(root.join("tests/ui-tools.sh"))
        .arg(root.join("target/ui-tools"))
        .output()?;
    let text = String::from_utf8(out.stdout)?;
    if !out.status.success() {
        return Err(format!(
            "ui-tools.sh failed: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    let tools: std::collections::HashMap<String, String> = text
        .lines()
        .filter_map(|l| {
            l.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
        })
        .collect();
    if let Some(e) = tools.get("error") {
        return Err(e.clone().into());
    }
    if let Some(why) = tools.get("missing") {
        return Ok(Err(why.clone()));
    }
    Ok(Ok(tools))
}

fn run_id(sb: &Sandbox, ws: &Path, args: &[&str], code: i32) -> String {
    let mut all = vec!["run"];
    all.extend_from_slice(args);
    all.push("--json");
    let run = sb.nestr(ws, &all).expect(code);
    run.json()["run_id"]
        .as_str()
        .unwrap_or_else(|| panic!("no run id: {}", run.all()))
        .to_string()
}

/// One service deployed to `staging`, which needs an approval.
const ENVS: &str = r#"[workspace]
name = "envs"

[repos.shared]
url = "{remotes}/shared.git"

[services.lib]
repo = "shared"

[services.lib.operations]
deploy = { plugin = "command", config = { run = [["true"]] } }

[plugins.command]
grants = { exec = ["true"] }

[environments.staging]
approval = true
"#;

const SMALL: &str = r#"[workspace]
name = "shop-dash"
description = "Three repositories <b>and</b> a <script>test</script>"

[repos.shared]
url = "{remotes}/shared.git"
[repos.api]
url = "{remotes}/api.git"
[repos.web]
url = "{remotes}/web.git"

[services.shared-lib]
repo = "shared"
tags = ["core"]
[services.api]
repo = "api"
depends_on = ["shared-lib"]
tags = ["backend"]
[services.worker]
repo = "api"
depends_on = ["shared-lib"]
tags = ["backend"]
[services.web]
repo = "web"
depends_on = ["api"]
tags = ["frontend"]

[services.web.operations]
check = { plugin = "command", config = { run = [["sh", "-c", "echo 'error: web check failed' >&2; exit 3"]] } }

[operations.build]
plugin = "command"
config = { run = [["make"]] }

[operations.check]
plugin = "command"
config = { run = [["sh", "-c", "echo checked"]] }

[operations.quick]
plugin = "command"
config = { run = [["sh", "-c", "echo quick"]] }

[operations.noisy]
plugin = "command"
config = { run = [["sh", "-c", "printf '<script>window.__xss=1</script> <img src=x onerror=window.__xss=2> \\033[31mred\\033[0m \\033]0;pwned\\007 done\\n'"]] }

[operations.live]
plugin = "command"
config = { run = [["sh", "-c", "for i in $(seq 1 40); do echo tick $i $(date +%s%3N); sleep 0.1; done"]] }

[operations.slow]
plugin = "command"
config = { run = [["sh", "-c", "for i in $(seq 1 600); do echo tick $i $(date +%s%3N); sleep 0.1; done"]] }

[plugins.command]
grants = { exec = ["make", "sh"], env = ["PATH"] }
"#;

/// 1,000 services in 20 repositories (`rRR-sSS`; each `sSS` but `s00` depends on its repository's
/// `s00`), a `noop` operation everywhere, `flood` (1,000,000 lines with one error line) on
/// `r00-s00` and `fail` on `r00-s01`.
fn big_workspace(sb: &Sandbox) -> PathBuf {
    let mut m = String::from("[workspace]\nname = \"big-dash\"\n");
    for r in 0..20 {
        let src = sb.path().join(format!("big/r{r:02}"));
        std::fs::create_dir_all(&src).expect("mkdir");
        git(&src, &["init", "-q"]);
        for s in 0..50 {
            let dir = src.join(format!("svc{s:02}"));
            std::fs::create_dir_all(&dir).expect("mkdir");
            std::fs::write(dir.join("README"), "service\n").expect("write");
        }
        git(&src, &["add", "-A"]);
        git(&src, &["commit", "-qm", "init"]);
        m.push_str(&format!("\n[repos.r{r:02}]\nurl = \"{}\"\n", src.display()));
        for s in 0..50 {
            m.push_str(&format!(
                "\n[services.r{r:02}-s{s:02}]\nrepo = \"r{r:02}\"\npath = \"svc{s:02}\"\n"
            ));
            if s > 0 {
                m.push_str(&format!("depends_on = [\"r{r:02}-s00\"]\n"));
            }
        }
    }
    m.push_str(
        r#"
[services.r00-s00.operations]
flood = { plugin = "command", config = { run = [["sh", "-c", "seq 1 1000000 | sed -e 's/^654321$/error: the flux \\x63apacitor broke/' -e 's/^[0-9]*$/line & of the big log/'"]] } }

[services.r00-s01.operations]
fail = { plugin = "command", config = { run = [["sh", "-c", "echo 'error: this one fails'; exit 1"]] } }

[operations.noop]
plugin = "command"
config = { run = [["true"]] }

[plugins.command]
grants = { exec = ["sh", "true"], env = ["PATH"], output_mb = 100 }
"#,
    );
    let ws = sb.workspace_at("bigws", &m);
    sb.nestr(&ws, &["assemble", "-q", "-j", "4"]).ok();
    ws
}

#[test]
fn the_dashboard_in_a_real_browser() -> TestResult {
    let tools = match ui_tools()? {
        Ok(t) => t,
        Err(why) => {
            println!("SKIPPED the_dashboard_in_a_real_browser: {why}");
            eprintln!("SKIPPED the_dashboard_in_a_real_browser: {why}");
            return Ok(());
        }
    };
    let sb = Sandbox::new();
    let mut heads = serde_json::Map::new();
    for name in ["shared", "api", "web"] {
        let r = sb.remote(name);
        heads.insert(name.into(), r.head().into());
    }
    let ws = sb.workspace(SMALL);
    sb.nestr(&ws, &["assemble", "-q"]).ok();
    let build = run_id(&sb, &ws, &["build"], 0);
    let failed = run_id(&sb, &ws, &["check", "--continue", "always"], 1);
    let xss = run_id(&sb, &ws, &["noisy", "-s", "api"], 0);
    for _ in 0..25 {
        sb.nestr(&ws, &["-q", "run", "quick", "-s", "shared-lib"])
            .ok();
    }
    let latest = run_id(&sb, &ws, &["quick", "-s", "shared-lib"], 0);
    let small = Server::start(&sb, &ws, &["--rate-limit", "0"])?;

    let big = big_workspace(&sb);
    let run1000 = run_id(&sb, &big, &["noop", "-j", "4"], 0);
    let flood = run_id(&sb, &big, &["flood"], 0);
    let big_failed = run_id(&sb, &big, &["fail"], 1);
    let token = |scope: &str| -> String {
        sb.nestr(
            &big,
            &["token", "create", "--scope", scope, "--name", scope],
        )
        .ok()
        .all()
        .lines()
        .next()
        .unwrap_or_default()
        .trim()
        .to_string()
    };
    let (read, write) = (token("read"), token("write"));
    let large = Server::start(&sb, &big, &["--rate-limit", "0"])?;
    // Where the error line of the flood is, and what its last line says (from the API).
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let found: serde_json::Value = agent
        .get(large.u(&format!("/api/runs/{flood}/logs/search?q=flux%20capacitor")))
        .header("authorization", &format!("Bearer {read}"))
        .call()?
        .body_mut()
        .read_json()?;
    let error_line = found["matches"][0]["line"]
        .as_i64()
        .ok_or_else(|| format!("no error line: {found}"))?;

    // A workspace with an environment that needs approval, a plan waiting by alice, and tokens.
    let envs = sb.workspace_at("envs", ENVS);
    sb.nestr(&envs, &["assemble", "-q"]).ok();
    let plan = sb
        .nestr_with(
            &envs,
            &["deploy", "plan", "staging", "--json"],
            &[("NESTR_USER", "alice")],
        )
        .ok()
        .json()["id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let envs_token = |scope: &str| -> String {
        sb.nestr(&envs, &["token", "create", "--scope", scope])
            .ok()
            .stdout
            .trim()
            .to_string()
    };
    let (approver, writer) = (envs_token("approve"), envs_token("write"));
    let envs_srv = Server::start(&sb, &envs, &["--rate-limit", "0"])?;

    let shots = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/dashboard-screenshots");
    std::fs::create_dir_all(&shots)?;
    let cfg = serde_json::json!({
        "envs": {
            "url": envs_srv.u(""),
            "approve_token": approver,
            "write_token": writer,
            "plan": plan,
        },
        "modules": tools["modules"],
        "chromium": tools["chromium"],
        "shots": shots,
        "small": {
            "url": small.u(""),
            "name": "shop-dash",
            "description": "Three repositories <b>and</b> a <script>test</script>",
            "repos": ["shared", "api", "web"],
            "heads": heads,
            "services": ["shared-lib", "api", "worker", "web"],
            "edges": ["shared-lib>api", "shared-lib>worker", "api>web"],
            "tag": "frontend",
            "tag_plan": ["web", "api", "shared-lib"],
            "middle": "api",
            "middle_deps": ["shared-lib"],
            "middle_dependents": ["web"],
            "build_run": build,
            "failed_run": failed,
            "failed_steps": ["web"],
            "xss_run": xss,
            "latest_run": latest,
        },
        "big": {
            "url": large.u(""),
            "read_token": read,
            "write_token": write,
            "run1000": run1000,
            "flood_run": flood,
            "flood_error_line": error_line,
            "flood_last": "line 1000000 of the big log",
            "failed_run": big_failed,
        },
    });
    let out = Command::new(&tools["node"])
        .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/ui/dashboard.mjs"))
        .arg(cfg.to_string())
        .output()?;
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{report}");
    assert!(
        out.status.success() && report.contains("all checks passed"),
        "the browser checks failed:\n{report}\nserver log: {}",
        std::fs::read_to_string(sb.path().join("serve.log")).unwrap_or_default()
    );
    drop(small);
    drop(large);
    Ok(())
}

/// What the pages are and the endpoints they read, over plain HTTP: each page is HTML under a
/// strict CSP naming no other origin, the embedded files are served with their types and cached
/// for good, an unknown path is a page for a browser and JSON for a client; logs read by line
/// number with their total, searched (text through colour codes, error lines, counted over the
/// whole log), downloaded as text; the session, a plan, a service's steps, re-running the failed
/// steps of a run.
#[test]
fn pages_and_the_endpoints_they_read() -> TestResult {
    use crate::api::{call, get, post_json};
    let sb = Sandbox::new();
    for name in ["shared", "api", "web"] {
        sb.remote(name);
    }
    let ws = sb.workspace(SMALL);
    sb.nestr(&ws, &["assemble", "-q"]).ok();
    let build = run_id(&sb, &ws, &["build"], 0);
    let failed = run_id(&sb, &ws, &["check", "--continue", "always"], 1);
    let xss = run_id(&sb, &ws, &["noisy", "-s", "api"], 0);
    let srv = Server::start(&sb, &ws, &["--rate-limit", "0"])?;

    // Pages.
    for path in [
        "/",
        "/graph",
        "/runs",
        &format!("/runs/{build}"),
        "/services/api",
        "/environments",
    ] {
        let r = get(&srv.u(path))?;
        assert_eq!(r.status, 200, "{path}");
        assert!(
            r.header("content-type")
                .unwrap_or("")
                .starts_with("text/html"),
            "{path}"
        );
        let csp = r.header("content-security-policy").unwrap_or("");
        assert!(
            csp.contains("script-src 'self'") && csp.contains("default-src 'none'"),
            "{csp}"
        );
        assert!(
            !csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"),
            "{csp}"
        );
        assert!(
            !r.body.contains("http://") && !r.body.contains("https://"),
            "{}",
            r.body
        );
        assert!(!r.body.contains("<script>"), "no inline script: {}", r.body);
    }
    let hostile = get(&srv.u("/runs/%3Cscript%3Ealert(1)%3C%2Fscript%3E"))?;
    assert!(!hostile.body.contains("<script>alert"), "{}", hostile.body);
    let page = get(&srv.u("/"))?.body;
    let js = page
        .split('"')
        .find(|p| p.starts_with("/ui/") && p.ends_with("/app.js"))
        .ok_or("no app.js")?
        .to_string();
    let asset = get(&srv.u(&js))?;
    assert_eq!(asset.status, 200);
    assert!(
        asset
            .header("content-type")
            .unwrap_or("")
            .starts_with("text/javascript")
    );
    assert!(
        asset
            .header("cache-control")
            .unwrap_or("")
            .contains("immutable")
    );
    let old = get(&srv.u(&js.replacen("/ui/", "/ui/0ld", 1)))?;
    assert_eq!(old.status, 200, "an older page's files are still served");
    assert_eq!(old.header("cache-control"), Some("no-cache"));
    assert_eq!(get(&srv.u("/ui/x/nothing.js"))?.status, 404);
    let missing = call("GET", &srv.u("/nowhere"), &[("accept", "text/html")], None)?;
    assert_eq!(missing.status, 404);
    assert!(
        missing
            .header("content-type")
            .unwrap_or("")
            .starts_with("text/html")
    );
    let api_missing = call(
        "GET",
        &srv.u("/api/nowhere"),
        &[("accept", "text/html")],
        None,
    )?;
    assert_eq!(api_missing.error_code(), "not_found");

    // The session: local mode may do everything.
    let s = get(&srv.u("/api/session"))?.json();
    assert_eq!(
        s,
        serde_json::json!({"scope": "write", "local": true, "token": null})
    );

    // Logs by line number, with the total.
    let page = get(&srv.u(&format!("/api/runs/{build}/logs?line=1&limit=2")))?.json();
    let total = page["total"].as_i64().ok_or("total")?;
    assert!(total >= 4, "{page}");
    let lines = page["lines"].as_array().ok_or("lines")?;
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["line"], 1);
    assert_eq!(lines[1]["line"], 2);
    let whole = get(&srv.u(&format!("/api/runs/{build}/logs?limit=10000")))?.json();
    let all = whole["lines"].as_array().ok_or("lines")?;
    assert_eq!(all.len() as i64, total);
    for (i, l) in all.iter().enumerate() {
        assert_eq!(l["line"], i as i64, "run-wide numbers follow on: {l}");
    }
    assert_eq!(&all[1], &lines[0], "the same line either way");
    let past = get(&srv.u(&format!("/api/runs/{build}/logs?line={total}")))?.json();
    assert_eq!(past["lines"], serde_json::json!([]));
    let step = get(&srv.u(&format!(
        "/api/runs/{build}/logs?service=web&line=0&limit=1"
    )))?
    .json();
    assert_eq!(step["lines"][0]["seq"], 0);
    assert_eq!(step["lines"][0]["service"], "web");
    let both = get(&srv.u(&format!("/api/runs/{build}/logs?line=1&after=1.1")))?;
    assert_eq!(both.status, 400);

    // Search: through colour codes, case-insensitively, counted.
    let found = get(&srv.u(&format!("/api/runs/{xss}/logs/search?q=RED%20%5Cx1b%5D0")))?.json();
    assert_eq!(found["total"], 1, "{found}");
    assert!(
        found["matches"][0]["text"]
            .as_str()
            .unwrap_or("")
            .contains("\u{1b}[31m"),
        "{found}"
    );
    let errors = get(&srv.u(&format!("/api/runs/{failed}/logs/search?errors=true")))?.json();
    assert_eq!(errors["total"], 1, "{errors}");
    assert_eq!(errors["matches"][0]["service"], "web");
    let none = get(&srv.u(&format!(
        "/api/runs/{build}/logs/search?q=nothing-like-this"
    )))?
    .json();
    assert_eq!(none["total"], 0);
    assert_eq!(
        get(&srv.u(&format!("/api/runs/{build}/logs/search")))?.error_code(),
        "bad_request"
    );

    // The text download is what `nestr logs` prints, without colour.
    let text = get(&srv.u(&format!("/api/runs/{xss}/logs/text")))?;
    assert!(
        text.header("content-type")
            .unwrap_or("")
            .starts_with("text/plain")
    );
    assert!(
        text.header("content-disposition")
            .unwrap_or("")
            .contains("attachment")
    );
    let cli = sb.nestr(&ws, &["logs", &xss]).ok();
    assert_eq!(text.body.trim_end(), cli.all().trim_end());
    let one = get(&srv.u(&format!("/api/runs/{xss}/logs/text?service=api")))?;
    assert!(
        one.body.contains("\\x1b]0;pwned\\x07") && !one.body.contains("api |"),
        "{}",
        one.body
    );

    // The plan the CLI shows.
    let plan = get(&srv.u("/api/plan?operation=build&tags=frontend&with_deps=true"))?.json();
    let cli = sb
        .nestr(
            &ws,
            &[
                "run",
                "build",
                "-t",
                "frontend",
                "--with-deps",
                "--dry-run",
                "--json",
            ],
        )
        .ok()
        .json();
    assert_eq!(plan, cli);
    assert_eq!(plan["levels"].as_array().map(Vec::len), Some(3), "{plan}");
    assert_eq!(
        get(&srv.u("/api/plan?operation=build&tags=nope"))?.error_code(),
        "bad_request"
    );

    // A service's recent steps.
    let steps = get(&srv.u("/api/services/web/steps?operation=check"))?.json();
    assert_eq!(steps["steps"][0]["run_id"], failed.as_str());
    assert_eq!(steps["steps"][0]["status"], "failed");
    assert_eq!(steps["steps"].as_array().map(Vec::len), Some(1));
    assert_eq!(get(&srv.u("/api/services/nope/steps"))?.status, 404);

    // Re-run the failed steps: only those, with the run's options.
    let again = post_json(&srv.u(&format!("/api/runs/{build}/rerun")), "")?;
    assert_eq!(again.status, 409, "nothing failed: {}", again.body);
    let again = post_json(&srv.u(&format!("/api/runs/{failed}/rerun")), "")?;
    assert_eq!(again.status, 202, "{}", again.body);
    let id = again.json()["run_id"].as_str().ok_or("id")?.to_string();
    let mut run = serde_json::Value::Null;
    for _ in 0..300 {
        run = get(&srv.u(&format!("/api/runs/{id}")))?.json();
        if run["status"] != "running" && run["status"] != "queued" {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(run["status"], "failed", "{run}");
    let services: Vec<&str> = run["steps"]
        .as_array()
        .ok_or("steps")?
        .iter()
        .filter_map(|s| s["service"].as_str())
        .collect();
    assert_eq!(services, ["web"]);
    Ok(())
}
