//! The CPU backend: plain Rust, rows split across rayon threads, GEMM through the `gemm` crate.
//!
//! This is the oracle the WGSL kernels are tested against, so every op is written for clarity
//! first; the hot ones (GEMM, softmax, layer norm) are still parallel and cache-friendly because
//! this is also the fast path on machines without a GPU.

mod attention;
pub mod bf16;
mod llama_ops;
pub mod quant_gemm;
pub mod simd;
use super::profile::{self, gemm_key};
mod skinny;

use super::{AdamW, Attn, Backend, BackendKind, DType, Gemm, Ids, Ledger, MemKind, Tensor};
use anyhow::{ensure, Result};
use rayon::prelude::*;
use simd::vectorized;
use std::sync::atomic::{AtomicU64, Ordering};

/// Rows per rayon task for row-wise ops; small enough to balance, large enough to amortise.
const ROW_CHUNK: usize = 16;
/// Elements per rayon task for elementwise ops.
const ELEM_CHUNK: usize = 1 << 14;
/// Columns per rayon task for column reductions (bias and LayerNorm parameter gradients).
const COL_BLOCK: usize = 64;

pub struct Cpu {
    ledger: Ledger,
    threads: usize,
    /// Packing buffers of the bf16 GEMM, reused across calls.
    bf16_ws: bf16::Workspace,
    /// GEMM FLOPs run so far (2·m·n·k per batch item), the tally `adarank plan` is held to.
    gemm_flops: AtomicU64,
    /// Wall time per op (off unless made by [`Cpu::profiled`]).
    profile: profile::Profile,
    /// Scratch of the small-dimension GEMMs (see [`skinny`]): (partial sums, transposes),
    /// reused across calls.
    skinny_ws: std::sync::Mutex<(Vec<f32>, Vec<f32>)>,
}

impl Default for Cpu {
    fn default() -> Self {
        Self::new()
    }
}

impl Cpu {
    pub fn new() -> Self {
        Self {
            ledger: Ledger::new(),
            threads: rayon::current_num_threads(),
            bf16_ws: bf16::Workspace::default(),
            gemm_flops: AtomicU64::new(0),
            profile: profile::Profile::new(false),
            skinny_ws: Default::default(),
        }
    }

    /// A backend that times every op (see [`profile`]); [`Cpu::take_profile`] reads the totals.
    pub fn profiled() -> Self {
        Self {
            profile: profile::Profile::new(true),
            ..Self::new()
        }
    }

    /// Wall time per op since the last call, slowest first (empty unless [`Cpu::profiled`]).
    pub fn take_profile(&self) -> Vec<profile::OpTotal> {
        self.profile.take()
    }

    fn tensor(&self, data: Vec<f32>, kind: MemKind) -> Tensor<Self> {
        let len = data.len();
        let guard = self.ledger.hold(kind, (len * 4) as u64);
        Tensor::from_parts(data, len, guard)
    }

    /// A tensor holding `bytes` (already checked to be `len` values of `dtype`), in the f32
    /// container padded to whole words; the ledger counts the bytes themselves.
    fn block_tensor(&self, bytes: &[u8], dtype: DType, len: usize, kind: MemKind) -> Tensor<Self> {
        let mut words = vec![0f32; bytes.len().div_ceil(4)];
        bytemuck::cast_slice_mut::<f32, u8>(&mut words)[..bytes.len()].copy_from_slice(bytes);
        let guard = self.ledger.hold(kind, bytes.len() as u64);
        Tensor::from_parts_typed(words, len, guard, dtype)
    }

    /// `embedding_forward` with the table in a block format: each row dequantized on its own
    /// (a row is `dim / 32` whole blocks).
    fn embedding_forward_blocks(
        &self,
        ids: &Ids<Self>,
        table: &Tensor<Self>,
        out: &mut Tensor<Self>,
        dim: usize,
        accumulate: bool,
    ) {
        let q = table.dtype();
        assert!(
            dim.is_multiple_of(crate::backend::quant::BLOCK),
            "embedding_forward: a {} table needs rows of whole 32-value blocks, not {dim}",
            q.name()
        );
        let row_bytes = q.bytes(dim);
        let bytes = Self::block_bytes(table);
        out.buf[..ids.len() * dim]
            .par_chunks_mut(dim)
            .zip(ids.buf.par_iter())
            .for_each_init(Vec::new, |row, (o, &id)| {
                if id == Ids::<Self>::IGNORE {
                    if !accumulate {
                        o.fill(0.0);
                    }
                    return;
                }
                let src = &bytes[id as usize * row_bytes..][..row_bytes];
                if accumulate {
                    row.resize(dim, 0.0);
                    crate::backend::quant::dequantize_into(q, src, row);
                    o.iter_mut().zip(row.iter()).for_each(|(o, r)| *o += r);
                } else {
                    crate::backend::quant::dequantize_into(q, src, o);
                }
            });
    }

    /// The values of a bf16 tensor as bf16 bits, in order.
    fn bf16_values(t: &Tensor<Self>) -> &[u16] {
        &bytemuck::cast_slice::<f32, u16>(&t.buf)[..t.len()]
    }

    /// The stored bytes of a tensor in a block format (see [`crate::backend::quant`]).
    fn block_bytes(t: &Tensor<Self>) -> &[u8] {
        &bytemuck::cast_slice::<f32, u8>(&t.buf)[..t.dtype().bytes(t.len())]
    }

    /// matmul with B in a block format (see [`quant_gemm`]).
    fn matmul_quant(&self, a: &Tensor<Self>, b: &Tensor<Self>, c: &mut Tensor<Self>, spec: &Gemm) {
        let (br, bc) = if spec.trans_b {
            (spec.n, spec.k)
        } else {
            (spec.k, spec.n)
        };
        assert!(
            spec.batch == 1 && a.dtype() == DType::F32 && c.dtype() == DType::F32,
            "matmul {spec:?}: a {} B is supported for a single f32 A·B only",
            b.dtype().name()
        );
        assert!(
            bc.is_multiple_of(crate::backend::quant::BLOCK),
            "matmul {spec:?}: B is stored [{br}, {bc}] as {}, whose rows must be whole blocks \
             of 32 values",
            b.dtype().name()
        );
        let bm = quant_gemm::QuantMat {
            dtype: b.dtype(),
            bytes: Self::block_bytes(b),
            rows: br,
            cols: bc,
        };
        let threads = if spec.flops() > 2e6 { self.threads } else { 1 };
        quant_gemm::gemm(spec, &a.buf, bm, &mut c.buf, threads);
    }

