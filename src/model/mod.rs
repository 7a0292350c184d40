//! The transformer with LoRA: a BERT-style encoder or GPT-style decoder with explicit,
//! per-layer forward and backward passes on the [`crate::backend::Backend`] interface, LoRA
//! adapters on any of q, k, v, o, ffn_in, ffn_out with their own rank, rank changes during
//! training, and the heads the tasks need.
//!
//! Entry points: [`Model::new`], [`Model::forward_backward`], [`Model::evaluate`],
//! [`Model::optimizer_step`], [`Model::hidden_states`], [`Model::state`]/[`Model::load_state`],
//! and the [`crate::adapter::AdapterStore`] impl (adapters, resize).
//!
//! Files: `config` (types), `weights` (names, shapes, random init), `param` (tensors with their
//! optimizer state), `linear` (linear layer + adapter path), `lora` (adapter factors, resize
//! math, the AdamW-moment rule), `block` (one transformer block), `transformer` (the model),
//! `heads` (losses), `pooler` (BERT's pooler for `pooling = cls`), `store` (adapter store,
//! checkpoints).

pub mod block;
pub mod config;
pub mod generate;
pub mod heads;
pub mod linear;
pub mod llama;
pub mod lora;
pub mod named;
pub mod param;
pub mod pooler;
pub mod rope;
pub mod store;
pub mod transformer;
pub mod weights;

pub use config::{
    Batch, EvalOut, Flavour, Head, LlamaArch, LoraConfig, ModelConfig, Pooling, RopeScaling,
    Target, TrainMode,
};
pub use lora::{delta_w, Factors};
pub use store::{ModelState, StateMeta};
pub use transformer::{Model, StepReport};
pub use weights::{random_weights, HostWeights, Init};
