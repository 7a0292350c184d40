//! A run directory whose stored plan does not say how its re-allocations resize
//! (`lora.resize`, absent from plans written before the plan recorded it) is not resumed under
//! this version's default: the cells left would train differently from the finished ones the
//! report pools them with. An arm that never resizes resumes as before.

use adarank::experiment::integrity::{sha256_hex, RunRecord, RUN_JSON};
use adarank::experiment::run::{run, DeviceChoice, Interrupted, RunOptions};
use adarank::experiment::{CellStatus, RunDir};
use std::path::Path;

const POLICY: &str = r#"
experiment unrecorded {
  model encoder { layers = 1, hidden = 16, heads = 2, ffn = 32, vocab = 32, max_positions = 8 }
  data planted { ranks = [0, 3, 1, 2], samples = 256, eval_samples = 16, seq = 8, seed = 2 }
  lora { targets = [q, v, ffn_in, ffn_out], alpha = 4, budget = 8, init_rank = 2, max_rank = 4 }
  train { steps = 12, batch = 4, lr = 1e-2 }
  complexity = plugin "spectral_gradient"
  allocator = plugin "log_rule"
  learner = plugin "learn_gates"
  phase warmup until step 4 {}
  phase adapt until step 8 { every 4 steps: reallocate }
  phase settle {}
  baseline arm fixed { phase adapt {} }
  seeds = [1]
}
"#;

fn opts() -> RunOptions {
    RunOptions {
        device: DeviceChoice::Cpu,
        quiet: true,
        ..Default::default()
    }
}

/// Rewrites `dir`'s policy.json without any arm's `lora.resize`, as a plan written before it
/// was recorded, and commits run.json to the rewritten file (as that version wrote both).
fn forget_resize(dir: &Path) {
    let path = dir.join("policy.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    for arm in v["arms"].as_array_mut().unwrap() {
        let on = arm["lora"]["on"].as_object_mut().expect("a LoRA arm");
        assert!(on.remove("resize").is_some(), "this version records it");
    }
    let bytes = serde_json::to_vec_pretty(&v).unwrap();
    std::fs::write(&path, &bytes).unwrap();
    let rec_path = dir.join(RUN_JSON);
    let mut rec: RunRecord =
        serde_json::from_str(&std::fs::read_to_string(&rec_path).unwrap()).unwrap();
    rec.policy_sha256 = sha256_hex(&bytes);
    std::fs::write(&rec_path, serde_json::to_vec_pretty(&rec).unwrap()).unwrap();
}

#[test]
fn an_arm_that_resizes_is_not_resumed_without_its_recorded_resize() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    let policy = adarank::policy::load_str(POLICY, "u.rank", Path::new("."), &[])
        .unwrap_or_else(|d| panic!("{d}"));
    let mut o = opts();
    o.out = Some(dir.clone());
    // Stopped inside the first cell (the adaptive arm's): nothing finished.
    o.stop_after_steps = Some(6);
    let e = run(Some(policy), &o).expect_err("the injected stop ends the run");
    assert!(e.downcast_ref::<Interrupted>().is_some(), "{e:#}");
    forget_resize(&dir);

    let mut o = opts();
    o.resume = Some(dir.clone());
    let e = run(None, &o).expect_err("resuming under today's default must be refused");
    let msg = format!("{e:#}");
    assert!(msg.contains("`lora.resize`"), "{msg}");
    assert!(msg.contains("adaptive") && !msg.contains("fixed"), "{msg}");
    assert!(msg.contains("adarank report"), "{msg}");

    // The fixed arm never resizes: it resumes and finishes; the adaptive cell stays unrun.
    let mut o = opts();
    o.resume = Some(dir.clone());
    o.arms = vec!["fixed".into()];
    run(None, &o).unwrap();
    let s = RunDir::open(&dir).unwrap().load_summary().unwrap();
    assert_eq!(s.cell("fixed", 1).map(|c| c.status), Some(CellStatus::Done));
    assert!(s
        .cell("adaptive", 1)
        .is_none_or(|c| c.status != CellStatus::Done));
}
