//! One cell of a run (an arm × seed): built once ([`Cell::build`]), trained from the start or
//! from its checkpoint, evaluated and exported. `adarank run` (fresh, resumed, or a sweep's
//! candidate) and `adarank eval` build cells only here.

use super::arm::{
    build_task, engine_config, load_pretrained, metric_is_loss, pretrained_key, steps_per_epoch,
    targeted_slots, total_steps, train_config, train_mode,
};
use super::checkpoint;
use super::evaluate::{self, Evaluation};
use super::export::{self, CellInfo};
use super::fsio::{filter_jsonl, JsonlWriter};
use super::progress::Progress;
use super::records::*;
use super::rundir::RunDir;
use super::sink::{CheckpointState, RunSink, RunnerState};
use crate::adapter::{AdapterStore, SlotView};
use crate::backend::{Backend, MemKind};
use crate::data::hf::PretrainedEncoder;
use crate::data::prepare::Split;
use crate::data::DataError;
use crate::engine::driver::{DriverHooks, EngineDriver};
use crate::engine::schedule::Schedule;
use crate::engine::RankEngine;
use crate::model::{Batch, Model, ModelState};
use crate::policy::{ArmPlan, ModelSpec};
use crate::train::{build_model, train, EvalMetrics, Task};
use anyhow::{Context, Result};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

/// An arm × seed's task and model, built as every run and evaluation builds them.
pub struct Cell<'a, B: Backend> {
    pub arm: &'a ArmPlan,
    pub seed: u64,
    /// The split the cell evaluates on.
    pub split: Split,
    pub task: Box<dyn Task>,
    pub model: Model<B>,
    /// Training samples, for epochs (`None`: the task has no fixed set).
    pub samples: Option<usize>,
    /// The slots the arm's LoRA targets ([`targeted_slots`]); the rank engine sees only these.
    pub slots: Vec<usize>,
}

impl<'a, B: Backend> Cell<'a, B> {
    /// The cell's task (evaluating on `split`) and its untrained model; `ckpt` is the arm's
    /// pretrained checkpoint ([`load_pretrained`]), shared between cells.
    pub fn build(
        be: Arc<B>,
        arm: &'a ArmPlan,
        seed: u64,
        split: Split,
        ckpt: Option<&mut PretrainedEncoder>,
    ) -> Result<Self> {
        let (task, samples) = build_task(arm, ckpt, seed, split).map_err(DataError)?;
        let layers = task.model_config().layers;
        let model = build_model(be, task.as_ref(), train_mode(arm, layers), seed)
            .with_context(|| format!("building the model of arm {}", arm.name))?;
        let slots = targeted_slots(arm, &task.model_config());
        Ok(Self {
            arm,
            seed,
            split,
            task,
            model,
            samples,
            slots,
        })
    }

    /// The trained state of a cell's folder: `final_state.safetensors` when the folder has it
    /// (exact, any arm), else the PEFT export.
    pub fn load_trained(&mut self, dir: &Path) -> Result<()> {
        if dir.join(export::FINAL_STATE).is_file() {
            export::load_final_state(dir, &mut self.model)
        } else {
            export::import_peft(dir, &mut self.model)
        }
    }

    /// Every held-out example's prediction, with loss and accuracy.
    pub fn predict(&mut self) -> Result<Evaluation> {
        evaluate::predict(&mut self.model, self.task.as_ref())
    }

    /// The engine-visible view of the model: the targeted slots only.
    fn view(&mut self) -> SlotView<'_, Model<B>> {
        SlotView {
            store: &mut self.model,
            slots: &self.slots,
        }
    }
}

/// The base model an arm names (hub name, folder or GGUF file), as `adarank.json` records it.
fn base_model_name(arm: &ArmPlan) -> Option<String> {
    match &arm.model {
        ModelSpec::Hf { name, .. } => Some(name.clone()),
        ModelSpec::Path { dir, .. } => Some(dir.display().to_string()),
        ModelSpec::Gguf(g) => g.file().map(|f| f.display().to_string()),
        ModelSpec::Encoder(_) | ModelSpec::Decoder(_) => None,
    }
}

