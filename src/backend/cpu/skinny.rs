//! GEMMs with one dimension of at most [`MAX_SMALL`] — LoRA's rank-r products (x·Aᵀ, mid·Bᵀ,
//! dy·B, dyᵀ·mid, dxaᵀ·x, dxa·A) and the classifier head's.
//!
//! A blocked GEMM packs both operands into panels before multiplying. With a small dimension r
//! the packing of the large operand (n·k values) costs as much as the r·n·k multiply-adds
//! themselves, and the `gemm` crate ran these shapes at 22–36 GFLOP/s against ~150 on the
//! model's square ones. Three unpacked loops cover every layout instead, each streaming the
//! large operand once, row by row, in the order it is stored:
//!
//! - [`row_dots`]: C[i, j] = α·⟨X[i, :], W[j, :]⟩ (+ β·C) — the small dimension is C's columns;
//! - [`row_axpys`]: C[i, :] = α·Σ_j P[i, j]·W[j, :] (+ β·C[i, :]) — the small one is the depth;
//! - [`col_reduce`]: G[j, :] = α·Σ_i P[i, j]·X[i, :] (+ β·G) — the small one is C's rows and
//!   the large one the depth, reduced in fixed row blocks summed in order (deterministic for
//!   any thread count).
//!
//! The `gemm` crate path stays the oracle these are tested against (tests/cpu_fused.rs).

use super::simd::{self, vectorized};
use rayon::prelude::*;

/// The largest small dimension taken by these loops. Past it, the packing a blocked GEMM does is
/// amortised over enough columns to pay off.
pub const MAX_SMALL: usize = 16;

/// Rows per rayon task in [`row_dots`] and [`row_axpys`].
const ROWS_PER_TASK: usize = 64;
/// Rows of the depth per partial sum in [`col_reduce`] (fixed, so results do not depend on the
/// thread count).
const REDUCE_ROWS: usize = 256;

/// c = β·c + α·(product), with β = 0 overwriting (NaN included), as GEMM's convention.
#[inline(always)]
pub fn blend(c: &mut f32, v: f32, alpha: f32, beta: f32) {
    *c = if beta == 0.0 {
        alpha * v
    } else {
        alpha * v + beta * *c
    };
}

/// Four dot products ⟨x, w_q⟩ at once: four independent chains of 16 lanes, so the FMAs
/// overlap instead of waiting on one accumulator. (`mul_add` is an FMA where the function is
/// compiled with it, a correctly rounded libm call elsewhere: the same values either way.)
#[inline(always)]
fn dot4(x: &[f32], w: [&[f32]; 4]) -> [f32; 4] {
    const L: usize = simd::LANES;
    let k = x.len();
    let body = k / L * L;
    let (mut a0, mut a1, mut a2, mut a3) = ([0.0f32; L], [0.0f32; L], [0.0f32; L], [0.0f32; L]);
    let chunks = x[..body]
        .chunks_exact(L)
        .zip(w[0][..body].chunks_exact(L))
        .zip(w[1][..body].chunks_exact(L))
        .zip(w[2][..body].chunks_exact(L))
        .zip(w[3][..body].chunks_exact(L));
    for ((((xs, w0), w1), w2), w3) in chunks {
        for l in 0..L {
            a0[l] = xs[l].mul_add(w0[l], a0[l]);
            a1[l] = xs[l].mul_add(w1[l], a1[l]);
            a2[l] = xs[l].mul_add(w2[l], a2[l]);
            a3[l] = xs[l].mul_add(w3[l], a3[l]);
        }
    }
    let mut out = [a0, a1, a2, a3].map(|a| a.iter().sum::<f32>());
    for (q, o) in out.iter_mut().enumerate() {
        for c in body..k {
            *o = x[c].mul_add(w[q][c], *o);
        }
    }
    out
}

vectorized! {
    /// C rows of one task: c[i·r + j] = α·⟨x[i·k..], w[j·k..]⟩ + β·c.
    fn row_dots_block(x: &[f32], w: &[f32], c: &mut [f32], k: usize, r: usize, alpha: f32, beta: f32) {
        let row = |j: usize| &w[j * k..(j + 1) * k];
        for (xi, ci) in x.chunks_exact(k).zip(c.chunks_exact_mut(r)) {
            let mut j = 0;
            while j < r {
                // The last group repeats row r − 1 where r is not a multiple of 4.
                let js = [j, (j + 1).min(r - 1), (j + 2).min(r - 1), (j + 3).min(r - 1)];
                let d = dot4(xi, js.map(row));
                for (q, &v) in d.iter().enumerate().take(r - j) {
                    blend(&mut ci[j + q], v, alpha, beta);
                }
                j += 4;
            }
        }
    }
}

/// C [m, r] = α·X·Wᵀ + β·C, X: [m, k], W: [r, k], all row-major.
#[allow(clippy::too_many_arguments)]
pub fn row_dots(
    x: &[f32],
    w: &[f32],
    c: &mut [f32],
    m: usize,
    r: usize,
    k: usize,
    alpha: f32,
    beta: f32,
) {
    c[..m * r]
        .par_chunks_mut(ROWS_PER_TASK * r)
        .zip(x[..m * k].par_chunks(ROWS_PER_TASK * k))
        .for_each(|(c, x)| row_dots_block(x, &w[..r * k], c, k, r, alpha, beta));
}

