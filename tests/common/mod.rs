//! Shared helpers for the GPU test files: random data, the tolerance check, the test GPU.
#![allow(dead_code)]

use rand::{Rng, SeedableRng};

// Not every test file that shares these helpers needs a GPU (`cpu_fused.rs` does not).
#[allow(unused_imports)]
pub use adarank::backend::gpu::test_gpu;

pub fn rand_vec(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

/// Asserts |got − want| ≤ tol · (1 + |want|) for every element: an absolute tolerance near
/// zero, a relative one for large values.
pub fn assert_close(what: &str, got: &[f32], want: &[f32], tol: f32) {
    assert_eq!(got.len(), want.len(), "{what}: lengths differ");
    let mut worst = (0usize, 0.0f32);
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let err = (g - w).abs() / (1.0 + w.abs());
        let bad = err.is_nan() || err > tol;
        if bad && (err > worst.1 || err.is_nan()) {
            worst = (i, if err.is_nan() { f32::INFINITY } else { err });
        }
    }
    assert!(
        worst.1 == 0.0,
        "{what}: element {} is {} but the CPU backend says {} (scaled error {} > {tol})",
        worst.0,
        got[worst.0],
        want[worst.0],
        worst.1
    );
}
