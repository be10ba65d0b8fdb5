//! The operation cache, `affected` and provenance through the real binary on real git
//! repositories: an identical rerun is all hits with outputs restored byte for byte; each part of
//! the key changing misses with `cache explain` naming it; a failed step is never stored; a
//! corrupt or deleted blob is a miss, never a false hit; two processes fill the cache at once;
//! prune; `cache = true` on the deploy plugin is a manifest error; `affected` by base ref and by
//! two lock files across three repositories; provenance validated by the in-toto bindings; the
//! remote cache through a real nginx (two workspaces share results; a wrong credential, a corrupt
//! blob, a read-only client, a server that is down and one that never answers).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::support::{Nginx, Sandbox, TestResult, git, tools};

/// Two repositories: `lib` (service `lib`) and `app` (service `app`, depending on `lib`). Each
/// `build` runs `tool` (a script on PATH in `bin/`) and writes `out/result.txt`.
fn two_repo_ws(sb: &Sandbox, extra_grants: &str) -> PathBuf {
    sb.remote("lib");
    sb.remote("app");
    let bin = sb.path().join("bin");
    std::fs::create_dir_all(&bin).expect("bin");
    write_tool(&bin, "v1");
    two_repo_ws_at(sb, "ws", extra_grants, "")
}

/// Another workspace of the same two repositories in `dir`, its manifest ending with `tail`.
fn two_repo_ws_at(sb: &Sandbox, dir: &str, extra_grants: &str, tail: &str) -> PathBuf {
    let m = format!(
        r#"[workspace]
name = "cached"

[repos.lib]
url = "{{remotes}}/lib.git"
[repos.app]
url = "{{remotes}}/app.git"

[services.lib]
repo = "lib"
[services.app]
repo = "app"
depends_on = ["lib"]

[operations.build]
plugin = "command"
config = {{ run = [["tool"]] }}
cache = true
outputs = ["out/**"]

[plugins.command]
grants = {{ exec = ["tool"], env = ["PATH"{extra_grants}], fs = "read-write" }}
{tail}"#
    );
    let ws = sb.workspace_at(dir, &m);
    sb.nestr(&ws, &["assemble", "-q"]).ok();
    ws
}

/// `bin/tool`: prints its version and writes `out/result.txt` from README.md and `$FLAVOUR`;
/// fails while `bin/fail` exists (outside every key).
fn write_tool(bin: &Path, version: &str) {
    use std::os::unix::fs::PermissionsExt;
    let path = bin.join("tool");
    std::fs::write(
        &path,
        format!(
            "#!/bin/sh\necho \"tool {version} in $(basename \"$PWD\")\"\nmkdir -p out\n\
             {{ cat README.md; echo \"flavour=${{FLAVOUR-unset}}\"; }} > out/result.txt\n\
             printf '\\001\\002binary' > out/data.bin\n[ -e {fail} ] && exit 3\nexit 0\n",
            fail = bin.join("fail").display()
        ),
    )
    .expect("tool");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
}

fn path_env(sb: &Sandbox) -> String {
    format!(
        "{}:{}",
        sb.path().join("bin").display(),
        std::env::var("PATH").unwrap_or_default()
    )
}

