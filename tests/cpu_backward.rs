//! Every backward op of the CPU backend against central finite differences of its forward op,
//! and the forward ops against naive closed forms. The CPU backend is the oracle for the GPU
//! kernels, so it must itself be checked against something independent.
//!
//! Method: pick a random cotangent w, define L(x) = Σ w ⊙ f(x), compare the backward op's
//! ∂L/∂x with (L(x + εe) − L(x − εe)) / 2ε on a sample of coordinates. ε = 1e-2 in f32 keeps
//! both the truncation error (O(ε²)) and the rounding error (O(ulp/ε)) near 1e-4 relative.

#![allow(clippy::identity_op)] // index arithmetic spelled out as [a, b, c, d] positions

use adarank::backend::cpu::Cpu;
use adarank::backend::{AdamW, Attn, Backend, Gemm, MemKind, Tensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const EPS: f32 = 1e-2;
const TOL: f32 = 2e-3;

fn rnd(rng: &mut StdRng, n: usize, scale: f32) -> Vec<f32> {
    (0..n)
        .map(|_| rng.random_range(-1.0f32..1.0) * scale)
        .collect()
}

fn up(b: &Cpu, v: &[f32]) -> Tensor<Cpu> {
    b.upload(v, MemKind::Scratch).unwrap()
}

fn dot(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum()
}

/// Compare analytic gradient `g` of L at `x` with central differences of `loss` on `samples`
/// coordinates (all when fewer).
fn check_grad(name: &str, x: &[f32], g: &[f32], samples: usize, loss: impl Fn(&[f32]) -> f64) {
    let step = (x.len() / samples).max(1);
    let mut worst = 0.0f32;
    for i in (0..x.len()).step_by(step) {
        let mut xp = x.to_vec();
        xp[i] += EPS;
        let mut xm = x.to_vec();
        xm[i] -= EPS;
        let fd = ((loss(&xp) - loss(&xm)) / (2.0 * EPS as f64)) as f32;
        let err = (fd - g[i]).abs() / (1.0 + fd.abs().max(g[i].abs()));
        worst = worst.max(err);
        assert!(
            err < TOL,
            "{name}: coordinate {i}: finite difference {fd} vs backward {}",
            g[i]
        );
    }
    eprintln!("{name}: worst relative error {worst:.2e}");
}

#[test]
fn gelu_backward_matches_finite_differences() {
    let b = Cpu::new();
    let mut rng = StdRng::seed_from_u64(1);
    let n = 257;
    let x = rnd(&mut rng, n, 3.0);
    let w = rnd(&mut rng, n, 1.0);
    let f = |x: &[f32]| {
        let mut y = b.zeros(n, MemKind::Scratch).unwrap();
        b.gelu_forward(&up(&b, x), &mut y);
        dot(&y.buf, &w)
    };
    let mut dx = b.zeros(n, MemKind::Scratch).unwrap();
    b.gelu_backward(&up(&b, &x), &up(&b, &w), &mut dx);
    check_grad("gelu", &x, &dx.buf, n, f);
    // Closed form at known points: gelu(0) = 0, gelu(x) → x for large x, erf(1) = 0.8427008.
    assert!((adarank::backend::cpu::erf(1.0) - 0.842_700_8).abs() < 1e-6);
    assert!((adarank::backend::cpu::erf(-2.5) + 0.999_593).abs() < 1e-6);
    assert!((adarank::backend::cpu::gelu(6.0) - 6.0).abs() < 1e-5);
}

#[test]
fn layernorm_backward_matches_finite_differences() {
    let b = Cpu::new();
    let mut rng = StdRng::seed_from_u64(2);
    let (rows, cols) = (5, 37);
    let x = rnd(&mut rng, rows * cols, 2.0);
    let gamma = rnd(&mut rng, cols, 1.5);
    let beta = rnd(&mut rng, cols, 0.5);
    let w = rnd(&mut rng, rows * cols, 1.0);
    let fwd = |x: &[f32], gamma: &[f32], beta: &[f32]| {
        let mut y = b.zeros(rows * cols, MemKind::Scratch).unwrap();
        let mut m = b.zeros(rows, MemKind::Scratch).unwrap();
        let mut r = b.zeros(rows, MemKind::Scratch).unwrap();
        b.layernorm_forward(
            &up(&b, x),
            &up(&b, gamma),
            &up(&b, beta),
            &mut y,
            &mut m,
            &mut r,
            rows,
            cols,
            1e-5,
        );
        (y, m, r)
    };
    let (_, mean, rstd) = fwd(&x, &gamma, &beta);
    let mut dx = b.zeros(rows * cols, MemKind::Scratch).unwrap();
    let mut dg = up(&b, &vec![0.25; cols]); // accumulates: starts non-zero on purpose
    let mut db = up(&b, &vec![-0.5; cols]);
    b.layernorm_backward(
        &up(&b, &w),
        &up(&b, &x),
        &up(&b, &gamma),
        &mean,
        &rstd,
        &mut dx,
        Some(&mut dg),
        Some(&mut db),
        rows,
        cols,
    );
    check_grad("layernorm dx", &x, &dx.buf, 60, |x| {
        dot(&fwd(x, &gamma, &beta).0.buf, &w)
    });
    let dg: Vec<f32> = dg.buf.iter().map(|v| v - 0.25).collect();
    let db: Vec<f32> = db.buf.iter().map(|v| v + 0.5).collect();
    check_grad("layernorm dgamma", &gamma, &dg, cols, |g| {
        dot(&fwd(&x, g, &beta).0.buf, &w)
    });
    check_grad("layernorm dbeta", &beta, &db, cols, |bt| {
        dot(&fwd(&x, &gamma, bt).0.buf, &w)
    });
}

#[test]
fn softmax_backward_matches_finite_differences_with_masks() {
    let b = Cpu::new();
    let mut rng = StdRng::seed_from_u64(3);
    for causal in [false, true] {
        let spec = Attn {
            batch: 2,
            heads: 3,
            kv_heads: 3,
            tq: 4,
            tk: 5,
            scale: 0.7,
            causal,
        };
        let n = spec.len();
        let scores = rnd(&mut rng, n, 2.0);
        let mask: Vec<f32> = (0..spec.batch * spec.tk)
            .map(|i| if i % 5 == 3 { 0.0 } else { 1.0 })
            .collect();
        let w = rnd(&mut rng, n, 1.0);
        let km = up(&b, &mask);
        let fwd = |s: &[f32]| {
            let mut p = b.zeros(n, MemKind::Scratch).unwrap();
            b.softmax_forward(&up(&b, s), &mut p, Some(&km), &spec);
            p
        };
        let p = fwd(&scores);
        // Each row sums to one over visible keys, and masked keys get exactly zero.
        for row in 0..spec.rows() {
            let r = &p.buf[row * spec.tk..(row + 1) * spec.tk];
            assert!((r.iter().sum::<f32>() - 1.0).abs() < 1e-5);
            let bidx = row / (spec.heads * spec.tq);
            let i = row % spec.tq;
            for (j, v) in r.iter().enumerate() {
                let hidden =
                    mask[bidx * spec.tk + j] == 0.0 || (causal && j + spec.tq > i + spec.tk);
                if hidden {
                    assert_eq!(*v, 0.0);
                }
            }
        }
        let mut ds = b.zeros(n, MemKind::Scratch).unwrap();
        b.softmax_backward(&p, &up(&b, &w), &mut ds, &spec);
        check_grad("softmax", &scores, &ds.buf, n, |s| dot(&fwd(s).buf, &w));
    }
}

#[test]
fn cross_entropy_gradient_matches_finite_differences() {
    let b = Cpu::new();
    let mut rng = StdRng::seed_from_u64(4);
    let (rows, classes) = (6, 7);
    let logits = rnd(&mut rng, rows * classes, 3.0);
    let t: Vec<u32> = vec![0, 6, 3, u32::MAX, 2, 5];
    let targets = b.ids(&t).unwrap();
    let scale = 1.0 / 5.0;
    let run = |l: &[f32]| {
        let mut d = b.zeros(rows * classes, MemKind::Scratch).unwrap();
        let mut loss = b.zeros(rows, MemKind::Scratch).unwrap();
        b.cross_entropy(
            &up(&b, l),
            &targets,
            &mut d,
            &mut loss,
            rows,
            classes,
            scale,
        );
        (d, loss)
    };
    let (d, loss) = run(&logits);
    // Closed form for row 0: logsumexp − logit[target].
    let r0 = &logits[..classes];
    let lse = r0.iter().map(|v| (*v as f64).exp()).sum::<f64>().ln();
    assert!((loss.buf[0] as f64 - (lse - r0[0] as f64)).abs() < 1e-5);
    assert_eq!(loss.buf[3], 0.0, "IGNORE rows have no loss");
    assert!(d.buf[3 * classes..4 * classes].iter().all(|v| *v == 0.0));
    check_grad("cross_entropy", &logits, &d.buf, rows * classes, |l| {
        run(l).1.buf.iter().map(|v| *v as f64 * scale as f64).sum()
    });
}

#[test]
fn matmul_matches_naive_for_every_transpose_and_batch() {
    let b = Cpu::new();
    let mut rng = StdRng::seed_from_u64(5);
    for &(m, n, k) in &[(1, 1, 1), (7, 13, 5), (65, 127, 33), (3, 4, 0)] {
        for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
            let batch = 3;
            let a = rnd(&mut rng, batch * m * k, 1.0);
            let bm = rnd(&mut rng, batch * k * n, 1.0);
            let c0 = rnd(&mut rng, batch * m * n, 1.0);
            let spec = Gemm {
                trans_a: ta,
                trans_b: tb,
                ..Gemm::nn(m, n, k)
            }
            .alpha(0.5)
            .beta(2.0)
            .batched(batch, m * k, k * n, m * n);
            let mut c = up(&b, &c0);
            b.matmul(&up(&b, &a), &up(&b, &bm), &mut c, &spec);
            for bi in 0..batch {
                for i in 0..m {
                    for j in 0..n {
                        let mut s = 0.0f64;
                        for p in 0..k {
                            let av = if ta {
                                a[bi * m * k + p * m + i]
                            } else {
                                a[bi * m * k + i * k + p]
                            };
                            let bv = if tb {
                                bm[bi * k * n + j * k + p]
                            } else {
                                bm[bi * k * n + p * n + j]
                            };
                            s += av as f64 * bv as f64;
                        }
                        let want = 0.5 * s + 2.0 * c0[bi * m * n + i * n + j] as f64;
                        let got = c.buf[bi * m * n + i * n + j] as f64;
                        assert!(
                            (got - want).abs() < 1e-4 * (1.0 + want.abs()),
                            "({m},{n},{k}) ta={ta} tb={tb}: {got} vs {want}"
                        );
                    }
                }
            }
        }
    }
    // beta = 0 overwrites C even when it holds NaN.
    let mut c = up(&b, &[f32::NAN; 4]);
    b.matmul(
        &up(&b, &[1.0, 2.0]),
        &up(&b, &[3.0, 4.0]),
        &mut c,
        &Gemm::nn(2, 2, 1),
    );
    assert_eq!(c.buf, vec![3.0, 4.0, 6.0, 8.0]);
}

