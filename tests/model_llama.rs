//! The Llama-family model on the CPU backend against oracles that need no fixture: the cached
//! generation pass (one token at a time against a key/value cache) against the full forward
//! over the whole sequence; grouped-query attention against the same model with every kv head
//! repeated per query head (plain multi-head attention); and the chunked LM head's loss against
//! a direct log-softmax of `logits_at`.

use adarank::adapter::{AdapterStore, ModuleKind};
use adarank::backend::cpu::Cpu;
use adarank::model::generate::{GenConfig, Sampling};
use adarank::model::{
    random_weights, Batch, Flavour, Head, HostWeights, Init, LlamaArch, LoraConfig, Model,
    ModelConfig, Target, TrainMode,
};
use rand::{Rng, SeedableRng};
use std::sync::Arc;

fn cfg(kv_heads: usize, tie: bool) -> ModelConfig {
    cfg_vocab(kv_heads, tie, 41)
}

fn cfg_vocab(kv_heads: usize, tie: bool, vocab: usize) -> ModelConfig {
    ModelConfig {
        flavour: Flavour::Llama,
        vocab,
        max_positions: 160,
        type_vocab: 0,
        hidden: 24,
        layers: 3,
        heads: 6,
        ffn: 40,
        ln_eps: 1e-5,
        llama: Some(LlamaArch {
            kv_heads,
            rope_theta: 500.0,
            rope_scaling: None,
            tie_embeddings: tie,
            qkv_bias: true,
        }),
    }
}

fn lora_mode() -> TrainMode {
    let mut l = LoraConfig::uniform(3, &ModuleKind::LLAMA, 2, 4.0);
    l.ranks.insert((1, ModuleKind::Gate), 0);
    TrainMode::Lora(l)
}

/// A model with random weights and every adapter given a random ΔW (B = 0 would hide them).
fn model(c: &ModelConfig, w: &HostWeights, seed: u64) -> Model<Cpu> {
    let mut m = Model::new(
        Arc::new(Cpu::new()),
        c.clone(),
        Head::LanguageModel,
        lora_mode(),
        Some(w),
        seed,
    )
    .unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    for i in 0..m.adapters().len() {
        let mut h = m.adapter_host(i).unwrap();
        h.b.iter_mut()
            .for_each(|v| *v = rng.random_range(-0.3..0.3));
        h.grad_a.clear();
        h.grad_b.clear();
        m.set_adapter_host(i, &h).unwrap();
    }
    m
}

