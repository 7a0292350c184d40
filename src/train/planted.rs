//! The planted-rank teacher–student task: a frozen, randomly initialised base model; a teacher
//! equal to the base plus a planted ΔW of known rank in chosen adapter slots; random token
//! inputs; the student (base + LoRA) learns to match the teacher's final hidden states (MSE).
//!
//! Because the true rank of every slot is known, the task scores rank allocators: a slot whose
//! planted rank is 0 needs no adapter, a slot with planted rank r needs rank r to fit exactly.
//!
//! Scale: the base is drawn with [`Init::FanIn`] (activations keep unit scale, attention is far
//! from uniform), and every planted ΔW = U·diag(σ)·Vᵀ has orthonormal U, V and equal singular
//! values σ = strength·‖W0‖_F/√min(rows, cols), i.e. `strength` times W0's RMS singular value:
//! as in a real fine-tuning change, each planted direction has a comparable size, so a rank-r
//! ΔW carries r times the energy of a rank-1 one (‖ΔW‖_F = strength·‖W0‖_F·√(r/min(rows, cols))).
//! A fixed ‖ΔW‖_F whatever the rank would spread high-rank changes thin and hide the rank from
//! every statistic an allocator can see.

use super::task::Task;
use crate::adapter::ModuleKind;
use crate::backend::cpu::Cpu;
use crate::model::weights::name_seed;
use crate::model::{
    random_weights, Batch, Head, HostWeights, Init, LoraConfig, Model, ModelConfig, Target,
    TrainMode,
};
use anyhow::{ensure, Result};
use nalgebra::DMatrix;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, StandardNormal};
use std::sync::Arc;

/// Settings of the planted-rank task.
#[derive(Clone, Debug, PartialEq)]
pub struct PlantedConfig {
    pub model: ModelConfig,
    /// Planted ranks assigned to the adapter slots in `adapters()` order (layer-major, then
    /// q, k, v, o, ffn_in, ffn_out), cycling when shorter than the number of slots.
    pub ranks: Vec<usize>,
    /// Singular value of every planted component, relative to W0's RMS singular value
    /// (‖W0‖_F/√min(rows, cols)).
    pub strength: f32,
    /// Tokens per sequence.
    pub seq: usize,
    /// Held-out batches and their size.
    pub eval_batches: usize,
    pub eval_batch_size: usize,
    pub seed: u64,
}

impl PlantedConfig {
    /// A small encoder (2 layers, hidden 32, 4 heads, FFN 64, vocab 64, 16 tokens) with the
    /// rank pattern 0, 2, 8, 1 cycling over its 12 slots.
    pub fn small(seed: u64) -> Self {
        Self {
            model: ModelConfig {
                flavour: crate::model::Flavour::Encoder,
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
            ranks: vec![0, 2, 8, 1],
            strength: 1.0,
            seq: 16,
            eval_batches: 2,
            eval_batch_size: 16,
            seed,
        }
    }
}

pub struct PlantedTask {
    cfg: PlantedConfig,
    base: HostWeights,
    planted: Vec<usize>,
    /// Dense planted ΔW of every slot ([rows, cols], empty at rank 0).
    deltas: Vec<Vec<f32>>,
    teacher: Model<Cpu>,
    eval: Vec<Batch>,
    /// `(samples, order seed)` of [`PlantedTask::with_order`].
    order: Option<(usize, u64)>,
}

/// An orthonormal [n, r] matrix (QR of a Gaussian one), row-major f64.
fn orthonormal(n: usize, r: usize, rng: &mut rand::rngs::StdRng) -> DMatrix<f64> {
    let g = DMatrix::<f64>::from_fn(n, r, |_, _| StandardNormal.sample(rng));
    g.qr().q()
}

impl PlantedTask {
    pub fn new(cfg: PlantedConfig) -> Result<Self> {
        let m = &cfg.model;
        m.validate()?;
        ensure!(
            !cfg.ranks.is_empty(),
            "planted task: give at least one rank"
        );
        ensure!(
            cfg.seq >= 1 && cfg.seq <= m.max_positions,
            "planted task: seq {} must be in 1..={}",
            cfg.seq,
            m.max_positions
        );
        let base = random_weights(m, &Head::Regress, Init::FanIn, cfg.seed);
        let mut teacher_w = base.clone();
        let slots = m.layers * ModuleKind::ALL.len();
        let mut planted = Vec::with_capacity(slots);
        let mut deltas = Vec::with_capacity(slots);
        let per = ModuleKind::ALL.len();
        for i in 0..slots {
            let (layer, kind) = (i / per, ModuleKind::ALL[i % per]);
            // Slots are numbered over every kind; a block without this module (an encoder has
            // no gate) has nothing planted there.
            if !m.module_kinds().contains(&kind) {
                planted.push(0);
                deltas.push(vec![]);
                continue;
            }
            let (rows, cols) = m.module_shape(kind);
            let r = cfg.ranks[i % cfg.ranks.len()];
            ensure!(
                r <= rows.min(cols),
                "planted task: rank {r} for slot {layer}.{kind} exceeds min(rows, cols) = {}",
                rows.min(cols)
            );
            planted.push(r);
            if r == 0 {
                deltas.push(vec![]);
                continue;
            }
            let w = teacher_w
                .get_mut(&format!("{}.weight", kind.hf_bert_path(layer)))
                .expect("body weight");
            let norm = w
                .data
                .iter()
                .map(|v| (*v as f64).powi(2))
                .sum::<f64>()
                .sqrt();
            // Every planted component as large as `strength` times W0's RMS singular value, so
            // a rank-r change carries r times the energy of a rank-1 change.
            let sigma = cfg.strength as f64 * norm / (rows.min(cols) as f64).sqrt();
            let mut rng = rand::rngs::StdRng::seed_from_u64(name_seed(
                cfg.seed,
                &format!("planted.{layer}.{kind}"),
            ));
            let u = orthonormal(rows, r, &mut rng);
            let v = orthonormal(cols, r, &mut rng);
            let dw = (&u * &v.transpose()) * sigma; // [rows, cols]
            let mut dense = vec![0.0f32; rows * cols];
            for i in 0..rows {
                for c in 0..cols {
                    dense[i * cols + c] = dw[(i, c)] as f32;
                    w.data[i * cols + c] += dense[i * cols + c];
                }
            }
            deltas.push(dense);
        }
        let teacher = Model::new(
            Arc::new(Cpu::new()),
            m.clone(),
            Head::Regress,
            TrainMode::Lora(LoraConfig::default()),
            Some(&teacher_w),
            cfg.seed,
        )?;
        let mut t = Self {
            cfg,
            base,
            planted,
            deltas,
            teacher,
            eval: vec![],
            order: None,
        };
        t.eval = (0..t.cfg.eval_batches)
            .map(|i| t.batch(&format!("eval.{i}"), t.cfg.eval_batch_size))
            .collect::<Result<_>>()?;
        Ok(t)
    }

