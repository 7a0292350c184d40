//! The rank engine driving the real transformer on the model's planted-rank task
//! (`PlantedTask::small`: 2-layer encoder, planted ranks 0 2 8 1 cycling over its 12 slots, every
//! planted direction as large as a typical direction of W0), through the training loop's hooks
//! and the same schedule the runner uses, with real resizing, gating or masking.
//!
//! Schedule (400 steps, total rank budget 48 = uniform rank 4): phase 1 at uniform rank 8 for
//! 200 steps (high enough to see every planted rank), then `adapt` re-allocates at 200 and 250
//! and ends at 300, where the allocation is made final; the last 100 steps train at it.
//!
//! Asserted over seeds 1–6 for the default method (`spectral_gradient` + `learn_gates` +
//! `log_rule`: α learned from the task loss through soft rank gates, the held components within
//! the budget, the engine's plain resize: truncated SVD, fresh moments, scale α/r, no fade):
//! - its final ranks' Spearman correlation with the planted ranks is ≥ 0.85 on average over the
//!   six seeds and ≥ 0.6 on each (measured, seeds 1–6: 0.941 / 0.919 / 0.648 / 0.920 / 0.819 /
//!   0.918, mean 0.861; the fit: 0.965 / 0.967 / 0.674 / 0.929 / 0.873 / 0.923; on seed 3 the
//!   planted changes are hardly learned and other modules' changes fit the teacher as well,
//!   plugins/README.md, "Measured");
//! - it closes at least half of the gap between fixed rank 4 and the planted ranks as the
//!   allocation, on the mean eval loss of seeds 1–3: (fixed − learned) / (fixed − planted),
//!   measured 91% (learned 0.00255 / 0.00199 / 0.00094, planted 0.00193 / 0.00169 / 0.00105,
//!   fixed 0.00640 / 0.00600 / 0.00131). It is not held to the closed-form fit seed by seed:
//!   the learned α ends no worse than the fit on 2 of 6 (learned − fitted +0.00008 /
//!   −0.00017 / +0.00004 / +0.00018 / +0.00043 / −0.00017);
//! - its final eval loss is below 0.8 × that of fixed uniform rank 4 (same budget, same steps;
//!   phase 1 at rank 8 costs more than fixed rank here: this test is about recovery, the
//!   equal-cost comparison is examples/paper_table.rank), and below that of the
//!   same phase 1 followed by a uniform allocation (`fixed.rhai`), so the gain is the
//!   allocation's, not the wider phase 1's;
//! - every allocation meets the budget exactly.
//!
//! Measured figures (both seed by seed, and the planted / AdaLoRA / SoRA / EVA / random controls)
//! are printed with `--nocapture` and recorded in plugins/README.md. The seed sweep runs on the
//! CPU backend; `paper_allocator_margins_hold_on_the_gpu_backend` runs seed 1 of the method and
//! of fixed rank on the GPU backend (lavapipe in CI) and asserts the same margins.

use adarank::adapter::{AdapterStore, ModuleKind};
use adarank::backend::cpu::Cpu;
use adarank::backend::Backend;
use adarank::engine::driver::{Collect, DriverHooks, EngineDriver};
use adarank::engine::schedule::Schedule;
use adarank::engine::{AdaLoraConfig, EngineConfig, Method, RankEngine, SoraConfig};
use adarank::model::{LoraConfig, TrainMode};
use adarank::policy::{Action, ActionKind, PhaseSpec, Until};
use adarank::testkit::planted_layers::spearman;
use adarank::testkit::test_gpu;
use adarank::train::{build_model, train, Decay, PlantedConfig, PlantedTask, Task, TrainConfig};
use std::sync::Arc;
use std::time::Instant;

const STEPS: u64 = 400;
/// Phase-1 uniform rank (at most `max_rank`), above the budget's mean rank, as AdaLoRA's
/// initial rank is above its target.
const P1_RANK: usize = 8;
/// Budget per adapter: total rank 4 × 12 = 48 (uniform rank 4 for the fixed baseline).
const RANK: usize = 4;

