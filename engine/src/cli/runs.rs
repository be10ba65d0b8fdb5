//! `nestr runs`: the run history — list (`runs`), one run with its steps (`runs show RUN`), and
//! retention (`runs prune --keep N | --older-than DURATION`).

use clap::{Args, Subcommand};

use super::render::{self, Tone, Ui};
use super::run::{duration, status_tone, summary_cell, tests_cell};
use super::{CliError, ExitCode};
use crate::model::RunStatus;
use crate::scheduler::rfc3339;
use crate::workspace::Workspace;

#[derive(Debug, Args)]
pub struct RunsArgs {
    #[command(subcommand)]
    pub command: Option<RunsCommand>,
    /// How many runs to list, newest first.
    #[arg(long, default_value_t = 20)]
    pub limit: usize,
    /// Only runs of this operation (`build`, `sync`, `assemble`, …).
    #[arg(long, value_name = "OP")]
    pub operation: Option<String>,
    /// Only runs with this status.
    #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(RunStatus::words()))]
    pub status: Option<String>,
    /// Print the page as JSON: what `GET /api/runs` answers (`runs`, `next_cursor`).
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum RunsCommand {
    /// One run with its steps: statuses, timings, summaries.
    Show {
        run: String,
        /// Print the run with its steps as JSON: what `GET /api/runs/{id}` answers.
        #[arg(long)]
        json: bool,
    },
    /// What produced each step's result: an in-toto Statement v1 with a SLSA Provenance v1
    /// predicate per step (JSON lines; subjects are the step's artifacts and outputs).
    Provenance {
        run: String,
        /// Only this service's step.
        #[arg(short = 's', long = "service", value_name = "SERVICE")]
        service: Option<String>,
    },
    /// Deletes old runs with their steps and logs (never a running one).
    Prune {
        /// Keep the newest N runs.
        #[arg(long, value_name = "N", required_unless_present = "older_than")]
        keep: Option<usize>,
        /// Delete runs created longer ago than this (e.g. 30d, 12h).
        #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
        older_than: Option<std::time::Duration>,
    },
}

fn run_tone(s: RunStatus) -> Tone {
    match s {
        RunStatus::Succeeded => Tone::Good,
        RunStatus::Queued | RunStatus::Running => Tone::Info,
        RunStatus::Cancelled | RunStatus::Interrupted => Tone::Warn,
        RunStatus::Failed => Tone::Bad,
    }
}

pub fn run(ws: &mut Workspace, args: RunsArgs, ui: &Ui) -> Result<ExitCode, CliError> {
    let store = ws.store()?;
    match args.command {
        None => {
            let filter = crate::store::RunFilter {
                status: args.status,
                operation: args.operation,
                before: None,
            };
            let page = store.runs_page(&filter, args.limit)?;
            if args.json {
                return print_json(&page);
            }
            let runs = page.runs;
            let rows: Vec<Vec<(String, Option<Tone>)>> = runs
                .iter()
                .map(|r| {
                    let took = r.run.finished_at.map_or("-".into(), |f| {
                        duration(u64::try_from(f - r.run.created_at).unwrap_or(0))
                    });
                    vec![
                        (r.run.id.clone(), None),
                        (r.run.operation.clone(), Some(Tone::Bold)),
                        (
                            r.run.status.as_str().to_string(),
                            Some(run_tone(r.run.status)),
                        ),
                        (rfc3339(r.run.created_at), Some(Tone::Dim)),
                        (took, None),
                        (
                            format!("{}/{} ok, {} failed", r.succeeded, r.steps, r.failed),
                            None,
                        ),
                        (r.run.started_by.clone(), Some(Tone::Dim)),
                    ]
                })
                .collect();
            print!(
                "{}",
                render::table(
                    &[
                        "RUN",
                        "OPERATION",
                        "STATUS",
                        "STARTED",
                        "TIME",
                        "STEPS",
                        "BY"
                    ],
                    &rows,
                    ui.color_out
                )
            );
        }
        Some(RunsCommand::Show { run, json }) => {
            let r = find_run(store, &run)?;
            if json {
                return print_json(&r);
            }
            println!(
                "run {} — {} — {}{}",
                r.run.id,
                ui.paint(Tone::Bold, &r.run.operation),
                ui.paint(run_tone(r.run.status), r.run.status.as_str()),
                match (r.run.finished_at, r.run.queue_position) {
                    (Some(f), _) => format!(
                        " in {}",
                        duration(u64::try_from(f - r.run.created_at).unwrap_or(0))
                    ),
                    (None, Some(p)) => format!(" (place {p} in the server's queue)"),
                    (None, None) => String::new(),
                }
            );
            let rows: Vec<Vec<(String, Option<Tone>)>> = r
                .steps
                .iter()
                .map(|s| {
                    let tests = s.tests.map_or(String::new(), |t| tests_cell(&t));
                    let summary = summary_cell(
                        s.summary.as_deref().unwrap_or_default(),
                        s.reason.as_deref(),
                        s.status,
                    );
                    vec![
                        (s.service.clone(), None),
                        (s.plugin.clone(), Some(Tone::Dim)),
                        (s.status.as_str().to_string(), Some(status_tone(s.status))),
                        (s.started_at.map_or("-".into(), rfc3339), Some(Tone::Dim)),
                        (
                            s.duration_ms
                                .map_or("-".into(), |d| duration(u64::try_from(d).unwrap_or(0))),
                            None,
                        ),
                        (summary, None),
                        (tests, None),
                    ]
                })
                .collect();
            print!(
                "{}",
                render::table(
                    &[
                        "SERVICE", "PLUGIN", "STATUS", "STARTED", "TIME", "SUMMARY", "TESTS"
                    ],
                    &rows,
                    ui.color_out
                )
            );
        }
        Some(RunsCommand::Provenance { run, service }) => {
            let statements = crate::cache::provenance::for_run(store, &run, service.as_deref())
                .map_err(|e| CliError::usage(e.to_string()))?;
            let mut out = std::io::stdout().lock();
            for s in statements {
                use std::io::Write;
                writeln!(out, "{s}").map_err(CliError::output)?;
            }
        }
        Some(RunsCommand::Prune { keep, older_than }) => {
            let before = older_than
                .map(|d| crate::store::now_ms() - i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
            let n = store.prune_runs(keep, before)?;
            ui.note(&format!(
                "deleted {n} run{} with their steps and logs",
                if n == 1 { "" } else { "s" }
            ));
        }
    }
    Ok(ExitCode::Ok)
}

/// The run `given` names: its whole id, or any prefix of it that no other run shares (as git
/// takes commit ids).
pub fn find_run(
    store: &crate::store::Store,
    given: &str,
) -> Result<crate::store::RunRow, CliError> {
    if let Some(run) = store.run(given)? {
        return Ok(run);
    }
    let candidates = if given.is_empty() {
        vec![]
    } else {
        store.run_ids_with_prefix(given, 11)?
    };
    match candidates.as_slice() {
        [one] => store
            .run(one)?
            .ok_or_else(|| CliError::usage(format!("run `{one}` disappeared"))),
        [] => Err(CliError::usage(format!(
            "there is no run `{given}` in this workspace (nestr runs lists them)"
        ))),
        many => {
            let shown: Vec<&str> = many.iter().take(10).map(String::as_str).collect();
            Err(CliError::usage(format!(
                "`{given}` is the start of {} runs: {}{}; type more of the id",
                if many.len() > 10 {
                    "more than 10".to_string()
                } else {
                    many.len().to_string()
                },
                shown.join(", "),
                if many.len() > 10 { ", …" } else { "" }
            )))
        }
    }
}

use super::print_json;
