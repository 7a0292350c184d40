//! AdaLoRA's per-step work where the adapters live, against the host formulas it replaced, on the
//! CPU backend and on lavapipe. Oracles and tolerances (|got − want| ≤ tol·(1 + |want|)):
//! - `Backend::importance_ema` against `Importance::update` (the host formula): the CPU backend
//!   bit for bit (the same f32 operations in the same order), the GPU within 1e-6 (the shader
//!   compiler may fuse a multiply and an add);
//! - `Backend::inv_norm` against 1/sqrt(Σx²) summed in f64: 1e-6 on the CPU, 1e-5 on the GPU
//!   (an f32 tree sum);
//! - the orthogonality penalty's gradient the model adds on the device (`add_orth_grad`: f32
//!   GEMMs) against `adalora::orth_grads` (f64 on host copies): 1e-5;
//! - a whole AdaLoRA run, masking and pruning: the same budget steps, ranks and kept triplets,
//!   and scores within 1e-4, as the same run with the host versions of these operations (a
//!   store that computes them on host copies of the adapters, as AdaLoRA did before they moved
//!   to the device);
//! - a run stopped between budget steps and resumed from its checkpoint (the importance read
//!   back from the store and put back) against the uninterrupted run: bit for bit on the CPU.
//!
//! Without an adapter the GPU halves print that they skipped (ADARANK_REQUIRE_GPU=1 fails them).

mod common;

use adarank::adapter::{
    AdapterHost, AdapterInfo, AdapterStore, GradStats, HostTensor, Importance, ModuleKind,
    TripletImportance,
};
use adarank::backend::cpu::Cpu;
use adarank::backend::{AdamW, Backend, MemKind};
use adarank::engine::adalora::orth_grads;
use adarank::engine::{AdaLoraConfig, Allocation, EngineConfig, EngineCtx, Method, RankEngine};
use adarank::model::{LoraConfig, Model, TrainMode};
use adarank::train::{build_model, PlantedConfig, PlantedTask, Task};
use common::{assert_close, rand_vec, test_gpu};
use std::sync::Arc;

const K: MemKind = MemKind::Scratch;
/// Odd sizes: one entry, less than a workgroup, just over one, several, not a multiple of 256.
const SIZES: [usize; 5] = [1, 7, 257, 1000, 4099];

/// `importance_ema` twice from a random state against the host formula; returns the result.
fn ema_on<B: Backend>(be: &B, n: usize, seed: u64) -> (Vec<f32>, Vec<f32>) {
    let (w, g) = (rand_vec(n, seed), rand_vec(n, seed + 1));
    let state0: Vec<f32> = rand_vec(2 * n, seed + 2).iter().map(|v| v.abs()).collect();
    let mut host = Importance {
        ema_ipt: state0[..n].to_vec(),
        ema_unc: state0[n..].to_vec(),
    };
    let (tw, tg) = (be.upload(&w, K).unwrap(), be.upload(&g, K).unwrap());
    let mut st = be.upload(&state0, K).unwrap();
    // Two different betas, so a swapped pair shows.
    for _ in 0..2 {
        be.importance_ema(&tw, &tg, &mut st, 0.85, 0.7);
        host.update(&w, &g, 0.85, 0.7);
    }
    let want = [host.ema_ipt, host.ema_unc].concat();
    (be.download(&st).unwrap(), want)
}

#[test]
fn importance_ema_is_the_host_formula_on_the_cpu() {
    for (k, n) in SIZES.into_iter().enumerate() {
        let (got, want) = ema_on(&Cpu::new(), n, 10 * k as u64);
        assert_eq!(got, want, "n = {n}");
    }
}

#[test]
fn importance_ema_matches_the_host_formula_on_the_gpu() {
    let Some(g) = test_gpu() else { return };
    for (k, n) in SIZES.into_iter().enumerate() {
        let (got, want) = ema_on(&*g, n, 10 * k as u64);
        assert_close(&format!("importance_ema n = {n}"), &got, &want, 1e-6);
    }
}

