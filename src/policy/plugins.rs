//! Plugin references: where a script lives and whether it defines what its role needs. A
//! script is resolved and compiled (never run) exactly as the rank engine will: the same
//! resolver (`engine::source`) and the same sandboxed engine (`engine::PluginHost`, strict
//! variables included); its defined functions are compared with the role's function and arity.

use super::ast::Span;
use super::diag::Diagnostic;
use crate::engine::source::{self, ReadError};
use crate::engine::{Limits, PluginHost};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// What a plugin is used for, and the function it must define.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Complexity,
    Allocator,
    Learner,
    Condition,
}

impl Role {
    pub fn function(self) -> (&'static str, &'static [&'static str]) {
        match self {
            Role::Complexity => ("complexity", &["adapter", "ctx"]),
            Role::Allocator => ("allocate", &["adapters", "budget"]),
            Role::Learner => ("learn", &["state", "adapters", "ctx"]),
            Role::Condition => ("done", &["ctx"]),
        }
    }
    /// "a complexity plugin", "an allocator plugin".
    pub fn a(self) -> String {
        let n = self.name();
        let article = if n.starts_with(['a', 'e', 'i', 'o', 'u']) {
            "an"
        } else {
            "a"
        };
        format!("{article} {n} plugin")
    }
    pub fn name(self) -> &'static str {
        match self {
            Role::Complexity => "complexity",
            Role::Allocator => "allocator",
            Role::Learner => "learner",
            Role::Condition => "phase condition",
        }
    }
}

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

/// The functions a compiled script defines (name → parameter names), or why it can't be used.
type Compiled = Result<Vec<(String, Vec<String>)>, Unusable>;

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
            Ok(plugin.functions())
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
        let (fname, params) = role.function();
        let want = format!("fn {fname}({})", params.join(", "));
        let fns =
            match self.compiled(path) {
                Ok(fns) => fns,
                Err(Unusable::Read(ReadError::NoSuchShipped(name))) => {
                    let names: Vec<&str> = crate::engine::shipped::SHIPPED
                        .iter()
                        .map(|s| s.file.trim_end_matches(".rhai"))
                        .collect();
                    let hint = match super::suggest::closest(name, names.iter().copied()) {
                        Some(c) => format!("did you mean `{c}`? "),
                        None => String::new(),
                    };
                    return Some(
                        Diagnostic::new(
                            span,
                            format!("no shipped plugin is called `{name}`"),
                            "not a shipped plugin",
                        )
                        .help(format!(
                        "{hint}`adarank plugins` lists the shipped plugins; for your own script \
                         give a path relative to the policy file, e.g. `plugin \"my_rule.rhai\"`"
                    )),
                    );
                }
                Err(Unusable::Read(ReadError::NotFound)) => return Some(
                    Diagnostic::new(
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
                ),
                Err(Unusable::Read(ReadError::Io(e))) => {
                    return Some(
                        Diagnostic::new(
                            span,
                            format!("{} plugin `{reference}` cannot be read: {e}", role.name()),
                            "this script",
                        )
                        .help("check the file's permissions"),
                    )
                }
                Err(Unusable::Compile(e, at)) => {
                    // The script's own position as file:line:col (the path as the policy
                    // writes it), beside the policy's.
                    let at = at
                        .map(|(l, c)| format!(" at {reference}:{l}:{c}"))
                        .unwrap_or_default();
                    return Some(
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
                        ),
                    );
                }
            };
        let same_name: Vec<&Vec<String>> = fns
            .iter()
            .filter(|(n, _)| n == fname)
            .map(|(_, p)| p)
            .collect();
        if same_name.iter().any(|p| p.len() == params.len()) {
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
