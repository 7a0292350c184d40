//! The shipped learner, log rule, phase condition and allocators against independent oracles.

use adarank::engine::shipped::find;
use adarank::engine::{EngineConfig, EngineCtx, Limits, Method, PluginHost, RankEngine, Role};
use adarank::testkit::planted_layers::{PlantedConfig, PlantedStore};
use rhai::{Array, Dynamic, Map};

fn adapters_with(c: &[f64]) -> Array {
    c.iter()
        .map(|v| {
            let mut m = Map::new();
            m.insert("complexity".into(), Dynamic::from_float(*v));
            Dynamic::from_map(m)
        })
        .collect()
}

fn ctx(budget: i64) -> Map {
    let mut m = Map::new();
    m.insert("budget".into(), Dynamic::from_int(budget));
    m
}

/// Closed-form least squares of d_i = B·C_i/ΣC on ln C_i, α clamped at 0.
fn ols(c: &[f64], budget: f64) -> (f64, f64) {
    let total: f64 = c.iter().sum();
    let x: Vec<f64> = c.iter().map(|v| v.ln()).collect();
    let d: Vec<f64> = c.iter().map(|v| budget * v / total).collect();
    let n = c.len() as f64;
    let (mx, md) = (x.iter().sum::<f64>() / n, d.iter().sum::<f64>() / n);
    let sxx: f64 = x.iter().map(|a| (a - mx).powi(2)).sum();
    let sxd: f64 = x.iter().zip(&d).map(|(a, b)| (a - mx) * (b - md)).sum();
    let a = (sxd / sxx).max(0.0);
    (a, md - a * mx)
}

fn learn(host: &PluginHost, state: Map, c: &[f64], budget: i64) -> (f64, f64) {
    let p = host
        .compile(
            "fit_proportional.rhai",
            find("fit_proportional.rhai").unwrap().source,
        )
        .unwrap();
    let out = host
        .call(
            &p,
            Role::Learner,
            None,
            (
                Dynamic::from_map(state),
                Dynamic::from_array(adapters_with(c)),
                Dynamic::from_map(ctx(budget)),
            ),
        )
        .unwrap();
    let m = out.cast::<Map>();
    (
        m["alpha"].as_float().unwrap(),
        m["beta"].as_float().unwrap(),
    )
}

#[test]
fn learner_fits_least_squares_and_smooths() {
    let host = PluginHost::new(Limits::default(), 0);
    let c = [0.3, 1.0, 2.5, 7.0, 20.0, 55.0];
    let (a, b) = learn(&host, Map::new(), &c, 48);
    let (wa, wb) = ols(&c, 48.0);
    assert!(
        (a - wa).abs() < 1e-9 && (b - wb).abs() < 1e-9,
        "{a} {b} vs {wa} {wb}"
    );
    // Unsmoothed fit meets the budget before rounding.
    let sum: f64 = c.iter().map(|v| a * v.ln() + b).sum();
    assert!((sum - 48.0).abs() < 1e-9);
    // With a previous state, η = 0.5 moves halfway.
    let mut st = Map::new();
    st.insert("alpha".into(), Dynamic::from_float(1.0));
    st.insert("beta".into(), Dynamic::from_float(2.0));
    let (a2, b2) = learn(&host, st, &c, 48);
    assert!((a2 - (1.0 + 0.5 * (wa - 1.0))).abs() < 1e-9);
    assert!((b2 - (2.0 + 0.5 * (wb - 2.0))).abs() < 1e-9);
    // Equal complexities: no slope, the budget split evenly.
    let (a3, b3) = learn(&host, Map::new(), &[2.0; 4], 20);
    assert_eq!(a3, 0.0);
    assert!((b3 - 5.0).abs() < 1e-12);
}

#[test]
fn loss_plateau_detects_a_flat_tail() {
    let host = PluginHost::new(Limits::default(), 0);
    let p = host
        .compile(
            "loss_plateau.rhai",
            find("loss_plateau.rhai").unwrap().source,
        )
        .unwrap();
    let call = |losses: Vec<f64>, step: i64| -> bool {
        let mut m = Map::new();
        m.insert("step".into(), Dynamic::from_int(step));
        m.insert(
            "losses".into(),
            Dynamic::from_array(losses.into_iter().map(Dynamic::from_float).collect()),
        );
        host.call(&p, Role::Condition, None, (Dynamic::from_map(m),))
            .unwrap()
            .as_bool()
            .unwrap()
    };
    // Loss halving every 20 steps: improving 50 % per window, not done.
    let decaying: Vec<f64> = (0..100).map(|t| 0.5f64.powf(t as f64 / 20.0)).collect();
    assert!(!call(decaying, 100));
    // Flat: 0 % improvement, done — but not before min_steps (50).
    assert!(call(vec![1.0; 100], 100));
    assert!(!call(vec![1.0; 100], 10));
    // Too short a history for two windows.
    assert!(!call(vec![1.0; 30], 100));
}

fn store() -> PlantedStore {
    let mut c = PlantedConfig::new(vec![1; 12], 2);
    c.dim = 8;
    PlantedStore::new(c, 4)
}

#[test]
fn state_round_trips_through_json_and_resume_checks_ranks() {
    let mut s = store();
    let mut cfg = EngineConfig::new(
        Method::Script {
            allocator: "plugins/random.rhai".into(),
            complexity: None,
        },
        30,
        2,
    );
    cfg.max_rank = 6;
    let mut e = RankEngine::new(cfg.clone()).unwrap();
    e.on_start(&mut s).unwrap();
    s.forward_backward();
    e.after_backward(1, &mut s).unwrap();
    e.reallocate(1, &mut s, &EngineCtx::default()).unwrap();
    s.forward_backward();
    e.after_backward(2, &mut s).unwrap();
    let json = serde_json::to_string(&e.state(&s).unwrap()).unwrap();
    let back: adarank::engine::EngineState = serde_json::from_str(&json).unwrap();
    // serde_json may round the last bit of an f64; everything else must come back as saved.
    let now = e.state(&s).unwrap();
    assert_eq!(
        (&back.ranks, &back.calls, back.rng_draws),
        (&now.ranks, &now.calls, now.rng_draws)
    );
    for (a, b) in back.grads.iter().zip(&now.grads) {
        assert!((a.energy_sum - b.energy_sum).abs() <= 1e-12 * b.energy_sum.abs());
        assert_eq!(a.gram.len(), b.gram.len());
    }
    assert!(
        back.grads.iter().any(|g| g.energy_sum > 0.0),
        "statistics were gathered"
    );
    let mut e2 = RankEngine::new(cfg.clone()).unwrap();
    e2.load_state(back).unwrap();
    e2.on_start(&mut s).unwrap();
    assert_eq!(e2.ranks(), e.ranks());
    // A model whose ranks differ from the saved state is refused.
    let mut e3 = RankEngine::new(cfg).unwrap();
    e3.load_state(serde_json::from_str(&json).unwrap()).unwrap();
    let mut other = store();
    assert!(e3.on_start(&mut other).is_err());
}
