//! Evaluating trained cells and writing per-example predictions: what `adarank eval` does with a
//! run directory or one cell's folder, and what `adarank run` writes for the final evaluation of
//! every cell (`predictions/<arm>-seed<k>.{jsonl,csv}`).
//!
//! A cell is rebuilt exactly as the runner built it (same arm plan, seed, base model and task),
//! then its trained state is loaded: `final_state.safetensors` when the folder has it (exact, any
//! arm), else the PEFT export. Without `--data`/`--split` the evaluation set is the one the run
//! evaluated (the split in `adarank.json`, built as the runner built it), so loss and accuracy
//! equal `results.csv`'s to the last bit on the same backend.

use super::arm::load_pretrained;
use super::export::{self, CellInfo};
use super::fsio::write_atomic;
use super::records::CellStatus;
use super::rundir::{file_safe, RunDir};
use crate::backend::Backend;
use crate::data::glue::Example;
use crate::data::hf::PretrainedEncoder;
use crate::data::prepare::Split;
use crate::data::{ClassifyTask, DataError, TextFormat};
use crate::model::{EvalOut, Head, Model, Target};
use crate::policy::DataSpec;
use crate::train::Task;
use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// One held-out example's outcome.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Prediction {
    /// Position in the evaluation set (0-based).
    pub index: usize,
    /// The data's id (SQuAD question id) or the example's line in its file; the index when
    /// the data has neither (synthetic tasks).
    pub id: String,
    pub text: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text_pair: Option<String>,
    /// The class, or `[start, end]` token positions of the answer (0 = no answer).
    pub label: serde_json::Value,
    pub predicted: serde_json::Value,
    pub correct: bool,
    /// Every class's logit; for spans the start and end logits of the predicted pair.
    pub logits: Vec<f32>,
}

/// Loss and accuracy over an evaluation set, with every prediction.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Evaluation {
    pub examples: usize,
    pub loss: f64,
    /// Classes: accuracy. Spans: exact match (start and end both right).
    pub accuracy: f64,
    /// Spans: mean token-overlap F1 of the predicted and the labelled span.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub span_f1: Option<f64>,
    #[serde(skip)]
    pub predictions: Vec<Prediction>,
}

/// Token-overlap F1 of two inclusive token spans; (0, 0) means "no answer", which matches only
/// itself.
pub fn span_f1(pred: (u32, u32), gold: (u32, u32)) -> f64 {
    let none = |s: (u32, u32)| s == (0, 0);
    if none(pred) || none(gold) {
        return (pred == gold) as u8 as f64;
    }
    if pred.0 > pred.1 {
        return 0.0;
    }
    let overlap = (pred.1.min(gold.1) + 1).saturating_sub(pred.0.max(gold.0)) as f64;
    if overlap == 0.0 {
        return 0.0;
    }
    let p = overlap / (pred.1 - pred.0 + 1) as f64;
    let r = overlap / (gold.1 - gold.0 + 1) as f64;
    2.0 * p * r / (p + r)
}

/// Evaluates `model` on `task`'s held-out batches (as the training loop does), keeping every
/// prediction of a classification or span head.
pub fn predict<B: Backend>(model: &mut Model<B>, task: &dyn Task) -> Result<Evaluation> {
    let examples = task.eval_examples();
    let mut total = EvalOut::default();
    let mut predictions = Vec::new();
    let mut f1_sum = 0.0;
    for batch in task.eval_batches() {
        let out = model.evaluate(batch).context("evaluation")?;
        match (model.head(), &batch.target) {
            (Head::Classify { classes, .. }, Target::Classes(y)) => {
                for (s, &label) in y.iter().enumerate() {
                    let p = out.preds[s];
                    predictions.push(Prediction {
                        index: predictions.len(),
                        id: String::new(),
                        text: String::new(),
                        text_pair: None,
                        label: label.into(),
                        predicted: p.into(),
                        correct: p == label,
                        logits: out.logits[s * classes..(s + 1) * classes].to_vec(),
                    });
                }
            }
            (Head::Span, Target::Spans { start, end }) => {
                for s in 0..start.len() {
                    let (ps, pe) = (out.preds[2 * s], out.preds[2 * s + 1]);
                    f1_sum += span_f1((ps, pe), (start[s], end[s]));
                    predictions.push(Prediction {
                        index: predictions.len(),
                        id: String::new(),
                        text: String::new(),
                        text_pair: None,
                        label: serde_json::json!([start[s], end[s]]),
                        predicted: serde_json::json!([ps, pe]),
                        correct: (ps, pe) == (start[s], end[s]),
                        logits: out.logits[2 * s..2 * s + 2].to_vec(),
                    });
                }
            }
            _ => {}
        }
        total.merge(&out);
    }
    for p in &mut predictions {
        match examples.get(p.index) {
            Some(e) => {
                p.id = e.id.clone();
                p.text = e.text.clone();
                p.text_pair = e.text_pair.clone();
            }
            None => p.id = p.index.to_string(),
        }
    }
    let span = matches!(model.head(), Head::Span);
    Ok(Evaluation {
        examples: total.count,
        loss: total.loss(),
        accuracy: total.accuracy(),
        span_f1: span.then(|| f1_sum / predictions.len().max(1) as f64),
        predictions,
    })
}