#[test]
fn embedding_backward_is_the_adjoint_of_forward() {
    // <E(ids) table, dout> = <table, Eᵀ(ids) dout> for any table and dout: the scatter-add is the
    // exact transpose of the gather.
    let b = Cpu::new();
    let mut rng = StdRng::seed_from_u64(6);
    let (vocab, dim) = (11, 6);
    let ids_v: Vec<u32> = vec![3, 0, 3, 10, u32::MAX, 3, 7];
    let ids = b.ids(&ids_v).unwrap();
    let table = rnd(&mut rng, vocab * dim, 1.0);
    let dout = rnd(&mut rng, ids_v.len() * dim, 1.0);
    let mut out = b.zeros(ids_v.len() * dim, MemKind::Scratch).unwrap();
    b.embedding_forward(&ids, &up(&b, &table), &mut out, dim, false);
    let mut dtable = b.zeros(vocab * dim, MemKind::Scratch).unwrap();
    b.embedding_backward(&ids, &up(&b, &dout), &mut dtable, dim);
    let lhs = dot(&out.buf, &dout);
    let rhs = dot(&table, &dtable.buf);
    assert!((lhs - rhs).abs() < 1e-4, "{lhs} vs {rhs}");
    check_grad("embedding", &table, &dtable.buf, vocab * dim, |t| {
        let mut o = b.zeros(ids_v.len() * dim, MemKind::Scratch).unwrap();
        b.embedding_forward(&ids, &up(&b, t), &mut o, dim, false);
        dot(&o.buf, &dout)
    });
}

