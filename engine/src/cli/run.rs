//! `nestr run OPERATION`: runs an operation over the selected services in dependency order, up to
//! `-j` steps at once. A renderer thread subscribes to the run's events and shows each service's
//! output live (prefixed with its name, one colour per service) or grouped per step, with a
//! progress line on a terminal; then a summary table. `--dry-run` prints the plan; `--json`
//! prints the run. Ctrl-C cancels (running programs get SIGTERM, then SIGKILL after a grace);
//! a second Ctrl-C kills them at once and quits.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::sync::Mutex;

use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::sync::broadcast::error::RecvError;

use super::render::{self, Tone, Ui};
use super::{CliError, ExitCode};
use crate::model::{CacheMode, ContinueMode};
use crate::model::{RunStatus, StepStatus, Stream};
use crate::plugin::state::Cancel;
use crate::scheduler::events::{Event, Events};
use crate::scheduler::{Plan, RunOptions, RunReport, Selection};
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
    /// Add every service the selection depends on.
    #[arg(long)]
    pub with_deps: bool,
    /// Add every service that depends on the selection.
    #[arg(long)]
    pub with_dependents: bool,
    /// Steps at once (default: the number of cores).
    #[arg(short = 'j', long = "jobs", value_name = "N", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub jobs: Option<u16>,
    /// After a step fails: start nothing new (never), go on where dependencies succeeded
    /// (dependencies-ok), or run everything (always).
    #[arg(long = "continue", value_enum, default_value_t = ContinueMode::Never, value_name = "MODE")]
    pub continue_mode: ContinueMode,
    /// Print the plan (levels, plugins, what would be skipped) and run nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Live output: lines prefixed with the service, or each step's output as a block when it ends.
    #[arg(long, value_enum, default_value_t = Output::Prefixed)]
    pub output: Output,
    /// Print the run as stored (what `GET /api/runs/{id}` answers), or with --dry-run the plan,
    /// as JSON; no live output.
    #[arg(long)]
    pub json: bool,
    /// Run every step and store nothing in the cache (as `--cache off`).
    #[arg(long, conflicts_with = "cache")]
    pub no_cache: bool,
    /// How steps of operations with `cache = true` use the cache: read-write (default), read
    /// (use stored results, store nothing: for CI consumers), write (run all, store), off.
    #[arg(long, value_enum, value_name = "MODE")]
    pub cache: Option<CacheMode>,
    /// Record each step's host calls (programs run, HTTP requests, log lines, with their
    /// answers) as a tape DIR/SERVICE.OPERATION.json, for `nestr_sdk::testing::replay` in a
    /// plugin's native tests. Every step runs (stored results are not used).
    #[arg(long, value_name = "DIR")]
    pub record: Option<std::path::PathBuf>,
    /// Run only the services a change affects (see `nestr affected`), since each repository's
    /// upstream, --base REF or --from OLD.lock.
    #[arg(long, conflicts_with_all = ["services", "tags"])]
    pub affected: bool,
    #[command(flatten)]
    pub range: super::affected::ChangeRange,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Prefixed,
    Grouped,
}

const PALETTE: &[&str] = &["36", "35", "33", "32", "34", "31"];

/// The run Ctrl-C cancels (and its id, to kill its programs on a second Ctrl-C).
static CURRENT: Mutex<Option<(Cancel, Option<String>)>> = Mutex::new(None);

/// Ctrl-C cancels `cancel` (a second one kills everything and quits).
pub(super) fn watch_cancel(cancel: &Cancel) {
    watch_ctrl_c(cancel);
}

fn watch_ctrl_c(cancel: &Cancel) {
    static INSTALLED: std::sync::Once = std::sync::Once::new();
    if let Ok(mut current) = CURRENT.lock() {
        *current = Some((cancel.clone(), None));
    }
    INSTALLED.call_once(|| {
        let _ = ctrlc::set_handler(|| {
            let current = CURRENT.lock().ok().and_then(|c| c.clone());
            match current {
                Some((c, _)) if !c.is_cancelled() => {
                    eprintln!("\nnestr: cancelling (Ctrl-C again to kill everything and quit)…");
                    c.cancel();
                }
                Some((_, Some(run_id))) => {
                    crate::plugin::kill_marked_prefix(&format!("{run_id}-"));
                    crate::contain::kill_run(&format!("{run_id}-"));
                    std::process::exit(ExitCode::Interrupted.code());
                }
                _ => std::process::exit(ExitCode::Interrupted.code()),
            }
        });
    });
}

