//! When things happen in training: phase advance and the actions due after each optimizer
//! step, for the runner and for the tests alike (one schedule, one set of rules).
//!
//! Steps are optimizer steps counted from 1; the schedule runs after step `s`'s update.
//! Phase k covers steps `start_k + 1 ..= end_k`, with `start_k` the step at which phase k − 1
//! ended (0 for the first phase).
//!
//! Rules, in the order they are applied after step `s`:
//! 1. **Evaluate** when the current phase's `evaluate` action is due at `s` (below) or
//!    `s` is a multiple of `train.eval_every`, and `s` is not the last step (the training loop
//!    evaluates after the last step anyway).
//! 2. **Phase end**: the current phase ends at `s` when its bound is met — `step N`: s ≥ N;
//!    `epoch E`: s ≥ E · steps per epoch; a metric condition: an evaluation ran at `s` and its
//!    value satisfies the condition; a plugin condition: `done(ctx)` returns true; none: never.
//!    The last phase ending stops training; otherwise the next phase starts with
//!    `start = s`, and rules 1–3 are applied again to it at the same step (so a phase whose
//!    bound is already met ends at once).
//! 3. **Actions** of the current phase: `every N steps: X` is due at `s` when
//!    (s − start) is a multiple of N — **including s = start**, so a phase that follows another
//!    acts on entering it (`phase adapt until step 250 { every 50 steps: reallocate }` after a
//!    phase ending at step 150 re-allocates at 150 and 200) — and `s` is before the phase's
//!    static end (a step bound) and before the last training step. An action therefore never
//!    fires on the step that ends its phase, and nothing is re-allocated after the last
//!    optimizer step: every re-allocation is followed by training. `train.checkpoint_every`
//!    adds a checkpoint at each of its multiples before the last step, in any phase. Order
//!    within a step: reallocate, checkpoint, log.
//! 4. **Finalize**: entering a phase without `reallocate` after a phase that had one fires
//!    `Finalize` once (a method that relaxes ranks between re-allocations makes them integer and
//!    exact here).
//!
//! AdaLoRA ([`Schedule::with_method`]) re-allocates on its own budget schedule instead: its
//! `mask` (or `prune`) event fires first at each budget step, and the phases' `reallocate` and
//! `finalize` do not apply.

use super::adalora::{self, AdaLoraConfig};
use super::Method;
use crate::policy::{ActionKind, PhaseSpec, Until};
use anyhow::Result;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// What the schedule asks for at a step (besides evaluations and conditions, which it asks of
/// the [`ScheduleHost`] directly because phase ends depend on them).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Event {
    Reallocate,
    /// The re-allocating phases are over: make the allocation final.
    Finalize,
    Evaluate,
    Checkpoint,
    Log,
    /// AdaLoRA's budget step, masking triplets (`resize = false`) or pruning them.
    Mask,
    Prune,
}

impl Event {
    pub fn name(self) -> &'static str {
        match self {
            Event::Reallocate => "reallocate",
            Event::Finalize => "finalize",
            Event::Evaluate => "evaluate",
            Event::Checkpoint => "checkpoint",
            Event::Log => "log",
            Event::Mask => "mask",
            Event::Prune => "prune",
        }
    }
}

/// The caller's side of a step: evaluations, conditions, and the events themselves.
pub trait ScheduleHost {
    /// Evaluate now; the metrics by name (`eval_loss`, `accuracy`, ...).
    fn evaluate(&mut self, step: u64) -> Result<BTreeMap<String, f64>>;
    /// `done(ctx)` of a phase condition plugin.
    fn condition(&mut self, step: u64, phase: usize, plugin: &Path) -> Result<bool>;
    /// A due `Reallocate`, `Finalize`, `Checkpoint` or `Log`, in that order within a step.
    fn fire(&mut self, step: u64, phase: usize, event: Event) -> Result<()>;
}

/// Where the schedule stands (saved with checkpoints).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ScheduleState {
    /// Index of the current phase.
    pub phase: usize,
    /// The step at which the current phase started (0 for the first).
    pub start: u64,
}

