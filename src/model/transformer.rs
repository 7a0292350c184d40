//! The model: embeddings, blocks, final norm, head; construction from host weights, the forward
//! and backward passes over a batch, gradient bookkeeping and the AdamW step.

use super::block::{block_backward, block_forward, Block, Dims, Flow, LayerActs, Norm, Work};
use super::config::{Batch, Flavour, Head, LoraConfig, ModelConfig, Pooling, TrainMode};
use super::linear::{Linear, Lora};
use super::llama::{llama_block_backward, llama_block_forward, RopeInput};
use super::lora::{init_factors, lora_scale};
use super::param::Param;
use super::pooler::{self, Pooler};
use super::weights::{
    body_shapes, head_shapes, init_tensor, name_seed, HostWeights, Init, LLAMA_EMBED, LLAMA_HEAD,
    LLAMA_NORM,
};
use crate::adapter::{HostTensor, ModuleKind};
use crate::backend::{AdamW, Backend, Ids, LedgerSnapshot, MemKind, Tensor};
use anyhow::{bail, ensure, Context, Result};
use std::sync::Arc;

/// Token, position and (encoder) token-type tables, and the encoder's embedding LayerNorm.
pub struct Embeddings<B: Backend> {
    pub word: Param<B>,          // [V, C]
    pub pos: Option<Param<B>>,   // [P, C] (not in the Llama family: RoPE)
    pub types: Option<Param<B>>, // [types, C] (encoder)
    pub ln: Option<Norm<B>>,     // encoder
}

/// Activations of one pass at one batch shape (reallocated when the shape changes).
pub struct Acts<B: Backend> {
    pub d: Dims,
    pub ids: Ids<B>,         // [N]
    pub pos_ids: Ids<B>,     // [N]
    pub type_ids: Ids<B>,    // [N]
    pub key_mask: Tensor<B>, // [B, T]
    /// Sum of the embeddings: [N, C] (the decoder's block-0 input).
    pub emb_sum: Tensor<B>,
    pub emb_mean: Tensor<B>, // [N]
    pub emb_rstd: Tensor<B>, // [N]
    /// Encoder: LN(emb_sum), the block-0 input: [N, C].
    pub emb_out: Option<Tensor<B>>,
    pub layers: Vec<LayerActs<B>>,
    /// Decoder: final LN output: [N, C].
    pub final_out: Option<Tensor<B>>,
    pub final_mean: Tensor<B>, // [N]
    pub final_rstd: Tensor<B>, // [N]
    pub work: Work<B>,
    pub flow: Flow<B>,
}

/// A transformer with LoRA adapters (or fully trainable), on a backend.
pub struct Model<B: Backend> {
    pub(crate) be: Arc<B>,
    pub(crate) cfg: ModelConfig,
    pub(crate) head: Head,
    pub(crate) mode: TrainMode,
    pub(crate) seed: u64,
    pub(crate) emb: Embeddings<B>,
    pub(crate) blocks: Vec<Block<B>>,
    /// Decoder: `final_layernorm`; Llama family: `model.norm` (RMSNorm).
    pub(crate) final_ln: Option<Norm<B>>,
    /// The Llama family's own LM head `lm_head.weight` [V, C] when it is not tied to the
    /// embeddings.
    pub(crate) lm_head: Option<Param<B>>,
    /// The Llama family's RoPE table [P, D/2, 2] (cos, sin) for positions 0..P, grown to the
    /// longest sequence seen (see `rope.rs`).
    pub(crate) rope: Option<(Tensor<B>, usize)>,
    /// BERT's pooler, for `pooling = cls` classification (see `pooler.rs`).
    pub(crate) pooler: Option<Pooler<B>>,
    /// `classifier.*` or `qa_outputs.*`: weight [K, C], bias [K].
    pub(crate) head_w: Option<Param<B>>,
    pub(crate) head_b: Option<Param<B>>,
    pub(crate) acts: Option<Acts<B>>,
    /// Optimizer steps taken.
    pub(crate) step: u64,
    /// Rank changes made so far (seeds the random rows of grown adapters).
    pub(crate) resizes: u64,
    /// How resizes treat moments, basis and scale (set by the rank engine).
    pub(crate) resize_opts: crate::adapter::ResizeOptions,
    /// Device buffers of the optimizer step's gradient norm, kept across steps.
    pub(crate) step_stats: Option<StepStats<B>>,
}

/// A training step's device buffers, kept across steps: Σ g² per trainable tensor; the
/// step's read-back [norm, clipping factor, loss, unused]; a head's loss slot and the step's
/// loss accumulator.
pub(crate) struct StepStats<B: Backend> {
    pub sumsq: Tensor<B>,     // [trainable tensors]
    pub out: Tensor<B>,       // [4]
    pub loss_slot: Tensor<B>, // [1]
    pub loss_acc: Tensor<B>,  // [1]
}

