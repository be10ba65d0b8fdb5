//! The step log: every line a step produces (the plugin's `log` calls, its own stdout/stderr,
//! the output of programs it runs, engine notices) passes through here on its way to
//! subscribers (the CLI renderer, the store writer), and so does every other string a plugin
//! makes the engine keep (its report, its denials): this is the step's one redaction boundary.
//!
//! Everything is masked by the step's [`Redactor`] (see `crate::redact`): URL credentials and the
//! credentials of the manifest's repository URLs, granted secrets and their base64 forms, across
//! line breaks and chunks of one stream.
//!
//! The per-step output cap counts every stored byte: the text of every stream (engine notices
//! included), a fixed overhead per stored chunk, and the audit rows a step causes. Past the cap,
//! lines are counted, not kept, and a truncation marker is written once.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::model::Stream;
pub use crate::redact::Redactor;
use crate::store::LogChunk;

/// Default cap on the output stored per step.
pub const DEFAULT_OUTPUT_CAP: u64 = 16 * 1024 * 1024;
/// Longest line kept whole; longer ones are split.
pub const MAX_LINE: usize = 64 * 1024;
/// What a stored chunk costs beyond its text (row, key and index), counted against the cap.
pub const CHUNK_OVERHEAD: u64 = 64;
/// What an audit row costs beyond its text.
const AUDIT_OVERHEAD: u64 = 128;
/// Audit rows kept per step; further refusals are counted in the step log.
pub const MAX_AUDIT_ROWS: u64 = 1000;
/// Receives the log of a step, chunk by chunk.
pub type Subscriber = Arc<dyn Fn(&LogChunk) + Send + Sync>;

/// The log of one step.
pub struct StepLog {
    pub step_id: i64,
    masker: Arc<Redactor>,
    cap: u64,
    stored: AtomicU64,
    dropped: AtomicU64,
    truncated: AtomicBool,
    audit_rows: AtomicU64,
    audit_dropped: AtomicU64,
    seq: AtomicI64,
    subscribers: Vec<Subscriber>,
    /// The end of the last text of each stream, as masking context for the next.
    carry: Mutex<HashMap<Stream, Vec<u8>>>,
    /// Serialises emission so that sequence numbers are delivered in order.
    order: Mutex<()>,
}

impl StepLog {
    pub fn new(
        step_id: i64,
        masker: Arc<Redactor>,
        cap: u64,
        subscribers: Vec<Subscriber>,
    ) -> Arc<StepLog> {
        Arc::new(StepLog {
            step_id,
            masker,
            cap,
            stored: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            truncated: AtomicBool::new(false),
            audit_rows: AtomicU64::new(0),
            audit_dropped: AtomicU64::new(0),
            seq: AtomicI64::new(0),
            subscribers,
            carry: Mutex::new(HashMap::new()),
            order: Mutex::new(()),
        })
    }

    pub fn masker(&self) -> &Redactor {
        &self.masker
    }

    /// True once output past the cap was dropped.
    pub fn truncated(&self) -> bool {
        self.truncated.load(Ordering::Relaxed)
    }

