//! `adarank generate` — text from a Llama-family model, the base model or a trained cell: the
//! prompt through the model's chat template (unless `--raw`), then greedy or sampled decoding
//! with a key/value cache (`model::generate`) until EOS, the template's end-of-turn token or
//! `--max-new` tokens.

use crate::backend::cpu::Cpu;
use crate::backend::Backend;
use crate::data::chat::{render_chat, ChatMessage};
use crate::data::pretrained::Pretrained;
use crate::experiment::arm::train_mode;
use crate::experiment::export::{load_final_state, read_cell_info};
use crate::model::generate::{GenConfig, Sampling};
use crate::model::{Head, LoraConfig, Model, TrainMode};
use crate::policy::arm_plan::GgufSpec;
use crate::policy::lm::{model_kind, ModelKind};
use anyhow::{bail, Context, Result};
use clap::Args;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Args, Debug, Clone)]
pub struct GenerateArgs {
    /// The text to answer (a user message, unless --raw).
    pub prompt: String,
    /// The base model: a known GGUF name (`smollm2-135m-instruct`), a .gguf file or a Hugging
    /// Face folder. Not needed with --cell (the cell names its own).
    #[arg(long)]
    pub model: Option<String>,
    /// A trained cell's folder (`RUN/adapters/<arm>-seed<k>`): its adapters (or fully trained
    /// weights) on top of the base model.
    #[arg(long)]
    pub cell: Option<PathBuf>,
    /// A system message before the prompt.
    #[arg(long)]
    pub system: Option<String>,
    /// Feed the prompt as it is, without the chat template.
    #[arg(long)]
    pub raw: bool,
    #[arg(long, default_value_t = 64)]
    pub max_new: usize,
    /// 0 = greedy.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Print the token ids too.
    #[arg(long)]
    pub ids: bool,
}

/// The model file a `--model` value names.
fn model_path(spec: &str) -> Result<PathBuf> {
    let p = PathBuf::from(spec);
    if p.exists() {
        return Ok(p);
    }
    match (GgufSpec::Name(spec.to_string())).file() {
        Some(f) if f.exists() => Ok(f),
        Some(f) => bail!(
            "--model {spec}: {} is not there; run `adarank fetch` to download it",
            f.display()
        ),
        None => bail!(
            "--model {spec}: neither a file or folder nor a known GGUF name \
             (`smollm2-135m-instruct`)"
        ),
    }
}

pub fn main(a: GenerateArgs) -> Result<()> {
    let valid =
        a.temperature >= 0.0 && a.temperature.is_finite() && a.top_p > 0.0 && a.top_p <= 1.0;
    if !valid {
        bail!("--temperature must be ≥ 0 and --top-p in (0, 1]");
    }
    let cell = a.cell.as_ref().map(|c| read_cell_info(c)).transpose()?;
    let path = match (&a.model, &cell) {
        (Some(m), _) => model_path(m)?,
        (None, Some(info)) => match model_kind(&info.arm.model) {
            ModelKind::CausalLm(p) => p,
            _ => bail!("the cell's model is not a causal LM: generation needs a decoder"),
        },
        (None, None) => bail!("name a model (--model) or a trained cell (--cell)"),
    };
    let pre = crate::data::prepare::load_llm(&path)?;
    let be = Arc::new(Cpu::new());
    let mut model = build(be, &pre, cell.as_ref().map(|c| &c.arm))?;
    if let Some(dir) = &a.cell {
        load_final_state(dir, &mut model)?;
    }
    let tok = &pre.tokenizer;
    let text = if a.raw {
        a.prompt.clone()
    } else {
        let Some(template) = &tok.chat_template else {
            bail!("{} has no chat template: use --raw", path.display())
        };
        let mut msgs = Vec::new();
        if let Some(s) = &a.system {
            msgs.push(ChatMessage::new("system", s));
        }
        msgs.push(ChatMessage::new("user", &a.prompt));
        let name = |id: Option<u32>| {
            id.and_then(|i| tok.inner.id_to_token(i))
                .unwrap_or_default()
        };
        render_chat(template, &msgs, true, &name(tok.bos), &name(Some(tok.eos)))?
    };
    let enc = tok
        .inner
        .encode(text.as_str(), false)
        .map_err(|e| anyhow::anyhow!("tokenizing the prompt: {e}"))?;
    let mut ids: Vec<u32> = tok.bos.filter(|_| tok.add_bos).into_iter().collect();
    ids.extend_from_slice(enc.get_ids());
    // EOS, and the chat template's end of turn when the vocabulary has one.
    let mut stop = vec![tok.eos];
    stop.extend(tok.inner.token_to_id("<|im_end|>"));
    stop.extend(tok.inner.token_to_id("<|eot_id|>"));
    let g = GenConfig {
        max_new: a.max_new,
        stop,
        sampling: Sampling {
            temperature: a.temperature,
            top_p: a.top_p,
            seed: a.seed,
        },
    };
    let out = model.generate(&ids, &g).context("generating")?;
    let reply = tok
        .inner
        .decode(&out, true)
        .map_err(|e| anyhow::anyhow!("decoding: {e}"))?;
    println!("{reply}");
    if a.ids {
        println!("prompt ids: {ids:?}");
        println!("generated ids: {out:?}");
    }
    Ok(())
}

/// The base model, or the model a cell trained (its adapters at their starting shapes, which
/// `load_final_state` resizes to the saved ranks).
fn build<B: Backend>(
    be: Arc<B>,
    pre: &Pretrained,
    arm: Option<&crate::policy::ArmPlan>,
) -> Result<Model<B>> {
    let mode = match arm {
        Some(arm) => train_mode(arm, pre.config.layers),
        None => TrainMode::Lora(LoraConfig::default()),
    };
    Model::new(
        be,
        pre.config.clone(),
        Head::LanguageModel,
        mode,
        Some(&pre.weights),
        1,
    )
}
