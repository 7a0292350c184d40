//! From a checked arm to the shapes its cell will allocate and compute with, without loading
//! weights or data: the model's shape (the policy's own, the known table of Hugging Face models,
//! or a config.json), the head, the train and evaluation batch shapes and the adapter ranks at
//! the start and at their largest.

use super::super::arm::{engine_config, planted_slots, train_mode, transformer, EVAL_BATCH};
use crate::backend::DType;
use crate::data::lm::LM_EVAL_BATCH;
use crate::data::prepare::{CLASSIFY_EVAL_BATCH, SPAN_EVAL_BATCH};
use crate::engine::Method;
use crate::model::{Head, ModelConfig, Pooling, TrainMode};
use crate::policy::model_source::{self, Origin};
use crate::policy::{ArmPlan, DataSpec, GgufSpec, ModelSpec, TrainLength};
use anyhow::{Context, Result};
use serde::Serialize;

/// Sequences × tokens of one forward pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct BatchShape {
    pub batch: usize,
    pub seq: usize,
}

impl BatchShape {
    /// Tokens in the batch (rows of every [N, ·] activation).
    pub fn tokens(&self) -> usize {
        self.batch * self.seq
    }
}

/// Everything the cost model needs to know about one arm.
#[derive(Clone, Debug, Serialize)]
pub struct ArmShape {
    pub arm: String,
    pub model: ModelConfig,
    #[serde(skip)]
    pub head: Head,
    /// Full fine-tuning (every weight trains) rather than LoRA.
    pub full: bool,
    /// AdaLoRA's SVD form (a λ vector per adapter).
    pub svd: bool,
    /// Gates on the components (SoRA, or a relaxed learner's soft ranks): like λ, each adapter
    /// then saves x·Aᵀ and its gated copy.
    #[serde(default)]
    pub gated: bool,
    /// AdaLoRA's orthogonality penalty is added to the adapters' gradients.
    pub orth_reg: bool,
    /// Storage of the frozen weights (`train.weights`; f32 for full fine-tuning).
    #[serde(skip_serializing_if = "DType::is_f32")]
    pub frozen: DType,
    /// Rank of every adapter slot at the start (`ModelConfig::slots` order; 0 = none).
    pub start_ranks: Vec<usize>,
    /// The rank plan with the most memory the arm can reach: for an arm that re-allocates, the
    /// budget given to the slots whose rank costs the most memory, each up to its maximum;
    /// otherwise the start. (Phase 1 may hold more than this, at a uniform rank above the
    /// budget: the peak is the larger of the two.)
    pub peak_ranks: Vec<usize>,
    /// Micro-batch of a training step, at its longest sequence.
    pub train: BatchShape,
    /// Micro-batches per optimizer step.
    pub accum: usize,
    /// The largest evaluation batch.
    pub eval: BatchShape,
    /// Optimizer steps, when the policy fixes them (epochs over a data set of unknown size
    /// do not).
    pub steps: Option<u64>,
    /// What the shapes assume, said once in the output.
    pub notes: Vec<String>,
    /// What the task keeps in host memory beside the model.
    pub task: TaskShape,
}

/// Which task a cell trains on, as far as its host memory goes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskKind {
    Planted,
    Synthetic,
    /// A data set read from files (not modelled in host memory).
    #[default]
    Data,
}

/// The host-side shape of a built-in task (`memory::host`).
#[derive(Clone, Debug, Default, Serialize)]
pub struct TaskShape {
    pub kind: TaskKind,
    /// Held-out sequences the task keeps: whole evaluation batches of `eval.batch`.
    pub eval_sequences: usize,
    /// The planted task: (rows, cols) of every slot given a dense planted ΔW.
    pub planted: Vec<(usize, usize)>,
}

/// The host-side shape of `arm`'s task on `model`.
fn task_shape(arm: &ArmPlan, model: &ModelConfig) -> TaskShape {
    let eval = |n: usize| n.div_ceil(EVAL_BATCH).max(1) * n.clamp(1, EVAL_BATCH);
    match &arm.data {
        DataSpec::Planted { eval_samples, .. } => TaskShape {
            kind: TaskKind::Planted,
            eval_sequences: eval(*eval_samples),
            planted: planted_slots(arm, model)
                .into_iter()
                .filter(|&(_, kind, r)| r > 0 && model.module_kinds().contains(&kind))
                .map(|(_, kind, _)| model.module_shape(kind))
                .collect(),
        },
        DataSpec::Synthetic { eval_samples, .. } => TaskShape {
            kind: TaskKind::Synthetic,
            eval_sequences: eval(*eval_samples),
            planted: vec![],
        },
        _ => TaskShape::default(),
    }
}

