//! The runner: every arm × seed cell of a policy into one run directory, with checkpoints,
//! resume, failure records and the report rebuilt after every cell.

use super::arm::{
    build_task, checkpoint_key, engine_config, load_checkpoint, method_label, metric_is_loss,
    steps_per_epoch, targeted_slots, total_steps, train_config, train_mode,
};
use super::checkpoint::{self, Checkpoint};
use super::evaluate;
use super::export::{self, CellInfo};
use super::fsio::{filter_jsonl, read_json, write_atomic, write_json_atomic, JsonlWriter};
use super::integrity;
use super::lock::{CellLock, Claim};
use super::progress::{CellProgress, Progress, ProgressMode};
use super::records::*;
use super::rundir::RunDir;
use super::slots::SlotView;
use crate::adapter::AdapterStore;
use crate::backend::device::Device;
use crate::backend::{Backend, MemKind};
use crate::data::hf::Checkpoint as HfCheckpoint;
use crate::data::lm::LmEvalSet;
use crate::data::plan::Split;
use crate::data::DataError;
use crate::engine::driver::{DriverHost, DriverState, EngineDriver};
use crate::engine::schedule::Schedule;
use crate::engine::{Allocation, EngineState, RankEngine, SlotAllocation};
use crate::model::{Batch, EvalOut, Model, ModelState, StateMeta};
use crate::policy::{ArmPlan, ModelSpec, Policy};
use crate::train::{build_model, train, Control, EvalMetrics, Hooks, StepMetrics};
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

pub use crate::backend::device::DeviceChoice;

#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// Run directory; default `runs/<experiment>-<timestamp>`.
    pub out: Option<PathBuf>,
    /// Continue this run directory instead of starting a new one.
    pub resume: Option<PathBuf>,
    pub device: DeviceChoice,
    pub quiet: bool,
    /// Only these arms / seeds (empty: all).
    pub arms: Vec<String>,
    pub seeds: Vec<u64>,
    /// Simulates a kill: the process stops after this many training steps (for resume tests).
    pub stop_after_steps: Option<u64>,
}

/// The error of a run stopped by `stop_after_steps`.
#[derive(Debug)]
pub struct Interrupted {
    pub run_dir: PathBuf,
}

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "run stopped on request; continue it with `adarank run --resume {}`",
            self.run_dir.display()
        )
    }
}
impl std::error::Error for Interrupted {}

const POLICY_JSON: &str = "policy.json";

/// The device a policy asks for (`train.device` of its base arm; every arm has the same).
pub fn policy_device(p: &Policy) -> DeviceChoice {
    match p.arms.first().map(|a| a.train.device) {
        Some(crate::policy::Device::Cpu) => DeviceChoice::Cpu,
        Some(crate::policy::Device::Gpu) => DeviceChoice::Gpu,
        Some(crate::policy::Device::Auto) | None => DeviceChoice::Auto,
    }
}

/// The checked policy a run directory was started with.
pub fn saved_policy(dir: &Path) -> Result<Policy> {
    read_json(&RunDir::open(dir)?.root.join(POLICY_JSON))
}

fn summary_for(policy: &Policy, env: EnvInfo) -> Summary {
    let base = policy.arms.first().map(|a| a.name.clone());
    let (name, higher) = policy
        .arms
        .first()
        .map_or(("accuracy", true), super::arm::metric_of);
    Summary {
        experiment: policy.name.clone(),
        metric: MetricSpec {
            name: name.into(),
            higher_is_better: higher,
        },
        baseline: policy.baseline.clone(),
        arms: policy
            .arms
            .iter()
            .map(|a| ArmMeta {
                name: a.name.clone(),
                method: method_label(a),
                ablation: a.ablation,
                ablation_of: if a.ablation { base.clone() } else { None },
                hparams: Some(super::arm::hparams(a)),
            })
            .collect(),
        seeds: policy.seeds.clone(),
        cells: policy
            .arms
            .iter()
            .flat_map(|a| {
                policy
                    .seeds
                    .iter()
                    .map(|&s| CellResult::pending(&a.name, s))
            })
            .collect(),
        env: Some(env),
        lr_choices: Vec::new(),
    }
}

