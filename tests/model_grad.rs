//! The whole model's backward against central finite differences of its forward loss (CPU
//! backend, f32). For every trainable tensor, a random unit direction u inside that tensor:
//! (L(θ + εu) − L(θ − εu)) / 2ε must match ∇L·u within 2% (+ 2e-4 absolute, the f32 floor of
//! a loss near 1 differenced at ε = 1e-2). Also one random direction over all tensors at once.

use adarank::adapter::{AdapterStore, ModuleKind};
use adarank::backend::cpu::Cpu;
use adarank::model::{
    random_weights, Batch, Flavour, Head, HostWeights, Init, LlamaArch, LoraConfig, Model,
    ModelConfig, Pooling, Target, TrainMode,
};
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, StandardNormal};
use std::sync::Arc;

const EPS: f32 = 1e-2;
const REL: f32 = 0.02;
const ABS: f32 = 2e-4;

fn cfg(flavour: Flavour) -> ModelConfig {
    if flavour == Flavour::Llama {
        return llama_cfg(false, true);
    }
    ModelConfig {
        flavour,
        vocab: 17,
        max_positions: 8,
        type_vocab: 2,
        hidden: 12,
        layers: 2,
        heads: 3,
        ffn: 20,
        ln_eps: 1e-5,
        llama: None,
    }
}

/// A Llama-family model with grouped-query attention (4 query heads sharing 2 kv heads),
/// optionally Qwen2's q/k/v biases and an LM head of its own.
fn llama_cfg(qkv_bias: bool, tie_embeddings: bool) -> ModelConfig {
    ModelConfig {
        flavour: Flavour::Llama,
        vocab: 17,
        max_positions: 8,
        type_vocab: 0,
        hidden: 16,
        layers: 2,
        heads: 4,
        ffn: 20,
        ln_eps: 1e-5,
        llama: Some(LlamaArch {
            kv_heads: 2,
            rope_theta: 100.0,
            rope_scaling: None,
            tie_embeddings,
            qkv_bias,
        }),
    }
}

fn batch(cfg: &ModelConfig, head: &Head, seed: u64) -> Batch {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let (b, t) = (2, 6);
    let ids: Vec<u32> = (0..b * t)
        .map(|_| rng.random_range(0..cfg.vocab as u32))
        .collect();
    let type_ids: Vec<u32> = (0..b * t).map(|i| ((i % t) >= 3) as u32).collect();
    // second sequence padded after 4 tokens
    let mask: Vec<f32> = (0..b * t)
        .map(|i| if i >= t && i % t >= 4 { 0.0 } else { 1.0 })
        .collect();
    let target = match head {
        Head::Classify { classes, .. } => Target::Classes(
            (0..b)
                .map(|_| rng.random_range(0..*classes as u32))
                .collect(),
        ),
        Head::LanguageModel => Target::Tokens(
            (0..b * t)
                .map(|i| {
                    if i % 5 == 4 {
                        u32::MAX
                    } else {
                        rng.random_range(0..cfg.vocab as u32)
                    }
                })
                .collect(),
        ),
        Head::Regress => Target::Values(
            (0..b * t * cfg.hidden)
                .map(|_| StandardNormal.sample(&mut rng))
                .collect(),
        ),
        Head::Span => Target::Spans {
            start: vec![0, 2],
            end: vec![0, 3],
        },
    };
    Batch {
        batch: b,
        seq: t,
        ids,
        type_ids,
        mask,
        target,
    }
}

fn lora(layers: usize, svd: bool) -> TrainMode {
    lora_on(layers, svd, &ModuleKind::ALL)
}

fn lora_on(layers: usize, svd: bool, kinds: &[ModuleKind]) -> TrainMode {
    let mut l = LoraConfig::uniform(layers, kinds, 2, 4.0);
    l.ranks.insert((1, ModuleKind::V), 0); // a slot without adapter
    l.ranks.insert((0, ModuleKind::FfnIn), 3);
    l.svd_form = svd;
    TrainMode::Lora(l)
}

fn dot(a: &HostWeights, b: &HostWeights) -> f64 {
    a.iter()
        .map(|(k, t)| {
            t.data
                .iter()
                .zip(&b[k].data)
                .map(|(x, y)| *x as f64 * *y as f64)
                .sum::<f64>()
        })
        .sum()
}

fn shifted(w: &HostWeights, u: &HostWeights, e: f32) -> HostWeights {
    w.iter()
        .map(|(k, t)| {
            let mut t = t.clone();
            if let Some(d) = u.get(k) {
                t.data
                    .iter_mut()
                    .zip(&d.data)
                    .for_each(|(x, d)| *x += e * d);
            }
            (k.clone(), t)
        })
        .collect()
}

fn check(flavour: Flavour, head: Head, mode: TrainMode, seed: u64) {
    check_cfg(cfg(flavour), head, mode, seed)
}

