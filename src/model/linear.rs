//! A linear layer y = x·W0ᵀ + b with an optional LoRA adapter on a separate path:
//! y += s·((x·Aᵀ)·diag(m))·Bᵀ, where the component multiplier m is λ in AdaLoRA's SVD form
//! (trained), the rank engine's gates g (set by the engine, not by the optimizer; their
//! gradient ∂L/∂g is accumulated for it), or 1.
//!
//! W0 + s·B·A is never materialised: the adapter costs two thin GEMMs forward and four thin GEMMs
//! backward, and a frozen W0 only pays for dX (no dW0), which is why a LoRA step costs about
//! two thirds of a full fine-tuning step.

use super::param::Param;
use crate::backend::{Backend, Gemm, MemKind, Tensor};
use anyhow::Result;

/// A LoRA adapter slot. At rank 0 it holds no tensors but can be grown later.
pub struct Lora<B: Backend> {
    pub rank: usize,
    /// A: [rank, cols]
    pub a: Option<Param<B>>,
    /// B: [rows, rank]
    pub b: Option<Param<B>>,
    /// λ: [rank] (SVD form only)
    pub lambda: Option<Param<B>>,
    /// λ entries held at 0 (AdaLoRA's pruned triplets): [rank].
    pub mask: Vec<bool>,
    /// Output scale s.
    pub scale: f32,
    /// AdaLoRA's SVD form (λ between A and B).
    pub svd: bool,
    /// Rank at construction: the SVD form's scale is α / init_rank for the adapter's life.
    pub init_rank: usize,
    /// Saved x·Aᵀ of the last forward: [n, rank].
    pub(crate) xa: Option<Tensor<B>>,
    /// Saved (x·Aᵀ)·diag(λ or g) of the last forward (SVD form or gated): [n, rank].
    pub(crate) xal: Option<Tensor<B>>,
    /// Gates on the components, set by the rank engine (LoRA form only).
    pub gates: Option<Gates<B>>,
    /// Gradient statistics accumulated on the device for the rank engine.
    pub acc: Option<GradAcc<B>>,
    /// AdaLoRA's importance averages, kept on the device.
    pub importance: Option<ImportanceState<B>>,
    /// Scratch of AdaLoRA's orthogonality penalty, kept across steps.
    pub orth: Option<OrthScratch<B>>,
}

/// AdaLoRA's importance averages of every entry of A, B and λ (see
/// `Backend::importance_ema`), kept on the device between budget steps: [2, len] each,
/// sensitivity then uncertainty.
pub struct ImportanceState<B: Backend> {
    pub a: Tensor<B>,
    pub b: Tensor<B>,
    pub lambda: Tensor<B>,
}

/// What the orthogonality penalty's gradient needs on the device, for an adapter of rank r:
/// the identity, N = PᵀP − I (or QQᵀ − I) and N/‖N‖_F, all [r, r], and 1/‖N‖_F.
pub struct OrthScratch<B: Backend> {
    pub eye: Tensor<B>,
    pub n: Tensor<B>,
    pub unit: Tensor<B>,
    pub inv: Tensor<B>,
}

/// Soft gates g on an adapter's components: ΔW = s·B·diag(g)·A. The rank engine sets g; the
/// optimizer never updates it; the backward accumulates ∂L/∂g into `grad` (zeroed with the
/// parameter gradients).
pub struct Gates<B: Backend> {
    /// g: [rank]
    pub g: Tensor<B>,
    /// ∂L/∂g: [rank]
    pub grad: Tensor<B>,
}

/// Per-adapter gradient statistics kept on the device between reads, so a training step
/// copies nothing to the host: ‖∇A‖², ‖∇B‖² of the last gathered step, their running sum
/// divided by the rank, and the Gram matrix Σ ∇Bᵀ∇B.
pub struct GradAcc<B: Backend> {
    /// [‖∇A‖², ‖∇B‖²] of the last gathered backward pass: [2]
    pub last: Tensor<B>,
    /// Σ over gathered steps of [‖∇A‖², ‖∇B‖²] / rank: [2]
    pub energy: Tensor<B>,
    /// Σ ∇Bᵀ∇B: [rank, rank]
    pub gram: Tensor<B>,
    /// Gathered steps.
    pub steps: u64,
}

