//! What a change affects, across repositories: for every repository the files changed between a
//! base revision (its upstream by default, a ref given with `--base`, or the commits of an older
//! lock file) and HEAD plus the working tree (or the commits of a newer lock file); those files
//! mapped to the services whose folders hold them (and, for an operation with `inputs`, whose
//! globs match them); then every service that depends on an affected one, transitively, in any
//! repository. Each affected service says why.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde::Serialize;

use crate::git::Lockfile;
use crate::manifest::Manifest;

/// Where the comparison starts.
#[derive(Debug, Clone)]
pub enum Base {
    /// Each repository's upstream branch (e.g. `origin/main`).
    Upstream,
    /// A revision every repository resolves (`origin/main`, `HEAD~3`, a tag).
    Ref(String),
    /// The commits of an older lock file.
    Lock(std::path::PathBuf),
}

/// What one repository changed.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct RepoChange {
    pub name: String,
    /// The base commit (null when the repository has no base: nothing is compared).
    pub base: Option<String>,
    /// The commit compared to (null: HEAD and the working tree).
    pub to: Option<String>,
    /// Changed files, relative to the repository.
    pub files: Vec<String>,
    /// Why the repository was not compared, if it was not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// An affected service and why.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct AffectedService {
    pub name: String,
    pub repo: String,
    /// Files of its own that changed (relative to the repository).
    pub files: Vec<String>,
    /// Affected services it depends on (directly).
    pub via: Vec<String>,
    /// In words.
    pub why: String,
}

/// The body of `nestr affected --json` and `GET /api/affected`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Affected {
    /// In manifest order.
    pub services: Vec<AffectedService>,
    pub repos: Vec<RepoChange>,
}

impl Affected {
    pub fn names(&self) -> Vec<String> {
        self.services.iter().map(|s| s.name.clone()).collect()
    }
}

/// Computes what changed from `base` to `to` (a newer lock file; default HEAD and the working
/// tree). With `operation`, that operation's `inputs` globs narrow which files count.
pub fn affected(
    manifest: &Manifest,
    base: &Base,
    to: Option<&Path>,
    operation: Option<&str>,
) -> Result<Affected, String> {
    let base_lock = match base {
        Base::Lock(p) => Some(Lockfile::read(p)?),
        _ => None,
    };
    let to_lock = to.map(Lockfile::read).transpose()?;
    let mut repos = Vec::new();
    for repo in &manifest.repos {
        let dir = manifest.repo_dir(repo);
        let git = crate::git::open_exact(&dir).ok_or_else(|| {
            format!(
                "repository `{}` is not assembled at {}: run `nestr assemble`",
                repo.name,
                dir.display()
            )
        })?;
        let resolve = |rev: &str| -> Result<git2::Oid, String> {
            git.revparse_single(rev)
                .and_then(|o| o.peel_to_commit())
                .map(|c| c.id())
                .map_err(|e| {
                    format!(
                        "repository `{}` has no revision `{rev}` ({}); fetch it (`nestr sync`) or give another --base",
                        repo.name,
                        e.message()
                    )
                })
        };
        let base_oid = match base {
            Base::Ref(r) => Some(resolve(r)?),
            Base::Lock(p) => match base_lock.as_ref().and_then(|l| l.repos.get(&repo.name)) {
                Some(e) => Some(
                    resolve(&e.commit).map_err(|e| format!("{e} (named by {})", p.display()))?,
                ),
                None => None,
            },
            Base::Upstream => upstream(&git),
        };
        let to_oid = match &to_lock {
            Some(l) => match l.repos.get(&repo.name) {
                Some(e) => Some(resolve(&e.commit)?),
                None => None,
            },
            None => None,
        };
        let Some(base_oid) = base_oid else {
            let note = match base {
                Base::Upstream => "no upstream branch: not compared (give --base)",
                _ => "not in the base lock file: every service in it counts as changed",
            };
            repos.push(RepoChange {
                name: repo.name.clone(),
                base: None,
                to: to_oid.map(|o| o.to_string()),
                files: if matches!(base, Base::Upstream) {
                    Vec::new()
                } else {
                    vec![String::new()]
                },
                note: Some(note.to_string()),
            });
            continue;
        };
        let files = changed_files(&git, base_oid, to_oid)
            .map_err(|e| format!("cannot compare repository `{}`: {e}", repo.name))?;
        repos.push(RepoChange {
            name: repo.name.clone(),
            base: Some(base_oid.to_string()),
            to: to_oid.map(|o| o.to_string()),
            files,
            note: None,
        });
    }
    Ok(map_to_services(manifest, repos, operation))
}

