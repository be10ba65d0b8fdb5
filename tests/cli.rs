//! The command line: init, services, discovery, global options, JSON shapes and exit codes.

use crate::support::{Sandbox, TestResult};

#[test]
fn init_writes_a_valid_starter_and_refuses_to_overwrite() -> TestResult {
    let sb = Sandbox::new();
    let dir = sb.path().join("My Shop");
    std::fs::create_dir_all(&dir)?;
    sb.nestr(&dir, &["init"]).ok();
    let text = std::fs::read_to_string(dir.join("nestr.toml"))?;
    assert!(text.contains("name = \"my-shop\""), "{text}");
    // Build and test are cached from the start; the starter loads as it is.
    for op in ["build", "test"] {
        let table = text
            .split(&format!("[operations.{op}]\n"))
            .nth(1)
            .ok_or(format!("no [operations.{op}] in {text}"))?;
        let body = table.split("\n\n").next().unwrap_or_default();
        assert!(body.contains("cache = true"), "{op}: {body}");
    }
    sb.nestr(&dir, &["services"]).ok();
    let again = sb.nestr(&dir, &["init", "--name", "other"]).expect(2);
    assert!(again.stderr.contains("already exists"), "{}", again.stderr);
    assert_eq!(
        std::fs::read_to_string(dir.join("nestr.toml"))?,
        text,
        "untouched"
    );
    let named = sb.path().join("named");
    std::fs::create_dir_all(&named)?;
    sb.nestr(&named, &["init", "--name", "acme"]).ok();
    assert!(std::fs::read_to_string(named.join("nestr.toml"))?.contains("name = \"acme\""));
    sb.nestr(
        &named,
        &["init", "--name", "Bad Name", "--manifest", "x.toml"],
    )
    .expect(2);
    assert!(!named.join("x.toml").exists());
    Ok(())
}

const SERVICES: &str = r#"
[workspace]
name = "shop"

[repos.api]
url = "https://git.example.com/acme/api.git"

[repos.shared]
url = "git@git.example.com:acme/shared.git"
tag = "v1.4.0"
path = "libs/shared"

[services.shared]
repo = "shared"
tags = ["lib"]

[services.api]
repo = "api"
path = "server"
depends_on = ["shared"]
tags = ["backend", "http"]

[services.api.operations]
build = { plugin = "command", config = { run = [["make", "build"]] } }

[operations.lint]
plugin = "command"
config = { run = [["make", "lint"]] }
"#;

#[test]
fn services_json_lists_everything_and_discovery_walks_up() -> TestResult {
    let sb = Sandbox::new();
    let ws = sb.workspace(SERVICES);
    let deep = ws.join("a/b/c");
    std::fs::create_dir_all(&deep)?;
    let run = sb.nestr(&deep, &["services", "--json"]).ok();
    let page = run.json();
    assert!(page["next_cursor"].is_null(), "{page}");
    let v = &page["services"];
    let api = &v[1];
    assert_eq!(api["name"], "api");
    assert_eq!(api["repo"], "api");
    assert_eq!(api["path"], "server");
    assert_eq!(api["depends_on"], serde_json::json!(["shared"]));
    assert_eq!(api["tags"], serde_json::json!(["backend", "http"]));
    assert_eq!(
        api["operations"],
        serde_json::json!([
            {"name": "build", "plugin": "command", "last_status": null},
            {"name": "lint", "plugin": "command", "last_status": null},
        ])
    );
    assert_eq!(
        v[0]["operations"],
        serde_json::json!([{"name": "lint", "plugin": "command", "last_status": null}])
    );
    assert_eq!(v[0]["opted_out"], serde_json::json!([]));
    let table = sb.nestr(&deep, &["services"]).ok();
    assert!(
        table.stdout.contains("build (command), lint (command)"),
        "{}",
        table.stdout
    );
    // --manifest from elsewhere; --state elsewhere is where the database goes.
    let other = sb.path().join("elsewhere");
    std::fs::create_dir_all(&other)?;
    let m = ws.join("nestr.toml");
    sb.nestr(
        &other,
        &["--manifest", m.to_str().ok_or("utf8")?, "services"],
    )
    .ok();
    sb.nestr(
        &other,
        &[
            "--manifest",
            m.to_str().ok_or("utf8")?,
            "--state",
            "st",
            "sync",
        ],
    )
    .expect(1);
    assert!(other.join("st/state.db").is_file());
    assert!(!ws.join(".nestr").exists());
    Ok(())
}

