//! Redaction of credentials. Every string that leaves the engine (terminal output, logs, errors,
//! store rows) and may carry a repository URL goes through [`text`] first.
//!
//! Two mechanisms work together: a scanner that finds the userinfo part of `scheme://user:pass@host`
//! URLs anywhere in a text, and a process-wide list of secret strings (the credentials of every
//! URL in the loaded manifest) that are masked wherever they appear, even outside a URL.

use std::ops::Range;
use std::sync::{OnceLock, RwLock};

const MASK: &str = "***";

fn registry() -> &'static RwLock<Vec<String>> {
    static SECRETS: OnceLock<RwLock<Vec<String>>> = OnceLock::new();
    SECRETS.get_or_init(|| RwLock::new(Vec::new()))
}

/// Remembers the credential parts of `url` so that [`text`] masks them wherever they appear.
pub fn register_url(url: &str) {
    let secrets: Vec<String> = credential_spans(url)
        .into_iter()
        .filter_map(|r| url.get(r).map(str::to_owned))
        .filter(|s| s.len() >= 3)
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

/// `text` with every URL credential and every registered secret replaced by `***`.
pub fn text(text: &str) -> String {
    let mut out = replace_spans(text, &credential_spans(text), |_| MASK.to_string());
    if let Ok(list) = registry().read() {
        for secret in list.iter() {
            if out.contains(secret.as_str()) {
                out = out.replace(secret.as_str(), MASK);
            }
        }
    }
    out
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
