//! BERT-family checkpoints in Hugging Face form: a folder holding config.json, model.safetensors
//! and tokenizer.json (plus, for sentence-transformers models, modules.json and the pooling
//! config), found by path or by hub name in the HF cache layout
//! (`models--ORG--NAME/snapshots/REV/`).

use crate::adapter::HostTensor;
use crate::data::assets;
use crate::data::tokenizer::Tokenizer;
use crate::model::{Flavour, ModelConfig};
use anyhow::{anyhow, bail, Context, Result};
use safetensors::{Dtype, SafeTensors};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub use crate::model::{HostWeights, Pooling};

/// The fields of a BERT config.json that the encoder needs.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct BertConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    pub max_position_embeddings: usize,
    #[serde(default = "default_type_vocab")]
    pub type_vocab_size: usize,
    #[serde(default = "default_ln_eps")]
    pub layer_norm_eps: f64,
    #[serde(default = "default_act")]
    pub hidden_act: String,
    #[serde(default)]
    pub pad_token_id: u32,
    #[serde(default)]
    pub model_type: Option<String>,
    #[serde(default)]
    pub position_embedding_type: Option<String>,
}

fn default_type_vocab() -> usize {
    2
}
fn default_ln_eps() -> f64 {
    1e-12
}
fn default_act() -> String {
    "gelu".into()
}

impl BertConfig {
    /// Parse and check a config.json; errors name the file.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("{}: cannot read", path.display()))?;
        // A causal LM or another architecture is named as such, not as a malformed BERT.
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) {
            if let crate::data::hf_llm::HfFamily::Llama { .. } =
                crate::data::hf_llm::family_of(path, &v)?
            {
                bail!(
                    "{}: a causal LM ({}), not a BERT-family encoder; the classification and \
                     span tasks need an encoder",
                    path.display(),
                    v.pointer("/architectures/0")
                        .and_then(|a| a.as_str())
                        .unwrap_or("Llama family")
                );
            }
        }
        let cfg: BertConfig = serde_json::from_str(&text).map_err(|e| {
            anyhow!(
                "{}:{}: not a BERT config.json: {e}",
                path.display(),
                e.line()
            )
        })?;
        cfg.check()
            .map_err(|e| anyhow!("{}: {e}", path.display()))?;
        Ok(cfg)
    }

    fn check(&self) -> Result<()> {
        if let Some(t) = &self.model_type {
            // Encoders that keep BERT's layout and tensor names; RoBERTa-style ones offset
            // positions and would load wrongly.
            if !matches!(t.as_str(), "bert" | "minilm") {
                bail!("model_type \"{t}\" is not supported: only BERT-family encoders load");
            }
        }
        if let Some(p) = &self.position_embedding_type {
            if p != "absolute" {
                bail!("position_embedding_type \"{p}\" is not supported (only \"absolute\")");
            }
        }
        if self.hidden_act != "gelu" {
            bail!(
                "hidden_act \"{}\" is not supported (only \"gelu\", the erf form)",
                self.hidden_act
            );
        }
        if self.num_attention_heads == 0
            || !self.hidden_size.is_multiple_of(self.num_attention_heads)
        {
            bail!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                self.hidden_size,
                self.num_attention_heads
            );
        }
        Ok(())
    }

    /// Every tensor the encoder needs, with its shape, in HF names without `bert.`.
    pub fn expected_tensors(&self) -> Vec<(String, Vec<usize>)> {
        let (h, f) = (self.hidden_size, self.intermediate_size);
        let mut v = vec![
            (
                "embeddings.word_embeddings.weight".into(),
                vec![self.vocab_size, h],
            ),
            (
                "embeddings.position_embeddings.weight".into(),
                vec![self.max_position_embeddings, h],
            ),
            (
                "embeddings.token_type_embeddings.weight".into(),
                vec![self.type_vocab_size, h],
            ),
            ("embeddings.LayerNorm.weight".into(), vec![h]),
            ("embeddings.LayerNorm.bias".into(), vec![h]),
        ];
        for i in 0..self.num_hidden_layers {
            let p = format!("encoder.layer.{i}");
            for (m, rows, cols) in [
                ("attention.self.query", h, h),
                ("attention.self.key", h, h),
                ("attention.self.value", h, h),
                ("attention.output.dense", h, h),
                ("intermediate.dense", f, h),
                ("output.dense", h, f),
            ] {
                v.push((format!("{p}.{m}.weight"), vec![rows, cols]));
                v.push((format!("{p}.{m}.bias"), vec![rows]));
            }
            for ln in ["attention.output.LayerNorm", "output.LayerNorm"] {
                v.push((format!("{p}.{ln}.weight"), vec![h]));
                v.push((format!("{p}.{ln}.bias"), vec![h]));
            }
        }
        v
    }

    /// The model's shape for this checkpoint (a BERT encoder).
    pub fn model_config(&self) -> ModelConfig {
        ModelConfig {
            flavour: Flavour::Encoder,
            vocab: self.vocab_size,
            max_positions: self.max_position_embeddings,
            type_vocab: self.type_vocab_size,
            hidden: self.hidden_size,
            layers: self.num_hidden_layers,
            heads: self.num_attention_heads,
            ffn: self.intermediate_size,
            ln_eps: self.layer_norm_eps as f32,
            llama: None,
        }
    }

    /// Parameters of the encoder (no pooler, no head): the closed form of `expected_tensors`.
    pub fn encoder_params(&self) -> usize {
        let (h, f, l) = (
            self.hidden_size,
            self.intermediate_size,
            self.num_hidden_layers,
        );
        let emb =
            (self.vocab_size + self.max_position_embeddings + self.type_vocab_size) * h + 2 * h;
        let layer = 4 * (h * h + h) + (f * h + f) + (h * f + h) + 4 * h;
        emb + l * layer
    }
}

