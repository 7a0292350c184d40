//! Plugin references: where a script lives and whether it defines what its role needs. A
//! script is resolved and compiled (never run) exactly as the rank engine will: the same
//! resolver (`engine::source`) and the same sandboxed engine (`engine::PluginHost`, strict
//! variables included); its defined functions are compared with the role's function and arity.

use super::ast::{PluginRef, Span, Spanned, Value};
use super::diag::Diagnostic;
use crate::engine::reads::{self, ParamReads};
use crate::engine::source::{self, ReadError};
use crate::engine::{Limits, PluginHost, Role};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Resolves a plugin reference written in a policy (see [`crate::engine::source`]: a bare name
/// is the embedded shipped plugin, anything else a path relative to the policy's directory).
pub fn resolve(reference: &str, base_dir: &Path) -> PathBuf {
    source::resolve(reference, base_dir)
}

/// Why a script cannot be used at all.
enum Unusable {
    Read(ReadError),
    /// The compile error and its line and column in the script.
    Compile(String, Option<(usize, usize)>),
}

/// What a compiled script offers: the functions it defines (name → parameter names) and the
/// plugin parameters it reads.
struct Script {
    fns: Vec<(String, Vec<String>)>,
    reads: ParamReads,
}

/// A script, or why it can't be used.
type Compiled = Result<Script, Unusable>;

/// Compiles each script at most once per load (arms share plugins).
#[derive(Default)]
pub struct PluginChecker {
    cache: HashMap<PathBuf, Compiled>,
    /// Built on first use: creating the host costs more than compiling a small script.
    host: Option<PluginHost>,
    /// Off for callers that only want the plan shape (e.g. before plugins are installed).
    pub skip: bool,
}

impl PluginChecker {
    pub fn new(skip: bool) -> Self {
        Self {
            cache: HashMap::new(),
            host: None,
            skip,
        }
    }

    fn compiled(&mut self, path: &Path) -> &Compiled {
        let host = self
            .host
            .get_or_insert_with(|| PluginHost::new(Limits::default(), 0));
        self.cache.entry(path.to_path_buf()).or_insert_with(|| {
            let text = source::read(path).map_err(Unusable::Read)?;
            let plugin = host
                .compile(&path.display().to_string(), &text)
                .map_err(|e| {
                    let msg = e.message.trim_start_matches("syntax error: ");
                    Unusable::Compile(msg.to_string(), e.line.zip(e.col))
                })?;
            Ok(Script {
                fns: plugin.functions(),
                reads: reads::param_reads(&text),
            })
        })
    }

    /// Checks that `path` (written as `reference` at `span`) defines `role`'s function.
    pub fn check(
        &mut self,
        reference: &str,
        path: &Path,
        role: Role,
        span: Span,
    ) -> Option<Diagnostic> {
        if self.skip {
            return None;
        }
        let (fname, arity) = (role.function(), role.arity());
        let want = role.signature();
        let fns = match self.compiled(path) {
            Ok(script) => &script.fns,
            Err(e) => return Some(unusable(e, reference, path, role, span)),
        };
        let same_name: Vec<&Vec<String>> = fns
            .iter()
            .filter(|(n, _)| n == fname)
            .map(|(_, p)| p)
            .collect();
        if same_name.iter().any(|p| p.len() == arity) {
            return None;
        }
        let message = if let Some(p) = same_name.first() {
            format!(
                "{} plugin `{reference}` defines `{fname}` with {} parameter{} ({}), \
                 but {} is called as `{want}`",
                role.name(),
                p.len(),
                if p.len() == 1 { "" } else { "s" },
                p.join(", "),
                role.a()
            )
        } else {
            // rhai keeps functions in a hash map: sort for a stable message.
            let mut defined: Vec<&str> = fns.iter().map(|(n, _)| n.as_str()).collect();
            defined.sort_unstable();
            defined.dedup();
            let also = if defined.is_empty() {
                "it defines no functions".to_string()
            } else {
                format!("it defines {}", super::suggest::quoted(&defined))
            };
            format!(
                "{} plugin `{reference}` does not define `{fname}` ({also})",
                role.name()
            )
        };
        Some(
            Diagnostic::new(span, message, format!("needs `{want}`")).help(format!(
                "{} must define `{want}`; see docs/language.md#plugins",
                role.a()
            )),
        )
    }
}

/// The diagnostic of a plugin script that cannot be used (missing, unreadable, not compiling).
fn unusable(e: &Unusable, reference: &str, path: &Path, role: Role, span: Span) -> Diagnostic {
    match e {
        Unusable::Read(ReadError::NoSuchShipped(name)) => {
            let names: Vec<&str> = crate::engine::shipped::SHIPPED
                .iter()
                .map(|s| s.file.trim_end_matches(".rhai"))
                .collect();
            let hint = match super::suggest::closest(name, names.iter().copied()) {
                Some(c) => format!("did you mean `{c}`? "),
                None => String::new(),
            };
            Diagnostic::new(
                span,
                format!("no shipped plugin is called `{name}`"),
                "not a shipped plugin",
            )
            .help(format!(
                "{hint}`adarank plugins` lists the shipped plugins; for your own script \
                 give a path relative to the policy file, e.g. `plugin \"my_rule.rhai\"`"
            ))
        }
        Unusable::Read(ReadError::NotFound) => Diagnostic::new(
            span,
            format!(
                "{} plugin `{reference}` not found at {}",
                role.name(),
                path.display()
            ),
            "no such file",
        )
        .help(
            "the path is relative to the policy file's directory; create the script \
             or fix the path",
        ),
        Unusable::Read(ReadError::Io(e)) => Diagnostic::new(
            span,
            format!("{} plugin `{reference}` cannot be read: {e}", role.name()),
            "this script",
        )
        .help("check the file's permissions"),
        Unusable::Compile(e, at) => {
            // The script's own position as file:line:col (the path as the policy
            // writes it), beside the policy's.
            let at = at
                .map(|(l, c)| format!(" at {reference}:{l}:{c}"))
                .unwrap_or_default();
            Diagnostic::new(
                span,
                format!(
                    "{} plugin `{reference}` does not compile{at}: {e}",
                    role.name()
                ),
                "this script",
            )
            .help(
                "fix the script; `adarank check` compiles it as `adarank run` will \
                 (strict variables: every variable must be declared with `let`)",
            )
        }
    }
}

/// A plugin parameter a policy sets, with the span of its name.
pub struct ParamSetting {
    pub name: Spanned<String>,
    pub value: serde_json::Value,
}

impl PluginChecker {
    /// The parameter names a policy may set for the script at `path` in `role`: those it reads,
    /// the relaxation's for a learner that defines `learn_step`, none that the engine sets.
    /// `None` when any name goes (plugin checks are off, or the script reads `params()`).
    fn settable(&mut self, path: &Path, role: Role) -> Option<Vec<String>> {
        if self.skip {
            return None;
        }
        let script = self.compiled(path).as_ref().ok()?;
        if script.reads.any {
            return None;
        }
        let relaxed = role == Role::Learner
            && script.fns.iter().any(|(n, p)| {
                n == Role::LearnerStep.function() && p.len() == Role::LearnerStep.arity()
            });
        let mut names: Vec<String> = script.reads.names.iter().cloned().collect();
        if relaxed {
            names.extend(reads::RELAXATION.iter().map(|s| s.to_string()));
        }
        names.retain(|n| !reads::ENGINE_SET.iter().any(|(e, _)| e == n));
        names.sort();
        names.dedup();
        Some(names)
    }

    /// Checks the parameters a policy sets for a plugin that passed [`Self::check`]: each is
    /// one the script reads (with a suggestion for a misspelt name), set once, not one the
    /// engine sets, and a number, a string or `true`/`false`. All mistakes go to `d`.
    pub fn check_params(
        &mut self,
        r: &PluginRef,
        path: &Path,
        role: Role,
        d: &mut Vec<Diagnostic>,
    ) -> Option<Vec<ParamSetting>> {
        if r.params.is_empty() {
            return Some(Vec::new());
        }
        let settable = self.settable(path, role);
        let before = d.len();
        let mut out: Vec<ParamSetting> = Vec::new();
        for s in &r.params {
            let key = &s.path[0];
            if let Some((_, from)) = reads::ENGINE_SET.iter().find(|(e, _)| *e == key.node) {
                d.push(
                    Diagnostic::new(
                        key.span,
                        format!("`{}` is set by the engine from `{from}`", key.node),
                        "not a policy's to set",
                    )
                    .help(format!("set `{from}` instead")),
                );
                continue;
            }
            if let Some(names) = &settable {
                if !names.contains(&key.node) {
                    d.push(unknown_param(key, &r.path.node, role, names));
                    continue;
                }
            }
            if out.iter().any(|p| p.name.node == key.node) {
                d.push(
                    Diagnostic::new(key.span, format!("`{}` is set twice", key.node), "again")
                        .help("keep one of the two"),
                );
                continue;
            }
            match param_value(&s.value) {
                Ok(value) => out.push(ParamSetting {
                    name: key.clone(),
                    value,
                }),
                Err(diag) => d.push(diag),
            }
        }
        (d.len() == before).then_some(out)
    }
}

fn unknown_param(
    key: &Spanned<String>,
    reference: &str,
    role: Role,
    names: &[String],
) -> Diagnostic {
    let candidates = names.iter().map(String::as_str);
    let hint = match super::suggest::closest(&key.node, candidates) {
        Some(c) => format!("did you mean `{c}`? "),
        None => String::new(),
    };
    let reads = if names.is_empty() {
        "it reads none".to_string()
    } else {
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        format!("it reads {}", super::suggest::quoted(&names))
    };
    Diagnostic::new(
        key.span,
        format!(
            "{} plugin `{reference}` has no parameter `{}`",
            role.name(),
            key.node
        ),
        "unknown parameter",
    )
    .help(format!(
        "{hint}{reads} (the names its source passes to `param` or `param_or`)"
    ))
}

/// A plugin parameter's value as the engine hands it to scripts: a whole number as written
/// without a decimal point or exponent stays an integer (rhai keeps ints and floats apart).
fn param_value(v: &Spanned<Value>) -> Result<serde_json::Value, Diagnostic> {
    let wrong = |found: String| {
        Diagnostic::new(
            v.span,
            format!("a plugin parameter is a number, a string or true/false, found {found}"),
            "here",
        )
        .help("write e.g. `grad_weight = 0.2`, `mode = \"fast\"` or `resize = true`")
    };
    match &v.node {
        Value::Number(n) if n.is_share() => Err(wrong(format!("the share `{}`", n.text))),
        Value::Number(n) => {
            let whole = !n.text.contains(['.', 'e', 'E']);
            if whole && n.value.abs() <= 9.007_199_254_740_992e15 {
                Ok((n.value as i64).into())
            } else {
                Ok(n.value.into())
            }
        }
        Value::Str(s) => Ok(s.clone().into()),
        Value::Word(w) if w == "true" || w == "false" => Ok((w == "true").into()),
        other => Err(wrong(other.describe())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_names_resolve_to_embedded_plugins_and_paths_to_the_policy_dir() {
        assert_eq!(
            resolve("log_rule", Path::new("anywhere")),
            PathBuf::from("builtin:log_rule.rhai")
        );
        assert_eq!(
            resolve("p/x.rhai", Path::new("dir")),
            PathBuf::from("dir/p/x.rhai")
        );
    }
}
