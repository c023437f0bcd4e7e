//! Splits ASA configuration text into lines of whitespace-separated tokens with spans, and groups
//! them into blocks: an unindented command followed by its indented sub-mode lines, which is how
//! the ASA's `show running-config` expresses configuration modes (`interface X` / ` nameif ...`).

use crate::diag::Span;

#[derive(Debug, Clone)]
pub(crate) struct Token<'a> {
    pub text: &'a str,
    pub span: Span,
}

#[derive(Debug, Clone)]
pub(crate) struct Line<'a> {
    pub number: u32,
    /// Byte offset of the line's first character in the whole text.
    pub start: usize,
    /// The line without its terminator.
    pub text: &'a str,
    /// Leading whitespace, in characters. Sub-mode lines have `indent > 0`.
    pub indent: usize,
    pub tokens: Vec<Token<'a>>,
}

impl<'a> Line<'a> {
    /// Span of everything from the first token to the last.
    pub fn span(&self) -> Span {
        match (self.tokens.first(), self.tokens.last()) {
            (Some(a), Some(b)) => a.span.to(b.span),
            _ => Span { start: self.start, end: self.start, line: self.number, col: 1 },
        }
    }
    /// Zero-width span just after the last token: where a missing argument should have been.
    pub fn end_span(&self) -> Span {
        let end = self.start + self.text.trim_end().len();
        let col = self.text.trim_end().chars().count() as u32 + 1;
        let col = if self.tokens.is_empty() { 1 } else { col };
        Span { start: end, end, line: self.number, col }
    }
    /// `!` and `:` lines are comments in ASA configuration files; blank lines carry nothing.
    pub fn is_comment_or_blank(&self) -> bool {
        match self.tokens.first() {
            None => true,
            Some(t) => t.text.starts_with('!') || t.text.starts_with(':'),
        }
    }
}

/// An unindented line and the indented lines under it.
#[derive(Debug, Clone)]
pub(crate) struct Block<'a> {
    pub head: Line<'a>,
    pub children: Vec<Line<'a>>,
}

pub(crate) fn lines(text: &str) -> Vec<Line<'_>> {
    let mut out = Vec::new();
    let mut offset = 0usize;
    for (idx, raw) in text.split('\n').enumerate() {
        let line_start = offset;
        offset += raw.len() + 1;
        let body = raw.strip_suffix('\r').unwrap_or(raw);
        let mut tokens = Vec::new();
        let mut indent = 0usize;
        let mut seen_token = false;
        let mut tok_start: Option<(usize, u32)> = None;
        let mut col = 0u32;
        let number = u32::try_from(idx + 1).unwrap_or(u32::MAX);
        for (bi, ch) in body.char_indices() {
            col = col.saturating_add(1);
            if ch.is_whitespace() {
                if let Some((s, c)) = tok_start.take() {
                    tokens.push(token(body, line_start, s, bi, number, c));
                }
                if !seen_token {
                    indent += 1;
                }
            } else {
                seen_token = true;
                if tok_start.is_none() {
                    tok_start = Some((bi, col));
                }
            }
        }
        if let Some((s, c)) = tok_start {
            tokens.push(token(body, line_start, s, body.len(), number, c));
        }
        out.push(Line { number, start: line_start, text: body, indent, tokens });
    }
    out
}

fn token<'a>(body: &'a str, line_start: usize, s: usize, e: usize, line: u32, col: u32) -> Token<'a> {
    Token { text: &body[s..e], span: Span { start: line_start + s, end: line_start + e, line, col } }
}

/// Groups lines into blocks. Comments and blank lines are dropped; an unindented comment (`!`)
/// closes the current mode as on the ASA. Indented lines with no open mode are returned as
/// orphans so the parser can report them.
pub(crate) fn blocks<'a>(lines: Vec<Line<'a>>) -> (Vec<Block<'a>>, Vec<Line<'a>>) {
    let mut blocks: Vec<Block<'a>> = Vec::new();
    let mut orphans = Vec::new();
    let mut open = false;
    for line in lines {
        if line.is_comment_or_blank() {
            if line.indent == 0 && !line.tokens.is_empty() {
                open = false;
            }
            continue;
        }
        if line.indent == 0 {
            blocks.push(Block { head: line, children: Vec::new() });
            open = true;
        } else if open {
            if let Some(b) = blocks.last_mut() {
                b.children.push(line);
            }
        } else {
            orphans.push(line);
        }
    }
    (blocks, orphans)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_carry_byte_and_char_positions() {
        let text = "hostname caf\u{e9}\r\n\tnameif  x\n";
        let ls = lines(text);
        assert_eq!(ls.len(), 3);
        assert_eq!(ls[0].text, "hostname caf\u{e9}");
        let t = &ls[0].tokens[1];
        assert_eq!((t.text, t.span.col, &text[t.span.start..t.span.end]), ("caf\u{e9}", 10, "caf\u{e9}"));
        assert_eq!(ls[0].end_span().col, 14, "just after the last character");
        assert_eq!(ls[1].indent, 1);
        let t = &ls[1].tokens[1];
        assert_eq!((t.text, t.span.line, t.span.col), ("x", 2, 10));
        assert_eq!(&text[t.span.start..t.span.end], "x");
        assert!(ls[2].tokens.is_empty());
    }

    #[test]
    fn blocks_follow_indentation_and_bang_closes_a_mode() {
        let text = "interface a\n nameif x\n  ! note\n ip address 1.2.3.4 255.0.0.0\n!\n nameif y\nhostname h\n";
        let (b, orphans) = blocks(lines(text));
        assert_eq!(b.len(), 2);
        assert_eq!(b[0].children.len(), 2);
        assert_eq!(orphans.len(), 1);
        assert_eq!(orphans[0].number, 6);
    }
}