/// A loaded pretrained encoder (BERT family): config, frozen weights, tokenizer, pooling. Not
/// to be confused with a run's training checkpoints (`experiment::checkpoint`).
pub struct PretrainedEncoder {
    /// The folder it was loaded from (a snapshot folder for hub names).
    pub dir: PathBuf,
    pub config: BertConfig,
    /// Encoder tensors (see `BertConfig::expected_tensors`), plus `pooler.*` (for
    /// `pooling = cls`) and `classifier.*`/`qa_outputs.*` when the checkpoint has them; f16/bf16
    /// tensors are widened to f32.
    pub weights: HostWeights,
    /// Tensors in the file that the model does not use (MLM head, position ids).
    pub ignored: Vec<String>,
    pub tokenizer: Tokenizer,
    pub pooling: Pooling,
}

/// Resolve a model spec: an existing folder, or a hub name `ORG/NAME` searched in the HF cache
/// layout under `$ADARANK_ASSETS/hf`, `$HF_HUB_CACHE`, `$HF_HOME/hub` and
/// `~/.cache/huggingface/hub` (in that order).
pub fn resolve(spec: &str) -> Result<PathBuf> {
    resolve_in(spec, &cache_roots())
}

/// `resolve` with explicit cache roots.
pub fn resolve_in(spec: &str, roots: &[PathBuf]) -> Result<PathBuf> {
    let p = Path::new(spec);
    if p.is_dir() {
        return Ok(p.to_path_buf());
    }
    let parts: Vec<&str> = spec.split('/').collect();
    if parts.len() != 2 || parts.iter().any(|s| s.is_empty()) {
        bail!(
            "model \"{spec}\": no such folder, and not a hub name of the form ORG/NAME; give a \
             folder holding config.json, model.safetensors and tokenizer.json"
        );
    }
    let repo_dir = format!("models--{}--{}", parts[0], parts[1]);
    for root in roots {
        if let Some(snap) = snapshot_in(&root.join(&repo_dir))? {
            return Ok(snap);
        }
    }
    let searched: Vec<String> = roots.iter().map(|r| r.display().to_string()).collect();
    // Only MiniLM is fetched by adarank itself; other models come from the hub's own client.
    let get = if spec == assets::MINILM {
        format!("run `adarank fetch` (or scripts/fetch-assets) to download {spec}")
    } else {
        format!(
            "download it with `huggingface-cli download {spec}` (it fills the same cache), \
             or set HF_HUB_CACHE to the cache that holds it"
        )
    };
    bail!(
        "model \"{spec}\" not found in the Hugging Face cache layout ({repo_dir}/snapshots/REV) \
         under: {}; {get}, or give a local folder holding config.json, the safetensors \
         weights and tokenizer.json",
        searched.join(", "),
    )
}

/// The HF cache roots searched by `resolve`, in order.
pub fn cache_roots() -> Vec<PathBuf> {
    let var = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    let mut roots = vec![assets::assets_hf_cache()];
    if let Some(d) = var("HF_HUB_CACHE") {
        roots.push(d);
    }
    let hf_home = var("HF_HOME").or_else(|| {
        var("XDG_CACHE_HOME")
            .or_else(|| var("HOME").map(|h| h.join(".cache")))
            .map(|c| c.join("huggingface"))
    });
    if let Some(h) = hf_home {
        roots.push(h.join("hub"));
    }
    roots.dedup();
    roots
}

