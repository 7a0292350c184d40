//! The `.rank` policy language: parse (pest, `grammar/policy.pest`), AST (`ast.rs`), checker
//! (`check.rs` over `layers.rs` and `sections.rs`), formatter (`format.rs`) and diagnostics
//! (`diag.rs`). The runner consumes the plans of `plan.rs`; docs/language.md is the reference.

pub mod arm_plan;
pub mod ast;
pub mod bounds;
mod check;
pub mod diag;
mod fields;
mod format;
pub mod known_models;
mod layers;
pub mod lm;
mod locate;
pub mod model_source;
pub mod parse;
pub mod plugins;
mod sections;
mod suggest;

pub use arm_plan::*;
pub use diag::{Diagnostic, Diagnostics, Source};
pub use locate::Locator;

use std::path::{Path, PathBuf};

/// Name under which `--set` arguments appear in diagnostics.
pub const OVERRIDE_SOURCE: &str = "--set";

/// A policy is a few kilobytes; a file far larger is the wrong file (or `/dev/zero`).
pub const MAX_POLICY_BYTES: u64 = 64 << 20;

/// Knobs of a load that tests and tools may turn.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// Compile plugin scripts and check their functions (on by default).
    pub check_plugins: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            check_plugins: true,
        }
    }
}

/// Reads, parses and checks a policy file; `overrides` are `key=value` strings (`--set`).
pub fn load(path: &Path, overrides: &[String]) -> Result<Policy, Diagnostics> {
    let name = path.display().to_string();
    let text = match crate::textfile::read(path, "policy", MAX_POLICY_BYTES) {
        Ok(t) => t,
        Err(e) => return Err(unreadable(path, &name, e)),
    };
    // A byte-order mark (Windows editors write one) carries no meaning: read past it.
    let text = match text.strip_prefix('\u{feff}') {
        Some(t) => t.to_string(),
        None => text,
    };
    let base_dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    load_with(&text, &name, &base_dir, overrides, &LoadOptions::default())
}

/// Parses and checks policy text; plugin paths resolve against `base_dir`.
pub fn load_str(
    src: &str,
    file_name: &str,
    base_dir: &Path,
    overrides: &[String],
) -> Result<Policy, Diagnostics> {
    load_with(src, file_name, base_dir, overrides, &LoadOptions::default())
}

pub fn load_with(
    src: &str,
    file_name: &str,
    base_dir: &Path,
    overrides: &[String],
    options: &LoadOptions,
) -> Result<Policy, Diagnostics> {
    let mut sources = vec![Source {
        name: file_name.to_string(),
        text: src.to_string(),
    }];
    for o in overrides {
        sources.push(Source {
            name: OVERRIDE_SOURCE.to_string(),
            text: o.clone(),
        });
    }
    let mut diags = Diagnostics::new(sources);
    let exp = match parse::parse_file(src, 0) {
        Ok(e) => Some(e),
        Err(e) => {
            diags.push(e);
            None
        }
    };
    let mut settings = Vec::new();
    for (i, o) in overrides.iter().enumerate() {
        match parse::parse_override(o, i + 1) {
            Ok(s) => settings.push(s),
            Err(mut e) => {
                if e.span.start >= o.trim_end().len() {
                    e.message = "this override ends before its value".into();
                }
                e.help =
                    Some("an override is `section.key=value`, e.g. `--set train.steps=100`".into());
                diags.push(e);
            }
        }
    }
    let Some(exp) = exp else { return Err(diags) };
    let mut checker = plugins::PluginChecker::new(!options.check_plugins);
    let mut errors = Vec::new();
    let checked = check::check(&exp, &settings, base_dir, &mut checker, &mut errors);
    for e in errors {
        diags.push(e);
    }
    match checked {
        Some(c) if diags.is_empty() => Ok(Policy {
            name: exp.name.node,
            source_path: PathBuf::from(file_name),
            source_text: src.to_string(),
            overrides: overrides.to_vec(),
            arms: c.arms,
            seeds: c.seeds,
            baseline: c.baseline,
        }),
        _ => Err(diags),
    }
}

/// The diagnostic of a policy file that cannot be read; invalid UTF-8 is shown at its place.
fn unreadable(path: &Path, name: &str, e: crate::textfile::TextFileError) -> Diagnostics {
    let Some(at) = e.offset else {
        // Missing, a directory, a device, too large: about the file as a whole, so no position.
        let mut d = Diagnostics::new(vec![Source {
            name: name.to_string(),
            text: String::new(),
        }]);
        d.push(
            Diagnostic::file(format!("cannot read {e}"))
                .help("give the path of a .rank file (relative to the current directory)"),
        );
        return d;
    };
    // The lossy text keeps every byte before the bad one, so the offset still fits.
    let bytes = std::fs::read(path).unwrap_or_default();
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let span = ast::Span {
        src: 0,
        start: at,
        end: at + '\u{fffd}'.len_utf8(),
    };
    let mut d = Diagnostics::new(vec![Source {
        name: name.to_string(),
        text,
    }]);
    d.push(Diagnostic::new(span, e.message.clone(), "not UTF-8").help("save the file as UTF-8"));
    d
}

/// Parses policy text into its syntax tree (no checking).
pub fn parse(src: &str, file_name: &str) -> Result<ast::Experiment, Diagnostics> {
    parse::parse_file(src, 0).map_err(|e| {
        let mut d = Diagnostics::new(vec![Source {
            name: file_name.to_string(),
            text: src.to_string(),
        }]);
        d.push(e);
        d
    })
}

/// The canonical layout of policy text (comments kept); fails only on a syntax error.
pub fn format(src: &str) -> Result<String, Diagnostics> {
    format::format(src).map_err(|e| {
        let mut d = Diagnostics::new(vec![Source {
            name: "<input>".into(),
            text: src.to_string(),
        }]);
        d.push(e);
        d
    })
}
