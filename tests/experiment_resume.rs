//! Killing a run part-way (an injected stop after N steps) and resuming it gives exactly the
//! metrics of an uninterrupted run on the CPU backend: finished cells are skipped, the
//! interrupted cell restarts from its last checkpoint.

use adarank::experiment::run::{run, DeviceChoice, Interrupted, RunOptions};
use adarank::experiment::{CellStatus, MetricRecord, RankRecord, RunDir};
use std::path::Path;

const POLICY: &str = r#"
experiment resume_check {
  model encoder { layers = 1, hidden = 16, heads = 2, ffn = 32, vocab = 32, max_positions = 8 }
  data planted { ranks = [0, 3, 1, 2], samples = 512, eval_samples = 32, seq = 8, seed = 2 }
  lora { targets = [q, v, ffn_in, ffn_out], alpha = 4, budget = 8, init_rank = 2, max_rank = 4 }
  train { steps = 24, batch = 4, lr = 1e-2, checkpoint_every = 5 }
  complexity = plugin "spectral_gradient"
  allocator = plugin "log_rule"
  learner = plugin "learn_gates"
  phase warmup until step 6 {}
  phase adapt until step 18 { every 4 steps: reallocate }
  phase settle {}
  baseline arm fixed { phase adapt {} }
  seeds = [1, 2]
}
"#;

fn opts(out: &Path) -> RunOptions {
    RunOptions {
        out: Some(out.to_path_buf()),
        device: DeviceChoice::Cpu,
        quiet: true,
        ..Default::default()
    }
}

fn policy() -> adarank::policy::Policy {
    adarank::policy::load_str(POLICY, "resume.rank", Path::new("."), &[])
        .unwrap_or_else(|d| panic!("{d}"))
}

/// Per-step (arm, seed, step, loss bits), allocation records, and per-cell (arm, seed, final
/// loss bits). The allocations' real numbers (C_i, α, β, scores) are compared to 12 significant
/// digits: the engine's f64 state passes through the checkpoint's JSON, whose parser may round
/// the last bit; everything else is compared exactly.
type Logs = (
    Vec<(String, u64, u64, u64)>,
    Vec<String>,
    Vec<(String, u64, Option<u64>)>,
);

fn rounded(r: &RankRecord) -> String {
    let f = |x: Option<f64>| x.map(|v| format!("{v:.12e}"));
    let slots: Vec<_> = r
        .slots
        .iter()
        .map(|s| {
            (
                &s.name,
                s.before,
                s.after,
                s.cost,
                f(s.complexity),
                f(s.score),
            )
        })
        .collect();
    format!(
        "{} {} {} {} {:?} {:?} {:?} {:?} {}",
        r.arm,
        r.seed,
        r.step,
        r.reason,
        r.budget,
        f(r.alpha),
        f(r.beta),
        slots,
        r.resized
    )
}

fn logs(dir: &Path) -> Logs {
    let rd = RunDir::open(dir).unwrap();
    let m: Vec<MetricRecord> = rd.load_metrics().unwrap();
    let mut steps: Vec<_> = m
        .iter()
        .map(|r| (r.arm.clone(), r.seed, r.step, r.loss.to_bits()))
        .collect();
    steps.sort();
    let mut ranks = rd.load_ranks().unwrap();
    ranks.sort_by(|a, b| (&a.arm, a.seed, a.step).cmp(&(&b.arm, b.seed, b.step)));
    let ranks: Vec<String> = ranks.iter().map(rounded).collect();
    let s = rd.load_summary().unwrap();
    let cells = s
        .cells
        .iter()
        .map(|c| {
            assert_eq!(c.status, CellStatus::Done, "{c:?}");
            (c.arm.clone(), c.seed, c.metric.map(f64::to_bits))
        })
        .collect();
    (steps, ranks, cells)
}

fn killed_and_resumed(stops: &[u64]) {
    let tmp = tempfile::tempdir().unwrap();
    let whole = tmp.path().join("whole");
    run(Some(policy()), &opts(&whole)).unwrap();

    let cut = tmp.path().join("cut");
    let mut first = true;
    for &n in stops {
        let mut o = opts(&cut);
        o.stop_after_steps = Some(n);
        let r = if first {
            run(Some(policy()), &o)
        } else {
            o.out = None;
            o.resume = Some(cut.clone());
            run(None, &o)
        };
        first = false;
        let e = r.expect_err("an injected stop must end the run early");
        assert!(e.downcast_ref::<Interrupted>().is_some(), "{e:#}");
    }
    let mut o = opts(&cut);
    o.out = None;
    o.resume = Some(cut.clone());
    run(None, &o).unwrap();

    let (a_steps, a_ranks, a_cells) = logs(&whole);
    let (b_steps, b_ranks, b_cells) = logs(&cut);
    assert_eq!(a_cells, b_cells, "final metrics differ after resume");
    assert_eq!(a_steps.len(), 4 * 24);
    assert_eq!(a_steps, b_steps, "per-step losses differ after resume");
    assert_eq!(a_ranks, b_ranks, "rank trajectories differ after resume");
}

#[test]
fn kill_mid_adaptive_cell_then_resume_matches_uninterrupted() {
    // 13: inside the first cell, between checkpoints at 10 and 15, after a re-allocation.
    killed_and_resumed(&[13]);
}

#[test]
fn two_kills_across_cells_then_resume_matches_uninterrupted() {
    // 31: the second cell's step 7 (the first cell done); then 22 more: the third cell's step 5.
    killed_and_resumed(&[31, 22]);
}

#[test]
fn resume_of_a_missing_directory_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let mut o = opts(tmp.path());
    o.resume = Some(tmp.path().join("nope"));
    let e = run(None, &o).unwrap_err();
    assert!(format!("{e:#}").contains("not a run directory"), "{e:#}");
}
