//! Shared vocabulary of adapters: which module an adapter sits on, and the host-side view of an
//! adapter that rank allocators, reports and exports read. The model owns the device tensors;
//! everything else sees adapters through these types.

use serde::{Deserialize, Serialize};
use std::fmt;

mod slots;
pub use slots::SlotView;

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
    /// SwiGLU's gate projection (Llama family only), W: [ffn, hidden]. In that family `FfnIn`
    /// is `up_proj` and `FfnOut` is `down_proj`.
    Gate,
}

impl ModuleKind {
    /// The kinds of an encoder or GPT-style decoder block, in slot order.
    pub const ALL: [ModuleKind; 6] = [
        ModuleKind::Q,
        ModuleKind::K,
        ModuleKind::V,
        ModuleKind::O,
        ModuleKind::FfnIn,
        ModuleKind::FfnOut,
    ];

    /// The kinds of a Llama-family block, in slot order — PEFT's q, k, v, o, gate, up, down.
    pub const LLAMA: [ModuleKind; 7] = [
        ModuleKind::Q,
        ModuleKind::K,
        ModuleKind::V,
        ModuleKind::O,
        ModuleKind::Gate,
        ModuleKind::FfnIn,
        ModuleKind::FfnOut,
    ];

    /// Slot `i` of an encoder or GPT-style decoder (layer-major, six kinds a layer in
    /// [`Self::ALL`] order). A model's own layout, the Llama family's seven kinds included, is
    /// `ModelConfig::slot_of`.
    pub fn encoder_slot(i: usize) -> (usize, ModuleKind) {
        (i / Self::ALL.len(), Self::ALL[i % Self::ALL.len()])
    }

    /// The name used in policy files, reports and plugin maps.
    pub fn name(self) -> &'static str {
        match self {
            ModuleKind::Q => "q",
            ModuleKind::K => "k",
            ModuleKind::V => "v",
            ModuleKind::O => "o",
            ModuleKind::FfnIn => "ffn_in",
            ModuleKind::FfnOut => "ffn_out",
            ModuleKind::Gate => "gate",
        }
    }

    /// A policy's module name; `up` and `down` (PEFT's up_proj, down_proj) name `ffn_in` and
    /// `ffn_out`.
    pub fn parse(s: &str) -> Option<ModuleKind> {
        match s {
            "up" => Some(ModuleKind::FfnIn),
            "down" => Some(ModuleKind::FfnOut),
            _ => ModuleKind::LLAMA.into_iter().find(|k| k.name() == s),
        }
    }

    /// The module path of this weight in a Hugging Face Llama-family checkpoint, e.g.
    /// `model.layers.3.self_attn.q_proj` (PEFT keys decoder adapters by this path).
    pub fn hf_llama_path(self, layer: usize) -> String {
        let leaf = match self {
            ModuleKind::Q => "self_attn.q_proj",
            ModuleKind::K => "self_attn.k_proj",
            ModuleKind::V => "self_attn.v_proj",
            ModuleKind::O => "self_attn.o_proj",
            ModuleKind::Gate => "mlp.gate_proj",
            ModuleKind::FfnIn => "mlp.up_proj",
            ModuleKind::FfnOut => "mlp.down_proj",
        };
        format!("model.layers.{layer}.{leaf}")
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
            ModuleKind::Gate => "gate_proj", // no BERT module: never asked for
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

/// How a resize treats what training built up in an adapter. Each switch removes one cause of
/// the loss spike a re-allocation can bring (plugins/README.md, "Re-allocation without a
/// spike"); the default is the plain behaviour (truncated SVD, fresh moments, scale α/r).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ResizeOptions {
    /// Shrink by dropping the trailing components instead of re-factorising ΔW by a truncated
    /// SVD: the survivors keep their coordinates (the relaxation orders components by gate, so
    /// the trailing ones are the nearly closed ones).
    #[serde(default)]
    pub keep_basis: bool,
    /// Components that survive a resize in their own coordinates keep their AdamW moments and
    /// step counter; new components start with m = 0 and v at the tensor's mean v, so their
    /// first steps are no larger than the others'. Without it every resized adapter restarts
    /// Adam (zero moments, step 0: a first move of about lr on every coordinate).
    #[serde(default)]
    pub keep_moments: bool,
    /// Keep the output scale at α/init_rank through resizes (as AdaLoRA does) instead of α/r,
    /// so a shrunk adapter's effective step does not grow.
    #[serde(default)]
    pub fixed_scale: bool,
    /// A resized adapter's learning rate re-warms linearly from 0 over this many steps (0: no
    /// re-warm).
    #[serde(default)]
    pub rewarm: u32,
    /// Steps over which the components a relaxed re-allocation drops fade out under training
    /// before they are cut (the gates move gradually to the new relaxed ranks; the rank
    /// engine's relaxation reads it, the store does not). 0: cut at once.
    #[serde(default)]
    pub fade: u32,
}

