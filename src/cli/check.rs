//! `adarank check` — check policy files; exit 1 when any has an error (issue 4).

use crate::experiment::arm::{timeline, Timeline};
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
                    let timelines: Vec<_> = p.arms.iter().map(timeline).collect();
                    println!(
                        "{}",
                        serde_json::to_string_pretty(
                            &serde_json::json!({ "arms": p.arms, "timelines": timelines })
                        )?
                    );
                    for t in &timelines {
                        eprintln!("{}", render_timeline(t));
                    }
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
