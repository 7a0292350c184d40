//! AdaLoRA as Hugging Face PEFT does it: importance I = |w·∂L/∂w| smoothed (sensitivity Ī) and
//! its deviation smoothed (uncertainty Ū), triplet scores, the cubic budget schedule, and the
//! orthogonality penalty on P and Q — as a [`RankMethod`] that runs its own schedule after
//! every optimizer step.
//!
//! `resize = false` is PEFT's masking: pruned triplets get λ = 0 and stay in the tensors (a
//! masked triplet can come back at a later budget step). `resize = true` removes them for
//! real at every budget step (memory and trainable parameters fall with the budget; a removed
//! triplet cannot come back).
//!
//! Everything a step needs runs where the adapters live: the importance averages are updated
//! and kept by the store ([`AdapterStore::update_importance`], on a GPU one kernel per tensor),
//! the penalty's gradient is added there ([`AdapterStore::add_orth_grad`], GEMMs on the
//! device), and masks are applied there. The importance state is read back only at a budget
//! step that masks or prunes, and for a checkpoint. [`orth_penalty_p`] and [`orth_penalty_q`]
//! are the host formulas, kept as the oracle of the device versions and run by stores that
//! hold their tensors on the host.

use super::method::{Allocation, RankMethod};
use super::{cfg_err, Bounds, Core, EngineCtx, Plugin, Result, Role, SlotExtra};
use crate::adapter::{AdapterHost, AdapterStore};
pub use crate::adapter::{Importance, TripletImportance};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// AdaLoRA settings (PEFT names: init_r, target_r, tinit, tfinal, deltaT, beta1, beta2,
/// orth_reg_weight, total_step).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AdaLoraConfig {
    pub init_rank: usize,
    pub target_rank: usize,
    pub tinit: usize,
    pub tfinal: usize,
    pub delta_t: usize,
    pub beta1: f64,
    pub beta2: f64,
    pub orth_reg: f64,
    /// Total optimizer steps of the run (not micro-batches).
    pub total_steps: usize,
    /// Resize adapters to their kept triplets when the final budget is fixed, instead of only
    /// masking (PEFT never shrinks tensors).
    #[serde(default)]
    pub resize: bool,
    /// Allocator script; default: the shipped `adalora.rhai`.
    #[serde(default)]
    pub allocator: Option<PathBuf>,
}

/// PEFT's defaults, except `delta_t` (PEFT: 1), which is 10 here; a policy's `adalora { }` block
/// takes every default it does not set from this one place.
impl Default for AdaLoraConfig {
    fn default() -> Self {
        Self {
            init_rank: 12,
            target_rank: 8,
            tinit: 0,
            tfinal: 0,
            delta_t: 10,
            beta1: 0.85,
            beta2: 0.85,
            orth_reg: 0.5,
            total_steps: 0,
            resize: false,
            allocator: None,
        }
    }
}

impl AdaLoraConfig {
    /// The engine's settings for a policy's `adalora { }` block, over a run of `total_steps`,
    /// with the arm's allocator script if it names one. (`gain` and `peft_compat` set the
    /// adapters' output scale: the model reads them, not the engine.)
    pub fn from_spec(
        a: &crate::policy::AdaLoraSpec,
        total_steps: u64,
        allocator: Option<PathBuf>,
    ) -> Self {
        Self {
            init_rank: a.init_rank,
            target_rank: a.target_rank,
            tinit: a.tinit,
            tfinal: a.tfinal,
            delta_t: a.delta_t,
            beta1: a.beta1,
            beta2: a.beta2,
            orth_reg: a.orth_reg,
            total_steps: total_steps as usize,
            resize: a.resize,
            allocator,
        }
    }
}

/// PEFT's `budget_schedule`: (budget, whether to mask at this step).
pub fn budget_schedule(
    c: &AdaLoraConfig,
    init_total: usize,
    target_total: usize,
    step: usize,
) -> (usize, bool) {
    if step <= c.tinit {
        (init_total, false)
    } else if step + c.tfinal > c.total_steps {
        (target_total, true)
    } else {
        let span = (c.total_steps - c.tfinal - c.tinit) as f64;
        let mul = 1.0 - (step - c.tinit) as f64 / span;
        let b = (init_total as f64 - target_total as f64) * mul.powi(3) + target_total as f64;
        (b as usize, c.delta_t > 0 && step.is_multiple_of(c.delta_t))
    }
}

