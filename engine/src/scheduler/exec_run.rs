//! `nestr exec` as a run: operation `exec`, one step per folder (a repository's or a service's;
//! plugin `exec`), taken through the one run lifecycle ([`Recorder`]) so that `runs`, `logs` and
//! the dashboard show it like any run. In each folder the user's own program runs with the user's
//! rights and environment — not through a plugin, and never started over the HTTP API — up to
//! `jobs` at once, its output streaming into the step's log (stored, shown live). A step ends
//! `succeeded` when the program exits 0, `failed` otherwise. Each program and everything it
//! starts is born inside its step's containment and ended with it; cancellation (Ctrl-C) gives
//! each running program's group SIGTERM, then SIGKILL after the grace period, and starts nothing
//! more.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::task::JoinSet;

use super::record::{Recorder, RunMeta, RunSpec};
use super::{RunReport, StepReport};
use crate::contain::Containment;
use crate::model::{ContinueMode, RunStatus, StepStatus};
use crate::plugin::sink::{DEFAULT_OUTPUT_CAP, StepLog};
use crate::plugin::state::Cancel;
use crate::redact::Redactor;
use crate::store::{StepEnd, Store, StoreError};

/// The plugin name an exec step is recorded with.
pub const EXEC_PLUGIN: &str = "exec";

/// A folder the command runs in, named as its step is.
#[derive(Debug, Clone)]
pub struct ExecTarget {
    pub name: String,
    pub dir: PathBuf,
}

/// What `nestr exec` runs, where, and how.
#[derive(Debug, Clone)]
pub struct ExecJob {
    pub program: String,
    pub args: Vec<String>,
    pub targets: Vec<ExecTarget>,
    /// Folders at once.
    pub jobs: usize,
    /// After a command fails: start nothing new (`never`), or go on (`always`; the same for
    /// `dependencies-ok`, as folders do not depend on each other here).
    pub continue_mode: ContinueMode,
}

/// A program may start this many processes: as good as no limit (the user's own command), but
/// a bound a runaway fork still meets.
const EXEC_PIDS: u64 = 100_000;

/// The command as a shell would take it back: each word quoted where it needs to be.
pub fn command_line(program: &str, args: &[String]) -> String {
    std::iter::once(program)
        .chain(args.iter().map(String::as_str))
        .map(quote)
        .collect::<Vec<_>>()
        .join(" ")
}

fn quote(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,+@%".contains(&b));
    if plain {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', "'\\''"))
    }
}

/// Why an exec run could not be carried out.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Run(String),
}

/// Records the run and carries it out (blocking: it builds its own runtime).
pub fn run_exec(
    store: Store,
    state_dir: &Path,
    meta: &RunMeta,
    job: ExecJob,
    cancel: Cancel,
) -> Result<(RunReport, Store), ExecError> {
    let names: Vec<(&str, &str)> = job
        .targets
        .iter()
        .map(|t| (t.name.as_str(), EXEC_PLUGIN))
        .collect();
    let argv: Vec<&str> = std::iter::once(job.program.as_str())
        .chain(job.args.iter().map(String::as_str))
        .collect();
    let mut rec = Recorder::start(
        store,
        state_dir,
        meta,
        RunSpec {
            operation: "exec",
            selection: serde_json::json!({
                "folders": job.targets.iter().map(|t| &t.name).collect::<Vec<_>>()
            }),
            options: serde_json::json!({
                "command": argv,
                "jobs": job.jobs,
                "continue": job.continue_mode.as_str(),
            }),
            steps: &names,
        },
    )?;
    rec.begin()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| ExecError::Run(format!("cannot start the async runtime: {e}")))?;
    let rec = Arc::new(rec);
    let job = Arc::new(job);
    let reports = rt.block_on(carry_out(rec.clone(), job, cancel.clone()))?;
    rt.shutdown_background();
    let rec = Arc::into_inner(rec)
        .ok_or_else(|| ExecError::Run("a folder's command still holds the run".into()))?;
    let status = if cancel.is_cancelled() {
        RunStatus::Cancelled
    } else if reports.iter().all(|r| r.status == StepStatus::Succeeded) {
        RunStatus::Succeeded
    } else {
        RunStatus::Failed
    };
    let run_id = rec.run_id().to_string();
    let store = rec.finish(status)?;
    Ok((
        RunReport {
            run_id,
            operation: "exec".into(),
            status,
            steps: reports,
        },
        store,
    ))
}

