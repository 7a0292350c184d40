//! A planted-rank task on plain structs, so the engine's methods can be judged against ground
//! truth without the transformer: independent linear layers W0 + ΔW*, where ΔW* has a planted
//! rank k_i (equal singular values σ), and a LoRA student W0 + s·B·diag(λ)·A trained with Adam
//! on the squared error of y = W·x for Gaussian x. The best rank for layer i is k_i, so a good
//! allocator's ranks correlate with k and its loss beats uniform rank at the same budget.
//!
//! The transformer version of this task lives with the model (`train::PlantedTask`); this one
//! is small enough for tests that train several methods × seeds in seconds. Resizing uses the
//! model's own factor arithmetic (`model::lora`), so the tests check what runs.

use crate::adapter::{
    AdapterHost, AdapterInfo, AdapterStore, GradStats, HostTensor, ModuleKind, TripletImportance,
};
use crate::engine::driver::EngineDriver;
use crate::engine::schedule::Schedule;
use crate::engine::{Allocation, EngineConfig, RankEngine};
use crate::model::lora::{grow_factors, init_factors, shrink_factors, Factors};
use crate::policy::PhaseSpec;
use nalgebra::DMatrix;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Normal};
use std::time::Instant;

#[derive(Clone, Debug)]
pub struct PlantedConfig {
    /// Layer width d (each W is d × d).
    pub dim: usize,
    /// Planted rank per layer.
    pub planted: Vec<usize>,
    /// The planted singular value.
    pub sigma: f32,
    pub batch: usize,
    pub lr: f32,
    pub seed: u64,
    /// Adapters in SVD form ΔW = B·diag(λ)·A with λ = 0 and B, A ~ N(0, 0.02) (AdaLoRA init).
    pub svd_form: bool,
    /// Keep the last batch of inputs for `input_sample` (EVA-like allocators).
    pub keep_inputs: bool,
}

impl PlantedConfig {
    pub fn new(planted: Vec<usize>, seed: u64) -> Self {
        Self {
            dim: 32,
            planted,
            sigma: 1.0,
            batch: 64,
            lr: 0.01,
            seed,
            svd_form: false,
            keep_inputs: true,
        }
    }
}

#[derive(Clone, Default)]
struct Adam {
    m: Vec<f32>,
    v: Vec<f32>,
    t: i32,
}

impl Adam {
    fn step(&mut self, w: &mut [f32], g: &[f32], lr: f32) {
        if self.m.len() != w.len() {
            *self = Adam {
                m: vec![0.0; w.len()],
                v: vec![0.0; w.len()],
                t: 0,
            };
        }
        self.t += 1;
        let (b1, b2, eps) = (0.9f32, 0.999f32, 1e-8f32);
        let (c1, c2) = (1.0 - b1.powi(self.t), 1.0 - b2.powi(self.t));
        for k in 0..w.len() {
            self.m[k] = b1 * self.m[k] + (1.0 - b1) * g[k];
            self.v[k] = b2 * self.v[k] + (1.0 - b2) * g[k] * g[k];
            w[k] -= lr * (self.m[k] / c1) / ((self.v[k] / c2).sqrt() + eps);
        }
    }
}

struct Layer {
    info: AdapterInfo,
    w0: Vec<f32>,
    target: Vec<f32>,
    a: Vec<f32>,
    b: Vec<f32>,
    lambda: Option<Vec<f32>>,
    /// Gates set by the rank engine (never trained here).
    gates: Option<Vec<f32>>,
    ga: Vec<f32>,
    gb: Vec<f32>,
    gl: Option<Vec<f32>>,
    gg: Vec<f32>,
    opt: [Adam; 3],
    inputs: Option<HostTensor>,
    acc: GradStats,
    importance: TripletImportance,
}

impl Layer {
    /// A layer without factors, gradients or optimizer state.
    fn new(info: AdapterInfo, w0: Vec<f32>, target: Vec<f32>) -> Self {
        Self {
            info,
            w0,
            target,
            a: vec![],
            b: vec![],
            lambda: None,
            gates: None,
            ga: vec![],
            gb: vec![],
            gl: None,
            gg: vec![],
            opt: Default::default(),
            inputs: None,
            acc: GradStats::default(),
            importance: TripletImportance::default(),
        }
    }
}

