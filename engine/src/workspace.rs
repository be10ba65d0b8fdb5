//! The facade the CLI and the API both call: find and load the manifest, open the store, and run
//! the workspace-wide git actions (assemble, sync, status, lock), recording their results.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::git::{self, FetchInfo, LockEntry, Lockfile, Progress, RepoOutcome, RepoStatus};
use crate::manifest::{self, Manifest, ManifestError};
use crate::model::{SyncAction, SyncResult};
use crate::plugin::state::Cancel;
use crate::scheduler::repo_run::RepoRun;
use crate::scheduler::{self, PlanError, RunMeta, RunOptions, RunReport, Selection};
use crate::store::{RepoRecord, Store, StoreError};

/// Name of the state folder beside the manifest.
pub const STATE_DIR: &str = ".nestr";

/// Why a workspace action could not run at all (per-repository failures are outcomes instead).
#[derive(Debug, thiserror::Error)]
pub enum WorkspaceError {
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A problem with `nestr.lock` or with what `--locked` needs.
    #[error("{0}")]
    Lock(String),
    /// A run could not start (bad selection, …).
    #[error("{0}")]
    Plan(String),
    /// A run could not complete (it is recorded failed).
    #[error("{0}")]
    Failed(String),
}

impl WorkspaceError {
    pub fn help(&self) -> Option<String> {
        match self {
            WorkspaceError::Manifest(e) => e.help(),
            WorkspaceError::Store(e) => e.help(),
            WorkspaceError::Lock(_) | WorkspaceError::Plan(_) | WorkspaceError::Failed(_) => None,
        }
    }
}

/// Opens the store and marks runs of dead engines interrupted.
fn open_and_recover(state_dir: &Path) -> Result<Store, StoreError> {
    let mut store = Store::open(state_dir)?;
    scheduler::recover::recover(&mut store)?;
    Ok(store)
}

/// Where to find the manifest and the state.
#[derive(Debug, Clone, Default)]
pub struct Location {
    /// `--manifest PATH`; otherwise discovered upward from `cwd`.
    pub manifest: Option<PathBuf>,
    /// `--state DIR`; otherwise `.nestr/` beside the manifest.
    pub state: Option<PathBuf>,
    pub cwd: PathBuf,
}

impl Location {
    /// The manifest file: `--manifest` (relative to `cwd`), else the one found upward from `cwd`.
    pub fn manifest_path(&self) -> Result<PathBuf, ManifestError> {
        match &self.manifest {
            Some(p) => Ok(self.cwd.join(p)),
            None => manifest::discover(&self.cwd),
        }
    }
}

/// Which git work a repository run does.
#[derive(Debug, Clone, Copy)]
pub enum RepoJob {
    Assemble,
    /// `atomic`: update nothing unless every fetch succeeds.
    Sync {
        atomic: bool,
    },
}

/// An assemble or sync run that is recorded and not yet carried out.
pub struct RepoWork<'p> {
    run: RepoRun<'p>,
    job: RepoJob,
    jobs: usize,
    /// The commit each repository is pinned to (`--locked`), in manifest order.
    commits: Vec<Option<git2::Oid>>,
}

impl RepoWork<'_> {
    pub fn run_id(&self) -> &str {
        self.run.run_id()
    }
}

/// A loaded workspace.
pub struct Workspace {
    pub manifest: Manifest,
    state_dir: PathBuf,
    store: Option<Store>,
    /// Who starts runs of this workspace (assemble and sync are recorded as runs too), and where
    /// their events go.
    pub meta: RunMeta,
}

impl Workspace {
    /// Finds and validates the manifest. The store is opened on first use.
    pub fn load(at: &Location) -> Result<Workspace, WorkspaceError> {
        let path = at.manifest_path()?;
        let manifest = manifest::load(&path)?;
        crate::plugin::check_config(&manifest).map_err(ManifestError::Invalid)?;
        tracing::info!(
            manifest = %manifest.path.display(),
            repos = manifest.repos.len(),
            services = manifest.services.len(),
            "loaded manifest"
        );
        let state_dir = match &at.state {
            Some(s) => at.cwd.join(s),
            None => manifest.root.join(STATE_DIR),
        };
        Ok(Workspace::with_manifest(manifest, state_dir))
    }

