//! Sync, in two phases so that `--atomic` can update nothing when any fetch fails:
//! [`fetch_one`] brings remote refs up to date (the work tree is untouched), then [`update_one`]
//! moves the checkout to its target only when no local work can be lost: a branch is
//! fast-forwarded when it has no commits of its own and no uncommitted changes; a pinned tag/rev
//! checkout is moved when clean and still where the pin (or nestr) left it. Everything else is
//! left as it is and reported with the reason and what to do.

use git2::build::CheckoutBuilder;
use git2::{AutotagOption, Oid, Repository};

use super::status::{current_branch, pin_target, work_tree_counts};
use super::{Progress, RepoOutcome, explain, fetch_options, head_oid, open_exact, short};
use crate::manifest::{Manifest, Pin, Repo};
use crate::model::SyncResult;

/// What the fetch phase learnt about a repository.
#[derive(Debug, Clone, Default)]
pub struct FetchInfo {
    /// Where the tag/rev pin pointed before the fetch.
    pub pin_before: Option<Oid>,
}

/// Fetches `origin` (branches and tags). The work tree and HEAD are not touched.
pub fn fetch_one(
    manifest: &Manifest,
    repo: &Repo,
    progress: &dyn Progress,
) -> Result<FetchInfo, String> {
    let dir = super::safe_repo_dir(manifest, repo)?;
    let git = open_exact(&dir).ok_or_else(|| {
        format!(
            "{} is missing or not a git repository: run `nestr assemble`",
            dir.display()
        )
    })?;
    progress.start(&repo.name, "fetching");
    let info = FetchInfo {
        pin_before: pin_target(&git, &repo.pin),
    };
    let mut remote = git.find_remote("origin").map_err(|_| {
        format!(
            "{} has no `origin` remote: git -C {} remote add origin URL",
            dir.display(),
            dir.display()
        )
    })?;
    let url = remote
        .url()
        .map_or_else(|_| repo.url.clone(), str::to_owned);
    let mut options = fetch_options(&repo.name, progress);
    options.download_tags(AutotagOption::All);
    let mut refspecs: Vec<String> = remote
        .fetch_refspecs()
        .map(|specs| {
            specs
                .iter()
                .filter_map(|s| s.ok().flatten())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    if let Pin::Tag(_) = repo.pin {
        // A tag moved upstream is taken as it is now (tags are pins, not history).
        refspecs.push("+refs/tags/*:refs/tags/*".to_string());
    }
    remote
        .fetch(&refspecs, Some(&mut options), Some("nestr sync"))
        .map_err(|e| explain(&e, &url))?;
    if let Pin::Rev(rev) = &repo.pin
        && let Ok(oid) = Oid::from_str(rev)
        && git.find_commit(oid).is_err()
    {
        // Not reachable from any branch or tag: ask for the commit itself.
        let mut options = fetch_options(&repo.name, progress);
        let _ = remote.fetch(&[rev.as_str()], Some(&mut options), Some("nestr sync"));
    }
    Ok(info)
}

/// Moves the checkout of `repo` to its target when that cannot lose local work.
///
/// `locked` (from `nestr.lock`) replaces the pin's target; `last_head` is the head nestr recorded
/// for the repository last time, which marks a detached checkout as nestr's own.
pub fn update_one(
    manifest: &Manifest,
    repo: &Repo,
    fetched: &FetchInfo,
    locked: Option<Oid>,
    last_head: Option<Oid>,
) -> RepoOutcome {
    let dir = manifest.repo_dir(repo);
    let Some(git) = open_exact(&dir) else {
        return RepoOutcome::failed(repo, "missing: run `nestr assemble`");
    };
    let head = head_oid(&git);
    let branch = current_branch(&git);
    let outcome = |result, message: String, new: Option<Oid>| {
        let mut o = RepoOutcome::new(repo, result, message).heads(head, new.or(head));
        o.branch = branch.clone();
        o
    };
    let Some(head_id) = head else {
        return outcome(
            SyncResult::Skipped,
            "HEAD has no commit yet; nothing to update".into(),
            None,
        );
    };
    let plan = match &branch {
        Some(b) => plan_branch(&git, repo, b, head_id, locked),
        None => plan_detached(&git, repo, head_id, fetched, locked, last_head),
    };
    let (target, moved_message) = match plan {
        Plan::UpToDate(msg) => return outcome(SyncResult::UpToDate, msg, None),
        Plan::Skip(msg) => return outcome(SyncResult::Skipped, msg, None),
        Plan::Fail(msg) => return outcome(SyncResult::Failed, msg, None),
        Plan::Move(target, msg) => (target, msg),
    };
    match work_tree_counts(&git) {
        Ok(c) if c.staged + c.modified > 0 => {
            return outcome(
                SyncResult::Skipped,
                format!(
                    "dirty ({} staged, {} modified): left as it is; commit or stash your \
                     changes, then run `nestr sync` again",
                    c.staged, c.modified
                ),
                None,
            );
        }
        Ok(_) => {}
        Err(e) => return outcome(SyncResult::Failed, e.message().to_string(), None),
    }
    match move_to(&git, target, branch.as_deref()) {
        Ok(()) => outcome(SyncResult::Updated, moved_message, Some(target)),
        Err(e) if e.code() == git2::ErrorCode::Conflict => outcome(
            SyncResult::Skipped,
            format!(
                "untracked files would be overwritten by the update ({}): left as it is; move \
                 them away, then run `nestr sync` again",
                e.message()
            ),
            None,
        ),
        Err(e) => outcome(
            SyncResult::Failed,
            format!("update failed: {}", e.message()),
            None,
        ),
    }
}

enum Plan {
    UpToDate(String),
    Skip(String),
    Fail(String),
    Move(Oid, String),
}

fn plan_branch(
    git: &Repository,
    repo: &Repo,
    branch: &str,
    head: Oid,
    locked: Option<Oid>,
) -> Plan {
    // On another branch than the pinned one — a feature branch (`nestr switch`): it follows its
    // own upstream, when it has one; a lock file's commits are the pinned branch's.
    match &repo.pin {
        Pin::Branch(want) if want != branch && locked.is_some() => {
            return Plan::Skip(format!(
                "on feature branch `{branch}` (nestr.toml pins `{want}`): the lock file's commit \
                 is for `{want}`; left as it is (`nestr switch {want}` to follow the lock)"
            ));
        }
        Pin::Tag(_) | Pin::Rev(_) if locked.is_none() => {
            return Plan::Skip(format!(
                "on branch `{branch}`, but nestr.toml pins {}: left as it is; check out the pin \
                 (`git checkout --detach {}`) to follow it",
                repo.pin.describe(),
                match &repo.pin {
                    Pin::Tag(t) | Pin::Rev(t) => t.as_str(),
                    _ => "",
                }
            ));
        }
        _ => {}
    }
    let upstream = git
        .find_branch(branch, git2::BranchType::Local)
        .and_then(|b| b.upstream())
        .ok()
        .and_then(|u| Some((u.name().ok().flatten()?.to_string(), u.get().target()?)));
    let Some((upstream_name, upstream_id)) = upstream else {
        return Plan::Skip(format!(
            "branch `{branch}` has no upstream: left as it is; `nestr push` publishes it and \
             sets one (or `git branch -u origin/{branch}`)"
        ));
    };
    let (ahead, behind) = match git.graph_ahead_behind(head, upstream_id) {
        Ok(ab) => ab,
        Err(e) => return Plan::Fail(e.message().to_string()),
    };
    if ahead > 0 && behind > 0 {
        return Plan::Skip(format!(
            "diverged from {upstream_name} ({ahead} local, {behind} upstream commits): left as \
             it is; rebase or merge {upstream_name} yourself"
        ));
    }
    if ahead > 0 {
        return Plan::Skip(format!(
            "ahead of {upstream_name} by {ahead} commit{}: left as it is; push them \
             (`git push`) to share them",
            plural(ahead)
        ));
    }
    let target = locked.unwrap_or(upstream_id);
    if git.find_commit(target).is_err() {
        return Plan::Fail(format!(
            "the locked commit {target} is not in the repository after fetching; was it removed \
             upstream? Run `nestr lock` again"
        ));
    }
    if target == head {
        return Plan::UpToDate(match locked {
            Some(_) => format!("at the locked commit {}", short(head)),
            None => format!("up to date with {upstream_name}"),
        });
    }
    let message = match locked {
        Some(_) => format!("moved {} → locked commit {}", short(head), short(target)),
        None => format!(
            "fast-forwarded {} → {} ({behind} commit{})",
            short(head),
            short(target),
            plural(behind)
        ),
    };
    Plan::Move(target, message)
}

fn plan_detached(
    git: &Repository,
    repo: &Repo,
    head: Oid,
    fetched: &FetchInfo,
    locked: Option<Oid>,
    last_head: Option<Oid>,
) -> Plan {
    let target = match (locked, &repo.pin) {
        (Some(l), _) => l,
        (None, Pin::Tag(_) | Pin::Rev(_)) => match pin_target(git, &repo.pin) {
            Some(t) => t,
            None => {
                return Plan::Fail(format!(
                    "{} is not in the repository after fetching; check nestr.toml",
                    repo.pin.describe()
                ));
            }
        },
        (None, _) => {
            return Plan::Skip(format!(
                "detached HEAD at {}: left as it is; switch to a branch (`git switch NAME`) \
                 for nestr to sync it",
                short(head)
            ));
        }
    };
    if git.find_commit(target).is_err() {
        return Plan::Fail(format!(
            "commit {target} is not in the repository after fetching"
        ));
    }
    if target == head {
        return Plan::UpToDate(format!("at {}", short(head)));
    }
    let nestrs_own = Some(head) == fetched.pin_before || Some(head) == last_head;
    if !nestrs_own {
        return Plan::Skip(format!(
            "detached at {}, which is not where {} was: left as it is; check out the pin \
             yourself to follow it",
            short(head),
            repo.pin.describe()
        ));
    }
    Plan::Move(target, format!("moved {} → {}", short(head), short(target)))
}

/// Checks out `target` safely (never overwriting changes or untracked files), then moves the
/// branch (or detached HEAD) to it.
fn move_to(git: &Repository, target: Oid, branch: Option<&str>) -> Result<(), git2::Error> {
    let commit = git.find_commit(target)?;
    let mut checkout = CheckoutBuilder::new();
    checkout.safe();
    git.checkout_tree(commit.as_object(), Some(&mut checkout))?;
    match branch {
        Some(b) => {
            let mut reference = git.find_reference(&format!("refs/heads/{b}"))?;
            reference.set_target(target, &format!("nestr sync: move to {target}"))?;
        }
        None => git.set_head_detached(target)?,
    }
    Ok(())
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}