fn inv_norm_on<B: Backend>(be: &B, tol: f32) {
    for (k, n) in SIZES.into_iter().chain([10_000]).enumerate() {
        let x = rand_vec(n, 40 + k as u64);
        let want = 1.0 / x.iter().map(|&v| v as f64 * v as f64).sum::<f64>().sqrt();
        let mut out = be.upload(&[7.0, 7.0, 7.0], K).unwrap();
        be.inv_norm(&be.upload(&x, K).unwrap(), &mut out, 2);
        let got = be.download(&out).unwrap();
        assert_eq!(&got[..2], &[7.0, 7.0], "only the slot is written");
        assert_close(&format!("inv_norm n = {n}"), &got[2..], &[want as f32], tol);
    }
    // An all-zero tensor has no direction: 0, not infinity.
    let mut out = be.zeros(1, K).unwrap();
    be.inv_norm(&be.zeros(300, K).unwrap(), &mut out, 0);
    assert_eq!(be.download(&out).unwrap(), vec![0.0]);
}

#[test]
fn inv_norm_matches_the_f64_norm() {
    inv_norm_on(&Cpu::new(), 1e-6);
    if let Some(g) = test_gpu() {
        inv_norm_on(&*g, 1e-5);
    }
}

fn planted() -> PlantedTask {
    PlantedTask::new(PlantedConfig::small(2)).unwrap()
}

/// The planted task's small encoder with AdaLoRA adapters of rank `rank` on every module.
fn svd_model<B: Backend>(be: Arc<B>, rank: usize) -> Model<B> {
    let task = planted();
    let layers = task.model_config().layers;
    let mut lora = LoraConfig::uniform(layers, &ModuleKind::ALL, rank, 16.0);
    lora.svd_form = true;
    build_model(be, &task, TrainMode::Lora(lora), 2).unwrap()
}

/// The penalty's gradient the model adds on the device, on top of a backward pass's gradients,
/// against the host formula on the adapter's host copy.
fn orth_grad_on<B: Backend>(be: Arc<B>) {
    let mut m = svd_model(be, 5);
    let mut task = planted();
    // Factors far from orthonormal (random, of several scales), so the penalty is large.
    for i in 0..m.adapters().len() {
        let mut h = m.adapter_host(i).unwrap();
        let s = 1.0 + (i % 3) as f32;
        h.a = rand_vec(h.a.len(), 100 + i as u64)
            .iter()
            .map(|v| v * s)
            .collect();
        h.b = rand_vec(h.b.len(), 200 + i as u64)
            .iter()
            .map(|v| v / s)
            .collect();
        h.grad_a.clear();
        h.grad_b.clear();
        h.grad_lambda = None;
        m.set_adapter_host(i, &h).unwrap();
    }
    m.zero_grads();
    m.forward_backward(&task.train_batch(0, 8).unwrap(), 1.0)
        .unwrap();
    let weight = 0.5 / 24.0;
    for (i, a) in m.adapters().into_iter().enumerate() {
        let before = m.adapter_host(i).unwrap();
        m.add_orth_grad(i, weight).unwrap();
        let after = m.adapter_host(i).unwrap();
        let (ga, gb) = orth_grads(&before, a.rows, a.cols, a.rank, weight);
        let added =
            |x: &[f32], y: &[f32]| -> Vec<f32> { x.iter().zip(y).map(|(x, y)| x - y).collect() };
        assert_close(
            &format!("{} ∂/∂A", a.name),
            &added(&after.grad_a, &before.grad_a),
            &ga,
            1e-5,
        );
        assert_close(
            &format!("{} ∂/∂B", a.name),
            &added(&after.grad_b, &before.grad_b),
            &gb,
            1e-5,
        );
        assert!(
            ga.iter().any(|g| g.abs() > 1e-3),
            "{}: a real penalty",
            a.name
        );
    }
}