pub struct Outcome {
    pub rho: f64,
    pub loss: f64,
    pub ranks: Vec<usize>,
    pub alphas: Vec<f64>,
    pub realloc_share: f64,
    pub step_share: f64,
    pub allocations: usize,
}

fn phases() -> Vec<PhaseSpec> {
    vec![
        PhaseSpec {
            name: "uniform".into(),
            until: Until::Step(200),
            actions: vec![],
        },
        PhaseSpec {
            name: "adapt".into(),
            until: Until::Step(300),
            actions: vec![Action {
                every: 50,
                what: ActionKind::Reallocate,
            }],
        },
        PhaseSpec {
            name: "settle".into(),
            until: Until::End,
            actions: vec![],
        },
    ]
}

fn run(method: Method, seed: u64) -> Outcome {
    run_on(Arc::new(Cpu::new()), Some(method), seed)
}

/// The fixed arm as a run trains it: rank `RANK` everywhere, no engine.
fn run_fixed(seed: u64) -> Outcome {
    run_on(Arc::new(Cpu::new()), None, seed)
}

fn run_on<B: Backend>(backend: Arc<B>, method: Option<Method>, seed: u64) -> Outcome {
    let mut task = PlantedTask::new(PlantedConfig::small(seed)).unwrap();
    let planted: Vec<f64> = task
        .planted_ranks()
        .unwrap()
        .iter()
        .map(|x| *x as f64)
        .collect();
    let layers = task.model_config().layers;
    let (init, svd) = match &method {
        Some(Method::AdaLora(c)) => (c.init_rank, true),
        Some(Method::Sora(c)) => (c.init_rank, false),
        None => (RANK, false),
        Some(_) => (P1_RANK, false),
    };
    let mut lora = LoraConfig::uniform(layers, &ModuleKind::ALL, init, 16.0);
    lora.svd_form = svd;
    let mut model = build_model(backend, &task, TrainMode::Lora(lora), seed).unwrap();
    let n = model.adapters().len();
    let engine = method.map(|method| {
        let mut cfg = EngineConfig::new(method, RANK * n, init);
        cfg.min_rank = 1;
        cfg.max_rank = 10;
        cfg.seed = seed;
        let mut engine = RankEngine::new(cfg).unwrap();
        engine.on_start(&mut model).unwrap();
        engine
    });
    let tcfg = TrainConfig {
        steps: STEPS,
        batch: 16,
        lr: 1e-2,
        warmup: 10,
        decay: Decay::Linear,
        clip: Some(1.0),
        ..Default::default()
    };
    let t0 = Instant::now();
    let driver = EngineDriver::new(engine, Schedule::new(phases(), STEPS, STEPS, None), STEPS);
    let adapters = model.adapters().len();
    let mut hooks = DriverHooks::new(driver, adapters, Collect::default());
    let log = train(&mut model, &mut task, &tcfg, &mut hooks).unwrap();
    let (mut driver, allocations) = (hooks.driver, hooks.sink.allocations);
    let secs = t0.elapsed().as_secs_f64();
    // The fixed arm has no engine: nothing called, its ranks the model's own.
    let engine = driver.engine.take();
    let calls = engine
        .as_ref()
        .map(|e| e.calls().clone())
        .unwrap_or_default();
    if engine.is_some() {
        assert_eq!(calls.after_backward, STEPS as usize);
    }
    for a in &allocations {
        if let Some(b) = a.budget {
            assert_eq!(a.total(), b, "step {}: {:?}", a.step, a.ranks());
        }
    }
    let ranks = match &engine {
        Some(e) => e.ranks(),
        None => model.adapters().iter().map(|a| a.rank).collect(),
    };
    let r: Vec<f64> = ranks.iter().map(|x| *x as f64).collect();
    Outcome {
        rho: spearman(&r, &planted),
        loss: log.evals.last().unwrap().loss,
        ranks,
        alphas: allocations.iter().filter_map(|a| a.alpha).collect(),
        realloc_share: calls.reallocate_seconds / secs,
        step_share: (calls.after_backward_seconds + calls.after_step_seconds) / secs,
        allocations: calls.allocations,
    }
}

