//! The memory a cell's backend ledger will hold, by kind, computed from shapes alone. It mirrors
//! what the model allocates (`src/model/`): parameters with their gradients and AdamW moments,
//! the activations one pass saves (`Acts`, `LayerActs`, each adapter's x·Aᵀ), the scratch every
//! pass shares (`Work`, `Flow`), and the short-lived buffers of the head, of an adapter's
//! backward and of the gradient norm. `tests/plan_memory.rs` holds it to the ledger's measured
//! peak; a change to what the model allocates must be made here too.

use super::shapes::{ArmShape, BatchShape, TaskKind};
use crate::backend::{DType, MemKind};
use crate::data::hf_llm::llama_tensors;
use crate::model::weights::{body_shapes, head_shapes};
use crate::model::{pooler, Flavour, Head, Pooling};
use serde::Serialize;

/// Bytes by ledger kind, in [`MemKind::ALL`] order. f64 holds every byte count exactly below
/// 2^53 bytes (8 PiB) and never overflows on a hostile shape.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ByKind(pub [f64; 6]);

impl ByKind {
    /// `elems` f32 values of `kind`.
    fn hold(&mut self, kind: MemKind, elems: f64) {
        self.0[kind as usize] += 4.0 * elems;
    }
    /// A trainable tensor of `elems` values: itself, its gradient and two AdamW moments.
    fn trainable(&mut self, elems: f64) {
        self.hold(MemKind::Trainable, elems);
        self.hold(MemKind::Grad, elems);
        self.hold(MemKind::Optim, 2.0 * elems);
    }
    pub fn of(&self, kind: MemKind) -> f64 {
        self.0[kind as usize]
    }
    pub fn total(&self) -> f64 {
        self.0.iter().sum()
    }
    pub fn plus(mut self, o: &ByKind) -> ByKind {
        for (a, b) in self.0.iter_mut().zip(o.0) {
            *a += b;
        }
        self
    }
    /// The larger of two alternatives (by total): buffers that never live at the same time.
    fn max(self, o: ByKind) -> ByKind {
        if o.total() > self.total() {
            o
        } else {
            self
        }
    }
}

impl Serialize for ByKind {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(Some(7))?;
        for k in MemKind::ALL {
            m.serialize_entry(k.name(), &(self.of(k) as u64))?;
        }
        m.serialize_entry("total", &(self.total() as u64))?;
        m.end()
    }
}

/// Memory of one arm: at the start (phase 1's ranks) and at its peak (the rank plan with the
/// most memory the arm can reach), each the moment of the largest total; and, with the peak's
/// ranks, what a training step and an evaluation pass hold on their own (the peak is the
/// larger, give or take the adapters' saved inputs).
#[derive(Clone, Debug, Serialize)]
pub struct Memory {
    pub start: ByKind,
    pub peak: ByKind,
    pub train_step: ByKind,
    pub evaluation: ByKind,
    /// What the cell holds in host memory outside the ledger.
    pub host: Host,
    /// The cell's peak on a device whose memory is the host's (the CPU backend, a software
    /// adapter): the ledger's peak and the host terms, as they coexist ([`Host::process_peak`]).
    pub process: f64,
}

