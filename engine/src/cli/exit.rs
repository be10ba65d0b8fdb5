//! Exit codes and the errors that end a command. Every code is documented in docs/cli.md.

use crate::manifest::ManifestError;
use crate::workspace::WorkspaceError;

/// The process exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitCode {
    /// Everything succeeded (repositories left as they are for a stated reason still count).
    Ok = 0,
    /// The command ran, but some repositories (or steps) failed.
    Failed = 1,
    /// Bad usage, or the manifest or lock file is invalid; nothing was done.
    Usage = 2,
    /// The state database cannot be used (unwritable, or written by a newer nestr).
    State = 3,
    /// Interrupted (Ctrl-C).
    Interrupted = 130,
    /// The reader of standard output went away (`nestr … | head`): ends quietly, as git does.
    BrokenPipe = 141,
}

impl ExitCode {
    pub fn code(self) -> i32 {
        self as i32
    }
}

/// An error that ends the command, with the exit code it maps to.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// A manifest problem: shown with its source snippet.
    #[error(transparent)]
    Manifest(Box<crate::manifest::InvalidManifest>),
    /// Any other problem: a message and what to do.
    #[error("{message}")]
    Plain {
        message: String,
        help: Option<String>,
        code: ExitCode,
    },
}

impl CliError {
    /// A failed write to standard output: quiet exit 141 when the reader is gone.
    pub fn output(e: std::io::Error) -> Self {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            return CliError::Plain {
                message: String::new(),
                help: None,
                code: ExitCode::BrokenPipe,
            };
        }
        CliError::Plain {
            message: format!("cannot write the output: {e}"),
            help: None,
            code: ExitCode::Failed,
        }
    }

    pub fn usage(message: impl Into<String>) -> Self {
        CliError::Plain {
            message: message.into(),
            help: None,
            code: ExitCode::Usage,
        }
    }

    pub fn exit_code(&self) -> ExitCode {
        match self {
            CliError::Manifest(_) => ExitCode::Usage,
            CliError::Plain { code, .. } => *code,
        }
    }
}

impl From<WorkspaceError> for CliError {
    fn from(e: WorkspaceError) -> Self {
        let help = e.help();
        let message = crate::redact::text(&e.to_string());
        match e {
            WorkspaceError::Manifest(ManifestError::Invalid(m)) => CliError::Manifest(Box::new(m)),
            WorkspaceError::Manifest(_) | WorkspaceError::Lock(_) | WorkspaceError::Plan(_) => {
                CliError::Plain {
                    message,
                    help,
                    code: ExitCode::Usage,
                }
            }
            WorkspaceError::Store(_) => CliError::Plain {
                message,
                help,
                code: ExitCode::State,
            },
            WorkspaceError::Failed(_) => CliError::Plain {
                message,
                help,
                code: ExitCode::Failed,
            },
        }
    }
}

impl From<crate::store::StoreError> for CliError {
    fn from(e: crate::store::StoreError) -> Self {
        WorkspaceError::Store(e).into()
    }
}