#[test]
fn bias_and_broadcast_backwards_match_finite_differences() {
    let b = Cpu::new();
    let mut rng = StdRng::seed_from_u64(7);
    let (rows, cols) = (9, 70);
    let x = rnd(&mut rng, rows * cols, 1.0);
    let v = rnd(&mut rng, cols, 1.0);
    let w = rnd(&mut rng, rows * cols, 1.0);
    // add_bias: ∂/∂bias = col_sum(w)
    let mut db = up(&b, &vec![1.0; cols]);
    b.col_sum(&up(&b, &w), &mut db, rows, cols, false);
    check_grad("add_bias", &v, &db.buf, cols, |bias| {
        let mut y = up(&b, &x);
        b.add_bias(&mut y, &up(&b, bias), rows, cols);
        dot(&y.buf, &w)
    });
    // mul_cols: ∂/∂v = col_sum(w ⊙ x), ∂/∂x = mul_cols(w, v)
    let mut wx = b.zeros(rows * cols, MemKind::Scratch).unwrap();
    b.mul(&up(&b, &w), &up(&b, &x), &mut wx);
    let mut dv = b.zeros(cols, MemKind::Scratch).unwrap();
    b.col_sum(&wx, &mut dv, rows, cols, false);
    let fwd = |x: &[f32], v: &[f32]| {
        let mut y = b.zeros(rows * cols, MemKind::Scratch).unwrap();
        b.mul_cols(&up(&b, x), &up(&b, v), &mut y, rows, cols);
        dot(&y.buf, &w)
    };
    check_grad("mul_cols dv", &v, &dv.buf, cols, |v| fwd(&x, v));
    let mut dx = b.zeros(rows * cols, MemKind::Scratch).unwrap();
    b.mul_cols(&up(&b, &w), &up(&b, &v), &mut dx, rows, cols);
    check_grad("mul_cols dx", &x, &dx.buf, 80, |x| fwd(x, &v));
}

