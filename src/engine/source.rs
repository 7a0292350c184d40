//! Where a plugin's text comes from: one resolver for `adarank check` and for the rank engine,
//! so a policy that checks also runs, with the very same script, from any directory.
//!
//! A reference is resolved as follows:
//! - a bare name (`"log_rule"`: no `/`, `\` or `.`) is the shipped plugin embedded in the binary
//!   (`builtin:log_rule.rhai`). The binary never reads its source tree: an installed `adarank`
//!   runs the plugins it was built with, wherever it is started;
//! - anything else is a path relative to the policy file's directory. A file that exists on disk
//!   wins; a missing `…/plugins/NAME.rhai` whose NAME is a shipped plugin falls back to the
//!   embedded copy (a policy written against a checkout's `plugins/` folder still runs when the
//!   checkout is not there); any other missing path is an error;
//! - `builtin:NAME.rhai` (what the two rules above resolve to, as written in a checked plan) is
//!   the embedded copy itself.
//!
//! Scripts are compiled by the sandboxed [`PluginHost`] in both places, so `check` applies the
//! engine's settings (strict variables, no `eval`, no `import`) and rejects what `run` would.

use super::error::{PluginError, PluginErrorKind, PluginResult};
use super::host::{Plugin, PluginHost};
use super::role::Role;
use super::shipped::{self, Shipped};
use std::path::{Component, Path, PathBuf};

/// Prefix of a resolved reference to an embedded shipped plugin.
pub const BUILTIN: &str = "builtin:";

/// The embedded plugin a resolved path names (`builtin:NAME.rhai`), if it names one.
pub fn builtin(path: &Path) -> Option<&'static Shipped> {
    shipped::find(path.to_str()?.strip_prefix(BUILTIN)?)
}

/// Whether a resolved path points at the embedded copies (known or not).
pub fn is_builtin(path: &Path) -> bool {
    path.to_str().is_some_and(|s| s.starts_with(BUILTIN))
}

/// Whether a reference is a bare shipped-plugin name rather than a path.
fn is_bare(reference: &str) -> bool {
    !reference.is_empty()
        && !reference.contains('/')
        && !reference.contains('\\')
        && !reference.contains('.')
}

/// Resolves `reference` (as written in a policy, or a plan path) against `base_dir` (the policy
/// file's directory). The result is what plans record and errors name: a lexically normalised
/// path, or `builtin:NAME.rhai`. It does not say the file exists: [`read`] does.
pub fn resolve(reference: &str, base_dir: &Path) -> PathBuf {
    if reference.starts_with(BUILTIN) {
        return PathBuf::from(reference);
    }
    if is_bare(reference) {
        return PathBuf::from(format!("{BUILTIN}{reference}.rhai"));
    }
    let p = normalize(&base_dir.join(reference));
    if p.is_file() {
        return p;
    }
    let in_plugins_dir = p
        .parent()
        .and_then(Path::file_name)
        .is_some_and(|n| n == "plugins");
    match p.file_name().and_then(|n| n.to_str()).map(shipped::find) {
        Some(Some(s)) if in_plugins_dir => PathBuf::from(format!("{BUILTIN}{}", s.file)),
        _ => p,
    }
}

/// Folds `.` and `..` lexically, so paths stay readable in plans and reports.
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

/// Why a resolved plugin could not be read.
#[derive(Clone, Debug, PartialEq)]
pub enum ReadError {
    /// `builtin:NAME.rhai` with no shipped plugin of that name.
    NoSuchShipped(String),
    /// The file does not exist.
    NotFound,
    /// It exists but cannot be read.
    Io(String),
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadError::NoSuchShipped(n) => write!(
                f,
                "no shipped plugin is called `{n}` (`adarank plugins` lists them)"
            ),
            ReadError::NotFound => f.write_str("no such file"),
            ReadError::Io(e) => f.write_str(e),
        }
    }
}

/// The text of a resolved plugin: the embedded copy for `builtin:`, else the file.
pub fn read(path: &Path) -> Result<String, ReadError> {
    if is_builtin(path) {
        return builtin(path).map(|s| s.source.to_string()).ok_or_else(|| {
            let name = path.to_string_lossy();
            let name = name.trim_start_matches(BUILTIN).trim_end_matches(".rhai");
            ReadError::NoSuchShipped(name.to_string())
        });
    }
    if std::fs::symlink_metadata(path).is_err() {
        return Err(ReadError::NotFound);
    }
    // A regular file of script size only: a directory, FIFO or device is named, never waited on.
    crate::textfile::read(path, "plugin script", crate::textfile::MAX_SCRIPT_BYTES)
        .map_err(|e| ReadError::Io(e.message))
}

/// Reads and compiles a resolved plugin with `host`'s engine. Errors name the file (and for a
/// syntax error the line and column).
pub fn load(host: &PluginHost, path: &Path) -> PluginResult<Plugin> {
    let file = path.display().to_string();
    match read(path) {
        Ok(src) => host.compile(&file, &src),
        Err(e) => Err(Box::new(PluginError {
            file,
            line: None,
            col: None,
            role: Role::Load,
            kind: PluginErrorKind::Load,
            adapter: None,
            value: None,
            message: format!("cannot read plugin: {e}"),
        })),
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
    fn bare_names_are_the_embedded_copies() {
        let p = resolve("log_rule", Path::new("anywhere"));
        assert_eq!(p, PathBuf::from("builtin:log_rule.rhai"));
        assert_eq!(
            read(&p).unwrap(),
            shipped::find("log_rule.rhai").unwrap().source
        );
        // An unknown bare name resolves, but reading it says what is wrong.
        let p = resolve("nosuch", Path::new("."));
        assert_eq!(
            read(&p),
            Err(ReadError::NoSuchShipped("nosuch".to_string()))
        );
        // A resolved reference resolves to itself (the engine re-resolves plan paths).
        assert_eq!(
            resolve("builtin:fixed.rhai", Path::new("x")),
            PathBuf::from("builtin:fixed.rhai")
        );
    }

    #[test]
    fn a_file_on_disk_wins_and_a_missing_shipped_path_falls_back() {
        let dir = tempfile::tempdir().unwrap();
        let plugins = dir.path().join("plugins");
        std::fs::create_dir(&plugins).unwrap();
        std::fs::write(plugins.join("log_rule.rhai"), "fn allocate(a, b) { [] }").unwrap();
        // On disk: the file, not the embedded copy.
        let p = resolve("plugins/log_rule.rhai", dir.path());
        assert_eq!(p, plugins.join("log_rule.rhai"));
        assert_eq!(read(&p).unwrap(), "fn allocate(a, b) { [] }");
        // Missing, but a shipped name under a `plugins/` folder: the embedded copy.
        assert_eq!(
            resolve("plugins/fixed.rhai", dir.path()),
            PathBuf::from("builtin:fixed.rhai")
        );
        // Missing elsewhere, or not a shipped name: the path, and reading it fails.
        let p = resolve("mine/fixed.rhai", dir.path());
        assert_eq!(p, dir.path().join("mine/fixed.rhai"));
        assert_eq!(read(&p), Err(ReadError::NotFound));
        let p = resolve("plugins/mine.rhai", dir.path());
        assert_eq!(read(&p), Err(ReadError::NotFound));
    }
}