/// The student: one LoRA adapter per layer, an [`AdapterStore`].
pub struct PlantedStore {
    cfg: PlantedConfig,
    layers: Vec<Layer>,
    rng: StdRng,
    resizes: u64,
}

fn gaussian(rng: &mut StdRng, n: usize, std: f32) -> Vec<f32> {
    let d = Normal::new(0.0f32, std).expect("finite std");
    (0..n).map(|_| d.sample(rng)).collect()
}

fn orthonormal(rng: &mut StdRng, d: usize, k: usize) -> DMatrix<f64> {
    let g = gaussian(rng, d * k, 1.0);
    let m = DMatrix::<f64>::from_fn(d, k, |i, j| g[i * k + j] as f64);
    m.qr().q()
}

impl Layer {
    fn factors(&self) -> Factors {
        Factors {
            rank: self.info.rank,
            a: self.a.clone(),
            b: self.b.clone(),
            lambda: self.lambda.clone(),
        }
    }
    fn set(&mut self, f: Factors) {
        self.info.rank = f.rank;
        self.a = f.a;
        self.b = f.b;
        self.lambda = f.lambda;
        // Moments, gradients, gates and statistics describe the old components.
        self.opt = Default::default();
        self.ga.clear();
        self.gb.clear();
        self.gl = None;
        self.gg.clear();
        self.gates = None;
        self.acc = GradStats::default();
        self.importance = TripletImportance::default();
    }
    /// Per-component multiplier λ_j·g_j.
    fn mult(&self) -> Vec<f32> {
        (0..self.info.rank)
            .map(|j| {
                self.lambda.as_ref().map_or(1.0, |l| l[j])
                    * self.gates.as_ref().map_or(1.0, |g| g[j])
            })
            .collect()
    }
}

impl PlantedStore {
    pub fn new(cfg: PlantedConfig, init_rank: usize) -> Self {
        let mut rng = StdRng::seed_from_u64(cfg.seed);
        let d = cfg.dim;
        let mut layers = vec![];
        for (i, &k) in cfg.planted.iter().enumerate() {
            let (layer, kind) = ModuleKind::encoder_slot(i);
            let w0 = gaussian(&mut rng, d * d, 1.0 / (d as f32).sqrt());
            let (u, v) = (orthonormal(&mut rng, d, k), orthonormal(&mut rng, d, k));
            let t = &u * v.transpose() * cfg.sigma as f64;
            let target: Vec<f32> = (0..d * d).map(|x| t[(x / d, x % d)] as f32).collect();
            let mut l = Layer::new(
                AdapterInfo {
                    name: AdapterInfo::slot_name(layer, kind),
                    layer,
                    kind,
                    rows: d,
                    cols: d,
                    rank: 0,
                },
                w0,
                target,
            );
            l.set(init_factors(d, d, init_rank, cfg.svd_form, rng.random()));
            layers.push(l);
        }
        Self {
            cfg,
            layers,
            rng,
            resizes: 0,
        }
    }

    pub fn planted(&self) -> &[usize] {
        &self.cfg.planted
    }

    /// ΔW = B·diag(λ ⊙ g)·A (scale 1).
    fn delta(l: &Layer) -> Vec<f32> {
        let (d, r) = (l.info.rows, l.info.rank);
        let m = l.mult();
        let mut out = vec![0.0f32; d * d];
        for p in 0..d {
            for (j, mj) in m.iter().enumerate() {
                let bj = l.b[p * r + j] * mj;
                if bj == 0.0 {
                    continue;
                }
                for q in 0..d {
                    out[p * d + q] += bj * l.a[j * d + q];
                }
            }
        }
        out
    }