    /// Bytes counted but not stored.
    pub fn dropped_bytes(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// One line (without its newline) from `stream`; masked, then kept or counted. Returns the
    /// masked text.
    pub fn line(&self, stream: Stream, level: Option<&str>, text: &str) -> String {
        self.lines(stream, level, text)
    }

    /// Lines joined with `\n` (no trailing newline) from `stream`: masked as a whole (with the
    /// stream's previous text as context), then kept up to the step's cap (the rest counted,
    /// with one truncation marker). Returns the masked text.
    pub fn lines(&self, stream: Stream, level: Option<&str>, joined: &str) -> String {
        let masked = match self.carry.lock() {
            Ok(mut carry) => {
                let before = carry.remove(&stream).unwrap_or_default();
                let (masked, after) = self.masker.mask_after(&before, joined);
                carry.insert(stream, after);
                masked
            }
            Err(_) => self.masker.mask(joined),
        };
        let len = masked.len() as u64 + 1 + CHUNK_OVERHEAD;
        let before = self.stored.fetch_add(len, Ordering::Relaxed);
        if before + len <= self.cap {
            self.emit(stream, level, masked.clone());
            return masked;
        }
        // Keep the lines that still fit, count the rest.
        let room = self
            .cap
            .saturating_sub(before)
            .saturating_sub(CHUNK_OVERHEAD);
        let mut keep = 0usize;
        for line in masked.split('\n') {
            if (keep + line.len() + 1) as u64 > room {
                break;
            }
            keep += line.len() + 1;
        }
        if keep > 0 {
            self.emit(stream, level, masked[..keep - 1].to_string());
        }
        self.dropped
            .fetch_add(len - keep as u64 - CHUNK_OVERHEAD, Ordering::Relaxed);
        if !self.truncated.swap(true, Ordering::Relaxed) {
            self.emit(
                Stream::System,
                None,
                format!(
                    "[nestr: output truncated at {} MiB; further output is counted, not stored; raise it with `output_mb` in the plugin's grants]",
                    self.cap / (1024 * 1024)
                ),
            );
        }
        masked
    }

    /// An engine notice (counted against the cap like any other line).
    pub fn system(&self, text: impl AsRef<str>) {
        self.line(Stream::System, None, text.as_ref());
    }

    /// Whether one more audit row of `bytes` may be stored for this step: at most
    /// [`MAX_AUDIT_ROWS`], each counted against the cap.
    pub fn admit_audit(&self, bytes: usize) -> bool {
        let cost = bytes as u64 + AUDIT_OVERHEAD;
        let rows = self.audit_rows.fetch_add(1, Ordering::Relaxed);
        let before = self.stored.fetch_add(cost, Ordering::Relaxed);
        if rows < MAX_AUDIT_ROWS && before + cost <= self.cap {
            return true;
        }
        self.stored.fetch_sub(cost, Ordering::Relaxed);
        self.audit_dropped.fetch_add(1, Ordering::Relaxed);
        false
    }

    /// Closes the log: says how much was dropped, if anything (these last notices are not
    /// counted: they are bounded and say what the cap cut).
    pub fn finish(&self) {
        let dropped = self.dropped_bytes();
        if dropped > 0 {
            self.emit(
                Stream::System,
                None,
                format!("[nestr: {dropped} bytes of output were not stored]"),
            );
        }
        let audits = self.audit_dropped.swap(0, Ordering::Relaxed);
        if audits > 0 {
            self.emit(
                Stream::System,
                None,
                format!(
                    "[nestr: {audits} more refusals were not recorded in the audit log (at most {MAX_AUDIT_ROWS} per step, within the output cap)]"
                ),
            );
        }
    }

    fn emit(&self, stream: Stream, level: Option<&str>, text: String) {
        let count = text.bytes().filter(|&b| b == b'\n').count() as i64 + 1;
        let _order = self.order.lock();
        let chunk = LogChunk {
            line0: 0,
            step_id: self.step_id,
            first_seq: self.seq.fetch_add(count, Ordering::Relaxed),
            count,
            at: crate::store::now_ms(),
            stream,
            level: level.map(str::to_owned),
            text,
        };
        for s in &self.subscribers {
            s(&chunk);
        }
    }
}

/// Sees the masked text of every chunk a [`LineBuffer`] emits.
pub type Tap = Box<dyn FnMut(&str) + Send>;

/// Assembles bytes written in arbitrary pieces into lines for a [`StepLog`]: the complete lines
/// of each write go out as one chunk.
pub struct LineBuffer {
    log: Arc<StepLog>,
    stream: Stream,
    pending: Vec<u8>,
    tap: Option<Tap>,
}

impl LineBuffer {
    pub fn new(log: Arc<StepLog>, stream: Stream) -> LineBuffer {
        LineBuffer {
            log,
            stream,
            pending: Vec::new(),
            tap: None,
        }
    }

    /// Like [`LineBuffer::new`], also handing every chunk's masked text to `tap`.
    pub fn with_tap(log: Arc<StepLog>, stream: Stream, tap: Tap) -> LineBuffer {
        LineBuffer {
            log,
            stream,
            pending: Vec::new(),
            tap: Some(tap),
        }
    }

    pub fn write(&mut self, bytes: &[u8]) {
        if let Some(last) = bytes.iter().rposition(|&b| b == b'\n') {
            self.pending.extend_from_slice(&bytes[..last]);
            let complete = std::mem::take(&mut self.pending);
            self.pending.extend_from_slice(&bytes[last + 1..]);
            self.emit(&complete);
        } else {
            self.pending.extend_from_slice(bytes);
        }
        // Split an over-long unterminated line at MAX_LINE, moved past any secret that straddles
        // the cut so that the secret is masked whole. Wait for enough bytes to see such a secret
        // entirely.
        while self.pending.len() >= MAX_LINE + self.log.masker().longest {
            let cut = self
                .log
                .masker()
                .cut_after_straddling(&self.pending, MAX_LINE);
            let rest = self.pending.split_off(cut);
            let piece = std::mem::replace(&mut self.pending, rest);
            self.emit(&piece);
        }
    }

