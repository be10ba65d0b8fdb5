//! `nestr switch BRANCH [-c] [-r REPO…]`: every selected repository onto one branch — made at its
//! HEAD with `-c` where it does not exist, taken from `origin/BRANCH` (tracking it) where only the
//! remote has it. All or none: a repository with uncommitted changes to tracked files (which a
//! switch would leave behind or lose) refuses, says which files, and then nothing is switched.

use clap::Args;

use super::render::{self, Tone, Ui};
use super::{CliError, ExitCode};
use crate::git::branch::SwitchResult;
use crate::workspace::Workspace;

#[derive(Debug, Args)]
pub struct SwitchArgs {
    /// The branch.
    pub branch: String,
    /// Make the branch (at HEAD) in the repositories that do not have it.
    #[arg(short = 'c', long = "create")]
    pub create: bool,
    /// Only this repository (repeatable; default: every repository).
    #[arg(short = 'r', long = "repo", value_name = "REPO")]
    pub repos: Vec<String>,
    /// The outcomes as JSON: `[{"repo", "result", "branch", "head"}]`.
    #[arg(long)]
    pub json: bool,
}

pub fn run(ws: &mut Workspace, args: SwitchArgs, ui: &Ui) -> Result<ExitCode, CliError> {
    let outcomes = match ws.switch(&args.repos, &args.branch, args.create)? {
        Ok(o) => o,
        Err(refused) => {
            for why in &refused {
                eprintln!(
                    "{} {}",
                    ui.paint_err(Tone::Bad, "refused:"),
                    render::untrusted(why, false)
                );
            }
            eprintln!("nothing was switched");
            return Ok(ExitCode::Failed);
        }
    };
    if args.json {
        let text = serde_json::to_string_pretty(&outcomes)
            .map_err(|e| CliError::usage(format!("cannot write JSON: {e}")))?;
        println!("{text}");
        return Ok(ExitCode::Ok);
    }
    if ui.quiet {
        return Ok(ExitCode::Ok);
    }
    let rows: Vec<Vec<(String, Option<Tone>)>> = outcomes
        .iter()
        .map(|o| {
            let (word, tone) = match o.result {
                SwitchResult::Created => ("created", Tone::Good),
                SwitchResult::Switched => ("switched", Tone::Good),
                SwitchResult::Tracking => ("switched (tracking origin)", Tone::Good),
                SwitchResult::Already => ("already on it", Tone::Dim),
            };
            vec![
                (o.repo.clone(), None),
                (word.to_string(), Some(tone)),
                (o.branch.clone(), None),
                (
                    o.head
                        .as_deref()
                        .map_or("-", |h| &h[..10.min(h.len())])
                        .to_string(),
                    Some(Tone::Dim),
                ),
            ]
        })
        .collect();
    print!(
        "{}",
        render::table(&["REPO", "RESULT", "BRANCH", "HEAD"], &rows, ui.color_out)
    );
    Ok(ExitCode::Ok)
}
