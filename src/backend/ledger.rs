//! Memory ledger: bytes held by each kind of tensor, current and peak, on any backend.
//!
//! Every tensor a backend allocates carries a [`LedgerGuard`]; dropping the tensor returns its
//! bytes. The peak is what the results table reports as "peak memory", so it counts the bytes the
//! training step really holds, not what an allocator may have cached.

use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// What a tensor is for. Reported separately so that a resize shows up where it belongs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, PartialOrd, Ord)]
pub enum MemKind {
    /// Frozen pretrained weights (W0, embeddings, norms in LoRA mode).
    Frozen,
    /// Trainable parameters (LoRA A/B, heads, or everything in full fine-tuning).
    Trainable,
    /// Gradients of trainable parameters.
    Grad,
    /// Optimizer state (AdamW first and second moments).
    Optim,
    /// Activations saved for the backward pass.
    Activation,
    /// Temporary buffers of a single op or step.
    Scratch,
}

impl MemKind {
    pub const ALL: [MemKind; 6] = [
        MemKind::Frozen,
        MemKind::Trainable,
        MemKind::Grad,
        MemKind::Optim,
        MemKind::Activation,
        MemKind::Scratch,
    ];

    pub fn name(self) -> &'static str {
        match self {
            MemKind::Frozen => "frozen",
            MemKind::Trainable => "trainable",
            MemKind::Grad => "grad",
            MemKind::Optim => "optim",
            MemKind::Activation => "activation",
            MemKind::Scratch => "scratch",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

#[derive(Default, Debug)]
struct Counters {
    current: [AtomicU64; 6],
    peak: [AtomicU64; 6],
    total_current: AtomicU64,
    total_peak: AtomicU64,
}

/// Shared byte counters. Cheap to clone (an `Arc`).
#[derive(Clone, Default, Debug)]
pub struct Ledger {
    inner: Arc<Counters>,
}

/// A point-in-time reading of the ledger.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct LedgerSnapshot {
    /// Current bytes by kind, in [`MemKind::ALL`] order.
    pub current: [u64; 6],
    /// Peak bytes by kind since the last [`Ledger::reset_peak`].
    pub peak: [u64; 6],
    pub total_current: u64,
    pub total_peak: u64,
}

impl LedgerSnapshot {
    pub fn current_of(&self, kind: MemKind) -> u64 {
        self.current[kind.index()]
    }
    pub fn peak_of(&self, kind: MemKind) -> u64 {
        self.peak[kind.index()]
    }
}

impl Ledger {
    pub fn new() -> Self {
        Self::default()
    }

    /// Count `bytes` of `kind` as held until the returned guard drops.
    pub fn hold(&self, kind: MemKind, bytes: u64) -> LedgerGuard {
        let c = &self.inner;
        let i = kind.index();
        let now = c.current[i].fetch_add(bytes, Ordering::Relaxed) + bytes;
        c.peak[i].fetch_max(now, Ordering::Relaxed);
        let total = c.total_current.fetch_add(bytes, Ordering::Relaxed) + bytes;
        c.total_peak.fetch_max(total, Ordering::Relaxed);
        LedgerGuard {
            ledger: self.clone(),
            kind,
            bytes,
        }
    }

    pub fn snapshot(&self) -> LedgerSnapshot {
        let c = &self.inner;
        let mut s = LedgerSnapshot::default();
        for k in MemKind::ALL {
            s.current[k.index()] = c.current[k.index()].load(Ordering::Relaxed);
            s.peak[k.index()] = c.peak[k.index()].load(Ordering::Relaxed);
        }
        s.total_current = c.total_current.load(Ordering::Relaxed);
        s.total_peak = c.total_peak.load(Ordering::Relaxed);
        s
    }

    /// Restart peak tracking from the current values (e.g. at the start of an arm).
    pub fn reset_peak(&self) {
        let c = &self.inner;
        for k in MemKind::ALL {
            let cur = c.current[k.index()].load(Ordering::Relaxed);
            c.peak[k.index()].store(cur, Ordering::Relaxed);
        }
        c.total_peak
            .store(c.total_current.load(Ordering::Relaxed), Ordering::Relaxed);
    }
}

/// Returns its bytes to the ledger on drop.
#[derive(Debug)]
pub struct LedgerGuard {
    ledger: Ledger,
    kind: MemKind,
    bytes: u64,
}

impl LedgerGuard {
    pub fn kind(&self) -> MemKind {
        self.kind
    }
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

impl Drop for LedgerGuard {
    fn drop(&mut self) {
        let c = &self.ledger.inner;
        c.current[self.kind.index()].fetch_sub(self.bytes, Ordering::Relaxed);
        c.total_current.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hold_and_release_track_current_and_peak() {
        let l = Ledger::new();
        let a = l.hold(MemKind::Trainable, 100);
        let b = l.hold(MemKind::Grad, 50);
        drop(a);
        let s = l.snapshot();
        assert_eq!(s.current_of(MemKind::Trainable), 0);
        assert_eq!(s.peak_of(MemKind::Trainable), 100);
        assert_eq!(s.total_peak, 150);
        assert_eq!(s.total_current, 50);
        drop(b);
        l.reset_peak();
        assert_eq!(l.snapshot().total_peak, 0);
    }
}
