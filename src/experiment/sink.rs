//! The run's [`Sink`]: what the loop's hooks hand over at each step goes to the run directory
//! (`metrics.jsonl`, `allocations.jsonl`, the cell's checkpoint) and the progress display, with
//! the runner's own account of the cell (tokens, costs, losses, re-allocation steps, peaks).

use super::checkpoint::{self, Checkpoint};
use super::fsio::JsonlWriter;
use super::progress::CellProgress;
use super::records::*;
use super::run::Interrupted;
use super::rundir::RunDir;
use crate::adapter::AdapterStore;
use crate::backend::Backend;
use crate::engine::driver::{DriverState, DriverStep, Sink};
use crate::engine::{Allocation, EngineState};
use crate::model::{Model, StateMeta};
use crate::policy::ArmPlan;
use crate::train::{EvalMetrics, StepMetrics};
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Instant;

/// What the runner itself must carry across a checkpoint.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(super) struct RunnerState {
    pub driver: DriverState,
    pub tokens: u64,
    pub wall_s: f64,
    /// What trained so far, the training losses and the steps of re-allocations that changed
    /// the adapters (for the spike ratios).
    #[serde(default)]
    pub cost: TrainCost,
    #[serde(default)]
    pub losses: Vec<f64>,
    #[serde(default)]
    pub realloc_steps: Vec<u64>,
    /// The ledger's peaks up to the checkpoint, in [`MemKind::ALL`] order, and of the total: a
    /// resumed cell measures only from the resume on, and its reported peak must be the one an
    /// uninterrupted cell reports.
    #[serde(default)]
    peak: [u64; 6],
    #[serde(default)]
    total_peak: u64,
}

impl RunnerState {
    /// The peaks so far with `mem`'s (measured since the last resume) folded in.
    pub fn fold_peaks(&self, mem: &crate::backend::LedgerSnapshot) -> ([u64; 6], u64) {
        let mut peak = self.peak;
        for (p, m) in peak.iter_mut().zip(mem.peak) {
            *p = (*p).max(m);
        }
        (peak, self.total_peak.max(mem.total_peak))
    }
}

#[derive(Serialize, Deserialize)]
pub(super) struct CheckpointState {
    pub runner: RunnerState,
    pub model: StateMeta,
    pub engine: Option<EngineState>,
}

/// The run directory's side of one cell's training.
pub(super) struct RunSink<'a> {
    pub arm: &'a ArmPlan,
    pub seed: u64,
    pub rd: &'a RunDir,
    pub st: RunnerState,
    pub tokens_per_step: u64,
    pub metrics: JsonlWriter,
    pub ranks: JsonlWriter,
    pub progress: CellProgress,
    /// Steps left before a requested stop (`--stop-after-steps`, for resume tests).
    pub stop_after: &'a mut Option<u64>,
    pub started: Instant,
    /// Wall time of the cell before this process resumed it.
    pub wall_before: f64,
    pub final_eval: Option<EvalMetrics>,
    /// The last step's record, written once the loop's final evaluation is known.
    pub last_record: Option<MetricRecord>,
    /// The arm's shapes, for the GEMM FLOPs of each step (`None` where the cost model does
    /// not know the shapes: FLOPs are then not counted).
    pub shape: Option<super::costs::ArmShape>,
}

impl RunSink<'_> {
    /// Each allocation as a line of `allocations.jsonl`.
    pub fn write_allocations(&mut self, allocations: Vec<Allocation>) -> Result<()> {
        for allocation in allocations {
            self.ranks.append(&RankRecord {
                arm: self.arm.name.clone(),
                seed: self.seed,
                allocation,
            })?;
        }
        Ok(())
    }
}

