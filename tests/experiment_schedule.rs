//! The schedule as the runner applies it: `train.eval_every` writes evaluations into
//! metrics.jsonl, allocations.jsonl holds every re-allocation with α, β and C at the steps the
//! static timeline (`adarank check --plan`) announces.

use adarank::experiment::arm::timeline;
use adarank::experiment::runner::{run, DeviceChoice, RunOptions};
use adarank::experiment::RunDir;
use std::path::Path;

fn run_tiny(overrides: &[&str]) -> (adarank::policy::Policy, RunDir, tempfile::TempDir) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/experiments/planted_tiny.rank");
    let sets: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
    let policy = adarank::policy::load(&path, &sets).unwrap_or_else(|d| panic!("{d}"));
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let opts = RunOptions {
        out: Some(out.clone()),
        device: DeviceChoice::Cpu,
        quiet: true,
        arms: vec!["adaptive".into(), "full".into()],
        seeds: vec![1],
        ..Default::default()
    };
    run(Some(policy.clone()), &opts).unwrap();
    (policy, RunDir::open(&out).unwrap(), tmp)
}

#[test]
fn eval_every_writes_evaluations_at_its_multiples_and_allocations_follow_the_timeline() {
    let (policy, rd, _tmp) = run_tiny(&["train.eval_every=20", "train.steps=60"]);
    let metrics = rd.load_metrics().unwrap();
    for arm in ["adaptive", "full"] {
        let evals: Vec<u64> = metrics
            .iter()
            .filter(|m| m.arm == arm && m.eval_loss.is_some())
            .map(|m| m.step)
            .collect();
        // 20 and 40 by `eval_every`; 60 is the last step's own evaluation.
        assert_eq!(evals, vec![20, 40, 60], "arm {arm}");
        let steps: Vec<u64> = metrics
            .iter()
            .filter(|m| m.arm == arm)
            .map(|m| m.step)
            .collect();
        assert_eq!(steps, (1..=60).collect::<Vec<_>>(), "one record per step");
    }
    let allocs = rd.load_ranks().unwrap();
    let arm = policy.arm("adaptive").unwrap();
    let planned: Vec<u64> = timeline(arm)
        .events
        .iter()
        .filter(|e| e.action == "reallocate" || e.action == "finalize")
        .map(|e| e.step)
        .collect();
    assert_eq!(planned, vec![10, 20, 30]);
    let mine: Vec<_> = allocs.iter().filter(|r| r.arm == "adaptive").collect();
    let steps: Vec<u64> = mine.iter().map(|r| r.step).collect();
    assert_eq!(steps, [vec![0], planned].concat());
    for r in &mine[1..] {
        assert!(r.alpha.is_some() && r.beta.is_some(), "{:?}", r.allocation);
        assert_eq!(r.budget, Some(24));
        assert_eq!(r.total(), 24);
        assert!(r
            .slots
            .iter()
            .all(|s| s.complexity.is_some_and(|c| c > 0.0)));
    }
    assert_eq!(mine.last().unwrap().reason, "finalize");
    // The evaluation records carry the metrics of the model as it was at that step.
    let last = metrics.iter().rfind(|m| m.arm == "adaptive").unwrap();
    let summary = rd.load_summary().unwrap();
    let cell = summary.cell("adaptive", 1).unwrap();
    assert_eq!(last.eval_loss, cell.eval_loss);
}