    /// matmul with a bf16 B (see [`bf16`]).
    fn matmul_bf16(&self, a: &Tensor<Self>, b: &Tensor<Self>, c: &mut Tensor<Self>, spec: &Gemm) {
        assert!(
            spec.batch == 1 && a.dtype() == DType::F32 && c.dtype() == DType::F32,
            "matmul {spec:?}: a bf16 B is supported for a single f32 A·B only"
        );
        let (br, bc) = if spec.trans_b {
            (spec.n, spec.k)
        } else {
            (spec.k, spec.n)
        };
        let shape = bf16::Shape {
            m: spec.m,
            n: spec.n,
            k: spec.k,
            trans_a: spec.trans_a,
            trans_b: spec.trans_b,
            alpha: spec.alpha,
            beta: spec.beta,
        };
        let bm = bf16::Bf16Mat {
            data: Self::bf16_values(b),
            rows: br,
            cols: bc,
        };
        let threads = if spec.flops() > 2e6 { self.threads } else { 1 };
        bf16::gemm(&self.bf16_ws, &shape, &a.buf, bm, &mut c.buf, threads);
    }

    /// A single f32 GEMM with a dimension of at most [`skinny::MAX_SMALL`] through the unpacked
    /// loops of [`skinny`]; false (nothing done) for any other shape. k > 0.
    fn matmul_skinny(&self, a: &[f32], b: &[f32], c: &mut [f32], spec: &Gemm) -> bool {
        use skinny::MAX_SMALL as S;
        let Gemm {
            m,
            n,
            k,
            trans_a,
            trans_b,
            alpha,
            beta,
            ..
        } = *spec;
        // Another caller may hold the scratch (ops are normally issued from one thread).
        let Ok(mut ws) = self.skinny_ws.try_lock() else {
            return false;
        };
        let (partials, t) = &mut *ws;
        match (trans_a, trans_b) {
            // C = A·Bᵀ, A [m, k], B [n, k].
            (false, true) if n <= S => skinny::row_dots(a, b, c, m, n, k, alpha, beta),
            (false, true) if k <= S => {
                skinny::transpose(b, n, k, t);
                skinny::row_axpys(a, t, c, m, n, k, alpha, beta);
            }
            // C = A·B, A [m, k], B [k, n].
            (false, false) if k <= S => skinny::row_axpys(a, b, c, m, n, k, alpha, beta),
            (false, false) if n <= S => {
                skinny::transpose(b, k, n, t);
                skinny::row_dots(a, t, c, m, n, k, alpha, beta);
            }
            // C = Aᵀ·B, A [k, m], B [k, n].
            (true, false) if m <= S => skinny::col_reduce(a, b, c, m, n, k, alpha, beta, partials),
            (true, false) if n <= S => {
                // Cᵀ [n, m] = Bᵀ·A, then added into C transposed.
                if t.len() < n * m {
                    t.resize(n * m, 0.0);
                }
                skinny::col_reduce(b, a, t, n, m, k, 1.0, 0.0, partials);
                for (i, row) in c[..m * n].chunks_exact_mut(n).enumerate() {
                    for (j, cv) in row.iter_mut().enumerate() {
                        skinny::blend(cv, t[j * m + i], alpha, beta);
                    }
                }
            }
            _ => return false,
        }
        true
    }

    /// GEMM FLOPs this backend has run since it was created.
    pub fn gemm_flops(&self) -> u64 {
        self.gemm_flops.load(Ordering::Relaxed)
    }

    fn gemm_parallelism(&self, flops: f64) -> gemm::Parallelism {
        // Threads only pay off past a few MFLOP; small GEMMs run inside parallel batches anyway.
        if self.threads > 1 && flops > 2e6 {
            gemm::Parallelism::Rayon(self.threads)
        } else {
            gemm::Parallelism::None
        }
    }
}

/// Raw pointer that may cross rayon tasks; each task writes a disjoint batch item.
#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

impl SendPtr {
    /// The pointer. A closure that calls this captures the whole `SendPtr` (which may cross
    /// tasks), not its raw-pointer field (which may not).
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// A strided matrix operand: element (i, j) at `ptr + i·rs + j·cs`.
#[derive(Clone, Copy)]
struct Mat {
    ptr: *const f32,
    rs: isize,
    cs: isize,
}

/// C = alpha · A · B + beta · C on one thread (beta = 0 overwrites C, NaN included); A is m×k,
/// B k×n, C m×n.
///
/// # Safety
/// Every operand must be valid for its strides and sizes, and C writable, not overlapping A, B.
#[allow(clippy::too_many_arguments)]
unsafe fn sgemm(m: usize, n: usize, k: usize, c: Mat, a: Mat, b: Mat, alpha: f32, beta: f32) {
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        for i in 0..m as isize {
            for j in 0..n as isize {
                let p = (c.ptr as *mut f32).offset(i * c.rs + j * c.cs);
                *p = if beta == 0.0 { 0.0 } else { beta * *p };
            }
        }
        return;
    }
    // gemm's convention: dst = alpha·dst + beta·lhs·rhs, dst read only when `read_dst`.
    gemm::gemm(
        m,
        n,
        k,
        c.ptr as *mut f32,
        c.cs,
        c.rs,
        beta != 0.0,
        a.ptr,
        a.cs,
        a.rs,
        b.ptr,
        b.cs,
        b.rs,
        beta,
        alpha,
        false,
        false,
        false,
        gemm::Parallelism::None,
    );
}

pub fn gelu(x: f32) -> f32 {
    0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2))
}

pub fn gelu_grad(x: f32) -> f32 {
    let cdf = 0.5 * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2));
    let pdf = (-0.5 * x * x).exp() * 0.398_942_3;
    cdf + x * pdf
}

/// The error function (std has none): musl's erff through the `libm` crate, accurate to about
/// one ulp and fast enough for GELU on every FFN activation.
pub fn erf(x: f32) -> f32 {
    libm::erff(x)
}

impl Backend for Cpu {
    type Buf = Vec<f32>;
    type IdsBuf = Vec<u32>;