/// What [`Model::step_stats`] reads back.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepReport {
    /// Mean loss of the step (over its micro-batches).
    pub loss: f32,
    /// Global gradient norm before clipping.
    pub grad_norm: f32,
}

fn check_norm(norm: f32, steps_before: u64) -> Result<()> {
    ensure!(
        norm.is_finite(),
        "gradient norm is {norm} at step {}; lower the learning rate or check the data",
        steps_before + 1
    );
    Ok(())
}

impl<B: Backend> Model<B> {
    /// Builds a model on `backend`. `weights`: the body weights by Hugging Face BERT name (see
    /// [`super::weights`]); `None` draws them from `seed` (BERT init). Missing head weights are
    /// initialised (N(0, 0.02), bias 0); a missing body weight or a wrong shape is an error
    /// naming the tensor. In LoRA mode the body is frozen (no gradient or optimizer buffers)
    /// and every slot of `LoraConfig::ranks` gets an adapter with ΔW = 0.
    pub fn new(
        backend: Arc<B>,
        cfg: ModelConfig,
        head: Head,
        mode: TrainMode,
        weights: Option<&HostWeights>,
        seed: u64,
    ) -> Result<Self> {
        cfg.validate()?;
        if let Head::Classify { classes, .. } = head {
            ensure!(classes >= 1, "classification head needs at least 1 class")
        }
        let be = &*backend;
        let full = mode == TrainMode::Full;
        let src = WeightSource {
            weights,
            cfg: &cfg,
            seed,
        };
        let lora_cfg = match &mode {
            TrainMode::Lora(l) => Some(l.clone()),
            TrainMode::Full => None,
        };
        let mut body = Body::default();
        for (name, shape) in body_shapes(&cfg) {
            let t = src.get(&name, &shape, false)?;
            let p = match &lora_cfg {
                None => Param::new(be, name.clone(), &t, true)?,
                Some(l) => Param::frozen(be, name.clone(), &t, l.frozen)?,
            };
            body.0.insert(name, p);
        }
        if let Some(l) = &lora_cfg {
            check_lora_slots(&cfg, l)?;
        }
        let emb = body.embeddings(&cfg);
        let blocks = (0..cfg.layers)
            .map(|l| body.block(be, &cfg, lora_cfg.as_ref(), seed, l))
            .collect::<Result<Vec<_>>>()?;
        let final_ln = body.final_norm(&cfg);
        let lm_head = body.0.remove(LLAMA_HEAD);
        debug_assert!(body.0.is_empty(), "body weights left: {:?}", body.0.keys());
        let (head_w, head_b, pooler) = src.head(be, &head, full)?;
        Ok(Self {
            be: backend.clone(),
            cfg,
            head,
            mode,
            seed,
            emb,
            blocks,
            final_ln,
            lm_head,
            rope: None,
            pooler,
            head_w,
            head_b,
            acts: None,
            step: 0,
            resizes: 0,
            resize_opts: Default::default(),
            step_stats: None,
        })
    }

    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }
    pub fn head(&self) -> &Head {
        &self.head
    }
    pub fn mode(&self) -> &TrainMode {
        &self.mode
    }
    pub fn backend(&self) -> &Arc<B> {
        &self.be
    }
    /// The backend's memory ledger now (current and peak bytes by kind).
    pub fn memory(&self) -> LedgerSnapshot {
        self.be.ledger().snapshot()
    }
    /// Optimizer steps taken.
    pub fn step(&self) -> u64 {
        self.step
    }

    /// Every parameter (frozen or trainable) in a fixed order: embeddings, blocks, final norm,
    /// head.
    pub(crate) fn params_mut(&mut self) -> Vec<&mut Param<B>> {
        let mut out: Vec<&mut Param<B>> = Vec::new();
        let Embeddings {
            word,
            pos,
            types,
            ln,
        } = &mut self.emb;
        out.push(word);
        out.extend(pos.iter_mut());
        out.extend(types.iter_mut());
        if let Some(n) = ln {
            out.push(&mut n.gamma);
            out.extend(n.beta.as_mut());
        }
        for b in &mut self.blocks {
            out.extend(b.params_mut());
        }
        if let Some(n) = &mut self.final_ln {
            out.push(&mut n.gamma);
            out.extend(n.beta.as_mut());
        }
        out.extend(self.lm_head.iter_mut());
        if let Some(p) = &mut self.pooler {
            out.push(&mut p.w);
            out.push(&mut p.b);
        }
        out.extend(self.head_w.iter_mut());
        out.extend(self.head_b.iter_mut());
        out
    }

    /// Trainable parameters (elements): adapters and head in LoRA mode, everything in full mode.
    pub fn trainable_params(&mut self) -> usize {
        self.params_mut()
            .into_iter()
            .filter(|p| p.trainable())
            .map(|p| p.len())
            .sum()
    }

    /// Host copies of every trainable parameter, by name.
    pub fn trainable_host(&mut self) -> Result<HostWeights> {
        let be = self.be.clone();
        let mut out = HostWeights::new();
        for p in self.params_mut() {
            if p.trainable() {
                out.insert(p.name.clone(), p.host(&be)?);
            }
        }
        Ok(out)
    }

    /// Host copies of the gradients of every trainable parameter, by name.
    pub fn trainable_grads(&mut self) -> Result<HostWeights> {
        let be = self.be.clone();
        let mut out = HostWeights::new();
        for p in self.params_mut() {
            if let Some(o) = p.opt.as_ref() {
                out.insert(
                    p.name.clone(),
                    HostTensor::new(p.shape.clone(), be.download(&o.g)?),
                );
            }
        }
        Ok(out)
    }

    /// Overwrites trainable parameters by name (names not given are left alone; an unknown
    /// name or a wrong size is an error).
    pub fn set_trainable(&mut self, w: &HostWeights) -> Result<()> {
        let be = self.be.clone();
        let mut done = 0;
        for p in self.params_mut() {
            if !p.trainable() {
                continue;
            }
            if let Some(t) = w.get(&p.name) {
                ensure!(
                    t.data.len() == p.len(),
                    "set_trainable: `{}` has {} values, got {}",
                    p.name,
                    p.len(),
                    t.data.len()
                );
                be.write(&mut p.w, &t.data)?;
                done += 1;
            }
        }
        ensure!(
            done == w.len(),
            "set_trainable: {} of the {} tensors given are not trainable parameters of this model",
            w.len() - done,
            w.len()
        );
        Ok(())
    }

    /// Sets every gradient to zero (gradients accumulate across `forward_backward` calls).
    pub fn zero_grads(&mut self) {
        let be = self.be.clone();
        for p in self.params_mut() {
            if let Some(g) = p.grad() {
                be.fill(g, 0.0);
            }
        }
        self.zero_gate_grads();
    }

    /// Global L2 norm of all gradients: one `sumsq` slot per tensor, one download.
    pub fn grad_norm(&mut self) -> Result<f32> {
        let count = self.grad_sumsq()?;
        let be = self.be.clone();
        let stats = self.step_stats.as_mut().expect("allocated by grad_sumsq");
        be.clip_factor(&stats.sumsq, count, 0.0, &mut stats.out);
        Ok(be.download(&stats.out)?[0])
    }

    /// The optimizer step's device buffers, with room for `count` per-tensor sums of squares
    /// (allocated once, regrown when more tensors train). Taken out of the model: put back
    /// with `self.step_stats = Some(..)`.
    pub(crate) fn stats_bufs(&mut self, count: usize) -> Result<StepStats<B>> {
        match self.step_stats.take() {
            Some(s) if s.sumsq.len() >= count.max(1) => Ok(s),
            old => {
                let z = |len| self.be.zeros(len, MemKind::Scratch);
                let (loss_slot, loss_acc) = match old {
                    Some(s) => (s.loss_slot, s.loss_acc),
                    None => (z(1)?, z(1)?),
                };
                Ok(StepStats {
                    sumsq: z(count.max(1))?,
                    out: z(4)?,
                    loss_slot,
                    loss_acc,
                })
            }
        }
    }

    /// Σ g² of every trainable tensor into `step_stats.sumsq` (one slot each), on the device;
    /// returns the number of slots (0 when nothing trains).
    fn grad_sumsq(&mut self) -> Result<usize> {
        let be = self.be.clone();
        let count = self
            .params_mut()
            .into_iter()
            .filter(|p| p.trainable())
            .count();
        let mut stats = self.stats_bufs(count)?;
        for (i, p) in self
            .params_mut()
            .into_iter()
            .filter(|p| p.trainable())
            .enumerate()
        {
            be.sumsq(&p.opt.as_ref().unwrap().g, &mut stats.sumsq, i);
        }
        self.step_stats = Some(stats);
        Ok(count)
    }

    /// One AdamW step on every trainable parameter, after clipping the global gradient norm to
    /// `clip`. Returns the norm before clipping. `opt.step` is ignored: each parameter counts
    /// its own steps for bias correction (they differ only after a resize reset an adapter,
    /// see [`super::lora`]). Weight decay applies to matrices only. Masked λ entries are set
    /// back to 0 after the update.
    pub fn optimizer_step(&mut self, opt: &AdamW, clip: Option<f32>) -> Result<f32> {
        self.optimizer_step_queued(opt, clip)?;
        let be = self.be.clone();
        let norm = be.download(&self.step_stats.as_ref().expect("queued above").out)?[0];
        check_norm(norm, self.step.saturating_sub(1))?;
        Ok(norm)
    }

    /// [`Model::optimizer_step`] without the read-back: the norm and the clipping factor are
    /// computed on the device and the update reads the factor there. [`Model::step_stats`]
    /// reads the norm (and checks it is finite) with the step's loss.
    pub fn optimizer_step_queued(&mut self, opt: &AdamW, clip: Option<f32>) -> Result<()> {
        let count = self.grad_sumsq()?;
        let be = self.be.clone();
        let mut stats = self.step_stats.take().expect("allocated by grad_sumsq");
        // out[0] = norm, out[1] = clipping factor
        be.clip_factor(&stats.sumsq, count, clip.unwrap_or(0.0), &mut stats.out);
        for p in self.params_mut() {
            let decay = p.decay;
            let Some(o) = p.opt.as_mut() else { continue };
            o.step += 1;
            let cfg = AdamW {
                lr: opt.lr * o.take_rewarm(),
                step: o.step,
                weight_decay: if decay { opt.weight_decay } else { 0.0 },
                ..*opt
            };
            be.adamw(
                &mut p.w,
                &o.g,
                &mut o.m,
                &mut o.v,
                &cfg,
                Some((&stats.out, 1)),
            );
        }
        self.step_stats = Some(stats);
        self.apply_lambda_masks()?;
        self.step += 1;
        Ok(())
    }

    /// The last step's mean loss (what [`Model::forward_backward_queued`] added up since the
    /// previous call) and gradient norm, in one read-back of 16 bytes; errors when the norm is
    /// not finite.
    pub fn step_stats(&mut self) -> Result<StepReport> {
        let be = self.be.clone();
        let mut stats = self.stats_bufs(0)?;
        // out[2] = the step's loss
        be.sum(&stats.loss_acc, &mut stats.out, 2);
        be.fill(&mut stats.loss_acc, 0.0);
        let v = be.download(&stats.out);
        self.step_stats = Some(stats);
        let v = v?;
        let report = StepReport {
            loss: v[2],
            grad_norm: v[0],
        };
        check_norm(report.grad_norm, self.step.saturating_sub(1))?;
        Ok(report)
    }

    /// Re-zero masked λ entries (AdaLoRA's pruned triplets stay pruned), on the device.
    pub(crate) fn apply_lambda_masks(&mut self) -> Result<()> {
        let be = self.be.clone();
        for b in &mut self.blocks {
            for &kind in self.cfg.module_kinds() {
                let Some(l) = b.linear_mut(kind).lora.as_mut() else {
                    continue;
                };
                if l.mask.iter().any(|&m| m) {
                    let mask = l.mask.clone();
                    l.zero_lambda(&*be, &mask)?;
                }
            }
        }
        Ok(())
    }

    // ---- forward / backward over the body ----------------------------------------------

    fn check_batch(&self, batch: &Batch) -> Result<()> {
        let (b, t, n) = (batch.batch, batch.seq, batch.tokens());
        ensure!(
            b > 0 && t > 0,
            "batch: empty batch ({b} sequences of {t} tokens)"
        );
        ensure!(
            t <= self.cfg.max_positions,
            "batch: sequences of {t} tokens exceed the model's {} positions; truncate them",
            self.cfg.max_positions
        );
        ensure!(
            batch.ids.len() == n,
            "batch: {} token ids for {b}×{t} = {n} positions",
            batch.ids.len()
        );
        if let Some((i, &id)) = batch
            .ids
            .iter()
            .enumerate()
            .find(|(_, &id)| id as usize >= self.cfg.vocab)
        {
            bail!(
                "batch: token id {id} at sequence {}, position {} is outside the vocabulary of {}",
                i / t,
                i % t,
                self.cfg.vocab
            );
        }
        ensure!(
            batch.type_ids.is_empty() || batch.type_ids.len() == n,
            "batch: {} token types for {n} positions",
            batch.type_ids.len()
        );
        if self.cfg.flavour == Flavour::Encoder {
            if let Some(&ty) = batch
                .type_ids
                .iter()
                .find(|&&ty| ty as usize >= self.cfg.type_vocab)
            {
                bail!(
                    "batch: token type {ty} is outside the model's {} types",
                    self.cfg.type_vocab
                );
            }
        }
        ensure!(
            batch.mask.is_empty() || batch.mask.len() == n,
            "batch: attention mask of {} values for {n} positions",
            batch.mask.len()
        );
        Ok(())
    }

    fn ensure_acts(&mut self, d: Dims, batch: &Batch) -> Result<()> {
        self.ensure_rope(d.t)?;
        let be = &*self.be;
        let flavour = self.cfg.flavour;
        let pre_norm = flavour != Flavour::Encoder;
        let n = d.n();
        let ids = be.ids(&batch.ids)?;
        let pos: Vec<u32> = (0..n).map(|i| (i % d.t) as u32).collect();
        let types = if batch.type_ids.is_empty() {
            vec![0u32; n]
        } else {
            batch.type_ids.clone()
        };
        let mask = if batch.mask.is_empty() {
            vec![1.0f32; n]
        } else {
            batch.mask.clone()
        };
        if self.acts.as_ref().map(|a| a.d) != Some(d) {
            self.acts = None; // free the old shape first
            let z = |len| be.zeros(len, MemKind::Activation);
            self.acts = Some(Acts {
                d,
                ids: be.ids(&batch.ids)?,
                pos_ids: be.ids(&pos)?,
                type_ids: be.ids(&types)?,
                key_mask: be.upload(&mask, MemKind::Activation)?,
                emb_sum: z(n * d.c)?,
                emb_mean: z(n)?,
                emb_rstd: z(n)?,
                emb_out: if pre_norm { None } else { Some(z(n * d.c)?) },
                layers: (0..self.cfg.layers)
                    .map(|_| LayerActs::new(be, d, flavour))
                    .collect::<Result<_>>()?,
                final_out: if pre_norm { Some(z(n * d.c)?) } else { None },
                final_mean: z(n)?,
                final_rstd: z(n)?,
                work: Work::new(be, d, flavour)?,
                flow: Flow::new(be, d)?,
            });
        }
        let a = self.acts.as_mut().unwrap();
        a.ids = ids;
        a.type_ids = be.ids(&types)?;
        be.write(&mut a.key_mask, &mask)?;
        Ok(())
    }

    /// The Llama family's RoPE table, grown to cover positions 0..t (nothing for other flavours).
    pub(crate) fn ensure_rope(&mut self, t: usize) -> Result<()> {
        let Some(arch) = &self.cfg.llama else {
            return Ok(());
        };
        if self.rope.as_ref().is_some_and(|(_, p)| *p >= t) {
            return Ok(());
        }
        // Grow geometrically so a run whose sequences lengthen step by step rebuilds it rarely.
        let p = t
            .max(self.rope.as_ref().map_or(0, |(_, p)| 2 * p))
            .min(self.cfg.max_positions)
            .max(t);
        let table = super::rope::rope_table(
            self.cfg.head_dim(),
            p,
            arch.rope_theta,
            arch.rope_scaling.as_ref(),
        );
        self.rope = None;
        self.rope = Some((self.be.upload(&table, MemKind::Frozen)?, p));
        Ok(())
    }

    pub(crate) fn dims(&self, batch: &Batch) -> Dims {
        let c = &self.cfg;
        Dims {
            b: batch.batch,
            t: batch.seq,
            c: c.hidden,
            h: c.heads,
            kvh: c.kv_heads(),
            d: c.head_dim(),
            f: c.ffn,
        }
    }

    /// Embeddings and blocks (and the decoder's final norm) over `batch`.
    pub(crate) fn forward_body(&mut self, batch: &Batch) -> Result<()> {
        self.check_batch(batch)?;
        let d = self.dims(batch);
        self.ensure_acts(d, batch)?;
        let be = &*self.be;
        let eps = self.cfg.ln_eps;
        let flavour = self.cfg.flavour;
        let a = self.acts.as_mut().unwrap();
        let c = d.c;
        // emb_sum: [N, C] = word[ids] (+ pos[t]) (+ types[type_ids])
        be.embedding_forward(&a.ids, &self.emb.word.w, &mut a.emb_sum, c, false);
        if let Some(pos) = &self.emb.pos {
            be.embedding_forward(&a.pos_ids, &pos.w, &mut a.emb_sum, c, true);
        }
        if let Some(ty) = &self.emb.types {
            be.embedding_forward(&a.type_ids, &ty.w, &mut a.emb_sum, c, true);
        }
        if let (Some(ln), Some(out)) = (&self.emb.ln, a.emb_out.as_mut()) {
            be.layernorm_forward(
                &a.emb_sum,
                &ln.gamma.w,
                &ln.beta().w,
                out,
                &mut a.emb_mean,
                &mut a.emb_rstd,
                d.n(),
                c,
                eps,
            );
        }
        let Acts {
            emb_sum,
            emb_out,
            layers,
            work,
            key_mask,
            pos_ids,
            ..
        } = a;
        let x0: &Tensor<B> = emb_out.as_ref().unwrap_or(emb_sum);
        for l in 0..self.blocks.len() {
            let (prev, rest) = layers.split_at_mut(l);
            let x = if l == 0 { x0 } else { &prev[l - 1].out };
            let blk = &mut self.blocks[l];
            match (&self.rope, flavour) {
                (Some((table, _)), Flavour::Llama) => {
                    let rope = RopeInput {
                        table,
                        positions: pos_ids,
                    };
                    llama_block_forward(be, blk, &mut rest[0], x, key_mask, &rope, work, d, eps)
                }
                _ => block_forward(
                    be,
                    blk,
                    &mut rest[0],
                    x,
                    key_mask,
                    work,
                    d,
                    flavour == Flavour::Decoder,
                    eps,
                ),
            }
            .with_context(|| format!("forward of layer {l}"))?;
        }
        if let (Some(ln), Some(out)) = (&self.final_ln, a.final_out.as_mut()) {
            let last = &a.layers.last().unwrap().out;
            match &ln.beta {
                Some(beta) => be.layernorm_forward(
                    last,
                    &ln.gamma.w,
                    &beta.w,
                    out,
                    &mut a.final_mean,
                    &mut a.final_rstd,
                    d.n(),
                    c,
                    eps,
                ),
                None => {
                    be.rmsnorm_forward(last, &ln.gamma.w, out, &mut a.final_rstd, d.n(), c, eps)
                }
            }
        }
        Ok(())
    }

    /// The final hidden states of the last forward pass: [N, C].
    pub(crate) fn hidden(&self) -> &Tensor<B> {
        let a = self
            .acts
            .as_ref()
            .expect("forward before reading hidden states");
        a.final_out
            .as_ref()
            .unwrap_or_else(|| &a.layers.last().unwrap().out)
    }

    /// Final hidden states of `batch` before any head: [batch·seq, hidden], row-major.
    pub fn hidden_states(&mut self, batch: &Batch) -> Result<Vec<f32>> {
        self.forward_body(batch)?;
        self.be.download(self.hidden())
    }

    /// Backward through the body; `acts.flow.dres` holds dL/dhidden [N, C] on entry.
    pub(crate) fn backward_body(&mut self) -> Result<()> {
        let be = &*self.be;
        let flavour = self.cfg.flavour;
        let a = self.acts.as_mut().expect("backward after forward");
        let d = a.d;
        let full = self.emb.word.trainable();
        let r_max = self
            .blocks
            .iter()
            .flat_map(|b| {
                self.cfg
                    .module_kinds()
                    .iter()
                    .map(|&k| b.linear(k).lora.as_ref().map_or(0, |l| l.rank))
            })
            .max()
            .unwrap_or(0);
        a.work.adapter.ensure(be, d.n() * r_max)?;
        if let Some(ln) = self.final_ln.as_mut() {
            final_norm_backward(be, ln, a);
        }
        let Acts {
            emb_sum,
            emb_out,
            layers,
            work,
            flow,
            pos_ids,
            key_mask,
            ..
        } = &mut *a;
        let x0: &Tensor<B> = emb_out.as_ref().unwrap_or(emb_sum);
        for l in (0..self.blocks.len()).rev() {
            let x = if l == 0 { x0 } else { &layers[l - 1].out };
            // Below layer 0 only the embeddings remain; their gradient is needed only when they
            // train (full fine-tuning).
            let need_dx = l > 0 || full;
            let blk = &mut self.blocks[l];
            match (&self.rope, flavour) {
                (Some((table, _)), Flavour::Llama) => {
                    let rope = RopeInput {
                        table,
                        positions: pos_ids,
                    };
                    let eps = self.cfg.ln_eps;
                    llama_block_backward(
                        be, blk, &layers[l], x, key_mask, &rope, work, flow, d, need_dx, eps,
                    )
                }
                _ => block_backward(
                    be,
                    blk,
                    &layers[l],
                    x,
                    work,
                    flow,
                    d,
                    flavour == Flavour::Decoder,
                    need_dx,
                ),
            }
            .with_context(|| format!("backward of layer {l}"))?;
        }
        if !full {
            return Ok(());
        }
        embeddings_backward(be, &mut self.emb, a);
        Ok(())
    }
}