impl ResizeOptions {
    /// What a policy gets unless it says otherwise (`lora.resize_*`, docs/allocation.md): the
    /// combination that measured best on `examples/paper_table.rank`.
    pub fn policy_default() -> Self {
        Self {
            keep_basis: true,
            keep_moments: false,
            fixed_scale: true,
            rewarm: 10,
            fade: 10,
        }
    }
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
    /// How later resizes treat what training built up (see [`ResizeOptions`]); stores without
    /// the choice keep their one behaviour.
    fn set_resize_options(&mut self, _o: ResizeOptions) -> anyhow::Result<()> {
        Ok(())
    }
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
    /// moments restart, as for any rank change, and its importance state is cleared.
    fn keep_components(&mut self, i: usize, keep: &[usize]) -> anyhow::Result<()>;

    // ---- AdaLoRA (adapters in SVD form: P = B, λ, Q = A) ----------------------------------
    // Each runs where the adapter lives: on a GPU nothing is copied to the host but what
    // `importance` reads, so a training step reads back no adapter data.

    /// Update adapter `i`'s importance state (see [`Importance::update`]) of every entry of P,
    /// λ and Q from the gradients of the last backward pass. The state starts at zero on the
    /// first update after it was cleared. A rank-0 adapter has nothing to update.
    fn update_importance(&mut self, i: usize, beta1: f32, beta2: f32) -> anyhow::Result<()>;
    /// Read adapter `i`'s importance state (a download of 2·(rows·r + r + r·cols) values;
    /// empty before the first update).
    fn importance(&self, i: usize) -> anyhow::Result<TripletImportance>;
    /// Replace adapter `i`'s importance state (resuming from a checkpoint, or the kept triplets
    /// after [`AdapterStore::keep_components`]); an empty state clears it.
    fn set_importance(&mut self, i: usize, t: &TripletImportance) -> anyhow::Result<()>;
    /// Add `weight` times the gradient of AdaLoRA's orthogonality penalty
    /// ‖PᵀP − I‖_F + ‖QQᵀ − I‖_F to adapter `i`'s gradients of P and Q.
    fn add_orth_grad(&mut self, i: usize, weight: f32) -> anyhow::Result<()>;
    /// Set λ_j of adapter `i` to 0 where `masked[j]` (a pruned triplet; the optimizer may grow
    /// it back until it is masked again). Nothing changes where `masked` is all false.
    fn mask_lambda(&mut self, i: usize, masked: &[bool]) -> anyhow::Result<()>;
}

/// AdaLoRA's smoothed importance of one tensor's entries, as PEFT keeps it: the sensitivity Ī
/// (an exponential moving average of I = |w·∂L/∂w|) and the uncertainty Ū (one of |I − Ī|).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Importance {
    pub ema_ipt: Vec<f32>,
    pub ema_unc: Vec<f32>,
}

