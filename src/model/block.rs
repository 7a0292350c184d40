//! One transformer block, forward and backward, llm.c style: parameters and saved activations
//! are named, shape-commented structs; every op goes through the backend.
//!
//! Encoder (BERT, post-norm):  r1 = x + O(attn(x));  h = LN_a(r1);
//!                             r2 = h + FfnOut(gelu(FfnIn(h)));  out = LN_f(r2)
//! Decoder (GPT, pre-norm):    a = LN_a(x);  r1 = x + O(attn(a));  f = LN_f(r1);
//!                             out = r1 + FfnOut(gelu(FfnIn(f)))
//! No dropout: training is deterministic, and the planted-rank task wants exact targets.

use super::config::Flavour;
use super::linear::{AdapterScratch, Linear};
use super::param::Param;
use crate::adapter::ModuleKind;
use crate::backend::{Attn, Backend, MemKind, Tensor};
use anyhow::Result;

/// Sizes of one forward pass.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Dims {
    /// batch (sequences)
    pub b: usize,
    /// tokens per sequence
    pub t: usize,
    /// hidden
    pub c: usize,
    /// heads (query heads)
    pub h: usize,
    /// key/value heads (grouped-query attention; `h` otherwise)
    pub kvh: usize,
    /// head dim
    pub d: usize,
    /// ffn width
    pub f: usize,
}

impl Dims {
    /// tokens in the batch (rows of every [N, ·] activation)
    pub fn n(&self) -> usize {
        self.b * self.t
    }
    pub fn attn(&self, causal: bool) -> Attn {
        Attn {
            batch: self.b,
            heads: self.h,
            kv_heads: self.kvh,
            tq: self.t,
            tk: self.t,
            scale: 1.0 / (self.d as f32).sqrt(),
            causal,
        }
    }
}

/// LayerNorm γ, β: [C] each; an RMSNorm (the Llama family) has γ only.
pub struct Norm<B: Backend> {
    pub gamma: Param<B>,
    pub beta: Option<Param<B>>,
}

impl<B: Backend> Norm<B> {
    /// LayerNorm's β (a LayerNorm always has one).
    pub fn beta(&self) -> &Param<B> {
        self.beta.as_ref().expect("a LayerNorm has β")
    }
}

/// Parameters of one block.
pub struct Block<B: Backend> {
    pub q: Linear<B>,       // [C, C]
    pub k: Linear<B>,       // [C, C]
    pub v: Linear<B>,       // [C, C]
    pub o: Linear<B>,       // [C, C]
    pub ffn_in: Linear<B>,  // [F, C]
    pub ffn_out: Linear<B>, // [C, F]
    /// SwiGLU's gate (Llama family only): [F, C].
    pub gate: Option<Linear<B>>,
    /// Encoder: after attention (`attention.output.LayerNorm`); decoder: before attention.
    pub ln_a: Norm<B>,
    /// Encoder: after the FFN (`output.LayerNorm`); decoder: before the FFN.
    pub ln_f: Norm<B>,
}

impl<B: Backend> Block<B> {
    pub fn linear(&self, kind: ModuleKind) -> &Linear<B> {
        match kind {
            ModuleKind::Q => &self.q,
            ModuleKind::K => &self.k,
            ModuleKind::V => &self.v,
            ModuleKind::O => &self.o,
            ModuleKind::FfnIn => &self.ffn_in,
            ModuleKind::FfnOut => &self.ffn_out,
            ModuleKind::Gate => self.gate.as_ref().expect("a Llama-family block"),
        }
    }
    pub fn linear_mut(&mut self, kind: ModuleKind) -> &mut Linear<B> {
        match kind {
            ModuleKind::Q => &mut self.q,
            ModuleKind::K => &mut self.k,
            ModuleKind::V => &mut self.v,
            ModuleKind::O => &mut self.o,
            ModuleKind::FfnIn => &mut self.ffn_in,
            ModuleKind::FfnOut => &mut self.ffn_out,
            ModuleKind::Gate => self.gate.as_mut().expect("a Llama-family block"),
        }
    }
    /// The adapter on `kind`, `None` where it has none or the block has no such module (an
    /// encoder or GPT-2 block has no `Gate`; slots are numbered over every kind).
    pub fn lora(&self, kind: ModuleKind) -> Option<&super::linear::Lora<B>> {
        if kind == ModuleKind::Gate && self.gate.is_none() {
            return None;
        }
        self.linear(kind).lora.as_ref()
    }
    pub fn lora_mut(&mut self, kind: ModuleKind) -> Option<&mut super::linear::Lora<B>> {
        if kind == ModuleKind::Gate && self.gate.is_none() {
            return None;
        }
        self.linear_mut(kind).lora.as_mut()
    }
    /// Every parameter of the block (frozen or not), in a fixed order.
    pub fn params_mut(&mut self) -> Vec<&mut Param<B>> {
        let mut out = Vec::new();
        let Block {
            q,
            k,
            v,
            o,
            ffn_in,
            ffn_out,
            gate,
            ln_a,
            ln_f,
        } = self;
        for lin in [q, k, v, o, ffn_in, ffn_out]
            .into_iter()
            .chain(gate.as_mut())
        {
            out.push(&mut lin.w);
            out.extend(lin.bias.as_mut());
            if let Some(l) = lin.lora.as_mut() {
                out.extend(l.params_mut());
            }
        }
        for n in [ln_a, ln_f] {
            out.push(&mut n.gamma);
            out.extend(n.beta.as_mut());
        }
        out
    }
}