/// Starts a step per folder as slots free up, in order; ends the rest when cancelled, or after a
/// failure with `never`.
async fn carry_out(
    rec: Arc<Recorder>,
    job: Arc<ExecJob>,
    cancel: Cancel,
) -> Result<Vec<StepReport>, ExecError> {
    let mut reports: Vec<Option<StepReport>> = vec![None; job.targets.len()];
    let mut running: JoinSet<(usize, Result<StepReport, StoreError>)> = JoinSet::new();
    let mut next = 0;
    let mut failed: Option<String> = None;
    loop {
        while next < job.targets.len() && running.len() < job.jobs.max(1) {
            let blocked = if cancel.is_cancelled() {
                Some((
                    StepStatus::Cancelled,
                    "the run was cancelled before this folder's turn".to_string(),
                ))
            } else if let (ContinueMode::Never, Some(f)) = (job.continue_mode, &failed) {
                Some((StepStatus::Skipped, format!("not started: {f}")))
            } else {
                None
            };
            let idx = next;
            next += 1;
            if let Some((status, why)) = blocked {
                let end = StepEnd {
                    summary: why.clone(),
                    reason: Some(why),
                    ..StepEnd::default()
                };
                reports[idx] = Some(rec.finish_step(idx, status, end)?);
                continue;
            }
            let (rec, job, cancel) = (rec.clone(), job.clone(), cancel.clone());
            running.spawn(async move { (idx, one(&rec, &job, idx, &cancel).await) });
        }
        let Some(done) = running.join_next().await else {
            break;
        };
        let (idx, report) = done.map_err(|e| {
            let why = match e.try_into_panic() {
                Ok(p) => super::panic_text(&*p),
                Err(e) => e.to_string(),
            };
            ExecError::Run(format!("a folder's command failed to complete: {why}"))
        })?;
        let report = report?;
        if report.status != StepStatus::Succeeded && failed.is_none() {
            failed = Some(format!("`{}` failed", report.service));
        }
        reports[idx] = Some(report);
    }
    Ok(reports.into_iter().flatten().collect())
}

/// Runs the command in folder `idx` and ends its step.
async fn one(
    rec: &Recorder,
    job: &ExecJob,
    idx: usize,
    cancel: &Cancel,
) -> Result<StepReport, StoreError> {
    let target = &job.targets[idx];
    let step_id = rec.step_id(idx);
    rec.start_step(
        idx,
        "",
        &serde_json::json!({ "exec": command_line(&job.program, &job.args) }),
    )?;
    // Masks the credentials of the manifest's repository URLs, as every output edge does.
    let log = StepLog::new(
        step_id,
        Arc::new(Redactor::new(std::iter::empty())),
        DEFAULT_OUTPUT_CAP,
        vec![rec.log_sink(idx)],
    );
    let shown = command_line(&job.program, &job.args);
    log.system(format!("$ {shown}"));
    let marker = format!("{}-{step_id}", rec.run_id());
    let containment = Containment::new(&marker, EXEC_PIDS);
    let ended = crate::plugin::run_program(crate::plugin::Program {
        program: Path::new(&job.program),
        args: &job.args,
        cwd: &target.dir,
        env: None,
        log: &log,
        containment: &containment,
        marker: &marker,
        cancel,
        deadline: None,
        shown: &job.program,
        capture: false,
    })
    .await;
    log.finish();
    let duration = rec.running_for(idx).unwrap_or_default();
    let (status, summary, reason, code) = match ended {
        Err(e) => (StepStatus::Failed, e.clone(), Some(e), None),
        Ok(e) if e.cancelled => (
            StepStatus::Cancelled,
            "cancelled".to_string(),
            Some("the run was cancelled while the command ran".to_string()),
            e.status.code(),
        ),
        Ok(e) => match (
            e.status.code(),
            std::os::unix::process::ExitStatusExt::signal(&e.status),
        ) {
            (Some(0), _) => (StepStatus::Succeeded, "exit 0".to_string(), None, Some(0)),
            (Some(c), _) => {
                let why = format!("`{shown}` exited with code {c}");
                (StepStatus::Failed, format!("exit {c}"), Some(why), Some(c))
            }
            (None, sig) => {
                let why = format!(
                    "`{shown}` was killed by signal {}",
                    sig.map_or("?".into(), |s| s.to_string())
                );
                (StepStatus::Failed, "killed".to_string(), Some(why), None)
            }
        },
    };
    let end = StepEnd {
        summary,
        reason,
        metrics: serde_json::json!({ "exit_code": code }),
        duration_ms: u64::try_from(duration.as_millis()).unwrap_or(u64::MAX),
        ..StepEnd::default()
    };
    rec.finish_step(idx, status, end)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_command_line_quotes_only_what_a_shell_would_split() {
        assert_eq!(
            command_line("sh", &["-c".into(), "echo 'hi' $HOME".into(), "a=b".into()]),
            "sh -c 'echo '\\''hi'\\'' $HOME' a=b"
        );
        assert_eq!(command_line("true", &["".into()]), "true ''");
    }
}
