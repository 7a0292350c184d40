//! The CPU backend's fused and vectorized ops against their unfused or scalar twins, on odd
//! shapes (nothing a multiple of a vector width), with the tolerance each test states.
//!
//! - fused attention (no permuted copies, one task per head) against the default composition
//!   of permutes, batched GEMMs and the softmax ops (`attention_*_unfused`);
//! - the branch-free exp, GELU and GELU' against std's exp and libm's erf;
//! - layer norm forward and backward, and the column sums, against f64 loops;
//! - the unpacked loops of GEMMs with a small dimension (LoRA's rank-r products) against the
//!   `gemm` crate's blocked path and against an f64 triple loop.

mod common;

use adarank::backend::cpu::{self, simd, Cpu};
use adarank::backend::{
    attention_backward_unfused, attention_forward_unfused, Attn, Backend, Gemm, MemKind, Tensor,
};
use common::{assert_close, rand_vec};

fn up(b: &Cpu, v: &[f32]) -> Tensor<Cpu> {
    b.upload(v, MemKind::Scratch).unwrap()
}

fn zeros(b: &Cpu, n: usize) -> Tensor<Cpu> {
    b.zeros(n, MemKind::Scratch).unwrap()
}

/// Fused attention = unfused composition within 1e-5 (scaled: |Δ| ≤ 1e-5·(1 + |want|)), for
/// odd batch, heads, lengths and head dims, causal or not, with and without a key mask that
/// hides whole sequences.
#[test]
fn fused_attention_matches_the_unfused_composition() {
    let b = Cpu::new();
    let cases = [
        (2, 3, 7, 7, 5, false, true),
        (3, 2, 9, 9, 3, true, true),
        (1, 5, 13, 13, 8, false, false),
        (2, 1, 6, 11, 4, true, false),
        (4, 12, 17, 17, 32, false, true),
    ];
    for (ci, &(batch, heads, tq, tk, d, causal, masked)) in cases.iter().enumerate() {
        let spec = Attn {
            batch,
            heads,
            kv_heads: heads,
            tq,
            tk,
            scale: 1.0 / (d as f32).sqrt(),
            causal,
        };
        let c = heads * d;
        let seed = 10 * ci as u64;
        let q = up(&b, &rand_vec(batch * tq * c, seed + 1));
        let k = up(&b, &rand_vec(batch * tk * c, seed + 2));
        let v = up(&b, &rand_vec(batch * tk * c, seed + 3));
        let dctx = up(&b, &rand_vec(batch * tq * c, seed + 4));
        // Key mask: the last key of every sequence hidden, the whole of sequence 1 hidden.
        let mask: Vec<f32> = (0..batch * tk)
            .map(|i| {
                let (s, j) = (i / tk, i % tk);
                if s == 1 || j == tk - 1 {
                    0.0
                } else {
                    1.0
                }
            })
            .collect();
        let km = up(&b, &mask);
        let km = masked.then_some(&km);
        let name = format!("case {ci} (B {batch}, H {heads}, tq {tq}, tk {tk}, D {d}, causal {causal}, mask {masked})");

        let (mut p1, mut c1, mut s1) = (
            zeros(&b, spec.len()),
            zeros(&b, batch * tq * c),
            zeros(&b, spec.len()),
        );
        b.attention_forward(&q, &k, &v, km, &mut p1, &mut c1, &mut s1, &spec, d)
            .unwrap();
        let (mut p2, mut c2, mut s2) = (
            zeros(&b, spec.len()),
            zeros(&b, batch * tq * c),
            zeros(&b, spec.len()),
        );
        attention_forward_unfused(&b, &q, &k, &v, km, &mut p2, &mut c2, &mut s2, &spec, d).unwrap();
        assert_close(&format!("{name}: probs"), &p1.buf, &p2.buf, 1e-5);
        assert_close(&format!("{name}: ctx"), &c1.buf, &c2.buf, 1e-5);

        let grads = |fused: bool| {
            let (mut dq, mut dk, mut dv) = (
                zeros(&b, batch * tq * c),
                zeros(&b, batch * tk * c),
                zeros(&b, batch * tk * c),
            );
            let (mut t1, mut t2) = (zeros(&b, spec.len()), zeros(&b, spec.len()));
            if fused {
                b.attention_backward(
                    &q, &k, &v, &p2, &dctx, &mut dq, &mut dk, &mut dv, &mut t1, &mut t2, &spec, d,
                )
                .unwrap();
            } else {
                attention_backward_unfused(
                    &b, &q, &k, &v, &p2, &dctx, &mut dq, &mut dk, &mut dv, &mut t1, &mut t2, &spec,
                    d,
                )
                .unwrap();
            }
            (dq.buf, dk.buf, dv.buf)
        };
        let (f, u) = (grads(true), grads(false));
        assert_close(&format!("{name}: dq"), &f.0, &u.0, 1e-5);
        assert_close(&format!("{name}: dk"), &f.1, &u.1, 1e-5);
        assert_close(&format!("{name}: dv"), &f.2, &u.2, 1e-5);
        if masked && batch > 1 {
            // A sequence with every key hidden attends to nothing.
            let row = heads * tq * tk;
            assert!(p1.buf[row..2 * row].iter().all(|&p| p == 0.0), "{name}");
        }
    }
}

