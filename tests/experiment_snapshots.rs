//! Small deterministic experiments (tests/experiments/*.rank) on the CPU backend: their rank
//! trajectories and rounded result tables are insta snapshots. Wall time and tokens/s are left
//! out; figures are rounded so float noise cannot break them.

use adarank::experiment::report::{ablation_table, main_table, paired_table, rank_trajectories};
use adarank::experiment::run::{run, DeviceChoice, RunOptions};
use adarank::experiment::{CellStatus, RunDir};
use std::path::Path;

fn run_experiment(file: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/experiments")
        .join(file);
    let policy = adarank::policy::load(&path, &[]).unwrap_or_else(|d| panic!("{d}"));
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
    assert!(s.cells.iter().all(|c| c.status == CellStatus::Done));
    let mut text = String::new();
    text.push_str(&main_table(&s, Some(3)));
    if let Some(t) = paired_table(&s, Some(3)) {
        text.push('\n');
        text.push_str(&t);
    }
    if let Some(t) = ablation_table(&s, Some(3)) {
        text.push('\n');
        text.push_str(&t);
    }
    text.push('\n');
    text.push_str(&rank_trajectories(&rd.load_ranks().unwrap()));
    text
}

#[test]
fn planted_tiny() {
    insta::assert_snapshot!(run_experiment("planted_tiny.rank"));
}

#[test]
fn synthetic_adalora() {
    insta::assert_snapshot!(run_experiment("synthetic_adalora.rank"));
}
