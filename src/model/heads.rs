//! Heads and losses: forward, loss, evaluation statistics and the gradient at the final hidden
//! states. The loss of a batch is its mean (over sequences, target tokens or values); with
//! `loss_scale` s the gradients are s·∂(mean loss)/∂θ, so accumulation passes s = 1/accum.

use super::config::{Batch, EvalOut, Head, Pooling, Target};
use super::transformer::{Acts, Model};
use crate::backend::{Backend, Gemm, Ids, MemKind, Tensor};
use anyhow::{bail, ensure, Result};

/// (final hidden states [N, C], gradient slot dL/dhidden [N, C])
fn split<B: Backend>(a: &mut Acts<B>) -> (&Tensor<B>, &mut Tensor<B>) {
    let Acts {
        final_out,
        layers,
        flow,
        ..
    } = a;
    let hidden = match final_out.as_ref() {
        Some(h) => h,
        None => &layers.last().unwrap().out,
    };
    (hidden, &mut flow.dres)
}

/// Logits the LM head holds at once (32 MiB of f32): a chunk of rows at this size.
const LM_CHUNK_VALUES: usize = 1 << 23;

fn argmax(row: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in row.iter().enumerate() {
        if v > row[best] {
            best = i;
        }
    }
    best as u32
}

/// Per-token pooling weights [B, T]: mean over unmasked tokens, or the first token.
fn pooling_weights(batch: &Batch, pooling: Pooling) -> Vec<f32> {
    let (b, t) = (batch.batch, batch.seq);
    let mut w = vec![0.0f32; b * t];
    for s in 0..b {
        match pooling {
            Pooling::Cls => w[s * t] = 1.0,
            Pooling::Mean => {
                let m = |i: usize| {
                    if batch.mask.is_empty() {
                        1.0
                    } else {
                        batch.mask[s * t + i]
                    }
                };
                let total: f32 = (0..t).map(m).sum();
                if total > 0.0 {
                    for i in 0..t {
                        w[s * t + i] = m(i) / total;
                    }
                }
            }
        }
    }
    w
}

fn target_ids<B: Backend>(be: &B, ids: &[u32], classes: usize, what: &str) -> Result<Ids<B>> {
    if let Some((i, &c)) = ids
        .iter()
        .enumerate()
        .find(|(_, &c)| c != Ids::<B>::IGNORE && c as usize >= classes)
    {
        bail!("target {i}: {what} {c} is out of range (the head has {classes})");
    }
    be.ids(ids)
}

impl<B: Backend> Model<B> {
    /// Forward, loss, backward: gradients of `loss_scale`·(mean loss of `batch`) are *added* to
    /// the gradient buffers. Returns the mean loss (unscaled), read back once the backward is
    /// queued, so the device never waits for the host in between.
    pub fn forward_backward(&mut self, batch: &Batch, loss_scale: f32) -> Result<f32> {
        self.forward_body(batch)?;
        let mut slot = self.be.zeros(1, MemKind::Scratch)?;
        let (hl, _) = self.head_pass(batch, Some(loss_scale), false, &mut slot)?;
        self.backward_body()?;
        Ok(hl.mean(self.be.download(&slot)?[0]))
    }

    /// [`Model::forward_backward`] without the read-back: `loss_scale`·(mean loss) is added to
    /// the step's loss on the device, read with the gradient norm by [`Model::step_stats`] —
    /// one read-back per training step however many micro-batches it has.
    pub fn forward_backward_queued(&mut self, batch: &Batch, loss_scale: f32) -> Result<()> {
        self.forward_body(batch)?;
        let be = self.be.clone();
        let mut bufs = self.stats_bufs(0)?;
        let r = self.head_pass(batch, Some(loss_scale), false, &mut bufs.loss_slot);
        let r = r.and_then(|(hl, _)| self.backward_body().map(|_| hl));
        if let Ok(hl) = &r {
            // loss_acc += loss_scale · mean loss
            be.axpy(
                loss_scale * hl.mean(1.0),
                &bufs.loss_slot,
                &mut bufs.loss_acc,
            );
        }
        self.step_stats = Some(bufs);
        r.map(|_| ())
    }

