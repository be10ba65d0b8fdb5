//! The built-in plugins doing real work through `nestr run`: `command` with make and sh, `cargo`
//! on a real crate with a passing and a failing test, `npm` on a real package script,
//! `http-deploy` against a real webhook receiver on loopback; and a plugin scaffolded by
//! `nestr plugin new`, built for wasm32-wasip2 and run.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::plugins::stored;
use crate::support::{Run, Sandbox, TestResult, git};

/// A remote `app` whose first commit holds `files`, and a workspace with `manifest_tail` after
/// the repo and service tables.
fn workspace(sb: &Sandbox, files: &[(&str, &str)], service_ops: &str, plugins: &str) -> PathBuf {
    let r = sb.remote("app");
    for (path, content) in files {
        let p = r.work.join(path);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).expect("mkdir");
        }
        std::fs::write(p, content).expect("write");
    }
    if !files.is_empty() {
        git(&r.work, &["add", "-A"]);
        git(&r.work, &["commit", "-qm", "files"]);
        git(&r.work, &["push", "-q", "origin", "HEAD"]);
    }
    let ws = sb.workspace(&format!(
        "[workspace]\nname = \"b\"\n\n[repos.app]\nurl = \"{{remotes}}/app.git\"\nbranch = \"main\"\n\n\
         [services.app]\nrepo = \"app\"\n\n[services.app.operations]\n{service_ops}\n\n{plugins}\n"
    ));
    sb.nestr(&ws, &["assemble", "-q"]).ok();
    ws
}

fn run_op(sb: &Sandbox, ws: &Path, op: &str) -> (Run, serde_json::Value) {
    let run = sb.nestr(ws, &["run", op, "--json"]);
    let step = run.json()["steps"][0].clone();
    (run, step)
}

#[test]
fn command_runs_make_and_stops_at_the_first_failure() -> TestResult {
    let sb = Sandbox::new();
    let ws = workspace(
        &sb,
        &[(
            "Makefile",
            "build:\n\t@echo compiled > out.txt\n\t@echo built ok\nbroken:\n\t@echo about to fail\n\t@exit 4\n",
        )],
        "build = { plugin = \"command\", config = { run = [[\"make\", \"build\"], [\"sh\", \"-c\", \"cat out.txt\"]] } }\n\
         check = { plugin = \"command\", config = { run = [[\"make\", \"broken\"], [\"make\", \"build\"]] } }\n\
         shell = { plugin = \"command\", config = { run = [[\"bash\", \"-c\", \"echo hi\"]] } }",
        "[plugins.command]\ngrants = { exec = [\"make\", \"sh\"], env = [\"PATH\"] }",
    );
    let (run, step) = run_op(&sb, &ws, "build");
    assert_eq!(run.code, 0, "{}\n{}", run.all(), stored(&ws).log);
    assert_eq!(step["summary"], "2 commands succeeded");
    assert!(
        stored(&ws).log.contains("compiled"),
        "the second command saw the first one's file"
    );
    std::fs::remove_file(ws.join("app/out.txt"))?;
    let (run, step) = run_op(&sb, &ws, "check");
    assert_eq!(run.code, 1);
    assert_eq!(step["status"], "failed");
    assert!(
        step["summary"]
            .as_str()
            .is_some_and(|s| s.contains("`make broken` exited with code 2")),
        "{step}"
    );
    assert!(
        !ws.join("app/out.txt").exists(),
        "stopped before `make build`"
    );
    let (_, step) = run_op(&sb, &ws, "shell");
    assert_eq!(step["status"], "denied", "bash is not granted: {step}");
    Ok(())
}

