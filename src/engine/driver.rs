//! The rank engine and the schedule as one per-step sequence, shared by the experiment runner
//! and the tests: after every backward pass the engine gathers statistics; after every
//! optimizer step it does its per-step work, then the [`Schedule`] advances phases and fires
//! re-allocations, evaluations, checkpoints and logs.
//!
//! [`EngineDriver`] also implements the training loop's [`Hooks`] directly (the model is the
//! adapter store), for tests and programs that need no run directory.

use super::schedule::{Event, Schedule, ScheduleHost, ScheduleState};
use super::{Allocation, EngineCtx, RankEngine};
use crate::adapter::AdapterStore;
use crate::backend::Backend;
use crate::model::Model;
use crate::train::trainer::{Control, EvalMetrics, Hooks, StepMetrics};
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
    /// Every allocation so far, when used as training-loop hooks.
    pub allocations: Vec<Allocation>,
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
            Event::Reallocate | Event::Finalize => {
                if let Some(e) = self.engine.as_mut() {
                    let store = self.host.store();
                    let a = if event == Event::Reallocate {
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
    pub fn new(engine: Option<RankEngine>, schedule: Schedule, steps_per_epoch: u64) -> Self {
        Self {
            engine,
            schedule,
            steps_per_epoch: steps_per_epoch.max(1),
            losses: VecDeque::new(),
            metrics: BTreeMap::new(),
            allocations: vec![],
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

/// The model as the driver's host, without evaluation data.
struct ModelHost<'a, B: Backend> {
    model: &'a mut Model<B>,
}

impl<B: Backend> DriverHost for ModelHost<'_, B> {
    fn store(&mut self) -> &mut dyn AdapterStore {
        self.model
    }
    fn evaluate(&mut self, step: u64) -> Result<BTreeMap<String, f64>> {
        bail!(
            "step {step}: the schedule asks for an evaluation, but these hooks have no \
             evaluation data (use the experiment runner)"
        )
    }
}

impl<B: Backend> Hooks<B> for EngineDriver {
    fn after_backward(&mut self, step: u64, model: &mut Model<B>) -> Result<()> {
        EngineDriver::after_backward(self, step, model)
    }

    fn after_step(&mut self, step: u64, model: &mut Model<B>, m: &StepMetrics) -> Result<Control> {
        let out = EngineDriver::after_step(self, step, m.loss as f64, &mut ModelHost { model })?;
        self.allocations.extend(out.allocations);
        Ok(if out.stop {
            Control::Stop
        } else {
            Control::Continue
        })
    }

    fn on_eval(&mut self, e: &EvalMetrics) -> Result<()> {
        self.metrics.insert("eval_loss".into(), e.loss);
        self.metrics.insert("accuracy".into(), e.accuracy);
        Ok(())
    }
}
