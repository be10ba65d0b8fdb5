//! `nestr status`: one row per repository (branch, head, upstream, ahead/behind, uncommitted
//! counts and a one-word state); `--json` prints the rows with their contract field names.

use clap::Args;

use super::render::{self, Tone, Ui};
use super::{CliError, ExitCode, Jobs};
use crate::git::{RepoState, RepoStatus};
use crate::workspace::Workspace;

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub jobs: Jobs,
    /// Print a JSON array of objects: name, path, branch, head, upstream, ahead, behind, dirty,
    /// staged, modified, untracked, state.
    #[arg(long)]
    pub json: bool,
}

pub fn run(ws: &Workspace, args: StatusArgs, ui: &Ui) -> Result<ExitCode, CliError> {
    let mut rows = Vec::new();
    let mut errors = Vec::new();
    for (repo, row) in ws
        .manifest
        .repos
        .iter()
        .zip(ws.status(usize::from(args.jobs.jobs)))
    {
        match row {
            Ok(r) => rows.push(r),
            Err(e) => errors.push(format!("{}: {e}", repo.name)),
        }
    }
    if args.json {
        let text = serde_json::to_string_pretty(&rows)
            .map_err(|e| CliError::usage(format!("cannot write JSON: {e}")))?;
        println!("{text}");
    } else {
        print!("{}", table(ui, &rows));
    }
    for e in &errors {
        eprintln!("{} {e}", ui.paint_err(Tone::Bad, "error:"));
    }
    Ok(if errors.is_empty() {
        ExitCode::Ok
    } else {
        ExitCode::Failed
    })
}

fn state_tone(s: RepoState) -> Tone {
    match s {
        RepoState::Clean => Tone::Good,
        RepoState::Behind => Tone::Info,
        RepoState::Dirty | RepoState::Ahead | RepoState::Detached => Tone::Warn,
        RepoState::Diverged | RepoState::Missing => Tone::Bad,
    }
}

fn table(ui: &Ui, rows: &[RepoStatus]) -> String {
    let cells: Vec<Vec<(String, Option<Tone>)>> = rows
        .iter()
        .map(|r| {
            let changes = if r.dirty {
                format!(
                    "{} staged, {} modified, {} untracked",
                    r.staged, r.modified, r.untracked
                )
            } else {
                String::new()
            };
            vec![
                (r.name.clone(), None),
                (r.state.as_str().to_string(), Some(state_tone(r.state))),
                (
                    r.branch.clone().unwrap_or_else(|| "(detached)".into()),
                    None,
                ),
                (
                    r.head
                        .as_deref()
                        .map_or("-".into(), |h| h[..10.min(h.len())].to_string()),
                    Some(Tone::Dim),
                ),
                (r.upstream.clone().unwrap_or_else(|| "-".into()), None),
                (format!("↑{} ↓{}", r.ahead, r.behind), None),
                (changes, None),
            ]
        })
        .collect();
    render::table(
        &[
            "REPO",
            "STATE",
            "BRANCH",
            "HEAD",
            "UPSTREAM",
            "AHEAD/BEHIND",
            "CHANGES",
        ],
        &cells,
        ui.color_out,
    )
}