/// What a run's cells share: the backend, the run directory, the progress display, whether
/// the run resumes, the steps left before a requested stop, and the pretrained checkpoints
/// (loaded once per run).
pub(super) struct Cells<'r, B: Backend> {
    pub be: Arc<B>,
    pub rd: &'r RunDir,
    pub progress: &'r Progress,
    pub resuming: bool,
    /// Simulates a kill: the run stops after this many more training steps.
    pub stop_after: Option<u64>,
    pub pretrained: HashMap<String, Option<PretrainedEncoder>>,
}

/// Where a cell's training ended: the final evaluation, the runner's carried state and the
/// cell's wall time (including the time before a resume).
struct Trained {
    final_eval: EvalMetrics,
    st: RunnerState,
    final_loss: Option<f64>,
    wall: f64,
    steps: u64,
    /// The ledger's peaks by kind and in total, over the whole cell (before the export).
    peak: ([u64; 6], u64),
}

impl<B: Backend> Cells<'_, B> {
    /// Builds, trains (or resumes), exports and evaluates one cell; its result for the summary.
    pub fn run_cell(&mut self, arm: &ArmPlan, seed: u64, split: Split) -> Result<CellResult> {
        let key = pretrained_key(arm);
        if !self.pretrained.contains_key(&key) {
            let loaded = load_pretrained(arm).map_err(DataError)?;
            self.pretrained.insert(key.clone(), loaded);
        }
        let ckpt = self.pretrained.get_mut(&key).and_then(Option::as_mut);
        let base_has_pooler = ckpt
            .as_ref()
            .is_some_and(|c| c.weights.contains_key(crate::model::pooler::WEIGHT));
        let mut cell = Cell::build(self.be.clone(), arm, seed, split, ckpt)?;
        let trained = self.train(&mut cell)?;
        self.export(&mut cell, base_has_pooler)?;
        let _ = std::fs::remove_file(self.rd.checkpoint(&arm.name, seed));
        Ok(cell_result(&mut cell, trained))
    }

    /// The cell's checkpoint when resuming (else a fresh start); either way the logs lose what
    /// they hold beyond the point training restarts from, so they read as one uninterrupted run.
    fn restart_point(
        &self,
        cell: &mut Cell<B>,
        engine: &mut Option<RankEngine>,
    ) -> Result<(u64, RunnerState)> {
        let (arm, seed) = (cell.arm, cell.seed);
        let ck_path = self.rd.checkpoint(&arm.name, seed);
        let mut ck = if self.resuming && ck_path.exists() {
            Some(checkpoint::load(&ck_path)?)
        } else {
            None
        };
        // The checkpoint continues the cell's records up to its step: they must hold each of
        // the steps before it once (the checkpointed step's own record may still wait for its
        // evaluation). Records written twice or lost make the cell start again instead.
        if let Some(c) = &ck {
            let steps: Vec<u64> = self
                .rd
                .load_metrics()?
                .into_iter()
                .filter(|r| r.arm == arm.name && r.seed == seed && (1..=c.step).contains(&r.step))
                .map(|r| r.step)
                .collect();
            let distinct: std::collections::BTreeSet<u64> = steps.iter().copied().collect();
            let lost = (1..c.step).filter(|s| !distinct.contains(s)).count();
            if lost > 0 || distinct.len() != steps.len() {
                eprintln!(
                    "arm {} seed {seed}: metrics.jsonl holds {} records of its {} checkpointed \
                     steps ({} distinct, {lost} missing; edited or written twice): the cell \
                     starts again from step 0",
                    arm.name,
                    steps.len(),
                    c.step,
                    distinct.len()
                );
                ck = None;
            }
        }
        let keep_to = ck.as_ref().map(|c| c.step as i64).unwrap_or(-1);
        let mine = |a: &str, s: u64| a == arm.name && s == seed;
        filter_jsonl::<MetricRecord>(&self.rd.metrics(), |r| {
            !mine(&r.arm, r.seed) || (r.step as i64) <= keep_to
        })?;
        filter_jsonl::<RankRecord>(&self.rd.allocations(), |r| {
            !mine(&r.arm, r.seed) || (r.step as i64) <= keep_to
        })?;
        let Some(ck) = ck else {
            return Ok((0, RunnerState::default()));
        };
        let cs: CheckpointState =
            serde_json::from_value(ck.state).context("checkpoint state of the runner")?;
        cell.model
            .load_state(&ModelState {
                meta: cs.model,
                tensors: ck.tensors,
            })
            .context("restoring the model from its checkpoint")?;
        if let (Some(e), Some(es)) = (engine, cs.engine) {
            e.load_state(es)?;
        }
        Ok((ck.step, cs.runner))
    }

    /// Trains the cell from its restart point to the end, writing metrics, allocations and
    /// checkpoints as it goes.
    fn train(&mut self, cell: &mut Cell<B>) -> Result<Trained> {
        let (arm, seed) = (cell.arm, cell.seed);
        let steps = total_steps(arm, cell.samples)?;
        let mut engine = match engine_config(arm, cell.task.model_config().layers, steps, seed) {
            Some(c) => Some(RankEngine::new(c)?),
            None => None,
        };
        let spe = cell
            .samples
            .map(|n| steps_per_epoch(arm, n) as u64)
            .unwrap_or(u64::MAX);
        let (from, mut st) = self.restart_point(cell, &mut engine)?;
        let eval: Vec<Batch> = cell.task.eval_batches().to_vec();
        let seq = eval.first().map(|b| b.seq).unwrap_or(1);
        let wall_before = st.wall_s;
        let schedule = Schedule::new(
            arm.phases.clone(),
            steps,
            spe,
            arm.train.eval_every.map(|n| n as u64),
        )
        .with_checkpoint_every(arm.train.checkpoint_every.map(|n| n as u64));
        let mut driver = EngineDriver::new(engine, schedule, spe);
        driver.restore(std::mem::take(&mut st.driver));
        let lm = cell.task.lm_eval().cloned();
        let mut hooks = DriverHooks {
            driver,
            slots: cell.slots.clone(),
            eval: Some(&eval),
            lm: lm.as_ref(),
            sink: RunSink {
                arm,
                seed,
                rd: self.rd,
                st,
                tokens_per_step: (arm.train.batch * arm.train.accum * seq) as u64,
                metrics: JsonlWriter::open(&self.rd.metrics())?,
                ranks: JsonlWriter::open(&self.rd.allocations())?,
                progress: self.progress.cell(&arm.name, seed, steps, from),
                stop_after: &mut self.stop_after,
                started: Instant::now(),
                wall_before,
                final_eval: None,
                last_record: None,
                shape: super::costs::arm_shape(arm).ok(),
            },
        };
        let start_record = match hooks.start(&mut cell.model)? {
            Some(a) => Some(a),
            None if hooks.driver.engine.is_none() && arm.lora.on().is_some() && from == 0 => {
                Some(crate::engine::Allocation::fixed(&cell.view().adapters()))
            }
            None => None,
        };
        self.be.ledger().reset_peak();
        if from == 0 {
            hooks
                .sink
                .write_allocations(start_record.into_iter().collect())?;
        }
        let t0 = Instant::now();
        let cfg = train_config(arm, steps);
        let result = train(&mut cell.model, cell.task.as_mut(), &cfg, &mut hooks);
        let wall = wall_before + t0.elapsed().as_secs_f64();
        if let Err(e) = result {
            hooks.sink.progress.finish("stopped");
            return Err(e.context(format!("arm {} seed {seed}", arm.name)));
        }
        let final_eval = hooks
            .sink
            .final_eval
            .clone()
            .context("the training loop ended without an evaluation")?;
        hooks
            .sink
            .progress
            .finish(&format!("done: eval loss {:.4}", final_eval.loss));
        let peak = hooks.sink.st.fold_peaks(&cell.model.memory());
        Ok(Trained {
            peak,
            final_eval,
            final_loss: hooks.driver.state().losses.back().copied(),
            st: hooks.sink.st,
            wall,
            steps,
        })
    }

    /// The trained model's folder (PEFT export, final state, adarank.json) and the final
    /// evaluation's predictions, per example.
    fn export(&self, cell: &mut Cell<B>, base_has_pooler: bool) -> Result<()> {
        let arm = cell.arm;
        let info = CellInfo {
            format: 1,
            seed: cell.seed,
            steps: cell.model.step(),
            head: *cell.model.head(),
            hf_class: export::hf_layout(cell.model.config().flavour, cell.model.head())
                .class
                .map(str::to_string),
            base_model: base_model_name(arm),
            split: cell.split,
            arm: arm.clone(),
        };
        let use_rslora = arm.lora.on().is_some_and(|l| l.rslora);
        export::export_cell(
            &self.rd.adapters(&arm.name, cell.seed),
            &mut cell.model,
            &info,
            use_rslora,
            base_has_pooler,
        )?;
        if evaluate::has_predictions(cell.model.head()) {
            let ev = cell.predict()?;
            let dir = self.rd.root.join("predictions");
            evaluate::write_predictions(
                &evaluate::predictions_stem(&dir, &arm.name, cell.seed, None),
                &ev.predictions,
            )?;
        }
        Ok(())
    }
}

