//! What a finished cell leaves behind for later use, in `adapters/<arm>-seed<k>/`:
//! - the PEFT export (`adapter_model.safetensors`, `adapter_config.json`) when the arm trains
//!   adapters, laid out for the Hugging Face class that matches the head ([`hf_layout`]): the
//!   head (and, for `pooling = cls`, BERT's pooler) in `modules_to_save`, `task_type` set, module
//!   paths under that class's `bert.` prefix; beside it a `README.md` ([`usage_note`]) that
//!   says how to load it, and for a mean-pooled classifier what a user must compute instead of
//!   the stock forward;
//! - `final_state.safetensors`: every trainable tensor of the final state (no optimizer moments)
//!   with the adapter ranks and scales, so `adarank eval` rebuilds the trained model exactly,
//!   full fine-tuning included;
//! - `adarank.json` ([`CellInfo`]): the arm's plan, the seed and the head, so the folder can be
//!   evaluated on its own, and the Hugging Face class to load the export into.
//!
//! [`load_final_state`] and [`import_peft`] are the way back.

use super::checkpoint::{self, Checkpoint};
use super::fsio::write_json_atomic;
use super::peft::{self, ExportOptions};
use crate::adapter::{AdapterStore, HostTensor, ModuleKind};
use crate::backend::Backend;
use crate::data::prepare::Split;
use crate::model::{Flavour, Head, Model, ModelState, Pooling, StateMeta, TrainMode};
use crate::policy::ArmPlan;
use anyhow::{bail, ensure, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

pub const FINAL_STATE: &str = "final_state.safetensors";
pub const CELL_INFO: &str = "adarank.json";
const FORMAT: u32 = 1;

/// `adarank.json`: what a cell's folder is.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CellInfo {
    pub format: u32,
    pub seed: u64,
    /// Optimizer steps the cell took.
    pub steps: u64,
    pub head: Head,
    /// The Hugging Face class the PEFT export loads into as trained (`None`: no stock class).
    pub hf_class: Option<String>,
    /// The base model (`hf` name or folder), `None` for a randomly initialised one.
    pub base_model: Option<String>,
    /// The held-out split the cell was evaluated on (as asked of `build_task`).
    #[serde(default)]
    pub split: Split,
    pub arm: ArmPlan,
}

/// How an export maps onto Hugging Face classes.
#[derive(Clone, Debug, PartialEq)]
pub struct HfLayout {
    /// The stock class whose module names the export uses (`None`: plain `BertModel` names).
    pub class: Option<&'static str>,
    /// PEFT's task type for it.
    pub task_type: Option<&'static str>,
    /// Prefix of the encoder's modules inside that class.
    pub prefix: &'static str,
    /// The modules saved whole, and our parameter names that belong to them.
    pub modules_to_save: Vec<&'static str>,
}

impl HfLayout {
    /// The export name of one of our parameter names (`classifier.weight` stays, encoder and
    /// pooler names get the class's prefix).
    pub fn hf_name(&self, ours: &str) -> String {
        if ours.starts_with("classifier.") || ours.starts_with("qa_outputs.") {
            ours.to_string()
        } else {
            format!("{}{ours}", self.prefix)
        }
    }
    /// Our parameter name of an export name; `None` when it lies outside the class's encoder.
    pub fn our_name(&self, hf: &str) -> Option<String> {
        if hf.starts_with("classifier.") || hf.starts_with("qa_outputs.") {
            Some(hf.to_string())
        } else {
            hf.strip_prefix(self.prefix).map(str::to_string)
        }
    }
    /// Whether our parameter `name` is saved whole in the export.
    pub fn saves(&self, name: &str) -> bool {
        self.modules_to_save.iter().any(|m| match *m {
            "pooler" => name.starts_with("pooler."),
            m => name.starts_with(&format!("{m}.")),
        })
    }
}

