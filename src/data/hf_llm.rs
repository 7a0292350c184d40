//! Llama-family causal LMs in Hugging Face form (`LlamaForCausalLM`, `MistralForCausalLM`,
//! `Qwen2ForCausalLM`): a folder, or a hub name in the HF cache layout (`hf::resolve`), holding
//! config.json, `model.safetensors` or `model.safetensors.index.json` with its shards, and
//! tokenizer.json (+ tokenizer_config.json), loaded into a [`Pretrained`].
//!
//! config.json is read in both forms transformers writes: RoPE settings at the top level
//! (`rope_theta`, `rope_scaling`, as hub checkpoints carry them) or in transformers 5's
//! `rope_parameters`. The architecture is decided by `architectures` (by `model_type` when that
//! list is absent); anything else is refused with the list of what loads.
//!
//! Tokenizer convention (the same for GGUF): encode a text without the tokenizer's own special
//! tokens and prepend `bos` when `add_bos` is set; `add_bos` is true when tokenizer_config.json
//! says `add_bos_token: true` or tokenizer.json's post-processor inserts the bos token itself.

use crate::data::hf::{self, to_f32};
use crate::data::pretrained::{LmTokenizer, Pretrained};
use crate::model::config::{LlamaArch, RopeScaling};
use crate::model::{Flavour, HostWeights, ModelConfig};
use anyhow::{anyhow, bail, Context, Result};
use safetensors::SafeTensors;
use serde::Deserialize;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use crate::adapter::HostTensor;

/// The causal-LM architectures (config.json `architectures`) that load.
pub const SUPPORTED: &[&str] = &["LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM"];

/// Which loader a config.json belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HfFamily {
    /// A BERT-family encoder (`hf::load_dir`).
    Bert,
    /// A Llama-family causal LM (`load_llm`); `qkv_bias` for Qwen2.
    Llama { qkv_bias: bool },
}

/// Bounds on config.json sizes: far above any real model, low enough that shape arithmetic
/// cannot overflow and a corrupt file is named rather than allocated.
const MAX_DIM: usize = 1 << 20;
const MAX_VOCAB: usize = 1 << 24;
const MAX_LAYERS: usize = 1024;

/// The fields of a Llama-family config.json (defaults are transformers' for these classes).
#[derive(Deserialize)]
struct LlmJson {
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    #[serde(default)]
    num_key_value_heads: Option<usize>,
    #[serde(default)]
    head_dim: Option<usize>,
    vocab_size: usize,
    max_position_embeddings: usize,
    #[serde(default)]
    rms_norm_eps: Option<f64>,
    #[serde(default)]
    rope_theta: Option<f64>,
    #[serde(default)]
    rope_scaling: Option<Value>,
    #[serde(default)]
    rope_parameters: Option<Value>,
    #[serde(default)]
    tie_word_embeddings: Option<bool>,
    #[serde(default)]
    hidden_act: Option<String>,
    #[serde(default)]
    attention_bias: Option<bool>,
    #[serde(default)]
    mlp_bias: Option<bool>,
    #[serde(default)]
    sliding_window: Option<usize>,
    #[serde(default)]
    use_sliding_window: Option<bool>,
}

fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{}: cannot read", path.display()))?;
    serde_json::from_str(&text).map_err(|e| {
        anyhow!(
            "{}:{}:{}: invalid JSON: {e}",
            path.display(),
            e.line(),
            e.column()
        )
    })
}

fn config_path(dir: &Path) -> Result<PathBuf> {
    let p = dir.join("config.json");
    if p.is_file() {
        Ok(p)
    } else {
        bail!(
            "{}: missing; a Hugging Face model folder needs config.json, the weights \
             (model.safetensors or model.safetensors.index.json and its shards) and \
             tokenizer.json",
            p.display()
        )
    }
}