fn set_current_run(run_id: &str) {
    if let Ok(mut current) = CURRENT.lock()
        && let Some((_, id)) = current.as_mut()
    {
        *id = Some(run_id.to_string());
    }
}

pub fn run(ws: &mut Workspace, args: RunArgs, ui: &Ui) -> Result<ExitCode, CliError> {
    let mut selection = Selection {
        services: args.services.clone(),
        tags: args.tags.clone(),
        with_deps: args.with_deps,
        with_dependents: args.with_dependents,
    };
    if !args.affected
        && (args.range.base.is_some() || args.range.from.is_some() || args.range.to.is_some())
    {
        return Err(CliError::usage(
            "--base, --from and --to choose what `--affected` compares: add --affected",
        ));
    }
    if args.affected {
        let a = args.range.affected(&ws.manifest, Some(&args.operation))?;
        if a.services.is_empty() {
            if !ui.quiet {
                eprintln!("nestr: nothing is affected; no run");
            }
            return Ok(ExitCode::Ok);
        }
        if !ui.quiet && !args.json {
            for s in &a.services {
                eprintln!(
                    "affected: {} ({})",
                    s.name,
                    render::untrusted(&s.why, false)
                );
            }
        }
        selection.services = a.names();
    }
    if args.dry_run {
        let plan = ws.plan(&args.operation, &selection)?;
        print_plan(ui, &plan, args.json)?;
        return Ok(ExitCode::Ok);
    }
    let mut options = RunOptions {
        continue_mode: args.continue_mode,
        cache: match (args.no_cache, args.cache.unwrap_or_default()) {
            (true, _) => CacheMode::Off,
            // A recorded step must run: results may be stored, never used.
            (false, CacheMode::ReadWrite | CacheMode::Write) if args.record.is_some() => {
                CacheMode::Write
            }
            (false, CacheMode::Read | CacheMode::Off) if args.record.is_some() => CacheMode::Off,
            (false, mode) => mode,
        },
        record: args
            .record
            .as_ref()
            .map(|d| std::path::absolute(d).unwrap_or_else(|_| d.clone())),
        ..RunOptions::default()
    };
    if let Some(j) = args.jobs {
        options.jobs = usize::from(j);
    }
    let names: Vec<String> = ws
        .manifest
        .services
        .iter()
        .map(|s| s.name.clone())
        .collect();
    let live = Live {
        names,
        output: args.output,
        json: args.json,
        first_column: "SERVICE",
    };
    live.run(ws, ui, |ws, cancel| {
        Ok(ws.run_operation(&args.operation, &selection, &options, cancel)?)
    })
}

/// How a run is followed at the terminal: its steps' names (for the prefix colours and width),
/// live output prefixed or grouped, or JSON at the end; the summary table's first column.
pub(super) struct Live {
    pub names: Vec<String>,
    pub output: Output,
    pub json: bool,
    pub first_column: &'static str,
}

impl Live {
    /// Carries out `go` (which records and executes a run with the cancel it is given) while a
    /// renderer thread shows the run's events; Ctrl-C cancels it. Then the run as stored (JSON)
    /// or the summary, and the exit code of its status.
    pub(super) fn run(
        self,
        ws: &mut Workspace,
        ui: &Ui,
        go: impl FnOnce(&mut Workspace, Cancel) -> Result<RunReport, CliError>,
    ) -> Result<ExitCode, CliError> {
        let cancel = Cancel::default();
        watch_ctrl_c(&cancel);
        let events = Events::default();
        let rx = events.subscribe();
        ws.meta.events = events;
        let live = !(self.json || ui.quiet);
        let renderer = Renderer {
            color: ui.color_out,
            width: self.names.iter().map(String::len).max().unwrap_or(0),
            names: self.names,
            grouped: self.output == Output::Grouped,
            live,
            bar: (live && std::io::stderr().is_terminal()).then(progress_bar),
        };
        let thread = std::thread::spawn(move || renderer.render(rx));
        let result = go(ws, cancel);
        // The run's channel closes with its last sender, which ends the renderer even when the
        // run never started.
        ws.meta.events = Events::default();
        let _ = thread.join();
        let report = result?;
        if self.json {
            // The run as stored: the shape `runs show --json` and `GET /api/runs/{id}` give.
            let row = ws.store()?.run(&report.run_id)?.ok_or_else(|| {
                CliError::usage(format!("run {} is not in the store", report.run_id))
            })?;
            let text = serde_json::to_string_pretty(&row)
                .map_err(|e| CliError::usage(format!("cannot write JSON: {e}")))?;
            println!("{text}");
        } else if !ui.quiet || report.status != RunStatus::Succeeded {
            print!("{}", summary(ui, &report, self.first_column));
        }
        Ok(match report.status {
            RunStatus::Succeeded => ExitCode::Ok,
            RunStatus::Cancelled => ExitCode::Interrupted,
            _ => ExitCode::Failed,
        })
    }
}

