//! Loading a Llama-family model from a GGUF file (llama.cpp's format): the shape from its
//! metadata, the weights under transformers' names, the frozen matrices in their block format,
//! and the tokenizer and chat template it carries.
//!
//! The container (header, metadata, tensor table) is read by the `gguf-rs-lib` crate, which
//! bounds every count and length it reads and checks each tensor's byte range against the file
//! before anything is allocated; this module gives meaning to what it reads:
//!
//! - the metadata keys `{arch}.block_count`, `embedding_length`, `feed_forward_length`,
//!   `attention.head_count`, `attention.head_count_kv`, `rope.freq_base`,
//!   `rope.dimension_count`, `attention.layer_norm_rms_epsilon` and `context_length` become a
//!   [`ModelConfig`] of the [`Flavour::Llama`] flavour (`tensors.rs` maps the tensors);
//! - `tokenizer.ggml.*` becomes a `tokenizers::Tokenizer` (`vocab.rs`).
//!
//! Every problem is an error naming the file and what is wrong with it, never a panic: a GGUF
//! file is downloaded input.

mod tensors;
mod vocab;

use crate::data::pretrained::{LmTokenizer, Pretrained};
use crate::model::config::LlamaArch;
use crate::model::{Flavour, ModelConfig};
use anyhow::{bail, Context, Result};
use gguf_rs_lib::format::metadata::{Metadata, MetadataValue};
use gguf_rs_lib::reader::file_reader::GGUFFileReader;
use gguf_rs_lib::tensor::TensorInfo;
use std::io::{Read, Seek};
use std::path::Path;

/// The parts of a GGUF file this module reads: metadata, the tensor table and where the tensor
/// data starts.
pub(crate) struct Header {
    pub meta: Metadata,
    pub tensors: Vec<TensorInfo>,
    /// Byte offset of the tensor data section; a tensor's bytes start at this plus its offset.
    pub data_offset: u64,
}

impl Header {
    fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name() == name)
    }
}

/// The architectures this loader knows (`general.architecture`).
const ARCHITECTURES: &[&str] = &["llama"];

/// Reads the header, metadata and tensor table of a GGUF file (not the tensor data), so
/// `adarank check` and the cost model can know a model's shape without loading it.
pub fn read_config(path: &Path) -> Result<ModelConfig> {
    let file = std::fs::File::open(path)
        .with_context(|| format!("{}: cannot open the GGUF file", path.display()))?;
    let header = read_header(std::io::BufReader::new(file), path)?;
    config(&header, path)
}

/// Reads the tokenizer (and its special ids and chat template) from a GGUF file's metadata,
/// without its tensor data.
pub fn read_tokenizer(path: &Path) -> Result<LmTokenizer> {
    let file = std::fs::File::open(path)
        .with_context(|| format!("{}: cannot open the GGUF file", path.display()))?;
    let header = read_header(std::io::BufReader::new(file), path)?;
    vocab::tokenizer_from_metadata(&header.meta).with_context(|| {
        format!(
            "{}: building the tokenizer from its metadata",
            path.display()
        )
    })
}

/// Loads a Llama-family model from a GGUF file: config, f32 weights under transformers' names
/// (Q and K rows back in transformers' order), the block-format matrices, and the tokenizer
/// with its chat template. The file is read once into memory; the f32 weights and the block
/// copies are made from it tensor by tensor.
pub fn load(path: &Path) -> Result<Pretrained> {
    let bytes = std::fs::read(path)
        .with_context(|| format!("{}: cannot read the GGUF file", path.display()))?;
    let header = read_header(std::io::Cursor::new(&bytes[..]), path)?;
    let config = config(&header, path)?;
    let (weights, blocks) = tensors::load_tensors(&header, &bytes, &config, path)?;
    let tokenizer = vocab::tokenizer_from_metadata(&header.meta).with_context(|| {
        format!(
            "{}: building the tokenizer from its metadata",
            path.display()
        )
    })?;
    Ok(Pretrained {
        source: path.to_path_buf(),
        config,
        weights,
        blocks,
        tokenizer,
    })
}

/// Parses the container with `gguf-rs-lib`: magic, version, metadata, tensor table, and every
/// tensor's byte range checked against the file's length.
fn read_header<R: Read + Seek>(reader: R, path: &Path) -> Result<Header> {
    let r = GGUFFileReader::new(reader).map_err(|e| {
        anyhow::anyhow!(
            "{}: not a readable GGUF file ({e}); is it a complete GGUF v3 file? Fetch it again \
             (`adarank fetch`) or check the path",
            path.display()
        )
    })?;
    Ok(Header {
        meta: r.metadata().clone(),
        tensors: r.tensor_infos().to_vec(),
        data_offset: r.tensor_data_offset(),
    })
}

/// `general.architecture`, checked against what this loader knows.
fn architecture<'a>(meta: &'a Metadata, path: &Path) -> Result<&'a str> {
    let arch = meta.get_string("general.architecture").with_context(|| {
        format!(
            "{}: metadata has no general.architecture string",
            path.display()
        )
    })?;
    if !ARCHITECTURES.contains(&arch) {
        bail!(
            "{}: general.architecture is {arch:?}; adarank loads Llama-family GGUF files \
             (architecture \"llama\": Llama, SmolLM, Mistral converted by llama.cpp)",
            path.display()
        );
    }
    Ok(arch)
}

