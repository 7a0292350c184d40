//! Typed errors of the rank engine. A plugin failure carries where in the script it happened and
//! what it returned, so the runner can save what was done so far and report it.

use super::role::Role;
use serde::Serialize;
use std::fmt;

/// What went wrong in a plugin.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PluginErrorKind {
    /// The file could not be read or does not parse.
    Load,
    /// The script does not define the role's function.
    MissingFunction,
    /// The script threw, or a runtime error (type mismatch, index out of range, ...).
    Script,
    /// The per-call time budget ran out.
    Timeout,
    /// A size or operation limit of the sandbox was hit.
    Limit,
    /// The returned value has the wrong type or length.
    BadReturn,
    /// The returned value is NaN or infinite.
    NotFinite,
    /// A rank below zero (or below r_min / above r_max where the engine enforces them).
    RankOutOfRange,
    /// The ranks add up to more than the budget.
    OverBudget,
}

/// A plugin failure: `file:line:col: role plugin: message (adapter, value)`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PluginError {
    pub file: String,
    pub line: Option<usize>,
    pub col: Option<usize>,
    pub role: Role,
    pub kind: PluginErrorKind,
    /// The adapter concerned (name, e.g. `"3.ffn_in"`), when the failure is about one adapter.
    pub adapter: Option<String>,
    /// The offending value as text (what the script returned).
    pub value: Option<String>,
    pub message: String,
}

impl fmt::Display for PluginError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some(l) = self.line {
            write!(f, ":{l}")?;
            if let Some(c) = self.col {
                write!(f, ":{c}")?;
            }
        }
        write!(f, ": {} plugin: {}", self.role.name(), self.message)?;
        if let Some(a) = &self.adapter {
            write!(f, " (adapter {a}")?;
            if let Some(v) = &self.value {
                write!(f, ", value {v}")?;
            }
            write!(f, ")")?;
        } else if let Some(v) = &self.value {
            write!(f, " (value {v})")?;
        }
        Ok(())
    }
}

impl std::error::Error for PluginError {}

/// Every failure of the rank engine.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("{0}")]
    Plugin(Box<PluginError>),
    #[error("rank engine configuration: {0}")]
    Config(String),
    #[error("adapter store: {0:#}")]
    Store(#[from] anyhow::Error),
}

impl From<Box<PluginError>> for EngineError {
    fn from(e: Box<PluginError>) -> Self {
        EngineError::Plugin(e)
    }
}

/// Host-level results: the error is boxed, it is large and rare.
pub type PluginResult<T> = std::result::Result<T, Box<PluginError>>;

impl From<PluginError> for EngineError {
    fn from(e: PluginError) -> Self {
        EngineError::Plugin(Box::new(e))
    }
}

impl EngineError {
    pub fn plugin(&self) -> Option<&PluginError> {
        match self {
            EngineError::Plugin(p) => Some(p),
            _ => None,
        }
    }
}

pub type Result<T> = std::result::Result<T, EngineError>;
