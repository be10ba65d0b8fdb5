//! What a step's `Store` holds: the WASI context (service folder preopened, stdout/stderr into
//! the step log, no env, args or sockets), the wasi:http context with its checking hooks, the
//! limiter, and the step context shared with host functions (capabilities, log, deadline,
//! cancellation, audit). Also the host side of the `log` and `types` interfaces.

use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use tokio::sync::Notify;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use super::bindings::nestr::plugin::{log, types};
use super::caps::{Denial, Effective};
use super::fs::FsGuard;
use super::http::HttpHooks;
use super::limits::Limiter;
use super::sink::{LineBuffer, StepLog};
use crate::contain::Containment;
use crate::model::Stream;
use crate::store::AuditEntry;

/// Receives audit entries (capability decisions) of a step.
pub type AuditSink = Arc<dyn Fn(AuditEntry) + Send + Sync>;

/// Everything host functions need to know about the step they serve.
pub struct StepContext {
    pub run_id: String,
    pub step_id: i64,
    pub caps: Effective,
    pub log: Arc<StepLog>,
    /// Canonical path of the service folder.
    pub service_dir: PathBuf,
    /// When the step's clock started: its duration counts from here, and its deadline (set
    /// after it) is never earlier than this plus its timeout.
    pub started: Instant,
    pub deadline: Instant,
    pub cancel: Cancel,
    /// Marks every process this step starts (NESTR_STEP), so that escaped ones can be found.
    pub marker: String,
    pub audit: AuditSink,
    /// What the engine refused during the step.
    pub denials: Denials,
    /// Records the step's host calls (`nestr run --record`), when asked to.
    pub tape: Option<Arc<super::tape::Recorder>>,
    /// A deploy's health gate: judged after the plugin succeeds, before the step ends.
    pub gate: Option<Arc<crate::plugin::gate::HealthGate>>,
    /// Where the step's programs are contained (made at the first `exec`).
    pub containment: Containment,
    /// The programs the step ran, for its provenance.
    pub programs: ProgramRuns,
}

impl StepContext {
    /// Records a refusal: a notice in the step log, a metric, an audit row (each bounded: the
    /// denial's fields are clipped where they are made, in `caps`).
    pub fn record_denial(&self, d: &Denial) {
        tracing::info!(plugin = ?self.caps.plugin, capability = ?d.capability, requested = ?d.requested, "denied");
        if let Some(m) = crate::metrics::global() {
            m.exec_denied_total
                .with_label_values(&[self.caps.plugin.as_str(), d.capability.as_str()])
                .inc();
        }
        self.log.system(format!(
            "[nestr: denied {} `{}`; to allow it: {}]",
            d.capability, d.requested, d.grant
        ));
        self.denials.record(d);
        let masker = self.log.masker();
        let requested = masker.mask(&d.requested);
        let detail = masker.mask(&d.grant);
        if self.log.admit_audit(requested.len() + detail.len()) {
            (self.audit)(AuditEntry {
                run_id: Some(self.run_id.clone()),
                step_id: Some(self.step_id),
                plugin: self.caps.plugin.clone(),
                capability: d.capability.clone(),
                requested,
                decision: "denied".into(),
                detail: Some(detail),
            });
        }
    }

    /// Records a refusal and turns it into the plugin-visible error.
    pub fn denied(&self, d: Denial) -> types::Error {
        self.record_denial(&d);
        denial_error(d)
    }
}

/// A refusal as the plugin sees it.
pub fn denial_error(d: Denial) -> types::Error {
    types::Error::Denied(types::Denial {
        capability: d.capability,
        requested: d.requested,
        grant: d.grant,
    })
}

/// The refusals the engine made during a step, to tell them from a denial a plugin invents.
#[derive(Default)]
pub struct Denials {
    seen: Mutex<Vec<(String, String, String)>>,
}

impl Denials {
    /// At most this many are remembered (a plugin may make the engine refuse in a loop).
    const KEEP: usize = 256;

    fn record(&self, d: &Denial) {
        if let Ok(mut seen) = self.seen.lock()
            && seen.len() < Self::KEEP
        {
            seen.push((d.capability.clone(), d.requested.clone(), d.grant.clone()));
        }
    }