#[test]
fn no_manifest_is_a_usage_error_with_help() -> TestResult {
    let sb = Sandbox::new();
    let run = sb.nestr(sb.path(), &["status"]).expect(2);
    assert!(run.stderr.contains("no nestr.toml in"), "{}", run.stderr);
    assert!(run.stderr.contains("nestr init"), "{}", run.stderr);
    let bad_flag = sb.nestr(sb.path(), &["status", "--bogus"]).expect(2);
    assert!(bad_flag.stderr.contains("--bogus"));
    let bad_jobs = sb.nestr(sb.path(), &["sync", "-j", "0"]).expect(2);
    assert!(bad_jobs.stderr.contains("-j"), "{}", bad_jobs.stderr);
    Ok(())
}

#[test]
fn status_json_has_exactly_the_contract_fields() -> TestResult {
    let sb = Sandbox::new();
    sb.remote("a");
    let ws = sb.workspace("[workspace]\nname = \"t\"\n[repos.a]\nurl = \"{remotes}/a.git\"\n[repos.b]\nurl = \"{remotes}/a.git\"\n");
    sb.nestr(&ws, &["assemble"]).ok();
    std::fs::remove_dir_all(ws.join("b"))?;
    let rows = sb.nestr(&ws, &["status", "--json"]).ok().json();
    let want = [
        "ahead",
        "at_pin",
        "behind",
        "branch",
        "dirty",
        "error",
        "head",
        "last_sync_at",
        "last_sync_message",
        "last_sync_result",
        "modified",
        "name",
        "path",
        "pin",
        "staged",
        "state",
        "untracked",
        "upstream",
        "url",
    ];
    for row in rows.as_array().ok_or("array")? {
        let mut keys: Vec<&str> = row
            .as_object()
            .ok_or("object")?
            .keys()
            .map(String::as_str)
            .collect();
        keys.sort_unstable();
        assert_eq!(keys, want);
    }
    assert_eq!(rows[0]["upstream"], "origin/main");
    assert_eq!(rows[0]["head"].as_str().map(str::len), Some(40));
    assert_eq!(rows[1]["state"], "missing");
    Ok(())
}

