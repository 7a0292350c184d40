//! `adarank run` — run an experiment policy into a run directory (issue 7).

use clap::Args;

#[derive(Args, Debug, Clone)]
pub struct RunArgs {}

pub fn main(_args: RunArgs) -> anyhow::Result<()> {
    anyhow::bail!("`adarank run` is not built yet")
}