/// Bytes a cell holds in host memory outside its backend's ledger, by name: what the built-in
/// tasks keep beside the model (`train::planted`, `train::synthetic`). A real data set's
/// tokenizer, rows and checkpoint are not modelled (a plan note says so).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Host {
    /// Held for the whole cell.
    pub held: Vec<(&'static str, f64)>,
    /// Held only while the model is built, when the ledger holds its parameters and nothing
    /// else.
    pub building: Vec<(&'static str, f64)>,
}

impl Host {
    pub fn held_total(&self) -> f64 {
        self.held.iter().map(|(_, b)| b).sum()
    }
    pub fn building_total(&self) -> f64 {
        self.building.iter().map(|(_, b)| b).sum()
    }
    /// The process's peak beyond the binary: everything held, plus the larger of the ledger's
    /// peak and (while the model is built) its parameters with the weights handed to it.
    pub fn process_peak(&self, ledger_peak: f64, ledger_params: f64) -> f64 {
        self.held_total() + ledger_peak.max(ledger_params + self.building_total())
    }
}

pub fn memory(s: &ArmShape) -> Memory {
    let start = peak_at(s, &s.start_ranks);
    let largest = peak_at(s, &s.peak_ranks);
    let ranks = if largest.total() > start.total() {
        &s.peak_ranks
    } else {
        &s.start_ranks
    };
    let alone = |b: BatchShape, train: bool| {
        params(s, ranks)
            .plus(&adalora_state(s, ranks))
            .plus(&pass(s, b, ranks, train))
            .plus(&adapter_inputs(s, b, ranks))
    };
    let peak = start.max(largest);
    let host = host(s);
    Memory {
        start,
        process: host.process_peak(peak.total(), params(s, &s.start_ranks).total()),
        host,
        peak,
        train_step: alone(s.train, true),
        evaluation: alone(s.eval, false),
    }
}

/// The host terms of `s`'s task (`TaskShape`): its held-out set and current training batch,
/// and for the planted task its teacher (a second model on its own CPU ledger: f32 weights, no
/// adapters, a body pass at the larger batch shape), the base weights it keeps and its dense
/// planted ΔW. While the student is built, the task hands it a host copy of the body's weights
/// (the planted task a clone of its base, the synthetic task freshly drawn ones).
fn host(s: &ArmShape) -> Host {
    let t = &s.task;
    let mut h = Host::default();
    if t.kind == TaskKind::Data {
        return h;
    }
    let f32_body: f64 = body(s).iter().map(|(_, shape)| 4.0 * prod(shape)).sum();
    // Per sequence: its ids (u32) and its target, the teacher's final hidden states [seq, C]
    // (planted) or one class (synthetic).
    let per_seq = |seq: usize| match t.kind {
        TaskKind::Planted => 4.0 * seq as f64 * (1.0 + s.model.hidden as f64),
        _ => 4.0 * (seq as f64 + 1.0),
    };
    h.held.push((
        "held-out set",
        t.eval_sequences as f64 * per_seq(s.eval.seq),
    ));
    h.held.push((
        "training batch",
        s.train.batch as f64 * per_seq(s.train.seq),
    ));
    if t.kind == TaskKind::Planted {
        let teacher = ArmShape {
            full: false,
            svd: false,
            gated: false,
            frozen: DType::F32,
            head: Head::Regress,
            ..s.clone()
        };
        let teacher_peak = params(&teacher, &[])
            .plus(&body_pass(&teacher, s.train).max(body_pass(&teacher, s.eval)));
        h.held.push(("planted teacher", teacher_peak.total()));
        h.held.push(("planted base weights", f32_body));
        let delta: f64 = t.planted.iter().map(|&(r, c)| (r * c) as f64).sum();
        h.held.push(("planted ΔW", 4.0 * delta));
    }
    h.building
        .push(("base weights handed to the model", f32_body));
    h
}

/// Largest total the ledger holds with adapters at `ranks`: the parameters, plus the larger of
/// a training step and an evaluation pass. Activations are reallocated when the batch shape
/// changes (old ones freed first), but each adapter's saved x·Aᵀ is resized only by its own next
/// forward, so for a moment it can still have the other shape's size: the plan adds the
/// larger of the two (exact whenever one shape is the larger in both, as in every example).
fn peak_at(s: &ArmShape, ranks: &[usize]) -> ByKind {
    let train = pass(s, s.train, ranks, true);
    let eval = pass(s, s.eval, ranks, false);
    let xa = adapter_inputs(s, s.train, ranks).max(adapter_inputs(s, s.eval, ranks));
    params(s, ranks)
        .plus(&adalora_state(s, ranks))
        .plus(&train.max(eval))
        .plus(&xa)
}

/// What AdaLoRA keeps on the device from its first step on (`Model::update_importance`,
/// `Model::add_orth_grad`): the importance averages of every entry of A, B and λ ([2, len]
/// each), and the orthogonality penalty's identity, N and N/‖N‖ ([r, r] each) and 1/‖N‖.
fn adalora_state(s: &ArmShape, ranks: &[usize]) -> ByKind {
    let mut m = ByKind::default();
    if s.full || !s.svd {
        return m;
    }
    for (r, rows, cols) in live_adapters(s, ranks) {
        m.hold(MemKind::Optim, 2.0 * (r * cols + rows * r + r) as f64);
        if s.orth_reg {
            m.hold(MemKind::Scratch, (3 * r * r + 1) as f64);
        }
    }
    m
}

/// (rank, rows, cols) of every adapter with a rank above 0 (`ranks` in layer-major module order).
fn live_adapters<'a>(
    s: &'a ArmShape,
    ranks: &'a [usize],
) -> impl Iterator<Item = (usize, usize, usize)> + 'a {
    ranks
        .iter()
        .enumerate()
        .filter(|(_, &r)| r > 0)
        .map(|(i, &r)| {
            let (rows, cols) = s.model.module_shape(s.model.slot_of(i).1);
            (r, rows, cols)
        })
}

