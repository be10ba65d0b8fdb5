//! The `nestr` binary: parse arguments, set up logging, run the command, and map its outcome to
//! an exit code (docs/cli.md). All the work happens in the library.

use std::io::IsTerminal;

use clap::Parser;
use miette::{GraphicalReportHandler, GraphicalTheme};
use nestr::cli::render::{Tone, paint};
use nestr::cli::{self, Cli, CliError, ColorChoice, Global, LogFormat};
use tracing_subscriber::EnvFilter;

/// The exit status of a process killed by SIGPIPE, as shells report it (what `git log | head`
/// gives).
const BROKEN_PIPE: i32 = 128 + 13;

fn main() {
    nestr::warm_up_git();
    quiet_on_broken_pipe();
    let cli = Cli::parse();
    // A server's operator wants its own life-cycle lines (start, manifest reloads, shutdown).
    let server = matches!(cli.command, cli::Command::Serve(_));
    init_logging(&cli.global, server);
    let color = stderr_color(&cli.global);
    let code = match cli::run(cli) {
        Ok(code) => code,
        Err(e) => {
            if e.exit_code() != cli::ExitCode::BrokenPipe {
                report(&e, color);
            }
            e.exit_code()
        }
    };
    std::process::exit(code.code());
}

/// `nestr logs RUN | head`: when the reader of stdout goes away, printing fails with a broken
/// pipe (Rust ignores SIGPIPE, so the write returns the error and `println!` panics). Exit at
/// once and quietly then, as git and ripgrep do, instead of showing a panic; any other panic
/// keeps its message.
fn quiet_on_broken_pipe() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = nestr::scheduler::panic_text(info.payload());
        if message.contains("Broken pipe") || message.contains("os error 32") {
            std::process::exit(BROKEN_PIPE);
        }
        default(info);
    }));
}

fn stderr_color(g: &Global) -> bool {
    match g.color {
        ColorChoice::Always => true,
        ColorChoice::Never => false,
        ColorChoice::Auto => {
            std::io::stderr().is_terminal()
                && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
        }
    }
}

fn init_logging(g: &Global, server: bool) {
    let default = match (g.quiet, g.verbose) {
        (true, _) => "error",
        (false, 0) if server => "warn,nestr=info",
        (false, 0) => "warn",
        (false, 1) => "info",
        (false, 2) => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_env("NESTR_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match g.log_format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Pretty => builder.with_ansi(stderr_color(g)).try_init(),
    };
}

fn report(e: &CliError, color: bool) {
    match e {
        CliError::Manifest(m) => {
            let theme = if color {
                GraphicalTheme::unicode()
            } else {
                GraphicalTheme::unicode_nocolor()
            };
            let handler = GraphicalReportHandler::new_themed(theme).with_wrap_lines(false);
            // Every problem in the same form, one after the other.
            let mut shown = Vec::new();
            for problem in m.each() {
                let mut out = String::new();
                if handler.render_report(&mut out, problem.as_ref()).is_err() {
                    out = problem.to_string();
                }
                shown.push(out);
            }
            eprint!("{}", shown.join("\n"));
        }
        CliError::Plain { message, help, .. } => {
            eprintln!(
                "{} {}",
                paint(color, Tone::Bad, "error:"),
                nestr::redact::text(message)
            );
            if let Some(h) = help {
                eprintln!("{} {h}", paint(color, Tone::Info, "help:"));
            }
        }
    }
}
