//! Fused multi-head (and grouped-query) attention for the CPU backend.
//!
//! The projections stay in the layout the linear layers write, [B, T, H·D]: head h of sequence
//! b is the strided matrix that starts at column h·D with row stride H·D, which the `gemm`
//! crate reads and writes directly. So there are no permuted copies, and each (b, h) runs as
//! one rayon task whose scores, softmax and products stay in cache. With grouped-query
//! attention k and v are [B, T, KVH·D] and query head h reads kv head h / group; the backward
//! runs one task per (b, kv head), its query heads in turn, so that the kv head's dk and dv
//! (sums over those query heads) have a single writer. The unfused composition
//! (`backend::attention_forward_unfused` and its backward) is the oracle these are tested
//! against.

use super::simd::{self, vectorized};
use super::{sgemm, Mat, SendPtr};
use crate::backend::Attn;
use rayon::prelude::*;

/// Row-major strided view of head `h` of sequence `b` in a [B, T, H·D] buffer.
fn head(base: *const f32, b: usize, h: usize, t: usize, heads: usize, d: usize) -> Mat {
    let row = heads * d;
    // SAFETY (of later use): callers bound b < B, h < H on buffers of B·T·H·D values.
    Mat {
        ptr: base.wrapping_add(b * t * row + h * d),
        rs: row as isize,
        cs: 1,
    }
}

fn dense(ptr: *const f32, cols: usize) -> Mat {
    Mat {
        ptr,
        rs: cols as isize,
        cs: 1,
    }
}

/// Transposed view of a row-major matrix.
fn tr(m: Mat) -> Mat {
    Mat {
        ptr: m.ptr,
        rs: m.cs,
        cs: m.rs,
    }
}

vectorized! {
    /// probs row ← softmax over the visible keys `j < limit` with `mask[j] != 0` (all keys
    /// without a mask); other entries 0, an all-invisible row all 0. The row holds the scaled
    /// scores on entry.
    fn softmax_row(p: &mut [f32], mask: Option<&[f32]>, limit: usize) {
        let tk = p.len();
        let limit = limit.min(tk);
        if let Some(m) = mask {
            for (v, &m) in p[..limit].iter_mut().zip(m) {
                if m == 0.0 {
                    *v = f32::NEG_INFINITY;
                }
            }
        }
        p[limit..].fill(0.0);
        let live = &mut p[..limit];
        let mx = simd::max(live);
        if mx == f32::NEG_INFINITY {
            live.fill(0.0);
            return;
        }
        // exp(−∞) = 0 for the masked keys.
        live.iter_mut().for_each(|v| *v = simd::exp(*v - mx));
        let inv = 1.0 / simd::sum(live);
        live.iter_mut().for_each(|v| *v *= inv);
    }
}

vectorized! {
    /// ds ← scale · p ⊙ (dp − Σ p·dp), in place over dp.
    fn softmax_grad_row(p: &[f32], dp: &mut [f32], scale: f32) {
        let dot = simd::dot(p, dp);
        for (d, &p) in dp.iter_mut().zip(p) {
            *d = scale * p * (*d - dot);
        }
    }
}

/// Forward. q: [B, tq, H·D]; k, v: [B, tk, KVH·D]; key_mask: [B, tk] or none;
/// probs: [B, H, tq, tk] (written, saved for the backward); ctx: [B, tq, H·D] (written).
#[allow(clippy::too_many_arguments)]
pub fn forward(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    key_mask: Option<&[f32]>,
    probs: &mut [f32],
    ctx: &mut [f32],
    spec: &Attn,
    d: usize,
) {
    let Attn {
        batch,
        heads,
        kv_heads,
        tq,
        tk,
        scale,
        causal,
    } = *spec;
    let group = spec.group();
    let ctx_ptr = SendPtr(ctx.as_mut_ptr());
    probs[..batch * heads * tq * tk]
        .par_chunks_mut(tq * tk)
        .enumerate()
        .for_each(|(bh, p)| {
            let (b, h) = (bh / heads, bh % heads);
            let g = h / group;
            let cp = ctx_ptr;
            let (qp, kp, vp) = (q.as_ptr(), k.as_ptr(), v.as_ptr());
            // SAFETY: q, k, v, ctx hold B·T·H·D values (checked by the caller); head (b, h)
            // of ctx is written by this task alone.
            unsafe {
                // p = scale · q_bh · k_bhᵀ
                sgemm(
                    tq,
                    tk,
                    d,
                    dense(p.as_mut_ptr() as *const f32, tk),
                    head(qp, b, h, tq, heads, d),
                    tr(head(kp, b, g, tk, kv_heads, d)),
                    scale,
                    0.0,
                );
                let mask = key_mask.map(|m| &m[b * tk..(b + 1) * tk]);
                for (i, row) in p.chunks_exact_mut(tk).enumerate() {
                    // Causal: query i sees keys j ≤ i + (tk − tq).
                    let limit = if causal {
                        (i + 1 + tk).saturating_sub(tq)
                    } else {
                        tk
                    };
                    softmax_row(row, mask, limit);
                }
                // ctx_bh = p · v_bh
                sgemm(
                    tq,
                    d,
                    tk,
                    head(cp.0 as *const f32, b, h, tq, heads, d),
                    dense(p.as_ptr(), tk),
                    head(vp, b, g, tk, kv_heads, d),
                    1.0,
                    0.0,
                );
            }
        });
}