fn progress_bar() -> ProgressBar {
    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template("{spinner} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    bar.enable_steady_tick(std::time::Duration::from_millis(120));
    bar
}

struct Renderer {
    color: bool,
    width: usize,
    names: Vec<String>,
    grouped: bool,
    live: bool,
    bar: Option<ProgressBar>,
}

impl Renderer {
    fn prefix(&self, service: &str) -> String {
        let p = format!("{service:>width$}", width = self.width);
        let i = self.names.iter().position(|n| n == service).unwrap_or(0);
        if self.color {
            format!("\x1b[{}m{p}\x1b[0m", PALETTE[i % PALETTE.len()])
        } else {
            p
        }
    }

    fn print(&self, text: &str) {
        let write = || {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{text}");
        };
        match &self.bar {
            Some(bar) => bar.suspend(write),
            None => write(),
        }
    }

    fn render(self, mut rx: tokio::sync::broadcast::Receiver<Event>) {
        let mut state: HashMap<String, StepStatus> = HashMap::new();
        let mut blocks: HashMap<String, Vec<String>> = HashMap::new();
        loop {
            let event = match rx.blocking_recv() {
                Ok(e) => e,
                Err(RecvError::Lagged(n)) => {
                    if self.live {
                        self.print(&render::paint(self.color, Tone::Warn, &format!("[nestr: display fell behind; {n} events not shown here (all are stored: nestr logs)]")));
                    }
                    continue;
                }
                Err(RecvError::Closed) => break,
            };
            if let Some((service, status)) = event.step_status() {
                state.insert(service.to_string(), status);
            }
            match &event {
                Event::RunStarted { run_id, .. } => set_current_run(run_id),
                Event::Log { service, chunk, .. } if self.live => {
                    let prefix = self.prefix(service);
                    let system = chunk.stream == Stream::System;
                    let shown: Vec<String> = chunk
                        .text
                        .split('\n')
                        .map(|t| render::log_line(&prefix, system, t, self.color))
                        .collect();
                    if self.grouped {
                        blocks.entry(service.clone()).or_default().extend(shown);
                    } else {
                        self.print(&shown.join("\n"));
                    }
                }
                Event::StepFinished { report, .. } if self.live && self.grouped => {
                    let lines = blocks.remove(&report.service).unwrap_or_default();
                    let head = format!(
                        "── {} {} ({})",
                        report.service,
                        render::paint(
                            self.color,
                            super::run::status_tone(report.status),
                            report.status.as_str()
                        ),
                        duration(report.duration_ms)
                    );
                    self.print(&head);
                    for l in lines {
                        self.print(&l);
                    }
                }
                Event::RunFinished { .. } => break,
                _ => {}
            }
            if let Some(bar) = &self.bar {
                let count = |f: fn(&StepStatus) -> bool| state.values().filter(|s| f(s)).count();
                bar.set_message(format!(
                    "{} done, {} running, {} queued",
                    count(|s| !matches!(s, StepStatus::Queued | StepStatus::Running)),
                    count(|s| *s == StepStatus::Running),
                    count(|s| *s == StepStatus::Queued)
                ));
            }
        }
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

fn print_plan(ui: &Ui, plan: &Plan, json: bool) -> Result<(), CliError> {
    if json {
        let text = serde_json::to_string_pretty(&plan.view())
            .map_err(|e| CliError::usage(e.to_string()))?;
        println!("{text}");
        return Ok(());
    }
    println!(
        "plan for `{}` ({} steps; nothing is run):",
        plan.operation,
        plan.steps.len()
    );
    for (i, level) in plan.levels().iter().enumerate() {
        println!("{}", ui.paint(Tone::Bold, &format!("level {i}")));
        for s in level {
            let after = if s.depends_on.is_empty() {
                String::new()
            } else {
                format!(" after {}", s.depends_on.join(", "))
            };
            match (&s.plugin, &s.skip) {
                (_, Some(why)) => println!(
                    "  {} {}",
                    s.service,
                    ui.paint(Tone::Warn, &format!("skipped: {why}"))
                ),
                (Some(p), None) => println!("  {} ({p}){}", s.service, ui.paint(Tone::Dim, &after)),
                (None, None) => println!("  {}", s.service),
            }
        }
    }
    if let Some(c) = plan.concurrency() {
        println!("at most {c} at once (concurrency in nestr.toml)");
    }
    Ok(())
}

pub fn status_tone(s: StepStatus) -> Tone {
    match s {
        StepStatus::Succeeded | StepStatus::Cached => Tone::Good,
        StepStatus::Skipped | StepStatus::Queued | StepStatus::Running => Tone::Dim,
        StepStatus::Cancelled | StepStatus::Interrupted => Tone::Warn,
        _ => Tone::Bad,
    }
}

/// A step's summary for a table: with the first line of its reason when it did not succeed
/// (just the reason when that already starts with the summary).
pub fn summary_cell(summary: &str, reason: Option<&str>, status: StepStatus) -> String {
    match reason {
        Some(r) if !status.is_ok() && !summary.contains(r) => {
            let first = r.lines().next().unwrap_or("");
            if first.starts_with(summary) {
                first.to_string()
            } else {
                format!("{summary}: {first}")
            }
        }
        _ => summary.to_string(),
    }
}

/// `9 passed, 1 failed, 2 skipped`.
pub fn tests_cell(t: &crate::model::TestCounts) -> String {
    format!(
        "{} passed, {} failed, {} skipped",
        t.passed, t.failed, t.skipped
    )
}

/// `850ms`, `12.3s`, `4m05s`.
pub fn duration(ms: u64) -> String {
    match ms {
        0..1000 => format!("{ms}ms"),
        1000..60_000 => format!("{:.1}s", ms as f64 / 1000.0),
        _ => format!("{}m{:02}s", ms / 60_000, (ms % 60_000) / 1000),
    }
}

fn summary(ui: &Ui, report: &RunReport, first_column: &str) -> String {
    let rows: Vec<Vec<(String, Option<Tone>)>> = report
        .steps
        .iter()
        .map(|s| {
            let tests = s.tests.map_or(String::new(), |t| tests_cell(&t));
            let summary = summary_cell(&s.summary, s.reason.as_deref(), s.status);
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
            &[first_column, "STATUS", "TIME", "SUMMARY", "TESTS"],
            &rows,
            ui.color_out
        )
    );
    for d in report
        .steps
        .iter()
        .filter(|s| s.status == StepStatus::Denied)
        .filter_map(|s| s.reason.as_deref())
    {
        let shown: Vec<String> = d.lines().map(|l| render::untrusted(l, false)).collect();
        out.push_str(&format!("\n{}\n", shown.join("\n")));
    }
    let hits: Vec<&crate::scheduler::StepReport> = report
        .steps
        .iter()
        .filter(|s| s.status == StepStatus::Cached)
        .collect();
    if !hits.is_empty() {
        let saved: i64 = hits
            .iter()
            .filter_map(|s| s.cache.as_ref().and_then(|c| c.saved_ms))
            .sum();
        out.push_str(&format!(
            "\n{} of {} steps from the cache (saved {})\n",
            hits.len(),
            report.steps.len(),
            duration(u64::try_from(saved).unwrap_or(0))
        ));
    }
    out.push_str(&format!(
        "\nrun {} {} ({} step{}) — nestr logs {}\n",
        report.run_id,
        ui.paint(
            if report.status == RunStatus::Succeeded {
                Tone::Good
            } else {
                Tone::Bad
            },
            report.status.as_str()
        ),
        report.steps.len(),
        if report.steps.len() == 1 { "" } else { "s" },
        report.run_id
    ));
    out
}