#[test]
fn permute_reductions_and_adamw_match_closed_forms() {
    let b = Cpu::new();
    let mut rng = StdRng::seed_from_u64(8);
    let dims = [2, 3, 4, 5];
    let x = rnd(&mut rng, 120, 1.0);
    let mut y = b.zeros(120, MemKind::Scratch).unwrap();
    b.permute0213(&up(&b, &x), &mut y, dims);
    assert_eq!(
        y.buf[((1 * 4 + 2) * 3 + 1) * 5 + 4],
        x[((1 * 3 + 1) * 4 + 2) * 5 + 4]
    );
    let mut back = b.zeros(120, MemKind::Scratch).unwrap();
    b.permute0213(&y, &mut back, [2, 4, 3, 5]);
    assert_eq!(
        back.buf, x,
        "permute0213 is its own inverse with d1, d2 swapped"
    );

    let mut out = b.zeros(2, MemKind::Scratch).unwrap();
    b.sumsq(&up(&b, &x), &mut out, 0);
    b.sum(&up(&b, &x), &mut out, 1);
    assert!((out.buf[0] as f64 - dot(&x, &x)).abs() < 1e-4);
    assert!((out.buf[1] as f64 - x.iter().map(|v| *v as f64).sum::<f64>()).abs() < 1e-4);

    // Two AdamW steps against the scalar formula (PyTorch AdamW semantics).
    let cfg1 = AdamW {
        lr: 0.1,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.01,
        step: 1,
    };
    let (p0, g) = (0.5f32, -0.2f32);
    let mut p = up(&b, &[p0]);
    let (mut m, mut v) = (
        b.zeros(1, MemKind::Optim).unwrap(),
        b.zeros(1, MemKind::Optim).unwrap(),
    );
    b.adamw(&mut p, &up(&b, &[g]), &mut m, &mut v, &cfg1, None);
    b.adamw(
        &mut p,
        &up(&b, &[g]),
        &mut m,
        &mut v,
        &AdamW { step: 2, ..cfg1 },
        None,
    );
    let mut pe = p0 as f64;
    let (mut me, mut ve) = (0.0f64, 0.0f64);
    for t in 1..=2 {
        me = 0.9 * me + 0.1 * g as f64;
        ve = 0.999 * ve + 0.001 * (g as f64).powi(2);
        let mh = me / (1.0 - 0.9f64.powi(t));
        let vh = ve / (1.0 - 0.999f64.powi(t));
        pe -= 0.1 * (mh / (vh.sqrt() + 1e-8) + 0.01 * pe);
    }
    assert!((p.buf[0] as f64 - pe).abs() < 1e-6, "{} vs {pe}", p.buf[0]);
}