    fn name(&self) -> String {
        format!("cpu ({} threads)", self.threads)
    }
    fn kind(&self) -> BackendKind {
        BackendKind::Cpu
    }
    fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    fn zeros(&self, len: usize, kind: MemKind) -> Result<Tensor<Self>> {
        Ok(self.tensor(vec![0.0; len], kind))
    }
    fn upload(&self, data: &[f32], kind: MemKind) -> Result<Tensor<Self>> {
        Ok(self.tensor(data.to_vec(), kind))
    }
    fn upload_bf16(&self, data: &[f32], kind: MemKind) -> Result<Tensor<Self>> {
        let words = pack_bf16(data);
        let guard = self.ledger.hold(kind, (words.len() * 4) as u64);
        Ok(Tensor::from_parts_typed(
            words,
            data.len(),
            guard,
            DType::Bf16,
        ))
    }
    fn upload_blocks(
        &self,
        bytes: &[u8],
        dtype: DType,
        len: usize,
        kind: MemKind,
    ) -> Result<Tensor<Self>> {
        crate::backend::quant::check_blocks(dtype, bytes.len(), len)?;
        Ok(self.block_tensor(bytes, dtype, len, kind))
    }
    fn download(&self, t: &Tensor<Self>) -> Result<Vec<f32>> {
        Ok(match t.dtype() {
            DType::F32 => t.buf.clone(),
            DType::Bf16 => Self::bf16_values(t)
                .iter()
                .map(|&v| bf16::from_bf16(v))
                .collect(),
            q => crate::backend::dequantize(q, Self::block_bytes(t), t.len())?,
        })
    }
    fn write(&self, t: &mut Tensor<Self>, data: &[f32]) -> Result<()> {
        ensure!(
            data.len() == t.len(),
            "write of {} values into a tensor of {}",
            data.len(),
            t.len()
        );
        match t.dtype() {
            DType::F32 => t.buf.copy_from_slice(data),
            DType::Bf16 => t.buf = pack_bf16(data),
            q => {
                let bytes = crate::backend::quantize(q, data)?;
                bytemuck::cast_slice_mut::<f32, u8>(&mut t.buf)[..bytes.len()]
                    .copy_from_slice(&bytes);
            }
        }
        Ok(())
    }
    fn ids(&self, ids: &[u32]) -> Result<Ids<Self>> {
        Ok(Ids::from_parts(ids.to_vec(), ids.len()))
    }
    fn sync(&self) -> Result<()> {
        Ok(())
    }

    fn fill(&self, x: &mut Tensor<Self>, value: f32) {
        let _p = self.profile.span(|| "fill".into(), 0.0);
        x.buf.fill(value);
    }
    fn copy(&self, src: &Tensor<Self>, dst: &mut Tensor<Self>) {
        let _p = self.profile.span(|| "copy".into(), 0.0);
        dst.buf[..src.len()].copy_from_slice(&src.buf);
    }
    fn copy_range(
        &self,
        src: &Tensor<Self>,
        src_at: usize,
        dst: &mut Tensor<Self>,
        dst_at: usize,
        len: usize,
    ) {
        let _p = self.profile.span(|| "copy_range".into(), 0.0);
        dst.buf[dst_at..dst_at + len].copy_from_slice(&src.buf[src_at..src_at + len]);
    }
    fn scale(&self, x: &mut Tensor<Self>, s: f32) {
        let _p = self.profile.span(|| "scale".into(), 0.0);
        x.buf
            .par_chunks_mut(ELEM_CHUNK)
            .for_each(|c| c.iter_mut().for_each(|v| *v *= s));
    }
    fn axpy(&self, alpha: f32, x: &Tensor<Self>, y: &mut Tensor<Self>) {
        let _p = self.profile.span(|| "axpy".into(), 0.0);
        y.buf
            .par_chunks_mut(ELEM_CHUNK)
            .zip(x.buf.par_chunks(ELEM_CHUNK))
            .for_each(|(y, x)| y.iter_mut().zip(x).for_each(|(y, x)| *y += alpha * x));
    }
    fn mul(&self, a: &Tensor<Self>, b: &Tensor<Self>, out: &mut Tensor<Self>) {
        let _p = self.profile.span(|| "mul".into(), 0.0);
        out.buf
            .par_chunks_mut(ELEM_CHUNK)
            .zip(
                a.buf
                    .par_chunks(ELEM_CHUNK)
                    .zip(b.buf.par_chunks(ELEM_CHUNK)),
            )
            .for_each(|(o, (a, b))| {
                o.iter_mut()
                    .zip(a.iter().zip(b))
                    .for_each(|(o, (a, b))| *o = a * b)
            });
    }
    fn mul_cols(
        &self,
        x: &Tensor<Self>,
        v: &Tensor<Self>,
        out: &mut Tensor<Self>,
        rows: usize,
        cols: usize,
    ) {
        let _p = self.profile.span(|| "mul_cols".into(), 0.0);
        out.buf[..rows * cols]
            .par_chunks_mut(cols)
            .zip(x.buf.par_chunks(cols))
            .for_each(|(o, x)| {
                o.iter_mut()
                    .zip(x.iter().zip(&v.buf))
                    .for_each(|(o, (x, v))| *o = x * v)
            });
    }
    fn add_bias(&self, x: &mut Tensor<Self>, bias: &Tensor<Self>, rows: usize, cols: usize) {
        let _p = self.profile.span(|| "add_bias".into(), 0.0);
        x.buf[..rows * cols]
            .par_chunks_mut(cols)
            .for_each(|r| r.iter_mut().zip(&bias.buf).for_each(|(x, b)| *x += b));
    }
    fn bias_rows(
        &self,
        bias: &Tensor<Self>,
        residual: Option<&Tensor<Self>>,
        y: &mut Tensor<Self>,
        rows: usize,
        cols: usize,
    ) {
        let _p = self.profile.span(|| "bias_rows".into(), 0.0);
        let bias = &bias.buf[..cols];
        let out = y.buf[..rows * cols]
            .par_chunks_mut(cols)
            .with_min_len(ROW_CHUNK);
        match residual {
            Some(res) => out
                .zip(res.buf[..rows * cols].par_chunks(cols))
                .for_each(|(y, r)| {
                    y.iter_mut()
                        .zip(r.iter().zip(bias))
                        .for_each(|(y, (r, b))| *y = r + b)
                }),
            None => out.for_each(|y| y.copy_from_slice(bias)),
        }
    }
    fn col_sum(
        &self,
        x: &Tensor<Self>,
        out: &mut Tensor<Self>,
        rows: usize,
        cols: usize,
        accumulate: bool,
    ) {
        let _p = self.profile.span(|| "col_sum".into(), 0.0);
        // Column blocks in parallel, rows summed in order: deterministic for any thread count.
        out.buf[..cols]
            .par_chunks_mut(COL_BLOCK)
            .enumerate()
            .for_each(|(bi, o)| {
                col_sum_block(&x.buf[..rows * cols], cols, bi * COL_BLOCK, o, accumulate)
            });
    }
    fn sumsq(&self, x: &Tensor<Self>, out: &mut Tensor<Self>, slot: usize) {
        let _p = self.profile.span(|| "sumsq".into(), 0.0);
        let s: f64 = x
            .buf
            .par_chunks(ELEM_CHUNK)
            .map(|c| c.iter().map(|&v| (v as f64) * (v as f64)).sum::<f64>())
            .sum();
        out.buf[slot] = s as f32;
    }
    fn sum(&self, x: &Tensor<Self>, out: &mut Tensor<Self>, slot: usize) {
        let _p = self.profile.span(|| "sum".into(), 0.0);
        let s: f64 = x
            .buf
            .par_chunks(ELEM_CHUNK)
            .map(|c| c.iter().map(|&v| v as f64).sum::<f64>())
            .sum();
        out.buf[slot] = s as f32;
    }

