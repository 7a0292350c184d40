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
//! Importance is kept on the host: |w·g| per entry needs an absolute value the backend has no
//! op for, so each step downloads P, λ, Q and their gradients (the one method whose step copies
//! adapters to the host; the orthogonality penalty's gradient is added from the host too).

use super::method::{Allocation, RankMethod};
use super::{cfg_err, Bounds, Core, EngineCtx, Plugin, Result, Role, SlotExtra};
use crate::adapter::{AdapterHost, AdapterStore};
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

impl Default for AdaLoraConfig {
    fn default() -> Self {
        Self {
            init_rank: 12,
            target_rank: 8,
            tinit: 0,
            tfinal: 0,
            delta_t: 1,
            beta1: 0.85,
            beta2: 0.85,
            orth_reg: 0.5,
            total_steps: 0,
            resize: false,
            allocator: None,
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

/// Smoothed sensitivity and uncertainty of one tensor's entries.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Importance {
    pub ema_ipt: Vec<f32>,
    pub ema_unc: Vec<f32>,
}

impl Importance {
    /// Ī ← β1·Ī + (1−β1)·I; Ū ← β2·Ū + (1−β2)·|I − Ī| (Ī already updated, as PEFT does).
    pub fn update(&mut self, w: &[f32], g: &[f32], beta1: f64, beta2: f64) {
        if self.ema_ipt.len() != w.len() {
            self.ema_ipt = vec![0.0; w.len()];
            self.ema_unc = vec![0.0; w.len()];
        }
        if g.len() != w.len() {
            return;
        }
        let (b1, b2) = (beta1 as f32, beta2 as f32);
        for k in 0..w.len() {
            let ipt = (w[k] * g[k]).abs();
            let e = b1 * self.ema_ipt[k] + (1.0 - b1) * ipt;
            self.ema_ipt[k] = e;
            self.ema_unc[k] = b2 * self.ema_unc[k] + (1.0 - b2) * (ipt - e).abs();
        }
    }
    pub fn score(&self, k: usize) -> f64 {
        self.ema_ipt[k] as f64 * self.ema_unc[k] as f64
    }
    pub fn mean_sensitivity(&self) -> f64 {
        mean(&self.ema_ipt)
    }
    pub fn mean_uncertainty(&self) -> f64 {
        mean(&self.ema_unc)
    }
}

fn mean(v: &[f32]) -> f64 {
    if v.is_empty() {
        0.0
    } else {
        v.iter().map(|x| *x as f64).sum::<f64>() / v.len() as f64
    }
}

/// Importance state of one adapter in SVD form: P = B [rows, r], λ [r], Q = A [r, cols].
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct TripletImportance {
    pub p: Importance,
    pub lambda: Importance,
    pub q: Importance,
}

impl TripletImportance {
    /// Score of triplet j: s(λ_j) + mean of s over row j of Q + mean of s over column j of P.
    pub fn triplet_scores(&self, rows: usize, cols: usize, r: usize) -> Vec<f64> {
        if self.lambda.ema_ipt.len() != r
            || self.q.ema_ipt.len() != r * cols
            || self.p.ema_ipt.len() != rows * r
        {
            return vec![0.0; r];
        }
        (0..r)
            .map(|j| {
                let sq: f64 =
                    (0..cols).map(|k| self.q.score(j * cols + k)).sum::<f64>() / cols as f64;
                let sp: f64 = (0..rows).map(|k| self.p.score(k * r + j)).sum::<f64>() / rows as f64;
                self.lambda.score(j) + sq + sp
            })
            .collect()
    }
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

/// AdaLoRA as a rank method.
pub struct AdaLoraMethod {
    c: AdaLoraConfig,
    allocator: Plugin,
    st: AdaState,
}

/// What AdaLoRA carries across a checkpoint.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct AdaState {
    importance: Vec<TripletImportance>,
    /// Triplets kept (true) or masked (λ = 0), per adapter.
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
        let allocator = core.load_plugin(&path, Role::Allocator, 2)?;
        core.note_mentions([&allocator]);
        Ok(Self {
            c,
            allocator,
            st: AdaState::default(),
        })
    }

    fn scores(&self, core: &Core) -> Vec<Vec<f64>> {
        core.infos
            .iter()
            .enumerate()
            .map(|(i, a)| {
                self.st
                    .importance
                    .get(i)
                    .map(|t| t.triplet_scores(a.rows, a.cols, a.rank))
                    .unwrap_or_else(|| vec![0.0; a.rank])
            })
            .collect()
    }

    /// λ = 0 on every masked triplet (after each optimizer step, as PEFT does).
    fn apply_masks(&self, core: &Core, store: &mut dyn AdapterStore) -> Result<()> {
        for i in 0..core.infos.len() {
            let keep = &self.st.keep[i];
            if keep.is_empty() || keep.iter().all(|k| *k) {
                continue;
            }
            let mut h = store.adapter_host(i)?;
            if let Some(l) = h.lambda.as_mut() {
                for (v, k) in l.iter_mut().zip(keep) {
                    if !k {
                        *v = 0.0;
                    }
                }
            }
            h.grad_a.clear();
            h.grad_b.clear();
            h.grad_lambda = None;
            store.set_adapter_host(i, &h)?;
        }
        Ok(())
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
        }
        self.st.keep = core.infos.iter().map(|a| vec![true; a.rank]).collect();
        self.st.importance = vec![TripletImportance::default(); core.infos.len()];
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
        for i in 0..core.infos.len() {
            let (rows, cols, r) = (core.infos[i].rows, core.infos[i].cols, core.infos[i].rank);
            if r == 0 {
                continue;
            }
            let h = store.adapter_host(i)?;
            let imp = &mut self.st.importance[i];
            imp.p.update(&h.b, &h.grad_b, c.beta1, c.beta2);
            imp.q.update(&h.a, &h.grad_a, c.beta1, c.beta2);
            if let (Some(l), Some(gl)) = (&h.lambda, &h.grad_lambda) {
                imp.lambda.update(l, gl, c.beta1, c.beta2);
            }
            if c.orth_reg > 0.0 {
                let w = (c.orth_reg / mats) as f32;
                let (_, gp) = orth_penalty_p(rows, r, &h.b);
                let (_, gq) = orth_penalty_q(r, cols, &h.a);
                let add = AdapterHost {
                    grad_a: gq.iter().map(|g| g * w).collect(),
                    grad_b: gp.iter().map(|g| g * w).collect(),
                    grad_lambda: None,
                    ..h
                };
                store.set_adapter_host(i, &add)?;
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
        let c = self.c.clone();
        let step = step as usize;
        let n = core.infos.len();
        // Under `lora.param_budget` the schedule runs in parameters, from what the initial
        // triplets cost to the budget, and the allocator keeps triplets while they fit (a
        // triplet of adapter i costs rows_i + cols_i, as a LoRA rank does; its λ adds one).
        let (budget, mask_now) = match core.cfg.param_budget {
            Some(p) => {
                let init: usize = core
                    .infos
                    .iter()
                    .map(|a| c.init_rank * (a.rows + a.cols))
                    .sum();
                budget_schedule(&c, init, p.min(init), step)
            }
            None => budget_schedule(&c, c.init_rank * n, c.target_rank * n, step),
        };
        let final_phase = step + c.tfinal > c.total_steps;
        let first_final = final_phase && step + c.tfinal == c.total_steps + 1;
        if final_phase && !first_final {
            // PEFT keeps the final pattern: masked triplets stay at λ = 0.
            self.apply_masks(core, store)?;
            return Ok(None);
        }
        // Nothing new is decided after the last optimizer step: it would be evaluated untrained.
        if !mask_now || step >= c.total_steps {
            return Ok(None);
        }
        let scores = self.scores(core);
        let extras: Vec<SlotExtra> = (0..n)
            .map(|i| SlotExtra {
                importance: Some(self.st.importance[i].clone()),
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
        let mut kept_scores = Vec::with_capacity(n);
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
            self.st.keep[i] = keep;
        }
        let mut resized = false;
        if c.resize {
            // Remove the pruned triplets for real: exactly the kept (P column, λ, Q row)s.
            for (i, &held) in cap.iter().enumerate() {
                let keep: Vec<usize> = (0..held).filter(|&j| self.st.keep[i][j]).collect();
                if keep.len() != held {
                    core.keep_components(store, i, &keep)?;
                    let imp = &mut self.st.importance[i];
                    *imp = imp.subset(core.infos[i].rows, core.infos[i].cols, held, &keep);
                    self.st.keep[i] = vec![true; keep.len()];
                    resized = true;
                }
            }
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

    fn reallocate(
        &mut self,
        _core: &mut Core,
        _step: u64,
        _store: &mut dyn AdapterStore,
        _ctx: &EngineCtx,
    ) -> Result<Option<Allocation>> {
        // AdaLoRA follows its own budget schedule (tinit, ΔT, tfinal) after every step.
        Ok(None)
    }

    fn ranks(&self, core: &Core) -> Vec<usize> {
        core.infos
            .iter()
            .enumerate()
            .map(|(i, a)| match self.st.keep.get(i) {
                Some(k) if k.len() == a.rank && !k.is_empty() => k.iter().filter(|x| **x).count(),
                _ => a.rank,
            })
            .collect()
    }

    fn state(&self) -> serde_json::Value {
        serde_json::to_value(&self.st).unwrap_or_default()
    }

    fn load_state(&mut self, v: serde_json::Value) -> Result<()> {
        if !v.is_null() {
            self.st = serde_json::from_value(v)
                .map_err(|e| cfg_err(format!("engine state: AdaLoRA: {e}")))?;
        }
        Ok(())
    }
}

impl Importance {
    /// The entries at `idx` (for a tensor that lost some of its rows or columns).
    fn pick(&self, idx: &[usize]) -> Importance {
        if self.ema_ipt.is_empty() {
            return self.clone();
        }
        Importance {
            ema_ipt: idx.iter().map(|&k| self.ema_ipt[k]).collect(),
            ema_unc: idx.iter().map(|&k| self.ema_unc[k]).collect(),
        }
    }
}

impl TripletImportance {
    /// The importance state of the triplets `keep` of an adapter of rank r.
    pub fn subset(&self, rows: usize, cols: usize, r: usize, keep: &[usize]) -> TripletImportance {
        let q: Vec<usize> = keep
            .iter()
            .flat_map(|&j| (0..cols).map(move |c| j * cols + c))
            .collect();
        let p: Vec<usize> = (0..rows)
            .flat_map(|row| keep.iter().map(move |&j| row * r + j))
            .collect();
        TripletImportance {
            p: self.p.pick(&p),
            lambda: self.lambda.pick(keep),
            q: self.q.pick(&q),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subset_keeps_the_chosen_triplets_importance() {
        let (rows, cols, r) = (2, 3, 3);
        let mk = |n: usize| Importance {
            ema_ipt: (0..n).map(|k| k as f32).collect(),
            ema_unc: (0..n).map(|k| 10.0 + k as f32).collect(),
        };
        let t = TripletImportance {
            p: mk(rows * r),
            lambda: mk(r),
            q: mk(r * cols),
        };
        let s = t.subset(rows, cols, r, &[0, 2]);
        // P [2, 3] row-major: columns 0 and 2 → entries 0, 2, 3, 5.
        assert_eq!(s.p.ema_ipt, vec![0.0, 2.0, 3.0, 5.0]);
        assert_eq!(s.lambda.ema_ipt, vec![0.0, 2.0]);
        // Q [3, 3]: rows 0 and 2 → entries 0, 1, 2, 6, 7, 8.
        assert_eq!(s.q.ema_ipt, vec![0.0, 1.0, 2.0, 6.0, 7.0, 8.0]);
        let full = t.triplet_scores(rows, cols, r);
        let sub = s.triplet_scores(rows, cols, 2);
        assert!((sub[0] - full[0]).abs() < 1e-9 && (sub[1] - full[2]).abs() < 1e-9);
    }

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

    #[test]
    fn importance_ema_matches_recurrence_by_hand() {
        let mut imp = Importance::default();
        imp.update(&[2.0], &[-0.5], 0.85, 0.85); // I = 1
        assert!((imp.ema_ipt[0] - 0.15).abs() < 1e-6);
        assert!((imp.ema_unc[0] - 0.15 * 0.85).abs() < 1e-6);
        imp.update(&[2.0], &[0.0], 0.85, 0.85); // I = 0
        let e = 0.85 * 0.15;
        assert!((imp.ema_ipt[0] - e).abs() < 1e-6);
        assert!((imp.ema_unc[0] - (0.85 * 0.1275 + 0.15 * e)).abs() < 1e-6);
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

    #[test]
    fn triplet_score_is_lambda_plus_row_and_column_means() {
        let (rows, cols, r) = (2, 3, 2);
        let mk = |n: usize, base: f32| Importance {
            ema_ipt: (0..n).map(|k| base + k as f32).collect(),
            ema_unc: vec![2.0; n],
        };
        let t = TripletImportance {
            p: mk(rows * r, 1.0),
            lambda: mk(r, 10.0),
            q: mk(r * cols, 0.0),
        };
        let s = t.triplet_scores(rows, cols, r);
        // j = 0: λ 10·2 = 20; Q row 0 = (0,1,2)·2 → mean 2; P column 0 = (1, 3)·2 → mean 4.
        assert!((s[0] - 26.0).abs() < 1e-9);
        // j = 1: λ 11·2 = 22; Q row 1 = (3,4,5)·2 → 8; P column 1 = (2, 4)·2 → 6.
        assert!((s[1] - 36.0).abs() < 1e-9);
    }
}
