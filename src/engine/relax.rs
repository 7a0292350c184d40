//! Relaxed ranks: how α and β learn from the task loss.
//!
//! Between re-allocations, adapter i's components (ordered by size: a re-allocation leaves
//! them as the truncated SVD of ΔW) carry soft gates
//!
//!   g_ij = σ((r_i − j + ½) / τ),   j = 1, 2, …,   r_i = clamp(α·ln C_i + β, r_min, r_max),
//!
//! so component j is on when j ≤ r_i and off when j > r_i + 1, with a smooth step of width τ.
//! The engine sets the gates; the optimizer never changes them. The backward pass gives
//! ∂L/∂g_ij (the component's x·a_j times dy·b_j, summed), and the chain rule gives, every
//! step and at the cost of one r-vector download per adapter,
//!
//!   ∂L/∂r_i = Σ_j ∂L/∂g_ij · g_ij (1 − g_ij) / τ,   ∂L/∂α = Σ_i ∂L/∂r_i · ln C_i,
//!   ∂L/∂β = Σ_i ∂L/∂r_i.
//!
//! The learner's `learn_step(state, grads, ctx)` turns them into new (α, β) (the shipped
//! `learn_gates.rhai`: Adam on α along the budget constraint Σ r_i = B, β the offset that meets
//! it). An adapter holds the components whose gate is at least `floor` at its current r_i —
//! ⌊r_i + ½ + τ·ln((1 − floor)/floor)⌋ of them: the components it uses plus one or two nearly
//! closed ones. Those nearly closed components are what makes ∂L/∂r_i informative: a component
//! that is switched on fully is absorbed by its own factors (scaling b_j up undoes any gate),
//! so at equilibrium its gate gradient is zero; a nearly closed one that the task needs has
//! ∂L/∂g < 0 until it is opened. A re-allocation recomputes C_i, re-solves β for it, and resizes
//! each adapter to the components it should hold (shrink by truncated SVD of the ungated ΔW,
//! grow with B = 0 components); leaving the re-allocating phases folds the gates into B and
//! resizes to the integer ranks of the allocator — exactly the budget — for the rest of
//! training.
//!
//! **What the relaxation trains counts against the budget.** The held components (the nearly
//! closed ones included) are what trains and what memory holds, so under a hard budget the
//! engine chooses the offset itself: the largest δ with Σ_i c_i·held(clamp(α·ln C_i + δ)) ≤ B,
//! c_i what one rank of adapter i costs against the budget in force (rows + cols under a
//! parameter budget, 1 under a rank budget). The relaxed ranks thus sit about 0.7 of a
//! component below the integer allocation, and an adapter never trains more than the budget.
//! That δ is the learner's β from then on (the log shows the offset actually applied). A
//! learner with a soft budget (`budget_penalty` > 0) keeps its own β.

use super::{Core, EngineCtx, Plugin, Result, Role};
use crate::adapter::AdapterStore;
use rhai::{Array, Dynamic, Map, FLOAT, INT};
use serde::{Deserialize, Serialize};

/// Defaults of the relaxation's two settings, and the plugin parameters that change them.
pub const TAU: f64 = 0.25;
pub const FLOOR: f64 = 0.05;
pub const TAU_PARAM: &str = "gate_tau";
pub const FLOOR_PARAM: &str = "gate_floor";

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Relaxation {
    /// Width of the gates' step.
    pub tau: f64,
    /// Components whose gate is below this are not held.
    pub floor: f64,
    /// Gates are on (between the first re-allocation and the end of the re-allocating phases).
    pub active: bool,
    /// ln C_i at the last re-allocation.
    pub x: Vec<f64>,
    /// The relaxed ranks r_i.
    pub r: Vec<f64>,
    /// Σ over steps since the last re-allocation of ∂L/∂r_i, and the step count.
    pub grad_sum: Vec<f64>,
    pub grad_steps: u64,
    /// What one rank of each adapter costs against the budget in force, and that budget
    /// (the held components' cost stays within it); budget 0: the learner's β is used as is.
    #[serde(default)]
    pub costs: Vec<f64>,
    #[serde(default)]
    pub budget: f64,
    /// Steps over which a re-allocation's dropped components fade out before they are cut
    /// (`lora.fade`; 0: cut at once), and the fade in progress.
    #[serde(default)]
    pub fade_steps: u32,
    #[serde(default)]
    pub fade: Option<Fade>,
}