    /// A workspace over an already loaded manifest (the API server loads it once).
    pub fn with_manifest(manifest: Manifest, state_dir: PathBuf) -> Workspace {
        Workspace {
            manifest,
            state_dir,
            store: None,
            meta: RunMeta::default(),
        }
    }

    /// The folder holding `state.db`.
    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// The store, opened (and migrated) on first use.
    pub fn store(&mut self) -> Result<&mut Store, StoreError> {
        let store = match self.store.take() {
            Some(s) => s,
            None => open_and_recover(&self.state_dir)?,
        };
        Ok(self.store.insert(store))
    }

    fn locked_commits(&self, locked: bool) -> Result<Vec<Option<git2::Oid>>, WorkspaceError> {
        if !locked {
            return Ok(vec![None; self.manifest.repos.len()]);
        }
        let lock = Lockfile::read(&Lockfile::path(&self.manifest)).map_err(WorkspaceError::Lock)?;
        self.manifest
            .repos
            .iter()
            .map(|r| lock.commit(&r.name).map(Some).map_err(WorkspaceError::Lock))
            .collect()
    }

    /// Clones every missing repository (at most `jobs` at once) and records the results.
    pub fn assemble(
        &mut self,
        jobs: usize,
        locked: bool,
        progress: &dyn Progress,
    ) -> Result<Vec<RepoOutcome>, WorkspaceError> {
        let work = self.begin_repo_work(RepoJob::Assemble, jobs, locked, progress)?;
        self.carry_out(work)
    }

    /// Fetches every repository, then updates those that can be updated without losing local
    /// work. With `atomic`, a failed fetch means nothing is updated.
    pub fn sync(
        &mut self,
        jobs: usize,
        atomic: bool,
        locked: bool,
        progress: &dyn Progress,
    ) -> Result<Vec<RepoOutcome>, WorkspaceError> {
        let work = self.begin_repo_work(RepoJob::Sync { atomic }, jobs, locked, progress)?;
        self.carry_out(work)
    }

