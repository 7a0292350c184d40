//! Scripts that loop forever, return garbage or throw stop the run with a typed PluginError
//! naming file:line:col, the adapter and the value — never a panic.

use adarank::adapter::AdapterStore;
use adarank::engine::{
    EngineConfig, EngineCtx, EngineError, Limits, Method, PluginError, PluginErrorKind, RankEngine,
    Role,
};
use adarank::testkit::planted_layers::{PlantedConfig, PlantedStore};
use std::path::PathBuf;

fn store() -> PlantedStore {
    let mut c = PlantedConfig::new(vec![1, 2, 3, 4, 5, 6], 1);
    c.dim = 8;
    c.batch = 16;
    PlantedStore::new(c, 2)
}

fn config(dir: &tempfile::TempDir, file: &str, src: &str, limits: Limits) -> EngineConfig {
    std::fs::write(dir.path().join(file), src).unwrap();
    let mut cfg = EngineConfig::new(
        Method::Script {
            allocator: PathBuf::from(file),
            complexity: None,
        },
        12,
        2,
    );
    cfg.base_dir = Some(dir.path().to_path_buf());
    cfg.min_rank = 1;
    cfg.max_rank = 8;
    cfg.limits = limits;
    cfg
}

/// Run one step and a re-allocation with this allocator; return the plugin error.
fn allocator_error(src: &str, limits: Limits) -> PluginError {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&dir, "bad.rhai", src, limits);
    let mut s = store();
    let mut e = RankEngine::new(cfg).unwrap();
    e.on_start(&mut s).unwrap();
    s.forward_backward();
    e.after_backward(1, &mut s).unwrap();
    let before: Vec<usize> = s.adapters().iter().map(|a| a.rank).collect();
    let err = e.reallocate(1, &mut s, &EngineCtx::default()).unwrap_err();
    // A failed allocation leaves the adapters as they were.
    assert_eq!(
        before,
        s.adapters().iter().map(|a| a.rank).collect::<Vec<_>>()
    );
    let p = err
        .plugin()
        .cloned()
        .unwrap_or_else(|| panic!("not a plugin error: {err}"));
    assert!(p.file.ends_with("bad.rhai"), "{}", p.file);
    assert_eq!(p.role, Role::Allocator);
    p
}

#[test]
fn infinite_loop_is_stopped_by_time_budget() {
    let limits = Limits {
        time_budget_ms: 200,
        max_operations: u64::MAX,
        ..Limits::default()
    };
    let p = allocator_error(
        "fn allocate(adapters, budget) {\n    let x = 0;\n    loop { x += 1; }\n}\n",
        limits,
    );
    assert_eq!(p.kind, PluginErrorKind::Timeout);
    // The error points at the statement that was running when the budget ran out.
    assert_eq!(p.line, Some(3), "{p}");
    assert!(
        p.to_string().contains("bad.rhai:3:")
            && p.to_string().contains("allocator plugin: stopped"),
        "{p}"
    );
}

#[test]
fn operation_limit_stops_a_long_script() {
    let limits = Limits {
        max_operations: 10_000,
        ..Limits::default()
    };
    let p = allocator_error("fn allocate(adapters, budget) {\n    let x = 0; for i in 0..1000000 { x += i; }\n    []\n}\n", limits);
    assert_eq!(p.kind, PluginErrorKind::Limit);
    assert_eq!(p.line, Some(2), "the loop's line: {p}");
    assert!(p.message.contains("operations"), "{p}");
}

#[test]
fn runaway_recursion_hits_call_depth() {
    let p = allocator_error(
        "fn deep(n) { deep(n + 1) }\nfn allocate(adapters, budget) {\n    deep(0)\n}\n",
        Limits::default(),
    );
    assert_eq!(p.kind, PluginErrorKind::Limit, "{p}");
}

#[test]
fn throw_reports_position_and_value() {
    let p = allocator_error(
        "fn allocate(adapters, budget) {\n    let a = 1;\n      throw \"boom\";\n}\n",
        Limits::default(),
    );
    assert_eq!(p.kind, PluginErrorKind::Script);
    assert_eq!((p.line, p.col), (Some(3), Some(7)), "{p}");
    assert_eq!(p.value.as_deref(), Some("boom"));
}

