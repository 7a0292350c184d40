//! The training loop: gradient accumulation over micro-batches, AdamW with warmup and decay,
//! global-norm clipping, periodic evaluation, metrics every step, and hooks where the rank
//! engine and the experiment runner plug in.

use super::lr_schedule::{lr_at, Decay};
use super::task::Task;
use crate::adapter::AdapterStore;
use crate::backend::{AdamW, Backend};
use crate::data::lm::LmEvalSet;
use crate::model::{Batch, EvalOut, Model, TrainMode};
use anyhow::{ensure, Context, Result};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Instant;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// Optimizer steps (not micro-batches).
    pub steps: u64,
    /// Sequences per micro-batch.
    pub batch: usize,
    /// Peak learning rate.
    pub lr: f32,
    /// Warmup steps.
    pub warmup: u64,
    pub decay: Decay,
    pub weight_decay: f32,
    /// Clip the global gradient norm to this (None: no clipping).
    pub clip: Option<f32>,
    /// Micro-batches per optimizer step.
    pub accum: usize,
    /// Evaluate every this many steps (0: only at the end).
    pub eval_every: u64,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            steps: 100,
            batch: 16,
            lr: 1e-3,
            warmup: 0,
            decay: Decay::Linear,
            weight_decay: 0.0,
            clip: Some(1.0),
            accum: 1,
            eval_every: 0,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
        }
    }
}

/// Metrics of one optimizer step.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StepMetrics {
    /// Optimizer steps done, including this one (1-based).
    pub step: u64,
    /// Mean training loss over the step's micro-batches.
    pub loss: f32,
    pub lr: f32,
    /// Global gradient norm before clipping.
    pub grad_norm: f32,
    pub tokens_per_s: f64,
    /// Ledger bytes held now and at peak (since the ledger's last reset).
    pub mem_current: u64,
    pub mem_peak: u64,
}

/// Metrics of one evaluation over the task's held-out batches.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct EvalMetrics {
    pub step: u64,
    pub loss: f64,
    pub accuracy: f64,
    /// Everything the evaluation counted (predictions for MCC/F1, regression outputs).
    pub out: EvalOut,
    /// A causal LM's metrics by name (`eval_loss`, `perplexity`, `accuracy`, `exact_match`);
    /// empty for other tasks.
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub named: std::collections::BTreeMap<String, f64>,
}

/// Rank of every adapter slot (in `adapters()` order) when it changed, and at the start.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RankMetrics {
    pub step: u64,
    pub ranks: Vec<usize>,
    pub names: Vec<String>,
}

/// What a hook asks of the loop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Control {
    Continue,
    /// Stop after this step (a final evaluation still runs).
    Stop,
}

/// Where the rank engine and the runner plug into the loop. `step` is the 1-based number of
/// the optimizer step in progress (after_backward) or just taken (after_step).
pub trait Hooks<B: Backend> {
    /// Gradients of all micro-batches of this step are accumulated, the update not yet applied:
    /// the place to read gradients (importance scores) or add regulariser gradients.
    fn after_backward(&mut self, _step: u64, _model: &mut Model<B>) -> Result<()> {
        Ok(())
    }
    /// After the update: the place to resize adapters or mask triplets.
    fn after_step(
        &mut self,
        _step: u64,
        _model: &mut Model<B>,
        _metrics: &StepMetrics,
    ) -> Result<Control> {
        Ok(Control::Continue)
    }
    fn on_eval(&mut self, _metrics: &EvalMetrics) -> Result<()> {
        Ok(())
    }
    fn on_ranks(&mut self, _metrics: &RankMetrics) -> Result<()> {
        Ok(())
    }
}

/// Hooks that do nothing.
pub struct NoHooks;
impl<B: Backend> Hooks<B> for NoHooks {}

/// Everything the loop measured.
#[derive(Clone, Debug, Default, Serialize)]
pub struct TrainLog {
    pub steps: Vec<StepMetrics>,
    pub evals: Vec<EvalMetrics>,
    pub ranks: Vec<RankMetrics>,
}

/// The model a task is meant for, on `backend`, with the task's base weights.
pub fn build_model<B: Backend>(
    backend: Arc<B>,
    task: &dyn Task,
    mode: TrainMode,
    seed: u64,
) -> Result<Model<B>> {
    let w = task.base_weights()?;
    Model::new(
        backend,
        task.model_config(),
        task.head(),
        mode,
        w.as_ref(),
        seed,
    )
}

/// Loss and accuracy over the task's held-out batches.
pub fn evaluate<B: Backend>(
    model: &mut Model<B>,
    task: &dyn Task,
    step: u64,
) -> Result<EvalMetrics> {
    evaluate_batches(model, task.eval_batches(), task.lm_eval(), step)
}

