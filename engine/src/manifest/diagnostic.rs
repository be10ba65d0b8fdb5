//! Manifest diagnostics: every problem found in a `nestr.toml` carries the byte span at fault, is
//! shown as `file:line:col: what is wrong` with the source line underlined, and says what to write
//! instead. Credentials in the source are masked before any of it is shown.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use miette::{Diagnostic, LabeledSpan, NamedSource, SourceCode};

use crate::redact;

/// One thing wrong in a manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Byte range in the manifest source.
    pub span: Range<usize>,
    /// 1-based line of the span's start.
    pub line: usize,
    /// 1-based column (in characters) of the span's start.
    pub column: usize,
    /// What is wrong.
    pub message: String,
    /// What to write instead.
    pub help: Option<String>,
}

/// A manifest that could not be accepted: all its problems, in source order.
#[derive(Debug, Clone)]
pub struct InvalidManifest {
    pub file: PathBuf,
    pub problems: Vec<Problem>,
    source: Arc<NamedSource<String>>,
    rest: Vec<RelatedProblem>,
}

impl InvalidManifest {
    pub(crate) fn new(file: &Path, source: &str, mut problems: Vec<Problem>) -> Self {
        problems.sort_by_key(|p| (p.span.start, p.span.end));
        problems.dedup();
        let shown = redact::mask_url_credentials(source);
        let source = Arc::new(NamedSource::new(file.display().to_string(), shown));
        let mut this = InvalidManifest {
            file: file.to_path_buf(),
            problems,
            source,
            rest: vec![],
        };
        this.rest = this
            .problems
            .iter()
            .skip(1)
            .map(|p| this.related_one(p))
            .collect();
        this
    }

    fn location(&self, p: &Problem) -> String {
        format!("{}:{}:{}", self.file.display(), p.line, p.column)
    }
}

impl fmt::Display for InvalidManifest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.problems.first() {
            Some(p) => write!(f, "{}: {}", self.location(p), p.message),
            None => write!(f, "{}: invalid manifest", self.file.display()),
        }
    }
}

impl std::error::Error for InvalidManifest {}

impl Diagnostic for InvalidManifest {
    fn help<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        let p = self.problems.first()?;
        p.help
            .as_ref()
            .map(|h| Box::new(h) as Box<dyn fmt::Display>)
    }

    fn source_code(&self) -> Option<&dyn SourceCode> {
        Some(self.source.as_ref())
    }

    fn labels(&self) -> Option<Box<dyn Iterator<Item = LabeledSpan> + '_>> {
        let p = self.problems.first()?;
        Some(Box::new(std::iter::once(label(p))))
    }

    fn related<'a>(&'a self) -> Option<Box<dyn Iterator<Item = &'a dyn Diagnostic> + 'a>> {
        if self.rest.is_empty() {
            return None;
        }
        Some(Box::new(self.rest.iter().map(|r| r as &dyn Diagnostic)))
    }
}

impl InvalidManifest {
    /// Every problem as a diagnostic of its own (location, snippet, help), in source order: how
    /// the CLI shows them, one after the other in one format.
    pub fn each(&self) -> Vec<Box<dyn Diagnostic + Send + Sync>> {
        self.problems
            .iter()
            .map(|p| Box::new(self.related_one(p)) as Box<dyn Diagnostic + Send + Sync>)
            .collect()
    }

    fn related_one(&self, p: &Problem) -> RelatedProblem {
        RelatedProblem {
            title: format!("{}: {}", self.location(p), p.message),
            problem: p.clone(),
            source: self.source.clone(),
        }
    }
}

fn label(p: &Problem) -> LabeledSpan {
    let len = p.span.end.saturating_sub(p.span.start);
    LabeledSpan::new(Some("here".to_string()), p.span.start, len)
}

/// A second or later problem, shown after the first with its own snippet.
#[derive(Debug, Clone)]
struct RelatedProblem {
    title: String,
    problem: Problem,
    source: Arc<NamedSource<String>>,
}

impl fmt::Display for RelatedProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.title)
    }
}

impl std::error::Error for RelatedProblem {}

impl Diagnostic for RelatedProblem {
    fn help<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        self.problem
            .help
            .as_ref()
            .map(|h| Box::new(h) as Box<dyn fmt::Display>)
    }
    fn source_code(&self) -> Option<&dyn SourceCode> {
        Some(self.source.as_ref())
    }
    fn labels(&self) -> Option<Box<dyn Iterator<Item = LabeledSpan> + '_>> {
        Some(Box::new(std::iter::once(label(&self.problem))))
    }
}

/// Collects problems while a manifest is validated; knows the source to turn spans into lines.
pub(crate) struct Problems<'s> {
    source: &'s str,
    pub list: Vec<Problem>,
}

impl<'s> Problems<'s> {
    pub fn new(source: &'s str) -> Self {
        Problems {
            source,
            list: Vec::new(),
        }
    }

    pub fn push(&mut self, span: Range<usize>, message: impl Into<String>, help: Option<String>) {
        let (line, column) = line_col(self.source, span.start);
        self.list.push(Problem {
            span,
            line,
            column,
            message: message.into(),
            help,
        });
    }

    pub fn err(&mut self, span: Range<usize>, message: impl Into<String>, help: impl Into<String>) {
        self.push(span, message, Some(help.into()));
    }
}

/// Where each line of a source starts, to find many offsets' lines without a scan each.
pub(crate) struct Lines(Vec<usize>);

impl Lines {
    pub fn of(source: &str) -> Lines {
        Lines(
            std::iter::once(0)
                .chain(source.match_indices('\n').map(|(i, _)| i + 1))
                .collect(),
        )
    }

    /// The 1-based line of a byte offset (as [`line_col`] gives it).
    pub fn line(&self, offset: usize) -> usize {
        self.0.partition_point(|&start| start <= offset).max(1)
    }
}

/// 1-based line and character column of a byte offset.
pub fn line_col(source: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(source.len());
    let before = source.get(..offset).unwrap_or(source);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_agree_with_line_col() {
        let src = "a\nbb\n\nccc\n";
        let lines = Lines::of(src);
        for offset in 0..=src.len() + 2 {
            assert_eq!(
                lines.line(offset),
                line_col(src, offset).0,
                "offset {offset}"
            );
        }
    }
}
