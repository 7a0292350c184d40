//! Configuration and batch types of the model: what a transformer is, what it is trained for,
//! which weights train, and what one batch holds.

use crate::adapter::ModuleKind;
use crate::backend::DType;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// BERT-style encoder or GPT-style decoder.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Flavour {
    /// Post-norm blocks, GELU, learned absolute positions, token types, embedding LayerNorm,
    /// bidirectional attention with padded keys masked.
    Encoder,
    /// Pre-norm blocks, GELU, learned absolute positions, causal attention, a final LayerNorm
    /// (`final_layernorm.*`), no token types.
    Decoder,
    /// The Llama family (Llama, Mistral, Qwen2, SmolLM): pre-norm RMSNorm blocks, rotary position
    /// embeddings on q and k (Hugging Face's half-split form), grouped-query causal attention,
    /// a SwiGLU feed-forward (down(silu(gate(x)) ⊙ up(x))), a final RMSNorm (`model.norm`), no
    /// position table and no token types, an LM head tied to the embeddings or its own. Its
    /// specifics are in [`ModelConfig::llama`].
    Llama,
}

/// Llama-family specifics of a [`ModelConfig`] (present exactly when the flavour is
/// [`Flavour::Llama`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LlamaArch {
    /// Key/value heads (grouped-query attention): each serves heads / kv_heads query heads.
    pub kv_heads: usize,
    /// RoPE base θ (`rope_theta`).
    pub rope_theta: f32,
    /// Llama 3's frequency rescaling (`rope_scaling` with `rope_type = "llama3"`), if any.
    pub rope_scaling: Option<RopeScaling>,
    /// The LM head is the embedding table (`tie_word_embeddings`); otherwise `lm_head.weight`.
    pub tie_embeddings: bool,
    /// Biases on q, k and v (Qwen2); no other linear layer has one.
    pub qkv_bias: bool,
}

/// Llama 3's RoPE frequency rescaling (`rope_scaling`, `rope_type = "llama3"`).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct RopeScaling {
    pub factor: f32,
    pub low_freq_factor: f32,
    pub high_freq_factor: f32,
    pub original_max_positions: usize,
}

/// Shape of a transformer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    pub flavour: Flavour,
    pub vocab: usize,
    pub max_positions: usize,
    /// Token-type vocabulary (BERT: 2). Ignored by the decoder.
    pub type_vocab: usize,
    pub hidden: usize,
    pub layers: usize,
    pub heads: usize,
    pub ffn: usize,
    /// LayerNorm ε (encoder, decoder) or RMSNorm ε (Llama).
    pub ln_eps: f32,
    /// Llama-family specifics; `None` for the encoder and the GPT-style decoder.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub llama: Option<LlamaArch>,
}

impl ModelConfig {
    /// MiniLM-L6 (sentence-transformers/all-MiniLM-L6-v2) shape, the default of `bench train`.
    pub fn minilm() -> Self {
        Self {
            flavour: Flavour::Encoder,
            vocab: 30522,
            max_positions: 512,
            type_vocab: 2,
            hidden: 384,
            layers: 6,
            heads: 12,
            ffn: 1536,
            ln_eps: 1e-12,
            llama: None,
        }
    }

    /// A tiny model for tests and built-in tasks.
    pub fn tiny(flavour: Flavour) -> Self {
        Self {
            flavour,
            vocab: 64,
            max_positions: 32,
            type_vocab: 2,
            hidden: 32,
            layers: 2,
            heads: 4,
            ffn: 64,
            ln_eps: 1e-5,
            llama: (flavour == Flavour::Llama).then_some(LlamaArch {
                kv_heads: 2,
                rope_theta: 10000.0,
                rope_scaling: None,
                tie_embeddings: true,
                qkv_bias: false,
            }),
        }
    }

    pub fn head_dim(&self) -> usize {
        self.hidden / self.heads
    }

    /// Key/value heads: `heads` unless the model shares them across query heads (GQA).
    pub fn kv_heads(&self) -> usize {
        self.llama.as_ref().map_or(self.heads, |l| l.kv_heads)
    }

    /// Width of the k and v projections: kv_heads · head_dim.
    pub fn kv_width(&self) -> usize {
        self.kv_heads() * self.head_dim()
    }

