//! Plugin references: where a script lives and whether it defines what its role needs. A
//! script is compiled (never run) with a plain `rhai::Engine`; its defined functions are
//! compared with the role's required function and arity.

use super::ast::Span;
use super::diag::Diagnostic;
use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};

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

/// The folder of shipped plugins, for references by bare name (`plugin "log_rule"`).
pub fn shipped_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("plugins")
}

/// Resolves a reference: a bare name (no `/`, no extension) means a shipped plugin; anything
/// else is a path relative to the policy's directory. `..` is folded lexically so paths stay
/// readable in plans and reports.
pub fn resolve(reference: &str, base_dir: &Path) -> PathBuf {
    let bare = !reference.contains('/') && !reference.contains('\\') && !reference.contains('.');
    let p = if bare {
        shipped_dir().join(format!("{reference}.rhai"))
    } else {
        base_dir.join(reference)
    };
    normalize(&p)
}

pub fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                let popped =
                    matches!(out.components().next_back(), Some(Component::Normal(_))) && out.pop();
                if !popped {
                    out.push("..");
                }
            }
            other => out.push(other.as_os_str()),
        }
    }
    if out.as_os_str().is_empty() {
        out.push(".");
    }
    out
}

/// The functions a compiled script defines (name → parameter names), or why it can't be read.
type Compiled = Result<Vec<(String, Vec<String>)>, String>;

/// Compiles each script at most once per load (arms share plugins).
#[derive(Default)]
pub struct PluginChecker {
    cache: HashMap<PathBuf, Compiled>,
    /// Built on first use: creating an engine costs more than compiling a small script.
    engine: Option<rhai::Engine>,
    /// Off for callers that only want the plan shape (e.g. before plugins are installed).
    pub skip: bool,
}

impl PluginChecker {
    pub fn new(skip: bool) -> Self {
        Self {
            cache: HashMap::new(),
            engine: None,
            skip,
        }
    }

    fn compiled(&mut self, path: &Path) -> &Compiled {
        let engine = self.engine.get_or_insert_with(rhai::Engine::new);
        self.cache.entry(path.to_path_buf()).or_insert_with(|| {
            let text =
                crate::textfile::read(path, "plugin script", crate::textfile::MAX_SCRIPT_BYTES)
                    .map_err(|e| e.message)?;
            let ast = engine
                .compile(&text)
                .map_err(|e| format!("compile error: {e}"))?;
            Ok(ast
                .iter_functions()
                .map(|f| {
                    (
                        f.name.to_string(),
                        f.params.iter().map(|p| p.to_string()).collect(),
                    )
                })
                .collect())
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
        if !path.exists() {
            let help = if path.starts_with(shipped_dir()) {
                format!(
                    "no shipped plugin is called `{reference}`; `adarank plugins` lists them, \
                     or give a path relative to the policy file"
                )
            } else {
                "the path is relative to the policy file's directory; create the script or fix \
                 the path"
                    .to_string()
            };
            return Some(
                Diagnostic::new(
                    span,
                    format!(
                        "{} plugin `{reference}` not found at {}",
                        role.name(),
                        path.display()
                    ),
                    "no such file",
                )
                .help(help),
            );
        }
        match self.compiled(path) {
            Err(e) => Some(
                Diagnostic::new(
                    span,
                    format!("{} plugin `{reference}` cannot be read: {e}", role.name()),
                    "this script",
                )
                .help("fix the script; `adarank check` compiles it without running it"),
            ),
            Ok(fns) => {
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
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_folds_parent_dirs() {
        assert_eq!(
            normalize(Path::new("examples/../plugins/x.rhai")),
            PathBuf::from("plugins/x.rhai")
        );
        assert_eq!(normalize(Path::new("../a/./b")), PathBuf::from("../a/b"));
    }

    #[test]
    fn bare_names_resolve_to_shipped_plugins() {
        assert_eq!(
            resolve("log_rule", Path::new("anywhere")),
            shipped_dir().join("log_rule.rhai")
        );
        assert_eq!(
            resolve("p/x.rhai", Path::new("dir")),
            PathBuf::from("dir/p/x.rhai")
        );
    }
}