fn paper(learner: &str) -> Method {
    Method::Adaptive {
        complexity: "plugins/spectral_gradient.rhai".into(),
        allocator: "plugins/log_rule.rhai".into(),
        learner: Some(format!("plugins/{learner}.rhai").into()),
    }
}

fn script(f: &str) -> Method {
    Method::Script {
        allocator: format!("plugins/{f}").into(),
        complexity: None,
    }
}

fn show(name: &str, seed: u64, o: &Outcome) {
    println!(
        "{name:9} {seed:4}  {:8.3}  {:9.7}  {:13.4}  {:10.4}  {:?}  α {:?}",
        o.rho, o.loss, o.realloc_share, o.step_share, o.ranks, o.alphas
    )
}

/// Seeds to sweep: 1–6, or the list in `ADARANK_PLANTED_SEEDS` (e.g. `1,3`) while iterating
/// (the assertions over six seeds are skipped then).
fn seeds() -> (Vec<u64>, bool) {
    match std::env::var("ADARANK_PLANTED_SEEDS") {
        Ok(s) if !s.is_empty() => (
            s.split(',').filter_map(|x| x.trim().parse().ok()).collect(),
            false,
        ),
        _ => ((1..=6).collect(), true),
    }
}

#[test]
fn learned_allocation_recovers_the_planted_ranks_and_beats_fixed_rank() {
    println!("method    seed  spearman  eval_loss  realloc_share  step_share  ranks");
    let (seeds, full) = seeds();
    let mut rhos = vec![];
    let mut not_worse = 0;
    // (fixed, learned, planted) eval losses of the seeds with a planted control.
    let mut gap: Vec<(f64, f64, f64)> = vec![];
    for &seed in &seeds {
        let ours = run(paper("learn_gates"), seed);
        let fit = run(paper("fit_proportional"), seed);
        show("learned", seed, &ours);
        show("fitted", seed, &fit);
        rhos.push(ours.rho);
        let fixed = run_fixed(seed);
        // Same phase 1 at rank 8, then every adapter at the budget's uniform rank 4.
        let warm = run(script("fixed.rhai"), seed);
        show("fixed", seed, &fixed);
        show("p1+unif", seed, &warm);
        if seed <= 3 {
            // The planted ranks as an allocation after the same phase 1 (Spearman 1), for the
            // loss it reaches: a control, not asserted.
            let oracle = run(
                Method::Script {
                    allocator: "tests/fixtures/planted_oracle.rhai".into(),
                    complexity: None,
                },
                seed,
            );
            show("planted", seed, &oracle);
            gap.push((fixed.loss, ours.loss, oracle.loss));
        }
        if seed == 1 {
            let ada = run(
                Method::AdaLora(AdaLoraConfig {
                    init_rank: P1_RANK,
                    target_rank: RANK,
                    tinit: 20,
                    tfinal: 50,
                    delta_t: 10,
                    total_steps: STEPS as usize,
                    ..Default::default()
                }),
                seed,
            );
            show("adalora", seed, &ada);
            show("eva", seed, &run(script("eva.rhai"), seed));
            show("random", seed, &run(script("random.rhai"), seed));
            assert_eq!(ada.ranks.iter().sum::<usize>(), RANK * 12);
        }
        assert_eq!(ours.allocations, 3, "200, 250 and the final one at 300");
        assert_eq!(ours.ranks.iter().sum::<usize>(), RANK * 12);
        assert_eq!(warm.ranks, vec![RANK; 12]);
        println!(
            "seed {seed}: learned − fitted eval loss {:+.7} ({})",
            ours.loss - fit.loss,
            if ours.loss <= fit.loss {
                "no worse"
            } else {
                "worse"
            }
        );
        if ours.loss <= fit.loss {
            not_worse += 1;
        }
        assert!(
            ours.rho >= 0.6,
            "seed {seed}: Spearman {:.3} with the planted ranks, ranks {:?}",
            ours.rho,
            ours.ranks
        );
        assert!(
            ours.loss < 0.8 * fixed.loss && ours.loss < warm.loss,
            "seed {seed}: eval loss {:.5} vs fixed rank {RANK} {:.5}, phase 1 + uniform {:.5}",
            ours.loss,
            fixed.loss,
            warm.loss
        );
    }
    let mean = rhos.iter().sum::<f64>() / rhos.len() as f64;
    // The share of the fixed-to-planted gap the learned allocation closes, on the mean losses
    // of the seeds with a planted control: (fixed − learned) / (fixed − planted).
    let avg = |f: fn(&(f64, f64, f64)) -> f64| gap.iter().map(f).sum::<f64>() / gap.len() as f64;
    let closed = (avg(|g| g.0) - avg(|g| g.1)) / (avg(|g| g.0) - avg(|g| g.2));
    println!(
        "mean Spearman {mean:.3} over seeds {seeds:?}; learned no worse than fitted on {not_worse} of {}; gap closed {:.0}%",
        seeds.len(),
        100.0 * closed
    );
    if full {
        assert!(mean >= 0.85, "mean Spearman {mean:.3}: {rhos:?}");
        assert!(closed >= 0.5, "gap closed {:.0}%: {gap:?}", 100.0 * closed);
    }
}