    /// Mean loss of `batch`, forward only (no gradients touched).
    pub fn loss(&mut self, batch: &Batch) -> Result<f32> {
        self.forward_body(batch)?;
        let mut slot = self.be.zeros(1, MemKind::Scratch)?;
        let (hl, _) = self.head_pass(batch, None, false, &mut slot)?;
        Ok(hl.mean(self.be.download(&slot)?[0]))
    }

    /// Loss sum, correct predictions and predictions of `batch`, forward only.
    pub fn evaluate(&mut self, batch: &Batch) -> Result<EvalOut> {
        self.forward_body(batch)?;
        let mut slot = self.be.zeros(1, MemKind::Scratch)?;
        let (hl, mut out) = self.head_pass(batch, None, true, &mut slot)?;
        out.loss_sum = hl.scale * self.be.download(&slot)?[0] as f64;
        Ok(out)
    }

    /// Head forward and loss; with `grad = Some(s)` also the head's gradients and
    /// dL/dhidden (into the flow buffer) for the body's backward. The loss stays on the device:
    /// `sum[0]` gets a value whose [`HeadLoss`] scaling is the batch's loss sum (the returned
    /// `EvalOut` has everything but `loss_sum`).
    fn head_pass(
        &mut self,
        batch: &Batch,
        grad: Option<f32>,
        eval: bool,
        sum: &mut Tensor<B>,
    ) -> Result<(HeadLoss, EvalOut)> {
        let be = self.be.clone();
        let be = &*be;
        let d = self.dims(batch);
        let (b, t, c, n) = (d.b, d.t, d.c, d.n());
        let head = self.head;
        let mismatch = |want: &str| -> anyhow::Error {
            anyhow::anyhow!(
                "head {head:?} needs {want} targets, but the batch has {}",
                match &batch.target {
                    Target::Classes(_) => "Classes",
                    Target::Tokens(_) => "Tokens",
                    Target::Values(_) => "Values",
                    Target::Spans { .. } => "Spans",
                }
            )
        };
        let mut out = EvalOut::default();
        let mut loss_scale = 1.0f64;
        match (head, &batch.target) {
            (Head::Classify { classes, pooling }, Target::Classes(y)) => {
                self.classify_head_pass(batch, y, (classes, pooling), grad, eval, sum, &mut out)?;
            }
            (Head::Regress, Target::Values(y)) if y.len() == b && y.len() != n * c => {
                let pw = pooling_weights(batch, Pooling::Mean);
                let yt = be.upload(y, MemKind::Scratch)?;
                let outv = self.pooled_head(
                    be.upload(&pw, MemKind::Scratch)?,
                    d,
                    1,
                    grad,
                    |be, o, dout, _| {
                        // dout = o − y, then scaled to the MSE gradient
                        be.copy(o, dout);
                        be.axpy(-1.0, &yt, dout);
                        be.sumsq(dout, sum, 0);
                        be.scale(dout, 2.0 * grad.unwrap_or(0.0) / b as f32);
                        Ok(())
                    },
                    b,
                )?;
                out.count = b;
                if eval {
                    out.outputs = be.download(&outv)?;
                }
            }
            (Head::Regress, Target::Values(y)) => {
                ensure!(
                    y.len() == n * c,
                    "batch: regression targets must be one value per sequence ({b}) or the \
                     final hidden states ({b}×{t}×{c} = {}); got {}",
                    n * c,
                    y.len()
                );
                let (hidden, dres) = split(self.acts.as_mut().unwrap());
                let yt = be.upload(y, MemKind::Scratch)?;
                let mut diff = be.zeros(n * c, MemKind::Scratch)?;
                be.copy(hidden, &mut diff);
                be.axpy(-1.0, &yt, &mut diff);
                be.sumsq(&diff, sum, 0);
                out.count = n * c;
                if let Some(s) = grad {
                    be.copy(&diff, dres);
                    be.scale(dres, 2.0 * s / (n * c) as f32);
                }
            }
            (Head::LanguageModel, Target::Tokens(y)) => {
                ensure!(
                    y.len() == n,
                    "batch: {} token targets for {n} positions",
                    y.len()
                );
                self.lm_head_pass(y, grad, eval, sum, &mut out)?;
            }
            (Head::Span, Target::Spans { start, end }) => {
                self.span_head_pass(batch, (start, end), grad, eval, sum, &mut out)?;
                // `sum` holds start and end losses: halved, a sequence's mean of the two.
                loss_scale = 0.5;
            }
            (Head::Classify { .. }, _) => return Err(mismatch("Classes")),
            (Head::Regress, _) => return Err(mismatch("Values")),
            (Head::LanguageModel, _) => return Err(mismatch("Tokens")),
            (Head::Span, _) => return Err(mismatch("Spans")),
        }
        Ok((
            HeadLoss {
                count: out.count,
                scale: loss_scale,
            },
            out,
        ))
    }

