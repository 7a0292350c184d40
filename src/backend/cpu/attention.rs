//! Fused multi-head attention for the CPU backend.
//!
//! The projections stay in the layout the linear layers write, [B, T, H·D]: head h of sequence
//! b is the strided matrix that starts at column h·D with row stride H·D, which the `gemm`
//! crate reads and writes directly. So there are no permuted copies, and each (b, h) runs as
//! one rayon task whose scores, softmax and products stay in cache. The unfused composition
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

/// Forward. q: [B, tq, H·D]; k, v: [B, tk, H·D]; key_mask: [B, tk] or none;
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
        tq,
        tk,
        scale,
        causal,
        ..
    } = *spec;
    let ctx_ptr = SendPtr(ctx.as_mut_ptr());
    probs[..batch * heads * tq * tk]
        .par_chunks_mut(tq * tk)
        .enumerate()
        .for_each(|(bh, p)| {
            let (b, h) = (bh / heads, bh % heads);
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
                    tr(head(kp, b, h, tk, heads, d)),
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
                    head(vp, b, h, tk, heads, d),
                    1.0,
                    0.0,
                );
            }
        });
}

/// Backward. dctx: [B, tq, H·D]; writes dq: [B, tq, H·D], dk, dv: [B, tk, H·D]; `scratch`:
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
        tq,
        tk,
        scale,
        ..
    } = *spec;
    let (dqp, dkp, dvp) = (
        SendPtr(dq.as_mut_ptr()),
        SendPtr(dk.as_mut_ptr()),
        SendPtr(dv.as_mut_ptr()),
    );
    scratch[..batch * heads * tq * tk]
        .par_chunks_mut(tq * tk)
        .enumerate()
        .for_each(|(bh, ds)| {
            let (b, h) = (bh / heads, bh % heads);
            let (dqp, dkp, dvp) = (dqp, dkp, dvp);
            let (qp, kp, vp, dcp) = (q.as_ptr(), k.as_ptr(), v.as_ptr(), dctx.as_ptr());
            let p = &probs[bh * tq * tk..(bh + 1) * tq * tk];
            let pm = dense(p.as_ptr(), tk);
            let dctx_h = head(dcp, b, h, tq, heads, d);
            // SAFETY: as in `forward`; head (b, h) of dq, dk, dv is written by this task alone.
            unsafe {
                // dp = dctx_bh · v_bhᵀ
                sgemm(
                    tq,
                    tk,
                    d,
                    dense(ds.as_mut_ptr() as *const f32, tk),
                    dctx_h,
                    tr(head(vp, b, h, tk, heads, d)),
                    1.0,
                    0.0,
                );
                // dv_bh = pᵀ · dctx_bh
                sgemm(
                    tk,
                    d,
                    tq,
                    head(dvp.0 as *const f32, b, h, tk, heads, d),
                    tr(pm),
                    dctx_h,
                    1.0,
                    0.0,
                );
                for (pr, dr) in p.chunks_exact(tk).zip(ds.chunks_exact_mut(tk)) {
                    softmax_grad_row(pr, dr, scale);
                }
                let dsm = dense(ds.as_ptr(), tk);
                // dq_bh = ds · k_bh
                sgemm(
                    tq,
                    d,
                    tk,
                    head(dqp.0 as *const f32, b, h, tq, heads, d),
                    dsm,
                    head(kp, b, h, tk, heads, d),
                    1.0,
                    0.0,
                );
                // dk_bh = dsᵀ · q_bh
                sgemm(
                    tk,
                    d,
                    tq,
                    head(dkp.0 as *const f32, b, h, tk, heads, d),
                    tr(dsm),
                    head(qp, b, h, tq, heads, d),
                    1.0,
                    0.0,
                );
            }
        });
}
