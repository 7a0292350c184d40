//! The main-job command through the binary: `adarank run examples/quickstart.rank` makes a run
//! directory with report.md, plots and PEFT adapters; `adarank report` rebuilds it.

use std::path::Path;
use std::process::Command;

fn adarank() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_adarank"));
    c.current_dir(env!("CARGO_MANIFEST_DIR"));
    c
}

#[test]
fn quickstart_makes_report_plots_and_adapters() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("qs");
    let o = adarank()
        .args([
            "run",
            "examples/quickstart.rank",
            "--quiet",
            "--device",
            "cpu",
            "--out",
        ])
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for f in [
        "report.md",
        "results.csv",
        "summary.json",
        "env.json",
        "policy.rank",
        "metrics.jsonl",
        "allocations.jsonl",
        "plots/allocations-adaptive.svg",
        "plots/loss.svg",
        "plots/final_ranks.svg",
    ] {
        assert!(out.join(f).exists(), "{f} missing");
    }
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(report.contains("| method | arm | eval_loss (mean ± 95% CI) | std | peak memory | wall time | trainable params | tokens/s | seeds |"), "{report}");
    assert!(
        report.contains("evaluated on 128 examples of the test split"),
        "{report}"
    );
    let adapters: Vec<_> = std::fs::read_dir(out.join("adapters")).unwrap().collect();
    assert_eq!(adapters.len(), 8, "one folder per cell");
    for a in adapters {
        let a = a.unwrap().path();
        // Every cell keeps its final state and what it is; LoRA cells also the PEFT export.
        assert!(a.join("final_state.safetensors").exists() && a.join("adarank.json").exists());
        let lora = !a
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("full-");
        assert_eq!(
            a.join("adapter_model.safetensors").exists() && a.join("adapter_config.json").exists(),
            lora,
            "{}",
            a.display()
        );
    }

    // `adarank report` rebuilds the same report from the directory.
    std::fs::remove_file(out.join("report.md")).unwrap();
    let o = adarank().arg("report").arg(&out).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        std::fs::read_to_string(out.join("report.md")).unwrap(),
        report
    );
}

#[test]
fn run_without_a_file_runs_the_embedded_quickstart() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("q");
    let o = adarank()
        .args([
            "run",
            "--quiet",
            "--arm",
            "fixed",
            "--seed",
            "1",
            "--set",
            "train.lr=0.005",
            "--out",
        ])
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let s = std::fs::read_to_string(out.join("summary.json")).unwrap();
    assert!(s.contains("\"experiment\": \"quickstart\""));
}

#[test]
fn bad_flags_are_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let o = adarank()
        .args([
            "run",
            "examples/quickstart.rank",
            "--quiet",
            "--arm",
            "nosuch",
            "--out",
        ])
        .arg(tmp.path().join("x"))
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("--arm nosuch: no such arm"));
    let o = adarank()
        .args(["report", "/nonexistent/run"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&o.stderr).contains("not a run directory"));
    assert!(Path::new(env!("CARGO_BIN_EXE_adarank")).exists());
}
