//! Assemble: clone a missing repository and check out its pin (branch tracking its upstream,
//! tag or rev) or its locked commit. The clone is made in a temporary sibling folder and moved
//! into place only when complete, so a failure leaves nothing behind. An existing folder is never
//! touched unless it already is a clone of the same remote.

use std::path::{Path, PathBuf};

use git2::build::{CheckoutBuilder, RepoBuilder};
use git2::{Oid, Repository};

use super::{
    Progress, RepoOutcome, explain, fetch_options, head_oid, normalize_remote, open_exact,
};
use crate::manifest::{Manifest, Pin, Repo};
use crate::model::SyncResult;

/// Clones `repo` if its folder is missing (or empty); reports an existing clone as up to date.
pub fn assemble_one(
    manifest: &Manifest,
    repo: &Repo,
    locked: Option<Oid>,
    progress: &dyn Progress,
) -> RepoOutcome {
    let dest = match super::safe_repo_dir(manifest, repo) {
        Ok(d) => d,
        Err(e) => return RepoOutcome::failed(repo, e),
    };
    if dest.exists() {
        if let Some(existing) = open_exact(&dest) {
            return existing_clone(manifest, repo, &existing);
        }
        let empty_dir = dest.is_dir()
            && std::fs::read_dir(&dest)
                .map(|mut d| d.next().is_none())
                .unwrap_or(false);
        if !empty_dir {
            return RepoOutcome::failed(
                repo,
                format!(
                    "{} exists and is not a git repository; nothing was changed. Move it away, \
                     or set `path` for repository `{}` in nestr.toml",
                    dest.display(),
                    repo.name
                ),
            );
        }
    }
    progress.start(&repo.name, "cloning");
    remove_stale_clones(&dest, &repo.name);
    let tmp = temp_sibling(&dest, &repo.name);
    let result = clone_into(manifest, repo, &tmp, locked, progress).and_then(|outcome| {
        if dest.exists() {
            std::fs::remove_dir(&dest)
                .map_err(|e| format!("cannot replace empty {}: {e}", dest.display()))?;
        }
        std::fs::rename(&tmp, &dest)
            .map_err(|e| format!("cannot move the clone into {}: {e}", dest.display()))?;
        Ok(outcome)
    });
    match result {
        Ok(outcome) => outcome,
        Err(message) => {
            let _ = std::fs::remove_dir_all(&tmp);
            RepoOutcome::failed(repo, message)
        }
    }
}

fn existing_clone(manifest: &Manifest, repo: &Repo, existing: &Repository) -> RepoOutcome {
    let want = normalize_remote(&manifest.root, &repo.url);
    let origin = existing
        .find_remote("origin")
        .ok()
        .and_then(|r| r.url().ok().map(str::to_owned));
    match origin {
        Some(url) if normalize_remote(&manifest.root, &url) == want => {
            let head = head_oid(existing);
            let mut o = RepoOutcome::new(repo, SyncResult::UpToDate, "already assembled");
            o.branch = super::status::current_branch(existing);
            o.heads(head, head)
        }
        Some(url) => RepoOutcome::failed(
            repo,
            format!(
                "{} is a clone of {url}, not of {}; nothing was changed. Move it away, or set \
                 `path` for repository `{}` in nestr.toml",
                manifest.repo_dir(repo).display(),
                repo.url,
                repo.name
            ),
        ),
        None => RepoOutcome::failed(
            repo,
            format!(
                "{} is a git repository without an `origin` remote; nothing was changed. Move it \
                 away, or add the remote: git -C {} remote add origin URL",
                manifest.repo_dir(repo).display(),
                manifest.repo_dir(repo).display()
            ),
        ),
    }
}

fn temp_sibling(dest: &Path, name: &str) -> PathBuf {
    let parent = dest.parent().unwrap_or(dest);
    parent.join(format!(".nestr-clone-{name}-{}", std::process::id()))
}

/// Removes temp clones of `name` left by nestr processes that are gone (killed mid-clone).
/// Only where liveness can be checked (`/proc`); a live process's temp clone is never touched.
fn remove_stale_clones(dest: &Path, name: &str) {
    let proc = Path::new("/proc/self");
    let (Some(parent), true) = (dest.parent(), proc.exists()) else {
        return;
    };
    let prefix = format!(".nestr-clone-{name}-");
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        let file_name = entry.file_name();
        let Some(pid) = file_name.to_str().and_then(|n| n.strip_prefix(&prefix)) else {
            continue;
        };
        if pid.parse::<u32>().is_ok() && !Path::new("/proc").join(pid).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

fn clone_into(
    manifest: &Manifest,
    repo: &Repo,
    tmp: &Path,
    locked: Option<Oid>,
    progress: &dyn Progress,
) -> Result<RepoOutcome, String> {
    if let Some(parent) = tmp.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
    }
    if tmp.exists() {
        std::fs::remove_dir_all(tmp)
            .map_err(|e| format!("cannot remove leftover {}: {e}", tmp.display()))?;
    }
    let url = super::resolve_url(&manifest.root, &repo.url);
    let mut builder = RepoBuilder::new();
    builder.fetch_options(fetch_options(&repo.name, progress));
    if let Pin::Branch(b) = &repo.pin {
        builder.branch(b);
    }
    let cloned = builder.clone(&url, tmp).map_err(|e| {
        if let Pin::Branch(b) = &repo.pin
            && e.code() == git2::ErrorCode::NotFound
            && e.message().contains(b.as_str())
        {
            return format!(
                "branch `{b}` does not exist on the remote {}",
                crate::redact::url(&repo.url)
            );
        }
        explain(&e, &repo.url)
    })?;
    let target = match (&repo.pin, locked) {
        (_, Some(oid)) => Some(oid),
        (Pin::Tag(t), None) => Some(resolve_tag(&cloned, t)?),
        (Pin::Rev(r), None) => Some(Oid::from_str(r).map_err(|e| e.message().to_string())?),
        _ => None,
    };
    let mut message = format!("cloned ({})", repo.pin.describe());
    if let Some(target) = target {
        let commit = cloned.find_commit(target).map_err(|_| {
            format!(
                "commit {target} is not on the remote {} (is it pushed, and reachable from a \
                 branch or tag?)",
                crate::redact::url(&repo.url)
            )
        })?;
        let mut checkout = CheckoutBuilder::new();
        checkout.force();
        let detach = locked.is_none() || !matches!(repo.pin, Pin::Branch(_) | Pin::Default);
        if detach {
            cloned
                .checkout_tree(commit.as_object(), Some(&mut checkout))
                .and_then(|()| cloned.set_head_detached(target))
                .map_err(|e| e.message().to_string())?;
        } else {
            // A branch checkout keeps its branch (and upstream) but points it at the lock.
            cloned
                .reset(
                    commit.as_object(),
                    git2::ResetType::Hard,
                    Some(&mut checkout),
                )
                .map_err(|e| e.message().to_string())?;
        }
        if locked.is_some() {
            message = format!("cloned at locked commit {}", super::short(target));
        }
    }
    let head = head_oid(&cloned);
    let mut outcome = RepoOutcome::new(repo, SyncResult::Cloned, message);
    outcome.branch = super::status::current_branch(&cloned);
    Ok(outcome.heads(None, head))
}

/// The commit a tag points at (annotated tags peeled).
pub(crate) fn resolve_tag(repo: &Repository, tag: &str) -> Result<Oid, String> {
    repo.find_reference(&format!("refs/tags/{tag}"))
        .and_then(|r| r.peel_to_commit())
        .map(|c| c.id())
        .map_err(|_| format!("tag `{tag}` does not exist on the remote"))
}
