//! `adarank run examples/movie_sentiment.rank` through the runner: MiniLM from the fetched
//! assets on the movie-review sentences, one arm, a few steps on a small subset. Skips, printing
//! why, when the assets are missing — unless `ADARANK_REQUIRE_ASSETS=1`.

use adarank::data::assets;
use adarank::testkit;
use std::process::Command;

#[test]
fn movie_sentiment_runs_one_arm() {
    if !testkit::require_assets("movie_sentiment_runs_one_arm") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("movies");
    let o = Command::new(env!("CARGO_BIN_EXE_adarank"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("ADARANK_ASSETS", assets::assets_dir())
        .args([
            "run",
            "examples/movie_sentiment.rank",
            "--quiet",
            "--device",
            "cpu",
            "--arm",
            "lora_fixed",
            "--set",
            // The policy's phases need its 300 steps (uniform to 100, re-allocation to 250).
            "train.steps=300",
            "--set",
            "train.batch=2",
            "--set",
            "data.max_len=16",
            "--set",
            "data.train_samples=64",
            "--set",
            "data.eval_samples=32",
            "--out",
        ])
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    let s = std::fs::read_to_string(out.join("summary.json")).unwrap();
    let summary: serde_json::Value = serde_json::from_str(&s).unwrap();
    assert_eq!(summary["metric"]["name"], "accuracy");
    let cell = summary["cells"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["arm"] == "lora_fixed")
        .expect("cell lora_fixed");
    assert_eq!(cell["status"], "done", "{cell}");
    assert_eq!(cell["steps"], 300, "{cell}");
    let acc = cell["eval_accuracy"].as_f64().expect("eval_accuracy");
    assert!((0.0..=1.0).contains(&acc), "accuracy {acc}");
    assert_eq!(cell["metric"].as_f64(), Some(acc));
    let csv = std::fs::read_to_string(out.join("results.csv")).unwrap();
    assert!(csv.contains("lora_fixed"), "{csv}");

    let adapters: Vec<_> = std::fs::read_dir(out.join("adapters"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(adapters.len(), 1, "{adapters:?}");
    let a = &adapters[0];
    assert!(a.join("adapter_model.safetensors").is_file());
    let cfg = std::fs::read_to_string(a.join("adapter_config.json")).unwrap();
    assert!(cfg.contains(assets::MINILM), "{cfg}");
}
