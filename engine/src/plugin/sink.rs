//! The step log: every line a step produces (the plugin's `log` calls, its own stdout/stderr,
//! the output of programs it runs, engine notices) passes through here on its way to
//! subscribers (the CLI renderer, the store writer). Here secrets are masked — raw, base64 in any
//! alignment, and when a program wrote them in pieces (lines are assembled before masking) — and
//! the per-step output cap is enforced: past it, lines are counted, not kept, and a truncation
//! marker is written once.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use aho_corasick::AhoCorasick;
use base64::Engine as _;

use crate::store::{LogChunk, Stream};

/// Default cap on the output stored per step.
pub const DEFAULT_OUTPUT_CAP: u64 = 16 * 1024 * 1024;
/// Longest line kept whole; longer ones are split.
pub const MAX_LINE: usize = 64 * 1024;
const MASK: &str = "***";

/// Masks secret values in text.
#[derive(Debug, Default)]
pub struct Masker {
    matcher: Option<AhoCorasick>,
    /// Longest pattern, to keep enough of a split write to catch it.
    pub longest: usize,
}

impl Masker {
    /// A masker for these secret values (values shorter than 4 bytes are not secrets worth the
    /// noise of masking every occurrence).
    pub fn new<'a>(secrets: impl IntoIterator<Item = &'a str>) -> Masker {
        let mut patterns: Vec<String> = Vec::new();
        for secret in secrets.into_iter().filter(|s| s.len() >= 4) {
            patterns.push(secret.to_string());
            for engine in [
                &base64::engine::general_purpose::STANDARD_NO_PAD,
                &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            ] {
                for shift in 0..3usize {
                    // Encode with `shift` bytes before the secret; keep only the characters that
                    // depend on the secret's bytes alone.
                    let mut bytes = vec![0u8; shift];
                    bytes.extend_from_slice(secret.as_bytes());
                    let encoded = engine.encode(&bytes);
                    let start = (shift * 8).div_ceil(6);
                    let end = (bytes.len() * 8) / 6;
                    if end > start && end - start >= 4 {
                        patterns.push(encoded[start..end].to_string());
                    }
                }
            }
        }
        patterns.sort();
        patterns.dedup();
        let longest = patterns.iter().map(String::len).max().unwrap_or(0);
        let matcher = if patterns.is_empty() {
            None
        } else {
            AhoCorasick::builder()
                .match_kind(aho_corasick::MatchKind::LeftmostLongest)
                .build(&patterns)
                .ok()
        };
        Masker { matcher, longest }
    }

    pub fn is_empty(&self) -> bool {
        self.matcher.is_none()
    }

    /// `cut`, or the end of a secret occurrence in `bytes` that starts before `cut` and ends
    /// after it.
    pub fn cut_after_straddling(&self, bytes: &[u8], cut: usize) -> usize {
        let Some(m) = &self.matcher else { return cut };
        let window = &bytes[..bytes.len().min(cut + self.longest)];
        m.find_iter(window)
            .filter(|hit| hit.start() < cut && hit.end() > cut)
            .map(|hit| hit.end())
            .max()
            .unwrap_or(cut)
    }

    /// `text` with every secret (and encoding of one) replaced by `***`.
    pub fn mask(&self, text: &str) -> String {
        match &self.matcher {
            Some(m) => m.replace_all(text, &vec![MASK; m.patterns_len()]),
            None => text.to_string(),
        }
    }
}

/// Receives the log of a step, chunk by chunk.
pub type Subscriber = Arc<dyn Fn(&LogChunk) + Send + Sync>;

/// The log of one step.
pub struct StepLog {
    pub step_id: i64,
    masker: Arc<Masker>,
    cap: u64,
    stored: AtomicU64,
    dropped: AtomicU64,
    truncated: AtomicBool,
    seq: AtomicI64,
    subscribers: Vec<Subscriber>,
    /// Serialises emission so that sequence numbers are delivered in order.
    order: Mutex<()>,
}

impl StepLog {
    pub fn new(
        step_id: i64,
        masker: Arc<Masker>,
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
            seq: AtomicI64::new(0),
            subscribers,
            order: Mutex::new(()),
        })
    }

    pub fn masker(&self) -> &Masker {
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

    /// Lines joined with `\n` (no trailing newline) from `stream`: masked as a whole, then kept
    /// up to the step's cap (the rest counted, with one truncation marker). Returns the masked
    /// text.
    pub fn lines(&self, stream: Stream, level: Option<&str>, joined: &str) -> String {
        let masked = self.masker.mask(joined);
        if stream == Stream::System {
            self.emit(stream, level, masked.clone());
            return masked;
        }
        let len = masked.len() as u64 + 1;
        let before = self.stored.fetch_add(len, Ordering::Relaxed);
        if before + len <= self.cap {
            self.emit(stream, level, masked.clone());
            return masked;
        }
        // Keep the lines that still fit, count the rest.
        let room = self.cap.saturating_sub(before);
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
        self.dropped.fetch_add(len - keep as u64, Ordering::Relaxed);
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

    /// An engine notice.
    pub fn system(&self, text: impl AsRef<str>) {
        self.line(Stream::System, None, text.as_ref());
    }

    /// Closes the log: says how much was dropped, if anything.
    pub fn finish(&self) {
        let dropped = self.dropped_bytes();
        if dropped > 0 {
            self.system(format!(
                "[nestr: {dropped} bytes of output were not stored]"
            ));
        }
    }

    fn emit(&self, stream: Stream, level: Option<&str>, text: String) {
        let count = text.bytes().filter(|&b| b == b'\n').count() as i64 + 1;
        let _order = self.order.lock();
        let chunk = LogChunk {
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
        let masker = Arc::new(Masker::new([secret]));
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
            Arc::new(Masker::new([secret])),
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
        let log = StepLog::new(1, Arc::new(Masker::default()), 100, vec![sub]);
        for _ in 0..50 {
            log.line(Stream::Stdout, None, "0123456789");
        }
        log.finish();
        let lines = lines.lock().expect("lock");
        let kept = lines.iter().filter(|l| l.starts_with("0123")).count();
        assert_eq!(kept, 9, "100 bytes hold nine 11-byte lines");
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