/// The Hugging Face class and PEFT task type that reproduce a model with this head: a BERT
/// encoder with a classification head is `BertForSequenceClassification` (its classifier reads
/// BERT's pooler: exact for `pooling = cls`; for mean pooling `examples/load_in_peft.py` pools
/// itself), a span head `BertForQuestionAnswering`, a Llama-family model `LlamaForCausalLM`
/// (`CAUSAL_LM`). Other heads and the GPT-style decoder have no stock
/// class: the export then uses `BertModel`'s names, without a task type.
pub fn hf_layout(flavour: Flavour, head: &Head) -> HfLayout {
    let plain = HfLayout {
        class: None,
        task_type: None,
        prefix: "",
        modules_to_save: vec![],
    };
    if flavour == Flavour::Llama {
        // PEFT's causal-LM wrapper over the stock class: modules under `model.layers.N`, the
        // LM head frozen (tied or not), nothing saved whole.
        return HfLayout {
            class: Some("LlamaForCausalLM"),
            task_type: Some("CAUSAL_LM"),
            prefix: "",
            modules_to_save: vec![],
        };
    }
    if flavour != Flavour::Encoder {
        return plain;
    }
    match *head {
        Head::Classify { pooling, .. } => HfLayout {
            class: Some("BertForSequenceClassification"),
            task_type: Some("SEQ_CLS"),
            prefix: "bert.",
            modules_to_save: match pooling {
                Pooling::Cls => vec!["classifier", "pooler"],
                Pooling::Mean => vec!["classifier"],
            },
        },
        Head::Span => HfLayout {
            class: Some("BertForQuestionAnswering"),
            task_type: Some("QUESTION_ANS"),
            prefix: "bert.",
            modules_to_save: vec!["qa_outputs"],
        },
        Head::Regress | Head::LanguageModel => plain,
    }
}

/// Writes the cell's folder `dir` (see the module docs) from the trained `model`.
/// `base_has_pooler`: the base checkpoint carries BERT's pooler, which LoRA leaves frozen, so
/// the export need not repeat it (PEFT's own SEQ_CLS exports do not); a pooler drawn here (a
/// randomly initialised model, or a checkpoint without one) is exported as a saved module.
pub fn export_cell<B: Backend>(
    dir: &Path,
    model: &mut Model<B>,
    info: &CellInfo,
    use_rslora: bool,
    base_has_pooler: bool,
) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut layout = hf_layout(model.config().flavour, model.head());
    if base_has_pooler {
        layout.modules_to_save.retain(|m| *m != "pooler");
    }
    let infos = model.adapters();
    if infos.iter().any(|a| a.rank > 0) {
        let mut pairs = Vec::new();
        for (i, a) in infos.iter().enumerate() {
            if a.rank > 0 {
                pairs.push((a.clone(), model.adapter_host(i)?));
            }
        }
        let saved = model
            .named_host(|n| layout.saves(n))?
            .into_iter()
            .map(|(n, t)| (layout.hf_name(&n), t))
            .collect();
        peft::export(
            dir,
            &pairs,
            &ExportOptions {
                base_model: info.base_model.clone(),
                use_rslora,
                module_prefix: layout.prefix.to_string(),
                llama: model.config().flavour == Flavour::Llama,
                task_type: layout.task_type.map(str::to_string),
                modules_to_save: layout
                    .modules_to_save
                    .iter()
                    .map(|m| m.to_string())
                    .collect(),
                saved,
            },
        )?;
        if let Some(text) = usage_note(&layout, model.head(), info) {
            super::fsio::write_atomic(&dir.join(USAGE_NOTE), text.as_bytes())?;
        }
    }
    let state = model.state()?;
    let tensors = state
        .tensors
        .into_iter()
        .filter(|(n, _)| !n.ends_with(".exp_avg") && !n.ends_with(".exp_avg_sq"))
        .collect();
    checkpoint::save(
        &dir.join(FINAL_STATE),
        &Checkpoint {
            step: state.meta.step,
            tensors,
            state: serde_json::json!({ "model": state.meta }),
        },
    )?;
    write_json_atomic(&dir.join(CELL_INFO), info)
}