/// The snapshot `refs/main` names; without refs, the only (or newest) snapshot.
fn snapshot_in(repo: &Path) -> Result<Option<PathBuf>> {
    let snaps = repo.join("snapshots");
    if !snaps.is_dir() {
        return Ok(None);
    }
    if let Ok(rev) = std::fs::read_to_string(repo.join("refs").join("main")) {
        let snap = snaps.join(rev.trim());
        if snap.is_dir() {
            return Ok(Some(snap));
        }
    }
    let mut best: Option<(std::time::SystemTime, PathBuf)> = None;
    for e in std::fs::read_dir(&snaps).with_context(|| format!("{}", snaps.display()))? {
        let e = e?;
        if !e.path().join("config.json").is_file() {
            continue;
        }
        let t = e.metadata()?.modified()?;
        if best.as_ref().is_none_or(|(bt, _)| t > *bt) {
            best = Some((t, e.path()));
        }
    }
    Ok(best.map(|(_, p)| p))
}

/// Load a checkpoint by folder or hub name (see `resolve`). The tokenizer's maximum length is
/// the sentence-transformers `max_seq_length` when given, else `max_position_embeddings`.
pub fn load(spec: &str) -> Result<PretrainedEncoder> {
    load_dir(&resolve(spec)?)
}

/// Load a checkpoint from a folder.
pub fn load_dir(dir: &Path) -> Result<PretrainedEncoder> {
    let need = |name: &str| -> Result<PathBuf> {
        let p = dir.join(name);
        if p.is_file() {
            Ok(p)
        } else {
            bail!(
                "{}: missing; a checkpoint folder needs config.json, model.safetensors and \
                 tokenizer.json (run `adarank fetch` for {})",
                p.display(),
                assets::MINILM
            )
        }
    };
    let config = BertConfig::from_file(&need("config.json")?)?;
    let (weights, ignored) = load_weights(&need("model.safetensors")?, &config)?;
    let max_len = read_max_seq_length(dir)?
        .unwrap_or(config.max_position_embeddings)
        .min(config.max_position_embeddings);
    let tokenizer = Tokenizer::from_file(&need("tokenizer.json")?, max_len)?;
    if tokenizer.vocab_size() > config.vocab_size {
        bail!(
            "{}: tokenizer has {} tokens but config.json says vocab_size {}",
            dir.join("tokenizer.json").display(),
            tokenizer.vocab_size(),
            config.vocab_size
        );
    }
    let pooling = read_pooling(dir)?;
    Ok(PretrainedEncoder {
        dir: dir.to_path_buf(),
        config,
        weights,
        ignored,
        tokenizer,
        pooling,
    })
}

/// Read model.safetensors into f32 host tensors named without `bert.`, checked against the
/// config; returns the weights and the names of ignored tensors.
pub fn load_weights(path: &Path, cfg: &BertConfig) -> Result<(HostWeights, Vec<String>)> {
    let bytes = std::fs::read(path).with_context(|| format!("{}: cannot read", path.display()))?;
    let st = SafeTensors::deserialize(&bytes)
        .map_err(|e| anyhow!("{}: not a safetensors file: {e}", path.display()))?;
    let expected: BTreeMap<String, Vec<usize>> = cfg.expected_tensors().into_iter().collect();
    let mut weights = HostWeights::new();
    let mut ignored = Vec::new();
    for (raw_name, view) in st.iter() {
        let name = canonical_name(raw_name);
        let keep = expected.contains_key(&name)
            || name.starts_with("classifier.")
            || name.starts_with("qa_outputs.")
            || name.starts_with("pooler.");
        if !keep {
            ignored.push(raw_name.to_string());
            continue;
        }
        if let Some(shape) = expected.get(&name) {
            if view.shape() != shape.as_slice() {
                bail!(
                    "{}: tensor {raw_name} has shape {:?}, config.json implies {:?}",
                    path.display(),
                    view.shape(),
                    shape
                );
            }
        }
        let data = to_f32(view.dtype(), view.data()).ok_or_else(|| {
            anyhow!(
                "{}: tensor {raw_name} has dtype {:?}; weights must be F32, F16 or BF16",
                path.display(),
                view.dtype()
            )
        })?;
        if weights
            .insert(name.clone(), HostTensor::new(view.shape().to_vec(), data))
            .is_some()
        {
            bail!(
                "{}: tensor {name} appears twice (with and without the `bert.` prefix)",
                path.display()
            );
        }
    }
    if let Some((name, shape)) = expected.iter().find(|(n, _)| !weights.contains_key(*n)) {
        bail!(
            "{}: missing tensor {name} (shape {shape:?}, named with or without `bert.`); is \
             this a BERT checkpoint matching config.json?",
            path.display()
        );
    }
    ignored.sort();
    Ok((weights, ignored))
}

