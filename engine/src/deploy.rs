//! Deploys to environments (`[environments.NAME]`): a recorded **plan** (every repository's
//! commit, the services in dependency order grouped in waves, each service's current and target
//! version with the commits between, and its hash), an **approval** where the environment asks
//! for one (never by the plan's author), and an **apply** that carries out exactly that plan —
//! refusing a stale one — one apply per environment at a time (a lock owned by the applying
//! process, taken over when that process is gone). Each service's deploy is gated by its plugin's
//! health check and the environment's own gate (`plugin::gate`); a failure rolls back what the
//! apply deployed, in reverse dependency order, to the version that ran before (each rollback
//! gated too); a gate with no verdict pauses the apply for [`resume`] or [`abort`]. Deploys and
//! rollbacks are runs of the one run lifecycle; every plan, approval, apply, verdict and
//! rollback is an audit record (`deploy_events`), and `status` says what runs where.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::manifest::{Environment, Manifest};
use crate::model::{CacheMode, ContinueMode, StepStatus};
use crate::plugin::state::Cancel;
use crate::scheduler::{
    DeployTarget, DeployTargets, Plan as RunPlan, PlannedStep, RunOptions, RunReport, Selection,
};
use crate::store::{LockRefused, PlanRow, Store, StoreError};
use crate::workspace::{Workspace, WorkspaceError};

/// The plan file format's version.
pub const PLAN_FORMAT: u32 = 1;

/// At most this many commits are listed per service in a plan.
const COMMITS_LISTED: usize = 20;

/// A deploy plan as written to `--out FILE` and recorded in the store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeployPlan {
    pub nestr_plan: u32,
    /// The sha256 of `body` (as JSON): the plan's identity.
    pub id: String,
    #[serde(flatten)]
    pub body: PlanBody,
}

/// What a plan says.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlanBody {
    pub environment: String,
    pub operation: String,
    pub created_at: String,
    pub created_by: String,
    /// A second person must approve it before it is applied.
    pub approval: bool,
    /// The newest audit record that ended an apply to this environment when the plan was made:
    /// another apply ending after it makes the plan stale.
    pub after: i64,
    /// The head commit of every repository the plan deploys from.
    pub repos: BTreeMap<String, Option<String>>,
    /// Services in dependency order, grouped: a wave deploys after the one before it.
    pub waves: Vec<Vec<String>>,
    pub services: Vec<PlannedService>,
}

/// One service in a plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlannedService {
    pub service: String,
    pub repo: String,
    /// The version running in the environment now, if one is recorded.
    pub current: Option<String>,
    /// The version this plan deploys.
    pub target: Option<String>,
    /// The commits between them (`abc1234 subject`), newest first, at most 20.
    pub commits: Vec<String>,
    /// How many commits lie between them (none known: null).
    pub behind: Option<usize>,
}

impl DeployPlan {
    fn of(body: PlanBody) -> DeployPlan {
        DeployPlan {
            nestr_plan: PLAN_FORMAT,
            id: digest(&body),
            body,
        }
    }

    /// Reads a plan file, checking that its hash is its content's.
    pub fn read(path: &std::path::Path) -> Result<DeployPlan, DeployError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            DeployError::Refused(format!("cannot read the plan {}: {e}", path.display()))
        })?;
        let plan: DeployPlan = serde_json::from_str(&text).map_err(|e| {
            DeployError::Refused(format!(
                "{} is not a nestr deploy plan: {e}",
                path.display()
            ))
        })?;
        if plan.nestr_plan != PLAN_FORMAT {
            return Err(DeployError::Refused(format!(
                "{} is plan format {}; this nestr reads format {PLAN_FORMAT}",
                path.display(),
                plan.nestr_plan
            )));
        }
        if digest(&plan.body) != plan.id {
            return Err(DeployError::Refused(format!(
                "{} was changed after it was made (its content no longer has hash {}); make a \
                 new plan with `nestr deploy plan {}`",
                path.display(),
                short(&plan.id),
                plan.body.environment
            )));
        }
        Ok(plan)
    }
}

fn digest(body: &PlanBody) -> String {
    hex::encode(Sha256::digest(
        serde_json::to_vec(body).unwrap_or_default().as_slice(),
    ))
}

fn short(id: &str) -> &str {
    &id[..id.len().min(12)]
}