pub struct Linear<B: Backend> {
    /// W0: [rows, cols]
    pub w: Param<B>,
    /// b: [rows] (none in the Llama family, but Qwen2's q, k, v)
    pub bias: Option<Param<B>>,
    pub lora: Option<Lora<B>>,
    pub rows: usize,
    pub cols: usize,
}

/// A scratch tensor of exactly `len` values, reallocated only when the size changes.
pub(crate) fn ensure_len<B: Backend>(
    be: &B,
    t: &mut Option<Tensor<B>>,
    len: usize,
    kind: MemKind,
) -> Result<()> {
    if t.as_ref().map(|t| t.len()) != Some(len) {
        *t = None; // release before allocating, so the ledger peak is honest
        *t = Some(be.zeros(len, kind)?);
    }
    Ok(())
}

/// Scratch of the adapters' backward: two [n, r_max] tensors for the largest rank in use, kept
/// across steps and reallocated only when n or r_max changes (a rank change, a new batch shape).
pub struct AdapterScratch<B: Backend> {
    pair: Option<(Tensor<B>, Tensor<B>)>,
    len: usize,
}

impl<B: Backend> Default for AdapterScratch<B> {
    fn default() -> Self {
        Self { pair: None, len: 0 }
    }
}

impl<B: Backend> AdapterScratch<B> {
    /// Holds exactly two tensors of `len` values (none for 0).
    pub fn ensure(&mut self, be: &B, len: usize) -> Result<()> {
        if len != self.len {
            self.pair = None; // release before allocating, so the ledger peak is honest
            self.len = 0;
            if len > 0 {
                let z = || be.zeros(len, MemKind::Scratch);
                self.pair = Some((z()?, z()?));
            }
            self.len = len;
        }
        Ok(())
    }

    /// The two tensors (at least n·r values for every adapter: see `ensure`).
    fn pair(&mut self, need: usize) -> (&mut Tensor<B>, &mut Tensor<B>) {
        assert!(
            need <= self.len,
            "adapter backward needs {need} scratch values, the workspace has {}",
            self.len
        );
        let (a, b) = self.pair.as_mut().expect("ensured before the backward");
        (a, b)
    }
}

impl<B: Backend> Linear<B> {
    /// x: [n, cols] → y: [n, rows] (written).
    pub fn forward(&mut self, be: &B, x: &Tensor<B>, y: &mut Tensor<B>, n: usize) -> Result<()> {
        self.forward_residual(be, x, None, y, n)
    }

    /// x: [n, cols] → y: [n, rows] = x·W0ᵀ + b (+ residual: [n, rows]) (+ the adapter's term).
    /// Bias and residual are written first and the GEMM accumulates onto them.
    pub fn forward_residual(
        &mut self,
        be: &B,
        x: &Tensor<B>,
        residual: Option<&Tensor<B>>,
        y: &mut Tensor<B>,
        n: usize,
    ) -> Result<()> {
        let (rows, cols) = (self.rows, self.cols);
        // Bias and residual go in first and the GEMM accumulates onto them; with neither, the
        // GEMM overwrites y.
        let gemm = Gemm::nt(n, rows, cols);
        let gemm = match (&self.bias, residual) {
            (Some(b), r) => {
                be.bias_rows(&b.w, r, y, n, rows);
                gemm.accumulate()
            }
            (None, Some(r)) => {
                be.copy(r, y);
                gemm.accumulate()
            }
            (None, None) => gemm,
        };
        be.matmul(x, &self.w.w, y, &gemm);
        if let Some(l) = self.lora.as_mut() {
            let r = l.rank;
            if r == 0 {
                return Ok(());
            }
            let (a, b) = (l.a.as_ref().unwrap(), l.b.as_ref().unwrap());
            ensure_len(be, &mut l.xa, n * r, MemKind::Activation)?;
            let xa = l.xa.as_mut().unwrap();
            // xa: [n, r] = x · Aᵀ
            be.matmul(x, &a.w, xa, &Gemm::nt(n, r, cols));
            let mult = match (&l.lambda, &l.gates) {
                (Some(lam), _) => Some(&lam.w),
                (None, Some(g)) => Some(&g.g),
                (None, None) => None,
            };
            let mid = if let Some(m) = mult {
                ensure_len(be, &mut l.xal, n * r, MemKind::Activation)?;
                let xal = l.xal.as_mut().unwrap();
                // mid: [n, r] = xa · diag(λ or g)
                be.mul_cols(l.xa.as_ref().unwrap(), m, xal, n, r);
                l.xal.as_ref().unwrap()
            } else {
                l.xa.as_ref().unwrap()
            };
            // y += s · mid · Bᵀ
            be.matmul(
                mid,
                &b.w,
                y,
                &Gemm::nt(n, rows, r).alpha(l.scale).accumulate(),
            );
        }
        Ok(())
    }