/// Runs (or resumes) `policy` and returns the run directory. A failing cell is recorded in the
/// summary and report, then the run stops with the cell's error.
pub fn run(policy: Option<Policy>, opts: &RunOptions) -> Result<PathBuf> {
    let dev = Device::open(opts.device)?;
    // Before anything is allocated: refuse a cell that would not fit the device.
    match (&policy, &opts.resume) {
        (Some(p), _) => super::costs::check_device(&dev, p, &opts.arms)?,
        // (A directory that is no run is refused below, with its own message.)
        (None, Some(dir)) if dir.join(POLICY_JSON).is_file() => {
            let p: Policy = read_json(&dir.join(POLICY_JSON))?;
            super::costs::check_device(&dev, &p, &opts.arms)?
        }
        _ => {}
    }
    let desc = dev.describe();
    match dev {
        Device::Cpu(b) => {
            let name = b.name();
            run_on(b, &name, "cpu", policy, opts)
        }
        Device::Gpu(b) => run_on(b, &desc, "gpu", policy, opts),
    }
}

/// Every `--arm` and `--seed` must name an arm and a seed of the policy.
pub fn check_filters(policy: &Policy, arms: &[String], seeds: &[u64]) -> Result<()> {
    for a in arms {
        if policy.arm(a).is_none() {
            bail!(
                "--arm {a}: no such arm (arms: {})",
                policy
                    .arms
                    .iter()
                    .map(|a| a.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
    }
    for s in seeds {
        if !policy.seeds.contains(s) {
            bail!(
                "--seed {s}: not among the policy's seeds {:?}",
                policy.seeds
            );
        }
    }
    Ok(())
}

/// A new run directory for `policy` (`out`, or `runs/<experiment>-<timestamp>`): the policy
/// as written and as checked, env.json (`device`, `backend_name`), a summary with every cell
/// pending, and run.json (the plan's and plugins' hashes, the `arms`/`seeds` filters that
/// `--resume` keeps). Local runs and Slurm submissions start the same way.
pub fn start_run_dir(
    policy: &Policy,
    out: Option<&Path>,
    device: &str,
    backend_name: &str,
    arms: &[String],
    seeds: &[u64],
) -> Result<(RunDir, Summary)> {
    let root = out
        .map(Path::to_path_buf)
        .unwrap_or_else(|| RunDir::default_path(Path::new("runs"), &policy.name));
    let rd = RunDir::create(&root)?;
    write_atomic(&rd.policy(), policy.source_text.as_bytes())?;
    write_json_atomic(&rd.policy_json(), policy)?;
    let env = EnvInfo::collect(device, backend_name);
    write_json_atomic(&rd.env(), &env)?;
    let s = summary_for(policy, env);
    rd.write_summary(&s)?;
    integrity::record(&rd, policy, arms, seeds)?;
    Ok((rd, s))
}

/// Runs (or resumes) `policy` on `be`; `device` and `backend_name` describe it in env.json and
/// the report.
pub fn run_on<B: Backend>(
    be: Arc<B>,
    device: &str,
    backend_name: &str,
    policy: Option<Policy>,
    opts: &RunOptions,
) -> Result<PathBuf> {
    let (rd, policy, arms, seeds) = match &opts.resume {
        Some(dir) => {
            let rd = RunDir::open(dir)?;
            let policy: Policy = read_json(&rd.policy_json())?;
            // The same plan and plugins as the cells already finished, or a refusal.
            let record = integrity::verify(&rd, &policy)?;
            // A resumed run covers the cells the run was started for, unless told otherwise.
            let (arms, seeds) = match &record {
                Some(r) => (
                    if opts.arms.is_empty() {
                        r.arms.clone()
                    } else {
                        opts.arms.clone()
                    },
                    if opts.seeds.is_empty() {
                        r.seeds.clone()
                    } else {
                        opts.seeds.clone()
                    },
                ),
                None => (opts.arms.clone(), opts.seeds.clone()),
            };
            (rd, policy, arms, seeds)
        }
        None => {
            let policy = policy.context("no policy to run")?;
            let (rd, _) = start_run_dir(
                &policy,
                opts.out.as_deref(),
                device,
                backend_name,
                &opts.arms,
                &opts.seeds,
            )?;
            (rd, policy, opts.arms.clone(), opts.seeds.clone())
        }
    };
    check_filters(&policy, &arms, &seeds)?;
    let mut progress = Progress::new(ProgressMode::detect(opts.quiet));
    let summary = rd.load_summary()?;
    progress.plan_cells(
        policy
            .arms
            .iter()
            .flat_map(|a| policy.seeds.iter().map(move |s| (a, s)))
            .filter(|(a, _)| arms.is_empty() || arms.contains(&a.name))
            .filter(|(_, s)| seeds.is_empty() || seeds.contains(s))
            .filter(|(a, s)| summary.cell(&a.name, **s).map(|c| c.status) != Some(CellStatus::Done))
            .count() as u64,
    );
    progress.println(&format!("run directory: {}", rd.root.display()));
    let mut budget = opts.stop_after_steps;
    // Pretrained checkpoints, loaded once per run and shared by the cells that use them.
    let mut checkpoints: HashMap<String, Option<HfCheckpoint>> = HashMap::new();
    // Cells another process holds: left to it, and named at the end.
    let mut left: Vec<String> = Vec::new();
    for arm in &policy.arms {
        if !arms.is_empty() && !arms.contains(&arm.name) {
            continue;
        }
        let resuming = opts.resume.is_some();
        let say = |m: &str| progress.println(m);
        let swept = super::sweep::choose_lr(arm, &policy, &rd, say, |a, seed, split| {
            run_cell(
                be.clone(),
                a,
                seed,
                split,
                &rd,
                &progress,
                resuming,
                &mut budget,
                &mut checkpoints,
            )
        });
        let arm = &match swept {
            Ok(a) => a,
            Err(e) => {
                rd.render_shared()?;
                return Err(e);
            }
        };
        for &seed in &policy.seeds {
            if !seeds.is_empty() && !seeds.contains(&seed) {
                continue;
            }
            let done = |s: &Summary| {
                s.cell(&arm.name, seed)
                    .is_some_and(|c| c.status == CellStatus::Done)
            };
            if done(&rd.load_summary()?) {
                continue;
            }
            let cell_lock = match CellLock::try_claim(&rd.root, &arm.name, seed)? {
                Claim::Busy(holder) => {
                    let who = holder.map_or("another process".into(), |h| h.to_string());
                    progress.println(&format!(
                        "arm {} seed {seed}: being run by {who}; left to it",
                        arm.name
                    ));
                    left.push(format!("arm {} seed {seed} ({who})", arm.name));
                    continue;
                }
                Claim::Got { lock, stale } => {
                    if let Some(h) = stale {
                        progress.println(&format!(
                            "arm {} seed {seed}: taking over from {h}, which stopped without \
                             finishing it",
                            arm.name
                        ));
                    }
                    lock
                }
            };
            // Another process may have finished the cell before we got its lock.
            let (_, go) = rd.update_summary(|s| {
                if done(s) {
                    return false;
                }
                let mut running = s
                    .cell(&arm.name, seed)
                    .cloned()
                    .unwrap_or_else(|| CellResult::pending(&arm.name, seed));
                running.status = CellStatus::Running;
                running.error = None;
                s.put(running);
                true
            })?;
            if !go {
                continue;
            }
            let result = run_cell(
                be.clone(),
                arm,
                seed,
                Split::Test,
                &rd,
                &progress,
                resuming,
                &mut budget,
                &mut checkpoints,
            );
            match result {
                Ok(cell) => {
                    rd.update_summary(|s| s.put(cell))?;
                    rd.render_shared()?;
                }
                Err(e) if e.downcast_ref::<Interrupted>().is_some() => {
                    rd.render_shared()?;
                    return Err(e);
                }
                Err(e) => {
                    let msg = format!("{e:#}");
                    let steps = rd
                        .load_metrics()
                        .unwrap_or_default()
                        .iter()
                        .filter(|m| m.arm == arm.name && m.seed == seed)
                        .map(|m| m.step)
                        .max()
                        .unwrap_or(0);
                    rd.update_summary(|s| {
                        let mut failed = s
                            .cell(&arm.name, seed)
                            .cloned()
                            .unwrap_or_else(|| CellResult::pending(&arm.name, seed));
                        failed.status = CellStatus::Failed;
                        failed.error = Some(msg);
                        failed.steps = steps;
                        s.put(failed);
                    })?;
                    rd.render_shared()?;
                    return Err(e.context(format!(
                        "arm {} seed {seed} failed; {} keeps everything done so far",
                        arm.name,
                        rd.root.display()
                    )));
                }
            }
            drop(cell_lock);
        }
    }
    rd.render_shared()?;
    progress.finish();
    if !left.is_empty() {
        bail!(
            "{} cell(s) of {} are being run by other processes and were left to them: {}; their \
             results join the run directory when they finish",
            left.len(),
            rd.root.display(),
            left.join(", ")
        );
    }
    Ok(rd.root)
}

/// What the runner itself must carry across a checkpoint.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct RunnerState {
    driver: DriverState,
    tokens: u64,
    wall_s: f64,
}

#[derive(Serialize, Deserialize)]
struct CheckpointState {
    runner: RunnerState,
    model: StateMeta,
    engine: Option<EngineState>,
}

/// The model (as the targeted slots' adapter store) and the evaluation batches, for the driver.
struct CellHost<'a, B: Backend> {
    arm: &'a ArmPlan,
    view: SlotView<'a, Model<B>>,
    eval: &'a [Batch],
    lm: Option<&'a LmEvalSet>,
}

/// The evaluation's metrics by name: `eval_loss` and `accuracy`, and a causal LM's own.
fn evaluate_on<B: Backend>(
    model: &mut Model<B>,
    eval: &[Batch],
    lm: Option<&LmEvalSet>,
) -> Result<BTreeMap<String, f64>> {
    if let Some(set) = lm {
        return Ok(crate::train::lm_eval::evaluate_lm(model, eval, set)?.named());
    }
    let mut out = EvalOut::default();
    for b in eval {
        out.merge(&model.evaluate(b).context("evaluation")?);
    }
    Ok([
        ("eval_loss".to_string(), out.loss()),
        ("accuracy".to_string(), out.accuracy()),
    ]
    .into())
}

impl<B: Backend> DriverHost for CellHost<'_, B> {
    fn store(&mut self) -> &mut dyn AdapterStore {
        &mut self.view
    }
    fn evaluate(&mut self, step: u64) -> Result<BTreeMap<String, f64>> {
        let m = evaluate_on(self.view.store, self.eval, self.lm)?;
        super::diverged::check_eval(self.arm, step, m["eval_loss"])?;
        Ok(m)
    }
}

