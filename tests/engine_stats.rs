//! The model's side of the rank engine's statistics and gates, against independent oracles:
//! gradient statistics accumulated on the device equal the same sums computed on the host from
//! the downloaded gradients; gates scale the components exactly like scaling B's columns; ∂L/∂g
//! matches finite differences of the loss; the GPU backend agrees with the CPU backend; and a
//! training step of the scripted method reads nothing back from the adapters.

mod common;

use adarank::adapter::{AdapterStore, ModuleKind};
use adarank::backend::cpu::Cpu;
use adarank::backend::Backend;
use adarank::engine::{EngineConfig, EngineCtx, Method, RankEngine};
use adarank::model::{LoraConfig, Model, TrainMode};
use adarank::testkit::planted_layers::{PlantedConfig as LinearPlanted, PlantedStore};
use adarank::train::{build_model, PlantedConfig, PlantedTask, Task};
use common::{test_gpu, Counting};
use std::sync::Arc;

fn model_on<B: Backend>(be: Arc<B>, rank: usize) -> (Model<B>, PlantedTask) {
    let task = PlantedTask::new(PlantedConfig::small(4)).unwrap();
    let lora = LoraConfig::uniform(2, &ModuleKind::ALL, rank, 16.0);
    let mut model = build_model(be, &task, TrainMode::Lora(lora), 4).unwrap();
    // Non-zero B, so every gradient and ΔW is non-trivial.
    for i in 0..model.adapters().len() {
        let mut h = model.adapter_host(i).unwrap();
        for (k, v) in h.b.iter_mut().enumerate() {
            *v = ((k * 7 + i) % 11) as f32 / 50.0 - 0.1;
        }
        model.set_adapter_host(i, &h).unwrap();
    }
    (model, task)
}

/// Per step, the host's sums from downloaded gradients: (‖∇A‖², ‖∇B‖², ∇Bᵀ∇B) of slot `i`.
fn host_sums<B: Backend>(m: &Model<B>, i: usize) -> (f64, f64, Vec<f64>) {
    let a = &m.adapters()[i];
    let h = m.adapter_host(i).unwrap();
    let r = a.rank;
    let sq = |v: &[f32]| v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>();
    let mut gram = vec![0.0; r * r];
    for x in 0..r {
        for y in 0..r {
            gram[x * r + y] = (0..a.rows)
                .map(|k| h.grad_b[k * r + x] as f64 * h.grad_b[k * r + y] as f64)
                .sum();
        }
    }
    (sq(&h.grad_a), sq(&h.grad_b), gram)
}

fn close(what: &str, got: f64, want: f64) {
    assert!(
        (got - want).abs() <= 1e-4 * (want.abs() + 1e-9) + 1e-12,
        "{what}: {got} vs {want}"
    );
}

#[test]
fn device_gradient_statistics_equal_the_host_sums() {
    let (mut m, mut task) = model_on(Arc::new(Cpu::new()), 3);
    let n = m.adapters().len();
    let mut want = vec![(0.0f64, 0.0f64, 0.0f64, vec![0.0f64; 9]); n];
    for step in 0..3u64 {
        let b = task.train_batch(step, 8).unwrap();
        m.zero_grads();
        m.forward_backward(&b, 1.0).unwrap();
        for (i, w) in want.iter_mut().enumerate() {
            m.gather_grad_stats(i).unwrap();
            let (a2, b2, g) = host_sums(&m, i);
            w.0 = a2;
            w.1 = b2;
            w.2 += (a2 + b2) / 3.0;
            for (acc, v) in w.3.iter_mut().zip(g) {
                *acc += v;
            }
        }
    }
    for (i, w) in want.iter().enumerate() {
        let s = m.grad_stats(i).unwrap();
        assert_eq!(s.steps, 3);
        close("last ‖∇A‖²", s.last_a2, w.0);
        close("last ‖∇B‖²", s.last_b2, w.1);
        close("energy", s.energy_sum, w.2);
        for (g, h) in s.gram.iter().zip(&w.3) {
            close("gram", *g, *h);
        }
    }
    m.reset_grad_stats(0).unwrap();
    assert_eq!(m.grad_stats(0).unwrap().steps, 0);
    // A resize starts the statistics over.
    m.resize_adapter(1, 2).unwrap();
    assert_eq!(m.grad_stats(1).unwrap().steps, 0);
}

