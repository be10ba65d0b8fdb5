//! assemble, sync, status and lock against real git repositories (bare remotes in temp folders),
//! through the real `nestr` binary.

use std::path::Path;

use crate::support::{Sandbox, TestResult, git, status_by_name};

fn three_repos(sb: &Sandbox) -> std::path::PathBuf {
    for name in ["alpha", "beta", "gamma"] {
        sb.remote(name);
    }
    sb.workspace(
        r#"
[workspace]
name = "t"

[repos.alpha]
url = "{remotes}/alpha.git"
branch = "main"

[repos.beta]
url = "file://{remotes}/beta.git"
branch = "main"

[repos.gamma]
url = "{remotes}/gamma.git"
path = "nested/gamma"
"#,
    )
}

fn head(dir: &Path) -> String {
    git(dir, &["rev-parse", "HEAD"])
}

#[test]
fn assemble_clones_in_parallel_and_is_idempotent() -> TestResult {
    let sb = Sandbox::new();
    let ws = three_repos(&sb);
    let run = sb.nestr(&ws, &["assemble", "-j", "3"]).ok();
    assert!(
        run.stdout.contains("3 repositories: 3 cloned"),
        "{}",
        run.stdout
    );
    for (repo, dir) in [
        ("alpha", "alpha"),
        ("beta", "beta"),
        ("gamma", "nested/gamma"),
    ] {
        assert_eq!(
            head(&ws.join(dir)),
            git(
                &sb.path().join(format!("remotes/{repo}.git")),
                &["rev-parse", "main"]
            )
        );
        assert_eq!(
            git(&ws.join(dir), &["rev-parse", "--abbrev-ref", "@{u}"]),
            "origin/main"
        );
    }
    assert!(
        !ws.join("nested")
            .read_dir()?
            .any(|e| e.is_ok_and(|e| e.file_name().to_string_lossy().starts_with(".nestr-clone")))
    );
    let again = sb.nestr(&ws, &["assemble", "--json"]).ok();
    let rows = again.json();
    assert!(
        rows.as_array()
            .is_some_and(|a| a.len() == 3 && a.iter().all(|r| r["result"] == "up_to_date")),
        "{rows}"
    );
    let status = sb.nestr(&ws, &["status", "--json"]).ok();
    for row in status.json().as_array().ok_or("array")? {
        assert_eq!(row["state"], "clean", "{row}");
    }
    Ok(())
}

#[test]
fn pinned_branch_tag_and_rev_are_checked_out() -> TestResult {
    let sb = Sandbox::new();
    let r = sb.remote("pins");
    let first = r.head();
    git(&r.work, &["tag", "v1"]);
    git(&r.work, &["push", "-q", "origin", "v1"]);
    let second = r.push_commit("second");
    git(&r.work, &["checkout", "-q", "-b", "dev"]);
    let dev = r.push_commit("on dev");
    let ws = sb.workspace(&format!(
        r#"
[workspace]
name = "pins"
[repos.b]
url = "{url}"
branch = "dev"
[repos.t]
url = "{url}"
tag = "v1"
[repos.r]
url = "{url}"
rev = "{second}"
[repos.d]
url = "{url}"
"#,
        url = r.url()
    ));
    sb.nestr(&ws, &["assemble"]).ok();
    assert_eq!(head(&ws.join("b")), dev);
    assert_eq!(
        git(&ws.join("b"), &["rev-parse", "--abbrev-ref", "@{u}"]),
        "origin/dev"
    );
    assert_eq!(head(&ws.join("t")), first);
    assert_eq!(head(&ws.join("r")), second);
    assert_eq!(
        git(&ws.join("d"), &["rev-parse", "--abbrev-ref", "HEAD"]),
        "main"
    );
    let status = status_by_name(&sb.nestr(&ws, &["status", "--json"]).ok());
    assert_eq!(status["b"]["branch"], "dev");
    assert_eq!(status["t"]["branch"], serde_json::Value::Null);
    assert_eq!(
        status["t"]["state"], "clean",
        "a checkout at its pinned tag is clean"
    );
    assert_eq!(status["r"]["state"], "clean");
    assert_eq!(status["r"]["head"], second.as_str());
    // The pin and whether HEAD is still at it, in JSON and in the table.
    assert_eq!(
        status["t"]["pin"],
        serde_json::json!({"kind": "tag", "value": "v1"})
    );
    assert_eq!(status["t"]["at_pin"], true);
    assert_eq!(status["r"]["pin"]["kind"], "rev");
    assert_eq!(status["r"]["at_pin"], true);
    assert_eq!(status["b"]["at_pin"], serde_json::Value::Null);
    let table = sb.nestr(&ws, &["status"]).ok().stdout;
    assert!(table.contains("tag v1"), "{table}");
    assert!(table.contains(&format!("rev {}", &second[..7])), "{table}");
    assert!(!table.contains("(detached)"), "{table}");
    git(&ws.join("t"), &["checkout", "-q", &second]);
    let moved = status_by_name(&sb.nestr(&ws, &["status", "--json"]).ok());
    assert_eq!(moved["t"]["at_pin"], false, "{}", moved["t"]);
    let table = sb.nestr(&ws, &["status"]).ok().stdout;
    assert!(table.contains("tag v1 (HEAD moved)"), "{table}");
    Ok(())
}

