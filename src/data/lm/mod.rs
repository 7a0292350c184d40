//! Causal-language-model data: what a decoder is fine-tuned on and scored against.
//!
//! Three JSONL record kinds (docs/llm-data.md documents the fields):
//! - `{"prompt": .., "completion": ..}`: the loss falls on the completion's tokens and the EOS
//!   appended after them, never on the prompt;
//! - `{"messages": [{"role": .., "content": ..}, ..]}`: rendered with the model's chat template;
//!   the loss falls on the assistant turns only (each found by rendering the conversation's
//!   prefixes, see [`encode`]);
//! - `{"text": ..}`: plain language modelling, every token but the first is a target.
//!
//! Any labelled set (the movie sentences, SST-2, JSONL with string or integer labels) becomes a
//! prompt–completion set through a prompt template and one label word per class
//! ([`generation`]): the model learns to answer with the label word, and is scored by which
//! label word it ranks first at the answer position.
//!
//! Files: `read` (JSONL records, streamed line by line with clear errors), `encode` (records to
//! token ids and loss masks), `generation` (labelled sets as generation), `data` (padded batches
//! and the run-seeded training order), `lm_task` (the [`crate::train::Task`]), `from_section` (a
//! policy's data section on a loaded model to its task).

pub mod data;
pub mod encode;
pub mod from_section;
pub mod generation;
pub mod lm_task;
pub mod read;

pub use data::{LmData, LM_EVAL_BATCH};
pub use encode::{encode_record, render_chat, Encoder, LmExample};
pub use generation::{AsGeneration, LabelWords};
pub use lm_task::{GenPrompt, LmEvalSet, LmTask};
pub use read::{
    read_labelled, read_records, JsonlKind, Label, Labelled, Message, Record, RecordBody,
};

use serde::{Deserialize, Serialize};

/// `u32::MAX`: a position with no next-token target (padding, prompt, the last token).
pub const IGNORE: u32 = u32::MAX;

/// Which end of a too-long sequence is cut.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Truncation {
    /// Keep the end: the start of a prompt (or text) is dropped. The default, because the
    /// answer of a prompt sits at its end.
    #[default]
    Left,
    /// Keep the start: the end is dropped.
    Right,
}

/// How records become sequences.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LmSettings {
    /// Longest sequence in tokens (BOS, prompt, completion and EOS together).
    pub max_len: usize,
    pub truncation: Truncation,
}

/// What a causal-LM run reports as its metric (`data.metric`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LmMetric {
    /// Label accuracy: the label word ranked first at the answer position (labelled sets).
    Accuracy,
    /// exp(Σ loss / Σ target tokens) over the evaluation split.
    Perplexity,
    /// Greedy generation from the prompt, decoded and stripped, equal to the reference.
    ExactMatch,
    /// Mean loss per target token.
    EvalLoss,
}

impl LmMetric {
    pub const NAMES: &'static [&'static str] =
        &["accuracy", "perplexity", "exact_match", "eval_loss"];

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "accuracy" => Some(Self::Accuracy),
            "perplexity" => Some(Self::Perplexity),
            "exact_match" => Some(Self::ExactMatch),
            "eval_loss" => Some(Self::EvalLoss),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Accuracy => "accuracy",
            Self::Perplexity => "perplexity",
            Self::ExactMatch => "exact_match",
            Self::EvalLoss => "eval_loss",
        }
    }

    pub fn higher_is_better(self) -> bool {
        matches!(self, Self::Accuracy | Self::ExactMatch)
    }

    /// The metric a data set reports unless the policy chooses: label accuracy for labelled
    /// sets, perplexity for everything else.
    pub fn default_for(labelled: bool) -> Self {
        if labelled {
            Self::Accuracy
        } else {
            Self::Perplexity
        }
    }

    /// Whether a data set can be scored by this metric: accuracy needs label words, exact
    /// match a reference answer (a completion, an assistant turn or a label word), which plain
    /// text has not.
    pub fn available(self, labelled: bool, kind: Option<JsonlKind>) -> bool {
        match self {
            Self::Accuracy => labelled,
            Self::ExactMatch => labelled || kind.is_some_and(|k| k != JsonlKind::Text),
            Self::Perplexity | Self::EvalLoss => true,
        }
    }
}
