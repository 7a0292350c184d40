//! `adarank check` — check policy files; exit 1 when any has an error (issue 4).

use crate::experiment::budget;
use crate::policy;
use clap::Args;
use std::path::PathBuf;

#[derive(Args, Debug, Clone)]
pub struct CheckArgs {
    /// Policy files (.rank) to check.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// Override a setting as the file would write it, e.g. `--set train.steps=100`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Print each checked policy's plan as JSON.
    #[arg(long)]
    pub plan: bool,
}

pub fn main(args: CheckArgs) -> anyhow::Result<()> {
    let mut failed = 0usize;
    for file in &args.files {
        match policy::load(file, &args.set) {
            Ok(p) => {
                if args.plan {
                    println!("{}", serde_json::to_string_pretty(&p.arms)?);
                }
                let arms: Vec<&str> = p.arms.iter().map(|a| a.name.as_str()).collect();
                eprintln!(
                    "{}: ok ({} arm{}: {}; {} seed{})",
                    file.display(),
                    arms.len(),
                    if arms.len() == 1 { "" } else { "s" },
                    arms.join(", "),
                    p.seeds.len(),
                    if p.seeds.len() == 1 { "" } else { "s" },
                );
                let counts: Vec<_> = p.arms.iter().filter_map(budget::arm_params).collect();
                eprint!("{}", budget::describe(&counts));
                if let Some(w) = budget::mismatch(&counts) {
                    eprintln!("warning: {w}");
                }
            }
            Err(d) => {
                failed += 1;
                eprint!("{d}");
                eprintln!();
            }
        }
    }
    if failed > 0 {
        eprintln!(
            "{failed} of {} file{} failed the check",
            args.files.len(),
            if args.files.len() == 1 { "" } else { "s" }
        );
        return Err(crate::cli::ExitStatus(1).into());
    }
    Ok(())
}
