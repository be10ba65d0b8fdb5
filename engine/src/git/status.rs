//! Status: where each repository stands against its upstream (or its pinned tag/rev) and what
//! is uncommitted in its work tree. Read-only; never fetches.

use git2::{Repository, Status, StatusOptions};
use serde::Serialize;

use crate::manifest::{Manifest, Pin, Repo};
use crate::model::RepoState;

/// A row of `nestr status`. The JSON field names are a public contract.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct RepoStatus {
    pub name: String,
    /// Relative to the workspace root.
    pub path: String,
    pub branch: Option<String>,
    pub head: Option<String>,
    /// The upstream branch (`origin/main`), for branch checkouts.
    pub upstream: Option<String>,
    pub ahead: usize,
    pub behind: usize,
    pub dirty: bool,
    pub staged: usize,
    pub modified: usize,
    pub untracked: usize,
    pub state: RepoState,
    /// What the manifest pins the repository to (`{"kind": "tag", "value": "v1"}`, `rev`,
    /// `branch`, or `default`).
    pub pin: Pin,
    /// For a tag or rev pin: whether HEAD is still the pinned commit (null otherwise, or when
    /// the pin cannot be resolved locally).
    pub at_pin: Option<bool>,
}

/// The status of every repository of `manifest`, in manifest order, at most `jobs` at once.
pub fn status_all(manifest: &Manifest, jobs: usize) -> Vec<Result<RepoStatus, String>> {
    super::parallel(&manifest.repos, jobs, |repo| status_of(manifest, repo))
}

/// The status of `repo` as found on disk.
pub fn status_of(manifest: &Manifest, repo: &Repo) -> Result<RepoStatus, String> {
    let mut row = RepoStatus {
        name: repo.name.clone(),
        path: repo.path.to_string_lossy().into_owned(),
        branch: None,
        head: None,
        upstream: None,
        ahead: 0,
        behind: 0,
        dirty: false,
        staged: 0,
        modified: 0,
        untracked: 0,
        state: RepoState::Missing,
        pin: repo.pin.clone(),
        at_pin: None,
    };
    let Some(git) = super::open_exact(&manifest.repo_dir(repo)) else {
        return Ok(row);
    };
    let counts = work_tree_counts(&git).map_err(|e| super::explain(&e, &repo.url))?;
    row.staged = counts.staged;
    row.modified = counts.modified;
    row.untracked = counts.untracked;
    row.dirty = counts.staged + counts.modified + counts.untracked > 0;
    let head = super::head_oid(&git);
    row.head = head.map(|h| h.to_string());
    row.branch = current_branch(&git);

    let pinned = pin_target(&git, &repo.pin);
    row.at_pin = pinned.zip(head).map(|(t, h)| t == h);
    let mut detached = git.head_detached().unwrap_or(false);
    if let Some(branch) = &row.branch
        && let Ok(local) = git.find_branch(branch, git2::BranchType::Local)
        && let Ok(upstream) = local.upstream()
    {
        row.upstream = upstream.name().ok().flatten().map(str::to_owned);
        if let (Some(h), Some(u)) = (head, upstream.get().target()) {
            let (a, b) = git
                .graph_ahead_behind(h, u)
                .map_err(|e| e.message().to_string())?;
            row.ahead = a;
            row.behind = b;
        }
    } else if detached && let Some(h) = head {
        // A pinned tag or rev is meant to be detached: compare with the pin instead.
        if let Some(target) = pinned
            && let Ok((a, b)) = git.graph_ahead_behind(h, target)
        {
            row.ahead = a;
            row.behind = b;
            detached = !(h == target || a == 0);
        }
    }
    row.state = if row.dirty {
        RepoState::Dirty
    } else if detached {
        RepoState::Detached
    } else {
        match (row.ahead, row.behind) {
            (0, 0) => RepoState::Clean,
            (_, 0) => RepoState::Ahead,
            (0, _) => RepoState::Behind,
            _ => RepoState::Diverged,
        }
    };
    Ok(row)
}

/// The head commit and checked-out branch of `repo`, without looking at the work tree (cheap,
/// unlike [`status_of`]).
pub fn head_and_branch(manifest: &Manifest, repo: &Repo) -> (Option<String>, Option<String>) {
    match super::open_exact(&manifest.repo_dir(repo)) {
        Some(git) => (
            super::head_oid(&git).map(|h| h.to_string()),
            current_branch(&git),
        ),
        None => (None, None),
    }
}

/// The commit a tag or rev pin resolves to in the local repository.
pub(crate) fn pin_target(git: &Repository, pin: &Pin) -> Option<git2::Oid> {
    match pin {
        Pin::Tag(t) => super::assemble::resolve_tag(git, t).ok(),
        Pin::Rev(r) => git2::Oid::from_str(r)
            .ok()
            .filter(|o| git.find_commit(*o).is_ok()),
        Pin::Branch(_) | Pin::Default => None,
    }
}

/// The checked-out branch's short name; `None` when detached or unborn without a name.
pub(crate) fn current_branch(git: &Repository) -> Option<String> {
    if git.head_detached().unwrap_or(true) {
        return None;
    }
    let head = git.find_reference("HEAD").ok()?;
    let target = head.symbolic_target().ok()??;
    target.strip_prefix("refs/heads/").map(str::to_owned)
}

/// Counts of staged, modified and untracked files (as `git status` counts them, untracked files
/// one by one).
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Counts {
    pub staged: usize,
    pub modified: usize,
    pub untracked: usize,
}

/// What a work tree's status counts: untracked files (each, inside untracked folders too), not
/// ignored ones, not submodules, no rename detection. The cache's keys read the same status.
pub(crate) fn work_tree_status_options() -> StatusOptions {
    let mut options = StatusOptions::new();
    options
        .include_untracked(true)
        .recurse_untracked_dirs(true)
        .include_ignored(false)
        .exclude_submodules(true)
        .renames_head_to_index(false);
    options
}

pub(crate) fn work_tree_counts(git: &Repository) -> Result<Counts, git2::Error> {
    let statuses = git.statuses(Some(&mut work_tree_status_options()))?;
    let staged = Status::INDEX_NEW
        | Status::INDEX_MODIFIED
        | Status::INDEX_DELETED
        | Status::INDEX_RENAMED
        | Status::INDEX_TYPECHANGE;
    let modified = Status::WT_MODIFIED
        | Status::WT_DELETED
        | Status::WT_RENAMED
        | Status::WT_TYPECHANGE
        | Status::CONFLICTED;
    let mut c = Counts::default();
    for entry in statuses.iter() {
        let s = entry.status();
        if s.intersects(staged) {
            c.staged += 1;
        }
        if s.intersects(modified) {
            c.modified += 1;
        }
        if s.contains(Status::WT_NEW) {
            c.untracked += 1;
        }
    }
    Ok(c)
}