    /// Expected loss over x ~ N(0, I): mean over layers of ‖ΔW − ΔW*‖²_F / d.
    pub fn eval_loss(&self) -> f64 {
        let d = self.cfg.dim;
        self.layers
            .iter()
            .map(|l| {
                let m = Self::delta(l);
                m.iter()
                    .zip(&l.target)
                    .map(|(x, t)| ((x - t) as f64).powi(2))
                    .sum::<f64>()
                    / d as f64
            })
            .sum::<f64>()
            / self.layers.len() as f64
    }

    /// One minibatch forward/backward; fills gradients, returns the minibatch loss.
    pub fn forward_backward(&mut self) -> f64 {
        let (d, n) = (self.cfg.dim, self.cfg.batch);
        let mut total = 0.0;
        for li in 0..self.layers.len() {
            let x = gaussian(&mut self.rng, d * n, 1.0); // [d, n]
            let l = &mut self.layers[li];
            let r = l.info.rank;
            let m = Self::delta(l);
            // Residual R = ΔW − ΔW*, its action on the batch, and G = 2/(n·d)·(R·X)·Xᵀ.
            let res: Vec<f32> = m.iter().zip(&l.target).map(|(a, b)| a - b).collect();
            let mut rx = vec![0.0f32; d * n];
            for p in 0..d {
                for q in 0..d {
                    let rv = res[p * d + q];
                    for s in 0..n {
                        rx[p * n + s] += rv * x[q * n + s];
                    }
                }
            }
            total += rx.iter().map(|v| (*v as f64).powi(2)).sum::<f64>() / (n * d) as f64;
            let c = 2.0 / (n * d) as f32;
            let mut g = vec![0.0f32; d * d];
            for p in 0..d {
                for q in 0..d {
                    g[p * d + q] = c * (0..n).map(|s| rx[p * n + s] * x[q * n + s]).sum::<f32>();
                }
            }
            let mult = l.mult();
            let lam: Vec<f32> = l.lambda.clone().unwrap_or_else(|| vec![1.0; r]);
            let gate: Vec<f32> = l.gates.clone().unwrap_or_else(|| vec![1.0; r]);
            // With m_j = λ_j·g_j: dB = G·(diag(m)A)ᵀ, dA = (B·diag(m))ᵀ·G, and b_jᵀ·G·a_j
            // times g_j for dλ_j, times λ_j for dg_j.
            let mut ga = vec![0.0f32; r * d];
            let mut gb = vec![0.0f32; d * r];
            let mut bga = vec![0.0f32; r];
            for j in 0..r {
                for p in 0..d {
                    let ga_row: f32 = (0..d).map(|q| g[p * d + q] * l.a[j * d + q]).sum();
                    gb[p * r + j] = ga_row * mult[j];
                    bga[j] += l.b[p * r + j] * ga_row;
                }
                for q in 0..d {
                    ga[j * d + q] =
                        mult[j] * (0..d).map(|p| l.b[p * r + j] * g[p * d + q]).sum::<f32>();
                }
            }
            l.ga = ga;
            l.gb = gb;
            l.gl = l
                .lambda
                .is_some()
                .then(|| (0..r).map(|j| bga[j] * gate[j]).collect());
            l.gg = if l.gates.is_some() {
                (0..r).map(|j| bga[j] * lam[j]).collect()
            } else {
                vec![]
            };
            if self.cfg.keep_inputs {
                let xt: Vec<f32> = (0..n * d).map(|k| x[(k % d) * n + k / d]).collect();
                l.inputs = Some(HostTensor::new(vec![n, d], xt));
            }
        }
        total / self.layers.len() as f64
    }

    pub fn optimizer_step(&mut self) {
        let lr = self.cfg.lr;
        for l in &mut self.layers {
            if l.info.rank == 0 {
                continue;
            }
            l.opt[0].step(&mut l.a, &l.ga, lr);
            l.opt[1].step(&mut l.b, &l.gb, lr);
            if let (Some(lam), Some(g)) = (l.lambda.as_mut(), l.gl.as_ref()) {
                l.opt[2].step(lam, g, lr);
            }
        }
    }

