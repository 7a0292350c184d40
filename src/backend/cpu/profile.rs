//! Wall time per op of the CPU backend, for `adarank bench train --profile`.
//!
//! Each op runs to completion on the calling thread (rayon inside it), so the wall time between
//! its entry and its return is the op's whole cost, threads that sit idle in it included — which
//! a sampling profiler does not show. Off by default: then a span is one branch and no clock read.

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
