//! `adarank eval` on a finished run: every cell rebuilt from its folder reproduces the loss and
//! accuracy `results.csv` recorded, to the last bit (same backend, same evaluation set), for
//! AdaLoRA, fixed-rank LoRA and full fine-tuning alike; the run's own per-example predictions
//! agree with those the command writes; a cell folder without its final state is loaded from the
//! PEFT export instead, with the same predictions.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

fn adarank() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_adarank"));
    c.current_dir(env!("CARGO_MANIFEST_DIR"));
    c
}

fn run_ok(c: &mut Command) -> String {
    let o = c.output().unwrap();
    assert!(
        o.status.success(),
        "{:?} failed:\n{}\n{}",
        c,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).to_string()
}

/// `arm` → (column → value) from a CSV without quoted commas.
fn csv_rows(path: &Path, key: &[&str]) -> BTreeMap<String, BTreeMap<String, String>> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    lines
        .map(|l| {
            let row: BTreeMap<String, String> = header
                .iter()
                .zip(l.split(','))
                .map(|(h, v)| (h.to_string(), v.to_string()))
                .collect();
            let k = key
                .iter()
                .map(|k| row[*k].clone())
                .collect::<Vec<_>>()
                .join("/");
            (k, row)
        })
        .collect()
}

fn predictions(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn eval_reproduces_the_runs_results_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    run_ok(
        adarank()
            .args([
                "run",
                "tests/experiments/synthetic_eval.rank",
                "--quiet",
                "--device",
                "cpu",
                "--out",
            ])
            .arg(&run),
    );
    let stdout = run_ok(adarank().arg("eval").arg(&run).args(["--device", "cpu"]));
    assert!(stdout.contains("evaluation set: eval"), "{stdout}");

    let results = csv_rows(&run.join("results.csv"), &["arm", "seed"]);
    let evals = csv_rows(&run.join("eval/results-eval.csv"), &["arm", "seed"]);
    assert_eq!(results.len(), 3);
    for (cell, r) in &results {
        let e = &evals[cell];
        // The same f64, printed the same way: equal to the last bit.
        assert_eq!(e["accuracy"], r["eval_accuracy"], "{cell}: accuracy");
        assert_eq!(e["loss"], r["eval_loss"], "{cell}: loss");
        assert_eq!(e["examples"], "128");
        // The run's own predictions of its final evaluation are the ones eval writes.
        let (arm, seed) = cell.split_once('/').unwrap();
        let ours = predictions(&run.join(format!("predictions/{arm}-seed{seed}.jsonl")));
        let again = predictions(&run.join(format!("eval/{arm}-seed{seed}.eval.jsonl")));
        assert_eq!(ours, again, "{cell}");
        assert_eq!(ours.len(), 128);
        let correct = ours.iter().filter(|p| p["correct"] == true).count();
        assert_eq!(
            (correct as f64 / 128.0).to_string(),
            r["eval_accuracy"],
            "{cell}: the predictions' own accuracy"
        );
        assert_eq!(ours[0]["logits"].as_array().unwrap().len(), 3);
    }

    // A cell folder on its own, without the final state: loaded from the PEFT export.
    for arm in ["fixed", "adalora"] {
        let cell = tmp.path().join(format!("{arm}-copy"));
        std::fs::create_dir(&cell).unwrap();
        for f in [
            "adapter_model.safetensors",
            "adapter_config.json",
            "adarank.json",
        ] {
            std::fs::copy(run.join(format!("adapters/{arm}-seed1/{f}")), cell.join(f)).unwrap();
        }
        run_ok(adarank().arg("eval").arg(&cell).args(["--device", "cpu"]));
        let got = predictions(&cell.join(format!("eval/{arm}-seed1.eval.jsonl")));
        let want = predictions(&run.join(format!("predictions/{arm}-seed1.jsonl")));
        for (g, w) in got.iter().zip(&want) {
            assert_eq!(g["predicted"], w["predicted"], "{arm}: {g} vs {w}");
            let (gl, wl) = (
                g["logits"].as_array().unwrap(),
                w["logits"].as_array().unwrap(),
            );
            for (a, b) in gl.iter().zip(wl) {
                let (a, b) = (a.as_f64().unwrap(), b.as_f64().unwrap());
                // Plain LoRA: the same factors, bit for bit. AdaLoRA: λ folded into B rounds
                // differently.
                let tol = if arm == "fixed" { 0.0 } else { 1e-5 };
                assert!(
                    (a - b).abs() <= tol * (1.0 + b.abs()),
                    "{arm}: logit {a} vs {b}"
                );
            }
        }
    }
}

#[test]
fn eval_rejects_what_it_cannot_evaluate() {
    let tmp = tempfile::tempdir().unwrap();
    let o = adarank().arg("eval").arg(tmp.path()).output().unwrap();
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("neither a run directory"), "{err}");
    assert_eq!(err.matches("error:").count(), 1, "{err}");
}
