//! Relaxed ranks: α learns from the task loss, not only from C; rank 0 removes an adapter for
//! real (ledger) and it can come back; an allocator may give the whole budget to one layer.

use adarank::adapter::{AdapterStore, ModuleKind};
use adarank::backend::cpu::Cpu;
use adarank::backend::{Backend, MemKind};
use adarank::engine::{EngineConfig, EngineCtx, Method, RankEngine};
use adarank::model::{LoraConfig, TrainMode};
use adarank::policy::{Action, ActionKind, PhaseSpec, Until};
use adarank::testkit::planted_layers::{run_planted, PlantedConfig};
use adarank::train::{build_model, PlantedTask, Task};
use std::sync::Arc;

fn phases() -> Vec<PhaseSpec> {
    let p = |name: &str, until, actions| PhaseSpec {
        name: name.into(),
        until,
        actions,
    };
    vec![
        p("uniform", Until::Step(60), vec![]),
        p(
            "adapt",
            Until::Step(240),
            vec![Action {
                every: 60,
                what: ActionKind::Reallocate,
            }],
        ),
        p("settle", Until::End, vec![]),
    ]
}

/// α after the run, on the linear planted task with C_i = exp(i/2) fixed by a test plugin:
/// the same C for both tasks, so the closed-form fit starts both at the same α.
fn learned_alpha(planted: Vec<usize>, learner: &str) -> (f64, Vec<f64>) {
    let mut cfg = EngineConfig::new(
        Method::Adaptive {
            complexity: "tests/fixtures/complexity_by_index.rhai".into(),
            allocator: "plugins/log_rule.rhai".into(),
            learner: Some(format!("plugins/{learner}.rhai").into()),
        },
        48,
        6,
    );
    cfg.min_rank = 1;
    cfg.max_rank = 16;
    cfg.seed = 1;
    let out = run_planted(PlantedConfig::new(planted, 1), cfg, phases(), 300).unwrap();
    let alphas: Vec<f64> = out.allocations.iter().filter_map(|a| a.alpha).collect();
    (*alphas.last().unwrap(), alphas)
}

#[test]
fn the_task_moves_alpha_not_only_the_complexity() {
    // Task A needs rank where C is high, task B where C is low; C is the same.
    let rising = vec![1, 2, 3, 4, 6, 8, 10, 14];
    let falling: Vec<usize> = rising.iter().rev().copied().collect();
    let (a, a_path) = learned_alpha(rising.clone(), "learn_gates");
    let (b, b_path) = learned_alpha(falling.clone(), "learn_gates");
    println!("rising need: α {a_path:?}\nfalling need: α {b_path:?}");
    // Same start (the proportional fit of the same C), different end.
    assert!(
        (a_path[0] - b_path[0]).abs() < 1e-9,
        "{a_path:?} {b_path:?}"
    );
    // Measured (seed 1): α 4.818 → 4.320 where high-C layers need the rank, → 4.080 where they
    // do not. Both fall from the proportional fit's start (the held components now count
    // against the budget, so the relaxed ranks sit ~0.7 below it and the fit's spread is too
    // wide for either task); what the task decides is how far.
    assert!(
        a > b + 0.15,
        "α {a:.3} (rising need) vs {b:.3} (falling need)"
    );
    // The closed-form fit sees only C: the same α for both tasks.
    let (fa, _) = learned_alpha(rising, "fit_proportional");
    let (fb, _) = learned_alpha(falling, "fit_proportional");
    assert!((fa - fb).abs() < 1e-9, "{fa} {fb}");
}

fn adapter_bytes<B: Backend>(be: &B) -> u64 {
    let s = be.ledger().snapshot();
    [MemKind::Trainable, MemKind::Grad, MemKind::Optim]
        .iter()
        .map(|k| s.current_of(*k))
        .sum()
}