#[test]
fn cargo_builds_and_counts_tests_of_a_real_crate() -> TestResult {
    let sb = Sandbox::new();
    let ws = workspace(
        &sb,
        &[
            (
                "Cargo.toml",
                "[package]\nname = \"tiny\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n[workspace]\n",
            ),
            (
                "src/lib.rs",
                "pub fn add(a: i32, b: i32) -> i32 { a + b }\n\n#[cfg(test)]\nmod tests {\n    #[test]\n    fn adds() { assert_eq!(super::add(2, 2), 4); }\n    #[test]\n    fn wrong() { assert_eq!(super::add(2, 2), 5); }\n    #[test]\n    #[ignore]\n    fn later() {}\n}\n",
            ),
        ],
        "build = { plugin = \"cargo\" }\ntest = { plugin = \"cargo\" }",
        "[plugins.cargo]\ngrants = { exec = [\"cargo\"], env = [\"PATH\", \"HOME\", \"CARGO_HOME\", \"RUSTUP_HOME\", \"RUSTUP_TOOLCHAIN\"], timeout = \"10m\" }",
    );
    let env = |cmd: &mut std::process::Command| {
        for k in ["CARGO_HOME", "RUSTUP_HOME", "RUSTUP_TOOLCHAIN"] {
            if let Ok(v) = std::env::var(k) {
                cmd.env(k, v);
            }
        }
        cmd.env("HOME", std::env::var("HOME").unwrap_or_default());
    };
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_nestr"));
    cmd.current_dir(&ws)
        .args(["--color", "never", "run", "build", "--json"]);
    env(&mut cmd);
    let build = Run::from(cmd.output()?);
    assert_eq!(build.code, 0, "{}", build.all());
    assert!(ws.join("app/target/debug").is_dir());
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_nestr"));
    cmd.current_dir(&ws)
        .args(["--color", "never", "run", "test", "--json"]);
    env(&mut cmd);
    let test = Run::from(cmd.output()?);
    assert_eq!(test.code, 1, "a test fails: {}", test.all());
    let step = &test.json()["steps"][0];
    assert_eq!(step["status"], "failed");
    assert_eq!(
        step["tests"],
        serde_json::json!({"passed": 1, "failed": 1, "skipped": 1}),
        "{step}"
    );
    assert!(
        step["summary"]
            .as_str()
            .is_some_and(|s| s.contains("tests::wrong")),
        "{step}"
    );
    Ok(())
}

#[test]
fn npm_runs_package_scripts_and_reads_test_counts() -> TestResult {
    crate::support::need_npm()?;
    let sb = Sandbox::new();
    let ws = workspace(
        &sb,
        &[
            (
                "package.json",
                "{\"name\":\"web\",\"version\":\"1.0.0\",\"private\":true,\"scripts\":{\"build\":\"node build.js\",\"test\":\"node test.js\"}}\n",
            ),
            (
                "package-lock.json",
                "{\"name\":\"web\",\"version\":\"1.0.0\",\"lockfileVersion\":3,\"requires\":true,\"packages\":{\"\":{\"name\":\"web\",\"version\":\"1.0.0\"}}}\n",
            ),
            (
                "build.js",
                "require('fs').writeFileSync('dist.txt', 'bundle'); console.log('bundled');\n",
            ),
            (
                "test.js",
                "console.log('TAP version 13'); console.log('ok 1 - renders'); console.log('ok 2 - links'); console.log('ok 3 - todo # SKIP later'); console.log('1..3');\n",
            ),
        ],
        "build = { plugin = \"npm\", config = { ci = true } }\ntest = { plugin = \"npm\" }",
        "[plugins.npm]\ngrants = { exec = [\"npm\"], env = [\"PATH\", \"HOME\"], timeout = \"5m\" }",
    );
    let (run, step) = run_op(&sb, &ws, "build");
    assert_eq!(run.code, 0, "{}\n{}", run.all(), stored(&ws).log);
    assert_eq!(std::fs::read_to_string(ws.join("app/dist.txt"))?, "bundle");
    assert!(
        step["summary"]
            .as_str()
            .is_some_and(|s| s.contains("npm run build succeeded")),
        "{step}"
    );
    let (run, step) = run_op(&sb, &ws, "test");
    assert_eq!(run.code, 0, "{}", run.all());
    assert_eq!(
        step["tests"],
        serde_json::json!({"passed": 2, "failed": 0, "skipped": 1}),
        "{step}"
    );
    Ok(())
}