/// Activations one block saves for its backward pass.
pub struct LayerActs<B: Backend> {
    /// Decoder: LN_a(x), the attention input: [N, C] (encoder: the block input itself; the
    /// Llama family recomputes RMSNorm_a(x) from the saved rstd in its backward instead of
    /// keeping N×C values per layer: `None`).
    pub a_in: Option<Tensor<B>>,
    pub ln_a_mean: Tensor<B>, // [N]
    pub ln_a_rstd: Tensor<B>, // [N]
    /// Projections, head h in columns h·D..(h+1)·D (no permuted copies); in the Llama family
    /// q and k after the rotary embedding.
    pub q: Tensor<B>, // [N, C] = [B, T, H·D]
    pub k: Tensor<B>,         // [N, KV] = [B, T, KVH·D]
    pub v: Tensor<B>,         // [N, KV]
    /// [B, H, T, T]; `None` in the Llama family, whose backward recomputes the softmax from
    /// the saved q and k (one more q·kᵀ and P·v per layer, 1% of a step) rather than keep
    /// B·H·T² values per layer.
    pub probs: Option<Tensor<B>>,
    pub ctx: Tensor<B>, // [N, C] attention output before O
    pub r1: Tensor<B>,  // [N, C] x + O(ctx)
    /// [N, C] FFN input (encoder h = LN_a(r1); decoder LN_f(r1)); `None` in the Llama family,
    /// whose backward recomputes RMSNorm_f(r1) as it does the attention input.
    pub f_in: Option<Tensor<B>>,
    pub ln_f_mean: Tensor<B>, // [N]
    pub ln_f_rstd: Tensor<B>, // [N]
    /// FfnIn(f_in): [N, F]. gelu(f1) (or the Llama family's silu(gate) ⊙ f1), the FfnOut input,
    /// is not saved: the backward recomputes it (one vectorized pass) rather than keep N×F
    /// values per layer alive.
    pub f1: Tensor<B>,
    /// The Llama family's Gate(f_in): [N, F].
    pub gate: Option<Tensor<B>>,
    /// Encoder: h + FfnOut(g) before LN_f: [N, C].
    pub r2: Option<Tensor<B>>,
    pub out: Tensor<B>, // [N, C]
}

impl<B: Backend> LayerActs<B> {
    pub fn new(be: &B, d: Dims, flavour: Flavour) -> Result<Self> {
        let (n, c, f, kv) = (d.n(), d.c, d.f, d.kvh * d.d);
        let pre_norm = flavour != Flavour::Encoder;
        let llama = flavour == Flavour::Llama;
        let z = |len| be.zeros(len, MemKind::Activation);
        Ok(Self {
            a_in: if pre_norm && !llama {
                Some(z(n * c)?)
            } else {
                None
            },
            ln_a_mean: z(n)?,
            ln_a_rstd: z(n)?,
            q: z(n * c)?,
            k: z(n * kv)?,
            v: z(n * kv)?,
            probs: if llama {
                None
            } else {
                Some(z(d.b * d.h * d.t * d.t)?)
            },
            ctx: z(n * c)?,
            r1: z(n * c)?,
            f_in: if llama { None } else { Some(z(n * c)?) },
            ln_f_mean: z(n)?,
            ln_f_rstd: z(n)?,
            f1: z(n * f)?,
            gate: if flavour == Flavour::Llama {
                Some(z(n * f)?)
            } else {
                None
            },
            r2: if pre_norm { None } else { Some(z(n * c)?) },
            out: z(n * c)?,
        })
    }
}

