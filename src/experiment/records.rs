//! The records a run directory holds: one line of `metrics.jsonl` per training step, one line of
//! `allocations.jsonl` per allocation, and `summary.json` with every arm × seed cell's results.

use crate::engine::Allocation;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One training step of one cell (`metrics.jsonl`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MetricRecord {
    pub arm: String,
    pub seed: u64,
    /// Steps done, counting from 1.
    pub step: u64,
    pub phase: String,
    pub loss: f64,
    pub lr: f64,
    /// Global gradient norm before clipping, when the loop reports it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grad_norm: Option<f64>,
    /// Tokens (or examples) seen in this step.
    pub tokens: u64,
    /// Adapter parameters held this step (while ranks are relaxed, the nearly closed
    /// components included): what trained.
    pub trainable_params: u64,
    /// Bytes those parameters hold on the device: weight, gradient and two AdamW moments in
    /// f32, 16 per parameter.
    #[serde(default)]
    pub adapter_bytes: u64,
    /// Set on steps with an evaluation (the policy's `evaluate`, `train.eval_every`, and the
    /// last step).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval_loss: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval_accuracy: Option<f64>,
}

/// One line of `allocations.jsonl`: an allocation of one cell — the starting ranks (step 0,
/// reason `init`) and every re-allocation, AdaLoRA's masking and pruning and SoRA's pruning,
/// with the budget, α, β, and per slot C_i, the method's score and the rank before and after.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RankRecord {
    pub arm: String,
    pub seed: u64,
    #[serde(flatten)]
    pub allocation: Allocation,
}

impl std::ops::Deref for RankRecord {
    type Target = Allocation;
    fn deref(&self) -> &Allocation {
        &self.allocation
    }
}

/// The quantity the main table compares, and which direction is better.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MetricSpec {
    /// `"accuracy"` (a fraction in 0..=1) or `"eval_loss"`, or a task's own name.
    pub name: String,
    pub higher_is_better: bool,
}

/// What the report needs to know about an arm.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ArmMeta {
    pub name: String,
    /// Method label for the tables ("adaptive", "fixed", "layerwise", "full", "adalora", …).
    pub method: String,
    /// An ablation arm goes into the ablation table, compared with `ablation_of`.
    #[serde(default)]
    pub ablation: bool,
    /// The arm this ablation removes a part from (defaults to the experiment's baseline).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ablation_of: Option<String>,
    /// What the arm trains with, for the hyperparameter table.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hparams: Option<HParams>,
}

/// The settings a reader needs to judge a comparison: one row of the hyperparameter table.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HParams {
    /// The arm's learning rate (for a sweep: the first candidate; the chosen one is in
    /// [`Summary::lr_choices`]).
    pub lr: f64,
    /// Candidate learning rates of a sweep (empty: no sweep).
    #[serde(default)]
    pub lr_sweep: Vec<f64>,
    /// Ranks or budget, in words: "rank 8", "budget 72 ranks", "budget 250000 params", ….
    pub adapters: String,
    /// Training length in words ("300 steps", "1 epoch").
    pub length: String,
    pub batch: usize,
    pub accum: usize,
}

/// One candidate of a learning-rate sweep: the arm at that rate, one seed, scored on the dev
/// split.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LrCandidate {
    pub lr: f64,
    pub status: CellStatus,
    /// The experiment's metric on the dev split.
    #[serde(default)]
    pub metric: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The learning-rate selection of one arm: every candidate's dev score and the choice.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LrChoice {
    pub arm: String,
    /// The seed the candidates ran with.
    pub seed: u64,
    /// The split the candidates were scored on ("dev", or "eval" where the data has no
    /// separate test split).
    pub split: String,
    pub candidates: Vec<LrCandidate>,
    /// Set once every candidate has run: the best dev score (ties: the earlier candidate).
    #[serde(default)]
    pub chosen: Option<f64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CellStatus {
    Pending,
    Running,
    Done,
    Failed,
}