/// Why a deploy command did nothing (or stopped).
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    /// Refused before anything was deployed: the message says why and what to do.
    #[error("{0}")]
    Refused(String),
    /// No such environment or plan.
    #[error("{0}")]
    NotFound(String),
    #[error(transparent)]
    Workspace(#[from] WorkspaceError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// How an apply ended.
#[derive(Debug, Clone, Serialize)]
pub struct ApplyReport {
    pub plan: String,
    pub environment: String,
    /// `applied`, `paused`, `rolled_back`, `rollback_failed` or `interrupted`.
    pub state: String,
    /// The deploy run (none for an abort, which only rolls back).
    pub run: Option<RunReport>,
    pub rollback: Option<RunReport>,
    /// Services whose rollback could not run (no earlier version recorded), with why.
    pub not_rolled_back: Vec<(String, String)>,
}

/// One service's row of `deploy status`.
#[derive(Debug, Clone, Serialize)]
pub struct ServiceStatus {
    pub service: String,
    pub repo: String,
    /// The version running there (deployed or rolled back to), if any is recorded.
    pub commit: Option<String>,
    /// When, by which run and plan, and how (`deployed`, `rolled_back`).
    pub at: Option<String>,
    pub run_id: Option<String>,
    pub plan_id: Option<String>,
    pub action: Option<String>,
    /// A later deploy of it failed or its rollback did: what runs there is unknown.
    pub unknown: bool,
    /// The workspace's version of it (the lockfile's, else its checkout's head).
    pub workspace: Option<String>,
    /// How many commits the running version is behind the workspace's.
    pub behind: Option<usize>,
}

/// One environment in `deploy status`.
#[derive(Debug, Clone, Serialize)]
pub struct EnvironmentStatus {
    pub name: String,
    pub approval: bool,
    /// The apply holding the environment, if one is running (pid 0: a paused apply).
    pub lock: Option<crate::store::LockRow>,
    pub services: Vec<ServiceStatus>,
    /// Its newest plans (at most 10), newest first.
    pub plans: Vec<PlanRow>,
}

/// Who the CLI acts as: `NESTR_USER`, else git's `user.name`, else the login name.
pub fn actor() -> String {
    if let Ok(u) = std::env::var("NESTR_USER")
        && !u.trim().is_empty()
    {
        return u.trim().to_string();
    }
    if let Some(name) = git2::Config::open_default()
        .ok()
        .and_then(|c| c.get_string("user.name").ok())
        .filter(|n| !n.trim().is_empty())
    {
        return name.trim().to_string();
    }
    std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "unknown".to_string())
}

/// The environment named `name`, or an error listing the manifest's.
pub fn environment<'m>(m: &'m Manifest, name: &str) -> Result<&'m Environment, DeployError> {
    m.environments.get(name).ok_or_else(|| {
        let known: Vec<&str> = m.environments.keys().map(String::as_str).collect();
        DeployError::NotFound(if known.is_empty() {
            format!(
                "the manifest defines no environment `{name}`: add `[environments.{name}]` to \
                 nestr.toml"
            )
        } else {
            format!(
                "the manifest defines no environment `{name}`; {} (environments: {})",
                crate::manifest::did_you_mean(name, known.iter().copied()),
                known.join(", ")
            )
        })
    })
}

/// Marks applies whose process is gone interrupted (their plan and an audit record) and frees
/// their environments' locks; returns `(environment, plan)` of each.
pub fn recover(store: &mut Store) -> Result<Vec<(String, String)>, StoreError> {
    let mut out = Vec::new();
    for lock in store.deploy_locks()? {
        // pid 0: a paused apply holds it, with no process.
        if lock.pid == 0 || crate::scheduler::recover::owner_alive(Some(lock.pid), lock.pid_start) {
            continue;
        }
        store.set_plan_state(&lock.plan_id, "interrupted", None, None)?;
        store.deploy_event(
            &lock.environment,
            Some(&lock.plan_id),
            "interrupted",
            None,
            &serde_json::json!({
                "pid": lock.pid,
                "why": "the process applying the plan is gone",
            }),
        )?;
        store.release_deploy_lock(&lock.environment, &lock.plan_id)?;
        out.push((lock.environment, lock.plan_id));
    }
    Ok(out)
}

/// The head commit of every repository.
fn heads(m: &Manifest) -> HashMap<String, Option<String>> {
    m.repos
        .iter()
        .map(|r| (r.name.clone(), crate::git::head_and_branch(m, r).0))
        .collect()
}