/// Backward through the final norm: `flow.dres` (dL/d its output) becomes dL/d the last
/// block's output; the norm's gradients are accumulated when it trains.
fn final_norm_backward<B: Backend>(be: &B, ln: &mut Norm<B>, a: &mut Acts<B>) {
    let d = a.d;
    let Norm { gamma, beta } = ln;
    let last = &a.layers.last().unwrap().out;
    let dg = gamma.opt.as_mut().map(|o| &mut o.g);
    match beta {
        Some(beta) => be.layernorm_backward(
            &a.flow.dres,
            last,
            &gamma.w,
            &a.final_mean,
            &a.final_rstd,
            &mut a.flow.dres2,
            dg,
            beta.opt.as_mut().map(|o| &mut o.g),
            d.n(),
            d.c,
        ),
        None => be.rmsnorm_backward(
            &a.flow.dres,
            last,
            &gamma.w,
            &a.final_rstd,
            &mut a.flow.dres2,
            dg,
            d.n(),
            d.c,
        ),
    }
    std::mem::swap(&mut a.flow.dres, &mut a.flow.dres2);
}

/// Backward into the embedding tables (full fine-tuning only): through the encoder's embedding
/// LayerNorm, then each table's rows by the ids that read them.
fn embeddings_backward<B: Backend>(be: &B, emb: &mut Embeddings<B>, a: &mut Acts<B>) {
    let d = a.d;
    let demb = if let Some(ln) = emb.ln.as_mut() {
        let Norm { gamma, beta } = ln;
        be.layernorm_backward(
            &a.flow.dres,
            &a.emb_sum,
            &gamma.w,
            &a.emb_mean,
            &a.emb_rstd,
            &mut a.flow.dres2,
            gamma.opt.as_mut().map(|o| &mut o.g),
            beta.as_mut().and_then(|b| b.opt.as_mut()).map(|o| &mut o.g),
            d.n(),
            d.c,
        );
        &a.flow.dres2
    } else {
        &a.flow.dres
    };
    if let Some(g) = emb.word.grad() {
        be.embedding_backward(&a.ids, demb, g, d.c);
    }
    if let Some(g) = emb.pos.as_mut().and_then(|p| p.grad()) {
        be.embedding_backward(&a.pos_ids, demb, g, d.c);
    }
    if let Some(g) = emb.types.as_mut().and_then(|t| t.grad()) {
        be.embedding_backward(&a.type_ids, demb, g, d.c);
    }
}