    fn layer(&self, i: usize) -> anyhow::Result<&Layer> {
        self.layers
            .get(i)
            .ok_or_else(|| anyhow::anyhow!("no adapter {i}"))
    }
    fn layer_mut(&mut self, i: usize) -> anyhow::Result<&mut Layer> {
        self.layers
            .get_mut(i)
            .ok_or_else(|| anyhow::anyhow!("no adapter {i}"))
    }
}

impl AdapterStore for PlantedStore {
    fn adapters(&self) -> Vec<AdapterInfo> {
        self.layers.iter().map(|l| l.info.clone()).collect()
    }
    fn adapter_host(&self, i: usize) -> anyhow::Result<AdapterHost> {
        let l = self.layer(i)?;
        Ok(AdapterHost {
            a: l.a.clone(),
            b: l.b.clone(),
            lambda: l.lambda.clone(),
            gates: l.gates.clone(),
            grad_a: l.ga.clone(),
            grad_b: l.gb.clone(),
            grad_lambda: l.gl.clone(),
            scale: 1.0,
        })
    }
    fn set_adapter_host(&mut self, i: usize, h: &AdapterHost) -> anyhow::Result<()> {
        let l = self.layer_mut(i)?;
        anyhow::ensure!(
            h.a.len() == l.a.len() && h.b.len() == l.b.len(),
            "set_adapter_host: shape mismatch"
        );
        l.a.clone_from(&h.a);
        l.b.clone_from(&h.b);
        if let (Some(lam), Some(hl)) = (l.lambda.as_mut(), h.lambda.as_ref()) {
            lam.clone_from(hl);
        }
        for (g, x) in l.ga.iter_mut().zip(&h.grad_a) {
            *g += x;
        }
        for (g, x) in l.gb.iter_mut().zip(&h.grad_b) {
            *g += x;
        }
        Ok(())
    }
    fn frozen_weight(&self, i: usize) -> anyhow::Result<HostTensor> {
        let l = self.layer(i)?;
        Ok(HostTensor::new(
            vec![l.info.rows, l.info.cols],
            l.w0.clone(),
        ))
    }
    /// The model's own resizing (`model::lora`): shrink by truncated SVD, grow with B = 0.
    fn resize_adapter(&mut self, i: usize, rank: usize) -> anyhow::Result<()> {
        let seed = self.rng.random::<u64>() ^ self.resizes;
        let l = self.layer_mut(i)?;
        let (d, r) = (l.info.rows, l.info.rank);
        anyhow::ensure!(rank <= d, "rank {rank} too large");
        if rank == r {
            return Ok(());
        }
        let f = l.factors();
        let g = if rank < r {
            shrink_factors(d, d, &f, 1.0, rank, 1.0, seed)?
        } else {
            grow_factors(d, d, &f, 1.0, rank, 1.0, seed)
        };
        l.set(g);
        self.resizes += 1;
        Ok(())
    }
    fn input_sample(&self, i: usize) -> Option<HostTensor> {
        self.layers.get(i)?.inputs.clone()
    }
    fn gather_grad_stats(&mut self, i: usize) -> anyhow::Result<()> {
        let l = self.layer_mut(i)?;
        let r = l.info.rank;
        if r == 0 || l.gb.len() != l.info.rows * r {
            return Ok(());
        }
        let a2: f64 = l.ga.iter().map(|x| (*x as f64).powi(2)).sum();
        let b2: f64 = l.gb.iter().map(|x| (*x as f64).powi(2)).sum();
        let acc = &mut l.acc;
        acc.last_a2 = a2;
        acc.last_b2 = b2;
        acc.energy_sum += (a2 + b2) / r as f64;
        acc.energy_a += a2 / r as f64;
        acc.energy_b += b2 / r as f64;
        acc.steps += 1;
        if acc.gram.len() != r * r {
            acc.gram = vec![0.0; r * r];
        }
        crate::engine::spectra::add_gram(l.info.rows, r, &l.gb, &mut acc.gram);
        Ok(())
    }
    fn grad_stats(&self, i: usize) -> anyhow::Result<GradStats> {
        Ok(self.layer(i)?.acc.clone())
    }
    fn reset_grad_stats(&mut self, i: usize) -> anyhow::Result<()> {
        self.layer_mut(i)?.acc = GradStats::default();
        Ok(())
    }
    fn restore_grad_stats(&mut self, i: usize, s: &GradStats) -> anyhow::Result<()> {
        self.layer_mut(i)?.acc = s.clone();
        Ok(())
    }
    fn set_gates(&mut self, i: usize, gates: Option<&[f32]>) -> anyhow::Result<()> {
        let l = self.layer_mut(i)?;
        if let Some(g) = gates {
            anyhow::ensure!(
                g.len() == l.info.rank,
                "set_gates: {} gates for rank {}",
                g.len(),
                l.info.rank
            );
        }
        l.gates = gates.map(<[f32]>::to_vec);
        Ok(())
    }
    fn gate_grad(&self, i: usize) -> anyhow::Result<Vec<f32>> {
        Ok(self.layer(i)?.gg.clone())
    }
    fn keep_components(&mut self, i: usize, keep: &[usize]) -> anyhow::Result<()> {
        let l = self.layer_mut(i)?;
        let (d, r) = (l.info.rows, l.info.rank);
        anyhow::ensure!(
            keep.iter().all(|&j| j < r),
            "keep_components: index out of range"
        );
        let k = keep.len();
        let mut a = Vec::with_capacity(k * d);
        for &j in keep {
            a.extend_from_slice(&l.a[j * d..(j + 1) * d]);
        }
        let b: Vec<f32> = (0..d)
            .flat_map(|p| keep.iter().map(move |&j| (p, j)))
            .map(|(p, j)| l.b[p * r + j])
            .collect();
        let lambda = l
            .lambda
            .as_ref()
            .map(|x| keep.iter().map(|&j| x[j]).collect());
        l.set(Factors {
            rank: k,
            a,
            b,
            lambda,
        });
        Ok(())
    }
    // AdaLoRA's store operations on host tensors: the host formulas themselves.
    fn update_importance(&mut self, i: usize, beta1: f32, beta2: f32) -> anyhow::Result<()> {
        let h = self.adapter_host(i)?;
        let l = self.layer_mut(i)?;
        if l.info.rank > 0 {
            l.importance.update(&h, beta1 as f64, beta2 as f64);
        }
        Ok(())
    }
    fn importance(&self, i: usize) -> anyhow::Result<TripletImportance> {
        Ok(self.layer(i)?.importance.clone())
    }
    fn set_importance(&mut self, i: usize, t: &TripletImportance) -> anyhow::Result<()> {
        self.layer_mut(i)?.importance = t.clone();
        Ok(())
    }
    fn add_orth_grad(&mut self, i: usize, weight: f32) -> anyhow::Result<()> {
        let h = self.adapter_host(i)?;
        let l = self.layer_mut(i)?;
        let (rows, cols, r) = (l.info.rows, l.info.cols, l.info.rank);
        if r == 0 {
            return Ok(());
        }
        let (ga, gb) = crate::engine::adalora::orth_grads(&h, rows, cols, r, weight);
        for (g, x) in l.ga.iter_mut().zip(&ga) {
            *g += x;
        }
        for (g, x) in l.gb.iter_mut().zip(&gb) {
            *g += x;
        }
        Ok(())
    }
    fn mask_lambda(&mut self, i: usize, masked: &[bool]) -> anyhow::Result<()> {
        let l = self.layer_mut(i)?;
        if let Some(lam) = l.lambda.as_mut() {
            for (v, &m) in lam.iter_mut().zip(masked) {
                if m {
                    *v = 0.0;
                }
            }
        }
        Ok(())
    }
}