    /// `count` random tokens from the stream `name` of the task's seed.
    fn tokens(&self, name: &str, count: usize) -> Vec<u32> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(name_seed(self.cfg.seed, name));
        let v = self.cfg.model.vocab as u32;
        (0..count).map(|_| rng.random_range(0..v)).collect()
    }

    /// Random tokens from the stream `name`, with the teacher's final hidden states as targets.
    fn batch(&mut self, name: &str, b: usize) -> Result<Batch> {
        let ids = self.tokens(name, b * self.cfg.seq);
        self.labelled(ids, b)
    }

    /// `b` sequences of `ids`, with the teacher's final hidden states as targets.
    fn labelled(&mut self, ids: Vec<u32>, b: usize) -> Result<Batch> {
        let mut batch = Batch {
            batch: b,
            seq: self.cfg.seq,
            ids,
            type_ids: vec![],
            mask: vec![],
            target: Target::Values(vec![]),
        };
        batch.target = Target::Values(self.teacher.hidden_states(&batch)?);
        Ok(batch)
    }

    /// Evaluates on a second held-out set (streams `dev.{i}`, the same size as the test set
    /// `eval.{i}`), for model selection that must not see the test set.
    pub fn on_dev_split(mut self) -> Result<Self> {
        self.eval = (0..self.cfg.eval_batches)
            .map(|i| self.batch(&format!("dev.{i}"), self.cfg.eval_batch_size))
            .collect::<Result<_>>()?;
        Ok(self)
    }

    /// Trains on a finite set of `samples` sequences (sequence k from the task's stream
    /// `train.seq.{k}`), visited in the order `order_seed` gives ([`super::order`]): the task's
    /// seed fixes the data, the run's seed the order. Without it, training batch `index` is a
    /// fresh batch drawn from the task's seed alone (an endless stream, for tests that build
    /// the task directly).
    pub fn with_order(mut self, samples: usize, order_seed: u64) -> Self {
        self.order = Some((samples.max(1), order_seed));
        self
    }

    pub fn config(&self) -> &PlantedConfig {
        &self.cfg
    }

    /// The planted ΔW of slot `i`: [rows, cols] (empty when its planted rank is 0).
    pub fn planted_delta(&self, i: usize) -> &[f32] {
        &self.deltas[i]
    }

    /// A LoRA config with every slot at its planted rank (the oracle allocation).
    pub fn oracle_lora(&self, alpha: f32) -> LoraConfig {
        let mut l = LoraConfig {
            alpha,
            ..Default::default()
        };
        for (i, &r) in self.planted.iter().enumerate() {
            let per = ModuleKind::ALL.len();
            l.ranks.insert((i / per, ModuleKind::ALL[i % per]), r);
        }
        l
    }
}

impl Task for PlantedTask {
    fn name(&self) -> String {
        format!("planted{:?}", self.cfg.ranks)
    }
    fn model_config(&self) -> ModelConfig {
        self.cfg.model.clone()
    }
    fn head(&self) -> Head {
        Head::Regress
    }
    fn base_weights(&self) -> Result<Option<HostWeights>> {
        Ok(Some(self.base.clone()))
    }
    fn train_batch(&mut self, index: u64, batch_size: usize) -> Result<Batch> {
        let Some((samples, order_seed)) = self.order else {
            return self.batch(&format!("train.{index}"), batch_size);
        };
        let seq = self.cfg.seq;
        let ids = super::order::batch_indices(samples, order_seed, index, batch_size)
            .into_iter()
            .flat_map(|k| self.tokens(&format!("train.seq.{k}"), seq))
            .collect();
        self.labelled(ids, batch_size)
    }
    fn eval_batches(&self) -> &[Batch] {
        &self.eval
    }
    fn planted_ranks(&self) -> Option<Vec<usize>> {
        Some(self.planted.clone())
    }
}
