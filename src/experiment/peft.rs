//! Export of trained adapters in Hugging Face PEFT's LoRA format: `adapter_model.safetensors`
//! (`base_model.model.<module>.lora_A.weight` r×in, `.lora_B.weight` out×r) and
//! `adapter_config.json`. Per-module ranks go into `rank_pattern`, per-module `lora_alpha` into
//! `alpha_pattern`, chosen so PEFT's scale (lora_alpha / r, or lora_alpha / √r with rsLoRA) equals
//! ours exactly; AdaLoRA's λ and the rank engine's gates (SoRA) are folded into B. Slots at rank 0 appear nowhere.
//!
//! The trained head travels as PEFT's `modules_to_save` (the layout PEFT 0.21 writes for
//! `task_type = SEQ_CLS` / `QUESTION_ANS`: the whole module's tensors under
//! `base_model.model.<module>.<param>`, e.g. `base_model.model.classifier.weight`), and module
//! paths carry the prefix of the Hugging Face class that holds the encoder (`bert.` for
//! `BertForSequenceClassification`), so `PeftModel.from_pretrained` on that stock class finds
//! every key. `experiment::export` decides these from the model's head.

use super::fsio::{write_atomic, write_json_atomic};
use crate::adapter::{AdapterHost, AdapterInfo, HostTensor};
use anyhow::{bail, Context, Result};
use safetensors::tensor::{Dtype, TensorView};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

pub const WEIGHTS_FILE: &str = "adapter_model.safetensors";
pub const CONFIG_FILE: &str = "adapter_config.json";

/// The fields of PEFT's `LoraConfig` we write (PEFT fills the others with its defaults).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PeftConfig {
    pub peft_type: String,
    pub task_type: Option<String>,
    pub base_model_name_or_path: Option<String>,
    pub r: usize,
    pub lora_alpha: f64,
    pub lora_dropout: f64,
    pub target_modules: Vec<String>,
    /// Modules saved whole (the head), by module path; PEFT matches them as name suffixes.
    #[serde(default)]
    pub modules_to_save: Option<Vec<String>>,
    pub rank_pattern: BTreeMap<String, usize>,
    pub alpha_pattern: BTreeMap<String, f64>,
    pub use_rslora: bool,
    pub bias: String,
    pub fan_in_fan_out: bool,
    pub inference_mode: bool,
}

#[derive(Clone, Debug, Default)]
pub struct ExportOptions {
    pub base_model: Option<String>,
    pub use_rslora: bool,
    /// Prepended to the module path (e.g. `"bert."` for a BertForSequenceClassification).
    pub module_prefix: String,
    /// Module paths are the Llama family's (`model.layers.N.self_attn.q_proj`, as PEFT names
    /// them under `LlamaForCausalLM`) instead of BERT's.
    pub llama: bool,
    /// PEFT's `task_type` (`"SEQ_CLS"`, `"QUESTION_ANS"`), which picks the `PeftModel` subclass.
    pub task_type: Option<String>,
    /// Modules saved whole (`modules_to_save`), e.g. `["classifier"]`.
    pub modules_to_save: Vec<String>,
    /// Their tensors by full path, e.g. `classifier.weight`, `bert.pooler.dense.weight`; each
    /// must lie under a module of `modules_to_save`.
    pub saved: BTreeMap<String, HostTensor>,
}

/// PEFT's regex key for exactly this module: dots escaped, so `encoder.layer.1.output.dense`
/// does not also match layer 11 or `attention.output.dense` under PEFT's `(.*\.)?key$` rule.
pub fn pattern_key(module: &str) -> String {
    module.replace('.', "\\.")
}

/// lora_alpha that gives scale `s` at rank `r` under PEFT's rule.
fn alpha_for(scale: f32, r: usize, rslora: bool) -> f64 {
    let r = r as f64;
    scale as f64 * if rslora { r.sqrt() } else { r }
}

fn most_common<T: Clone + PartialEq>(xs: &[T]) -> Option<T> {
    let mut best: Option<(T, usize)> = None;
    for x in xs {
        let n = xs.iter().filter(|y| *y == x).count();
        if best.as_ref().is_none_or(|(_, m)| n > *m) {
            best = Some((x.clone(), n));
        }
    }
    best.map(|b| b.0)
}