struct CellHooks<'a> {
    arm: &'a ArmPlan,
    seed: u64,
    rd: &'a RunDir,
    driver: EngineDriver,
    slots: Vec<usize>,
    eval: Vec<Batch>,
    /// A causal LM's evaluation beyond the loss (`None` for other tasks).
    lm: Option<LmEvalSet>,
    metric_is_loss: bool,
    st: RunnerState,
    total_steps: u64,
    tokens_per_step: u64,
    checkpoint_every: Option<u64>,
    metrics: JsonlWriter,
    ranks: JsonlWriter,
    progress: CellProgress,
    budget: &'a mut Option<u64>,
    started: Instant,
    wall_before: f64,
    final_eval: Option<EvalMetrics>,
    /// The last step's record, written once the loop's final evaluation is known.
    last_record: Option<MetricRecord>,
}

impl CellHooks<'_> {
    fn record_allocations(&mut self, allocations: Vec<Allocation>) -> Result<()> {
        for allocation in allocations {
            self.ranks.append(&RankRecord {
                arm: self.arm.name.clone(),
                seed: self.seed,
                allocation,
            })?;
        }
        Ok(())
    }

    fn checkpoint<B: Backend>(&mut self, model: &mut Model<B>, step: u64) -> Result<()> {
        let engine = match &self.driver.engine {
            Some(e) => Some(e.state(&SlotView {
                store: model,
                slots: &self.slots,
            })?),
            None => None,
        };
        let ms = model.state()?;
        let mut runner = self.st.clone();
        runner.driver = self.driver.state();
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
}

