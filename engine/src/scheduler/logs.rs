//! The log writer: a thread with its own store connection that writes step log lines and audit
//! entries in batches — one transaction per ~100 ms or 64 KiB, whichever comes first — and
//! commits everything pending when asked to flush (before a step is marked finished).

use std::path::Path;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::store::{AuditEntry, LogChunk, Store, StoreError};

const BATCH_TIME: Duration = Duration::from_millis(100);
const BATCH_BYTES: usize = 64 * 1024;
/// Chunks in flight to the writer (a chunk holds at most ~128 KiB, usually far less): a producer
/// faster than the disk waits, so memory stays bounded.
const QUEUE: usize = 256;

enum Msg {
    Chunk(LogChunk),
    Audit(AuditEntry),
    Flush(SyncSender<()>),
    Stop,
}

/// A handle to the writer thread; cheap to clone.
#[derive(Clone)]
pub struct LogWriter {
    tx: SyncSender<Msg>,
}

/// Owns the writer thread; dropping it flushes and stops the thread.
pub struct LogWriterThread {
    handle: Option<JoinHandle<()>>,
    writer: LogWriter,
}

impl LogWriterThread {
    /// Opens a connection to the store in `state_dir` and starts the thread.
    pub fn start(state_dir: &Path) -> Result<LogWriterThread, StoreError> {
        let mut store = Store::open(state_dir)?;
        let (tx, rx) = mpsc::sync_channel(QUEUE);
        let handle = std::thread::Builder::new()
            .name("nestr-log-writer".into())
            .spawn(move || run(&mut store, &rx))
            .map_err(|e| StoreError::CreateDir {
                path: state_dir.to_path_buf(),
                source: e,
            })?;
        Ok(LogWriterThread {
            handle: Some(handle),
            writer: LogWriter { tx },
        })
    }

    pub fn writer(&self) -> LogWriter {
        self.writer.clone()
    }
}

impl Drop for LogWriterThread {
    fn drop(&mut self) {
        let _ = self.writer.tx.send(Msg::Stop);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

impl LogWriter {
    pub fn chunk(&self, chunk: &LogChunk) {
        let _ = self.tx.send(Msg::Chunk(chunk.clone()));
    }

    pub fn audit(&self, entry: AuditEntry) {
        let _ = self.tx.send(Msg::Audit(entry));
    }

    /// Returns once everything sent before is committed.
    pub fn flush(&self) {
        let (ack, done) = mpsc::sync_channel(1);
        if self.tx.send(Msg::Flush(ack)).is_ok() {
            let _ = done.recv();
        }
    }
}

fn run(store: &mut Store, rx: &Receiver<Msg>) {
    let mut lines: Vec<LogChunk> = Vec::new();
    let mut audits: Vec<AuditEntry> = Vec::new();
    let mut bytes = 0usize;
    let mut batch_started: Option<Instant> = None;
    loop {
        let wait = batch_started.map_or(Duration::from_secs(3600), |t| {
            BATCH_TIME.saturating_sub(t.elapsed())
        });
        let msg = rx.recv_timeout(wait);
        let mut acks = Vec::new();
        let closed = match msg {
            Ok(Msg::Chunk(l)) => {
                bytes += l.text.len();
                lines.push(l);
                batch_started.get_or_insert_with(Instant::now);
                false
            }
            Ok(Msg::Audit(a)) => {
                audits.push(a);
                batch_started.get_or_insert_with(Instant::now);
                false
            }
            Ok(Msg::Flush(ack)) => {
                acks.push(ack);
                false
            }
            Err(RecvTimeoutError::Timeout) => false,
            Ok(Msg::Stop) | Err(RecvTimeoutError::Disconnected) => true,
        };
        let due = batch_started.is_some_and(|t| t.elapsed() >= BATCH_TIME) || bytes >= BATCH_BYTES;
        if due || !acks.is_empty() || closed {
            if let Err(e) = store.insert_logs(&lines) {
                tracing::error!(error = %e, lines = lines.len(), "could not store log lines");
            }
            for a in audits.drain(..) {
                if let Err(e) = store.audit(&a) {
                    tracing::error!(error = %e, "could not store an audit entry");
                }
            }
            lines.clear();
            bytes = 0;
            batch_started = None;
            for ack in acks {
                let _ = ack.send(());
            }
        }
        if closed {
            return;
        }
    }
}
