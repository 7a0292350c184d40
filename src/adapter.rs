//! Shared vocabulary of adapters: which module an adapter sits on, and the host-side view of an
//! adapter that rank allocators, reports and exports read. The model owns the device tensors;
//! everything else sees adapters through these types.

use serde::{Deserialize, Serialize};
use std::fmt;

/// A weight matrix of a transformer block that can carry a LoRA adapter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModuleKind {
    /// Attention query projection, W: [hidden, hidden].
    Q,
    /// Attention key projection, W: [hidden, hidden].
    K,
    /// Attention value projection, W: [hidden, hidden].
    V,
    /// Attention output projection, W: [hidden, hidden].
    O,
    /// Feed-forward up projection, W: [ffn, hidden].
    FfnIn,
    /// Feed-forward down projection, W: [hidden, ffn].
    FfnOut,
}

impl ModuleKind {
    pub const ALL: [ModuleKind; 6] = [
        ModuleKind::Q,
        ModuleKind::K,
        ModuleKind::V,
        ModuleKind::O,
        ModuleKind::FfnIn,
        ModuleKind::FfnOut,
    ];

    /// The name used in policy files, reports and plugin maps.
    pub fn name(self) -> &'static str {
        match self {
            ModuleKind::Q => "q",
            ModuleKind::K => "k",
            ModuleKind::V => "v",
            ModuleKind::O => "o",
            ModuleKind::FfnIn => "ffn_in",
            ModuleKind::FfnOut => "ffn_out",
        }
    }

    pub fn parse(s: &str) -> Option<ModuleKind> {
        ModuleKind::ALL.into_iter().find(|k| k.name() == s)
    }

    /// The module path of this weight in a Hugging Face BERT checkpoint (no `bert.` prefix),
    /// e.g. `encoder.layer.3.attention.self.query`. PEFT exports key adapters by this path.
    pub fn hf_bert_path(self, layer: usize) -> String {
        let leaf = match self {
            ModuleKind::Q => "attention.self.query",
            ModuleKind::K => "attention.self.key",
            ModuleKind::V => "attention.self.value",
            ModuleKind::O => "attention.output.dense",
            ModuleKind::FfnIn => "intermediate.dense",
            ModuleKind::FfnOut => "output.dense",
        };
        format!("encoder.layer.{layer}.{leaf}")
    }
}

impl fmt::Display for ModuleKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Identity and shape of one adapter slot: W (rows × cols) = W0 + s·B·A, A: [rank, cols],
/// B: [rows, rank].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AdapterInfo {
    /// Stable name, `"{layer}.{kind}"`, e.g. `"3.ffn_in"`.
    pub name: String,
    pub layer: usize,
    pub kind: ModuleKind,
    /// Output features (rows of W).
    pub rows: usize,
    /// Input features (columns of W).
    pub cols: usize,
    /// Current rank (0 = no adapter).
    pub rank: usize,
}

impl AdapterInfo {
    pub fn slot_name(layer: usize, kind: ModuleKind) -> String {
        format!("{layer}.{kind}")
    }
    /// Trainable parameters of this adapter at rank r (A and B).
    pub fn params_at(&self, r: usize) -> usize {
        r * (self.rows + self.cols)
    }
}

/// Host copy of one adapter's tensors and their last gradients, for allocators and exports.
#[derive(Clone, Debug, Default)]
pub struct AdapterHost {
    /// A: [rank, cols]
    pub a: Vec<f32>,
    /// B: [rows, rank]
    pub b: Vec<f32>,
    /// AdaLoRA's λ: [rank], when the adapter is in SVD form ΔW = B·diag(λ)·A.
    pub lambda: Option<Vec<f32>>,
    /// Gates g: [rank] the rank engine set (ΔW = s·B·diag(g)·A), when it set any. Read-only:
    /// `set_adapter_host` ignores it (use `AdapterStore::set_gates`).
    pub gates: Option<Vec<f32>>,
    /// Gradients of the last backward pass (zero-length when not available).
    pub grad_a: Vec<f32>,
    pub grad_b: Vec<f32>,
    pub grad_lambda: Option<Vec<f32>>,
    /// Output scale s (α/r, or α/√r with rsLoRA).
    pub scale: f32,
}

/// A host-side copy of a named tensor with its shape (weights from safetensors, checkpoints).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HostTensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl HostTensor {
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Self {
        debug_assert_eq!(shape.iter().product::<usize>(), data.len());
        Self { shape, data }
    }
}

