//! BERT's pooler, used by `pooling = cls`: pooled = tanh(W_p · h₀ + b_p) on the final hidden
//! state h₀ of the first token, exactly as Hugging Face's `BertForSequenceClassification`
//! computes the input of its classifier (its dropout is off at evaluation and here). With it, an
//! exported adapter loads into that stock class and gives our logits.
//!
//! Its weights (`pooler.dense.{weight [C, C], bias [C]}`) come from the checkpoint (or are drawn
//! like the head's when it has none). They train with the body: frozen under LoRA, as PEFT
//! leaves them, and trainable under full fine-tuning.

use super::param::Param;
use crate::adapter::HostTensor;
use crate::backend::{Backend, Gemm, MemKind, Tensor};
use anyhow::Result;

pub const WEIGHT: &str = "pooler.dense.weight";
pub const BIAS: &str = "pooler.dense.bias";

/// The pooler's weight names and shapes for hidden width `c`.
pub fn shapes(c: usize) -> Vec<(String, Vec<usize>)> {
    vec![(WEIGHT.into(), vec![c, c]), (BIAS.into(), vec![c])]
}

pub struct Pooler<B: Backend> {
    /// [C, C] (out × in, as `nn.Linear` stores it)
    pub w: Param<B>,
    /// [C]
    pub b: Param<B>,
}

impl<B: Backend> Pooler<B> {
    pub fn new(be: &B, w: &HostTensor, b: &HostTensor, trainable: bool) -> Result<Self> {
        Ok(Self {
            w: Param::new(be, WEIGHT.into(), w, trainable)?,
            b: Param::new(be, BIAS.into(), b, trainable)?,
        })
    }

    /// pooled: [B, C] holds h₀ on entry and tanh(h₀·W_pᵀ + b_p) on return. Returns h₀ (the
    /// backward needs it for W_p's gradient).
    pub fn forward(&self, be: &B, pooled: &mut Tensor<B>, b: usize, c: usize) -> Result<Tensor<B>> {
        let mut x = be.zeros(b * c, MemKind::Activation)?;
        be.copy(pooled, &mut x);
        // z: [B, C] = x · W_pᵀ + b_p, computed in `pooled`, then tanh in place through a copy
        be.matmul(&x, &self.w.w, pooled, &Gemm::nt(b, c, c));
        be.add_bias(pooled, &self.b.w, b, c);
        let mut z = be.zeros(b * c, MemKind::Scratch)?;
        be.copy(pooled, &mut z);
        be.tanh_forward(&z, pooled);
        Ok(x)
    }

    /// Backward through the pooler: `dp` [B, C] holds dL/d(pooled output) on entry and dL/dh₀
    /// on return; `p` is the forward's output, `x` its input h₀. Gradients of W_p and b_p are
    /// accumulated when they train.
    pub fn backward(
        &mut self,
        be: &B,
        x: &Tensor<B>,
        p: &Tensor<B>,
        dp: &mut Tensor<B>,
        b: usize,
        c: usize,
    ) -> Result<()> {
        // dz: [B, C] = dp ⊙ (1 − p²)
        let mut dz = be.zeros(b * c, MemKind::Activation)?;
        be.tanh_backward(p, dp, &mut dz);
        if let Some(g) = self.w.grad() {
            // dW_p: [C, C] += dzᵀ · x
            be.matmul(&dz, x, g, &Gemm::tn(c, c, b).accumulate());
        }
        if let Some(g) = self.b.grad() {
            be.col_sum(&dz, g, b, c, true);
        }
        // dx: [B, C] = dz · W_p
        be.matmul(&dz, &self.w.w, dp, &Gemm::nn(b, c, c));
        Ok(())
    }
}