    fn inv_norm(&self, x: &Tensor<Self>, out: &mut Tensor<Self>, slot: usize) {
        let _p = self.profile.span(|| "inv_norm".into(), 0.0);
        let s: f64 = x
            .buf
            .par_chunks(ELEM_CHUNK)
            .map(|c| c.iter().map(|&v| (v as f64) * (v as f64)).sum::<f64>())
            .sum();
        out.buf[slot] = if s > 0.0 {
            (1.0 / s.sqrt()) as f32
        } else {
            0.0
        };
    }

    fn matmul(&self, a: &Tensor<Self>, b: &Tensor<Self>, c: &mut Tensor<Self>, spec: &Gemm) {
        let _p = self
            .profile
            .span(|| gemm_key(spec, b.dtype()), spec.flops());
        if b.dtype() != DType::F32 {
            let (ea, eb, ec) = spec.extents();
            assert!(
                a.len() >= ea && b.len() >= eb && c.len() >= ec,
                "matmul {spec:?} out of bounds: a {} b {} c {}",
                a.len(),
                b.len(),
                c.len()
            );
            if spec.m > 0 && spec.n > 0 {
                self.gemm_flops
                    .fetch_add(spec.flops() as u64, Ordering::Relaxed);
            }
            return if b.dtype() == DType::Bf16 {
                self.matmul_bf16(a, b, c, spec)
            } else {
                self.matmul_quant(a, b, c, spec)
            };
        }
        let Gemm {
            m,
            n,
            k,
            trans_a,
            trans_b,
            alpha,
            beta,
            batch,
            stride_a,
            stride_b,
            stride_c,
        } = *spec;
        let (ea, eb, ec) = spec.extents();
        assert!(
            a.len() >= ea && b.len() >= eb && c.len() >= ec,
            "matmul {spec:?} out of bounds: a {} b {} c {}",
            a.len(),
            b.len(),
            c.len()
        );
        if m == 0 || n == 0 || batch == 0 {
            return;
        }
        self.gemm_flops
            .fetch_add(spec.flops() as u64, Ordering::Relaxed);
        // Row-major strides (row stride, col stride) for gemm's (rs, cs) convention.
        let (a_rs, a_cs) = if trans_a {
            (1isize, m as isize)
        } else {
            (k as isize, 1)
        };
        let (b_rs, b_cs) = if trans_b {
            (1isize, k as isize)
        } else {
            (n as isize, 1)
        };
        let cptr = SendPtr(c.buf.as_mut_ptr());
        let run = |i: usize, par: gemm::Parallelism| {
            let cp = cptr;
            // SAFETY: bounds checked above; batch items write disjoint C blocks unless
            // stride_c == 0, which callers never combine with batch > 1 (asserted below).
            unsafe {
                let dst = cp.0.add(i * stride_c);
                if k == 0 {
                    for r in 0..m {
                        for cc in 0..n {
                            let p = dst.add(r * n + cc);
                            *p = if beta == 0.0 { 0.0 } else { beta * *p };
                        }
                    }
                    return;
                }
                gemm::gemm(
                    m,
                    n,
                    k,
                    dst,
                    1,
                    n as isize,
                    beta != 0.0,
                    a.buf.as_ptr().add(i * stride_a),
                    a_cs,
                    a_rs,
                    b.buf.as_ptr().add(i * stride_b),
                    b_cs,
                    b_rs,
                    beta,
                    alpha,
                    false,
                    false,
                    false,
                    par,
                );
            }
        };
        if batch == 1 && k > 0 && self.matmul_skinny(&a.buf, &b.buf, &mut c.buf, spec) {
            return;
        }
        if batch == 1 {
            run(0, self.gemm_parallelism(spec.flops()));
        } else {
            assert!(stride_c >= m * n, "batched matmul with overlapping C");
            (0..batch)
                .into_par_iter()
                .for_each(|i| run(i, gemm::Parallelism::None));
        }
    }

    fn permute0213(&self, x: &Tensor<Self>, y: &mut Tensor<Self>, dims: [usize; 4]) {
        let _p = self.profile.span(|| "permute0213".into(), 0.0);
        let [d0, d1, d2, d3] = dims;
        // y: [d0, d2, d1, d3]; each output row (a, c, b) copies x row (a, b, c).
        y.buf[..d0 * d1 * d2 * d3]
            .par_chunks_mut(d3)
            .enumerate()
            .for_each(|(row, out)| {
                let b = row % d1;
                let c = (row / d1) % d2;
                let a = row / (d1 * d2);
                let src = ((a * d1 + b) * d2 + c) * d3;
                out.copy_from_slice(&x.buf[src..src + d3]);
            });
    }