#[test]
fn ledger_counts_every_tensor_by_kind() {
    let b = Cpu::new();
    let t = b.zeros(1000, MemKind::Activation).unwrap();
    let u = b.upload(&[1.0; 10], MemKind::Trainable).unwrap();
    let s = b.ledger().snapshot();
    assert_eq!(s.current_of(MemKind::Activation), 4000);
    assert_eq!(s.current_of(MemKind::Trainable), 40);
    drop(t);
    drop(u);
    let s = b.ledger().snapshot();
    assert_eq!(s.total_current, 0);
    assert_eq!(s.total_peak, 4040);
}

#[test]
fn rmsnorm_backward_matches_finite_differences() {
    let b = Cpu::new();
    let mut rng = StdRng::seed_from_u64(9);
    for (rows, cols) in [(5, 37), (3, 1), (2, 70)] {
        let x = rnd(&mut rng, rows * cols, 2.0);
        let gamma = rnd(&mut rng, cols, 1.5);
        let w = rnd(&mut rng, rows * cols, 1.0);
        let fwd = |x: &[f32], gamma: &[f32]| {
            let mut y = b.zeros(rows * cols, MemKind::Scratch).unwrap();
            let mut r = b.zeros(rows, MemKind::Scratch).unwrap();
            b.rmsnorm_forward(&up(&b, x), &up(&b, gamma), &mut y, &mut r, rows, cols, 1e-5);
            (y, r)
        };
        let (y, rstd) = fwd(&x, &gamma);
        // Closed form: y = x / sqrt(mean x² + eps) · γ.
        for r in 0..rows {
            let xr = &x[r * cols..(r + 1) * cols];
            let s = 1.0 / (dot(xr, xr) / cols as f64 + 1e-5).sqrt();
            assert!((rstd.buf[r] as f64 - s).abs() < 1e-5 * s);
            for c in 0..cols {
                let want = xr[c] as f64 * s * gamma[c] as f64;
                assert!((y.buf[r * cols + c] as f64 - want).abs() < 1e-5 * (1.0 + want.abs()));
            }
        }
        let mut dx = up(&b, &vec![f32::NAN; rows * cols]); // written, not accumulated
        let mut dg = up(&b, &vec![0.25; cols]); // accumulates: starts non-zero on purpose
        b.rmsnorm_backward(
            &up(&b, &w),
            &up(&b, &x),
            &up(&b, &gamma),
            &rstd,
            &mut dx,
            Some(&mut dg),
            rows,
            cols,
        );
        check_grad("rmsnorm dx", &x, &dx.buf, 60, |x| {
            dot(&fwd(x, &gamma).0.buf, &w)
        });
        let dg: Vec<f32> = dg.buf.iter().map(|v| v - 0.25).collect();
        check_grad("rmsnorm dgamma", &gamma, &dg, cols, |g| {
            dot(&fwd(&x, g).0.buf, &w)
        });
    }
}