#[test]
fn orthogonality_gradient_on_the_device_matches_the_host_formula() {
    orth_grad_on(Arc::new(Cpu::new()));
    if let Some(g) = test_gpu() {
        orth_grad_on(g);
    }
}

/// The model with AdaLoRA's per-adapter operations computed on host copies (downloads and
/// uploads every step), as AdaLoRA ran before they moved to the device: the oracle of the
/// trajectory tests.
struct HostAdaLora<'a, B: Backend> {
    model: &'a mut Model<B>,
    importance: Vec<TripletImportance>,
}

impl<B: Backend> AdapterStore for HostAdaLora<'_, B> {
    fn adapters(&self) -> Vec<AdapterInfo> {
        self.model.adapters()
    }
    fn adapter_host(&self, i: usize) -> anyhow::Result<AdapterHost> {
        self.model.adapter_host(i)
    }
    fn set_adapter_host(&mut self, i: usize, h: &AdapterHost) -> anyhow::Result<()> {
        self.model.set_adapter_host(i, h)
    }
    fn frozen_weight(&self, i: usize) -> anyhow::Result<HostTensor> {
        self.model.frozen_weight(i)
    }
    fn resize_adapter(&mut self, i: usize, rank: usize) -> anyhow::Result<()> {
        self.importance[i] = TripletImportance::default();
        self.model.resize_adapter(i, rank)
    }
    fn gather_grad_stats(&mut self, i: usize) -> anyhow::Result<()> {
        self.model.gather_grad_stats(i)
    }
    fn grad_stats(&self, i: usize) -> anyhow::Result<GradStats> {
        self.model.grad_stats(i)
    }
    fn reset_grad_stats(&mut self, i: usize) -> anyhow::Result<()> {
        self.model.reset_grad_stats(i)
    }
    fn set_gates(&mut self, i: usize, g: Option<&[f32]>) -> anyhow::Result<()> {
        self.model.set_gates(i, g)
    }
    fn gate_grad(&self, i: usize) -> anyhow::Result<Vec<f32>> {
        self.model.gate_grad(i)
    }
    fn keep_components(&mut self, i: usize, keep: &[usize]) -> anyhow::Result<()> {
        self.importance[i] = TripletImportance::default();
        self.model.keep_components(i, keep)
    }
    fn update_importance(&mut self, i: usize, beta1: f32, beta2: f32) -> anyhow::Result<()> {
        let h = self.model.adapter_host(i)?;
        self.importance[i].update(&h, beta1 as f64, beta2 as f64);
        Ok(())
    }
    fn importance(&self, i: usize) -> anyhow::Result<TripletImportance> {
        Ok(self.importance[i].clone())
    }
    fn set_importance(&mut self, i: usize, t: &TripletImportance) -> anyhow::Result<()> {
        self.importance[i] = t.clone();
        Ok(())
    }
    fn add_orth_grad(&mut self, i: usize, weight: f32) -> anyhow::Result<()> {
        let a = &self.model.adapters()[i];
        let h = self.model.adapter_host(i)?;
        let (grad_a, grad_b) = orth_grads(&h, a.rows, a.cols, a.rank, weight);
        let add = AdapterHost {
            grad_a,
            grad_b,
            grad_lambda: None,
            ..h
        };
        self.model.set_adapter_host(i, &add)
    }
    fn mask_lambda(&mut self, i: usize, masked: &[bool]) -> anyhow::Result<()> {
        let mut h = self.model.adapter_host(i)?;
        if let Some(l) = h.lambda.as_mut() {
            for (v, &m) in l.iter_mut().zip(masked) {
                if m {
                    *v = 0.0;
                }
            }
        }
        h.grad_a.clear();
        h.grad_b.clear();
        h.grad_lambda = None;
        self.model.set_adapter_host(i, &h)
    }
}

/// A store that trains a model: the model itself, or the model behind the host versions.
trait Trains<B: Backend>: AdapterStore {
    fn model(&mut self) -> &mut Model<B>;
}

impl<B: Backend> Trains<B> for Model<B> {
    fn model(&mut self) -> &mut Model<B> {
        self
    }
}