/// Where [`Model::new`] reads each tensor: the loaded weights, checked against the shape the
/// config asks for, or a draw from `seed` (BERT init) when there are none. A missing head
/// weight is drawn too (a pretrained body gets a fresh task head); a missing body weight is an
/// error naming it.
struct WeightSource<'a> {
    weights: Option<&'a HostWeights>,
    cfg: &'a ModelConfig,
    seed: u64,
}

impl WeightSource<'_> {
    fn get(&self, name: &str, shape: &[usize], is_head: bool) -> Result<HostTensor> {
        let Some(w) = self.weights else {
            return Ok(init_tensor(name, shape, Init::Bert, self.seed));
        };
        match w.get(name) {
            Some(t) => {
                ensure!(
                    t.shape == shape,
                    "weight `{name}`: expected shape {shape:?}, found {:?}",
                    t.shape
                );
                ensure!(
                    t.data.len() == shape.iter().product::<usize>(),
                    "weight `{name}`: shape {shape:?} but {} values",
                    t.data.len()
                );
                Ok(t.clone())
            }
            None if is_head => Ok(init_tensor(name, shape, Init::Bert, self.seed)),
            None => bail!(
                "weight `{name}` (shape {shape:?}) is missing from the loaded weights; \
                 check that the checkpoint is a {:?} with {} layers",
                self.cfg.flavour,
                self.cfg.layers
            ),
        }
    }

    /// The task head's weight and bias, and BERT's pooler for `pooling = cls`. Head weights
    /// always train (LoRA trains the task head, as PEFT's modules_to_save).
    #[allow(clippy::type_complexity)]
    fn head<B: Backend>(
        &self,
        be: &B,
        head: &Head,
        full: bool,
    ) -> Result<(Option<Param<B>>, Option<Param<B>>, Option<Pooler<B>>)> {
        let mut hp = head_shapes(self.cfg, head).into_iter();
        let mut head_param = || -> Result<Option<Param<B>>> {
            match hp.next() {
                None => Ok(None),
                Some((name, shape)) => {
                    let t = self.get(&name, &shape, true)?;
                    Ok(Some(Param::new(be, name, &t, true)?))
                }
            }
        };
        let head_w = head_param()?;
        let head_b = head_param()?;
        let pooler = match head {
            Head::Classify {
                pooling: Pooling::Cls,
                ..
            } => {
                let [w, b] = [pooler::WEIGHT, pooler::BIAS].map(|n| {
                    let (_, shape) = pooler::shapes(self.cfg.hidden)
                        .into_iter()
                        .find(|(m, _)| m == n)
                        .expect("listed");
                    self.get(n, &shape, true)
                });
                Some(Pooler::new(be, &w?, &b?, full)?)
            }
            _ => None,
        };
        Ok((head_w, head_b, pooler))
    }
}

