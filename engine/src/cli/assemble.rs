//! `nestr assemble`: clone every missing repository in parallel and check out its pin (or, with
//! `--locked`, the commit in nestr.lock).

use clap::Args;

use super::render::Ui;
use super::{CliError, ExitCode, Jobs};
use crate::model::SyncResult;
use crate::workspace::Workspace;

#[derive(Debug, Args)]
pub struct AssembleArgs {
    #[command(flatten)]
    pub jobs: Jobs,
    /// Check out exactly the commits recorded in nestr.lock.
    #[arg(long)]
    pub locked: bool,
    /// Print the results as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(ws: &mut Workspace, args: AssembleArgs, ui: &Ui) -> Result<ExitCode, CliError> {
    let progress = ui.repo_progress();
    let outcomes = ws.assemble(usize::from(args.jobs.jobs), args.locked, &progress)?;
    progress.clear();
    super::sync::print_outcomes(ui, &outcomes, args.json)?;
    Ok(exit_for(&outcomes))
}

/// 1 when any repository failed; skipped ones were left alone for a stated reason.
pub(super) fn exit_for(outcomes: &[crate::git::RepoOutcome]) -> ExitCode {
    if outcomes.iter().any(|o| o.result == SyncResult::Failed) {
        ExitCode::Failed
    } else {
        ExitCode::Ok
    }
}