/// Scratch shared by all blocks of one pass (forward and backward).
pub struct Work<B: Backend> {
    pub nc: Tensor<B>,  // [N, C]
    pub nc2: Tensor<B>, // [N, C]
    pub nf: Tensor<B>,  // [N, F]
    pub nf2: Tensor<B>, // [N, F]
    pub dq: Tensor<B>,  // [N, C]
    pub dk: Tensor<B>,  // [N, KV]
    pub dv: Tensor<B>,  // [N, KV]
    /// The Llama family's third [N, F] (SwiGLU's backward has two outputs beside its input)
    /// and an [N, KV] for k before and after its rotation.
    pub nf3: Option<Tensor<B>>,
    pub nkv: Option<Tensor<B>>,
    /// The Llama family's [N]: the rstd a recomputed RMSNorm writes (equal to the saved one),
    /// and its [B, H, T, T]: the attention probabilities of the block at hand.
    pub rstd: Option<Tensor<B>>,
    pub probs: Option<Tensor<B>>,
    pub bhtt: Tensor<B>,  // [B, H, T, T]
    pub bhtt2: Tensor<B>, // [B, H, T, T]
    /// The adapters' backward scratch, kept across steps.
    pub adapter: AdapterScratch<B>,
}

/// Gradients flowing between blocks in the backward pass.
pub struct Flow<B: Backend> {
    /// [N, C] dout on entry to a block, dx on exit
    pub dres: Tensor<B>,
    pub dres2: Tensor<B>, // [N, C]
    pub dattn: Tensor<B>, // [N, C] gradient at the decoder's attention input
}

impl<B: Backend> Flow<B> {
    pub fn new(be: &B, d: Dims) -> Result<Self> {
        let z = || be.zeros(d.n() * d.c, MemKind::Scratch);
        Ok(Self {
            dres: z()?,
            dres2: z()?,
            dattn: z()?,
        })
    }
}

impl<B: Backend> Work<B> {
    pub fn new(be: &B, d: Dims, flavour: Flavour) -> Result<Self> {
        let (n, c, f, kv) = (d.n(), d.c, d.f, d.kvh * d.d);
        let z = |len| be.zeros(len, MemKind::Scratch);
        let bhtt = d.b * d.h * d.t * d.t;
        let llama = flavour == Flavour::Llama;
        Ok(Self {
            nc: z(n * c)?,
            nc2: z(n * c)?,
            nf: z(n * f)?,
            nf2: z(n * f)?,
            dq: z(n * c)?,
            dk: z(n * kv)?,
            dv: z(n * kv)?,
            nf3: if llama { Some(z(n * f)?) } else { None },
            nkv: if llama { Some(z(n * kv)?) } else { None },
            rstd: if llama { Some(z(n)?) } else { None },
            probs: if llama { Some(z(bhtt)?) } else { None },
            bhtt: z(bhtt)?,
            bhtt2: z(bhtt)?,
            adapter: AdapterScratch::default(),
        })
    }
}

#[allow(clippy::too_many_arguments)]
fn ln_forward<B: Backend>(
    be: &B,
    norm: &Norm<B>,
    x: &Tensor<B>,
    y: &mut Tensor<B>,
    mean: &mut Tensor<B>,
    rstd: &mut Tensor<B>,
    d: Dims,
    eps: f32,
) {
    be.layernorm_forward(
        x,
        &norm.gamma.w,
        &norm.beta().w,
        y,
        mean,
        rstd,
        d.n(),
        d.c,
        eps,
    );
}

/// dx = LN backward (written); γ, β gradients accumulate when they train.
#[allow(clippy::too_many_arguments)]
fn ln_backward<B: Backend>(
    be: &B,
    norm: &mut Norm<B>,
    dy: &Tensor<B>,
    x: &Tensor<B>,
    mean: &Tensor<B>,
    rstd: &Tensor<B>,
    dx: &mut Tensor<B>,
    d: Dims,
) {
    let Norm { gamma, beta } = norm;
    let gw = &gamma.w;
    let dg = gamma.opt.as_mut().map(|o| &mut o.g);
    let db = beta.as_mut().and_then(|b| b.opt.as_mut()).map(|o| &mut o.g);
    be.layernorm_backward(dy, x, gw, mean, rstd, dx, dg, db, d.n(), d.c);
}

