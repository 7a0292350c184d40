//! What the training loop trains on: a [`Task`] gives the model shape, the head, base weights,
//! training batches and held-out evaluation batches.

use crate::model::{Batch, Head, HostWeights, ModelConfig};
use anyhow::Result;

pub trait Task {
    /// Short name for reports.
    fn name(&self) -> String;
    /// Shape of the model the task is meant for.
    fn model_config(&self) -> ModelConfig;
    fn head(&self) -> Head;
    /// The frozen base model's weights (`None`: the model draws its own from its seed).
    fn base_weights(&self) -> Result<Option<HostWeights>>;
    /// Training batch number `index` (micro-batch index: step·accum + micro). Must be a pure
    /// function of the task's seed, `index` and `batch_size`, so a resumed run sees the same data.
    fn train_batch(&mut self, index: u64, batch_size: usize) -> Result<Batch>;
    /// The held-out evaluation split (fixed).
    fn eval_batches(&self) -> &[Batch];
    /// True rank of every adapter slot in `AdapterStore::adapters()` order, when the task
    /// plants one (for scoring rank allocators).
    fn planted_ranks(&self) -> Option<Vec<usize>> {
        None
    }
    /// What each held-out example is, in `eval_batches` order, for per-example predictions.
    /// Empty when the examples have no text (synthetic and planted tasks).
    fn eval_examples(&self) -> Vec<EvalExample> {
        Vec::new()
    }
    /// A causal-LM task's evaluation beyond the loss (label accuracy, exact match, the metric
    /// it reports); `None` for every other task.
    fn lm_eval(&self) -> Option<&crate::data::lm::LmEvalSet> {
        None
    }
}

/// One held-out example as predictions name it.
#[derive(Clone, Debug, PartialEq)]
pub struct EvalExample {
    /// The data's own id (SQuAD's question id), else the 1-based line in the source file.
    pub id: String,
    /// The sentence (or premise, or question).
    pub text: String,
    /// The second sentence of a pair (hypothesis), if any.
    pub text_pair: Option<String>,
}
