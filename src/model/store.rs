//! The model as an [`AdapterStore`] (host views of adapters, resizing), AdaLoRA masks, and
//! checkpoint state (trainable parameters, AdamW moments, step counters, ranks).

use super::config::{Flavour, TrainMode};
use super::linear::{Gates, GradAcc, ImportanceState, Lora, OrthScratch};
use super::lora::{grow_factors, keep_leading, lora_scale, shrink_factors, Factors};
use super::transformer::Model;
use super::weights::{name_seed, HostWeights};
use crate::adapter::{
    AdapterHost, AdapterInfo, AdapterStore, GradStats, HostTensor, Importance, ModuleKind,
    ResizeOptions, TripletImportance,
};
use crate::backend::{Backend, Gemm, MemKind, Tensor};
use anyhow::{bail, ensure, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Rows of an input sample kept for [`AdapterStore::input_sample`].
const SAMPLE_ROWS: usize = 256;

/// Non-tensor part of a checkpoint.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StateMeta {
    /// Optimizer steps taken.
    pub step: u64,
    /// Rank changes made (seeds grown components).
    pub resizes: u64,
    /// Rank of every adapter slot, in `adapters()` order.
    pub ranks: Vec<usize>,
    /// Output scale of every slot.
    pub scales: Vec<f32>,
    /// Construction rank of every slot (the SVD form's scale).
    pub init_ranks: Vec<usize>,
    /// AdaLoRA λ masks per slot (empty when none is masked).
    pub lambda_masks: Vec<Vec<bool>>,
    /// AdamW step counter of every trainable tensor, by name.
    pub param_steps: BTreeMap<String, u32>,
    /// Learning-rate re-warms in progress after a resize, by tensor name: (steps taken,
    /// window). A resumed cell must take the same reduced steps an uninterrupted one does.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub rewarms: BTreeMap<String, (u32, u32)>,
}

/// Everything needed to resume training exactly: trainable tensors by name, their AdamW moments
/// as `{name}.exp_avg` / `{name}.exp_avg_sq`, and [`StateMeta`]. Frozen weights are not included
/// (they come from the base model).
#[derive(Clone, Debug, PartialEq)]
pub struct ModelState {
    pub meta: StateMeta,
    pub tensors: HostWeights,
}

impl<B: Backend> Model<B> {
    /// (layer, kind) of adapter slot `i` (layer-major, `ModelConfig::module_kinds` order).
    pub fn slot(&self, i: usize) -> Result<(usize, ModuleKind)> {
        let n = self.cfg.slots();
        ensure!(
            i < n,
            "adapter index {i} out of range (the model has {n} slots)"
        );
        Ok(self.cfg.slot_of(i))
    }

    fn lora_settings(&self) -> Result<(f32, bool, bool)> {
        match &self.mode {
            TrainMode::Lora(l) => Ok((l.alpha, l.rslora, l.svd_form)),
            TrainMode::Full => bail!(
                "this model is in full fine-tuning mode and has no adapters; use TrainMode::Lora"
            ),
        }
    }

    /// Current rank of every slot, in `adapters()` order.
    pub fn ranks(&self) -> Vec<usize> {
        let kinds = self.cfg.module_kinds();
        self.blocks
            .iter()
            .flat_map(|b| {
                kinds
                    .iter()
                    .map(|&k| b.linear(k).lora.as_ref().map_or(0, |l| l.rank))
            })
            .collect()
    }

    /// Components of every slot that AdaLoRA's mask holds at λ = 0, in `adapters()` order: a
    /// masked triplet adds nothing to ΔW, so the effective rank and parameters leave it out.
    pub fn masked_components(&self) -> Vec<usize> {
        let kinds = self.cfg.module_kinds();
        self.blocks
            .iter()
            .flat_map(|b| {
                kinds.iter().map(|&k| {
                    b.linear(k)
                        .lora
                        .as_ref()
                        .map_or(0, |l| l.mask.iter().filter(|&&m| m).count())
                })
            })
            .collect()
    }