/// Whether AdaLoRA decides a budget at `step` (masks or prunes): every ΔT inside
/// (tinit, T − tfinal], then once as the final phase begins, never at the last step (what it
/// decided would be evaluated untrained). The schedule fires its budget events here
/// ([`crate::engine::schedule::Schedule::with_method`]).
pub fn is_budget_step(c: &AdaLoraConfig, step: usize) -> bool {
    let (_, due) = budget_schedule(c, 1, 1, step);
    let final_phase = step + c.tfinal > c.total_steps;
    due && (!final_phase || step + c.tfinal == c.total_steps + 1) && step < c.total_steps
}

/// ‖PᵀP − I‖_F and its gradient with respect to P [rows, r] (row-major): 2·P·N/‖N‖.
pub fn orth_penalty_p(rows: usize, r: usize, p: &[f32]) -> (f64, Vec<f32>) {
    let mut n = vec![0.0f64; r * r];
    for row in p.chunks_exact(r).take(rows) {
        for i in 0..r {
            for j in 0..r {
                n[i * r + j] += row[i] as f64 * row[j] as f64;
            }
        }
    }
    for i in 0..r {
        n[i * r + i] -= 1.0;
    }
    let norm = n.iter().map(|x| x * x).sum::<f64>().sqrt();
    let mut g = vec![0.0f32; rows * r];
    if norm > 0.0 {
        for k in 0..rows {
            for j in 0..r {
                let v: f64 = (0..r).map(|i| p[k * r + i] as f64 * n[i * r + j]).sum();
                g[k * r + j] = (2.0 * v / norm) as f32;
            }
        }
    }
    (norm, g)
}

/// ‖QQᵀ − I‖_F and its gradient with respect to Q [r, cols] (row-major): 2·M·Q/‖M‖.
pub fn orth_penalty_q(r: usize, cols: usize, q: &[f32]) -> (f64, Vec<f32>) {
    let mut m = vec![0.0f64; r * r];
    for i in 0..r {
        for j in 0..r {
            m[i * r + j] = (0..cols)
                .map(|k| q[i * cols + k] as f64 * q[j * cols + k] as f64)
                .sum();
        }
        m[i * r + i] -= 1.0;
    }
    let norm = m.iter().map(|x| x * x).sum::<f64>().sqrt();
    let mut g = vec![0.0f32; r * cols];
    if norm > 0.0 {
        for i in 0..r {
            for k in 0..cols {
                let v: f64 = (0..r).map(|j| m[i * r + j] * q[j * cols + k] as f64).sum();
                g[i * cols + k] = (2.0 * v / norm) as f32;
            }
        }
    }
    (norm, g)
}

/// The penalty's gradients of a host copy of adapter `h` (rows × cols, rank r), times `weight`:
/// (∂/∂Q for A, ∂/∂P for B) — what [`AdapterStore::add_orth_grad`] adds, computed on the host.
pub fn orth_grads(
    h: &AdapterHost,
    rows: usize,
    cols: usize,
    r: usize,
    weight: f32,
) -> (Vec<f32>, Vec<f32>) {
    let (_, gp) = orth_penalty_p(rows, r, &h.b);
    let (_, gq) = orth_penalty_q(r, cols, &h.a);
    (
        gq.iter().map(|g| g * weight).collect(),
        gp.iter().map(|g| g * weight).collect(),
    )
}

/// AdaLoRA as a rank method.
pub struct AdaLoraMethod {
    c: AdaLoraConfig,
    allocator: Plugin,
    /// Triplets kept (true) or masked (λ = 0), per adapter.
    keep: Vec<Vec<bool>>,
    /// The importance state of a checkpoint, put back into the store when training resumes.
    resumed_importance: Vec<TripletImportance>,
}

/// What AdaLoRA carries across a checkpoint: the importance state (read back from the store)
/// and the kept triplets.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct AdaState {
    importance: Vec<TripletImportance>,
    keep: Vec<Vec<bool>>,
}

