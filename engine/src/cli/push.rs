//! `nestr push [-r REPO…] [-j N]`: each selected repository's current branch to `origin`, in
//! parallel, its upstream set to `origin/BRANCH` (so that `nestr sync` then follows it), with the
//! same non-interactive credentials as sync (never a prompt). Exit 1 when any push was refused
//! or failed.

use clap::Args;

use super::render::{self, Tone, Ui};
use super::{CliError, ExitCode, Jobs};
use crate::git::branch::PushResult;
use crate::workspace::Workspace;

#[derive(Debug, Args)]
pub struct PushArgs {
    /// Only this repository (repeatable; default: every repository).
    #[arg(short = 'r', long = "repo", value_name = "REPO")]
    pub repos: Vec<String>,
    #[command(flatten)]
    pub jobs: Jobs,
    /// The outcomes as JSON: `[{"repo", "result", "branch", "head", "message"}]`.
    #[arg(long)]
    pub json: bool,
}

pub fn run(ws: &mut Workspace, args: PushArgs, ui: &Ui) -> Result<ExitCode, CliError> {
    let outcomes = ws.push(&args.repos, usize::from(args.jobs.jobs))?;
    let failed = outcomes
        .iter()
        .any(|o| matches!(o.result, PushResult::Rejected | PushResult::Failed));
    if args.json {
        let text = serde_json::to_string_pretty(&outcomes)
            .map_err(|e| CliError::usage(format!("cannot write JSON: {e}")))?;
        println!("{text}");
    } else if !ui.quiet || failed {
        let rows: Vec<Vec<(String, Option<Tone>)>> = outcomes
            .iter()
            .map(|o| {
                let (word, tone) = match o.result {
                    PushResult::Pushed => ("pushed", Tone::Good),
                    PushResult::UpToDate => ("up to date", Tone::Dim),
                    PushResult::Rejected => ("rejected", Tone::Bad),
                    PushResult::Failed => ("failed", Tone::Bad),
                };
                vec![
                    (o.repo.clone(), None),
                    (word.to_string(), Some(tone)),
                    (o.branch.clone().unwrap_or_else(|| "-".into()), None),
                    (o.message.clone(), None),
                ]
            })
            .collect();
        print!(
            "{}",
            render::table(
                &["REPO", "RESULT", "BRANCH", "DETAILS"],
                &rows,
                ui.color_out
            )
        );
    }
    Ok(if failed {
        ExitCode::Failed
    } else {
        ExitCode::Ok
    })
}
