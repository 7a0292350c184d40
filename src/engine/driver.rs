//! The rank engine and the schedule as one per-step sequence, shared by the experiment runner
//! and the tests: after every backward pass the engine gathers statistics; after every
//! optimizer step it does its per-step work, then the [`Schedule`] advances phases and fires
//! re-allocations, evaluations, checkpoints and logs.
//!
//! [`DriverHooks`] is the training loop's one implementation of [`Hooks`]: the driver on the
//! model's targeted slots, with a [`Sink`] for metrics, allocations and checkpoints (the
//! runner's writes the run directory; [`Collect`] keeps allocations for tests and benchmarks).

use super::schedule::{Event, Schedule, ScheduleHost, ScheduleState};
use super::EngineState;
use super::{Allocation, EngineCtx, RankEngine};
use crate::adapter::{AdapterStore, SlotView};
use crate::backend::Backend;
use crate::data::lm::LmEvalSet;
use crate::model::{Batch, Model};
use crate::train::trainer::{evaluate_batches, Control, EvalMetrics, Hooks, StepMetrics};
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};
use std::path::Path;

/// Training losses kept for `ctx.losses` (enough for `loss_plateau`'s two windows of 20 and
/// any plugin that wants a longer view).
pub const LOSS_WINDOW: usize = 256;

/// What the caller provides at a step.
pub trait DriverHost {
    /// The adapters the engine works on.
    fn store(&mut self) -> &mut dyn AdapterStore;
    /// Evaluate now: metrics by name (`eval_loss`, `accuracy`, ...).
    fn evaluate(&mut self, step: u64) -> Result<BTreeMap<String, f64>>;
}

/// What happened after a step.
#[derive(Clone, Debug, Default)]
pub struct DriverStep {
    /// Training stops after this step.
    pub stop: bool,
    /// The evaluation run at this step (schedule or `eval_every`).
    pub evaluated: Option<BTreeMap<String, f64>>,
    /// Allocations made at this step, in order.
    pub allocations: Vec<Allocation>,
    pub checkpoint: bool,
    pub log: bool,
    /// The phase the step belonged to.
    pub phase: String,
}

/// What the driver carries across a checkpoint.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DriverState {
    pub schedule: ScheduleState,
    pub losses: VecDeque<f64>,
    pub metrics: BTreeMap<String, f64>,
}

pub struct EngineDriver {
    /// `None` for arms whose ranks never change (full fine-tuning, fixed ranks): the schedule
    /// still runs their evaluations, checkpoints and phase ends.
    pub engine: Option<RankEngine>,
    pub schedule: Schedule,
    steps_per_epoch: u64,
    losses: VecDeque<f64>,
    metrics: BTreeMap<String, f64>,
}

struct Bridge<'a> {
    engine: &'a mut Option<RankEngine>,
    ctx: &'a mut EngineCtx,
    metrics: &'a mut BTreeMap<String, f64>,
    host: &'a mut dyn DriverHost,
    out: &'a mut DriverStep,
}

impl ScheduleHost for Bridge<'_> {
    fn evaluate(&mut self, step: u64) -> Result<BTreeMap<String, f64>> {
        let m = self.host.evaluate(step)?;
        for (k, v) in &m {
            self.metrics.insert(k.clone(), *v);
        }
        self.ctx.metrics = self.metrics.clone();
        Ok(m)
    }
    fn condition(&mut self, step: u64, phase: usize, plugin: &Path) -> Result<bool> {
        let Some(e) = self.engine.as_mut() else {
            bail!(
                "phase {phase} ends by a plugin condition ({}), but this arm has no rank engine",
                plugin.display()
            );
        };
        self.ctx.step = step as usize;
        self.ctx.phase = phase;
        Ok(e.phase_done(plugin, self.ctx)?)
    }
    fn fire(&mut self, step: u64, phase: usize, event: Event) -> Result<()> {
        self.ctx.phase = phase;
        match event {
            Event::Reallocate | Event::Finalize | Event::Mask | Event::Prune => {
                if let Some(e) = self.engine.as_mut() {
                    let store = self.host.store();
                    let a = if event != Event::Finalize {
                        e.reallocate(step, store, self.ctx)?
                    } else {
                        e.finalize(step, store, self.ctx)?
                    };
                    self.out.allocations.extend(a);
                }
            }
            Event::Checkpoint => self.out.checkpoint = true,
            Event::Log => self.out.log = true,
            Event::Evaluate => {}
        }
        Ok(())
    }
}

