//! SoRA (Ding et al., "Sparse Low-rank Adaptation of Pre-trained Language Models", EMNLP
//! 2023) as a rank method: every adapter starts at `init_rank` with a gate vector g (all 1),
//! h = W0·x + s·B·(g ⊙ A·x); after every optimizer step the gates take their own Adam step on
//! ∂L/∂g followed by soft-thresholding g ← sign(g)·max(|g| − ξ_t, 0) (the proximal step of an
//! L1 penalty ξ·‖g‖₁), and a component whose gate reaches 0 is removed for real (its row of A
//! and column of B dropped: memory and trainable parameters fall). There is no rank budget:
//! the threshold ξ sets how sparse the result is. ξ_t rises linearly from `threshold` to
//! `threshold_max` over training (SoRA's sparsifying scheduler, continuous instead of in
//! stages); `threshold_max = threshold` keeps it constant.
//!
//! The gates live on the device between steps ([`AdapterStore::set_gates`]); each step reads
//! ∂L/∂g back (r values per adapter) and writes the new gates. At the end the gates are
//! folded into B, so the exported adapter is a plain LoRA adapter with ΔW as trained.

use super::method::{Allocation, RankMethod};
use super::{cfg_err, Core, EngineCtx, Result, SlotExtra};
use crate::adapter::AdapterStore;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SoraConfig {
    pub init_rank: usize,
    /// Adam learning rate of the gates.
    pub gate_lr: f64,
    /// ξ at the start and at the end of training.
    pub threshold: f64,
    pub threshold_max: f64,
    /// Total optimizer steps of the run.
    pub total_steps: usize,
}

/// A policy's `sora { }` block takes every default it does not set from this one place
/// (`threshold_max` defaults to the block's own `threshold`).
impl Default for SoraConfig {
    fn default() -> Self {
        Self {
            init_rank: 8,
            gate_lr: 1e-2,
            threshold: 1e-3,
            threshold_max: 1e-3,
            total_steps: 0,
        }
    }
}