/// Drop the `bert.` prefix and map old TF-converted LayerNorm names (gamma/beta).
fn canonical_name(raw: &str) -> String {
    let n = raw.strip_prefix("bert.").unwrap_or(raw);
    if let Some(stem) = n.strip_suffix("LayerNorm.gamma") {
        return format!("{stem}LayerNorm.weight");
    }
    if let Some(stem) = n.strip_suffix("LayerNorm.beta") {
        return format!("{stem}LayerNorm.bias");
    }
    n.to_string()
}

pub(crate) fn to_f32(dtype: Dtype, bytes: &[u8]) -> Option<Vec<f32>> {
    // Tensor data in a safetensors file need not be aligned, so decode by bytes.
    match dtype {
        Dtype::F32 => Some(
            bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
        ),
        Dtype::F16 => Some(
            bytes
                .chunks_exact(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
        ),
        Dtype::BF16 => Some(
            bytes
                .chunks_exact(2)
                .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
        ),
        _ => None,
    }
}

fn read_json(path: &Path) -> Result<serde_json::Value> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{}: cannot read", path.display()))?;
    serde_json::from_str(&text)
        .map_err(|e| anyhow!("{}:{}: invalid JSON: {e}", path.display(), e.line()))
}

/// `max_seq_length` of sentence_bert_config.json, when the model is a sentence-transformers one.
fn read_max_seq_length(dir: &Path) -> Result<Option<usize>> {
    let p = dir.join("sentence_bert_config.json");
    if !p.is_file() {
        return Ok(None);
    }
    Ok(read_json(&p)?
        .get("max_seq_length")
        .and_then(|v| v.as_u64())
        .map(|v| v as usize))
}

/// The pooling a sentence-transformers model names (modules.json → its Pooling module's
/// config.json); CLS for a plain BERT folder without modules.json.
pub fn read_pooling(dir: &Path) -> Result<Pooling> {
    let modules = dir.join("modules.json");
    if !modules.is_file() {
        return Ok(Pooling::Cls);
    }
    let v = read_json(&modules)?;
    let list = v
        .as_array()
        .ok_or_else(|| anyhow!("{}: expected a JSON array of modules", modules.display()))?;
    let pooling_module = list.iter().find(|m| {
        m.get("type")
            .and_then(|t| t.as_str())
            .is_some_and(|t| t.ends_with(".Pooling"))
    });
    let Some(m) = pooling_module else {
        return Ok(Pooling::Cls);
    };
    let sub = m.get("path").and_then(|p| p.as_str()).unwrap_or("");
    let cfg_path = dir.join(sub).join("config.json");
    let cfg = read_json(&cfg_path)
        .with_context(|| format!("{} names a Pooling module", modules.display()))?;
    let flag = |k: &str| cfg.get(k).and_then(|v| v.as_bool()).unwrap_or(false);
    if let Some(mode) = cfg.get("pooling_mode").and_then(|v| v.as_str()) {
        return match mode {
            "mean" => Ok(Pooling::Mean),
            "cls" => Ok(Pooling::Cls),
            other => bail!(
                "{}: pooling_mode \"{other}\" is not supported (mean or cls)",
                cfg_path.display()
            ),
        };
    }
    let mean = flag("pooling_mode_mean_tokens");
    let cls = flag("pooling_mode_cls_token");
    let others = [
        "pooling_mode_max_tokens",
        "pooling_mode_mean_sqrt_len_tokens",
    ]
    .into_iter()
    .filter(|k| flag(k))
    .collect::<Vec<_>>();
    match (mean, cls, others.is_empty()) {
        (true, false, true) => Ok(Pooling::Mean),
        (false, true, true) => Ok(Pooling::Cls),
        _ => bail!(
            "{}: only one of pooling_mode_mean_tokens or pooling_mode_cls_token may be set \
             (other modes are not supported)",
            cfg_path.display()
        ),
    }
}
