//! Shared helpers of the test files: random data, the tolerance check, the test GPU, and an
//! adapter store that counts what is read back from it.
#![allow(dead_code, unused_imports)]

use rand::{Rng, SeedableRng};

// Not every test file that shares these helpers needs a GPU (`cpu_fused.rs` does not).
#[allow(unused_imports)]
pub use adarank::testkit::test_gpu;

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
        "{what}: element {} is {} but the oracle says {} (scaled error {} > {tol})",
        worst.0,
        got[worst.0],
        want[worst.0],
        worst.1
    );
}

/// The linear planted task's store, counting what a rank engine reads back from it: adapter
/// tensors and gate gradients (`host_reads`), gradient statistics (`stat_reads`) and input
/// samples (`samples`) — on a real model, each is a device download.
pub struct Counting {
    pub inner: adarank::testkit::planted_layers::PlantedStore,
    pub host_reads: std::cell::Cell<usize>,
    pub stat_reads: std::cell::Cell<usize>,
    pub samples: std::cell::Cell<usize>,
}

impl Counting {
    pub fn new(inner: adarank::testkit::planted_layers::PlantedStore) -> Self {
        Self {
            inner,
            host_reads: Default::default(),
            stat_reads: Default::default(),
            samples: Default::default(),
        }
    }
}

fn bump(c: &std::cell::Cell<usize>) {
    c.set(c.get() + 1);
}

impl adarank::adapter::AdapterStore for Counting {
    fn adapters(&self) -> Vec<adarank::adapter::AdapterInfo> {
        self.inner.adapters()
    }
    fn set_resize_options(&mut self, o: adarank::adapter::ResizeOptions) -> anyhow::Result<()> {
        self.inner.set_resize_options(o)
    }
    fn adapter_host(&self, i: usize) -> anyhow::Result<adarank::adapter::AdapterHost> {
        bump(&self.host_reads);
        self.inner.adapter_host(i)
    }
    fn set_adapter_host(
        &mut self,
        i: usize,
        h: &adarank::adapter::AdapterHost,
    ) -> anyhow::Result<()> {
        self.inner.set_adapter_host(i, h)
    }
    fn frozen_weight(&self, i: usize) -> anyhow::Result<adarank::adapter::HostTensor> {
        self.inner.frozen_weight(i)
    }
    fn resize_adapter(&mut self, i: usize, rank: usize) -> anyhow::Result<()> {
        self.inner.resize_adapter(i, rank)
    }
    fn input_sample(&self, i: usize) -> Option<adarank::adapter::HostTensor> {
        bump(&self.samples);
        self.inner.input_sample(i)
    }
    fn gather_grad_stats(&mut self, i: usize) -> anyhow::Result<()> {
        self.inner.gather_grad_stats(i)
    }
    fn grad_stats(&self, i: usize) -> anyhow::Result<adarank::adapter::GradStats> {
        bump(&self.stat_reads);
        self.inner.grad_stats(i)
    }
    fn reset_grad_stats(&mut self, i: usize) -> anyhow::Result<()> {
        self.inner.reset_grad_stats(i)
    }
    fn set_gates(&mut self, i: usize, g: Option<&[f32]>) -> anyhow::Result<()> {
        self.inner.set_gates(i, g)
    }
    fn gate_grad(&self, i: usize) -> anyhow::Result<Vec<f32>> {
        bump(&self.host_reads);
        self.inner.gate_grad(i)
    }
    fn keep_components(&mut self, i: usize, keep: &[usize]) -> anyhow::Result<()> {
        self.inner.keep_components(i, keep)
    }
    fn update_importance(&mut self, i: usize, beta1: f32, beta2: f32) -> anyhow::Result<()> {
        self.inner.update_importance(i, beta1, beta2)
    }
    fn importance(&self, i: usize) -> anyhow::Result<adarank::adapter::TripletImportance> {
        bump(&self.stat_reads);
        self.inner.importance(i)
    }
    fn set_importance(
        &mut self,
        i: usize,
        t: &adarank::adapter::TripletImportance,
    ) -> anyhow::Result<()> {
        self.inner.set_importance(i, t)
    }
    fn add_orth_grad(&mut self, i: usize, weight: f32) -> anyhow::Result<()> {
        self.inner.add_orth_grad(i, weight)
    }
    fn mask_lambda(&mut self, i: usize, masked: &[bool]) -> anyhow::Result<()> {
        self.inner.mask_lambda(i, masked)
    }
}