/// Multi-head attention core: ctx = softmax(q·kᵀ/√D, masks)·v, saving q, k, v, probs.
/// `x`: [N, C] attention input.
#[allow(clippy::too_many_arguments)]
fn attention_forward<B: Backend>(
    be: &B,
    blk: &mut Block<B>,
    acts: &mut LayerActs<B>,
    x: &Tensor<B>,
    key_mask: &Tensor<B>,
    work: &mut Work<B>,
    d: Dims,
    causal: bool,
) -> Result<()> {
    let n = d.n();
    blk.q.forward(be, x, &mut acts.q, n)?;
    blk.k.forward(be, x, &mut acts.k, n)?;
    blk.v.forward(be, x, &mut acts.v, n)?;
    be.attention_forward(
        &acts.q,
        &acts.k,
        &acts.v,
        Some(key_mask),
        acts.probs.as_mut().expect("encoder/decoder activations"),
        &mut acts.ctx,
        &mut work.bhtt,
        &d.attn(causal),
        d.d,
    )
}

/// Backward of attention from dctx-producing O: given dr1 (gradient at O's output), accumulates
/// adapter/weight gradients of O, Q, K, V and writes the gradient at the attention input into
/// `dx` when given.
#[allow(clippy::too_many_arguments)]
fn attention_backward<B: Backend>(
    be: &B,
    blk: &mut Block<B>,
    acts: &LayerActs<B>,
    x: &Tensor<B>,
    dr1: &Tensor<B>,
    mut dx: Option<&mut Tensor<B>>,
    work: &mut Work<B>,
    d: Dims,
    causal: bool,
) -> Result<()> {
    let n = d.n();
    // dctx: [N, C]
    blk.o.backward(
        be,
        &acts.ctx,
        dr1,
        Some(&mut work.nc),
        false,
        n,
        &mut work.adapter,
    )?;
    // dq, dk, dv: [N, C]
    be.attention_backward(
        &acts.q,
        &acts.k,
        &acts.v,
        acts.probs.as_ref().expect("encoder/decoder activations"),
        &work.nc,
        &mut work.dq,
        &mut work.dk,
        &mut work.dv,
        &mut work.bhtt,
        &mut work.bhtt2,
        &d.attn(causal),
        d.d,
    )?;
    let sc = &mut work.adapter;
    blk.v
        .backward(be, x, &work.dv, dx.as_deref_mut(), false, n, sc)?;
    blk.q
        .backward(be, x, &work.dq, dx.as_deref_mut(), true, n, sc)?;
    blk.k.backward(be, x, &work.dk, dx, true, n, sc)?;
    Ok(())
}

/// Forward of one block: `x` [N, C] → `acts.out` [N, C].
#[allow(clippy::too_many_arguments)]
pub fn block_forward<B: Backend>(
    be: &B,
    blk: &mut Block<B>,
    acts: &mut LayerActs<B>,
    x: &Tensor<B>,
    key_mask: &Tensor<B>,
    work: &mut Work<B>,
    d: Dims,
    decoder: bool,
    eps: f32,
) -> Result<()> {
    let n = d.n();
    if decoder {
        let mut a_in = acts.a_in.take().expect("decoder activations");
        ln_forward(
            be,
            &blk.ln_a,
            x,
            &mut a_in,
            &mut acts.ln_a_mean,
            &mut acts.ln_a_rstd,
            d,
            eps,
        );
        let r = attention_forward(be, blk, acts, &a_in, key_mask, work, d, true);
        acts.a_in = Some(a_in);
        r?;
    } else {
        attention_forward(be, blk, acts, x, key_mask, work, d, false)?;
    }
    // r1 = x + O(ctx)
    blk.o
        .forward_residual(be, &acts.ctx, Some(x), &mut acts.r1, n)?;
    let norm = if decoder { &blk.ln_f } else { &blk.ln_a };
    let (mean, rstd) = if decoder {
        (&mut acts.ln_f_mean, &mut acts.ln_f_rstd)
    } else {
        (&mut acts.ln_a_mean, &mut acts.ln_a_rstd)
    };
    let f_in = acts.f_in.as_mut().expect("encoder/decoder activations");
    ln_forward(be, norm, &acts.r1, f_in, mean, rstd, d, eps);
    let f_in = acts.f_in.as_ref().unwrap();
    blk.ffn_in.forward(be, f_in, &mut acts.f1, n)?;
    // g: [N, F] = gelu(f1), in scratch
    be.gelu_forward(&acts.f1, &mut work.nf);
    if decoder {
        // out = r1 + FfnOut(g)
        blk.ffn_out
            .forward_residual(be, &work.nf, Some(&acts.r1), &mut acts.out, n)?;
    } else {
        // r2 = h + FfnOut(g); out = LN_f(r2)
        let r2 = acts.r2.as_mut().expect("encoder activations");
        blk.ffn_out
            .forward_residual(be, &work.nf, Some(f_in), r2, n)?;
        ln_forward(
            be,
            &blk.ln_f,
            acts.r2.as_ref().unwrap(),
            &mut acts.out,
            &mut acts.ln_f_mean,
            &mut acts.ln_f_rstd,
            d,
            eps,
        );
    }
    Ok(())
}

