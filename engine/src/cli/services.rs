//! `nestr services`: the services of the workspace with their repository, path, dependencies,
//! tags and operations (own and workspace defaults).

use clap::Args;
use serde::Serialize;

use super::render::{self, Tone, Ui};
use super::{CliError, ExitCode};
use crate::workspace::Workspace;

#[derive(Debug, Args)]
pub struct ServicesArgs {
    /// Print a JSON array of objects: name, repo, path, depends_on, tags, operations.
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
}

pub fn run(ws: &Workspace, args: ServicesArgs, ui: &Ui) -> Result<ExitCode, CliError> {
    let m = &ws.manifest;
    let rows: Vec<ServiceRow> = m
        .services
        .iter()
        .map(|s| ServiceRow {
            name: s.name.clone(),
            repo: s.repo.clone(),
            path: s.path.to_string_lossy().into_owned(),
            depends_on: s.depends_on.clone(),
            tags: s.tags.clone(),
            operations: m
                .operation_names(s)
                .into_iter()
                .filter_map(|op| m.operation(s, &op).map(|spec| (op, spec.plugin.clone())))
                .collect(),
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
                .map(|(o, p)| format!("{o} ({p})"))
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