#[test]
fn behind_then_sync_fast_forwards_matching_git() -> TestResult {
    let sb = Sandbox::new();
    let ws = three_repos(&sb);
    sb.nestr(&ws, &["assemble"]).ok();
    let alpha = crate::support::Remote {
        name: "alpha".into(),
        work: sb.path().join("src/alpha"),
        bare: sb.path().join("remotes/alpha.git"),
    };
    alpha.push_commit("one");
    alpha.push_commit("two");
    let want = alpha.push_commit("three");
    git(&ws.join("alpha"), &["fetch", "-q"]);
    let counts = git(
        &ws.join("alpha"),
        &["rev-list", "--left-right", "--count", "HEAD...@{u}"],
    );
    let status = status_by_name(&sb.nestr(&ws, &["status", "--json"]).ok());
    assert_eq!(
        counts.split_whitespace().collect::<Vec<_>>(),
        vec![
            status["alpha"]["ahead"].to_string(),
            status["alpha"]["behind"].to_string()
        ],
        "nestr and git rev-list agree"
    );
    assert_eq!(status["alpha"]["behind"], 3);
    assert_eq!(status["alpha"]["state"], "behind");
    let run = sb.nestr(&ws, &["sync", "--json"]).ok();
    let rows = run.json();
    assert_eq!(rows[0]["result"], "updated", "{rows}");
    assert_eq!(head(&ws.join("alpha")), want);
    assert_eq!(
        git(&ws.join("alpha"), &["status", "--porcelain"]),
        "",
        "work tree matches the new head"
    );
    let status = status_by_name(&sb.nestr(&ws, &["status", "--json"]).ok());
    assert_eq!(status["alpha"]["state"], "clean");
    Ok(())
}