    /// The module kinds a block of this flavour has, in slot order.
    pub fn module_kinds(&self) -> &'static [ModuleKind] {
        match self.flavour {
            Flavour::Llama => &ModuleKind::LLAMA,
            Flavour::Encoder | Flavour::Decoder => &ModuleKind::ALL,
        }
    }

    /// Adapter slots: one per (layer, kind), layer-major, kinds in [`Self::module_kinds`] order.
    pub fn slots(&self) -> usize {
        self.layers * self.module_kinds().len()
    }

    /// (layer, kind) of adapter slot `i` (see [`Self::slots`]).
    pub fn slot_of(&self, i: usize) -> (usize, ModuleKind) {
        let kinds = self.module_kinds();
        (i / kinds.len(), kinds[i % kinds.len()])
    }

    /// Index of the slot of (layer, kind), if the model has that kind.
    pub fn slot_index(&self, layer: usize, kind: ModuleKind) -> Option<usize> {
        let kinds = self.module_kinds();
        let k = kinds.iter().position(|&x| x == kind)?;
        Some(layer * kinds.len() + k)
    }

    /// The module path of a linear layer, without `.weight`/`.bias`: the Hugging Face name of
    /// the flavour (BERT's for the encoder and the GPT-style decoder, Llama's for the family).
    pub fn module_path(&self, layer: usize, kind: ModuleKind) -> String {
        match self.flavour {
            Flavour::Llama => kind.hf_llama_path(layer),
            Flavour::Encoder | Flavour::Decoder => kind.hf_bert_path(layer),
        }
    }

    /// (rows, cols) of the weight of a module: W is [out, in]. For the Llama family `FfnIn` is
    /// `up_proj`, `Gate` is `gate_proj` and `FfnOut` is `down_proj`.
    pub fn module_shape(&self, kind: ModuleKind) -> (usize, usize) {
        let (c, f) = (self.hidden, self.ffn);
        match kind {
            ModuleKind::Q | ModuleKind::O => (c, c),
            ModuleKind::K | ModuleKind::V => (self.kv_width(), c),
            ModuleKind::FfnIn | ModuleKind::Gate => (f, c),
            ModuleKind::FfnOut => (c, f),
        }
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        let c = self;
        anyhow::ensure!(
            c.vocab > 0 && c.hidden > 0 && c.layers > 0 && c.heads > 0 && c.ffn > 0,
            "model config: vocab, hidden, layers, heads and ffn must all be positive (got {c:?})"
        );
        anyhow::ensure!(
            c.hidden.is_multiple_of(c.heads),
            "model config: hidden ({}) must be divisible by heads ({})",
            c.hidden,
            c.heads
        );
        anyhow::ensure!(
            c.max_positions > 0,
            "model config: max_positions must be positive"
        );
        anyhow::ensure!(
            c.flavour != Flavour::Encoder || c.type_vocab > 0,
            "model config: an encoder needs type_vocab ≥ 1"
        );
        anyhow::ensure!(
            (c.flavour == Flavour::Llama) == c.llama.is_some(),
            "model config: Llama-family settings go with the Llama flavour, and only with it"
        );
        if let Some(l) = &c.llama {
            anyhow::ensure!(
                l.kv_heads > 0 && c.heads.is_multiple_of(l.kv_heads),
                "model config: heads ({}) must be a multiple of kv_heads ({})",
                c.heads,
                l.kv_heads
            );
            anyhow::ensure!(
                c.head_dim().is_multiple_of(2),
                "model config: rotary embeddings need an even head dimension (got {})",
                c.head_dim()
            );
            anyhow::ensure!(
                l.rope_theta.is_finite() && l.rope_theta > 0.0,
                "model config: rope_theta must be positive (got {})",
                l.rope_theta
            );
        }
        Ok(())
    }
}

/// How a classification head pools the final hidden states of a sequence.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Pooling {
    /// Mean over the unmasked tokens (sentence-transformers' MiniLM).
    Mean,
    /// BERT's pooler on the first token's hidden state: tanh(W_p·h₀ + b_p), as
    /// `BertForSequenceClassification` computes it (`model::pooler`).
    Cls,
}

/// What the model is trained for.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Head {
    /// `classifier.{weight [classes, C], bias}` on the pooled output, cross-entropy over
    /// `Target::Classes` (one per sequence).
    Classify { classes: usize, pooling: Pooling },
    /// Mean squared error. With `Target::Values` of length batch·seq·hidden: against the final
    /// hidden states (no parameters; the planted-rank task). With length batch: a scalar per
    /// sequence from `classifier.{weight [1, C], bias}` on the mean-pooled output (STS-B).
    Regress,
    /// Logits = hidden · word_embeddingsᵀ (tied), cross-entropy over `Target::Tokens` per
    /// position (`Ids::IGNORE` = no target).
    LanguageModel,
    /// SQuAD 2.0 extractive head: `qa_outputs.{weight [2, C], bias}` gives start/end logits per
    /// token; cross-entropy over positions (position 0 = no answer), mean of start and end.
    Span,
}

