//! `nestr token`: API tokens. `create` prints a new token once (only its SHA-256 is stored),
//! `list` shows them without the secret, `revoke` ends one.

use clap::{Args, Subcommand};

use super::render::{self, Tone, Ui};
use super::{CliError, ExitCode};
use crate::model::Scope;
use crate::workspace::{Workspace, WorkspaceError};

#[derive(Debug, Args)]
pub struct TokenArgs {
    #[command(subcommand)]
    pub command: TokenCommand,
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a token and print it (this is the only time it is shown).
    Create {
        /// read: GET requests; write: GET and POST; approve: GET and approving deploy plans.
        #[arg(long, value_enum)]
        scope: Scope,
        /// A name to tell it apart.
        #[arg(long)]
        name: Option<String>,
    },
    /// List tokens (never the secret).
    List {
        /// Print the tokens as JSON: id, name, scope, prefix, created_at, revoked_at.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a token by id.
    Revoke { id: i64 },
}

/// A new token: `nestr_` and 32 random bytes in hex.
fn new_token() -> Result<String, CliError> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)
        .map_err(|e| CliError::usage(format!("no secure random source: {e}")))?;
    Ok(format!("nestr_{}", hex::encode(bytes)))
}

pub fn run(ws: &mut Workspace, args: TokenArgs, ui: &Ui) -> Result<ExitCode, CliError> {
    let store = ws.store().map_err(WorkspaceError::from)?;
    match args.command {
        TokenCommand::Create { scope, name } => {
            let token = new_token()?;
            let row = store
                .create_token(&token, scope, name.as_deref())
                .map_err(WorkspaceError::from)?;
            println!("{token}");
            if !ui.quiet {
                eprintln!(
                    "{} token {} ({} scope) created. It is shown only this once: keep it now. \
                     Send it as `Authorization: Bearer <token>`.",
                    ui.paint_err(Tone::Good, "ok:"),
                    row.id,
                    scope.as_str()
                );
            }
            Ok(ExitCode::Ok)
        }
        TokenCommand::List { json } => {
            let rows = store.tokens().map_err(WorkspaceError::from)?;
            if json {
                let text = serde_json::to_string_pretty(&rows)
                    .map_err(|e| CliError::usage(format!("cannot write JSON: {e}")))?;
                println!("{text}");
                return Ok(ExitCode::Ok);
            }
            let header = ["ID", "NAME", "SCOPE", "TOKEN", "CREATED", "STATE"];
            let cells: Vec<Vec<(String, Option<Tone>)>> = rows
                .iter()
                .map(|t| {
                    vec![
                        (t.id.to_string(), Some(Tone::Bold)),
                        (t.name.clone().unwrap_or_else(|| "-".into()), None),
                        (t.scope.as_str().to_string(), None),
                        (format!("{}…", t.prefix), None),
                        (crate::model::rfc3339(t.created_at), None),
                        match t.revoked_at {
                            Some(_) => ("revoked".to_string(), Some(Tone::Bad)),
                            None => ("active".to_string(), Some(Tone::Good)),
                        },
                    ]
                })
                .collect();
            print!("{}", render::table(&header, &cells, ui.color_out));
            Ok(ExitCode::Ok)
        }
        TokenCommand::Revoke { id } => {
            if store.revoke_token(id).map_err(WorkspaceError::from)? {
                if !ui.quiet {
                    eprintln!("{} token {id} revoked", ui.paint_err(Tone::Good, "ok:"));
                }
                Ok(ExitCode::Ok)
            } else {
                Err(CliError::Plain {
                    message: format!("no active token with id {id}"),
                    help: Some("`nestr token list` shows the tokens".into()),
                    code: ExitCode::Failed,
                })
            }
        }
    }
}