    fn gelu_forward(&self, x: &Tensor<Self>, y: &mut Tensor<Self>) {
        let _p = self.profile.span(|| "gelu_forward".into(), 0.0);
        y.buf
            .par_chunks_mut(ELEM_CHUNK)
            .zip(x.buf.par_chunks(ELEM_CHUNK))
            .for_each(|(y, x)| gelu_slice(x, y));
    }
    fn gelu_backward(&self, x: &Tensor<Self>, dy: &Tensor<Self>, dx: &mut Tensor<Self>) {
        let _p = self.profile.span(|| "gelu_backward".into(), 0.0);
        dx.buf
            .par_chunks_mut(ELEM_CHUNK)
            .zip(
                x.buf
                    .par_chunks(ELEM_CHUNK)
                    .zip(dy.buf.par_chunks(ELEM_CHUNK)),
            )
            .for_each(|(dx, (x, dy))| gelu_grad_slice(x, dy, dx));
    }

    fn tanh_forward(&self, x: &Tensor<Self>, y: &mut Tensor<Self>) {
        let _p = self.profile.span(|| "tanh_forward".into(), 0.0);
        y.buf
            .par_chunks_mut(ELEM_CHUNK)
            .zip(x.buf.par_chunks(ELEM_CHUNK))
            .for_each(|(y, x)| y.iter_mut().zip(x).for_each(|(y, &x)| *y = x.tanh()));
    }
    fn tanh_backward(&self, y: &Tensor<Self>, dy: &Tensor<Self>, dx: &mut Tensor<Self>) {
        let _p = self.profile.span(|| "tanh_backward".into(), 0.0);
        dx.buf
            .par_chunks_mut(ELEM_CHUNK)
            .zip(
                y.buf
                    .par_chunks(ELEM_CHUNK)
                    .zip(dy.buf.par_chunks(ELEM_CHUNK)),
            )
            .for_each(|(dx, (y, dy))| {
                dx.iter_mut()
                    .zip(y.iter().zip(dy))
                    .for_each(|(dx, (&y, &dy))| *dx = dy * (1.0 - y * y))
            });
    }

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
    ) {
        let _p = self.profile.span(|| "layernorm_forward".into(), 0.0);
        y.buf[..rows * cols]
            .par_chunks_mut(cols)
            .zip(
                mean.buf[..rows]
                    .par_iter_mut()
                    .zip(rstd.buf[..rows].par_iter_mut()),
            )
            .enumerate()
            .with_min_len(ROW_CHUNK)
            .for_each(|(r, (y, (mu, rs)))| {
                let x = &x.buf[r * cols..(r + 1) * cols];
                (*mu, *rs) = layernorm_row(x, &gamma.buf[..cols], &beta.buf[..cols], y, eps);
            });
    }

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
    ) {
        let _p = self.profile.span(|| "layernorm_backward".into(), 0.0);
        dx.buf[..rows * cols]
            .par_chunks_mut(cols)
            .enumerate()
            .with_min_len(ROW_CHUNK)
            .for_each(|(r, dx)| {
                let x = &x.buf[r * cols..(r + 1) * cols];
                let dy = &dy.buf[r * cols..(r + 1) * cols];
                layernorm_grad_row(dy, x, &gamma.buf[..cols], mean.buf[r], rstd.buf[r], dx);
            });
        if let Some(dg) = dgamma {
            dg.buf[..cols]
                .par_chunks_mut(COL_BLOCK)
                .enumerate()
                .for_each(|(bi, o)| {
                    let c0 = bi * COL_BLOCK;
                    layernorm_dgamma_block(
                        &dy.buf[..rows * cols],
                        &x.buf[..rows * cols],
                        &mean.buf[..rows],
                        &rstd.buf[..rows],
                        cols,
                        c0,
                        o,
                    );
                });
        }
        if let Some(db) = dbeta {
            self.col_sum(dy, db, rows, cols, true);
        }
    }

    fn rmsnorm_forward(
        &self,
        x: &Tensor<Self>,
        gamma: &Tensor<Self>,
        y: &mut Tensor<Self>,
        rstd: &mut Tensor<Self>,
        rows: usize,
        cols: usize,
        eps: f32,
    ) {
        let _p = self.profile.span(|| "rmsnorm_forward".into(), 0.0);
        if cols == 0 {
            return;
        }
        y.buf[..rows * cols]
            .par_chunks_mut(cols)
            .zip(x.buf[..rows * cols].par_chunks(cols))
            .zip(rstd.buf[..rows].par_iter_mut())
            .with_min_len(ROW_CHUNK)
            .for_each(|((y, x), rs)| *rs = llama_ops::rmsnorm_row(x, &gamma.buf[..cols], y, eps));
    }

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
    ) {
        let _p = self.profile.span(|| "rmsnorm_backward".into(), 0.0);
        if cols == 0 {
            return;
        }
        let (dy, x, rstd) = (
            &dy.buf[..rows * cols],
            &x.buf[..rows * cols],
            &rstd.buf[..rows],
        );
        dx.buf[..rows * cols]
            .par_chunks_mut(cols)
            .zip(dy.par_chunks(cols).zip(x.par_chunks(cols)))
            .zip(rstd.par_iter())
            .with_min_len(ROW_CHUNK)
            .for_each(|((dx, (dy, x)), &s)| {
                llama_ops::rmsnorm_grad_row(dy, x, &gamma.buf[..cols], s, dx)
            });
        if let Some(dg) = dgamma {
            dg.buf[..cols]
                .par_chunks_mut(llama_ops::COL_BLOCK)
                .enumerate()
                .for_each(|(bi, o)| {
                    llama_ops::rmsnorm_dgamma_block(dy, x, rstd, cols, bi * llama_ops::COL_BLOCK, o)
                });
        }
    }

    fn rope(
        &self,
        x: &Tensor<Self>,
        y: &mut Tensor<Self>,
        table: &Tensor<Self>,
        positions: &Ids<Self>,
        heads: usize,
        head_dim: usize,
        inverse: bool,
    ) {
        let _p = self.profile.span(|| "rope".into(), 0.0);
        let (n, row) = (positions.len(), heads * head_dim);
        assert!(
            head_dim.is_multiple_of(2),
            "rope: head_dim {head_dim} is odd; the half-split rotation needs an even one"
        );
        assert!(
            x.len() >= n * row && y.len() >= n * row,
            "rope: {n} positions of {heads} heads × {head_dim} need {} values; x has {}, y {}",
            n * row,
            x.len(),
            y.len()
        );
        let table_positions = table.len().checked_div(head_dim).unwrap_or(0);
        let max = positions.buf.iter().max().copied();
        assert!(
            max.is_none_or(|p| (p as usize) < table_positions) || row == 0,
            "rope: position {max:?} is outside the table of {table_positions} positions \
             (build it for more positions with model::rope::rope_table)"
        );
        llama_ops::rope_rows(
            &x.buf,
            &mut y.buf,
            &table.buf,
            &positions.buf,
            heads,
            head_dim,
            inverse,
        );
    }

    fn swiglu_forward(&self, gate: &Tensor<Self>, up: &Tensor<Self>, out: &mut Tensor<Self>) {
        let _p = self.profile.span(|| "swiglu_forward".into(), 0.0);
        let n = gate.len().min(up.len()).min(out.len());
        out.buf[..n]
            .par_chunks_mut(ELEM_CHUNK)
            .zip(
                gate.buf[..n]
                    .par_chunks(ELEM_CHUNK)
                    .zip(up.buf[..n].par_chunks(ELEM_CHUNK)),
            )
            .for_each(|(o, (g, u))| llama_ops::swiglu_slice(g, u, o));
    }

    fn swiglu_backward(
        &self,
        gate: &Tensor<Self>,
        up: &Tensor<Self>,
        dout: &Tensor<Self>,
        dgate: &mut Tensor<Self>,
        dup: &mut Tensor<Self>,
    ) {
        let _p = self.profile.span(|| "swiglu_backward".into(), 0.0);
        let n = [gate.len(), up.len(), dout.len(), dgate.len(), dup.len()]
            .into_iter()
            .min()
            .unwrap_or(0);
        dgate.buf[..n]
            .par_chunks_mut(ELEM_CHUNK)
            .zip(dup.buf[..n].par_chunks_mut(ELEM_CHUNK))
            .enumerate()
            .for_each(|(ci, (dg, du))| {
                let r = ci * ELEM_CHUNK..ci * ELEM_CHUNK + dg.len();
                llama_ops::swiglu_grad_slice(
                    &gate.buf[r.clone()],
                    &up.buf[r.clone()],
                    &dout.buf[r],
                    dg,
                    du,
                )
            });
    }

    fn softmax_forward(
        &self,
        scores: &Tensor<Self>,
        probs: &mut Tensor<Self>,
        key_mask: Option<&Tensor<Self>>,
        spec: &Attn,
    ) {
        let _p = self.profile.span(|| "softmax_forward".into(), 0.0);
        let Attn {
            heads,
            tq,
            tk,
            scale,
            causal,
            ..
        } = *spec;
        probs.buf[..spec.len()]
            .par_chunks_mut(tk)
            .enumerate()
            .with_min_len(ROW_CHUNK)
            .for_each(|(row, p)| {
                let i = row % tq;
                let b = row / (tq * heads);
                let s = &scores.buf[row * tk..(row + 1) * tk];
                let visible = |j: usize| {
                    (!causal || j + tq <= i + tk)
                        && key_mask.is_none_or(|m| m.buf[b * tk + j] != 0.0)
                };
                let mut mx = f32::NEG_INFINITY;
                for (j, &v) in s.iter().enumerate() {
                    if visible(j) {
                        mx = mx.max(v * scale);
                    }
                }
                if mx == f32::NEG_INFINITY {
                    p.fill(0.0);
                    return;
                }
                let mut z = 0.0f32;
                for (j, &v) in s.iter().enumerate() {
                    let e = if visible(j) {
                        (v * scale - mx).exp()
                    } else {
                        0.0
                    };
                    p[j] = e;
                    z += e;
                }
                let inv = 1.0 / z;
                p.iter_mut().for_each(|v| *v *= inv);
            });
    }

    fn softmax_backward(
        &self,
        probs: &Tensor<Self>,
        dprobs: &Tensor<Self>,
        dscores: &mut Tensor<Self>,
        spec: &Attn,
    ) {
        let _p = self.profile.span(|| "softmax_backward".into(), 0.0);
        let tk = spec.tk;
        let scale = spec.scale;
        dscores.buf[..spec.len()]
            .par_chunks_mut(tk)
            .enumerate()
            .with_min_len(ROW_CHUNK)
            .for_each(|(row, ds)| {
                let p = &probs.buf[row * tk..(row + 1) * tk];
                let dp = &dprobs.buf[row * tk..(row + 1) * tk];
                let dot: f32 = p.iter().zip(dp).map(|(a, b)| a * b).sum();
                for j in 0..tk {
                    ds[j] = scale * p[j] * (dp[j] - dot);
                }
            });
    }

    fn attention_forward(
        &self,
        q: &Tensor<Self>,
        k: &Tensor<Self>,
        v: &Tensor<Self>,
        key_mask: Option<&Tensor<Self>>,
        probs: &mut Tensor<Self>,
        ctx: &mut Tensor<Self>,
        _scores: &mut Tensor<Self>,
        spec: &Attn,
        head_dim: usize,
    ) -> Result<()> {
        let _p = self.profile.span(
            || "attention_forward".into(),
            2.0 * attention_gemm_flops(spec, head_dim),
        );
        spec.check_heads()?;
        let (qn, kn) = attention_sizes(spec, head_dim);
        ensure!(
            q.len() >= qn && k.len() >= kn && v.len() >= kn && ctx.len() >= qn,
            "attention_forward {spec:?}, head dim {head_dim}: q {}, k {}, v {}, ctx {} values",
            q.len(),
            k.len(),
            v.len(),
            ctx.len()
        );
        ensure!(
            probs.len() >= spec.len() && key_mask.is_none_or(|m| m.len() >= spec.batch * spec.tk),
            "attention_forward {spec:?}: probs of {} values or a short key mask",
            probs.len()
        );
        if spec.is_empty() {
            // No query or no key: every context row attends to nothing.
            ctx.buf[..qn].fill(0.0);
            return Ok(());
        }
        // Two GEMMs per head: q·kᵀ and probs·v.
        self.gemm_flops.fetch_add(
            (2.0 * attention_gemm_flops(spec, head_dim)) as u64,
            Ordering::Relaxed,
        );
        attention::forward(
            &q.buf,
            &k.buf,
            &v.buf,
            key_mask.map(|m| &m.buf[..]),
            &mut probs.buf,
            &mut ctx.buf,
            spec,
            head_dim,
        );
        Ok(())
    }

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
        _dscores: &mut Tensor<Self>,
        spec: &Attn,
        head_dim: usize,
    ) -> Result<()> {
        let _p = self.profile.span(
            || "attention_backward".into(),
            4.0 * attention_gemm_flops(spec, head_dim),
        );
        spec.check_heads()?;
        let (qn, kn) = attention_sizes(spec, head_dim);
        ensure!(
            [q.len(), dctx.len(), dq.len()].iter().all(|&l| l >= qn)
                && [k.len(), v.len(), dk.len(), dv.len()]
                    .iter()
                    .all(|&l| l >= kn)
                && probs.len() >= spec.len()
                && dprobs.len() >= spec.len(),
            "attention_backward {spec:?}, head dim {head_dim}: an operand is too short"
        );
        if spec.is_empty() {
            for t in [&mut dq.buf[..qn], &mut dk.buf[..kn], &mut dv.buf[..kn]] {
                t.fill(0.0);
            }
            return Ok(());
        }
        // Four GEMMs per head: dprobs, dv, dq, dk.
        self.gemm_flops.fetch_add(
            (4.0 * attention_gemm_flops(spec, head_dim)) as u64,
            Ordering::Relaxed,
        );
        attention::backward(
            &q.buf,
            &k.buf,
            &v.buf,
            &probs.buf,
            &dctx.buf,
            &mut dq.buf,
            &mut dk.buf,
            &mut dv.buf,
            &mut dprobs.buf,
            spec,
            head_dim,
        );
        Ok(())
    }

    fn embedding_forward(
        &self,
        ids: &Ids<Self>,
        table: &Tensor<Self>,
        out: &mut Tensor<Self>,
        dim: usize,
        accumulate: bool,
    ) {
        let _p = self.profile.span(|| "embedding_forward".into(), 0.0);
        if table.dtype().is_quantized() {
            return self.embedding_forward_blocks(ids, table, out, dim, accumulate);
        }
        out.buf[..ids.len() * dim]
            .par_chunks_mut(dim)
            .zip(ids.buf.par_iter())
            .for_each(|(o, &id)| {
                if id == Ids::<Self>::IGNORE {
                    if !accumulate {
                        o.fill(0.0);
                    }
                    return;
                }
                let range = id as usize * dim..(id as usize + 1) * dim;
                match table.dtype() {
                    DType::F32 => {
                        let row = &table.buf[range];
                        if accumulate {
                            o.iter_mut().zip(row).for_each(|(o, r)| *o += r);
                        } else {
                            o.copy_from_slice(row);
                        }
                    }
                    DType::Bf16 => {
                        let row = &Self::bf16_values(table)[range];
                        let wide = row.iter().map(|&v| bf16::from_bf16(v));
                        if accumulate {
                            o.iter_mut().zip(wide).for_each(|(o, r)| *o += r);
                        } else {
                            o.iter_mut().zip(wide).for_each(|(o, r)| *o = r);
                        }
                    }
                    _ => unreachable!("block formats take embedding_forward_blocks"),
                }
            });
    }

    fn embedding_backward(
        &self,
        ids: &Ids<Self>,
        dout: &Tensor<Self>,
        dtable: &mut Tensor<Self>,
        dim: usize,
    ) {
        let _p = self.profile.span(|| "embedding_backward".into(), 0.0);
        // Sequential in token order: deterministic, and the scatter is memory-bound anyway.
        for (i, &id) in ids.buf.iter().enumerate() {
            if id == Ids::<Self>::IGNORE {
                continue;
            }
            let row = &mut dtable.buf[id as usize * dim..(id as usize + 1) * dim];
            row.iter_mut()
                .zip(&dout.buf[i * dim..(i + 1) * dim])
                .for_each(|(t, d)| *t += d);
        }
    }

    fn cross_entropy(
        &self,
        logits: &Tensor<Self>,
        targets: &Ids<Self>,
        dlogits: &mut Tensor<Self>,
        losses: &mut Tensor<Self>,
        rows: usize,
        classes: usize,
        grad_scale: f32,
    ) {
        let _p = self.profile.span(|| "cross_entropy".into(), 0.0);
        dlogits.buf[..rows * classes]
            .par_chunks_mut(classes)
            .zip(losses.buf[..rows].par_iter_mut())
            .enumerate()
            .for_each(|(r, (d, loss))| {
                let t = targets.buf[r];
                if t == Ids::<Self>::IGNORE {
                    d.fill(0.0);
                    *loss = 0.0;
                    return;
                }
                let l = &logits.buf[r * classes..(r + 1) * classes];
                let mx = l.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
                let z: f32 = l.iter().map(|v| (v - mx).exp()).sum();
                let logz = mx + z.ln();
                *loss = logz - l[t as usize];
                for c in 0..classes {
                    let p = (l[c] - logz).exp();
                    d[c] = grad_scale * (p - if c == t as usize { 1.0 } else { 0.0 });
                }
            });
    }

    fn adamw(
        &self,
        param: &mut Tensor<Self>,
        grad: &Tensor<Self>,
        m: &mut Tensor<Self>,
        v: &mut Tensor<Self>,
        cfg: &AdamW,
        grad_scale: Option<(&Tensor<Self>, usize)>,
    ) {
        let _p = self.profile.span(|| "adamw".into(), 0.0);
        let gs = grad_scale.map_or(1.0, |(t, i)| t.buf[i]);
        let (bc1, bc2) = cfg.bias_corrections();
        let AdamW {
            lr,
            beta1,
            beta2,
            eps,
            weight_decay,
            ..
        } = *cfg;
        param
            .buf
            .par_chunks_mut(ELEM_CHUNK)
            .zip(grad.buf.par_chunks(ELEM_CHUNK))
            .zip(
                m.buf
                    .par_chunks_mut(ELEM_CHUNK)
                    .zip(v.buf.par_chunks_mut(ELEM_CHUNK)),
            )
            .for_each(|((p, g), (m, v))| {
                for i in 0..p.len() {
                    let g = if grad_scale.is_some() {
                        g[i] * gs
                    } else {
                        g[i]
                    };
                    m[i] = beta1 * m[i] + (1.0 - beta1) * g;
                    v[i] = beta2 * v[i] + (1.0 - beta2) * g * g;
                    let mhat = m[i] / bc1;
                    let vhat = v[i] / bc2;
                    p[i] -= lr * (mhat / (vhat.sqrt() + eps) + weight_decay * p[i]);
                }
            });
    }

    fn importance_ema(
        &self,
        w: &Tensor<Self>,
        g: &Tensor<Self>,
        state: &mut Tensor<Self>,
        beta1: f32,
        beta2: f32,
    ) {
        let _p = self.profile.span(|| "importance_ema".into(), 0.0);
        let n = w.len();
        let (ipt, unc) = state.buf[..2 * n].split_at_mut(n);
        for k in 0..n {
            let i = (w.buf[k] * g.buf[k]).abs();
            let e = beta1 * ipt[k] + (1.0 - beta1) * i;
            ipt[k] = e;
            unc[k] = beta2 * unc[k] + (1.0 - beta2) * (i - e).abs();
        }
    }
    fn clip_factor(&self, sumsq: &Tensor<Self>, count: usize, clip: f32, out: &mut Tensor<Self>) {
        let _p = self.profile.span(|| "clip_factor".into(), 0.0);
        let norm = sumsq.buf[..count]
            .iter()
            .map(|&v| v as f64)
            .sum::<f64>()
            .sqrt() as f32;
        out.buf[0] = norm;
        out.buf[1] = clip_scale(norm, clip);
    }
}