/// Which loader the config.json at `path` belongs to: `architectures` decides (else
/// `model_type`); anything else is an error naming it and listing what loads.
pub fn family_of(path: &Path, v: &Value) -> Result<HfFamily> {
    let archs: Vec<&str> = v
        .get("architectures")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let model_type = v.get("model_type").and_then(Value::as_str);
    let llm = |name: &str| match name {
        "LlamaForCausalLM" | "MistralForCausalLM" | "llama" | "mistral" => {
            Some(HfFamily::Llama { qkv_bias: false })
        }
        "Qwen2ForCausalLM" | "qwen2" => Some(HfFamily::Llama { qkv_bias: true }),
        _ => None,
    };
    // BERT folders were always accepted by model_type (or with neither key, as old exports
    // have it), whatever head class `architectures` names.
    let bert = matches!(model_type, Some("bert" | "minilm"))
        || (archs.is_empty() && model_type.is_none())
        || archs.first().is_some_and(|a| a.starts_with("Bert"));
    let found = match archs.first() {
        Some(a) => llm(a),
        None => model_type.and_then(llm),
    }
    .or(bert.then_some(HfFamily::Bert));
    found.ok_or_else(|| {
        let what = match (archs.first(), model_type) {
            (Some(a), _) => format!("architecture {a}"),
            (None, Some(t)) => format!("model_type \"{t}\""),
            (None, None) => "this model".into(),
        };
        anyhow!(
            "{}: {what} is not supported; adarank loads {} (causal LMs) and BERT-family \
             encoders (model_type \"bert\", e.g. BertModel); pick one of those models",
            path.display(),
            SUPPORTED.join(", ")
        )
    })
}

/// The model shape of any supported Hugging Face folder (config.json only, never the
/// weights): what `adarank check` and `adarank plan` read.
pub fn read_model_config(dir: &Path) -> Result<ModelConfig> {
    let path = config_path(dir)?;
    match family_of(&path, &read_json(&path)?)? {
        HfFamily::Bert => Ok(hf::BertConfig::from_file(&path)?.model_config()),
        HfFamily::Llama { .. } => read_llm_config(dir),
    }
}

/// The shape of a Llama-family folder from its config.json alone (for `check` and `plan`).
pub fn read_llm_config(dir: &Path) -> Result<ModelConfig> {
    let path = config_path(dir)?;
    let value = read_json(&path)?;
    let HfFamily::Llama { qkv_bias } = family_of(&path, &value)? else {
        bail!(
            "{}: a BERT-family encoder, not a causal LM ({}); load it as an encoder",
            path.display(),
            SUPPORTED.join(", ")
        );
    };
    let j: LlmJson = serde_json::from_value(value)
        .map_err(|e| anyhow!("{}: not a Llama-family config.json: {e}", path.display()))?;
    llm_config(&j, qkv_bias).map_err(|e| anyhow!("{}: {e}", path.display()))
}

fn llm_config(j: &LlmJson, qkv_bias: bool) -> Result<ModelConfig> {
    for (key, v, max) in [
        ("hidden_size", j.hidden_size, MAX_DIM),
        ("intermediate_size", j.intermediate_size, MAX_DIM),
        ("num_attention_heads", j.num_attention_heads, MAX_DIM),
        ("num_hidden_layers", j.num_hidden_layers, MAX_LAYERS),
        ("vocab_size", j.vocab_size, MAX_VOCAB),
        (
            "max_position_embeddings",
            j.max_position_embeddings,
            MAX_VOCAB,
        ),
    ] {
        if v == 0 || v > max {
            bail!("{key} = {v} is out of range (1..={max})");
        }
    }
    let heads = j.num_attention_heads;
    if !j.hidden_size.is_multiple_of(heads) {
        bail!(
            "hidden_size {} is not a multiple of num_attention_heads {heads}",
            j.hidden_size
        );
    }
    if let Some(d) = j.head_dim.filter(|&d| d != j.hidden_size / heads) {
        bail!(
            "head_dim {d} differs from hidden_size / num_attention_heads = {}; adarank's \
             attention needs head_dim = hidden_size / num_attention_heads",
            j.hidden_size / heads
        );
    }
    let kv_heads = j.num_key_value_heads.unwrap_or(heads);
    if kv_heads == 0 || !heads.is_multiple_of(kv_heads) {
        bail!("num_key_value_heads {kv_heads} does not divide num_attention_heads {heads}");
    }
    if let Some(act) = j.hidden_act.as_deref().filter(|a| *a != "silu") {
        bail!("hidden_act \"{act}\" is not supported (the SwiGLU feed-forward uses \"silu\")");
    }
    for (key, on) in [
        ("attention_bias", j.attention_bias),
        ("mlp_bias", j.mlp_bias),
    ] {
        if on == Some(true) {
            bail!("{key} = true is not supported (only Qwen2's q/k/v biases are)");
        }
    }
    let (rope_theta, rope_scaling) = rope(j)?;
    // Sliding-window attention equals full causal attention on sequences no longer than the
    // window, so such a model is offered at most that many positions.
    let window = match j.use_sliding_window {
        Some(false) => None,
        _ => j.sliding_window,
    };
    let max_positions = window.map_or(j.max_position_embeddings, |w| {
        w.clamp(1, j.max_position_embeddings)
    });
    let cfg = ModelConfig {
        flavour: Flavour::Llama,
        vocab: j.vocab_size,
        max_positions,
        type_vocab: 0,
        hidden: j.hidden_size,
        layers: j.num_hidden_layers,
        heads,
        ffn: j.intermediate_size,
        ln_eps: j.rms_norm_eps.unwrap_or(1e-6) as f32,
        llama: Some(LlamaArch {
            kv_heads,
            rope_theta,
            rope_scaling,
            tie_embeddings: j.tie_word_embeddings.unwrap_or(false),
            qkv_bias,
        }),
    };
    cfg.validate()?;
    Ok(cfg)
}