/// Runs `build` with `env` (PATH includes `bin/`); returns (run id, status by service).
fn build(
    sb: &Sandbox,
    ws: &Path,
    args: &[&str],
    env: &[(&str, &str)],
) -> (String, HashMap<String, String>, i32) {
    let path = path_env(sb);
    let mut all_env: Vec<(&str, &str)> = vec![("PATH", path.as_str())];
    all_env.extend_from_slice(env);
    let mut full = vec!["run", "build", "--json"];
    full.extend_from_slice(args);
    let run = sb.nestr_with(ws, &full, &all_env);
    let v: serde_json::Value = serde_json::from_str(&run.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}\n{}", run.stdout, run.stderr));
    let statuses = v["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .map(|s| {
            (
                s["service"].as_str().unwrap_or_default().to_string(),
                s["status"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    (
        v["run_id"].as_str().unwrap_or_default().to_string(),
        statuses,
        run.code,
    )
}

fn explain(sb: &Sandbox, ws: &Path, run: &str, service: &str) -> String {
    sb.nestr(ws, &["cache", "explain", run, service])
        .ok()
        .stdout
}

fn statuses(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

#[test]
fn a_rerun_hits_and_every_key_part_that_changes_misses_and_is_explained() -> TestResult {
    let sb = Sandbox::new();
    let ws = two_repo_ws(&sb, ", \"FLAVOUR\"");
    let (_, first, code) = build(&sb, &ws, &[], &[]);
    assert_eq!(code, 0);
    assert_eq!(
        first,
        statuses(&[("lib", "succeeded"), ("app", "succeeded")])
    );
    let result = ws.join("lib/out/result.txt");
    let produced = std::fs::read(&result)?;
    let data = std::fs::read(ws.join("lib/out/data.bin"))?;
    // The outputs go; an identical rerun is all hits and restores them byte for byte.
    std::fs::remove_dir_all(ws.join("lib/out"))?;
    let (rerun, second, code) = build(&sb, &ws, &[], &[]);
    assert_eq!(code, 0, "a cached run exits 0");
    assert_eq!(second, statuses(&[("lib", "cached"), ("app", "cached")]));
    assert_eq!(std::fs::read(&result)?, produced, "output restored");
    assert_eq!(std::fs::read(ws.join("lib/out/data.bin"))?, data);
    let shown = sb
        .nestr(&ws, &["runs", "show", &rerun, "--json"])
        .ok()
        .json();
    let lib = &shown["steps"][0];
    assert_eq!(lib["cache"]["hit"], true, "{lib}");
    assert_eq!(lib["cache"]["source"], "local");
    assert!(lib["cache"]["key"].as_str().is_some_and(|k| k.len() == 64));
    let log = sb.nestr(&ws, &["logs", &rerun, "-s", "lib"]).ok().stdout;
    assert!(
        log.contains("cached") && log.contains("tool v1 in lib"),
        "{log}"
    );

    // Each part of the key, changed in turn: lib misses (and app, downstream), explain says why.
    // (what explain must name, the change, extra environment of the rerun)
    type Case<'a> = (&'a str, Box<dyn Fn() + 'a>, Vec<(&'a str, &'a str)>);
    let cases: Vec<Case> = vec![
        (
            "uncommitted file README.md",
            Box::new(|| std::fs::write(ws.join("lib/README.md"), "# lib, edited\n").expect("edit")),
            vec![],
        ),
        (
            "uncommitted file notes.txt is new",
            Box::new(|| std::fs::write(ws.join("lib/notes.txt"), "new\n").expect("untracked")),
            vec![],
        ),
        (
            "input file README.md changed",
            Box::new(|| {
                let lib = ws.join("lib");
                git(&lib, &["add", "README.md", "notes.txt"]);
                git(&lib, &["commit", "-qm", "edit"]);
            }),
            vec![],
        ),
        (
            "env FLAVOUR was unset, now empty",
            Box::new(|| {}),
            vec![("FLAVOUR", "")],
        ),
        (
            "program `tool`",
            Box::new(|| write_tool(&sb.path().join("bin"), "v2")),
            vec![("FLAVOUR", "")],
        ),
    ];
    for (want, change, env) in &cases {
        change();
        let (run, st, code) = build(&sb, &ws, &[], env);
        assert_eq!(code, 0);
        assert_eq!(
            st,
            statuses(&[("lib", "succeeded"), ("app", "succeeded")]),
            "after: {want}"
        );
        let why = explain(&sb, &ws, &run, "lib");
        assert!(why.contains(want), "explain lacks {want:?}:\n{why}");
        let why_app = explain(&sb, &ws, &run, "app");
        assert!(
            why_app.contains("dependency `lib`'s key changed"),
            "{why_app}"
        );
        // The same again: hits.
        let (_, st, _) = build(&sb, &ws, &[], env);
        assert_eq!(
            st,
            statuses(&[("lib", "cached"), ("app", "cached")]),
            "{want}"
        );
    }
    // Config and grants, in the manifest.
    let manifest = ws.join("nestr.toml");
    let text = std::fs::read_to_string(&manifest)?;
    std::fs::write(
        &manifest,
        text.replace(r#"run = [["tool"]]"#, r#"run = [["tool", "again"]]"#),
    )?;
    let (run, st, _) = build(&sb, &ws, &[], &[("FLAVOUR", "")]);
    assert_eq!(st["lib"], "succeeded");
    assert!(explain(&sb, &ws, &run, "lib").contains("config `run` changed"));
    let text = std::fs::read_to_string(&manifest)?;
    std::fs::write(
        &manifest,
        text.replace(r#""FLAVOUR"]"#, r#""FLAVOUR", "HOME"]"#),
    )?;
    let (run, st, _) = build(&sb, &ws, &[], &[("FLAVOUR", "")]);
    assert_eq!(st["lib"], "succeeded");
    let why = explain(&sb, &ws, &run, "lib");
    assert!(why.contains("grant `env` changed"), "{why}");
    // --against an older run names everything between.
    let against = sb
        .nestr(
            &ws,
            &[
                "cache",
                "explain",
                &run,
                "lib",
                "--against",
                &rerun,
                "--json",
            ],
        )
        .ok()
        .json();
    let diffs = against["differences"].to_string();
    assert!(
        diffs.contains("config") && diffs.contains("program"),
        "{diffs}"
    );
    // A change only in app: lib hits, app misses.
    std::fs::write(ws.join("app/README.md"), "# app, edited\n")?;
    let (_, st, _) = build(&sb, &ws, &[], &[("FLAVOUR", "")]);
    assert_eq!(st, statuses(&[("lib", "cached"), ("app", "succeeded")]));
    // --no-cache and --cache read|write.
    let (_, st, _) = build(&sb, &ws, &["--no-cache"], &[("FLAVOUR", "")]);
    assert_eq!(st, statuses(&[("lib", "succeeded"), ("app", "succeeded")]));
    std::fs::write(ws.join("app/README.md"), "# app, again\n")?;
    let (_, st, _) = build(&sb, &ws, &["--cache", "read"], &[("FLAVOUR", "")]);
    assert_eq!(st, statuses(&[("lib", "cached"), ("app", "succeeded")]));
    let (_, st, _) = build(&sb, &ws, &["--cache", "read"], &[("FLAVOUR", "")]);
    assert_eq!(st["app"], "succeeded", "read mode stored nothing");
    let (_, st, _) = build(&sb, &ws, &["--cache", "write"], &[("FLAVOUR", "")]);
    assert_eq!(st["lib"], "succeeded", "write mode runs everything");
    let (_, st, _) = build(&sb, &ws, &[], &[("FLAVOUR", "")]);
    assert_eq!(st["app"], "cached", "write mode stored it");
    let stats = sb.nestr(&ws, &["cache", "stats", "--json"]).ok().json();
    assert!(stats["entries"].as_i64().is_some_and(|n| n > 2), "{stats}");
    assert!(stats["hits"].as_i64().is_some_and(|n| n > 5), "{stats}");
    Ok(())
}

#[test]
fn a_failed_step_is_never_stored_and_a_bad_blob_is_a_miss_not_a_hit() -> TestResult {
    let sb = Sandbox::new();
    let ws = two_repo_ws(&sb, "");
    std::fs::write(sb.path().join("bin/fail"), "")?;
    let (_, st, code) = build(&sb, &ws, &["-s", "lib"], &[]);
    assert_eq!((code, st["lib"].as_str()), (1, "failed"));
    // The same key (the flag is outside it): not a hit, since a failure is never stored.
    std::fs::remove_file(sb.path().join("bin/fail"))?;
    let (_, st, _) = build(&sb, &ws, &["-s", "lib"], &[]);
    assert_eq!(st["lib"], "succeeded");
    let (_, st, _) = build(&sb, &ws, &["-s", "lib"], &[]);
    assert_eq!(st["lib"], "cached");
    let blobs = ws.join(".nestr/cache/blobs");
    let files: Vec<PathBuf> = walk(&blobs);
    assert!(files.len() >= 3, "log and two outputs: {files:?}");
    // Corrupt every blob (valid zstd of other bytes), then delete them: each time a miss that
    // runs again and stores anew, then hits.
    for damage in ["corrupt", "delete"] {
        for f in walk(&blobs) {
            if damage == "corrupt" {
                std::fs::write(&f, zstd_of(b"not what the name says"))?;
            } else {
                std::fs::remove_file(&f)?;
            }
        }
        std::fs::remove_dir_all(ws.join("lib/out"))?;
        let (run, st, code) = build(&sb, &ws, &["-s", "lib"], &[]);
        assert_eq!((code, st["lib"].as_str()), (0, "succeeded"), "{damage}");
        assert!(
            ws.join("lib/out/result.txt").is_file(),
            "the step really ran"
        );
        let log = sb.nestr(&ws, &["logs", &run, "-s", "lib"]).ok().stdout;
        assert!(!log.contains("cached —"), "{log}");
        let (_, st, _) = build(&sb, &ws, &["-s", "lib"], &[]);
        assert_eq!(st["lib"], "cached", "{damage}: stored again");
    }
    // Prune to nothing: entries and blobs go, the next run misses.
    let pruned = sb
        .nestr(&ws, &["cache", "prune", "--max-size", "1", "--json"])
        .ok()
        .json();
    assert!(
        pruned["entries_removed"].as_u64().is_some_and(|n| n >= 1),
        "{pruned}"
    );
    assert!(walk(&blobs).is_empty(), "{:?}", walk(&blobs));
    let stats = sb.nestr(&ws, &["cache", "stats", "--json"]).ok().json();
    assert_eq!(stats["entries"], 0);
    let (_, st, _) = build(&sb, &ws, &["-s", "lib"], &[]);
    assert_eq!(st["lib"], "succeeded");
    sb.nestr(&ws, &["cache", "prune", "--older-than", "0s"])
        .ok();
    assert_eq!(
        sb.nestr(&ws, &["cache", "stats", "--json"]).ok().json()["entries"],
        0
    );
    Ok(())
}

#[test]
fn two_processes_fill_the_cache_at_once() -> TestResult {
    let sb = Sandbox::new();
    let ws = two_repo_ws(&sb, "");
    let path = path_env(&sb);
    let spawn = || {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_nestr"));
        cmd.current_dir(&ws)
            .args(["--color", "never", "-q", "run", "build"])
            .env("PATH", &path)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
        crate::support::isolate(&mut cmd, sb.path());
        cmd.spawn()
    };
    let children = vec![spawn()?, spawn()?, spawn()?];
    let mut errs = String::new();
    for c in children {
        let out = c.wait_with_output()?;
        assert!(out.status.success());
        errs.push_str(&String::from_utf8_lossy(&out.stderr));
    }
    // Each stored what it saw, even while another process rewrote the same outputs: every
    // entry matches its blobs, so the next run is all hits.
    let next = sb.nestr_with(&ws, &["run", "build", "--json"], &[("PATH", path.as_str())]);
    let v: serde_json::Value = serde_json::from_str(&next.stdout)?;
    let st: Vec<&str> = v["steps"]
        .as_array()
        .ok_or("steps")?
        .iter()
        .filter_map(|s| s["status"].as_str())
        .collect();
    assert_eq!(st, ["cached", "cached"], "{errs}\n{}", next.stderr);
    assert!(!next.stderr.contains("unusable"), "{}", next.stderr);
    assert!(ws.join("app/out/result.txt").is_file());
    Ok(())
}

#[test]
fn cache_on_the_deploy_plugin_is_a_manifest_error() -> TestResult {
    let sb = Sandbox::new();
    sb.remote("app");
    let ws = sb.workspace(
        "[workspace]\nname = \"d\"\n[repos.app]\nurl = \"{remotes}/app.git\"\n\
         [services.app]\nrepo = \"app\"\n[operations.deploy]\nplugin = \"http-deploy\"\n\
         config = { url = \"http://127.0.0.1:9/deploy\" }\ncache = true\n",
    );
    let run = sb.nestr(&ws, &["run", "deploy"]).expect(2);
    let text = run.all();
    assert!(text.contains("nestr.toml:10"), "{text}");
    assert!(text.contains("must not be cached"), "{text}");
    Ok(())
}

#[test]
fn affected_across_three_repositories_by_base_and_by_lock_files() -> TestResult {
    let sb = Sandbox::new();
    for r in ["lib", "app", "tools"] {
        sb.remote(r);
    }
    let ws = sb.workspace(
        "[workspace]\nname = \"aff\"\n[repos.lib]\nurl = \"{remotes}/lib.git\"\n\
         [repos.app]\nurl = \"{remotes}/app.git\"\n[repos.tools]\nurl = \"{remotes}/tools.git\"\n\
         [services.lib]\nrepo = \"lib\"\n[services.app]\nrepo = \"app\"\ndepends_on = [\"lib\"]\n\
         [services.web]\nrepo = \"app\"\ndepends_on = [\"app\"]\n[services.tools]\nrepo = \"tools\"\n\
         [operations.build]\nplugin = \"command\"\nconfig = { run = [[\"true\"]] }\n\
         [plugins.command]\ngrants = { exec = [\"true\"] }\n",
    );
    sb.nestr(&ws, &["assemble", "-q"]).ok();
    let names = |v: &serde_json::Value| -> Vec<String> {
        v["services"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|s| s["name"].as_str().unwrap_or_default().to_string())
                    .collect()
            })
            .unwrap_or_default()
    };
    let none = sb.nestr(&ws, &["affected", "--json"]).ok().json();
    assert!(names(&none).is_empty(), "{none}");
    sb.nestr(&ws, &["lock"]).ok();
    std::fs::copy(ws.join("nestr.lock"), sb.path().join("old.lock"))?;
    // A local commit in lib (not pushed): lib, and app and web downstream in another repository.
    std::fs::write(ws.join("lib/src.txt"), "code\n")?;
    git(&ws.join("lib"), &["add", "src.txt"]);
    git(&ws.join("lib"), &["commit", "-qm", "code"]);
    let v = sb.nestr(&ws, &["affected", "--json"]).ok().json();
    assert_eq!(names(&v), ["lib", "app", "web"], "{v}");
    let lib = &v["services"][0];
    assert_eq!(lib["files"], serde_json::json!(["src.txt"]));
    assert!(
        v["services"][2]["why"]
            .as_str()
            .is_some_and(|w| w.contains("`app`"))
    );
    let v = sb
        .nestr(&ws, &["affected", "--base", "origin/main", "--json"])
        .ok()
        .json();
    assert_eq!(names(&v), ["lib", "app", "web"]);
    let text = sb.nestr(&ws, &["affected"]).ok().stdout;
    assert!(
        text.contains("src.txt") && text.contains("depends on"),
        "{text}"
    );
    // Between two lock files: only what changed between them.
    sb.nestr(&ws, &["lock"]).ok();
    std::fs::copy(ws.join("nestr.lock"), sb.path().join("mid.lock"))?;
    std::fs::write(ws.join("tools/t.txt"), "t\n")?;
    git(&ws.join("tools"), &["add", "t.txt"]);
    git(&ws.join("tools"), &["commit", "-qm", "t"]);
    sb.nestr(&ws, &["lock"]).ok();
    let new = ws.join("nestr.lock");
    let mid = sb.path().join("mid.lock");
    let old = sb.path().join("old.lock");
    let v = sb
        .nestr(
            &ws,
            &[
                "affected",
                "--from",
                mid.to_str().ok_or("utf8")?,
                "--to",
                new.to_str().ok_or("utf8")?,
                "--json",
            ],
        )
        .ok()
        .json();
    assert_eq!(names(&v), ["tools"], "{v}");
    let v = sb
        .nestr(
            &ws,
            &["affected", "--from", old.to_str().ok_or("utf8")?, "--json"],
        )
        .ok()
        .json();
    assert_eq!(names(&v), ["lib", "app", "web", "tools"], "{v}");
    // run --affected runs exactly that set.
    let run = sb
        .nestr(
            &ws,
            &[
                "run",
                "build",
                "--affected",
                "--from",
                mid.to_str().ok_or("utf8")?,
                "--json",
            ],
        )
        .ok()
        .json();
    let ran: Vec<&str> = run["steps"]
        .as_array()
        .ok_or("steps")?
        .iter()
        .filter_map(|s| s["service"].as_str())
        .collect();
    assert_eq!(ran, ["tools"]);
    // A base no repository has is a clear error.
    let bad = sb
        .nestr(&ws, &["affected", "--base", "no-such-ref"])
        .expect(2);
    assert!(
        bad.stderr.contains("no revision `no-such-ref`"),
        "{}",
        bad.stderr
    );
    Ok(())
}

#[test]
fn provenance_is_an_in_toto_statement_the_bindings_validate() -> TestResult {
    let tools = tools()?;
    let python = tools.get("python").ok_or("no python from api-tools.sh")?;
    let sb = Sandbox::new();
    let ws = two_repo_ws(&sb, "");
    let (first, _, _) = build(&sb, &ws, &[], &[]);
    let (cached, _, _) = build(&sb, &ws, &[], &[]);
    let check =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/tools/check-provenance.py");
    for run in [&first, &cached] {
        let out = sb.nestr(&ws, &["runs", "provenance", run]).ok().stdout;
        let mut child = std::process::Command::new(python)
            .arg(&check)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()?;
        use std::io::Write;
        child
            .stdin
            .take()
            .ok_or("stdin")?
            .write_all(out.as_bytes())?;
        let done = child.wait_with_output()?;
        assert!(
            done.status.success(),
            "{}\n{out}",
            String::from_utf8_lossy(&done.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&done.stdout).trim(), "2");
    }
    let out = sb
        .nestr(&ws, &["runs", "provenance", &first, "-s", "lib"])
        .ok()
        .stdout;
    let st: serde_json::Value = serde_json::from_str(out.trim())?;
    let subjects: Vec<&str> = st["subject"]
        .as_array()
        .ok_or("subject")?
        .iter()
        .filter_map(|s| s["name"].as_str())
        .collect();
    assert_eq!(subjects, ["out/data.bin", "out/result.txt"]);
    let pred = &st["predicate"];
    let argv = &pred["runDetails"]["byproducts"][0]["annotations"]["argv"];
    assert!(
        argv[0].as_str().is_some_and(|a| a.ends_with("/bin/tool")),
        "{argv}"
    );
    let deps = pred["buildDefinition"]["resolvedDependencies"].to_string();
    assert!(
        deps.contains("gitCommit")
            && deps.contains("program:tool")
            && deps.contains("plugin:command"),
        "{deps}"
    );
    // Names of environment variables, never their values.
    assert_eq!(
        pred["buildDefinition"]["internalParameters"]["env"],
        serde_json::json!(["PATH"])
    );
    assert!(!out.contains(&path_env(&sb)), "PATH's value leaked");
    Ok(())
}

#[test]
fn a_rebuilt_plugin_misses_and_explain_names_it() -> TestResult {
    let sb = Sandbox::new();
    sb.remote("lib");
    let wasm = sb.path().join("noop.wasm");
    std::fs::copy(
        Path::new(env!("NESTR_PLUGIN_WASM_DIR")).join("noop.wasm"),
        &wasm,
    )?;
    let ws = sb.workspace(&format!(
        "[workspace]\nname = \"rebuilt\"\n[repos.lib]\nurl = \"{{remotes}}/lib.git\"\n\
         [services.lib]\nrepo = \"lib\"\n[operations.check]\nplugin = \"noop\"\ncache = true\n\
         [plugins.noop]\npath = \"{}\"\n",
        wasm.display()
    ));
    sb.nestr(&ws, &["assemble", "-q"]).ok();
    let status = |sb: &Sandbox| {
        let v = sb.nestr(&ws, &["run", "check", "--json"]).ok().json();
        (
            v["run_id"].as_str().unwrap_or_default().to_string(),
            v["steps"][0]["status"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        )
    };
    assert_eq!(status(&sb).1, "succeeded");
    assert_eq!(status(&sb).1, "cached");
    // The same plugin with one more custom section: another component, the same behaviour.
    let mut bytes = std::fs::read(&wasm)?;
    let name = b"rebuilt";
    let payload = b"2026-12-02";
    bytes.push(0); // custom section
    bytes.push(u8::try_from(1 + name.len() + payload.len())?);
    bytes.push(u8::try_from(name.len())?);
    bytes.extend_from_slice(name);
    bytes.extend_from_slice(payload);
    std::fs::write(&wasm, bytes)?;
    let (run, st) = status(&sb);
    assert_eq!(st, "succeeded", "a rebuilt plugin is a miss");
    let why = explain(&sb, &ws, &run, "lib");
    assert!(why.contains("plugin `noop` was rebuilt"), "{why}");
    assert_eq!(status(&sb).1, "cached");
    Ok(())
}

/// Runs `build` in `ws` with `env`; returns (status and cache source by service, stderr).
fn remote_build(
    sb: &Sandbox,
    ws: &Path,
    env: &[(&str, &str)],
) -> (HashMap<String, (String, String)>, String) {
    let path = path_env(sb);
    let mut all_env: Vec<(&str, &str)> = vec![("PATH", path.as_str())];
    all_env.extend_from_slice(env);
    sb.nestr(ws, &["assemble", "-q"]).ok();
    let run = sb.nestr_with(ws, &["run", "build", "--json"], &all_env);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let v: serde_json::Value = serde_json::from_str(&run.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}\n{}", run.stdout, run.stderr));
    let steps = v["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .map(|s| {
            (
                s["service"].as_str().unwrap_or_default().to_string(),
                (
                    s["status"].as_str().unwrap_or_default().to_string(),
                    s["cache"]["source"].as_str().unwrap_or("-").to_string(),
                ),
            )
        })
        .collect();
    (steps, run.stderr)
}

fn all(steps: &HashMap<String, (String, String)>, status: &str, source: &str) -> bool {
    steps.len() == 2 && steps.values().all(|(st, so)| st == status && so == source)
}

#[test]
fn the_remote_cache_through_real_nginx_shares_results_and_never_fails_a_run() -> TestResult {
    let sb = Sandbox::new();
    two_repo_ws(&sb, "");
    let token = "s3cret-token";
    let nginx = Nginx::start(&sb.path().join("nginx"), Some(token))?;
    let tail = format!(
        "\n[cache]\nremote = \"{}/\"\nremote_secret = \"CACHE_TOKEN\"\nremote_timeout = \"2s\"\n",
        nginx.url
    );
    let with_token = [("CACHE_TOKEN", token)];

    // The first workspace runs and uploads: two entries and their blobs.
    let one = two_repo_ws_at(&sb, "one", "", &tail);
    let (steps, err) = remote_build(&sb, &one, &with_token);
    assert!(all(&steps, "succeeded", "-"), "{steps:?}\n{err}");
    assert!(!err.contains("remote cache"), "{err}");
    let files = nginx.files();
    assert_eq!(
        files.iter().filter(|f| f.starts_with("ac/")).count(),
        2,
        "{files:?}"
    );
    assert!(
        files.iter().filter(|f| f.starts_with("cas/")).count() >= 3,
        "{files:?}"
    );

    // A second, separate workspace: every step is a hit from the remote, outputs restored.
    let two = two_repo_ws_at(&sb, "two", "", &tail);
    let (steps, err) = remote_build(&sb, &two, &with_token);
    assert!(all(&steps, "cached", "remote"), "{steps:?}\n{err}");
    for f in [
        "lib/out/result.txt",
        "lib/out/data.bin",
        "app/out/result.txt",
    ] {
        assert_eq!(
            std::fs::read(one.join(f))?,
            std::fs::read(two.join(f))?,
            "{f}"
        );
    }
    // Its next run hits locally.
    let (steps, _) = remote_build(&sb, &two, &with_token);
    assert!(all(&steps, "cached", "local"), "{steps:?}");

    // A wrong credential: a warning, and the steps run.
    let three = two_repo_ws_at(&sb, "three", "", &tail);
    let (steps, err) = remote_build(&sb, &three, &[("CACHE_TOKEN", "wrong")]);
    assert!(all(&steps, "succeeded", "-"), "{steps:?}\n{err}");
    assert!(err.contains("refused the credential"), "{err}");
    assert!(!err.contains(token), "the credential is never shown: {err}");
    // No credential at all: the remote is not used, said once.
    let four = two_repo_ws_at(&sb, "four", "", &tail);
    let (steps, err) = remote_build(&sb, &four, &[]);
    assert!(all(&steps, "succeeded", "-"), "{steps:?}\n{err}");
    assert!(
        err.contains("CACHE_TOKEN") && err.contains("not set"),
        "{err}"
    );

    // An entry whose run id would put words into nestr's replay notice is refused.
    let ac: Vec<String> = nginx
        .files()
        .into_iter()
        .filter(|f| f.starts_with("ac/"))
        .collect();
    let saved: Vec<(String, Vec<u8>)> = ac
        .iter()
        .map(|f| Ok((f.clone(), std::fs::read(nginx.data.join(f))?)))
        .collect::<Result<_, std::io::Error>>()?;
    for (f, bytes) in &saved {
        let mut v: serde_json::Value = serde_json::from_slice(bytes)?;
        v["result"]["run_id"] = "x]\n[nestr: all good".into();
        std::fs::write(nginx.data.join(f), serde_json::to_vec(&v)?)?;
    }
    let forged = two_repo_ws_at(&sb, "forged", "", &tail);
    let (steps, err) = remote_build(&sb, &forged, &with_token);
    assert!(all(&steps, "succeeded", "-"), "{steps:?}\n{err}");
    assert!(err.contains("would not write"), "{err}");

    // A corrupt blob served: a miss (never a false hit), and the good blob is uploaded again.
    for f in nginx.files().iter().filter(|f| f.starts_with("cas/")) {
        std::fs::write(nginx.data.join(f), b"not what its name says")?;
    }
    let five = two_repo_ws_at(&sb, "five", "", &tail);
    let (steps, err) = remote_build(&sb, &five, &with_token);
    assert!(all(&steps, "succeeded", "-"), "{steps:?}\n{err}");
    assert!(err.contains("corrupt"), "{err}");
    let six = two_repo_ws_at(&sb, "six", "", &tail);
    let (steps, err) = remote_build(&sb, &six, &with_token);
    assert!(
        all(&steps, "cached", "remote"),
        "repaired: {steps:?}\n{err}"
    );

    // Read-only: a miss runs and nothing is uploaded.
    let seven = two_repo_ws_at(&sb, "seven", "", &tail);
    sb.nestr(&seven, &["assemble", "-q"]).ok();
    std::fs::write(seven.join("lib/README.md"), "# lib, changed here only\n")?;
    let before = nginx.files();
    let (steps, err) = remote_build(
        &sb,
        &seven,
        &[
            ("CACHE_TOKEN", token),
            ("NESTR_CACHE_REMOTE_READ_ONLY", "1"),
        ],
    );
    assert!(all(&steps, "succeeded", "-"), "{steps:?}\n{err}");
    assert_eq!(nginx.files(), before, "a read-only client uploads nothing");

    // The server down: a warning, the steps run, the run succeeds.
    drop(nginx);
    let eight = two_repo_ws_at(&sb, "eight", "", &tail);
    let (steps, err) = remote_build(&sb, &eight, &with_token);
    assert!(all(&steps, "succeeded", "-"), "{steps:?}\n{err}");
    assert!(err.contains("cannot be reached"), "{err}");

    // A server that accepts and never answers: past remote_timeout, a warning and a miss.
    let silent = std::net::TcpListener::bind("127.0.0.1:0")?;
    let url = format!("http://{}", silent.local_addr()?);
    let held = std::thread::spawn(move || {
        let mut conns = Vec::new();
        for c in silent.incoming().take(4) {
            conns.push(c);
        }
        std::thread::sleep(std::time::Duration::from_secs(30));
        drop(conns);
    });
    let nine = two_repo_ws_at(&sb, "nine", "", &tail);
    let (steps, err) = remote_build(
        &sb,
        &nine,
        &[("CACHE_TOKEN", token), ("NESTR_CACHE_REMOTE", url.as_str())],
    );
    assert!(all(&steps, "succeeded", "-"), "{steps:?}\n{err}");
    assert!(err.contains("did not answer in time"), "{err}");
    drop(held);
    Ok(())
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        if e.path().is_dir() {
            out.extend(walk(&e.path()));
        } else {
            out.push(e.path());
        }
    }
    out
}

/// Bytes as a valid zstd frame (a blob that decompresses, to something else).
fn zstd_of(bytes: &[u8]) -> Vec<u8> {
    zstd::encode_all(bytes, 3).expect("zstd")
}