impl<B: Backend> Hooks<B> for CellHooks<'_> {
    fn after_backward(&mut self, step: u64, model: &mut Model<B>) -> Result<()> {
        let mut view = SlotView {
            store: model,
            slots: &self.slots,
        };
        self.driver.after_backward(step, &mut view)
    }

    fn after_step(&mut self, step: u64, model: &mut Model<B>, m: &StepMetrics) -> Result<Control> {
        super::diverged::check_step(self.arm, step, m.loss, m.grad_norm)?;
        self.st.tokens += self.tokens_per_step;
        let out = {
            let mut host = CellHost::<B> {
                arm: self.arm,
                view: SlotView {
                    store: model,
                    slots: &self.slots,
                },
                eval: &self.eval,
                lm: self.lm.as_ref(),
            };
            self.driver.after_step(step, m.loss as f64, &mut host)?
        };
        self.record_allocations(out.allocations)?;
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
            trainable_params: model
                .adapters()
                .iter()
                .map(|a| a.params_at(a.rank) as u64)
                .sum(),
            eval_loss: eval.and_then(|e| e.0),
            eval_accuracy: eval.and_then(|e| e.1),
        };
        if out.stop || step >= self.total_steps {
            // The training loop evaluates after this step: the record waits for it.
            self.last_record = Some(record);
        } else {
            self.metrics.append(&record)?;
        }
        let ck_due = out.checkpoint
            || self
                .checkpoint_every
                .is_some_and(|n| n > 0 && step.is_multiple_of(n));
        if ck_due && step < self.total_steps && !out.stop {
            self.checkpoint(model, step)?;
        }
        self.progress.update(step, m.loss as f64);
        if let Some(left) = self.budget.as_mut() {
            *left = left.saturating_sub(1);
            if *left == 0 {
                bail!(Interrupted {
                    run_dir: self.rd.root.clone()
                });
            }
        }
        Ok(if out.stop {
            Control::Stop
        } else {
            Control::Continue
        })
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

