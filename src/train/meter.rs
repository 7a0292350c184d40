//! Hooks that measure each optimizer step of the training loop: its wall time and the device's
//! counters (dispatches, submits, read-backs, uploads) from the end of one step to the end of
//! the next, the wrapped hooks' work included (the rank engine's statistics, re-allocations).
//! `adarank bench train` reports them; the read-back tests assert them.

use super::trainer::{Control, EvalMetrics, Hooks, RankMetrics, StepMetrics};
use crate::backend::{Backend, Counters};
use crate::model::Model;
use anyhow::Result;
use std::sync::Arc;
use std::time::Instant;

/// What one optimizer step cost.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepCost {
    /// The 1-based optimizer step.
    pub step: u64,
    /// Wall seconds since the end of the previous step (since the hooks were made, for the
    /// first), the device's queued work waited for.
    pub secs: f64,
    /// The device's work over the same span (`None` on a backend without counters: the CPU).
    pub counters: Option<Counters>,
}

/// `inner` with every step measured.
pub struct Metered<'a, B: Backend> {
    inner: &'a mut dyn Hooks<B>,
    be: Arc<B>,
    last: (Instant, Option<Counters>),
    /// One entry per optimizer step, in order.
    pub steps: Vec<StepCost>,
}

impl<'a, B: Backend> Metered<'a, B> {
    /// The first step's clock and counters start now.
    pub fn new(be: Arc<B>, inner: &'a mut dyn Hooks<B>) -> Self {
        let last = (Instant::now(), be.counters());
        Self {
            inner,
            be,
            last,
            steps: vec![],
        }
    }
}

impl<B: Backend> Hooks<B> for Metered<'_, B> {
    fn after_backward(&mut self, step: u64, model: &mut Model<B>) -> Result<()> {
        self.inner.after_backward(step, model)
    }

    fn after_step(&mut self, step: u64, model: &mut Model<B>, m: &StepMetrics) -> Result<Control> {
        let control = self.inner.after_step(step, model, m)?;
        // The step ends when the work its hooks queued is done.
        self.be.sync()?;
        let now = (Instant::now(), self.be.counters());
        self.steps.push(StepCost {
            step,
            secs: now.0.duration_since(self.last.0).as_secs_f64(),
            counters: match (now.1, self.last.1) {
                (Some(end), Some(start)) => Some(end.since(&start)),
                _ => None,
            },
        });
        self.last = now;
        Ok(control)
    }

    fn on_eval(&mut self, e: &EvalMetrics) -> Result<()> {
        self.inner.on_eval(e)
    }

    fn on_ranks(&mut self, r: &RankMetrics) -> Result<()> {
        self.inner.on_ranks(r)
    }
}
