//! Real model and data: Hugging Face BERT checkpoints from safetensors (a plain folder
//! or the HF cache layout), tokenization, GLUE/SQuAD/JSONL loaders, classification batches, and
//! where fetched assets live. See docs/ARCHITECTURE.md.

pub mod assets;
pub mod batch;
pub mod bounded;
pub mod chat;
pub mod classify_task;
pub mod gguf;
pub mod glue;
pub mod hf;
pub mod hf_llm;
pub mod jsonl;
pub mod lm;
pub mod prepare;
pub mod pretrained;
pub mod squad;
pub mod tokenizer;

pub use batch::{ClassifyBatch, ClassifyData};
pub use classify_task::{ClassifyTask, TextFormat};
pub use glue::{Example, TextTable};
pub use hf::{BertConfig, PretrainedEncoder};
pub use tokenizer::{Encoded, Tokenizer};

/// The data or pretrained model a policy names cannot be loaded (missing file, wrong format,
/// not fetched): the user's input is wrong, not adarank. The binary exits with status 1 for it,
/// as for a policy error, and 2 for failures of its own (see `adarank --help`).
#[derive(Debug)]
pub struct DataError(pub anyhow::Error);

impl std::fmt::Display for DataError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:#}", self.0)
    }
}

impl std::error::Error for DataError {}

impl From<anyhow::Error> for DataError {
    fn from(e: anyhow::Error) -> Self {
        DataError(e)
    }
}
