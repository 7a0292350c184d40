//! AdaLoRA engine support: orthogonality gradients reach the adapters, masking follows the
//! cubic budget and keeps the highest-scored triplets, the final pattern holds, resizing works.

mod common;

use adarank::adapter::AdapterStore;
use adarank::engine::adalora::budget_schedule;
use adarank::engine::{AdaLoraConfig, EngineConfig, EngineCtx, Method, RankEngine};
use adarank::testkit::planted_layers::{PlantedConfig, PlantedStore};
use common::Counting;

fn cfg(resize: bool) -> AdaLoraConfig {
    AdaLoraConfig {
        init_rank: 6,
        target_rank: 3,
        tinit: 5,
        tfinal: 10,
        delta_t: 5,
        total_steps: 60,
        resize,
        ..Default::default()
    }
}

fn store() -> PlantedStore {
    let mut c = PlantedConfig::new(vec![1, 2, 3, 4, 5, 6], 9);
    c.dim = 10;
    c.batch = 32;
    c.svd_form = true;
    PlantedStore::new(c, 6)
}

/// ‖PᵀP − I‖_F + ‖QQᵀ − I‖_F of adapter i, computed densely.
fn penalty(s: &PlantedStore, i: usize) -> f64 {
    let h = s.adapter_host(i).unwrap();
    let a = &s.adapters()[i];
    let (rows, cols, r) = (a.rows, a.cols, a.rank);
    let mut pn = 0.0;
    let mut qn = 0.0;
    for x in 0..r {
        for y in 0..r {
            let p: f64 = (0..rows)
                .map(|k| (h.b[k * r + x] * h.b[k * r + y]) as f64)
                .sum::<f64>()
                - f64::from(u8::from(x == y));
            let q: f64 = (0..cols)
                .map(|k| (h.a[x * cols + k] * h.a[y * cols + k]) as f64)
                .sum::<f64>()
                - f64::from(u8::from(x == y));
            pn += p * p;
            qn += q * q;
        }
    }
    pn.sqrt() + qn.sqrt()
}

#[test]
fn orthogonality_gradient_is_added_to_adapter_gradients() {
    let mut s = store();
    let mut e = RankEngine::new(EngineConfig::new(Method::AdaLora(cfg(false)), 0, 6)).unwrap();
    e.on_start(&mut s).unwrap();
    s.forward_backward();
    let before = s.adapter_host(2).unwrap();
    e.after_backward(1, &mut s).unwrap();
    let after = s.adapter_host(2).unwrap();
    // Oracle: weight 0.5 / (2·6 matrices) times the finite-difference gradient of the penalty.
    let w = 0.5 / 12.0;
    for (k, is_a) in [(3usize, true), (17, false), (40, true)] {
        let eps = 1e-3f32;
        let mut plus = PlantedStore::new(
            {
                let mut c = PlantedConfig::new(vec![1, 2, 3, 4, 5, 6], 9);
                c.dim = 10;
                c.batch = 32;
                c.svd_form = true;
                c
            },
            6,
        );
        let mut h = before.clone();
        h.grad_a.clear();
        h.grad_b.clear();
        let bump = |h: &mut adarank::adapter::AdapterHost, d: f32| {
            if is_a {
                h.a[k] += d
            } else {
                h.b[k] += d
            }
        };
        bump(&mut h, eps);
        plus.set_adapter_host(2, &h).unwrap();
        let up = penalty(&plus, 2);
        bump(&mut h, -2.0 * eps);
        plus.set_adapter_host(2, &h).unwrap();
        let dn = penalty(&plus, 2);
        let fd = w * (up - dn) / (2.0 * eps as f64);
        let added = if is_a {
            after.grad_a[k] - before.grad_a[k]
        } else {
            after.grad_b[k] - before.grad_b[k]
        };
        assert!(
            (added as f64 - fd).abs() < 1e-3 * (1.0 + fd.abs()) + 1e-5,
            "k={k}: {added} vs {fd}"
        );
    }
}

/// (step, budget, ranks held) of every budget step.
type Seen = Vec<(u64, usize, Vec<usize>)>;

