//! `adarank eval RUN_DIR_OR_CELL_DIR [--data FILE] [--split dev|test]` — evaluate trained cells:
//! loss and accuracy (spans: exact match and token F1) per cell on stdout, every example's
//! prediction as JSONL and CSV under `--out` (default `<run>/eval/`, or `<cell>/eval/`).

use crate::backend::device::{Device, DeviceChoice};
use crate::backend::Backend;
use crate::data::prepare::Split;
use crate::experiment::evaluate::{self, CellDir, Evaluation};
use crate::experiment::fsio::write_atomic;
use crate::experiment::progress::text_table;
use crate::experiment::rundir::SUMMARY;
use anyhow::Result;
use clap::Args;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Args, Debug, Clone)]
pub struct EvalArgs {
    /// A run directory (every finished cell), or one cell's folder (`<run>/adapters/<arm>-seed<k>`).
    pub target: PathBuf,
    /// Evaluate on this file instead (same format as the arm's data: TSV, JSONL or SQuAD JSON).
    #[arg(long, value_name = "FILE")]
    pub data: Option<PathBuf>,
    /// Evaluate on this split of the arm's data set (default: the one the run evaluated). Data
    /// sets without labelled test files (GLUE, SQuAD, JSONL) evaluate their dev file.
    #[arg(long, value_enum)]
    pub split: Option<Split>,
    /// Only this arm (repeatable).
    #[arg(long = "arm", value_name = "NAME")]
    pub arms: Vec<String>,
    /// Only this seed (repeatable).
    #[arg(long = "seed", value_name = "N")]
    pub seeds: Vec<u64>,
    #[arg(long, value_enum, default_value_t = DeviceChoice::Auto)]
    pub device: DeviceChoice,
    /// Where predictions go (default: `eval/` in the run directory or cell folder).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// The label of an evaluation set in file names and tables.
fn set_label(args: &EvalArgs) -> String {
    match (&args.data, args.split) {
        (Some(f), _) => f
            .file_stem()
            .map(|s| s.to_string_lossy().to_string())
            .unwrap_or_else(|| "data".into()),
        (None, Some(s)) => s.name().to_string(),
        (None, None) => "eval".to_string(),
    }
}

fn run_all<B: Backend>(be: Arc<B>, cells: &[CellDir], args: &EvalArgs) -> Result<()> {
    let out_dir = args.out.clone().unwrap_or_else(|| args.target.join("eval"));
    let label = set_label(args);
    let mut csv = String::from("arm,seed,set,examples,loss,accuracy,span_f1,predictions\n");
    let mut rows: Vec<[String; 6]> = vec![[
        "arm".into(),
        "seed".into(),
        "examples".into(),
        "loss".into(),
        "accuracy".into(),
        "predictions".into(),
    ]];
    for cell in cells {
        let (arm, seed) = (&cell.info.arm.name, cell.info.seed);
        let ev: Evaluation =
            evaluate::eval_cell(be.clone(), cell, args.data.as_deref(), args.split)?;
        let stem = evaluate::predictions_stem(&out_dir, arm, seed, Some(&label));
        let written = if ev.predictions.is_empty() {
            "—".to_string()
        } else {
            evaluate::write_predictions(&stem, &ev.predictions)?;
            format!("{}.jsonl", stem.display())
        };
        let acc = match ev.span_f1 {
            Some(f1) => format!("EM {:.2}%, F1 {:.2}%", ev.accuracy * 100.0, f1 * 100.0),
            None if ev.predictions.is_empty() => "—".to_string(),
            None => format!("{:.2}%", ev.accuracy * 100.0),
        };
        rows.push([
            arm.clone(),
            seed.to_string(),
            ev.examples.to_string(),
            format!("{:.4}", ev.loss),
            acc,
            written.clone(),
        ]);
        // Unrounded figures, for comparing with results.csv.
        csv += &format!(
            "{arm},{seed},{label},{},{},{},{},{}\n",
            ev.examples,
            ev.loss,
            if ev.predictions.is_empty() {
                String::new()
            } else {
                ev.accuracy.to_string()
            },
            ev.span_f1.map(|f| f.to_string()).unwrap_or_default(),
            if ev.predictions.is_empty() {
                String::new()
            } else {
                written
            }
        );
    }
    std::fs::create_dir_all(&out_dir)?;
    let results = out_dir.join(format!("results-{label}.csv"));
    write_atomic(&results, csv.as_bytes())?;
    println!("evaluation set: {label}");
    let rows: Vec<Vec<String>> = rows.into_iter().map(Vec::from).collect();
    print!("{}", text_table(&rows, |i| (1..5).contains(&i), false));
    println!("results: {}", results.display());
    Ok(())
}

pub fn main(args: EvalArgs) -> Result<()> {
    let cells = evaluate::locate(&args.target, &args.arms, &args.seeds)?;
    if args.target.join(SUMMARY).is_file() {
        eprintln!(
            "evaluating {} cell{} of {}",
            cells.len(),
            if cells.len() == 1 { "" } else { "s" },
            args.target.display()
        );
    }
    match Device::open(args.device)? {
        Device::Cpu(b) => run_all(b, &cells, &args),
        Device::Gpu(b) => run_all(b, &cells, &args),
    }
}
