//! GEMM floating-point operations of a pass, written out from the GEMMs the model issues
//! (`src/model/block.rs`, `linear.rs`, `heads.rs`); elementwise ops, norms and the softmax are
//! not counted, so a step's time is bounded below by these FLOPs at the device's GEMM rate.
//! `tests/plan_memory.rs` holds the count to the CPU backend's own tally of the GEMMs it ran.

use super::shapes::{ArmShape, BatchShape};
use crate::adapter::ModuleKind;
use crate::model::{Head, ModelConfig, Pooling};
use serde::Serialize;

/// GEMM FLOPs of one micro-batch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct PassFlops {
    pub forward: f64,
    pub backward: f64,
}

impl PassFlops {
    pub fn total(&self) -> f64 {
        self.forward + self.backward
    }
}

/// GEMM FLOPs of a forward (and, with `backward`, the backward) pass of a model at batch shape
/// `b`, with adapters at `ranks` (layer-major, `ModelConfig::module_kinds` order; ignored when
/// `full`).
pub fn pass_flops(
    model: &ModelConfig,
    head: &Head,
    full: bool,
    ranks: &[usize],
    b: BatchShape,
    backward: bool,
) -> PassFlops {
    let n = b.tokens() as f64;
    let t = b.seq as f64;
    let bh = (b.batch * model.heads) as f64;
    let d = model.head_dim() as f64;
    let mut fwd = 0.0;
    let mut bwd = 0.0;
    let kinds = model.module_kinds();
    for layer in 0..model.layers {
        for &kind in kinds {
            let (rows, cols) = model.module_shape(kind);
            let (rows, cols) = (rows as f64, cols as f64);
            let r = if full {
                0.0
            } else {
                model
                    .slot_index(layer, kind)
                    .and_then(|i| ranks.get(i))
                    .copied()
                    .unwrap_or(0) as f64
            };
            // y = x·W0ᵀ; the adapter's x·Aᵀ and (x·Aᵀ)·Bᵀ
            fwd += 2.0 * n * rows * cols + 2.0 * n * r * (rows + cols);
            // Below layer 0 only the embeddings remain: q, k and v of layer 0 pass no gradient
            // down unless the embeddings train.
            let dx =
                full || layer > 0 || !matches!(kind, ModuleKind::Q | ModuleKind::K | ModuleKind::V);
            if full {
                bwd += 2.0 * rows * cols * n; // dW
            }
            if dx {
                bwd += 2.0 * n * rows * cols; // dx = dy·W0
            }
            // dmid = dy·B, dB, dA; dx += dxa·A
            bwd += 2.0 * n * r * rows + 2.0 * rows * r * n + 2.0 * r * cols * n;
            if dx {
                bwd += 2.0 * n * cols * r;
            }
        }
        // scores = q·kᵀ and ctx = probs·v; backward: dprobs, dv, dq, dk
        fwd += 2.0 * 2.0 * bh * t * t * d;
        bwd += 4.0 * 2.0 * bh * t * t * d;
    }
    let (hf, hb) = head_flops(model, head, full, b);
    PassFlops {
        forward: fwd + hf,
        backward: if backward { bwd + hb } else { 0.0 },
    }
}

/// (forward, backward) GEMM FLOPs of the head (`Model::head_pass`).
fn head_flops(model: &ModelConfig, head: &Head, full: bool, b: BatchShape) -> (f64, f64) {
    let n = b.tokens() as f64;
    let (bt, t, c) = (b.batch as f64, b.seq as f64, model.hidden as f64);
    match *head {
        Head::Classify { classes, pooling } => {
            let k = classes as f64;
            // BERT's pooler (`pooling = cls`): z = x·W_pᵀ; backward dx and (full) dW_p
            let (pf, pb) = match pooling {
                Pooling::Cls => (
                    2.0 * bt * c * c,
                    2.0 * bt * c * c + if full { 2.0 * c * c * bt } else { 0.0 },
                ),
                Pooling::Mean => (0.0, 0.0),
            };
            // pooled = pw·hidden, logits = pooled·Wᵀ; backward dW, dpooled, dhidden
            (
                2.0 * bt * t * c + 2.0 * bt * k * c + pf,
                2.0 * k * c * bt + 2.0 * bt * c * k + 2.0 * bt * t * c + pb,
            )
        }
        // The planted task regresses the hidden states themselves: no GEMM.
        Head::Regress => (0.0, 0.0),
        Head::LanguageModel => {
            let v = model.vocab as f64;
            let dw = if full { 2.0 * v * c * n } else { 0.0 };
            (2.0 * n * v * c, 2.0 * n * c * v + dw)
        }
        Head::Span => (2.0 * n * 2.0 * c, 2.0 * 2.0 * c * n + 2.0 * n * c * 2.0),
    }
}

/// GEMM FLOPs of one optimizer step of the arm (all its micro-batches) with adapters at `ranks`.
pub fn step_flops(s: &ArmShape, ranks: &[usize]) -> PassFlops {
    let p = pass_flops(&s.model, &s.head, s.full, ranks, s.train, true);
    let a = s.accum as f64;
    PassFlops {
        forward: a * p.forward,
        backward: a * p.backward,
    }
}