/// The shapes of `arm`'s cell (its plugin paths are already resolved by the checker).
pub fn arm_shape(arm: &ArmPlan) -> Result<ArmShape> {
    let mut notes = Vec::new();
    let model = model_config(&arm.model, &mut notes)
        .with_context(|| format!("arm {}: the model's shape", arm.name))?;
    let t = &arm.train;
    let (head, seq, eval_batch, samples) = data_shape(arm, &model, &mut notes);
    let steps = match t.length {
        TrainLength::Steps(n) => Some(n as u64),
        TrainLength::Epochs(e) => {
            samples.map(|n| (e * n.div_ceil(t.batch * t.accum).max(1)) as u64)
        }
    };
    let (full, svd, start_ranks) = start_ranks(arm, &model);
    let (gated, peak_ranks) = peak_ranks(arm, &model, &start_ranks, steps);
    let task = task_shape(arm, &model);
    if task.kind == TaskKind::Data {
        notes.push(
            "host memory of a data set read from files (its tokenizer, its rows, the checkpoint \
             as read) is not counted: the peak is the backend's alone"
                .into(),
        );
    }
    Ok(ArmShape {
        arm: arm.name.clone(),
        model,
        head,
        full,
        svd,
        gated,
        orth_reg: arm.adalora.as_ref().is_some_and(|a| a.orth_reg > 0.0),
        frozen: if full { DType::F32 } else { arm.train.weights },
        start_ranks,
        peak_ranks,
        train: BatchShape {
            batch: t.batch,
            seq,
        },
        accum: t.accum,
        eval: BatchShape {
            batch: eval_batch,
            seq,
        },
        steps,
        task,
        notes,
    })
}

/// The head, sequence length, evaluation batch and (generated data only) training samples of
/// `arm`'s data on `model`.
fn data_shape(
    arm: &ArmPlan,
    model: &ModelConfig,
    notes: &mut Vec<String>,
) -> (Head, usize, usize, Option<usize>) {
    let t = &arm.train;
    match &arm.data {
        DataSpec::Planted {
            seq,
            eval_samples,
            samples,
            ..
        } => (
            // The planted task regresses the final hidden states of a teacher.
            Head::Regress,
            *seq,
            (*eval_samples).clamp(1, EVAL_BATCH),
            Some(*samples),
        ),
        DataSpec::Synthetic {
            classes,
            seq,
            eval_samples,
            samples,
            ..
        } => (
            Head::Classify {
                classes: *classes,
                pooling: Pooling::Mean,
            },
            *seq,
            (*eval_samples).clamp(1, EVAL_BATCH),
            Some(*samples),
        ),
        DataSpec::Squad { subset, .. } => {
            let seq = bounded_seq(subset.max_len.unwrap_or(t.max_len), model, notes);
            let eval = subset.eval_samples.unwrap_or(SPAN_EVAL_BATCH);
            (Head::Span, seq, eval.clamp(1, SPAN_EVAL_BATCH), None)
        }
        // A causal LM reads every data set as text: its LM head is the (frozen, tied or own)
        // vocabulary projection, no classifier. Shakespeare is text whatever the model (the
        // checker refuses it for an encoder).
        DataSpec::Movies { subset, .. }
        | DataSpec::Sst2 { subset, .. }
        | DataSpec::Mnli { subset, .. }
        | DataSpec::Jsonl { subset, .. }
        | DataSpec::Shakespeare { subset, .. }
            if model.flavour == crate::model::Flavour::Llama
                || matches!(arm.data, DataSpec::Shakespeare { .. }) =>
        {
            let seq = bounded_seq(subset.max_len.unwrap_or(t.max_len), model, notes);
            // The causal-LM task evaluates in batches of LM_EVAL_BATCH (`data::lm::lm_task`).
            let eval = subset.eval_samples.unwrap_or(LM_EVAL_BATCH);
            (Head::LanguageModel, seq, eval.clamp(1, LM_EVAL_BATCH), None)
        }
        DataSpec::Movies { subset, .. }
        | DataSpec::Sst2 { subset, .. }
        | DataSpec::Mnli { subset, .. }
        | DataSpec::Jsonl { subset, .. }
        | DataSpec::Shakespeare { subset, .. } => {
            let classes = match &arm.data {
                DataSpec::Mnli { .. } => 3,
                DataSpec::Jsonl { .. } => {
                    notes.push(
                        "JSONL classes are counted from the data at run time; planned with 2 \
                         (the head is a few kilobytes either way)"
                            .into(),
                    );
                    2
                }
                _ => 2,
            };
            let seq = bounded_seq(subset.max_len.unwrap_or(t.max_len), model, notes);
            let eval = subset.eval_samples.unwrap_or(CLASSIFY_EVAL_BATCH);
            // `pooling = cls` adds BERT's pooler (`model::pooler`).
            let pooling = match &arm.model {
                ModelSpec::Hf { pooling, .. } | ModelSpec::Path { pooling, .. } => *pooling,
                ModelSpec::Encoder(_) | ModelSpec::Decoder(_) | ModelSpec::Gguf(_) => Pooling::Mean,
            };
            (
                Head::Classify { classes, pooling },
                seq,
                eval.clamp(1, CLASSIFY_EVAL_BATCH),
                None,
            )
        }
    }
}

