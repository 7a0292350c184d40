//! Tokenized causal-LM examples and their batches: right padding to the longest sequence of
//! the batch (pad id, mask 0, no target), next-token targets per position, training batches in
//! the run-seeded order of [`crate::train::order`] (a pure function of seed and index).

use super::encode::LmExample;
use super::IGNORE;
use crate::model::{Batch, Target};
use crate::train::order::batch_indices;
use anyhow::{bail, Result};

/// Sequences per evaluation batch of a causal LM. Small, because the evaluation holds the
/// vocabulary-wide logits of every position of a batch (and as much again for their
/// gradient buffer): 8 × 256 positions × 49,152 × 4 bytes is 400 MB each for SmolLM2.
pub const LM_EVAL_BATCH: usize = 8;

/// A tokenized causal-LM data set.
#[derive(Clone, Debug)]
pub struct LmData {
    pub examples: Vec<LmExample>,
    pub pad_id: u32,
}

impl LmData {
    pub fn new(examples: Vec<LmExample>, pad_id: u32) -> Result<Self> {
        if examples.is_empty() {
            bail!("no examples");
        }
        Ok(LmData { examples, pad_id })
    }

    pub fn len(&self) -> usize {
        self.examples.len()
    }

    pub fn is_empty(&self) -> bool {
        self.examples.is_empty()
    }

    /// Training batch `index` (micro-batch index) of `batch` sequences under `seed`.
    pub fn train_batch(&self, seed: u64, index: u64, batch: usize) -> Batch {
        self.gather(&batch_indices(self.examples.len(), seed, index, batch))
    }

    /// The data in order, `batch` sequences a batch (the last possibly fewer), and per batch
    /// the example indices it holds.
    pub fn eval_batches(&self, batch: usize) -> Vec<(Batch, Vec<usize>)> {
        let idx: Vec<usize> = (0..self.examples.len()).collect();
        idx.chunks(batch.max(1))
            .map(|c| (self.gather(c), c.to_vec()))
            .collect()
    }

    /// The chosen examples, right-padded to the longest of them.
    pub fn gather(&self, idx: &[usize]) -> Batch {
        let seq = idx
            .iter()
            .map(|&i| self.examples[i].ids.len())
            .max()
            .unwrap_or(0);
        let n = idx.len() * seq;
        let mut ids = vec![self.pad_id; n];
        let mut mask = vec![0.0f32; n];
        let mut target = vec![IGNORE; n];
        for (r, &i) in idx.iter().enumerate() {
            let ex = &self.examples[i];
            let o = r * seq;
            let len = ex.ids.len();
            ids[o..o + len].copy_from_slice(&ex.ids);
            mask[o..o + len].fill(1.0);
            target[o..o + len].copy_from_slice(&ex.next_token_targets());
        }
        Batch {
            batch: idx.len(),
            seq,
            ids,
            type_ids: Vec::new(),
            mask,
            target: Target::Tokens(target),
        }
    }

    /// Target tokens over the whole set (perplexity's denominator).
    pub fn target_tokens(&self) -> usize {
        self.examples.iter().map(LmExample::targets).sum()
    }
}