impl Importance {
    /// Ī ← β1·Ī + (1−β1)·I; Ū ← β2·Ū + (1−β2)·|I − Ī| (Ī already updated, as PEFT does), per
    /// entry, with I = |w·g|. The host formula: the oracle of `Backend::importance_ema`, which
    /// runs it where the adapter lives.
    pub fn update(&mut self, w: &[f32], g: &[f32], beta1: f64, beta2: f64) {
        if self.ema_ipt.len() != w.len() {
            self.ema_ipt = vec![0.0; w.len()];
            self.ema_unc = vec![0.0; w.len()];
        }
        if g.len() != w.len() {
            return;
        }
        let (b1, b2) = (beta1 as f32, beta2 as f32);
        for k in 0..w.len() {
            let ipt = (w[k] * g[k]).abs();
            let e = b1 * self.ema_ipt[k] + (1.0 - b1) * ipt;
            self.ema_ipt[k] = e;
            self.ema_unc[k] = b2 * self.ema_unc[k] + (1.0 - b2) * (ipt - e).abs();
        }
    }
    pub fn score(&self, k: usize) -> f64 {
        self.ema_ipt[k] as f64 * self.ema_unc[k] as f64
    }
    pub fn mean_sensitivity(&self) -> f64 {
        mean(&self.ema_ipt)
    }
    pub fn mean_uncertainty(&self) -> f64 {
        mean(&self.ema_unc)
    }
    pub fn is_empty(&self) -> bool {
        self.ema_ipt.is_empty()
    }
    /// The entries at `idx` (for a tensor that lost some of its rows or columns).
    fn pick(&self, idx: &[usize]) -> Importance {
        if self.ema_ipt.is_empty() {
            return self.clone();
        }
        Importance {
            ema_ipt: idx.iter().map(|&k| self.ema_ipt[k]).collect(),
            ema_unc: idx.iter().map(|&k| self.ema_unc[k]).collect(),
        }
    }
}

fn mean(v: &[f32]) -> f64 {
    if v.is_empty() {
        0.0
    } else {
        v.iter().map(|x| *x as f64).sum::<f64>() / v.len() as f64
    }
}

/// Importance state of one adapter in SVD form: P = B [rows, r], λ [r], Q = A [r, cols].
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct TripletImportance {
    pub p: Importance,
    pub lambda: Importance,
    pub q: Importance,
}

impl TripletImportance {
    /// The host formula of [`AdapterStore::update_importance`] on a host copy of the adapter.
    pub fn update(&mut self, h: &AdapterHost, beta1: f64, beta2: f64) {
        self.p.update(&h.b, &h.grad_b, beta1, beta2);
        self.q.update(&h.a, &h.grad_a, beta1, beta2);
        if let (Some(l), Some(gl)) = (&h.lambda, &h.grad_lambda) {
            self.lambda.update(l, gl, beta1, beta2);
        }
    }

    /// No state yet (before the first update, or cleared).
    pub fn is_empty(&self) -> bool {
        self.p.is_empty() && self.lambda.is_empty() && self.q.is_empty()
    }

    /// Score of triplet j: s(λ_j) + mean of s over row j of Q + mean of s over column j of P.
    pub fn triplet_scores(&self, rows: usize, cols: usize, r: usize) -> Vec<f64> {
        if self.lambda.ema_ipt.len() != r
            || self.q.ema_ipt.len() != r * cols
            || self.p.ema_ipt.len() != rows * r
        {
            return vec![0.0; r];
        }
        (0..r)
            .map(|j| {
                let sq: f64 =
                    (0..cols).map(|k| self.q.score(j * cols + k)).sum::<f64>() / cols as f64;
                let sp: f64 = (0..rows).map(|k| self.p.score(k * r + j)).sum::<f64>() / rows as f64;
                self.lambda.score(j) + sq + sp
            })
            .collect()
    }