/// The model card of a PEFT export (Hugging Face shows a folder's `README.md`): the class to
/// load it into and, for a mean-pooled classifier, that the stock class's own forward is not
/// what was trained (it reads BERT's pooler, which loads without a missing key and gives other
/// answers, silently) and what to call instead.
pub const USAGE_NOTE: &str = "README.md";

/// [`USAGE_NOTE`]'s text; `None` for an export no stock class loads.
pub fn usage_note(layout: &HfLayout, head: &Head, info: &CellInfo) -> Option<String> {
    let class = layout.class?;
    let base = info.base_model.as_deref().unwrap_or("(the base model)");
    let mut t = format!(
        "# adarank export: arm `{}`, seed {}\n\nA PEFT LoRA adapter for `{class}` over `{base}` \
         (`task_type` {}).\n\n```python\nfrom peft import PeftModel\nfrom transformers import {class}\n",
        info.arm.name,
        info.seed,
        layout.task_type.unwrap_or("none"),
    );
    match *head {
        Head::Classify { classes, pooling } => {
            t += &format!(
                "model = {class}.from_pretrained(\"{base}\", num_labels={classes})\n\
                 model = PeftModel.from_pretrained(model, \"CELL_DIR\")\n```\n\n"
            );
            t += match pooling {
                Pooling::Cls => {
                    "The classifier reads BERT's pooler (`pooling = cls`), as the stock class \
                     does: `model(**enc).logits`, `pipeline()` and `Trainer.evaluate` give \
                     adarank's answers as they are.\n"
                }
                Pooling::Mean => {
                    "**Pooling: mean.** This classifier was trained on the mean of the final \
                     hidden states over the real tokens, not on BERT's pooler. The stock class \
                     loads it without a missing key, but its own forward (`model(**enc)`, \
                     `pipeline()`, `Trainer.evaluate`) feeds the classifier the pooler's output \
                     and gives other, wrong answers. Compute the logits as adarank does:\n\n\
                     ```python\nbert = model.base_model.model\n\
                     hidden = bert.bert(input_ids=ids, attention_mask=mask).last_hidden_state\n\
                     m = mask.unsqueeze(-1).to(hidden.dtype)\n\
                     logits = bert.classifier((hidden * m).sum(1) / m.sum(1))\n```\n\n\
                     (`mean_pooled_logits` in adarank's `examples/load_in_peft.py`), or train \
                     with `pooling = cls`, the default.\n"
                }
            };
        }
        _ => {
            t += &format!(
                "model = {class}.from_pretrained(\"{base}\")\n\
                 model = PeftModel.from_pretrained(model, \"CELL_DIR\")\n```\n"
            );
        }
    }
    Some(t)
}

/// Reads a cell folder's `adarank.json`.
pub fn read_cell_info(dir: &Path) -> Result<CellInfo> {
    let info: CellInfo = super::fsio::read_json(&dir.join(CELL_INFO))?;
    ensure!(
        info.format == FORMAT,
        "{}: format {} (this adarank reads {FORMAT})",
        dir.join(CELL_INFO).display(),
        info.format
    );
    Ok(info)
}

/// A state with zero optimizer moments for `tensors` (evaluation never steps the optimizer, and
/// `Model::load_state` restores moments with the weights).
fn with_zero_moments(meta: StateMeta, tensors: BTreeMap<String, HostTensor>) -> ModelState {
    let mut all = BTreeMap::new();
    for (name, t) in tensors {
        for suffix in [".exp_avg", ".exp_avg_sq"] {
            all.insert(
                format!("{name}{suffix}"),
                HostTensor::new(t.shape.clone(), vec![0.0; t.data.len()]),
            );
        }
        all.insert(name, t);
    }
    ModelState { meta, tensors: all }
}

/// Restores the final state saved by [`export_cell`] into `model`, built as the cell built it.
pub fn load_final_state<B: Backend>(dir: &Path, model: &mut Model<B>) -> Result<()> {
    let ck = checkpoint::load(&dir.join(FINAL_STATE))?;
    let meta: StateMeta = serde_json::from_value(
        ck.state
            .get("model")
            .cloned()
            .context("final state without its model metadata")?,
    )
    .context("final state: model metadata")?;
    model
        .load_state(&with_zero_moments(meta, ck.tensors))
        .with_context(|| format!("loading {}", dir.join(FINAL_STATE).display()))
}

