//! `nestr run OPERATION`: runs an operation over the selected services in dependency order,
//! showing each service's output live (prefixed with its name), then a summary table; `--json`
//! prints the run as JSON. Ctrl-C cancels the run (running programs get SIGTERM, then SIGKILL).

use std::io::Write;
use std::sync::Arc;

use clap::Args;

use super::render::{self, Tone, Ui};
use super::{CliError, ExitCode};
use crate::plugin::state::Cancel;
use crate::scheduler::{RunReport, Selection};
use crate::store::{LogLine, RunStatus, StepStatus, Stream};
use crate::workspace::Workspace;

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The operation to run (build, test, deploy, or any defined in nestr.toml).
    pub operation: String,
    /// Run for this service (repeatable); with -t, the union.
    #[arg(short = 's', long = "service", value_name = "SERVICE")]
    pub services: Vec<String>,
    /// Run for every service with this tag (repeatable).
    #[arg(short = 't', long = "tag", value_name = "TAG")]
    pub tags: Vec<String>,
    /// Print the run as JSON (no live output).
    #[arg(long)]
    pub json: bool,
}

const PALETTE: &[&str] = &["36", "35", "33", "32", "34", "31"];

/// The run Ctrl-C cancels; the handler is installed once per process.
static CURRENT: std::sync::Mutex<Option<Cancel>> = std::sync::Mutex::new(None);

fn watch_ctrl_c(cancel: &Cancel) {
    static INSTALLED: std::sync::Once = std::sync::Once::new();
    if let Ok(mut current) = CURRENT.lock() {
        *current = Some(cancel.clone());
    }
    INSTALLED.call_once(|| {
        let _ = ctrlc::set_handler(|| {
            let current = CURRENT.lock().ok().and_then(|c| c.clone());
            match current {
                Some(c) if !c.is_cancelled() => {
                    eprintln!("\nnestr: cancelling (Ctrl-C again to quit at once)…");
                    c.cancel();
                }
                _ => std::process::exit(ExitCode::Interrupted.code()),
            }
        });
    });
}

pub fn run(ws: &mut Workspace, args: RunArgs, ui: &Ui) -> Result<ExitCode, CliError> {
    let selection = Selection {
        services: args.services,
        tags: args.tags,
    };
    let cancel = Cancel::default();
    watch_ctrl_c(&cancel);
    let width = ws
        .manifest
        .services
        .iter()
        .map(|s| s.name.len())
        .max()
        .unwrap_or(0);
    let color = ui.color_out;
    let names: Vec<String> = ws
        .manifest
        .services
        .iter()
        .map(|s| s.name.clone())
        .collect();
    let on_line: Option<crate::scheduler::LineObserver> = if args.json || ui.quiet {
        None
    } else {
        Some(Arc::new(move |service: &str, line: &LogLine| {
            let i = names.iter().position(|n| n == service).unwrap_or(0);
            let prefix = format!("{service:>width$} |");
            let prefix = if color {
                format!("\x1b[{}m{prefix}\x1b[0m", PALETTE[i % PALETTE.len()])
            } else {
                prefix
            };
            let text = match line.stream {
                Stream::System => render::paint(color, Tone::Dim, &line.text),
                _ => line.text.clone(),
            };
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{prefix} {text}");
        }))
    };
    let report = ws.run_operation(&args.operation, &selection, on_line, None, cancel.clone())?;
    if args.json {
        let text = serde_json::to_string_pretty(&report)
            .map_err(|e| CliError::usage(format!("cannot write JSON: {e}")))?;
        println!("{text}");
    } else if !ui.quiet || report.status != RunStatus::Succeeded {
        print!("{}", summary(ui, &report));
    }
    Ok(match report.status {
        RunStatus::Succeeded => ExitCode::Ok,
        RunStatus::Cancelled => ExitCode::Interrupted,
        _ => ExitCode::Failed,
    })
}

pub fn status_tone(s: StepStatus) -> Tone {
    match s {
        StepStatus::Succeeded => Tone::Good,
        StepStatus::Skipped | StepStatus::Queued | StepStatus::Running => Tone::Dim,
        StepStatus::Cancelled | StepStatus::Interrupted => Tone::Warn,
        _ => Tone::Bad,
    }
}

/// `850ms`, `12.3s`, `4m05s`.
pub fn duration(ms: u64) -> String {
    match ms {
        0..1000 => format!("{ms}ms"),
        1000..60_000 => format!("{:.1}s", ms as f64 / 1000.0),
        _ => format!("{}m{:02}s", ms / 60_000, (ms % 60_000) / 1000),
    }
}

fn summary(ui: &Ui, report: &RunReport) -> String {
    let rows: Vec<Vec<(String, Option<Tone>)>> = report
        .steps
        .iter()
        .map(|s| {
            let tests = s.tests.map_or(String::new(), |t| {
                format!(
                    "{} passed, {} failed, {} skipped",
                    t.passed, t.failed, t.skipped
                )
            });
            let mut summary = s.summary.clone();
            if let Some(r) = &s.reason
                && !summary.contains(r.as_str())
                && s.status != StepStatus::Succeeded
            {
                summary = format!("{summary}: {}", r.lines().next().unwrap_or(""));
            }
            vec![
                (s.service.clone(), None),
                (s.status.as_str().to_string(), Some(status_tone(s.status))),
                (duration(s.duration_ms), Some(Tone::Dim)),
                (summary, None),
                (tests, None),
            ]
        })
        .collect();
    let mut out = format!(
        "\n{}",
        render::table(
            &["SERVICE", "STATUS", "TIME", "SUMMARY", "TESTS"],
            &rows,
            ui.color_out
        )
    );
    let denied: Vec<&str> = report
        .steps
        .iter()
        .filter(|s| s.status == StepStatus::Denied)
        .filter_map(|s| s.reason.as_deref())
        .collect();
    for d in denied {
        out.push_str(&format!("\n{}\n", d));
    }
    out.push_str(&format!(
        "\nrun {} {} ({} steps)\n",
        report.run_id,
        ui.paint(
            if report.status == RunStatus::Succeeded {
                Tone::Good
            } else {
                Tone::Bad
            },
            report.status.as_str()
        ),
        report.steps.len()
    ));
    out
}