#[test]
fn colour_follows_flag_and_no_color() -> TestResult {
    let sb = Sandbox::new();
    let ws = sb.workspace(SERVICES);
    let plain = sb.nestr(&ws, &["services"]).ok();
    assert!(!plain.stdout.contains('\x1b'));
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_nestr"));
    let out = cmd
        .current_dir(&ws)
        .args(["--color", "always", "services"])
        .output()?;
    assert!(String::from_utf8_lossy(&out.stdout).contains('\x1b'));
    // `auto` on a terminal: colour unless NO_COLOR is set. A pipe would be colourless either
    // way, so this half runs under a pseudo-terminal (util-linux `script`).
    let on_tty = |no_color: bool| -> Result<String, Box<dyn std::error::Error>> {
        let mut cmd = std::process::Command::new("script");
        cmd.current_dir(&ws).args([
            "-qec",
            &format!("{} --color auto services", env!("CARGO_BIN_EXE_nestr")),
            "/dev/null",
        ]);
        crate::support::isolate(&mut cmd, sb.path());
        if no_color {
            cmd.env("NO_COLOR", "1");
        }
        let out = cmd.output().map_err(|e| {
            format!("`script` (Debian package bsdutils, util-linux) is needed: {e}")
        })?;
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let coloured = on_tty(false)?;
    assert!(coloured.contains("SERVICE"), "{coloured}");
    assert!(
        coloured.contains('\x1b'),
        "a terminal gets colour: {coloured:?}"
    );
    let plain = on_tty(true)?;
    assert!(plain.contains("SERVICE"), "{plain}");
    assert!(!plain.contains('\x1b'), "NO_COLOR turns it off: {plain:?}");
    Ok(())
}

#[test]
fn demo_builds_a_workspace_and_runs_again() -> TestResult {
    let sb = Sandbox::new();
    let run = sb.nestr(sb.path(), &["demo", "--dir", "d"]).ok();
    assert!(
        run.stdout.contains("4 repositories: 4 cloned"),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("fast-forwarded"), "{}", run.stdout);
    assert!(run.stdout.contains("dirty"), "{}", run.stdout);
    assert!(
        run.stdout.contains("receiver got POST /hooks/api"),
        "deployed: {}",
        run.stdout
    );
    assert!(
        run.stdout.contains("receiver got POST /hooks/web"),
        "deployed: {}",
        run.stdout
    );
    let ws = sb.path().join("d/workspace");
    let runs = sb.nestr(&ws, &["runs", "--json"]).ok().json();
    let ops: Vec<&str> = runs["runs"]
        .as_array()
        .ok_or("runs")?
        .iter()
        .filter_map(|r| r["operation"].as_str())
        .collect();
    // Assemble and sync are recorded as runs too; then the deploys to staging: an apply, an
    // apply that failed and its rollback.
    assert_eq!(
        ops,
        [
            "deploy", "deploy", "deploy", "deploy", "build", "test", "build", "sync", "assemble"
        ]
    );
    // The second build changed nothing: every step came from the cache.
    let again = &runs["runs"][4];
    assert!(
        again["cached"].as_i64().is_some_and(|n| n > 0) && again["cached"] == again["steps"],
        "{again}"
    );
    assert!(run.stdout.contains("from the cache"), "{}", run.stdout);
    assert!(
        run.stdout.contains("depends on `shared`"),
        "affected: {}",
        run.stdout
    );
    // Every run succeeded but the apply to staging whose web failed its health check (then
    // rolled back by the run after it).
    assert!(
        runs["runs"].as_array().is_some_and(|a| a
            .iter()
            .enumerate()
            .all(|(i, r)| r["status"] == if i == 1 { "failed" } else { "succeeded" })),
        "{runs}"
    );
    assert!(sb.path().join("d/workspace/nestr.lock").is_file());
    sb.nestr(sb.path(), &["demo", "--dir", "d"]).ok();
    std::fs::create_dir_all(sb.path().join("notdemo"))?;
    sb.nestr(sb.path(), &["demo", "--dir", "notdemo"]).expect(2);
    Ok(())
}

#[test]
fn a_service_can_opt_out_of_a_workspace_default_operation() -> TestResult {
    let sb = Sandbox::new();
    sb.remote("app");
    let ws = sb.workspace(
        "[workspace]\nname = \"w\"\n[repos.app]\nurl = \"{remotes}/app.git\"\n\
         [services.a]\nrepo = \"app\"\n\
         [services.docs]\nrepo = \"app\"\n[services.docs.operations]\ntest = false\n\
         [operations.test]\nplugin = \"command\"\nconfig = { run = [[\"sh\", \"-c\", \"echo tested\"]] }\n\
         [plugins.command]\ngrants = { exec = [\"sh\"], env = [\"PATH\"] }\n",
    );
    sb.nestr(&ws, &["assemble", "-q"]).ok();
    let page = sb.nestr(&ws, &["services", "--json"]).ok().json();
    let docs = &page["services"][1];
    assert_eq!(docs["name"], "docs");
    assert_eq!(docs["operations"], serde_json::json!([]), "{docs}");
    assert_eq!(docs["opted_out"], serde_json::json!(["test"]), "{docs}");
    assert_eq!(page["services"][0]["operations"][0]["name"], "test");
    let table = sb.nestr(&ws, &["services"]).ok();
    assert!(
        table.stdout.contains("test (opted out)"),
        "{}",
        table.stdout
    );
    // The whole workspace: only the services that run `test`.
    let run = sb.nestr(&ws, &["run", "test", "--json"]).ok().json();
    let services: Vec<&str> = run["steps"]
        .as_array()
        .ok_or("steps")?
        .iter()
        .filter_map(|s| s["service"].as_str())
        .collect();
    assert_eq!(services, ["a"], "{run}");
    // Selecting only services that opted out is a deliberate no-op, not a typo: skipped, and why.
    let only = sb
        .nestr(&ws, &["run", "test", "-s", "docs", "--json"])
        .ok()
        .json();
    assert_eq!(only["status"], "succeeded", "{only}");
    assert_eq!(only["steps"][0]["status"], "skipped", "{only}");
    assert!(
        only["steps"][0]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("opts out of `test`")),
        "{only}"
    );
    // Turning off what is not a workspace default, or `= true`, is a manifest error.
    for (bad, want) in [
        (
            "tset = false",
            "no workspace-wide `[operations.tset]` to turn off",
        ),
        ("test = true", "`test = true` does not define an operation"),
    ] {
        let m = std::fs::read_to_string(ws.join("nestr.toml"))?;
        let text = m.replace("test = false", bad);
        let line = text.lines().position(|l| l == bad).ok_or("line")? + 1;
        let other = sb.workspace_at("bad", &text);
        let r = sb.nestr(&other, &["services"]).expect(2);
        assert!(r.stderr.contains(want), "{bad}: {}", r.stderr);
        assert!(
            r.stderr.contains(&format!("nestr.toml:{line}:")),
            "{bad}: {}",
            r.stderr
        );
        std::fs::remove_dir_all(&other)?;
    }
    Ok(())
}

