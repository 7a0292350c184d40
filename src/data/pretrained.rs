//! A pretrained causal language model as the loaders hand it to the model: the shape, the
//! weights under their Hugging Face names, the frozen matrices in their checkpoint's own block
//! format when it has one, and the tokenizer with its chat template.
//!
//! Both sources meet here: a GGUF file (`data::gguf`) and a Hugging Face folder or cache entry
//! (`data::hf`). Weight names are transformers' `LlamaForCausalLM` names:
//! `model.embed_tokens.weight` [vocab, C], `model.layers.{i}.input_layernorm.weight` [C],
//! `model.layers.{i}.self_attn.{q,k,v,o}_proj.weight` ([C, C], [KV, C], [KV, C], [C, C]; q/k/v
//! `.bias` with `qkv_bias`), `model.layers.{i}.post_attention_layernorm.weight` [C],
//! `model.layers.{i}.mlp.{gate,up}_proj.weight` [F, C], `model.layers.{i}.mlp.down_proj.weight`
//! [C, F], `model.norm.weight` [C], and `lm_head.weight` [vocab, C] only when the head is not
//! tied. Q and K rows are in transformers' order (a GGUF loader undoes llama.cpp's permutation).

use crate::backend::DType;
use crate::model::{HostWeights, ModelConfig};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// A frozen matrix kept in its checkpoint's block format (GGUF Q8_0, Q4_0, Q4_1, …), rows in
/// transformers' order: the bytes `Backend::upload_blocks` takes.
#[derive(Clone, Debug)]
pub struct BlockTensor {
    pub dtype: DType,
    /// [rows, cols] as transformers has the weight (W: [out, in]).
    pub shape: [usize; 2],
    pub bytes: Vec<u8>,
}

/// A causal LM's tokenizer and the text conventions around it.
#[derive(Clone)]
pub struct LmTokenizer {
    pub inner: tokenizers::Tokenizer,
    pub bos: Option<u32>,
    pub eos: u32,
    pub pad: u32,
    /// Prepend `bos` when encoding a text (GGUF `tokenizer.ggml.add_bos_token`).
    pub add_bos: bool,
    /// The Jinja chat template, if the checkpoint has one.
    pub chat_template: Option<String>,
}

/// A loaded pretrained causal LM.
pub struct Pretrained {
    /// Where it was loaded from (the GGUF file or the snapshot folder).
    pub source: PathBuf,
    pub config: ModelConfig,
    /// Every tensor the model needs, as f32 (quantized ones dequantized), by the names above.
    pub weights: HostWeights,
    /// The frozen matrices in their own block format, by the same names, for policies that keep
    /// W0 quantized; empty for checkpoints stored as f32/f16/bf16.
    pub blocks: BTreeMap<String, BlockTensor>,
    pub tokenizer: LmTokenizer,
}
