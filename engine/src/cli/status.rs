//! `nestr status`: one row per repository (branch or pin, head, upstream, ahead/behind,
//! uncommitted counts and a one-word state); `--json` prints what `GET /api/repos` answers.

use clap::Args;

use super::render::{self, Tone, Ui};
use super::{CliError, ExitCode, Jobs};
use crate::manifest::Pin;
use crate::model::RepoState;
use crate::views::RepoView;
use crate::workspace::Workspace;

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub jobs: Jobs,
    /// Print JSON: the body `GET /api/repos` answers, an array of objects: name, url, path,
    /// branch, head, upstream, state, ahead, behind, dirty, staged, modified, untracked, pin,
    /// at_pin, last_sync_at, last_sync_result, last_sync_message, error.
    #[arg(long)]
    pub json: bool,
}

pub fn run(ws: &mut Workspace, args: StatusArgs, ui: &Ui) -> Result<ExitCode, CliError> {
    let status = ws.status(usize::from(args.jobs.jobs));
    // The last sync is read only if there is a history: status creates no state.
    let stored = if ws.state_dir().join(crate::store::DB_FILE).exists() {
        ws.store()?.repos()?
    } else {
        Vec::new()
    };
    let rows = crate::views::repos(&ws.manifest, status, &stored);
    if args.json {
        let text = serde_json::to_string_pretty(&rows)
            .map_err(|e| CliError::usage(format!("cannot write JSON: {e}")))?;
        println!("{text}");
    } else {
        print!("{}", table(ui, &rows));
    }
    let mut failed = false;
    for r in &rows {
        if let Some(e) = &r.error {
            failed = true;
            eprintln!("{} {}: {e}", ui.paint_err(Tone::Bad, "error:"), r.name);
        }
    }
    Ok(if failed {
        ExitCode::Failed
    } else {
        ExitCode::Ok
    })
}

/// `branch main`, or for a pinned checkout `tag v1` / `rev 0123abc` and whether HEAD moved.
fn checkout(r: &RepoView) -> String {
    let short = |h: &str| h[..7.min(h.len())].to_string();
    let pin = match &r.pin {
        Pin::Tag(t) => Some(format!("tag {t}")),
        Pin::Rev(h) => Some(format!("rev {}", short(h))),
        Pin::Branch(_) | Pin::Default => None,
    };
    match (&r.branch, pin, r.at_pin) {
        (Some(b), None, _) => match &r.pin {
            Pin::Branch(want) if want != b => format!("{b} (feature; pin {want})"),
            _ => b.clone(),
        },
        (Some(b), Some(p), _) => format!("{b} (pinned {p})"),
        (None, Some(p), Some(true)) => p,
        (None, Some(p), Some(false)) => format!("{p} (HEAD moved)"),
        (None, Some(p), None) => format!("{p} (not found)"),
        (None, None, _) => "(detached)".to_string(),
    }
}

fn state_tone(s: RepoState) -> Tone {
    match s {
        RepoState::Clean => Tone::Good,
        RepoState::Behind => Tone::Info,
        RepoState::Dirty | RepoState::Ahead | RepoState::Detached => Tone::Warn,
        RepoState::Diverged | RepoState::Missing => Tone::Bad,
    }
}

fn table(ui: &Ui, rows: &[RepoView]) -> String {
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
                match r.state {
                    Some(st) => (st.as_str().to_string(), Some(state_tone(st))),
                    None => ("error".to_string(), Some(Tone::Bad)),
                },
                (checkout(r), None),
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