fn prod(shape: &[usize]) -> f64 {
    shape.iter().map(|&d| d as f64).product()
}

/// The body's weights: the encoder/decoder's BERT-named tensors, or the Llama family's
/// (RMSNorm gains without β, no position table, GQA-wide k/v, the gate, and `lm_head` unless
/// the head is tied to the embedding).
fn body(s: &ArmShape) -> Vec<(String, Vec<usize>)> {
    match s.model.flavour {
        Flavour::Llama => llama_tensors(&s.model),
        Flavour::Encoder | Flavour::Decoder => body_shapes(&s.model),
    }
}

/// Bytes per `per` values of a frozen matrix stored as `dtype`: f32 4/1, bf16 2/1, and GGUF's
/// block formats 34/32 (Q8_0: 32 int8 and an f16 scale), 18/32 (Q4_0: 32 nibbles and a scale),
/// 20/32 (Q4_1: a scale and a minimum). Matched by the storage type's serialized name, so the
/// block formats count here as soon as `DType` has them.
pub fn frozen_bytes_per(dtype: DType) -> (f64, f64) {
    let name = serde_json::to_value(dtype)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    match name.as_str() {
        "bf16" => (2.0, 1.0),
        "q8_0" => (34.0, 32.0),
        "q4_0" => (18.0, 32.0),
        "q4_1" => (20.0, 32.0),
        _ => (4.0, 1.0),
    }
}

/// Bytes of a frozen matrix of `shape` stored as `dtype`, in whole 4-byte words: bf16 packs two
/// values a word (`Param::frozen`), a block format whole 32-value blocks per row.
fn frozen_matrix_bytes(dtype: DType, shape: &[usize]) -> f64 {
    let (bytes, per) = frozen_bytes_per(dtype);
    let cols = *shape.last().unwrap_or(&1) as f64;
    let rows = prod(shape) / cols.max(1.0);
    let row_bytes = if per > 1.0 {
        (cols / per).ceil() * bytes
    } else {
        cols * bytes
    };
    if per > 1.0 {
        rows * (row_bytes / 4.0).ceil() * 4.0
    } else {
        (rows * row_bytes / 4.0).ceil() * 4.0
    }
}

/// Parameters with their gradients and moments (`Param::new`, `Lora::set_factors`).
pub fn params(s: &ArmShape, ranks: &[usize]) -> ByKind {
    let mut m = ByKind::default();
    for (_, shape) in body(s) {
        if s.full {
            m.trainable(prod(&shape));
        } else if shape.len() >= 2 {
            // `hold` counts f32 values: a quarter of the bytes.
            m.hold(MemKind::Frozen, frozen_matrix_bytes(s.frozen, &shape) / 4.0);
        } else {
            m.hold(MemKind::Frozen, prod(&shape));
        }
    }
    // The head always trains; BERT's pooler (`pooling = cls`) trains with the body.
    for (_, shape) in head_shapes(&s.model, &s.head) {
        m.trainable(prod(&shape));
    }
    for (_, shape) in pooler_shapes(s) {
        if s.full {
            m.trainable(prod(&shape));
        } else {
            m.hold(MemKind::Frozen, prod(&shape));
        }
    }
    if !s.full {
        for (r, rows, cols) in live_adapters(s, ranks) {
            m.trainable((r * cols) as f64);
            m.trainable((rows * r) as f64);
            if s.svd {
                m.trainable(r as f64);
            }
        }
    }
    m
}