    /// The classification head: pooled logits and their cross-entropy into `sum[0]`, the
    /// arg-max predictions when `eval`.
    #[allow(clippy::too_many_arguments)]
    fn classify_head_pass(
        &mut self,
        batch: &Batch,
        y: &[u32],
        (classes, pooling): (usize, Pooling),
        grad: Option<f32>,
        eval: bool,
        sum: &mut Tensor<B>,
        out: &mut EvalOut,
    ) -> Result<()> {
        let be = self.be.clone();
        let be = &*be;
        let d = self.dims(batch);
        let b = d.b;
        ensure!(
            y.len() == b,
            "batch: {} class targets for {b} sequences",
            y.len()
        );
        let targets = target_ids(be, y, classes, "class")?;
        let scored = y.iter().filter(|&&v| v != Ids::<B>::IGNORE).count();
        let pw = pooling_weights(batch, pooling);
        let logits = self.pooled_head(
            be.upload(&pw, MemKind::Scratch)?,
            d,
            classes,
            grad,
            |be, logits, dlogits, count| {
                let mut losses = be.zeros(b, MemKind::Scratch)?;
                let scale = grad.unwrap_or(0.0) / count.max(1) as f32;
                be.cross_entropy(logits, &targets, dlogits, &mut losses, b, classes, scale);
                be.sum(&losses, sum, 0);
                Ok(())
            },
            scored,
        )?;
        out.count = scored;
        if eval {
            let l = be.download(&logits)?;
            for (s, row) in l.chunks(classes).enumerate() {
                let p = argmax(row);
                out.preds.push(p);
                out.correct += (p == y[s]) as usize;
            }
            out.logits = l;
        }
        Ok(())
    }

    /// The span head: per sequence, start and end logits over its positions and a
    /// cross-entropy for each, into `sum[0]`; with `grad` the head's gradients and dL/dhidden.
    fn span_head_pass(
        &mut self,
        batch: &Batch,
        (start, end): (&[u32], &[u32]),
        grad: Option<f32>,
        eval: bool,
        sum: &mut Tensor<B>,
        out: &mut EvalOut,
    ) -> Result<()> {
        let be = self.be.clone();
        let be = &*be;
        let d = self.dims(batch);
        let (b, t, c, n) = (d.b, d.t, d.c, d.n());
        ensure!(
            start.len() == b && end.len() == b,
            "batch: {} start and {} end positions for {b} sequences",
            start.len(),
            end.len()
        );
        let mut y = Vec::with_capacity(2 * b);
        for s in 0..b {
            y.push(start[s]);
            y.push(end[s]);
        }
        let targets = target_ids(be, &y, t, "answer position")?;
        let (hidden, dres) = split(self.acts.as_mut().unwrap());
        let (w, bias) = (self.head_w.as_mut().unwrap(), self.head_b.as_mut().unwrap());
        // logits: [N, 2] → lt: [B, 2, T] (rows of T positions)
        let mut logits = be.zeros(n * 2, MemKind::Activation)?;
        be.matmul(hidden, &w.w, &mut logits, &Gemm::nt(n, 2, c));
        be.add_bias(&mut logits, &bias.w, n, 2);
        let mut lt = be.zeros(n * 2, MemKind::Activation)?;
        be.permute0213(&logits, &mut lt, [b, t, 2, 1]);
        if batch.mask.contains(&0.0) {
            // Padded positions can be neither start nor end: −1e4 on their logits
            // (a constant, so no gradient reaches them).
            let mut pad = vec![0.0f32; 2 * n];
            for s in 0..b {
                for j in 0..2 {
                    for i in 0..t {
                        if batch.mask[s * t + i] == 0.0 {
                            pad[(2 * s + j) * t + i] = -1e4;
                        }
                    }
                }
            }
            be.axpy(1.0, &be.upload(&pad, MemKind::Scratch)?, &mut lt);
        }
        let mut dlt = be.zeros(n * 2, MemKind::Activation)?;
        let mut losses = be.zeros(2 * b, MemKind::Scratch)?;
        let scale = grad.unwrap_or(0.0) / (2 * b) as f32;
        be.cross_entropy(&lt, &targets, &mut dlt, &mut losses, 2 * b, t, scale);
        // The loss of a sequence is the mean of its start and end losses.
        be.sum(&losses, sum, 0);
        out.count = b;
        if eval {
            let l = be.download(&lt)?;
            for s in 0..b {
                let ps = argmax(&l[(2 * s) * t..(2 * s + 1) * t]);
                let pe = argmax(&l[(2 * s + 1) * t..(2 * s + 2) * t]);
                out.preds.extend([ps, pe]);
                out.logits.extend([
                    l[(2 * s) * t + ps as usize],
                    l[(2 * s + 1) * t + pe as usize],
                ]);
                out.correct += (ps == start[s] && pe == end[s]) as usize;
            }
        }
        if grad.is_some() {
            // dlogits: [N, 2]
            be.permute0213(&dlt, &mut logits, [b, 2, t, 1]);
            if let Some(g) = w.grad() {
                be.matmul(&logits, hidden, g, &Gemm::tn(2, c, n).accumulate());
            }
            if let Some(g) = bias.grad() {
                be.col_sum(&logits, g, n, 2, true);
            }
            be.matmul(&logits, &w.w, dres, &Gemm::nn(n, c, 2));
        }
        Ok(())
    }