/// `abc1234 subject` of the commits reachable from `to` but not from `from` (all of `to`'s when
/// `from` is unknown), newest first, at most [`COMMITS_LISTED`], and how many there are.
fn commits_between(
    m: &Manifest,
    repo: &str,
    from: Option<&str>,
    to: Option<&str>,
) -> (Vec<String>, Option<usize>) {
    let Some(to) = to else {
        return (Vec::new(), None);
    };
    if from == Some(to) {
        return (Vec::new(), Some(0));
    }
    let Some(r) = m.repo(repo) else {
        return (Vec::new(), None);
    };
    let Some(git) = crate::git::open_exact(&m.repo_dir(r)) else {
        return (Vec::new(), None);
    };
    let walk = || -> Result<(Vec<String>, usize), git2::Error> {
        let mut walk = git.revwalk()?;
        walk.push(git2::Oid::from_str(to)?)?;
        let known_from = match from.map(git2::Oid::from_str) {
            Some(Ok(oid)) if git.find_commit(oid).is_ok() => {
                walk.hide(oid)?;
                true
            }
            _ => false,
        };
        let mut listed = Vec::new();
        let mut count = 0;
        for oid in walk {
            let oid = oid?;
            count += 1;
            if listed.len() < COMMITS_LISTED
                && let Ok(c) = git.find_commit(oid)
            {
                let id = oid.to_string();
                let subject: &str = c.summary().ok().flatten().unwrap_or("");
                listed.push(format!(
                    "{} {}",
                    &id[..7],
                    crate::views::untrusted(subject, false)
                ));
            }
        }
        Ok((listed, if known_from { count } else { usize::MAX }))
    };
    match walk() {
        Ok((listed, usize::MAX)) => (listed, None),
        Ok((listed, n)) => (listed, Some(n)),
        Err(_) => (Vec::new(), None),
    }
}

/// Makes and records a plan of deploying the selected services (every service with the
/// environment's deploy operation when none is selected) to `env`.
pub fn plan(
    ws: &mut Workspace,
    env: &str,
    selection: &Selection,
    who: &str,
) -> Result<DeployPlan, DeployError> {
    let environment = environment(&ws.manifest, env)?.clone();
    let run_plan = ws.plan(&environment.operation, selection)?;
    let heads = heads(&ws.manifest);
    let store = ws.store()?;
    recover(store)?;
    let after = store.last_apply_end(env)?;
    let mut services = Vec::new();
    let mut repos = BTreeMap::new();
    let deployable: Vec<&PlannedStep> =
        run_plan.steps.iter().filter(|s| s.skip.is_none()).collect();
    for step in &deployable {
        let Some(svc) = ws.manifest.service(&step.service).cloned() else {
            continue;
        };
        let target = heads.get(&svc.repo).cloned().flatten();
        repos.insert(svc.repo.clone(), target.clone());
        let current = ws
            .store()?
            .running_version(env, &svc.name)?
            .and_then(|d| d.commit);
        let (commits, behind) = commits_between(
            &ws.manifest,
            &svc.repo,
            current.as_deref(),
            target.as_deref(),
        );
        services.push(PlannedService {
            service: svc.name.clone(),
            repo: svc.repo.clone(),
            current,
            target,
            commits,
            behind,
        });
    }
    if services.is_empty() {
        return Err(DeployError::Refused(format!(
            "no selected service defines `{}`, the operation that deploys to {env}",
            environment.operation
        )));
    }
    let in_plan: HashSet<&str> = deployable.iter().map(|s| s.service.as_str()).collect();
    let waves = run_plan
        .levels()
        .into_iter()
        .map(|level| {
            level
                .into_iter()
                .filter(|s| in_plan.contains(s.service.as_str()))
                .map(|s| s.service.clone())
                .collect::<Vec<_>>()
        })
        .filter(|w| !w.is_empty())
        .collect();
    let body = PlanBody {
        environment: env.to_string(),
        operation: environment.operation.clone(),
        created_at: crate::model::rfc3339(crate::store::now_ms()),
        created_by: who.to_string(),
        approval: environment.approval,
        after,
        repos,
        waves,
        services,
    };
    let plan = DeployPlan::of(body);
    let text = serde_json::to_string(&plan).unwrap_or_default();
    let store = ws.store()?;
    store.insert_plan(&plan.id, env, &text, who)?;
    store.deploy_event(
        env,
        Some(&plan.id),
        "planned",
        Some(who),
        &serde_json::json!({
            "services": plan.body.services.iter().map(|s| &s.service).collect::<Vec<_>>(),
            "repos": plan.body.repos,
        }),
    )?;
    Ok(plan)
}

/// A recorded plan by hash (or unique prefix) or by the path of its file; the file's content
/// must be the recorded plan's.
pub fn find(ws: &mut Workspace, plan: &str) -> Result<(DeployPlan, PlanRow), DeployError> {
    let path = std::path::Path::new(plan);
    let from_file = path.is_file().then(|| DeployPlan::read(path)).transpose()?;
    recorded(ws, plan, from_file)
}

/// A recorded plan by its hash or a unique prefix of it, never a file (what the API takes).
pub fn find_id(ws: &mut Workspace, id: &str) -> Result<(DeployPlan, PlanRow), DeployError> {
    recorded(ws, id, None)
}

