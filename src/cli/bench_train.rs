//! `adarank bench train` — tokens/s of a LoRA training step, against the GEMM-bound ceiling (issue 3).

use clap::Args;

#[derive(Args, Debug, Clone)]
pub struct BenchTrainArgs {}

pub fn main(_args: BenchTrainArgs) -> anyhow::Result<()> {
    anyhow::bail!("`adarank bench train` is not built yet")
}