/// A re-allocation fading in: the gates follow relaxed ranks that move linearly from `from`
/// (where they stood at the decision) to the learner's current r_i over `steps` steps, while
/// every adapter keeps the components it held. At the end (the cut) each adapter is resized
/// to what r_i holds: the components it drops have gates near the floor by then, so cutting
/// them changes ΔW by little — the loss pays for the change gradually, under training,
/// instead of all at once. The held components stay those of the last allocation, so the
/// budget holds throughout.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Fade {
    pub from: Vec<f64>,
    pub steps: u32,
    pub done: u32,
    /// The allocator's integer ranks of the decision (for the cut's record).
    pub ranks: Vec<usize>,
}

impl Fade {
    /// How far the gates have moved: 0 at the decision, 1 at the cut.
    pub fn progress(&self) -> f64 {
        (self.done as f64 / self.steps.max(1) as f64).min(1.0)
    }
}

/// What a relaxed re-allocation did to the tensors.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Realloc {
    /// Tensors changed size.
    pub resized: bool,
    /// A fade started: the cut comes `fade_steps` steps later.
    pub fading: bool,
}

pub fn sigmoid(z: f64) -> f64 {
    1.0 / (1.0 + (-z).exp())
}

impl Relaxation {
    pub fn new(tau: f64, floor: f64, fade_steps: u32) -> Self {
        Self {
            tau,
            floor,
            fade_steps,
            ..Default::default()
        }
    }

    /// The relaxed ranks the gates follow now: r_i, or during a fade the point between where
    /// they stood at the decision and r_i.
    pub fn gate_ranks(&self) -> Vec<f64> {
        match &self.fade {
            Some(f) => {
                let p = f.progress();
                f.from
                    .iter()
                    .zip(&self.r)
                    .map(|(a, b)| a + (b - a) * p)
                    .collect()
            }
            None => self.r.clone(),
        }
    }

    /// g_j for components j = 1..=n at relaxed rank r.
    pub fn gates(&self, r: f64, n: usize) -> Vec<f64> {
        (1..=n)
            .map(|j| sigmoid((r - j as f64 + 0.5) / self.tau))
            .collect()
    }

    /// ∂g/∂r of a gate whose value is g.
    pub fn dgate(&self, g: f64) -> f64 {
        g * (1.0 - g) / self.tau
    }

    /// Components an adapter at relaxed rank r holds: those with g ≥ floor.
    pub fn held(&self, r: f64, limit: usize) -> usize {
        let reach = r + 0.5 + self.tau * ((1.0 - self.floor) / self.floor).ln();
        (reach.floor().max(0.0) as usize).min(limit)
    }

    /// Mean ∂L/∂r_i since the last re-allocation.
    pub fn mean_grads(&self) -> Vec<f64> {
        let n = self.grad_steps.max(1) as f64;
        self.grad_sum.iter().map(|g| g / n).collect()
    }