fn lm_batch(ids: &[u32]) -> Batch {
    let t = ids.len();
    Batch {
        batch: 1,
        seq: t,
        ids: ids.to_vec(),
        type_ids: vec![],
        mask: vec![],
        target: Target::Tokens(
            (0..t)
                .map(|i| if i + 1 < t { ids[i + 1] } else { u32::MAX })
                .collect(),
        ),
    }
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn cached_decoding_matches_the_full_forward() {
    let c = cfg(2, false);
    let w = random_weights(&c, &Head::LanguageModel, Init::FanIn, 3);
    let mut m = model(&c, &w, 3);
    let ids: Vec<u32> = (0..13).map(|i| (i * 7 + 3) % 41).collect();
    // The full forward's logits at every position.
    let rows: Vec<usize> = (0..ids.len()).collect();
    let full = m.logits_at(&lm_batch(&ids), &rows).unwrap();
    // A prompt of 5 tokens in one pass, then the rest one at a time.
    let mut cache = adarank::model::generate::KvCache::new(&m, 32).unwrap();
    let v = c.vocab;
    let first = m.decode(&ids[..5], &mut cache).unwrap();
    let mut worst = max_abs_diff(&first, &full[4 * v..5 * v]);
    for (p, &id) in ids.iter().enumerate().skip(5) {
        let l = m.decode(&[id], &mut cache).unwrap();
        worst = worst.max(max_abs_diff(&l, &full[p * v..(p + 1) * v]));
    }
    println!("cached vs full logits: max |Δ| = {worst:.2e}");
    assert!(
        worst < 1e-4,
        "cached decoding drifts from the full forward: {worst}"
    );
    assert_eq!(cache.len(), ids.len());
}

#[test]
fn greedy_generation_follows_the_full_forward_argmax() {
    let c = cfg(3, true);
    let w = random_weights(&c, &Head::LanguageModel, Init::FanIn, 5);
    let mut m = model(&c, &w, 5);
    let prompt = [1u32, 9, 17, 4];
    let g = GenConfig {
        max_new: 8,
        stop: vec![],
        sampling: Sampling::greedy(),
    };
    let out = m.generate(&prompt, &g).unwrap();
    assert_eq!(out.len(), 8);
    // Brute force: each next token is the arg-max of the full forward over the sequence so far.
    let mut seq = prompt.to_vec();
    for &tok in &out {
        let l = m.logits_at(&lm_batch(&seq), &[seq.len() - 1]).unwrap();
        let best = (0..l.len()).fold(0, |b, i| if l[i] > l[b] { i } else { b });
        assert_eq!(tok as usize, best, "generated {out:?} after {seq:?}");
        seq.push(tok);
    }
    // A stop token ends it, and is returned.
    let stop = GenConfig {
        stop: vec![out[2]],
        ..g
    };
    assert_eq!(m.generate(&prompt, &stop).unwrap(), out[..3].to_vec());
}

#[test]
fn grouped_query_attention_equals_repeated_kv_heads() {
    // kv_heads = 2 of 6 query heads, against the same weights with k and v repeated per query
    // head (kv_heads = 6): identical functions.
    let g = cfg(2, true);
    let w = random_weights(&g, &Head::LanguageModel, Init::FanIn, 7);
    let mha = cfg(6, true);
    let d = g.head_dim();
    let group = g.heads / 2;
    let mut w6 = w.clone();
    for l in 0..g.layers {
        for p in ["k_proj", "v_proj"] {
            for suffix in ["weight", "bias"] {
                let name = format!("model.layers.{l}.self_attn.{p}.{suffix}");
                let t = &w[&name];
                let cols = if suffix == "weight" { g.hidden } else { 1 };
                let mut data = Vec::new();
                for h in 0..g.heads {
                    let kv = h / group;
                    data.extend_from_slice(&t.data[kv * d * cols..(kv + 1) * d * cols]);
                }
                let shape = if suffix == "weight" {
                    vec![g.heads * d, g.hidden]
                } else {
                    vec![g.heads * d]
                };
                w6.insert(name, adarank::adapter::HostTensor::new(shape, data));
            }
        }
    }
    let full = |c: &ModelConfig, w: &HostWeights| {
        let mut m = Model::new(
            Arc::new(Cpu::new()),
            c.clone(),
            Head::LanguageModel,
            TrainMode::Full,
            Some(w),
            1,
        )
        .unwrap();
        let ids: Vec<u32> = (0..9).map(|i| (i * 5 + 1) % 41).collect();
        m.logits_at(&lm_batch(&ids), &(0..9).collect::<Vec<_>>())
            .unwrap()
    };
    let a = full(&g, &w);
    let b = full(&mha, &w6);
    let diff = max_abs_diff(&a, &b);
    assert!(diff < 1e-5, "GQA vs repeated heads: {diff}");
}

#[test]
fn chunked_lm_loss_equals_log_softmax_of_logits() {
    // A vocabulary of 70,000 over 130 positions: the head runs in two chunks of rows (119 + 11).
    let c = cfg_vocab(2, false, 70_000);
    let w = random_weights(&c, &Head::LanguageModel, Init::FanIn, 11);
    let mut m = model(&c, &w, 11);
    let ids: Vec<u32> = (0..130).map(|i| (i * 7919 + 2) % 70_000).collect();
    let b = lm_batch(&ids);
    let loss = m.loss(&b).unwrap() as f64;
    let l = m
        .logits_at(&b, &(0..ids.len()).collect::<Vec<_>>())
        .unwrap();
    let v = c.vocab;
    let mut total = 0.0f64;
    for p in 0..ids.len() - 1 {
        let row = &l[p * v..(p + 1) * v];
        let mx = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
        let lse = mx + row.iter().map(|&x| (x as f64 - mx).exp()).sum::<f64>().ln();
        total += lse - row[ids[p + 1] as usize] as f64;
    }
    let direct = total / (ids.len() - 1) as f64;
    assert!(
        (loss - direct).abs() < 1e-5 * direct.abs().max(1.0),
        "LM loss {loss} vs log-softmax {direct}"
    );
}
