//! The [`Task`] of a causal-LM data set, and what its evaluation needs beyond the loss: the
//! answer positions and classes of a labelled set (label accuracy), the prompts and reference
//! answers (exact match), and which metric the run reports.

use super::data::LmData;
use super::LmMetric;
use crate::data::pretrained::LmTokenizer;
use crate::model::{Batch, Head, HostWeights, ModelConfig};
use crate::train::Task;
use anyhow::Result;
use std::sync::Arc;

/// A prompt to generate from and the answer it should give.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GenPrompt {
    /// Token ids through the answer position.
    pub ids: Vec<u32>,
    /// The reference answer (completion, label word, or last assistant turn), as text.
    pub reference: String,
}

/// What a causal-LM evaluation scores, in the order of the task's evaluation batches.
#[derive(Clone)]
pub struct LmEvalSet {
    /// The metric the run reports.
    pub metric: LmMetric,
    /// Per evaluation batch, the flattened position (row·seq + t) of each example's answer
    /// (labelled sets; empty otherwise).
    pub answer_rows: Vec<Vec<usize>>,
    /// Class of every evaluation example (labelled sets; empty otherwise).
    pub classes: Vec<u32>,
    /// First token of every label word, in class order (labelled sets; empty otherwise).
    pub label_first: Vec<u32>,
    /// Prompts and references for exact match (empty unless the metric is exact match).
    pub prompts: Vec<GenPrompt>,
    /// Longest generation for exact match, in new tokens.
    pub max_new: usize,
    /// The tokenizer (decoding generated answers, its EOS stops generation).
    pub tokenizer: Arc<LmTokenizer>,
}

impl LmEvalSet {
    pub fn labelled(&self) -> bool {
        !self.label_first.is_empty()
    }
}

/// A causal-LM training task on a pretrained decoder.
pub struct LmTask {
    pub name: String,
    pub config: ModelConfig,
    pub weights: Arc<HostWeights>,
    pub train: LmData,
    pub eval_data: LmData,
    eval: Vec<Batch>,
    pub eval_set: LmEvalSet,
    seed: u64,
}

impl LmTask {
    /// `eval_set.answer_rows` is filled here from the evaluation data's answer positions when
    /// the set is labelled, and `prompts` when its metric is exact match (`references` gives
    /// each evaluation example's reference answer).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        name: &str,
        config: ModelConfig,
        weights: Arc<HostWeights>,
        train: LmData,
        eval_data: LmData,
        mut eval_set: LmEvalSet,
        references: Vec<String>,
        seed: u64,
    ) -> Result<Self> {
        let batches = eval_data.eval_batches(super::LM_EVAL_BATCH);
        if eval_set.labelled() {
            eval_set.answer_rows = batches
                .iter()
                .map(|(b, idx)| {
                    idx.iter()
                        .enumerate()
                        .map(|(r, &i)| r * b.seq + eval_data.examples[i].answer_at.unwrap_or(0))
                        .collect()
                })
                .collect();
        }
        if eval_set.metric == LmMetric::ExactMatch {
            eval_set.prompts = eval_data
                .examples
                .iter()
                .zip(references)
                .filter_map(|(ex, reference)| {
                    let at = ex.answer_at?;
                    Some(GenPrompt {
                        ids: ex.ids[..=at].to_vec(),
                        reference,
                    })
                })
                .collect();
        }
        Ok(LmTask {
            name: name.to_string(),
            config,
            weights,
            train,
            eval: batches.into_iter().map(|(b, _)| b).collect(),
            eval_data,
            eval_set,
            seed,
        })
    }

    pub fn train_len(&self) -> usize {
        self.train.len()
    }
}

impl Task for LmTask {
    fn name(&self) -> String {
        self.name.clone()
    }
    fn model_config(&self) -> ModelConfig {
        self.config.clone()
    }
    fn head(&self) -> Head {
        Head::LanguageModel
    }
    fn base_weights(&self) -> Result<Option<HostWeights>> {
        Ok(Some((*self.weights).clone()))
    }
    fn train_batch(&mut self, index: u64, batch_size: usize) -> Result<Batch> {
        Ok(self.train.train_batch(self.seed, index, batch_size))
    }
    fn eval_batches(&self) -> &[Batch] {
        &self.eval
    }
    fn lm_eval(&self) -> Option<&LmEvalSet> {
        Some(&self.eval_set)
    }
}