/// Whether the arm trains every weight, whether its adapters are in SVD form, and every slot's
/// starting rank.
fn start_ranks(arm: &ArmPlan, model: &ModelConfig) -> (bool, bool, Vec<usize>) {
    let mode = train_mode(arm, model.layers);
    let slots = model.slots();
    let mut start_ranks = vec![0; slots];
    let (full, svd) = match &mode {
        TrainMode::Full => (true, false),
        TrainMode::Lora(l) => {
            for (&(layer, kind), &r) in &l.ranks {
                if let Some(i) = model.slot_index(layer, kind) {
                    start_ranks[i] = r;
                }
            }
            (false, l.svd_form)
        }
    };
    (full, svd, start_ranks)
}

/// Whether the arm's adapters are gated, and every slot's largest rank during training.
fn peak_ranks(
    arm: &ArmPlan,
    model: &ModelConfig,
    start_ranks: &[usize],
    steps: Option<u64>,
) -> (bool, Vec<usize>) {
    let engine = engine_config(arm, model.layers, steps.unwrap_or(1), 0);
    // A learner that defines `learn_step` relaxes the ranks with gates; only an arm that
    // re-allocates runs its learner.
    let relaxed = engine.as_ref().is_some_and(|e| match &e.method {
        Method::Adaptive {
            learner: Some(p), ..
        } => crate::engine::source::read(p).is_ok_and(|t| t.contains("fn learn_step")),
        _ => false,
    });
    let gated = arm.sora.is_some() || relaxed;
    let peak_ranks = match engine {
        Some(e) if !matches!(e.method, Method::AdaLora(_)) => {
            // Under a parameter budget the engine's rank total is only a feasibility cap; the
            // ranks the budget can buy are at most what the cheapest slots afford.
            let cheapest = arm.lora.on().and_then(|l| {
                l.targets
                    .iter()
                    .map(|k| model.module_shape(*k))
                    .map(|(r, c)| r + c)
                    .min()
            });
            let budget = match (arm.lora.on().and_then(|l| l.param_budget), cheapest) {
                (Some(p), Some(c)) => e.budget.min(p / c),
                _ => e.budget,
            };
            largest_plan(model, start_ranks, budget, e.min_rank, e.max_rank)
        }
        // AdaLoRA masks triplets but keeps its tensors at the initial rank.
        _ => start_ranks.to_vec(),
    };
    (gated, peak_ranks)
}

/// Real data pads each batch to its longest sequence, at most `max_len` tokens (and the
/// model's positions): the plan takes that bound.
fn bounded_seq(max_len: usize, model: &ModelConfig, notes: &mut Vec<String>) -> usize {
    let seq = max_len.min(model.max_positions);
    notes.push(format!(
        "sequences planned at their bound of {seq} tokens (batches are padded to their longest \
         sequence, so a run holds at most this)"
    ));
    seq
}

/// The model a `model` section describes: its own shape, or a pretrained model's from its
/// files (config.json, the GGUF header) when they are here, else from the known table
/// (`policy::model_source`, the same answer `adarank check` gets).
pub fn model_config(spec: &ModelSpec, notes: &mut Vec<String>) -> Result<ModelConfig> {
    let (cfg, origin) =
        model_source::shape(spec).map_err(|p| anyhow::anyhow!("{} ({})", p.message, p.help))?;
    match origin {
        Origin::Policy => transformer(spec),
        Origin::File(f) => {
            notes.push(format!("model shape read from {}", f.display()));
            Ok(cfg)
        }
        Origin::Known => {
            let note = match spec {
                ModelSpec::Gguf(GgufSpec::Name(n)) => model_source::gguf_missing_note(n),
                _ => None,
            };
            notes.push(note.unwrap_or_else(|| {
                "model shape from adarank's table of known models (not downloaded yet)".into()
            }));
            Ok(cfg)
        }
    }
}

/// The rank plan within `budget` (each slot in `min..=max`, capped by its matrix) that holds the
/// most adapter memory: every covered slot at the minimum, the rest of the budget to the slots
/// with the most rows + columns first. A slot's memory per rank is 16·(rows + cols) bytes
/// (A, B, gradient, two moments) plus its activations, the same per rank for every slot, so
/// this order maximises the bytes.
fn largest_plan(
    model: &ModelConfig,
    start: &[usize],
    budget: usize,
    min: usize,
    max: usize,
) -> Vec<usize> {
    let covered: Vec<usize> = (0..start.len()).filter(|&i| start[i] > 0).collect();
    let shape = |i: usize| model.module_shape(model.slot_of(i).1);
    let cap = |i: usize| {
        let (r, c) = shape(i);
        max.min(r.min(c))
    };
    let mut plan = vec![0; start.len()];
    let mut left = budget;
    for &i in &covered {
        plan[i] = min.min(cap(i));
        left = left.saturating_sub(plan[i]);
    }
    let mut order = covered.clone();
    order.sort_by_key(|&i| {
        let (r, c) = shape(i);
        std::cmp::Reverse(r + c)
    });
    for i in order {
        let add = left.min(cap(i) - plan[i]);
        plan[i] += add;
        left -= add;
    }
    plan
}
