//! bf16 frozen weights on the CPU backend: storage, and the bf16 GEMM against an f64 product of
//! the same operands — B rounded to bf16, A as the kernel splits it (hi + lo, two bf16) — on odd
//! shapes (edges of every block size) and on both orientations the model uses (x·Wᵀ forward,
//! dy·W backward), plus the transposed-A cases; and the split itself against f32.
//!
//! Tolerance: products of two bf16 values are exact in f32, so the kernel differs from the f64
//! oracle only by its f32 additions: |Δ| ≤ 1e-5 · Σ_k |a_ik·b_kj| (+ the β·C term's rounding).

use adarank::backend::cpu::bf16::{self, Bf16Mat, Shape};
use adarank::backend::cpu::Cpu;
use adarank::backend::{Backend, DType, Gemm, MemKind};
use rand::{Rng, SeedableRng};

fn rnd(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..n).map(|_| rng.random_range(-2.0f32..2.0)).collect()
}

fn round(v: &[f32]) -> Vec<f32> {
    v.iter()
        .map(|&x| bf16::from_bf16(bf16::to_bf16(x)))
        .collect()
}

/// C = α·op(A)·op(B) + β·C in f64 over split A and bf16-rounded B, and the error bound per
/// element.
fn oracle(s: &Shape, a: &[f32], b: &[f32], c: &[f32]) -> (Vec<f32>, Vec<f64>) {
    let a: Vec<f32> = a.iter().map(|&x| bf16::split_value(x)).collect();
    let b = round(b);
    let mut out = vec![0.0f32; s.m * s.n];
    let mut bound = vec![0.0f64; s.m * s.n];
    for i in 0..s.m {
        for j in 0..s.n {
            let (mut acc, mut mag) = (0.0f64, 0.0f64);
            for k in 0..s.k {
                let av = if s.trans_a {
                    a[k * s.m + i]
                } else {
                    a[i * s.k + k]
                } as f64;
                let bv = if s.trans_b {
                    b[j * s.k + k]
                } else {
                    b[k * s.n + j]
                } as f64;
                acc += av * bv;
                mag += (av * bv).abs();
            }
            let old = if s.beta == 0.0 {
                0.0
            } else {
                s.beta as f64 * c[i * s.n + j] as f64
            };
            out[i * s.n + j] = (s.alpha as f64 * acc + old) as f32;
            bound[i * s.n + j] = 1e-5 * (s.alpha.abs() as f64 * mag + old.abs()) + 1e-30;
        }
    }
    (out, bound)
}

fn check(what: &str, got: &[f32], want: &[f32], bound: &[f64]) {
    for (i, ((g, w), b)) in got.iter().zip(want).zip(bound).enumerate() {
        assert!(
            ((g - w).abs() as f64) <= *b,
            "{what}: element {i} is {g}, the f64 oracle says {w} (bound {b:.3e})"
        );
    }
}

const SHAPES: &[(usize, usize, usize)] = &[
    (1, 1, 1),
    (3, 5, 2),
    (7, 13, 5),
    (9, 47, 255),
    (37, 49, 257),
    (65, 97, 300),
    (130, 48, 513),
    (64, 96, 256),
];

/// The kernel (native where this CPU has AVX-512 BF16) and the widened fallback, both against
/// the f64 oracle, for every orientation, α and β.
#[test]
fn bf16_gemm_matches_the_f64_oracle_on_odd_shapes() {
    eprintln!("native bf16 kernel: {}", bf16::native());
    let ws = bf16::Workspace::default();
    for (si, &(m, n, k)) in SHAPES.iter().enumerate() {
        for (trans_a, trans_b) in [(false, true), (false, false), (true, false), (true, true)] {
            for (alpha, beta) in [(1.0f32, 0.0f32), (0.5, 1.0), (-2.0, 0.25)] {
                let s = Shape {
                    m,
                    n,
                    k,
                    trans_a,
                    trans_b,
                    alpha,
                    beta,
                };
                let seed = si as u64 * 100;
                let a = rnd(m * k, seed + 1);
                let bw = rnd(k * n, seed + 2);
                let c0 = rnd(m * n, seed + 3);
                let bbits: Vec<u16> = bw.iter().map(|&x| bf16::to_bf16(x)).collect();
                let (br, bc) = if trans_b { (n, k) } else { (k, n) };
                let bm = Bf16Mat {
                    data: &bbits,
                    rows: br,
                    cols: bc,
                };
                let (want, bound) = oracle(&s, &a, &bw, &c0);
                let what = format!("{m}×{n}×{k} ta {trans_a} tb {trans_b} α {alpha} β {beta}");
                for threads in [1, 2] {
                    let mut c = c0.clone();
                    bf16::gemm(&ws, &s, &a, bm, &mut c, threads);
                    check(&format!("{what}, {threads} threads"), &c, &want, &bound);
                }
                let mut c = c0.clone();
                bf16::gemm_widened(&s, &a, bm, &mut c, 1);
                check(&format!("{what}, widened"), &c, &want, &bound);
            }
        }
    }
}

