//! Terminal rendering: colour decisions (`--color`, NO_COLOR), progress (indicatif bars with
//! objects and bytes on a terminal, plain lines otherwise), tables and result summaries, and
//! [`untrusted`]: how text a plugin or a program chose reaches the terminal (control characters
//! escaped, only plain colours kept), and [`log_line`]: how a step's log line is shown, so that
//! an engine notice can never be forged by a plugin.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::Duration;

pub use crate::views::untrusted;

use indicatif::{HumanBytes, MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::{ColorChoice, Global};
use crate::git::{Progress, RepoOutcome};
use crate::model::SyncResult;

/// A colour (or emphasis) for a piece of text.
#[derive(Debug, Clone, Copy)]
pub enum Tone {
    Good,
    Warn,
    Bad,
    Dim,
    Bold,
    Info,
}

/// How output looks: colour on stdout/stderr, quiet, progress bars.
#[derive(Debug, Clone)]
pub struct Ui {
    pub color_out: bool,
    pub color_err: bool,
    pub quiet: bool,
    pub bars: bool,
}

impl Ui {
    pub fn new(g: &Global) -> Ui {
        let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
        let pick = |tty: bool| match g.color {
            ColorChoice::Always => true,
            ColorChoice::Never => false,
            ColorChoice::Auto => tty && !no_color,
        };
        let err_tty = std::io::stderr().is_terminal();
        Ui {
            color_out: pick(std::io::stdout().is_terminal()),
            color_err: pick(err_tty),
            quiet: g.quiet,
            bars: err_tty && !g.quiet,
        }
    }

    /// `text` in `tone` when stdout gets colour.
    pub fn paint(&self, tone: Tone, text: &str) -> String {
        paint(self.color_out, tone, text)
    }

    /// `text` in `tone` when stderr gets colour.
    pub fn paint_err(&self, tone: Tone, text: &str) -> String {
        paint(self.color_err, tone, text)
    }

    /// A note on stderr (suppressed by `-q`).
    pub fn note(&self, text: &str) {
        if !self.quiet {
            eprintln!("{text}");
        }
    }

    /// Progress for repository work, matching this terminal.
    pub fn repo_progress(&self) -> RepoProgress {
        RepoProgress {
            multi: self
                .bars
                .then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr())),
            bars: Mutex::new(HashMap::new()),
            ui: self.clone(),
        }
    }
}

pub fn paint(on: bool, tone: Tone, text: &str) -> String {
    if !on {
        return text.to_string();
    }
    let code = match tone {
        Tone::Good => "32",
        Tone::Warn => "33",
        Tone::Bad => "31",
        Tone::Dim => "2",
        Tone::Bold => "1",
        Tone::Info => "36",
    };
    format!("\x1b[{code}m{text}\x1b[0m")
}

/// The tone a result is shown in.
pub fn result_tone(r: SyncResult) -> Tone {
    match r {
        SyncResult::Cloned | SyncResult::Updated => Tone::Good,
        SyncResult::UpToDate => Tone::Dim,
        SyncResult::Skipped => Tone::Warn,
        SyncResult::Failed => Tone::Bad,
    }
}

pub fn result_word(r: SyncResult) -> &'static str {
    match r {
        SyncResult::Cloned => "cloned",
        SyncResult::Updated => "updated",
        SyncResult::UpToDate => "up to date",
        SyncResult::Skipped => "skipped",
        SyncResult::Failed => "failed",
    }
}

/// Progress bars on a terminal, one plain line per event otherwise.
pub struct RepoProgress {
    multi: Option<MultiProgress>,
    bars: Mutex<HashMap<String, ProgressBar>>,
    ui: Ui,
}

impl RepoProgress {
    /// Removes every bar from the terminal; call before printing results.
    pub fn clear(&self) {
        if let Ok(mut bars) = self.bars.lock() {
            for (_, bar) in bars.drain() {
                bar.finish_and_clear();
            }
        }
        if let Some(multi) = &self.multi {
            let _ = multi.clear();
        }
    }
}

impl Progress for RepoProgress {
    fn start(&self, repo: &str, what: &str) {
        match &self.multi {
            Some(multi) => {
                let bar = multi.add(ProgressBar::new_spinner());
                let style = ProgressStyle::with_template(
                    "{spinner} {prefix:<16} {wide_msg} {pos:>7}/{len:7} objects",
                )
                .unwrap_or_else(|_| ProgressStyle::default_spinner());
                bar.set_style(style);
                bar.set_prefix(repo.to_string());
                bar.set_message(what.to_string());
                bar.enable_steady_tick(Duration::from_millis(120));
                if let Ok(mut bars) = self.bars.lock() {
                    bars.insert(repo.to_string(), bar);
                }
            }
            None => self.ui.note(&format!("{repo}: {what}")),
        }
    }

    fn transfer(&self, repo: &str, received: usize, total: usize, bytes: usize) {
        if let Ok(bars) = self.bars.lock()
            && let Some(bar) = bars.get(repo)
        {
            bar.set_length(total as u64);
            bar.set_position(received as u64);
            bar.set_message(format!("{}", HumanBytes(bytes as u64)));
        }
    }

