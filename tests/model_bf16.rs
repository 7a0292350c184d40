//! bf16 frozen weights through the model and the policy language:
//! - all-MiniLM-L6-v2 with bf16 frozen weights against the same model in f32 (the oracle), on
//!   the fixture sentences (needs the assets): max |Δ| < 1e-2 on both backends (measured 8.3e-3
//!   on each, mean 1.1e-3). The GPU widens the weights and keeps activations f32; the CPU's
//!   bf16 dot products take each activation as two bf16 (hi + lo, ~16 significant bits), so
//!   only the weights' rounding shows. The fallback for CPUs without AVX-512 BF16 computes the
//!   same products, so the figures hold on any CPU;
//! - the ledger's frozen bytes roughly halved (the vectors — norms, biases — stay f32);
//! - a LoRA training step in bf16 tracks the f32 one (random small model, no assets);
//! - `train { weights = bf16 }` reaches the arm's LoRA settings.

use adarank::adapter::ModuleKind;
use adarank::backend::cpu::Cpu;
use adarank::backend::{AdamW, Backend, DType, MemKind};
use adarank::data::{assets, hf};
use adarank::experiment::arm::train_mode;
use adarank::model::{
    Batch, Flavour, Head, LoraConfig, Model, ModelConfig, Pooling, Target, TrainMode,
};
use adarank::testkit;
use serde_json::Value;
use std::path::Path;
use std::sync::Arc;

fn fixture_batches() -> Vec<Batch> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/data/minilm_hidden.json");
    let v: Value = serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap();
    let ids = |case: &Value, key: &str| -> Vec<u32> {
        case[key]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect()
    };
    v["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|case| {
            let i = ids(case, "ids");
            Batch {
                batch: 1,
                seq: i.len(),
                mask: vec![1.0; i.len()],
                type_ids: ids(case, "type_ids"),
                ids: i,
                target: Target::Classes(vec![0]),
            }
        })
        .collect()
}

fn lora(frozen: DType) -> TrainMode {
    TrainMode::Lora(LoraConfig {
        frozen,
        ..LoraConfig::default()
    })
}

/// Max and mean |bf16 − f32| of MiniLM's last hidden states over the fixture, and the frozen
/// bytes of both models.
fn minilm_gap<B: Backend>(be: Arc<B>) -> (f32, f32, u64, u64) {
    let ck = hf::load(assets::MINILM).unwrap();
    let head = Head::Classify {
        classes: 2,
        pooling: Pooling::Mean,
    };
    let cfg = ck.config.model_config();
    let (mut worst, mut sum, mut count) = (0f32, 0f64, 0usize);
    let mut m32 = Model::new(
        be.clone(),
        cfg.clone(),
        head,
        lora(DType::F32),
        Some(&ck.weights),
        0,
    )
    .unwrap();
    let f32_frozen = be.ledger().snapshot().current_of(MemKind::Frozen);
    let mut m16 = Model::new(
        be.clone(),
        cfg,
        head,
        lora(DType::Bf16),
        Some(&ck.weights),
        0,
    )
    .unwrap();
    let both = be.ledger().snapshot().current_of(MemKind::Frozen);
    for b in fixture_batches() {
        let (a, c) = (
            m32.hidden_states(&b).unwrap(),
            m16.hidden_states(&b).unwrap(),
        );
        let err = a
            .iter()
            .zip(&c)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        worst = worst.max(err);
        sum += a
            .iter()
            .zip(&c)
            .map(|(x, y)| (x - y).abs() as f64)
            .sum::<f64>();
        count += a.len();
    }
    (
        worst,
        (sum / count as f64) as f32,
        f32_frozen,
        both - f32_frozen,
    )
}

#[test]
fn minilm_bf16_hidden_states_within_1e_2_of_f32_cpu() {
    if !testkit::require_assets("minilm_bf16_hidden_states_within_1e_2_of_f32_cpu") {
        return;
    }
    let (gap, mean, f32_bytes, bf16_bytes) = minilm_gap(Arc::new(Cpu::new()));
    let native = adarank::backend::cpu::bf16::native();
    eprintln!(
        "cpu (native bf16 kernel: {native}): max |bf16 − f32| = {gap:.2e}, mean {mean:.2e}; \
         frozen bytes {f32_bytes} → {bf16_bytes} ({:.3}×)",
        bf16_bytes as f64 / f32_bytes as f64
    );
    assert!(gap > 0.0, "bf16 weights must change something");
    assert!(gap < 1e-2, "max |bf16 − f32| = {gap}");
    assert!(mean < 2.5e-3, "mean |bf16 − f32| = {mean}");
    let ratio = bf16_bytes as f64 / f32_bytes as f64;
    assert!((0.5..0.51).contains(&ratio), "frozen bytes ratio {ratio}");
}