/// A bf16 tensor through the backend: half the ledger bytes, values rounded on upload and
/// widened on download, and `matmul` with it as B equal to the f64 oracle.
#[test]
fn bf16_tensors_through_the_cpu_backend() {
    let be = Cpu::new();
    let (m, n, k) = (33, 21, 19);
    let w = rnd(n * k, 5);
    let before = be.ledger().snapshot().total_current;
    let wt = be.upload_bf16(&w, MemKind::Frozen).unwrap();
    assert_eq!(wt.dtype(), DType::Bf16);
    assert_eq!(wt.len(), n * k);
    assert_eq!(
        be.ledger().snapshot().total_current - before,
        ((n * k).div_ceil(2) * 4) as u64,
        "two values per 4-byte word"
    );
    assert_eq!(be.download(&wt).unwrap(), round(&w));
    let x = rnd(m * k, 6);
    let xt = be.upload(&x, MemKind::Scratch).unwrap();
    let mut y = be.zeros(m * n, MemKind::Scratch).unwrap();
    // y = x · Wᵀ (a linear layer)
    be.matmul(&xt, &wt, &mut y, &Gemm::nt(m, n, k));
    let s = Shape {
        m,
        n,
        k,
        trans_a: false,
        trans_b: true,
        alpha: 1.0,
        beta: 0.0,
    };
    let (want, bound) = oracle(&s, &x, &w, &vec![0.0; m * n]);
    check("backend matmul x·Wᵀ", &y.buf, &want, &bound);
    // dx = dy · W (its backward)
    let dy = rnd(m * n, 7);
    let dyt = be.upload(&dy, MemKind::Scratch).unwrap();
    let mut dx = be.zeros(m * k, MemKind::Scratch).unwrap();
    be.matmul(&dyt, &wt, &mut dx, &Gemm::nn(m, k, n));
    let s = Shape {
        m,
        n: k,
        k: n,
        trans_a: false,
        trans_b: false,
        alpha: 1.0,
        beta: 0.0,
    };
    let (want, bound) = oracle(&s, &dy, &w, &vec![0.0; m * k]);
    check("backend matmul dy·W", &dx.buf, &want, &bound);
    // An odd-length write rounds again; the last word's high half stays zero.
    let mut t = be.upload_bf16(&[1.0, 2.0, 3.0], MemKind::Frozen).unwrap();
    // 1 + 2⁻⁸ lies halfway between two bf16 values and rounds to the even one, 1.
    be.write(&mut t, &[1.0 + 1.0 / 256.0, -0.0, 65504.0])
        .unwrap();
    assert_eq!(be.download(&t).unwrap(), vec![1.0, -0.0, 65536.0]);
}

#[test]
fn split_keeps_activations_to_sixteen_bits() {
    // hi + lo of a value is within 2^-16 of it relatively (one bf16 alone: 2^-9), for values
    // across the exponent range; infinities and NaN pass through hi.
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    for _ in 0..100_000 {
        let x: f32 = rng.random_range(-1.0f32..1.0) * 2f32.powi(rng.random_range(-60..60));
        let got = bf16::split_value(x);
        assert!(
            (got - x).abs() <= x.abs() * 2f32.powi(-16),
            "split({x}) = {got}"
        );
    }
    assert_eq!(bf16::split_value(f32::INFINITY), f32::INFINITY);
    assert_eq!(bf16::split_value(f32::NEG_INFINITY), f32::NEG_INFINITY);
    assert!(bf16::split_value(f32::NAN).is_nan());
    assert_eq!(bf16::split_value(0.0), 0.0);
}
