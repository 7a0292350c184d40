//! The scripted method: complexity → learner → allocator, all rhai plugins. Every adapter
//! starts at `init_rank`; the allocator decides at the schedule's `reallocate`. (A fixed or
//! layer-wise arm needs no engine: the model is built with its ranks and nothing resizes it.)
//!
//! A learner that defines `learn_step(state, grads, ctx)` relaxes the ranks between
//! re-allocations (see [`super::relax`]): α and β then learn from the task loss every step.

use super::fade::PendingCut;
use super::method::{Allocation, RankMethod, RuleLog};
use super::relax::{self, Relaxation};
use super::{cfg_err, stats, Bounds, Core, EngineCtx, Method, Plugin, Result, Role, SlotExtra};
use crate::adapter::AdapterStore;
use rhai::{Array, Dynamic};
use std::path::PathBuf;

pub struct Scripted {
    complexity: Plugin,
    allocator: Plugin,
    learner: Option<Plugin>,
    /// Some when the learner defines `learn_step`.
    relax: Option<Relaxation>,
    /// Unrelaxed re-allocations under `lora.fade`: the cut the last decision waits for.
    pending: Option<PendingCut>,
    /// C_i at the last re-allocation.
    complexities: Vec<f64>,
    /// ‖ΔW‖²_F right after the last re-allocation (kept when a plugin reads
    /// `delta_energy_prev`).
    energies: Vec<f64>,
}

fn shipped(f: &str) -> PathBuf {
    PathBuf::from(format!("{}{f}", super::source::BUILTIN))
}

fn param_f64(core: &Core, key: &str, default: f64) -> f64 {
    core.cfg
        .params
        .get(key)
        .and_then(|v| v.as_f64())
        .unwrap_or(default)
}

impl Scripted {
    pub fn new(core: &mut Core, method: Method) -> Result<Self> {
        let (c, a, l) = match method {
            Method::Adaptive {
                complexity,
                allocator,
                learner,
            } => (complexity, allocator, learner),
            Method::Script {
                allocator,
                complexity,
            } => (
                complexity.unwrap_or_else(|| shipped("spectral_gradient.rhai")),
                allocator,
                None,
            ),
            Method::AdaLora(_) | Method::Sora(_) => {
                return Err(cfg_err("not a scripted method"));
            }
        };
        let complexity = core.load_plugin(&c, Role::Complexity)?;
        let allocator = core.load_plugin(&a, Role::Allocator)?;
        let learner = l.map(|p| core.load_plugin(&p, Role::Learner)).transpose()?;
        let relax = learner
            .as_ref()
            .filter(|p| p.defines(Role::LearnerStep.function(), Role::LearnerStep.arity()))
            .map(|_| {
                Relaxation::new(
                    param_f64(core, relax::TAU_PARAM, relax::TAU),
                    param_f64(core, relax::FLOOR_PARAM, relax::FLOOR),
                    core.cfg.resize.fade,
                )
            });
        core.note_mentions(
            [Some(&complexity), Some(&allocator), learner.as_ref()]
                .into_iter()
                .flatten(),
        );
        Ok(Self {
            complexity,
            allocator,
            learner,
            relax,
            pending: None,
            complexities: vec![],
            energies: vec![],
        })
    }

    fn extras(&self, core: &Core) -> Vec<SlotExtra> {
        let gates = self
            .relax
            .as_ref()
            .map(|r| r.current_gates(core))
            .unwrap_or_default();
        let grads = self
            .relax
            .as_ref()
            .filter(|r| r.active)
            .map(|r| r.mean_grads())
            .unwrap_or_default();
        (0..core.infos.len())
            .map(|i| SlotExtra {
                complexity: self.complexities.get(i).copied(),
                gates: gates.get(i).cloned().unwrap_or_default(),
                rank_grad: grads.get(i).copied().unwrap_or(0.0),
                delta_energy_prev: self.energies.get(i).copied().unwrap_or(0.0),
                ..Default::default()
            })
            .collect()
    }

