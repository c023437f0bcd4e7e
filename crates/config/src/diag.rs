//! Diagnostics: every message carries the file, a 1-based line and column, and the offending line
//! with a caret under the token, rendered as a compiler would:
//!
//! ```text
//! gw-a.cfg:8:11: error: DH group 2 (1024-bit MODP) is refused as insecure; use group 19 or group 14
//!    group 19 2
//!             ^
//! ```

use std::fmt;

/// A region of the input: byte offsets into the whole text plus the 1-based line and column
/// (in characters) of `start`. `end` never exceeds the end of that line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Span {
    pub start: usize,
    pub end: usize,
    pub line: u32,
    pub col: u32,
}

impl Span {
    /// The smallest span covering `self` and `other` (both on the same line).
    pub fn to(self, other: Span) -> Span {
        if other.line != self.line {
            return self;
        }
        Span { start: self.start.min(other.start), end: self.end.max(other.end), line: self.line, col: self.col.min(other.col) }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    Warning,
    Error,
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Severity::Warning => "warning",
            Severity::Error => "error",
        })
    }
}

/// One rendered-ready message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub severity: Severity,
    pub file: String,
    /// `None` for whole-file problems (file missing, not UTF-8).
    pub span: Option<Span>,
    pub message: String,
    /// The offending line (tabs shown as spaces so the caret lines up).
    pub source_line: Option<String>,
    /// Length of the underline in characters (at least 1).
    pub caret_len: usize,
}

impl Diagnostic {
    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.span {
            Some(s) => write!(f, "{}:{}:{}: {}: {}", self.file, s.line, s.col, self.severity, self.message)?,
            None => write!(f, "{}: {}: {}", self.file, self.severity, self.message)?,
        }
        if let (Some(s), Some(line)) = (self.span, &self.source_line) {
            let pad = (s.col as usize).saturating_sub(1);
            write!(f, "\n  {}\n  {}^{}", line, " ".repeat(pad), "~".repeat(self.caret_len.saturating_sub(1)))?;
        }
        Ok(())
    }
}

/// A list of diagnostics in source order. `Display` prints them one after another, separated by
/// newlines, in the `FILE:LINE:COL: error: message` form.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl Diagnostics {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    pub fn len(&self) -> usize {
        self.0.len()
    }
    pub fn iter(&self) -> std::slice::Iter<'_, Diagnostic> {
        self.0.iter()
    }
    pub fn error_count(&self) -> usize {
        self.0.iter().filter(|d| d.is_error()).count()
    }
    pub fn warning_count(&self) -> usize {
        self.0.len() - self.error_count()
    }
    pub fn has_errors(&self) -> bool {
        self.error_count() > 0
    }
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Diagnostics {}

impl IntoIterator for Diagnostics {
    type Item = Diagnostic;
    type IntoIter = std::vec::IntoIter<Diagnostic>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

/// A message before it is attached to a file: the parser and the lowering pass produce these.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Issue {
    pub severity: Severity,
    pub span: Span,
    pub message: String,
}

impl Issue {
    pub fn error(span: Span, message: impl Into<String>) -> Self {
        Issue { severity: Severity::Error, span, message: message.into() }
    }
    pub fn warning(span: Span, message: impl Into<String>) -> Self {
        Issue { severity: Severity::Warning, span, message: message.into() }
    }

    /// Attaches file name and source line. The span is clamped to the text so that a bug in a
    /// span computation can never turn into a panic while reporting.
    pub fn into_diagnostic(self, file: &str, text: &str) -> Diagnostic {
        let start = floor_char_boundary(text, self.span.start.min(text.len()));
        let line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
        let line_end = text[start..].find('\n').map_or(text.len(), |i| start + i);
        let raw = text[line_start..line_end].trim_end_matches('\r');
        let line_end = (line_start + raw.len()).max(start);
        let end = floor_char_boundary(text, self.span.end.clamp(start, line_end)).max(start);
        let caret_len = text[start..end].chars().count().max(1);
        Diagnostic {
            severity: self.severity,
            file: file.to_string(),
            span: Some(self.span),
            message: self.message,
            source_line: Some(raw.replace('\t', " ")),
            caret_len,
        }
    }
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendering_clamps_bad_spans_instead_of_panicking() {
        let text = "a\u{e9}b\r\nxyz\r\n";
        for (start, end) in [(0, 99), (2, 3), (99, 1), (4, 4), (5, 5), (6, 7), (text.len(), text.len())] {
            let d = Issue::error(Span { start, end, line: 1, col: 1 }, "m").into_diagnostic("f", text);
            assert!(d.caret_len >= 1);
            let _ = d.to_string();
        }
    }

    #[test]
    fn caret_spans_the_token_in_characters() {
        let text = "caf\u{e9} x\n";
        let d = Issue::error(Span { start: 0, end: 5, line: 1, col: 1 }, "bad").into_diagnostic("f.cfg", text);
        assert_eq!(d.to_string(), "f.cfg:1:1: error: bad\n  caf\u{e9} x\n  ^~~~");
        let w = Issue::warning(Span { start: 7, end: 8, line: 1, col: 6 }, "w").into_diagnostic("f.cfg", text);
        assert_eq!(w.to_string(), "f.cfg:1:6: warning: w\n  caf\u{e9} x\n       ^");
    }
}
