//! The formatter: idempotent, meaning-preserving (parse(fmt(x)) == parse(x)) on every example
//! and fixture that parses, and the canonical layout of a messy file.

use adarank::policy;
use std::path::PathBuf;

fn all_rank_files() -> Vec<PathBuf> {
    let mut files = Vec::new();
    for dir in [
        "examples",
        "tests/fixtures/policy",
        "tests/fixtures/policy/valid",
    ] {
        for e in std::fs::read_dir(dir).expect("dir") {
            let p = e.expect("entry").path();
            if p.extension().is_some_and(|e| e == "rank") {
                files.push(p);
            }
        }
    }
    files.sort();
    files
}

#[test]
fn fmt_is_idempotent_and_keeps_meaning() {
    let mut parsed = 0;
    for file in all_rank_files() {
        let src = std::fs::read_to_string(&file).unwrap();
        let Ok(before) = policy::parse(&src, "x.rank") else {
            assert!(policy::format(&src).is_err(), "{}", file.display());
            continue;
        };
        parsed += 1;
        let once = policy::format(&src).unwrap_or_else(|d| panic!("{}:\n{d}", file.display()));
        let twice = policy::format(&once).unwrap();
        assert_eq!(once, twice, "{}: fmt is not idempotent", file.display());
        let after = policy::parse(&once, "x.rank").unwrap();
        assert_eq!(before, after, "{}: fmt changed the meaning", file.display());
        // Comments survive.
        let count = |s: &str| s.lines().filter(|l| l.contains('#')).count();
        assert_eq!(
            count(&src),
            count(&once),
            "{}: comments lost",
            file.display()
        );
    }
    assert!(parsed >= 30, "only {parsed} files parsed");
}

#[test]
fn examples_are_formatted() {
    for file in all_rank_files()
        .into_iter()
        .filter(|f| f.starts_with("examples"))
    {
        let src = std::fs::read_to_string(&file).unwrap();
        assert_eq!(
            policy::format(&src).unwrap(),
            src,
            "{} is not in canonical layout; run `adarank fmt {}`",
            file.display(),
            file.display()
        );
    }
}

#[test]
fn canonical_layout_of_a_messy_file() {
    let src = r#"   # header comment
experiment   messy{model encoder{layers=2 hidden=32,heads=4}
data planted {ranks=[1,4,],seed=3}   # trailing


lora{targets=[q,v] budget=16
# about max_rank
max_rank=8}
train { steps = 2k, lr = 3e-3, }
allocator=plugin   "plugins/allocate.rhai"
phase a until steps 500 {every 100 step:reallocate,log}
phase b until eval_loss<0.5{}
phase c{ every 1 steps: log
  every 10 steps: evaluate # why
}
baseline   arm fixed{phase a{}}
arm x { lora.rank = { q: 2,
   # per kind
   v: 4 } }
seeds=[1,2,3]}
"#;
    let out = policy::format(src).unwrap();
    insta::assert_snapshot!(out);
    assert_eq!(policy::format(&out).unwrap(), out);
    assert_eq!(
        policy::parse(src, "m.rank").unwrap(),
        policy::parse(&out, "m.rank").unwrap()
    );
}

#[test]
fn syntax_errors_are_diagnostics() {
    let err = policy::format("experiment x { train { steps = } }").unwrap_err();
    let text = err.to_string();
    assert!(text.contains("<input>:1:"), "{text}");
    assert!(text.contains("expected"), "{text}");
}

#[test]
fn plugin_parameters_round_trip() {
    let src = r#"experiment p {
  complexity=plugin "spectral_gradient"{grad_weight=0.2
     w0_weight = 1   # why 1
  }
  allocator = plugin "log_rule" { alpha = 2k, mode = "x", on = true, }
  phase a until plugin "loss_plateau" {window=10} { every 5 steps: reallocate }
  phase b until plugin "loss_plateau" {}
  arm x { learner = plugin "learn_gates" { alpha_lr = 3e-2 } }
}
"#;
    let want = r#"experiment p {
  # why 1
  complexity = plugin "spectral_gradient" { grad_weight = 0.2, w0_weight = 1 }
  allocator = plugin "log_rule" { alpha = 2k, mode = "x", on = true }
  phase a until plugin "loss_plateau" { window = 10 } { every 5 steps: reallocate }
  phase b until plugin "loss_plateau" {}
  arm x {
    learner = plugin "learn_gates" { alpha_lr = 3e-2 }
  }
}
"#;
    let out = policy::format(src).unwrap();
    assert_eq!(out, want);
    assert_eq!(policy::format(&out).unwrap(), out);
    let parsed = policy::parse(src, "p.rank").unwrap();
    assert_eq!(parsed, policy::parse(&out, "p.rank").unwrap());
    // The parameters are part of the meaning: a changed value parses differently.
    let changed = out.replace("grad_weight = 0.2", "grad_weight = 0.3");
    assert_ne!(parsed, policy::parse(&changed, "p.rank").unwrap());
}