/// The starting ranks of an arm without a rank engine (fixed, layer-wise), as an allocation.
fn fixed_allocation(infos: &[crate::adapter::AdapterInfo]) -> Allocation {
    Allocation {
        step: 0,
        reason: "init".into(),
        budget: None,
        param_budget: None,
        alpha: None,
        beta: None,
        slots: infos
            .iter()
            .map(|a| SlotAllocation {
                name: a.name.clone(),
                cost: a.rows + a.cols,
                complexity: None,
                score: None,
                before: a.rank,
                after: a.rank,
            })
            .collect(),
        resized: false,
        seconds: 0.0,
    }
}

#[allow(clippy::too_many_arguments)]
fn run_cell<B: Backend>(
    be: Arc<B>,
    arm: &ArmPlan,
    seed: u64,
    split: Split,
    rd: &RunDir,
    progress: &Progress,
    resuming: bool,
    budget: &mut Option<u64>,
    checkpoints: &mut HashMap<String, Option<HfCheckpoint>>,
) -> Result<CellResult> {
    let key = checkpoint_key(arm);
    if !checkpoints.contains_key(&key) {
        checkpoints.insert(key.clone(), load_checkpoint(arm).map_err(DataError)?);
    }
    let ckpt = checkpoints.get_mut(&key).and_then(Option::as_mut);
    let base_has_pooler = ckpt
        .as_ref()
        .is_some_and(|c| c.weights.contains_key(crate::model::pooler::WEIGHT));
    let base_model = match &arm.model {
        ModelSpec::Hf { name, .. } => Some(name.clone()),
        ModelSpec::Path { dir, .. } => Some(dir.display().to_string()),
        ModelSpec::Encoder(_) | ModelSpec::Decoder(_) => None,
    };
    let (mut task, samples) = build_task(arm, ckpt, seed, split).map_err(DataError)?;
    let eval_split = crate::data::plan::split_of(&arm.data, split).name();
    let steps = total_steps(arm, samples)?;
    let cfg = train_config(arm, steps, seed);
    let mode = train_mode(arm, task.model_config().layers);
    let mut model = build_model(be.clone(), task.as_ref(), mode, seed)
        .with_context(|| format!("building the model of arm {}", arm.name))?;
    let layers = task.model_config().layers;
    let mut engine = match engine_config(arm, layers, steps, seed) {
        Some(c) => Some(RankEngine::new(c)?),
        None => None,
    };
    let spe = samples
        .map(|n| steps_per_epoch(arm, n) as u64)
        .unwrap_or(u64::MAX);

    // Resume from this cell's checkpoint, or start over; either way drop what the logs hold
    // beyond the point we restart from, so they read as one uninterrupted run.
    let ck_path = rd.checkpoint(&arm.name, seed);
    let ck = if resuming && ck_path.exists() {
        Some(checkpoint::load(&ck_path)?)
    } else {
        None
    };
    let from = ck.as_ref().map(|c| c.step).unwrap_or(0);
    let keep_to = ck.as_ref().map(|c| c.step as i64).unwrap_or(-1);
    let mine = |a: &str, s: u64| a == arm.name && s == seed;
    filter_jsonl::<MetricRecord>(&rd.metrics(), |r| {
        !mine(&r.arm, r.seed) || (r.step as i64) <= keep_to
    })?;
    filter_jsonl::<RankRecord>(&rd.allocations(), |r| {
        !mine(&r.arm, r.seed) || (r.step as i64) <= keep_to
    })?;
    let mut st = RunnerState::default();
    if let Some(ck) = ck {
        let cs: CheckpointState =
            serde_json::from_value(ck.state).context("checkpoint state of the runner")?;
        model
            .load_state(&ModelState {
                meta: cs.model,
                tensors: ck.tensors,
            })
            .context("restoring the model from its checkpoint")?;
        if let (Some(e), Some(es)) = (&mut engine, cs.engine) {
            e.load_state(es)?;
        }
        st = cs.runner;
    }
    let slots = targeted_slots(arm, task.model_config().layers);
    let mut start_record = None;
    if let Some(e) = &mut engine {
        start_record = e.on_start(&mut SlotView {
            store: &mut model,
            slots: &slots,
        })?;
    } else if arm.lora.on().is_some() && from == 0 {
        start_record = Some(fixed_allocation(
            &SlotView {
                store: &mut model,
                slots: &slots,
            }
            .adapters(),
        ));
    }
    be.ledger().reset_peak();

    let eval: Vec<Batch> = task.eval_batches().to_vec();
    let seq = eval.first().map(|b| b.seq).unwrap_or(1);
    let wall_before = st.wall_s;
    let schedule = Schedule::new(
        arm.phases.clone(),
        steps,
        spe,
        arm.train.eval_every.map(|n| n as u64),
    );
    let mut driver = EngineDriver::new(engine, schedule, spe);
    driver.restore(std::mem::take(&mut st.driver));
    let mut hooks = CellHooks {
        arm,
        seed,
        rd,
        driver,
        slots,
        eval,
        lm: task.lm_eval().cloned(),
        metric_is_loss: metric_is_loss(arm),
        st,
        total_steps: steps,
        tokens_per_step: (arm.train.batch * arm.train.accum * seq) as u64,
        checkpoint_every: arm.train.checkpoint_every.map(|n| n as u64),
        metrics: JsonlWriter::open(&rd.metrics())?,
        ranks: JsonlWriter::open(&rd.allocations())?,
        progress: progress.cell(&arm.name, seed, steps, from),
        budget,
        started: Instant::now(),
        wall_before,
        final_eval: None,
        last_record: None,
    };
    if from == 0 {
        hooks.record_allocations(start_record.into_iter().collect())?;
    }
    let t0 = Instant::now();
    let result = train(&mut model, task.as_mut(), &cfg, &mut hooks);
    let wall = wall_before + t0.elapsed().as_secs_f64();
    if let Err(e) = result {
        hooks.progress.finish("stopped");
        return Err(e.context(format!("arm {} seed {seed}", arm.name)));
    }
    let fe = hooks
        .final_eval
        .clone()
        .context("the training loop ended without an evaluation")?;
    let done_steps = model.step();
    let mem = model.memory();
    let final_loss = hooks.driver.state().losses.back().copied();
    let tokens = hooks.st.tokens;
    let metric = match fe.named.get(super::arm::metric_of(arm).0) {
        Some(&m) => m,
        None if hooks.metric_is_loss => fe.loss,
        None => fe.accuracy,
    };
    hooks
        .progress
        .finish(&format!("done: eval loss {:.4}", fe.loss));

    // The trained model's folder (PEFT export, final state, adarank.json) and the final
    // evaluation's predictions, per example.
    let info = CellInfo {
        format: 1,
        seed,
        steps: done_steps,
        head: *model.head(),
        hf_class: export::hf_layout(model.config().flavour, model.head())
            .class
            .map(str::to_string),
        base_model: base_model.clone(),
        split,
        arm: arm.clone(),
    };
    let use_rslora = arm.lora.on().is_some_and(|l| l.rslora);
    export::export_cell(
        &rd.adapters(&arm.name, seed),
        &mut model,
        &info,
        use_rslora,
        base_has_pooler,
    )?;
    if evaluate::has_predictions(model.head()) {
        let ev = evaluate::predict(&mut model, task.as_ref())?;
        let dir = rd.root.join("predictions");
        evaluate::write_predictions(
            &evaluate::predictions_stem(&dir, &arm.name, seed, None),
            &ev.predictions,
        )?;
    }
    let infos = model.adapters();
    let trainable_params = model.trainable_params() as u64;
    let _ = std::fs::remove_file(&ck_path);
    Ok(CellResult {
        arm: arm.name.clone(),
        seed,
        status: CellStatus::Done,
        error: None,
        steps: done_steps,
        metric: Some(metric),
        eval_loss: Some(fe.loss),
        eval_accuracy: (!hooks.metric_is_loss).then_some(fe.accuracy),
        final_train_loss: final_loss,
        peak_bytes: mem.total_peak,
        peak_by_kind: MemKind::ALL
            .iter()
            .map(|k| (k.name().to_string(), mem.peak_of(*k)))
            .collect(),
        wall_s: wall,
        tokens_per_s: tokens as f64 / wall.max(1e-9),
        trainable_params,
        final_ranks: infos.into_iter().map(|a| (a.name, a.rank)).collect(),
        planned_steps: steps,
        eval_examples: hooks.eval.iter().map(|b| b.batch as u64).sum(),
        eval_split: eval_split.to_string(),
        lr: arm.train.lr,
    })
}