/// A trained cell's record in the summary.
fn cell_result<B: Backend>(cell: &mut Cell<B>, t: Trained) -> CellResult {
    let (arm, model) = (cell.arm, &mut cell.model);
    let fe = &t.final_eval;
    let metric_is_loss = metric_is_loss(arm);
    let metric = match fe.named.get(super::arm::metric_of(arm).0) {
        Some(&m) => m,
        None if metric_is_loss => fe.loss,
        None => fe.accuracy,
    };
    let (peak, total_peak) = t.peak;
    let infos = model.adapters();
    // AdaLoRA's pruned triplets (λ held at 0) are neither rank nor trained parameters of the
    // result: a triplet is a row of A, a column of B and its λ.
    let masked = model.masked_components();
    let trainable_params = model.trainable_params() as u64
        - infos
            .iter()
            .zip(&masked)
            .map(|(a, &m)| (m * (a.rows + a.cols + 1)) as u64)
            .sum::<u64>();
    CellResult {
        arm: arm.name.clone(),
        seed: cell.seed,
        status: CellStatus::Done,
        error: None,
        steps: model.step(),
        metric: Some(metric),
        eval_loss: Some(fe.loss),
        eval_accuracy: (!metric_is_loss).then_some(fe.accuracy),
        final_train_loss: t.final_loss,
        peak_bytes: total_peak,
        peak_by_kind: MemKind::ALL
            .iter()
            .zip(peak)
            .map(|(k, p)| (k.name().to_string(), p))
            .collect(),
        wall_s: t.wall,
        tokens_per_s: t.st.tokens as f64 / t.wall.max(1e-9),
        trainable_params,
        final_ranks: infos
            .into_iter()
            .zip(masked)
            .map(|(a, m)| (a.name, a.rank - m))
            .collect(),
        planned_steps: t.steps,
        eval_examples: cell
            .task
            .eval_batches()
            .iter()
            .map(|b| b.batch as u64)
            .sum(),
        eval_split: crate::data::prepare::split_of(&arm.data, cell.split)
            .name()
            .to_string(),
        lr: arm.train.lr,
        spikes: spikes(&t.st.losses, &t.st.realloc_steps),
        cost: t.st.cost,
        holder: None,
    }
}