/// What happened after a step.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StepOutcome {
    /// Training stops after this step (the last phase ended early).
    pub stop: bool,
    /// The evaluation run at this step, if any.
    pub evaluated: Option<BTreeMap<String, f64>>,
    /// Events fired, in order.
    pub fired: Vec<Event>,
}

/// One line of a static timeline (`adarank check --plan`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Planned {
    pub step: u64,
    pub phase: String,
    pub event: Event,
}

/// The phases of one arm and where training stands in them.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Schedule {
    phases: Vec<PhaseSpec>,
    total: u64,
    steps_per_epoch: u64,
    eval_every: Option<u64>,
    checkpoint_every: Option<u64>,
    /// AdaLoRA's budget steps and their event: they replace the phases' re-allocations.
    budget: Option<(AdaLoraConfig, Event)>,
    st: ScheduleState,
}

impl Schedule {
    /// `phases` as checked (at least one); `total` optimizer steps; `eval_every` from the
    /// train section.
    pub fn new(
        phases: Vec<PhaseSpec>,
        total: u64,
        steps_per_epoch: u64,
        eval_every: Option<u64>,
    ) -> Self {
        let phases = if phases.is_empty() {
            vec![PhaseSpec {
                name: "main".into(),
                until: Until::End,
                actions: vec![],
            }]
        } else {
            phases
        };
        Self {
            phases,
            total,
            steps_per_epoch: steps_per_epoch.max(1),
            eval_every: eval_every.filter(|n| *n > 0),
            checkpoint_every: None,
            budget: None,
            st: ScheduleState::default(),
        }
    }

    /// Also checkpoint at every multiple of `n` steps (`train.checkpoint_every`) before the
    /// last step, whatever the phase.
    pub fn with_checkpoint_every(mut self, n: Option<u64>) -> Self {
        self.checkpoint_every = n.filter(|n| *n > 0);
        self
    }

    /// The schedule of `method`: AdaLoRA re-allocates at its own budget steps
    /// ([`adalora::is_budget_step`]), which fire as `mask` or `prune` events, first within a
    /// step; the phases' `reallocate` and `finalize` do not apply to it.
    pub fn with_method(mut self, method: &Method) -> Self {
        if let Method::AdaLora(c) = method {
            let ev = if c.resize { Event::Prune } else { Event::Mask };
            self.budget = Some((c.clone(), ev));
        }
        self
    }

    pub fn state(&self) -> &ScheduleState {
        &self.st
    }
    pub fn restore(&mut self, st: ScheduleState) {
        self.st = st;
    }
    pub fn phase(&self) -> &PhaseSpec {
        &self.phases[self.st.phase.min(self.phases.len() - 1)]
    }
    pub fn phase_index(&self) -> usize {
        self.st.phase
    }
    pub fn total_steps(&self) -> u64 {
        self.total
    }

    fn reallocates(p: &PhaseSpec) -> bool {
        p.actions.iter().any(|a| a.what == ActionKind::Reallocate)
    }

    /// AdaLoRA's budget event at `step`, if it has one there.
    fn budget_event(&self, step: u64) -> Option<Event> {
        let (c, ev) = self.budget.as_ref()?;
        adalora::is_budget_step(c, step as usize).then_some(*ev)
    }

    /// Whether the current phase's action `kind` is due at `step` (rule 3).
    fn due(&self, step: u64, kind: ActionKind) -> bool {
        let p = self.phase();
        if step >= self.total {
            return false;
        }
        if let Until::Step(end) = p.until {
            if step >= end as u64 {
                return false;
            }
        }
        let since = step.saturating_sub(self.st.start);
        p.actions
            .iter()
            .any(|a| a.what == kind && a.every > 0 && since.is_multiple_of(a.every as u64))
    }

    fn eval_due(&self, step: u64) -> bool {
        step < self.total
            && (self.due(step, ActionKind::Evaluate)
                || self.eval_every.is_some_and(|n| step.is_multiple_of(n)))
    }