fn train(resize: bool) -> (RankEngine, PlantedStore, Seen) {
    let c = cfg(resize);
    let mut s = store();
    let mut e = RankEngine::new(EngineConfig::new(Method::AdaLora(c.clone()), 0, 6)).unwrap();
    e.on_start(&mut s).unwrap();
    let mut seen = vec![];
    for step in 1..=c.total_steps as u64 {
        s.forward_backward();
        e.after_backward(step, &mut s).unwrap();
        s.optimizer_step();
        let ctx = EngineCtx {
            step: step as usize,
            ..Default::default()
        };
        e.after_step(step, &mut s, &ctx).unwrap();
        // The schedule's budget event (`Schedule::with_method`); nothing off the budget steps.
        if let Some(ch) = e.reallocate(step, &mut s, &ctx).unwrap() {
            let (b, _) = budget_schedule(&c, 36, 18, step as usize);
            assert_eq!(ch.budget, Some(b));
            let after: Vec<usize> = ch.slots.iter().map(|x| x.after).collect();
            assert_eq!(after.iter().sum::<usize>(), b.min(36));
            // Masked triplets have λ = 0; the count of non-masked equals the allocation.
            if !ch.resized {
                for (i, &k) in after.iter().enumerate() {
                    let lam = s.adapter_host(i).unwrap().lambda.unwrap();
                    assert!(lam.iter().filter(|x| **x != 0.0).count() <= k);
                }
            }
            let held: Vec<usize> = s.adapters().iter().map(|a| a.rank).collect();
            seen.push((step, b, held));
        }
    }
    (e, s, seen)
}

#[test]
fn masking_follows_the_cubic_schedule_and_final_pattern_holds() {
    let (e, s, seen) = train(false);
    // Masks at ΔT multiples inside (tinit, T − tfinal], then once when the final phase begins.
    let steps: Vec<u64> = seen.iter().map(|x| x.0).collect();
    assert_eq!(steps, vec![10, 15, 20, 25, 30, 35, 40, 45, 50, 51]);
    assert_eq!(e.calls().after_step, 60);
    assert_eq!(e.ranks().iter().sum::<usize>(), 18);
    // After the final pattern, masked λ stay at zero through the last steps.
    for (i, r) in e.ranks().iter().enumerate() {
        let lam = s.adapter_host(i).unwrap().lambda.unwrap();
        assert!(lam.iter().filter(|x| **x != 0.0).count() <= *r);
        assert_eq!(s.adapters()[i].rank, 6, "masking never shrinks tensors");
    }
}

#[test]
fn resize_option_removes_pruned_triplets_at_every_budget_step() {
    let (e, s, seen) = train(true);
    let ranks: Vec<usize> = s.adapters().iter().map(|a| a.rank).collect();
    assert_eq!(ranks, e.ranks());
    assert_eq!(ranks.iter().sum::<usize>(), 18);
    // The tensors follow the budget down as it falls, not only at the end.
    for (step, b, held) in &seen {
        assert_eq!(held.iter().sum::<usize>(), *b, "step {step}");
    }
    let totals: Vec<usize> = seen.iter().map(|x| x.2.iter().sum()).collect();
    assert!(totals.windows(2).all(|w| w[1] <= w[0]), "{totals:?}");
    assert!(totals[0] < 36 && totals.len() > 3);
}

#[test]
fn adalora_without_lambda_is_refused() {
    let mut c = PlantedConfig::new(vec![1, 2], 1);
    c.dim = 8;
    let mut s = PlantedStore::new(c, 4);
    let mut e = RankEngine::new(EngineConfig::new(Method::AdaLora(cfg(false)), 0, 6)).unwrap();
    assert!(e
        .on_start(&mut s)
        .unwrap_err()
        .to_string()
        .contains("SVD form"));
}

/// Input samples (and their spectra) are fetched only for plugins that name `input_ev`:
/// AdaLoRA's masking steps take none, the EVA-like allocator one per adapter per allocation.
#[test]
fn input_samples_are_fetched_only_when_a_plugin_reads_input_ev() {
    let run = |method: Method, budget: usize| {
        let mut s = Counting::new(store());
        let mut e = RankEngine::new(EngineConfig::new(method, budget, 6)).unwrap();
        e.on_start(&mut s).unwrap();
        for step in 1..=20u64 {
            s.inner.forward_backward();
            e.after_backward(step, &mut s).unwrap();
            s.inner.optimizer_step();
            let ctx = EngineCtx {
                step: step as usize,
                ..Default::default()
            };
            e.after_step(step, &mut s, &ctx).unwrap();
            e.reallocate(step, &mut s, &ctx).unwrap();
        }
        (s.samples.get(), e.calls().allocations)
    };
    let (samples, allocations) = run(Method::AdaLora(cfg(false)), 0);
    assert!(allocations > 0);
    assert_eq!(samples, 0);
    let eva = Method::Script {
        allocator: "plugins/eva.rhai".into(),
        complexity: None,
    };
    let (samples, allocations) = run(eva, 18);
    assert_eq!(allocations, 20);
    assert_eq!(samples, 20 * 6);
}

