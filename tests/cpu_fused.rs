//! The CPU backend's fused and vectorized ops against their unfused or scalar twins, on odd
//! shapes (nothing a multiple of a vector width), with the tolerance each test states.
//!
//! - fused attention (no permuted copies, one task per head) against the default composition
//!   of permutes, batched GEMMs and the softmax ops (`attention_*_unfused`), and grouped-query
//!   attention (both) against multi-head attention on k, v repeated per query head;
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
/// hides whole sequences, multi-head and grouped-query (kv heads 1, a divisor, all).
#[test]
fn fused_attention_matches_the_unfused_composition() {
    let b = Cpu::new();
    let cases = [
        (2, 3, 3, 7, 7, 5, false, true),
        (3, 2, 1, 9, 9, 3, true, true),
        (1, 5, 5, 13, 13, 8, false, false),
        (2, 1, 1, 6, 11, 4, true, false),
        (4, 12, 12, 17, 17, 32, false, true),
        (2, 9, 3, 5, 8, 16, true, true),
        (3, 6, 2, 7, 7, 5, true, false),
        (2, 4, 1, 9, 13, 3, false, true),
    ];
    for (ci, &(batch, heads, kv_heads, tq, tk, d, causal, masked)) in cases.iter().enumerate() {
        let spec = Attn {
            batch,
            heads,
            kv_heads,
            tq,
            tk,
            scale: 1.0 / (d as f32).sqrt(),
            causal,
        };
        let (c, ckv) = (heads * d, kv_heads * d);
        let seed = 10 * ci as u64;
        let q = up(&b, &rand_vec(batch * tq * c, seed + 1));
        let k = up(&b, &rand_vec(batch * tk * ckv, seed + 2));
        let v = up(&b, &rand_vec(batch * tk * ckv, seed + 3));
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
        let name = format!("case {ci} (B {batch}, H {heads}, KVH {kv_heads}, tq {tq}, tk {tk}, D {d}, causal {causal}, mask {masked})");

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
                zeros(&b, batch * tk * ckv),
                zeros(&b, batch * tk * ckv),
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

/// k or v of `kv_heads` heads, [B, T, KVH·D], repeated on the host to one head per query head,
/// [B, T, H·D] (query head h reads kv head h / (H / KVH)).
fn repeat_kv(x: &[f32], rows: usize, heads: usize, kv_heads: usize, d: usize) -> Vec<f32> {
    let group = heads / kv_heads;
    let mut out = Vec::with_capacity(rows * heads * d);
    for r in 0..rows {
        for h in 0..heads {
            let src = (r * kv_heads + h / group) * d;
            out.extend_from_slice(&x[src..src + d]);
        }
    }
    out
}

/// The adjoint of `repeat_kv`: a kv head's gradient is the sum over the query heads that read it.
fn sum_groups(x: &[f32], rows: usize, heads: usize, kv_heads: usize, d: usize) -> Vec<f32> {
    let group = heads / kv_heads;
    let mut out = vec![0.0f32; rows * kv_heads * d];
    for r in 0..rows {
        for h in 0..heads {
            let (src, dst) = ((r * heads + h) * d, (r * kv_heads + h / group) * d);
            for e in 0..d {
                out[dst + e] += x[src + e];
            }
        }
    }
    out
}

/// Grouped-query attention, fused and unfused, against the brute-force reference: k and v
/// repeated on the host to one head per query head and run as multi-head attention (probs
/// and ctx must match; dk, dv must be the sums of the repeated heads' gradients over each
/// group), within 1e-5 scaled. Causal with tq < tk, key masks, kv heads 1, 2, 3 of 6.
#[test]
fn grouped_query_attention_matches_repeated_kv_heads() {
    let b = Cpu::new();
    for (ci, &(batch, heads, kv_heads, tq, tk, d, causal)) in [
        (2, 6, 1, 5, 8, 7, true),
        (3, 6, 2, 9, 9, 4, false),
        (2, 6, 3, 4, 6, 16, true),
    ]
    .iter()
    .enumerate()
    {
        let mha = Attn {
            batch,
            heads,
            kv_heads: heads,
            tq,
            tk,
            scale: 0.45,
            causal,
        };
        let gqa = Attn { kv_heads, ..mha };
        let seed = 100 + 10 * ci as u64;
        let (nq, nkv) = (batch * tq * heads * d, batch * tk * kv_heads * d);
        let (qv, kv, vv, dcv) = (
            rand_vec(nq, seed),
            rand_vec(nkv, seed + 1),
            rand_vec(nkv, seed + 2),
            rand_vec(nq, seed + 3),
        );
        let mask: Vec<f32> = (0..batch * tk)
            .map(|i| if i % 4 == 2 { 0.0 } else { 1.0 })
            .collect();
        let km = up(&b, &mask);
        let (q, dctx) = (up(&b, &qv), up(&b, &dcv));
        let rows = batch * tk;
        let (kr, vr) = (
            up(&b, &repeat_kv(&kv, rows, heads, kv_heads, d)),
            up(&b, &repeat_kv(&vv, rows, heads, kv_heads, d)),
        );
        let (k, v) = (up(&b, &kv), up(&b, &vv));
        let run = |spec: &Attn, k: &Tensor<Cpu>, v: &Tensor<Cpu>, fused: bool| {
            let nk = batch * tk * spec.kv_heads * d;
            let (mut p, mut ctx, mut s) =
                (zeros(&b, mha.len()), zeros(&b, nq), zeros(&b, mha.len()));
            let (mut dq, mut dk, mut dv) = (zeros(&b, nq), zeros(&b, nk), zeros(&b, nk));
            let (mut t1, mut t2) = (zeros(&b, mha.len()), zeros(&b, mha.len()));
            if fused {
                b.attention_forward(&q, k, v, Some(&km), &mut p, &mut ctx, &mut s, spec, d)
                    .unwrap();
                b.attention_backward(
                    &q, k, v, &p, &dctx, &mut dq, &mut dk, &mut dv, &mut t1, &mut t2, spec, d,
                )
                .unwrap();
            } else {
                attention_forward_unfused(
                    &b,
                    &q,
                    k,
                    v,
                    Some(&km),
                    &mut p,
                    &mut ctx,
                    &mut s,
                    spec,
                    d,
                )
                .unwrap();
                attention_backward_unfused(
                    &b, &q, k, v, &p, &dctx, &mut dq, &mut dk, &mut dv, &mut t1, &mut t2, spec, d,
                )
                .unwrap();
            }
            [p.buf, ctx.buf, dq.buf, dk.buf, dv.buf]
        };
        let [p0, c0, dq0, dk0, dv0] = run(&mha, &kr, &vr, false);
        let (dk0, dv0) = (
            sum_groups(&dk0, rows, heads, kv_heads, d),
            sum_groups(&dv0, rows, heads, kv_heads, d),
        );
        for fused in [true, false] {
            let [p, c, dq, dk, dv] = run(&gqa, &k, &v, fused);
            let name = format!("case {ci} (H {heads}, KVH {kv_heads}, fused {fused})");
            assert_close(&format!("{name}: probs"), &p, &p0, 1e-5);
            assert_close(&format!("{name}: ctx"), &c, &c0, 1e-5);
            assert_close(&format!("{name}: dq"), &dq, &dq0, 1e-5);
            assert_close(&format!("{name}: dk"), &dk, &dk0, 1e-5);
            assert_close(&format!("{name}: dv"), &dv, &dv0, 1e-5);
        }
    }
}

/// kv_heads that do not divide heads (or are zero) are refused with an error naming both.
#[test]
fn grouped_query_attention_refuses_a_ragged_grouping() {
    let b = Cpu::new();
    for kv_heads in [0, 4] {
        let spec = Attn {
            batch: 1,
            heads: 6,
            kv_heads,
            tq: 2,
            tk: 2,
            scale: 1.0,
            causal: false,
        };
        let t = || zeros(&b, 64);
        let (mut p, mut c, mut s) = (t(), t(), t());
        let err = b
            .attention_forward(&t(), &t(), &t(), None, &mut p, &mut c, &mut s, &spec, 4)
            .unwrap_err()
            .to_string();
        assert!(err.contains("kv_heads") && err.contains("divide"), "{err}");
        let err =
            attention_forward_unfused(&b, &t(), &t(), &t(), None, &mut p, &mut c, &mut s, &spec, 4)
                .unwrap_err()
                .to_string();
        assert!(err.contains("kv_heads"), "{err}");
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