/// What a planted run ended with.
#[derive(Clone, Debug)]
pub struct PlantedOutcome {
    pub ranks: Vec<usize>,
    pub final_loss: f64,
    pub allocations: Vec<Allocation>,
    pub train_seconds: f64,
    pub realloc_seconds: f64,
    pub engine_calls: crate::engine::EngineCalls,
}

/// Train the planted task for `steps` steps under `engine_cfg`, with `phases` applied by the
/// same [`Schedule`] the runner uses.
pub fn run_planted(
    task: PlantedConfig,
    engine_cfg: EngineConfig,
    phases: Vec<PhaseSpec>,
    steps: u64,
) -> anyhow::Result<PlantedOutcome> {
    let init_rank = engine_cfg.init_rank;
    train(
        task,
        init_rank,
        Some(RankEngine::new(engine_cfg)?),
        phases,
        steps,
    )
}

/// Train the planted task at one rank everywhere, without a rank engine: how a policy's fixed
/// arm runs (`lora.rank = r` and no re-allocation), so the engine's methods are compared with
/// the baseline a run would print.
pub fn run_planted_fixed(
    task: PlantedConfig,
    rank: usize,
    steps: u64,
) -> anyhow::Result<PlantedOutcome> {
    train(task, rank, None, Vec::new(), steps)
}