#[test]
fn wrong_return_type_and_length() {
    let p = allocator_error(
        "fn allocate(adapters, budget) {\n    \"six\"\n}\n",
        Limits::default(),
    );
    assert_eq!(p.kind, PluginErrorKind::BadReturn);
    // The statement that returned the value.
    assert_eq!(p.line, Some(2), "{p}");
    assert_eq!(p.value.as_deref(), Some("six"));
    let p = allocator_error(
        "fn allocate(adapters, budget) { [1, 2] }",
        Limits::default(),
    );
    assert_eq!(p.kind, PluginErrorKind::BadReturn);
    assert!(p.message.contains("2 ranks for 6 adapters"), "{p}");
    let p = allocator_error(
        "fn allocate(adapters, budget) { adapters.map(|a| \"x\") }",
        Limits::default(),
    );
    assert_eq!(p.kind, PluginErrorKind::BadReturn);
    assert_eq!(p.adapter.as_deref(), Some("0.q"));
    let p = allocator_error(
        "fn allocate(adapters, budget) { adapters.map(|a| 1.5) }",
        Limits::default(),
    );
    assert_eq!(p.kind, PluginErrorKind::BadReturn);
    assert_eq!(p.value.as_deref(), Some("1.5"));
}

#[test]
fn nan_negative_and_over_budget_ranks() {
    let p = allocator_error(
        "fn allocate(adapters, budget) { adapters.map(|a| if a.index == 2 { sqrt(-1.0) } else { 2 }) }",
        Limits::default(),
    );
    assert_eq!(p.kind, PluginErrorKind::NotFinite);
    assert_eq!(p.adapter.as_deref(), Some("0.v"));
    let p = allocator_error(
        "fn allocate(adapters, budget) { adapters.map(|a| if a.index == 4 { -3 } else { 1 }) }",
        Limits::default(),
    );
    assert_eq!(p.kind, PluginErrorKind::RankOutOfRange);
    assert_eq!(p.adapter.as_deref(), Some("0.ffn_in"));
    assert_eq!(p.value.as_deref(), Some("-3"));
    let p = allocator_error(
        "fn allocate(adapters, budget) { adapters.map(|a| 3) }",
        Limits::default(),
    );
    assert_eq!(p.kind, PluginErrorKind::OverBudget);
    assert!(p.message.contains("18"), "{p}");
    let p = allocator_error(
        "fn allocate(adapters, budget) { adapters.map(|a| 9) }",
        Limits::default(),
    );
    assert_eq!(p.kind, PluginErrorKind::RankOutOfRange, "{p}");
}

#[test]
fn complexity_nan_names_the_adapter() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("c.rhai"),
        "fn complexity(adapter, ctx) {\n    if adapter.layer == 0 && adapter.kind == \"k\" { 0.0 / 0.0 } else { 1.0 }\n}\n",
    )
    .unwrap();
    let mut cfg = EngineConfig::new(
        Method::Adaptive {
            complexity: "c.rhai".into(),
            allocator: "plugins/log_rule.rhai".into(),
            learner: None,
        },
        12,
        2,
    );
    cfg.base_dir = Some(dir.path().to_path_buf());
    cfg.max_rank = 8;
    let mut s = store();
    let mut e = RankEngine::new(cfg).unwrap();
    e.on_start(&mut s).unwrap();
    let err = e.reallocate(1, &mut s, &EngineCtx::default()).unwrap_err();
    let p = err.plugin().expect("plugin error");
    assert_eq!(p.role, Role::Complexity);
    assert_eq!(p.adapter.as_deref(), Some("0.k"));
    assert!(p.file.ends_with("c.rhai"));
}

