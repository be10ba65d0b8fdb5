//! `nestr exec [-r REPO… | -s SERVICE… | -t TAG…] -- PROGRAM ARGS…`: the user's own command in
//! each selected repository's folder (or service folder), in parallel, with the user's rights and
//! environment — like `repo forall` or `mani exec`, but recorded as a run (operation `exec`, a
//! step per folder, logs stored) so that `runs`, `logs` and the dashboard show it. Output is
//! shown as `nestr run` shows it (prefixed per folder, or grouped); a summary table follows;
//! exit 0 only when every command exited 0. Ctrl-C ends every command's whole process tree. Never
//! reachable over the HTTP API.

use clap::Args;

use super::run::{Live, Output};
use super::{CliError, ExitCode, render::Ui};
use crate::model::ContinueMode;
use crate::scheduler::exec_run::ExecJob;
use crate::workspace::Workspace;

#[derive(Debug, Args)]
pub struct ExecArgs {
    /// In this repository's folder (repeatable; default: every repository).
    #[arg(short = 'r', long = "repo", value_name = "REPO", conflicts_with_all = ["services", "tags"])]
    pub repos: Vec<String>,
    /// In this service's folder (repeatable); with -t, the union.
    #[arg(short = 's', long = "service", value_name = "SERVICE")]
    pub services: Vec<String>,
    /// In the folder of every service with this tag (repeatable).
    #[arg(short = 't', long = "tag", value_name = "TAG")]
    pub tags: Vec<String>,
    /// Folders at once (default: the number of cores).
    #[arg(short = 'j', long = "jobs", value_name = "N", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub jobs: Option<u16>,
    /// After a command fails: start it in no further folder (never), or go on (always).
    #[arg(long = "continue", value_enum, default_value_t = ContinueMode::Always, value_name = "MODE")]
    pub continue_mode: ContinueMode,
    /// Live output: lines prefixed with the folder, or each folder's output as a block when it
    /// ends.
    #[arg(long, value_enum, default_value_t = Output::Prefixed)]
    pub output: Output,
    /// Print the run as stored (what `GET /api/runs/{id}` answers) as JSON; no live output.
    #[arg(long)]
    pub json: bool,
    /// The program and its arguments (after `--`).
    #[arg(required = true, last = true, value_name = "PROGRAM")]
    pub command: Vec<String>,
}

pub fn run(ws: &mut Workspace, args: ExecArgs, ui: &Ui) -> Result<ExitCode, CliError> {
    let mut command = args.command.into_iter();
    let program = command
        .next()
        .filter(|p| !p.is_empty())
        .ok_or_else(|| CliError::usage("give the program to run after `--`"))?;
    let targets = ws.exec_targets(&args.repos, &args.services, &args.tags)?;
    let jobs = args.jobs.map_or_else(
        || std::thread::available_parallelism().map_or(2, |n| n.get()),
        usize::from,
    );
    let live = Live {
        names: targets.iter().map(|t| t.name.clone()).collect(),
        output: args.output,
        json: args.json,
        first_column: "FOLDER",
    };
    let job = ExecJob {
        program,
        args: command.collect(),
        targets,
        jobs,
        continue_mode: args.continue_mode,
    };
    live.run(ws, ui, |ws, cancel| Ok(ws.exec(job, cancel)?))
}
