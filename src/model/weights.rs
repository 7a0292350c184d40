//! Weight names and shapes, and random initialisation.
//!
//! The encoder has Hugging Face BERT names without `bert.`. The GPT-style decoder reuses them so
//! that one loader serves both: `attention.output.LayerNorm` is its pre-attention norm,
//! `output.LayerNorm` its pre-FFN norm, and `final_layernorm` the norm after the last block. The
//! Llama family has transformers' `LlamaForCausalLM` names (`model.layers.{i}.self_attn.q_proj`,
//! …; see `data::pretrained`).

use super::config::{Flavour, Head, ModelConfig, Pooling};
use crate::adapter::{HostTensor, ModuleKind};
use rand::SeedableRng;
use rand_distr::{Distribution, Normal};
use std::collections::BTreeMap;

/// Named host tensors: safetensors loading and random init meet here.
pub type HostWeights = BTreeMap<String, HostTensor>;

/// The Llama family's embedding table (and tied LM head).
pub const LLAMA_EMBED: &str = "model.embed_tokens.weight";
/// The Llama family's untied LM head.
pub const LLAMA_HEAD: &str = "lm_head.weight";
/// The Llama family's final RMSNorm.
pub const LLAMA_NORM: &str = "model.norm.weight";

/// Every body weight the model needs, with its shape, in a fixed order.
pub fn body_shapes(cfg: &ModelConfig) -> Vec<(String, Vec<usize>)> {
    if cfg.flavour == Flavour::Llama {
        return llama_shapes(cfg);
    }
    let (c, v, p) = (cfg.hidden, cfg.vocab, cfg.max_positions);
    let mut out = vec![
        ("embeddings.word_embeddings.weight".to_string(), vec![v, c]),
        (
            "embeddings.position_embeddings.weight".to_string(),
            vec![p, c],
        ),
    ];
    if cfg.flavour == Flavour::Encoder {
        out.push((
            "embeddings.token_type_embeddings.weight".into(),
            vec![cfg.type_vocab, c],
        ));
        out.push(("embeddings.LayerNorm.weight".into(), vec![c]));
        out.push(("embeddings.LayerNorm.bias".into(), vec![c]));
    }
    for l in 0..cfg.layers {
        for kind in ModuleKind::ALL {
            let (rows, cols) = cfg.module_shape(kind);
            let path = cfg.module_path(l, kind);
            out.push((format!("{path}.weight"), vec![rows, cols]));
            out.push((format!("{path}.bias"), vec![rows]));
        }
        for ln in ["attention.output.LayerNorm", "output.LayerNorm"] {
            out.push((format!("encoder.layer.{l}.{ln}.weight"), vec![c]));
            out.push((format!("encoder.layer.{l}.{ln}.bias"), vec![c]));
        }
    }
    if cfg.flavour == Flavour::Decoder {
        out.push(("final_layernorm.weight".into(), vec![c]));
        out.push(("final_layernorm.bias".into(), vec![c]));
    }
    out
}

/// [`body_shapes`] of the Llama family: no position table, no token types, RMSNorms (γ only),
/// no biases but Qwen2's on q, k and v, an LM head of its own unless tied.
fn llama_shapes(cfg: &ModelConfig) -> Vec<(String, Vec<usize>)> {
    let (c, v) = (cfg.hidden, cfg.vocab);
    let arch = cfg.llama.as_ref().expect("Llama flavour has its settings");
    let mut out = vec![(LLAMA_EMBED.to_string(), vec![v, c])];
    for l in 0..cfg.layers {
        out.push((format!("model.layers.{l}.input_layernorm.weight"), vec![c]));
        for &kind in cfg.module_kinds() {
            let (rows, cols) = cfg.module_shape(kind);
            let path = cfg.module_path(l, kind);
            out.push((format!("{path}.weight"), vec![rows, cols]));
            if arch.qkv_bias && matches!(kind, ModuleKind::Q | ModuleKind::K | ModuleKind::V) {
                out.push((format!("{path}.bias"), vec![rows]));
            }
        }
        out.push((
            format!("model.layers.{l}.post_attention_layernorm.weight"),
            vec![c],
        ));
    }
    out.push((LLAMA_NORM.to_string(), vec![c]));
    if !arch.tie_embeddings {
        out.push((LLAMA_HEAD.to_string(), vec![v, c]));
    }
    out
}

