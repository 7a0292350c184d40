//! `adarank devices` — list compute adapters with backend, type, limits and features (issue 2).

use clap::Args;

#[derive(Args, Debug, Clone)]
pub struct DevicesArgs {}

pub fn main(_args: DevicesArgs) -> anyhow::Result<()> {
    anyhow::bail!("`adarank devices` is not built yet")
}
