//! Diagnostics: every error names file:line:column, shows the line with a caret under the
//! offending text, and says what to do. All errors of a load are collected and shown together.

use super::ast::Span;
use std::collections::HashSet;
use std::fmt;

/// One text that spans point into: the policy file, or one `--set` argument.
#[derive(Clone, Debug, PartialEq)]
pub struct Source {
    /// Shown before `:line:col` (the path as given, or `--set` for an override).
    pub name: String,
    pub text: String,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Diagnostic {
    pub span: Span,
    pub message: String,
    /// Printed under the caret.
    pub label: String,
    /// What to do about it.
    pub help: Option<String>,
}

impl Diagnostic {
    pub fn new(span: Span, message: impl Into<String>, label: impl Into<String>) -> Self {
        Self {
            span,
            message: message.into(),
            label: label.into(),
            help: None,
        }
    }
    pub fn help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }
}

/// The errors of one load, with the sources they point into.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Diagnostics {
    pub sources: Vec<Source>,
    pub errors: Vec<Diagnostic>,
    /// Place and message of every error pushed, so de-duplication stays linear in their number.
    seen: HashSet<((usize, usize, usize), String)>,
}

impl Diagnostics {
    pub fn new(sources: Vec<Source>) -> Self {
        Self {
            sources,
            errors: Vec::new(),
            seen: HashSet::new(),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.errors.is_empty()
    }
    pub fn len(&self) -> usize {
        self.errors.len()
    }
    /// Adds an error unless the same message at the same place is already there (arms share
    /// the base experiment, so its mistakes would otherwise be reported once per arm).
    pub fn push(&mut self, d: Diagnostic) {
        if self.seen.insert((d.span.key(), d.message.clone())) {
            self.errors.push(d);
        }
    }
    /// 1-based line and column (in characters) of a byte offset.
    pub fn line_col(&self, src: usize, offset: usize) -> (usize, usize) {
        let text = &self.sources[src].text;
        line_col_in(text, &line_starts(text), offset)
    }

    fn render_one(
        &self,
        d: &Diagnostic,
        starts: &[Vec<usize>],
        f: &mut fmt::Formatter<'_>,
    ) -> fmt::Result {
        let src = &self.sources[d.span.src];
        let text = &src.text;
        let start = floor_char_boundary(text, d.span.start.min(text.len()));
        let (line, col) = line_col_in(text, &starts[d.span.src], start);
        let line_start = starts[d.span.src][line - 1];
        let line_end = text[start..].find('\n').map_or(text.len(), |i| start + i);
        let line_text = text[line_start..line_end].trim_end_matches('\r');
        let end = floor_char_boundary(text, d.span.end.clamp(start, line_end));
        let width = text[start..end].chars().count().max(1);
        let gutter = line.to_string().len();
        let pad = " ".repeat(gutter);
        // Tabs keep their width under the caret so it lines up in a terminal.
        let lead: String = text[line_start..start]
            .chars()
            .map(|c| if c == '\t' { '\t' } else { ' ' })
            .collect();
        writeln!(f, "error: {}", d.message)?;
        writeln!(f, "{pad}--> {}:{line}:{col}", src.name)?;
        writeln!(f, "{pad} |")?;
        writeln!(f, "{line} | {line_text}")?;
        let label = if d.label.is_empty() {
            String::new()
        } else {
            format!(" {}", d.label)
        };
        writeln!(f, "{pad} | {lead}{}{label}", "^".repeat(width))?;
        if let Some(h) = &d.help {
            writeln!(f, "{pad} = help: {h}")?;
        }
        Ok(())
    }
}

/// Byte offset of the start of every line; rendering many errors then costs a binary search
/// each instead of a scan from the top of the file.
fn line_starts(text: &str) -> Vec<usize> {
    std::iter::once(0)
        .chain(text.match_indices('\n').map(|(i, _)| i + 1))
        .collect()
}

fn line_col_in(text: &str, starts: &[usize], offset: usize) -> (usize, usize) {
    let offset = floor_char_boundary(text, offset.min(text.len()));
    let line = starts.partition_point(|&s| s <= offset);
    let line_start = starts[line - 1];
    (line, text[line_start..offset].chars().count() + 1)
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let starts: Vec<Vec<usize>> = self.sources.iter().map(|s| line_starts(&s.text)).collect();
        for (i, d) in self.errors.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            self.render_one(d, &starts, f)?;
        }
        let n = self.errors.len();
        if n > 1 {
            writeln!(f, "\n{n} errors")?;
        }
        Ok(())
    }
}

impl std::error::Error for Diagnostics {}