    /// r_i = clamp(α·x_i + β, r_min, min(r_max, min(rows, cols))) from the learner's state;
    /// under a hard budget β is the offset that keeps the held components within it (module
    /// docs), written back as the learner's β.
    fn solve(&mut self, core: &mut Core) {
        let a = core.learned.get("alpha").copied().unwrap_or(1.0);
        let mut b = core.learned.get("beta").copied().unwrap_or(0.0);
        let lo = core.cfg.min_rank as f64;
        let his: Vec<f64> = (0..self.x.len())
            .map(|i| (core.cfg.max_rank.min(core.limit(i)) as f64).max(lo))
            .collect();
        let ranks_at = |d: f64| -> Vec<f64> {
            self.x
                .iter()
                .zip(&his)
                .map(|(x, hi)| (a * x + d).clamp(lo, *hi))
                .collect()
        };
        if self.budget > 0.0 && self.costs.len() == self.x.len() {
            let limits: Vec<usize> = (0..self.x.len()).map(|i| core.limit(i)).collect();
            let held_cost = |d: f64| -> f64 {
                ranks_at(d)
                    .iter()
                    .enumerate()
                    .map(|(i, r)| self.held(*r, limits[i]) as f64 * self.costs[i])
                    .sum()
            };
            let ax: Vec<f64> = self.x.iter().map(|x| a * x).collect();
            let top = his.iter().cloned().fold(lo, f64::max);
            let mut d_lo = lo - ax.iter().cloned().fold(f64::MIN, f64::max) - 1.0;
            let mut d_hi = top - ax.iter().cloned().fold(f64::MAX, f64::min) + 1.0;
            if held_cost(d_hi) <= self.budget {
                d_lo = d_hi;
            }
            // The held cost is a non-decreasing step function of δ: the largest δ within budget.
            for _ in 0..100 {
                let mid = 0.5 * (d_lo + d_hi);
                if held_cost(mid) <= self.budget {
                    d_lo = mid;
                } else {
                    d_hi = mid;
                }
            }
            b = d_lo;
            core.learned.insert("beta".into(), b);
        }
        self.r = ranks_at(b);
    }

    /// Parameters (or components, under a rank budget) the held components cost.
    pub fn held_cost(&self, core: &Core) -> f64 {
        core.infos
            .iter()
            .zip(&self.costs)
            .map(|(a, c)| a.rank as f64 * c)
            .sum()
    }

    fn upload_gates(&self, core: &Core, store: &mut dyn AdapterStore) -> Result<()> {
        let r = self.gate_ranks();
        for (i, a) in core.infos.iter().enumerate() {
            if a.rank == 0 {
                continue;
            }
            let g: Vec<f32> = self
                .gates(r[i], a.rank)
                .into_iter()
                .map(|v| v as f32)
                .collect();
            store.set_gates(i, Some(&g))?;
        }
        Ok(())
    }

    /// Gates of every adapter as they are now (for the adapters' `gates` statistic).
    pub fn current_gates(&self, core: &Core) -> Vec<Vec<f64>> {
        let r = self.gate_ranks();
        core.infos
            .iter()
            .enumerate()
            .map(|(i, a)| {
                if self.active && i < r.len() {
                    self.gates(r[i], a.rank)
                } else {
                    vec![]
                }
            })
            .collect()
    }

    /// A re-allocation while relaxed (or entering the relaxation): new ln C, the learner's
    /// α and β, then either each adapter resized to the components it should hold and the
    /// gates set, or (with `fade_steps`) a fade towards that, cut `fade_steps` steps later.
    /// `ranks`: the allocator's integer ranks, for the cut's record. A fade still in progress
    /// is cut first.
    pub fn reallocate(
        &mut self,
        core: &mut Core,
        store: &mut dyn AdapterStore,
        complexity: &[f64],
        ranks: &[usize],
    ) -> Result<Realloc> {
        let mut out = Realloc::default();
        if self.fade.is_some() {
            out.resized |= self.cut(core, store)?;
        }
        let entering = !self.active;
        // Where the gates stand: entering, all open (an ungated adapter is ΔW as trained;
        // at rank + 1 the last gate is σ(1.5/τ) ≈ 1).
        let from: Vec<f64> = if entering {
            core.infos.iter().map(|a| a.rank as f64 + 1.0).collect()
        } else {
            self.gate_ranks()
        };
        self.x = complexity.iter().map(|c| c.ln()).collect();
        self.set_budget(core);
        self.solve(core);
        self.active = true;
        self.grad_sum = vec![0.0; self.r.len()];
        self.grad_steps = 0;
        if self.fade_steps == 0 {
            out.resized |= self.hold(core, store)?;
            return Ok(out);
        }
        if entering {
            // Gates close the trailing components, so those must be the smallest directions
            // of ΔW: each adapter re-factorised as its SVD, at the same rank.
            for i in 0..core.infos.len() {
                core.rebase(store, i)?;
            }
        }
        self.fade = Some(Fade {
            from,
            steps: self.fade_steps,
            done: 0,
            ranks: ranks.to_vec(),
        });
        out.fading = true;
        self.upload_gates(core, store)?;
        Ok(out)
    }