/// An allocator that gives the whole budget to the last layer and 0 elsewhere runs on the real
/// model: the other adapters are removed (the ledger's adapter bytes change by exactly the
/// removed and grown tensors, and fall), training goes on, and a removed adapter comes back
/// with B = 0 (ΔW unchanged).
#[test]
fn whole_budget_to_the_last_layer_removes_the_others() {
    let be = Arc::new(Cpu::new());
    let mut task = PlantedTask::new(adarank::train::PlantedConfig::small(1)).unwrap();
    let layers = task.model_config().layers;
    let lora = LoraConfig::uniform(layers, &ModuleKind::ALL, 4, 16.0);
    let mut model = build_model(be.clone(), &task, TrainMode::Lora(lora), 1).unwrap();
    let mut cfg = EngineConfig::new(
        Method::Script {
            allocator: "tests/fixtures/last_layer.rhai".into(),
            complexity: None,
        },
        48,
        4,
    );
    cfg.min_rank = 0;
    // The last layer can hold only 6 × 6 of the 48: the rest of the budget goes unused.
    cfg.max_rank = 6;
    let mut e = RankEngine::new(cfg).unwrap();
    e.on_start(&mut model).unwrap();
    let infos = model.adapters();
    let head_and_all = adapter_bytes(&*be);
    let params_of = |layer: usize, r: usize| -> u64 {
        infos
            .iter()
            .filter(|a| a.layer == layer)
            .map(|a| a.params_at(r) as u64)
            .sum()
    };
    for step in 1..=5u64 {
        let b = task.train_batch(step, 8).unwrap();
        model.zero_grads();
        model.forward_backward(&b, 1.0).unwrap();
        e.after_backward(step, &mut model).unwrap();
    }
    let a = e
        .reallocate(5, &mut model, &EngineCtx::default())
        .unwrap()
        .unwrap();
    let ranks: Vec<usize> = model.adapters().iter().map(|x| x.rank).collect();
    assert!(ranks[..6].iter().all(|r| *r == 0), "{ranks:?}");
    assert!(ranks[6..].iter().all(|r| *r == 6), "{ranks:?}");
    assert_eq!(a.total(), 36);
    // A, B, their gradients and two Adam moments: 4 f32 per parameter.
    let want = head_and_all - 4 * 4 * (params_of(0, 4) + params_of(1, 4)) + 4 * 4 * params_of(1, 6);
    assert_eq!(adapter_bytes(&*be), want);
    assert!(adapter_bytes(&*be) < head_and_all);
    // Training goes on with layer 0 unadapted.
    let b = task.train_batch(6, 8).unwrap();
    model.zero_grads();
    assert!(model.forward_backward(&b, 1.0).unwrap().is_finite());
    // Rank 0 → 2 again: new components start with B = 0, so the model's output is unchanged.
    let before = model.evaluate(&task.eval_batches()[0]).unwrap().loss();
    model.resize_adapter(0, 2).unwrap();
    let after = model.evaluate(&task.eval_batches()[0]).unwrap().loss();
    assert_eq!(model.adapters()[0].rank, 2);
    assert!((before - after).abs() < 1e-9, "{before} vs {after}");
    assert!(model.adapter_host(0).unwrap().b.iter().all(|v| *v == 0.0));
}

/// What the relaxation trains counts against the budget: at every re-allocation the held
/// components (the nearly closed ones included) stay within the total rank 48 and miss it by
/// less than one component per adapter (the held count is a step function of the offset).
#[test]
fn held_components_stay_within_the_budget() {
    let mut cfg = EngineConfig::new(
        Method::Adaptive {
            complexity: "tests/fixtures/complexity_by_index.rhai".into(),
            allocator: "plugins/log_rule.rhai".into(),
            learner: Some("plugins/learn_gates.rhai".into()),
        },
        48,
        6,
    );
    cfg.min_rank = 1;
    cfg.max_rank = 16;
    cfg.seed = 1;
    let out = run_planted(
        PlantedConfig::new(vec![1, 2, 3, 4, 6, 8, 10, 14], 1),
        cfg,
        phases(),
        300,
    )
    .unwrap();
    let relaxed: Vec<_> = out
        .allocations
        .iter()
        .filter(|a| a.reason == "reallocate")
        .collect();
    assert_eq!(relaxed.len(), 3);
    for a in relaxed {
        let rule = a.rule.as_ref().expect("the log rule's record");
        // Every slot of the linear task costs 32 + 32 per rank.
        let held = rule.held_params / 64;
        assert!(held <= 48 && held > 48 - 8, "step {}: {held} held", a.step);
        assert!(a.slots.iter().all(|s| s.raw.is_some()));
    }
}

/// (step, eval loss before the engine's work, after it, the ranks after it).
type StepChange = (u64, f64, f64, Vec<usize>);

