//! The checked, fully resolved plan of one arm: what the runner consumes. Every default is
//! filled in and every path is resolved against the policy file's directory, so nothing
//! downstream needs the policy text (docs/language.md documents each field and its default).

use crate::adapter::{ModuleKind, ResizeOptions};
/// `train.device`: the run's own type (one definition, shared with `--device`).
pub use crate::backend::device::DeviceChoice;
pub use crate::backend::DType;
/// A classification head's pooling: the model's own type.
pub use crate::model::config::Pooling;
/// `train.decay`: the learning-rate schedule's own type.
pub use crate::train::lr_schedule::Decay;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// A checked policy: one plan per arm (the base experiment first), and the seeds every arm runs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Policy {
    /// The experiment's name (`experiment NAME { ... }`).
    pub name: String,
    pub source_path: PathBuf,
    pub source_text: String,
    /// The `--set` overrides the plan was checked with (diagnostics after the check, e.g. the
    /// run's memory pre-flight, point into them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub overrides: Vec<String>,
    /// The base experiment (named by `base`, `adaptive` by default) first, then declared arms
    /// in file order.
    pub arms: Vec<ArmPlan>,
    pub seeds: Vec<u64>,
    /// The arm marked `baseline`, if any.
    pub baseline: Option<String>,
}

