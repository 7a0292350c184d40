//! A small synthetic classification task that needs no download: each sequence has a class;
//! every token is, with probability `signal`, drawn from that class's own token set (ids ≡
//! class + 1 mod classes + 1), and otherwise uniformly from the whole vocabulary. The class is
//! recoverable from token counts (near-certainly for 16 tokens at signal 0.5), so a model with a
//! mean-pooled classifier can learn it; chance accuracy is 1/classes.

use super::task::Task;
use crate::model::weights::name_seed;
use crate::model::{
    random_weights, Batch, Flavour, Head, HostWeights, Init, ModelConfig, Pooling, Target,
};
use anyhow::{ensure, Result};
use rand::{Rng, SeedableRng};

#[derive(Clone, Debug, PartialEq)]
pub struct SyntheticConfig {
    pub model: ModelConfig,
    pub classes: usize,
    pub seq: usize,
    /// Probability that a token comes from its class's set.
    pub signal: f32,
    pub eval_batches: usize,
    pub eval_batch_size: usize,
    pub seed: u64,
}

impl SyntheticConfig {
    pub fn small(seed: u64) -> Self {
        Self {
            model: ModelConfig {
                flavour: Flavour::Encoder,
                vocab: 64,
                max_positions: 16,
                type_vocab: 2,
                hidden: 32,
                layers: 2,
                heads: 4,
                ffn: 64,
                ln_eps: 1e-5,
                llama: None,
            },
            classes: 3,
            seq: 16,
            signal: 0.5,
            eval_batches: 4,
            eval_batch_size: 32,
            seed,
        }
    }
}

pub struct SyntheticTask {
    cfg: SyntheticConfig,
    eval: Vec<Batch>,
    /// `(samples, order seed)` of [`SyntheticTask::with_order`].
    order: Option<(usize, u64)>,
}

impl SyntheticTask {
    pub fn new(cfg: SyntheticConfig) -> Result<Self> {
        cfg.model.validate()?;
        ensure!(
            cfg.classes >= 2 && cfg.model.vocab > 2 * (cfg.classes + 1),
            "synthetic task: need ≥ 2 classes and a vocabulary of more than 2·(classes + 1)"
        );
        ensure!(
            cfg.seq >= 1 && cfg.seq <= cfg.model.max_positions,
            "synthetic task: seq {} must be in 1..={}",
            cfg.seq,
            cfg.model.max_positions
        );
        let eval = (0..cfg.eval_batches)
            .map(|i| make(&cfg, &format!("eval.{i}"), cfg.eval_batch_size))
            .collect();
        Ok(Self {
            cfg,
            eval,
            order: None,
        })
    }

    /// Evaluates on a second held-out set (streams `dev.{i}`, the same size as the test set
    /// `eval.{i}`), for model selection that must not see the test set.
    pub fn on_dev_split(mut self) -> Self {
        self.eval = (0..self.cfg.eval_batches)
            .map(|i| make(&self.cfg, &format!("dev.{i}"), self.cfg.eval_batch_size))
            .collect();
        self
    }

    /// Trains on a finite set of `samples` sequences (sequence k from the task's stream
    /// `train.seq.{k}`), visited in the order `order_seed` gives ([`super::order`]); without it,
    /// training batch `index` is a fresh batch drawn from the task's seed alone.
    pub fn with_order(mut self, samples: usize, order_seed: u64) -> Self {
        self.order = Some((samples.max(1), order_seed));
        self
    }
}

/// One labelled sequence drawn from `rng`: its class and its `seq` token ids.
fn row(cfg: &SyntheticConfig, rng: &mut rand::rngs::StdRng) -> (u32, Vec<u32>) {
    let (t, v, k) = (cfg.seq, cfg.model.vocab as u32, cfg.classes as u32);
    let c = rng.random_range(0..k);
    let members = (v - 1 - (c + 1)) / (k + 1) + 1; // ids c+1, c+1+(k+1), … < v
    let ids = (0..t)
        .map(|_| {
            if rng.random::<f32>() < cfg.signal {
                c + 1 + (k + 1) * rng.random_range(0..members)
            } else {
                rng.random_range(0..v)
            }
        })
        .collect();
    (c, ids)
}

fn make(cfg: &SyntheticConfig, name: &str, b: usize) -> Batch {
    let mut rng = rand::rngs::StdRng::seed_from_u64(name_seed(cfg.seed, name));
    let rows: Vec<(u32, Vec<u32>)> = (0..b).map(|_| row(cfg, &mut rng)).collect();
    to_batch(cfg, rows)
}

fn to_batch(cfg: &SyntheticConfig, rows: Vec<(u32, Vec<u32>)>) -> Batch {
    let b = rows.len();
    let (y, ids): (Vec<u32>, Vec<Vec<u32>>) = rows.into_iter().unzip();
    Batch {
        batch: b,
        seq: cfg.seq,
        ids: ids.concat(),
        type_ids: vec![],
        mask: vec![],
        target: Target::Classes(y),
    }
}

impl Task for SyntheticTask {
    fn name(&self) -> String {
        format!("synthetic{}", self.cfg.classes)
    }
    fn model_config(&self) -> ModelConfig {
        self.cfg.model.clone()
    }
    fn head(&self) -> Head {
        Head::Classify {
            classes: self.cfg.classes,
            pooling: Pooling::Mean,
        }
    }
    /// The frozen random body stands in for a pretrained model, so it is part of the task
    /// (drawn from the task's seed, the same for every arm and run seed); the classifier head
    /// is left to the model, which draws it from the run seed.
    fn base_weights(&self) -> Result<Option<HostWeights>> {
        // A language-model head has no weights of its own: this is the body alone.
        let w = random_weights(
            &self.cfg.model,
            &Head::LanguageModel,
            Init::Bert,
            self.cfg.seed,
        );
        Ok(Some(w))
    }
    fn train_batch(&mut self, index: u64, batch_size: usize) -> Result<Batch> {
        let Some((samples, order_seed)) = self.order else {
            return Ok(make(&self.cfg, &format!("train.{index}"), batch_size));
        };
        let rows = super::order::batch_indices(samples, order_seed, index, batch_size)
            .into_iter()
            .map(|k| {
                let mut rng = rand::rngs::StdRng::seed_from_u64(name_seed(
                    self.cfg.seed,
                    &format!("train.seq.{k}"),
                ));
                row(&self.cfg, &mut rng)
            })
            .collect();
        Ok(to_batch(&self.cfg, rows))
    }
    fn eval_batches(&self) -> &[Batch] {
        &self.eval
    }
}
