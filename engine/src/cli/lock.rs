//! `nestr lock`: write nestr.lock with the commit every repository has checked out.

use clap::Args;

use super::render::Ui;
use super::{CliError, ExitCode};
use crate::workspace::Workspace;

#[derive(Debug, Args)]
pub struct LockArgs {}

pub fn run(ws: &Workspace, _args: LockArgs, ui: &Ui) -> Result<ExitCode, CliError> {
    let (path, lock) = ws.lock()?;
    for (name, entry) in &lock.repos {
        ui.note(&format!("{name:<20} {}", entry.commit));
    }
    ui.note(&format!(
        "wrote {} ({} repositories)",
        path.display(),
        lock.repos.len()
    ));
    Ok(ExitCode::Ok)
}