/// The branch-free exp is within 2 ulp (relative 2.4e-7) of std's over its range, 0 below,
/// +inf above, NaN for NaN.
#[test]
fn vector_exp_matches_std() {
    let mut worst = 0.0f64;
    let mut x = -87.3f32;
    while x < 88.7 {
        let (got, want) = (simd::exp(x), x.exp());
        let rel = ((got - want) / want).abs() as f64;
        worst = worst.max(rel);
        assert!(rel <= 2.4e-7, "exp({x}) = {got}, std says {want}");
        x += 0.0137;
    }
    eprintln!("exp: worst relative error {worst:.2e}");
    assert_eq!(simd::exp(-100.0), 0.0);
    assert_eq!(simd::exp(f32::NEG_INFINITY), 0.0);
    assert_eq!(simd::exp(100.0), f32::INFINITY);
    assert!(simd::exp(f32::NAN).is_nan());
}

/// GELU and its derivative through the backend ops (the vector path this CPU has) against the
/// libm-based scalar twins, within 5e-7·max(1, |x|) absolute, over [−12, 12] in odd-length
/// tensors.
#[test]
fn vector_gelu_matches_the_libm_twin() {
    let b = Cpu::new();
    let n = 24_001;
    let x: Vec<f32> = (0..n)
        .map(|i| -12.0 + 24.0 * i as f32 / (n - 1) as f32)
        .collect();
    let dy = rand_vec(n, 7);
    let (xt, dyt) = (up(&b, &x), up(&b, &dy));
    let mut y = zeros(&b, n);
    b.gelu_forward(&xt, &mut y);
    let mut dx = zeros(&b, n);
    b.gelu_backward(&xt, &dyt, &mut dx);
    for i in 0..n {
        let tol = 5e-7 * x[i].abs().max(1.0);
        let want = cpu::gelu(x[i]);
        assert!(
            (y.buf[i] - want).abs() <= tol,
            "gelu({}) = {} vs {want}",
            x[i],
            y.buf[i]
        );
        let want = dy[i] * cpu::gelu_grad(x[i]);
        assert!(
            (dx.buf[i] - want).abs() <= tol,
            "gelu'({}) · {} = {} vs {want}",
            x[i],
            dy[i],
            dx.buf[i]
        );
    }
    assert!(simd::gelu(f32::NAN).is_nan());
}

/// Layer norm forward and backward (with γ, β gradients) against f64 loops, within 2e-5
/// scaled, on widths below, at and above the vector width.
#[test]
fn layernorm_matches_f64_loops() {
    let b = Cpu::new();
    for (rows, cols) in [(3, 1), (5, 7), (17, 37), (9, 384 + 5), (33, 64)] {
        let x: Vec<f32> = rand_vec(rows * cols, 1)
            .iter()
            .map(|v| 3.0 * v + 0.5)
            .collect();
        let gamma: Vec<f32> = rand_vec(cols, 2).iter().map(|v| 1.0 + 0.5 * v).collect();
        let beta = rand_vec(cols, 3);
        let dy = rand_vec(rows * cols, 4);
        let eps = 1e-5f64;
        let (mut y, mut mean, mut rstd) =
            (zeros(&b, rows * cols), zeros(&b, rows), zeros(&b, rows));
        let (xt, gt, bt, dyt) = (up(&b, &x), up(&b, &gamma), up(&b, &beta), up(&b, &dy));
        b.layernorm_forward(
            &xt, &gt, &bt, &mut y, &mut mean, &mut rstd, rows, cols, eps as f32,
        );
        let (mut dx, mut dg, mut db) = (
            zeros(&b, rows * cols),
            up(&b, &vec![0.25; cols]),
            up(&b, &vec![0.5; cols]),
        );
        b.layernorm_backward(
            &dyt,
            &xt,
            &gt,
            &mean,
            &rstd,
            &mut dx,
            Some(&mut dg),
            Some(&mut db),
            rows,
            cols,
        );
        let (mut wy, mut wdx) = (vec![0.0f32; rows * cols], vec![0.0f32; rows * cols]);
        let (mut wdg, mut wdb) = (vec![0.25f64; cols], vec![0.5f64; cols]);
        for r in 0..rows {
            let xr: Vec<f64> = x[r * cols..(r + 1) * cols]
                .iter()
                .map(|&v| v as f64)
                .collect();
            let m = xr.iter().sum::<f64>() / cols as f64;
            let var = xr.iter().map(|v| (v - m) * (v - m)).sum::<f64>() / cols as f64;
            let s = 1.0 / (var + eps).sqrt();
            let xhat: Vec<f64> = xr.iter().map(|v| (v - m) * s).collect();
            let g: Vec<f64> = (0..cols)
                .map(|c| dy[r * cols + c] as f64 * gamma[c] as f64)
                .collect();
            let mg = g.iter().sum::<f64>() / cols as f64;
            let mgx = g.iter().zip(&xhat).map(|(a, b)| a * b).sum::<f64>() / cols as f64;
            for c in 0..cols {
                wy[r * cols + c] = (xhat[c] * gamma[c] as f64 + beta[c] as f64) as f32;
                wdx[r * cols + c] = ((g[c] - mg - xhat[c] * mgx) * s) as f32;
                wdg[c] += dy[r * cols + c] as f64 * xhat[c];
                wdb[c] += dy[r * cols + c] as f64;
            }
        }
        let f = |v: Vec<f64>| v.into_iter().map(|x| x as f32).collect::<Vec<_>>();
        let what = format!("layernorm {rows}×{cols}");
        assert_close(&format!("{what}: y"), &y.buf, &wy, 2e-5);
        assert_close(&format!("{what}: dx"), &dx.buf, &wdx, 2e-5);
        assert_close(&format!("{what}: dgamma"), &dg.buf, &f(wdg), 2e-5);
        assert_close(&format!("{what}: dbeta"), &db.buf, &f(wdb), 2e-5);
    }
}