fn train(
    task: PlantedConfig,
    init_rank: usize,
    mut engine: Option<RankEngine>,
    phases: Vec<PhaseSpec>,
    steps: u64,
) -> anyhow::Result<PlantedOutcome> {
    struct Host<'a>(&'a mut PlantedStore);
    impl crate::engine::driver::DriverHost for Host<'_> {
        fn store(&mut self) -> &mut dyn AdapterStore {
            self.0
        }
        fn evaluate(
            &mut self,
            _step: u64,
        ) -> anyhow::Result<std::collections::BTreeMap<String, f64>> {
            Ok([("eval_loss".to_string(), self.0.eval_loss())].into())
        }
    }
    let t0 = Instant::now();
    let mut store = PlantedStore::new(task, init_rank);
    let mut allocations: Vec<Allocation> = match engine.as_mut() {
        Some(e) => e.on_start(&mut store)?.into_iter().collect(),
        None => Vec::new(),
    };
    let mut driver = EngineDriver::new(engine, Schedule::new(phases, steps, steps, None), steps);
    for step in 1..=steps {
        let loss = store.forward_backward();
        driver.after_backward(step, &mut store)?;
        store.optimizer_step();
        let out = driver.after_step(step, loss, &mut Host(&mut store))?;
        allocations.extend(out.allocations);
        if out.stop {
            break;
        }
    }
    let (ranks, realloc_seconds, engine_calls) = match driver.engine.take() {
        Some(e) => (e.ranks(), e.calls().reallocate_seconds, e.calls().clone()),
        None => (
            store.adapters().iter().map(|a| a.rank).collect(),
            0.0,
            Default::default(),
        ),
    };
    Ok(PlantedOutcome {
        ranks,
        final_loss: store.eval_loss(),
        allocations,
        train_seconds: t0.elapsed().as_secs_f64(),
        realloc_seconds,
        engine_calls,
    })
}

