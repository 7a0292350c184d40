//! What `check` and `plan` know of a model before anything loads. A random model has the
//! policy's own shape. A pretrained one has the shape its files say when they are on this
//! machine (the config.json of the folder or HF cache entry, the GGUF header), else the shape
//! `known_models` records for its name, so a policy checks before the download; a model that
//! is neither on disk nor known is an error that says where adarank looked and how to get it.

use super::arm_plan::{GgufSpec, ModelSpec};
use super::known_models;
use crate::data::{hf, hf_llm};
use crate::model::{Flavour, ModelConfig};
use std::path::{Path, PathBuf};

/// Where a pretrained model's shape came from.
#[derive(Clone, Debug, PartialEq)]
pub enum Origin {
    /// The policy's own `model encoder|decoder { .. }`.
    Policy,
    /// Read from this file (a config.json or a GGUF file).
    File(PathBuf),
    /// `known_models`: the checkpoint is not on this machine yet.
    Known,
}

/// Why a model section cannot be used, as a diagnostic says it.
#[derive(Clone, Debug, PartialEq)]
pub struct Problem {
    pub message: String,
    pub help: String,
}

/// The shape of a randomly initialised `model encoder|decoder { .. }`; `None` for pretrained
/// models.
pub fn transformer(spec: &ModelSpec) -> Option<ModelConfig> {
    let (flavour, t) = match spec {
        ModelSpec::Encoder(t) => (Flavour::Encoder, t),
        ModelSpec::Decoder(t) => (Flavour::Decoder, t),
        _ => return None,
    };
    Some(ModelConfig {
        flavour,
        vocab: t.vocab,
        max_positions: t.max_positions,
        type_vocab: 2,
        hidden: t.hidden,
        layers: t.layers,
        heads: t.heads,
        ffn: t.ffn,
        ln_eps: 1e-5,
        llama: None,
    })
}

/// The model's shape and where it came from (see the module docs).
pub fn shape(spec: &ModelSpec) -> Result<(ModelConfig, Origin), Problem> {
    if let Some(cfg) = transformer(spec) {
        return Ok((cfg, Origin::Policy));
    }
    match spec {
        ModelSpec::Hf { name, .. } => hf_shape(name),
        ModelSpec::Path { dir, .. } => {
            if !dir.is_dir() {
                return Err(Problem {
                    message: format!("model folder {} does not exist", dir.display()),
                    help: "`model path { dir = .. }` names a folder (relative to the policy \
                           file) holding config.json, the safetensors weights and \
                           tokenizer.json"
                        .into(),
                });
            }
            from_config(dir)
        }
        ModelSpec::Gguf(g) => gguf_shape(g),
        ModelSpec::Encoder(_) | ModelSpec::Decoder(_) => unreachable!("handled above"),
    }
}

fn from_config(dir: &Path) -> Result<(ModelConfig, Origin), Problem> {
    match hf_llm::read_model_config(dir) {
        Ok(cfg) => Ok((cfg, Origin::File(dir.join("config.json")))),
        Err(e) => Err(Problem {
            message: format!("{e:#}"),
            help: "a model folder holds config.json (whose `architectures` decides how it \
                   loads), the safetensors weights and tokenizer.json; pick a model of a \
                   supported architecture"
                .into(),
        }),
    }
}

fn hf_shape(name: &str) -> Result<(ModelConfig, Origin), Problem> {
    match hf::resolve(name) {
        Ok(dir) => from_config(&dir),
        Err(not_found) => match known_models::lookup(name) {
            Some(k) => Ok((k.config(), Origin::Known)),
            None => Err(Problem {
                message: format!(
                    "model \"{name}\" is not on this machine, and adarank does not know its \
                     shape"
                ),
                help: format!("{not_found:#}"),
            }),
        },
    }
}

fn gguf_shape(g: &GgufSpec) -> Result<(ModelConfig, Origin), Problem> {
    let Some(file) = g.file() else {
        let name = match g {
            GgufSpec::Name(n) => n.as_str(),
            GgufSpec::Path(_) => "",
        };
        return Err(unknown_gguf(name));
    };
    if file.is_file() {
        return match read_gguf_config(&file) {
            Ok(cfg) => Ok((cfg, Origin::File(file))),
            Err(e) => Err(Problem {
                message: format!("{e:#}"),
                help: "`model gguf` takes a GGUF file of a Llama-family model (GGUF v2 or v3, \
                       tensors in F32, F16, BF16, Q8_0, Q4_0 or Q4_1)"
                    .into(),
            }),
        };
    }
    match g {
        GgufSpec::Name(n) => {
            match known_models::gguf(n).and_then(|k| known_models::lookup(k.shape_of)) {
                Some(k) => Ok((k.config(), Origin::Known)),
                None => Err(unknown_gguf(n)),
            }
        }
        GgufSpec::Path(p) => Err(Problem {
            message: format!("GGUF file {} does not exist", p.display()),
            help: "`path` is relative to the policy file; a known checkpoint can be named \
                   instead, e.g. `model gguf { name = \"smollm2-135m-instruct\" }`"
                .into(),
        }),
    }
}

/// The problem of a GGUF name no table entry has.
pub fn unknown_gguf(name: &str) -> Problem {
    Problem {
        message: format!("unknown GGUF model \"{name}\""),
        help: format!(
            "known GGUF models: {}; or give the file with `path = \"models/x.gguf\"`",
            known_models::gguf_names().join(", ")
        ),
    }
}

/// Where a known GGUF checkpoint is looked for, and how to get it (for plans and messages).
pub fn gguf_missing_note(name: &str) -> Option<String> {
    let k = known_models::gguf(name)?;
    let file = GgufSpec::Name(name.into()).file()?;
    Some(format!(
        "{} is not there yet (shape from adarank's table); to get it, {}, and put it there",
        file.display(),
        k.get
    ))
}

/// The model shape a GGUF file's header describes (the tensors are not read).
fn read_gguf_config(path: &Path) -> anyhow::Result<ModelConfig> {
    crate::data::gguf::read_config(path)
}
