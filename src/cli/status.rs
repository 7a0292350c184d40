//! `adarank status` — the state of every cell of a run directory (pending, running, done,
//! failed with its error, lost when its Slurm task was killed), with how to resubmit.

use crate::experiment::{status, RunDir};
use anyhow::Result;
use clap::Args;
use std::path::PathBuf;

#[derive(Args, Debug, Clone)]
pub struct StatusArgs {
    /// Run directory.
    pub run: PathBuf,
    /// Print the states as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn main(args: StatusArgs) -> Result<()> {
    let rd = RunDir::open(&args.run)?;
    let st = status::status(&rd)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&st.cells)?);
    } else {
        print!("{}", st.render(&rd));
    }
    Ok(())
}