    /// AdaLoRA: hold λ_j of slot `i` at 0 where `mask[j]` is true (set now and after every
    /// optimizer step) until the mask changes or the adapter is resized.
    pub fn set_lambda_mask(&mut self, i: usize, mask: &[bool]) -> Result<()> {
        let (l, kind) = self.slot(i)?;
        let lora = self.blocks[l]
            .linear_mut(kind)
            .lora
            .as_mut()
            .context("set_lambda_mask: the model has no adapters (full fine-tuning)")?;
        ensure!(
            lora.svd,
            "set_lambda_mask: adapter {l}.{kind} is not in SVD form; set LoraConfig::svd_form"
        );
        ensure!(
            mask.len() == lora.rank,
            "set_lambda_mask: adapter {l}.{kind} has rank {} but the mask has {} entries",
            lora.rank,
            mask.len()
        );
        lora.mask = mask.to_vec();
        self.apply_lambda_masks()
    }

    /// Checkpoint of everything that trains (see [`ModelState`]).
    pub fn state(&mut self) -> Result<ModelState> {
        let be = self.be.clone();
        let mut tensors = HostWeights::new();
        let mut param_steps = BTreeMap::new();
        let mut rewarms = BTreeMap::new();
        for p in self.params_mut() {
            let Some(o) = p.opt.as_ref() else { continue };
            tensors.insert(p.name.clone(), p.host(&be)?);
            let shape = p.shape.clone();
            tensors.insert(
                format!("{}.exp_avg", p.name),
                HostTensor::new(shape.clone(), be.download(&o.m)?),
            );
            tensors.insert(
                format!("{}.exp_avg_sq", p.name),
                HostTensor::new(shape, be.download(&o.v)?),
            );
            param_steps.insert(p.name.clone(), o.step);
            if let Some(w) = o.rewarm {
                rewarms.insert(p.name.clone(), w);
            }
        }
        let mut scales = vec![];
        let mut init_ranks = vec![];
        let mut lambda_masks = vec![];
        for b in &self.blocks {
            for &k in self.cfg.module_kinds() {
                let l = b.linear(k).lora.as_ref();
                scales.push(l.map_or(0.0, |l| l.scale));
                init_ranks.push(l.map_or(0, |l| l.init_rank));
                lambda_masks.push(match l {
                    Some(l) if l.mask.iter().any(|&m| m) => l.mask.clone(),
                    _ => vec![],
                });
            }
        }
        Ok(ModelState {
            meta: StateMeta {
                step: self.step,
                resizes: self.resizes,
                ranks: self.ranks(),
                scales,
                init_ranks,
                lambda_masks,
                param_steps,
                rewarms,
            },
            tensors,
        })
    }

    /// Restores a checkpoint taken by [`Model::state`] on a model built the same way (same
    /// config, head, mode and base weights): adapters are first reallocated at the saved ranks.
    pub fn load_state(&mut self, st: &ModelState) -> Result<()> {
        let slots = self.cfg.slots();
        let m = &st.meta;
        ensure!(
            m.ranks.len() == slots && m.scales.len() == slots && m.init_ranks.len() == slots,
            "checkpoint has {} adapter slots, the model {slots}; was it saved from another model?",
            m.ranks.len()
        );
        let be = self.be.clone();
        for i in 0..slots {
            let (l, kind) = self.slot(i)?;
            let (rows, cols) = self.cfg.module_shape(kind);
            let path = self.cfg.module_path(l, kind);
            match self.blocks[l].linear_mut(kind).lora.as_mut() {
                Some(lora) => {
                    if lora.rank != m.ranks[i] {
                        let r = m.ranks[i];
                        let f = Factors {
                            rank: r,
                            a: vec![0.0; r * cols],
                            b: vec![0.0; r * rows],
                            lambda: lora.svd.then(|| vec![0.0; r]),
                        };
                        lora.set_factors(&*be, &path, rows, cols, &f, m.scales[i])?;
                    }
                    lora.scale = m.scales[i];
                    lora.init_rank = m.init_ranks[i];
                    lora.mask = match m.lambda_masks.get(i) {
                        Some(mk) if !mk.is_empty() => mk.clone(),
                        _ => vec![false; lora.rank],
                    };
                }
                None => ensure!(
                    m.ranks[i] == 0,
                    "checkpoint has an adapter of rank {} on {l}.{kind}, but this model is in \
                     full fine-tuning mode",
                    m.ranks[i]
                ),
            }
        }
        for p in self.params_mut() {
            let Some(o) = p.opt.as_mut() else { continue };
            let get = |name: &str| -> Result<&HostTensor> {
                let t = st
                    .tensors
                    .get(name)
                    .with_context(|| format!("checkpoint lacks tensor `{name}`"))?;
                ensure!(
                    t.shape == p.shape,
                    "checkpoint tensor `{name}`: expected shape {:?}, found {:?}",
                    p.shape,
                    t.shape
                );
                Ok(t)
            };
            let w = get(&p.name)?.data.clone();
            let mm = get(&format!("{}.exp_avg", p.name))?.data.clone();
            let vv = get(&format!("{}.exp_avg_sq", p.name))?.data.clone();
            be.write(&mut p.w, &w)?;
            be.write(&mut o.m, &mm)?;
            be.write(&mut o.v, &vv)?;
            o.step = *m
                .param_steps
                .get(&p.name)
                .with_context(|| format!("checkpoint lacks the step count of `{}`", p.name))?;
            o.rewarm = m.rewarms.get(&p.name).copied();
        }
        self.step = m.step;
        self.resizes = m.resizes;
        self.apply_lambda_masks()
    }
}