#[test]
fn npm_installs_without_a_lockfile_and_counts_ava_jest_and_vitest() -> TestResult {
    crate::support::need_npm()?;
    let sb = Sandbox::new();
    let say = |lines: &[&str]| {
        lines
            .iter()
            .map(|l| format!("console.log({l:?});"))
            .collect::<Vec<_>>()
            .join(" ")
            + "\n"
    };
    let ava = say(&[
        "",
        "  ✔ adds",
        "  ✔ subtracts",
        "  ✔ multiplies",
        "  ─",
        "",
        "  3 tests passed",
    ]);
    let jest = say(&[
        "PASS src/a.test.js",
        "Test Suites: 1 passed, 1 total",
        "Tests:       1 skipped, 4 passed, 5 total",
        "Snapshots:   2 passed, 2 total",
    ]);
    let vitest = say(&[
        " Test Files  1 passed (1)",
        "      Tests  6 passed | 1 skipped (7)",
        "   Duration  1.10s",
    ]);
    let ws = workspace(
        &sb,
        &[
            (
                "package.json",
                "{\"name\":\"nolock\",\"version\":\"1.0.0\",\"private\":true,\"scripts\":{\"build\":\"node -e \\\"console.log('built')\\\"\",\"test\":\"node ava.js\",\"test:jest\":\"node jest.js\",\"test:vitest\":\"node vitest.js\"}}\n",
            ),
            (".npmrc", "package-lock=false\n"),
            ("ava.js", &ava),
            ("jest.js", &jest),
            ("vitest.js", &vitest),
        ],
        "build = { plugin = \"npm\", config = { ci = true } }\ntest = { plugin = \"npm\" }\n\
         test-jest = { plugin = \"npm\", config = { script = \"test:jest\" } }\n\
         test-vitest = { plugin = \"npm\", config = { script = \"test:vitest\" } }",
        "[plugins.npm]\ngrants = { exec = [\"npm\"], env = [\"PATH\", \"HOME\"], timeout = \"5m\" }",
    );
    let (run, step) = run_op(&sb, &ws, "build");
    assert_eq!(run.code, 0, "{}\n{}", run.all(), stored(&ws).log);
    let log = stored(&ws).log;
    assert!(
        log.contains("$ npm install --no-fund --no-audit --no-package-lock"),
        "no lockfile: npm install, not npm ci:\n{log}"
    );
    assert!(
        !ws.join("app/package-lock.json").exists(),
        "no lockfile was written"
    );
    assert!(
        step["summary"]
            .as_str()
            .is_some_and(|s| s.contains("npm run build succeeded")),
        "{step}"
    );
    for (op, want) in [
        ("test", (3, 0, 0)),
        ("test-jest", (4, 0, 1)),
        ("test-vitest", (6, 0, 1)),
    ] {
        let (run, step) = run_op(&sb, &ws, op);
        assert_eq!(run.code, 0, "{op}: {}", run.all());
        assert_eq!(
            step["tests"],
            serde_json::json!({"passed": want.0, "failed": want.1, "skipped": want.2}),
            "{op}: {step}"
        );
    }
    Ok(())
}

/// A webhook receiver: records each request (request line, headers, body); the deploy hook
/// answers 202, the health URL answers 503 twice and then 200.
fn receiver() -> std::io::Result<(u16, Arc<Mutex<Vec<String>>>)> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    std::thread::spawn(move || {
        let mut health = 0;
        for stream in listener.incoming().take(50) {
            let Ok(mut stream) = stream else { break };
            let mut reader = BufReader::new(stream.try_clone().expect("clone"));
            let mut head = String::new();
            let mut length = 0usize;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap_or(0);
                }
                head.push_str(&line);
            }
            let mut body = vec![0u8; length];
            let _ = reader.read_exact(&mut body);
            let request = format!("{head}\n{}", String::from_utf8_lossy(&body));
            let reply: &[u8] = if head.starts_with("POST /hooks/deploy") {
                b"HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            } else if head.starts_with("GET /healthz") {
                health += 1;
                if health <= 2 {
                    b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                } else {
                    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
                }
            } else {
                b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            };
            log.lock().expect("lock").push(request);
            let _ = stream.write_all(reply);
        }
    });
    Ok((port, seen))
}