#[test]
fn json_logs_go_to_stderr() -> TestResult {
    let sb = Sandbox::new();
    let ws = sb.workspace(SERVICES);
    let run = sb
        .nestr(&ws, &["-v", "--log-format", "json", "services", "--json"])
        .ok();
    run.json();
    let logs: Vec<serde_json::Value> = run
        .stderr
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    assert!(
        logs.iter()
            .any(|l| l["fields"]["message"] == "loaded manifest"),
        "{}",
        run.stderr
    );
    let quiet = sb.nestr(&ws, &["services", "--json"]).ok();
    assert_eq!(quiet.stderr, "", "no logs by default");
    Ok(())
}

/// `nestr services --json | head -1`, `nestr logs RUN | head`: a reader that is gone before
/// nestr writes makes every write fail with a broken pipe. nestr ends at once and quietly (the
/// shells' 141 for a process ended by SIGPIPE), never with a panic and its backtrace (101).
#[test]
fn a_closed_stdout_ends_nestr_quietly_not_with_a_panic() -> TestResult {
    let sb = Sandbox::new();
    sb.remote("app");
    let ws = sb.workspace(
        "[workspace]\nname = \"pipe\"\n[repos.app]\nurl = \"{remotes}/app.git\"\n[services.svc]\nrepo = \"app\"\n\
         [services.svc.operations]\nbuild = { plugin = \"command\", config = { run = [[\"sh\", \"-c\", \"seq 1 2000\"]] } }\n\
         [plugins.command]\ngrants = { exec = [\"sh\"], env = [\"PATH\"] }\n",
    );
    sb.nestr(&ws, &["assemble", "-q"]).ok();
    let run = sb.nestr(&ws, &["run", "build", "--json"]).ok();
    let run_id = run.json()["run_id"].as_str().ok_or("run id")?.to_string();
    for args in [
        vec!["services", "--json"],
        vec!["logs", run_id.as_str()],
        vec!["runs", "show", run_id.as_str()],
    ] {
        // The reading end is closed before nestr starts: its first write fails.
        let (read, write) = nix::unistd::pipe()?;
        drop(read);
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_nestr"));
        cmd.current_dir(&ws)
            .args(["--color", "never"])
            .args(&args)
            .stdout(std::process::Stdio::from(write))
            .stderr(std::process::Stdio::piped());
        crate::support::isolate(&mut cmd, sb.path());
        let out = cmd.output()?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert_eq!(out.status.code(), Some(141), "{args:?}: {stderr}");
    }
    Ok(())
}

