//! Wall time per op of a backend, for `adarank bench train --profile`.
//!
//! On the CPU each op runs to completion on the calling thread (rayon inside it), so the wall
//! time between its entry and its return is the op's whole cost, threads that sit idle in it
//! included — which a sampling profiler does not show. The GPU backend, when profiling, submits
//! each dispatch alone and waits for it, so a span is the kernel's run plus one submit and wait
//! (~0.2 ms on lavapipe). Off by default: then a span is one branch and no clock read.

use super::{DType, Gemm};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

/// Totals of one op key.
#[derive(Clone, Debug, Default)]
pub struct OpTotal {
    pub key: String,
    pub calls: u64,
    pub secs: f64,
    /// GEMM FLOPs of these calls (0 for non-GEMM ops).
    pub flops: f64,
}

#[derive(Default)]
pub struct Profile {
    on: bool,
    rows: Mutex<HashMap<String, OpTotal>>,
}

/// Records the time from its creation to its drop under `key`.
pub struct Span<'a> {
    profile: &'a Profile,
    key: String,
    flops: f64,
    t0: Instant,
}

impl Drop for Span<'_> {
    fn drop(&mut self) {
        let secs = self.t0.elapsed().as_secs_f64();
        let mut rows = self.profile.rows.lock().unwrap_or_else(|e| e.into_inner());
        let row = rows.entry(std::mem::take(&mut self.key)).or_default();
        row.calls += 1;
        row.secs += secs;
        row.flops += self.flops;
    }
}

impl Profile {
    pub fn new(on: bool) -> Self {
        Profile {
            on,
            rows: Mutex::default(),
        }
    }

    pub fn is_on(&self) -> bool {
        self.on
    }

    /// A span named by `key()` (called only when profiling is on).
    pub fn span(&self, key: impl FnOnce() -> String, flops: f64) -> Option<Span<'_>> {
        self.on.then(|| Span {
            profile: self,
            key: key(),
            flops,
            t0: Instant::now(),
        })
    }

    /// Totals so far, slowest first; clears them.
    pub fn take(&self) -> Vec<OpTotal> {
        let mut rows = self.rows.lock().unwrap_or_else(|e| e.into_inner());
        let mut v: Vec<OpTotal> = rows
            .drain()
            .map(|(key, mut t)| {
                t.key = key;
                t
            })
            .collect();
        v.sort_by(|a, b| b.secs.total_cmp(&a.secs));
        v
    }
}

/// The profile key of a GEMM: layouts, m×n×k, batch, whether it accumulates, bf16 B.
pub fn gemm_key(spec: &Gemm, b: DType) -> String {
    let t = |x: bool| if x { 'T' } else { 'N' };
    let batch = if spec.batch > 1 {
        format!(" ×{}", spec.batch)
    } else {
        String::new()
    };
    let acc = if spec.beta != 0.0 { " +=" } else { "" };
    let w = if b.is_f32() {
        String::new()
    } else {
        format!(" {}", b.name())
    };
    format!(
        "matmul {}{} {}×{}×{}{batch}{acc}{w}",
        t(spec.trans_a),
        t(spec.trans_b),
        spec.m,
        spec.n,
        spec.k
    )
}