    fn finish(&self, o: &RepoOutcome) {
        let bar = self.bars.lock().ok().and_then(|mut b| b.remove(&o.name));
        if let Some(bar) = bar {
            bar.finish_and_clear();
            if let Some(multi) = &self.multi {
                multi.remove(&bar);
            }
        }
        if self.multi.is_none() {
            self.ui.note(&format!(
                "{}: {} — {}",
                o.name,
                result_word(o.result),
                o.message
            ));
        }
    }
}

/// Left-aligned columns, widths from the widest cell (colour codes not counted). Cells may hold
/// text a plugin chose (summaries, reasons): each is shown through [`untrusted`].
pub fn table(header: &[&str], rows: &[Vec<(String, Option<Tone>)>], color: bool) -> String {
    let rows: Vec<Vec<(String, Option<Tone>)>> = rows
        .iter()
        .map(|r| {
            r.iter()
                .map(|(cell, tone)| (untrusted(cell, false), *tone))
                .collect()
        })
        .collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (i, (cell, _)) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let mut out = String::new();
    let line = |cells: Vec<(String, Option<Tone>)>, out: &mut String| {
        let n = cells.len();
        for (i, (cell, tone)) in cells.into_iter().enumerate() {
            let pad = widths
                .get(i)
                .copied()
                .unwrap_or(0)
                .saturating_sub(cell.chars().count());
            let shown = match tone {
                Some(t) => paint(color, t, &cell),
                None => cell,
            };
            out.push_str(&shown);
            if i + 1 < n {
                out.push_str(&" ".repeat(pad + 2));
            }
        }
        let trimmed = out.trim_end_matches(' ').len();
        out.truncate(trimmed);
        out.push('\n');
    };
    line(
        header
            .iter()
            .map(|h| (h.to_string(), Some(Tone::Bold)))
            .collect(),
        &mut out,
    );
    for row in rows {
        line(row, &mut out);
    }
    out
}

/// The table and one-line summary printed after assemble or sync.
pub fn outcomes(ui: &Ui, outcomes: &[RepoOutcome]) -> String {
    let rows: Vec<Vec<(String, Option<Tone>)>> = outcomes
        .iter()
        .map(|o| {
            vec![
                (o.name.clone(), None),
                (
                    result_word(o.result).to_string(),
                    Some(result_tone(o.result)),
                ),
                (
                    o.head
                        .as_deref()
                        .map_or("-".to_string(), |h| h[..10.min(h.len())].to_string()),
                    Some(Tone::Dim),
                ),
                (o.message.clone(), None),
            ]
        })
        .collect();
    let mut out = table(&["REPO", "RESULT", "HEAD", "DETAILS"], &rows, ui.color_out);
    let mut counts: Vec<(SyncResult, usize)> = Vec::new();
    for o in outcomes {
        match counts.iter_mut().find(|(r, _)| *r == o.result) {
            Some((_, n)) => *n += 1,
            None => counts.push((o.result, 1)),
        }
    }
    let parts: Vec<String> = counts
        .iter()
        .map(|(r, n)| ui.paint(result_tone(*r), &format!("{n} {}", result_word(*r))))
        .collect();
    out.push_str(&format!(
        "\n{} repositor{}: {}\n",
        outcomes.len(),
        if outcomes.len() == 1 { "y" } else { "ies" },
        parts.join(", ")
    ));
    out
}

/// A step's log line as shown on a terminal: `SERVICE | text` for what the plugin and its
/// programs wrote (made safe with [`untrusted`]), `SERVICE ! text` (dimmed) for the engine's own
/// notices. A plugin's text is always after a `|` on a line of its own, so it cannot pass for a
/// notice.
pub fn log_line(prefix_service: &str, system: bool, text: &str, color: bool) -> String {
    if !color {
        return crate::views::log_text_line(prefix_service, system, text);
    }
    if system {
        format!(
            "{prefix_service} ! {}",
            paint(color, Tone::Dim, &untrusted(text, false))
        )
    } else {
        format!("{prefix_service} | {}", untrusted(text, color))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped_and_only_plain_colours_kept() {
        let hostile = "a\x1b]0;title\x07b\x1b[2Jc\roverwrite\u{9b}31m\u{202e}x\x1b[31mred";
        let plain = untrusted(hostile, false);
        assert_eq!(
            plain,
            "a\\x1b]0;title\\x07b\\x1b[2Jc\\roverwrite\\u{9b}31m\\u{202e}xred"
        );
        assert!(!plain.chars().any(|c| c.is_control()));
        let coloured = untrusted(hostile, true);
        assert!(coloured.ends_with("\x1b[31mred\x1b[0m"), "{coloured:?}");
        assert_eq!(
            coloured.matches('\x1b').count(),
            2,
            "only the SGR and its reset"
        );
    }

    #[test]
    fn a_forged_notice_stays_after_the_bar() {
        let forged = log_line("svc", false, "[nestr: denied exec `x`]", false);
        let real = log_line("svc", true, "[nestr: denied exec `x`]", false);
        assert_eq!(forged, "svc | [nestr: denied exec `x`]");
        assert_eq!(real, "svc ! [nestr: denied exec `x`]");
    }
}