/// bf16 words of `data` (see `DType::Bf16`) in the CPU backend's f32 container.
fn pack_bf16(data: &[f32]) -> Vec<f32> {
    super::bf16_words(data)
        .into_iter()
        .map(f32::from_bits)
        .collect()
}

/// The factor global-norm clipping multiplies gradients by (see `Backend::clip_factor`).
pub fn clip_scale(norm: f32, clip: f32) -> f32 {
    if !norm.is_finite() {
        f32::NAN
    } else if clip > 0.0 && norm > clip {
        clip / norm
    } else {
        1.0
    }
}

/// FLOPs of one of attention's GEMMs over all heads: 2·tq·tk·D per query head. Grouped-query
/// attention shares k and v between query heads, not the products: each query head still
/// multiplies its own rows, so the count does not depend on `kv_heads`.
fn attention_gemm_flops(spec: &Attn, head_dim: usize) -> f64 {
    2.0 * (spec.batch * spec.heads) as f64 * (spec.tq * spec.tk * head_dim) as f64
}

/// Values of q (and ctx), and of k (and v: `kv_heads` heads), for an attention of `spec`.
fn attention_sizes(spec: &Attn, head_dim: usize) -> (usize, usize) {
    (
        spec.batch * spec.tq * spec.heads * head_dim,
        spec.batch * spec.tk * spec.kv_heads * head_dim,
    )
}

