//! Classification data and its batches. A training batch is a pure function of (seed, step), in
//! the run-seeded order of [`crate::train::order`], so a resumed run sees exactly the batches it
//! would have seen.
//!
//! Rows are tokenized the first time a batch needs them and kept: a two-million-row file starts
//! training as soon as it is read, instead of after a minute of tokenizing rows that the first
//! steps never touch.

use crate::data::glue::Example;
pub use crate::data::tokenizer::Encoded;
use crate::data::tokenizer::Tokenizer;
use crate::train::order::batch_indices;
pub use crate::train::order::epoch_permutation;
use anyhow::{bail, Context, Result};
use std::sync::{Arc, OnceLock};

/// A classification data set (sentence or sentence pair → class), tokenized lazily.
#[derive(Clone)]
pub struct ClassifyData {
    /// The examples' texts and source lines; `None` when built from encoded rows.
    texts: Option<Arc<Vec<Example>>>,
    tokenizer: Option<Arc<Tokenizer>>,
    rows: Vec<OnceLock<Encoded>>,
    pub labels: Vec<u32>,
    pub classes: usize,
    pub pad_id: u32,
}

impl std::fmt::Debug for ClassifyData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClassifyData")
            .field("rows", &self.rows.len())
            .field("classes", &self.classes)
            .finish()
    }
}

/// A padded batch: row-major [batch, seq] ids, segment ids and 0/1 attention mask.
#[derive(Clone, Debug, PartialEq)]
pub struct ClassifyBatch {
    pub batch: usize,
    pub seq: usize,
    pub ids: Vec<u32>,
    pub type_ids: Vec<u32>,
    pub mask: Vec<f32>,
    pub labels: Vec<u32>,
}

impl ClassifyData {
    /// Examples to tokenize with `tok` as batches need them; every label must be below
    /// `classes` (checked here, for every row, so a bad label is found before training).
    pub fn new(examples: &[Example], tok: &Tokenizer, classes: usize) -> Result<Self> {
        if examples.is_empty() {
            bail!("no examples");
        }
        let mut labels = Vec::with_capacity(examples.len());
        for ex in examples {
            if ex.label as usize >= classes {
                bail!(
                    "line {}: label {} but the task has {classes} classes",
                    ex.line,
                    ex.label
                );
            }
            labels.push(ex.label);
        }
        Ok(ClassifyData {
            rows: (0..examples.len()).map(|_| OnceLock::new()).collect(),
            texts: Some(Arc::new(examples.to_vec())),
            tokenizer: Some(Arc::new(tok.clone())),
            labels,
            classes,
            pad_id: tok.pad_id(),
        })
    }

    /// Data from rows already tokenized.
    pub fn from_encoded(rows: Vec<Encoded>, labels: Vec<u32>, classes: usize, pad_id: u32) -> Self {
        ClassifyData {
            rows: rows.into_iter().map(OnceLock::from).collect(),
            texts: None,
            tokenizer: None,
            labels,
            classes,
            pad_id,
        }
    }

    /// Row `i`, tokenized now if no batch has needed it yet.
    pub fn row(&self, i: usize) -> Result<&Encoded> {
        if let Some(r) = self.rows[i].get() {
            return Ok(r);
        }
        let (Some(texts), Some(tok)) = (&self.texts, &self.tokenizer) else {
            bail!("row {i} has no text to tokenize");
        };
        let ex = &texts[i];
        let enc = tok
            .encode(&ex.text_a, ex.text_b.as_deref())
            .with_context(|| format!("line {}", ex.line))?;
        Ok(self.rows[i].get_or_init(|| enc))
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Example indices of training batch `step` (see the module doc).
    pub fn train_indices(&self, seed: u64, step: u64, batch: usize) -> Vec<usize> {
        batch_indices(self.rows.len(), seed, step, batch)
    }

    /// Training batch `step` for `seed`.
    pub fn train_batch(&self, seed: u64, step: u64, batch: usize) -> Result<ClassifyBatch> {
        self.gather(&self.train_indices(seed, step, batch))
    }

    /// Evaluation batches: the data in order, the last batch possibly shorter.
    pub fn eval_batches(&self, batch: usize) -> Result<Vec<ClassifyBatch>> {
        let idx: Vec<usize> = (0..self.rows.len()).collect();
        idx.chunks(batch.max(1)).map(|c| self.gather(c)).collect()
    }

    /// Pad the chosen rows to the longest of them.
    pub fn gather(&self, idx: &[usize]) -> Result<ClassifyBatch> {
        let rows = idx
            .iter()
            .map(|&i| self.row(i))
            .collect::<Result<Vec<&Encoded>>>()?;
        let seq = rows.iter().map(|r| r.ids.len()).max().unwrap_or(0);
        let mut b = ClassifyBatch {
            batch: idx.len(),
            seq,
            ids: vec![self.pad_id; idx.len() * seq],
            type_ids: vec![0; idx.len() * seq],
            mask: vec![0.0; idx.len() * seq],
            labels: idx.iter().map(|&i| self.labels[i]).collect(),
        };
        for (r, row) in rows.iter().enumerate() {
            let o = r * seq;
            b.ids[o..o + row.ids.len()].copy_from_slice(&row.ids);
            b.type_ids[o..o + row.ids.len()].copy_from_slice(&row.type_ids);
            b.mask[o..o + row.ids.len()].fill(1.0);
        }
        Ok(b)
    }

    /// Class counts, for reporting the majority-class baseline.
    pub fn class_counts(&self) -> Vec<usize> {
        let mut c = vec![0; self.classes];
        for &l in &self.labels {
            c[l as usize] += 1;
        }
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(n: usize) -> ClassifyData {
        ClassifyData::from_encoded(
            (0..n)
                .map(|i| Encoded {
                    ids: vec![101; 1 + i % 5],
                    type_ids: vec![0; 1 + i % 5],
                })
                .collect(),
            (0..n as u32).map(|i| i % 2).collect(),
            2,
            0,
        )
    }

    #[test]
    fn each_epoch_visits_every_example_once() {
        let d = data(10);
        // Batches of 4 over 10 examples: steps 0..5 cover exactly two epochs.
        let seen: Vec<usize> = (0..5).flat_map(|s| d.train_indices(7, s, 4)).collect();
        for epoch in seen.chunks(10) {
            let mut e = epoch.to_vec();
            e.sort();
            assert_eq!(e, (0..10).collect::<Vec<_>>());
        }
        assert_ne!(seen[..10], seen[10..], "epochs are reshuffled");
    }

    #[test]
    fn batches_depend_only_on_seed_and_step() {
        let d = data(37);
        assert_eq!(
            d.train_batch(3, 11, 8).unwrap(),
            d.train_batch(3, 11, 8).unwrap()
        );
        assert_ne!(d.train_indices(3, 11, 8), d.train_indices(4, 11, 8));
    }

    #[test]
    fn padding_and_mask() {
        let d = data(3);
        let b = d.gather(&[0, 2]).unwrap();
        assert_eq!((b.batch, b.seq), (2, 3));
        assert_eq!(b.ids, vec![101, 0, 0, 101, 101, 101]);
        assert_eq!(b.mask, vec![1.0, 0.0, 0.0, 1.0, 1.0, 1.0]);
        assert_eq!(b.labels, vec![0, 0]);
    }
}
