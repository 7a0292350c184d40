//! A plugin error mid-run stops the run with the plugin's message, after the run directory has
//! kept everything done so far; the summary says which cell failed.

use adarank::experiment::run::{run, DeviceChoice, RunOptions};
use adarank::experiment::{CellStatus, RunDir};
use std::path::Path;

#[test]
fn plugin_error_stops_run_and_keeps_finished_work() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/experiments/failing_plugin.rank");
    let policy = adarank::policy::load(&path, &[]).unwrap_or_else(|d| panic!("{d}"));
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let opts = RunOptions {
        out: Some(out.clone()),
        device: DeviceChoice::Cpu,
        quiet: true,
        ..Default::default()
    };
    let e = run(Some(policy), &opts).unwrap_err();
    let msg = format!("{e:#}");
    assert!(msg.contains("complexity exploded at step 20"), "{msg}");
    assert!(msg.contains("exploding"), "names the arm: {msg}");

    let rd = RunDir::open(&out).unwrap();
    let s = rd.load_summary().unwrap();
    let fixed = s.cell("fixed", 1).unwrap();
    assert_eq!(fixed.status, CellStatus::Done);
    assert!(fixed.metric.is_some());
    let bad = s.cell("exploding", 1).unwrap();
    assert_eq!(bad.status, CellStatus::Failed);
    assert!(bad
        .error
        .as_deref()
        .unwrap()
        .contains("complexity exploded at step 20"));
    // Steps 1..=19 of the failing cell are logged; step 20 failed inside its hook.
    let m = rd.load_metrics().unwrap();
    assert_eq!(m.iter().filter(|r| r.arm == "fixed").count(), 30);
    assert_eq!(
        m.iter()
            .filter(|r| r.arm == "exploding")
            .map(|r| r.step)
            .max(),
        Some(19)
    );
    let report = std::fs::read_to_string(rd.report()).unwrap();
    assert!(
        report.contains("Failed cells") && report.contains("complexity exploded"),
        "{report}"
    );
    assert!(rd
        .adapters("fixed", 1)
        .join("adapter_model.safetensors")
        .exists());
}