/// Writes `dir/adapter_model.safetensors` and `dir/adapter_config.json` for `adapters`
/// (info and host tensors in the model's slot order). Returns the number of modules exported.
pub fn export(
    dir: &Path,
    adapters: &[(AdapterInfo, AdapterHost)],
    opts: &ExportOptions,
) -> Result<usize> {
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    let mut modules: Vec<(String, usize, f64)> = Vec::new();
    for (info, host) in adapters.iter().filter(|(i, _)| i.rank > 0) {
        let r = info.rank;
        if host.a.len() != r * info.cols || host.b.len() != info.rows * r {
            bail!(
                "adapter {}: A has {} values and B {}, expected {}×{} and {}×{}",
                info.name,
                host.a.len(),
                host.b.len(),
                r,
                info.cols,
                info.rows,
                r
            );
        }
        let mut b = host.b.clone();
        for (what, m) in [("λ", &host.lambda), ("the gates", &host.gates)] {
            let Some(l) = m else { continue };
            if l.len() != r {
                bail!(
                    "adapter {}: {what} has {} values, rank is {r}",
                    info.name,
                    l.len()
                );
            }
            for row in b.chunks_mut(r) {
                for (x, lk) in row.iter_mut().zip(l) {
                    *x *= lk;
                }
            }
        }
        let path = if opts.llama {
            info.kind.hf_llama_path(info.layer)
        } else {
            info.kind.hf_bert_path(info.layer)
        };
        let module = format!("{}{path}", opts.module_prefix);
        let key = format!("base_model.model.{module}");
        tensors.push((
            format!("{key}.lora_A.weight"),
            vec![r, info.cols],
            bytemuck::cast_slice(&host.a).to_vec(),
        ));
        tensors.push((
            format!("{key}.lora_B.weight"),
            vec![info.rows, r],
            bytemuck::cast_slice(&b).to_vec(),
        ));
        modules.push((module, r, alpha_for(host.scale, r, opts.use_rslora)));
    }
    for (name, t) in &opts.saved {
        let owner = opts
            .modules_to_save
            .iter()
            .any(|m| name.starts_with(&format!("{m}.")) || name.contains(&format!(".{m}.")));
        if !owner || t.shape.iter().product::<usize>() != t.data.len() {
            bail!(
                "saved tensor {name} (shape {:?}, {} values) is not a tensor of a module in \
                 modules_to_save {:?}",
                t.shape,
                t.data.len(),
                opts.modules_to_save
            );
        }
        tensors.push((
            format!("base_model.model.{name}"),
            t.shape.clone(),
            bytemuck::cast_slice(&t.data).to_vec(),
        ));
    }
    let ranks: Vec<usize> = modules.iter().map(|m| m.1).collect();
    let alphas: Vec<f64> = modules.iter().map(|m| m.2).collect();
    let config = PeftConfig {
        peft_type: "LORA".into(),
        task_type: opts.task_type.clone(),
        base_model_name_or_path: opts.base_model.clone(),
        r: most_common(&ranks).unwrap_or(0),
        lora_alpha: most_common(&alphas).unwrap_or(0.0),
        lora_dropout: 0.0,
        target_modules: modules.iter().map(|m| m.0.clone()).collect(),
        modules_to_save: (!opts.modules_to_save.is_empty()).then(|| opts.modules_to_save.clone()),
        // Every module is listed, even those equal to the defaults, so the file says each
        // module's rank and scale without relying on PEFT's fallback rules.
        rank_pattern: modules.iter().map(|m| (pattern_key(&m.0), m.1)).collect(),
        alpha_pattern: modules.iter().map(|m| (pattern_key(&m.0), m.2)).collect(),
        use_rslora: opts.use_rslora,
        bias: "none".into(),
        fan_in_fan_out: false,
        inference_mode: true,
    };
    let views = tensors
        .iter()
        .map(|(n, shape, bytes)| {
            Ok((
                n.clone(),
                TensorView::new(Dtype::F32, shape.clone(), bytes)?,
            ))
        })
        .collect::<Result<Vec<_>>>()?;
    let mut meta = std::collections::HashMap::new();
    meta.insert("format".to_string(), "pt".to_string());
    let bytes = safetensors::serialize(views, Some(meta)).context("serialising adapters")?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    write_atomic(&dir.join(WEIGHTS_FILE), &bytes)?;
    write_json_atomic(&dir.join(CONFIG_FILE), &config)?;
    Ok(modules.len())
}