#[test]
fn swiglu_backward_matches_finite_differences() {
    let b = Cpu::new();
    let mut rng = StdRng::seed_from_u64(10);
    let n = 301;
    let gate = rnd(&mut rng, n, 4.0);
    let upv = rnd(&mut rng, n, 2.0);
    let w = rnd(&mut rng, n, 1.0);
    let fwd = |g: &[f32], u: &[f32]| {
        let mut o = b.zeros(n, MemKind::Scratch).unwrap();
        b.swiglu_forward(&up(&b, g), &up(&b, u), &mut o);
        o
    };
    // Closed form: silu(z) = z·σ(z).
    let o = fwd(&gate, &upv);
    for i in 0..n {
        let (g, u) = (gate[i] as f64, upv[i] as f64);
        let want = g / (1.0 + (-g).exp()) * u;
        assert!((o.buf[i] as f64 - want).abs() < 1e-6 * (1.0 + want.abs()));
    }
    let (mut dg, mut du) = (
        b.zeros(n, MemKind::Scratch).unwrap(),
        b.zeros(n, MemKind::Scratch).unwrap(),
    );
    b.swiglu_backward(&up(&b, &gate), &up(&b, &upv), &up(&b, &w), &mut dg, &mut du);
    check_grad("swiglu dgate", &gate, &dg.buf, n, |g| {
        dot(&fwd(g, &upv).buf, &w)
    });
    check_grad("swiglu dup", &upv, &du.buf, n, |u| {
        dot(&fwd(&gate, u).buf, &w)
    });
    // Far tails: σ saturates to 0 or 1 without NaN (e^−z overflows to +∞ below −88.7).
    let tails = [-200.0f32, -90.0, 90.0, 200.0];
    let mut o = b.zeros(4, MemKind::Scratch).unwrap();
    b.swiglu_forward(&up(&b, &tails), &up(&b, &[1.0; 4]), &mut o);
    assert_eq!(
        o.buf.iter().map(|v| v.abs()).collect::<Vec<_>>(),
        [0.0, 0.0, 90.0, 200.0]
    );
    let (mut dg, mut du) = (
        b.zeros(4, MemKind::Scratch).unwrap(),
        b.zeros(4, MemKind::Scratch).unwrap(),
    );
    b.swiglu_backward(
        &up(&b, &tails),
        &up(&b, &[1.0; 4]),
        &up(&b, &[1.0; 4]),
        &mut dg,
        &mut du,
    );
    assert_eq!(
        dg.buf.iter().map(|v| v.abs()).collect::<Vec<_>>(),
        [0.0, 0.0, 1.0, 1.0]
    );
}

/// A RoPE table for `positions` positions of head dim `d` from arbitrary angles (the op does
/// not care how they were made; `model::rope` has its own test against transformers).
fn rope_angles(rng: &mut StdRng, positions: usize, d: usize) -> Vec<f32> {
    (0..positions * d / 2)
        .flat_map(|_| {
            let a = rng.random_range(-3.2f32..3.2);
            [a.cos(), a.sin()]
        })
        .collect()
}

