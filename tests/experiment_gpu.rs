//! `adarank run --device gpu`: the 40 steps of the tiny planted experiment on the GPU (wgpu)
//! backend end with the same training loss as on the CPU backend. Skips, printing why, when no
//! wgpu adapter exists — unless `ADARANK_REQUIRE_GPU=1`.

use std::path::Path;
use std::process::Command;

fn run(device: &str, out: &Path) -> serde_json::Value {
    let o = Command::new(env!("CARGO_BIN_EXE_adarank"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args([
            "run",
            "tests/experiments/planted_tiny.rank",
            "--quiet",
            "--arm",
            "fixed",
            "--seed",
            "1",
            "--device",
            device,
            "--out",
        ])
        .arg(out)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "--device {device}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let s = std::fs::read_to_string(out.join("summary.json")).unwrap();
    serde_json::from_str(&s).unwrap()
}

fn final_loss(summary: &serde_json::Value) -> f64 {
    let cell = summary["cells"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["arm"] == "fixed" && c["seed"] == 1)
        .expect("cell fixed/1");
    assert_eq!(cell["status"], "done", "{cell}");
    cell["final_train_loss"].as_f64().expect("final_train_loss")
}

#[test]
fn gpu_run_matches_cpu_run() {
    if adarank::testkit::test_gpu().is_none() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let cpu = run("cpu", &tmp.path().join("cpu"));
    let gpu = run("gpu", &tmp.path().join("gpu"));
    assert_eq!(gpu["env"]["backend"], "gpu", "{}", gpu["env"]);
    assert!(
        gpu["env"]["device"]
            .as_str()
            .is_some_and(|d| d.starts_with("gpu backend: ")),
        "{}",
        gpu["env"]
    );
    let (c, g) = (final_loss(&cpu), final_loss(&gpu));
    assert!(c.is_finite() && g.is_finite(), "cpu {c}, gpu {g}");
    assert!(
        (c - g).abs() <= 1e-3 * c.abs().max(g.abs()),
        "final training loss: cpu {c}, gpu {g}"
    );
}