/// An unsigned integer metadata value, any integer width.
fn meta_usize(meta: &Metadata, key: &str, path: &Path) -> Result<usize> {
    let v = meta
        .get(key)
        .with_context(|| format!("{}: metadata key {key} is missing", path.display()))?;
    v.as_u64()
        .and_then(|n| usize::try_from(n).ok())
        .with_context(|| {
            format!(
                "{}: metadata key {key} should be a non-negative integer, found {}",
                path.display(),
                describe_value(v)
            )
        })
}

/// A floating-point metadata value (f32 or f64).
fn meta_f32(meta: &Metadata, key: &str, path: &Path) -> Result<f32> {
    let v = meta
        .get(key)
        .with_context(|| format!("{}: metadata key {key} is missing", path.display()))?;
    let x = match v {
        MetadataValue::F32(x) => *x as f64,
        MetadataValue::F64(x) => *x,
        _ => bail!(
            "{}: metadata key {key} should be a float, found {}",
            path.display(),
            describe_value(v)
        ),
    };
    anyhow::ensure!(
        x.is_finite() && x > 0.0,
        "{}: metadata key {key} must be a positive number, found {x}",
        path.display()
    );
    Ok(x as f32)
}

/// A value's type and, for short ones, the value, for error messages.
fn describe_value(v: &MetadataValue) -> String {
    match v {
        MetadataValue::String(s) if s.len() <= 64 => format!("the string {s:?}"),
        MetadataValue::Array(a) => format!("an array of {} {:?}", a.values.len(), a.element_type),
        other => format!("{other:?}"),
    }
}

/// The model's shape from the metadata, checked (see the module docs for the keys).
fn config(h: &Header, path: &Path) -> Result<ModelConfig> {
    let meta = &h.meta;
    let arch = architecture(meta, path)?;
    let key = |k: &str| format!("{arch}.{k}");
    let hidden = meta_usize(meta, &key("embedding_length"), path)?;
    let heads = meta_usize(meta, &key("attention.head_count"), path)?;
    // Files without the key have no grouped-query attention.
    let kv_heads = match meta.get(&key("attention.head_count_kv")) {
        Some(_) => meta_usize(meta, &key("attention.head_count_kv"), path)?,
        None => heads,
    };
    let vocab = vocab::token_count(meta).with_context(|| format!("{}", path.display()))?;
    if meta.get(&key("vocab_size")).is_some() {
        let stated = meta_usize(meta, &key("vocab_size"), path)?;
        anyhow::ensure!(
            stated == vocab,
            "{}: {} is {stated} but tokenizer.ggml.tokens lists {vocab} tokens",
            path.display(),
            key("vocab_size")
        );
    }
    let cfg = ModelConfig {
        flavour: Flavour::Llama,
        vocab,
        max_positions: meta_usize(meta, &key("context_length"), path)?,
        type_vocab: 0,
        hidden,
        layers: meta_usize(meta, &key("block_count"), path)?,
        heads,
        ffn: meta_usize(meta, &key("feed_forward_length"), path)?,
        ln_eps: meta_f32(meta, &key("attention.layer_norm_rms_epsilon"), path)?,
        llama: Some(LlamaArch {
            kv_heads,
            rope_theta: match meta.get(&key("rope.freq_base")) {
                Some(_) => meta_f32(meta, &key("rope.freq_base"), path)?,
                // llama.cpp's default when a converter wrote none.
                None => 10_000.0,
            },
            rope_scaling: None,
            tie_embeddings: h.tensor("output.weight").is_none(),
            qkv_bias: false,
        }),
    };
    cfg.validate().with_context(|| {
        format!(
            "{}: the metadata describes an impossible model",
            path.display()
        )
    })?;
    check_unsupported(h, &cfg, &key, path)?;
    Ok(cfg)
}

/// Settings a GGUF can carry that the model does not implement: refused by name rather than
/// silently loaded into a model that would compute something else.
fn check_unsupported(
    h: &Header,
    cfg: &ModelConfig,
    key: &dyn Fn(&str) -> String,
    path: &Path,
) -> Result<()> {
    let meta = &h.meta;
    let head_dim = cfg.head_dim();
    if meta.get(&key("rope.dimension_count")).is_some() {
        let rot = meta_usize(meta, &key("rope.dimension_count"), path)?;
        anyhow::ensure!(
            rot == head_dim,
            "{}: {} is {rot} but the head dimension is {head_dim}; partial rotary embeddings \
             are not supported",
            path.display(),
            key("rope.dimension_count")
        );
    }
    for k in ["attention.key_length", "attention.value_length"] {
        if meta.get(&key(k)).is_some() {
            let n = meta_usize(meta, &key(k), path)?;
            anyhow::ensure!(
                n == head_dim,
                "{}: {} is {n}, not embedding_length / head_count = {head_dim}; a head size \
                 of its own is not supported",
                path.display(),
                key(k)
            );
        }
    }
    if let Some(t) = meta.get_string(&key("rope.scaling.type")) {
        anyhow::ensure!(
            t == "none",
            "{}: {} is {t:?}; scaled rotary embeddings are not supported for GGUF files",
            path.display(),
            key("rope.scaling.type")
        );
    }
    anyhow::ensure!(
        h.tensor("rope_freqs.weight").is_none(),
        "{}: the file has rope_freqs.weight (Llama 3.1-style rescaled rotary frequencies), \
         which adarank does not support for GGUF files",
        path.display()
    );
    Ok(())
}
