//! `train::Task` for a tokenized classification data set (sentence or sentence pair → class) on
//! a loaded checkpoint: the movie-review sentences, SST-2, MNLI, or JSONL.

use crate::data::batch::{ClassifyBatch, ClassifyData};
use crate::data::glue::{self, Example};
use crate::data::hf::PretrainedEncoder;
use crate::data::{assets, jsonl};
use crate::model::{Batch, Head, HostWeights, ModelConfig, Pooling, Target};
use crate::train::{EvalExample, Task};
use anyhow::{bail, Context, Result};
use std::path::Path;
use std::sync::Arc;

/// File formats of labelled text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TextFormat {
    /// `sentence\tlabel` TSV (also the movie-review files).
    Sst2,
    /// MultiNLI TSV (premise, hypothesis, gold_label).
    Mnli,
    /// `{"text", "text_pair"?, "label"}` per line.
    Jsonl,
}

impl TextFormat {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "sst2" | "sst-2" => Some(Self::Sst2),
            "mnli" => Some(Self::Mnli),
            "jsonl" => Some(Self::Jsonl),
            _ => None,
        }
    }

    pub fn load(self, path: &Path) -> Result<Vec<Example>> {
        match self {
            Self::Sst2 => glue::load_sst2(path),
            Self::Mnli => glue::load_mnli(path),
            Self::Jsonl => jsonl::load(path),
        }
    }

    /// Classes of the format (JSONL: one more than the largest label seen).
    pub fn classes(self, examples: &[Example]) -> usize {
        match self {
            Self::Sst2 => 2,
            Self::Mnli => 3,
            Self::Jsonl => examples
                .iter()
                .map(|e| e.label as usize + 1)
                .max()
                .unwrap_or(0),
        }
    }
}

pub struct ClassifyTask {
    name: String,
    config: ModelConfig,
    pooling: Pooling,
    weights: Arc<HostWeights>,
    train: ClassifyData,
    eval: Vec<Batch>,
    eval_data: ClassifyData,
    eval_examples: Vec<EvalExample>,
    seed: u64,
}

impl ClassifyTask {
    /// Tokenize `train` and `eval` with the checkpoint's tokenizer (at its current max length).
    pub fn new(
        name: &str,
        ckpt: &PretrainedEncoder,
        train: &[Example],
        eval: &[Example],
        classes: usize,
        eval_batch: usize,
        seed: u64,
    ) -> Result<Self> {
        if classes < 2 {
            bail!("{name}: a classification task needs at least 2 classes (got {classes})");
        }
        let tr = ClassifyData::new(train, &ckpt.tokenizer, classes)
            .with_context(|| format!("{name}: training split"))?;
        let ev = ClassifyData::new(eval, &ckpt.tokenizer, classes)
            .with_context(|| format!("{name}: evaluation split"))?;
        Ok(ClassifyTask {
            name: name.to_string(),
            config: ckpt.config.model_config(),
            pooling: ckpt.pooling,
            weights: Arc::new(ckpt.weights.clone()),
            eval: ev
                .eval_batches(eval_batch)
                .with_context(|| format!("{name}: evaluation split"))?
                .into_iter()
                .map(to_model_batch)
                .collect(),
            eval_data: ev,
            eval_examples: eval
                .iter()
                .map(|e| EvalExample {
                    id: e.line.to_string(),
                    text: e.text_a.clone(),
                    text_pair: e.text_b.clone(),
                })
                .collect(),
            train: tr,
            seed,
        })
    }

    /// Number of training examples.
    pub fn train_len(&self) -> usize {
        self.train.len()
    }

    /// The movie-review sentences written by `scripts/fetch-assets`: train split for training,
    /// `eval_split` ("dev" or "test") for evaluation, optionally only its first `eval_samples`
    /// sentences (the files are in hash order, so a prefix is a fixed random sample).
    pub fn movie_reviews(
        ckpt: &PretrainedEncoder,
        eval_split: &str,
        eval_samples: Option<usize>,
        seed: u64,
    ) -> Result<Self> {
        let dir = assets::movie_reviews_dir();
        let read = |s: &str| -> Result<Vec<Example>> {
            let p = dir.join(format!("{s}.tsv"));
            if !p.is_file() {
                bail!(
                    "{}: missing; run `adarank fetch` (or scripts/fetch-assets) to download the \
                     movie-review sentences",
                    p.display()
                );
            }
            glue::load_sst2(&p)
        };
        if !matches!(eval_split, "dev" | "test") {
            bail!("movie reviews: evaluation split \"{eval_split}\" is not dev or test");
        }
        let mut eval = read(eval_split)?;
        eval.truncate(eval_samples.unwrap_or(usize::MAX));
        Self::new("movie_reviews", ckpt, &read("train")?, &eval, 2, 64, seed)
    }

    pub fn train_data(&self) -> &ClassifyData {
        &self.train
    }

    pub fn eval_data(&self) -> &ClassifyData {
        &self.eval_data
    }
}

/// A padded classification batch as the model takes it.
pub fn to_model_batch(b: ClassifyBatch) -> Batch {
    Batch {
        batch: b.batch,
        seq: b.seq,
        ids: b.ids,
        type_ids: b.type_ids,
        mask: b.mask,
        target: Target::Classes(b.labels),
    }
}

impl Task for ClassifyTask {
    fn name(&self) -> String {
        self.name.clone()
    }
    fn model_config(&self) -> ModelConfig {
        self.config.clone()
    }
    fn head(&self) -> Head {
        Head::Classify {
            classes: self.train.classes,
            pooling: self.pooling,
        }
    }
    fn base_weights(&self) -> Result<Option<HostWeights>> {
        Ok(Some((*self.weights).clone()))
    }
    fn train_batch(&mut self, index: u64, batch_size: usize) -> Result<Batch> {
        let b = self
            .train
            .train_batch(self.seed, index, batch_size)
            .with_context(|| format!("{}: training split", self.name))?;
        Ok(to_model_batch(b))
    }
    fn eval_batches(&self) -> &[Batch] {
        &self.eval
    }
    fn eval_examples(&self) -> Vec<EvalExample> {
        self.eval_examples.clone()
    }
}