impl<B: Backend> Sink<B> for RunSink<'_> {
    fn step_taken(&mut self, step: u64, m: &StepMetrics) -> Result<()> {
        super::diverged::check_step(self.arm, step, m.loss, m.grad_norm)?;
        self.st.tokens += self.tokens_per_step;
        Ok(())
    }

    fn evaluated(&mut self, step: u64, m: &BTreeMap<String, f64>) -> Result<()> {
        super::diverged::check_eval(self.arm, step, m["eval_loss"])
    }

    fn allocations(&mut self, allocations: Vec<Allocation>) -> Result<()> {
        self.write_allocations(allocations)
    }

    fn record(
        &mut self,
        step: u64,
        model: &mut Model<B>,
        m: &StepMetrics,
        out: &DriverStep,
        last: bool,
    ) -> Result<()> {
        let changed = out
            .allocations
            .iter()
            .any(|a| a.step > 0 && (a.resized || a.reason == "mask" || a.reason == "fade"));
        if changed {
            self.st.realloc_steps.push(step);
        }
        self.st.losses.push(m.loss as f64);
        let params: u64 = model
            .adapters()
            .iter()
            .map(|a| a.params_at(a.rank) as u64)
            .sum();
        let flops = self.shape.as_ref().map_or(0.0, |s| {
            super::costs::flops::step_flops(s, &model.ranks()).total()
        });
        self.st.cost.add_step(params, flops);
        let eval = out
            .evaluated
            .as_ref()
            .map(|e| (e.get("eval_loss").copied(), e.get("accuracy").copied()));
        let record = MetricRecord {
            arm: self.arm.name.clone(),
            seed: self.seed,
            step,
            phase: out.phase.clone(),
            loss: m.loss as f64,
            lr: m.lr as f64,
            grad_norm: Some(m.grad_norm as f64),
            tokens: self.tokens_per_step,
            trainable_params: params,
            adapter_bytes: 16 * params,
            eval_loss: eval.and_then(|e| e.0),
            eval_accuracy: eval.and_then(|e| e.1),
        };
        if out.log {
            self.progress.log(&log_line(&record, &model.adapters()));
        }
        if last {
            // The training loop evaluates after this step: the record waits for it.
            self.last_record = Some(record);
        } else {
            self.metrics.append(&record)?;
        }
        Ok(())
    }

    fn checkpoint(
        &mut self,
        step: u64,
        model: &mut Model<B>,
        engine: Option<EngineState>,
        driver: DriverState,
    ) -> Result<()> {
        let ms = model.state()?;
        let mut runner = self.st.clone();
        runner.driver = driver;
        (runner.peak, runner.total_peak) = self.st.fold_peaks(&model.memory());
        runner.wall_s = self.wall_before + self.started.elapsed().as_secs_f64();
        let state = CheckpointState {
            runner,
            model: ms.meta,
            engine,
        };
        checkpoint::save(
            &self.rd.checkpoint(&self.arm.name, self.seed),
            &Checkpoint {
                step,
                tensors: ms.tensors,
                state: serde_json::to_value(&state)?,
            },
        )
    }

    fn stepped(&mut self, step: u64, m: &StepMetrics) -> Result<()> {
        self.progress.update(step, m.loss as f64);
        #[cfg(feature = "test-support")]
        kill_hook(step);
        if let Some(left) = self.stop_after.as_mut() {
            *left = left.saturating_sub(1);
            if *left == 0 {
                bail!(Interrupted {
                    run_dir: self.rd.root.clone()
                });
            }
        }
        Ok(())
    }

    fn on_eval(&mut self, e: &EvalMetrics) -> Result<()> {
        super::diverged::check_eval(self.arm, e.step, e.loss)?;
        self.final_eval = Some(e.clone());
        if let Some(mut r) = self.last_record.take() {
            r.eval_loss = Some(e.loss);
            r.eval_accuracy = Some(e.accuracy);
            self.metrics.append(&r)?;
        }
        Ok(())
    }
}

/// Test hook: with `ADARANK_TEST_KILL_AFTER_STEP=N` in its environment the process sends
/// itself SIGKILL once a cell's step N is done — its record written (or, at the last step,
/// waiting for the final evaluation) and its checkpoint saved, if one was due — so that a test
/// can kill a real run at an exact point and resume it (tests/hostile_faults.rs). `--stop-
/// after-steps` stops as cleanly as an error does; this leaves what a `kill -9` leaves. Test
/// scaffolding: only a build with the `test-support` feature (the tests') carries it.
#[cfg(feature = "test-support")]
fn kill_hook(step: u64) {
    static AT: std::sync::OnceLock<Option<u64>> = std::sync::OnceLock::new();
    let at = AT.get_or_init(|| {
        std::env::var("ADARANK_TEST_KILL_AFTER_STEP")
            .ok()
            .and_then(|v| v.parse().ok())
    });
    if *at == Some(step) {
        // SAFETY: signals this process; SIGKILL cannot be caught, so nothing runs after it.
        unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
    }
}

/// What a policy's `log` action prints: the step's record and every adapter's rank.
fn log_line(r: &MetricRecord, adapters: &[crate::adapter::AdapterInfo]) -> String {
    let ranks: Vec<String> = adapters.iter().map(|a| a.rank.to_string()).collect();
    format!(
        "step {} ({}): loss {:.4}, lr {:.3e}, trainable {}, ranks [{}]",
        r.step,
        r.phase,
        r.loss,
        r.lr,
        r.trainable_params,
        ranks.join(" ")
    )
}