    /// Resize each adapter to the components its r_i holds and set the gates.
    fn hold(&mut self, core: &mut Core, store: &mut dyn AdapterStore) -> Result<bool> {
        let held: Vec<usize> = (0..self.r.len())
            .map(|i| self.held(self.r[i], core.limit(i)))
            .collect();
        let resized = core.apply_ranks(store, &held)?;
        self.upload_gates(core, store)?;
        Ok(resized)
    }

    /// End the fade in progress: each adapter keeps what its r_i holds.
    fn cut(&mut self, core: &mut Core, store: &mut dyn AdapterStore) -> Result<bool> {
        self.fade = None;
        self.hold(core, store)
    }

    /// The budget the held components must stay within, and each adapter's cost against it;
    /// none for a learner with a soft budget.
    fn set_budget(&mut self, core: &Core) {
        let soft = core
            .cfg
            .params
            .get("budget_penalty")
            .and_then(|v| v.as_f64())
            .is_some_and(|p| p > 0.0);
        let (budget, costs) = match core.cfg.param_budget {
            Some(p) => (
                p as f64,
                core.infos
                    .iter()
                    .map(|a| (a.rows + a.cols) as f64)
                    .collect(),
            ),
            None => (core.cfg.budget as f64, vec![1.0; core.infos.len()]),
        };
        self.budget = if soft { 0.0 } else { budget };
        self.costs = costs;
    }

    /// One training step while relaxed: ∂L/∂r_i from the gate gradients, the learner's
    /// `learn_step`, new gates; a fade one step further, cut at its end. Returns the fade's
    /// integer ranks and whether tensors changed size when this step cut a fade.
    pub fn step(
        &mut self,
        core: &mut Core,
        store: &mut dyn AdapterStore,
        learner: &Plugin,
        ctx: &EngineCtx,
    ) -> Result<Option<(Vec<usize>, bool)>> {
        let n = core.infos.len();
        let mut grads = Array::with_capacity(n);
        let lo = core.cfg.min_rank as f64;
        // During a fade the gates follow r_eff = from + (r − from)·p: ∂r_eff/∂r = p.
        let (gr, dr) = (
            self.gate_ranks(),
            self.fade.as_ref().map_or(1.0, |f| f.progress()),
        );
        for (i, gri) in gr.iter().enumerate().take(n) {
            let rank = core.infos[i].rank;
            let mut d = 0.0;
            if rank > 0 {
                let gg = store.gate_grad(i)?;
                let g = self.gates(*gri, rank);
                d = dr
                    * gg.iter()
                        .zip(&g)
                        .map(|(dl, gv)| *dl as f64 * self.dgate(*gv))
                        .sum::<f64>();
            }
            self.grad_sum[i] += d;
            let hi = core.cfg.max_rank.min(core.limit(i)) as f64;
            let mut m = Map::new();
            m.insert("index".into(), Dynamic::from_int(i as INT));
            m.insert("x".into(), Dynamic::from_float(self.x[i] as FLOAT));
            m.insert("r".into(), Dynamic::from_float(self.r[i] as FLOAT));
            m.insert("rank_grad".into(), Dynamic::from_float(d as FLOAT));
            m.insert(
                "free".into(),
                Dynamic::from_bool(self.r[i] > lo && self.r[i] < hi),
            );
            m.insert("rank".into(), Dynamic::from_int(rank as INT));
            let cost = self.costs.get(i).copied().unwrap_or(1.0);
            m.insert("cost".into(), Dynamic::from_float(cost as FLOAT));
            grads.push(Dynamic::from_map(m));
        }
        self.grad_steps += 1;
        let ctx_map = core.ctx_map(ctx, core.cfg.budget);
        core.call_learner(learner, Role::LearnerStep, grads, ctx_map)?;
        self.solve(core);
        if let Some(f) = self.fade.as_mut() {
            f.done += 1;
            if f.done >= f.steps {
                let ranks = std::mem::take(&mut f.ranks);
                return Ok(Some((ranks, self.cut(core, store)?)));
            }
        }
        self.upload_gates(core, store)?;
        Ok(None)
    }

