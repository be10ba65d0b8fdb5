//! Branches across repositories: `nestr switch` (create or switch a branch in each selected
//! repository, all or none: a repository with uncommitted changes to tracked files refuses, and
//! then no repository is touched) and `nestr push` (push each repository's current branch to
//! `origin`, setting its upstream, with the non-interactive credentials sync uses).

use git2::build::CheckoutBuilder;
use git2::{BranchType, PushOptions, Repository, Status};
use serde::Serialize;

use super::status::work_tree_status_options;
use super::{credential_callbacks, explain, head_oid, open_exact, short};
use crate::manifest::{Manifest, Repo};

/// What switching did in one repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SwitchResult {
    /// The branch was made at HEAD and checked out.
    Created,
    /// A local branch was checked out.
    Switched,
    /// A local branch was made from `origin/BRANCH`, tracking it, and checked out.
    Tracking,
    /// It was on the branch already.
    Already,
}

/// The outcome of `nestr switch` in one repository.
#[derive(Debug, Clone, Serialize)]
pub struct SwitchOutcome {
    pub repo: String,
    pub result: SwitchResult,
    pub branch: String,
    pub head: Option<String>,
}

/// What switching `repo` to `branch` will do, checked before anything changes.
enum Plan {
    Already,
    Local,
    Track(git2::Oid),
    Create,
}

/// The changed tracked files of a work tree (staged or not), at most `max` named.
fn uncommitted(git: &Repository, max: usize) -> Result<(usize, Vec<String>), git2::Error> {
    let lost = Status::INDEX_NEW
        | Status::INDEX_MODIFIED
        | Status::INDEX_DELETED
        | Status::INDEX_RENAMED
        | Status::INDEX_TYPECHANGE
        | Status::WT_MODIFIED
        | Status::WT_DELETED
        | Status::WT_RENAMED
        | Status::WT_TYPECHANGE
        | Status::CONFLICTED;
    let statuses = git.statuses(Some(&mut work_tree_status_options()))?;
    let changed: Vec<String> = statuses
        .iter()
        .filter(|e| e.status().intersects(lost))
        .filter_map(|e| e.path().ok().map(String::from))
        .collect();
    let n = changed.len();
    Ok((n, changed.into_iter().take(max).collect()))
}

fn plan(git: &Repository, repo: &Repo, branch: &str, create: bool) -> Result<Plan, String> {
    if git2::Branch::name_is_valid(branch).ok() != Some(true) {
        return Err(format!("`{branch}` is not a valid branch name"));
    }
    let current = git
        .head()
        .ok()
        .filter(git2::Reference::is_branch)
        .and_then(|h| h.shorthand().ok().map(String::from));
    if current.as_deref() == Some(branch) {
        return Ok(Plan::Already);
    }
    let (n, files) = uncommitted(git, 5).map_err(|e| e.message().to_string())?;
    if n > 0 {
        return Err(format!(
            "{}: {n} uncommitted change{} ({}{}) would be left behind or lost; commit or stash \
             {} first",
            repo.name,
            if n == 1 { "" } else { "s" },
            files.join(", "),
            if n > files.len() { ", …" } else { "" },
            if n == 1 { "it" } else { "them" }
        ));
    }
    if git.find_branch(branch, BranchType::Local).is_ok() {
        return Ok(Plan::Local);
    }
    if let Ok(remote) = git.find_branch(&format!("origin/{branch}"), BranchType::Remote)
        && let Some(id) = remote.get().target()
    {
        return Ok(Plan::Track(id));
    }
    if create {
        if head_oid(git).is_none() {
            return Err(format!(
                "{}: HEAD has no commit yet to make a branch at",
                repo.name
            ));
        }
        return Ok(Plan::Create);
    }
    Err(format!(
        "{}: there is no branch `{branch}`, here or on origin; make it with `nestr switch -c \
         {branch}`",
        repo.name
    ))
}

/// Switches every repository of `repos` to `branch` (making it where missing when `create`):
/// all or none. Every repository is checked first; if any would refuse — uncommitted changes
/// to tracked files, no such branch — nothing is changed anywhere and the reasons are returned.
pub fn switch_all(
    manifest: &Manifest,
    repos: &[&Repo],
    branch: &str,
    create: bool,
) -> Result<Vec<SwitchOutcome>, Vec<String>> {
    let mut plans = Vec::new();
    let mut refused = Vec::new();
    for repo in repos {
        let dir = manifest.repo_dir(repo);
        let Some(git) = open_exact(&dir) else {
            refused.push(format!(
                "{}: missing at {}: run `nestr assemble`",
                repo.name,
                dir.display()
            ));
            continue;
        };
        match plan(&git, repo, branch, create) {
            Ok(p) => plans.push((*repo, git, p)),
            Err(e) => refused.push(e),
        }
    }
    if !refused.is_empty() {
        return Err(refused);
    }
    let mut out = Vec::new();
    let mut failed = Vec::new();
    for (repo, git, plan) in plans {
        match apply(&git, branch, plan) {
            Ok(result) => out.push(SwitchOutcome {
                repo: repo.name.clone(),
                result,
                branch: branch.to_string(),
                head: head_oid(&git).map(|h| h.to_string()),
            }),
            Err(e) => failed.push(format!("{}: {}", repo.name, e.message())),
        }
    }
    if failed.is_empty() {
        Ok(out)
    } else {
        Err(failed)
    }
}

