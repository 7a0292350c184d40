//! A plugin that exists only as a script in a temp dir (not shipped, no rebuild) changes the
//! ranks as it says.

use adarank::adapter::AdapterStore;
use adarank::engine::{EngineConfig, EngineCtx, Method, RankEngine};
use adarank::testkit::planted_layers::{PlantedConfig, PlantedStore};

fn store() -> PlantedStore {
    let mut c = PlantedConfig::new(vec![2; 12], 4);
    c.dim = 8;
    c.batch = 8;
    PlantedStore::new(c, 2)
}

#[test]
fn temp_dir_allocator_sets_the_ranks_it_returns() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("attn_heavy.rhai"),
        r#"// attention 3, feed-forward 1, layer 1 one more
fn allocate(adapters, budget) {
    adapters.map(|a| {
        let r = if a.kind == "ffn_in" || a.kind == "ffn_out" { 1 } else { 3 };
        if a.layer == 1 { r + 1 } else { r }
    })
}
"#,
    )
    .unwrap();
    let mut cfg = EngineConfig::new(
        Method::Script {
            allocator: "attn_heavy.rhai".into(),
            complexity: None,
        },
        40,
        2,
    );
    cfg.base_dir = Some(dir.path().to_path_buf());
    cfg.max_rank = 8;
    let mut s = store();
    let mut e = RankEngine::new(cfg).unwrap();
    e.on_start(&mut s).unwrap();
    assert!(s.adapters().iter().all(|a| a.rank == 2));
    let ch = e
        .reallocate(5, &mut s, &EngineCtx::default())
        .unwrap()
        .unwrap();
    // Independent statement of the script's rule over the store's adapter list.
    let want: Vec<usize> = s
        .adapters()
        .iter()
        .map(|a| {
            let r = if a.kind.name().starts_with("ffn") {
                1
            } else {
                3
            };
            r + usize::from(a.layer == 1)
        })
        .collect();
    assert_eq!(
        s.adapters().iter().map(|a| a.rank).collect::<Vec<_>>(),
        want
    );
    assert_eq!(
        ch.ranks().into_iter().map(|x| x.1).collect::<Vec<_>>(),
        want
    );
    assert!(ch.resized);
    assert_eq!(e.calls().allocations, 1);
}

#[test]
fn temp_dir_complexity_drives_the_shipped_log_rule() {
    // Complexity grows with the adapter index; the learned log rule must hand out ranks that
    // never decrease with the index and add up to the budget exactly.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("by_index.rhai"),
        "fn complexity(adapter, ctx) { exp(adapter.index.to_float() / 3.0) }\n",
    )
    .unwrap();
    let mut cfg = EngineConfig::new(
        Method::Adaptive {
            complexity: "by_index.rhai".into(),
            allocator: "plugins/log_rule.rhai".into(),
            learner: Some("plugins/fit_proportional.rhai".into()),
        },
        36,
        3,
    );
    cfg.base_dir = Some(dir.path().to_path_buf());
    cfg.min_rank = 1;
    cfg.max_rank = 8;
    let mut s = store();
    let mut e = RankEngine::new(cfg).unwrap();
    e.on_start(&mut s).unwrap();
    let ch = e
        .reallocate(1, &mut s, &EngineCtx::default())
        .unwrap()
        .unwrap();
    let r: Vec<usize> = s.adapters().iter().map(|a| a.rank).collect();
    assert_eq!(r.iter().sum::<usize>(), 36);
    assert!(r.windows(2).all(|w| w[0] <= w[1]), "{r:?}");
    assert!(r[0] < r[11], "{r:?}");
    assert_eq!(ch.ranks().into_iter().map(|x| x.1).collect::<Vec<_>>(), r);
    assert!(ch.alpha.unwrap() > 0.0);
}