impl EngineDriver {
    /// The driver of `engine` (if any) on `schedule`, which follows the engine's method
    /// ([`Schedule::with_method`]: AdaLoRA's budget steps).
    pub fn new(engine: Option<RankEngine>, schedule: Schedule, steps_per_epoch: u64) -> Self {
        let schedule = match &engine {
            Some(e) => schedule.with_method(&e.config().method),
            None => schedule,
        };
        Self {
            engine,
            schedule,
            steps_per_epoch: steps_per_epoch.max(1),
            losses: VecDeque::new(),
            metrics: BTreeMap::new(),
        }
    }

    pub fn state(&self) -> DriverState {
        DriverState {
            schedule: self.schedule.state().clone(),
            losses: self.losses.clone(),
            metrics: self.metrics.clone(),
        }
    }
    pub fn restore(&mut self, st: DriverState) {
        self.schedule.restore(st.schedule);
        self.losses = st.losses;
        self.metrics = st.metrics;
    }

    /// `ctx` as of `step`.
    pub fn ctx(&self, step: u64) -> EngineCtx {
        EngineCtx {
            step: step as usize,
            epoch: (step / self.steps_per_epoch) as usize,
            phase: self.schedule.phase_index(),
            phase_name: self.schedule.phase().name.clone(),
            total_steps: self.schedule.total_steps() as usize,
            losses: self.losses.iter().copied().collect(),
            metrics: self.metrics.clone(),
        }
    }

    pub fn after_backward(&mut self, step: u64, store: &mut dyn AdapterStore) -> Result<()> {
        if let Some(e) = self.engine.as_mut() {
            e.after_backward(step, store)?;
        }
        Ok(())
    }

    /// After optimizer step `step` whose training loss was `loss`.
    pub fn after_step(
        &mut self,
        step: u64,
        loss: f64,
        host: &mut dyn DriverHost,
    ) -> Result<DriverStep> {
        self.losses.push_back(loss);
        while self.losses.len() > LOSS_WINDOW {
            self.losses.pop_front();
        }
        let mut out = DriverStep {
            phase: self.schedule.phase().name.clone(),
            ..Default::default()
        };
        let mut ctx = self.ctx(step);
        if let Some(e) = self.engine.as_mut() {
            out.allocations
                .extend(e.after_step(step, host.store(), &ctx)?);
        }
        let EngineDriver {
            engine,
            schedule,
            metrics,
            ..
        } = self;
        let s = schedule.after_step(
            step,
            &mut Bridge {
                engine,
                ctx: &mut ctx,
                metrics,
                host,
                out: &mut out,
            },
        )?;
        out.stop = s.stop;
        out.evaluated = s.evaluated;
        Ok(out)
    }
}

/// Where the loop's hooks ([`DriverHooks`]) hand what a step produced. Every method has a
/// default that keeps nothing; the runner's sink writes the run directory, [`Collect`] keeps
/// the allocations in memory.
pub trait Sink<B: Backend> {
    /// Step `step` was taken (the update applied), before the engine and the schedule see it.
    fn step_taken(&mut self, _step: u64, _m: &StepMetrics) -> Result<()> {
        Ok(())
    }
    /// An evaluation the schedule asked for, by name.
    fn evaluated(&mut self, _step: u64, _m: &BTreeMap<String, f64>) -> Result<()> {
        Ok(())
    }
    /// Allocations made (the engine's start record, then each step's, in order).
    fn allocations(&mut self, _a: Vec<Allocation>) -> Result<()> {
        Ok(())
    }
    /// The step's metrics and what the driver did at it; `last` when training ends here (the
    /// loop's final evaluation follows).
    fn record(
        &mut self,
        _step: u64,
        _model: &mut Model<B>,
        _m: &StepMetrics,
        _out: &DriverStep,
        _last: bool,
    ) -> Result<()> {
        Ok(())
    }
    /// A checkpoint is due after `step`: the engine's and the driver's state to keep with the
    /// model's.
    fn checkpoint(
        &mut self,
        _step: u64,
        _model: &mut Model<B>,
        _engine: Option<EngineState>,
        _driver: DriverState,
    ) -> Result<()> {
        Ok(())
    }
    /// Everything of step `step` is done.
    fn stepped(&mut self, _step: u64, _m: &StepMetrics) -> Result<()> {
        Ok(())
    }
    /// The loop's own evaluation (the final one, and `eval_every` of the loop's settings).
    fn on_eval(&mut self, _e: &EvalMetrics) -> Result<()> {
        Ok(())
    }
}

