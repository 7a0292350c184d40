//! `adarank report` — rebuild or merge reports from finished run directories.

use crate::experiment::{report, rundir, RunDir};
use anyhow::{bail, Result};
use clap::Args;
use std::path::PathBuf;

#[derive(Args, Debug, Clone)]
pub struct ReportArgs {
    /// Run directories. One: its report.md, results.csv and plots are rebuilt in place. Several:
    /// merged into `--out`.
    #[arg(required = true)]
    pub runs: Vec<PathBuf>,
    /// Where a merged report goes (required with several run directories).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Merge runs of different experiments into one report (arms of the same name must still
    /// have the same plan); without it such a merge is refused.
    #[arg(long)]
    pub mixed: bool,
}

pub fn main(args: ReportArgs) -> Result<()> {
    let dirs = args
        .runs
        .iter()
        .map(|p| RunDir::open(p))
        .collect::<Result<Vec<_>>>()?;
    match (&dirs[..], &args.out) {
        ([one], None) => {
            // Under the run's lock: cells of a Slurm array may be finishing meanwhile.
            one.render_shared()?;
            let s = one.load_summary()?;
            let missing = report::missing_cells(&s);
            if !missing.is_empty() {
                eprintln!(
                    "{} cell(s) missing from the report: {}",
                    missing.len(),
                    missing.join(", ").replace('`', "")
                );
            }
            println!("{}", one.report().display());
        }
        (_, Some(out)) => {
            let (rd, notes) = rundir::merge(&dirs, out, args.mixed)?;
            for n in &notes {
                eprintln!("note: {n}");
            }
            let s = rd.load_summary()?;
            eprintln!(
                "merged {} runs ({}): {} cells of arms {}",
                dirs.len(),
                s.experiment,
                s.cells.len(),
                s.arms
                    .iter()
                    .map(|a| a.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            println!("{}", rd.report().display());
        }
        (_, None) => bail!("merging {} runs needs --out DIR", dirs.len()),
    }
    Ok(())
}