/// One CSV field, quoted when it holds a comma, a quote or a line break (RFC 4180).
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// Writes `stem.jsonl` (one prediction per line) and `stem.csv` (id, text, text_pair, label,
/// predicted, correct, logits separated by spaces), each atomically.
pub fn write_predictions(stem: &Path, preds: &[Prediction]) -> Result<()> {
    let mut jsonl = String::new();
    let mut csv = String::from("index,id,text,text_pair,label,predicted,correct,logits\n");
    for p in preds {
        jsonl += &serde_json::to_string(p)?;
        jsonl.push('\n');
        let logits: Vec<String> = p.logits.iter().map(|l| l.to_string()).collect();
        let fields = [
            p.index.to_string(),
            p.id.clone(),
            p.text.clone(),
            p.text_pair.clone().unwrap_or_default(),
            p.label.to_string(),
            p.predicted.to_string(),
            p.correct.to_string(),
            logits.join(" "),
        ];
        let row: Vec<String> = fields.iter().map(|f| csv_field(f)).collect();
        csv += &row.join(",");
        csv.push('\n');
    }
    if let Some(d) = stem.parent() {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    let with = |ext: &str| {
        let mut p = stem.as_os_str().to_owned();
        p.push(ext);
        PathBuf::from(p)
    };
    write_atomic(&with(".jsonl"), jsonl.as_bytes())?;
    write_atomic(&with(".csv"), csv.as_bytes())
}

/// Whether a model with this head gives per-example predictions.
pub fn has_predictions(head: &Head) -> bool {
    matches!(head, Head::Classify { .. } | Head::Span)
}

/// A trained cell on disk: its folder and what it is.
#[derive(Clone, Debug)]
pub struct CellDir {
    pub dir: PathBuf,
    pub info: CellInfo,
}

/// The cells `target` names: every finished cell of a run directory (optionally only some arms
/// and seeds), or the one cell folder `target` is.
pub fn locate(target: &Path, arms: &[String], seeds: &[u64]) -> Result<Vec<CellDir>> {
    let info_of = |dir: PathBuf| -> Result<CellDir> {
        let info = export::read_cell_info(&dir).with_context(|| {
            format!(
                "{} has no {} (written by `adarank run` for every finished cell)",
                dir.display(),
                export::CELL_INFO
            )
        })?;
        Ok(CellDir { dir, info })
    };
    if target.join(export::CELL_INFO).is_file() {
        return Ok(vec![info_of(target.to_path_buf())?]);
    }
    if !target.join(super::rundir::SUMMARY).is_file() {
        if target.join(super::peft::CONFIG_FILE).is_file() {
            bail!(
                "{} is a PEFT export without {}: adarank needs the arm that made it (its model and \
                 data); evaluate the run directory or a cell folder that `adarank run` wrote",
                target.display(),
                export::CELL_INFO
            );
        }
        bail!(
            "{} is neither a run directory (no summary.json) nor a cell folder (no {})",
            target.display(),
            export::CELL_INFO
        );
    }
    let rd = RunDir::open(target)?;
    let summary = rd.load_summary()?;
    let mut out = Vec::new();
    for c in &summary.cells {
        if c.status != CellStatus::Done
            || (!arms.is_empty() && !arms.contains(&c.arm))
            || (!seeds.is_empty() && !seeds.contains(&c.seed))
        {
            continue;
        }
        out.push(info_of(rd.adapters(&c.arm, c.seed))?);
    }
    if out.is_empty() {
        bail!(
            "{}: no finished cell{} to evaluate",
            target.display(),
            if arms.is_empty() && seeds.is_empty() {
                ""
            } else {
                " among the chosen arms and seeds"
            }
        );
    }
    Ok(out)
}

/// The file format of a text data section (for `--data FILE`).
fn format_of(data: &DataSpec) -> Result<TextFormat> {
    Ok(match data {
        DataSpec::Movies { .. } | DataSpec::Sst2 { .. } => TextFormat::Sst2,
        DataSpec::Mnli { .. } => TextFormat::Mnli,
        DataSpec::Jsonl { .. } | DataSpec::Shakespeare { .. } => TextFormat::Jsonl,
        DataSpec::Squad { .. } | DataSpec::Planted { .. } | DataSpec::Synthetic { .. } => {
            bail!("no text format for this data section")
        }
    })
}

/// The evaluation task of `--data FILE`, on the cell's checkpoint; `classes` from the trained
/// head. Every example of the file is evaluated.
fn file_task(
    data: &DataSpec,
    ckpt: &mut PretrainedEncoder,
    classes: usize,
    file: &Path,
    seed: u64,
) -> Result<Box<dyn Task>> {
    if matches!(data, DataSpec::Planted { .. } | DataSpec::Synthetic { .. }) {
        bail!(
            "--data applies to text data sets; a generated task (planted, synthetic) has its own \
             held-out set"
        );
    }
    crate::textfile::check_regular(file, "evaluation data", crate::textfile::MAX_DATA_BYTES)?;
    if let DataSpec::Squad { .. } = data {
        let ev = crate::data::squad::load(file, &ckpt.tokenizer)?;
        return Ok(Box::new(crate::data::squad::SpanTask::new(
            ckpt,
            ev.clone(),
            &ev,
            crate::data::prepare::SPAN_EVAL_BATCH,
            seed,
        )?));
    }
    let examples: Vec<Example> = match data {
        // Class names are numbered by the training file's names (sorted), so they are read
        // against them.
        DataSpec::Jsonl { train, .. } => crate::data::jsonl::load_pair(train, file)?.1,
        _ => format_of(data)?.load(file)?,
    };
    // The file also stands in for the training split (a task needs one; it never trains).
    let task = ClassifyTask::new(
        &file.display().to_string(),
        ckpt,
        &examples,
        &examples,
        classes,
        crate::data::prepare::CLASSIFY_EVAL_BATCH,
        seed,
    )?;
    Ok(Box::new(task))
}

/// Rebuilds `cell`'s trained model on `be` and evaluates it: on the split its run evaluated
/// (the same examples, so the figures equal `results.csv`'s), on `split` of its data set, or on
/// `file`.
pub fn eval_cell<B: Backend>(
    be: Arc<B>,
    cell: &CellDir,
    file: Option<&Path>,
    split: Option<Split>,
) -> Result<Evaluation> {
    let seed = cell.info.seed;
    // An explicit `--split` asks for that split, all of it: the policy's `eval_samples` (a cap
    // that keeps a run's evaluations cheap) does not apply. Without it, the run's own examples.
    let mut whole = cell.info.arm.clone();
    if split.is_some() {
        if let Some(sub) = crate::policy::arm_plan::subset_mut(&mut whole.data) {
            sub.eval_samples = None;
        }
    }
    let arm = &whole;
    let mut ckpt = load_pretrained(arm).map_err(DataError)?;
    let split = split.unwrap_or(cell.info.split);
    let mut built = super::cell::Cell::build(be, arm, seed, split, ckpt.as_mut())?;
    built.load_trained(&cell.dir)?;
    let Some(file) = file else {
        return built.predict();
    };
    let Some(ck) = ckpt.as_mut() else {
        bail!("--data applies to text data sets on a pretrained model");
    };
    let model = &mut built.model;
    let classes = match model.head() {
        Head::Classify { classes, .. } => *classes,
        _ => 0,
    };
    let eval_task = file_task(&arm.data, ck, classes, file, seed).map_err(DataError)?;
    predict(model, eval_task.as_ref())
}

/// Where predictions of `cell` on `label` go under `dir`: `<arm>-seed<k>.<label>`.
pub fn predictions_stem(dir: &Path, arm: &str, seed: u64, label: Option<&str>) -> PathBuf {
    let base = format!("{}-seed{seed}", file_safe(arm));
    match label {
        Some(l) => dir.join(format!("{base}.{}", file_safe(l))),
        None => dir.join(base),
    }
}
