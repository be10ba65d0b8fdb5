//! The step log: every line a step produces (the plugin's `log` calls, its own stdout/stderr,
//! the output of programs it runs, engine notices) passes through here on its way to
//! subscribers (the CLI renderer, the store writer), and so does every other string a plugin
//! makes the engine keep (its report, its denials): this is the step's one redaction boundary.
//!
//! Secrets are masked ([`Masker`]): a granted secret's value and its base64 forms (standard and
//! URL-safe, in any alignment), also when line breaks were inserted into them (`base64` wraps at
//! 76 columns), also across chunks of one stream (the end of the previous chunk is kept as
//! context), and any run of at least 8 characters from the start of one of those forms (a long
//! prefix gives most of a secret away). Encodings a plugin or program chooses itself (hex,
//! reversed, one character per line, …) cannot all be recognised; docs/plugin-authoring.md says
//! so.
//!
//! The per-step output cap counts every stored byte: the text of every stream (engine notices
//! included), a fixed overhead per stored chunk, and the audit rows a step causes. Past the cap,
//! lines are counted, not kept, and a truncation marker is written once.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use aho_corasick::AhoCorasick;
use base64::Engine as _;

use crate::store::{LogChunk, Stream};

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
const MASK: &str = "***";
/// A run of this many characters from the start of a secret form is masked on its own.
const PREFIX: usize = 8;
/// Values shorter than this are not treated as secrets (masking every `ab` is only noise).
const MIN_SECRET: usize = 4;

/// Masks secret values in text.
#[derive(Debug, Default)]
pub struct Masker {
    /// The first [`PREFIX`] bytes of every form (or the whole form when shorter).
    seeds: Option<AhoCorasick>,
    /// The forms: each secret and its base64 encodings, indexed like the seeds.
    forms: Vec<Vec<u8>>,
    /// Longest form, to keep enough of a split write to catch it.
    pub longest: usize,
}

impl Masker {
    /// A masker for these secret values (values shorter than 4 bytes are not secrets worth the
    /// noise of masking every occurrence).
    pub fn new<'a>(secrets: impl IntoIterator<Item = &'a str>) -> Masker {
        let mut forms: Vec<String> = Vec::new();
        for secret in secrets.into_iter().filter(|s| s.len() >= MIN_SECRET) {
            forms.push(secret.to_string());
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
                    if end > start && end - start >= MIN_SECRET {
                        forms.push(encoded[start..end].to_string());
                    }
                }
            }
        }
        forms.sort();
        forms.dedup();
        let longest = forms.iter().map(String::len).max().unwrap_or(0);
        let seeds = if forms.is_empty() {
            None
        } else {
            AhoCorasick::builder()
                .match_kind(aho_corasick::MatchKind::Standard)
                .build(forms.iter().map(|f| &f.as_bytes()[..f.len().min(PREFIX)]))
                .ok()
        };
        Masker {
            seeds,
            forms: forms.into_iter().map(String::into_bytes).collect(),
            longest,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.seeds.is_none()
    }

    /// Byte ranges of `hay` to mask: each seed hit extended along its form as far as `hay`
    /// follows it; overlapping ranges merged.
    fn ranges(&self, hay: &[u8]) -> Vec<Range<usize>> {
        let Some(seeds) = &self.seeds else {
            return vec![];
        };
        let mut found: Vec<Range<usize>> = seeds
            .find_overlapping_iter(hay)
            .filter_map(|hit| {
                let form = self.forms.get(hit.pattern().as_usize())?;
                let start = hit.start();
                let mut len = hit.end() - start;
                while len < form.len() && hay.get(start + len) == form.get(len) {
                    len += 1;
                }
                Some(start..start + len)
            })
            .collect();
        found.sort_by_key(|r| r.start);
        let mut merged: Vec<Range<usize>> = Vec::with_capacity(found.len());
        for r in found {
            match merged.last_mut() {
                Some(last) if r.start <= last.end => last.end = last.end.max(r.end),
                _ => merged.push(r),
            }
        }
        merged
    }

    /// `cut`, or the end of a secret occurrence in `bytes` that starts before `cut` and ends
    /// after it.
    pub fn cut_after_straddling(&self, bytes: &[u8], cut: usize) -> usize {
        let window = &bytes[..bytes.len().min(cut + self.longest)];
        self.ranges(window)
            .into_iter()
            .filter(|r| r.start < cut && r.end > cut)
            .map(|r| r.end)
            .max()
            .unwrap_or(cut)
    }

    /// `text` with every secret (and encoding of one, and long prefix of one) replaced by `***`.
    pub fn mask(&self, text: &str) -> String {
        self.mask_after(&[], text).0
    }

    /// Like [`Masker::mask`], with `carry` (the end of the text that came before on the same
    /// stream, line breaks removed) as context, so that a secret that began there is masked
    /// where it goes on. Line breaks inside `text` are ignored for matching and kept in the
    /// output. Returns the masked text and the carry for the next call.
    pub fn mask_after(&self, carry: &[u8], text: &str) -> (String, Vec<u8>) {
        if self.is_empty() {
            return (text.to_string(), vec![]);
        }
        let bytes = text.as_bytes();
        // The text without line breaks, after the carry; `removed` holds, per dropped byte, its
        // index in the squeezed text (non-decreasing), to map squeezed offsets back.
        let mut hay = Vec::with_capacity(carry.len() + bytes.len());
        hay.extend_from_slice(carry);
        let mut removed: Vec<usize> = Vec::new();
        for &b in bytes {
            if b == b'\n' || b == b'\r' {
                removed.push(hay.len() - carry.len());
            } else {
                hay.push(b);
            }
        }
        let keep = self.longest.saturating_sub(1);
        let next_carry = hay[hay.len().saturating_sub(keep)..].to_vec();
        let ranges = self.ranges(&hay);
        if ranges.iter().all(|r| r.end <= carry.len()) {
            return (text.to_string(), next_carry);
        }
        // Squeezed offset (of a kept byte) -> offset in `text`.
        let to_text = |sq: usize| -> usize {
            let i = sq - carry.len();
            i + removed.partition_point(|&at| at <= i)
        };
        let mut out = String::with_capacity(text.len());
        let mut at = 0usize;
        for r in ranges.into_iter().filter(|r| r.end > carry.len()) {
            let mut start = to_text(r.start.max(carry.len()));
            let mut end = to_text(r.end - 1) + 1;
            while start > 0 && !text.is_char_boundary(start) {
                start -= 1;
            }
            while end < text.len() && !text.is_char_boundary(end) {
                end += 1;
            }
            if start < at {
                start = at;
            }
            out.push_str(&text[at..start]);
            // Each piece between line breaks becomes one mask; the breaks stay.
            let mut piece = false;
            for c in text[start..end].chars() {
                if c == '\n' || c == '\r' {
                    out.push(c);
                    piece = false;
                } else if !piece {
                    out.push_str(MASK);
                    piece = true;
                }
            }
            at = end;
        }
        out.push_str(&text[at..]);
        (out, next_carry)
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
            audit_rows: AtomicU64::new(0),
            audit_dropped: AtomicU64::new(0),
            seq: AtomicI64::new(0),
            subscribers,
            carry: Mutex::new(HashMap::new()),
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
        // Each 10-character line costs 11 bytes plus the chunk overhead.
        let cost = 11 + CHUNK_OVERHEAD;
        let log = StepLog::new(1, Arc::new(Masker::default()), 9 * cost + 10, vec![sub]);
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