fn recorded(
    ws: &mut Workspace,
    plan: &str,
    from_file: Option<DeployPlan>,
) -> Result<(DeployPlan, PlanRow), DeployError> {
    let path = std::path::Path::new(plan);
    let key = from_file.as_ref().map_or(plan, |p| p.id.as_str());
    let row = ws.store()?.plan(key)?.ok_or_else(|| {
        DeployError::NotFound(format!(
            "no plan `{}` was made in this workspace; make one with `nestr deploy plan ENV --out FILE`",
            short(key)
        ))
    })?;
    let recorded: DeployPlan = serde_json::from_str(&row.body).map_err(|e| {
        DeployError::Refused(format!(
            "the recorded plan {} is unreadable: {e}",
            short(&row.id)
        ))
    })?;
    if let Some(f) = &from_file
        && f != &recorded
    {
        return Err(DeployError::Refused(format!(
            "{} does not match the recorded plan {}; make a new plan",
            path.display(),
            short(&row.id)
        )));
    }
    Ok((recorded, row))
}

/// Records `who`'s approval of a plan; its author cannot approve it.
pub fn approve(ws: &mut Workspace, plan: &str, who: &str) -> Result<PlanRow, DeployError> {
    let (p, row) = find(ws, plan)?;
    if row.created_by == who {
        return Err(DeployError::Refused(format!(
            "{who} made plan {}: someone else must approve it",
            short(&row.id)
        )));
    }
    if !matches!(row.state.as_str(), "planned" | "approved") {
        return Err(DeployError::Refused(format!(
            "plan {} is {}: only a plan not applied yet can be approved",
            short(&row.id),
            row.state
        )));
    }
    let store = ws.store()?;
    store.approve_plan(&row.id, who)?;
    store.deploy_event(
        &p.body.environment,
        Some(&row.id),
        "approved",
        Some(who),
        &serde_json::json!({}),
    )?;
    Ok(store.plan(&row.id)?.unwrap_or(row))
}

/// Why a plan can no longer be applied as it is, if it cannot.
fn staleness(ws: &mut Workspace, p: &DeployPlan) -> Result<Option<String>, DeployError> {
    let now = heads(&ws.manifest);
    for (repo, planned) in &p.body.repos {
        let head = now.get(repo).cloned().flatten();
        if &head != planned {
            return Ok(Some(format!(
                "repository {repo} moved since the plan was made ({} → {})",
                planned.as_deref().map_or("none", short),
                head.as_deref().map_or("none", short)
            )));
        }
    }
    let last = ws.store()?.last_apply_end(&p.body.environment)?;
    if last != p.body.after {
        return Ok(Some(format!(
            "another deploy to {} finished since the plan was made",
            p.body.environment
        )));
    }
    Ok(None)
}

/// The rollback plan: `services` with every dependency edge reversed (a service is rolled back
/// after the services that depend on it).
fn reversed(forward: &RunPlan, services: &[String]) -> RunPlan {
    let set: HashSet<&str> = services.iter().map(String::as_str).collect();
    let chosen: Vec<&PlannedStep> = forward
        .steps
        .iter()
        .filter(|s| set.contains(s.service.as_str()))
        .collect();
    let mut steps: Vec<PlannedStep> = Vec::new();
    let mut level: HashMap<&str, usize> = HashMap::new();
    for s in chosen.iter().rev() {
        let dependents: Vec<String> = chosen
            .iter()
            .filter(|d| d.depends_on.iter().any(|x| x == &s.service))
            .map(|d| d.service.clone())
            .collect();
        let lvl = dependents
            .iter()
            .filter_map(|d| level.get(d.as_str()))
            .map(|l| l + 1)
            .max()
            .unwrap_or(0);
        level.insert(s.service.as_str(), lvl);
        steps.push(PlannedStep {
            service: s.service.clone(),
            plugin: s.plugin.clone(),
            skip: None,
            depends_on: dependents,
            level: lvl,
            concurrency: s.concurrency,
        });
    }
    RunPlan {
        operation: forward.operation.clone(),
        steps,
    }
}