/// Run ids need not be typed whole: a prefix no other run shares works everywhere a run id is
/// taken (like git's commit ids); a shared one is refused with the candidates.
#[test]
fn a_unique_prefix_of_a_run_id_names_the_run_and_an_ambiguous_one_lists_the_candidates()
-> TestResult {
    let sb = Sandbox::new();
    let ws = crate::scheduler::ws(&sb, &[("a", &[], "echo from-a")], "");
    let first = sb.nestr(&ws, &["run", "op", "--json"]).ok().json()["run_id"]
        .as_str()
        .ok_or("id")?
        .to_string();
    let second = sb.nestr(&ws, &["run", "op", "--json"]).ok().json()["run_id"]
        .as_str()
        .ok_or("id")?
        .to_string();
    // Ids start with the time: the two share a prefix, and differ further on.
    let shared = first
        .chars()
        .zip(second.chars())
        .take_while(|(a, b)| a == b)
        .count();
    assert!(shared >= 4 && shared < first.len(), "{first} {second}");
    let unique = &second[..shared + 1];
    let logs = sb.nestr(&ws, &["logs", unique]).ok();
    assert!(logs.stdout.contains("from-a"), "{}", logs.stdout);
    let shown = sb.nestr(&ws, &["runs", "show", unique, "--json"]).ok();
    assert_eq!(shown.json()["run_id"], second.as_str());
    let ambiguous = sb.nestr(&ws, &["logs", &first[..shared]]).expect(2);
    assert!(
        ambiguous.stderr.contains(&first) && ambiguous.stderr.contains(&second),
        "{}",
        ambiguous.stderr
    );
    let none = sb.nestr(&ws, &["runs", "show", "zzz"]).expect(2);
    assert!(
        none.stderr.contains("there is no run `zzz`"),
        "{}",
        none.stderr
    );
    Ok(())
}

/// `nestr completions SHELL` prints a completion script that knows every subcommand; the bash one
/// is valid bash and completes `nestr ass` to `assemble`.
#[test]
fn completions_are_generated_for_each_shell() -> TestResult {
    let sb = Sandbox::new();
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let out = sb.nestr(sb.path(), &["completions", shell]).ok();
        for sub in ["assemble", "sync", "run", "logs", "serve", "completions"] {
            assert!(out.stdout.contains(sub), "{shell}: no `{sub}`");
        }
    }
    let script = sb.path().join("nestr.bash");
    std::fs::write(
        &script,
        sb.nestr(sb.path(), &["completions", "bash"]).ok().stdout,
    )?;
    let probe = std::process::Command::new("bash")
        .arg("-c")
        .arg(format!(
            "source {}; COMP_WORDS=(nestr ass); COMP_CWORD=1; _nestr nestr ass nestr; echo \"${{COMPREPLY[@]}}\"",
            script.display()
        ))
        .output()?;
    let words = String::from_utf8_lossy(&probe.stdout);
    assert!(
        probe.status.success(),
        "{}",
        String::from_utf8_lossy(&probe.stderr)
    );
    assert_eq!(words.trim(), "assemble", "{words}");
    sb.nestr(sb.path(), &["completions", "tcsh"]).expect(2);
    // The man page is roff with every subcommand; `man` can render it where man is installed.
    let page = sb.nestr(sb.path(), &["man"]).ok().stdout;
    assert!(
        page.starts_with(".ie") || page.contains(".TH nestr"),
        "{page}"
    );
    for sub in ["assemble", "sync", "run", "logs", "serve", "completions"] {
        assert!(page.contains(sub), "man: no `{sub}`");
    }
    Ok(())
}

#[test]
fn every_flag_and_subcommand_has_help_text() {
    use clap::CommandFactory;
    fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
        for arg in cmd.get_arguments() {
            let id = arg.get_id().as_str();
            if id == "help" || id == "version" || arg.is_positional() {
                continue;
            }
            if arg.get_help().is_none() {
                missing.push(format!("{path} --{}", arg.get_long().unwrap_or(id)));
            }
        }
        for sub in cmd.get_subcommands() {
            if sub.get_name() == "help" {
                continue;
            }
            let p = format!("{path} {}", sub.get_name());
            if sub.get_about().is_none() {
                missing.push(p.clone());
            }
            walk(sub, &p, missing);
        }
    }
    let mut missing = Vec::new();
    walk(&nestr::cli::Cli::command(), "nestr", &mut missing);
    assert!(missing.is_empty(), "no help text: {missing:?}");
}