impl SoraConfig {
    /// The engine's settings for a policy's `sora { }` block, over a run of `total_steps`.
    pub fn from_spec(s: &crate::policy::SoraSpec, total_steps: u64) -> Self {
        Self {
            init_rank: s.init_rank,
            gate_lr: s.gate_lr,
            threshold: s.threshold,
            threshold_max: s.threshold_max,
            total_steps: total_steps as usize,
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct GateState {
    g: Vec<f64>,
    m: Vec<f64>,
    v: Vec<f64>,
    t: u32,
}

pub struct SoraMethod {
    c: SoraConfig,
    gates: Vec<GateState>,
}

impl SoraMethod {
    pub fn new(core: &mut Core, c: SoraConfig) -> Result<Self> {
        if c.total_steps == 0 {
            return Err(cfg_err("SoRA needs the run's total steps"));
        }
        if !(c.gate_lr > 0.0 && c.threshold >= 0.0 && c.threshold_max >= c.threshold) {
            return Err(cfg_err(
                "SoRA needs gate_lr > 0 and 0 ≤ threshold ≤ threshold_max",
            ));
        }
        core.note_mentions([]);
        Ok(Self { c, gates: vec![] })
    }

    /// ξ_t: linear from `threshold` at step 0 to `threshold_max` at the last step.
    pub fn threshold_at(&self, step: u64) -> f64 {
        let f = (step as f64 / self.c.total_steps as f64).clamp(0.0, 1.0);
        self.c.threshold + f * (self.c.threshold_max - self.c.threshold)
    }

    fn upload(&self, core: &Core, store: &mut dyn AdapterStore) -> Result<()> {
        for (i, a) in core.infos.iter().enumerate() {
            if a.rank > 0 {
                let g: Vec<f32> = self.gates[i].g.iter().map(|x| *x as f32).collect();
                store.set_gates(i, Some(&g))?;
            }
        }
        Ok(())
    }

    /// The gates, for the adapters' `gates` statistic.
    pub fn extras(&self) -> Vec<SlotExtra> {
        self.gates
            .iter()
            .map(|s| SlotExtra {
                gates: s.g.clone(),
                ..Default::default()
            })
            .collect()
    }
}

impl RankMethod for SoraMethod {
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
        if !resumed {
            self.gates = core
                .infos
                .iter()
                .map(|a| GateState {
                    g: vec![1.0; a.rank],
                    m: vec![0.0; a.rank],
                    v: vec![0.0; a.rank],
                    t: 0,
                })
                .collect();
        }
        self.upload(core, store)
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
        _ctx: &EngineCtx,
    ) -> Result<Option<Allocation>> {
        let xi = self.threshold_at(step);
        let (b1, b2, eps) = (0.9f64, 0.999f64, 1e-8f64);
        let before = core.ranks();
        let mut pruned = false;
        let mut scores = vec![0.0; core.infos.len()];
        for (i, score) in scores.iter_mut().enumerate() {
            if core.infos[i].rank == 0 {
                continue;
            }
            let grad = store.gate_grad(i)?;
            let s = &mut self.gates[i];
            s.t += 1;
            let (c1, c2) = (1.0 - b1.powi(s.t as i32), 1.0 - b2.powi(s.t as i32));
            for (j, dg) in grad.iter().enumerate() {
                let d = *dg as f64;
                s.m[j] = b1 * s.m[j] + (1.0 - b1) * d;
                s.v[j] = b2 * s.v[j] + (1.0 - b2) * d * d;
                let g = s.g[j] - self.c.gate_lr * (s.m[j] / c1) / ((s.v[j] / c2).sqrt() + eps);
                // Proximal step of ξ·|g|: soft-thresholding.
                s.g[j] = g.signum() * (g.abs() - xi).max(0.0);
            }
            *score = s.g.iter().map(|x| x.abs()).sum();
            let keep: Vec<usize> = (0..s.g.len()).filter(|&j| s.g[j] != 0.0).collect();
            if keep.len() < s.g.len() {
                let pick = |v: &[f64]| keep.iter().map(|&j| v[j]).collect::<Vec<f64>>();
                *s = GateState {
                    g: pick(&s.g),
                    m: pick(&s.m),
                    v: pick(&s.v),
                    t: s.t,
                };
                core.keep_components(store, i, &keep)?;
                pruned = true;
            }
        }
        self.upload(core, store)?;
        if !pruned {
            return Ok(None);
        }
        core.calls.resizes += 1;
        let after = core.ranks();
        Ok(Some(core.record(
            step,
            "prune",
            &before,
            &after,
            None,
            &[],
            &scores,
            true,
        )))
    }

    fn reallocate(
        &mut self,
        _core: &mut Core,
        _step: u64,
        _store: &mut dyn AdapterStore,
        _ctx: &EngineCtx,
    ) -> Result<Option<Allocation>> {
        // SoRA's ranks follow its gates every step; a policy `reallocate` has nothing to add.
        Ok(None)
    }

    fn state(&self, _core: &Core, _store: &dyn AdapterStore) -> Result<serde_json::Value> {
        Ok(serde_json::to_value(&self.gates).unwrap_or_default())
    }

    fn load_state(&mut self, v: serde_json::Value) -> Result<()> {
        if !v.is_null() {
            self.gates = serde_json::from_value(v)
                .map_err(|e| cfg_err(format!("engine state: SoRA gates: {e}")))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threshold_rises_linearly() {
        let mut core = Core::new(super::super::EngineConfig::new(
            super::super::Method::Sora(SoraConfig::default()),
            0,
            1,
        ));
        let m = SoraMethod::new(
            &mut core,
            SoraConfig {
                threshold: 1e-3,
                threshold_max: 3e-3,
                total_steps: 100,
                ..Default::default()
            },
        )
        .unwrap();
        assert!((m.threshold_at(0) - 1e-3).abs() < 1e-15);
        assert!((m.threshold_at(50) - 2e-3).abs() < 1e-15);
        assert!((m.threshold_at(100) - 3e-3).abs() < 1e-15);
    }
}