    /// The language-model head over the last forward's N positions, in chunks of rows so that
    /// no [N, V] logits exist at once (vocabularies of 50k–150k make them the largest tensor of
    /// a step, and more than a GPU binding holds): per chunk, logits = h·Wᵀ, the cross-entropy
    /// and its gradient, and with `grad` dL/dh into the flow buffer (and dW when W trains). W is
    /// the untied `lm_head` or the token embeddings. `sum[0]` gets Σ losses; `out.correct` the
    /// arg-max hits when `eval`.
    fn lm_head_pass(
        &mut self,
        y: &[u32],
        grad: Option<f32>,
        eval: bool,
        sum: &mut Tensor<B>,
        out: &mut EvalOut,
    ) -> Result<()> {
        let be = self.be.clone();
        let be = &*be;
        let (c, v) = (self.cfg.hidden, self.cfg.vocab);
        let n = y.len();
        if let Some((i, &id)) = y
            .iter()
            .enumerate()
            .find(|(_, &id)| id != Ids::<B>::IGNORE && id as usize >= v)
        {
            bail!("target {i}: token {id} is out of range (the head has {v})");
        }
        let count = y.iter().filter(|&&v| v != Ids::<B>::IGNORE).count();
        out.count = count;
        let scale = grad.unwrap_or(0.0) / count.max(1) as f32;
        let rows = (LM_CHUNK_VALUES / v).clamp(1, n);
        let z = |len| be.zeros(len, MemKind::Activation);
        let (mut h, mut logits, mut dlogits) = (z(rows * c)?, z(rows * v)?, z(rows * v)?);
        let mut dh = if grad.is_some() {
            Some(z(rows * c)?)
        } else {
            None
        };
        let (mut losses, mut part) = (
            be.zeros(rows, MemKind::Scratch)?,
            be.zeros(1, MemKind::Scratch)?,
        );
        be.fill(sum, 0.0);
        let (hidden, dres) = split(self.acts.as_mut().unwrap());
        let w = match self.lm_head.as_mut() {
            Some(w) => w,
            None => &mut self.emb.word,
        };
        for r0 in (0..n).step_by(rows) {
            let k = rows.min(n - r0);
            // h: [k, C] = hidden rows r0..r0+k; logits: [k, V] = h · Wᵀ
            be.copy_range(hidden, r0 * c, &mut h, 0, k * c);
            be.matmul(&h, &w.w, &mut logits, &Gemm::nt(k, v, c));
            let targets = be.ids(&y[r0..r0 + k])?;
            // A last, shorter chunk leaves stale losses past k: zero them before summing.
            be.fill(&mut losses, 0.0);
            be.cross_entropy(&logits, &targets, &mut dlogits, &mut losses, k, v, scale);
            be.sum(&losses, &mut part, 0);
            be.axpy(1.0, &part, sum);
            if eval {
                let l = be.download(&logits)?;
                for (i, row) in l[..k * v].chunks(v).enumerate() {
                    let t = y[r0 + i];
                    if t != Ids::<B>::IGNORE {
                        out.correct += (argmax(row) == t) as usize;
                    }
                }
            }
            if let Some(dh) = dh.as_mut() {
                // dh: [k, C] = dlogits · W, into the flow buffer's rows r0..r0+k
                be.matmul(&dlogits, &w.w, dh, &Gemm::nn(k, c, v));
                be.copy_range(dh, 0, dres, r0 * c, k * c);
                if let Some(g) = w.grad() {
                    // dW += dlogitsᵀ · h
                    be.matmul(&dlogits, &h, g, &Gemm::tn(v, c, k).accumulate());
                }
            }
        }
        Ok(())
    }

