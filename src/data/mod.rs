//! Real model and data (issue 6): Hugging Face BERT checkpoints from safetensors (a plain folder
//! or the HF cache layout), tokenization, GLUE/SQuAD/JSONL loaders, classification batches, and
//! where fetched assets live. See docs/ARCHITECTURE.md.

pub mod assets;
pub mod batch;
pub mod glue;
pub mod hf;
pub mod jsonl;
pub mod squad;
pub mod task;
pub mod tokenizer;

pub use batch::{ClassifyBatch, ClassifyData};
pub use glue::{Example, TextTable};
pub use hf::{BertConfig, Checkpoint};
pub use task::{ClassifyTask, TextFormat};
pub use tokenizer::{Encoded, Tokenizer};