#[test]
fn gates_scale_components_and_their_gradient_matches_finite_differences() {
    let be = Arc::new(Cpu::new());
    let (mut m, mut task) = model_on(be.clone(), 3);
    let b = task.train_batch(0, 8).unwrap();
    let g = [1.0f32, 0.4, -0.3];
    let slot = 8; // 1.v
                  // Oracle model: the same adapter with B's columns scaled by g, no gates.
    let (mut oracle, _) = model_on(be, 3);
    let mut h = oracle.adapter_host(slot).unwrap();
    for row in h.b.chunks_mut(3) {
        for (v, gj) in row.iter_mut().zip(&g) {
            *v *= gj;
        }
    }
    oracle.set_adapter_host(slot, &h).unwrap();
    m.set_gates(slot, Some(&g)).unwrap();
    let gated = m.evaluate(&b).unwrap().loss();
    let scaled = oracle.evaluate(&b).unwrap().loss();
    close("gated vs B·diag(g)", gated, scaled);
    assert_eq!(m.adapter_host(slot).unwrap().gates.unwrap(), g.to_vec());
    // ∂L/∂g against central differences of the training loss.
    m.zero_grads();
    m.forward_backward(&b, 1.0).unwrap();
    let grad = m.gate_grad(slot).unwrap();
    for j in 0..3 {
        let eps = 1e-2f32;
        let mut loss_at = |d: f32| {
            let mut gg = g;
            gg[j] += d;
            m.set_gates(slot, Some(&gg)).unwrap();
            m.zero_grads();
            m.forward_backward(&b, 1.0).unwrap() as f64
        };
        let fd = (loss_at(eps) - loss_at(-eps)) / (2.0 * eps as f64);
        assert!(
            (grad[j] as f64 - fd).abs() <= 2e-3 * fd.abs() + 1e-6,
            "component {j}: ∂L/∂g {} vs {fd}",
            grad[j]
        );
    }
    // Gates go with a resize.
    m.resize_adapter(slot, 2).unwrap();
    assert!(m.gate_grad(slot).unwrap().is_empty());
    assert!(m.adapter_host(slot).unwrap().gates.is_none());
}

#[test]
fn keep_components_removes_exactly_the_dropped_components() {
    let be = Arc::new(Cpu::new());
    let (mut m, mut task) = model_on(be.clone(), 3);
    let b = task.train_batch(0, 8).unwrap();
    let slot = 3;
    // Oracle: component 1 switched off by zeroing its column of B.
    let (mut oracle, _) = model_on(be, 3);
    let mut h = oracle.adapter_host(slot).unwrap();
    for row in h.b.chunks_mut(3) {
        row[1] = 0.0;
    }
    oracle.set_adapter_host(slot, &h).unwrap();
    m.keep_components(slot, &[0, 2]).unwrap();
    assert_eq!(m.adapters()[slot].rank, 2);
    close(
        "kept components",
        m.evaluate(&b).unwrap().loss(),
        oracle.evaluate(&b).unwrap().loss(),
    );
    assert!(m.keep_components(slot, &[1, 0]).is_err());
}

#[test]
fn gpu_statistics_and_gate_gradients_match_the_cpu() {
    let Some(gpu) = test_gpu() else { return };
    let (mut c, mut task) = model_on(Arc::new(Cpu::new()), 3);
    let (mut g, _) = model_on(gpu, 3);
    let gates = [0.9f32, 0.5, 0.1];
    for m in [0usize, 5, 11] {
        c.set_gates(m, Some(&gates)).unwrap();
        g.set_gates(m, Some(&gates)).unwrap();
    }
    for step in 0..2u64 {
        let b = task.train_batch(step, 8).unwrap();
        c.zero_grads();
        g.zero_grads();
        c.forward_backward(&b, 1.0).unwrap();
        g.forward_backward(&b, 1.0).unwrap();
        for i in 0..c.adapters().len() {
            c.gather_grad_stats(i).unwrap();
            g.gather_grad_stats(i).unwrap();
        }
    }
    for i in 0..c.adapters().len() {
        let (x, y) = (c.grad_stats(i).unwrap(), g.grad_stats(i).unwrap());
        close("energy", y.energy_sum, x.energy_sum);
        for (a, b) in y.gram.iter().zip(&x.gram) {
            assert!((a - b).abs() <= 1e-4 * (b.abs() + 1e-6), "gram {a} vs {b}");
        }
    }
    for m in [0usize, 5, 11] {
        let (x, y) = (c.gate_grad(m).unwrap(), g.gate_grad(m).unwrap());
        common::assert_close("gate gradient", &y, &x, 1e-3);
    }
}

/// Between re-allocations the scripted method (closed-form learner) reads nothing back: its
/// statistics stay where they are gathered until a plugin runs.
#[test]
fn training_steps_read_nothing_back_until_a_plugin_runs() {
    let mut c = LinearPlanted::new(vec![1, 2, 3, 4], 3);
    c.dim = 8;
    let mut s = Counting::new(PlantedStore::new(c, 3));
    let mut e = RankEngine::new(EngineConfig::new(
        Method::Adaptive {
            complexity: "plugins/spectral_gradient.rhai".into(),
            allocator: "plugins/log_rule.rhai".into(),
            learner: Some("plugins/fit_proportional.rhai".into()),
        },
        12,
        3,
    ))
    .unwrap();
    e.on_start(&mut s).unwrap();
    let ctx = EngineCtx::default();
    for step in 1..=10u64 {
        s.inner.forward_backward();
        e.after_backward(step, &mut s).unwrap();
        s.inner.optimizer_step();
        e.after_step(step, &mut s, &ctx).unwrap();
    }
    assert_eq!((s.host_reads.get(), s.stat_reads.get()), (0, 0));
    e.reallocate(10, &mut s, &ctx).unwrap();
    assert!(
        s.stat_reads.get() > 0,
        "a re-allocation reads the statistics"
    );
}