/// Every slot `LoraConfig::ranks` names exists in the model: a layer below `cfg.layers`, a
/// module kind its blocks have.
fn check_lora_slots(cfg: &ModelConfig, l: &LoraConfig) -> Result<()> {
    for &(layer, kind) in l.ranks.keys() {
        ensure!(
            layer < cfg.layers,
            "LoRA rank given for layer {layer}, but the model has {} layers (0..{})",
            cfg.layers,
            cfg.layers
        );
        ensure!(
            cfg.module_kinds().contains(&kind),
            "LoRA rank given for `{kind}`, which a {:?} block does not have",
            cfg.flavour
        );
    }
    Ok(())
}

/// The body's parameters by name while [`Model::new`] hands them to the structs that own them.
struct Body<B: Backend>(std::collections::BTreeMap<String, Param<B>>);

impl<B: Backend> Default for Body<B> {
    fn default() -> Self {
        Self(Default::default())
    }
}

impl<B: Backend> Body<B> {
    fn take(&mut self, name: &str) -> Param<B> {
        self.0
            .remove(name)
            .expect("body weight listed by body_shapes")
    }

    fn norm(&mut self, prefix: &str) -> Norm<B> {
        Norm {
            gamma: self.take(&format!("{prefix}.weight")),
            beta: Some(self.take(&format!("{prefix}.bias"))),
        }
    }

