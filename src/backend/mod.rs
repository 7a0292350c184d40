//! The small op interface the model is written against, once, for every device.
//!
//! Two implementations: [`cpu::Cpu`] (plain Rust, rayon, the `gemm` crate) is the oracle every
//! kernel is tested against and the fast path on machines without a GPU; [`gpu::Gpu`] (wgpu and
//! the WGSL kernels in `shaders/`) is the product's engine.
//!
//! Conventions, shared by both implementations:
//! - tensors are flat f32 buffers, row-major; shapes live in the caller's comments (llm.c style);
//! - ops are enqueued in order; [`Backend::download`] and [`Backend::sync`] wait for them;
//! - an op writes its output unless its doc says it accumulates (`+=`);
//! - a device error (out of memory, validation) is reported by the next `sync`/`download`
//!   as an error naming what failed, never as a panic.

pub mod cpu;
pub mod device;
pub mod gpu;
pub mod ledger;
pub mod profile;
pub mod quant;

pub use ledger::{Ledger, LedgerGuard, LedgerSnapshot, MemKind};
pub use quant::{dequantize, quantize};

use anyhow::Result;

/// Which implementation a backend is, for reports and device selection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum BackendKind {
    Cpu,
    Gpu,
}

/// How a tensor's values are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DType {
    /// One f32 per value.
    #[default]
    F32,
    /// bfloat16 (the high half of an f32), two per 32-bit word, value 2i in the low half of
    /// word i. Only frozen weights are stored so: `matmul` takes them as its B operand,
    /// `embedding_forward` as its table, `download` widens them to f32.
    Bf16,
    /// GGUF's block formats (see [`quant`]): 32 values per block with an f16 scale, bytes as
    /// llama.cpp stores them. Frozen weights only, like bf16 (`matmul`'s B, `embedding_forward`'s
    /// table, `download` dequantizes); made by [`Backend::upload_blocks`].
    /// Q8_0: 34 bytes per block, x = d·q with q an i8.
    #[serde(rename = "q8_0")]
    Q8_0,
    /// Q4_0: 18 bytes per block, x = d·(q − 8) with q a nibble.
    #[serde(rename = "q4_0")]
    Q4_0,
    /// Q4_1: 20 bytes per block, x = d·q + m with q a nibble.
    #[serde(rename = "q4_1")]
    Q4_1,
}

impl DType {
    pub fn is_f32(&self) -> bool {
        *self == DType::F32
    }
    /// 32-bit words that hold `len` values (a block format's bytes rounded up to a word).
    pub fn words(self, len: usize) -> usize {
        self.bytes(len).div_ceil(4)
    }
}

/// bf16 words of `data` (rounded to nearest even, NaN kept), two values each, value 2i in the
/// low half of word i (see [`DType::Bf16`]).
pub fn bf16_words(data: &[f32]) -> Vec<u32> {
    let b = |v: f32| half::bf16::from_f32(v).to_bits() as u32;
    data.chunks(2)
        .map(|p| b(p[0]) | p.get(1).map_or(0, |&v| b(v) << 16))
        .collect()
}

/// A flat buffer of f32 (or bf16, see [`DType`]) values on a backend, counted in the backend's
/// [`Ledger`] while it lives.
pub struct Tensor<B: Backend + ?Sized> {
    pub buf: B::Buf,
    len: usize,
    guard: LedgerGuard,
    dtype: DType,
}