/// An exported module read back: ΔW = scale · B · A under PEFT's rules.
#[derive(Clone, Debug)]
pub struct PeftModule {
    pub module: String,
    pub rank: usize,
    pub scale: f64,
    pub a: Vec<f32>,
    pub a_shape: [usize; 2],
    pub b: Vec<f32>,
    pub b_shape: [usize; 2],
}

fn tensor_f32(st: &safetensors::SafeTensors, name: &str) -> Result<(Vec<f32>, [usize; 2])> {
    let t = st
        .tensor(name)
        .with_context(|| format!("tensor {name} missing"))?;
    if t.dtype() != Dtype::F32 || t.shape().len() != 2 {
        bail!(
            "tensor {name}: expected a 2-d F32 tensor, found {:?} {:?}",
            t.dtype(),
            t.shape()
        );
    }
    let data = t
        .data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    Ok((data, [t.shape()[0], t.shape()[1]]))
}

/// An export read back: its config, the LoRA modules and the tensors of `modules_to_save` (by
/// full path without `base_model.model.`).
#[derive(Clone, Debug)]
pub struct PeftExport {
    pub config: PeftConfig,
    pub modules: Vec<PeftModule>,
    pub saved: BTreeMap<String, HostTensor>,
}

/// Reads an export back the way PEFT would resolve it: each target module's rank and alpha from
/// the patterns (falling back to `r` and `lora_alpha`), its tensors by PEFT's key names.
pub fn read_back(dir: &Path) -> Result<(PeftConfig, Vec<PeftModule>)> {
    let e = read_export(dir)?;
    Ok((e.config, e.modules))
}

/// [`read_back`], with the tensors of `modules_to_save`. Every tensor in the file must be
/// accounted for: a LoRA factor of a target module or a tensor of a saved module.
pub fn read_export(dir: &Path) -> Result<PeftExport> {
    let config: PeftConfig = super::fsio::read_json(&dir.join(CONFIG_FILE))?;
    let bytes = std::fs::read(dir.join(WEIGHTS_FILE))
        .with_context(|| format!("reading {}", dir.join(WEIGHTS_FILE).display()))?;
    let st = safetensors::SafeTensors::deserialize(&bytes).context("parsing adapter weights")?;
    let mut out = Vec::new();
    for module in &config.target_modules {
        let key = pattern_key(module);
        let rank = config.rank_pattern.get(&key).copied().unwrap_or(config.r);
        let alpha = config
            .alpha_pattern
            .get(&key)
            .copied()
            .unwrap_or(config.lora_alpha);
        let scale = if config.use_rslora {
            alpha / (rank as f64).sqrt()
        } else {
            alpha / rank as f64
        };
        let (a, a_shape) = tensor_f32(&st, &format!("base_model.model.{module}.lora_A.weight"))?;
        let (b, b_shape) = tensor_f32(&st, &format!("base_model.model.{module}.lora_B.weight"))?;
        out.push(PeftModule {
            module: module.clone(),
            rank,
            scale,
            a,
            a_shape,
            b,
            b_shape,
        });
    }
    let mut saved = BTreeMap::new();
    for name in st.names() {
        let Some(rest) = name.strip_prefix("base_model.model.") else {
            bail!("tensor {name}: not under base_model.model.");
        };
        if rest.contains(".lora_A.") || rest.contains(".lora_B.") {
            continue;
        }
        let t = st.tensor(name)?;
        if t.dtype() != Dtype::F32 {
            bail!("tensor {name}: expected F32, found {:?}", t.dtype());
        }
        let data = t
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        saved.insert(rest.to_string(), HostTensor::new(t.shape().to_vec(), data));
    }
    if st.len() != 2 * out.len() + saved.len() {
        bail!(
            "{} tensors in the file, but {} target modules and {} saved tensors",
            st.len(),
            out.len(),
            saved.len()
        );
    }
    Ok(PeftExport {
        config,
        modules: out,
        saved,
    })
}
