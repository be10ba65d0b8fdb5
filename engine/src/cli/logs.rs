//! `nestr logs RUN`: the stored log of a run, step by step, each line prefixed with its service;
//! `--follow` tails a run in progress from the store (every line exactly once, in order per step)
//! until it ends.

use clap::Args;

use super::render::{Ui, log_line};
use super::{CliError, ExitCode};
use std::collections::HashMap;
use std::time::Duration;

use crate::model::Stream;
use crate::store::LogLine;
use crate::workspace::Workspace;

#[derive(Debug, Args)]
pub struct LogsArgs {
    /// The run id (as printed by `nestr run`).
    pub run: String,
    /// Only this service's step (repeatable).
    #[arg(short = 's', long = "service", value_name = "SERVICE")]
    pub services: Vec<String>,
    /// One JSON object per line, as `GET /api/runs/{id}/logs` lists them: service, step_id,
    /// seq, at, stream, level, text.
    #[arg(long)]
    pub json: bool,
    /// Keep printing new lines while the run goes on; ends when it ends.
    #[arg(short, long)]
    pub follow: bool,
}

fn print_line(
    ui: &Ui,
    service: &str,
    width: usize,
    line: &LogLine,
    json: bool,
) -> Result<(), CliError> {
    if json {
        let j = crate::store::ServiceLogLine {
            service: service.to_string(),
            line: line.clone(),
        };
        println!(
            "{}",
            serde_json::to_string(&j).map_err(|e| CliError::usage(e.to_string()))?
        );
    } else {
        let service = format!("{service:>width$}");
        println!(
            "{}",
            log_line(
                &service,
                line.stream == Stream::System,
                &line.text,
                ui.color_out
            )
        );
    }
    Ok(())
}

pub fn run(ws: &mut Workspace, args: LogsArgs, ui: &Ui) -> Result<ExitCode, CliError> {
    let store = ws.store()?;
    let run = super::runs::find_run(store, &args.run)?;
    for name in &args.services {
        if !run.steps.iter().any(|s| &s.service == name) {
            return Err(CliError::usage(format!(
                "run {} has no step for service `{name}`",
                run.run.id
            )));
        }
    }
    let width = run.steps.iter().map(|s| s.service.len()).max().unwrap_or(0);
    let wanted =
        |service: &str| args.services.is_empty() || args.services.iter().any(|s| s == service);
    // Last sequence number printed per step: every line is printed exactly once, in order.
    let mut printed: HashMap<i64, i64> = HashMap::new();
    loop {
        // Read the status before the lines: a run seen finished here has all its lines committed.
        let current = store
            .run(&run.run.id)?
            .ok_or_else(|| CliError::usage("the run disappeared"))?;
        let finished = !current.run.status.is_active();
        for step in current.steps.iter().filter(|s| wanted(&s.service)) {
            loop {
                let after = printed.get(&step.id).copied().unwrap_or(-1);
                let lines = store.step_logs_after(step.id, after, 5000)?;
                let Some(last) = lines.last().map(|l| l.seq) else {
                    break;
                };
                for line in &lines {
                    print_line(ui, &step.service, width, line, args.json)?;
                }
                printed.insert(step.id, last);
            }
        }
        if !args.follow || finished {
            break;
        }
        let _ = std::io::Write::flush(&mut std::io::stdout());
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(ExitCode::Ok)
}