    /// Leave the relaxation: fold each adapter's gates into B (ΔW as trained), remove the
    /// gates, resize to the integer `ranks`.
    pub fn finish(
        &mut self,
        core: &mut Core,
        store: &mut dyn AdapterStore,
        ranks: &[usize],
    ) -> Result<bool> {
        if self.active {
            let gr = self.gate_ranks();
            for (i, gri) in gr.iter().enumerate().take(core.infos.len()) {
                let r = core.infos[i].rank;
                if r == 0 {
                    continue;
                }
                let g = self.gates(*gri, r);
                let mut h = store.adapter_host(i)?;
                for row in h.b.chunks_exact_mut(r) {
                    for (v, gj) in row.iter_mut().zip(&g) {
                        *v *= *gj as f32;
                    }
                }
                h.grad_a.clear();
                h.grad_b.clear();
                h.grad_lambda = None;
                store.set_adapter_host(i, &h)?;
                // Gates of 1 (the same ΔW as none) until the resize: the components are still
                // in the relaxation's order, which a store keeping the basis relies on.
                store.set_gates(i, Some(&vec![1.0; r]))?;
            }
        }
        self.active = false;
        self.fade = None;
        let resized = core.apply_ranks(store, ranks)?;
        for i in 0..core.infos.len() {
            if core.infos[i].rank > 0 {
                store.set_gates(i, None)?;
            }
        }
        Ok(resized)
    }

    /// Put the gates back on a model restored from a checkpoint.
    pub fn resume(&self, core: &Core, store: &mut dyn AdapterStore) -> Result<()> {
        if self.active {
            self.upload_gates(core, store)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gates_open_below_the_rank_and_close_above() {
        let r = Relaxation::new(0.25, 0.05, 0);
        let g = r.gates(3.0, 5);
        // j = 3: σ(0.5/0.25) = σ(2); j = 4: σ(−2).
        assert!((g[2] - sigmoid(2.0)).abs() < 1e-12);
        assert!((g[3] - sigmoid(-2.0)).abs() < 1e-12);
        assert!(g[0] > 0.99 && g[4] < 0.01);
        // Held: g ≥ 0.05 ⇔ j ≤ r + ½ + τ·ln 19 = 4.236 → 4 components.
        assert_eq!(r.held(3.0, 10), 4);
        assert_eq!(r.held(3.0, 3), 3);
        assert_eq!(r.held(0.0, 10), 1);
    }

    #[test]
    fn dgate_is_the_derivative_of_the_gate() {
        let r = Relaxation::new(0.4, 0.05, 0);
        let h = 1e-6;
        for j in 1..=4 {
            let g = |x: f64| r.gates(x, 4)[j - 1];
            let fd = (g(2.3 + h) - g(2.3 - h)) / (2.0 * h);
            assert!((fd - r.dgate(g(2.3))).abs() < 1e-6, "j={j}");
        }
    }
}
