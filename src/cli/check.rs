//! `adarank check` — check policy files; exit 1 when any has an error.
//!
//! Text output: one `FILE: ok (...)` line per good file on stdout with each arm's trainable
//! parameters, the diagnostics of the others (and a warning when LoRA arms differ in parameters)
//! on stderr, sorted by position. `--format json`: one JSON document on stdout for editors and
//! scripts, `{"files": [{"path", "ok", "arms", "seeds", "params", "warnings", "diagnostics":
//! [...]}], "errors": N}` (the fields of a diagnostic: `Diagnostics::to_json`).

use crate::experiment::arm::{timeline, Timeline};
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
    /// Print each checked policy's plan as JSON on stdout (nothing else goes there), and the
    /// ok line and each arm's timeline (the step of every action) on stderr.
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
                    let timelines: Vec<_> = p.arms.iter().map(timeline).collect();
                    entry["timelines"] = serde_json::to_value(&timelines)?;
                }
                json_files.push(entry);
            }
            Format::Text => match &result {
                Ok(p) => {
                    if args.plan {
                        let timelines: Vec<_> = p.arms.iter().map(timeline).collect();
                        let doc = serde_json::json!({ "arms": p.arms, "timelines": timelines });
                        println!("{}", serde_json::to_string_pretty(&doc)?);
                        for t in &timelines {
                            eprintln!("{}", render_timeline(t));
                        }
                    }
                    let counts: Vec<_> = p.arms.iter().filter_map(budget::arm_params).collect();
                    if args.plan {
                        // stdout holds the plan alone, so it can be piped to a JSON reader.
                        eprintln!("{}", ok_line(file, p));
                        eprint!("{}", budget::describe(&counts));
                    } else {
                        println!("{}", ok_line(file, p));
                        print!("{}", budget::describe(&counts));
                    }
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

/// One arm's timeline as text: the steps of each action, grouped by phase.
pub fn render_timeline(t: &Timeline) -> String {
    use std::fmt::Write;
    let mut out = format!("arm {}", t.arm);
    match t.steps {
        Some(n) => {
            let _ = write!(out, " ({n} steps):");
        }
        None => out.push(':'),
    }
    // One line per (action, phase), in order of first appearance.
    let mut groups: Vec<(String, String, Vec<u64>)> = Vec::new();
    for e in &t.events {
        match groups
            .iter_mut()
            .find(|(p, a, _)| *p == e.phase && *a == e.action)
        {
            Some((_, _, steps)) => steps.push(e.step),
            None => groups.push((e.phase.clone(), e.action.clone(), vec![e.step])),
        }
    }
    if groups.is_empty() && t.every_step.is_none() {
        out.push_str(" no actions");
    }
    for (phase, action, steps) in groups {
        let steps: Vec<String> = steps.iter().map(u64::to_string).collect();
        let _ = write!(out, "\n  {action} at {}", steps.join(", "));
        if !phase.is_empty() {
            let _ = write!(out, " (phase {phase})");
        }
    }
    if let Some(e) = &t.every_step {
        let _ = write!(out, "\n  every step: {e}");
    }
    if let Some(d) = &t.dynamic_from {
        let _ = write!(out, "\n  from {d} on: decided while training");
    }
    out
}