#[test]
fn http_deploy_posts_the_hook_with_a_secret_and_waits_for_health() -> TestResult {
    let (port, seen) = receiver()?;
    let sb = Sandbox::new();
    let ws = workspace(
        &sb,
        &[],
        &format!(
            "deploy = {{ plugin = \"http-deploy\", config = {{ url = \"http://127.0.0.1:{port}/hooks/deploy\", headers = {{ x-deploy-token = \"{{{{secret:DEPLOY_TOKEN}}}}\" }}, health_url = \"http://127.0.0.1:{port}/healthz\", poll_interval_ms = 100, health_timeout_secs = 20 }} }}"
        ),
        &format!(
            "[plugins.http-deploy]\ngrants = {{ http = [\"http://127.0.0.1:{port}\"], secrets = [\"DEPLOY_TOKEN\"] }}"
        ),
    );
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_nestr"));
    cmd.current_dir(&ws)
        .args(["--color", "never", "run", "deploy", "--json"])
        .env("DEPLOY_TOKEN", "tok-3f9a-secret");
    let run = Run::from(cmd.output()?);
    assert_eq!(run.code, 0, "{}\n{}", run.all(), stored(&ws).log);
    let step = &run.json()["steps"][0];
    assert!(
        step["summary"]
            .as_str()
            .is_some_and(|s| s.contains("answered 200")),
        "{step}"
    );
    let requests = seen.lock().map_err(|_| "lock")?.clone();
    let hook = requests
        .iter()
        .find(|r| r.starts_with("POST /hooks/deploy"))
        .ok_or("no hook request")?;
    assert!(
        hook.to_ascii_lowercase()
            .contains("x-deploy-token: tok-3f9a-secret"),
        "the host filled the secret: {hook}"
    );
    let body: serde_json::Value = serde_json::from_str(hook.rsplit('\n').next().unwrap_or(""))?;
    assert_eq!(body["service"], "app");
    assert_eq!(body["repo"], "app");
    assert_eq!(body["branch"], "main");
    assert_eq!(body["commit"].as_str().map(str::len), Some(40));
    assert_eq!(
        requests
            .iter()
            .filter(|r| r.starts_with("GET /healthz"))
            .count(),
        3
    );
    assert!(!stored(&ws).log.contains("tok-3f9a-secret"));
    // Without the http grant the hook is refused and nothing is sent.
    let before = requests.len();
    let manifest = std::fs::read_to_string(ws.join("nestr.toml"))?;
    std::fs::write(
        ws.join("nestr.toml"),
        manifest.replace(&format!("http = [\"http://127.0.0.1:{port}\"], "), ""),
    )?;
    let (run, step) = run_op(&sb, &ws, "deploy");
    assert_eq!(run.code, 1);
    assert_eq!(step["status"], "denied", "{step}");
    std::thread::sleep(std::time::Duration::from_millis(100));
    assert_eq!(
        seen.lock().map_err(|_| "lock")?.len(),
        before,
        "nothing was sent"
    );
    Ok(())
}