/// GEMMs with one dimension ≤ 16 (the CPU backend runs them through unpacked loops, see
/// `backend::cpu::skinny`) against the same product through the `gemm` crate — item 0 of a
/// batch of two, which always takes the blocked path — and an f64 triple loop. Every layout,
/// small dimensions 1, 3, 8, 13 and 16 beside large odd ones (nothing a multiple of the
/// 16-lane vectors), α = 0.7 and β = 0 (over a C of NaN: overwritten), 1 and 0.5. Tolerance:
/// |Δ| ≤ 2e-6 · (1 + Σ_p |a_p·b_p|), the scale of f32 rounding in a sum of k products.
#[test]
fn small_dimension_gemms_match_the_blocked_path() {
    let b = Cpu::new();
    let mut cases = vec![];
    for &s in &[1usize, 3, 8, 13, 16] {
        for &big in &[17usize, 131, 389] {
            // (m, n, k): the small one as each of C's columns, the depth, C's rows.
            cases.extend([
                (big, s, 37),
                (big, s, big),
                (big, 45, s),
                (s, big, 263),
                (s, 29, big),
            ]);
        }
    }
    for (ci, &(m, n, k)) in cases.iter().enumerate() {
        for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
            for beta in [0.0f32, 1.0, 0.5] {
                let seed = 1000 * ci as u64 + 10 * (2 * ta as u64 + tb as u64) + beta as u64;
                let a = rand_vec(m * k, seed + 1);
                let bm = rand_vec(k * n, seed + 2);
                let c0: Vec<f32> = if beta == 0.0 {
                    vec![f32::NAN; m * n]
                } else {
                    rand_vec(m * n, seed + 3)
                };
                let spec = Gemm {
                    trans_a: ta,
                    trans_b: tb,
                    ..Gemm::nn(m, n, k)
                }
                .alpha(0.7)
                .beta(beta);
                let mut got = up(&b, &c0);
                b.matmul(&up(&b, &a), &up(&b, &bm), &mut got, &spec);
                // The blocked twin: the same product as item 0 of a batch of two.
                let twice = |v: &[f32]| [v, v].concat();
                let mut twin = up(&b, &twice(&c0));
                let batched = spec.batched(2, m * k, k * n, m * n);
                b.matmul(
                    &up(&b, &twice(&a)),
                    &up(&b, &twice(&bm)),
                    &mut twin,
                    &batched,
                );
                let what = format!("{m}×{n}×{k} ta={ta} tb={tb} β={beta}");
                for i in 0..m {
                    for j in 0..n {
                        let (mut sum, mut mag) = (0.0f64, 0.0f64);
                        for p in 0..k {
                            let av = if ta { a[p * m + i] } else { a[i * k + p] } as f64;
                            let bv = if tb { bm[j * k + p] } else { bm[p * n + j] } as f64;
                            sum += av * bv;
                            mag += (av * bv).abs();
                        }
                        let c = if beta == 0.0 {
                            0.0
                        } else {
                            c0[i * n + j] as f64
                        };
                        let want = 0.7 * sum + beta as f64 * c;
                        let tol = 2e-6 * (1.0 + mag + c.abs());
                        let (g, t) = (got.buf[i * n + j] as f64, twin.buf[i * n + j] as f64);
                        assert!(
                            (g - want).abs() <= tol,
                            "{what} ({i}, {j}): {g} vs f64 {want} (tolerance {tol})"
                        );
                        assert!(
                            (g - t).abs() <= tol,
                            "{what} ({i}, {j}): {g} vs the blocked path's {t} (tolerance {tol})"
                        );
                    }
                }
            }
        }
    }
}