impl<B: Backend> Model<B> {
    fn lora_at(&self, i: usize) -> Result<&Lora<B>> {
        let (l, kind) = self.slot(i)?;
        self.blocks[l]
            .lora(kind)
            .context("the model has no adapters (full fine-tuning)")
    }

    fn lora_at_mut(&mut self, i: usize) -> Result<&mut Lora<B>> {
        let (l, kind) = self.slot(i)?;
        self.blocks[l]
            .lora_mut(kind)
            .context("the model has no adapters (full fine-tuning)")
    }

    /// Zero every adapter's accumulated ∂L/∂g (with the parameter gradients).
    pub(crate) fn zero_gate_grads(&mut self) {
        let be = self.be.clone();
        for b in &mut self.blocks {
            for &kind in self.cfg.module_kinds() {
                if let Some(g) = b
                    .linear_mut(kind)
                    .lora
                    .as_mut()
                    .and_then(|l| l.gates.as_mut())
                {
                    be.fill(&mut g.grad, 0.0);
                }
            }
        }
    }
}

impl<B: Backend> AdapterStore for Model<B> {
    fn adapters(&self) -> Vec<AdapterInfo> {
        let ranks = self.ranks();
        (0..self.cfg.slots())
            .map(|i| self.cfg.slot_of(i))
            .zip(ranks)
            .map(|((layer, kind), rank)| {
                let (rows, cols) = self.cfg.module_shape(kind);
                AdapterInfo {
                    name: AdapterInfo::slot_name(layer, kind),
                    layer,
                    kind,
                    rows,
                    cols,
                    rank,
                }
            })
            .collect()
    }

    fn adapter_host(&self, i: usize) -> Result<AdapterHost> {
        let (l, kind) = self.slot(i)?;
        let be = &*self.be;
        let Some(lora) = self.blocks[l].lora(kind) else {
            bail!("adapter_host: the model has no adapters (full fine-tuning)");
        };
        let f = lora.factors(be)?;
        let grad = |p: Option<&super::param::Param<B>>| -> Result<Vec<f32>> {
            match p.and_then(|p| p.opt.as_ref()) {
                Some(o) => be.download(&o.g),
                None => Ok(vec![]),
            }
        };
        Ok(AdapterHost {
            a: f.a,
            b: f.b,
            lambda: f.lambda,
            gates: match lora.gates.as_ref() {
                Some(g) => Some(be.download(&g.g)?),
                None => None,
            },
            grad_a: grad(lora.a.as_ref())?,
            grad_b: grad(lora.b.as_ref())?,
            grad_lambda: if lora.svd {
                Some(grad(lora.lambda.as_ref())?)
            } else {
                None
            },
            scale: lora.scale,
        })
    }

