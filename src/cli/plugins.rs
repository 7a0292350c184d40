//! `adarank plugins` — list shipped plugins and the plugin host API (issue 5).

use clap::Args;

#[derive(Args, Debug, Clone)]
pub struct PluginsArgs {}

pub fn main(_args: PluginsArgs) -> anyhow::Result<()> {
    anyhow::bail!("`adarank plugins` is not built yet")
}