fn apply(git: &Repository, branch: &str, plan: Plan) -> Result<SwitchResult, git2::Error> {
    let result = match plan {
        Plan::Already => return Ok(SwitchResult::Already),
        Plan::Local => SwitchResult::Switched,
        Plan::Track(id) => {
            let commit = git.find_commit(id)?;
            let mut local = git.branch(branch, &commit, false)?;
            local.set_upstream(Some(&format!("origin/{branch}")))?;
            SwitchResult::Tracking
        }
        Plan::Create => {
            let head = git.head()?.peel_to_commit()?;
            git.branch(branch, &head, false)?;
            SwitchResult::Created
        }
    };
    let refname = format!("refs/heads/{branch}");
    let target = git.find_reference(&refname)?.peel_to_commit()?;
    // SAFE: never overwrites a change or an untracked file (a conflict refuses instead).
    let mut checkout = CheckoutBuilder::new();
    checkout.safe();
    git.checkout_tree(target.as_object(), Some(&mut checkout))?;
    git.set_head(&refname)?;
    Ok(result)
}

/// What pushing did in one repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PushResult {
    /// The branch was pushed (new on the remote, or moved forward there).
    Pushed,
    /// The remote already had this commit on the branch.
    UpToDate,
    /// The remote refused (not a fast-forward, a protected branch, …).
    Rejected,
    /// It could not be pushed (detached HEAD, no remote, the network, credentials).
    Failed,
}

/// The outcome of `nestr push` in one repository.
#[derive(Debug, Clone, Serialize)]
pub struct PushOutcome {
    pub repo: String,
    pub result: PushResult,
    pub branch: Option<String>,
    pub head: Option<String>,
    pub message: String,
}

/// Pushes `repo`'s current branch to `origin` and makes `origin/BRANCH` its upstream.
pub fn push_one(manifest: &Manifest, repo: &Repo) -> PushOutcome {
    let mut out = PushOutcome {
        repo: repo.name.clone(),
        result: PushResult::Failed,
        branch: None,
        head: None,
        message: String::new(),
    };
    let dir = manifest.repo_dir(repo);
    let Some(git) = open_exact(&dir) else {
        out.message = format!("missing at {}: run `nestr assemble`", dir.display());
        return out;
    };
    let head = git.head().ok();
    let Some(branch) = head
        .as_ref()
        .filter(|h| h.is_branch())
        .and_then(|h| h.shorthand().ok().map(String::from))
    else {
        out.message = "HEAD is detached (a tag or commit is checked out): switch to a branch \
                       first (`nestr switch -c BRANCH`)"
            .into();
        return out;
    };
    out.branch = Some(branch.clone());
    let Some(id) = head_oid(&git) else {
        out.message = "the branch has no commit yet".into();
        return out;
    };
    out.head = Some(id.to_string());
    let mut remote = match git.find_remote("origin") {
        Ok(r) => r,
        Err(_) => {
            out.message = "no remote `origin` to push to".into();
            return out;
        }
    };
    let url = remote.url().unwrap_or_default().to_string();
    let before = git
        .find_branch(&format!("origin/{branch}"), BranchType::Remote)
        .ok()
        .and_then(|b| b.get().target());
    if before == Some(id) {
        out.result = PushResult::UpToDate;
        out.message = format!("origin/{branch} is at {} already", short(id));
        let _ = set_upstream(&git, &branch);
        return out;
    }
    let refusal = std::cell::RefCell::new(None::<String>);
    let mut callbacks = credential_callbacks();
    callbacks.push_update_reference(|_, status| {
        if let Some(why) = status {
            *refusal.borrow_mut() = Some(why.to_string());
        }
        Ok(())
    });
    let mut options = PushOptions::new();
    options.remote_callbacks(callbacks);
    let spec = format!("refs/heads/{branch}:refs/heads/{branch}");
    let pushed = remote.push(&[spec.as_str()], Some(&mut options));
    drop(options);
    match (pushed, refusal.into_inner()) {
        (Err(e), _) if e.code() == git2::ErrorCode::NotFastForward => {
            out.result = PushResult::Rejected;
            out.message = format!(
                "origin/{branch} has commits this branch lacks (not a fast-forward): run \
                 `nestr sync` or merge them, then push again"
            );
        }
        (Err(e), _) => {
            out.message = explain(&e, &url);
        }
        (Ok(()), Some(why)) => {
            out.result = PushResult::Rejected;
            out.message = format!(
                "origin refused `{branch}`: {why} (if the remote moved on, run `nestr sync`, \
                 then push again)"
            );
        }
        (Ok(()), None) => {
            out.result = PushResult::Pushed;
            out.message = match before {
                Some(b) => format!("{} → {} on origin/{branch}", short(b), short(id)),
                None => format!("new branch origin/{branch} at {}", short(id)),
            };
            // The remote-tracking branch, as `git push` records it.
            let _ = git.reference(
                &format!("refs/remotes/origin/{branch}"),
                id,
                true,
                "nestr push",
            );
            if let Err(e) = set_upstream(&git, &branch) {
                out.message.push_str(&format!(
                    " (its upstream could not be set: {})",
                    e.message()
                ));
            }
        }
    }
    out
}

fn set_upstream(git: &Repository, branch: &str) -> Result<(), git2::Error> {
    git.find_branch(branch, BranchType::Local)?
        .set_upstream(Some(&format!("origin/{branch}")))
}
