//! `adarank fmt` — rewrite policy files in canonical layout (--check for CI).

use crate::policy;
use anyhow::Context;
use clap::Args;
use std::path::PathBuf;

#[derive(Args, Debug, Clone)]
pub struct FmtArgs {
    /// Policy files (.rank) to format in place.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// Change nothing; list files whose layout differs and exit 1 if any does.
    #[arg(long)]
    pub check: bool,
}

pub fn main(args: FmtArgs) -> anyhow::Result<()> {
    let mut bad = 0usize;
    for file in &args.files {
        // Regular files only, size-capped: a FIFO would block the open for ever and a device
        // such as /dev/zero would be read until memory runs out.
        let text = match crate::textfile::read(file, "policy", policy::MAX_POLICY_BYTES) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("error: {e}");
                bad += 1;
                continue;
            }
        };
        let formatted = match policy::format(&text) {
            Ok(f) => f,
            Err(mut d) => {
                // Name the file in the diagnostic rather than `<input>`.
                d.sources[0].name = file.display().to_string();
                eprint!("{d}");
                bad += 1;
                continue;
            }
        };
        if formatted == text {
            continue;
        }
        if args.check {
            println!("{}: not formatted", file.display());
            bad += 1;
        } else {
            // Write beside and rename, so an interrupted fmt never leaves half a file.
            let tmp = file.with_extension("rank.fmt-tmp");
            std::fs::write(&tmp, &formatted)
                .with_context(|| format!("cannot write {}", tmp.display()))?;
            std::fs::rename(&tmp, file)
                .with_context(|| format!("cannot replace {}", file.display()))?;
            eprintln!("formatted {}", file.display());
        }
    }
    if bad > 0 {
        return Err(crate::cli::ExitStatus(1).into());
    }
    Ok(())
}