#[test]
fn rope_is_a_rotation_and_its_inverse_is_the_backward() {
    let b = Cpu::new();
    let mut rng = StdRng::seed_from_u64(11);
    let (n, heads, d, positions) = (7, 3, 10, 12);
    let table = rope_angles(&mut rng, positions, d);
    let pos: Vec<u32> = vec![0, 11, 3, 3, 7, 1, 10];
    let ids = b.ids(&pos).unwrap();
    let tt = up(&b, &table);
    let x = rnd(&mut rng, n * heads * d, 1.0);
    let w = rnd(&mut rng, n * heads * d, 1.0);
    let rope = |x: &[f32], inverse: bool| {
        let mut y = up(&b, &vec![f32::NAN; n * heads * d]);
        b.rope(&up(&b, x), &mut y, &tt, &ids, heads, d, inverse);
        y.buf
    };
    // Closed form: HF's x·cos + rotate_half(x)·sin, head by head.
    let y = rope(&x, false);
    let half = d / 2;
    for r in 0..n {
        for h in 0..heads {
            for i in 0..d {
                let base = (r * heads + h) * d;
                let j = i % half;
                let (c, s) = (
                    table[(pos[r] as usize * half + j) * 2],
                    table[(pos[r] as usize * half + j) * 2 + 1],
                );
                let rot = if i < half {
                    -x[base + i + half]
                } else {
                    x[base + i - half]
                };
                let want = x[base + i] * c + rot * s;
                assert!(
                    (y[base + i] - want).abs() < 1e-6,
                    "row {r} head {h} col {i}"
                );
            }
        }
    }
    // Norm preserved per head pair, and the inverse undoes the rotation.
    assert!((dot(&y, &y) - dot(&x, &x)).abs() < 1e-4 * dot(&x, &x));
    let back = rope(&y, true);
    for (a, b) in back.iter().zip(&x) {
        assert!((a - b).abs() < 1e-6, "{a} vs {b}");
    }
    // As a linear map: ∂(Σ w ⊙ rope(x))/∂x = rope(w, inverse).
    let g = rope(&w, true);
    check_grad("rope", &x, &g, n * heads * d, |x| dot(&rope(x, false), &w));
    // And the inverse map's backward is the forward.
    let g = rope(&w, false);
    check_grad("rope inverse", &x, &g, 50, |x| dot(&rope(x, true), &w));
}

#[test]
fn grouped_query_attention_backward_matches_finite_differences() {
    let b = Cpu::new();
    let mut rng = StdRng::seed_from_u64(12);
    let (batch, heads, tq, tk, d) = (2, 4, 3, 5, 3);
    for kv_heads in [1, 2, heads] {
        for causal in [true, false] {
            let spec = Attn {
                batch,
                heads,
                kv_heads,
                tq,
                tk,
                scale: 0.6,
                causal,
            };
            let (nq, nk) = (batch * tq * heads * d, batch * tk * kv_heads * d);
            let q = rnd(&mut rng, nq, 1.0);
            let k = rnd(&mut rng, nk, 1.0);
            let v = rnd(&mut rng, nk, 1.0);
            let w = rnd(&mut rng, nq, 1.0);
            let z = |n| b.zeros(n, MemKind::Scratch).unwrap();
            let fwd = |q: &[f32], k: &[f32], v: &[f32]| {
                let (mut p, mut c, mut s) = (z(spec.len()), z(nq), z(spec.len()));
                b.attention_forward(
                    &up(&b, q),
                    &up(&b, k),
                    &up(&b, v),
                    None,
                    &mut p,
                    &mut c,
                    &mut s,
                    &spec,
                    d,
                )
                .unwrap();
                (p, c)
            };
            let (p, _) = fwd(&q, &k, &v);
            let (mut dq, mut dk, mut dv) = (z(nq), z(nk), z(nk));
            let (mut t1, mut t2) = (z(spec.len()), z(spec.len()));
            b.attention_backward(
                &up(&b, &q),
                &up(&b, &k),
                &up(&b, &v),
                &p,
                &up(&b, &w),
                &mut dq,
                &mut dk,
                &mut dv,
                &mut t1,
                &mut t2,
                &spec,
                d,
            )
            .unwrap();
            let name = format!("attention kv_heads {kv_heads} causal {causal}");
            check_grad(&format!("{name} dq"), &q, &dq.buf, nq, |q| {
                dot(&fwd(q, &k, &v).1.buf, &w)
            });
            check_grad(&format!("{name} dk"), &k, &dk.buf, nk, |k| {
                dot(&fwd(&q, k, &v).1.buf, &w)
            });
            check_grad(&format!("{name} dv"), &v, &dv.buf, nk, |v| {
                dot(&fwd(&q, &k, v).1.buf, &w)
            });
        }
    }
}