fn check_cfg(c: ModelConfig, head: Head, mode: TrainMode, seed: u64) {
    let flavour = c.flavour;
    let w = random_weights(&c, &head, Init::FanIn, seed);
    let is_lora = matches!(mode, TrainMode::Lora(_));
    let svd = matches!(&mode, TrainMode::Lora(l) if l.svd_form);
    let mut m = Model::new(Arc::new(Cpu::new()), c.clone(), head, mode, Some(&w), seed).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed + 1);
    if is_lora {
        // B = 0 (or λ = 0) at init would hide A's gradient: give every adapter a random ΔW.
        for i in 0..m.adapters().len() {
            let mut h = m.adapter_host(i).unwrap();
            h.b.iter_mut()
                .for_each(|v| *v = rng.random_range(-0.5..0.5));
            if let Some(l) = h.lambda.as_mut() {
                l.iter_mut().for_each(|v| *v = rng.random_range(-1.0..1.0));
            }
            h.grad_a.clear();
            h.grad_b.clear();
            h.grad_lambda = None;
            m.set_adapter_host(i, &h).unwrap();
        }
    }
    let b = batch(&c, &head, seed + 2);
    m.zero_grads();
    let loss = m.forward_backward(&b, 1.0).unwrap();
    assert!(loss.is_finite());
    let g = m.trainable_grads().unwrap();
    let theta = m.trainable_host().unwrap();
    assert!(!theta.is_empty());
    if is_lora {
        assert!(theta.keys().any(|k| k.contains("lora_A")));
        assert!(
            !theta
                .keys()
                .any(|k| k.ends_with("query.weight") || k.ends_with("q_proj.weight")),
            "W0 must be frozen"
        );
        assert_eq!(theta.keys().any(|k| k.contains("lora_E")), svd);
    }
    let mut fd_along = |u: &HostWeights| -> (f32, f32) {
        m.set_trainable(&shifted(&theta, u, EPS)).unwrap();
        let lp = m.loss(&b).unwrap();
        m.set_trainable(&shifted(&theta, u, -EPS)).unwrap();
        let lm = m.loss(&b).unwrap();
        m.set_trainable(&theta).unwrap();
        ((lp - lm) / (2.0 * EPS), dot(u, &g) as f32)
    };
    let direction = |names: &[&String], rng: &mut rand::rngs::StdRng| -> HostWeights {
        let mut u: HostWeights = names
            .iter()
            .map(|&k| {
                let mut t = theta[k].clone();
                t.data
                    .iter_mut()
                    .for_each(|v| *v = StandardNormal.sample(rng));
                (k.clone(), t)
            })
            .collect();
        let norm = dot(&u, &u).sqrt() as f32;
        u.values_mut()
            .for_each(|t| t.data.iter_mut().for_each(|v| *v /= norm));
        u
    };
    let names: Vec<&String> = theta.keys().collect();
    let mut worst = 0.0f32;
    for name in &names {
        let u = direction(&[name], &mut rng);
        let (fd, an) = fd_along(&u);
        let err = (fd - an).abs();
        worst = worst.max(err / (an.abs() + ABS / REL));
        assert!(
            err <= REL * an.abs() + ABS,
            "{flavour:?} {head:?} {name}: finite difference {fd} vs backward {an}"
        );
    }
    let u = direction(&names, &mut rng);
    let (fd, an) = fd_along(&u);
    assert!(
        (fd - an).abs() <= REL * an.abs() + ABS,
        "{flavour:?} {head:?} all tensors: finite difference {fd} vs backward {an}"
    );
    println!(
        "{flavour:?} {head:?}: {} tensors, worst relative error {worst:.2e}",
        names.len()
    );
}

#[test]
fn encoder_lora_classify_matches_finite_differences() {
    let head = Head::Classify {
        classes: 3,
        pooling: Pooling::Mean,
    };
    check(Flavour::Encoder, head, lora(2, false), 1);
}

#[test]
fn encoder_full_classify_cls_matches_finite_differences() {
    let head = Head::Classify {
        classes: 3,
        pooling: Pooling::Cls,
    };
    check(Flavour::Encoder, head, TrainMode::Full, 2);
}

#[test]
fn encoder_lora_classify_cls_matches_finite_differences() {
    // BERT's pooler frozen under LoRA: the gradient flows through its tanh to the adapters.
    let head = Head::Classify {
        classes: 3,
        pooling: Pooling::Cls,
    };
    check(Flavour::Encoder, head, lora(2, false), 7);
}

#[test]
fn decoder_lora_lm_matches_finite_differences() {
    check(Flavour::Decoder, Head::LanguageModel, lora(2, false), 3);
}

#[test]
fn decoder_full_lm_matches_finite_differences() {
    check(Flavour::Decoder, Head::LanguageModel, TrainMode::Full, 4);
}

#[test]
fn encoder_adalora_regress_matches_finite_differences() {
    check(Flavour::Encoder, Head::Regress, lora(2, true), 5);
}

#[test]
fn encoder_full_span_matches_finite_differences() {
    check(Flavour::Encoder, Head::Span, TrainMode::Full, 6);
}

#[test]
fn llama_lora_lm_matches_finite_differences() {
    // Every Llama module adapted: RMSNorm, RoPE, grouped-query attention and SwiGLU backward.
    let mode = lora_on(2, false, &ModuleKind::LLAMA);
    check_cfg(llama_cfg(false, true), Head::LanguageModel, mode, 8);
}

#[test]
fn llama_full_lm_untied_qkv_bias_matches_finite_differences() {
    // Full fine-tuning reaches the RMSNorm scales, Qwen2's biases, the embeddings and a separate
    // LM head.
    check_cfg(
        llama_cfg(true, false),
        Head::LanguageModel,
        TrainMode::Full,
        9,
    );
}

#[test]
fn llama_adalora_lm_matches_finite_differences() {
    let mode = lora_on(2, true, &ModuleKind::LLAMA);
    check_cfg(llama_cfg(true, true), Head::LanguageModel, mode, 10);
}