/// LoRA settings: rank per (layer, module) slot, absent = 0.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct LoraConfig {
    pub ranks: BTreeMap<(usize, ModuleKind), usize>,
    pub alpha: f32,
    /// Scale α/√r instead of α/r.
    pub rslora: bool,
    /// AdaLoRA's SVD form ΔW = B·diag(λ)·A: λ trainable and starting at 0, A and B ~ N(0, 0.02),
    /// scale α / (initial rank), fixed for the adapter's life.
    pub svd_form: bool,
    /// Storage of the frozen weight matrices and embedding tables (bf16 halves their memory;
    /// adapters, head, norms and biases stay f32).
    pub frozen: DType,
}

impl LoraConfig {
    /// Rank `r` on every listed kind of module in every layer.
    pub fn uniform(layers: usize, kinds: &[ModuleKind], rank: usize, alpha: f32) -> Self {
        let mut ranks = BTreeMap::new();
        for l in 0..layers {
            for &k in kinds {
                ranks.insert((l, k), rank);
            }
        }
        Self {
            ranks,
            alpha,
            rslora: false,
            svd_form: false,
            frozen: DType::F32,
        }
    }
}

/// Which weights train.
#[derive(Clone, Debug, PartialEq)]
pub enum TrainMode {
    /// Frozen body; LoRA adapters and the head's own weights train.
    Lora(LoraConfig),
    /// Every weight trains (the full fine-tuning baseline).
    Full,
}

/// What a batch is scored against.
#[derive(Clone, Debug, PartialEq)]
pub enum Target {
    /// One class per sequence: [batch].
    Classes(Vec<u32>),
    /// One token per position: [batch·seq], `u32::MAX` = ignore.
    Tokens(Vec<u32>),
    /// [batch·seq·hidden] (hidden-state regression) or [batch] (scalar regression).
    Values(Vec<f32>),
    /// Answer start/end positions per sequence: [batch] each; 0 = no answer.
    Spans { start: Vec<u32>, end: Vec<u32> },
}

/// One batch of `batch` sequences of `seq` tokens, row-major [batch, seq].
#[derive(Clone, Debug, PartialEq)]
pub struct Batch {
    pub batch: usize,
    pub seq: usize,
    pub ids: Vec<u32>,
    /// Token types [batch·seq] (empty = all 0).
    pub type_ids: Vec<u32>,
    /// Attention mask [batch·seq]: 1 = real token, 0 = padding (empty = all 1).
    pub mask: Vec<f32>,
    pub target: Target,
}

impl Batch {
    pub fn tokens(&self) -> usize {
        self.batch * self.seq
    }
}

/// Result of evaluating one batch. `loss_sum / count` is the mean loss as trained.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct EvalOut {
    pub loss_sum: f64,
    /// Correct predictions (classes: per sequence; tokens: per target; spans: start and end
    /// both right). 0 for regression.
    pub correct: usize,
    /// What `loss_sum` and `correct` are counted over (sequences, target tokens, or values).
    pub count: usize,
    /// Arg-max predictions: one per sequence (classes), start/end pairs (spans), empty otherwise.
    pub preds: Vec<u32>,
    /// Scalar regression outputs, one per sequence; empty otherwise.
    pub outputs: Vec<f32>,
    /// Classes: every sequence's logits, row after row ([sequences, classes]). Spans: the start
    /// and end logits of each predicted pair. Empty otherwise.
    pub logits: Vec<f32>,
}

impl EvalOut {
    pub fn merge(&mut self, o: &EvalOut) {
        self.loss_sum += o.loss_sum;
        self.correct += o.correct;
        self.count += o.count;
        self.preds.extend_from_slice(&o.preds);
        self.outputs.extend_from_slice(&o.outputs);
        self.logits.extend_from_slice(&o.logits);
    }
    pub fn loss(&self) -> f64 {
        self.loss_sum / self.count.max(1) as f64
    }
    pub fn accuracy(&self) -> f64 {
        self.correct as f64 / self.count.max(1) as f64
    }
}
