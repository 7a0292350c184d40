//! `--set key=value` overrides: applied to the base experiment before the arms, checked like
//! the file, errors pointing at the argument.

use adarank::policy::{self, LoraSpec, TrainLength};
use std::path::Path;

const FILE: &str = "tests/fixtures/policy/valid/small.rank";

fn load(sets: &[&str]) -> Result<policy::Policy, policy::Diagnostics> {
    let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
    policy::load(Path::new(FILE), &sets)
}

#[test]
fn overrides_change_the_base_and_the_arms() {
    let p = load(&["train.lr=1e-4", "lora.budget=12", "seeds=[7]"]).unwrap();
    assert_eq!(p.seeds, vec![7]);
    for arm in &p.arms {
        assert_eq!(arm.train.lr, 1e-4, "{}", arm.name);
    }
    let base = p.arm("adaptive").unwrap();
    assert_eq!(base.lora.on().unwrap().budget, Some(12));
    // The arm's own `lora = off` still wins over an override of a lora key.
    assert_eq!(p.arm("full").unwrap().lora, LoraSpec::Off);
}

#[test]
fn override_with_spaces_and_units() {
    let p = load(&["train.steps = 2k", "train.warmup=5"]).unwrap();
    assert_eq!(p.arms[0].train.length, TrainLength::Steps(2000));
    assert_eq!(p.arms[0].train.warmup, 5);
}

#[test]
fn override_error_points_at_the_argument() {
    let err = load(&["train.stpes=100"]).unwrap_err();
    let text = err.to_string();
    assert!(text.contains("--> --set:1:7"), "{text}");
    assert!(text.contains("train.stpes=100"), "{text}");
    assert!(text.contains("did you mean `steps`"), "{text}");
    insta::assert_snapshot!(text);
}

#[test]
fn override_syntax_error_points_at_the_argument() {
    let err = load(&["train.steps=", "lora.budget=9999"]).unwrap_err();
    let text = err.to_string();
    assert!(text.contains("--> --set:1:13"), "{text}");
    insta::assert_snapshot!(text);
}

#[test]
fn override_can_break_phase_bounds() {
    let err = load(&["train.steps=100"]).unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("after training ends (train.steps = 100)"),
        "{text}"
    );
}

#[test]
fn plain_override() {
    let p = load(&["train.batch=4"]).unwrap();
    assert_eq!(p.arms[0].train.batch, 4);
    assert_eq!(p.arms[0].train.length, TrainLength::Steps(200));
}