/// Backward. dctx: [B, tq, H·D]; writes dq: [B, tq, H·D], dk, dv: [B, tk, KVH·D]; `scratch`:
/// [B, H, tq, tk] (dprobs, then dscores in place).
#[allow(clippy::too_many_arguments)]
pub fn backward(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    probs: &[f32],
    dctx: &[f32],
    dq: &mut [f32],
    dk: &mut [f32],
    dv: &mut [f32],
    scratch: &mut [f32],
    spec: &Attn,
    d: usize,
) {
    let Attn {
        batch,
        heads,
        kv_heads,
        tq,
        tk,
        scale,
        ..
    } = *spec;
    let group = spec.group();
    let (dqp, dkp, dvp) = (
        SendPtr(dq.as_mut_ptr()),
        SendPtr(dk.as_mut_ptr()),
        SendPtr(dv.as_mut_ptr()),
    );
    // One task per (b, kv head): its query heads' probs and scratch rows are contiguous.
    let per_task = group * tq * tk;
    scratch[..batch * heads * tq * tk]
        .par_chunks_mut(per_task)
        .enumerate()
        .for_each(|(bg, ds_group)| {
            let (b, g) = (bg / kv_heads, bg % kv_heads);
            let (dqp, dkp, dvp) = (dqp, dkp, dvp);
            let (qp, kp, vp, dcp) = (q.as_ptr(), k.as_ptr(), v.as_ptr(), dctx.as_ptr());
            let p_group = &probs[bg * per_task..(bg + 1) * per_task];
            let dk_g = head(dkp.0 as *const f32, b, g, tk, kv_heads, d);
            let dv_g = head(dvp.0 as *const f32, b, g, tk, kv_heads, d);
            let (k_g, v_g) = (
                head(kp, b, g, tk, kv_heads, d),
                head(vp, b, g, tk, kv_heads, d),
            );
            for (j, (p, ds)) in p_group
                .chunks_exact(tq * tk)
                .zip(ds_group.chunks_exact_mut(tq * tk))
                .enumerate()
            {
                let h = g * group + j;
                // The group's first head writes dk, dv; the others add to them.
                let beta = if j == 0 { 0.0 } else { 1.0 };
                // SAFETY: q, k, v, dctx, dq, dk, dv hold their B·T·(K)H·D values (checked by
                // the caller); head (b, h) of dq and kv head (b, g) of dk, dv are written by
                // this task alone.
                unsafe {
                    head_backward(
                        p,
                        ds,
                        head(dcp, b, h, tq, heads, d),
                        head(qp, b, h, tq, heads, d),
                        (k_g, v_g),
                        head(dqp.0 as *const f32, b, h, tq, heads, d),
                        (dk_g, dv_g),
                        beta,
                        (tq, tk, d, scale),
                    );
                }
            }
        });
}

/// One query head's share of the backward: dp = dctx·vᵀ into `ds`, dv (β)+= pᵀ·dctx, ds =
/// softmax backward in place, dq = ds·k, dk (β)+= dsᵀ·q.
///
/// # Safety
/// Every strided operand must be valid for [tq or tk, d] and the outputs writable by this
/// caller alone.
#[allow(clippy::too_many_arguments)]
unsafe fn head_backward(
    p: &[f32],
    ds: &mut [f32],
    dctx_h: Mat,
    q_h: Mat,
    (k_g, v_g): (Mat, Mat),
    dq_h: Mat,
    (dk_g, dv_g): (Mat, Mat),
    beta: f32,
    (tq, tk, d, scale): (usize, usize, usize, f32),
) {
    let pm = dense(p.as_ptr(), tk);
    // dp = dctx_h · v_gᵀ
    sgemm(
        tq,
        tk,
        d,
        dense(ds.as_mut_ptr() as *const f32, tk),
        dctx_h,
        tr(v_g),
        1.0,
        0.0,
    );
    // dv_g (+)= pᵀ · dctx_h
    sgemm(tk, d, tq, dv_g, tr(pm), dctx_h, 1.0, beta);
    for (pr, dr) in p.chunks_exact(tk).zip(ds.chunks_exact_mut(tk)) {
        softmax_grad_row(pr, dr, scale);
    }
    let dsm = dense(ds.as_ptr(), tk);
    // dq_h = ds · k_g
    sgemm(tq, d, tk, dq_h, dsm, k_g, 1.0, 0.0);
    // dk_g (+)= dsᵀ · q_h
    sgemm(tk, d, tq, dk_g, tr(dsm), q_h, 1.0, beta);
}
