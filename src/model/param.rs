//! A named parameter tensor and, when it trains, its gradient and AdamW moments.

use crate::adapter::HostTensor;
use crate::backend::{Backend, DType, MemKind, Tensor};
use anyhow::Result;

/// Gradient and AdamW state of a trainable parameter. Frozen parameters have none, so they cost
/// no gradient or optimizer memory.
pub struct OptState<B: Backend> {
    pub g: Tensor<B>,
    pub m: Tensor<B>,
    pub v: Tensor<B>,
    /// AdamW steps taken by this parameter (bias correction); restarts at 0 when a resize
    /// resets the moments.
    pub step: u32,
}

pub struct Param<B: Backend> {
    pub name: String,
    pub shape: Vec<usize>,
    pub w: Tensor<B>,
    pub opt: Option<OptState<B>>,
    /// Weight decay applies (matrices); not to biases, norms and λ (Hugging Face's convention).
    pub decay: bool,
}

impl<B: Backend> Param<B> {
    pub fn new(b: &B, name: String, t: &HostTensor, trainable: bool) -> Result<Self> {
        let kind = if trainable {
            MemKind::Trainable
        } else {
            MemKind::Frozen
        };
        let w = b.upload(&t.data, kind)?;
        let opt = if trainable {
            Some(OptState::zeros(b, t.data.len())?)
        } else {
            None
        };
        Ok(Self {
            decay: t.shape.len() >= 2,
            name,
            shape: t.shape.clone(),
            w,
            opt,
        })
    }

    /// A frozen parameter stored as `dtype` when it is a matrix (vectors — biases, norms — stay
    /// f32: they are tiny and read by elementwise ops). A block format quantizes the f32 values
    /// with ggml's round-to-nearest quantizer; a checkpoint that is already quantized should
    /// hand its own blocks to `Backend::upload_blocks` instead (no second rounding).
    pub fn frozen(b: &B, name: String, t: &HostTensor, dtype: DType) -> Result<Self> {
        if dtype == DType::F32 || t.shape.len() < 2 {
            return Self::new(b, name, t, false);
        }
        let w = if dtype.is_quantized() {
            let (rows, cols) = (
                t.data.len() / t.shape[t.shape.len() - 1].max(1),
                t.shape[t.shape.len() - 1],
            );
            crate::backend::quant::check_matrix(dtype, rows, cols)
                .map_err(|e| anyhow::anyhow!("frozen weight {name}: {e}"))?;
            let bytes = crate::backend::quantize(dtype, &t.data)?;
            b.upload_blocks(&bytes, dtype, t.data.len(), MemKind::Frozen)?
        } else {
            b.upload_bf16(&t.data, MemKind::Frozen)?
        };
        Ok(Self {
            decay: true,
            name,
            shape: t.shape.clone(),
            w,
            opt: None,
        })
    }

    pub fn len(&self) -> usize {
        self.w.len()
    }

    pub fn is_empty(&self) -> bool {
        self.w.is_empty()
    }

    pub fn trainable(&self) -> bool {
        self.opt.is_some()
    }

    /// The gradient buffer, when this parameter trains.
    pub fn grad(&mut self) -> Option<&mut Tensor<B>> {
        self.opt.as_mut().map(|o| &mut o.g)
    }

    pub fn host(&self, b: &B) -> Result<HostTensor> {
        Ok(HostTensor::new(self.shape.clone(), b.download(&self.w)?))
    }
}

impl<B: Backend> OptState<B> {
    pub fn zeros(b: &B, len: usize) -> Result<Self> {
        Ok(Self {
            g: b.zeros(len, MemKind::Grad)?,
            m: b.zeros(len, MemKind::Optim)?,
            v: b.zeros(len, MemKind::Optim)?,
            step: 0,
        })
    }
}