    fn rms(&mut self, name: &str) -> Norm<B> {
        Norm {
            gamma: self.take(name),
            beta: None,
        }
    }

    fn embeddings(&mut self, cfg: &ModelConfig) -> Embeddings<B> {
        match cfg.flavour {
            Flavour::Llama => Embeddings {
                word: self.take(LLAMA_EMBED),
                pos: None,
                types: None,
                ln: None,
            },
            Flavour::Encoder => Embeddings {
                word: self.take("embeddings.word_embeddings.weight"),
                pos: Some(self.take("embeddings.position_embeddings.weight")),
                types: Some(self.take("embeddings.token_type_embeddings.weight")),
                ln: Some(self.norm("embeddings.LayerNorm")),
            },
            Flavour::Decoder => Embeddings {
                word: self.take("embeddings.word_embeddings.weight"),
                pos: Some(self.take("embeddings.position_embeddings.weight")),
                types: None,
                ln: None,
            },
        }
    }

    /// Block `l`: its linear layers (each with an adapter at its rank in `lora`, ΔW = 0, when
    /// the model trains LoRA) and its two norms.
    fn block(
        &mut self,
        be: &B,
        cfg: &ModelConfig,
        lora: Option<&LoraConfig>,
        seed: u64,
        l: usize,
    ) -> Result<Block<B>> {
        let mut lin = |kind: ModuleKind| -> Result<Linear<B>> {
            let (rows, cols) = cfg.module_shape(kind);
            let path = cfg.module_path(l, kind);
            let lora = match lora {
                None => None,
                Some(lc) => {
                    let r = lc.ranks.get(&(l, kind)).copied().unwrap_or(0);
                    Some(new_lora(be, lc, &path, rows, cols, r, seed, l, kind)?)
                }
            };
            Ok(Linear {
                w: self.take(&format!("{path}.weight")),
                bias: self.0.remove(&format!("{path}.bias")),
                lora,
                rows,
                cols,
            })
        };
        let (q, k, v, o) = (
            lin(ModuleKind::Q)?,
            lin(ModuleKind::K)?,
            lin(ModuleKind::V)?,
            lin(ModuleKind::O)?,
        );
        let gate = if cfg.flavour == Flavour::Llama {
            Some(lin(ModuleKind::Gate)?)
        } else {
            None
        };
        let (ffn_in, ffn_out) = (lin(ModuleKind::FfnIn)?, lin(ModuleKind::FfnOut)?);
        let (ln_a, ln_f) = self.block_norms(cfg, l);
        Ok(Block {
            q,
            k,
            v,
            o,
            ffn_in,
            ffn_out,
            gate,
            ln_a,
            ln_f,
        })
    }