/// Loss and accuracy over `eval`, and a causal LM's own metrics where `lm` is its evaluation
/// set: the one evaluation of the loop, the schedule's evaluations and a run's final one.
pub fn evaluate_batches<B: Backend>(
    model: &mut Model<B>,
    eval: &[Batch],
    lm: Option<&LmEvalSet>,
    step: u64,
) -> Result<EvalMetrics> {
    if let Some(set) = lm {
        let s = super::lm_eval::evaluate_lm(model, eval, set)?;
        let named = s.named();
        return Ok(EvalMetrics {
            step,
            loss: s.eval_loss(),
            accuracy: named["accuracy"],
            out: s.out,
            named,
        });
    }
    let mut out = EvalOut::default();
    for b in eval {
        out.merge(&model.evaluate(b).context("evaluation")?);
    }
    Ok(EvalMetrics {
        step,
        loss: out.loss(),
        accuracy: out.accuracy(),
        out,
        named: Default::default(),
    })
}

impl EvalMetrics {
    /// The metrics by name, as the schedule's conditions and plugins read them: a causal LM's
    /// own, else `eval_loss` and `accuracy`.
    pub fn metrics(&self) -> std::collections::BTreeMap<String, f64> {
        if !self.named.is_empty() {
            return self.named.clone();
        }
        [
            ("eval_loss".to_string(), self.loss),
            ("accuracy".to_string(), self.accuracy),
        ]
        .into()
    }
}

fn rank_metrics<B: Backend>(model: &Model<B>, step: u64) -> RankMetrics {
    let a = model.adapters();
    RankMetrics {
        step,
        ranks: a.iter().map(|a| a.rank).collect(),
        names: a.into_iter().map(|a| a.name).collect(),
    }
}

/// Trains `model` on `task` from the model's current step (0, or where a loaded checkpoint
/// left off) to `cfg.steps`.
pub fn train<B: Backend>(
    model: &mut Model<B>,
    task: &mut dyn Task,
    cfg: &TrainConfig,
    hooks: &mut dyn Hooks<B>,
) -> Result<TrainLog> {
    ensure!(cfg.accum >= 1, "train: accum must be at least 1");
    ensure!(cfg.batch >= 1, "train: batch must be at least 1");
    let mut log = TrainLog::default();
    let start = model.step();
    let mut ranks = rank_metrics(model, start);
    hooks.on_ranks(&ranks)?;
    log.ranks.push(ranks.clone());
    let mut check_ranks =
        |model: &Model<B>, step: u64, log: &mut TrainLog, hooks: &mut dyn Hooks<B>| -> Result<()> {
            let now = rank_metrics(model, step);
            if now.ranks != ranks.ranks {
                hooks.on_ranks(&now)?;
                log.ranks.push(now.clone());
                ranks = now;
            }
            Ok(())
        };
    for s in start..cfg.steps {
        let step = s + 1;
        let t0 = Instant::now();
        model.zero_grads();
        let mut tokens = 0usize;
        for micro in 0..cfg.accum {
            let b = task.train_batch(s * cfg.accum as u64 + micro as u64, cfg.batch)?;
            tokens += b.tokens();
            // The loss stays on the device until `step_stats` below: one read-back per step.
            model
                .forward_backward_queued(&b, 1.0 / cfg.accum as f32)
                .with_context(|| format!("training step {step}"))?;
        }
        hooks.after_backward(step, model)?;
        check_ranks(model, step, &mut log, hooks)?;
        let lr = lr_at(cfg.lr, s, cfg.steps, cfg.warmup, cfg.decay);
        let opt = AdamW {
            lr,
            beta1: cfg.beta1,
            beta2: cfg.beta2,
            eps: cfg.eps,
            weight_decay: cfg.weight_decay,
            step: step as u32,
        };
        model.optimizer_step_queued(&opt, cfg.clip)?;
        let stats = model.step_stats()?;
        let (loss, grad_norm) = (stats.loss as f64, stats.grad_norm);
        let secs = t0.elapsed().as_secs_f64();
        let mem = model.memory();
        let m = StepMetrics {
            step,
            loss: loss as f32,
            lr,
            grad_norm,
            tokens_per_s: tokens as f64 / secs.max(1e-9),
            mem_current: mem.total_current,
            mem_peak: mem.total_peak,
        };
        ensure!(
            m.loss.is_finite(),
            "training loss is {} at step {step}; lower the learning rate",
            m.loss
        );
        log.steps.push(m.clone());
        let ctrl = hooks.after_step(step, model, &m)?;
        check_ranks(model, step, &mut log, hooks)?;
        let last = step == cfg.steps || ctrl == Control::Stop;
        if last || (cfg.eval_every > 0 && step % cfg.eval_every == 0) {
            let e = evaluate(model, task, step)?;
            hooks.on_eval(&e)?;
            log.evals.push(e);
        }
        if ctrl == Control::Stop {
            break;
        }
    }
    Ok(log)
}