vectorized! {
    /// C rows of one task: c[i, :] = β·c[i, :] + α·Σ_j p[i, j]·w[j, :]. Each 16-column strip of
    /// a row is summed over j in registers and written once.
    fn row_axpys_block(p: &[f32], w: &[f32], c: &mut [f32], r: usize, n: usize, alpha: f32, beta: f32) {
        const L: usize = simd::LANES;
        let body = n / L * L;
        for (pi, ci) in p.chunks_exact(r).zip(c.chunks_exact_mut(n)) {
            for (st, cs) in ci[..body].chunks_exact_mut(L).enumerate() {
                let c0 = st * L;
                let mut acc = [0.0f32; L];
                for (j, &pij) in pi.iter().enumerate() {
                    let ws = &w[j * n + c0..j * n + c0 + L];
                    let s = alpha * pij;
                    for l in 0..L {
                        acc[l] = s.mul_add(ws[l], acc[l]);
                    }
                }
                if beta == 0.0 {
                    cs.copy_from_slice(&acc);
                } else {
                    for l in 0..L {
                        cs[l] = beta.mul_add(cs[l], acc[l]);
                    }
                }
            }
            for (col, cv) in ci.iter_mut().enumerate().skip(body) {
                let mut t = 0.0f32;
                for (j, &pij) in pi.iter().enumerate() {
                    t = (alpha * pij).mul_add(w[j * n + col], t);
                }
                *cv = if beta == 0.0 { t } else { beta.mul_add(*cv, t) };
            }
        }
    }
}

/// C [m, n] = α·P·W + β·C, P: [m, r], W: [r, n], all row-major.
#[allow(clippy::too_many_arguments)]
pub fn row_axpys(
    p: &[f32],
    w: &[f32],
    c: &mut [f32],
    m: usize,
    n: usize,
    r: usize,
    alpha: f32,
    beta: f32,
) {
    c[..m * n]
        .par_chunks_mut(ROWS_PER_TASK * n)
        .zip(p[..m * r].par_chunks(ROWS_PER_TASK * r))
        .for_each(|(c, p)| row_axpys_block(p, &w[..r * n], c, r, n, alpha, beta));
}

vectorized! {
    /// g [r, n] = Σ_i p[i, j]·x[i, :] over the rows of one block: for each 16-column strip and
    /// four j at a time, the sums stay in registers while the rows stream past.
    fn col_reduce_block(p: &[f32], x: &[f32], g: &mut [f32], r: usize, n: usize) {
        const L: usize = simd::LANES;
        let body = n / L * L;
        for j0 in (0..r).step_by(4) {
            // The last group repeats row r − 1 where r is not a multiple of 4 (not written).
            let js = [j0, (j0 + 1).min(r - 1), (j0 + 2).min(r - 1), (j0 + 3).min(r - 1)];
            let live = (r - j0).min(4);
            for c0 in (0..body).step_by(L) {
                let mut a = [[0.0f32; L]; 4];
                let (mut a0, mut a1, mut a2, mut a3) = (a[0], a[1], a[2], a[3]);
                for (pi, xi) in p.chunks_exact(r).zip(x.chunks_exact(n)) {
                    let xs = &xi[c0..c0 + L];
                    let (s0, s1, s2, s3) = (pi[js[0]], pi[js[1]], pi[js[2]], pi[js[3]]);
                    for l in 0..L {
                        a0[l] = s0.mul_add(xs[l], a0[l]);
                        a1[l] = s1.mul_add(xs[l], a1[l]);
                        a2[l] = s2.mul_add(xs[l], a2[l]);
                        a3[l] = s3.mul_add(xs[l], a3[l]);
                    }
                }
                a = [a0, a1, a2, a3];
                for q in 0..live {
                    g[js[q] * n + c0..js[q] * n + c0 + L].copy_from_slice(&a[q]);
                }
            }
            for q in 0..live {
                for col in body..n {
                    let mut t = 0.0f32;
                    for (pi, xi) in p.chunks_exact(r).zip(x.chunks_exact(n)) {
                        t = pi[js[q]].mul_add(xi[col], t);
                    }
                    g[js[q] * n + col] = t;
                }
            }
        }
    }
}

/// G [r, n] = α·Pᵀ·X + β·G, P: [k, r], X: [k, n], all row-major; `partials` is scratch, grown
/// to ⌈k / REDUCE_ROWS⌉·r·n values when short (kept for the next call).
#[allow(clippy::too_many_arguments)]
pub fn col_reduce(
    p: &[f32],
    x: &[f32],
    g: &mut [f32],
    r: usize,
    n: usize,
    k: usize,
    alpha: f32,
    beta: f32,
    partials: &mut Vec<f32>,
) {
    let blocks = k.div_ceil(REDUCE_ROWS);
    let need = blocks * r * n;
    if partials.len() < need {
        partials.resize(need, 0.0);
    }
    partials[..need]
        .par_chunks_mut(r * n)
        .zip(p[..k * r].par_chunks(REDUCE_ROWS * r))
        .zip(x[..k * n].par_chunks(REDUCE_ROWS * n))
        .for_each(|((part, p), x)| col_reduce_block(p, x, part, r, n));
    // Partial sums added in block order, columns in parallel.
    let parts = &partials[..need];
    g[..r * n]
        .par_chunks_mut(ROWS_PER_TASK)
        .enumerate()
        .for_each(|(t, gs)| {
            let o = t * ROWS_PER_TASK;
            for (e, gv) in gs.iter_mut().enumerate() {
                let s: f32 = (0..blocks).map(|b| parts[b * r * n + o + e]).sum();
                blend(gv, s, alpha, beta);
            }
        });
}

/// `dst` [cols, rows] = `src` [rows, cols]ᵀ, `dst` grown when short.
pub fn transpose(src: &[f32], rows: usize, cols: usize, dst: &mut Vec<f32>) {
    if dst.len() < rows * cols {
        dst.resize(rows * cols, 0.0);
    }
    for (i, row) in src[..rows * cols].chunks_exact(cols).enumerate() {
        for (j, &v) in row.iter().enumerate() {
            dst[j * rows + i] = v;
        }
    }
}