    /// Does the current phase end at `step`?
    fn ends(
        &self,
        step: u64,
        evaluated: Option<&BTreeMap<String, f64>>,
        host: &mut dyn ScheduleHost,
    ) -> Result<bool> {
        Ok(match &self.phase().until {
            Until::Step(n) => step >= *n as u64,
            Until::Epoch(e) => step >= *e as u64 * self.steps_per_epoch,
            Until::Metric { name, op, value } => evaluated
                .and_then(|m| m.get(name))
                .is_some_and(|v| op.holds(*v, *value)),
            Until::Plugin { path } => host.condition(step, self.st.phase, path)?,
            Until::End => false,
        })
    }

    /// Apply the rules after optimizer step `step` (see the module docs).
    pub fn after_step(&mut self, step: u64, host: &mut dyn ScheduleHost) -> Result<StepOutcome> {
        let mut out = StepOutcome::default();
        if let Some(ev) = self.budget_event(step) {
            host.fire(step, self.st.phase, ev)?;
            out.fired.push(ev);
        }
        let phases_reallocate = self.budget.is_none();
        loop {
            if out.evaluated.is_none() && self.eval_due(step) {
                out.evaluated = Some(host.evaluate(step)?);
            }
            if self.ends(step, out.evaluated.as_ref(), host)? {
                if self.st.phase + 1 >= self.phases.len() {
                    out.stop = true;
                    return Ok(out);
                }
                let had = Self::reallocates(self.phase());
                self.st.phase += 1;
                self.st.start = step;
                if phases_reallocate && had && !Self::reallocates(self.phase()) {
                    host.fire(step, self.st.phase, Event::Finalize)?;
                    out.fired.push(Event::Finalize);
                }
                continue;
            }
            break;
        }
        for (kind, ev) in [
            (ActionKind::Reallocate, Event::Reallocate),
            (ActionKind::Checkpoint, Event::Checkpoint),
            (ActionKind::Log, Event::Log),
        ] {
            let every = match kind {
                ActionKind::Checkpoint => self.checkpoint_every,
                _ => None,
            };
            let phase_due = self.due(step, kind) && (phases_reallocate || ev != Event::Reallocate);
            if phase_due || every.is_some_and(|n| step < self.total && step.is_multiple_of(n)) {
                host.fire(step, self.st.phase, ev)?;
                out.fired.push(ev);
            }
        }
        Ok(out)
    }

    /// The events after `reached` that no phase decides: AdaLoRA's budget steps and
    /// `checkpoint_every`, listed without a phase.
    fn static_tail(&self, reached: u64, out: &mut Vec<Planned>) {
        for step in reached + 1..self.total {
            let every = self
                .checkpoint_every
                .is_some_and(|n| step.is_multiple_of(n));
            let events = self.budget_event(step).into_iter();
            for event in events.chain(every.then_some(Event::Checkpoint)) {
                out.push(Planned {
                    step,
                    phase: String::new(),
                    event,
                });
            }
        }
    }