/// Results of one arm × seed cell.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CellResult {
    pub arm: String,
    pub seed: u64,
    pub status: CellStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub steps: u64,
    /// The value of the experiment's [`MetricSpec`].
    #[serde(default)]
    pub metric: Option<f64>,
    #[serde(default)]
    pub eval_loss: Option<f64>,
    #[serde(default)]
    pub eval_accuracy: Option<f64>,
    #[serde(default)]
    pub final_train_loss: Option<f64>,
    /// Peak bytes of the backend ledger over the cell, total and by kind.
    pub peak_bytes: u64,
    #[serde(default)]
    pub peak_by_kind: BTreeMap<String, u64>,
    pub wall_s: f64,
    pub tokens_per_s: f64,
    /// Trainable parameters at the end of the cell.
    pub trainable_params: u64,
    #[serde(default)]
    pub final_ranks: Vec<(String, usize)>,
    /// Optimizer steps the cell was planned to run (`steps` below it: stopped early).
    #[serde(default)]
    pub planned_steps: u64,
    /// Examples in the evaluation set the metric was computed on.
    #[serde(default)]
    pub eval_examples: u64,
    /// Which split that was: "test", "dev", or "held-out" (built-in tasks).
    #[serde(default)]
    pub eval_split: String,
    /// The learning rate the cell trained at.
    #[serde(default)]
    pub lr: f64,
    /// The process running the cell, while `status` is `running`: a second process finds the
    /// cell taken here even when the cell's lock file was deleted, and `status` tells a live
    /// holder from a dead one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holder: Option<super::lock::Holder>,
    /// What training cost, step by step (trainable parameters held, GEMM FLOPs).
    #[serde(default)]
    pub cost: TrainCost,
    /// The loss spike at every re-allocation that changed the adapters.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub spikes: Vec<Spike>,
}

/// What a cell trained, over all its steps: the cost an equal-cost comparison must match (the
/// final parameter count says nothing about a phase 1 at a higher rank or a relaxation's extra
/// components).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TrainCost {
    pub steps: u64,
    /// Σ over steps of the adapter parameters held (÷ steps: the mean over training).
    pub params_sum: f64,
    pub params_peak: u64,
    /// GEMM FLOPs of all training steps (forward and backward, from the shapes and the ranks
    /// held at each step; `costs::flops`).
    pub flops: f64,
}

impl TrainCost {
    pub fn add_step(&mut self, params: u64, flops: f64) {
        self.steps += 1;
        self.params_sum += params as f64;
        self.params_peak = self.params_peak.max(params);
        self.flops += flops;
    }
    pub fn params_mean(&self) -> f64 {
        self.params_sum / self.steps.max(1) as f64
    }
}

/// The loss spike of one re-allocation: mean training loss over the `SPIKE_WINDOW` steps
/// after it over the mean of the `SPIKE_WINDOW` steps up to it (1: no spike).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Spike {
    pub step: u64,
    pub ratio: f64,
}

/// Steps on either side of a re-allocation the spike ratio averages.
pub const SPIKE_WINDOW: usize = 10;

/// Spike ratios at `steps` from the training losses (`losses[k]` is the loss of step k + 1);
/// re-allocations without a full window on both sides are left out.
pub fn spikes(losses: &[f64], steps: &[u64]) -> Vec<Spike> {
    let w = SPIKE_WINDOW;
    steps
        .iter()
        .filter_map(|&s| {
            let s = s as usize;
            if s < w || s + w > losses.len() {
                return None;
            }
            let before: f64 = losses[s - w..s].iter().sum::<f64>() / w as f64;
            let after: f64 = losses[s..s + w].iter().sum::<f64>() / w as f64;
            (before > 0.0).then(|| Spike {
                step: s as u64,
                ratio: after / before,
            })
        })
        .collect()
}

impl CellResult {
    pub fn pending(arm: &str, seed: u64) -> Self {
        Self {
            arm: arm.to_string(),
            seed,
            status: CellStatus::Pending,
            error: None,
            steps: 0,
            metric: None,
            eval_loss: None,
            eval_accuracy: None,
            final_train_loss: None,
            peak_bytes: 0,
            peak_by_kind: BTreeMap::new(),
            wall_s: 0.0,
            tokens_per_s: 0.0,
            trainable_params: 0,
            final_ranks: Vec::new(),
            planned_steps: 0,
            eval_examples: 0,
            eval_split: String::new(),
            lr: 0.0,
            holder: None,
            cost: TrainCost::default(),
            spikes: Vec::new(),
        }
    }

