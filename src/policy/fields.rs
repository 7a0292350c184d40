//! Typed reads of one section's entries. Each read reports a wrong type as a diagnostic and
//! returns `None`, so the checker carries on and reports every mistake in one pass.

use super::ast::*;
use super::bounds::{Count, Real};
use super::diag::Diagnostic;
use super::layers::Entry;
use super::suggest;

pub struct Fields<'a> {
    pub section: &'a str,
    pub header: Span,
    pub entries: &'a [Entry],
    pub d: &'a mut Vec<Diagnostic>,
}

impl<'a> Fields<'a> {
    pub fn get(&self, key: &str) -> Option<&'a Entry> {
        self.entries.iter().find(|e| e.key.node == key)
    }

    /// Unknown keys, with a suggestion among `allowed`.
    pub fn only(&mut self, allowed: &[&str], what: &str) {
        for e in self.entries {
            if !allowed.contains(&e.key.node.as_str()) {
                self.d.push(
                    Diagnostic::new(
                        e.key.span,
                        format!("unknown key `{}` in {what}", e.key.node),
                        "unknown key",
                    )
                    .help(suggest::help(&e.key.node, "key", allowed)),
                );
            }
        }
    }

    pub fn missing(&mut self, key: &str, example: &str) {
        // A near miss in the block is already reported as an unknown key with this suggestion.
        let near_miss = self
            .entries
            .iter()
            .any(|e| e.key.node != key && suggest::closest(&e.key.node, [key]).is_some());
        if near_miss {
            return;
        }
        self.d.push(
            Diagnostic::new(
                self.header,
                format!("`{}` needs `{key}`", self.section),
                format!("`{key}` missing"),
            )
            .help(format!("add `{key} = {example}`")),
        );
    }

    pub fn type_error(&mut self, e: &Entry, expected: &str, example: &str) {
        self.d.push(
            Diagnostic::new(
                e.value.span,
                format!(
                    "`{}.{}` must be {expected}, found {}",
                    self.section,
                    e.key.node,
                    e.value.node.describe()
                ),
                format!("expected {expected}"),
            )
            .help(match &e.value.node {
                Value::Str(s) if s.trim().parse::<f64>().is_ok() => {
                    format!("numbers take no quotes: `{} = {}`", e.key.node, s.trim())
                }
                Value::Sweep(_) => format!(
                    "only `train.lr` takes a sweep; give one value, e.g. `{} = {example}`",
                    e.key.node
                ),
                _ => format!("write e.g. `{} = {example}`", e.key.node),
            }),
        );
    }

    pub fn value_error(&mut self, span: Span, message: String, help: String) {
        self.d
            .push(Diagnostic::new(span, message, "here").help(help));
    }

    /// A whole number ≥ `min`.
    pub fn count_at_least(&mut self, key: &str, min: u64) -> Option<u64> {
        let e = self.get(key)?;
        match &e.value.node {
            Value::Number(n) => match n.as_count() {
                Some(v) if v >= min => Some(v),
                _ => {
                    let expected = if min == 0 {
                        "a whole number ≥ 0".to_string()
                    } else {
                        format!("a whole number ≥ {min}")
                    };
                    self.type_error(e, &expected, &min.max(1).to_string());
                    None
                }
            },
            _ => {
                self.type_error(e, "a whole number", &min.max(1).to_string());
                None
            }
        }
    }

    /// A whole number within `b` (see `bounds.rs`): below the minimum is a type error, above
    /// the maximum says why the limit exists.
    pub fn count_in(&mut self, key: &str, b: &Count) -> Option<u64> {
        let v = self.count_at_least(key, b.min)?;
        if v <= b.max {
            return Some(v);
        }
        let e = self.get(key)?;
        self.d.push(
            Diagnostic::new(
                e.value.span,
                format!(
                    "`{}.{}` = {} is above its limit of {}",
                    self.section,
                    e.key.node,
                    e.value.node.describe_number(),
                    group(b.max)
                ),
                "too large",
            )
            .help(format!(
                "the limit is there because {}; a value between {} and {} works",
                b.why,
                group(b.min),
                group(b.max)
            )),
        );
        None
    }

    pub fn required_in(&mut self, key: &str, b: &Count, example: &str) -> Option<u64> {
        if self.get(key).is_none() {
            self.missing(key, example);
            return None;
        }
        self.count_in(key, b)
    }

    /// A number within `b`, or a targeted error naming the range and why it is there.
    pub fn real_in(&mut self, key: &str, b: &Real, example: &str) -> Option<f64> {
        let e = self.get(key)?;
        let Value::Number(n) = &e.value.node else {
            self.type_error(e, "a number", example);
            return None;
        };
        let v = n.value;
        let above_min = if b.open_min { v > b.min } else { v >= b.min };
        if v.is_finite() && above_min && v <= b.max {
            return Some(v);
        }
        let range = match (b.open_min, v > b.max) {
            (_, true) => format!("is above its limit of {}", b.max),
            (true, false) => format!("must be a number above {}", b.min),
            (false, false) => format!("must be a number of at least {}", b.min),
        };
        self.d.push(
            Diagnostic::new(
                e.value.span,
                format!("`{}.{}` = {} {range}", self.section, e.key.node, n.text),
                "out of range",
            )
            .help(format!(
                "the range is {}{}, {}] because {}; write e.g. `{} = {example}`",
                if b.open_min { "(" } else { "[" },
                b.min,
                b.max,
                b.why,
                e.key.node
            )),
        );
        None
    }

    pub fn count(&mut self, key: &str) -> Option<u64> {
        self.count_at_least(key, 0)
    }

    pub fn boolean(&mut self, key: &str) -> Option<bool> {
        let e = self.get(key)?;
        match &e.value.node {
            Value::Word(w) if w == "true" => Some(true),
            Value::Word(w) if w == "false" => Some(false),
            _ => {
                self.type_error(e, "`true` or `false`", "true");
                None
            }
        }
    }

    /// One of a fixed set of words.
    pub fn choice(&mut self, key: &str, choices: &[&'static str]) -> Option<&'static str> {
        let e = self.get(key)?;
        if let Value::Word(w) = &e.value.node {
            if let Some(c) = choices.iter().find(|c| **c == w) {
                return Some(c);
            }
            self.d.push(
                Diagnostic::new(
                    e.value.span,
                    format!("`{w}` is not a valid `{}.{}`", self.section, e.key.node),
                    "unknown choice",
                )
                .help(suggest::help(w, "choice", choices)),
            );
            return None;
        }
        let expected = format!("one of {}", suggest::quoted(choices));
        self.type_error(e, &expected, choices[0]);
        None
    }

    pub fn string(&mut self, key: &str, example: &str) -> Option<String> {
        let e = self.get(key)?;
        match &e.value.node {
            Value::Str(s) if !s.is_empty() => Some(s.clone()),
            _ => {
                self.type_error(e, "a non-empty string", example);
                None
            }
        }
    }

    pub fn required_string(&mut self, key: &str, example: &str) -> Option<String> {
        if self.get(key).is_none() {
            self.missing(key, example);
            return None;
        }
        self.string(key, example)
    }

    /// A list of whole numbers, with each element's span.
    pub fn count_list(&mut self, key: &str, example: &str) -> Option<Vec<(u64, Span)>> {
        let e = self.get(key)?;
        let Value::List(items) = &e.value.node else {
            self.type_error(e, "a list of whole numbers", example);
            return None;
        };
        let mut out = Vec::new();
        let mut ok = true;
        for it in items {
            match &it.node {
                Value::Number(n) if n.as_count().is_some() => {
                    out.push((n.as_count().unwrap_or_default(), it.span))
                }
                other => {
                    ok = false;
                    self.d.push(
                        Diagnostic::new(
                            it.span,
                            format!(
                                "`{}.{}` holds whole numbers, found {}",
                                self.section,
                                e.key.node,
                                other.describe()
                            ),
                            "expected a whole number",
                        )
                        .help(format!("write e.g. `{} = {example}`", e.key.node)),
                    );
                }
            }
        }
        ok.then_some(out)
    }
}

/// `1048576` as `1,048,576`.
pub fn group(v: u64) -> String {
    let digits = v.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}
