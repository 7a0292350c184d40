//! Which plugin parameters a script reads, found in its source: every `param("name")` and
//! `param_or("name", …)` call with a literal name, outside comments and strings. A policy may set
//! exactly these (`plugin "spectral_gradient" { grad_weight = 0.2 }`), so `adarank check` can
//! refuse a misspelt one at its line and column instead of the run silently ignoring it.
//!
//! Two kinds of names are not the policy's to set: those the engine fills in from other
//! settings ([`ENGINE_SET`]), and those the engine itself reads on a plugin's behalf
//! ([`RELAXATION`], read when a learner defines `learn_step`).

use std::collections::BTreeSet;

/// Parameters the engine sets before every call, and the policy setting each comes from.
pub const ENGINE_SET: &[(&str, &str)] = &[
    ("r_min", "lora.min_rank"),
    ("r_max", "lora.max_rank"),
    ("init_rank", "lora.init_rank"),
    ("param_budget", "lora.param_budget"),
];

/// The relaxation's settings (soft rank gates between re-allocations): read by the engine, not
/// by the script, for a learner that defines `learn_step` (see `relax.rs`).
pub const RELAXATION: &[&str] = &[super::relax::TAU_PARAM, super::relax::FLOOR_PARAM];

/// The parameter names a script reads.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ParamReads {
    /// Names passed literally to `param` or `param_or`, sorted.
    pub names: BTreeSet<String>,
    /// The script calls `params()` (the whole map), so it may read any name.
    pub any: bool,
}

/// Scans rhai source for the parameters it reads (see the module docs).
pub fn param_reads(src: &str) -> ParamReads {
    let b = src.as_bytes();
    let mut out = ParamReads::default();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'/' if b.get(i + 1) == Some(&b'/') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if b.get(i + 1) == Some(&b'*') => i = skip_block_comment(b, i),
            b'"' | b'\'' | b'`' => i = skip_quoted(b, i).0,
            c if c.is_ascii_alphabetic() || c == b'_' => {
                let start = i;
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                    i += 1;
                }
                // `x.param(…)` would be a method of x, not the host's function.
                let is_method = start > 0 && b[start - 1] == b'.';
                let word = &src[start..i];
                if is_method || !matches!(word, "param" | "param_or" | "params") {
                    continue;
                }
                let mut j = skip_space(b, i);
                if b.get(j) != Some(&b'(') {
                    continue;
                }
                if word == "params" {
                    out.any = true;
                    continue;
                }
                j = skip_space(b, j + 1);
                if b.get(j) == Some(&b'"') {
                    let (end, text) = skip_quoted(b, j);
                    if let Some(name) = text {
                        out.names.insert(name);
                    }
                    i = end;
                }
            }
            _ => i += 1,
        }
    }
    out
}

fn skip_space(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && b[i].is_ascii_whitespace() {
        i += 1;
    }
    i
}

/// Past a `/* … */` comment starting at `i`; rhai's block comments nest.
fn skip_block_comment(b: &[u8], mut i: usize) -> usize {
    let mut depth = 0usize;
    while i < b.len() {
        if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
            depth += 1;
            i += 2;
        } else if b[i] == b'*' && b.get(i + 1) == Some(&b'/') {
            depth -= 1;
            i += 2;
            if depth == 0 {
                return i;
            }
        } else {
            i += 1;
        }
    }
    i
}

/// Past the literal opening at `i` (`"…"`, `'…'` or `` `…` ``, backslash escapes), and its text
/// when it is a plain double-quoted string without escapes.
fn skip_quoted(b: &[u8], i: usize) -> (usize, Option<String>) {
    let quote = b[i];
    let mut j = i + 1;
    let mut plain = true;
    while j < b.len() && b[j] != quote {
        if b[j] == b'\\' {
            plain = false;
            j += 1;
        }
        j += 1;
    }
    let end = (j + 1).min(b.len());
    let text = (quote == b'"' && plain && j < b.len())
        .then(|| String::from_utf8_lossy(&b[i + 1..j]).into_owned());
    (end, text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(src: &str) -> Vec<String> {
        param_reads(src).names.into_iter().collect()
    }

    #[test]
    fn finds_literal_names_and_skips_comments_strings_and_methods() {
        let src = r#"
            // param("in_line_comment")
            /* param("in_block") /* nested */ param("still_in_block") */
            let s = "param(\"in_string\")";
            let a = param_or( "alpha_lr" , 0.02);
            let b = param("budget");
            let c = x.param("method_call");
            let d = param_or(name, 1);
        "#;
        assert_eq!(names(src), ["alpha_lr", "budget"]);
        assert!(!param_reads(src).any);
    }

    #[test]
    fn params_call_reads_everything() {
        assert!(param_reads("let p = params();").any);
        assert!(!param_reads("let params = 1;").any);
    }

    #[test]
    fn every_shipped_plugin_scans() {
        let spectral = crate::engine::shipped::SHIPPED
            .iter()
            .find(|s| s.file == "spectral_gradient.rhai")
            .expect("shipped spectral_gradient");
        assert_eq!(
            names(spectral.source),
            ["grad_weight", "trend_weight", "w0_weight"]
        );
    }
}