/// BERT's pooler weights when the head reads it (`pooling = cls`).
fn pooler_shapes(s: &ArmShape) -> Vec<(String, Vec<usize>)> {
    match s.head {
        Head::Classify {
            pooling: Pooling::Cls,
            ..
        } => pooler::shapes(s.model.hidden),
        _ => vec![],
    }
}

/// Trainable tensors (one gradient-norm slot each, `Model::optimizer_step`).
fn trainable_tensors(s: &ArmShape, ranks: &[usize]) -> usize {
    let heads = head_shapes(&s.model, &s.head).len();
    if s.full {
        return body(s).len() + pooler_shapes(s).len() + heads;
    }
    let per = if s.svd { 3 } else { 2 };
    heads + per * ranks.iter().filter(|&&r| r > 0).count()
}

/// Each adapter's saved x·Aᵀ (and x·Aᵀ·diag(λ) in the SVD form): [n, r] (`Linear::forward`).
fn adapter_inputs(s: &ArmShape, b: BatchShape, ranks: &[usize]) -> ByKind {
    let mut m = ByKind::default();
    if s.full {
        return m;
    }
    let n = b.tokens() as f64;
    let per = if s.svd || s.gated { 2.0 } else { 1.0 };
    let r: f64 = ranks.iter().map(|&r| r as f64).sum();
    m.hold(MemKind::Activation, per * n * r);
    m
}

/// What one pass at batch shape `b` holds beyond the parameters and the adapters' inputs: the
/// saved activations and shared scratch (`Acts`, `Work`, `Flow`), plus the largest of the
/// buffers that live for a moment (the head's; in training also an adapter's backward and the
/// gradient norm).
fn pass(s: &ArmShape, b: BatchShape, ranks: &[usize], train: bool) -> ByKind {
    let c = &s.model;
    let (bt, t) = (b.batch as f64, b.seq as f64);
    let n = bt * t;
    let (ch, f, h, d) = (
        c.hidden as f64,
        c.ffn as f64,
        c.heads as f64,
        c.head_dim() as f64,
    );
    let (bhtd, bhtt) = (bt * h * t * d, bt * h * t * t);
    let mut m = if c.flavour == Flavour::Llama {
        llama_pass(s, b)
    } else {
        let mut m = ByKind::default();
        let act = MemKind::Activation;
        // Acts: key mask, embedding sum and its LayerNorm statistics, the encoder's normalised
        // embeddings or the decoder's final LayerNorm output, and the final statistics.
        m.hold(act, n + n * ch + 2.0 * n + n * ch + 2.0 * n);
        // LayerActs, per layer: a_in (decoder) or r2 (encoder), q, k, v, ctx, r1, f_in, out;
        // four LayerNorm statistics; f1 (gelu(f1) is recomputed, not saved); probs.
        let per_layer = 5.0 * n * ch + 3.0 * bhtd + 4.0 * n + n * f + bhtt;
        m.hold(act, c.layers as f64 * per_layer);
        // Work (nc, nc2, nf, nf2, dq, dk, dv, bhtt, bhtt2) and Flow (three [N, C]).
        m.hold(
            MemKind::Scratch,
            2.0 * n * ch + 2.0 * n * f + 3.0 * bhtd + 2.0 * bhtt + 3.0 * n * ch,
        );
        m
    };
    if train && !s.full {
        // The adapters' backward workspace, kept across steps: two [n, r_max].
        let r_max = ranks.iter().copied().max().unwrap_or(0) as f64;
        m.hold(MemKind::Scratch, 2.0 * n * r_max);
    }
    if train {
        // The step's device statistics, kept across steps (`StepStats`): one sum of squares
        // per trainable tensor, the 4-value read-back, the loss slot and accumulator.
        m.hold(
            MemKind::Scratch,
            trainable_tensors(s, ranks).max(1) as f64 + 6.0,
        );
    }
    m.plus(&head_buffers(s, b, train))
}