#[test]
fn local_work_is_never_lost() -> TestResult {
    let sb = Sandbox::new();
    let ahead = sb.remote("ahead");
    let diverged = sb.remote("diverged");
    let dirty = sb.remote("dirty");
    let ws = sb.workspace(
        r#"
[workspace]
name = "t"
[repos.ahead]
url = "{remotes}/ahead.git"
[repos.diverged]
url = "{remotes}/diverged.git"
[repos.dirty]
url = "{remotes}/dirty.git"
"#,
    );
    sb.nestr(&ws, &["assemble"]).ok();
    // ahead: a local commit, nothing upstream.
    git(
        &ws.join("ahead"),
        &[
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@t",
            "commit",
            "-q",
            "--allow-empty",
            "-m",
            "local",
        ],
    );
    let ahead_head = head(&ws.join("ahead"));
    // diverged: a local commit and an upstream one.
    git(
        &ws.join("diverged"),
        &[
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@t",
            "commit",
            "-q",
            "--allow-empty",
            "-m",
            "local",
        ],
    );
    let diverged_head = head(&ws.join("diverged"));
    diverged.push_commit("upstream");
    // dirty: modified and untracked files, and an upstream commit touching the same file.
    std::fs::write(ws.join("dirty/README.md"), "my precious edit\n")?;
    std::fs::write(ws.join("dirty/notes.txt"), "untracked notes\n")?;
    let dirty_head = head(&ws.join("dirty"));
    dirty.push_commit("upstream");
    let _ = ahead;

    let status = status_by_name(&sb.nestr(&ws, &["status", "--json"]).ok());
    assert_eq!(status["ahead"]["state"], "ahead");
    assert_eq!(status["ahead"]["ahead"], 1);
    assert_eq!(status["dirty"]["dirty"], true);
    assert_eq!(status["dirty"]["modified"], 1);
    assert_eq!(status["dirty"]["untracked"], 1);

    let run = sb.nestr(&ws, &["sync", "--json"]).ok();
    let rows: std::collections::HashMap<String, serde_json::Value> = run
        .json()
        .as_array()
        .ok_or("array")?
        .iter()
        .map(|r| {
            (
                r["name"].as_str().unwrap_or_default().to_string(),
                r.clone(),
            )
        })
        .collect();
    assert_eq!(rows["ahead"]["result"], "skipped");
    assert!(
        rows["ahead"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("ahead") && m.contains("push"))
    );
    assert_eq!(rows["diverged"]["result"], "skipped");
    assert!(
        rows["diverged"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("diverged") && m.contains("rebase or merge"))
    );
    assert_eq!(rows["dirty"]["result"], "skipped");
    assert!(
        rows["dirty"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("dirty") && m.contains("commit or stash"))
    );
    assert_eq!(head(&ws.join("ahead")), ahead_head);
    assert_eq!(head(&ws.join("diverged")), diverged_head);
    assert_eq!(head(&ws.join("dirty")), dirty_head);
    assert_eq!(
        std::fs::read_to_string(ws.join("dirty/README.md"))?,
        "my precious edit\n"
    );
    assert_eq!(
        std::fs::read_to_string(ws.join("dirty/notes.txt"))?,
        "untracked notes\n"
    );
    let status = status_by_name(&sb.nestr(&ws, &["status", "--json"]).ok());
    assert_eq!(status["diverged"]["state"], "diverged");
    assert_eq!(
        (
            status["diverged"]["ahead"].as_u64(),
            status["diverged"]["behind"].as_u64()
        ),
        (Some(1), Some(1))
    );
    assert_eq!(status["dirty"]["behind"], 1);
    Ok(())
}

#[test]
fn untracked_files_do_not_block_but_are_never_overwritten() -> TestResult {
    let sb = Sandbox::new();
    let r = sb.remote("u");
    let ws = sb.workspace("[workspace]\nname = \"t\"\n[repos.u]\nurl = \"{remotes}/u.git\"\n");
    sb.nestr(&ws, &["assemble"]).ok();
    std::fs::write(ws.join("u/scratch.txt"), "mine\n")?;
    let want = r.push_commit("upstream");
    sb.nestr(&ws, &["sync"]).ok();
    assert_eq!(
        head(&ws.join("u")),
        want,
        "an unrelated untracked file does not block"
    );
    // Now upstream adds a file that exists untracked locally.
    std::fs::write(r.work.join("NEWFILE"), "upstream\n")?;
    git(&r.work, &["add", "-A"]);
    git(&r.work, &["commit", "-qm", "add NEWFILE"]);
    git(&r.work, &["push", "-q", "origin", "HEAD"]);
    std::fs::write(ws.join("u/NEWFILE"), "local, untracked\n")?;
    let before = head(&ws.join("u"));
    let run = sb.nestr(&ws, &["sync", "--json"]).ok();
    assert_eq!(run.json()[0]["result"], "skipped", "{}", run.stdout);
    assert_eq!(head(&ws.join("u")), before);
    assert_eq!(
        std::fs::read_to_string(ws.join("u/NEWFILE"))?,
        "local, untracked\n"
    );
    Ok(())
}

