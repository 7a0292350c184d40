//! The Llama family's own ops on the CPU backend: RMSNorm, rotary position embeddings (RoPE)
//! and the SwiGLU gate. Row kernels here, written so LLVM vectorizes them (see [`super::simd`]);
//! `cpu.rs` splits rows across rayon threads and checks the operands.
//!
//! Each formula is written in the order Hugging Face's PyTorch code evaluates it (LlamaRMSNorm,
//! `apply_rotary_pos_emb`, `silu(gate) * up`), so the CPU backend stays within rounding of the
//! transformers models it is compared against.

use super::simd::{self, vectorized};
use rayon::prelude::*;

/// Columns per rayon task for the RMSNorm γ gradient.
pub const COL_BLOCK: usize = 64;
/// Rows (tokens) per rayon task for RoPE.
const ROW_CHUNK: usize = 16;

vectorized! {
    /// One row of RMSNorm: y = x·rstd·γ with rstd = 1/sqrt(mean x² + eps); returns rstd.
    pub fn rmsnorm_row(x: &[f32], gamma: &[f32], y: &mut [f32], eps: f32) -> f32 {
        let s = 1.0 / (simd::dot(x, x) / x.len() as f32 + eps).sqrt();
        for ((y, &x), &g) in y.iter_mut().zip(x).zip(gamma) {
            *y = x * s * g;
        }
        s
    }
}

vectorized! {
    /// One row of the RMSNorm backward: dx = rstd·(dy·γ − x̂·mean(dy·γ·x̂)), x̂ = x·rstd.
    pub fn rmsnorm_grad_row(dy: &[f32], x: &[f32], gamma: &[f32], s: f32, dx: &mut [f32]) {
        const L: usize = simd::LANES;
        let cols = x.len();
        let body = cols / L * L;
        let mut acc = [0.0f32; L];
        for ((d, g), xs) in dy[..body]
            .chunks_exact(L)
            .zip(gamma[..body].chunks_exact(L))
            .zip(x[..body].chunks_exact(L))
        {
            for l in 0..L {
                acc[l] += d[l] * g[l] * xs[l];
            }
        }
        let mut sgx = acc.iter().sum::<f32>();
        for c in body..cols {
            sgx += dy[c] * gamma[c] * x[c];
        }
        // mean(dy·γ·x̂) = rstd · mean(dy·γ·x), and x̂·that = x·rstd²·mean(dy·γ·x).
        let k = s * s * sgx / cols as f32;
        for c in 0..cols {
            dx[c] = s * (dy[c] * gamma[c]) - s * k * x[c];
        }
    }
}

vectorized! {
    /// dγ[c0 + j] += Σ_r dy[r, c]·x[r, c]·rstd[r] for the columns of `out`, rows in order
    /// (deterministic for any thread count).
    pub fn rmsnorm_dgamma_block(
        dy: &[f32],
        x: &[f32],
        rstd: &[f32],
        cols: usize,
        c0: usize,
        out: &mut [f32],
    ) {
        let w = out.len();
        let mut acc = [0.0f32; COL_BLOCK];
        for (r, &s) in rstd.iter().enumerate() {
            let span = r * cols + c0..r * cols + c0 + w;
            for ((a, &d), &x) in acc[..w].iter_mut().zip(&dy[span.clone()]).zip(&x[span]) {
                *a += d * (x * s);
            }
        }
        for (o, a) in out.iter_mut().zip(acc) {
            *o += a;
        }
    }
}

vectorized! {
    /// RoPE on one head: y1 = x1·cos − x2·sin, y2 = x2·cos + x1·sin with (cos, sin) pairs in
    /// `cs` ([D/2, 2]); `sign` −1 rotates by −θ.
    fn rope_head(x: &[f32], y: &mut [f32], cs: &[f32], sign: f32) {
        let half = x.len() / 2;
        let (x1, x2) = x.split_at(half);
        let (y1, y2) = y.split_at_mut(half);
        for i in 0..half {
            let (c, s) = (cs[2 * i], sign * cs[2 * i + 1]);
            y1[i] = x1[i] * c - x2[i] * s;
            y2[i] = x2[i] * c + x1[i] * s;
        }
    }
}

/// RoPE over rows of `heads` heads of `d` values each; row n at position `positions[n]` of
/// `table` ([P, D/2, 2]). The caller checks every position is below P and d is even.
pub fn rope_rows(
    x: &[f32],
    y: &mut [f32],
    table: &[f32],
    positions: &[u32],
    heads: usize,
    d: usize,
    inverse: bool,
) {
    let row = heads * d;
    if row == 0 {
        return;
    }
    let sign = if inverse { -1.0 } else { 1.0 };
    y[..positions.len() * row]
        .par_chunks_mut(row)
        .zip(x[..positions.len() * row].par_chunks(row))
        .zip(positions.par_iter())
        .with_min_len(ROW_CHUNK)
        .for_each(|((y, x), &p)| {
            let cs = &table[p as usize * d..(p as usize + 1) * d];
            for (yh, xh) in y.chunks_exact_mut(d).zip(x.chunks_exact(d)) {
                rope_head(xh, yh, cs, sign);
            }
        });
}

/// 1 + e^−z, with the vectorizable exp: +∞ below z ≈ −88.7, where σ and silu go to 0, not NaN.
#[inline(always)]
fn one_plus_exp_neg(z: f32) -> f32 {
    1.0 + simd::exp(-z)
}

vectorized! {
    /// out = silu(gate) ⊙ up, elementwise; silu(z) = z / (1 + e^−z), as PyTorch computes it.
    pub fn swiglu_slice(gate: &[f32], up: &[f32], out: &mut [f32]) {
        for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
            *o = g / one_plus_exp_neg(g) * u;
        }
    }
}

vectorized! {
    /// dgate = dout ⊙ up ⊙ silu'(gate), dup = dout ⊙ silu(gate), elementwise, with
    /// silu'(z) = σ(z)·(1 + z·(1 − σ(z))).
    pub fn swiglu_grad_slice(gate: &[f32], up: &[f32], dout: &[f32], dgate: &mut [f32], dup: &mut [f32]) {
        for i in 0..gate.len().min(dgate.len()).min(dup.len()) {
            let (g, u, d) = (gate[i], up[i], dout[i]);
            let e = one_plus_exp_neg(g);
            let s = 1.0 / e;
            dgate[i] = d * u * (s * (1.0 + g * (1.0 - s)));
            dup[i] = d * (g / e);
        }
    }
}