    fn set_adapter_host(&mut self, i: usize, h: &AdapterHost) -> Result<()> {
        let (l, kind) = self.slot(i)?;
        let be = self.be.clone();
        let lora = self.blocks[l]
            .linear_mut(kind)
            .lora
            .as_mut()
            .context("set_adapter_host: the model has no adapters (full fine-tuning)")?;
        let r = lora.rank;
        let (rows, cols) = self.cfg.module_shape(kind);
        ensure!(
            h.a.len() == r * cols && h.b.len() == rows * r,
            "set_adapter_host: adapter {l}.{kind} has rank {r} (A {r}×{cols}, B {rows}×{r}); \
             got {} and {} values — resize first to change the rank",
            h.a.len(),
            h.b.len()
        );
        #[allow(clippy::type_complexity)]
        let pairs: [(Option<&mut super::param::Param<B>>, &[f32], &[f32]); 3] = [
            (lora.a.as_mut(), &h.a, &h.grad_a),
            (lora.b.as_mut(), &h.b, &h.grad_b),
            (
                lora.lambda.as_mut(),
                h.lambda.as_deref().unwrap_or(&[]),
                h.grad_lambda.as_deref().unwrap_or(&[]),
            ),
        ];
        for (p, val, g) in pairs {
            let Some(p) = p else { continue };
            if !val.is_empty() {
                ensure!(
                    val.len() == p.len(),
                    "set_adapter_host: {} needs {} values, got {}",
                    p.name,
                    p.len(),
                    val.len()
                );
                be.write(&mut p.w, val)?;
            }
            if !g.is_empty() {
                ensure!(
                    g.len() == p.len(),
                    "set_adapter_host: gradient of {} needs {} values, got {}",
                    p.name,
                    p.len(),
                    g.len()
                );
                let extra = be.upload(g, MemKind::Scratch)?;
                if let Some(dst) = p.grad() {
                    be.axpy(1.0, &extra, dst);
                }
            }
        }
        self.apply_lambda_masks()
    }

    fn frozen_weight(&self, i: usize) -> Result<HostTensor> {
        let (l, kind) = self.slot(i)?;
        self.blocks[l].linear(kind).w.host(&*self.be)
    }

    fn set_resize_options(&mut self, o: ResizeOptions) -> Result<()> {
        self.resize_opts = o;
        Ok(())
    }

    fn resize_adapter(&mut self, i: usize, rank: usize) -> Result<()> {
        let (l, kind) = self.slot(i)?;
        let (alpha, rslora, svd) = self.lora_settings()?;
        let (rows, cols) = self.cfg.module_shape(kind);
        ensure!(
            rank <= rows.min(cols),
            "resize of adapter {l}.{kind} to rank {rank}: at most min(rows, cols) = {}",
            rows.min(cols)
        );
        let seed = name_seed(self.seed, &format!("{l}.{kind}.grow.{}", self.resizes));
        let opts = self.resize_opts;
        let be = self.be.clone();
        let path = self.cfg.module_path(l, kind);
        let lora = self.blocks[l].linear_mut(kind).lora.as_mut().unwrap();
        if lora.rank == rank {
            return Ok(());
        }
        let f = lora.factors(&*be)?;
        if svd && lora.init_rank == 0 {
            lora.init_rank = rank;
        }
        let mut s_new = lora_scale(alpha, rank, rslora, svd, lora.init_rank);
        if opts.fixed_scale && !svd && rank > 0 {
            // The scale the adapter was built with (α/init_rank), kept whatever its rank.
            s_new = if lora.rank > 0 {
                lora.scale
            } else {
                lora_scale(alpha, lora.init_rank.max(1), rslora, false, 0)
            };
        }
        // Survivors stay in their own coordinates unless a truncated SVD re-factorises ΔW.
        // Dropping trailing components is only right while gates order them (the relaxation:
        // the trailing ones are the nearly closed); an ungated adapter's components are in no
        // order, so it shrinks by SVD whatever the option says.
        let keep_basis = opts.keep_basis && lora.gates.is_some();
        let in_place = rank > lora.rank || keep_basis;
        let g = if rank > lora.rank {
            grow_factors(rows, cols, &f, lora.scale, rank, s_new, seed)
        } else if keep_basis {
            keep_leading(rows, cols, &f, lora.scale, rank, s_new)
        } else {
            shrink_factors(rows, cols, &f, lora.scale, rank, s_new, seed)?
        };
        let moments = if opts.keep_moments && in_place && !svd {
            lora.moments(&*be)?
        } else {
            None
        };
        let k = if lora.rank == 0 || rank == 0 {
            1.0
        } else {
            (lora.scale / s_new).sqrt()
        };
        lora.set_factors(&*be, &path, rows, cols, &g, s_new)?;
        if let Some(m) = moments {
            lora.carry_moments(&*be, rows, cols, &m, k)?;
        }
        if opts.rewarm > 0 {
            for p in lora.params_mut() {
                if let Some(o) = p.opt.as_mut() {
                    o.rewarm = Some((0, opts.rewarm));
                }
            }
        }
        self.resizes += 1;
        Ok(())
    }