    /// Finished before its planned steps (an early-stopping phase bound).
    pub fn stopped_early(&self) -> bool {
        self.status == CellStatus::Done && self.planned_steps > 0 && self.steps < self.planned_steps
    }
}

/// Where and with what a run ran (`env.json`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct EnvInfo {
    pub adarank_version: String,
    #[serde(default)]
    pub git_commit: Option<String>,
    pub device: String,
    pub backend: String,
    pub os: String,
    pub arch: String,
    pub threads: usize,
    pub started: String,
    #[serde(default)]
    pub command: Vec<String>,
}

impl EnvInfo {
    /// The environment of this process; `device`/`backend` name the backend in use.
    pub fn collect(device: &str, backend: &str) -> Self {
        let git_commit = std::process::Command::new("git")
            .args(["rev-parse", "HEAD"])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .filter(|s| !s.is_empty());
        Self {
            adarank_version: env!("CARGO_PKG_VERSION").to_string(),
            git_commit,
            device: device.to_string(),
            backend: backend.to_string(),
            os: std::env::consts::OS.to_string(),
            arch: std::env::consts::ARCH.to_string(),
            threads: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            started: chrono::Utc::now().to_rfc3339(),
            command: std::env::args().collect(),
        }
    }
}

/// `summary.json`: everything the report is built from, rewritten after every cell.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub experiment: String,
    pub metric: MetricSpec,
    #[serde(default)]
    pub baseline: Option<String>,
    pub arms: Vec<ArmMeta>,
    pub seeds: Vec<u64>,
    pub cells: Vec<CellResult>,
    #[serde(default)]
    pub env: Option<EnvInfo>,
    /// Learning-rate sweeps, one per arm that declares one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lr_choices: Vec<LrChoice>,
}

impl Summary {
    pub fn cell(&self, arm: &str, seed: u64) -> Option<&CellResult> {
        self.cells.iter().find(|c| c.arm == arm && c.seed == seed)
    }
    pub fn cell_mut(&mut self, arm: &str, seed: u64) -> Option<&mut CellResult> {
        self.cells
            .iter_mut()
            .find(|c| c.arm == arm && c.seed == seed)
    }
    /// Stores `cell`, replacing the cell of the same arm and seed.
    pub fn put(&mut self, cell: CellResult) {
        match self.cell_mut(&cell.arm, cell.seed) {
            Some(c) => *c = cell,
            None => self.cells.push(cell),
        }
    }
    pub fn failed(&self) -> Vec<&CellResult> {
        self.cells
            .iter()
            .filter(|c| c.status == CellStatus::Failed)
            .collect()
    }
    pub fn arm(&self, name: &str) -> Option<&ArmMeta> {
        self.arms.iter().find(|a| a.name == name)
    }
    pub fn lr_choice(&self, arm: &str) -> Option<&LrChoice> {
        self.lr_choices.iter().find(|c| c.arm == arm)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spike_ratio_is_mean_after_over_mean_before() {
        // Steps 1..=30: loss 1 up to step 10, 3 for steps 11..=15, 1 after. A re-allocation
        // after step 10: the 10 steps after average (5·3 + 5·1)/10 = 2, the 10 before 1.
        let losses: Vec<f64> = (1..=30)
            .map(|s| if (11..=15).contains(&s) { 3.0 } else { 1.0 })
            .collect();
        let s = spikes(&losses, &[10, 5, 25]);
        // Step 5 has no full window before it, step 25 none after.
        assert_eq!(
            s,
            vec![Spike {
                step: 10,
                ratio: 2.0
            }]
        );
    }

    #[test]
    fn train_cost_counts_mean_and_peak() {
        let mut c = TrainCost::default();
        for (p, f) in [(100, 1.0), (300, 2.0), (200, 3.0)] {
            c.add_step(p, f);
        }
        assert_eq!(c.params_peak, 300);
        assert_eq!(c.params_mean(), 200.0);
        assert_eq!(c.flops, 6.0);
    }
}