impl AdaLoraMethod {
    pub fn new(core: &mut Core, c: AdaLoraConfig) -> Result<Self> {
        if c.total_steps == 0 || c.tinit + c.tfinal >= c.total_steps {
            return Err(cfg_err(format!(
                "AdaLoRA needs tinit + tfinal < total_steps (got {} + {} vs {})",
                c.tinit, c.tfinal, c.total_steps
            )));
        }
        if c.target_rank > c.init_rank {
            return Err(cfg_err("AdaLoRA target_rank must not exceed init_rank"));
        }
        let path = c
            .allocator
            .clone()
            .unwrap_or_else(|| PathBuf::from(format!("{}adalora.rhai", super::source::BUILTIN)));
        let allocator = core.load_plugin(&path, Role::Allocator)?;
        core.note_mentions([&allocator]);
        Ok(Self {
            c,
            allocator,
            keep: vec![],
            resumed_importance: vec![],
        })
    }

    /// Every adapter's importance state, read back from the store (an adapter at rank 0 has
    /// none).
    fn read_importance(
        &self,
        core: &Core,
        store: &dyn AdapterStore,
    ) -> Result<Vec<TripletImportance>> {
        core.infos
            .iter()
            .enumerate()
            .map(|(i, a)| {
                Ok(if a.rank > 0 {
                    store.importance(i)?
                } else {
                    TripletImportance::default()
                })
            })
            .collect()
    }

    /// λ = 0 on every masked triplet, where the adapters live (at a budget step, and after
    /// every optimizer step of the final phase, as PEFT does).
    fn apply_masks(&self, core: &Core, store: &mut dyn AdapterStore) -> Result<()> {
        for i in 0..core.infos.len() {
            let keep = &self.keep[i];
            if keep.is_empty() || keep.iter().all(|k| *k) {
                continue;
            }
            let masked: Vec<bool> = keep.iter().map(|k| !k).collect();
            store.mask_lambda(i, &masked)?;
        }
        Ok(())
    }

    /// Keep the `counts[i]` highest-scored triplets of each adapter; returns the mean score of
    /// the kept ones per adapter (for the record).
    fn choose(&mut self, scores: &[Vec<f64>], counts: &[usize]) -> Vec<f64> {
        let mut kept_scores = Vec::with_capacity(counts.len());
        for (i, &k) in counts.iter().enumerate() {
            let mut order: Vec<usize> = (0..scores[i].len()).collect();
            order.sort_by(|&x, &y| scores[i][y].total_cmp(&scores[i][x]).then(x.cmp(&y)));
            let mut keep = vec![false; scores[i].len()];
            for &j in order.iter().take(k) {
                keep[j] = true;
            }
            let kept: Vec<f64> = order.iter().take(k).map(|&j| scores[i][j]).collect();
            kept_scores.push(if kept.is_empty() {
                0.0
            } else {
                kept.iter().sum::<f64>() / kept.len() as f64
            });
            self.keep[i] = keep;
        }
        kept_scores
    }

    /// Remove the pruned triplets for real: exactly the kept (P column, λ, Q row)s, with their
    /// importance state. Returns whether a tensor changed size.
    fn prune(
        &mut self,
        core: &mut Core,
        store: &mut dyn AdapterStore,
        held: &[usize],
        importance: &[TripletImportance],
    ) -> Result<bool> {
        let mut resized = false;
        for (i, &r) in held.iter().enumerate() {
            let keep: Vec<usize> = (0..r).filter(|&j| self.keep[i][j]).collect();
            if keep.len() != r {
                core.keep_components(store, i, &keep)?;
                let (rows, cols) = (core.infos[i].rows, core.infos[i].cols);
                store.set_importance(i, &importance[i].subset(rows, cols, r, &keep))?;
                self.keep[i] = vec![true; keep.len()];
                resized = true;
            }
        }
        Ok(resized)
    }
}

impl RankMethod for AdaLoraMethod {
    fn start(&mut self, core: &mut Core, _store: &mut dyn AdapterStore) -> Result<Vec<usize>> {
        core.reset_params(&[]);
        Ok(vec![self.c.init_rank; core.infos.len()])
    }