/// RoPE θ and Llama 3 scaling from either config form; any other scaling type is refused.
fn rope(j: &LlmJson) -> Result<(f32, Option<RopeScaling>)> {
    let params = j.rope_parameters.as_ref().filter(|v| !v.is_null());
    let theta = j
        .rope_theta
        .or_else(|| {
            params
                .and_then(|p| p.get("rope_theta"))
                .and_then(Value::as_f64)
        })
        .unwrap_or(10000.0);
    if !(theta.is_finite() && theta > 0.0) {
        bail!("rope_theta {theta} must be a positive number");
    }
    let scaling = j.rope_scaling.as_ref().filter(|v| !v.is_null()).or(params);
    let Some(s) = scaling else {
        return Ok((theta as f32, None));
    };
    let kind = s
        .get("rope_type")
        .or_else(|| s.get("type"))
        .and_then(Value::as_str)
        .unwrap_or("default");
    match kind {
        "default" => Ok((theta as f32, None)),
        "llama3" => {
            let num = |k: &str| {
                s.get(k)
                    .and_then(Value::as_f64)
                    .filter(|v| v.is_finite() && *v > 0.0)
                    .ok_or_else(|| anyhow!("rope_scaling (llama3) needs a positive `{k}`"))
            };
            let sc = RopeScaling {
                factor: num("factor")? as f32,
                low_freq_factor: num("low_freq_factor")? as f32,
                high_freq_factor: num("high_freq_factor")? as f32,
                original_max_positions: num("original_max_position_embeddings")? as usize,
            };
            if sc.high_freq_factor <= sc.low_freq_factor {
                bail!("rope_scaling (llama3): high_freq_factor must exceed low_freq_factor");
            }
            Ok((theta as f32, Some(sc)))
        }
        other => bail!(
            "rope_scaling type \"{other}\" is not supported (only \"llama3\", or none); use a \
             model without it"
        ),
    }
}

/// The tensors a Llama-family model of shape `cfg` needs, by transformers' names: the model's
/// own list (`model::weights::body_shapes`), so loader and model cannot disagree.
pub fn llama_tensors(cfg: &ModelConfig) -> Vec<(String, Vec<usize>)> {
    crate::model::weights::body_shapes(cfg)
}

/// Load a Llama-family model from a folder (a snapshot folder for hub names: see
/// `hf::resolve`).
pub fn load_llm(dir: &Path) -> Result<Pretrained> {
    let config = read_llm_config(dir)?;
    // The tokenizer first: a mismatched one is found before gigabytes of weights are read.
    let tokenizer = load_tokenizer(dir, &config)?;
    let weights = load_weights(dir, &config)?;
    Ok(Pretrained {
        source: dir.to_path_buf(),
        config,
        weights,
        blocks: BTreeMap::new(),
        tokenizer,
    })
}

/// The safetensors files of a folder.
struct WeightFiles {
    /// `model.safetensors`, or the shards `model.safetensors.index.json` names.
    files: Vec<PathBuf>,
    /// The index's tensor → shard file map (sharded checkpoints only).
    index: Option<BTreeMap<String, String>>,
}