vectorized! {
    /// y = gelu(x), elementwise.
    fn gelu_slice(x: &[f32], y: &mut [f32]) {
        for (y, &x) in y.iter_mut().zip(x) {
            *y = simd::gelu(x);
        }
    }
}

vectorized! {
    /// dx = dy ⊙ gelu'(x), elementwise.
    fn gelu_grad_slice(x: &[f32], dy: &[f32], dx: &mut [f32]) {
        for ((dx, &x), &dy) in dx.iter_mut().zip(x).zip(dy) {
            *dx = dy * simd::gelu_grad(x);
        }
    }
}

vectorized! {
    /// One row of layer norm: y = (x − mean)·rstd·γ + β; returns (mean, rstd).
    fn layernorm_row(x: &[f32], gamma: &[f32], beta: &[f32], y: &mut [f32], eps: f32) -> (f32, f32) {
        let n = x.len() as f32;
        let m = simd::sum(x) / n;
        let var = simd::sum_sq_dev(x, m) / n;
        let s = 1.0 / (var + eps).sqrt();
        for (((y, &x), &g), &b) in y.iter_mut().zip(x).zip(gamma).zip(beta) {
            *y = (x - m) * s * g + b;
        }
        (m, s)
    }
}

vectorized! {
    /// One row of the layer norm backward: dx = (dy·γ − mean(dy·γ) − x̂·mean(dy·γ·x̂))·rstd,
    /// x̂ = (x − mean)·rstd.
    fn layernorm_grad_row(dy: &[f32], x: &[f32], gamma: &[f32], m: f32, s: f32, dx: &mut [f32]) {
        const L: usize = simd::LANES;
        let cols = x.len();
        let body = cols / L * L;
        let (mut ag, mut agx) = ([0.0f32; L], [0.0f32; L]);
        for c0 in (0..body).step_by(L) {
            for l in 0..L {
                let c = c0 + l;
                let g = dy[c] * gamma[c];
                ag[l] += g;
                agx[l] += g * ((x[c] - m) * s);
            }
        }
        let (mut sg, mut sgx) = (ag.iter().sum::<f32>(), agx.iter().sum::<f32>());
        for c in body..cols {
            let g = dy[c] * gamma[c];
            sg += g;
            sgx += g * ((x[c] - m) * s);
        }
        let (mg, mgx) = (sg / cols as f32, sgx / cols as f32);
        for c in 0..cols {
            dx[c] = (dy[c] * gamma[c] - mg - (x[c] - m) * s * mgx) * s;
        }
    }
}

