//! `adarank plugins` — list shipped plugins and the plugin host API.

use crate::engine::shipped::{find, SHIPPED};
use clap::Args;

/// The plugin API reference (plugins/README.md), embedded.
pub const API: &str = include_str!("../../plugins/README.md");

#[derive(Args, Debug, Clone)]
pub struct PluginsArgs {
    /// Print the full plugin API reference (plugins/README.md).
    #[arg(long)]
    pub api: bool,
    /// Print the source of one shipped plugin, e.g. `--show log_rule.rhai`.
    #[arg(long, value_name = "FILE")]
    pub show: Option<String>,
}

/// The listing: one line per shipped plugin (file, role, header description), then the roles.
pub fn listing() -> String {
    let mut s = String::from(
        "Shipped plugins (embedded; name them in a policy by name, e.g. plugin \"log_rule\"):\n",
    );
    let w = SHIPPED.iter().map(|p| p.file.len()).max().unwrap_or(0);
    for p in SHIPPED {
        s += &format!("  {:w$}  {:11}  {}\n", p.file, p.role(), p.description());
    }
    s += "\nRoles (rhai functions):\n";
    s += "  complexity  fn complexity(adapter, ctx) -> float  (C > 0)\n";
    s += "  allocator   fn allocate(adapters, budget) -> array of int (one per adapter)\n";
    s += "  learner     fn learn(state, adapters, ctx) -> map  (#{alpha: .., beta: ..})\n";
    s += "  condition   fn done(ctx) -> bool\n";
    s += "\nHelpers: sum mean max_of min_of clamp sorted_desc argsort_desc erank stable_rank\n";
    s += "  round_to_budget(reals, budget, r_min, r_max)\n";
    s += "  round_to_param_budget(reals, costs, params, r_min, r_max) -> #{ranks, params, gap}\n";
    s += "  param param_or params rand print\n";
    s += "\n`adarank plugins --api` prints the full reference; `--show FILE` a plugin's source.\n";
    s
}

pub fn main(args: PluginsArgs) -> anyhow::Result<()> {
    if let Some(f) = &args.show {
        let p = find(f)
            .or_else(|| find(&format!("{f}.rhai")))
            .ok_or_else(|| {
                let names: Vec<&str> = SHIPPED.iter().map(|p| p.file).collect();
                anyhow::anyhow!("no shipped plugin `{f}` (shipped: {})", names.join(", "))
            })?;
        print!("{}", p.source);
        return Ok(());
    }
    if args.api {
        print!("{API}");
        return Ok(());
    }
    print!("{}", listing());
    Ok(())
}