/// What a forward pass through the body alone holds (`Model::forward_body`): [`pass`] without
/// the head's buffers.
fn body_pass(s: &ArmShape, b: BatchShape) -> ByKind {
    let mut m = pass(s, b, &[], false);
    let head = head_buffers(s, b, false);
    for (a, h) in m.0.iter_mut().zip(head.0) {
        *a -= h;
    }
    m
}

/// What a Llama-family pass saves and shares (`LayerActs` and `Work` for `Flavour::Llama`):
/// the embedding output, the final RMSNorm output and its 1/rms; per layer q [N, C], k and v
/// [N, KV] (q and k rotated), ctx, the residual r1 and the block output [N, C], gate and up
/// [N, F] and four [N] statistics. The normed inputs and the attention probabilities are not
/// kept (the backward recomputes them, `model/llama.rs`), so they are scratch shared by all
/// layers: two [N, C] (the normed inputs among them), three [N, F] for the SwiGLU backward, the
/// q/k/v gradients and one more [N, KV], an [N] rstd, three score-sized buffers (the
/// probabilities among them), and three [N, C] flowing between layers.
fn llama_pass(s: &ArmShape, b: BatchShape) -> ByKind {
    let c = &s.model;
    let (bt, t) = (b.batch as f64, b.seq as f64);
    let n = bt * t;
    let (ch, f, kv) = (c.hidden as f64, c.ffn as f64, c.kv_width() as f64);
    let bhtt = bt * c.heads as f64 * t * t;
    let mut m = ByKind::default();
    m.hold(MemKind::Activation, 2.0 * n * ch + n);
    let per_layer = 4.0 * n * ch + 2.0 * n * kv + 4.0 * n + 2.0 * n * f;
    m.hold(MemKind::Activation, c.layers as f64 * per_layer);
    m.hold(
        MemKind::Scratch,
        2.0 * n * ch
            + 3.0 * n * f
            + (n * ch + 2.0 * n * kv)
            + n * kv
            + n
            + 3.0 * bhtt
            + 3.0 * n * ch,
    );
    m
}

/// The head's buffers during its forward, loss and (when `train`) backward (`Model::head_pass`,
/// `Pooler::forward`/`backward`).
fn head_buffers(s: &ArmShape, b: BatchShape, train: bool) -> ByKind {
    let (bt, t) = (b.batch as f64, b.seq as f64);
    let n = bt * t;
    let ch = s.model.hidden as f64;
    let mut m = ByKind::default();
    match s.head {
        Head::Classify { classes, pooling } => {
            let k = classes as f64;
            // pooling weights and per-sequence losses; pooled, logits, dlogits; backward: dpooled
            m.hold(MemKind::Scratch, n + bt);
            m.hold(MemKind::Activation, bt * ch + 2.0 * bt * k);
            if train {
                m.hold(MemKind::Activation, bt * ch);
            }
            if pooling == Pooling::Cls {
                // the pooler's saved input and its pre-activation copy; backward: dz
                m.hold(MemKind::Activation, bt * ch);
                m.hold(MemKind::Scratch, bt * ch);
                if train {
                    m.hold(MemKind::Activation, bt * ch);
                }
            }
        }
        // The planted task regresses the final hidden states: targets, difference, sum.
        Head::Regress => m.hold(MemKind::Scratch, 2.0 * n * ch + 1.0),
        Head::LanguageModel => {
            let v = s.model.vocab as f64;
            m.hold(MemKind::Activation, 2.0 * n * v);
            m.hold(MemKind::Scratch, n);
        }
        Head::Span => {
            // logits, logits by position and their gradient: [N, 2] each; the losses (the
            // padding mask before them is freed within its statement)
            m.hold(MemKind::Activation, 3.0 * 2.0 * n);
            m.hold(MemKind::Scratch, 2.0 * bt);
        }
    }
    m
}