    /// The engine's own hint for a refusal it made of `capability` `requested`, if it made one.
    pub fn find(&self, capability: &str, requested: &str) -> Option<String> {
        let seen = self.seen.lock().ok()?;
        seen.iter()
            .find(|(c, r, _)| c == capability && r == requested)
            .map(|(_, _, g)| g.clone())
    }

    /// True when the engine refused anything in this step.
    pub fn any(&self) -> bool {
        self.seen.lock().is_ok_and(|s| !s.is_empty())
    }
}

/// The programs a step ran (argv, exit, duration), at most
/// [`crate::cache::provenance::MAX_PROGRAM_RUNS`]; the rest are counted.
#[derive(Default)]
pub struct ProgramRuns {
    runs: Mutex<(Vec<crate::cache::provenance::ProgramRun>, u64)>,
}

impl ProgramRuns {
    pub fn push(&self, run: crate::cache::provenance::ProgramRun) {
        if let Ok(mut r) = self.runs.lock() {
            if r.0.len() < crate::cache::provenance::MAX_PROGRAM_RUNS {
                r.0.push(run);
            } else {
                r.1 += 1;
            }
        }
    }

    /// What was recorded, and how many more ran.
    pub fn take(&self) -> (Vec<crate::cache::provenance::ProgramRun>, u64) {
        self.runs
            .lock()
            .map(|mut r| std::mem::take(&mut *r))
            .unwrap_or_default()
    }
}

/// A cancellation flag that async code can wait on.
#[derive(Clone, Default)]
pub struct Cancel {
    inner: Arc<(std::sync::atomic::AtomicBool, Notify)>,
}

impl Cancel {
    pub fn cancel(&self) {
        self.inner
            .0
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.inner.1.notify_waiters();
    }

    pub fn is_cancelled(&self) -> bool {
        self.inner.0.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Resolves once cancelled.
    pub async fn cancelled(&self) {
        loop {
            let notified = self.inner.1.notified();
            if self.is_cancelled() {
                return;
            }
            notified.await;
        }
    }
}

/// The data of a step's `Store`.
pub struct StepState {
    pub wasi: WasiCtx,
    pub table: ResourceTable,
    pub http: WasiHttpCtx,
    pub hooks: HttpHooks,
    pub limiter: Limiter,
    pub fs_guard: FsGuard,
    pub ctx: Arc<StepContext>,
}

impl WasiView for StepState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for StepState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            hooks: &mut self.hooks,
            table: &mut self.table,
            ctx: &mut self.http,
        }
    }
}

impl types::Host for StepState {}

impl log::Host for StepState {
    async fn log(&mut self, level: log::Level, message: String) {
        if let Some(tape) = &self.ctx.tape {
            tape.log(level, &message);
        }
        let level = match level {
            log::Level::Trace => "trace",
            log::Level::Debug => "debug",
            log::Level::Info => "info",
            log::Level::Warn => "warn",
            log::Level::Error => "error",
        };
        // One chunk per call, however many lines it holds: a newline flood is one stored row.
        let text = message.strip_suffix('\n').unwrap_or(&message);
        let text = if text.contains('\r') {
            std::borrow::Cow::Owned(text.replace("\r\n", "\n"))
        } else {
            std::borrow::Cow::Borrowed(text)
        };
        self.ctx.log.lines(Stream::Log, Some(level), &text);
    }
}

/// The plugin's own stdout or stderr: bytes become lines of the step log.
#[derive(Clone)]
pub struct GuestOutput {
    buffer: Arc<Mutex<LineBuffer>>,
}

impl GuestOutput {
    pub fn new(log: Arc<StepLog>, stream: Stream) -> GuestOutput {
        GuestOutput {
            buffer: Arc::new(Mutex::new(LineBuffer::new(log, stream))),
        }
    }

    fn write_bytes(&self, bytes: &[u8]) {
        if let Ok(mut b) = self.buffer.lock() {
            b.write(bytes);
        }
    }

    /// Emits a last unterminated line, if any.
    pub fn finish(&self) {
        if let Ok(mut b) = self.buffer.lock() {
            b.finish();
        }
    }
}

impl IsTerminal for GuestOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestOutput {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

impl OutputStream for GuestOutput {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.write_bytes(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(64 * 1024)
    }
}

#[async_trait::async_trait]
impl Pollable for GuestOutput {
    async fn ready(&mut self) {}
}

impl tokio::io::AsyncWrite for GuestOutput {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.write_bytes(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