#[test]
fn missing_folder_is_recloned_and_foreign_folders_are_untouched() -> TestResult {
    let sb = Sandbox::new();
    sb.remote("mine");
    let other = sb.remote("other");
    let ws = sb.workspace(
        "[workspace]\nname = \"t\"\n[repos.mine]\nurl = \"{remotes}/mine.git\"\n[repos.taken]\nurl = \"{remotes}/mine.git\"\n[repos.junk]\nurl = \"{remotes}/mine.git\"\n",
    );
    // `taken` already holds a clone of another repository, `junk` a plain folder with a file.
    git(
        sb.path(),
        &[
            "clone",
            "-q",
            &other.url(),
            ws.join("taken").to_str().ok_or("utf8")?,
        ],
    );
    std::fs::create_dir_all(ws.join("junk"))?;
    std::fs::write(ws.join("junk/keep.txt"), "keep me\n")?;
    let taken_head = head(&ws.join("taken"));
    let run = sb.nestr(&ws, &["assemble"]).expect(1);
    assert!(run.stdout.contains("is a clone of"), "{}", run.stdout);
    assert!(
        run.stdout.contains("is not a git repository"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("1 cloned") && run.stdout.contains("2 failed"),
        "{}",
        run.stdout
    );
    assert_eq!(head(&ws.join("taken")), taken_head);
    assert_eq!(
        git(&ws.join("taken"), &["remote", "get-url", "origin"]),
        other.url()
    );
    assert_eq!(
        std::fs::read_to_string(ws.join("junk/keep.txt"))?,
        "keep me\n"
    );
    assert_eq!(std::fs::read_dir(ws.join("junk"))?.count(), 1);

    std::fs::remove_dir_all(ws.join("mine"))?;
    let status = status_by_name(&sb.nestr(&ws, &["status", "--json"]).ok());
    assert_eq!(status["mine"]["state"], "missing");
    assert_eq!(status["mine"]["head"], serde_json::Value::Null);
    sb.nestr(&ws, &["assemble"]).expect(1);
    assert!(ws.join("mine/.git").is_dir(), "re-cloned");
    Ok(())
}

#[test]
fn symlinked_path_leaving_the_workspace_is_refused() -> TestResult {
    let sb = Sandbox::new();
    sb.remote("a");
    let ws = sb.workspace(
        "[workspace]\nname = \"t\"\n[repos.a]\nurl = \"{remotes}/a.git\"\npath = \"link/a\"\n",
    );
    let outside = sb.path().join("outside");
    std::fs::create_dir_all(&outside)?;
    std::os::unix::fs::symlink(&outside, ws.join("link"))?;
    let run = sb.nestr(&ws, &["assemble"]).expect(1);
    assert!(
        run.stdout.contains("leads outside the workspace folder"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("nestr.toml:3:"),
        "names the manifest line: {}",
        run.stdout
    );
    assert_eq!(
        std::fs::read_dir(&outside)?.count(),
        0,
        "nothing written outside"
    );
    Ok(())
}

#[test]
fn atomic_sync_updates_nothing_when_a_fetch_fails() -> TestResult {
    let sb = Sandbox::new();
    let good = sb.remote("good");
    let gone = sb.remote("gone");
    let ws = sb.workspace(
        "[workspace]\nname = \"t\"\n[repos.good]\nurl = \"{remotes}/good.git\"\n[repos.gone]\nurl = \"{remotes}/gone.git\"\n",
    );
    sb.nestr(&ws, &["assemble"]).ok();
    let before = head(&ws.join("good"));
    good.push_commit("new");
    std::fs::rename(&gone.bare, sb.path().join("moved-away.git"))?;
    let run = sb.nestr(&ws, &["sync", "--atomic", "--json"]).expect(1);
    let rows = run.json();
    assert_eq!(rows[0]["result"], "skipped", "{rows}");
    assert!(
        rows[0]["message"]
            .as_str()
            .is_some_and(|m| m.contains("--atomic") && m.contains("gone"))
    );
    assert_eq!(rows[1]["result"], "failed");
    assert_eq!(head(&ws.join("good")), before, "nothing updated");
    // Without --atomic the reachable one is updated.
    sb.nestr(&ws, &["sync"]).expect(1);
    assert_eq!(head(&ws.join("good")), good.head());
    Ok(())
}

#[test]
fn lock_then_locked_checks_out_the_locked_commits() -> TestResult {
    let sb = Sandbox::new();
    let a = sb.remote("a");
    let t = sb.remote("t");
    git(&t.work, &["tag", "v1"]);
    git(&t.work, &["push", "-q", "origin", "v1"]);
    let manifest = "[workspace]\nname = \"t\"\n[repos.a]\nurl = \"{remotes}/a.git\"\nbranch = \"main\"\n[repos.t]\nurl = \"{remotes}/t.git\"\ntag = \"v1\"\n";
    let ws = sb.workspace(manifest);
    sb.nestr(&ws, &["assemble"]).ok();
    sb.nestr(&ws, &["lock"]).ok();
    let locked_a = a.head();
    let lock = std::fs::read_to_string(ws.join("nestr.lock"))?;
    assert!(lock.contains(&locked_a), "{lock}");
    let moved = a.push_commit("after the lock");

    // sync --locked fetches but stays at the locked commit.
    sb.nestr(&ws, &["sync", "--locked"]).ok();
    assert_eq!(head(&ws.join("a")), locked_a);
    // plain sync moves on; sync --locked brings it back (nothing is lost: it is all upstream).
    sb.nestr(&ws, &["sync"]).ok();
    assert_eq!(head(&ws.join("a")), moved);
    sb.nestr(&ws, &["sync", "--locked"]).ok();
    assert_eq!(head(&ws.join("a")), locked_a);
    assert_eq!(
        git(&ws.join("a"), &["rev-parse", "--abbrev-ref", "HEAD"]),
        "main",
        "still on its branch"
    );

    // A fresh workspace with the same manifest and lock file assembles at the locked commits.
    let ws2 = sb.workspace_at("ws2", manifest);
    std::fs::copy(ws.join("nestr.lock"), ws2.join("nestr.lock"))?;
    sb.nestr(&ws2, &["assemble", "--locked"]).ok();
    assert_eq!(head(&ws2.join("a")), locked_a);
    assert_eq!(head(&ws2.join("t")), t.rev("v1"));
    let status = status_by_name(&sb.nestr(&ws2, &["status", "--json"]).ok());
    assert_eq!(
        status["a"]["behind"], 1,
        "the branch tracks its upstream, one commit behind"
    );

    // A lock file without an entry for a repository is a usage error.
    std::fs::write(
        ws2.join("nestr.lock"),
        "version = 1\n[repos.a]\ncommit = \"".to_string() + &locked_a + "\"\n",
    )?;
    let run = sb.nestr(&ws2, &["sync", "--locked"]).expect(2);
    assert!(
        run.stderr.contains("no entry for repository `t`"),
        "{}",
        run.stderr
    );
    Ok(())
}

#[test]
fn pinned_tag_moving_upstream_moves_a_clean_checkout() -> TestResult {
    let sb = Sandbox::new();
    let r = sb.remote("t");
    git(&r.work, &["tag", "release"]);
    git(&r.work, &["push", "-q", "origin", "release"]);
    let ws = sb.workspace(
        "[workspace]\nname = \"t\"\n[repos.t]\nurl = \"{remotes}/t.git\"\ntag = \"release\"\n",
    );
    sb.nestr(&ws, &["assemble"]).ok();
    let next = r.push_commit("next");
    git(&r.work, &["tag", "-f", "release"]);
    git(&r.work, &["push", "-q", "-f", "origin", "release"]);
    let rows = sb.nestr(&ws, &["sync", "--json"]).ok().json();
    assert_eq!(rows[0]["result"], "updated", "{rows}");
    assert_eq!(head(&ws.join("t")), next);
    Ok(())
}

#[test]
fn credentials_never_appear_in_output_or_store() -> TestResult {
    let sb = Sandbox::new();
    sb.remote("ok");
    // Port 9 on loopback: connection refused at once; the credentials are in the URL.
    let ws = sb.workspace(
        "[workspace]\nname = \"t\"\n[repos.ok]\nurl = \"{remotes}/ok.git\"\n[repos.secret]\nurl = \"http://deploy-bot:s3cr3t-t0ken@127.0.0.1:9/acme/x.git\"\n",
    );
    let run = sb.nestr(&ws, &["assemble"]).expect(1);
    assert!(!run.all().contains("s3cr3t-t0ken"), "{}", run.all());
    assert!(
        run.all().contains("127.0.0.1:9"),
        "the host is still named: {}",
        run.all()
    );
    let sync = sb.nestr(&ws, &["sync", "--json"]).expect(1);
    assert!(!sync.all().contains("s3cr3t-t0ken"), "{}", sync.all());
    let status = sb.nestr(&ws, &["status"]).ok();
    assert!(!status.all().contains("s3cr3t-t0ken"));
    for entry in std::fs::read_dir(ws.join(".nestr"))? {
        let bytes = std::fs::read(entry?.path())?;
        assert!(
            !String::from_utf8_lossy(&bytes).contains("s3cr3t-t0ken"),
            "store holds the token"
        );
    }
    // A manifest error on that line shows it masked too.
    std::fs::write(
        ws.join("nestr.toml"),
        "[workspace]\nname = \"t\"\n[repos.secret]\nurl = \"http://deploy-bot:s3cr3t-t0ken@127.0.0.1:9/x.git\"\nbranch = \"a\"\ntag = \"b\"\n",
    )?;
    let bad = sb.nestr(&ws, &["status"]).expect(2);
    assert!(!bad.all().contains("s3cr3t-t0ken"), "{}", bad.all());
    Ok(())
}

#[test]
fn results_are_recorded_in_the_store() -> TestResult {
    let sb = Sandbox::new();
    let ws = three_repos(&sb);
    sb.nestr(&ws, &["assemble"]).ok();
    sb.nestr(&ws, &["sync"]).ok();
    let conn = rusqlite::Connection::open(ws.join(".nestr/state.db"))?;
    let repos: i64 = conn.query_row(
        "SELECT count(*) FROM repos WHERE head IS NOT NULL",
        [],
        |r| r.get(0),
    )?;
    assert_eq!(repos, 3);
    let events: Vec<(String, String)> = conn
        .prepare("SELECT action, result FROM sync_events WHERE repo = 'alpha' ORDER BY id")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    assert_eq!(
        events,
        vec![
            ("assemble".into(), "cloned".into()),
            ("sync".into(), "up_to_date".into())
        ]
    );
    let journal: String = conn.query_row("PRAGMA journal_mode", [], |r| r.get(0))?;
    assert_eq!(journal, "wal");
    Ok(())
}

#[test]
fn a_newer_database_is_refused_with_exit_3() -> TestResult {
    let sb = Sandbox::new();
    let ws = three_repos(&sb);
    sb.nestr(&ws, &["assemble"]).ok();
    let conn = rusqlite::Connection::open(ws.join(".nestr/state.db"))?;
    conn.pragma_update(None, "user_version", 4242)?;
    drop(conn);
    let run = sb.nestr(&ws, &["sync"]).expect(3);
    assert!(run.stderr.contains("schema version 4242"), "{}", run.stderr);
    assert!(run.stderr.contains("never downgrades"), "{}", run.stderr);
    let conn = rusqlite::Connection::open(ws.join(".nestr/state.db"))?;
    let v: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    assert_eq!(v, 4242, "left as it was");
    Ok(())
}

/// A loopback HTTP server that answers every request with 401, for at most `limit` connections.
fn unauthorized_server(limit: usize) -> std::io::Result<(u16, std::thread::JoinHandle<usize>)> {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    let handle = std::thread::spawn(move || {
        let mut served = 0;
        for stream in listener.incoming().take(limit) {
            let Ok(mut stream) = stream else { break };
            let _ = stream.set_read_timeout(Some(std::time::Duration::from_secs(5)));
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf);
            let _ = stream.write_all(
                b"HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic realm=\"nestr-test\"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            );
            served += 1;
        }
        served
    });
    Ok((port, handle))
}

#[test]
fn auth_failure_fails_fast_without_prompting() -> TestResult {
    let sb = Sandbox::new();
    sb.remote("ok");
    let (port, server) = unauthorized_server(1000)?;
    let ws = sb.workspace(&format!(
        "[workspace]\nname = \"t\"\n[repos.ok]\nurl = \"{{remotes}}/ok.git\"\n[repos.private]\nurl = \"http://bot:wr0ng-t0ken@127.0.0.1:{port}/acme/private.git\"\n[repos.anon]\nurl = \"http://127.0.0.1:{port}/acme/anon.git\"\n"
    ));
    let started = std::time::Instant::now();
    // stdin is closed: a prompt would fail or hang, never succeed.
    let run = sb.nestr(&ws, &["assemble", "--json"]).expect(1);
    assert!(
        started.elapsed() < std::time::Duration::from_secs(30),
        "failed fast"
    );
    let rows = run.json();
    assert_eq!(rows[0]["result"], "cloned", "the others finish: {rows}");
    for i in [1, 2] {
        assert_eq!(rows[i]["result"], "failed");
        let m = rows[i]["message"].as_str().unwrap_or_default();
        assert!(
            m.contains("authentication failed") && m.contains("never prompts"),
            "{m}"
        );
    }
    assert!(!run.all().contains("wr0ng-t0ken"));
    // The server thread stays blocked in accept and ends with the test binary.
    drop(server);
    Ok(())
}

#[test]
fn a_missing_local_path_remote_says_no_such_file_like_a_file_url() -> TestResult {
    let sb = Sandbox::new();
    let gone = sb.path().join("remotes/gone.git");
    let ws = sb.workspace(&format!(
        "[workspace]\nname = \"w\"\n[repos.plain]\nurl = \"{p}\"\n[repos.file]\nurl = \"file://{p}\"\n",
        p = gone.display()
    ));
    let run = sb.nestr(&ws, &["assemble", "--json"]).expect(1);
    let out = run.json();
    let rows = out.as_array().ok_or("rows")?;
    assert_eq!(rows.len(), 2, "{out}");
    for row in rows {
        let msg = row["message"].as_str().unwrap_or("");
        assert!(
            msg.contains("No such file or directory; check the url in nestr.toml")
                && msg.contains(&gone.display().to_string())
                && !msg.contains("unsupported URL protocol"),
            "{row}"
        );
    }
    Ok(())
}

/// `openssl s_server` on a loopback port with a self-signed certificate for 127.0.0.1, answering
/// every request with a status page (not git): enough to see whether a TLS handshake succeeds.
struct TlsServer {
    child: std::process::Child,
    port: u16,
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A self-signed certificate for 127.0.0.1 and its key, as `DIR/NAME.pem` and `DIR/NAME.key`.
fn self_signed(dir: &Path, name: &str) -> Result<(), Box<dyn std::error::Error>> {
    let out = std::process::Command::new("openssl")
        .current_dir(dir)
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        ])
        .args([
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.pem"),
        ])
        .args([
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ])
        .output()
        .map_err(|e| {
            format!("openssl is needed for this test (apt-get install -y openssl): {e}")
        })?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned().into());
    }
    Ok(())
}

