//! `adarank run` — run an experiment policy into a run directory. Progress goes to stderr; the
//! result table and the report's path to stdout.

use crate::experiment::run::{self as runner, DeviceChoice, RunOptions};
use crate::experiment::slurm::{self, SlurmOptions};
use anyhow::Result;
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
    /// Submit the cells to Slurm as one job array (a task per arm × seed, each running its cell
    /// into the run directory) instead of running them here. With --resume: submit again the
    /// cells that are neither done nor queued.
    #[arg(long)]
    pub slurm: bool,
    /// Slurm partition of the tasks.
    #[arg(long, requires = "slurm")]
    pub partition: Option<String>,
    /// Wall-clock limit of each task (sbatch's --time, e.g. 2:00:00).
    #[arg(long, requires = "slurm")]
    pub time: Option<String>,
    /// Generic resources of each task (sbatch's --gres, e.g. gpu:1).
    #[arg(long, requires = "slurm")]
    pub gres: Option<String>,
    /// Write the run directory and the sbatch script and print the script; submit nothing.
    #[arg(long, requires = "slurm")]
    pub dry_run: bool,
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
        match loaded {
            Ok(p) => Some(p),
            Err(d) => {
                // The diagnostics render themselves (with their own `error:` lines).
                eprint!("{d}");
                return Err(crate::cli::ExitStatus(crate::cli::EXIT_INPUT).into());
            }
        }
    };
    // `--device` overrides the policy's `train.device`.
    let from_policy = match (&policy, &args.resume) {
        (Some(p), _) => runner::policy_device(p),
        (None, Some(dir)) => runner::policy_device(&runner::saved_policy(dir)?),
        (None, None) => DeviceChoice::Auto,
    };
    let device = args.device.unwrap_or(from_policy);
    if args.slurm {
        return slurm(args, policy, device);
    }
    let opts = RunOptions {
        out: args.out,
        resume: args.resume,
        device,
        quiet: args.quiet,
        arms: args.arms,
        seeds: args.seeds,
        stop_after_steps: args.stop_after_steps,
    };
    let dir = runner::run(policy, &opts)?;
    let summary = crate::experiment::rundir::RunDir::open(&dir)?.load_summary()?;
    print!("{}", crate::experiment::progress::result_table(&summary));
    println!("report: {}", dir.join("report.md").display());
    Ok(())
}

/// `--slurm`: the cells as a Slurm job array.
fn slurm(args: RunArgs, policy: Option<crate::policy::Policy>, device: DeviceChoice) -> Result<()> {
    let o = SlurmOptions {
        partition: args.partition,
        time: args.time,
        gres: args.gres,
        dry_run: args.dry_run,
        device,
        exe: None,
    };
    let sub = match (&args.resume, &policy) {
        (Some(dir), _) => slurm::resubmit(dir, &o)?,
        (None, Some(p)) => slurm::submit_new(p, args.out.as_deref(), &args.arms, &args.seeds, &o)?,
        (None, None) => unreachable!("a policy is loaded unless resuming"),
    };
    if o.dry_run {
        print!("{}", std::fs::read_to_string(&sub.script)?);
        println!(
            "# dry run: nothing submitted. Run directory {}; submit with:\n# {}",
            sub.run_dir.display(),
            sub.command
                .iter()
                .map(|a| slurm::sh_quote(a))
                .collect::<Vec<_>>()
                .join(" ")
        );
    } else {
        println!(
            "submitted job {} (array {}) for {}; follow it with `adarank status {}`",
            sub.job_id.as_deref().unwrap_or("?"),
            sub.array,
            sub.run_dir.display(),
            sub.run_dir.display()
        );
    }
    Ok(())
}
