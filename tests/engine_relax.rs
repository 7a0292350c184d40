//! Relaxed ranks: α learns from the task loss, not only from C; rank 0 removes an adapter for
//! real (ledger) and it can come back; an allocator may give the whole budget to one layer.

use adarank::adapter::{AdapterStore, ModuleKind};
use adarank::backend::cpu::Cpu;
use adarank::backend::{Backend, MemKind};
use adarank::engine::{EngineConfig, EngineCtx, Method, RankEngine};
use adarank::model::{LoraConfig, TrainMode};
use adarank::policy::{Action, ActionKind, PhaseSpec, Until};
use adarank::testkit::planted::{run_planted, PlantedConfig};
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
