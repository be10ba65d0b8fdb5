//! The `nestr` command line: argument definitions (clap derive), global options, dispatch to
//! one file per subcommand, and the mapping of errors to exit codes ([`exit`]).

mod affected;
mod assemble;
mod cache;
mod completions;
pub(crate) mod demo;
mod deploy;
mod exec;
pub mod exit;
mod init;
mod lock;
mod logs;
mod plugin;
mod push;
pub mod render;
mod run;
mod runs;
mod serve;
mod services;
mod status;
mod switch;
mod sync;
mod token;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::workspace::{Location, Workspace, WorkspaceError};
pub use exit::{CliError, ExitCode};
use render::Ui;

/// nestr — one place that knows your whole multi-repository workspace.
#[derive(Debug, Parser)]
#[command(
    name = "nestr",
    version,
    about,
    propagate_version = true,
    max_term_width = 100
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

/// Options every subcommand takes.
#[derive(Debug, Args)]
pub struct Global {
    /// The manifest to use (default: nestr.toml in this folder or the nearest one above it).
    #[arg(long, global = true, value_name = "PATH", env = "NESTR_MANIFEST")]
    pub manifest: Option<PathBuf>,
    /// Folder for nestr's state database (default: .nestr/ beside the manifest).
    #[arg(long, global = true, value_name = "DIR", env = "NESTR_STATE")]
    pub state: Option<PathBuf>,
    /// More log output (-v info, -vv debug, -vvv trace).
    #[arg(short, long, global = true, action = clap::ArgAction::Count, conflicts_with = "quiet")]
    pub verbose: u8,
    /// Print only errors and the requested data.
    #[arg(short, long, global = true)]
    pub quiet: bool,
    /// When to use colour (NO_COLOR in the environment means never, unless `always`).
    #[arg(long, global = true, value_enum, default_value_t = ColorChoice::Auto, value_name = "WHEN")]
    pub color: ColorChoice,
    /// Format of log lines on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Pretty, value_name = "FORMAT")]
    pub log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ColorChoice {
    Auto,
    Always,
    Never,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Pretty,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Write a commented starter nestr.toml in this folder.
    Init(init::InitArgs),
    /// Clone every missing repository and check out its pin.
    Assemble(assemble::AssembleArgs),
    /// Fetch every repository and fast-forward those that can be updated without losing work.
    Sync(sync::SyncArgs),
    /// Show where every repository stands: branch, head, ahead/behind, uncommitted changes.
    Status(status::StatusArgs),
    /// Create (-c) or switch a branch in every repository, or those named: all or none.
    Switch(switch::SwitchArgs),
    /// Push each repository's current branch to origin, setting its upstream.
    Push(push::PushArgs),
    /// Write nestr.lock with the exact commit of every repository.
    Lock(lock::LockArgs),
    /// List the services with their repository, path, dependencies, tags and operations.
    Services(services::ServicesArgs),
    /// Run an operation (build, test, deploy, …) over services in dependency order.
    Run(run::RunArgs),
    /// Run your own command in each repository's (or service's) folder, in parallel: `nestr exec
    /// -- git status -s`. Recorded as a run.
    Exec(exec::ExecArgs),
    /// The run history: list runs, show one, prune old ones.
    Runs(runs::RunsArgs),
    /// Show the stored log of a run.
    Logs(logs::LogsArgs),
    /// The operation cache: why a step missed, what it holds, pruning it.
    Cache(cache::CacheArgs),
    /// The services a change affects across repositories, and why.
    Affected(affected::AffectedArgs),
    /// List, inspect, check and create operation plugins.
    Plugin(plugin::PluginArgs),
    /// Build a sample workspace of local git repositories and run nestr on it: assemble, sync,
    /// status, lock, then build, test and deploy through the plugins.
    Demo(demo::DemoArgs),
    /// Serve the HTTP API (REST, live events, Prometheus metrics) over this workspace.
    Serve(serve::ServeArgs),
    /// Create, list and revoke API tokens.
    Token(token::TokenArgs),
    /// Deploy to an environment: plan, approve, apply (health-gated, rolled back in reverse
    /// order on failure), status.
    Deploy(deploy::DeployArgs),
    /// Print the shell completion script (e.g. `nestr completions bash > /etc/bash_completion.d/nestr`).
    Completions(completions::CompletionsArgs),
    /// Print the man page in roff (e.g. `nestr man > ~/.local/share/man/man1/nestr.1`).
    Man,
}

/// Runs the parsed command line.
pub fn run(cli: Cli) -> Result<ExitCode, CliError> {
    let ui = Ui::new(&cli.global);
    let cwd = std::env::current_dir()
        .map_err(|e| CliError::usage(format!("cannot read the current folder: {e}")))?;
    let location = Location {
        manifest: cli.global.manifest.clone(),
        state: cli.global.state.clone(),
        cwd,
    };
    match cli.command {
        Command::Init(args) => init::run(&location, args, &ui),
        Command::Demo(args) => demo::run(args, &ui),
        Command::Assemble(args) => assemble::run(&mut load(&location)?, args, &ui),
        Command::Sync(args) => sync::run(&mut load(&location)?, args, &ui),
        Command::Status(args) => status::run(&mut load(&location)?, args, &ui),
        Command::Lock(args) => lock::run(&load(&location)?, args, &ui),
        Command::Switch(args) => switch::run(&mut load(&location)?, args, &ui),
        Command::Push(args) => push::run(&mut load(&location)?, args, &ui),
        Command::Services(args) => services::run(&mut load(&location)?, args, &ui),
        Command::Run(args) => run::run(&mut load(&location)?, args, &ui),
        Command::Exec(args) => exec::run(&mut load(&location)?, args, &ui),
        Command::Logs(args) => logs::run(&mut load(&location)?, args, &ui),
        Command::Cache(args) => cache::run(&mut load(&location)?, args, &ui),
        Command::Affected(args) => affected::run(&mut load(&location)?, args, &ui),
        Command::Runs(args) => runs::run(&mut load(&location)?, args, &ui),
        Command::Plugin(args) => plugin::run(&location, args, &ui),
        Command::Serve(args) => serve::run(&location, args, &ui),
        Command::Token(args) => token::run(&mut load(&location)?, args, &ui),
        Command::Deploy(args) => deploy::run(&mut load(&location)?, args, &ui),
        Command::Completions(args) => completions::run(args),
        Command::Man => completions::man(),
    }
}

fn load(location: &Location) -> Result<Workspace, WorkspaceError> {
    Workspace::load(location)
}

/// Prints `v` as pretty JSON.
pub(crate) fn print_json<T: serde::Serialize>(v: &T) -> Result<ExitCode, CliError> {
    let text = serde_json::to_string_pretty(v)
        .map_err(|e| CliError::usage(format!("cannot write JSON: {e}")))?;
    println!("{text}");
    Ok(ExitCode::Ok)
}

/// `-j N`: how many repositories at once.
#[derive(Debug, Args, Clone, Copy)]
pub struct Jobs {
    /// How many repositories to work on at once.
    #[arg(short = 'j', long = "jobs", value_name = "N", default_value_t = 4,
          value_parser = clap::value_parser!(u16).range(1..=256))]
    pub jobs: u16,
}