fn weight_files(dir: &Path) -> Result<WeightFiles> {
    let single = dir.join("model.safetensors");
    let index = dir.join("model.safetensors.index.json");
    if !index.is_file() {
        if single.is_file() {
            return Ok(WeightFiles {
                files: vec![single],
                index: None,
            });
        }
        bail!(
            "{}: no weights: neither model.safetensors nor model.safetensors.index.json is \
             there (adarank reads safetensors only; a PyTorch .bin checkpoint must be converted \
             first)",
            dir.display()
        );
    }
    let v = read_json(&index)?;
    let map = v
        .get("weight_map")
        .and_then(Value::as_object)
        .ok_or_else(|| anyhow!("{}: no `weight_map` object", index.display()))?;
    let mut files = BTreeSet::new();
    let mut by_tensor = BTreeMap::new();
    for (name, file) in map {
        let file = file
            .as_str()
            .ok_or_else(|| anyhow!("{}: weight_map[{name}] is not a file name", index.display()))?;
        // A shard is a file beside the index, never a path elsewhere.
        if file.contains('/') || file.contains('\\') || file.starts_with('.') {
            bail!(
                "{}: weight_map[{name}] = \"{file}\" is not a plain file name",
                index.display()
            );
        }
        files.insert(file.to_string());
        by_tensor.insert(name.clone(), file.to_string());
    }
    let mut paths = Vec::new();
    for f in files {
        let p = dir.join(&f);
        if !p.is_file() {
            bail!(
                "{}: shard {f} is missing (named by {}); download the model again, all its \
                 shards",
                p.display(),
                index.display()
            );
        }
        paths.push(p);
    }
    Ok(WeightFiles {
        files: paths,
        index: Some(by_tensor),
    })
}

/// Every tensor of `llama_tensors(cfg)` as f32, checked for shape; tensors the model does not
/// use (e.g. a tied checkpoint's `lm_head.weight`, old `rotary_emb.inv_freq`) are skipped.
fn load_weights(dir: &Path, cfg: &ModelConfig) -> Result<HostWeights> {
    let expected: BTreeMap<String, Vec<usize>> = llama_tensors(cfg).into_iter().collect();
    let WeightFiles { files, index } = weight_files(dir)?;
    let mut weights = HostWeights::new();
    for path in &files {
        let bytes =
            std::fs::read(path).with_context(|| format!("{}: cannot read", path.display()))?;
        let st = SafeTensors::deserialize(&bytes)
            .map_err(|e| anyhow!("{}: not a safetensors file: {e}", path.display()))?;
        for (name, view) in st.iter() {
            let Some(shape) = expected.get(name) else {
                continue;
            };
            if view.shape() != shape.as_slice() {
                bail!(
                    "{}: tensor {name} has shape {:?}, config.json implies {:?}; the weights \
                     and config.json are from different models",
                    path.display(),
                    view.shape(),
                    shape
                );
            }
            let data = to_f32(view.dtype(), view.data()).ok_or_else(|| {
                anyhow!(
                    "{}: tensor {name} has dtype {:?}; weights must be F32, F16 or BF16",
                    path.display(),
                    view.dtype()
                )
            })?;
            if weights
                .insert(name.to_string(), HostTensor::new(shape.clone(), data))
                .is_some()
            {
                bail!(
                    "{}: tensor {name} is stored twice (in two shards)",
                    path.display()
                );
            }
        }
    }
    if let Some((name, shape)) = expected.iter().find(|(n, _)| !weights.contains_key(*n)) {
        let place = match index.as_ref().and_then(|m| m.get(name)) {
            Some(f) => format!("{} (where the index puts it)", dir.join(f).display()),
            None => files
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
        };
        bail!(
            "{place}: missing tensor {name} (shape {shape:?}) that config.json implies; the \
             checkpoint is incomplete or not a {} with these settings",
            SUPPORTED.join(" / ")
        );
    }
    Ok(weights)
}

/// A special token of tokenizer_config.json: a string, or an object with `content`.
fn special(cfg: Option<&Value>, key: &str) -> Option<String> {
    let v = cfg?.get(key)?;
    v.as_str()
        .or_else(|| v.get("content").and_then(Value::as_str))
        .map(str::to_string)
}

/// The first id of a config.json key that holds an id or a list of ids.
fn config_id(cfg: &Value, key: &str) -> Option<u32> {
    let v = cfg.get(key)?;
    v.as_u64()
        .or_else(|| v.as_array()?.first()?.as_u64())
        .and_then(|x| u32::try_from(x).ok())
}

