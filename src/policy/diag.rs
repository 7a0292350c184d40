//! Diagnostics: every error names file:line:column, shows the line with a caret under the
//! offending text, and says what to do. All errors of a load are collected and shown together,
//! in the order of their position. An error about the file as a whole (it cannot be read) names
//! the file without a position. [`Diagnostics::to_json`] is the same for editors.

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
    /// About the whole source (e.g. it cannot be read): shown without line, column or caret.
    pub whole_file: bool,
}

impl Diagnostic {
    pub fn new(span: Span, message: impl Into<String>, label: impl Into<String>) -> Self {
        Self {
            span,
            message: message.into(),
            label: label.into(),
            help: None,
            whole_file: false,
        }
    }
    /// An error about the source as a whole, e.g. a file that cannot be read.
    pub fn file(message: impl Into<String>) -> Self {
        Self {
            whole_file: true,
            ..Self::new(Span::default(), message, "")
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
    /// The errors in the order of their position (source, then offset), so a reader and an
    /// editor meet them top to bottom; errors at one place keep the order they were found in.
    pub fn sorted(&self) -> Vec<&Diagnostic> {
        let mut v: Vec<&Diagnostic> = self.errors.iter().collect();
        v.sort_by_key(|d| (d.span.src, !d.whole_file, d.span.start, d.span.end));
        v
    }

    /// Machine-readable diagnostics for editors: one object per error with the source name,
    /// 1-based line and column of its start and end (columns in characters; absent for an error
    /// about the whole file), byte offsets, message, label and help.
    pub fn to_json(&self) -> serde_json::Value {
        let starts: Vec<Vec<usize>> = self.sources.iter().map(|s| line_starts(&s.text)).collect();
        let items: Vec<serde_json::Value> = self
            .sorted()
            .into_iter()
            .map(|d| {
                let src = &self.sources[d.span.src];
                let mut o = serde_json::json!({
                    "severity": "error",
                    "source": src.name,
                    "message": d.message,
                    "label": d.label,
                    "help": d.help,
                });
                if !d.whole_file {
                    let at = |offset| line_col_in(&src.text, &starts[d.span.src], offset);
                    let (line, column) = at(d.span.start);
                    let (end_line, end_column) = at(d.span.end.max(d.span.start));
                    let m = o.as_object_mut().expect("object literal");
                    for (k, v) in [
                        ("line", line),
                        ("column", column),
                        ("end_line", end_line),
                        ("end_column", end_column),
                        ("byte_start", d.span.start),
                        ("byte_end", d.span.end),
                    ] {
                        m.insert(k.into(), v.into());
                    }
                }
                o
            })
            .collect();
        serde_json::Value::Array(items)
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
        if d.whole_file {
            writeln!(f, "error: {}", d.message)?;
            writeln!(f, " --> {}", src.name)?;
            if let Some(h) = &d.help {
                writeln!(f, "  = help: {h}")?;
            }
            return Ok(());
        }
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
        for (i, d) in self.sorted().into_iter().enumerate() {
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