/// Applies a recorded plan, exactly: refused when it is stale, unapproved where approval is
/// needed, already applied, or while another apply holds the environment. A failed deploy
/// rolls back what this apply deployed, in reverse order; an inconclusive health gate pauses
/// the apply (the environment stays held) until [`resume`] or [`abort`].
pub fn apply(
    ws: &mut Workspace,
    plan: &str,
    who: &str,
    cancel: Cancel,
    started: &dyn Fn(),
) -> Result<ApplyReport, DeployError> {
    recover(ws.store()?)?;
    let (p, row) = find(ws, plan)?;
    let env_name = p.body.environment.clone();
    let environment = environment(&ws.manifest, &env_name)?.clone();
    match row.state.as_str() {
        "planned" | "approved" => {}
        "paused" => {
            return refuse(
                ws,
                &p,
                &row,
                who,
                format!(
                    "plan {} is paused on an inconclusive health gate: `nestr deploy resume {}` or `nestr deploy abort {}`",
                    short(&row.id),
                    short(&row.id),
                    short(&row.id)
                ),
            );
        }
        state => {
            return refuse(
                ws,
                &p,
                &row,
                who,
                format!(
                    "plan {} is {state}: a plan is applied once; make a new one with `nestr deploy plan {env_name}`",
                    short(&row.id)
                ),
            );
        }
    }
    if (p.body.approval || environment.approval) && row.approved_by.is_none() {
        let why = format!(
            "{env_name} needs an approval: someone other than {} runs `nestr deploy approve {}`",
            row.created_by,
            short(&row.id)
        );
        return refuse(ws, &p, &row, who, why);
    }
    if let Some(why) = staleness(ws, &p)? {
        let why = format!(
            "plan {} is stale: {why}; make a new plan with `nestr deploy plan {env_name}`",
            short(&row.id)
        );
        return refuse(ws, &p, &row, who, why);
    }
    lock(ws, &p, &row, who)?;
    {
        let store = ws.store()?;
        store.set_plan_state(&row.id, "applying", None, None)?;
        store.deploy_event(
            &env_name,
            Some(&row.id),
            "apply_started",
            Some(who),
            &serde_json::json!({
                "services": p.body.services.iter().map(|s| &s.service).collect::<Vec<_>>(),
                "pid": std::process::id(),
            }),
        )?;
    }
    started();
    let names: Vec<String> = p.body.services.iter().map(|s| s.service.clone()).collect();
    let result = proceed(ws, &p, &row, &environment, who, cancel, Vec::new(), names);
    unlock(ws, &p, &row, &result);
    result
}

/// Goes on with a paused apply: the service whose gate was inconclusive counts as deployed (a
/// human said so), then the services not deployed yet.
pub fn resume(
    ws: &mut Workspace,
    plan: &str,
    who: &str,
    cancel: Cancel,
    started: &dyn Fn(),
) -> Result<ApplyReport, DeployError> {
    recover(ws.store()?)?;
    let (p, row) = find(ws, plan)?;
    let environment = environment(&ws.manifest, &p.body.environment)?.clone();
    paused(ws, &p, &row, who)?;
    lock(ws, &p, &row, who)?;
    let (done, unverified) = progress(ws, &p, &row)?;
    let env = p.body.environment.clone();
    let mut deployed = done;
    for service in &unverified {
        let target = p
            .body
            .services
            .iter()
            .find(|s| &s.service == service)
            .and_then(|s| s.target.clone());
        let store = ws.store()?;
        let run_id = row.run_id.clone().unwrap_or_default();
        store.insert_deployment(
            &env,
            service,
            target.as_deref(),
            "deployed",
            &row.id,
            &run_id,
        )?;
        store.deploy_event(
            &env,
            Some(&row.id),
            "resumed",
            Some(who),
            &serde_json::json!({ "service": service, "gate": "accepted by a person" }),
        )?;
        deployed.push(service.clone());
    }
    ws.store()?
        .set_plan_state(&row.id, "applying", None, None)?;
    started();
    let remaining: Vec<String> = p
        .body
        .services
        .iter()
        .map(|s| s.service.clone())
        .filter(|s| !deployed.contains(s))
        .collect();
    let result = proceed(ws, &p, &row, &environment, who, cancel, deployed, remaining);
    unlock(ws, &p, &row, &result);
    result
}

/// Ends a paused apply by rolling back everything it deployed (the service whose gate was
/// inconclusive included), in reverse order.
pub fn abort(
    ws: &mut Workspace,
    plan: &str,
    who: &str,
    started: &dyn Fn(),
) -> Result<ApplyReport, DeployError> {
    recover(ws.store()?)?;
    let (p, row) = find(ws, plan)?;
    let environment = environment(&ws.manifest, &p.body.environment)?.clone();
    paused(ws, &p, &row, who)?;
    lock(ws, &p, &row, who)?;
    let (done, unverified) = progress(ws, &p, &row)?;
    started();
    ws.store()?.deploy_event(
        &p.body.environment,
        Some(&row.id),
        "aborted",
        Some(who),
        &serde_json::json!({ "deployed": done, "unverified": unverified }),
    )?;
    let result = roll_back(ws, &p, &row, &environment, who, None, done, unverified);
    unlock(ws, &p, &row, &result);
    result
}

/// Refuses a command on a plan that is not paused.
fn paused(ws: &mut Workspace, p: &DeployPlan, row: &PlanRow, who: &str) -> Result<(), DeployError> {
    if row.state == "paused" {
        return Ok(());
    }
    let why = format!(
        "plan {} is {}, not paused: only an apply paused on an inconclusive health gate is resumed or aborted",
        short(&row.id),
        row.state
    );
    refuse(ws, p, row, who, why).map(|_| ())
}