/// SoRA (Ding et al. 2023) on the same task, from uniform rank 8 with its gates
/// soft-thresholded: its Spearman with the planted ranks, for the comparison in
/// plugins/README.md. Asserted: it prunes (ranks fall below 8 somewhere) and trains.
#[test]
fn sora_prunes_components_on_the_planted_task() {
    let (seeds, _) = seeds();
    for &seed in seeds.iter().take(3) {
        let o = run(
            Method::Sora(SoraConfig {
                init_rank: P1_RANK,
                gate_lr: 1e-2,
                threshold: 2e-3,
                threshold_max: 1e-2,
                total_steps: STEPS as usize,
            }),
            seed,
        );
        show("sora", seed, &o);
        assert!(o.ranks.iter().any(|r| *r < P1_RANK), "{:?}", o.ranks);
        assert!(o.loss.is_finite());
    }
}

/// The same margins on the GPU backend (lavapipe in CI), seed 1: the learned method against
/// fixed rank, trained, statistics gathered, gates set and adapters resized on the device.
#[test]
fn paper_allocator_margins_hold_on_the_gpu_backend() {
    let Some(g) = test_gpu() else { return };
    let fixed = run_on(g.clone(), None, 1);
    let ours = run_on(g, Some(paper("learn_gates")), 1);
    let cpu = run(paper("learn_gates"), 1);
    println!(
        "gpu: Spearman {:.3}, loss {:.7} (fixed {:.7}), ranks {:?}; cpu: {:.3}, {:.7}, {:?}",
        ours.rho, ours.loss, fixed.loss, ours.ranks, cpu.rho, cpu.loss, cpu.ranks
    );
    assert_eq!(ours.allocations, 3);
    assert_eq!(ours.ranks.iter().sum::<usize>(), RANK * 12);
    assert!(
        ours.rho >= 0.7,
        "gpu Spearman {:.3}: {:?}",
        ours.rho,
        ours.ranks
    );
    assert!(
        ours.loss < 0.8 * fixed.loss,
        "gpu loss {:.5} vs fixed {:.5}",
        ours.loss,
        fixed.loss
    );
}
