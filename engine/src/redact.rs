//! Redaction of credentials. Every string that leaves the engine (terminal output, logs, errors,
//! store rows) and may carry a repository URL goes through [`text`] first.
//!
//! One [`Redactor`] does it all, at the step log and at every other output edge: a scanner finds
//! the userinfo part of `scheme://user:pass@host` URLs anywhere in a text; the credentials of
//! every repository URL of the loaded manifest (registered when a workspace loads its manifest)
//! are masked wherever they appear, even outside a URL; a step's redactor adds the secrets
//! granted to it, each with its base64 forms (standard and URL-safe, in any alignment), also when
//! line breaks were inserted into them (`base64` wraps at 76 columns), across chunks of one
//! stream (the end of the previous chunk is kept as context), and any run of at least 8
//! characters from the start of one of those forms (a long prefix gives most of a secret away).
//! Encodings a plugin or program chooses itself (hex, reversed, one character per line, …)
//! cannot all be recognised; docs/plugin-authoring.md says so.

use std::ops::Range;
use std::sync::{OnceLock, RwLock};

use aho_corasick::AhoCorasick;
use base64::Engine as _;

const MASK: &str = "***";

fn registry() -> &'static RwLock<Vec<String>> {
    static SECRETS: OnceLock<RwLock<Vec<String>>> = OnceLock::new();
    SECRETS.get_or_init(|| RwLock::new(Vec::new()))
}

/// Remembers the credential parts of `url` so that [`text`] masks them wherever they appear.
pub fn register_url(url: &str) {
    // The userinfo, and the password of `user:password` on its own (a token printed alone is
    // masked too; a user name is not a secret, and masking it everywhere would be noise).
    let secrets: Vec<String> = credential_spans(url)
        .into_iter()
        .filter_map(|r| url.get(r))
        .flat_map(|info| {
            let mut parts = vec![info.to_owned()];
            if let Some((_, password)) = info.split_once(':') {
                parts.push(password.to_owned());
            }
            parts
        })
        .filter(|s| s.len() >= MIN_SECRET)
        .collect();
    if secrets.is_empty() {
        return;
    }
    if let Ok(mut list) = registry().write() {
        for s in secrets {
            if !list.contains(&s) {
                list.push(s);
            }
        }
    }
}

/// `text` with every URL credential and every registered credential replaced by `***` (the
/// [`Redactor`] of no step).
pub fn text(text: &str) -> String {
    shared().mask(text)
}

/// The redactor of no step, built once per set of registered credentials (the registry only
/// grows, so its length says whether the cached one is current).
fn shared() -> std::sync::Arc<Redactor> {
    static CACHE: OnceLock<RwLock<(usize, std::sync::Arc<Redactor>)>> = OnceLock::new();
    let cache = CACHE.get_or_init(|| RwLock::new((usize::MAX, std::sync::Arc::default())));
    let known = registry().read().map(|l| l.len()).unwrap_or(0);
    if let Ok(c) = cache.read()
        && c.0 == known
    {
        return c.1.clone();
    }
    let fresh = std::sync::Arc::new(Redactor::new(std::iter::empty()));
    if let Ok(mut c) = cache.write() {
        *c = (known, fresh.clone());
    }
    fresh
}

/// A URL as it may be shown: its credentials replaced by `***`.
pub fn url(url: &str) -> String {
    text(url)
}

/// `source` with URL credentials overwritten by `*` of the same length, so that byte offsets into
/// it stay valid (used for manifest snippets).
pub fn mask_url_credentials(source: &str) -> String {
    replace_spans(source, &credential_spans(source), |s| {
        "*".repeat(s.chars().count())
    })
}

/// A run of this many characters from the start of a secret form is masked on its own.
const PREFIX: usize = 8;
/// Values shorter than this are not treated as secrets (masking every `ab` is only noise).
const MIN_SECRET: usize = 4;

/// The one redaction of the engine: masks URL credentials, the manifest's repository
/// credentials and granted secrets (with their base64 forms) in text.
#[derive(Debug, Default)]
pub struct Redactor {
    /// The first [`PREFIX`] bytes of every form (or the whole form when shorter).
    seeds: Option<AhoCorasick>,
    /// The forms: each secret and its base64 encodings, indexed like the seeds.
    forms: Vec<Vec<u8>>,
    /// Longest form, to keep enough of a split write to catch it.
    pub longest: usize,
}