/// Backward of one block. `flow.dres` holds dout [N, C] on entry; on return it holds dx [N, C]
/// (when `need_dx`; otherwise its content is unspecified). `x` is the block's forward input.
#[allow(clippy::too_many_arguments)]
pub fn block_backward<B: Backend>(
    be: &B,
    blk: &mut Block<B>,
    acts: &LayerActs<B>,
    x: &Tensor<B>,
    work: &mut Work<B>,
    flow: &mut Flow<B>,
    d: Dims,
    decoder: bool,
    need_dx: bool,
) -> Result<()> {
    // Masked keys have probs 0, so softmax_backward already gives them dscores 0: no mask here.
    let n = d.n();
    let Flow { dres, dres2, dattn } = flow;
    let f_in = acts.f_in.as_ref().expect("encoder/decoder activations");
    {
        if decoder {
            // out = r1 + FfnOut(gelu(FfnIn(LN_f(r1))))
            let sc = &mut work.adapter;
            // g = gelu(f1) again (not saved), into nf2 until gelu_backward overwrites it
            be.gelu_forward(&acts.f1, &mut work.nf2);
            blk.ffn_out
                .backward(be, &work.nf2, &*dres, Some(&mut work.nf), false, n, sc)?;
            be.gelu_backward(&acts.f1, &work.nf, &mut work.nf2);
            blk.ffn_in
                .backward(be, f_in, &work.nf2, Some(&mut work.nc2), false, n, sc)?;
            // dr1 = dout + LN_f backward
            ln_backward(
                be,
                &mut blk.ln_f,
                &work.nc2,
                &acts.r1,
                &acts.ln_f_mean,
                &acts.ln_f_rstd,
                dres2,
                d,
            );
            be.axpy(1.0, &*dres, dres2);
            // r1 = x + O(attn(LN_a(x)))
            let a_in = acts.a_in.as_ref().unwrap();
            attention_backward(
                be,
                blk,
                acts,
                a_in,
                &*dres2,
                need_dx.then_some(&mut *dattn),
                work,
                d,
                true,
            )?;
            if need_dx {
                ln_backward(
                    be,
                    &mut blk.ln_a,
                    &*dattn,
                    x,
                    &acts.ln_a_mean,
                    &acts.ln_a_rstd,
                    dres,
                    d,
                );
                be.axpy(1.0, &*dres2, dres);
            }
        } else {
            // out = LN_f(r2)
            ln_backward(
                be,
                &mut blk.ln_f,
                &*dres,
                acts.r2.as_ref().unwrap(),
                &acts.ln_f_mean,
                &acts.ln_f_rstd,
                dres2,
                d,
            );
            // r2 = h + FfnOut(gelu(FfnIn(h)))
            let sc = &mut work.adapter;
            // g = gelu(f1) again (not saved), into nf2 until gelu_backward overwrites it
            be.gelu_forward(&acts.f1, &mut work.nf2);
            blk.ffn_out
                .backward(be, &work.nf2, &*dres2, Some(&mut work.nf), false, n, sc)?;
            be.gelu_backward(&acts.f1, &work.nf, &mut work.nf2);
            blk.ffn_in
                .backward(be, f_in, &work.nf2, Some(&mut work.nc2), false, n, sc)?;
            be.axpy(1.0, &*dres2, &mut work.nc2);
            // h = LN_a(r1)
            ln_backward(
                be,
                &mut blk.ln_a,
                &work.nc2,
                &acts.r1,
                &acts.ln_a_mean,
                &acts.ln_a_rstd,
                dres2,
                d,
            );
            // r1 = x + O(attn(x))
            attention_backward(
                be,
                blk,
                acts,
                x,
                &*dres2,
                need_dx.then_some(&mut *dres),
                work,
                d,
                false,
            )?;
            if need_dx {
                be.axpy(1.0, &*dres2, dres);
            }
        }
    }
    Ok(())
}