impl<B: Backend + ?Sized> Tensor<B> {
    /// For backend implementations: wrap a buffer of `len` f32 already counted by `guard`.
    pub fn from_parts(buf: B::Buf, len: usize, guard: LedgerGuard) -> Self {
        Self::from_parts_typed(buf, len, guard, DType::F32)
    }
    /// For backend implementations: wrap a buffer of `len` values stored as `dtype`.
    pub fn from_parts_typed(buf: B::Buf, len: usize, guard: LedgerGuard, dtype: DType) -> Self {
        Self {
            buf,
            len,
            guard,
            dtype,
        }
    }
    /// Number of values (not words).
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn dtype(&self) -> DType {
        self.dtype
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    pub fn kind(&self) -> MemKind {
        self.guard.kind()
    }
    pub fn bytes(&self) -> u64 {
        self.guard.bytes()
    }
}

/// Token ids or class targets on a backend. `IGNORE` marks a position without a target.
pub struct Ids<B: Backend + ?Sized> {
    pub buf: B::IdsBuf,
    len: usize,
}

impl<B: Backend + ?Sized> Ids<B> {
    pub const IGNORE: u32 = u32::MAX;
    pub fn from_parts(buf: B::IdsBuf, len: usize) -> Self {
        Self { buf, len }
    }
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// `C[b] = alpha · op(A[b]) · op(B[b]) + beta · C[b]` for `b in 0..batch`, all row-major.
///
/// op(A) is m×k: stored m×k, or k×m when `trans_a`. op(B) is k×n: stored k×n, or n×k when
/// `trans_b`. C is m×n. With `beta == 0` C is overwritten (NaN in C does not propagate).
/// Strides are in elements between consecutive batch items; a stride of 0 broadcasts.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Gemm {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub trans_a: bool,
    pub trans_b: bool,
    pub alpha: f32,
    pub beta: f32,
    pub batch: usize,
    pub stride_a: usize,
    pub stride_b: usize,
    pub stride_c: usize,
}

impl Gemm {
    fn new(m: usize, n: usize, k: usize, trans_a: bool, trans_b: bool) -> Self {
        Self {
            m,
            n,
            k,
            trans_a,
            trans_b,
            alpha: 1.0,
            beta: 0.0,
            batch: 1,
            stride_a: m * k,
            stride_b: k * n,
            stride_c: m * n,
        }
    }
    /// A (m×k) · B (k×n)
    pub fn nn(m: usize, n: usize, k: usize) -> Self {
        Self::new(m, n, k, false, false)
    }
    /// A (m×k) · Bᵀ, B stored n×k — a linear layer `x · Wᵀ`.
    pub fn nt(m: usize, n: usize, k: usize) -> Self {
        Self::new(m, n, k, false, true)
    }
    /// Aᵀ · B, A stored k×m — a weight gradient `dyᵀ · x`.
    pub fn tn(m: usize, n: usize, k: usize) -> Self {
        Self::new(m, n, k, true, false)
    }
    /// Aᵀ · Bᵀ
    pub fn tt(m: usize, n: usize, k: usize) -> Self {
        Self::new(m, n, k, true, true)
    }
    pub fn alpha(mut self, alpha: f32) -> Self {
        self.alpha = alpha;
        self
    }
    /// `C += ...` (beta = 1).
    pub fn accumulate(mut self) -> Self {
        self.beta = 1.0;
        self
    }
    pub fn beta(mut self, beta: f32) -> Self {
        self.beta = beta;
        self
    }
    pub fn batched(
        mut self,
        batch: usize,
        stride_a: usize,
        stride_b: usize,
        stride_c: usize,
    ) -> Self {
        self.batch = batch;
        self.stride_a = stride_a;
        self.stride_b = stride_b;
        self.stride_c = stride_c;
        self
    }
    /// Elements of A, B, C the spec reads or writes (for bounds checks).
    pub fn extents(&self) -> (usize, usize, usize) {
        let last = self.batch.saturating_sub(1);
        (
            last * self.stride_a + self.m * self.k,
            last * self.stride_b + self.k * self.n,
            last * self.stride_c + self.m * self.n,
        )
    }
    pub fn flops(&self) -> f64 {
        2.0 * self.m as f64 * self.n as f64 * self.k as f64 * self.batch as f64
    }
}

/// Shape of an attention softmax over `scores` laid out [batch, heads, tq, tk].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Attn {
    pub batch: usize,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads (grouped-query attention): query head h reads kv head
    /// h / (heads / kv_heads). Equal to `heads` for multi-head attention.
    pub kv_heads: usize,
    pub tq: usize,
    pub tk: usize,
    /// Multiplies the scores before the softmax (1/√head_dim).
    pub scale: f32,
    /// Query i sees keys j ≤ i + (tk − tq).
    pub causal: bool,
}