    /// Every event of the arm from step 1 while phase ends are static (step and epoch bounds);
    /// stops at the first phase whose end depends on training (a metric or plugin condition),
    /// returning how far it got. Evaluations at metric-bounded phases are listed as they would
    /// fire; the bounds themselves are never met here.
    pub fn timeline(&self) -> (Vec<Planned>, Option<String>) {
        struct Dry<'a> {
            out: &'a mut Vec<Planned>,
            phases: &'a [PhaseSpec],
            dynamic: &'a mut Option<String>,
        }
        impl ScheduleHost for Dry<'_> {
            fn evaluate(&mut self, step: u64) -> Result<BTreeMap<String, f64>> {
                self.out.push(Planned {
                    step,
                    phase: String::new(),
                    event: Event::Evaluate,
                });
                Ok(BTreeMap::new())
            }
            fn condition(&mut self, _step: u64, phase: usize, _plugin: &Path) -> Result<bool> {
                if self.dynamic.is_none() {
                    *self.dynamic = Some(self.phases[phase].name.clone());
                }
                Ok(false)
            }
            fn fire(&mut self, step: u64, phase: usize, event: Event) -> Result<()> {
                self.out.push(Planned {
                    step,
                    phase: self.phases[phase].name.clone(),
                    event,
                });
                Ok(())
            }
        }
        let mut s = self.clone();
        s.st = ScheduleState::default();
        let mut out = Vec::new();
        let mut dynamic = None;
        for step in 1..=self.total {
            if let Until::Metric { .. } = s.phase().until {
                dynamic.get_or_insert_with(|| s.phase().name.clone());
            }
            let phase_name = s.phase().name.clone();
            let before = out.len();
            let r = s.after_step(
                step,
                &mut Dry {
                    out: &mut out,
                    phases: &self.phases,
                    dynamic: &mut dynamic,
                },
            );
            // Events that belong to no phase (`checkpoint_every`, AdaLoRA's budget steps) are
            // listed without one.
            let phase_checkpoint = s.due(step, ActionKind::Checkpoint);
            for p in &mut out[before..] {
                let own = match p.event {
                    Event::Mask | Event::Prune => false,
                    Event::Checkpoint => phase_checkpoint,
                    _ => true,
                };
                if !own {
                    p.phase = String::new();
                } else if p.phase.is_empty() {
                    p.phase = phase_name.clone();
                }
            }
            if dynamic.is_some() || r.map(|o| o.stop).unwrap_or(true) {
                // Budget steps and `checkpoint_every` do not depend on the phases: past a
                // dynamic phase end they are still known.
                if dynamic.is_some() {
                    s.static_tail(step, &mut out);
                }
                break;
            }
        }
        (out, dynamic)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{Action, CmpOp};

    fn phase(name: &str, until: Until, actions: &[(usize, ActionKind)]) -> PhaseSpec {
        PhaseSpec {
            name: name.into(),
            until,
            actions: actions
                .iter()
                .map(|&(every, what)| Action { every, what })
                .collect(),
        }
    }

    #[derive(Default)]
    struct Log {
        events: Vec<(u64, usize, Event)>,
        evals: Vec<u64>,
        eval_loss: f64,
    }
    impl ScheduleHost for Log {
        fn evaluate(&mut self, step: u64) -> Result<BTreeMap<String, f64>> {
            self.evals.push(step);
            Ok([("eval_loss".to_string(), self.eval_loss)].into())
        }
        fn condition(&mut self, step: u64, _phase: usize, _plugin: &Path) -> Result<bool> {
            Ok(step >= 7)
        }
        fn fire(&mut self, step: u64, phase: usize, event: Event) -> Result<()> {
            self.events.push((step, phase, event));
            Ok(())
        }
    }

    fn run(s: &mut Schedule, total: u64, log: &mut Log) -> u64 {
        for step in 1..=total {
            if s.after_step(step, log).unwrap().stop {
                return step;
            }
        }
        total
    }

    #[test]
    fn reallocation_fires_on_entering_a_phase_then_every_n_and_never_at_its_end() {
        // The paper table's schedule: uniform to 150, adapt to 250 every 50, settle to 300.
        let mut s = Schedule::new(
            vec![
                phase("uniform", Until::Step(150), &[]),
                phase("adapt", Until::Step(250), &[(50, ActionKind::Reallocate)]),
                phase("settle", Until::End, &[]),
            ],
            300,
            100,
            None,
        );
        let mut log = Log::default();
        assert_eq!(run(&mut s, 300, &mut log), 300);
        assert_eq!(
            log.events,
            vec![
                (150, 1, Event::Reallocate),
                (200, 1, Event::Reallocate),
                (250, 2, Event::Finalize),
            ]
        );
    }

    #[test]
    fn first_phase_acts_after_n_steps_and_nothing_fires_at_the_last_step() {
        let mut s = Schedule::new(
            vec![phase(
                "main",
                Until::End,
                &[(10, ActionKind::Checkpoint), (5, ActionKind::Log)],
            )],
            20,
            100,
            None,
        );
        let mut log = Log::default();
        run(&mut s, 20, &mut log);
        let steps: Vec<(u64, Event)> = log.events.iter().map(|e| (e.0, e.2)).collect();
        assert_eq!(
            steps,
            vec![
                (5, Event::Log),
                (10, Event::Checkpoint),
                (10, Event::Log),
                (15, Event::Log)
            ]
        );
    }

    #[test]
    fn eval_every_evaluates_at_its_multiples_before_the_end() {
        let mut s = Schedule::new(vec![], 60, 100, Some(20));
        let mut log = Log::default();
        run(&mut s, 60, &mut log);
        // Step 60 is the training loop's own final evaluation.
        assert_eq!(log.evals, vec![20, 40]);
    }

    #[test]
    fn metric_and_plugin_bounds_end_phases_at_their_evaluation() {
        let mut s = Schedule::new(
            vec![
                phase(
                    "tune",
                    Until::Metric {
                        name: "eval_loss".into(),
                        op: CmpOp::Lt,
                        value: 0.5,
                    },
                    &[(4, ActionKind::Evaluate), (4, ActionKind::Reallocate)],
                ),
                phase(
                    "plateau",
                    Until::Plugin {
                        path: "p.rhai".into(),
                    },
                    &[],
                ),
                phase("tail", Until::Epoch(3), &[(1, ActionKind::Log)]),
            ],
            100,
            4,
            None,
        );
        let mut log = Log {
            eval_loss: 0.4,
            ..Default::default()
        };
        // Evaluation at 4 meets the bound: `tune` ends before re-allocating at 4; `plateau`
        // starts at 4 and its condition holds from step 7; `tail` runs to epoch 3 (step 12),
        // whose end stops training.
        assert_eq!(run(&mut s, 100, &mut log), 12);
        assert_eq!(log.evals, vec![4]);
        let fired: Vec<(u64, Event)> = log.events.iter().map(|e| (e.0, e.2)).collect();
        assert_eq!(fired[0], (4, Event::Finalize));
        assert_eq!(fired[1], (7, Event::Log));
        assert_eq!(fired.last(), Some(&(11, Event::Log)));
    }

    #[test]
    fn adalora_reallocates_at_its_budget_steps_only() {
        let c = AdaLoraConfig {
            tinit: 5,
            tfinal: 5,
            delta_t: 5,
            total_steps: 30,
            ..Default::default()
        };
        let s = Schedule::new(
            vec![phase("adapt", Until::End, &[(10, ActionKind::Reallocate)])],
            30,
            1000,
            None,
        )
        .with_checkpoint_every(Some(12))
        .with_method(&Method::AdaLora(c));
        let (t, _) = s.timeline();
        let got: Vec<(u64, &str, Event)> = t
            .iter()
            .map(|p| (p.step, p.phase.as_str(), p.event))
            .collect();
        // ΔT multiples in (tinit, T − tfinal], then the final phase's first step; the phase's
        // `reallocate` does not apply; checkpoints at multiples of 12 belong to no phase.
        assert_eq!(
            got,
            vec![
                (10, "", Event::Mask),
                (12, "", Event::Checkpoint),
                (15, "", Event::Mask),
                (20, "", Event::Mask),
                (24, "", Event::Checkpoint),
                (25, "", Event::Mask),
                (26, "", Event::Mask),
            ]
        );
    }

    #[test]
    fn timeline_lists_static_events_and_stops_at_a_dynamic_bound() {
        let s = Schedule::new(
            vec![
                phase("uniform", Until::Step(20), &[]),
                phase("adapt", Until::Step(60), &[(20, ActionKind::Reallocate)]),
                phase("settle", Until::End, &[]),
            ],
            80,
            1000,
            Some(40),
        );
        let (t, dynamic) = s.timeline();
        assert!(dynamic.is_none());
        let got: Vec<(u64, &str, Event)> = t
            .iter()
            .map(|p| (p.step, p.phase.as_str(), p.event))
            .collect();
        assert_eq!(
            got,
            vec![
                (20, "adapt", Event::Reallocate),
                (40, "adapt", Event::Evaluate),
                (40, "adapt", Event::Reallocate),
                (60, "settle", Event::Finalize),
            ]
        );
        let s = Schedule::new(
            vec![
                phase("warm", Until::Step(10), &[(5, ActionKind::Log)]),
                phase(
                    "plateau",
                    Until::Plugin {
                        path: "p.rhai".into(),
                    },
                    &[],
                ),
                phase("rest", Until::End, &[]),
            ],
            80,
            1000,
            None,
        );
        let (t, dynamic) = s.timeline();
        assert_eq!(dynamic.as_deref(), Some("plateau"));
        assert_eq!(t.len(), 1);
    }
}