/// Trains the small planted task on the real model under the learned rule with `resize`, a
/// re-allocation at step 40, and returns, for the steps after it: the eval loss just before
/// and just after the engine's work at each step (no optimizer step between the two, so the
/// difference is what the engine changed in the model), the held ranks and the records.
fn engine_change_per_step(
    resize: adarank::adapter::ResizeOptions,
) -> (Vec<StepChange>, Vec<adarank::engine::Allocation>) {
    use adarank::backend::AdamW;
    let be = Arc::new(Cpu::new());
    let mut task = PlantedTask::new(adarank::train::PlantedConfig::small(1)).unwrap();
    let layers = task.model_config().layers;
    let lora = LoraConfig::uniform(layers, &ModuleKind::ALL, 4, 16.0);
    let mut model = build_model(be.clone(), &task, TrainMode::Lora(lora), 1).unwrap();
    let mut cfg = EngineConfig::new(
        Method::Adaptive {
            complexity: "plugins/spectral_gradient.rhai".into(),
            allocator: "plugins/log_rule.rhai".into(),
            learner: Some("plugins/learn_gates.rhai".into()),
        },
        48,
        4,
    );
    cfg.min_rank = 1;
    cfg.max_rank = 8;
    cfg.seed = 1;
    cfg.resize = resize;
    let mut e = RankEngine::new(cfg).unwrap();
    e.on_start(&mut model).unwrap();
    let eval = task.eval_batches()[0].clone();
    let (mut per_step, mut records) = (vec![], vec![]);
    for step in 1..=60u64 {
        model.zero_grads();
        model
            .forward_backward(&task.train_batch(step, 8).unwrap(), 1.0)
            .unwrap();
        e.after_backward(step, &mut model).unwrap();
        let opt = AdamW {
            lr: 1e-2,
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
        let before = model.evaluate(&eval).unwrap().loss();
        records.extend(e.after_step(step, &mut model, &ctx).unwrap());
        if step == 40 {
            records.extend(e.reallocate(step, &mut model, &ctx).unwrap());
        }
        let after = model.evaluate(&eval).unwrap().loss();
        if step >= 40 {
            let ranks = model.adapters().iter().map(|a| a.rank).collect();
            per_step.push((step, before, after, ranks));
        }
    }
    (per_step, records)
}

/// A fade (`lora.fade`): the decision changes nothing at once (each adapter re-factorised as
/// its SVD, every gate open), the adapters keep their size for the fade's steps, and the cut
/// removes components the gates have already closed — so the cut moves the loss far less than
/// cutting at once does (the oracle: the same run with `fade = 0`, whose decision step
/// truncates ungated adapters).
#[test]
fn a_fade_cuts_what_the_gates_already_closed() {
    use adarank::adapter::ResizeOptions;
    let fade = ResizeOptions {
        fade: 10,
        ..ResizeOptions::policy_default()
    };
    let at_once = ResizeOptions { fade: 0, ..fade };
    let (faded, rec) = engine_change_per_step(fade);
    let (cut_now, rec_now) = engine_change_per_step(at_once);
    let reasons: Vec<(u64, &str)> = rec.iter().map(|a| (a.step, a.reason.as_str())).collect();
    assert!(reasons.contains(&(40, "fade")), "{reasons:?}");
    assert!(reasons.contains(&(50, "cut")), "{reasons:?}");
    assert!(rec_now
        .iter()
        .any(|a| a.step == 40 && a.reason == "reallocate"));
    let change = |rows: &[StepChange], step: u64| -> f64 {
        let r = rows.iter().find(|r| r.0 == step).unwrap();
        (r.2 - r.1).abs() / r.1
    };
    // The decision: ΔW unchanged but for the last gate at σ(1.5/τ).
    assert!(change(&faded, 40) < 0.02, "{}", change(&faded, 40));
    // No adapter changes size before the cut, and the cut changes some.
    let ranks_at = |s: u64| faded.iter().find(|r| r.0 == s).unwrap().3.clone();
    for s in 40..50 {
        assert_eq!(ranks_at(s), vec![4; 12], "step {s}");
    }
    assert_ne!(ranks_at(50), vec![4; 12]);
    // The cut moves the loss by far less than truncating at once.
    let (c_fade, c_now) = (change(&faded, 50), change(&cut_now, 40));
    println!("relative loss change: cut after a fade {c_fade:.4}, cut at once {c_now:.4}");
    assert!(
        c_now > 0.05,
        "cutting at once changed the loss by only {c_now}"
    );
    assert!(c_fade < c_now / 4.0, "{c_fade} vs {c_now}");
}
