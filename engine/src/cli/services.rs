//! `nestr services`: the services of the workspace with their repository, path, dependencies,
//! tags and operations (own and workspace defaults).

use clap::Args;

use super::render::{self, Tone, Ui};
use super::{CliError, ExitCode};
use crate::views::ServicePage;
use crate::workspace::Workspace;

#[derive(Debug, Args)]
pub struct ServicesArgs {
    /// Print JSON: the body `GET /api/services` answers, `{"services": [...], "next_cursor":
    /// null}`, each service with name, repo, path, depends_on, tags, operations (name, plugin,
    /// last_status) and opted_out.
    #[arg(long)]
    pub json: bool,
}

pub fn run(ws: &mut Workspace, args: ServicesArgs, ui: &Ui) -> Result<ExitCode, CliError> {
    // The history is read only if there is one: listing services creates no state.
    let last = if ws.state_dir().join(crate::store::DB_FILE).exists() {
        let wanted = crate::views::wanted_statuses(&ws.manifest, &ws.manifest.services);
        ws.store()?.last_step_statuses(&wanted)?
    } else {
        std::collections::HashMap::new()
    };
    let m = &ws.manifest;
    let page = ServicePage {
        services: m
            .services
            .iter()
            .map(|s| crate::views::service_view(m, s, &last))
            .collect(),
        next_cursor: None,
    };
    if args.json {
        let text = serde_json::to_string_pretty(&page)
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
    let cells: Vec<Vec<(String, Option<Tone>)>> = page
        .services
        .iter()
        .map(|r| {
            let ops: Vec<String> = r
                .operations
                .iter()
                .map(|o| match o.last_status {
                    Some(st) => format!("{} ({}, last {})", o.name, o.plugin, st.as_str()),
                    None => format!("{} ({})", o.name, o.plugin),
                })
                .chain(r.opted_out.iter().map(|o| format!("{o} (opted out)")))
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