#[test]
fn a_scaffolded_plugin_builds_and_runs() -> TestResult {
    let sb = Sandbox::new();
    let ws = workspace(&sb, &[], "", "");
    sb.nestr(&ws, &["plugin", "new", "greeter", "--dir", "tools/greeter"])
        .ok();
    let crate_dir = ws.join("tools/greeter");
    assert!(
        crate_dir.join("vendor/nestr-sdk/wit/plugin.wit").is_file(),
        "the SDK is vendored"
    );
    // The versions the engine's own plugins were built with (their compiled code is shared).
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins/Cargo.lock"),
        crate_dir.join("Cargo.lock"),
    )?;
    let target = Path::new(env!("NESTR_PLUGIN_WASM_DIR"))
        .ancestors()
        .nth(2)
        .ok_or("target dir")?
        .to_path_buf();
    let cargo = |args: &[&str]| -> std::io::Result<std::process::Output> {
        std::process::Command::new("cargo")
            .current_dir(&crate_dir)
            .args(args)
            .arg("--target-dir")
            .arg(&target)
            .env_remove("CARGO_TARGET_DIR")
            .env_remove("RUSTFLAGS")
            .output()
    };
    let build = cargo(&["build", "--release", "--target", "wasm32-wasip2"])?;
    assert!(
        build.status.success(),
        "{}",
        String::from_utf8_lossy(&build.stderr)
    );
    let manifest = std::fs::read_to_string(ws.join("nestr.toml"))?.replace(
        "[services.app.operations]\n",
        "[services.app.operations]\nhello = { plugin = \"greeter\", config = { greeting = \"bonjour\" } }\n",
    );
    std::fs::write(
        ws.join("nestr.toml"),
        format!(
            "{manifest}\n[plugins.greeter]\npath = \"{}\"\ngrants = {{ exec = [\"echo\"] }}\n",
            target.join("wasm32-wasip2/release/greeter.wasm").display()
        ),
    )?;
    // A real step, its host calls recorded.
    let run = sb.nestr(&ws, &["run", "hello", "--json", "--record", "tapes"]);
    assert_eq!(run.code, 0, "{}", run.all());
    assert_eq!(run.json()["steps"][0]["status"], "succeeded");
    assert!(
        stored(&ws).log.contains("bonjour from app"),
        "{}",
        stored(&ws).log
    );
    let tape_text = std::fs::read_to_string(ws.join("tapes/app.hello.json"))?;
    let tape: serde_json::Value = serde_json::from_str(&tape_text)?;
    assert_eq!(tape["nestr_tape"], 1);
    assert_eq!(tape["contract"], "nestr:plugin@0.2.0");
    assert_eq!(tape["calls"][0]["exec"]["command"]["program"], "echo");
    assert_eq!(
        tape["calls"][0]["exec"]["command"]["args"],
        serde_json::json!(["bonjour from app"])
    );
    assert_eq!(tape["calls"][0]["exec"]["result"]["Ok"]["exit_code"], 0);

    // The plugin's own tests, natively: the scaffold's, plus replays of the recorded step (as it
    // is, and with the request changed so that the plugin asks something the tape did not see).
    std::fs::create_dir_all(crate_dir.join("tests/tapes"))?;
    std::fs::write(crate_dir.join("tests/tapes/hello.json"), &tape_text)?;
    std::fs::write(
        crate_dir.join("tests/tapes/changed.json"),
        tape_text.replace("\"greeting\": \"bonjour\"", "\"greeting\": \"hola\""),
    )?;
    std::fs::write(
        crate_dir.join("tests/replay.rs"),
        "use greeter::Greeter;\n\n\
         #[test]\nfn the_recorded_step_replays() {\n    \
         let run = nestr_sdk::testing::replay::<Greeter>(\"tests/tapes/hello.json\");\n    \
         assert!(run.report().summary.starts_with(\"echo succeeded\"));\n}\n\n\
         #[test]\n#[should_panic(expected = \"the tape recorded `echo 'bonjour from app'`\")]\n\
         fn asking_something_else_than_the_tape_fails() {\n    \
         nestr_sdk::testing::replay::<Greeter>(\"tests/tapes/changed.json\");\n}\n",
    )?;
    let test = cargo(&["test"])?;
    let out = format!(
        "{}{}",
        String::from_utf8_lossy(&test.stdout),
        String::from_utf8_lossy(&test.stderr)
    );
    assert!(test.status.success(), "{out}");
    assert!(out.contains("test result: ok. 4 passed"), "{out}");
    assert!(out.contains("test result: ok. 2 passed"), "{out}");
    Ok(())
}