#[test]
fn minilm_bf16_hidden_states_within_1e_2_of_f32_gpu() {
    if !testkit::require_assets("minilm_bf16_hidden_states_within_1e_2_of_f32_gpu") {
        return;
    }
    let Some(g) = adarank::testkit::test_gpu() else {
        return;
    };
    let (gap, mean, f32_bytes, bf16_bytes) = minilm_gap(g);
    eprintln!(
        "gpu: max |bf16 − f32| = {gap:.2e}, mean {mean:.2e}; frozen bytes {f32_bytes} → {bf16_bytes}"
    );
    assert!(gap > 0.0 && gap < 1e-2, "max |bf16 − f32| = {gap}");
}

/// Five LoRA steps on a random encoder: the bf16 run's losses stay within 2% of the f32 run's,
/// and both decrease.
#[test]
fn lora_training_in_bf16_tracks_f32() {
    let cfg = ModelConfig {
        flavour: Flavour::Encoder,
        vocab: 97,
        max_positions: 16,
        type_vocab: 2,
        hidden: 48,
        layers: 2,
        heads: 4,
        ffn: 96,
        ln_eps: 1e-12,
        llama: None,
    };
    let head = Head::Classify {
        classes: 3,
        pooling: Pooling::Mean,
    };
    let batch = Batch {
        batch: 6,
        seq: 11,
        ids: (0..66).map(|i| (i * 37 % 97) as u32).collect(),
        type_ids: vec![],
        mask: vec![],
        target: Target::Classes(vec![0, 1, 2, 0, 1, 2]),
    };
    let opt = AdamW {
        lr: 5e-3,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.0,
        step: 1,
    };
    let run = |frozen: DType| -> Vec<f32> {
        let mode = TrainMode::Lora(LoraConfig {
            frozen,
            ..LoraConfig::uniform(2, &ModuleKind::ALL, 4, 8.0)
        });
        let mut m = Model::new(Arc::new(Cpu::new()), cfg.clone(), head, mode, None, 3).unwrap();
        (0..5)
            .map(|_| {
                m.zero_grads();
                let l = m.forward_backward(&batch, 1.0).unwrap();
                m.optimizer_step(&opt, Some(1.0)).unwrap();
                l
            })
            .collect()
    };
    let (a, b) = (run(DType::F32), run(DType::Bf16));
    eprintln!("f32 losses {a:?}\nbf16 losses {b:?}");
    for (x, y) in a.iter().zip(&b) {
        assert!((x - y).abs() <= 0.02 * x, "f32 {x} vs bf16 {y}");
    }
    assert!(a[4] < a[0] && b[4] < b[0]);
}

#[test]
fn policy_weights_bf16_reaches_the_lora_config() {
    let src = |w: &str| {
        format!(
            "experiment t {{
  model encoder {{ layers = 2, hidden = 32, heads = 4 }}
  data planted {{ ranks = [1] }}
  train {{ steps = 100{w} }}
  baseline arm lora {{}}
  arm full {{ lora = off }}
}}"
        )
    };
    let dir = Path::new("tests/fixtures/policy/valid");
    let p = adarank::policy::load_str(&src(", weights = bf16"), "t.rank", dir, &[])
        .unwrap_or_else(|d| panic!("{d}"));
    let arm = p.arm("lora").unwrap();
    assert_eq!(arm.train.weights, DType::Bf16);
    match train_mode(arm, 2) {
        TrainMode::Lora(l) => assert_eq!(l.frozen, DType::Bf16),
        TrainMode::Full => panic!("the lora arm trains adapters"),
    }
    // The full fine-tuning arm trains every weight: f32 whatever the setting.
    assert_eq!(train_mode(p.arm("full").unwrap(), 2), TrainMode::Full);
    // Default f32; anything else is an error naming the choices.
    let p = adarank::policy::load_str(&src(""), "t.rank", dir, &[]).unwrap();
    assert_eq!(p.arm("lora").unwrap().train.weights, DType::F32);
    let e = adarank::policy::load_str(&src(", weights = f16"), "t.rank", dir, &[]).unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("weights") && msg.contains("bf16"), "{msg}");
}