    fn gather_grad_stats(&mut self, i: usize) -> Result<()> {
        let (_, kind) = self.slot(i)?;
        let (rows, _) = self.cfg.module_shape(kind);
        let be = self.be.clone();
        let lora = self.lora_at_mut(i)?;
        let r = lora.rank;
        if r == 0 {
            return Ok(());
        }
        if lora.acc.is_none() {
            lora.acc = Some(GradAcc {
                last: be.zeros(2, MemKind::Scratch)?,
                energy: be.zeros(2, MemKind::Scratch)?,
                gram: be.zeros(r * r, MemKind::Scratch)?,
                steps: 0,
            });
        }
        let (Some(a), Some(b)) = (lora.a.as_ref(), lora.b.as_ref()) else {
            return Ok(());
        };
        let (Some(ga), Some(gb)) = (a.opt.as_ref(), b.opt.as_ref()) else {
            return Ok(());
        };
        let acc = lora.acc.as_mut().unwrap();
        be.sumsq(&ga.g, &mut acc.last, 0);
        be.sumsq(&gb.g, &mut acc.last, 1);
        be.axpy(1.0 / r as f32, &acc.last, &mut acc.energy);
        // gram: [r, r] += ∇Bᵀ · ∇B, ∇B: [rows, r]
        be.matmul(
            &gb.g,
            &gb.g,
            &mut acc.gram,
            &Gemm::tn(r, r, rows).accumulate(),
        );
        acc.steps += 1;
        Ok(())
    }

    fn grad_stats(&self, i: usize) -> Result<GradStats> {
        let be = &*self.be;
        let lora = self.lora_at(i)?;
        let Some(acc) = lora.acc.as_ref().filter(|a| a.steps > 0) else {
            return Ok(GradStats::default());
        };
        let last = be.download(&acc.last)?;
        let energy = be.download(&acc.energy)?;
        Ok(GradStats {
            last_a2: last[0] as f64,
            last_b2: last[1] as f64,
            energy_sum: energy[0] as f64 + energy[1] as f64,
            energy_a: energy[0] as f64,
            energy_b: energy[1] as f64,
            steps: acc.steps,
            gram: be.download(&acc.gram)?.into_iter().map(f64::from).collect(),
        })
    }

    fn reset_grad_stats(&mut self, i: usize) -> Result<()> {
        self.lora_at_mut(i)?.acc = None;
        Ok(())
    }

    fn restore_grad_stats(&mut self, i: usize, s: &GradStats) -> Result<()> {
        let be = self.be.clone();
        let lora = self.lora_at_mut(i)?;
        let r = lora.rank;
        if s.steps == 0 || r == 0 {
            lora.acc = None;
            return Ok(());
        }
        ensure!(
            s.gram.len() == r * r,
            "restore_grad_stats: adapter {i} has rank {r} but the statistics have a {}-entry Gram matrix",
            s.gram.len()
        );
        // The values were read from f32 accumulators, so they convert back exactly.
        let gram: Vec<f32> = s.gram.iter().map(|v| *v as f32).collect();
        lora.acc = Some(GradAcc {
            last: be.upload(&[s.last_a2 as f32, s.last_b2 as f32], MemKind::Scratch)?,
            energy: be.upload(&[s.energy_a as f32, s.energy_b as f32], MemKind::Scratch)?,
            gram: be.upload(&gram, MemKind::Scratch)?,
            steps: s.steps,
        });
        Ok(())
    }