impl<B: Backend> Trains<B> for HostAdaLora<'_, B> {
    fn model(&mut self) -> &mut Model<B> {
        self.model
    }
}

/// What an AdaLoRA run decided.
struct Run {
    allocations: Vec<Allocation>,
    /// The engine's saved kept triplets.
    keep: serde_json::Value,
    /// The importance of every adapter at the end.
    importance: Vec<TripletImportance>,
    /// Which λ entries are exactly zero at the end (the masks in force).
    zero_lambda: Vec<Vec<bool>>,
}

fn adalora_config(resize: bool) -> AdaLoraConfig {
    AdaLoraConfig {
        init_rank: 6,
        target_rank: 3,
        tinit: 5,
        tfinal: 10,
        delta_t: 5,
        total_steps: 40,
        resize,
        ..Default::default()
    }
}

fn adalora_engine(resize: bool) -> RankEngine {
    let c = adalora_config(resize);
    RankEngine::new(EngineConfig::new(Method::AdaLora(c), 0, 6)).unwrap()
}

/// Training steps `steps` on the planted task, the engine working on `store`; returns the
/// allocations made.
fn train_steps<B: Backend, S: Trains<B>>(
    store: &mut S,
    e: &mut RankEngine,
    steps: std::ops::RangeInclusive<u64>,
) -> Vec<Allocation> {
    let mut task = planted();
    let mut allocations = vec![];
    for step in steps {
        let m = store.model();
        m.zero_grads();
        m.forward_backward(&task.train_batch(step, 8).unwrap(), 1.0)
            .unwrap();
        e.after_backward(step, store).unwrap();
        let opt = AdamW {
            lr: 5e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            step: step as u32,
        };
        store.model().optimizer_step(&opt, Some(1.0)).unwrap();
        let ctx = EngineCtx {
            step: step as usize,
            ..Default::default()
        };
        allocations.extend(e.after_step(step, store, &ctx).unwrap());
        // The schedule's budget event (`Schedule::with_method`); nothing off the budget steps.
        allocations.extend(e.reallocate(step, store, &ctx).unwrap());
    }
    allocations
}

/// What the run ended with.
fn outcome(store: &dyn AdapterStore, e: &RankEngine, allocations: Vec<Allocation>) -> Run {
    let n = store.adapters().len();
    Run {
        allocations,
        keep: e.state(store).unwrap().method["keep"].clone(),
        importance: (0..n).map(|i| store.importance(i).unwrap()).collect(),
        zero_lambda: (0..n)
            .map(|i| {
                let l = store.adapter_host(i).unwrap().lambda.unwrap();
                l.iter().map(|v| *v == 0.0).collect()
            })
            .collect(),
    }
}

/// 40 steps of AdaLoRA on the planted task, the engine working on `store`.
fn adalora_run<B: Backend, S: Trains<B>>(store: &mut S, resize: bool) -> Run {
    let mut e = adalora_engine(resize);
    e.on_start(store).unwrap();
    let total = adalora_config(resize).total_steps as u64;
    let allocations = train_steps(store, &mut e, 1..=total);
    outcome(store, &e, allocations)
}

fn close(a: f64, b: f64, tol: f64) -> bool {
    (a - b).abs() <= tol * (a.abs().max(b.abs()) + 1e-12)
}

