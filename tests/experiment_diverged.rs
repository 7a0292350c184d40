//! A cell whose training goes non-finite stops as failed — never "done" with a NaN result — and
//! the cells finished before it keep their results. The checker refuses the values that cause
//! this (`tests/hostile/policies/`), so the plan here is changed after checking, as a library
//! caller or an edited plan could.

use adarank::experiment::run::{run, DeviceChoice, RunOptions};
use adarank::experiment::{CellStatus, RunDir};
use adarank::policy::LoraSpec;
use std::path::Path;

const POLICY: &str = r#"
experiment diverge {
  model encoder { layers = 1, hidden = 16, heads = 2, ffn = 32, vocab = 32, max_positions = 8 }
  data planted { ranks = [1, 2], samples = 256, eval_samples = 32, seq = 8, seed = 1 }
  lora { targets = [q, v], alpha = 8, init_rank = 2, max_rank = 4 }
  train { steps = 12, batch = 4, lr = 1e-2 }
  arm reckless { train.lr = 2e-2 }
}
"#;

#[test]
fn a_non_finite_cell_fails_and_the_finished_one_is_kept() {
    let mut policy = adarank::policy::load_str(POLICY, "diverge.rank", Path::new("."), &[])
        .unwrap_or_else(|d| panic!("{d}"));
    let arm = policy
        .arms
        .iter_mut()
        .find(|a| a.name == "reckless")
        .unwrap();
    // α = 1e308 is infinite in f32: the adapter's output is ∞ · 0 = NaN from the first step.
    if let LoraSpec::On(l) = &mut arm.lora {
        l.alpha = 1e308;
    }
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let opts = RunOptions {
        out: Some(out.clone()),
        device: DeviceChoice::Cpu,
        quiet: true,
        ..Default::default()
    };
    let e = format!("{:#}", run(Some(policy), &opts).unwrap_err());
    // The optimizer refuses a NaN gradient norm; the runner refuses a non-finite loss or
    // evaluation: either way the message names the step.
    assert!(
        e.contains("diverged at step")
            || e.contains("gave a loss of")
            || e.contains("is NaN at step"),
        "{e}"
    );
    assert!(e.contains("reckless"), "names the arm: {e}");

    let rd = RunDir::open(&out).unwrap();
    let s = rd.load_summary().unwrap();
    let done = s.cell("adaptive", 1).unwrap();
    assert_eq!(done.status, CellStatus::Done);
    assert!(done.metric.is_some_and(f64::is_finite));
    let bad = s.cell("reckless", 1).unwrap();
    assert_eq!(
        bad.status,
        CellStatus::Failed,
        "a NaN cell must not be done"
    );
    assert!(bad.metric.is_none());
    // Every logged record is finite (a NaN would read back as null and break the log).
    let m = rd.load_metrics().unwrap();
    assert_eq!(m.iter().filter(|r| r.arm == "adaptive").count(), 12);
    assert!(m.iter().all(|r| r.loss.is_finite()));
    let report = std::fs::read_to_string(rd.report()).unwrap();
    assert!(report.contains("Failed cells"), "{report}");
}