/// tokenizer.json with the bos/eos/pad ids, `add_bos` and the chat template of
/// tokenizer_config.json (falling back to config.json's ids and `chat_template.jinja`).
fn load_tokenizer(dir: &Path, cfg: &ModelConfig) -> Result<LmTokenizer> {
    let path = dir.join("tokenizer.json");
    if !path.is_file() {
        bail!(
            "{}: missing; adarank reads the fast tokenizer's tokenizer.json (download it with \
             the model)",
            path.display()
        );
    }
    let mut inner = tokenizers::Tokenizer::from_file(&path)
        .map_err(|e| anyhow!("{}: not a usable tokenizer.json: {e}", path.display()))?;
    inner.with_padding(None);
    inner
        .with_truncation(None)
        .map_err(|e| anyhow!("{}: {e}", path.display()))?;
    let largest = inner.get_vocab(true).into_values().max().unwrap_or(0) as usize;
    if largest >= cfg.vocab {
        bail!(
            "{}: the tokenizer has token id {largest}, beyond the {} rows of the model's \
             embedding (config.json vocab_size); the tokenizer belongs to another model",
            path.display(),
            cfg.vocab
        );
    }
    let tc_path = dir.join("tokenizer_config.json");
    let tc = if tc_path.is_file() {
        Some(read_json(&tc_path)?)
    } else {
        None
    };
    let model_cfg = read_json(&dir.join("config.json"))?;
    let id_of = |key: &str, cfg_key: &str| -> Result<Option<u32>> {
        match special(tc.as_ref(), key) {
            Some(tok) => inner.token_to_id(&tok).map(Some).ok_or_else(|| {
                anyhow!(
                    "{}: {key} \"{tok}\" is not a token of {}",
                    tc_path.display(),
                    path.display()
                )
            }),
            None => Ok(config_id(&model_cfg, cfg_key)),
        }
    };
    let bos = id_of("bos_token", "bos_token_id")?;
    let eos = id_of("eos_token", "eos_token_id")?.ok_or_else(|| {
        anyhow!(
            "{}: no end-of-sequence token (tokenizer_config.json has no eos_token, config.json \
             no eos_token_id); add one of them",
            dir.display()
        )
    })?;
    let pad = id_of("pad_token", "pad_token_id")?.unwrap_or(eos);
    for (what, id) in [("bos", bos), ("eos", Some(eos)), ("pad", Some(pad))] {
        if let Some(id) = id.filter(|&i| i as usize >= cfg.vocab) {
            bail!(
                "{}: {what} token id {id} is beyond vocab_size {}",
                dir.display(),
                cfg.vocab
            );
        }
    }
    let says_add_bos = tc
        .as_ref()
        .and_then(|t| t.get("add_bos_token"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let inserts_bos = match bos {
        Some(b) => inner
            .encode("a", true)
            .map(|e| e.get_ids().first() == Some(&b))
            .unwrap_or(false),
        None => false,
    };
    Ok(LmTokenizer {
        inner,
        bos,
        eos,
        pad,
        add_bos: bos.is_some() && (says_add_bos || inserts_bos),
        chat_template: chat_template(dir, tc.as_ref())?,
    })
}

/// The chat template of the checkpoint folder `dir` (`None`: it has none), as [`load_llm`] reads
/// it; what `check` asks before a run renders `messages` records with it.
pub fn read_chat_template(dir: &Path) -> Result<Option<String>> {
    let tc_path = dir.join("tokenizer_config.json");
    let tc = if tc_path.is_file() {
        Some(read_json(&tc_path)?)
    } else {
        None
    };
    chat_template(dir, tc.as_ref())
}

/// The chat template: tokenizer_config.json's `chat_template` (a string, or a list of named
/// templates of which `default` is taken), else the `chat_template.jinja` file newer
/// transformers writes beside it.
fn chat_template(dir: &Path, tc: Option<&Value>) -> Result<Option<String>> {
    if let Some(t) = tc.and_then(|t| t.get("chat_template")) {
        if let Some(s) = t.as_str() {
            return Ok(Some(s.to_string()));
        }
        if let Some(list) = t.as_array() {
            let named = |n: &str| {
                list.iter()
                    .find(|e| e.get("name").and_then(Value::as_str) == Some(n))
                    .and_then(|e| e.get("template"))
                    .and_then(Value::as_str)
            };
            return Ok(named("default").map(str::to_string));
        }
    }
    let jinja = dir.join("chat_template.jinja");
    if jinja.is_file() {
        let text = std::fs::read_to_string(&jinja)
            .with_context(|| format!("{}: cannot read", jinja.display()))?;
        return Ok(Some(text));
    }
    Ok(None)
}
