//! `adarank run` — run an experiment policy into a run directory (issue 7).

use crate::experiment::runner::{self, DeviceChoice, RunOptions};
use anyhow::{anyhow, Result};
use clap::Args;
use std::path::{Path, PathBuf};

/// The quickstart experiment, run when no policy file is given.
pub const QUICKSTART: &str = include_str!("../../examples/quickstart.rank");

#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    /// Policy file (.rank); without one, the built-in quickstart (examples/quickstart.rank).
    pub file: Option<PathBuf>,
    /// Override a policy setting, e.g. `--set train.steps=50` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Where to compute; overrides the policy's `train.device` (default: the policy's, which
    /// defaults to auto: a real GPU if there is one, else the CPU backend).
    #[arg(long, value_enum)]
    pub device: Option<DeviceChoice>,
    /// Run directory (default: runs/<experiment>-<timestamp>).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Continue a stopped run: finished cells are kept, the interrupted one restarts from its
    /// last checkpoint.
    #[arg(long, value_name = "RUN_DIR", conflicts_with_all = ["file", "set", "out"])]
    pub resume: Option<PathBuf>,
    /// No progress output.
    #[arg(long)]
    pub quiet: bool,
    /// Only this arm (repeatable).
    #[arg(long = "arm", value_name = "NAME")]
    pub arms: Vec<String>,
    /// Only this seed (repeatable).
    #[arg(long = "seed", value_name = "N")]
    pub seeds: Vec<u64>,
    /// Stop after this many training steps, as if killed (for testing resume).
    #[arg(long, hide = true)]
    pub stop_after_steps: Option<u64>,
}

pub fn main(args: RunArgs) -> Result<()> {
    let policy = if args.resume.is_some() {
        None
    } else {
        let loaded = match &args.file {
            Some(path) => crate::policy::load(path, &args.set),
            None => crate::policy::load_str(
                QUICKSTART,
                "examples/quickstart.rank",
                Path::new("examples"),
                &args.set,
            ),
        };
        Some(loaded.map_err(|d| anyhow!("{d}"))?)
    };
    let from_policy = match (&policy, &args.resume) {
        (Some(p), _) => runner::policy_device(p),
        (None, Some(dir)) => runner::policy_device(&runner::saved_policy(dir)?),
        (None, None) => DeviceChoice::Auto,
    };
    let opts = RunOptions {
        out: args.out,
        resume: args.resume,
        device: args.device.unwrap_or(from_policy),
        quiet: args.quiet,
        arms: args.arms,
        seeds: args.seeds,
        stop_after_steps: args.stop_after_steps,
    };
    let dir = runner::run(policy, &opts)?;
    if !opts.quiet {
        println!("{}", dir.join("report.md").display());
    }
    Ok(())
}
