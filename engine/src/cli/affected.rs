//! `nestr affected`: the services a change affects across repositories, each with why (which
//! files, or which dependency), since each repository's upstream, a `--base` ref or an older
//! lock file (`--from`), up to HEAD and the working tree or a newer lock file (`--to`).

use std::path::PathBuf;

use clap::Args;

use super::render::{Tone, Ui};
use super::{CliError, ExitCode};
use crate::affected::Base;
use crate::workspace::Workspace;

/// Where a comparison starts and ends: shared by `affected` and `run --affected`.
#[derive(Debug, Args, Clone, Default)]
pub struct ChangeRange {
    /// Compare with this revision in every repository (default: each one's upstream branch).
    #[arg(long, value_name = "REF", conflicts_with = "from")]
    pub base: Option<String>,
    /// Compare with the commits of this (older) lock file.
    #[arg(long, value_name = "OLD.lock")]
    pub from: Option<PathBuf>,
    /// Compare up to the commits of this (newer) lock file instead of HEAD and the working tree.
    #[arg(long, value_name = "NEW.lock")]
    pub to: Option<PathBuf>,
}

impl ChangeRange {
    /// What this range affects in `manifest` (paths relative to the current folder), for
    /// `operation`'s `inputs` when given.
    pub fn affected(
        &self,
        manifest: &crate::manifest::Manifest,
        operation: Option<&str>,
    ) -> Result<crate::affected::Affected, CliError> {
        let cwd = std::env::current_dir().unwrap_or_default();
        let to = self.to.as_ref().map(|p| cwd.join(p));
        crate::affected::affected(manifest, &self.base(&cwd), to.as_deref(), operation)
            .map_err(CliError::usage)
    }

    pub fn base(&self, cwd: &std::path::Path) -> Base {
        match (&self.base, &self.from) {
            (Some(r), _) => Base::Ref(r.clone()),
            (None, Some(p)) => Base::Lock(cwd.join(p)),
            (None, None) => Base::Upstream,
        }
    }
}

#[derive(Debug, Args)]
pub struct AffectedArgs {
    #[command(flatten)]
    pub range: ChangeRange,
    /// Count only the files this operation's `inputs` globs match.
    #[arg(long, value_name = "OP")]
    pub operation: Option<String>,
    /// Print `{services: [{name, repo, files, via, why}], repos: [...]}`.
    #[arg(long)]
    pub json: bool,
}

pub fn run(ws: &mut Workspace, args: AffectedArgs, ui: &Ui) -> Result<ExitCode, CliError> {
    let a = args
        .range
        .affected(&ws.manifest, args.operation.as_deref())?;
    if args.json {
        return super::print_json(&a);
    }
    for r in &a.repos {
        if let Some(note) = &r.note {
            println!("{}", ui.paint(Tone::Dim, &format!("{}: {note}", r.name)));
        }
    }
    if a.services.is_empty() {
        println!("nothing is affected");
        return Ok(ExitCode::Ok);
    }
    let width = a.services.iter().map(|s| s.name.len()).max().unwrap_or(0);
    for s in &a.services {
        println!(
            "{} {}",
            ui.paint(Tone::Bold, &format!("{:width$}", s.name)),
            super::render::untrusted(&s.why, false)
        );
    }
    Ok(ExitCode::Ok)
}