    fn started(
        &mut self,
        core: &mut Core,
        store: &mut dyn AdapterStore,
        resumed: bool,
    ) -> Result<()> {
        if resumed {
            let saved = std::mem::take(&mut self.resumed_importance);
            for (i, t) in saved.iter().enumerate().take(core.infos.len()) {
                store.set_importance(i, t)?;
            }
            return Ok(());
        }
        for i in 0..core.infos.len() {
            let h = store.adapter_host(i)?;
            if h.lambda.is_none() && core.infos[i].rank > 0 {
                return Err(cfg_err(format!(
                    "AdaLoRA needs adapters in SVD form (λ); adapter {} has none",
                    core.infos[i].name
                )));
            }
            store.set_importance(i, &TripletImportance::default())?;
        }
        self.keep = core.infos.iter().map(|a| vec![true; a.rank]).collect();
        Ok(())
    }

    fn after_backward(
        &mut self,
        core: &mut Core,
        _step: u64,
        store: &mut dyn AdapterStore,
    ) -> Result<()> {
        core.gather(store)?;
        let c = &self.c;
        // PEFT averages the penalty over every A and every B matrix.
        let mats = 2.0 * core.infos.iter().filter(|a| a.rank > 0).count().max(1) as f64;
        let weight = (c.orth_reg / mats) as f32;
        for i in 0..core.infos.len() {
            if core.infos[i].rank == 0 {
                continue;
            }
            // Importance from the task gradients alone, before the penalty's is added.
            store.update_importance(i, c.beta1 as f32, c.beta2 as f32)?;
            if c.orth_reg > 0.0 {
                store.add_orth_grad(i, weight)?;
            }
        }
        Ok(())
    }

    fn after_step(
        &mut self,
        core: &mut Core,
        step: u64,
        store: &mut dyn AdapterStore,
        _ctx: &EngineCtx,
    ) -> Result<Option<Allocation>> {
        let (c, step) = (&self.c, step as usize);
        let final_phase = step + c.tfinal > c.total_steps;
        let first_final = final_phase && step + c.tfinal == c.total_steps + 1;
        if final_phase && !first_final {
            // PEFT keeps the final pattern: masked triplets stay at λ = 0.
            self.apply_masks(core, store)?;
        }
        Ok(None)
    }

    /// A budget step ([`is_budget_step`]; the schedule's `mask`/`prune` event): the allocator
    /// keeps the most important triplets within the step's budget. Any other step: nothing.
    fn reallocate(
        &mut self,
        core: &mut Core,
        step: u64,
        store: &mut dyn AdapterStore,
        _ctx: &EngineCtx,
    ) -> Result<Option<Allocation>> {
        let c = self.c.clone();
        let step = step as usize;
        if !is_budget_step(&c, step) {
            return Ok(None);
        }
        let n = core.infos.len();
        // Under `lora.param_budget` the schedule runs in parameters, from what the initial
        // triplets cost to the budget, and the allocator keeps triplets while they fit (a
        // triplet of adapter i costs rows_i + cols_i, as a LoRA rank does; its λ adds one).
        let budget = match core.cfg.param_budget {
            Some(p) => {
                let init: usize = core
                    .infos
                    .iter()
                    .map(|a| c.init_rank * (a.rows + a.cols))
                    .sum();
                budget_schedule(&c, init, p.min(init), step).0
            }
            None => budget_schedule(&c, c.init_rank * n, c.target_rank * n, step).0,
        };
        // A budget step: the one place the importance state is read back.
        let importance = self.read_importance(core, store)?;
        let scores: Vec<Vec<f64>> = core
            .infos
            .iter()
            .zip(&importance)
            .map(|(a, t)| t.triplet_scores(a.rows, a.cols, a.rank))
            .collect();
        let extras: Vec<SlotExtra> = (0..n)
            .map(|i| SlotExtra {
                importance: Some(importance[i].clone()),
                triplet_scores: scores[i].clone(),
                ..Default::default()
            })
            .collect();
        let maps = core.adapter_maps(store, &extras)?;
        let cap: Vec<usize> = core.infos.iter().map(|a| a.rank).collect();
        let before = self.ranks(core);
        let counts =
            core.call_allocator(&self.allocator, maps, budget, &Bounds::Caps(cap.clone()))?;
        core.calls.allocations += 1;
        let kept_scores = self.choose(&scores, &counts);
        let mut resized = false;
        if c.resize {
            resized = self.prune(core, store, &cap, &importance)?;
            if resized {
                core.calls.resizes += 1;
            }
        } else {
            self.apply_masks(core, store)?;
            core.calls.masks += 1;
        }
        let reason = if c.resize { "prune" } else { "mask" };
        Ok(Some(core.record(
            step as u64,
            reason,
            &before,
            &counts,
            core.cfg.param_budget.is_none().then_some(budget),
            &[],
            &kept_scores,
            resized,
        )))
    }