    /// complexity → learner → allocator; returns (C, integer ranks).
    fn decide(
        &mut self,
        core: &mut Core,
        store: &mut dyn AdapterStore,
        ctx: &EngineCtx,
    ) -> Result<(Vec<f64>, Vec<usize>)> {
        let budget = core.cfg.budget;
        let mut maps = core.adapter_maps(store, &self.extras(core))?;
        let ctx_map = core.ctx_map(ctx, budget);
        let c = core.call_complexity(&self.complexity, &mut maps, &ctx_map)?;
        self.complexities = c.clone();
        if let Some(l) = &self.learner {
            let arr: Array = maps.iter().cloned().map(Dynamic::from_map).collect();
            core.call_learner(l, Role::Learner, arr, ctx_map)?;
        }
        core.reset_params(&[]);
        let draws = core.rng_draws;
        let ranks = core
            .call_allocator(&self.allocator, maps, budget, &Bounds::Policy)
            .map_err(|e| match (e, &self.learner) {
                // The allocator computes from the learner's state: when it fails, the state
                // the learner produced is the first suspect, so the error names both.
                (super::EngineError::Plugin(mut p), Some(l)) => {
                    p.message = format!(
                        "{} (on the state that learner {} returned: {})",
                        p.message,
                        l.file,
                        core.learned
                            .iter()
                            .map(|(k, v)| format!("{k} = {v:e}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    );
                    super::EngineError::Plugin(p)
                }
                (e, _) => e,
            })?;
        core.rng_draws = draws + 1;
        core.calls.allocations += 1;
        Ok((c, ranks))
    }

    /// The log rule's real-valued ranks α·ln C_i + β, for the record.
    fn scores(core: &Core, c: &[f64]) -> Vec<f64> {
        match (core.learned.get("alpha"), core.learned.get("beta")) {
            (Some(a), Some(b)) => c.iter().map(|x| a * x.ln() + b).collect(),
            _ => vec![],
        }
    }

    fn allocate(
        &mut self,
        core: &mut Core,
        step: u64,
        store: &mut dyn AdapterStore,
        ctx: &EngineCtx,
        last: bool,
    ) -> Result<Option<Allocation>> {
        let before = core.ranks();
        let (c, ranks) = self.decide(core, store, ctx)?;
        let (reason, resized, scores) = match self.relax.as_mut() {
            Some(rx) if last => {
                let s = rx.r.clone();
                ("finalize", rx.finish(core, store, &ranks)?, s)
            }
            Some(rx) => {
                let out = rx.reallocate(core, store, &c, &ranks)?;
                let reason = if out.fading { "fade" } else { "reallocate" };
                (reason, out.resized, rx.r.clone())
            }
            None => {
                let (reason, resized) = self.unrelaxed(core, store, &ranks)?;
                (reason, resized, Self::scores(core, &c))
            }
        };
        if core.mentioned.contains(&"delta_energy_prev") {
            self.energies = (0..core.infos.len())
                .map(|i| {
                    let h = store.adapter_host(i)?;
                    Ok(stats::delta_sv_of(&core.infos[i], &h)
                        .iter()
                        .map(|x| x * x)
                        .sum())
                })
                .collect::<Result<Vec<f64>>>()?;
        }
        // While relaxed, the tensors hold a few nearly closed components beyond the integer
        // allocation; `after` is the allocation (what the relaxed ranks round to).
        let mut rec = core.record(
            step,
            reason,
            &before,
            &ranks,
            Some(core.cfg.budget),
            &c,
            &scores,
            resized,
        );
        let relaxed_offset = self
            .relax
            .as_ref()
            .filter(|rx| rx.active)
            .and_then(|_| core.learned.get("beta").copied());
        Self::log_rule(core, &mut rec, &c, relaxed_offset);
        Ok(Some(rec))
    }

    /// An unrelaxed re-allocation: at once, or (`lora.fade`) a fade towards `ranks` cut
    /// `fade` steps later. A cut still pending is made first.
    fn unrelaxed(
        &mut self,
        core: &mut Core,
        store: &mut dyn AdapterStore,
        ranks: &[usize],
    ) -> Result<(&'static str, bool)> {
        let mut resized = false;
        if let Some(p) = self.pending.take() {
            resized |= p.cut(core, store)?;
        }
        let steps = core.cfg.resize.fade;
        let shrinks = ranks.iter().zip(&core.infos).any(|(r, a)| *r < a.rank);
        if steps == 0 || !shrinks {
            return Ok(("reallocate", core.apply_ranks(store, ranks)? || resized));
        }
        self.pending = Some(PendingCut::start(core, store, ranks, steps)?);
        Ok(("fade", resized))
    }

    /// The record of a fade's cut.
    #[allow(clippy::too_many_arguments)]
    fn cut_record(
        core: &Core,
        step: u64,
        before: &[usize],
        ranks: &[usize],
        complexities: &[f64],
        scores: &[f64],
        resized: bool,
    ) -> Allocation {
        core.record(
            step,
            "cut",
            before,
            ranks,
            Some(core.cfg.budget),
            complexities,
            scores,
            resized,
        )
    }

    /// The log rule's raw terms α·ln C_i, the offset applied (the relaxation's, or the one
    /// that meets the budget in real numbers), the slots at r_min / r_max and the parameters
    /// held, into the record.
    fn log_rule(core: &Core, rec: &mut Allocation, c: &[f64], relaxed_offset: Option<f64>) {
        let Some(alpha) = core.learned.get("alpha").copied() else {
            return;
        };
        let raw: Vec<f64> = c.iter().map(|x| alpha * x.ln()).collect();
        let (lo, n) = (core.cfg.min_rank as f64, raw.len());
        let his: Vec<f64> = (0..n)
            .map(|i| (core.cfg.max_rank.min(core.limit(i)) as f64).max(lo))
            .collect();
        let offset = relaxed_offset.unwrap_or_else(|| {
            let hi = his.iter().cloned().fold(lo, f64::max);
            match core.cfg.param_budget {
                Some(p) => {
                    let costs: Vec<u64> = core
                        .infos
                        .iter()
                        .map(|a| (a.rows + a.cols) as u64)
                        .collect();
                    let y = super::rounding::shift_to_cost(&raw, &costs, p as f64, lo, hi);
                    // δ = y_i − raw_i for any slot strictly inside the bounds.
                    y.iter()
                        .zip(&raw)
                        .find(|(v, _)| **v > lo && **v < hi)
                        .map_or(0.0, |(v, r)| v - r)
                }
                None => super::rounding::budget_shift(&raw, core.cfg.budget as f64, lo, hi),
            }
        });
        let r: Vec<f64> = raw
            .iter()
            .zip(&his)
            .map(|(x, hi)| (x + offset).clamp(lo, *hi))
            .collect();
        for (s, x) in rec.slots.iter_mut().zip(&raw) {
            s.raw = Some(*x);
        }
        rec.rule = Some(RuleLog {
            offset,
            at_min: r.iter().filter(|v| **v <= lo).count(),
            at_max: r.iter().zip(&his).filter(|(v, hi)| **v >= **hi).count(),
            held_params: core.infos.iter().map(|a| a.rank * (a.rows + a.cols)).sum(),
        });
    }
}

impl RankMethod for Scripted {
    fn start(&mut self, core: &mut Core, _store: &mut dyn AdapterStore) -> Result<Vec<usize>> {
        let n = core.infos.len();
        let c = &core.cfg;
        if c.budget > 0 && (c.budget < n * c.min_rank || c.budget > n * c.max_rank) {
            return Err(cfg_err(format!(
                "budget {} cannot be met by {n} adapters with ranks in [{}, {}]",
                c.budget, c.min_rank, c.max_rank
            )));
        }
        core.reset_params(&[]);
        Ok(vec![c.init_rank; n])
    }

    fn started(
        &mut self,
        core: &mut Core,
        store: &mut dyn AdapterStore,
        resumed: bool,
    ) -> Result<()> {
        core.reset_params(&[]);
        if resumed {
            if let Some(rx) = &self.relax {
                rx.resume(core, store)?;
            }
            if let Some(p) = &self.pending {
                p.upload_gates(core, store)?;
            }
        }
        Ok(())
    }

    fn after_backward(
        &mut self,
        core: &mut Core,
        _step: u64,
        store: &mut dyn AdapterStore,
    ) -> Result<()> {
        core.gather(store)
    }

    fn after_step(
        &mut self,
        core: &mut Core,
        step: u64,
        store: &mut dyn AdapterStore,
        ctx: &EngineCtx,
    ) -> Result<Option<Allocation>> {
        let before = core.ranks();
        if let (Some(rx), Some(l)) = (self.relax.as_mut(), self.learner.as_ref()) {
            if rx.active {
                if let Some((ranks, resized)) = rx.step(core, store, l, ctx)? {
                    let scores = rx.r.clone();
                    let c = &self.complexities;
                    return Ok(Some(Self::cut_record(
                        core, step, &before, &ranks, c, &scores, resized,
                    )));
                }
            }
        }
        if let Some(p) = self.pending.as_mut() {
            if p.step(core, store)? {
                let p = self.pending.take().unwrap();
                let ranks = p.ranks.clone();
                let resized = p.cut(core, store)?;
                let scores = Self::scores(core, &self.complexities);
                let c = &self.complexities;
                return Ok(Some(Self::cut_record(
                    core, step, &before, &ranks, c, &scores, resized,
                )));
            }
        }
        Ok(None)
    }

    fn reallocate(
        &mut self,
        core: &mut Core,
        step: u64,
        store: &mut dyn AdapterStore,
        ctx: &EngineCtx,
    ) -> Result<Option<Allocation>> {
        self.allocate(core, step, store, ctx, false)
    }

    fn finalize(
        &mut self,
        core: &mut Core,
        step: u64,
        store: &mut dyn AdapterStore,
        ctx: &EngineCtx,
    ) -> Result<Option<Allocation>> {
        match &self.relax {
            Some(rx) if rx.active => self.allocate(core, step, store, ctx, true),
            _ => Ok(None),
        }
    }

    fn state(&self, _core: &Core, _store: &dyn AdapterStore) -> Result<serde_json::Value> {
        Ok(serde_json::json!({
            "relax": self.relax,
            "pending": self.pending,
            "complexities": self.complexities,
            "energies": self.energies,
        }))
    }

    fn load_state(&mut self, v: serde_json::Value) -> Result<()> {
        if v.is_null() {
            return Ok(());
        }
        if let Some(r) = v.get("relax").filter(|r| !r.is_null()) {
            self.relax = Some(
                serde_json::from_value(r.clone())
                    .map_err(|e| cfg_err(format!("engine state: relaxation: {e}")))?,
            );
        }
        if let Some(p) = v.get("pending").filter(|p| !p.is_null()) {
            self.pending = Some(
                serde_json::from_value(p.clone())
                    .map_err(|e| cfg_err(format!("engine state: pending cut: {e}")))?,
            );
        }
        if let Some(e) = v.get("energies") {
            self.energies = serde_json::from_value(e.clone())
                .map_err(|e| cfg_err(format!("engine state: energies: {e}")))?;
        }
        if let Some(c) = v.get("complexities") {
            self.complexities = serde_json::from_value(c.clone())
                .map_err(|e| cfg_err(format!("engine state: complexities: {e}")))?;
        }
        Ok(())
    }
}
