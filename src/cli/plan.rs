//! `adarank plan` — what every arm of a policy will cost before anything runs: memory by kind
//! at the start and at its peak, GEMM FLOPs per step and the step time they bound, on this
//! machine's CPU or a named GPU. The run's pre-flight check uses the same model of memory.

use crate::experiment::costs::{self, devices};
use anyhow::Result;
use clap::{Args, ValueEnum};
use std::path::PathBuf;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Table,
    Json,
}

#[derive(Args, Debug, Clone)]
pub struct PlanArgs {
    /// Policy file (.rank).
    pub file: PathBuf,
    /// Override a policy setting, e.g. `--set train.batch=8` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// `cpu` (this machine: its cores and available memory) or a GPU by name (h200, h100,
    /// h100-pcie, a100, a100-40gb, l40s, a10, v100, t4, rtx4090).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// GEMM rate to assume, GFLOP/s (default: measured now on the CPU; a GPU's f32 peak).
    #[arg(long)]
    pub gflops: Option<f64>,
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
}

pub fn main(args: PlanArgs) -> Result<()> {
    let policy = crate::policy::load(&args.file, &args.set).map_err(anyhow::Error::from)?;
    let device = devices::device(&args.device, args.gflops)?;
    let report = costs::plan(&policy, &device)?;
    match args.format {
        Format::Table => print!("{}", report.render()),
        Format::Json => println!("{}", serde_json::to_string_pretty(&report)?),
    }
    Ok(())
}