/// The services this plan's apply deployed so far, and those left unverified by a pause.
fn progress(
    ws: &mut Workspace,
    p: &DeployPlan,
    row: &PlanRow,
) -> Result<(Vec<String>, Vec<String>), DeployError> {
    let latest = ws.store()?.latest_deployments(&p.body.environment)?;
    let of_plan = |action: &str| -> Vec<String> {
        p.body
            .services
            .iter()
            .filter(|s| {
                latest
                    .iter()
                    .any(|d| d.service == s.service && d.plan_id == row.id && d.action == action)
            })
            .map(|s| s.service.clone())
            .collect()
    };
    Ok((of_plan("deployed"), of_plan("unverified")))
}

/// Records a refusal in the audit trail and returns it as the error.
fn refuse(
    ws: &mut Workspace,
    p: &DeployPlan,
    row: &PlanRow,
    who: &str,
    why: String,
) -> Result<ApplyReport, DeployError> {
    ws.store()?.deploy_event(
        &p.body.environment,
        Some(&row.id),
        "refused",
        Some(who),
        &serde_json::json!({ "why": why }),
    )?;
    Err(DeployError::Refused(why))
}

/// Takes the environment's lock for this plan and process.
fn lock(ws: &mut Workspace, p: &DeployPlan, row: &PlanRow, who: &str) -> Result<(), DeployError> {
    let env = &p.body.environment;
    match ws.store()?.take_deploy_lock(env, &row.id) {
        Ok(_) => Ok(()),
        Err(LockRefused::Held(h)) if h.pid == 0 => {
            let why = format!(
                "{env} is paused on plan {}: `nestr deploy resume {}` or `nestr deploy abort {}` first",
                short(&h.plan_id),
                short(&h.plan_id),
                short(&h.plan_id)
            );
            refuse(ws, p, row, who, why).map(|_| ())
        }
        Err(LockRefused::Held(h)) => {
            let why = format!(
                "{env} is being deployed by plan {} (process {}, since {}); wait for it to end",
                short(&h.plan_id),
                h.pid,
                crate::model::rfc3339(h.acquired_at)
            );
            refuse(ws, p, row, who, why).map(|_| ())
        }
        Err(LockRefused::Store(e)) => Err(e.into()),
    }
}

/// Releases the lock however the apply ended, except when it paused (the environment stays
/// held, by the plan rather than a process).
fn unlock(
    ws: &mut Workspace,
    p: &DeployPlan,
    row: &PlanRow,
    result: &Result<ApplyReport, DeployError>,
) {
    let Ok(store) = ws.store() else { return };
    let _ = match result {
        Ok(r) if r.state == "paused" => store.pause_deploy_lock(&p.body.environment, &row.id),
        _ => store.release_deploy_lock(&p.body.environment, &row.id),
    };
}

/// The run options of a deploy (or rollback) run, each service told its target.
fn deploy_run(
    ws: &Workspace,
    p: &DeployPlan,
    environment: &Environment,
    rollback: bool,
) -> RunOptions {
    let services = p
        .body
        .services
        .iter()
        .filter_map(|s| {
            let svc = ws.manifest.service(&s.service)?;
            let base = ws
                .manifest
                .operation(svc, &p.body.operation)
                .map(|o| o.config.clone())
                .unwrap_or_default();
            Some((
                s.service.clone(),
                DeployTarget {
                    previous: s.current.clone(),
                    rollback,
                    config: environment.config_for(&s.service, &base),
                    gate: environment
                        .health_for(&s.service)
                        .map(crate::plugin::gate::HealthGate::from),
                },
            ))
        })
        .collect();
    RunOptions {
        jobs: environment.max_parallel as usize,
        // Every rollback is tried, whatever became of the ones before it.
        continue_mode: if rollback {
            ContinueMode::Always
        } else {
            ContinueMode::Never
        },
        cache: CacheMode::Off,
        record: None,
        deploy: Some(Arc::new(DeployTargets {
            environment: environment.name.clone(),
            services,
        })),
    }
}

