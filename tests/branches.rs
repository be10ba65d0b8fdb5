//! Branches across repositories through the real binary on real git repositories: `nestr switch`
//! (create, switch, track a branch only the remote has, all or none when a repository has
//! uncommitted changes), `nestr push` (a new branch reaches the remote with its upstream set, up
//! to date, a non-fast-forward refused, a detached HEAD), and `nestr sync` following a feature
//! branch's upstream — also where the manifest pins another branch, which `status` shows.

use std::path::Path;

use crate::support::{Sandbox, TestResult, git};

const MANIFEST: &str = r#"[workspace]
name = "br"

[repos.alpha]
url = "{remotes}/alpha.git"
branch = "main"
[repos.beta]
url = "{remotes}/beta.git"
"#;

fn branch_of(dir: &Path) -> String {
    git(dir, &["rev-parse", "--abbrev-ref", "HEAD"])
}

#[test]
fn switch_creates_switches_and_refuses_all_or_none() -> TestResult {
    let sb = Sandbox::new();
    let alpha = sb.remote("alpha");
    sb.remote("beta");
    let ws = sb.workspace(MANIFEST);
    sb.nestr(&ws, &["assemble", "-q"]).ok();
    let out = sb
        .nestr(&ws, &["switch", "-c", "feature-x", "--json"])
        .ok()
        .json();
    let results: Vec<&str> = out
        .as_array()
        .ok_or("outcomes")?
        .iter()
        .filter_map(|o| o["result"].as_str())
        .collect();
    assert_eq!(results, ["created", "created"]);
    assert_eq!(branch_of(&ws.join("alpha")), "feature-x");
    assert_eq!(branch_of(&ws.join("beta")), "feature-x");
    // `status` says alpha is on a feature branch (its pin is main).
    let status = sb.nestr(&ws, &["status"]).ok().all();
    assert!(status.contains("feature-x (feature; pin main)"), "{status}");
    // A tracked change in one repository: refused, named, and no repository is switched.
    std::fs::write(ws.join("beta/README.md"), "changed\n")?;
    let refused = sb.nestr(&ws, &["switch", "main"]).expect(1);
    let text = refused.all();
    assert!(
        text.contains("beta: 1 uncommitted change (README.md)"),
        "{text}"
    );
    assert!(text.contains("nothing was switched"), "{text}");
    assert_eq!(branch_of(&ws.join("alpha")), "feature-x", "all or none");
    assert_eq!(
        std::fs::read_to_string(ws.join("beta/README.md"))?,
        "changed\n"
    );
    // An untracked file does not block; the switch goes through.
    git(&ws.join("beta"), &["checkout", "-q", "--", "README.md"]);
    std::fs::write(ws.join("alpha/notes.txt"), "mine\n")?;
    let back = sb.nestr(&ws, &["switch", "main", "--json"]).ok().json();
    assert_eq!(back[0]["result"], "switched");
    assert!(ws.join("alpha/notes.txt").exists());
    // A branch only origin has: made locally, tracking it.
    git(&alpha.work, &["switch", "-q", "-c", "topic"]);
    git(&alpha.work, &["push", "-q", "origin", "topic"]);
    sb.nestr(&ws, &["sync", "-q"]).ok();
    let tracked = sb
        .nestr(&ws, &["switch", "topic", "-r", "alpha", "--json"])
        .ok()
        .json();
    assert_eq!(tracked[0]["result"], "tracking");
    assert_eq!(
        git(
            &ws.join("alpha"),
            &["rev-parse", "--abbrev-ref", "topic@{upstream}"]
        ),
        "origin/topic"
    );
    // No such branch anywhere, without -c: refused, nothing changed.
    let none = sb.nestr(&ws, &["switch", "nowhere"]).expect(1);
    assert!(
        none.all().contains("there is no branch `nowhere`"),
        "{}",
        none.all()
    );
    sb.nestr(&ws, &["switch", "x", "-r", "nope"]).expect(2);
    Ok(())
}

#[test]
fn push_publishes_branches_and_sync_follows_them() -> TestResult {
    let sb = Sandbox::new();
    let alpha = sb.remote("alpha");
    let beta = sb.remote("beta");
    let ws = sb.workspace(MANIFEST);
    sb.nestr(&ws, &["assemble", "-q"]).ok();
    sb.nestr(&ws, &["switch", "-c", "feature-x"]).ok();
    git(
        &ws.join("alpha"),
        &[
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@t",
            "commit",
            "-q",
            "--allow-empty",
            "-m",
            "work",
        ],
    );
    let pushed = sb.nestr(&ws, &["push", "--json"]).ok().json();
    let results: Vec<&str> = pushed
        .as_array()
        .ok_or("outcomes")?
        .iter()
        .filter_map(|o| o["result"].as_str())
        .collect();
    assert_eq!(results, ["pushed", "pushed"]);
    assert_eq!(
        alpha.rev("feature-x"),
        git(&ws.join("alpha"), &["rev-parse", "HEAD"]),
        "the commit reached the remote"
    );
    assert_eq!(
        git(
            &ws.join("alpha"),
            &["rev-parse", "--abbrev-ref", "feature-x@{upstream}"]
        ),
        "origin/feature-x"
    );
    let again = sb
        .nestr(&ws, &["push", "-r", "alpha", "--json"])
        .ok()
        .json();
    assert_eq!(again[0]["result"], "up_to_date");
    // Someone else pushes to the feature branch: sync fast-forwards it (alpha's pin is main).
    git(&alpha.work, &["fetch", "-q", "origin"]);
    git(
        &alpha.work,
        &["switch", "-q", "-c", "feature-x", "origin/feature-x"],
    );
    std::fs::write(alpha.work.join("more.txt"), "more\n")?;
    git(&alpha.work, &["add", "-A"]);
    git(&alpha.work, &["commit", "-qm", "more"]);
    git(&alpha.work, &["push", "-q", "origin", "feature-x"]);
    let synced = sb.nestr(&ws, &["sync", "--json"]).ok().json();
    assert_eq!(synced[0]["result"], "updated", "{synced}");
    assert!(ws.join("alpha/more.txt").exists());
    // A local commit behind the remote's: the push is refused (not a fast-forward), exit 1.
    git(&beta.work, &["fetch", "-q", "origin"]);
    git(
        &beta.work,
        &["switch", "-q", "-c", "feature-x", "origin/feature-x"],
    );
    git(
        &beta.work,
        &["commit", "-q", "--allow-empty", "-m", "theirs"],
    );
    git(&beta.work, &["push", "-q", "origin", "feature-x"]);
    git(
        &ws.join("beta"),
        &[
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@t",
            "commit",
            "-q",
            "--allow-empty",
            "-m",
            "mine",
        ],
    );
    let refused = sb.nestr(&ws, &["push", "-r", "beta"]).expect(1);
    assert!(refused.all().contains("rejected"), "{}", refused.all());
    // A detached HEAD has no branch to push.
    git(&ws.join("alpha"), &["checkout", "-q", "--detach"]);
    let detached = sb.nestr(&ws, &["push", "-r", "alpha"]).expect(1);
    assert!(
        detached.all().contains("HEAD is detached"),
        "{}",
        detached.all()
    );
    Ok(())
}
