//! `adarank check` — check policy files; exit 1 when any has an error (issue 4).

use clap::Args;

#[derive(Args, Debug, Clone)]
pub struct CheckArgs {}

pub fn main(_args: CheckArgs) -> anyhow::Result<()> {
    anyhow::bail!("`adarank check` is not built yet")
}