#[test]
fn syntax_errors_and_sandbox_escapes_fail_at_load() {
    let dir = tempfile::tempdir().unwrap();
    for (src, line) in [
        ("fn allocate(adapters, budget) {\n    let = 3;\n}\n", 2),
        (
            "import \"std\" as s;\nfn allocate(adapters, budget) { [] }\n",
            0,
        ),
        ("fn allocate(adapters, budget) {\n    eval(\"1\")\n}\n", 2),
    ] {
        let cfg = config(&dir, "bad.rhai", src, Limits::default());
        let err = match RankEngine::new(cfg) {
            Ok(mut e) => {
                // `import` parses; it fails when run, with no module resolver.
                let mut s = store();
                e.on_start(&mut s).unwrap();
                e.reallocate(1, &mut s, &EngineCtx::default()).unwrap_err()
            }
            Err(e) => e,
        };
        let p = err.plugin().unwrap_or_else(|| panic!("{err}"));
        if line > 0 {
            assert_eq!(p.line, Some(line), "{p}");
        }
    }
    let cfg = config(
        &dir,
        "none.rhai",
        "fn allocat(a, b) { [] }",
        Limits::default(),
    );
    let p = match RankEngine::new(cfg) {
        Err(EngineError::Plugin(p)) => p,
        other => panic!("expected a plugin error, got {:?}", other.err()),
    };
    assert_eq!(p.kind, PluginErrorKind::MissingFunction);
    let mut cfg = config(&dir, "x.rhai", "", Limits::default());
    cfg.method = Method::Script {
        allocator: "does/not/exist.rhai".into(),
        complexity: None,
    };
    let p = RankEngine::new(cfg).err().unwrap();
    assert_eq!(p.plugin().unwrap().kind, PluginErrorKind::Load);
}

#[test]
fn condition_must_return_bool() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("d.rhai"), "fn done(ctx) { ctx.step }").unwrap();
    let mut cfg = config(
        &dir,
        "a.rhai",
        "fn allocate(a, b) { a.map(|x| 1) }",
        Limits::default(),
    );
    cfg.base_dir = Some(dir.path().to_path_buf());
    let mut e = RankEngine::new(cfg).unwrap();
    let err = e
        .phase_done(&dir.path().join("d.rhai"), &EngineCtx::default())
        .unwrap_err();
    assert_eq!(err.plugin().unwrap().kind, PluginErrorKind::BadReturn);
    assert_eq!(err.plugin().unwrap().role, Role::Condition);
}

#[test]
fn the_total_budget_bounds_every_call_of_a_host_together() {
    use adarank::engine::{Plugin, PluginHost};
    // Each call stays under its own budget by ending early on the deadline; together they meet
    // the total, and from then on every call is refused at once.
    let limits = Limits {
        time_budget_ms: 300,
        total_budget_ms: 700,
        max_operations: u64::MAX,
        ..Limits::default()
    };
    let host = PluginHost::new(limits, 0);
    let p: Plugin = host
        .compile(
            "slow.rhai",
            "fn done(ctx) {\n    let x = 0;\n    loop { x += 1; }\n}\n",
        )
        .unwrap();
    let ctx = rhai::Dynamic::from_map(rhai::Map::new());
    let mut messages = Vec::new();
    for _ in 0..5 {
        let e = host
            .call(&p, Role::Condition, None, (ctx.clone(),))
            .unwrap_err();
        assert_eq!(e.kind, PluginErrorKind::Timeout, "{e}");
        messages.push(e.message.clone());
    }
    assert!(
        messages[0].contains("time budget of 300 ms"),
        "{messages:?}"
    );
    assert!(
        messages[3].contains("total time budget of 700 ms")
            && messages[4].contains("total time budget of 700 ms"),
        "{messages:?}"
    );
}

#[test]
fn a_plugin_may_not_return_a_closure_or_a_deeply_nested_value() {
    use adarank::engine::{Plugin, PluginHost};
    let host = PluginHost::new(Limits::default(), 0);
    for (src, want) in [
        ("fn done(ctx) { |x| x }\n", "function pointer or closure"),
        ("fn done(ctx) { [[[[[[1]]]]]] }\n", "nested deeper than"),
        (
            "fn done(ctx) { #{a: [#{b: Fn(\"done\")}]} }\n",
            "function pointer or closure",
        ),
    ] {
        let p: Plugin = host.compile("ret.rhai", src).unwrap();
        let e = host
            .call(
                &p,
                Role::Condition,
                None,
                (rhai::Dynamic::from_map(rhai::Map::new()),),
            )
            .unwrap_err();
        assert_eq!(e.kind, PluginErrorKind::BadReturn, "{e}");
        assert!(e.message.contains(want), "{src}: {e}");
    }
}