/// A sink that keeps every allocation (tests, benchmarks).
#[derive(Default)]
pub struct Collect {
    pub allocations: Vec<Allocation>,
}

impl<B: Backend> Sink<B> for Collect {
    fn allocations(&mut self, a: Vec<Allocation>) -> Result<()> {
        self.allocations.extend(a);
        Ok(())
    }
}

/// The training loop's [`Hooks`]: the driver on the targeted slots of the model, evaluating on
/// `eval` when the schedule asks, handing everything to the sink.
pub struct DriverHooks<'a, S> {
    pub driver: EngineDriver,
    /// Indices into the model's adapters the engine sees (`lora.targets` × `lora.layers`).
    pub slots: Vec<usize>,
    /// The held-out batches of the schedule's evaluations (`None`: an evaluation is an error).
    pub eval: Option<&'a [Batch]>,
    /// A causal LM's evaluation set beyond the loss.
    pub lm: Option<&'a LmEvalSet>,
    pub sink: S,
}

impl<S> DriverHooks<'static, S> {
    /// Hooks over every adapter of the model, without evaluation data.
    pub fn new(driver: EngineDriver, adapters: usize, sink: S) -> Self {
        Self {
            driver,
            slots: (0..adapters).collect(),
            eval: None,
            lm: None,
            sink,
        }
    }
}

/// The model's targeted slots and the evaluation data, as the driver's host at one step.
struct StepHost<'a, 'b, B: Backend, S> {
    view: SlotView<'a, Model<B>>,
    eval: Option<&'b [Batch]>,
    lm: Option<&'b LmEvalSet>,
    sink: &'a mut S,
}

impl<B: Backend, S: Sink<B>> DriverHost for StepHost<'_, '_, B, S> {
    fn store(&mut self) -> &mut dyn AdapterStore {
        &mut self.view
    }
    fn evaluate(&mut self, step: u64) -> Result<BTreeMap<String, f64>> {
        let Some(eval) = self.eval else {
            bail!(
                "step {step}: the schedule asks for an evaluation, but these hooks have no \
                 evaluation data (use the experiment runner)"
            )
        };
        let m = evaluate_batches(self.view.store, eval, self.lm, step)?.metrics();
        self.sink.evaluated(step, &m)?;
        Ok(m)
    }
}

impl<S> DriverHooks<'_, S> {
    /// The engine's start on the targeted slots (W0 spectra, first ranks): its allocation
    /// record, if any; `None` without an engine.
    pub fn start<B: Backend>(&mut self, model: &mut Model<B>) -> Result<Option<Allocation>> {
        let mut view = SlotView::new(model, &self.slots);
        match &mut self.driver.engine {
            Some(e) => Ok(e.on_start(&mut view)?),
            None => Ok(None),
        }
    }
}

impl<B: Backend, S: Sink<B>> Hooks<B> for DriverHooks<'_, S> {
    fn after_backward(&mut self, step: u64, model: &mut Model<B>) -> Result<()> {
        self.driver
            .after_backward(step, &mut SlotView::new(model, &self.slots))
    }

    fn after_step(&mut self, step: u64, model: &mut Model<B>, m: &StepMetrics) -> Result<Control> {
        self.sink.step_taken(step, m)?;
        let out = self.driver.after_step(
            step,
            m.loss as f64,
            &mut StepHost {
                view: SlotView::new(model, &self.slots),
                eval: self.eval,
                lm: self.lm,
                sink: &mut self.sink,
            },
        )?;
        self.sink.allocations(out.allocations.clone())?;
        let last = out.stop || step >= self.driver.schedule.total_steps();
        self.sink.record(step, model, m, &out, last)?;
        if out.checkpoint && !last {
            let engine = match &self.driver.engine {
                Some(e) => Some(e.state(&SlotView::new(model, &self.slots))?),
                None => None,
            };
            let driver = self.driver.state();
            self.sink.checkpoint(step, model, engine, driver)?;
        }
        self.sink.stepped(step, m)?;
        Ok(if out.stop {
            Control::Stop
        } else {
            Control::Continue
        })
    }

    fn on_eval(&mut self, e: &EvalMetrics) -> Result<()> {
        self.driver.metrics.extend(e.metrics());
        self.sink.on_eval(e)
    }
}