/// Spearman rank correlation (ties get their average rank).
pub fn spearman(x: &[f64], y: &[f64]) -> f64 {
    fn ranks(v: &[f64]) -> Vec<f64> {
        let mut idx: Vec<usize> = (0..v.len()).collect();
        idx.sort_by(|&a, &b| v[a].total_cmp(&v[b]));
        let mut r = vec![0.0; v.len()];
        let mut i = 0;
        while i < idx.len() {
            let mut j = i;
            while j + 1 < idx.len() && v[idx[j + 1]] == v[idx[i]] {
                j += 1;
            }
            let avg = (i + j) as f64 / 2.0 + 1.0;
            for k in i..=j {
                r[idx[k]] = avg;
            }
            i = j + 1;
        }
        r
    }
    let (rx, ry) = (ranks(x), ranks(y));
    let n = x.len() as f64;
    let (mx, my) = (rx.iter().sum::<f64>() / n, ry.iter().sum::<f64>() / n);
    let cov: f64 = rx.iter().zip(&ry).map(|(a, b)| (a - mx) * (b - my)).sum();
    let vx: f64 = rx.iter().map(|a| (a - mx).powi(2)).sum();
    let vy: f64 = ry.iter().map(|b| (b - my).powi(2)).sum();
    if vx == 0.0 || vy == 0.0 {
        0.0
    } else {
        cov / (vx * vy).sqrt()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spearman_matches_closed_form_without_ties() {
        let x = [1.0, 2.0, 3.0, 4.0, 5.0];
        let y = [2.0, 1.0, 4.0, 3.0, 5.0];
        // 1 − 6Σd²/(n(n²−1)) with d = (1, 1, 1, 1, 0): 1 − 24/120 = 0.8.
        assert!((spearman(&x, &y) - 0.8).abs() < 1e-12);
        assert!((spearman(&x, &[5.0, 4.0, 3.0, 2.0, 1.0]) + 1.0).abs() < 1e-12);
    }

    #[test]
    fn gradients_match_finite_differences_of_expected_loss() {
        // With a huge batch the minibatch gradient approaches the gradient of the expected
        // loss ‖ΔW − ΔW*‖²_F/d; compare dλ and one entry of A and B by central differences.
        let mut cfg = PlantedConfig::new(vec![2], 3);
        cfg.dim = 6;
        cfg.batch = 40_000;
        cfg.svd_form = true;
        let mut s = PlantedStore::new(cfg, 3);
        for l in &mut s.layers {
            l.lambda = Some(vec![0.5, -0.3, 0.8]);
        }
        s.forward_backward();
        let h = s.adapter_host(0).unwrap();
        let f = |s: &PlantedStore| s.eval_loss();
        let eps = 1e-3f32;
        let check = |get: &dyn Fn(&mut Layer) -> &mut f32, g: f32| {
            let mut p = PlantedStore::new(s.cfg.clone(), 0);
            p.layers = vec![clone_layer(&s.layers[0])];
            *get(&mut p.layers[0]) += eps;
            let up = f(&p);
            *get(&mut p.layers[0]) -= 2.0 * eps;
            let dn = f(&p);
            let fd = (up - dn) / (2.0 * eps as f64);
            assert!(
                (fd - g as f64).abs() < 0.05 * fd.abs().max(0.05),
                "fd {fd} vs {g}"
            );
        };
        check(
            &|l| &mut l.lambda.as_mut().unwrap()[1],
            h.grad_lambda.as_ref().unwrap()[1],
        );
        check(&|l| &mut l.a[4], h.grad_a[4]);
        check(&|l| &mut l.b[7], h.grad_b[7]);
    }

    fn clone_layer(l: &Layer) -> Layer {
        Layer {
            a: l.a.clone(),
            b: l.b.clone(),
            lambda: l.lambda.clone(),
            gates: l.gates.clone(),
            ..Layer::new(l.info.clone(), l.w0.clone(), l.target.clone())
        }
    }

    #[test]
    fn resize_keeps_delta_on_grow_and_best_approximation_on_shrink() {
        let mut s = PlantedStore::new(PlantedConfig::new(vec![3], 5), 4);
        for _ in 0..50 {
            s.forward_backward();
            s.optimizer_step();
        }
        let before = PlantedStore::delta(&s.layers[0]);
        s.resize_adapter(0, 7).unwrap();
        let after = PlantedStore::delta(&s.layers[0]);
        assert!(before.iter().zip(&after).all(|(a, b)| (a - b).abs() < 1e-5));
        // Shrinking to rank 2 leaves the rank-2 truncated SVD: its error is the tail energy.
        let d = 32;
        let m = DMatrix::<f64>::from_fn(d, d, |i, j| after[i * d + j] as f64);
        let mut sv: Vec<f64> = m.singular_values().iter().cloned().collect();
        sv.sort_by(|a, b| b.total_cmp(a));
        s.resize_adapter(0, 2).unwrap();
        let small = PlantedStore::delta(&s.layers[0]);
        let err: f64 = small
            .iter()
            .zip(&after)
            .map(|(a, b)| ((a - b) as f64).powi(2))
            .sum();
        let tail: f64 = sv[2..].iter().map(|x| x * x).sum();
        assert!((err - tail).abs() < 1e-4 * (1.0 + tail), "{err} vs {tail}");
    }
}
