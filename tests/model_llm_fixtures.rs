//! Tiny random `LlamaForCausalLM` (tied head, Llama 3 RoPE scaling, GQA) and `Qwen2ForCausalLM`
//! (own head, q/k/v biases, sharded bf16) loaded by hub name from the HF cache layout, against
//! transformers' logits (fixtures written by `scripts/make_llm_fixtures.py`; no PyTorch at test
//! time): every logit within 1e-5 (the fixture keeps 5 decimals).

use adarank::backend::cpu::Cpu;
use adarank::backend::Backend;
use adarank::data::pretrained::Pretrained;
use adarank::model::{Batch, Head, Model, Target, TrainMode};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::Arc;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/llm")
}

fn fixture(name: &str) -> Value {
    let text = std::fs::read_to_string(fixtures().join(name)).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn ids_of(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

fn lm_batch(ids: &[u32]) -> Batch {
    Batch {
        batch: 1,
        seq: ids.len(),
        ids: ids.to_vec(),
        type_ids: vec![],
        mask: vec![],
        target: Target::Tokens(vec![u32::MAX; ids.len()]),
    }
}

fn model<B: Backend>(be: Arc<B>, p: &Pretrained) -> Model<B> {
    Model::new(
        be,
        p.config.clone(),
        Head::LanguageModel,
        TrainMode::Lora(Default::default()),
        Some(&p.weights),
        1,
    )
    .unwrap()
}

fn tiny(name: &str, fixture_file: &str) {
    let hub = fixtures().join("hub");
    let dir = adarank::data::hf::resolve_in(name, &[hub]).unwrap();
    let p = adarank::data::hf_llm::load_llm(&dir).unwrap();
    let f = fixture(fixture_file);
    let mut m = model(Arc::new(Cpu::new()), &p);
    let v = p.config.vocab;
    let mut worst = 0.0f32;
    for (seq, want) in f["id_sequences"]
        .as_array()
        .unwrap()
        .iter()
        .zip(f["logits"].as_array().unwrap())
    {
        let ids = ids_of(seq);
        let rows: Vec<usize> = (0..ids.len()).collect();
        let got = m.logits_at(&lm_batch(&ids), &rows).unwrap();
        for (t, row) in want.as_array().unwrap().iter().enumerate() {
            let row = floats(row);
            for (j, w) in row.iter().enumerate() {
                worst = worst.max((got[t * v + j] - w).abs());
            }
        }
    }
    println!("{name}: max |Δ logit| vs transformers = {worst:.2e}");
    assert!(
        worst <= 1e-5,
        "{name}: logits differ from transformers by {worst}"
    );
}

#[test]
fn tiny_llama_from_the_hf_cache_matches_transformers() {
    tiny("adarank-test/tiny-llama", "tiny-llama.json");
}

#[test]
fn tiny_qwen2_sharded_bf16_matches_transformers() {
    tiny("adarank-test/tiny-qwen2", "tiny-qwen2.json");
}