    /// Emits complete lines (joined by `\n`, without the last newline) as one chunk.
    fn emit(&mut self, bytes: &[u8]) {
        let text = String::from_utf8_lossy(bytes);
        let text = if text.contains('\r') {
            std::borrow::Cow::Owned(
                text.split('\n')
                    .map(|l| l.strip_suffix('\r').unwrap_or(l))
                    .collect::<Vec<_>>()
                    .join("\n"),
            )
        } else {
            text
        };
        let masked = self.log.lines(self.stream, None, &text);
        if let Some(tap) = self.tap.as_mut() {
            tap(&masked);
        }
    }

    /// Emits what is left as a last line.
    pub fn finish(&mut self) {
        if !self.pending.is_empty() {
            let rest = std::mem::take(&mut self.pending);
            self.emit(&rest);
        }
    }
}

impl Drop for LineBuffer {
    fn drop(&mut self) {
        self.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;

    fn collect() -> (Subscriber, Arc<Mutex<Vec<String>>>) {
        let lines = Arc::new(Mutex::new(Vec::new()));
        let l = lines.clone();
        (
            Arc::new(move |chunk: &LogChunk| {
                l.lock()
                    .expect("lock")
                    .extend(chunk.lines().map(|line| line.text))
            }),
            lines,
        )
    }

    #[test]
    fn secrets_are_masked_raw_base64_and_split() {
        let secret = "hunter2-very-secret-token";
        let masker = Arc::new(Redactor::new([secret]));
        let (sub, lines) = collect();
        let log = StepLog::new(1, masker, DEFAULT_OUTPUT_CAP, vec![sub]);
        let mut out = LineBuffer::new(log, Stream::Stdout);
        out.write(format!("raw:{secret}\n").as_bytes());
        for prefix in ["", "a", "ab"] {
            let b64 = base64::engine::general_purpose::STANDARD.encode(format!("{prefix}{secret}"));
            out.write(format!("b64:{b64}\n").as_bytes());
        }
        out.write(b"split:hunter2-very");
        out.write(b"-secret-token!\n");
        drop(out);
        let lines = lines.lock().expect("lock");
        assert_eq!(lines.len(), 5);
        for line in lines.iter() {
            assert!(!line.contains("hunter2"), "{line}");
            assert!(!line.contains("very-secret"), "{line}");
            assert!(line.contains("***"), "{line}");
        }
        // No base64 fragment of the secret's middle survives either.
        let b64 = base64::engine::general_purpose::STANDARD.encode(secret);
        assert!(lines.iter().all(|l| !l.contains(&b64[4..16])));
    }

    #[test]
    fn a_secret_across_the_long_line_cut_is_masked() {
        let secret = "abcdefghij-secret";
        let (sub, lines) = collect();
        let log = StepLog::new(
            1,
            Arc::new(Redactor::new([secret])),
            DEFAULT_OUTPUT_CAP,
            vec![sub],
        );
        let mut out = LineBuffer::new(log, Stream::Stdout);
        let mut long = "x".repeat(MAX_LINE - 5);
        long.push_str(secret);
        long.push_str(&"y".repeat(100));
        out.write(long.as_bytes());
        out.write(b"\n");
        drop(out);
        let joined = lines.lock().expect("lock").join("");
        assert!(!joined.contains("secret"));
        assert!(joined.contains("***"));
    }

    #[test]
    fn output_past_the_cap_is_counted_and_marked_once() {
        let (sub, lines) = collect();
        // Each 10-character line costs 11 bytes plus the chunk overhead.
        let cost = 11 + CHUNK_OVERHEAD;
        let log = StepLog::new(1, Arc::new(Redactor::default()), 9 * cost + 10, vec![sub]);
        for _ in 0..50 {
            log.line(Stream::Stdout, None, "0123456789");
        }
        log.finish();
        let lines = lines.lock().expect("lock");
        let kept = lines.iter().filter(|l| l.starts_with("0123")).count();
        assert_eq!(kept, 9, "the cap holds nine lines with their overhead");
        assert_eq!(
            lines
                .iter()
                .filter(|l| l.contains("output truncated"))
                .count(),
            1
        );
        assert!(
            lines
                .last()
                .is_some_and(|l| l.contains("bytes of output were not stored"))
        );
        assert!(log.truncated());
    }
}