    /// Records an assemble or sync run (one queued step per repository, reporting to
    /// `progress`), to be carried out by [`Workspace::carry_out`]: the API answers in between.
    pub fn begin_repo_work<'p>(
        &self,
        job: RepoJob,
        jobs: usize,
        locked: bool,
        progress: &'p dyn Progress,
    ) -> Result<RepoWork<'p>, WorkspaceError> {
        let commits = self.locked_commits(locked)?;
        let (operation, options) = match job {
            RepoJob::Assemble => {
                tracing::info!(jobs, locked, "assemble");
                (
                    "assemble",
                    serde_json::json!({"jobs": jobs, "locked": locked}),
                )
            }
            RepoJob::Sync { atomic } => {
                tracing::info!(jobs, atomic, locked, "sync");
                (
                    "sync",
                    serde_json::json!({"jobs": jobs, "atomic": atomic, "locked": locked}),
                )
            }
        };
        let names: Vec<String> = self.manifest.repos.iter().map(|r| r.name.clone()).collect();
        let store = open_and_recover(&self.state_dir)?;
        let run = RepoRun::start(
            store,
            &self.state_dir,
            operation,
            &names,
            options,
            &self.meta,
            progress,
        )?;
        Ok(RepoWork {
            run,
            job,
            jobs,
            commits,
        })
    }

    /// Begins a recorded assemble or sync run (a queued one is marked running), carries it out
    /// and records the results. A run that fails or panics on the way still ends in the store:
    /// `failed`, with the reason on its unfinished steps.
    pub fn carry_out(&mut self, work: RepoWork<'_>) -> Result<Vec<RepoOutcome>, WorkspaceError> {
        let run_id = work.run.run_id().to_string();
        let state_dir = work.run.state_dir().to_path_buf();
        let outcome =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.carry_out_inner(work)));
        let why = match outcome {
            Ok(Ok(done)) => return Ok(done),
            Ok(Err(e)) => {
                crate::scheduler::record::end_failed(&state_dir, &run_id, &e.to_string());
                return Err(e);
            }
            Err(panic) => format!(
                "the engine failed while carrying out this run (a bug: please report it): {}",
                crate::scheduler::record::panic_text(panic.as_ref())
            ),
        };
        crate::scheduler::record::end_failed(&state_dir, &run_id, &why);
        Err(WorkspaceError::Failed(why))
    }

    fn carry_out_inner(&mut self, work: RepoWork<'_>) -> Result<Vec<RepoOutcome>, WorkspaceError> {
        let RepoWork {
            mut run,
            job,
            jobs,
            commits,
        } = work;
        if !run.begin()? {
            return Err(WorkspaceError::Failed(
                "the run ended while it was queued (its server stopped)".into(),
            ));
        }
        let (action, outcomes) = match job {
            RepoJob::Assemble => {
                let items: Vec<_> = self.manifest.repos.iter().zip(&commits).collect();
                let manifest = &self.manifest;
                let outcomes = git::parallel(&items, jobs, |(repo, commit)| {
                    let o = git::assemble_one(manifest, repo, **commit, &run);
                    run.finish(&o);
                    o
                });
                (SyncAction::Assemble, outcomes)
            }
            RepoJob::Sync { atomic } => (
                SyncAction::Sync,
                self.update_all(&run, jobs, atomic, &commits)?,
            ),
        };
        self.record(action, &outcomes)?;
        run.close()?;
        Ok(outcomes)
    }

    /// Sync's two phases: fetch every repository, then update what can be updated.
    fn update_all(
        &mut self,
        run: &RepoRun<'_>,
        jobs: usize,
        atomic: bool,
        commits: &[Option<git2::Oid>],
    ) -> Result<Vec<RepoOutcome>, WorkspaceError> {
        let progress = run;
        let last_heads: Vec<Option<git2::Oid>> = {
            let names: Vec<String> = self.manifest.repos.iter().map(|r| r.name.clone()).collect();
            let store = self.store()?;
            names
                .iter()
                .map(|n| {
                    store
                        .last_head(n)
                        .ok()
                        .flatten()
                        .and_then(|h| git2::Oid::from_str(&h).ok())
                })
                .collect()
        };
        let manifest = &self.manifest;
        let fetched: Vec<Result<FetchInfo, String>> =
            git::parallel(&manifest.repos, jobs, |repo| {
                git::fetch_one(manifest, repo, progress)
            });
        let failed: Vec<&str> = manifest
            .repos
            .iter()
            .zip(&fetched)
            .filter(|(_, f)| f.is_err())
            .map(|(r, _)| r.name.as_str())
            .collect();
        let items: Vec<_> = manifest
            .repos
            .iter()
            .zip(&fetched)
            .zip(commits)
            .zip(last_heads)
            .collect();
        let outcomes = git::parallel(&items, jobs, |(((repo, fetch), commit), last)| {
            let o = match fetch {
                Err(e) => RepoOutcome::failed(repo, format!("fetch failed: {e}")),
                Ok(_) if atomic && !failed.is_empty() => RepoOutcome::new(
                    repo,
                    SyncResult::Skipped,
                    format!(
                        "not updated: --atomic, and the fetch of {} failed",
                        failed.join(", ")
                    ),
                ),
                Ok(info) => git::update_one(manifest, repo, info, **commit, *last),
            };
            progress.finish(&o);
            o
        });
        Ok(outcomes)
    }

    /// The status of every repository, in manifest order.
    pub fn status(&self, jobs: usize) -> Vec<Result<RepoStatus, String>> {
        git::status_all(&self.manifest, jobs)
    }

    /// Writes `nestr.lock` with the commit every repository has checked out.
    pub fn lock(&self) -> Result<(PathBuf, Lockfile), WorkspaceError> {
        let mut repos = BTreeMap::new();
        let mut missing = Vec::new();
        for row in self.status(4) {
            match row {
                Ok(RepoStatus {
                    name,
                    head: Some(head),
                    branch,
                    ..
                }) => {
                    repos.insert(
                        name,
                        LockEntry {
                            commit: head,
                            branch,
                        },
                    );
                }
                Ok(RepoStatus { name, .. }) => missing.push(name),
                Err(e) => return Err(WorkspaceError::Lock(e)),
            }
        }
        if !missing.is_empty() {
            return Err(WorkspaceError::Lock(format!(
                "cannot lock: {} not assembled (or without a commit); run `nestr assemble` first",
                missing.join(", ")
            )));
        }
        let lock = Lockfile::new(repos);
        let path = Lockfile::path(&self.manifest);
        lock.write(&path).map_err(WorkspaceError::Lock)?;
        Ok((path, lock))
    }

    /// Runs `operation` over the selected services in dependency order, publishing every
    /// transition on `self.meta.events`.
    pub fn run_operation(
        &mut self,
        operation: &str,
        selection: &Selection,
        options: &RunOptions,
        cancel: Cancel,
    ) -> Result<RunReport, WorkspaceError> {
        let plan = self.plan(operation, selection)?;
        self.run_plan(plan, selection, options, cancel)
    }

    /// Runs a plan made by the caller (a deploy's rollback orders its steps in reverse), as
    /// [`Workspace::run_operation`] runs the plan it makes.
    pub fn run_plan(
        &mut self,
        plan: scheduler::Plan,
        selection: &Selection,
        options: &RunOptions,
        cancel: Cancel,
    ) -> Result<RunReport, WorkspaceError> {
        let store = match self.store.take() {
            Some(s) => s,
            None => open_and_recover(&self.state_dir)?,
        };
        let (report, store) = scheduler::record_reading_ahead(
            &self.manifest,
            store,
            &self.state_dir,
            &self.meta,
            plan,
            selection,
            options,
        )
        .and_then(|run| run.execute_blocking(&self.manifest, cancel))
        .map_err(|e| match e {
            PlanError::Selection(m) => WorkspaceError::Plan(m),
            PlanError::Store(e) => WorkspaceError::Store(e),
        })?;
        self.store = Some(store);
        Ok(report)
    }

    /// The repositories named (every repository when none is); an unknown name is a
    /// [`WorkspaceError::Plan`] listing the repositories.
    pub fn repos_named(
        &self,
        names: &[String],
    ) -> Result<Vec<&crate::manifest::Repo>, WorkspaceError> {
        let m = &self.manifest;
        if names.is_empty() {
            return Ok(m.repos.iter().collect());
        }
        names
            .iter()
            .map(|r| {
                m.repo(r).ok_or_else(|| {
                    let all: Vec<&str> = m.repos.iter().map(|r| r.name.as_str()).collect();
                    WorkspaceError::Plan(format!(
                        "there is no repository `{r}`; repositories: {}",
                        all.join(", ")
                    ))
                })
            })
            .collect()
    }

    /// `nestr switch`: the selected repositories to `branch` (made where missing when `create`),
    /// all or none; the reasons when any refused (then nothing changed).
    pub fn switch(
        &self,
        repos: &[String],
        branch: &str,
        create: bool,
    ) -> Result<Result<Vec<git::branch::SwitchOutcome>, Vec<String>>, WorkspaceError> {
        let chosen = self.repos_named(repos)?;
        Ok(git::branch::switch_all(
            &self.manifest,
            &chosen,
            branch,
            create,
        ))
    }

    /// `nestr push`: each selected repository's current branch to `origin`, `jobs` at once.
    pub fn push(
        &self,
        repos: &[String],
        jobs: usize,
    ) -> Result<Vec<git::branch::PushOutcome>, WorkspaceError> {
        let chosen = self.repos_named(repos)?;
        let manifest = &self.manifest;
        Ok(git::parallel(&chosen, jobs, |r| {
            git::branch::push_one(manifest, r)
        }))
    }

    /// The folders `nestr exec` runs in: the repositories named (every repository when nothing
    /// is named), or the folders of the services named or tagged. Every folder must exist.
    pub fn exec_targets(
        &self,
        repos: &[String],
        services: &[String],
        tags: &[String],
    ) -> Result<Vec<scheduler::exec_run::ExecTarget>, WorkspaceError> {
        use scheduler::exec_run::ExecTarget;
        let m = &self.manifest;
        let missing = |name: &str, dir: &Path| {
            WorkspaceError::Plan(format!(
                "`{name}` has no folder at {} yet: run `nestr assemble` first",
                dir.display()
            ))
        };
        if services.is_empty() && tags.is_empty() {
            let chosen = self.repos_named(repos)?;
            return chosen
                .into_iter()
                .map(|r| {
                    let dir = m.repo_dir(r);
                    if dir.is_dir() {
                        Ok(ExecTarget {
                            name: r.name.clone(),
                            dir,
                        })
                    } else {
                        Err(missing(&r.name, &dir))
                    }
                })
                .collect();
        }
        let sel = scheduler::Selection {
            services: services.to_vec(),
            tags: tags.to_vec(),
            with_deps: false,
            with_dependents: false,
        };
        let named = scheduler::select(m, &sel, None).map_err(|e| WorkspaceError::Plan(e.0))?;
        m.services
            .iter()
            .filter(|s| named.contains(s.name.as_str()))
            .map(|s| {
                let repo = m
                    .repo(&s.repo)
                    .ok_or_else(|| WorkspaceError::Plan(format!("no repository `{}`", s.repo)))?;
                let dir = scheduler::service_dir(&m.repo_dir(repo), &s.path)
                    .map_err(|_| missing(&s.name, &m.repo_dir(repo).join(&s.path)))?;
                Ok(ExecTarget {
                    name: s.name.clone(),
                    dir,
                })
            })
            .collect()
    }

    /// `nestr exec`: runs the user's command in each target folder, recorded as a run.
    pub fn exec(
        &mut self,
        job: scheduler::exec_run::ExecJob,
        cancel: Cancel,
    ) -> Result<RunReport, WorkspaceError> {
        let store = match self.store.take() {
            Some(s) => s,
            None => open_and_recover(&self.state_dir)?,
        };
        let (report, store) =
            scheduler::exec_run::run_exec(store, &self.state_dir, &self.meta, job, cancel)
                .map_err(|e| match e {
                    scheduler::exec_run::ExecError::Store(e) => WorkspaceError::Store(e),
                    scheduler::exec_run::ExecError::Run(m) => WorkspaceError::Failed(m),
                })?;
        self.store = Some(store);
        Ok(report)
    }

    /// The plan of a run, without running or recording anything.
    pub fn plan(
        &self,
        operation: &str,
        selection: &Selection,
    ) -> Result<scheduler::Plan, WorkspaceError> {
        scheduler::plan(&self.manifest, operation, selection).map_err(|e| WorkspaceError::Plan(e.0))
    }

    fn record(&mut self, action: SyncAction, outcomes: &[RepoOutcome]) -> Result<(), StoreError> {
        for o in outcomes {
            tracing::debug!(repo = %o.name, result = o.result.as_str(), message = %o.message, "{}", action.as_str());
        }
        let records: Vec<RepoRecord> = outcomes
            .iter()
            .filter_map(|o| {
                let repo = self.manifest.repo(&o.name)?;
                Some(RepoRecord {
                    name: o.name.clone(),
                    url: repo.url.clone(),
                    path: repo.path.to_string_lossy().into_owned(),
                    branch: o.branch.clone(),
                    old_head: o.old_head.clone(),
                    head: o.head.clone(),
                    result: o.result,
                    message: o.message.clone(),
                })
            })
            .collect();
        self.store()?.record_repo_results(action, &records)
    }
}
