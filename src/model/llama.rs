//! One Llama-family block, forward and backward (Llama, Mistral, Qwen2, SmolLM), on the same
//! parameter and activation structs as the encoder's block (`block.rs`):
//!
//!   a = RMSNorm_a(x);  q = rope(Q(a));  k = rope(K(a));  v = V(a)
//!   r1 = x + O(attn(q, k, v))          (causal; kv_heads key/value heads shared by the queries)
//!   f = RMSNorm_f(r1);  out = r1 + Down(silu(Gate(f)) ⊙ Up(f))
//!
//! `Up` is the block's `ffn_in`, `Down` its `ffn_out`, `Gate` its `gate`. RoPE is a rotation
//! per position, so its backward is the inverse rotation of the incoming gradient; the rotated
//! q and k are what attention saves. No dropout, as elsewhere.
//!
//! Memory: a layer keeps q, k, v, ctx, r1, Gate(f), Up(f), its output and the two rstd. The
//! normed inputs a and f and the attention probabilities are recomputed in the backward by the
//! same kernels from what is kept (so to the same values): at SmolLM2's shape and 8 × 128
//! tokens that is 9.4 of 33.0 MB a layer not held, for two norms and one attention forward
//! more per layer (about 1% of a step's FLOPs).

use super::block::{Block, Dims, Flow, LayerActs, Norm, Work};
use crate::backend::{Backend, Ids, Tensor};
use anyhow::Result;

/// What the rotary embedding needs: the cos/sin table [P, D/2, 2] and every row's position [N].
pub struct RopeInput<'a, B: Backend> {
    pub table: &'a Tensor<B>,
    pub positions: &'a Ids<B>,
}

fn rms_forward<B: Backend>(
    be: &B,
    norm: &Norm<B>,
    x: &Tensor<B>,
    y: &mut Tensor<B>,
    rstd: &mut Tensor<B>,
    d: Dims,
    eps: f32,
) {
    be.rmsnorm_forward(x, &norm.gamma.w, y, rstd, d.n(), d.c, eps);
}

/// dx = RMSNorm backward (written); γ's gradient accumulates when it trains.
fn rms_backward<B: Backend>(
    be: &B,
    norm: &mut Norm<B>,
    dy: &Tensor<B>,
    x: &Tensor<B>,
    rstd: &Tensor<B>,
    dx: &mut Tensor<B>,
    d: Dims,
) {
    let Norm { gamma, .. } = norm;
    let dg = gamma.opt.as_mut().map(|o| &mut o.g);
    be.rmsnorm_backward(dy, x, &gamma.w, rstd, dx, dg, d.n(), d.c);
}

/// Forward of one block: `x` [N, C] → `acts.out` [N, C].
#[allow(clippy::too_many_arguments)]
pub fn llama_block_forward<B: Backend>(
    be: &B,
    blk: &mut Block<B>,
    acts: &mut LayerActs<B>,
    x: &Tensor<B>,
    key_mask: &Tensor<B>,
    rope: &RopeInput<'_, B>,
    work: &mut Work<B>,
    d: Dims,
    eps: f32,
) -> Result<()> {
    let n = d.n();
    // a: [N, C] = RMSNorm_a(x), in scratch (recomputed by the backward from the saved rstd)
    rms_forward(be, &blk.ln_a, x, &mut work.nc2, &mut acts.ln_a_rstd, d, eps);
    let a_in = &work.nc2;
    // q: [N, C] = rope(Q(a)), via the scratch nc
    blk.q.forward(be, a_in, &mut work.nc, n)?;
    be.rope(
        &work.nc,
        &mut acts.q,
        rope.table,
        rope.positions,
        d.h,
        d.d,
        false,
    );
    // k: [N, KV] = rope(K(a)), via the scratch nkv
    let nkv = work.nkv.as_mut().expect("Llama scratch");
    blk.k.forward(be, a_in, nkv, n)?;
    be.rope(
        nkv,
        &mut acts.k,
        rope.table,
        rope.positions,
        d.kvh,
        d.d,
        false,
    );
    // v: [N, KV] = V(a)
    blk.v.forward(be, a_in, &mut acts.v, n)?;
    // ctx: [N, C] = softmax(q·kᵀ/√D, causal)·v, kv head h/(H/KVH) for query head h
    be.attention_forward(
        &acts.q,
        &acts.k,
        &acts.v,
        Some(key_mask),
        work.probs.as_mut().expect("Llama scratch"),
        &mut acts.ctx,
        &mut work.bhtt,
        &d.attn(true),
        d.d,
    )?;
    // r1: [N, C] = x + O(ctx)
    blk.o
        .forward_residual(be, &acts.ctx, Some(x), &mut acts.r1, n)?;
    // f: [N, C] = RMSNorm_f(r1), in scratch (a is no longer needed; recomputed by the backward)
    rms_forward(
        be,
        &blk.ln_f,
        &acts.r1,
        &mut work.nc2,
        &mut acts.ln_f_rstd,
        d,
        eps,
    );
    // g: [N, F] = Gate(f); u: [N, F] = Up(f)
    let gate = acts.gate.as_mut().expect("Llama activations");
    blk.gate
        .as_mut()
        .expect("Llama block")
        .forward(be, &work.nc2, gate, n)?;
    blk.ffn_in.forward(be, &work.nc2, &mut acts.f1, n)?;
    // h: [N, F] = silu(g) ⊙ u, in scratch (recomputed by the backward)
    be.swiglu_forward(acts.gate.as_ref().unwrap(), &acts.f1, &mut work.nf);
    // out: [N, C] = r1 + Down(h)
    blk.ffn_out
        .forward_residual(be, &work.nf, Some(&acts.r1), &mut acts.out, n)?;
    Ok(())
}