    /// dy: [n, rows]; x: the forward input [n, cols]. Gradients of trainable parameters
    /// accumulate; dx: [n, cols] is written (or accumulated when `accumulate_dx`), and skipped
    /// when `None` (nothing upstream needs it).
    #[allow(clippy::too_many_arguments)]
    pub fn backward(
        &mut self,
        be: &B,
        x: &Tensor<B>,
        dy: &Tensor<B>,
        dx: Option<&mut Tensor<B>>,
        accumulate_dx: bool,
        n: usize,
        scratch: &mut AdapterScratch<B>,
    ) -> Result<()> {
        let (rows, cols) = (self.rows, self.cols);
        if let Some(g) = self.bias.as_mut().and_then(|b| b.grad()) {
            be.col_sum(dy, g, n, rows, true);
        }
        if let Some(g) = self.w.grad() {
            // dW += dyᵀ · x
            be.matmul(dy, x, g, &Gemm::tn(rows, cols, n).accumulate());
        }
        let mut dx = dx;
        if let Some(dx) = dx.as_deref_mut() {
            // dx = dy · W0
            be.matmul(
                dy,
                &self.w.w,
                dx,
                &Gemm::nn(n, cols, rows).beta(if accumulate_dx { 1.0 } else { 0.0 }),
            );
        }
        let Some(l) = self.lora.as_mut() else {
            return Ok(());
        };
        let r = l.rank;
        if r == 0 {
            return Ok(());
        }
        let s = l.scale;
        let xa = l.xa.as_ref().expect("adapter backward after its forward");
        let (dmid, prod) = scratch.pair(n * r);
        // dmid: [n, r] = s · dy · B
        be.matmul(
            dy,
            &l.b.as_ref().unwrap().w,
            dmid,
            &Gemm::nn(n, r, rows).alpha(s),
        );
        let has_mult = l.lambda.is_some() || l.gates.is_some();
        let mid = l.xal.as_ref().filter(|_| has_mult).unwrap_or(xa);
        if let Some(g) = l.b.as_mut().unwrap().grad() {
            // dB += s · dyᵀ · mid
            be.matmul(dy, mid, g, &Gemm::tn(rows, r, n).alpha(s).accumulate());
        }
        // The multiplier m (λ or the gates) and where its gradient goes.
        let mult = match (l.lambda.as_mut(), l.gates.as_mut()) {
            (Some(lam), _) => Some((&lam.w, lam.opt.as_mut().map(|o| &mut o.g))),
            (None, Some(gt)) => Some((&gt.g, Some(&mut gt.grad))),
            (None, None) => None,
        };
        let dxa: &Tensor<B> = if let Some((m, dm)) = mult {
            // dm[c] += Σ_n dmid[n, c] · xa[n, c]; dxa = dmid · diag(m)
            be.mul(dmid, xa, prod);
            if let Some(g) = dm {
                be.col_sum(prod, g, n, r, true);
            }
            be.mul_cols(dmid, m, prod, n, r);
            prod
        } else {
            dmid
        };
        let a = l.a.as_mut().unwrap();
        if let Some(g) = a.grad() {
            // dA += dxaᵀ · x
            be.matmul(dxa, x, g, &Gemm::tn(r, cols, n).accumulate());
        }
        if let Some(dx) = dx {
            // dx += dxa · A
            be.matmul(dxa, &a.w, dx, &Gemm::nn(n, cols, r).accumulate());
        }
        Ok(())
    }
}