    fn set_gates(&mut self, i: usize, gates: Option<&[f32]>) -> Result<()> {
        let be = self.be.clone();
        let lora = self.lora_at_mut(i)?;
        let Some(g) = gates else {
            lora.gates = None;
            return Ok(());
        };
        ensure!(
            !lora.svd,
            "set_gates: adapter {i} is in SVD form, whose λ already scales its components"
        );
        ensure!(
            g.len() == lora.rank,
            "set_gates: adapter {i} has rank {} but {} gates were given",
            lora.rank,
            g.len()
        );
        match lora.gates.as_mut() {
            Some(gt) if gt.g.len() == g.len() => be.write(&mut gt.g, g)?,
            _ => {
                lora.gates = Some(Gates {
                    g: be.upload(g, MemKind::Scratch)?,
                    grad: be.zeros(g.len(), MemKind::Scratch)?,
                })
            }
        }
        Ok(())
    }

    fn gate_grad(&self, i: usize) -> Result<Vec<f32>> {
        match self.lora_at(i)?.gates.as_ref() {
            Some(g) => self.be.download(&g.grad),
            None => Ok(vec![]),
        }
    }

    fn keep_components(&mut self, i: usize, keep: &[usize]) -> Result<()> {
        let (l, kind) = self.slot(i)?;
        let (alpha, rslora, svd) = self.lora_settings()?;
        let (rows, cols) = self.cfg.module_shape(kind);
        let be = self.be.clone();
        let lora = self.lora_at_mut(i)?;
        let r = lora.rank;
        ensure!(
            keep.windows(2).all(|w| w[0] < w[1]) && keep.iter().all(|&j| j < r),
            "keep_components: adapter {l}.{kind} has rank {r}; components to keep must be \
             increasing indices below it, got {keep:?}"
        );
        if keep.len() == r {
            return Ok(());
        }
        let f = lora.factors(&*be)?;
        let k = keep.len();
        let s_new = lora_scale(alpha, k, rslora, svd, lora.init_rank);
        // LoRA form: s·B·A = s_new·B'·A' with both factors rescaled by √(s/s_new).
        let c = if svd || k == 0 {
            1.0
        } else {
            (lora.scale / s_new).sqrt()
        };
        let mut a = Vec::with_capacity(k * cols);
        for &j in keep {
            a.extend(f.a[j * cols..(j + 1) * cols].iter().map(|v| v * c));
        }
        let mut b = vec![0.0f32; rows * k];
        for row in 0..rows {
            for (jn, &j) in keep.iter().enumerate() {
                b[row * k + jn] = f.b[row * r + j] * c;
            }
        }
        let lambda = f
            .lambda
            .as_ref()
            .map(|lam| keep.iter().map(|&j| lam[j]).collect());
        let g = Factors {
            rank: k,
            a,
            b,
            lambda,
        };
        let path = self.cfg.module_path(l, kind);
        let lora = self.blocks[l].linear_mut(kind).lora.as_mut().unwrap();
        lora.set_factors(&*be, &path, rows, cols, &g, s_new)?;
        self.resizes += 1;
        Ok(())
    }

    fn update_importance(&mut self, i: usize, beta1: f32, beta2: f32) -> Result<()> {
        let be = self.be.clone();
        let lora = self.lora_at_mut(i)?;
        if lora.rank == 0 {
            return Ok(());
        }
        let (Some(a), Some(b), Some(l)) = (&lora.a, &lora.b, &lora.lambda) else {
            bail!("update_importance: adapter {i} is not in SVD form (AdaLoRA needs λ)");
        };
        if lora.importance.is_none() {
            let zeros = |p: &super::param::Param<B>| be.zeros(2 * p.len(), MemKind::Optim);
            lora.importance = Some(ImportanceState {
                a: zeros(a)?,
                b: zeros(b)?,
                lambda: zeros(l)?,
            });
        }
        let st = lora.importance.as_mut().expect("allocated above");
        for (p, state) in [(a, &mut st.a), (b, &mut st.b), (l, &mut st.lambda)] {
            if let Some(o) = p.opt.as_ref() {
                be.importance_ema(&p.w, &o.g, state, beta1, beta2);
            }
        }
        Ok(())
    }