impl Attn {
    /// Query heads per key/value head (1 for multi-head attention).
    pub fn group(&self) -> usize {
        self.heads / self.kv_heads.max(1)
    }
    /// Ok when the head counts make sense: at least one kv head, and `kv_heads` dividing
    /// `heads` (each kv head serves a whole group of query heads).
    pub fn check_heads(&self) -> Result<()> {
        anyhow::ensure!(
            self.kv_heads >= 1 && self.heads.is_multiple_of(self.kv_heads),
            "attention {self:?}: kv_heads {} must be at least 1 and divide heads {}",
            self.kv_heads,
            self.heads
        );
        Ok(())
    }
    /// Rows of scores and probs, [batch, heads, tq]: one per query head (kv heads share keys,
    /// not scores).
    pub fn rows(&self) -> usize {
        self.batch * self.heads * self.tq
    }
    pub fn len(&self) -> usize {
        self.rows() * self.tk
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One AdamW update (decoupled weight decay, as in PyTorch's `AdamW`).
///
/// `m = b1·m + (1−b1)·g; v = b2·v + (1−b2)·g²;`
/// `p −= lr · (m/(1−b1^t) / (sqrt(v/(1−b2^t)) + eps) + wd·p)`
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamW {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
    /// Step number, starting at 1, for bias correction.
    pub step: u32,
}

impl AdamW {
    pub fn bias_corrections(&self) -> (f32, f32) {
        let t = self.step.max(1) as i32;
        (1.0 - self.beta1.powi(t), 1.0 - self.beta2.powi(t))
    }
}

/// Work a device has done since it was opened: what one training step costs beyond its
/// arithmetic (each dispatch and submit has a fixed cost; each read back stalls on the device).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Counters {
    /// Kernel dispatches.
    pub dispatches: u64,
    /// Command buffers submitted to the queue.
    pub submits: u64,
    /// Bytes copied device → host (downloads).
    pub read_back_bytes: u64,
    /// Downloads (each waits for the device).
    pub read_backs: u64,
    /// Bytes copied host → device (uploads and writes).
    pub uploaded_bytes: u64,
}

impl Counters {
    /// The work of both spans.
    pub fn plus(&self, o: &Counters) -> Counters {
        Counters {
            dispatches: self.dispatches + o.dispatches,
            submits: self.submits + o.submits,
            read_back_bytes: self.read_back_bytes + o.read_back_bytes,
            read_backs: self.read_backs + o.read_backs,
            uploaded_bytes: self.uploaded_bytes + o.uploaded_bytes,
        }
    }
    /// The work done between `earlier` and `self`.
    pub fn since(&self, earlier: &Counters) -> Counters {
        Counters {
            dispatches: self.dispatches - earlier.dispatches,
            submits: self.submits - earlier.submits,
            read_back_bytes: self.read_back_bytes - earlier.read_back_bytes,
            read_backs: self.read_backs - earlier.read_backs,
            uploaded_bytes: self.uploaded_bytes - earlier.uploaded_bytes,
        }
    }
}

/// The op interface. See the module docs for the conventions.
pub trait Backend: Send + Sync + 'static {
    type Buf: Send + Sync;
    type IdsBuf: Send + Sync;

    /// Human-readable device name (e.g. "cpu (2 threads)", "llvmpipe (LLVM 15.0.6, 256 bits)").
    fn name(&self) -> String;
    fn kind(&self) -> BackendKind;
    fn ledger(&self) -> &Ledger;

    // ---- memory ---------------------------------------------------------------------------
    /// A zero-filled tensor of `len` f32.
    fn zeros(&self, len: usize, kind: MemKind) -> Result<Tensor<Self>>;
    fn upload(&self, data: &[f32], kind: MemKind) -> Result<Tensor<Self>>;
    /// Uploads `data` rounded to bf16 (nearest even), two values per word (see [`DType::Bf16`]).
    fn upload_bf16(&self, data: &[f32], kind: MemKind) -> Result<Tensor<Self>>;
    /// A frozen weight kept in one of GGUF's block formats ([`DType::Q8_0`], `Q4_0`, `Q4_1`):
    /// `bytes` are `len / 32` blocks as llama.cpp stores them (see [`quant`]), counted in the
    /// ledger at their real size. A matrix's rows must be whole blocks (its width a multiple of
    /// 32); an error says so when `len` or the byte count does not fit the format.
    fn upload_blocks(
        &self,
        bytes: &[u8],
        dtype: DType,
        len: usize,
        kind: MemKind,
    ) -> Result<Tensor<Self>>;
    /// Waits for queued work, then copies the tensor to the host (bf16 widened to f32, block
    /// formats dequantized).
    fn download(&self, t: &Tensor<Self>) -> Result<Vec<f32>>;
    /// Overwrites the whole tensor from the host; `data.len()` must equal `t.len()` (rounded
    /// to bf16 for a bf16 tensor).
    fn write(&self, t: &mut Tensor<Self>, data: &[f32]) -> Result<()>;
    /// Uploads ids (tokens or targets); `Ids::IGNORE` marks positions without a target.
    fn ids(&self, ids: &[u32]) -> Result<Ids<Self>>;
    /// Waits for queued work; reports a deferred device error (out of memory, validation).
    fn sync(&self) -> Result<()>;
    /// Dispatches, submits and transfers so far, on backends that queue work for a device
    /// (`None` on the CPU, where ops run in place).
    fn counters(&self) -> Option<Counters> {
        None
    }

    // ---- elementwise ----------------------------------------------------------------------
    fn fill(&self, x: &mut Tensor<Self>, value: f32);
    /// dst[..src.len()] = src
    fn copy(&self, src: &Tensor<Self>, dst: &mut Tensor<Self>);
    /// dst[dst_at..dst_at + len] = src[src_at..src_at + len] — rows between buffers of other
    /// shapes: a chunk of rows out of a batch, or rows appended to a generation's key/value cache.
    fn copy_range(
        &self,
        src: &Tensor<Self>,
        src_at: usize,
        dst: &mut Tensor<Self>,
        dst_at: usize,
        len: usize,
    );
    /// x *= s
    fn scale(&self, x: &mut Tensor<Self>, s: f32);
    /// y += alpha · x
    fn axpy(&self, alpha: f32, x: &Tensor<Self>, y: &mut Tensor<Self>);
    /// out = a ⊙ b
    fn mul(&self, a: &Tensor<Self>, b: &Tensor<Self>, out: &mut Tensor<Self>);
    /// out[r, c] = x[r, c] · v[c]; x, out: [rows, cols], v: [cols]
    fn mul_cols(
        &self,
        x: &Tensor<Self>,
        v: &Tensor<Self>,
        out: &mut Tensor<Self>,
        rows: usize,
        cols: usize,
    );
    /// x[r, c] += bias[c]; x: [rows, cols], bias: [cols]
    fn add_bias(&self, x: &mut Tensor<Self>, bias: &Tensor<Self>, rows: usize, cols: usize);
    /// y[r, c] = bias[c] (+ residual[r, c]): a linear layer's output before `matmul`
    /// accumulates x·Wᵀ into it, so bias and residual cost no pass of their own after the GEMM.
    /// y, residual: [rows, cols], bias: [cols].
    fn bias_rows(
        &self,
        bias: &Tensor<Self>,
        residual: Option<&Tensor<Self>>,
        y: &mut Tensor<Self>,
        rows: usize,
        cols: usize,
    ) {
        match residual {
            Some(r) => self.copy(r, y),
            None => self.fill(y, 0.0),
        }
        self.add_bias(y, bias, rows, cols);
    }
    /// out[c] (+)= Σ_r x[r, c] — the backward of `add_bias`; accumulates when `accumulate`.
    fn col_sum(
        &self,
        x: &Tensor<Self>,
        out: &mut Tensor<Self>,
        rows: usize,
        cols: usize,
        accumulate: bool,
    );
    /// out[slot] = Σ x² (for global gradient norms: one slot per tensor, one download).
    fn sumsq(&self, x: &Tensor<Self>, out: &mut Tensor<Self>, slot: usize);
    /// out[slot] = Σ x
    fn sum(&self, x: &Tensor<Self>, out: &mut Tensor<Self>, slot: usize);
    /// out[slot] = 1 / sqrt(Σ x²), the inverse of x's Euclidean (Frobenius) norm, or 0 when x
    /// is all zero: to divide by a norm that stays on the device (AdaLoRA's orthogonality
    /// penalty, whose gradient is 2·P·N/‖N‖_F).
    fn inv_norm(&self, x: &Tensor<Self>, out: &mut Tensor<Self>, slot: usize);

    // ---- linear algebra -------------------------------------------------------------------
    fn matmul(&self, a: &Tensor<Self>, b: &Tensor<Self>, c: &mut Tensor<Self>, spec: &Gemm);
    /// y[a, c, b, d] = x[a, b, c, d] — e.g. [B, T, H, D] ↔ [B, H, T, D].
    fn permute0213(&self, x: &Tensor<Self>, y: &mut Tensor<Self>, dims: [usize; 4]);

    // ---- layers ---------------------------------------------------------------------------
    /// y = gelu(x), the erf form BERT uses.
    fn gelu_forward(&self, x: &Tensor<Self>, y: &mut Tensor<Self>);
    /// dx = dy ⊙ gelu'(x)
    fn gelu_backward(&self, x: &Tensor<Self>, dy: &Tensor<Self>, dx: &mut Tensor<Self>);
    /// y = tanh(x) (BERT's pooler).
    fn tanh_forward(&self, x: &Tensor<Self>, y: &mut Tensor<Self>);
    /// dx = dy ⊙ (1 − y²), from the forward's output `y`.
    fn tanh_backward(&self, y: &Tensor<Self>, dy: &Tensor<Self>, dx: &mut Tensor<Self>);
    /// Row-wise layer norm over `cols`: y = (x − mean)·rstd·gamma + beta; saves mean, rstd: [rows].
    #[allow(clippy::too_many_arguments)]
    fn layernorm_forward(
        &self,
        x: &Tensor<Self>,
        gamma: &Tensor<Self>,
        beta: &Tensor<Self>,
        y: &mut Tensor<Self>,
        mean: &mut Tensor<Self>,
        rstd: &mut Tensor<Self>,
        rows: usize,
        cols: usize,
        eps: f32,
    );
    /// dx = ∂L/∂x (written); dgamma, dbeta accumulate (`+=`) when given.
    #[allow(clippy::too_many_arguments)]
    fn layernorm_backward(
        &self,
        dy: &Tensor<Self>,
        x: &Tensor<Self>,
        gamma: &Tensor<Self>,
        mean: &Tensor<Self>,
        rstd: &Tensor<Self>,
        dx: &mut Tensor<Self>,
        dgamma: Option<&mut Tensor<Self>>,
        dbeta: Option<&mut Tensor<Self>>,
        rows: usize,
        cols: usize,
    );
    /// Row-wise RMSNorm over `cols` (Llama's LlamaRMSNorm, computed in f32):
    /// rstd[r] = 1/sqrt(mean_c x[r,c]² + eps); y[r,c] = x[r,c]·rstd[r]·gamma[c].
    /// x, y: [rows, cols]; gamma: [cols]; rstd: [rows] saved for the backward.
    #[allow(clippy::too_many_arguments)]
    fn rmsnorm_forward(
        &self,
        x: &Tensor<Self>,
        gamma: &Tensor<Self>,
        y: &mut Tensor<Self>,
        rstd: &mut Tensor<Self>,
        rows: usize,
        cols: usize,
        eps: f32,
    );
    /// Backward of [`Backend::rmsnorm_forward`]: dx (written) = ∂L/∂x =
    /// rstd·(dy⊙gamma − x̂·mean_c(dy⊙gamma⊙x̂)) with x̂ = x·rstd; dgamma accumulates (`+=`)
    /// Σ_r dy⊙x̂ when given. dy, x, dx: [rows, cols]; gamma, dgamma: [cols]; rstd: [rows].
    #[allow(clippy::too_many_arguments)]
    fn rmsnorm_backward(
        &self,
        dy: &Tensor<Self>,
        x: &Tensor<Self>,
        gamma: &Tensor<Self>,
        rstd: &Tensor<Self>,
        dx: &mut Tensor<Self>,
        dgamma: Option<&mut Tensor<Self>>,
        rows: usize,
        cols: usize,
    );
    /// Rotary position embedding, Hugging Face's half-split (`rotate_half`) form, on
    /// x: [N, heads·head_dim] (head h in columns h·D..(h+1)·D, N rows = tokens); y: the same.
    /// Row n is at position positions[n] (positions: [N]); table: [P, D/2, 2] holds (cos θ, sin θ)
    /// of frequency i at position p at (p·D/2 + i)·2 (+1 for sin), P > every position (see
    /// `model::rope::rope_table`). With x1 = x[.., :D/2], x2 = x[.., D/2:] of each head:
    /// y1 = x1·cos − x2·sin, y2 = x2·cos + x1·sin.
    /// With `inverse` the rotation is by −θ (sin negated): a rotation's inverse is its transpose,
    /// so that is also the backward, dx = rope(dy, inverse).
    #[allow(clippy::too_many_arguments)]
    fn rope(
        &self,
        x: &Tensor<Self>,
        y: &mut Tensor<Self>,
        table: &Tensor<Self>,
        positions: &Ids<Self>,
        heads: usize,
        head_dim: usize,
        inverse: bool,
    );
    /// SwiGLU's gating: out = silu(gate) ⊙ up, silu(z) = z·σ(z). gate, up, out: [n].
    fn swiglu_forward(&self, gate: &Tensor<Self>, up: &Tensor<Self>, out: &mut Tensor<Self>);
    /// Backward of [`Backend::swiglu_forward`]: dgate = dout ⊙ up ⊙ silu'(gate) with
    /// silu'(z) = σ(z)·(1 + z·(1 − σ(z))), dup = dout ⊙ silu(gate) (both written). All [n].
    fn swiglu_backward(
        &self,
        gate: &Tensor<Self>,
        up: &Tensor<Self>,
        dout: &Tensor<Self>,
        dgate: &mut Tensor<Self>,
        dup: &mut Tensor<Self>,
    );
    /// probs = softmax(scale · scores) over the last axis, with the causal mask and an optional
    /// key mask `key_mask: [batch, tk]` (1 keep, 0 drop). A row with no visible key is all zero.
    fn softmax_forward(
        &self,
        scores: &Tensor<Self>,
        probs: &mut Tensor<Self>,
        key_mask: Option<&Tensor<Self>>,
        spec: &Attn,
    );
    /// dscores = scale · probs ⊙ (dprobs − Σ_j probs·dprobs)
    fn softmax_backward(
        &self,
        probs: &Tensor<Self>,
        dprobs: &Tensor<Self>,
        dscores: &mut Tensor<Self>,
        spec: &Attn,
    );
    /// Multi-head (or grouped-query) attention on projections in the layout linear layers
    /// write: q: [B, tq, H·D], k, v: [B, tk, KVH·D] with KVH = `spec.kv_heads` (head h is
    /// columns h·D..(h+1)·D). Query head h reads kv head h / (H / KVH). probs: [B, H, tq, tk] =
    /// softmax(scale · q_h·k_{kv(h)}ᵀ) with the masks of `softmax_forward` (saved for the
    /// backward); ctx: [B, tq, H·D] = probs_h · v_{kv(h)}. `scores`: scratch [B, H, tq, tk].
    /// An error when KVH does not divide H.
    ///
    /// The default composes permutes, batched GEMMs and `softmax_forward`
    /// ([`attention_forward_unfused`]); a backend may fuse it.
    #[allow(clippy::too_many_arguments)]
    fn attention_forward(
        &self,
        q: &Tensor<Self>,
        k: &Tensor<Self>,
        v: &Tensor<Self>,
        key_mask: Option<&Tensor<Self>>,
        probs: &mut Tensor<Self>,
        ctx: &mut Tensor<Self>,
        scores: &mut Tensor<Self>,
        spec: &Attn,
        head_dim: usize,
    ) -> Result<()> {
        attention_forward_unfused(self, q, k, v, key_mask, probs, ctx, scores, spec, head_dim)
    }
    /// Backward of [`Backend::attention_forward`]: dctx: [B, tq, H·D] → dq: [B, tq, H·D],
    /// dk, dv: [B, tk, KVH·D] (written; a kv head's gradient sums over its query heads).
    /// `dprobs`, `dscores`: scratch [B, H, tq, tk].
    #[allow(clippy::too_many_arguments)]
    fn attention_backward(
        &self,
        q: &Tensor<Self>,
        k: &Tensor<Self>,
        v: &Tensor<Self>,
        probs: &Tensor<Self>,
        dctx: &Tensor<Self>,
        dq: &mut Tensor<Self>,
        dk: &mut Tensor<Self>,
        dv: &mut Tensor<Self>,
        dprobs: &mut Tensor<Self>,
        dscores: &mut Tensor<Self>,
        spec: &Attn,
        head_dim: usize,
    ) -> Result<()> {
        attention_backward_unfused(
            self, q, k, v, probs, dctx, dq, dk, dv, dprobs, dscores, spec, head_dim,
        )
    }
    /// out[i, :] (+)= table[ids[i], :]; out: [ids.len(), dim]; accumulates when `accumulate`.
    fn embedding_forward(
        &self,
        ids: &Ids<Self>,
        table: &Tensor<Self>,
        out: &mut Tensor<Self>,
        dim: usize,
        accumulate: bool,
    );
    /// dtable[ids[i], :] += dout[i, :] (deterministic order; IGNORE ids are skipped).
    fn embedding_backward(
        &self,
        ids: &Ids<Self>,
        dout: &Tensor<Self>,
        dtable: &mut Tensor<Self>,
        dim: usize,
    );
    /// Softmax cross-entropy per row: losses[r] = −log softmax(logits[r])[t_r];
    /// dlogits[r] = grad_scale · (softmax(logits[r]) − onehot(t_r)). Rows whose target is
    /// IGNORE get loss 0 and gradient 0.
    #[allow(clippy::too_many_arguments)]
    fn cross_entropy(
        &self,
        logits: &Tensor<Self>,
        targets: &Ids<Self>,
        dlogits: &mut Tensor<Self>,
        losses: &mut Tensor<Self>,
        rows: usize,
        classes: usize,
        grad_scale: f32,
    );
    /// One AdamW step on param with grad, updating the moments m and v in place. With
    /// `grad_scale = Some((s, i))` the gradient is multiplied by `s[i]` first (a clipping factor
    /// from [`Backend::clip_factor`], so clipping needs no read-back).
    fn adamw(
        &self,
        param: &mut Tensor<Self>,
        grad: &Tensor<Self>,
        m: &mut Tensor<Self>,
        v: &mut Tensor<Self>,
        cfg: &AdamW,
        grad_scale: Option<(&Tensor<Self>, usize)>,
    );
    /// AdaLoRA's importance averages of a parameter's entries (PEFT's sensitivity and
    /// uncertainty), updated in place — an exponential moving average of what `state` holds,
    /// neither overwritten nor summed into. With I_k = |w_k·g_k|:
    /// `state[k] ← β1·state[k] + (1−β1)·I_k` (the sensitivity), then
    /// `state[n + k] ← β2·state[n + k] + (1−β2)·|I_k − state[k]|` (the uncertainty, from the
    /// updated sensitivity, as PEFT does). w, g: [n]; state: [2, n].
    fn importance_ema(
        &self,
        w: &Tensor<Self>,
        g: &Tensor<Self>,
        state: &mut Tensor<Self>,
        beta1: f32,
        beta2: f32,
    );
    /// Global-norm clipping on the device: with n = sqrt(Σ sumsq[..count]), writes
    /// out[0] = n and out[1] = clip / n when clip > 0 and n > clip, else 1 (NaN when n is not
    /// finite, so a diverged step poisons the update and the read-back reports it).
    fn clip_factor(&self, sumsq: &Tensor<Self>, count: usize, clip: f32, out: &mut Tensor<Self>);
}

/// [`Backend::attention_forward`] composed of permutes into [B, H, T, D], batched GEMMs and
/// `softmax_forward`: the default, and the oracle fused implementations are tested against.
///
/// Grouped-query attention costs no copies of k and v per query head: in the [B, H, tq, D]
/// layout the `group` query heads of one kv head are contiguous, so they are one
/// (group·tq × D) matrix, and each product is one GEMM per (b, kv head) over it.
#[allow(clippy::too_many_arguments)]
pub fn attention_forward_unfused<B: Backend + ?Sized>(
    be: &B,
    q: &Tensor<B>,
    k: &Tensor<B>,
    v: &Tensor<B>,
    key_mask: Option<&Tensor<B>>,
    probs: &mut Tensor<B>,
    ctx: &mut Tensor<B>,
    scores: &mut Tensor<B>,
    spec: &Attn,
    head_dim: usize,
) -> Result<()> {
    spec.check_heads()?;
    let Attn {
        batch: b,
        heads: h,
        kv_heads: kvh,
        tq,
        tk,
        ..
    } = *spec;
    let d = head_dim;
    // gq: query rows of one kv group; bkv: (b, kv head) pairs, the GEMMs' batch.
    let (gq, bkv) = (spec.group() * tq, b * kvh);
    let z = |len| be.zeros(len, MemKind::Scratch);
    let (mut qh, mut kh, mut vh) = (z(b * h * tq * d)?, z(bkv * tk * d)?, z(bkv * tk * d)?);
    be.permute0213(q, &mut qh, [b, tq, h, d]);
    be.permute0213(k, &mut kh, [b, tk, kvh, d]);
    be.permute0213(v, &mut vh, [b, tk, kvh, d]);
    // scores: [B, H, tq, tk] = qh · khᵀ per kv group (the scale is applied inside the softmax)
    be.matmul(
        &qh,
        &kh,
        scores,
        &Gemm::nt(gq, tk, d).batched(bkv, gq * d, tk * d, gq * tk),
    );
    be.softmax_forward(scores, probs, key_mask, spec);
    // ctxh: [B, H, tq, D] = probs · vh (into qh, no longer needed)
    be.matmul(
        probs,
        &vh,
        &mut qh,
        &Gemm::nn(gq, d, tk).batched(bkv, gq * tk, tk * d, gq * d),
    );
    be.permute0213(&qh, ctx, [b, h, tq, d]);
    Ok(())
}

/// [`Backend::attention_backward`] composed of permutes, batched GEMMs and `softmax_backward`.
/// A kv head's dk and dv sum over its query heads inside one GEMM (the group's rows are its
/// depth), as in the forward.
#[allow(clippy::too_many_arguments)]
pub fn attention_backward_unfused<B: Backend + ?Sized>(
    be: &B,
    q: &Tensor<B>,
    k: &Tensor<B>,
    v: &Tensor<B>,
    probs: &Tensor<B>,
    dctx: &Tensor<B>,
    dq: &mut Tensor<B>,
    dk: &mut Tensor<B>,
    dv: &mut Tensor<B>,
    dprobs: &mut Tensor<B>,
    dscores: &mut Tensor<B>,
    spec: &Attn,
    head_dim: usize,
) -> Result<()> {
    spec.check_heads()?;
    let Attn {
        batch: b,
        heads: h,
        kv_heads: kvh,
        tq,
        tk,
        ..
    } = *spec;
    let d = head_dim;
    let (gq, bkv) = (spec.group() * tq, b * kvh);
    let z = |len| be.zeros(len, MemKind::Scratch);
    let (mut qh, mut kh, mut vh) = (z(b * h * tq * d)?, z(bkv * tk * d)?, z(bkv * tk * d)?);
    let (mut dch, mut gh) = (z(b * h * tq * d)?, z(bkv * tk * d)?);
    be.permute0213(q, &mut qh, [b, tq, h, d]);
    be.permute0213(k, &mut kh, [b, tk, kvh, d]);
    be.permute0213(v, &mut vh, [b, tk, kvh, d]);
    be.permute0213(dctx, &mut dch, [b, tq, h, d]);
    // dprobs: [B, H, tq, tk] = dctxh · vhᵀ
    be.matmul(
        &dch,
        &vh,
        dprobs,
        &Gemm::nt(gq, tk, d).batched(bkv, gq * d, tk * d, gq * tk),
    );
    // dvh: [B, KVH, tk, D] = probsᵀ · dctxh (summed over the group's query heads)
    be.matmul(
        probs,
        &dch,
        &mut gh,
        &Gemm::tn(tk, d, gq).batched(bkv, gq * tk, gq * d, tk * d),
    );
    be.permute0213(&gh, dv, [b, kvh, tk, d]);
    be.softmax_backward(probs, dprobs, dscores, spec);
    // dqh: [B, H, tq, D] = dscores · kh (into dch, no longer needed)
    be.matmul(
        dscores,
        &kh,
        &mut dch,
        &Gemm::nn(gq, d, tk).batched(bkv, gq * tk, tk * d, gq * d),
    );
    be.permute0213(&dch, dq, [b, h, tq, d]);
    // dkh: [B, KVH, tk, D] = dscoresᵀ · qh (summed over the group's query heads)
    be.matmul(
        dscores,
        &qh,
        &mut gh,
        &Gemm::tn(tk, d, gq).batched(bkv, gq * tk, gq * d, tk * d),
    );
    be.permute0213(&gh, dk, [b, kvh, tk, d]);
    Ok(())
}
