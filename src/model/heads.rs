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
    /// the gradient buffers. Returns the mean loss (unscaled).
    pub fn forward_backward(&mut self, batch: &Batch, loss_scale: f32) -> Result<f32> {
        self.forward_body(batch)?;
        let (loss, _) = self.head_pass(batch, Some(loss_scale), false)?;
        self.backward_body()?;
        Ok(loss)
    }

    /// Mean loss of `batch`, forward only (no gradients touched).
    pub fn loss(&mut self, batch: &Batch) -> Result<f32> {
        self.forward_body(batch)?;
        Ok(self.head_pass(batch, None, false)?.0)
    }

    /// Loss sum, correct predictions and predictions of `batch`, forward only.
    pub fn evaluate(&mut self, batch: &Batch) -> Result<EvalOut> {
        self.forward_body(batch)?;
        Ok(self.head_pass(batch, None, true)?.1)
    }

    /// Head forward and loss; with `grad = Some(s)` also the head's gradients and
    /// dL/dhidden (into the flow buffer) for the body's backward.
    fn head_pass(
        &mut self,
        batch: &Batch,
        grad: Option<f32>,
        eval: bool,
    ) -> Result<(f32, EvalOut)> {
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
        match (head, &batch.target) {
            (Head::Classify { classes, pooling }, Target::Classes(y)) => {
                ensure!(
                    y.len() == b,
                    "batch: {} class targets for {b} sequences",
                    y.len()
                );
                let targets = target_ids(be, y, classes, "class")?;
                let pw = pooling_weights(batch, pooling);
                let (loss, logits) = self.pooled_head(
                    be.upload(&pw, MemKind::Scratch)?,
                    d,
                    classes,
                    grad,
                    |be, logits, dlogits, count| {
                        let mut losses = be.zeros(b, MemKind::Scratch)?;
                        let scale = grad.unwrap_or(0.0) / count.max(1) as f32;
                        be.cross_entropy(logits, &targets, dlogits, &mut losses, b, classes, scale);
                        Ok(be.download(&losses)?.iter().map(|&v| v as f64).sum::<f64>())
                    },
                    y.iter().filter(|&&v| v != Ids::<B>::IGNORE).count(),
                )?;
                out.count = y.iter().filter(|&&v| v != Ids::<B>::IGNORE).count();
                out.loss_sum = loss;
                if eval {
                    let l = be.download(&logits)?;
                    for (s, row) in l.chunks(classes).enumerate() {
                        let p = argmax(row);
                        out.preds.push(p);
                        out.correct += (p == y[s]) as usize;
                    }
                    out.logits = l;
                }
            }
            (Head::Regress, Target::Values(y)) if y.len() == b && y.len() != n * c => {
                let pw = pooling_weights(batch, Pooling::Mean);
                let yt = be.upload(y, MemKind::Scratch)?;
                let (loss, outv) = self.pooled_head(
                    be.upload(&pw, MemKind::Scratch)?,
                    d,
                    1,
                    grad,
                    |be, o, dout, _| {
                        // dout = o − y, then scaled to the MSE gradient
                        be.copy(o, dout);
                        be.axpy(-1.0, &yt, dout);
                        let diff = be.download(dout)?;
                        be.scale(dout, 2.0 * grad.unwrap_or(0.0) / b as f32);
                        Ok(diff.iter().map(|&v| (v as f64) * (v as f64)).sum::<f64>())
                    },
                    b,
                )?;
                out.count = b;
                out.loss_sum = loss;
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
                let mut slot = be.zeros(1, MemKind::Scratch)?;
                be.sumsq(&diff, &mut slot, 0);
                out.loss_sum = be.download(&slot)?[0] as f64;
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
                let v = self.cfg.vocab;
                let targets = target_ids(be, y, v, "token")?;
                let count = y.iter().filter(|&&v| v != Ids::<B>::IGNORE).count();
                let (hidden, dres) = split(self.acts.as_mut().unwrap());
                let word = &mut self.emb.word;
                // logits: [N, V] = hidden · word_embeddingsᵀ (tied)
                let mut logits = be.zeros(n * v, MemKind::Activation)?;
                be.matmul(hidden, &word.w, &mut logits, &Gemm::nt(n, v, c));
                let mut dlogits = be.zeros(n * v, MemKind::Activation)?;
                let mut losses = be.zeros(n, MemKind::Scratch)?;
                let scale = grad.unwrap_or(0.0) / count.max(1) as f32;
                be.cross_entropy(&logits, &targets, &mut dlogits, &mut losses, n, v, scale);
                out.loss_sum = be.download(&losses)?.iter().map(|&v| v as f64).sum();
                out.count = count;
                if eval {
                    let l = be.download(&logits)?;
                    for (i, row) in l.chunks(v).enumerate() {
                        if y[i] != Ids::<B>::IGNORE {
                            out.correct += (argmax(row) == y[i]) as usize;
                        }
                    }
                }
                if grad.is_some() {
                    be.matmul(&dlogits, &word.w, dres, &Gemm::nn(n, c, v));
                    if let Some(g) = word.grad() {
                        be.matmul(&dlogits, hidden, g, &Gemm::tn(v, c, n).accumulate());
                    }
                }
            }
            (Head::Span, Target::Spans { start, end }) => {
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
                out.loss_sum = be.download(&losses)?.iter().map(|&v| v as f64).sum::<f64>() / 2.0;
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
            }
            (Head::Classify { .. }, _) => return Err(mismatch("Classes")),
            (Head::Regress, _) => return Err(mismatch("Values")),
            (Head::LanguageModel, _) => return Err(mismatch("Tokens")),
            (Head::Span, _) => return Err(mismatch("Spans")),
        }
        let loss = (out.loss_sum / out.count.max(1) as f64) as f32;
        Ok((loss, out))
    }

    /// Pooled linear head: pooled [B, C] = Σ_t pw[b, t]·hidden[b, t, :]; logits [B, K] =
    /// pooled·Wᵀ + b. `loss_fn(logits, dlogits, count)` returns the loss sum and writes
    /// dlogits (scaled); with `grad` the head's gradients and dL/dhidden follow.
    #[allow(clippy::type_complexity)]
    fn pooled_head(
        &mut self,
        pw: Tensor<B>,
        d: super::block::Dims,
        k: usize,
        grad: Option<f32>,
        loss_fn: impl FnOnce(&B, &Tensor<B>, &mut Tensor<B>, usize) -> Result<f64>,
        count: usize,
    ) -> Result<(f64, Tensor<B>)> {
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
        let loss = loss_fn(be, &logits, &mut dlogits, count)?;
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
        Ok((loss, logits))
    }
}