    fn importance(&self, i: usize) -> Result<TripletImportance> {
        let be = &*self.be;
        let Some(st) = self.lora_at(i)?.importance.as_ref() else {
            return Ok(TripletImportance::default());
        };
        // [2, n]: the sensitivity, then the uncertainty.
        let read = |t: &Tensor<B>| -> Result<Importance> {
            let mut v = be.download(t)?;
            let unc = v.split_off(v.len() / 2);
            Ok(Importance {
                ema_ipt: v,
                ema_unc: unc,
            })
        };
        Ok(TripletImportance {
            p: read(&st.b)?,
            lambda: read(&st.lambda)?,
            q: read(&st.a)?,
        })
    }

    fn set_importance(&mut self, i: usize, t: &TripletImportance) -> Result<()> {
        let be = self.be.clone();
        let lora = self.lora_at_mut(i)?;
        if t.is_empty() {
            lora.importance = None;
            return Ok(());
        }
        let (Some(a), Some(b), Some(l)) = (&lora.a, &lora.b, &lora.lambda) else {
            bail!("set_importance: adapter {i} is not in SVD form (AdaLoRA needs λ)");
        };
        let upload = |x: &Importance, p: &super::param::Param<B>| -> Result<Tensor<B>> {
            ensure!(
                x.ema_ipt.len() == p.len() && x.ema_unc.len() == p.len(),
                "set_importance: {} has {} values, the state {} and {}",
                p.name,
                p.len(),
                x.ema_ipt.len(),
                x.ema_unc.len()
            );
            be.upload(&[&x.ema_ipt[..], &x.ema_unc[..]].concat(), MemKind::Optim)
        };
        let st = ImportanceState {
            a: upload(&t.q, a)?,
            b: upload(&t.p, b)?,
            lambda: upload(&t.lambda, l)?,
        };
        lora.importance = Some(st);
        Ok(())
    }

    fn add_orth_grad(&mut self, i: usize, weight: f32) -> Result<()> {
        let (_, kind) = self.slot(i)?;
        let (rows, cols) = self.cfg.module_shape(kind);
        let be = self.be.clone();
        let lora = self.lora_at_mut(i)?;
        let r = lora.rank;
        if r == 0 {
            return Ok(());
        }
        if lora.orth.is_none() {
            let mut eye = vec![0.0f32; r * r];
            for j in 0..r {
                eye[j * r + j] = 1.0;
            }
            lora.orth = Some(OrthScratch {
                eye: be.upload(&eye, MemKind::Scratch)?,
                n: be.zeros(r * r, MemKind::Scratch)?,
                unit: be.zeros(r * r, MemKind::Scratch)?,
                inv: be.zeros(1, MemKind::Scratch)?,
            });
        }
        let s = lora.orth.as_mut().expect("allocated above");
        let (Some(a), Some(b)) = (lora.a.as_mut(), lora.b.as_mut()) else {
            return Ok(());
        };
        // P = B [rows, r]: N = PᵀP − I, and ∂‖N‖_F/∂P = 2·P·N/‖N‖_F (N is symmetric).
        be.matmul(&b.w, &b.w, &mut s.n, &Gemm::tn(r, r, rows));
        unit_deviation(&*be, s, r);
        if let Some(o) = b.opt.as_mut() {
            let spec = Gemm::nn(rows, r, r).alpha(2.0 * weight).accumulate();
            be.matmul(&b.w, &s.unit, &mut o.g, &spec);
        }
        // Q = A [r, cols]: M = QQᵀ − I, and ∂‖M‖_F/∂Q = 2·M·Q/‖M‖_F.
        be.matmul(&a.w, &a.w, &mut s.n, &Gemm::nt(r, r, cols));
        unit_deviation(&*be, s, r);
        if let Some(o) = a.opt.as_mut() {
            let spec = Gemm::nn(r, cols, r).alpha(2.0 * weight).accumulate();
            be.matmul(&s.unit, &a.w, &mut o.g, &spec);
        }
        Ok(())
    }

