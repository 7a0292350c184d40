//! Budgets in parameters: under `lora.param_budget` the fixed, layer-wise and adaptive arms of
//! `examples/paper_table.rank` end within 2% of each other in trainable parameters, and the
//! counts `adarank check` prints before a run are the counts the model reports after it
//! (oracle: `Model::trainable_params`, summed over the model's own parameter tensors).

use adarank::experiment::budget::{arm_params, mismatch};
use adarank::experiment::run::{run, DeviceChoice, RunOptions};
use adarank::experiment::{CellStatus, RunDir};
use std::path::Path;

fn load(file: &str) -> adarank::policy::Policy {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(file);
    adarank::policy::load(&path, &[]).unwrap_or_else(|d| panic!("{d}"))
}

#[test]
fn paper_table_arms_train_the_same_parameters_within_two_percent() {
    let policy = load("examples/paper_table.rank");
    let arms = ["adaptive", "lora_fixed", "layerwise", "no_complexity"];
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let opts = RunOptions {
        out: Some(out.clone()),
        device: DeviceChoice::Cpu,
        quiet: true,
        arms: arms.iter().map(|a| a.to_string()).collect(),
        seeds: vec![1],
        ..Default::default()
    };
    run(Some(policy.clone()), &opts).unwrap();
    let s = RunDir::open(&out).unwrap().load_summary().unwrap();
    let params: Vec<u64> = arms
        .iter()
        .map(|a| {
            let c = s.cell(a, 1).unwrap();
            assert_eq!(c.status, CellStatus::Done);
            c.trainable_params
        })
        .collect();
    let (lo, hi) = (params.iter().min().unwrap(), params.iter().max().unwrap());
    assert!(
        (*hi - *lo) as f64 <= 0.02 * *lo as f64,
        "trainable parameters {params:?} spread more than 2%"
    );
    // What `check` printed is what ran: exactly for the fixed arms, within the allocator's
    // rounding for the arms that allocate.
    for (a, ran) in arms.iter().zip(&params) {
        let plan = policy.arm(a).unwrap();
        let (plo, phi) = arm_params(plan).unwrap().total().unwrap();
        if plo == phi && !adarank::experiment::arm::reallocates(plan) {
            assert_eq!(*ran, plo, "{a}");
        } else {
            assert!(
                (*ran as f64 - plo as f64).abs() <= 0.02 * plo as f64,
                "{a}: {ran} vs {plo}"
            );
        }
    }
    // SoRA has no budget (its threshold decides what is left), so `check` rightly warns about
    // it; every budgeted arm agrees.
    let counts: Vec<_> = policy
        .arms
        .iter()
        .filter(|a| a.sora.is_none())
        .filter_map(arm_params)
        .collect();
    assert!(mismatch(&counts).is_none(), "{:?}", mismatch(&counts));
    let all: Vec<_> = policy.arms.iter().filter_map(arm_params).collect();
    assert!(mismatch(&all).is_some_and(|w| w.contains("sora")));
}

#[test]
fn check_warns_when_lora_arms_differ_in_cost() {
    // movie_sentiment shares a rank budget, not a parameter budget: layer-wise LoRA trains 21%
    // more adapter parameters than fixed rank, and the adaptive arm may land anywhere.
    let counts: Vec<_> = load("examples/movie_sentiment.rank")
        .arms
        .iter()
        .filter_map(arm_params)
        .collect();
    let w = mismatch(&counts).expect("a warning");
    assert!(
        w.contains("`layerwise` 313344") && w.contains("`lora_fixed` 258048"),
        "{w}"
    );
    // Full fine-tuning of MiniLM-L6 trains every weight: 22.7M, against 0.26M for rank 8.
    let full = counts.iter().find(|c| c.arm == "full_ft").unwrap();
    assert!(full.adapters.is_none() && full.total().unwrap().0 > 22_000_000);
}

#[test]
fn adalora_prunes_to_the_parameter_budget() {
    // paper_table with an AdaLoRA arm that starts at rank 6 and removes triplets for real: it
    // must end at the parameter budget like the other arms, not at a triplet count.
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/paper_table.rank");
    let text = std::fs::read_to_string(&path).unwrap().replace(
        "  seeds = [1, 2, 3, 4, 5]",
        "  arm adalora {
    adalora { init_rank = 6, tinit = 20, tfinal = 50, delta_t = 10, resize = true }
    allocator = plugin \"adalora\"
    complexity = none
    learner = none
    phase adapt {}
  }
  seeds = [1]",
    );
    let policy = adarank::policy::load_str(
        &text,
        &path.display().to_string(),
        path.parent().unwrap(),
        &[],
    )
    .unwrap_or_else(|d| panic!("{d}"));
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let opts = RunOptions {
        out: Some(out.clone()),
        device: DeviceChoice::Cpu,
        quiet: true,
        arms: vec!["adalora".into(), "lora_fixed".into()],
        ..Default::default()
    };
    run(Some(policy.clone()), &opts).unwrap();
    let s = RunDir::open(&out).unwrap().load_summary().unwrap();
    let (ada, fixed) = (
        s.cell("adalora", 1).unwrap(),
        s.cell("lora_fixed", 1).unwrap(),
    );
    assert_eq!(ada.status, CellStatus::Done);
    // 3,584 adapter parameters for both; AdaLoRA's kept λs add one per triplet.
    let gap = ada.trainable_params as f64 / fixed.trainable_params as f64 - 1.0;
    assert!(
        gap.abs() <= 0.02,
        "{} vs {}",
        ada.trainable_params,
        fixed.trainable_params
    );
    // And inside the range `check` printed.
    let (lo, hi) = arm_params(policy.arm("adalora").unwrap())
        .unwrap()
        .total()
        .unwrap();
    assert!(
        (lo..=hi).contains(&ada.trainable_params),
        "{} not in {lo}..={hi}",
        ada.trainable_params
    );
    // A triplet of the start (rank 6 everywhere costs 5,376) was really removed.
    let start: u64 = 6 * 2 * (4 * 64 + 2 * 96);
    assert!(ada.trainable_params < start);
}
