//! `nestr services`: the services of the workspace with their repository, path, dependencies,
//! tags and operations (own and workspace defaults).

use clap::Args;
use serde::Serialize;

use super::render::{self, Tone, Ui};
use super::{CliError, ExitCode};
use crate::store::StepStatus;
use crate::workspace::Workspace;

#[derive(Debug, Args)]
pub struct ServicesArgs {
    /// Print a JSON array of objects: name, repo, path, depends_on, tags, operations,
    /// last_status.
    #[arg(long)]
    pub json: bool,
}

/// A row of `nestr services --json`.
#[derive(Debug, Serialize)]
pub struct ServiceRow {
    pub name: String,
    pub repo: String,
    pub path: String,
    pub depends_on: Vec<String>,
    pub tags: Vec<String>,
    /// Operation name → plugin.
    pub operations: indexmap::IndexMap<String, String>,
    /// Operation name → status of its newest step on this service (null: never run).
    pub last_status: indexmap::IndexMap<String, Option<StepStatus>>,
}

pub fn run(ws: &mut Workspace, args: ServicesArgs, ui: &Ui) -> Result<ExitCode, CliError> {
    // The history is read only if there is one: listing services creates no state.
    let last = if ws.state_dir().join(crate::store::DB_FILE).exists() {
        ws.store()?.last_step_statuses()?
    } else {
        std::collections::HashMap::new()
    };
    let m = &ws.manifest;
    let rows: Vec<ServiceRow> = m
        .services
        .iter()
        .map(|s| {
            let v = crate::views::service_view(m, s, &last);
            ServiceRow {
                name: v.name,
                repo: v.repo,
                path: v.path,
                depends_on: v.depends_on,
                tags: v.tags,
                operations: v
                    .operations
                    .iter()
                    .map(|o| (o.name.clone(), o.plugin.clone()))
                    .collect(),
                last_status: v
                    .operations
                    .into_iter()
                    .map(|o| (o.name, o.last_status))
                    .collect(),
            }
        })
        .collect();
    if args.json {
        let text = serde_json::to_string_pretty(&rows)
            .map_err(|e| CliError::usage(format!("cannot write JSON: {e}")))?;
        println!("{text}");
        return Ok(ExitCode::Ok);
    }
    let dash = |v: &[String]| {
        if v.is_empty() {
            "-".to_string()
        } else {
            v.join(", ")
        }
    };
    let cells: Vec<Vec<(String, Option<Tone>)>> = rows
        .iter()
        .map(|r| {
            let ops: Vec<String> = r
                .operations
                .iter()
                .map(|(o, p)| match r.last_status.get(o).copied().flatten() {
                    Some(st) => format!("{o} ({p}, last {})", st.as_str()),
                    None => format!("{o} ({p})"),
                })
                .collect();
            vec![
                (r.name.clone(), Some(Tone::Bold)),
                (r.repo.clone(), None),
                (r.path.clone(), None),
                (dash(&r.depends_on), None),
                (dash(&r.tags), Some(Tone::Info)),
                (dash(&ops), None),
            ]
        })
        .collect();
    print!(
        "{}",
        render::table(
            &[
                "SERVICE",
                "REPO",
                "PATH",
                "DEPENDS ON",
                "TAGS",
                "OPERATIONS"
            ],
            &cells,
            ui.color_out
        )
    );
    Ok(ExitCode::Ok)
}
