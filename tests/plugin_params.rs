//! Plugin parameters a policy sets: every parameter a shipped plugin reads can be set from a
//! policy, reaches the plan and the engine's configuration, and a misspelt one is refused at
//! its line and column with the right name suggested. The oracle for "what a plugin reads" is
//! a plain text search of the shipped sources, independent of the checker's scanner.

use adarank::engine::shipped::SHIPPED;
use adarank::experiment::arm::engine_config;
use adarank::policy;
use std::path::Path;

/// Names the engine fills in from other settings: a policy may not set them.
const ENGINE_SET: [&str; 4] = ["r_min", "r_max", "init_rank", "param_budget"];

/// `(role, name)` of every parameter read in a shipped plugin's code with `param_or("…"` or
/// `param("…"`, comment lines left out, plus the relaxation's two for a learner that defines
/// `learn_step` (the engine reads those on its behalf).
fn shipped_params() -> Vec<(String, &'static str, String)> {
    let mut out = Vec::new();
    for s in SHIPPED {
        let role = s
            .source
            .lines()
            .find_map(|l| l.strip_prefix("// role: "))
            .unwrap_or_else(|| panic!("{} declares no role", s.file))
            .trim()
            .to_string();
        let name = s.file.trim_end_matches(".rhai");
        let code: Vec<&str> = s
            .source
            .lines()
            .filter(|l| !l.trim_start().starts_with("//"))
            .collect();
        let code = code.join("\n");
        for call in ["param_or(\"", "param(\""] {
            for (at, _) in code.match_indices(call) {
                let rest = &code[at + call.len()..];
                let p = &rest[..rest.find('"').expect("closing quote")];
                out.push((role.clone(), name, p.to_string()));
            }
        }
        if code.contains("fn learn_step(") {
            for p in ["gate_tau", "gate_floor"] {
                out.push((role.clone(), name, p.to_string()));
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

/// The quickstart with `plugin` in `role` taking `args` (`{ name = value }`).
fn policy_with(role: &str, plugin: &str, args: &str) -> String {
    let (complexity, allocator, learner, warmup) = match role {
        "complexity" => (
            format!("plugin \"{plugin}\" {args}"),
            "plugin \"log_rule\"".to_string(),
            "plugin \"learn_gates\"".to_string(),
            "step 20".to_string(),
        ),
        "allocator" => (
            "plugin \"spectral_gradient\"".to_string(),
            format!("plugin \"{plugin}\" {args}"),
            "none".to_string(),
            "step 20".to_string(),
        ),
        "learner" => (
            "plugin \"spectral_gradient\"".to_string(),
            "plugin \"log_rule\"".to_string(),
            format!("plugin \"{plugin}\" {args}"),
            "step 20".to_string(),
        ),
        "condition" => (
            "plugin \"spectral_gradient\"".to_string(),
            "plugin \"log_rule\"".to_string(),
            "plugin \"learn_gates\"".to_string(),
            format!("plugin \"{plugin}\" {args}"),
        ),
        other => panic!("unknown role {other}"),
    };
    format!(
        r#"experiment params {{
  model encoder {{ layers = 2, hidden = 32, heads = 4, ffn = 64, vocab = 64, max_positions = 16 }}
  data planted {{ ranks = [0, 2, 8, 1], samples = 256, eval_samples = 32, seq = 8, seed = 1 }}
  lora {{ targets = [q, v, ffn_in, ffn_out], alpha = 8, budget = 24, init_rank = 3, max_rank = 12 }}
  train {{ steps = 80, batch = 16, lr = 1e-2 }}
  complexity = {complexity}
  allocator = {allocator}
  learner = {learner}
  phase warmup until {warmup} {{}}
  phase adapt until step 60 {{ every 20 steps: reallocate }}
  phase settle {{}}
  seeds = [1]
}}
"#
    )
}

/// 1-based line and column of byte `offset` in `src`, counted in characters.
fn line_col(src: &str, offset: usize) -> (usize, usize) {
    let before = &src[..offset];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().unwrap_or("").chars().count() + 1;
    (line, col)
}

#[test]
fn every_parameter_a_shipped_plugin_reads_can_be_set_from_a_policy() {
    let params = shipped_params();
    let settable: Vec<_> = params
        .iter()
        .filter(|(_, _, p)| !ENGINE_SET.contains(&p.as_str()))
        .collect();
    // The parameters the plugin documentation talks about are among them.
    for p in [
        "alpha_lr",
        "budget_penalty",
        "grad_weight",
        "w0_weight",
        "gate_tau",
        "gate_floor",
    ] {
        assert!(
            settable.iter().any(|(_, _, n)| n == p),
            "{p} not found in the shipped plugins"
        );
    }
    // spectral_gradient 3, learn_gates 4, fit_proportional 1, log_rule 2, loss_plateau 3: a
    // scan that finds fewer has lost some.
    assert!(settable.len() >= 13, "only {settable:?}");
    for (i, (role, plugin, name)) in settable.iter().enumerate() {
        // A distinct value per parameter, with a fractional part: it must arrive as written.
        let value = 0.125 + i as f64;
        let src = policy_with(role, plugin, &format!("{{ {name} = {value} }}"));
        let p = policy::load_str(&src, "params.rank", Path::new("."), &[])
            .unwrap_or_else(|e| panic!("{plugin}.{name}:\n{e}\n{src}"));
        let arm = &p.arms[0];
        assert_eq!(
            arm.plugins.params.get(name.as_str()),
            Some(&serde_json::json!(value)),
            "{plugin}.{name}: not in the plan"
        );
        let cfg = engine_config(arm, 2, 80, 1).expect("the arm re-allocates");
        assert_eq!(
            cfg.params.get(name.as_str()),
            Some(&serde_json::json!(value)),
            "{plugin}.{name}: not handed to the engine"
        );
    }
}

#[test]
fn a_misspelt_parameter_is_refused_at_its_line_and_column_with_the_name_suggested() {
    for (role, plugin, name) in shipped_params() {
        if ENGINE_SET.contains(&name.as_str()) {
            continue;
        }
        let wrong = format!("{name}{}", name.chars().last().unwrap());
        let src = policy_with(&role, plugin, &format!("{{ {wrong} = 1 }}"));
        let err = policy::load_str(&src, "params.rank", Path::new("."), &[])
            .expect_err(&format!("{plugin}.{wrong} was accepted"));
        let text = err.to_string();
        let at = src.find(&format!("{{ {wrong} =")).unwrap() + 2;
        let (line, col) = line_col(&src, at);
        for needle in [
            format!("--> params.rank:{line}:{col}"),
            format!("has no parameter `{wrong}`"),
            format!("did you mean `{name}`?"),
        ] {
            assert!(
                text.contains(&needle),
                "{plugin}.{wrong}: no `{needle}` in\n{text}"
            );
        }
    }
}

#[test]
fn engine_set_names_twice_set_names_and_wrong_values_are_refused() {
    let cases = [
        (
            "allocator",
            "log_rule",
            "{ r_min = 1 }",
            "is set by the engine from `lora.min_rank`",
        ),
        (
            "allocator",
            "log_rule",
            "{ param_budget = 100 }",
            "is set by the engine from `lora.param_budget`",
        ),
        (
            "complexity",
            "spectral_gradient",
            "{ grad_weight = 0.1, grad_weight = 0.2 }",
            "`grad_weight` is set twice",
        ),
        (
            "complexity",
            "spectral_gradient",
            "{ grad_weight = [1] }",
            "found a list",
        ),
        (
            "complexity",
            "spectral_gradient",
            "{ grad_weight = 25% }",
            "found the share `25%`",
        ),
        (
            "learner",
            "fit_proportional",
            "{ gate_tau = 0.5 }",
            "has no parameter `gate_tau`",
        ),
    ];
    for (role, plugin, args, needle) in cases {
        let src = policy_with(role, plugin, args);
        let err = policy::load_str(&src, "params.rank", Path::new("."), &[])
            .expect_err(&format!("{plugin} {args} was accepted"));
        let text = err.to_string();
        assert!(
            text.contains(needle),
            "{plugin} {args}: no `{needle}` in\n{text}"
        );
        assert!(text.contains("--> params.rank:"), "{text}");
    }
}

#[test]
fn a_name_two_plugins_read_takes_one_value() {
    // `budget_penalty` is read by learn_gates; a custom complexity plugin reads it too.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("c.rhai"),
        "fn complexity(adapter, ctx) { 1.0 + param_or(\"budget_penalty\", 0.0) }\n",
    )
    .unwrap();
    let src = policy_with("learner", "learn_gates", "{ budget_penalty = 0.1 }").replace(
        "complexity = plugin \"spectral_gradient\"",
        "complexity = plugin \"c.rhai\" { budget_penalty = 0.2 }",
    );
    let err = policy::load_str(&src, "params.rank", dir.path(), &[]).unwrap_err();
    assert!(err.to_string().contains("is set to 0.2"), "{err}");
    let same = src.replace("0.2 }", "0.1 }");
    let p = policy::load_str(&same, "params.rank", dir.path(), &[]).unwrap();
    assert_eq!(
        p.arms[0].plugins.params["budget_penalty"],
        serde_json::json!(0.1)
    );
}

#[test]
fn whole_numbers_stay_integers_and_overrides_set_parameters() {
    let src = policy_with("condition", "loss_plateau", "{ window = 10, tol = 1e-3 }");
    let p = policy::load_str(&src, "params.rank", Path::new("."), &[]).unwrap();
    let params = &p.arms[0].plugins.params;
    assert_eq!(params["window"], serde_json::json!(10));
    assert!(params["window"].is_i64());
    assert_eq!(params["tol"], serde_json::json!(0.001));
    let set = ["learner=plugin \"learn_gates\" { alpha_lr = 0.5 }".to_string()];
    let src = policy_with("learner", "learn_gates", "");
    let p = policy::load_str(&src, "params.rank", Path::new("."), &set).unwrap();
    assert_eq!(p.arms[0].plugins.params["alpha_lr"], serde_json::json!(0.5));
}
