//! The run's pre-flight memory check: a cell whose planned peak exceeds the device's memory is
//! refused before anything is allocated, at the policy's line and column of the setting that
//! makes it large, saying what it needs and what would fit.

use adarank::experiment::costs::{self, devices::DeviceSpec, preflight};
use adarank::policy::{self, Policy};
use std::path::Path;
use std::process::Command;

fn example(file: &str, set: &[&str]) -> Policy {
    let path = Path::new("examples").join(file);
    let set: Vec<String> = set.iter().map(|s| s.to_string()).collect();
    policy::load(&path, &set).unwrap_or_else(|d| panic!("{d}"))
}

fn peak(p: &Policy, arm: &str) -> f64 {
    let d = DeviceSpec::memory_only(f64::INFINITY, "");
    costs::arm_costs(p, arm, &d).unwrap().memory.peak.total()
}

/// A GPU of `memory` bytes: the ledger's peak alone counts against it (host buffers are in RAM).
fn gpu(memory: f64) -> DeviceSpec {
    DeviceSpec::gpu_memory_only(memory, "on the test GPU")
}

#[test]
fn a_cell_that_fits_passes() {
    let p = example("quickstart.rank", &[]);
    preflight(&p, &[], &DeviceSpec::memory_only(1e9, "in the test")).unwrap();
}

#[test]
fn an_evaluation_too_large_points_at_eval_samples() {
    // The quickstart evaluates 64 sequences at a time, four times its training batch. On a
    // device whose memory is the host's the figure is the cell's process peak: the ledger's
    // peak (2.73 MiB, which `plan_costs` holds to the ledger's measured peak) and the planted
    // task's host terms, named in the message (`policy_fuzz` holds the sum to measured RSS).
    let p = example("quickstart.rank", &[]);
    let e = preflight(&p, &[], &DeviceSpec::memory_only(2e6, "in the test"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("arm `adaptive` needs 5.46 MiB"), "{e}");
    assert!(e.contains("planted teacher 2.48 MiB"), "{e}");
    assert!(e.contains("more than the 1.91 MiB in the test"), "{e}");
    assert!(e.contains("examples/quickstart.rank:6:"), "{e}");
    assert!(e.contains("eval_samples = 128"), "{e}");
    assert!(e.contains("activation"), "{e}");
    assert!(
        e.contains("evaluation pass (64 sequences × 8 tokens)"),
        "{e}"
    );
}

#[test]
fn activations_too_large_point_at_the_batch_and_say_what_fits() {
    // 1.3B parameters; with a small evaluation set the training step is the peak.
    let p = example("paper_scale.rank", &["data.eval_samples=16"]);
    let need = peak(&p, "adaptive");
    let e = preflight(&p, &["adaptive".into()], &gpu(need * 0.8))
        .unwrap_err()
        .to_string();
    assert!(e.contains("examples/paper_scale.rank:26:"), "{e}");
    assert!(e.contains("batch = 32"), "{e}");
    // A halved micro-batch with accumulation keeping the effective batch of 32.
    assert!(
        e.contains("`train.batch = 16` with `train.accum = 2`"),
        "{e}"
    );
    // The suggestion is right: that setting fits.
    let smaller = example(
        "paper_scale.rank",
        &["data.eval_samples=16", "train.batch=16", "train.accum=2"],
    );
    assert!(peak(&smaller, "adaptive") <= need * 0.8);
    // Below what the evaluation pass needs, no micro-batch helps, and the help says why.
    let e = preflight(&p, &["adaptive".into()], &gpu(need * 0.6))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(
            "a smaller micro-batch does not help: the evaluation pass (16 sequences × 128 tokens)"
        ),
        "{e}"
    );
}

#[test]
fn full_fine_tuning_too_large_points_at_lora_off() {
    let p = example("paper_scale.rank", &["data.eval_samples=16"]);
    let lora = peak(&p, "lora_fixed");
    let e = preflight(&p, &[], &gpu(lora * 1.01))
        .unwrap_err()
        .to_string();
    assert!(e.contains("arm `full_ft`"), "{e}");
    assert!(e.contains("lora = off"), "{e}");
    assert!(e.contains("full fine-tuning holds every weight"), "{e}");
}

#[test]
fn run_refuses_before_allocating_and_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    // 4096 sequences of 128 tokens through a 1.3B model: over a terabyte of activations.
    let r = Command::new(env!("CARGO_BIN_EXE_adarank"))
        .args([
            "run",
            "examples/paper_scale.rank",
            "--device",
            "cpu",
            "--set",
            "data.eval_samples=16",
            "--set",
            "train.batch=4096",
            "--out",
            out.to_str().unwrap(),
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&r.stderr);
    assert_eq!(r.status.code(), Some(2), "{err}");
    assert!(err.contains("arm `adaptive` needs"), "{err}");
    assert!(err.contains("available on this machine"), "{err}");
    assert!(
        err.contains("--set:1:13"),
        "the --set that sets the batch: {err}"
    );
    assert!(!out.exists(), "a refused run leaves no run directory");
}