    /// The importance state of the triplets `keep` of an adapter of rank r.
    pub fn subset(&self, rows: usize, cols: usize, r: usize, keep: &[usize]) -> TripletImportance {
        let q: Vec<usize> = keep
            .iter()
            .flat_map(|&j| (0..cols).map(move |c| j * cols + c))
            .collect();
        let p: Vec<usize> = (0..rows)
            .flat_map(|row| keep.iter().map(move |&j| row * r + j))
            .collect();
        TripletImportance {
            p: self.p.pick(&p),
            lambda: self.lambda.pick(keep),
            q: self.q.pick(&q),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_layouts_round_trip_for_both_families() {
        use crate::model::{Flavour, ModelConfig};
        for (flavour, kinds) in [
            (Flavour::Encoder, &ModuleKind::ALL[..]),
            (Flavour::Llama, &ModuleKind::LLAMA[..]),
        ] {
            let cfg = ModelConfig {
                layers: 3,
                ..ModelConfig::tiny(flavour)
            };
            assert_eq!(cfg.slots(), 3 * kinds.len());
            for i in 0..cfg.slots() {
                let (layer, kind) = cfg.slot_of(i);
                assert_eq!((layer, kind), (i / kinds.len(), kinds[i % kinds.len()]));
                assert_eq!(cfg.slot_index(layer, kind), Some(i));
                if flavour == Flavour::Encoder {
                    assert_eq!(ModuleKind::encoder_slot(i), (layer, kind));
                }
            }
        }
        let enc = ModelConfig::tiny(Flavour::Encoder);
        assert_eq!(enc.slot_index(0, ModuleKind::Gate), None);
    }

    #[test]
    fn subset_keeps_the_chosen_triplets_importance() {
        let (rows, cols, r) = (2, 3, 3);
        let mk = |n: usize| Importance {
            ema_ipt: (0..n).map(|k| k as f32).collect(),
            ema_unc: (0..n).map(|k| 10.0 + k as f32).collect(),
        };
        let t = TripletImportance {
            p: mk(rows * r),
            lambda: mk(r),
            q: mk(r * cols),
        };
        let s = t.subset(rows, cols, r, &[0, 2]);
        // P [2, 3] row-major: columns 0 and 2 → entries 0, 2, 3, 5.
        assert_eq!(s.p.ema_ipt, vec![0.0, 2.0, 3.0, 5.0]);
        assert_eq!(s.lambda.ema_ipt, vec![0.0, 2.0]);
        // Q [3, 3]: rows 0 and 2 → entries 0, 1, 2, 6, 7, 8.
        assert_eq!(s.q.ema_ipt, vec![0.0, 1.0, 2.0, 6.0, 7.0, 8.0]);
        let full = t.triplet_scores(rows, cols, r);
        let sub = s.triplet_scores(rows, cols, 2);
        assert!((sub[0] - full[0]).abs() < 1e-9 && (sub[1] - full[2]).abs() < 1e-9);
    }

    #[test]
    fn importance_ema_matches_recurrence_by_hand() {
        let mut imp = Importance::default();
        imp.update(&[2.0], &[-0.5], 0.85, 0.85); // I = 1
        assert!((imp.ema_ipt[0] - 0.15).abs() < 1e-6);
        assert!((imp.ema_unc[0] - 0.15 * 0.85).abs() < 1e-6);
        imp.update(&[2.0], &[0.0], 0.85, 0.85); // I = 0
        let e = 0.85 * 0.15;
        assert!((imp.ema_ipt[0] - e).abs() < 1e-6);
        assert!((imp.ema_unc[0] - (0.85 * 0.1275 + 0.15 * e)).abs() < 1e-6);
    }

    #[test]
    fn triplet_score_is_lambda_plus_row_and_column_means() {
        let (rows, cols, r) = (2, 3, 2);
        let mk = |n: usize, base: f32| Importance {
            ema_ipt: (0..n).map(|k| base + k as f32).collect(),
            ema_unc: vec![2.0; n],
        };
        let t = TripletImportance {
            p: mk(rows * r, 1.0),
            lambda: mk(r, 10.0),
            q: mk(r * cols, 0.0),
        };
        let s = t.triplet_scores(rows, cols, r);
        // j = 0: λ 10·2 = 20; Q row 0 = (0,1,2)·2 → mean 2; P column 0 = (1, 3)·2 → mean 4.
        assert!((s[0] - 26.0).abs() < 1e-9);
        // j = 1: λ 11·2 = 22; Q row 1 = (3,4,5)·2 → 8; P column 1 = (2, 4)·2 → 6.
        assert!((s[1] - 36.0).abs() < 1e-9);
    }
}
