//! Learning-rate sweeps: each candidate runs once (first seed) and is scored on the dev split,
//! the best dev score picks the rate, every seed trains at it and is scored on the test split.
//! Oracle: the recorded dev scores themselves (the choice must be their best) and the seed
//! cells' own records (their rate, their split), plus the identity "candidate at the chosen rate
//! with seed 1 = the seed-1 cell up to the evaluation split".

use adarank::experiment::run::{run, DeviceChoice, RunOptions};
use adarank::experiment::{CellStatus, MetricRecord, RunDir};
use std::path::Path;

const POLICY: &str = r#"
experiment sweep_check {
  model encoder { layers = 1, hidden = 16, heads = 2, ffn = 32, vocab = 32, max_positions = 8 }
  data planted { ranks = [0, 3, 1, 2], samples = 256, eval_samples = 32, seq = 8, seed = 2 }
  lora { targets = [q, v, ffn_in, ffn_out], alpha = 4, init_rank = 2, max_rank = 4 }
  train { steps = 30, batch = 8, lr = sweep [1e-4, 3e-2] }
  baseline arm fixed {}
  arm full { lora = off, train.lr = 1e-3 }
  seeds = [1, 2]
}
"#;

#[test]
fn sweep_chooses_on_dev_and_trains_every_seed_at_the_choice() {
    let policy = adarank::policy::load_str(POLICY, "sweep.rank", Path::new("."), &[])
        .unwrap_or_else(|d| panic!("{d}"));
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let opts = RunOptions {
        out: Some(out.clone()),
        device: DeviceChoice::Cpu,
        quiet: true,
        ..Default::default()
    };
    run(Some(policy), &opts).unwrap();
    let rd = RunDir::open(&out).unwrap();
    let s = rd.load_summary().unwrap();

    // The base arm and `fixed` sweep; `full` sets its own single rate and does not.
    assert_eq!(s.lr_choices.len(), 2, "{:?}", s.lr_choices);
    assert!(s.lr_choice("full").is_none());
    for c in &s.lr_choices {
        assert_eq!((c.seed, c.split.as_str()), (1, "dev"));
        assert_eq!(c.candidates.len(), 2);
        let scores: Vec<f64> = c.candidates.iter().map(|k| k.metric.unwrap()).collect();
        // eval loss: lower is better.
        let best = if scores[0] <= scores[1] { 1e-4 } else { 3e-2 };
        assert_eq!(c.chosen, Some(best));
        for seed in [1, 2] {
            let cell = s.cell(&c.arm, seed).unwrap();
            assert_eq!(cell.status, CellStatus::Done);
            assert_eq!(cell.lr, best);
            assert_eq!(cell.eval_split, "test");
            assert_eq!(cell.eval_examples, 32);
        }
        // The candidate at the chosen rate trained exactly as the seed-1 cell did: same step
        // losses, a different (dev vs test) evaluation.
        let m: Vec<MetricRecord> = rd.load_metrics().unwrap();
        let losses = |arm: &str| -> Vec<u64> {
            m.iter()
                .filter(|r| r.arm == arm && r.seed == 1)
                .map(|r| r.loss.to_bits())
                .collect()
        };
        let cand = format!("{}@lr={best:e}", c.arm);
        assert_eq!(losses(&cand), losses(&c.arm));
        let k = c.candidates.iter().find(|k| k.lr == best).unwrap();
        assert_ne!(k.metric, s.cell(&c.arm, 1).unwrap().metric);
    }
    // The two candidates are far apart: the chosen one is clearly better on dev.
    let report = std::fs::read_to_string(rd.report()).unwrap();
    assert!(report.contains("## Learning-rate selection"), "{report}");
    assert!(report.contains("(chosen from 1e-4, 3e-2)"), "{report}");
    assert!(s.cell("full", 1).unwrap().lr == 1e-3);
}

/// The progress lines count the sweep's candidates among the cells: `(k/N)` never passes N,
/// and the last cell is N of N (the candidates run as cells of their own before the seeds).
#[test]
fn progress_counts_the_sweep_candidates_among_the_cells() {
    let tmp = tempfile::tempdir().unwrap();
    let policy = tmp.path().join("sweep.rank");
    std::fs::write(&policy, POLICY).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_adarank"))
        .args(["run", "--device", "cpu", "--out"])
        .arg(tmp.path().join("run"))
        .arg(&policy)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    // Two sweeping arms × (2 candidates + 2 seeds) + `full`'s 2 seeds.
    let counts: Vec<(u64, u64)> = err
        .lines()
        .filter_map(|l| {
            let inner = l.split_once(" (")?.1.split_once(")]")?.0;
            let (k, n) = inner.split_once('/')?;
            Some((k.parse().ok()?, n.parse().ok()?))
        })
        .collect();
    assert!(!counts.is_empty(), "{err}");
    assert!(counts.iter().all(|&(k, n)| n == 10 && k <= n), "{counts:?}");
    assert_eq!(counts.last(), Some(&(10, 10)), "{err}");
}
