//! What a training step reads back from the device with a rank method on. The run is
//! `adarank bench train`'s (`bench_train::train_steps`: the training loop with the rank engine
//! as its hooks, wired as a run wires it); the oracle is the device's own counters.
//!
//! A step on which no plugin runs and nothing is re-allocated reads back only the step's
//! statistics, whatever the method: one download of 16 bytes (4 f32: the gradient norm, the
//! clipping factor and the loss; `Model::step_stats`). The paper's method gathers its gradient
//! statistics on the device, AdaLoRA updates its importance averages and adds its penalty's
//! gradient there. The re-allocation step (AdaLoRA: its budget step) reads back what the
//! plugins read. On the CPU, where there are no counters, the benchmark's schedule itself is
//! checked: the first re-allocation comes right after the timed steps.

mod common;

use adarank::adapter::{AdapterStore, ModuleKind};
use adarank::backend::cpu::Cpu;
use adarank::backend::gpu::{AdapterFilter, Gpu};
use adarank::backend::Backend;
use adarank::cli::bench_train::{self, BenchTrainArgs, Mode, Trained};
use adarank::engine::driver::{Collect, DriverHooks, EngineDriver};
use adarank::engine::schedule::Schedule;
use adarank::engine::{AdaLoraConfig, EngineConfig, Method, RankEngine};
use adarank::model::{LoraConfig, TrainMode};
use adarank::train::{build_model, train, Metered, PlantedConfig, PlantedTask, Task, TrainConfig};
use clap::Parser;
use common::test_gpu;
use std::sync::Arc;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    a: BenchTrainArgs,
}

/// A small encoder (2 layers, 12 adapters of rank 4), 3 timed steps.
fn args(method: &str) -> BenchTrainArgs {
    Cli::parse_from([
        "bench", "--layers", "2", "--hidden", "32", "--heads", "4", "--ffn", "64", "--vocab",
        "100", "--seq", "8", "--batch", "4", "--rank", "4", "--steps", "3", "--method", method,
    ])
    .a
}

fn lora_steps<B: Backend>(be: &Arc<B>, method: &str) -> Trained {
    let a = args(method);
    bench_train::train_steps(be, &a, &bench_train::config(&a), None, Mode::Lora, None).unwrap()
}

#[test]
fn the_first_reallocation_comes_right_after_the_timed_steps() {
    let be = Arc::new(Cpu::new());
    let none = lora_steps(&be, "none");
    let steps = |t: &Trained| t.timed.iter().map(|s| s.step).collect::<Vec<_>>();
    assert_eq!(steps(&none), [2, 3, 4], "step 1 warms up");
    assert!(none.event.is_empty() && none.allocations.is_empty());
    for (method, reason) in [("paper", "reallocate"), ("adalora", "mask")] {
        let t = lora_steps(&be, method);
        assert_eq!(steps(&t), [2, 3, 4], "{method}");
        let event: Vec<u64> = t.event.iter().map(|s| s.step).collect();
        assert_eq!(event, [5, 6], "{method}");
        let first = t
            .allocations
            .first()
            .unwrap_or_else(|| panic!("{method} allocated"));
        assert_eq!((first.step, first.reason.as_str()), (5, reason), "{method}");
        assert!(t.allocations.iter().all(|x| x.step >= 5), "{method}");
        if method == "adalora" {
            // 48 triplets; the cubic schedule halfway from 48 to 24: (48 − 24)/8 + 24 = 27.
            assert_eq!(first.total(), 27);
        }
    }
}