    fn mask_lambda(&mut self, i: usize, masked: &[bool]) -> Result<()> {
        let be = self.be.clone();
        let lora = self.lora_at_mut(i)?;
        ensure!(
            lora.svd,
            "mask_lambda: adapter {i} is not in SVD form; set LoraConfig::svd_form"
        );
        lora.zero_lambda(&*be, masked)
    }

    fn input_sample(&self, i: usize) -> Option<HostTensor> {
        let (l, kind) = self.slot(i).ok()?;
        let a = self.acts.as_ref()?;
        let la = &a.layers[l];
        let pre_norm = self.cfg.flavour != Flavour::Encoder;
        let block_in = || {
            if l == 0 {
                a.emb_out.as_ref().unwrap_or(&a.emb_sum)
            } else {
                &a.layers[l - 1].out
            }
        };
        let c = self.cfg.hidden;
        let (v, cols) = match kind {
            // The Llama family keeps no normed inputs (see `LayerActs::a_in`): RMSNorm again
            // from the block input, the saved rstd and γ.
            ModuleKind::Q | ModuleKind::K | ModuleKind::V if la.a_in.is_none() && pre_norm => {
                (self.rms_rows(block_in(), &la.ln_a_rstd, l, true)?, c)
            }
            ModuleKind::Q | ModuleKind::K | ModuleKind::V if pre_norm => {
                (self.be.download(la.a_in.as_ref()?).ok()?, c)
            }
            ModuleKind::Q | ModuleKind::K | ModuleKind::V => {
                (self.be.download(block_in()).ok()?, c)
            }
            ModuleKind::O => (self.be.download(&la.ctx).ok()?, c),
            ModuleKind::FfnIn | ModuleKind::Gate => match &la.f_in {
                Some(f) => (self.be.download(f).ok()?, c),
                None => (self.rms_rows(&la.r1, &la.ln_f_rstd, l, false)?, c),
            },
            // The FfnOut input gelu(f1) (Llama: silu(gate) ⊙ f1) is not kept (see
            // `LayerActs::f1`): computed here.
            ModuleKind::FfnOut => (self.be.download(&la.f1).ok()?, self.cfg.ffn),
        };
        let rows = (v.len() / cols).min(SAMPLE_ROWS);
        let mut v = v[..rows * cols].to_vec();
        if kind == ModuleKind::FfnOut {
            match &la.gate {
                Some(g) => {
                    let g = self.be.download(g).ok()?;
                    for (x, &g) in v.iter_mut().zip(&g) {
                        *x *= g / (1.0 + (-g).exp());
                    }
                }
                None => v
                    .iter_mut()
                    .for_each(|x| *x = crate::backend::cpu::gelu(*x)),
            }
        }
        Some(HostTensor::new(vec![rows, cols], v))
    }
}

impl<B: Backend> Model<B> {
    /// RMSNorm of the rows of `x` [N, C] with their saved `rstd` [N] and layer `l`'s γ (of the
    /// attention norm when `attn`, else of the FFN's), on the host: a normed input the Llama
    /// family does not keep.
    fn rms_rows(&self, x: &Tensor<B>, rstd: &Tensor<B>, l: usize, attn: bool) -> Option<Vec<f32>> {
        let blk = &self.blocks[l];
        let norm = if attn { &blk.ln_a } else { &blk.ln_f };
        let c = self.cfg.hidden;
        let gamma = self.be.download(&norm.gamma.w).ok()?;
        let rstd = self.be.download(rstd).ok()?;
        let mut v = self.be.download(x).ok()?;
        for (row, r) in v.chunks_mut(c).zip(&rstd) {
            for (x, g) in row.iter_mut().zip(&gamma) {
                *x *= r * g;
            }
        }
        Some(v)
    }
}

/// With s.n holding a Gram matrix G [r, r]: s.n ← G − I and s.unit ← (G − I)/‖G − I‖_F (0 when
/// G = I), the norm never leaving the device.
fn unit_deviation<B: Backend>(be: &B, s: &mut OrthScratch<B>, r: usize) {
    be.axpy(-1.0, &s.eye, &mut s.n);
    be.inv_norm(&s.n, &mut s.inv, 0);
    be.mul_cols(&s.n, &s.inv, &mut s.unit, r * r, 1);
}