/// AdaLoRA with `resize` on the real model: pruned triplets leave the tensors at every budget
/// step, so the ledger's adapter bytes fall between t_init and T − t_final (masking keeps them
/// flat), and the model's trainable parameters follow the effective ranks.
#[test]
fn resize_frees_adapter_memory_while_the_budget_falls() {
    use adarank::backend::cpu::Cpu;
    use adarank::backend::{AdamW, Backend, MemKind};
    use adarank::model::{LoraConfig, TrainMode};
    use adarank::train::{build_model, PlantedTask, Task};
    use std::sync::Arc;
    let run = |resize: bool| -> (Vec<u64>, Vec<usize>, usize, usize) {
        let be = Arc::new(Cpu::new());
        let mut task = PlantedTask::new(adarank::train::PlantedConfig::small(2)).unwrap();
        let layers = task.model_config().layers;
        let mut lora = LoraConfig::uniform(layers, &adarank::adapter::ModuleKind::ALL, 6, 16.0);
        lora.svd_form = true;
        let mut model = build_model(be.clone(), &task, TrainMode::Lora(lora), 2).unwrap();
        let c = AdaLoraConfig {
            resize,
            ..cfg(resize)
        };
        let mut e = RankEngine::new(EngineConfig::new(Method::AdaLora(c.clone()), 0, 6)).unwrap();
        e.on_start(&mut model).unwrap();
        let head = model.trainable_params()
            - model
                .adapters()
                .iter()
                .map(|a| a.params_at(a.rank) + a.rank)
                .sum::<usize>();
        let mut bytes = vec![];
        for step in 1..=c.total_steps as u64 {
            let b = task.train_batch(step, 8).unwrap();
            model.zero_grads();
            model.forward_backward(&b, 1.0).unwrap();
            e.after_backward(step, &mut model).unwrap();
            let opt = AdamW {
                lr: 1e-3,
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
                weight_decay: 0.0,
                step: step as u32,
            };
            model.optimizer_step(&opt, Some(1.0)).unwrap();
            let ctx = EngineCtx {
                step: step as usize,
                ..Default::default()
            };
            e.after_step(step, &mut model, &ctx).unwrap();
            e.reallocate(step, &mut model, &ctx).unwrap();
            let s = be.ledger().snapshot();
            bytes.push(
                [MemKind::Trainable, MemKind::Grad, MemKind::Optim]
                    .iter()
                    .map(|k| s.current_of(*k))
                    .sum(),
            );
        }
        let held: Vec<usize> = model.adapters().iter().map(|a| a.rank).collect();
        // A, B and λ of every adapter, plus the head.
        let want = head
            + model
                .adapters()
                .iter()
                .map(|a| a.params_at(a.rank) + a.rank)
                .sum::<usize>();
        (bytes, held, model.trainable_params(), want)
    };
    let c = cfg(true);
    let (bytes, held, params, want) = run(true);
    let at = |s: usize| bytes[s - 1];
    let (t0, t1) = (c.tinit, c.total_steps - c.tfinal);
    println!("adapter bytes: t_init {} → T − t_final {}", at(t0), at(t1));
    assert!(at(t1) < at(t0), "{} vs {}", at(t1), at(t0));
    assert!(bytes.windows(2).all(|w| w[1] <= w[0]), "never grows");
    assert_eq!(held.iter().sum::<usize>(), 3 * held.len());
    assert_eq!(params, want, "trainable params follow the effective ranks");
    let (flat, held, _, _) = run(false);
    assert_eq!(flat[t0 - 1], flat[t1 - 1], "masking keeps the tensors");
    assert!(held.iter().all(|r| *r == 6));
}