#[test]
fn a_step_without_plugins_reads_back_only_the_loss_and_the_norm() {
    if test_gpu().is_none() {
        return;
    }
    // A device of its own: the shared one counts the other tests' work too.
    let g = Arc::new(Gpu::open(AdapterFilter::AllowCpu).unwrap().unwrap());
    for method in ["none", "paper", "adalora"] {
        let t = lora_steps(&g, method);
        for s in &t.timed {
            let c = s.counters.expect("the GPU counts");
            eprintln!("{method} step {}: {c:?}", s.step);
            assert_eq!(
                (c.read_backs, c.read_back_bytes),
                (1, 16),
                "{method} step {}: {c:?}",
                s.step
            );
        }
        for s in &t.event {
            eprintln!("{method} step {}: {:?}", s.step, s.counters.unwrap());
        }
        if method == "none" {
            continue;
        }
        let c = t.event[0].counters.unwrap();
        assert!(c.read_back_bytes > 16, "{method} re-allocation: {c:?}");
        let after = t.event[1].counters.unwrap();
        if method == "adalora" {
            // The step after a budget step is an ordinary one again.
            assert_eq!(
                (after.read_backs, after.read_back_bytes),
                (1, 16),
                "{after:?}"
            );
        } else {
            // The paper's method finalizes its relaxed ranks there (plugins run).
            assert!(after.read_back_bytes > 16, "{after:?}");
        }
    }
}

/// AdaLoRA through its whole schedule on the planted task: budget steps at 4 and 6, the final
/// pattern fixed at 8 and held (λ re-masked after every step) at 9 and 10. Only the budget
/// steps read back more than the step's statistics.
#[test]
fn adalora_reads_back_only_at_its_budget_steps() {
    if test_gpu().is_none() {
        return;
    }
    let g = Arc::new(Gpu::open(AdapterFilter::AllowCpu).unwrap().unwrap());
    let mut task = PlantedTask::new(PlantedConfig::small(3)).unwrap();
    let layers = task.model_config().layers;
    let mut lora = LoraConfig::uniform(layers, &ModuleKind::ALL, 4, 16.0);
    lora.svd_form = true;
    let mut model = build_model(g.clone(), &task, TrainMode::Lora(lora), 3).unwrap();
    let c = AdaLoraConfig {
        init_rank: 4,
        target_rank: 2,
        tinit: 2,
        tfinal: 3,
        delta_t: 2,
        total_steps: 10,
        ..Default::default()
    };
    let mut engine = RankEngine::new(EngineConfig::new(Method::AdaLora(c), 0, 4)).unwrap();
    engine.on_start(&mut model).unwrap();
    let schedule = Schedule::new(vec![], 10, u64::MAX, None);
    let driver = EngineDriver::new(Some(engine), schedule, u64::MAX);
    let adapters = model.adapters().len();
    let mut driver = DriverHooks::new(driver, adapters, Collect::default());
    let cfg = TrainConfig {
        steps: 10,
        batch: 8,
        ..Default::default()
    };
    let mut meter = Metered::new(g.clone(), &mut driver);
    train(&mut model, &mut task, &cfg, &mut meter).unwrap();
    let costs = meter.steps;
    let budget: Vec<u64> = driver.sink.allocations.iter().map(|a| a.step).collect();
    assert_eq!(budget, [4, 6, 8]);
    // The final pattern holds: after the last step only the kept triplets have λ ≠ 0.
    let held = driver.driver.engine.as_ref().unwrap().ranks();
    assert_eq!(held.iter().sum::<usize>(), 2 * held.len());
    for (i, &k) in held.iter().enumerate() {
        let lam = model.adapter_host(i).unwrap().lambda.unwrap();
        assert!(
            lam.iter().filter(|x| **x != 0.0).count() <= k,
            "adapter {i}: {lam:?}"
        );
    }
    for s in &costs {
        let c = s.counters.unwrap();
        eprintln!("step {}: {c:?}", s.step);
        if budget.contains(&s.step) {
            assert!(c.read_back_bytes > 16, "budget step {}: {c:?}", s.step);
        } else {
            assert_eq!(
                (c.read_backs, c.read_back_bytes),
                (1, 16),
                "step {}: {c:?}",
                s.step
            );
        }
    }
    assert_eq!(costs.len(), 10);
}