    fn ranks(&self, core: &Core) -> Vec<usize> {
        core.infos
            .iter()
            .enumerate()
            .map(|(i, a)| match self.keep.get(i) {
                Some(k) if k.len() == a.rank && !k.is_empty() => k.iter().filter(|x| **x).count(),
                _ => a.rank,
            })
            .collect()
    }

    fn state(&self, core: &Core, store: &dyn AdapterStore) -> Result<serde_json::Value> {
        let st = AdaState {
            importance: self.read_importance(core, store)?,
            keep: self.keep.clone(),
        };
        Ok(serde_json::to_value(&st).unwrap_or_default())
    }

    fn load_state(&mut self, v: serde_json::Value) -> Result<()> {
        if !v.is_null() {
            let st: AdaState = serde_json::from_value(v)
                .map_err(|e| cfg_err(format!("engine state: AdaLoRA: {e}")))?;
            self.keep = st.keep;
            self.resumed_importance = st.importance;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_schedule_follows_peft_formula() {
        let c = AdaLoraConfig {
            tinit: 10,
            tfinal: 20,
            delta_t: 5,
            total_steps: 110,
            ..Default::default()
        };
        // Hand-evaluated: span = 110 - 20 - 10 = 80; at step 50, mul = 1 - 40/80 = 0.5,
        // b = (120 - 80)·0.125 + 80 = 85.
        assert_eq!(budget_schedule(&c, 120, 80, 0), (120, false));
        assert_eq!(budget_schedule(&c, 120, 80, 10), (120, false));
        assert_eq!(budget_schedule(&c, 120, 80, 50), (85, true));
        assert!(!budget_schedule(&c, 120, 80, 51).1);
        // step 11: mul = 79/80, b = 40·(79/80)^3 + 80 = 118.52... → 118 (PEFT truncates).
        assert_eq!(budget_schedule(&c, 120, 80, 11).0, 118);
        assert_eq!(budget_schedule(&c, 120, 80, 90).0, 80);
        assert_eq!(budget_schedule(&c, 120, 80, 91), (80, true));
    }

    fn fd_check(f: impl Fn(&[f32]) -> (f64, Vec<f32>), x: &[f32]) {
        let (_, g) = f(x);
        for k in 0..x.len() {
            let h = 1e-3f32;
            let mut xp = x.to_vec();
            xp[k] += h;
            let mut xm = x.to_vec();
            xm[k] -= h;
            let fd = (f(&xp).0 - f(&xm).0) / (2.0 * h as f64);
            assert!(
                (fd - g[k] as f64).abs() < 2e-3 * (1.0 + fd.abs()),
                "k={k} fd={fd} g={}",
                g[k]
            );
        }
    }

    #[test]
    fn orthogonality_gradients_match_finite_differences() {
        let p: Vec<f32> = (0..15).map(|i| ((i * 7 % 11) as f32 - 5.0) / 6.0).collect();
        fd_check(|x| orth_penalty_p(5, 3, x), &p);
        let q: Vec<f32> = (0..12).map(|i| ((i * 5 % 13) as f32 - 6.0) / 5.0).collect();
        fd_check(|x| orth_penalty_q(3, 4, x), &q);
        // Orthonormal rows: zero penalty.
        let (n, _) = orth_penalty_q(2, 3, &[1.0, 0.0, 0.0, 0.0, 1.0, 0.0]);
        assert!(n.abs() < 1e-12);
    }
}
