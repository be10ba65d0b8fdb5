//! `nestr sync`: fetch every repository in parallel, then fast-forward what can be updated
//! without losing local work; `--atomic` updates nothing if any fetch fails.

use clap::Args;

use super::render::{self, Ui};
use super::{CliError, ExitCode, Jobs};
use crate::git::RepoOutcome;
use crate::workspace::Workspace;

#[derive(Debug, Args)]
pub struct SyncArgs {
    #[command(flatten)]
    pub jobs: Jobs,
    /// Update nothing unless every fetch succeeds.
    #[arg(long)]
    pub atomic: bool,
    /// Move every repository to the commit recorded in nestr.lock instead of its upstream.
    #[arg(long)]
    pub locked: bool,
    /// Print the results as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(ws: &mut Workspace, args: SyncArgs, ui: &Ui) -> Result<ExitCode, CliError> {
    let progress = ui.repo_progress();
    let outcomes = ws.sync(
        usize::from(args.jobs.jobs),
        args.atomic,
        args.locked,
        &progress,
    )?;
    print_outcomes(ui, &outcomes, args.json)?;
    Ok(super::assemble::exit_for(&outcomes))
}

pub(super) fn print_outcomes(
    ui: &Ui,
    outcomes: &[RepoOutcome],
    json: bool,
) -> Result<(), CliError> {
    if json {
        let text = serde_json::to_string_pretty(outcomes)
            .map_err(|e| CliError::usage(format!("cannot write JSON: {e}")))?;
        println!("{text}");
    } else if !ui.quiet
        || outcomes
            .iter()
            .any(|o| o.result == crate::model::SyncResult::Failed)
    {
        print!("{}", render::outcomes(ui, outcomes));
    }
    Ok(())
}
