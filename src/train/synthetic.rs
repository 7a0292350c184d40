//! A small synthetic classification task that needs no download: each sequence has a class;
//! every token is, with probability `signal`, drawn from that class's own token set (ids ≡
//! class + 1 mod classes + 1), and otherwise uniformly from the whole vocabulary. The class is
//! recoverable from token counts (near-certainly for 16 tokens at signal 0.5), so a model with a
//! mean-pooled classifier can learn it; chance accuracy is 1/classes.

use super::task::Task;
use crate::model::weights::name_seed;
use crate::model::{Batch, Flavour, Head, HostWeights, ModelConfig, Pooling, Target};
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
        Ok(Self { cfg, eval })
    }
}

fn make(cfg: &SyntheticConfig, name: &str, b: usize) -> Batch {
    let mut rng = rand::rngs::StdRng::seed_from_u64(name_seed(cfg.seed, name));
    let (t, v, k) = (cfg.seq, cfg.model.vocab as u32, cfg.classes as u32);
    let mut ids = Vec::with_capacity(b * t);
    let mut y = Vec::with_capacity(b);
    for _ in 0..b {
        let c = rng.random_range(0..k);
        y.push(c);
        let members = (v - 1 - (c + 1)) / (k + 1) + 1; // ids c+1, c+1+(k+1), … < v
        for _ in 0..t {
            let id = if rng.random::<f32>() < cfg.signal {
                c + 1 + (k + 1) * rng.random_range(0..members)
            } else {
                rng.random_range(0..v)
            };
            ids.push(id);
        }
    }
    Batch {
        batch: b,
        seq: t,
        ids,
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
    fn base_weights(&self) -> Result<Option<HostWeights>> {
        Ok(None)
    }
    fn train_batch(&mut self, index: u64, batch_size: usize) -> Result<Batch> {
        Ok(make(&self.cfg, &format!("train.{index}"), batch_size))
    }
    fn eval_batches(&self) -> &[Batch] {
        &self.eval
    }
}