/// Loads a PEFT export (ours, or one PEFT wrote for the same base model and head) into `model`,
/// a LoRA model with the base weights: each target module's factors at its rank and scale, the
/// saved modules' tensors (head, pooler) by name. Slots the export does not name get rank 0.
pub fn import_peft<B: Backend>(dir: &Path, model: &mut Model<B>) -> Result<()> {
    let e = peft::read_export(dir)?;
    let layout = hf_layout(model.config().flavour, model.head());
    let slots = model.adapters();
    ensure!(
        !slots.is_empty(),
        "{}: a PEFT export needs a model with adapters",
        dir.display()
    );
    let mut ranks = vec![0usize; slots.len()];
    let mut scales = vec![0.0f32; slots.len()];
    let mut tensors = BTreeMap::new();
    let mut param_steps = BTreeMap::new();
    for m in &e.modules {
        let path = layout
            .our_name(&m.module)
            .unwrap_or_else(|| m.module.clone());
        let cfg = model.config();
        let Some(i) = slots
            .iter()
            .position(|s| cfg.module_path(s.layer, s.kind) == path)
        else {
            bail!(
                "{}: target module {} is not an adapter slot of this model (slots are named \
                 like {}{})",
                dir.display(),
                m.module,
                layout.prefix,
                cfg.module_path(0, ModuleKind::Q)
            );
        };
        let s = &slots[i];
        ensure!(
            m.a_shape == [m.rank, s.cols] && m.b_shape == [s.rows, m.rank],
            "{}: {} has A {:?} and B {:?}, the model's {}×{} weight needs [{r}, {}] and [{}, {r}]",
            dir.display(),
            m.module,
            m.a_shape,
            m.b_shape,
            s.rows,
            s.cols,
            s.cols,
            s.rows,
            r = m.rank
        );
        ranks[i] = m.rank;
        scales[i] = m.scale as f32;
        for (name, t) in [
            (
                "lora_A.weight",
                HostTensor::new(m.a_shape.to_vec(), m.a.clone()),
            ),
            (
                "lora_B.weight",
                HostTensor::new(m.b_shape.to_vec(), m.b.clone()),
            ),
            // The SVD form's λ: the export folds it into B, so it is 1 here.
            ("lora_E", HostTensor::new(vec![m.rank], vec![1.0; m.rank])),
        ] {
            let n = format!("{path}.{name}");
            param_steps.insert(n.clone(), 0);
            tensors.insert(n, t);
        }
    }
    let mut saved = BTreeMap::new();
    for (hf, t) in &e.saved {
        let ours = layout.our_name(hf).with_context(|| {
            format!(
                "{}: saved tensor {hf} is outside this model (expected names under `{}`)",
                dir.display(),
                layout.prefix
            )
        })?;
        saved.insert(ours, t.clone());
    }
    // Trainable tensors the export does not carry (none for our exports) keep the model's.
    let current = model.trainable_host()?;
    for (name, t) in current {
        if !tensors.contains_key(&name) && !name.contains(".lora_") {
            let v = saved.get(&name).cloned().unwrap_or(t);
            param_steps.insert(name.clone(), 0);
            tensors.insert(name, v);
        }
    }
    let meta = StateMeta {
        step: 0,
        resizes: 0,
        init_ranks: ranks.clone(),
        ranks,
        scales,
        lambda_masks: vec![],
        param_steps,
        rewarms: BTreeMap::new(),
    };
    let svd = matches!(model.mode(), TrainMode::Lora(l) if l.svd_form);
    if !svd {
        tensors.retain(|n, _| !n.ends_with(".lora_E"));
    }
    model
        .load_state(&with_zero_moments(meta, tensors))
        .with_context(|| format!("loading the PEFT export in {}", dir.display()))?;
    // Saved tensors that do not train here (the pooler under LoRA) are written directly.
    model.overwrite(&saved)?;
    Ok(())
}
