//! The schedule as the runner applies it: `train.eval_every` writes evaluations into
//! metrics.jsonl, allocations.jsonl holds every re-allocation with α, β and C at the steps the
//! static timeline (`adarank check --plan`) announces.

use adarank::experiment::arm::timeline;
use adarank::experiment::run::{run, DeviceChoice, RunOptions};
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
    // The decisions are the timeline's; each one fades in over `lora.fade` (10) steps and its
    // cut is recorded by the engine when that many steps have passed.
    let all: Vec<_> = allocs.iter().filter(|r| r.arm == "adaptive").collect();
    let (cuts, mine): (Vec<_>, Vec<_>) = all.into_iter().partition(|r| r.reason == "cut");
    let steps: Vec<u64> = mine.iter().map(|r| r.step).collect();
    assert_eq!(steps, [vec![0], planned].concat());
    let fades: Vec<u64> = mine
        .iter()
        .filter(|r| r.reason == "fade")
        .map(|r| r.step + 10)
        .collect();
    let cut_steps: Vec<u64> = cuts.iter().map(|r| r.step).collect();
    assert_eq!(cut_steps, fades, "a cut 10 steps after each fade");
    // ... and the timeline announces them.
    let announced: Vec<u64> = timeline(arm)
        .events
        .iter()
        .filter(|e| e.action == "cut")
        .map(|e| e.step)
        .collect();
    assert_eq!(
        announced, cut_steps,
        "check --plan lists the cuts the run makes"
    );
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

/// AdaLoRA re-allocates on its own budget schedule, whatever the phases say: the static
/// timeline (`adarank check --plan`) lists its budget steps as `mask` events and none of the
/// phases' `reallocate`s, and the run's allocations fall on exactly those steps.
#[test]
fn adalora_timeline_is_its_budget_steps_and_the_run_follows_it() {
    let text = r#"
experiment adalora_phases {
  model encoder { layers = 2, hidden = 32, heads = 4, ffn = 64, vocab = 64, max_positions = 16 }
  data synthetic { classes = 3, samples = 256, eval_samples = 32, seq = 16, seed = 5 }
  lora { targets = [q, v], alpha = 8, init_rank = 4, max_rank = 8 }
  train { steps = 30, batch = 8, lr = 5e-3, checkpoint_every = 12 }
  adalora { init_rank = 6, target_rank = 3, tinit = 5, tfinal = 5, delta_t = 5 }

  phase warm until step 8 {}
  phase adapt until step 20 { every 4 steps: reallocate }
  phase settle {}

  baseline arm adalora {}
  seeds = [1]
}
"#;
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("adalora_phases.rank");
    std::fs::write(&path, text).unwrap();
    let policy = adarank::policy::load(&path, &[]).unwrap_or_else(|d| panic!("{d}"));
    let arm = policy.arm("adalora").unwrap();
    let events: Vec<(u64, String, String)> = timeline(arm)
        .events
        .into_iter()
        .map(|e| (e.step, e.phase, e.action))
        .collect();
    let masks: Vec<u64> = events
        .iter()
        .filter(|e| e.2 == "mask")
        .map(|e| e.0)
        .collect();
    // ΔT multiples in (tinit, T − tfinal], then the final phase's first step.
    assert_eq!(masks, [10, 15, 20, 25, 26]);
    assert!(
        events
            .iter()
            .all(|e| e.2 != "reallocate" && e.2 != "finalize"),
        "{events:?}"
    );
    let checkpoints: Vec<u64> = events
        .iter()
        .filter(|e| e.2 == "checkpoint")
        .map(|e| e.0)
        .collect();
    assert_eq!(checkpoints, [12, 24]);

    let out = tmp.path().join("run");
    let opts = RunOptions {
        out: Some(out.clone()),
        device: DeviceChoice::Cpu,
        quiet: true,
        ..Default::default()
    };
    run(Some(policy.clone()), &opts).unwrap();
    let ranks = RunDir::open(&out).unwrap().load_ranks().unwrap();
    let ranks: Vec<_> = ranks.iter().filter(|r| r.arm == "adalora").collect();
    let steps: Vec<u64> = ranks
        .iter()
        .filter(|r| r.step > 0)
        .map(|r| r.step)
        .collect();
    assert_eq!(steps, masks);
    assert!(ranks
        .iter()
        .filter(|r| r.step > 0)
        .all(|r| r.reason == "mask"));
}
