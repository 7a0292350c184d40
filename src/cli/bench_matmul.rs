//! `adarank bench matmul` — GEMM GFLOP/s of both backends side by side, with the ratio (issue 2).

use clap::Args;

#[derive(Args, Debug, Clone)]
pub struct BenchMatmulArgs {}

pub fn main(_args: BenchMatmulArgs) -> anyhow::Result<()> {
    anyhow::bail!("`adarank bench matmul` is not built yet")
}
