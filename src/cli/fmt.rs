//! `adarank fmt` — rewrite policy files in canonical layout (--check for CI) (issue 4).

use clap::Args;

#[derive(Args, Debug, Clone)]
pub struct FmtArgs {}

pub fn main(_args: FmtArgs) -> anyhow::Result<()> {
    anyhow::bail!("`adarank fmt` is not built yet")
}
