//! `nestr init`: write a commented starter nestr.toml (never overwriting one).

use clap::Args;

use super::render::Ui;
use super::{CliError, ExitCode};
use crate::manifest::FILE_NAME;
use crate::workspace::Location;

#[derive(Debug, Args)]
pub struct InitArgs {
    /// Workspace name (default: this folder's name, made valid).
    #[arg(long)]
    pub name: Option<String>,
}

const TEMPLATE: &str = include_str!("init_template.toml");

pub fn run(at: &Location, args: InitArgs, ui: &Ui) -> Result<ExitCode, CliError> {
    let path = at
        .cwd
        .join(at.manifest.clone().unwrap_or_else(|| FILE_NAME.into()));
    if path.exists() {
        return Err(CliError::Plain {
            message: format!("{} already exists; nothing was written", path.display()),
            help: Some("edit it, or remove it first if you really want a fresh one".into()),
            code: ExitCode::Usage,
        });
    }
    let name = match args.name {
        Some(n) if crate::manifest::valid_name(&n) => n,
        Some(n) => {
            return Err(CliError::usage(format!(
                "`{n}` is not a valid workspace name: use lower-case letters, digits, `-` and `_`"
            )));
        }
        None => folder_name(&path),
    };
    let text = TEMPLATE.replace("{{name}}", &name);
    // The template must always be a valid manifest.
    crate::manifest::parse(&std::path::absolute(&path).unwrap_or(path.clone()), &text)
        .map_err(|e| CliError::Manifest(Box::new(e)))?;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .and_then(|mut f| std::io::Write::write_all(&mut f, text.as_bytes()))
        .map_err(|e| CliError::usage(format!("cannot write {}: {e}", path.display())))?;
    ui.note(&format!(
        "wrote {}; add your repositories, then run `nestr assemble`",
        path.display()
    ));
    Ok(ExitCode::Ok)
}

fn folder_name(path: &std::path::Path) -> String {
    let dir = std::path::absolute(path).ok().and_then(|p| {
        p.parent()
            .and_then(|d| d.file_name())
            .map(|n| n.to_string_lossy().to_lowercase())
    });
    let cleaned: String = dir
        .unwrap_or_default()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect::<String>()
        .trim_start_matches(['-', '_'])
        .chars()
        .take(64)
        .collect();
    if crate::manifest::valid_name(&cleaned) {
        cleaned
    } else {
        "workspace".to_string()
    }
}
