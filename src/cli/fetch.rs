//! `adarank fetch` — download the pretrained model and datasets from package registries (issue 6).

use clap::Args;

#[derive(Args, Debug, Clone)]
pub struct FetchArgs {}

pub fn main(_args: FetchArgs) -> anyhow::Result<()> {
    anyhow::bail!("`adarank fetch` is not built yet")
}