    /// A block's two norms (`Block::ln_a`, `Block::ln_f`).
    fn block_norms(&mut self, cfg: &ModelConfig, l: usize) -> (Norm<B>, Norm<B>) {
        match cfg.flavour {
            Flavour::Llama => (
                self.rms(&format!("model.layers.{l}.input_layernorm.weight")),
                self.rms(&format!("model.layers.{l}.post_attention_layernorm.weight")),
            ),
            Flavour::Encoder | Flavour::Decoder => (
                self.norm(&format!("encoder.layer.{l}.attention.output.LayerNorm")),
                self.norm(&format!("encoder.layer.{l}.output.LayerNorm")),
            ),
        }
    }

    fn final_norm(&mut self, cfg: &ModelConfig) -> Option<Norm<B>> {
        match cfg.flavour {
            Flavour::Llama => Some(self.rms(LLAMA_NORM)),
            Flavour::Decoder => Some(self.norm("final_layernorm")),
            Flavour::Encoder => None,
        }
    }
}

/// An adapter slot at rank `r` with ΔW = 0 (seeded per slot, so ranks elsewhere don't change
/// this slot's initial A).
#[allow(clippy::too_many_arguments)]
fn new_lora<B: Backend>(
    be: &B,
    lc: &LoraConfig,
    path: &str,
    rows: usize,
    cols: usize,
    r: usize,
    seed: u64,
    layer: usize,
    kind: ModuleKind,
) -> Result<Lora<B>> {
    ensure!(
        r <= rows.min(cols),
        "LoRA rank {r} for slot {layer}.{kind} exceeds min(rows, cols) = {} of its {rows}×{cols} weight",
        rows.min(cols)
    );
    let f = init_factors(
        rows,
        cols,
        r,
        lc.svd_form,
        name_seed(seed, &format!("{layer}.{kind}.lora_init")),
    );
    let scale = lora_scale(lc.alpha, r, lc.rslora, lc.svd_form, r);
    Lora::from_factors(be, path, rows, cols, &f, scale, r)
}