/// The command a built-in plugin shows before it runs one is quoted the way a shell would read it
/// back: `$ sh -c 'echo a b'`, not `$ sh -c echo a b`.
#[test]
fn displayed_commands_are_shell_quoted() -> crate::support::TestResult {
    let sb = crate::support::Sandbox::new();
    let ws = crate::scheduler::ws(&sb, &[("a", &[], "echo a b")], "");
    let run = sb.nestr(&ws, &["run", "op"]).ok();
    assert!(
        run.stdout.contains("a | $ sh -c 'echo a b'"),
        "{}",
        run.stdout
    );
    Ok(())
}

/// The source of the published `itoa` crate this build downloaded (the engine depends on it), in
/// cargo's registry: a real crate to check out locally.
fn published_itoa() -> Result<PathBuf, Box<dyn std::error::Error>> {
    let lock =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.lock"))?;
    let version = lock
        .split("[[package]]")
        .find(|p| p.contains("name = \"itoa\""))
        .and_then(|p| p.lines().find_map(|l| l.strip_prefix("version = ")))
        .map(|v| v.trim_matches('"').to_string())
        .ok_or("itoa is not in Cargo.lock")?;
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .ok_or("no CARGO_HOME or HOME")?;
    for index in std::fs::read_dir(home.join("registry/src"))? {
        let dir = index?.path().join(format!("itoa-{version}"));
        if dir.join("Cargo.toml").is_file() {
            return Ok(dir);
        }
    }
    Err(format!("itoa-{version} is not in {}/registry/src", home.display()).into())
}

fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_tree(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), target)?;
        }
    }
    Ok(())
}

