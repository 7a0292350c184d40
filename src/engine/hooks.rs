//! The rank engine as training-loop hooks: gradient statistics after every backward pass,
//! re-allocation on a schedule after the optimizer step, a phase condition plugin.
//! Call [`RankEngine::on_start`] on the model before `train`.

use super::{EngineCtx, Method, RankChange, RankEngine};
use crate::backend::Backend;
use crate::model::Model;
use crate::train::trainer::{Control, EvalMetrics, Hooks, StepMetrics};
use std::path::PathBuf;

/// When re-allocation happens.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ReallocSchedule {
    /// Phase 1 (uniform rank) lasts at least this many optimizer steps…
    pub phase1_steps: u64,
    /// …and, when given, until this condition plugin says `done(ctx)`.
    pub phase1_condition: Option<PathBuf>,
    /// Phase 2: re-allocate every this many steps, starting when phase 1 ends.
    pub every: u64,
    /// No re-allocation after this step (0: until the end).
    pub until: u64,
}

/// Losses kept for `ctx.losses`.
const LOSS_WINDOW: usize = 256;

pub struct EngineHooks<'a> {
    pub engine: &'a mut RankEngine,
    pub schedule: ReallocSchedule,
    pub ctx: EngineCtx,
    /// Every allocation, for ranks.jsonl.
    pub changes: Vec<RankChange>,
    phase2_from: Option<u64>,
}

impl<'a> EngineHooks<'a> {
    pub fn new(engine: &'a mut RankEngine, schedule: ReallocSchedule, total_steps: u64) -> Self {
        Self {
            engine,
            schedule,
            ctx: EngineCtx {
                phase: 1,
                total_steps: total_steps as usize,
                ..Default::default()
            },
            changes: vec![],
            phase2_from: None,
        }
    }
}

impl<B: Backend> Hooks<B> for EngineHooks<'_> {
    fn after_backward(&mut self, step: u64, model: &mut Model<B>) -> anyhow::Result<()> {
        self.engine.after_backward(step as usize, model)?;
        Ok(())
    }

    fn after_step(
        &mut self,
        step: u64,
        model: &mut Model<B>,
        m: &StepMetrics,
    ) -> anyhow::Result<Control> {
        self.ctx.step = step as usize;
        self.ctx.losses.push(m.loss as f64);
        if self.ctx.losses.len() > LOSS_WINDOW {
            self.ctx.losses.remove(0);
        }
        if matches!(self.engine.config().method, Method::AdaLora(_)) {
            // AdaLoRA applies t_init, ΔT and t_final itself; it must see every step.
            if let Some(c) = self.engine.reallocate(step as usize, model, &self.ctx)? {
                self.changes.push(c);
            }
            return Ok(Control::Continue);
        }
        if self.phase2_from.is_none() && step >= self.schedule.phase1_steps {
            let done = match &self.schedule.phase1_condition {
                Some(p) => self.engine.phase_done(p, &self.ctx)?,
                None => true,
            };
            if done {
                self.phase2_from = Some(step);
                self.ctx.phase = 2;
            }
        }
        if let Some(from) = self.phase2_from {
            let due = (step - from).is_multiple_of(self.schedule.every.max(1))
                && (self.schedule.until == 0 || step <= self.schedule.until);
            if due {
                if let Some(c) = self.engine.reallocate(step as usize, model, &self.ctx)? {
                    self.changes.push(c);
                }
            }
        }
        Ok(Control::Continue)
    }

    fn on_eval(&mut self, e: &EvalMetrics) -> anyhow::Result<()> {
        self.ctx.metrics.insert("eval_loss".into(), e.loss);
        self.ctx.metrics.insert("accuracy".into(), e.accuracy);
        Ok(())
    }
}