/// The head's own weights (initialised when absent from the loaded weights).
pub fn head_shapes(cfg: &ModelConfig, head: &Head) -> Vec<(String, Vec<usize>)> {
    let c = cfg.hidden;
    match *head {
        Head::Classify { classes, .. } => vec![
            ("classifier.weight".into(), vec![classes, c]),
            ("classifier.bias".into(), vec![classes]),
        ],
        // The scalar-regression head; unused (but small) for hidden-state regression.
        Head::Regress => vec![
            ("classifier.weight".into(), vec![1, c]),
            ("classifier.bias".into(), vec![1]),
        ],
        Head::LanguageModel => vec![],
        Head::Span => vec![
            ("qa_outputs.weight".into(), vec![2, c]),
            ("qa_outputs.bias".into(), vec![2]),
        ],
    }
}

/// How [`random_weights`] draws matrices.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Init {
    /// BERT's N(0, 0.02) for every matrix and embedding.
    Bert,
    /// N(0, 1/fan_in) for linear weights and N(0, 1) for embeddings: activations keep unit scale
    /// through a randomly initialised model, so attention is far from uniform and every module
    /// matters to the output (the planted-rank task's base model).
    FanIn,
}

/// A stable 64-bit hash of a name (FNV-1a), so that each tensor's random stream depends on its
/// name and the seed, not on the order tensors are drawn in.
pub fn name_seed(seed: u64, name: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ seed.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    for b in name.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// One tensor of N(0, std²) values from its own seeded stream.
pub fn normal_tensor(shape: Vec<usize>, std: f32, seed: u64) -> HostTensor {
    let n: usize = shape.iter().product();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let dist = Normal::new(0.0f32, std.max(0.0)).expect("finite std");
    HostTensor::new(shape, (0..n).map(|_| dist.sample(&mut rng)).collect())
}

/// Initial value of one named tensor: LayerNorm γ = 1, biases and β = 0, matrices random.
pub fn init_tensor(name: &str, shape: &[usize], init: Init, seed: u64) -> HostTensor {
    let n: usize = shape.iter().product();
    // LayerNorm and RMSNorm scales (`…LayerNorm.weight`, `…layernorm.weight`, `model.norm.weight`).
    if name.ends_with("Norm.weight") || name.ends_with("norm.weight") {
        return HostTensor::new(shape.to_vec(), vec![1.0; n]);
    }
    if shape.len() == 1 {
        return HostTensor::new(shape.to_vec(), vec![0.0; n]);
    }
    let std = match init {
        Init::Bert => 0.02,
        Init::FanIn if name.starts_with("embeddings.") => 1.0,
        Init::FanIn => 1.0 / (shape[1] as f32).sqrt(),
    };
    normal_tensor(shape.to_vec(), std, name_seed(seed, name))
}

/// A complete set of body and head weights (and BERT's pooler for `pooling = cls`), drawn from
/// `seed`.
pub fn random_weights(cfg: &ModelConfig, head: &Head, init: Init, seed: u64) -> HostWeights {
    let pooler = match head {
        Head::Classify {
            pooling: Pooling::Cls,
            ..
        } => super::pooler::shapes(cfg.hidden),
        _ => vec![],
    };
    body_shapes(cfg)
        .into_iter()
        .chain(pooler)
        .chain(head_shapes(cfg, head))
        .map(|(name, shape)| {
            let t = init_tensor(&name, &shape, init, seed);
            (name, t)
        })
        .collect()
}
