//! `nestr deploy`: `plan` an environment's deploy (recorded; `--out FILE` writes it), `approve`
//! it where the environment asks for a second person, `apply` exactly that plan (in dependency
//! order, each deploy health-gated, a failure rolled back in reverse order, an inconclusive gate
//! pausing it for `resume` or `abort`),
//! `status` of what runs where, and `show` of a plan with its audit trail. The engine's side is
//! `crate::deploy`.

use std::path::PathBuf;

use clap::{Args, Subcommand};

use super::render::{self, Tone, Ui};
use super::{CliError, ExitCode};
use crate::deploy::{self, DeployError, DeployPlan};
use crate::scheduler::Selection;
use crate::workspace::{Workspace, WorkspaceError};

#[derive(Debug, Args)]
pub struct DeployArgs {
    #[command(subcommand)]
    pub command: DeployCommand,
}

#[derive(Debug, Subcommand)]
pub enum DeployCommand {
    /// Record a plan of deploying to ENV: every repository's commit, the services in dependency
    /// order grouped in waves, each one's current and target version. Nothing is deployed.
    Plan {
        env: String,
        /// Only this service (repeatable); with -t, the union.
        #[arg(short = 's', long = "service", value_name = "SERVICE")]
        services: Vec<String>,
        /// Only services with this tag (repeatable).
        #[arg(short = 't', long = "tag", value_name = "TAG")]
        tags: Vec<String>,
        /// Add every service the selection depends on.
        #[arg(long)]
        with_deps: bool,
        /// Write the plan to this file (for `deploy apply FILE`).
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
        /// Print the plan as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Approve a plan (its hash, a prefix of it, or its file); its author cannot.
    Approve {
        plan: String,
        /// Who approves (default: NESTR_USER, git's user.name, or the login name).
        #[arg(long = "as", value_name = "NAME")]
        who: Option<String>,
        /// Print the plan's record as JSON (state, approved_by, approved_at, …).
        #[arg(long)]
        json: bool,
    },
    /// Apply a plan (its file, hash or a prefix of it) exactly as it was made. Exit 0 when every
    /// service was deployed and passed its health check, 1 when the apply rolled back.
    Apply {
        plan: String,
        /// Who applies (default: NESTR_USER, git's user.name, or the login name).
        #[arg(long = "as", value_name = "NAME")]
        who: Option<String>,
        /// Print how it ended as JSON: plan, environment, state, run, rollback.
        #[arg(long)]
        json: bool,
    },
    /// Go on with an apply paused on an inconclusive health gate: that service counts as
    /// deployed, then the rest of the plan is applied.
    Resume {
        plan: String,
        /// Who decides (default: NESTR_USER, git's user.name, or the login name).
        #[arg(long = "as", value_name = "NAME")]
        who: Option<String>,
        /// Print how it ended as JSON, as `apply --json` does.
        #[arg(long)]
        json: bool,
    },
    /// End an apply paused on an inconclusive health gate by rolling back what it deployed, in
    /// reverse order.
    Abort {
        plan: String,
        /// Who decides (default: NESTR_USER, git's user.name, or the login name).
        #[arg(long = "as", value_name = "NAME")]
        who: Option<String>,
        /// Print how it ended as JSON, as `apply --json` does.
        #[arg(long)]
        json: bool,
    },
    /// What runs where: for each environment and service, the deployed commit, when, by which
    /// run and plan, and how far it is behind the workspace (the lockfile, else the checkout).
    Status {
        env: Option<String>,
        /// Print `{"environments": [{name, approval, lock, services: [{service, repo, commit,
        /// at, run_id, plan_id, action, unknown, workspace, behind}]}]}`.
        #[arg(long)]
        json: bool,
    },
    /// A plan with its state and its audit trail (planned, approved, each deploy and health
    /// verdict, rollbacks).
    Show {
        plan: String,
        /// Print `{"plan", "record", "events"}`.
        #[arg(long)]
        json: bool,
    },
}

impl From<DeployError> for CliError {
    fn from(e: DeployError) -> Self {
        match e {
            DeployError::Refused(message) => CliError::Plain {
                message: crate::redact::text(&message),
                help: None,
                code: ExitCode::Failed,
            },
            DeployError::NotFound(message) => CliError::Plain {
                message: crate::redact::text(&message),
                help: None,
                code: ExitCode::Usage,
            },
            DeployError::Workspace(e) => e.into(),
            DeployError::Store(e) => WorkspaceError::Store(e).into(),
        }
    }
}

pub fn run(ws: &mut Workspace, args: DeployArgs, ui: &Ui) -> Result<ExitCode, CliError> {
    match args.command {
        DeployCommand::Plan {
            env,
            services,
            tags,
            with_deps,
            out,
            json,
        } => {
            let selection = Selection {
                services,
                tags,
                with_deps,
                with_dependents: false,
            };
            let plan = deploy::plan(ws, &env, &selection, &deploy::actor())?;
            if let Some(path) = &out {
                let text = serde_json::to_string_pretty(&plan)
                    .map_err(|e| CliError::usage(format!("cannot write JSON: {e}")))?;
                std::fs::write(path, text + "\n").map_err(|e| {
                    CliError::usage(format!("cannot write {}: {e}", path.display()))
                })?;
            }
            if json {
                return super::print_json(&plan);
            }
            print_plan(&plan, out.as_deref(), ui);
            Ok(ExitCode::Ok)
        }
        DeployCommand::Approve { plan, who, json } => {
            let who = who.unwrap_or_else(deploy::actor);
            let row = deploy::approve(ws, &plan, &who)?;
            if json {
                return super::print_json(&row);
            }
            ui.note(&format!(
                "{} plan {} approved by {who}; apply it with `nestr deploy apply {}`",
                ui.paint_err(Tone::Good, "ok:"),
                &row.id[..12],
                &row.id[..12]
            ));
            Ok(ExitCode::Ok)
        }
        DeployCommand::Apply { plan, who, json } => {
            let who = who.unwrap_or_else(deploy::actor);
            let cancel = crate::plugin::state::Cancel::default();
            super::run::watch_cancel(&cancel);
            let report = deploy::apply(ws, &plan, &who, cancel, &|| {})?;
            print_apply(&report, json, ui)
        }
        DeployCommand::Resume { plan, who, json } => {
            let who = who.unwrap_or_else(deploy::actor);
            let cancel = crate::plugin::state::Cancel::default();
            super::run::watch_cancel(&cancel);
            let report = deploy::resume(ws, &plan, &who, cancel, &|| {})?;
            print_apply(&report, json, ui)
        }
        DeployCommand::Abort { plan, who, json } => {
            let who = who.unwrap_or_else(deploy::actor);
            let report = deploy::abort(ws, &plan, &who, &|| {})?;
            print_apply(&report, json, ui)
        }
        DeployCommand::Status { env, json } => {
            let envs = deploy::status(ws, env.as_deref())?;
            if json {
                return super::print_json(&serde_json::json!({ "environments": envs }));
            }
            if envs.is_empty() {
                ui.note(
                    "the manifest defines no environment: add `[environments.NAME]` to nestr.toml",
                );
            }
            for e in &envs {
                println!(
                    "{}{}{}",
                    ui.paint(Tone::Bold, &e.name),
                    if e.approval {
                        " (approval required)"
                    } else {
                        ""
                    },
                    e.lock
                        .as_ref()
                        .map(|l| format!(
                            " — being deployed by plan {} (process {})",
                            &l.plan_id[..12.min(l.plan_id.len())],
                            l.pid
                        ))
                        .unwrap_or_default()
                );
                let rows: Vec<Vec<(String, Option<Tone>)>> = e
                    .services
                    .iter()
                    .map(|s| {
                        vec![
                            (s.service.clone(), Some(Tone::Bold)),
                            (
                                s.commit
                                    .as_deref()
                                    .map_or("-".into(), |c| c[..12.min(c.len())].to_string()),
                                None,
                            ),
                            (
                                s.at.clone().unwrap_or_else(|| "never deployed".into()),
                                Some(Tone::Dim),
                            ),
                            (
                                match (s.unknown, s.behind) {
                                    (true, _) => "unknown (a later deploy failed)".to_string(),
                                    (false, Some(0)) => "up to date".to_string(),
                                    (false, Some(n)) => format!("{n} behind"),
                                    (false, None) => "-".to_string(),
                                },
                                if s.unknown { Some(Tone::Bad) } else { None },
                            ),
                            (s.run_id.clone().unwrap_or_default(), Some(Tone::Dim)),
                        ]
                    })
                    .collect();
                println!(
                    "{}",
                    render::table(
                        &["SERVICE", "COMMIT", "DEPLOYED", "STATE", "RUN"],
                        &rows,
                        ui.color_out
                    )
                );
            }
            Ok(ExitCode::Ok)
        }
        DeployCommand::Show { plan, json } => {
            let (p, row) = deploy::find(ws, &plan)?;
            let events = ws
                .store()
                .map_err(WorkspaceError::from)?
                .deploy_events(&p.body.environment, Some(&row.id))
                .map_err(WorkspaceError::from)?;
            if json {
                return super::print_json(&serde_json::json!({
                    "plan": p, "record": row, "events": events,
                }));
            }
            print_plan(&p, None, ui);
            println!("state: {}", row.state);
            for e in &events {
                println!(
                    "{}  {:<16} {}  {}",
                    crate::model::rfc3339(e.at),
                    e.kind,
                    e.actor.as_deref().unwrap_or("-"),
                    render::untrusted(&e.detail.to_string(), false)
                );
            }
            Ok(ExitCode::Ok)
        }
    }
}

/// How an apply (or resume, or abort) ended: the steps of its runs, and its exit code.
fn print_apply(report: &deploy::ApplyReport, json: bool, ui: &Ui) -> Result<ExitCode, CliError> {
    let code = match report.state.as_str() {
        "applied" => ExitCode::Ok,
        "interrupted" => ExitCode::Interrupted,
        _ => ExitCode::Failed,
    };
    if json {
        super::print_json(report)?;
        return Ok(code);
    }
    let mut rows = Vec::new();
    for s in report.run.iter().flat_map(|r| &r.steps) {
        rows.push(step_row("deploy", s));
    }
    for s in report.rollback.iter().flat_map(|r| &r.steps) {
        rows.push(step_row("rollback", s));
    }
    if !rows.is_empty() {
        println!(
            "{}",
            render::table(
                &["ACTION", "SERVICE", "STATUS", "TIME", "SUMMARY"],
                &rows,
                ui.color_out
            )
        );
    }
    for (service, why) in &report.not_rolled_back {
        ui.note(&format!("{service} was not rolled back: {why}"));
    }
    let (tone, what) = match report.state.as_str() {
        "applied" => (Tone::Good, "applied"),
        "paused" => (
            Tone::Bad,
            "paused: a health gate gave no verdict; decide with `nestr deploy resume` or `nestr deploy abort`",
        ),
        "rolled_back" => (Tone::Bad, "failed and was rolled back"),
        "rollback_failed" => (Tone::Bad, "failed, and a rollback failed too"),
        _ => (Tone::Bad, "was interrupted"),
    };
    let runs: Vec<String> = report
        .run
        .iter()
        .map(|r| format!("run {}", r.run_id))
        .chain(
            report
                .rollback
                .iter()
                .map(|r| format!("rollback run {}", r.run_id)),
        )
        .collect();
    ui.note(&format!(
        "plan {} to {} {} ({}) — nestr deploy status {}",
        &report.plan[..12],
        report.environment,
        ui.paint_err(tone, what),
        runs.join(", "),
        report.environment
    ));
    Ok(code)
}

fn step_row(action: &str, s: &crate::scheduler::StepReport) -> Vec<(String, Option<Tone>)> {
    vec![
        (action.to_string(), Some(Tone::Dim)),
        (s.service.clone(), Some(Tone::Bold)),
        (
            s.status.as_str().to_string(),
            Some(if s.status.is_ok() {
                Tone::Good
            } else {
                Tone::Bad
            }),
        ),
        (format!("{}ms", s.duration_ms), Some(Tone::Dim)),
        (render::untrusted(&s.summary, false), None),
    ]
}

fn print_plan(plan: &DeployPlan, out: Option<&std::path::Path>, ui: &Ui) {
    let b = &plan.body;
    println!(
        "plan {} — deploy to {} ({}), made by {} at {}{}",
        &plan.id[..12],
        b.environment,
        b.operation,
        b.created_by,
        b.created_at,
        if b.approval {
            " — needs an approval"
        } else {
            ""
        }
    );
    for (i, wave) in b.waves.iter().enumerate() {
        println!("wave {}: {}", i + 1, wave.join(", "));
    }
    for s in &b.services {
        let short = |c: &Option<String>| {
            c.as_deref()
                .map_or("none".to_string(), |c| c[..12.min(c.len())].to_string())
        };
        println!(
            "  {}  {} → {}{}",
            ui.paint(Tone::Bold, &s.service),
            short(&s.current),
            short(&s.target),
            match s.behind {
                Some(0) => " (unchanged)".to_string(),
                Some(n) => format!(" ({n} commit{})", if n == 1 { "" } else { "s" }),
                None => String::new(),
            }
        );
        for c in &s.commits {
            println!("      {c}");
        }
    }
    let target = out.map_or_else(|| plan.id[..12].to_string(), |p| p.display().to_string());
    ui.note(&format!(
        "nothing was deployed; apply it with `nestr deploy apply {target}`"
    ));
}