/// Deploys `remaining` (after `deployed`, already done by this apply) and concludes: applied,
/// paused, interrupted, or rolled back.
#[allow(clippy::too_many_arguments)]
fn proceed(
    ws: &mut Workspace,
    p: &DeployPlan,
    row: &PlanRow,
    environment: &Environment,
    who: &str,
    cancel: Cancel,
    mut deployed: Vec<String>,
    remaining: Vec<String>,
) -> Result<ApplyReport, DeployError> {
    let env = environment.name.as_str();
    let selection = Selection {
        services: remaining.clone(),
        ..Selection::default()
    };
    let forward = ws.plan(&p.body.operation, &selection)?;
    let run = ws.run_plan(
        forward,
        &selection,
        &deploy_run(ws, p, environment, false),
        cancel.clone(),
    )?;
    let mut failed = Vec::new();
    let mut unverified = Vec::new();
    for step in &run.steps {
        let target = p
            .body
            .services
            .iter()
            .find(|s| s.service == step.service)
            .and_then(|s| s.target.clone());
        let inconclusive = step.status == StepStatus::TimedOut
            && step.summary.starts_with(crate::plugin::gate::INCONCLUSIVE);
        let (action, kind) = match step.status {
            StepStatus::Succeeded => ("deployed", "deployed"),
            StepStatus::Skipped | StepStatus::Queued => continue,
            StepStatus::Cancelled if step.started_at.is_none() => continue,
            _ if inconclusive => ("unverified", "gate_inconclusive"),
            _ => ("failed", "deploy_failed"),
        };
        let store = ws.store()?;
        store.insert_deployment(
            env,
            &step.service,
            target.as_deref(),
            action,
            &row.id,
            &run.run_id,
        )?;
        store.deploy_event(
            env,
            Some(&row.id),
            kind,
            Some(who),
            &serde_json::json!({
                "service": step.service, "commit": target, "run_id": run.run_id,
                "status": step.status, "summary": step.summary, "reason": step.reason,
            }),
        )?;
        match action {
            "deployed" => deployed.push(step.service.clone()),
            "unverified" => unverified.push(step.service.clone()),
            _ => failed.push(step.service.clone()),
        }
    }
    let conclude = |ws: &mut Workspace, state: &str, detail: serde_json::Value| {
        let store = ws.store()?;
        store.set_plan_state(&row.id, state, Some(&run.run_id), None)?;
        store.deploy_event(env, Some(&row.id), state, Some(who), &detail)?;
        Ok::<_, DeployError>(())
    };
    let report = |state: &str, run: RunReport| ApplyReport {
        plan: row.id.clone(),
        environment: env.to_string(),
        state: state.to_string(),
        run: Some(run),
        rollback: None,
        not_rolled_back: Vec::new(),
    };
    if failed.is_empty() && unverified.is_empty() && deployed.len() == p.body.services.len() {
        conclude(
            ws,
            "applied",
            serde_json::json!({ "run_id": run.run_id, "services": deployed }),
        )?;
        return Ok(report("applied", run));
    }
    if cancel.is_cancelled() {
        conclude(
            ws,
            "interrupted",
            serde_json::json!({ "run_id": run.run_id, "why": "cancelled", "deployed": deployed }),
        )?;
        return Ok(report("interrupted", run));
    }
    if failed.is_empty() && !unverified.is_empty() {
        conclude(
            ws,
            "paused",
            serde_json::json!({
                "run_id": run.run_id, "deployed": deployed, "unverified": unverified,
                "next": "nestr deploy resume|abort",
            }),
        )?;
        return Ok(report("paused", run));
    }
    // A failure: roll back what this apply touched (the failed services too: their hook may
    // have run).
    let mut touched = deployed;
    touched.extend(unverified);
    let mut out = roll_back(ws, p, row, environment, who, Some(&run), touched, failed)?;
    out.run = Some(run);
    Ok(out)
}