/// A crate depending on the published `itoa`, and a checkout of itoa in another repository of
/// the workspace with a function the published one lacks, which the crate's test calls: the test
/// passes only when the dependency is wired, cargo builds itoa from the checkout's path, the step
/// log says what was wired to which commit, and the checkout's commit is part of the cache key.
#[test]
fn a_wired_dependency_builds_from_the_workspaces_checkout() -> TestResult {
    let sb = Sandbox::new();
    let lib = sb.remote("lib");
    copy_tree(&published_itoa()?, &lib.work)?;
    let src = lib.work.join("src/lib.rs");
    let mut text = std::fs::read_to_string(&src)?;
    text.push_str("\n/// Only in the workspace's checkout.\npub fn from_the_checkout() -> &'static str {\n    \"local itoa\"\n}\n");
    std::fs::write(&src, text)?;
    git(&lib.work, &["add", "-A"]);
    git(&lib.work, &["commit", "-qm", "itoa with a new function"]);
    git(&lib.work, &["push", "-q", "origin", "HEAD"]);
    let app = sb.remote("app");
    std::fs::write(
        app.work.join("Cargo.toml"),
        "[package]\nname = \"app\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n[dependencies]\nitoa = \"1\"\n\n[workspace]\n",
    )?;
    std::fs::create_dir_all(app.work.join("src"))?;
    std::fs::write(
        app.work.join("src/lib.rs"),
        "#[cfg(test)]\nmod tests {\n    #[test]\n    fn uses_the_checkout() {\n        assert_eq!(itoa::from_the_checkout(), \"local itoa\");\n        assert_eq!(itoa::Buffer::new().format(42), \"42\");\n    }\n}\n",
    )?;
    std::fs::write(app.work.join(".gitignore"), "/target\n/Cargo.lock\n")?;
    git(&app.work, &["add", "-A"]);
    git(&app.work, &["commit", "-qm", "app"]);
    git(&app.work, &["push", "-q", "origin", "HEAD"]);
    let manifest = |wire: bool| {
        format!(
            "[workspace]\nname = \"w\"\n\n[repos.lib]\nurl = \"{{remotes}}/lib.git\"\n[repos.app]\nurl = \"{{remotes}}/app.git\"\n\n\
             [services.itoa]\nrepo = \"lib\"\n\n[services.app]\nrepo = \"app\"\ndepends_on = [{{ service = \"itoa\", wire = {wire} }}]\n\n\
             [services.app.operations]\ntest = {{ plugin = \"cargo\", cache = true }}\n\n\
             [plugins.cargo]\ngrants = {{ exec = [\"cargo\"], env = [\"PATH\", \"HOME\", \"CARGO_HOME\", \"RUSTUP_HOME\", \"RUSTUP_TOOLCHAIN\", \"CARGO_NET_OFFLINE\"], timeout = \"10m\" }}\n"
        )
    };
    let ws = sb.workspace(&manifest(false));
    sb.nestr(&ws, &["assemble", "-q"]).ok();
    let run = |ws: &Path| -> std::io::Result<Run> {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_nestr"));
        cmd.current_dir(ws)
            .args(["--color", "never", "run", "test", "-s", "app", "--json"])
            .env("CARGO_NET_OFFLINE", "true")
            .env("HOME", std::env::var("HOME").unwrap_or_default());
        for k in ["CARGO_HOME", "RUSTUP_HOME", "RUSTUP_TOOLCHAIN"] {
            if let Ok(v) = std::env::var(k) {
                cmd.env(k, v);
            }
        }
        Ok(Run::from(cmd.output()?))
    };

    // Unwired: the published itoa, which has no such function.
    let unwired = run(&ws)?;
    assert_eq!(unwired.code, 1, "{}", unwired.all());
    let log = stored(&ws).log;
    assert!(log.contains("from_the_checkout"), "{log}");
    assert!(!log.contains("wired itoa"), "{log}");

    // Wired: the checkout, by path.
    std::fs::write(
        ws.join("nestr.toml"),
        manifest(true).replace(
            "{remotes}",
            &sb.path().join("remotes").display().to_string(),
        ),
    )?;
    let wired = run(&ws)?;
    assert_eq!(wired.code, 0, "{}\n{}", wired.all(), stored(&ws).log);
    let step = &wired.json()["steps"][0];
    assert_eq!(step["tests"]["passed"], 1, "{step}");
    let log = stored(&ws).log;
    let head = git(&ws.join("lib"), &["rev-parse", "HEAD"]);
    let folder = std::fs::canonicalize(ws.join("lib"))?;
    assert!(
        log.contains(&format!(
            "→ {} (itoa at {})",
            folder.display(),
            &head.trim()[..12]
        )),
        "the log names what was wired, where, at which commit:\n{log}"
    );
    assert!(
        log.contains("Compiling itoa v") && log.contains(&format!("({})", folder.display())),
        "cargo built itoa from the checkout's path:\n{log}"
    );
    assert!(
        !git(&ws.join("app"), &["status", "--porcelain"]).contains("Cargo.toml"),
        "no tracked file edited"
    );

    // The checkout's commit is in the key: a new commit there is a miss, and explain says why.
    let lib_dir = ws.join("lib");
    std::fs::write(lib_dir.join("NOTES.md"), "a note\n")?;
    git(&lib_dir, &["add", "NOTES.md"]);
    git(&lib_dir, &["commit", "-qm", "a note"]);
    let again = run(&ws)?;
    assert_eq!(again.code, 0, "{}", again.all());
    let json = again.json();
    let run_id = json["run_id"].as_str().unwrap_or_default().to_string();
    assert_ne!(json["steps"][0]["status"], "cached", "{json}");
    let why = sb
        .nestr(&ws, &["cache", "explain", &run_id, "app"])
        .ok()
        .stdout;
    assert!(why.contains("wired dependency `itoa` moved"), "{why}");
    Ok(())
}