vectorized! {
    /// dγ[c0 + j] += Σ_r dy[r, c]·x̂[r, c] for the columns of `out`, rows in order.
    fn layernorm_dgamma_block(
        dy: &[f32],
        x: &[f32],
        mean: &[f32],
        rstd: &[f32],
        cols: usize,
        c0: usize,
        out: &mut [f32],
    ) {
        let w = out.len();
        let mut acc = [0.0f32; COL_BLOCK];
        for r in 0..mean.len() {
            let (m, s) = (mean[r], rstd[r]);
            let (dyr, xr) = (&dy[r * cols + c0..r * cols + c0 + w], &x[r * cols + c0..r * cols + c0 + w]);
            for j in 0..w {
                acc[j] += dyr[j] * ((xr[j] - m) * s);
            }
        }
        for (o, a) in out.iter_mut().zip(acc) {
            *o += a;
        }
    }
}

vectorized! {
    /// out[j] (+)= Σ_r x[r, c0 + j], rows in order.
    fn col_sum_block(x: &[f32], cols: usize, c0: usize, out: &mut [f32], accumulate: bool) {
        let w = out.len();
        let mut acc = [0.0f32; COL_BLOCK];
        for row in x.chunks_exact(cols) {
            for (a, v) in acc[..w].iter_mut().zip(&row[c0..c0 + w]) {
                *a += v;
            }
        }
        for (o, a) in out.iter_mut().zip(acc) {
            *o = if accumulate { *o + a } else { a };
        }
    }
}
