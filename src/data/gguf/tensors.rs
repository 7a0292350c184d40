//! GGUF tensors → transformers' weights: names, shapes, dequantization, and the Q/K row order.
//!
//! GGUF writes a tensor's dimensions innermost first: a matrix W: [out, in] is stored with
//! ne0 = in (the row width) and ne1 = out, rows contiguous — the same bytes as a row-major
//! [out, in], so only the listed dimensions are reversed.
//!
//! llama.cpp's converter (`convert_hf_to_gguf.py`, `LlamaModel.permute`) reorders the rows of
//! q_proj and k_proj within each head so that its RoPE, which rotates adjacent pairs, computes
//! what transformers' half-split `rotate_half` computes: GGUF row (h, i, j) holds transformers'
//! row (h, j, i), for head h, i < head_dim/2, j ∈ {0, 1}. Loading undoes that with heads =
//! head_count for Q and head_count_kv for K. A row is whole quantization blocks, so the block
//! bytes are reordered the same way, exactly.

use super::Header;
use crate::adapter::HostTensor;
use crate::data::pretrained::BlockTensor;
use crate::model::{HostWeights, ModelConfig};
use anyhow::{bail, Context, Result};
use gguf_rs_lib::format::types::GGUFTensorType as Ty;
use gguf_rs_lib::tensor::TensorInfo;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// How one GGUF tensor becomes a transformers weight.
struct Target {
    /// transformers' name.
    hf: String,
    /// transformers' shape: [rows, cols] for a matrix, [n] for a vector.
    shape: Vec<usize>,
    /// Heads whose rows to put back in transformers' order (Q and K), or 0.
    unpermute_heads: usize,
}

/// The GGUF tensors a Llama model has, by GGUF name.
fn targets(cfg: &ModelConfig) -> BTreeMap<String, Target> {
    let (c, f, v, kv) = (cfg.hidden, cfg.ffn, cfg.vocab, cfg.kv_width());
    let mut m = BTreeMap::new();
    let mut put = |gguf: String, hf: String, shape: Vec<usize>, heads: usize| {
        m.insert(
            gguf,
            Target {
                hf,
                shape,
                unpermute_heads: heads,
            },
        );
    };
    put(
        "token_embd.weight".into(),
        "model.embed_tokens.weight".into(),
        vec![v, c],
        0,
    );
    put(
        "output_norm.weight".into(),
        "model.norm.weight".into(),
        vec![c],
        0,
    );
    if !cfg.llama.as_ref().is_some_and(|l| l.tie_embeddings) {
        put(
            "output.weight".into(),
            "lm_head.weight".into(),
            vec![v, c],
            0,
        );
    }
    for i in 0..cfg.layers {
        let (b, l) = (format!("blk.{i}."), format!("model.layers.{i}."));
        let mut add = |g: &str, h: &str, shape: Vec<usize>, heads: usize| {
            put(
                format!("{b}{g}.weight"),
                format!("{l}{h}.weight"),
                shape,
                heads,
            )
        };
        add("attn_norm", "input_layernorm", vec![c], 0);
        add("attn_q", "self_attn.q_proj", vec![c, c], cfg.heads);
        add("attn_k", "self_attn.k_proj", vec![kv, c], cfg.kv_heads());
        add("attn_v", "self_attn.v_proj", vec![kv, c], 0);
        add("attn_output", "self_attn.o_proj", vec![c, c], 0);
        add("ffn_norm", "post_attention_layernorm", vec![c], 0);
        add("ffn_gate", "mlp.gate_proj", vec![f, c], 0);
        add("ffn_up", "mlp.up_proj", vec![f, c], 0);
        add("ffn_down", "mlp.down_proj", vec![c, f], 0);
    }
    m
}

/// Every tensor of the file as f32 under transformers' names, and the block-format ones also
/// as [`BlockTensor`]s. A tensor the model does not have, a missing one, a shape that does not
/// match the metadata, or a storage type other than F32, F16, BF16, Q8_0, Q4_0, Q4_1 is an
/// error naming the tensor.
pub(super) fn load_tensors(
    h: &Header,
    bytes: &[u8],
    cfg: &ModelConfig,
    path: &Path,
) -> Result<(HostWeights, BTreeMap<String, BlockTensor>)> {
    let targets = targets(cfg);
    let present: BTreeSet<&str> = h.tensors.iter().map(|t| t.name()).collect();
    if let Some(missing) = targets.keys().find(|n| !present.contains(n.as_str())) {
        bail!(
            "{}: tensor {missing} is missing ({} layers of hidden size {} need it)",
            path.display(),
            cfg.layers,
            cfg.hidden
        );
    }
    let mut weights = HostWeights::new();
    let mut blocks = BTreeMap::new();
    for info in &h.tensors {
        let name = info.name();
        let Some(t) = targets.get(name) else {
            bail!(
                "{}: tensor {name} is not part of a {}-layer Llama model; adarank does not know \
                 what to do with it",
                path.display(),
                cfg.layers
            );
        };
        let raw = tensor_bytes(h, info, bytes, path)?;
        let format = Format::of(info.tensor_type()).with_context(|| {
            format!(
                "{}: tensor {name} is stored as {}; adarank reads F32, F16, BF16, Q8_0, Q4_0 \
                 and Q4_1 (re-quantize the file, e.g. with llama.cpp's llama-quantize)",
                path.display(),
                info.tensor_type().name()
            )
        })?;
        check_shape(info, &t.shape, path)?;
        let (rows, cols) = match t.shape[..] {
            [r, c] => (r, c),
            _ => (1, t.shape[0]),
        };
        let mut data = format
            .dequantize(raw, rows * cols)
            .with_context(|| format!("{}: tensor {name}", path.display()))?;
        let heads = t.unpermute_heads;
        if heads > 0 {
            data = unpermute_rows(&data, rows, heads, path, name)?;
        }
        if let Some(dtype) = format.block_dtype() {
            let bytes = if heads > 0 {
                unpermute_rows(raw, rows, heads, path, name)?
            } else {
                raw.to_vec()
            };
            let shape = [rows, cols];
            blocks.insert(
                t.hf.clone(),
                BlockTensor {
                    dtype,
                    shape,
                    bytes,
                },
            );
        }
        weights.insert(t.hf.clone(), HostTensor::new(t.shape.clone(), data));
    }
    Ok((weights, blocks))
}