/// An npm package depending on `greet`, and the checkout of `greet` in another repository: the
/// package's test passes only when the dependency is wired, which links the checkout into
/// node_modules without touching a tracked file, and the step log says what was wired.
#[test]
fn a_wired_npm_dependency_is_linked_from_the_workspaces_checkout() -> TestResult {
    crate::support::need_npm()?;
    let sb = Sandbox::new();
    let lib = sb.remote("greet");
    std::fs::write(
        lib.work.join("package.json"),
        "{\"name\":\"greet\",\"version\":\"1.2.0\",\"main\":\"index.js\"}\n",
    )?;
    std::fs::write(
        lib.work.join("index.js"),
        "exports.hello = (n) => 'hello ' + n + ' from the checkout';\n",
    )?;
    git(&lib.work, &["add", "-A"]);
    git(&lib.work, &["commit", "-qm", "greet"]);
    git(&lib.work, &["push", "-q", "origin", "HEAD"]);
    let app = sb.remote("web");
    std::fs::write(
        app.work.join("package.json"),
        "{\"name\":\"web\",\"version\":\"1.0.0\",\"private\":true,\"dependencies\":{\"greet\":\"^1.0.0\"},\"scripts\":{\"test\":\"node test.js\"}}\n",
    )?;
    std::fs::write(
        app.work.join("test.js"),
        "const g = require('greet');\nconst ok = g.hello('web') === 'hello web from the checkout';\nconsole.log('TAP version 13');\nconsole.log((ok ? 'ok' : 'not ok') + ' 1 - greets');\nconsole.log('1..1');\nprocess.exit(ok ? 0 : 1);\n",
    )?;
    std::fs::write(app.work.join(".gitignore"), "node_modules/\n")?;
    git(&app.work, &["add", "-A"]);
    git(&app.work, &["commit", "-qm", "web"]);
    git(&app.work, &["push", "-q", "origin", "HEAD"]);
    let manifest = |wire: bool| {
        format!(
            "[workspace]\nname = \"w\"\n\n[repos.greet]\nurl = \"{{remotes}}/greet.git\"\n[repos.web]\nurl = \"{{remotes}}/web.git\"\n\n\
             [services.greet]\nrepo = \"greet\"\n\n[services.web]\nrepo = \"web\"\nwire = {wire}\ndepends_on = [\"greet\"]\n\n\
             [services.web.operations]\ntest = {{ plugin = \"npm\" }}\n\n\
             [plugins.npm]\ngrants = {{ exec = [\"npm\"], env = [\"PATH\", \"HOME\"], timeout = \"5m\" }}\n"
        )
    };
    let ws = sb.workspace(&manifest(false));
    sb.nestr(&ws, &["assemble", "-q"]).ok();
    let (run, step) = run_op(&sb, &ws, "test");
    assert_eq!(
        run.code,
        1,
        "unwired, greet is not installed: {}",
        run.all()
    );
    assert_eq!(step["status"], "failed");
    std::fs::write(
        ws.join("nestr.toml"),
        manifest(true).replace(
            "{remotes}",
            &sb.path().join("remotes").display().to_string(),
        ),
    )?;
    let (run, step) = run_op(&sb, &ws, "test");
    assert_eq!(run.code, 0, "{}\n{}", run.all(), stored(&ws).log);
    assert_eq!(
        step["tests"],
        serde_json::json!({"passed": 1, "failed": 0, "skipped": 0}),
        "{step}"
    );
    let log = stored(&ws).log;
    let head = git(&ws.join("greet"), &["rev-parse", "HEAD"]);
    let folder = std::fs::canonicalize(ws.join("greet"))?;
    assert!(
        log.contains(&format!(
            "wired greet 1.2.0 → {} (greet at {})",
            folder.display(),
            &head.trim()[..12]
        )),
        "{log}"
    );
    let linked = std::fs::canonicalize(ws.join("web/node_modules/greet"))?;
    assert_eq!(linked, folder, "node_modules/greet is the checkout");
    assert_eq!(
        git(&ws.join("web"), &["status", "--porcelain"]).trim(),
        "",
        "no tracked file changed, nothing untracked left outside node_modules"
    );
    Ok(())
}
