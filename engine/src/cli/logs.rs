//! `nestr logs RUN`: the stored log of a run, step by step, each line prefixed with its service.

use clap::Args;
use serde::Serialize;

use super::render::{Tone, Ui, paint};
use super::{CliError, ExitCode};
use crate::store::{LogLine, Stream};
use crate::workspace::Workspace;

#[derive(Debug, Args)]
pub struct LogsArgs {
    /// The run id (as printed by `nestr run`).
    pub run: String,
    /// Only this service's step (repeatable).
    #[arg(short = 's', long = "service", value_name = "SERVICE")]
    pub services: Vec<String>,
    /// One JSON object per line: service, seq, at, stream, level, text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize)]
struct JsonLine<'a> {
    service: &'a str,
    #[serde(flatten)]
    line: &'a LogLine,
}

pub fn run(ws: &mut Workspace, args: LogsArgs, ui: &Ui) -> Result<ExitCode, CliError> {
    let store = ws.store()?;
    let Some(run) = store.run(&args.run)? else {
        return Err(CliError::usage(format!(
            "there is no run `{}` in this workspace",
            args.run
        )));
    };
    for name in &args.services {
        if !run.steps.iter().any(|s| &s.service == name) {
            return Err(CliError::usage(format!(
                "run {} has no step for service `{name}`",
                run.id
            )));
        }
    }
    let width = run.steps.iter().map(|s| s.service.len()).max().unwrap_or(0);
    for step in run
        .steps
        .iter()
        .filter(|s| args.services.is_empty() || args.services.contains(&s.service))
    {
        for line in store.step_logs(step.id)? {
            if args.json {
                let j = JsonLine {
                    service: &step.service,
                    line: &line,
                };
                println!(
                    "{}",
                    serde_json::to_string(&j).map_err(|e| CliError::usage(e.to_string()))?
                );
            } else {
                let text = if line.stream == Stream::System {
                    paint(ui.color_out, Tone::Dim, &line.text)
                } else {
                    line.text.clone()
                };
                println!("{:>width$} | {text}", step.service);
            }
        }
    }
    Ok(ExitCode::Ok)
}