/// Rolls back `touched` and `failed` (what this apply deployed), in reverse dependency order,
/// each to the version that ran before it; a service with none recorded cannot be.
#[allow(clippy::too_many_arguments)]
fn roll_back(
    ws: &mut Workspace,
    p: &DeployPlan,
    row: &PlanRow,
    environment: &Environment,
    who: &str,
    run: Option<&RunReport>,
    touched: Vec<String>,
    failed: Vec<String>,
) -> Result<ApplyReport, DeployError> {
    let env = environment.name.as_str();
    let mut back_set = Vec::new();
    let mut not_rolled_back = Vec::new();
    for s in &p.body.services {
        if !(touched.contains(&s.service) || failed.contains(&s.service)) {
            continue;
        }
        // Even a service redeployed at the version it ran is rolled back: its hook ran, and
        // the platform may have changed something all the same.
        if s.current.is_none() {
            not_rolled_back.push((
                s.service.clone(),
                "no earlier version of it is recorded in this environment".to_string(),
            ));
        } else {
            back_set.push(s.service.clone());
        }
    }
    for (service, why) in &not_rolled_back {
        ws.store()?.deploy_event(
            env,
            Some(&row.id),
            "rollback_skipped",
            Some(who),
            &serde_json::json!({ "service": service, "why": why }),
        )?;
    }
    let all = Selection {
        services: p.body.services.iter().map(|s| s.service.clone()).collect(),
        ..Selection::default()
    };
    let forward = ws.plan(&p.body.operation, &all)?;
    let rollback = if back_set.is_empty() {
        None
    } else {
        let order = reversed(&forward, &back_set);
        ws.store()?.deploy_event(
            env,
            Some(&row.id),
            "rollback",
            Some(who),
            &serde_json::json!({ "services": order.steps.iter().map(|s| &s.service).collect::<Vec<_>>() }),
        )?;
        let selection = Selection {
            services: back_set.clone(),
            ..Selection::default()
        };
        Some(ws.run_plan(
            order,
            &selection,
            &deploy_run(ws, p, environment, true),
            Cancel::default(),
        )?)
    };
    let mut all_back = true;
    if let Some(back) = &rollback {
        for step in &back.steps {
            let previous = p
                .body
                .services
                .iter()
                .find(|s| s.service == step.service)
                .and_then(|s| s.current.clone());
            let ok = step.status == StepStatus::Succeeded;
            all_back &= ok;
            let store = ws.store()?;
            store.insert_deployment(
                env,
                &step.service,
                previous.as_deref(),
                if ok { "rolled_back" } else { "rollback_failed" },
                &row.id,
                &back.run_id,
            )?;
            store.deploy_event(
                env,
                Some(&row.id),
                if ok {
                    "rolled_back_service"
                } else {
                    "rollback_failed_service"
                },
                Some(who),
                &serde_json::json!({
                    "service": step.service, "commit": previous, "run_id": back.run_id,
                    "status": step.status, "summary": step.summary,
                }),
            )?;
        }
    }
    let state = if all_back {
        "rolled_back"
    } else {
        "rollback_failed"
    };
    let store = ws.store()?;
    store.set_plan_state(
        &row.id,
        state,
        run.map(|r| r.run_id.as_str()),
        rollback.as_ref().map(|r| r.run_id.as_str()),
    )?;
    store.deploy_event(
        env,
        Some(&row.id),
        state,
        Some(who),
        &serde_json::json!({
            "run_id": run.map(|r| &r.run_id),
            "rollback_run_id": rollback.as_ref().map(|r| &r.run_id),
            "failed": failed,
            "rolled_back": back_set,
        }),
    )?;
    Ok(ApplyReport {
        plan: row.id.clone(),
        environment: env.to_string(),
        state: state.to_string(),
        run: None,
        rollback,
        not_rolled_back,
    })
}

/// What runs where: for each environment (or `only`), each service with the environment's deploy
/// operation, its running version and how far it is behind the workspace's.
pub fn status(
    ws: &mut Workspace,
    only: Option<&str>,
) -> Result<Vec<EnvironmentStatus>, DeployError> {
    if let Some(name) = only {
        environment(&ws.manifest, name)?;
    }
    recover(ws.store()?)?;
    // The workspace's version: the lockfile's commit where there is one.
    let locked: HashMap<String, String> =
        crate::git::Lockfile::read(&crate::git::Lockfile::path(&ws.manifest))
            .map(|l| {
                l.repos
                    .into_iter()
                    .map(|(name, e)| (name, e.commit))
                    .collect()
            })
            .unwrap_or_default();
    let heads = heads(&ws.manifest);
    let envs: Vec<Environment> = ws
        .manifest
        .environments
        .values()
        .filter(|e| only.is_none_or(|o| o == e.name))
        .cloned()
        .collect();
    let mut out = Vec::new();
    for env in envs {
        let latest: HashMap<String, crate::store::DeploymentRow> = ws
            .store()?
            .latest_deployments(&env.name)?
            .into_iter()
            .map(|d| (d.service.clone(), d))
            .collect();
        let mut services = Vec::new();
        for svc in ws.manifest.services.clone() {
            if ws.manifest.operation(&svc, &env.operation).is_none() {
                continue;
            }
            let running = ws.store()?.running_version(&env.name, &svc.name)?;
            let workspace = locked
                .get(&svc.repo)
                .cloned()
                .or_else(|| heads.get(&svc.repo).cloned().flatten());
            let commit = running.as_ref().and_then(|d| d.commit.clone());
            let behind = match (&commit, &workspace) {
                (Some(c), Some(w)) => commits_between(&ws.manifest, &svc.repo, Some(c), Some(w)).1,
                _ => None,
            };
            let unknown = latest
                .get(&svc.name)
                .is_some_and(|d| matches!(d.action.as_str(), "failed" | "rollback_failed"));
            services.push(ServiceStatus {
                service: svc.name.clone(),
                repo: svc.repo.clone(),
                commit,
                at: running.as_ref().map(|d| crate::model::rfc3339(d.at)),
                run_id: running.as_ref().map(|d| d.run_id.clone()),
                plan_id: running.as_ref().map(|d| d.plan_id.clone()),
                action: running.as_ref().map(|d| d.action.clone()),
                unknown,
                workspace,
                behind,
            });
        }
        out.push(EnvironmentStatus {
            plans: ws.store()?.plans(Some(&env.name), 10)?,
            lock: ws.store()?.deploy_lock(&env.name)?,
            name: env.name.clone(),
            approval: env.approval,
            services,
        });
    }
    Ok(out)
}