impl Policy {
    pub fn arm(&self, name: &str) -> Option<&ArmPlan> {
        self.arms.iter().find(|a| a.name == name)
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ArmPlan {
    pub name: String,
    /// Declared with the `ablation` marker.
    pub ablation: bool,
    pub model: ModelSpec,
    pub data: DataSpec,
    pub lora: LoraSpec,
    pub adalora: Option<AdaLoraSpec>,
    /// SoRA's gates (`sora { ... }`); `None` unless the arm has the block.
    #[serde(default)]
    pub sora: Option<SoraSpec>,
    pub train: TrainSpec,
    pub plugins: PluginSpec,
    /// At least one; the last one runs to the end of training unless it is bounded by a metric,
    /// an epoch count or a plugin condition, in which case its end stops training early.
    pub phases: Vec<PhaseSpec>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelSpec {
    /// A randomly initialised bidirectional encoder.
    Encoder(TransformerSpec),
    /// A randomly initialised causal decoder.
    Decoder(TransformerSpec),
    /// A pretrained model from the Hugging Face cache, e.g.
    /// `sentence-transformers/all-MiniLM-L6-v2`.
    Hf { name: String, pooling: Pooling },
    /// A pretrained model in a local directory (config.json + model.safetensors + tokenizer).
    Path { dir: PathBuf, pooling: Pooling },
    /// A pretrained causal LM in a GGUF file.
    Gguf(GgufSpec),
}

/// Which GGUF file a `model gguf` section names.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GgufSpec {
    /// A known checkpoint (`policy::known_models::gguf`), looked up in the assets folder when
    /// the cell runs, so a plan stays valid on another machine.
    Name(String),
    /// A file, resolved against the policy file's directory.
    Path(PathBuf),
}

impl GgufSpec {
    /// The file: `$ADARANK_ASSETS/gguf/FILE` for a known name (see `data::assets`), else the
    /// path. `None` for a name no table entry has (the checker refuses those).
    pub fn file(&self) -> Option<PathBuf> {
        match self {
            GgufSpec::Name(n) => super::known_models::gguf(n)
                .map(|k| crate::data::assets::assets_dir().join("gguf").join(k.file)),
            GgufSpec::Path(p) => Some(p.clone()),
        }
    }
}

impl ModelSpec {
    /// The known shape of a pretrained model (`policy::known_models`), without looking at
    /// files; the policy's own shape for a random one.
    fn known(&self) -> Option<crate::model::ModelConfig> {
        match self {
            ModelSpec::Encoder(_) | ModelSpec::Decoder(_) => super::model_source::transformer(self),
            ModelSpec::Hf { name, .. } => super::known_models::lookup(name).map(|m| m.config()),
            ModelSpec::Gguf(GgufSpec::Name(n)) => super::known_models::gguf(n)
                .and_then(|g| super::known_models::lookup(g.shape_of))
                .map(|m| m.config()),
            ModelSpec::Path { .. } | ModelSpec::Gguf(GgufSpec::Path(_)) => None,
        }
    }
    /// Number of transformer layers when it is known without loading weights.
    pub fn layers(&self) -> Option<usize> {
        self.known().map(|m| m.layers)
    }
    /// Hidden width when it is known without loading weights.
    pub fn hidden(&self) -> Option<usize> {
        self.known().map(|m| m.hidden)
    }
    /// Feed-forward width when it is known without loading weights.
    pub fn ffn(&self) -> Option<usize> {
        self.known().map(|m| m.ffn)
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TransformerSpec {
    pub layers: usize,
    pub hidden: usize,
    pub heads: usize,
    /// Default 4 × hidden.
    pub ffn: usize,
    /// Default 1000.
    pub vocab: usize,
    /// Default 128.
    pub max_positions: usize,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DataSpec {
    /// A regression task whose target is a planted low-rank ΔW per adapter slot: `ranks` are
    /// assigned to slots in order (layer-major, then kind in `lora.targets` order), cycling.
    Planted {
        ranks: Vec<usize>,
        samples: usize,
        eval_samples: usize,
        seq: usize,
        seed: u64,
        /// Singular value of every planted direction, relative to the slot's RMS W0 singular value
        /// (so a rank-r change carries r times the energy of a rank-1 change).
        scale: f64,
    },
    /// Random token sequences labelled by a random teacher.
    Synthetic {
        classes: usize,
        samples: usize,
        eval_samples: usize,
        seq: usize,
        seed: u64,
    },
    /// The fetched movie-review sentences (SST-2 TSV layout); `dir: None` = fetch cache.
    Movies {
        dir: Option<PathBuf>,
        #[serde(flatten)]
        subset: Subset,
    },
    /// Shakespeare's plays as `{"text"}` passages, split by play (plain language modelling);
    /// `dir: None` = fetch cache.
    Shakespeare {
        dir: Option<PathBuf>,
        #[serde(flatten)]
        subset: Subset,
    },
    Sst2 {
        dir: PathBuf,
        #[serde(flatten)]
        subset: Subset,
    },
    Mnli {
        dir: PathBuf,
        #[serde(flatten)]
        subset: Subset,
    },
    Squad {
        train: PathBuf,
        dev: PathBuf,
        #[serde(flatten)]
        subset: Subset,
    },
    Jsonl {
        train: PathBuf,
        dev: PathBuf,
        #[serde(flatten)]
        subset: Subset,
    },
}

/// The subset settings of a real data set (`None` for generated data, whose sizes are its own).
pub fn subset_mut(d: &mut DataSpec) -> Option<&mut Subset> {
    match d {
        DataSpec::Movies { subset, .. }
        | DataSpec::Shakespeare { subset, .. }
        | DataSpec::Sst2 { subset, .. }
        | DataSpec::Mnli { subset, .. }
        | DataSpec::Squad { subset, .. }
        | DataSpec::Jsonl { subset, .. } => Some(subset),
        DataSpec::Planted { .. } | DataSpec::Synthetic { .. } => None,
    }
}

/// Limits common to real data sets; `None` = use everything / the train section's `max_len`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Subset {
    pub max_len: Option<usize>,
    pub train_samples: Option<usize>,
    pub eval_samples: Option<usize>,
    /// How a causal LM reads the set (docs/llm-data.md); all defaults for encoders.
    #[serde(default, skip_serializing_if = "LmDataSpec::is_default")]
    pub lm: LmDataSpec,
}

/// The causal-LM keys of a real data section: `as = generation` with `prompt` and `labels`,
/// `format` (JSONL record kind), `truncation`, `metric`, `max_new`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LmDataSpec {
    /// `as = generation`: a labelled set as prompt + label word.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<crate::data::lm::AsGeneration>,
    /// `format`: the JSONL record kind; `None` = read from the file's first record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<crate::data::lm::JsonlKind>,
    #[serde(default)]
    pub truncation: crate::data::lm::Truncation,
    /// `metric`; `None` = the data set's default (accuracy for labelled sets, else perplexity).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric: Option<crate::data::lm::LmMetric>,
    /// `max_new`: longest greedy answer for exact match, in tokens; `None` = 64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_new: Option<usize>,
}

impl LmDataSpec {
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LoraSpec {
    /// No adapters: full fine-tuning.
    Off,
    On(LoraOn),
}

impl LoraSpec {
    pub fn on(&self) -> Option<&LoraOn> {
        match self {
            LoraSpec::Off => None,
            LoraSpec::On(l) => Some(l),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LoraOn {
    /// Module kinds that carry adapters, in declaration order.
    pub targets: Vec<ModuleKind>,
    /// Layers that carry adapters; `None` = every layer.
    pub layers: Option<Vec<usize>>,
    /// Default 16.
    pub alpha: f64,
    /// Scale α/√r instead of α/r. Default false.
    pub rslora: bool,
    /// Uniform rank of phase 1. Default: the uniform `rank` if given, else 8.
    pub init_rank: usize,
    /// Fixed ranks (baselines); default `Uniform(init_rank)`.
    pub rank: RankSpec,
    /// Total rank over all adapter slots, shared out by the allocator.
    pub budget: Option<usize>,
    /// Total trainable adapter parameters Σ r_i·(rows_i + cols_i), shared out by the allocator
    /// (instead of `budget`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub param_budget: Option<usize>,
    /// Default 1.
    pub min_rank: usize,
    /// Default 64.
    pub max_rank: usize,
    /// How re-allocations resize the adapters (`resize_basis`, `resize_moments`,
    /// `resize_scale`, `rewarm`, `fade`). Always written: the defaults change between
    /// versions, and two runs must not look alike to `report`'s merge when they resized
    /// differently. A policy.json written before it was recorded reads as today's default.
    #[serde(default = "ResizeOptions::policy_default")]
    pub resize: ResizeOptions,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RankSpec {
    Uniform(usize),
    /// Kinds missing from the map get `init_rank`.
    PerKind(BTreeMap<ModuleKind, usize>),
    /// Keys `"layer.kind"`, e.g. `"3.ffn_in"`; slots missing from the map get `init_rank`.
    PerSlot(BTreeMap<String, usize>),
}

impl LoraOn {
    /// Rank of slot (layer, kind) under `rank` (kinds/slots not named get `init_rank`).
    pub fn rank_of(&self, layer: usize, kind: ModuleKind) -> usize {
        match &self.rank {
            RankSpec::Uniform(r) => *r,
            RankSpec::PerKind(m) => m.get(&kind).copied().unwrap_or(self.init_rank),
            RankSpec::PerSlot(m) => m
                .get(&crate::adapter::AdapterInfo::slot_name(layer, kind))
                .copied()
                .unwrap_or(self.init_rank),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AdaLoraSpec {
    pub init_rank: usize,
    /// Average final rank; the budget is target_rank × slots. Under `lora.param_budget` it is
    /// `init_rank` (not a bound: the parameter budget sets the final size).
    pub target_rank: usize,
    /// Steps of warm-up before pruning starts.
    pub tinit: usize,
    /// Steps at the end with the budget held at its final value.
    pub tfinal: usize,
    /// Steps between budget updates.
    pub delta_t: usize,
    /// Default 0.85.
    pub beta1: f64,
    /// Default 0.85.
    pub beta2: f64,
    /// Default 0.5.
    pub orth_reg: f64,
    /// Remove pruned triplets for real at every budget step (memory falls) instead of
    /// masking them (λ = 0, PEFT's behaviour). Default false.
    #[serde(default)]
    pub resize: bool,
    /// Multiplies the output scale α/init_rank (default [`ADALORA_GAIN`]; 1 with `peft_compat`).
    #[serde(default = "one_f64")]
    pub gain: f64,
    /// Reproduce Hugging Face PEFT's AdaLoRA exactly (gain 1). Default false.
    #[serde(default)]
    pub peft_compat: bool,
}

/// SoRA: a gate per component, trained by its own Adam step and soft-thresholded.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SoraSpec {
    /// Default `lora.init_rank`.
    pub init_rank: usize,
    /// Adam learning rate of the gates. Default 1e-2.
    pub gate_lr: f64,
    /// Soft threshold ξ at the start. Default 1e-3.
    pub threshold: f64,
    /// ξ at the end (rising linearly). Default `threshold`.
    pub threshold_max: f64,
}

fn one_f64() -> f64 {
    1.0
}

/// AdaLoRA's default gain on its output scale α/init_rank. Why: Adam moves each λ_j by about
/// lr per step, and a triplet with unit-norm P and Q columns contributes s·λ_j to ΔW, while a
/// LoRA rank-1 component B·A moves by about s·lr·‖a‖·√rows per step (every entry of B moves by
/// lr): at PEFT's scale α/init_rank, AdaLoRA's updates are ~17–34× smaller than LoRA's on
/// MiniLM (rows 384–1536) at the same learning rate, and it under-trains. docs/results.md, "AdaLoRA
/// at LoRA's learning rate", gives the measurement.
pub const ADALORA_GAIN: f64 = 16.0;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TrainLength {
    Steps(usize),
    Epochs(usize),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainSpec {
    /// `steps = N` or `epochs = N` (exactly one).
    pub length: TrainLength,
    /// Default 32.
    pub batch: usize,
    /// Default 1e-3. For a sweep, its first candidate until the runner has chosen.
    pub lr: f64,
    /// `lr = sweep [...]`: the candidates, chosen per arm on the dev split (empty: no sweep).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lr_sweep: Vec<f64>,
    /// Warm-up steps. Default 0.
    pub warmup: usize,
    /// Default linear.
    pub decay: Decay,
    /// Default 0.
    pub weight_decay: f64,
    /// Global gradient-norm clip; `None` = off. Default 1.0.
    pub clip: Option<f64>,
    /// Gradient accumulation steps. Default 1.
    pub accum: usize,
    /// Evaluate every N steps; `None` = at the end only.
    pub eval_every: Option<usize>,
    /// Checkpoint every N steps; `None` = never.
    pub checkpoint_every: Option<usize>,
    /// Default 128.
    pub max_len: usize,
    /// Default auto.
    pub device: DeviceChoice,
    /// Storage of the frozen weights (`f32` or `bf16`). Default f32; left out of serialized
    /// plans when f32, so existing plans read the same.
    #[serde(default, skip_serializing_if = "DType::is_f32")]
    pub weights: DType,
}

impl TrainSpec {
    pub fn steps(&self) -> Option<usize> {
        match self.length {
            TrainLength::Steps(n) => Some(n),
            TrainLength::Epochs(_) => None,
        }
    }
}

/// Plugin scripts, resolved against the policy file's directory (or the shipped `plugins/`
/// folder for a bare name).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PluginSpec {
    /// Defines `complexity(adapter, ctx)`.
    pub complexity: Option<PathBuf>,
    /// Defines `allocate(adapters, budget)`.
    pub allocator: Option<PathBuf>,
    /// Defines `learn(state, adapters, ctx)`.
    pub learner: Option<PathBuf>,
    /// The parameters the policy sets for these plugins and the arm's phase conditions
    /// (`plugin "log_rule" { alpha = 2 }`), read in scripts with `param`/`param_or`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub params: BTreeMap<String, serde_json::Value>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PhaseSpec {
    pub name: String,
    pub until: Until,
    pub actions: Vec<Action>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Until {
    /// Ends when the global step count reaches n.
    Step(usize),
    /// Ends when n epochs are complete.
    Epoch(usize),
    /// Ends at the first evaluation whose metric satisfies `value op threshold`.
    Metric { name: String, op: CmpOp, value: f64 },
    /// Ends when the plugin's `done(ctx)` returns true.
    Plugin { path: PathBuf },
    /// Runs to the end of training.
    End,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CmpOp {
    #[serde(rename = "<")]
    Lt,
    #[serde(rename = "<=")]
    Le,
    #[serde(rename = ">")]
    Gt,
    #[serde(rename = ">=")]
    Ge,
}

impl CmpOp {
    pub fn holds(self, lhs: f64, rhs: f64) -> bool {
        match self {
            CmpOp::Lt => lhs < rhs,
            CmpOp::Le => lhs <= rhs,
            CmpOp::Gt => lhs > rhs,
            CmpOp::Ge => lhs >= rhs,
        }
    }
}

/// Fires at steps start + k·every (k ≥ 1) while its phase lasts, start = the phase's first step.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Action {
    pub every: usize,
    pub what: ActionKind,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionKind {
    Reallocate,
    Evaluate,
    Checkpoint,
    Log,
}

impl ActionKind {
    pub const ALL: [ActionKind; 4] = [
        ActionKind::Reallocate,
        ActionKind::Evaluate,
        ActionKind::Checkpoint,
        ActionKind::Log,
    ];
    pub fn name(self) -> &'static str {
        match self {
            ActionKind::Reallocate => "reallocate",
            ActionKind::Evaluate => "evaluate",
            ActionKind::Checkpoint => "checkpoint",
            ActionKind::Log => "log",
        }
    }
}