impl Redactor {
    /// A redactor for these secret values and the registered credentials of the manifest's
    /// repository URLs (values shorter than 4 bytes are not secrets worth the noise of masking
    /// every occurrence). URL credentials are masked wherever they appear, registered or not.
    pub fn new<'a>(secrets: impl IntoIterator<Item = &'a str>) -> Redactor {
        let registered: Vec<String> = registry().read().map(|l| l.clone()).unwrap_or_default();
        let mut forms: Vec<String> = Vec::new();
        let all = secrets
            .into_iter()
            .map(str::to_owned)
            .chain(registered)
            .filter(|s| s.len() >= MIN_SECRET);
        for secret in all {
            let secret = secret.as_str();
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
        Redactor {
            seeds,
            forms: forms.into_iter().map(String::into_bytes).collect(),
            longest,
        }
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

    /// Masks every string of a JSON value, object keys included.
    pub fn mask_json(&self, v: &mut serde_json::Value) {
        match v {
            serde_json::Value::String(s) => *s = self.mask(s),
            serde_json::Value::Array(a) => a.iter_mut().for_each(|v| self.mask_json(v)),
            serde_json::Value::Object(o) => {
                let taken = std::mem::take(o);
                for (k, mut v) in taken {
                    self.mask_json(&mut v);
                    o.insert(self.mask(&k), v);
                }
            }
            _ => {}
        }
    }

    /// Like [`Redactor::mask`], with `carry` (the end of the text that came before on the same
    /// stream, line breaks removed) as context, so that a secret that began there is masked
    /// where it goes on. Line breaks inside `text` are ignored for matching and kept in the
    /// output. Returns the masked text and the carry for the next call.
    pub fn mask_after(&self, carry: &[u8], text: &str) -> (String, Vec<u8>) {
        let (out, carry) = self.mask_secrets(carry, text);
        let spans = credential_spans(&out);
        (replace_spans(&out, &spans, |_| MASK.to_string()), carry)
    }

    fn mask_secrets(&self, carry: &[u8], text: &str) -> (String, Vec<u8>) {
        if self.seeds.is_none() {
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

fn replace_spans(text: &str, spans: &[Range<usize>], with: impl Fn(&str) -> String) -> String {
    if spans.is_empty() {
        return text.to_string();
    }
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    for r in spans {
        out.push_str(&text[at..r.start]);
        out.push_str(&with(&text[r.clone()]));
        at = r.end;
    }
    out.push_str(&text[at..]);
    out
}

/// Byte ranges of credentials in `text`: for http(s) URLs the whole userinfo (tokens are often
/// passed as the user name), for other schemes the password after `user:`.
fn credential_spans(text: &str) -> Vec<Range<usize>> {
    let bytes = text.as_bytes();
    let mut spans = Vec::new();
    let mut search = 0;
    while let Some(found) = text[search..].find("://") {
        let sep = search + found;
        let authority_start = sep + 3;
        search = authority_start;
        let scheme_start = text[..sep]
            .rfind(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.')))
            .map_or(0, |i| i + 1);
        let scheme = text[scheme_start..sep].to_ascii_lowercase();
        let authority_end = text[authority_start..]
            .find(|c: char| {
                matches!(
                    c,
                    '/' | '?' | '#' | '"' | '\'' | '`' | '<' | '>' | '(' | ')'
                ) || c.is_whitespace()
            })
            .map_or(text.len(), |i| authority_start + i);
        let Some(at) = text[authority_start..authority_end].rfind('@') else {
            continue;
        };
        let at = authority_start + at;
        if at == authority_start {
            continue;
        }
        let http = scheme.ends_with("http") || scheme.ends_with("https");
        let span = if http {
            authority_start..at
        } else {
            match bytes[authority_start..at].iter().position(|&b| b == b':') {
                Some(colon) if authority_start + colon + 1 < at => authority_start + colon + 1..at,
                _ => continue,
            }
        };
        spans.push(span);
    }
    spans
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_http_userinfo_and_ssh_password() {
        assert_eq!(
            text("fetch https://user:s3cret@git.example.com/a.git failed"),
            "fetch https://***@git.example.com/a.git failed"
        );
        assert_eq!(text("https://TOKEN123@h/x"), "https://***@h/x");
        assert_eq!(text("ssh://git@host/x.git"), "ssh://git@host/x.git");
        assert_eq!(text("ssh://git:pw@host/x.git"), "ssh://git:***@host/x.git");
        assert_eq!(text("git@host:x.git"), "git@host:x.git");
    }

    #[test]
    fn same_length_mask_keeps_offsets() {
        let src = "url = \"https://u:tok@h/x\"\nnext";
        let masked = mask_url_credentials(src);
        assert_eq!(masked.len(), src.len());
        assert!(!masked.contains("tok"));
        assert!(masked.ends_with("@h/x\"\nnext"));
    }

    #[test]
    fn registered_secrets_are_masked_anywhere() {
        register_url("https://bob:hunter2-secret@example.com/r.git");
        assert_eq!(
            text("auth failed for bob:hunter2-secret"),
            "auth failed for ***"
        );
    }
}