/// Backward of one block. `flow.dres` holds dout [N, C] on entry; on return it holds dx [N, C]
/// when `need_dx` (otherwise its content is unspecified). `x`, `key_mask` and `eps` are the
/// forward's: what the backward recomputes (the norms, the attention probabilities) needs them.
#[allow(clippy::too_many_arguments)]
pub fn llama_block_backward<B: Backend>(
    be: &B,
    blk: &mut Block<B>,
    acts: &LayerActs<B>,
    x: &Tensor<B>,
    key_mask: &Tensor<B>,
    rope: &RopeInput<'_, B>,
    work: &mut Work<B>,
    flow: &mut Flow<B>,
    d: Dims,
    need_dx: bool,
    eps: f32,
) -> Result<()> {
    let n = d.n();
    let Flow { dres, dres2, dattn } = flow;
    let gate_act = acts.gate.as_ref().expect("Llama activations");
    let rstd = work.rstd.as_mut().expect("Llama scratch");
    // f: [N, C] = RMSNorm_f(r1) again (not saved), into nc until dctx overwrites it; the
    // same kernel on the same input, so the same values the forward used
    rms_forward(be, &blk.ln_f, &acts.r1, &mut work.nc, rstd, d, eps);
    let sc = &mut work.adapter;
    // h = silu(g) ⊙ u again (not saved), into nf2
    be.swiglu_forward(gate_act, &acts.f1, &mut work.nf2);
    // dh: [N, F] = dout · Down (into nf); Down's own gradients
    blk.ffn_out
        .backward(be, &work.nf2, &*dres, Some(&mut work.nf), false, n, sc)?;
    // dg: [N, F] (into nf2), du: [N, F] (into nf3)
    let nf3 = work.nf3.as_mut().expect("Llama scratch");
    be.swiglu_backward(gate_act, &acts.f1, &work.nf, &mut work.nf2, nf3);
    // df: [N, C] = du · Up + dg · Gate (into nc2)
    blk.ffn_in.backward(
        be,
        &work.nc,
        work.nf3.as_ref().unwrap(),
        Some(&mut work.nc2),
        false,
        n,
        sc,
    )?;
    blk.gate.as_mut().expect("Llama block").backward(
        be,
        &work.nc,
        &work.nf2,
        Some(&mut work.nc2),
        true,
        n,
        sc,
    )?;
    // dr1: [N, C] = dout + RMSNorm_f backward (into dres2)
    rms_backward(
        be,
        &mut blk.ln_f,
        &work.nc2,
        &acts.r1,
        &acts.ln_f_rstd,
        dres2,
        d,
    );
    be.axpy(1.0, &*dres, dres2);
    // dctx: [N, C] = dr1 · O (into nc); O's own gradients
    blk.o
        .backward(be, &acts.ctx, &*dres2, Some(&mut work.nc), false, n, sc)?;
    attention_grads(be, acts, key_mask, work, d)?;
    // Undo the rotations: dq into nc (dctx is consumed), dk into nkv.
    be.rope(
        &work.dq,
        &mut work.nc,
        rope.table,
        rope.positions,
        d.h,
        d.d,
        true,
    );
    let nkv = work.nkv.as_mut().expect("Llama scratch");
    be.rope(&work.dk, nkv, rope.table, rope.positions, d.kvh, d.d, true);
    // a: [N, C] = RMSNorm_a(x) again (not saved), into nc2 (df is consumed)
    let rstd = work.rstd.as_mut().expect("Llama scratch");
    rms_forward(be, &blk.ln_a, x, &mut work.nc2, rstd, d, eps);
    let a_in = &work.nc2;
    // da: [N, C] = dv · V + dq · Q + dk · K (into dattn, when anything below needs it)
    let sc = &mut work.adapter;
    let mut da = need_dx.then_some(&mut *dattn);
    blk.v
        .backward(be, a_in, &work.dv, da.as_deref_mut(), false, n, sc)?;
    blk.q
        .backward(be, a_in, &work.nc, da.as_deref_mut(), true, n, sc)?;
    blk.k
        .backward(be, a_in, work.nkv.as_ref().unwrap(), da, true, n, sc)?;
    if need_dx {
        // dx: [N, C] = dr1 + RMSNorm_a backward (into dres)
        rms_backward(be, &mut blk.ln_a, &*dattn, x, &acts.ln_a_rstd, dres, d);
        be.axpy(1.0, &*dres2, dres);
    }
    Ok(())
}

/// With dctx in `work.nc`: the attention probabilities again (not saved; ctx again into dq,
/// overwritten), then dq, dk (both rotated) and dv into `work`.
fn attention_grads<B: Backend>(
    be: &B,
    acts: &LayerActs<B>,
    key_mask: &Tensor<B>,
    work: &mut Work<B>,
    d: Dims,
) -> Result<()> {
    // probs: [B, H, T, T] again (not saved), with ctx again into dq (overwritten below)
    let probs = work.probs.as_mut().expect("Llama scratch");
    be.attention_forward(
        &acts.q,
        &acts.k,
        &acts.v,
        Some(key_mask),
        probs,
        &mut work.dq,
        &mut work.bhtt,
        &d.attn(true),
        d.d,
    )?;
    // dq (rotated): [N, C], dk (rotated): [N, KV], dv: [N, KV]
    be.attention_backward(
        &acts.q,
        &acts.k,
        &acts.v,
        work.probs.as_ref().unwrap(),
        &work.nc,
        &mut work.dq,
        &mut work.dk,
        &mut work.dv,
        &mut work.bhtt,
        &mut work.bhtt2,
        &d.attn(true),
        d.d,
    )?;
    Ok(())
}