    /// Pooled linear head: pooled [B, C] = Σ_t pw[b, t]·hidden[b, t, :]; logits [B, K] =
    /// pooled·Wᵀ + b. `loss_fn(logits, dlogits, count)` records the loss on the device and writes
    /// dlogits (scaled); with `grad` the head's gradients and dL/dhidden follow.
    fn pooled_head(
        &mut self,
        pw: Tensor<B>,
        d: super::block::Dims,
        k: usize,
        grad: Option<f32>,
        loss_fn: impl FnOnce(&B, &Tensor<B>, &mut Tensor<B>, usize) -> Result<()>,
        count: usize,
    ) -> Result<Tensor<B>> {
        let be = self.be.clone();
        let be = &*be;
        let (b, t, c) = (d.b, d.t, d.c);
        let a = self.acts.as_mut().unwrap();
        let (hidden, dres) = split(a);
        let (w, bias) = (self.head_w.as_mut().unwrap(), self.head_b.as_mut().unwrap());
        let mut pooled = be.zeros(b * c, MemKind::Activation)?;
        be.matmul(
            &pw,
            hidden,
            &mut pooled,
            &Gemm::nn(1, c, t).batched(b, t, t * c, c),
        );
        // pooling = cls: BERT's pooler turns the first token's state into the classifier input.
        let pooler_in = match &self.pooler {
            Some(p) => Some(p.forward(be, &mut pooled, b, c)?),
            None => None,
        };
        let mut logits = be.zeros(b * k, MemKind::Activation)?;
        be.matmul(&pooled, &w.w, &mut logits, &Gemm::nt(b, k, c));
        be.add_bias(&mut logits, &bias.w, b, k);
        let mut dlogits = be.zeros(b * k, MemKind::Activation)?;
        loss_fn(be, &logits, &mut dlogits, count)?;
        if grad.is_some() {
            if let Some(g) = w.grad() {
                be.matmul(&dlogits, &pooled, g, &Gemm::tn(k, c, b).accumulate());
            }
            if let Some(g) = bias.grad() {
                be.col_sum(&dlogits, g, b, k, true);
            }
            // dpooled: [B, C] = dlogits · W; dhidden[b, t, :] = pw[b, t] · dpooled[b, :]
            let mut dpooled = be.zeros(b * c, MemKind::Activation)?;
            be.matmul(&dlogits, &w.w, &mut dpooled, &Gemm::nn(b, c, k));
            if let (Some(p), Some(x)) = (self.pooler.as_mut(), pooler_in.as_ref()) {
                p.backward(be, x, &pooled, &mut dpooled, b, c)?;
            }
            be.matmul(
                &pw,
                &dpooled,
                dres,
                &Gemm::nn(t, c, 1).batched(b, t, c, t * c),
            );
        }
        Ok(logits)
    }
}

/// How a head's device loss slot becomes the batch's loss: loss sum = `scale`·slot, mean =
/// loss sum / `count`.
struct HeadLoss {
    count: usize,
    scale: f64,
}

impl HeadLoss {
    fn mean(&self, slot: f32) -> f32 {
        (self.scale * slot as f64 / self.count.max(1) as f64) as f32
    }
}
