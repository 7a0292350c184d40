//! Our forward pass of all-MiniLM-L6-v2 against transformers' BertModel (PyTorch, float32):
//! last hidden states of a few sentences and a sentence pair, written by
//! scripts/make_fixture.py, on the CPU backend and on the GPU (wgpu) backend. Needs the assets
//! (and, for the GPU test, a wgpu adapter).

use adarank::backend::cpu::Cpu;
use adarank::backend::Backend;
use adarank::data::{assets, hf};
use adarank::model::{Batch, Head, LoraConfig, Model, Pooling, Target, TrainMode};
use adarank::testkit;
use serde_json::Value;
use std::path::Path;
use std::sync::Arc;

fn fixture() -> Value {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/data/minilm_hidden.json");
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn check_backend<B: Backend>(backend: Arc<B>, label: &str) {
    let ck = hf::load(assets::MINILM).unwrap();
    let head = Head::Classify {
        classes: 2,
        pooling: Pooling::Mean,
    };
    let mode = TrainMode::Lora(LoraConfig::default());
    let cfg = ck.config.model_config();
    let mut model = Model::new(backend, cfg, head, mode, Some(&ck.weights), 0).unwrap();
    let mut worst = 0f32;
    for case in fixture()["cases"].as_array().unwrap() {
        let ids: Vec<u32> = case["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect();
        let type_ids: Vec<u32> = case["type_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect();
        let want: Vec<f32> = case["last_hidden"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap() as f32)
            .collect();
        let batch = Batch {
            batch: 1,
            seq: ids.len(),
            mask: vec![1.0; ids.len()],
            ids,
            type_ids,
            target: Target::Classes(vec![0]),
        };
        let got = model.hidden_states(&batch).unwrap();
        assert_eq!(got.len(), want.len());
        let err = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        worst = worst.max(err);
        assert!(
            err < 1e-4,
            "{label}: {:?}: max |ours - transformers| = {err}",
            case["text"]
        );
    }
    eprintln!("{label}: max |ours - transformers| over the fixture = {worst:e}");
}

#[test]
fn minilm_hidden_states_match_transformers_cpu() {
    if !testkit::require_assets("minilm_hidden_states_match_transformers_cpu") {
        return;
    }
    check_backend(Arc::new(Cpu::new()), "cpu");
}

#[test]
fn minilm_hidden_states_match_transformers_gpu() {
    if !testkit::require_assets("minilm_hidden_states_match_transformers_gpu") {
        return;
    }
    let Some(gpu) = adarank::testkit::test_gpu() else {
        return;
    };
    check_backend(gpu, "gpu");
}