/// The device run decides what the host run decides.
fn same_trajectory<B: Backend>(be: Arc<B>) {
    for resize in [false, true] {
        let dev = adalora_run(&mut svd_model(be.clone(), 6), resize);
        let mut model = svd_model(be.clone(), 6);
        let n = model.adapters().len();
        let host = adalora_run(
            &mut HostAdaLora {
                model: &mut model,
                importance: vec![TripletImportance::default(); n],
            },
            resize,
        );
        let what = if resize { "prune" } else { "mask" };
        assert!(dev.allocations.len() >= 5, "{what}: budget steps ran");
        assert_eq!(dev.allocations.len(), host.allocations.len(), "{what}");
        let mut worst = 0.0f64;
        for (d, h) in dev.allocations.iter().zip(&host.allocations) {
            assert_eq!((d.step, &d.reason), (h.step, &h.reason), "{what}");
            assert_eq!(d.ranks(), h.ranks(), "{what} step {}", d.step);
            for (sd, sh) in d.slots.iter().zip(&h.slots) {
                let (x, y) = (sd.score.unwrap(), sh.score.unwrap());
                worst = worst.max((x - y).abs() / x.abs().max(y.abs()).max(1e-30));
                assert!(
                    close(x, y, 1e-4),
                    "{what} step {} {}: score {x} vs {y}",
                    d.step,
                    sd.name
                );
            }
        }
        eprintln!("{what}: worst relative difference of a kept-triplet score {worst:.2e}");
        assert_eq!(dev.keep, host.keep, "{what}: kept triplets");
        assert_eq!(
            dev.zero_lambda, host.zero_lambda,
            "{what}: λ masks in force"
        );
        for (i, (d, h)) in dev.importance.iter().zip(&host.importance).enumerate() {
            let pairs = [(&d.p, &h.p), (&d.lambda, &h.lambda), (&d.q, &h.q)];
            for (x, y) in pairs {
                assert_eq!(x.ema_ipt.len(), y.ema_ipt.len(), "{what} adapter {i}");
                let scale = y.ema_ipt.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                for (a, b) in x.ema_ipt.iter().zip(&y.ema_ipt) {
                    assert!(
                        (a - b).abs() <= 1e-3 * scale,
                        "{what} adapter {i}: sensitivity {a} vs {b}"
                    );
                }
            }
        }
    }
}

#[test]
fn adalora_on_the_cpu_backend_decides_as_the_host_version() {
    same_trajectory(Arc::new(Cpu::new()));
}

#[test]
fn adalora_on_the_gpu_decides_as_the_host_version() {
    let Some(g) = test_gpu() else { return };
    same_trajectory(g);
}

/// The importance averages live in the store now: a checkpoint reads them back and a resumed
/// run puts them back, so it continues exactly as the uninterrupted run (CPU backend, bit for
/// bit), stopped at step 17, between two budget steps.
#[test]
fn a_resumed_adalora_run_continues_exactly() {
    let be = Arc::new(Cpu::new());
    for resize in [false, true] {
        let whole = adalora_run(&mut svd_model(be.clone(), 6), resize);
        let mut first = svd_model(be.clone(), 6);
        let mut e = adalora_engine(resize);
        e.on_start(&mut first).unwrap();
        let mut allocations = train_steps(&mut first, &mut e, 1..=17);
        let (model_state, engine_state) = (first.state().unwrap(), e.state(&first).unwrap());
        // Through JSON, as a checkpoint stores it.
        let engine_state =
            serde_json::from_value(serde_json::to_value(&engine_state).unwrap()).unwrap();
        let mut second = svd_model(be.clone(), 6);
        second.load_state(&model_state).unwrap();
        let mut e = adalora_engine(resize);
        e.load_state(engine_state).unwrap();
        e.on_start(&mut second).unwrap();
        let total = adalora_config(resize).total_steps as u64;
        allocations.extend(train_steps(&mut second, &mut e, 18..=total));
        let resumed = outcome(&second, &e, allocations);
        // Everything but the wall time each took.
        let timeless = |v: &[Allocation]| -> Vec<Allocation> {
            v.iter()
                .map(|a| Allocation {
                    seconds: 0.0,
                    ..a.clone()
                })
                .collect()
        };
        assert!(whole.allocations.len() >= 5);
        assert_eq!(
            timeless(&resumed.allocations),
            timeless(&whole.allocations),
            "resize {resize}"
        );
        assert_eq!(resumed.importance, whole.importance, "resize {resize}");
        assert_eq!(resumed.keep, whole.keep, "resize {resize}");
        assert_eq!(resumed.zero_lambda, whole.zero_lambda, "resize {resize}");
    }
}
