//! The `.rank` policy language: parse (pest, `grammar/policy.pest`), AST (`ast.rs`), checker
//! (`check.rs` over `layers.rs` and `sections.rs`), formatter (`format.rs`) and diagnostics
//! (`diag.rs`). The runner consumes the plans of `plan.rs`; docs/language.md is the reference.

pub mod ast;
mod check;
pub mod diag;
mod fields;
mod format;
pub mod known_models;
mod layers;
mod locate;
pub mod parse;
pub mod plan;
pub mod plugins;
mod sections;
mod suggest;

pub use diag::{Diagnostic, Diagnostics, Source};
pub use locate::Locator;
pub use plan::*;

use std::path::{Path, PathBuf};

/// Name under which `--set` arguments appear in diagnostics.
pub const OVERRIDE_SOURCE: &str = "--set";

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
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            let mut d = Diagnostics::new(vec![Source {
                name: name.clone(),
                text: String::new(),
            }]);
            let (what, help) = match e.kind() {
                std::io::ErrorKind::NotFound => (
                    "no such file".to_string(),
                    "check the path; it is relative to the current directory",
                ),
                std::io::ErrorKind::InvalidData => (
                    "not UTF-8 text".to_string(),
                    "a policy is a UTF-8 text file (`.rank`)",
                ),
                _ => (e.to_string(), "check the path and the file's permissions"),
            };
            d.push(Diagnostic::file(format!("cannot read {name}: {what}")).help(help));
            return Err(d);
        }
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