/// Gradient statistics of one adapter accumulated on the device that holds it, as read back by
/// [`AdapterStore::grad_stats`].
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct GradStats {
    /// ‖∇A‖² and ‖∇B‖² of the last gathered backward pass.
    pub last_a2: f64,
    pub last_b2: f64,
    /// Σ over gathered steps of (‖∇A‖² + ‖∇B‖²) / rank, and its two parts.
    pub energy_sum: f64,
    #[serde(default)]
    pub energy_a: f64,
    #[serde(default)]
    pub energy_b: f64,
    /// Gathered steps since the last reset.
    pub steps: u64,
    /// Σ ∇Bᵀ∇B over the gathered steps: [rank, rank] row-major (empty when no step was
    /// gathered).
    pub gram: Vec<f64>,
}

/// What the rank engine and exporters need from a model: adapters as host data, and resizing.
/// `Model<B>` implements it; tests implement it on plain structs.
pub trait AdapterStore {
    /// Every adapter slot, in a fixed order (layer-major, then `ModuleKind::ALL` order),
    /// including slots at rank 0.
    fn adapters(&self) -> Vec<AdapterInfo>;
    /// Host copy of adapter `i`'s tensors and last gradients.
    fn adapter_host(&self, i: usize) -> anyhow::Result<AdapterHost>;
    /// Overwrite adapter `i`'s tensors (same rank); gradients in `h` are added to the current
    /// gradients when non-empty (used for regularisers such as AdaLoRA's orthogonality penalty).
    fn set_adapter_host(&mut self, i: usize, h: &AdapterHost) -> anyhow::Result<()>;
    /// The frozen weight W0 of slot `i`: [rows, cols].
    fn frozen_weight(&self, i: usize) -> anyhow::Result<HostTensor>;
    /// Change adapter `i` to `rank`: shrink by truncated SVD of B·A, grow with B = 0 columns;
    /// device buffers are reallocated at the new size.
    fn resize_adapter(&mut self, i: usize, rank: usize) -> anyhow::Result<()>;
    /// A sample of the inputs slot `i` saw in the last forward pass: [n, cols] (for EVA-like
    /// allocators that read input-activation spectra). `None` when the model did not keep one.
    fn input_sample(&self, _i: usize) -> Option<HostTensor> {
        None
    }
    /// Add the last backward pass's gradient statistics of adapter `i` to its accumulators,
    /// where the adapter lives (on a GPU: device ops only, nothing is copied to the host). A
    /// rank-0 adapter has nothing to add.
    fn gather_grad_stats(&mut self, i: usize) -> anyhow::Result<()>;
    /// Read adapter `i`'s accumulated statistics (a download of 4 + rank² values).
    fn grad_stats(&self, i: usize) -> anyhow::Result<GradStats>;
    /// Clear adapter `i`'s accumulators (a resize clears them too).
    fn reset_grad_stats(&mut self, i: usize) -> anyhow::Result<()>;
    /// Put back accumulators read by [`AdapterStore::grad_stats`] (resuming from a checkpoint:
    /// accumulation then continues exactly as if never interrupted). Stores that are never
    /// resumed need not support it.
    fn restore_grad_stats(&mut self, _i: usize, _s: &GradStats) -> anyhow::Result<()> {
        anyhow::bail!("this adapter store cannot restore gradient statistics")
    }
    /// Gates g: [rank] on adapter `i`'s components (ΔW = s·B·diag(g)·A), or `None` for none
    /// (g = 1). The optimizer never changes g; every backward pass accumulates ∂L/∂g. A resize
    /// removes the gates.
    fn set_gates(&mut self, i: usize, gates: Option<&[f32]>) -> anyhow::Result<()>;
    /// ∂L/∂g of adapter `i` accumulated since the last zeroing of gradients: [rank] (empty
    /// without gates).
    fn gate_grad(&self, i: usize) -> anyhow::Result<Vec<f32>>;
    /// Keep only the components `keep` (increasing indices into 0..rank) of adapter `i`: ΔW
    /// loses exactly the dropped components (no re-factorisation). The adapter's optimizer
    /// moments restart, as for any rank change.
    fn keep_components(&mut self, i: usize, keep: &[usize]) -> anyhow::Result<()>;
}