/// The commit of the current branch's upstream, if it has one.
fn upstream(git: &git2::Repository) -> Option<git2::Oid> {
    let head = git.head().ok()?;
    let name = head.shorthand().ok()?;
    let branch = git.find_branch(name, git2::BranchType::Local).ok()?;
    branch.upstream().ok()?.get().target()
}

/// Files that differ between commit `base` and `to` (or HEAD's tree plus the index and working
/// tree, untracked files included, ignored ones not).
fn changed_files(
    git: &git2::Repository,
    base: git2::Oid,
    to: Option<git2::Oid>,
) -> Result<Vec<String>, String> {
    let tree_of = |oid: git2::Oid| {
        git.find_commit(oid)
            .and_then(|c| c.tree())
            .map_err(|e| e.message().to_string())
    };
    let old = tree_of(base)?;
    let diff = match to {
        Some(t) => {
            let new = tree_of(t)?;
            git.diff_tree_to_tree(Some(&old), Some(&new), None)
        }
        None => {
            let mut opts = git2::DiffOptions::new();
            opts.include_untracked(true).recurse_untracked_dirs(true);
            git.diff_tree_to_workdir_with_index(Some(&old), Some(&mut opts))
        }
    }
    .map_err(|e| e.message().to_string())?;
    let mut files = BTreeSet::new();
    for d in diff.deltas() {
        for f in [d.old_file(), d.new_file()] {
            if let Some(p) = f.path() {
                files.insert(p.to_string_lossy().replace('\\', "/"));
            }
        }
    }
    Ok(files.into_iter().collect())
}

/// Changed files → the services holding them → every dependent, with the reasons.
fn map_to_services(
    manifest: &Manifest,
    repos: Vec<RepoChange>,
    operation: Option<&str>,
) -> Affected {
    let mut direct: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for svc in &manifest.services {
        let Some(change) = repos.iter().find(|r| r.name == svc.repo) else {
            continue;
        };
        let prefix = crate::cache::key::rel_prefix(&svc.path);
        let globs = operation
            .and_then(|op| manifest.operation(svc, op))
            .and_then(|o| o.inputs.as_ref())
            .and_then(|g| {
                let mut b = globset::GlobSetBuilder::new();
                for p in g {
                    b.add(
                        globset::GlobBuilder::new(p)
                            .literal_separator(true)
                            .build()
                            .ok()?,
                    );
                }
                b.build().ok()
            });
        let mine: Vec<String> = change
            .files
            .iter()
            .filter(|f| {
                // `""`: the whole repository counts as changed (no base to compare with).
                if f.is_empty() {
                    return true;
                }
                let Some(rel) = f.strip_prefix(prefix.as_str()) else {
                    return false;
                };
                globs.as_ref().is_none_or(|g| g.is_match(rel))
            })
            .cloned()
            .collect();
        if !mine.is_empty() {
            direct.insert(svc.name.as_str(), mine);
        }
    }
    // Dependents, transitively: repeat until nothing new is affected.
    let mut via: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    let mut affected: BTreeSet<&str> = direct.keys().copied().collect();
    loop {
        let mut grew = false;
        for svc in &manifest.services {
            for d in &svc.depends_on {
                if affected.contains(d.as_str()) {
                    via.entry(svc.name.as_str()).or_default().insert(d.as_str());
                    grew |= affected.insert(svc.name.as_str());
                }
            }
        }
        if !grew {
            break;
        }
    }
    let services = manifest
        .services
        .iter()
        .filter(|s| affected.contains(s.name.as_str()))
        .map(|s| {
            let files: Vec<String> = direct
                .get(s.name.as_str())
                .map(|f| f.iter().filter(|f| !f.is_empty()).cloned().collect())
                .unwrap_or_default();
            let whole = direct
                .get(s.name.as_str())
                .is_some_and(|f| f.iter().any(String::is_empty));
            let deps: Vec<String> = via
                .get(s.name.as_str())
                .map(|v| v.iter().map(|d| d.to_string()).collect())
                .unwrap_or_default();
            let mut why = Vec::new();
            if whole {
                why.push(format!("repository `{}` is not in the base", s.repo));
            }
            if !files.is_empty() {
                let shown: Vec<&str> = files.iter().take(5).map(String::as_str).collect();
                why.push(format!(
                    "changed: {}{}",
                    shown.join(", "),
                    if files.len() > 5 {
                        format!(" and {} more", files.len() - 5)
                    } else {
                        String::new()
                    }
                ));
            }
            if !deps.is_empty() {
                let names: Vec<String> = deps.iter().map(|d| format!("`{d}`")).collect();
                why.push(format!("depends on {} (affected)", names.join(", ")));
            }
            AffectedService {
                name: s.name.clone(),
                repo: s.repo.clone(),
                files,
                via: deps,
                why: why.join("; "),
            }
        })
        .collect();
    Affected { services, repos }
}
