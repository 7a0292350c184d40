//! `adarank check` — check policy files; exit 1 when any has an error.
//!
//! Text output: one `FILE: ok (...)` line per good file on stdout with each arm's trainable
//! parameters, the diagnostics of the others (and a warning when LoRA arms differ in parameters)
//! on stderr, sorted by position. `--format json`: one JSON document on stdout for editors and
//! scripts, `{"files": [{"path", "ok", "arms", "seeds", "params", "warnings", "diagnostics":
//! [...]}], "errors": N}` (the fields of a diagnostic: `Diagnostics::to_json`).

use crate::experiment::budget;
use crate::policy::{self, Policy};
use clap::{Args, ValueEnum};
use std::path::PathBuf;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Diagnostics for people: file:line:col, the line, a caret, what to do.
    #[default]
    Text,
    /// One JSON document on stdout (for editors).
    Json,
}

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
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
}

fn plural(n: usize, what: &str) -> String {
    format!("{n} {what}{}", if n == 1 { "" } else { "s" })
}

fn ok_line(file: &std::path::Path, p: &Policy) -> String {
    let arms: Vec<&str> = p.arms.iter().map(|a| a.name.as_str()).collect();
    format!(
        "{}: ok ({}: {}; {})",
        file.display(),
        plural(arms.len(), "arm"),
        arms.join(", "),
        plural(p.seeds.len(), "seed"),
    )
}

pub fn main(args: CheckArgs) -> anyhow::Result<()> {
    let mut failed = 0usize;
    let mut errors = 0usize;
    let mut json_files = Vec::new();
    for file in &args.files {
        let result = policy::load(file, &args.set);
        if let Err(d) = &result {
            failed += 1;
            errors += d.len();
        }
        match args.format {
            Format::Json => {
                let (ok, arms, seeds, diags) = match &result {
                    Ok(p) => (
                        true,
                        p.arms.iter().map(|a| a.name.clone()).collect(),
                        p.seeds.clone(),
                        serde_json::json!([]),
                    ),
                    Err(d) => (false, vec![], vec![], d.to_json()),
                };
                let counts: Vec<_> = match &result {
                    Ok(p) => p.arms.iter().filter_map(budget::arm_params).collect(),
                    Err(_) => vec![],
                };
                let params: serde_json::Map<String, serde_json::Value> = counts
                    .iter()
                    .map(|a| {
                        let v = a.total().map(|(lo, hi)| serde_json::json!([lo, hi]));
                        (a.arm.clone(), v.unwrap_or(serde_json::Value::Null))
                    })
                    .collect();
                let mut entry = serde_json::json!({
                    "path": file.display().to_string(),
                    "ok": ok,
                    "arms": arms,
                    "seeds": seeds,
                    "params": params,
                    "warnings": budget::mismatch(&counts).into_iter().collect::<Vec<_>>(),
                    "diagnostics": diags,
                });
                if let (true, Ok(p)) = (args.plan, &result) {
                    entry["plan"] = serde_json::to_value(&p.arms)?;
                }
                json_files.push(entry);
            }
            Format::Text => match &result {
                Ok(p) => {
                    if args.plan {
                        println!("{}", serde_json::to_string_pretty(&p.arms)?);
                    }
                    println!("{}", ok_line(file, p));
                    let counts: Vec<_> = p.arms.iter().filter_map(budget::arm_params).collect();
                    print!("{}", budget::describe(&counts));
                    if let Some(w) = budget::mismatch(&counts) {
                        eprintln!("warning: {w}");
                    }
                }
                Err(d) => {
                    eprint!("{d}");
                    eprintln!();
                }
            },
        }
    }
    if args.format == Format::Json {
        let doc = serde_json::json!({ "files": json_files, "errors": errors });
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else if failed > 0 {
        eprintln!(
            "{} of {} failed the check",
            failed,
            plural(args.files.len(), "file")
        );
    }
    if failed > 0 {
        return Err(crate::cli::ExitStatus(crate::cli::EXIT_INPUT).into());
    }
    Ok(())
}
