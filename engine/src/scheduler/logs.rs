//! The log writer: a thread with its own store connection that writes step log lines and audit
//! entries in batches — one transaction per ~100 ms or 64 KiB, whichever comes first — and
//! commits everything pending when asked to flush (before a step is marked finished). Within a
//! batch, consecutive chunks of one step, stream and level are stored as one row, so that a
//! plugin making many tiny log calls does not make as many rows.

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
/// Largest text a merged chunk reaches: what the store keeps in one row.
const MERGED_BYTES: usize = crate::store::STORED_CHUNK_BYTES;

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
    /// A writer connected to no thread: what it is sent is dropped.
    pub fn detached() -> LogWriter {
        let (tx, _) = mpsc::sync_channel(1);
        LogWriter { tx }
    }

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
            let merged = merge(std::mem::take(&mut lines));
            if let Err(e) = store.insert_logs(&merged) {
                tracing::error!(error = %e, chunks = merged.len(), "could not store log lines");
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

/// Joins each run of consecutive chunks of the same step, stream and level whose sequence
/// numbers follow on (the earliest time is kept), up to [`MERGED_BYTES`] of text per chunk.
fn merge(chunks: Vec<LogChunk>) -> Vec<LogChunk> {
    let mut out: Vec<LogChunk> = Vec::with_capacity(chunks.len());
    for c in chunks {
        match out.last_mut() {
            Some(last)
                if last.step_id == c.step_id
                    && last.stream == c.stream
                    && last.level == c.level
                    && last.first_seq + last.count == c.first_seq
                    && last.text.len() + c.text.len() < MERGED_BYTES =>
            {
                last.text.push('\n');
                last.text.push_str(&c.text);
                last.count += c.count;
            }
            _ => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Stream;

    fn chunk(step: i64, seq: i64, stream: Stream, text: &str) -> LogChunk {
        LogChunk {
            line0: 0,
            step_id: step,
            first_seq: seq,
            count: text.split('\n').count() as i64,
            at: seq,
            stream,
            level: None,
            text: text.into(),
        }
    }

    #[test]
    fn consecutive_chunks_of_one_stream_become_one_row() {
        let merged = merge(vec![
            chunk(1, 0, Stream::Log, "a"),
            chunk(1, 1, Stream::Log, "b\nc"),
            chunk(1, 3, Stream::Stdout, "d"),
            chunk(2, 0, Stream::Stdout, "e"),
            chunk(1, 4, Stream::Stdout, "f"),
        ]);
        let shape: Vec<(i64, i64, i64, &str)> = merged
            .iter()
            .map(|c| (c.step_id, c.first_seq, c.count, c.text.as_str()))
            .collect();
        assert_eq!(
            shape,
            vec![
                (1, 0, 3, "a\nb\nc"),
                (1, 3, 1, "d"),
                (2, 0, 1, "e"),
                (1, 4, 1, "f")
            ]
        );
    }
}