fn tls_server(dir: &Path, name: &str) -> Result<TlsServer, Box<dyn std::error::Error>> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let child = std::process::Command::new("openssl")
        .current_dir(dir)
        .args([
            "s_server",
            "-quiet",
            "-www",
            "-accept",
            &format!("127.0.0.1:{port}"),
        ])
        .args([
            "-cert",
            &format!("{name}.pem"),
            "-key",
            &format!("{name}.key"),
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let server = TlsServer { child, port };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if std::time::Instant::now() > deadline {
            return Err("openssl s_server did not start listening".into());
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    Ok(server)
}

/// nestr initialises libgit2 without the CA bundle (loading it costs every command ~20 ms) and
/// loads it before the first connection: an HTTPS remote must still be verified against exactly
/// the bundle `SSL_CERT_FILE` names — trusted when it holds the server's certificate, refused
/// when it does not.
#[test]
fn https_remotes_are_verified_against_the_ca_bundle_loaded_before_connecting() -> TestResult {
    let sb = Sandbox::new();
    let certs = sb.path().join("certs");
    std::fs::create_dir_all(certs.join("empty-dir"))?;
    self_signed(&certs, "server")?;
    self_signed(&certs, "other")?;
    let server = tls_server(&certs, "server")?;
    let ws = sb.workspace(&format!(
        "[workspace]\nname = \"t\"\n[repos.app]\nurl = \"https://127.0.0.1:{}/app.git\"\n",
        server.port
    ));
    let assemble = |bundle: &str| {
        let file = certs.join(bundle).display().to_string();
        let dir = certs.join("empty-dir").display().to_string();
        let run = sb
            .nestr_with(
                &ws,
                &["assemble", "--json"],
                &[
                    ("SSL_CERT_FILE", file.as_str()),
                    ("SSL_CERT_DIR", dir.as_str()),
                ],
            )
            .expect(1);
        run.json()[0]["message"]
            .as_str()
            .unwrap_or_default()
            .to_lowercase()
    };
    // Trusted: the handshake succeeds and the clone fails only because the server is no git
    // server.
    let trusted = assemble("server.pem");
    assert!(
        !trusted.contains("certificate") && !trusted.contains("ssl"),
        "the bundle holding the server's certificate was not trusted: {trusted}"
    );
    // Not trusted: the same server, a bundle without its certificate.
    let refused = assemble("other.pem");
    assert!(
        refused.contains("certificate"),
        "a server outside the bundle was not refused for its certificate: {refused}"
    );
    drop(server);
    Ok(())
}
