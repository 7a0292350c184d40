//! The shipped plugins, embedded in the binary so `adarank plugins` and policies that name a
//! shipped plugin work from any directory.

/// One shipped plugin script.
#[derive(Clone, Copy, Debug)]
pub struct Shipped {
    /// File name under `plugins/`.
    pub file: &'static str,
    pub source: &'static str,
}

macro_rules! shipped {
    ($($f:literal),* $(,)?) => {
        &[$(Shipped { file: $f, source: include_str!(concat!("../../plugins/", $f)) }),*]
    };
}

pub const SHIPPED: &[Shipped] = shipped!(
    "spectral_gradient.rhai",
    "learn_gates.rhai",
    "fit_proportional.rhai",
    "log_rule.rhai",
    "fixed.rhai",
    "adalora.rhai",
    "eva.rhai",
    "random.rhai",
    "loss_plateau.rhai",
);

/// The shipped plugin with this file name.
pub fn find(file: &str) -> Option<&'static Shipped> {
    SHIPPED.iter().find(|s| s.file == file)
}

impl Shipped {
    /// The one-line description: the script's first comment line.
    pub fn description(&self) -> &'static str {
        self.source
            .lines()
            .find_map(|l| l.trim().strip_prefix("//"))
            .map(str::trim)
            .unwrap_or("")
    }
    /// The role named on the header's `// role: ...` line.
    pub fn role(&self) -> &'static str {
        self.source
            .lines()
            .take_while(|l| l.trim().starts_with("//") || l.trim().is_empty())
            .find_map(|l| l.trim().strip_prefix("//")?.trim().strip_prefix("role:"))
            .map(str::trim)
            .unwrap_or("")
    }
}