/// The bytes of one tensor (its range was checked against the file by the container reader;
/// checked again here so a mistake cannot panic).
fn tensor_bytes<'a>(
    h: &Header,
    info: &TensorInfo,
    bytes: &'a [u8],
    path: &Path,
) -> Result<&'a [u8]> {
    let len = info.checked_expected_data_size().ok();
    let start = h.data_offset.checked_add(info.data_offset());
    let range = start.zip(len).and_then(|(s, n)| {
        Some((
            usize::try_from(s).ok()?,
            usize::try_from(s.checked_add(n)?).ok()?,
        ))
    });
    range.and_then(|(s, e)| bytes.get(s..e)).with_context(|| {
        format!(
            "{}: tensor {} lies outside the file (truncated download?)",
            path.display(),
            info.name()
        )
    })
}

/// The file's dimensions (innermost first) must be transformers' shape reversed.
fn check_shape(info: &TensorInfo, want: &[usize], path: &Path) -> Result<()> {
    let dims: Vec<u64> = info.shape().dims().to_vec();
    let expect: Vec<u64> = want.iter().rev().map(|&d| d as u64).collect();
    anyhow::ensure!(
        dims == expect,
        "{}: tensor {} has dimensions {dims:?} (innermost first); the metadata implies {expect:?}",
        path.display(),
        info.name()
    );
    Ok(())
}

/// Puts the rows of a Q or K matrix (`data` is `rows` equal rows of any element type) back in
/// transformers' order: transformers' row (h, j, i) is the file's row (h, i, j) (module docs).
fn unpermute_rows<T: Copy>(
    data: &[T],
    rows: usize,
    heads: usize,
    path: &Path,
    name: &str,
) -> Result<Vec<T>> {
    anyhow::ensure!(
        rows > 0 && rows.is_multiple_of(2 * heads) && data.len().is_multiple_of(rows),
        "{}: tensor {name} has {rows} rows, not a whole number of heads ({heads}) with an even \
         head size",
        path.display()
    );
    let (width, half) = (data.len() / rows, rows / heads / 2);
    let mut out = Vec::with_capacity(data.len());
    for h in 0..heads {
        for j in 0..2 {
            for i in 0..half {
                let src = (h * 2 * half + i * 2 + j) * width;
                out.extend_from_slice(&data[src..src + width]);
            }
        }
    }
    Ok(out)
}

/// The storage types this loader reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Format {
    F32,
    F16,
    Bf16,
    /// One of GGUF's block formats, kept as a [`BlockTensor`] too.
    Block(crate::backend::DType),
}

impl Format {
    fn of(t: Ty) -> Option<Format> {
        use crate::backend::DType;
        Some(match t {
            Ty::F32 => Format::F32,
            Ty::F16 => Format::F16,
            Ty::BF16 => Format::Bf16,
            Ty::Q8_0 => Format::Block(DType::Q8_0),
            Ty::Q4_0 => Format::Block(DType::Q4_0),
            Ty::Q4_1 => Format::Block(DType::Q4_1),
            _ => return None,
        })
    }

    fn block_dtype(self) -> Option<crate::backend::DType> {
        match self {
            Format::Block(d) => Some(d),
            _ => None,
        }
    }

    /// `len` values from `raw` as f32 (f16 and bf16 widened exactly, blocks dequantized).
    fn dequantize(self, raw: &[u8], len: usize) -> Result<Vec<f32>> {
        let width = match self {
            Format::F32 => 4,
            Format::F16 | Format::Bf16 => 2,
            Format::Block(d) => return crate::backend::dequantize(d, raw, len),
        };
        anyhow::ensure!(
            raw.len() == len * width,
            "{} bytes do not hold {len} values of {width} bytes",
            raw.len()
        );
        let words = raw.chunks_exact(width);
        Ok(match self {
            Format::F32 => words
                .map(|w| f32::from_le_bytes([w[0], w[1], w[2], w[3]]))
                .collect(),
            Format::F16 => words
                .map(|w| half::f16::from_le_bytes([w[0], w[1]]).to_f32())
                .collect(),
            _ => words
                .map(|w| half::bf16::from_le_bytes([w[0], w[1]]).to_f32())
                .collect(),
        })
    }
}
