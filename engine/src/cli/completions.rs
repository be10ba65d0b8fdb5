//! `nestr completions SHELL`: the shell completion script for bash, zsh, fish, elvish or
//! PowerShell (clap_complete), and `nestr man`: the man page (clap_mangen), both generated from
//! the same command definitions the parser uses.

use clap::{Args, CommandFactory};
use clap_complete::Shell;

use super::{Cli, CliError, ExitCode};

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to write completions for.
    #[arg(value_enum)]
    pub shell: Shell,
}

pub fn run(args: CompletionsArgs) -> Result<ExitCode, CliError> {
    let mut cmd = Cli::command();
    clap_complete::generate(args.shell, &mut cmd, "nestr", &mut std::io::stdout());
    Ok(ExitCode::Ok)
}

pub fn man() -> Result<ExitCode, CliError> {
    clap_mangen::Man::new(Cli::command())
        .render(&mut std::io::stdout())
        .map_err(CliError::output)?;
    Ok(ExitCode::Ok)
}
