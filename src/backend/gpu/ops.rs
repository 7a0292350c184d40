//! `Backend` for `Gpu`: argument checks on the host (a bad call is skipped and reported by the
//! next `sync`/`download`, never a panic), then one or more kernel dispatches.

use super::dispatch::{grid, Arg, Bind, Params};
use super::pool::{build_csr, GpuBuf, GpuIds, Pool};
use super::{check_bindable, GemmKernel, Gpu};
use crate::backend::profile::gemm_key;
use crate::backend::{
    bf16_words, AdamW, Attn, Backend, BackendKind, DType, Gemm, Ids, Ledger, MemKind, Tensor,
};
use anyhow::{anyhow, ensure, Result};
use wgpu::util::DeviceExt;

const IGNORE: u32 = u32::MAX;

fn raw(t: &Tensor<Gpu>) -> &wgpu::Buffer {
    t.buf.raw()
}

/// Bytes a tensor's values occupy (bf16: two per 4-byte word).
fn bytes_of(t: &Tensor<Gpu>) -> u64 {
    (t.dtype().words(t.len()) * 4) as u64
}

impl Gpu {
    fn alloc(&self, len: usize, kind: MemKind) -> Result<Tensor<Gpu>> {
        self.alloc_typed(len, kind, DType::F32)
    }

    fn alloc_typed(&self, len: usize, kind: MemKind, dtype: DType) -> Result<Tensor<Gpu>> {
        let bytes = (dtype.words(len) * 4) as u64;
        let what = format!("{} tensor of {len} {dtype:?}", kind.name());
        let buf = self.pool.take(bytes, &what)?;
        let guard = self.ledger.hold(kind, bytes);
        Ok(Tensor::from_parts_typed(
            GpuBuf::new(buf, self.pool.clone()),
            len,
            guard,
            dtype,
        ))
    }

    /// Copies host data into `dst` through a staging buffer recorded in the command stream, so
    /// the write is ordered with the ops around it.
    fn stage_into(&self, dst: &wgpu::Buffer, data: &[u8]) -> Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        super::CounterCells::add(&self.counters.uploaded_bytes, data.len() as u64);
        let staging = self
            .device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some("upload staging"),
                contents: data,
                usage: wgpu::BufferUsages::COPY_SRC,
            });
        self.encode("upload", |enc| {
            enc.copy_buffer_to_buffer(&staging, 0, dst, 0, data.len() as u64)
        });
        Ok(())
    }

    fn small_buffer(&self, data: &[u32], what: &str) -> wgpu::Buffer {
        let mut words = data.to_vec();
        if words.is_empty() {
            words.push(0);
        }
        super::CounterCells::add(&self.counters.uploaded_bytes, (words.len() * 4) as u64);
        self.device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some(what),
                contents: bytemuck::cast_slice(&words),
                usage: wgpu::BufferUsages::STORAGE,
            })
    }

    /// Checks every length condition; records an error and returns false when one fails.
    fn require(&self, op: &'static str, checks: &[(bool, String)]) -> bool {
        for (ok, msg) in checks {
            if !ok {
                self.reject(format!("{op}: {msg}; the op was skipped"));
                return false;
            }
        }
        true
    }

    fn reduce(
        &self,
        op: &'static str,
        x: &Tensor<Gpu>,
        out: &mut Tensor<Gpu>,
        slot: usize,
        mode: usize,
    ) {
        if !self.require(
            op,
            &[(
                slot < out.len(),
                format!("slot {slot} outside an output of {}", out.len()),
            )],
        ) {
            return;
        }
        let n = x.len();
        let parts = n.div_ceil(4096).max(1);
        let scratch = match self.alloc(parts, MemKind::Scratch) {
            Ok(t) => t,
            Err(e) => return self.reject(format!("{op}: {e:#}")),
        };
        if n == 0 {
            self.fill_raw(raw(&scratch), 1, 0.0);
        }
        // Chunks of whole 4096-element partial blocks, so partial indices stay global.
        let chunks = match self.row_chunks(op, n, 1, 4096) {
            Ok(c) => c,
            Err(e) => return self.reject(format!("{e:#}")),
        };
        for (e0, cnt) in chunks {
            if cnt == 0 {
                continue;
            }
            self.dispatch(
                op,
                "reduce",
                "reduce_forward",
                &[],
                &Params::default().u(cnt).u(mode).u(e0 / 4096).u(0),
                &[
                    Bind {
                        slot: 1,
                        buf: raw(x),
                        offset: (e0 * 4) as u64,
                        size: (cnt * 4) as u64,
                    },
                    Bind {
                        slot: 2,
                        buf: raw(&scratch),
                        offset: 0,
                        size: (parts * 4) as u64,
                    },
                ],
                grid(cnt.div_ceil(4096)),
            );
        }
        if let Err(e) = check_bindable(self, op, "the output", (out.len() * 4) as u64) {
            return self.reject(format!("{e:#}"));
        }
        self.dispatch(
            op,
            "reduce",
            "reduce_final",
            &[],
            &Params::default().u(parts).u(mode).u(0).u(slot),
            &[
                Bind {
                    slot: 3,
                    buf: raw(&scratch),
                    offset: 0,
                    size: (parts * 4) as u64,
                },
                Bind {
                    slot: 4,
                    buf: raw(out),
                    offset: 0,
                    size: (out.len() * 4) as u64,
                },
            ],
            [1, 1, 1],
        );
    }

    fn fill_raw(&self, buf: &wgpu::Buffer, n: usize, value: f32) {
        if value == 0.0 && value.is_sign_positive() {
            let bytes = (n * 4) as u64;
            self.encode("fill", |enc| enc.clear_buffer(buf, 0, Some(bytes)));
            return;
        }
        self.elementwise("fill", "elementwise", "fill_forward", n, &[(3, buf)], |c| {
            Params::default().u(c).u(1).f(value)
        });
    }

    /// `matmul` with an explicit kernel for this call (benchmarks, tests of both kernels).
    pub fn matmul_with(
        &self,
        kernel: GemmKernel,
        a: &Tensor<Gpu>,
        b: &Tensor<Gpu>,
        c: &mut Tensor<Gpu>,
        spec: &Gemm,
    ) {
        let (ea, eb, ec) = spec.extents();
        if !self.require(
            "matmul",
            &[
                (
                    a.len() >= ea,
                    format!("{spec:?}: A has {} values, needs {ea}", a.len()),
                ),
                (
                    b.len() >= eb,
                    format!("{spec:?}: B has {} values, needs {eb}", b.len()),
                ),
                (
                    c.len() >= ec,
                    format!("{spec:?}: C has {} values, needs {ec}", c.len()),
                ),
                (
                    spec.batch <= 1 || spec.stride_c >= spec.m * spec.n,
                    format!("{spec:?}: batched matmul with overlapping C"),
                ),
            ],
        ) {
            return;
        }
        if spec.m == 0 || spec.n == 0 || spec.batch == 0 {
            return;
        }
        if !self.require(
            "matmul",
            &[
                (
                    a.dtype() == DType::F32 && c.dtype() == DType::F32,
                    format!("{spec:?}: only B may be bf16 or quantized"),
                ),
                quant_b_fits(b.dtype(), spec),
            ],
        ) {
            return;
        }
        let eb_words = b.dtype().words(eb);
        for (name, e) in [("A", ea), ("B", eb_words), ("C", ec)] {
            if let Err(err) = check_bindable(self, "matmul", name, (e * 4) as u64) {
                return self.reject(format!("{err:#}"));
            }
        }
        self.gemm_dispatch(
            kernel,
            raw(a),
            (raw(b), b.dtype()),
            raw(c),
            spec,
            (ea, eb_words, ec),
        );
    }

    /// Runs `spec` as one or more blocks of C. The subgroup kernel takes whole 128×64 tiles of C
    /// only (no edge guards: see the shader), so a GEMM that is not made of whole tiles is split
    /// on the host: the tile-aligned interior on the subgroup kernel, the right and bottom edge
    /// strips on its small-tile twin, which also takes whole GEMMs too small or too short
    /// (k < 16) for one tile — LoRA's rank-r products, attention's per-head GEMMs. Devices without
    /// subgroups of 8 run register-blocked.
    fn gemm_dispatch(
        &self,
        kernel: GemmKernel,
        a: &wgpu::Buffer,
        b: (&wgpu::Buffer, DType),
        c: &wgpu::Buffer,
        spec: &Gemm,
        ext: (usize, usize, usize),
    ) {
        let whole = GemmBlock {
            r0: 0,
            c0: 0,
            m: spec.m,
            n: spec.n,
        };
        let subgroups = matches!(kernel, GemmKernel::Subgroup | GemmKernel::SubgroupSmall);
        if subgroups && !self.has_subgroups_of_8() {
            return self.gemm_block(GemmKernel::RegisterBlocked, a, b, c, spec, ext, whole);
        }
        if kernel != GemmKernel::Subgroup {
            return self.gemm_block(kernel, a, b, c, spec, ext, whole);
        }
        let (mi, ni) = (spec.m / 128 * 128, spec.n / 64 * 64);
        if mi == 0 || ni == 0 || spec.k < SUBGROUP_MIN_K {
            return self.gemm_block(GemmKernel::SubgroupSmall, a, b, c, spec, ext, whole);
        }
        let blocks = [
            (
                GemmKernel::Subgroup,
                GemmBlock {
                    r0: 0,
                    c0: 0,
                    m: mi,
                    n: ni,
                },
            ),
            (
                GemmKernel::SubgroupSmall,
                GemmBlock {
                    r0: 0,
                    c0: ni,
                    m: mi,
                    n: spec.n - ni,
                },
            ),
            (
                GemmKernel::SubgroupSmall,
                GemmBlock {
                    r0: mi,
                    c0: 0,
                    m: spec.m - mi,
                    n: spec.n,
                },
            ),
        ];
        for (k, blk) in blocks {
            if blk.m > 0 && blk.n > 0 {
                self.gemm_block(k, a, b, c, spec, ext, blk);
            }
        }
    }

    /// Dispatches `kernel` for the block `blk` of C (every batch item).
    #[allow(clippy::too_many_arguments)]
    fn gemm_block(
        &self,
        kernel: GemmKernel,
        a: &wgpu::Buffer,
        (b, b_dtype): (&wgpu::Buffer, DType),
        c: &wgpu::Buffer,
        spec: &Gemm,
        ext: (usize, usize, usize),
        blk: GemmBlock,
    ) {
        // The small kernel's tile (rows per invocation, columns per subgroup of 8) by shape.
        let small = match (blk.m, blk.n) {
            (_, 0..=8) => (16, 8, "matmul_small_16x8"),
            (0..=8, _) => (1, 64, "matmul_small_1x64"),
            _ => (8, 32, "matmul_small_8x32"),
        };
        let (gx, gy) = match kernel {
            GemmKernel::Subgroup => (blk.n / 64, blk.m / 128),
            GemmKernel::SubgroupSmall => (blk.n.div_ceil(small.1), blk.m.div_ceil(8 * small.0)),
            GemmKernel::RegisterBlocked => (blk.n.div_ceil(128), blk.m.div_ceil(64)),
            GemmKernel::Tiled => (blk.n.div_ceil(64), blk.m.div_ceil(64)),
        };
        let (shader, entry) = match kernel {
            GemmKernel::Subgroup => ("matmul_subgroup", "matmul_subgroup"),
            GemmKernel::SubgroupSmall => ("matmul_small", small.2),
            GemmKernel::RegisterBlocked => ("matmul", "matmul_blocked"),
            GemmKernel::Tiled => ("matmul", "matmul_tiled"),
        };
        let flag = |b: bool| if b { 1.0 } else { 0.0 };
        let consts_sub = [
            ("TRANS_A", flag(spec.trans_a)),
            ("TRANS_B", flag(spec.trans_b)),
            ("B_BF16", flag(b_dtype == DType::Bf16)),
            ("B_QUANT", quant_code(b_dtype)),
            ("ACCUMULATE", flag(spec.beta != 0.0)),
        ];
        // matmul.wgsl has no ACCUMULATE constant (its kernels branch on beta per store).
        let consts: &[(&'static str, f64)] = match kernel {
            GemmKernel::Subgroup | GemmKernel::SubgroupSmall => &consts_sub,
            _ => &consts_sub[..4],
        };
        let binds = [
            Bind {
                slot: 1,
                buf: a,
                offset: 0,
                size: (ext.0 * 4) as u64,
            },
            Bind {
                slot: 2,
                buf: b,
                offset: 0,
                size: (ext.1 * 4) as u64,
            },
            Bind {
                slot: 3,
                buf: c,
                offset: 0,
                size: (ext.2 * 4) as u64,
            },
        ];
        // Leading dimensions of the stored operands, and the block's offsets in them.
        let (lda, ldb, ldc) = (
            if spec.trans_a { spec.m } else { spec.k },
            if spec.trans_b { spec.k } else { spec.n },
            spec.n,
        );
        let off_a = if spec.trans_a { blk.r0 } else { blk.r0 * lda };
        let off_b = if spec.trans_b { blk.c0 * ldb } else { blk.c0 };
        let off_c = blk.r0 * ldc + blk.c0;
        let mut z0 = 0;
        while z0 < spec.batch {
            let nz = (spec.batch - z0).min(65535);
            let params = Params::default()
                .u(blk.m)
                .u(blk.n)
                .u(spec.k)
                .u(z0)
                .u(spec.stride_a)
                .u(spec.stride_b)
                .u(spec.stride_c)
                .u(lda)
                .f(spec.alpha)
                .f(spec.beta)
                .u(ldb)
                .u(ldc)
                .u(off_a)
                .u(off_b)
                .u(off_c);
            let key = self.profile.is_on().then(|| {
                let part = Gemm {
                    m: blk.m,
                    n: blk.n,
                    batch: nz,
                    ..*spec
                };
                (
                    format!("{} [{}]", gemm_key(&part, b_dtype), kernel.name()),
                    part.flops(),
                )
            });
            self.dispatch_keyed(
                key,
                "matmul",
                shader,
                entry,
                consts,
                &params,
                &binds,
                [gx as u32, gy as u32, nz as u32],
            );
            z0 += nz;
        }
    }
}

/// The `B_QUANT` / `TABLE_QUANT` pipeline constant of the shaders for a stored type: 0 for f32
/// and bf16, else the block format (1 Q8_0, 2 Q4_0, 3 Q4_1).
fn quant_code(dtype: DType) -> f64 {
    match dtype {
        DType::F32 | DType::Bf16 => 0.0,
        DType::Q8_0 => 1.0,
        DType::Q4_0 => 2.0,
        DType::Q4_1 => 3.0,
    }
}

/// A block-format B must be a single GEMM's operand whose stored rows are whole blocks (the
/// kernels find element i's block at i / 32).
fn quant_b_fits(dtype: DType, spec: &Gemm) -> (bool, String) {
    let width = if spec.trans_b { spec.k } else { spec.n };
    (
        !dtype.is_quantized()
            || (spec.batch == 1 && width.is_multiple_of(crate::backend::quant::BLOCK)),
        format!(
            "{spec:?}: a {} B must be unbatched with stored rows of whole 32-value blocks \
             (its stored width is {width})",
            dtype.name()
        ),
    )
}

/// The subgroup kernel's shortest k: below it a GEMM runs whole on the small tiles, which are
/// as fast there (`bench matmul --shapes NT:2048x384x8`: 7.6 against 7.4 GFLOP/s on lavapipe)
/// and need one dispatch instead of up to three.
const SUBGROUP_MIN_K: usize = 16;

/// A block of C: rows r0..r0+m, columns c0..c0+n.
#[derive(Clone, Copy)]
struct GemmBlock {
    r0: usize,
    c0: usize,
    m: usize,
    n: usize,
}

/// `bytes` with zeros up to a whole 4-byte word (buffer copies move whole words).
fn padded_to_words(bytes: &[u8]) -> Vec<u8> {
    let mut v = bytes.to_vec();
    v.resize(bytes.len().div_ceil(4) * 4, 0);
    v
}

fn len_is(t: &Tensor<Gpu>, need: usize, name: &str) -> (bool, String) {
    (
        t.len() >= need,
        format!("{name} has {} values, needs {need}", t.len()),
    )
}

/// Every id indexes a row of a table with `rows` rows (IGNORE ids are not counted in max_id).
fn ids_fit(ids: &Ids<Gpu>, rows: usize) -> (bool, String) {
    (
        ids.buf.max_id.is_none_or(|m| (m as usize) < rows),
        format!("id {:?} outside a table of {rows} rows", ids.buf.max_id),
    )
}

impl Backend for Gpu {
    type Buf = GpuBuf;
    type IdsBuf = GpuIds;

    fn name(&self) -> String {
        self.info.name.clone()
    }
    fn kind(&self) -> BackendKind {
        BackendKind::Gpu
    }
    fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    fn zeros(&self, len: usize, kind: MemKind) -> Result<Tensor<Self>> {
        let t = self.alloc(len, kind)?;
        let bytes = Pool::rounded((len * 4) as u64);
        self.encode("zeros", |enc| enc.clear_buffer(raw(&t), 0, Some(bytes)));
        Ok(t)
    }
    fn upload(&self, data: &[f32], kind: MemKind) -> Result<Tensor<Self>> {
        let t = self.alloc(data.len(), kind)?;
        self.stage_into(raw(&t), bytemuck::cast_slice(data))?;
        Ok(t)
    }
    fn upload_bf16(&self, data: &[f32], kind: MemKind) -> Result<Tensor<Self>> {
        let t = self.alloc_typed(data.len(), kind, DType::Bf16)?;
        self.stage_into(raw(&t), bytemuck::cast_slice(&bf16_words(data)))?;
        Ok(t)
    }
    fn upload_blocks(
        &self,
        bytes: &[u8],
        dtype: DType,
        len: usize,
        kind: MemKind,
    ) -> Result<Tensor<Self>> {
        crate::backend::quant::check_blocks(dtype, bytes.len(), len)?;
        let t = self.alloc_typed(len, kind, dtype)?;
        self.stage_into(raw(&t), &padded_to_words(bytes))?;
        Ok(t)
    }
    fn download(&self, t: &Tensor<Self>) -> Result<Vec<f32>> {
        let bytes = bytes_of(t);
        if bytes == 0 {
            self.wait()?;
            return Ok(Vec::new());
        }
        let staging = super::pool::create_checked(
            &self.device,
            self.limits.max_buffer_size,
            bytes,
            wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            "download staging buffer",
        )?;
        super::CounterCells::add(&self.counters.read_back_bytes, bytes);
        super::CounterCells::add(&self.counters.read_backs, 1);
        self.encode("download", |enc| {
            enc.copy_buffer_to_buffer(raw(t), 0, &staging, 0, bytes)
        });
        self.flush();
        let (tx, rx) = std::sync::mpsc::channel();
        staging.slice(..).map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        self.wait()?;
        rx.recv()
            .map_err(|_| anyhow!("download: the map callback never ran"))?
            .map_err(|e| anyhow!("download: mapping the staging buffer failed: {e}"))?;
        let view = staging
            .get_mapped_range(..)
            .map_err(|e| anyhow!("download: reading the mapped buffer failed: {e:?}"))?;
        let out = match t.dtype() {
            DType::F32 => bytemuck::cast_slice::<u8, f32>(&view).to_vec(),
            DType::Bf16 => bytemuck::cast_slice::<u8, u16>(&view)[..t.len()]
                .iter()
                .map(|&v| f32::from_bits((v as u32) << 16))
                .collect(),
            q => crate::backend::dequantize(q, &view[..q.bytes(t.len())], t.len())
                .map_err(|e| anyhow!("download of a {} tensor: {e}", q.name()))?,
        };
        drop(view);
        staging.unmap();
        Ok(out)
    }
    fn write(&self, t: &mut Tensor<Self>, data: &[f32]) -> Result<()> {
        ensure!(
            data.len() == t.len(),
            "write of {} values into a tensor of {}",
            data.len(),
            t.len()
        );
        match t.dtype() {
            DType::F32 => self.stage_into(raw(t), bytemuck::cast_slice(data)),
            DType::Bf16 => self.stage_into(raw(t), bytemuck::cast_slice(&bf16_words(data))),
            q => self.stage_into(
                raw(t),
                &padded_to_words(&crate::backend::quantize(q, data)?),
            ),
        }
    }
    fn ids(&self, ids: &[u32]) -> Result<Ids<Self>> {
        let (uniq, offsets, positions) = build_csr(ids, IGNORE);
        let max_id = uniq.last().copied();
        let buf = GpuIds {
            ids: self.small_buffer(ids, "ids"),
            uniq: self.small_buffer(&uniq, "ids: unique"),
            offsets: self.small_buffer(&offsets, "ids: csr offsets"),
            positions: self.small_buffer(&positions, "ids: csr positions"),
            n_unique: uniq.len(),
            n_positions: positions.len(),
            max_id,
        };
        Ok(Ids::from_parts(buf, ids.len()))
    }
    fn sync(&self) -> Result<()> {
        self.wait()
    }
    fn counters(&self) -> Option<crate::backend::Counters> {
        Some(Gpu::counters(self))
    }

    fn fill(&self, x: &mut Tensor<Self>, value: f32) {
        self.fill_raw(raw(x), x.len(), value);
    }
    fn copy(&self, src: &Tensor<Self>, dst: &mut Tensor<Self>) {
        if !self.require("copy", &[len_is(dst, src.len(), "dst")]) || src.is_empty() {
            return;
        }
        let bytes = (src.len() * 4) as u64;
        self.encode("copy", |enc| {
            enc.copy_buffer_to_buffer(raw(src), 0, raw(dst), 0, bytes)
        });
    }
    fn copy_range(
        &self,
        src: &Tensor<Self>,
        src_at: usize,
        dst: &mut Tensor<Self>,
        dst_at: usize,
        len: usize,
    ) {
        let checks = [
            len_is(src, src_at + len, "src"),
            len_is(dst, dst_at + len, "dst"),
        ];
        if !self.require("copy_range", &checks) || len == 0 {
            return;
        }
        let (from, to) = ((src_at * 4) as u64, (dst_at * 4) as u64);
        self.encode("copy_range", |enc| {
            enc.copy_buffer_to_buffer(raw(src), from, raw(dst), to, (len * 4) as u64)
        });
    }
    fn scale(&self, x: &mut Tensor<Self>, s: f32) {
        self.elementwise(
            "scale",
            "elementwise",
            "scale_forward",
            x.len(),
            &[(3, raw(x))],
            |c| Params::default().u(c).u(1).f(s),
        );
    }
    fn axpy(&self, alpha: f32, x: &Tensor<Self>, y: &mut Tensor<Self>) {
        let n = x.len().min(y.len());
        self.elementwise(
            "axpy",
            "elementwise",
            "axpy_forward",
            n,
            &[(1, raw(x)), (3, raw(y))],
            |c| Params::default().u(c).u(1).f(alpha),
        );
    }
    fn mul(&self, a: &Tensor<Self>, b: &Tensor<Self>, out: &mut Tensor<Self>) {
        let n = a.len().min(b.len()).min(out.len());
        self.elementwise(
            "mul",
            "elementwise",
            "mul_forward",
            n,
            &[(1, raw(a)), (2, raw(b)), (3, raw(out))],
            |c| Params::default().u(c).u(1).f(0.0),
        );
    }
    fn mul_cols(
        &self,
        x: &Tensor<Self>,
        v: &Tensor<Self>,
        out: &mut Tensor<Self>,
        rows: usize,
        cols: usize,
    ) {
        if !self.require(
            "mul_cols",
            &[
                len_is(x, rows * cols, "x"),
                len_is(out, rows * cols, "out"),
                len_is(v, cols, "v"),
            ],
        ) {
            return;
        }
        self.rows_op(
            "mul_cols",
            "elementwise",
            "mul_cols_forward",
            rows,
            cols,
            &[
                (1, Arg::Rows(raw(x))),
                (2, Arg::Whole(raw(v), cols)),
                (3, Arg::Rows(raw(out))),
            ],
            |_, n| Params::default().u(n * cols).u(cols).f(0.0),
            |n| (n * cols).div_ceil(256),
        );
    }
    fn add_bias(&self, x: &mut Tensor<Self>, bias: &Tensor<Self>, rows: usize, cols: usize) {
        if !self.require(
            "add_bias",
            &[len_is(x, rows * cols, "x"), len_is(bias, cols, "bias")],
        ) {
            return;
        }
        // Rows of whole vec4s: the vec4 entry (a chunk's byte offset, r0·cols·4, stays 16-aligned).
        let (entry, slots, width) = if cols.is_multiple_of(4) {
            ("bias_forward_vec4", (5, 6), cols / 4)
        } else {
            ("bias_forward", (1, 2), cols)
        };
        self.rows_op(
            "add_bias",
            "bias",
            entry,
            rows,
            cols,
            &[
                (slots.0, Arg::Whole(raw(bias), cols)),
                (slots.1, Arg::Rows(raw(x))),
            ],
            |_, n| Params::default().u(n).u(width).u(0),
            |n| n.div_ceil(8),
        );
    }
    fn col_sum(
        &self,
        x: &Tensor<Self>,
        out: &mut Tensor<Self>,
        rows: usize,
        cols: usize,
        accumulate: bool,
    ) {
        if !self.require(
            "col_sum",
            &[len_is(x, rows * cols, "x"), len_is(out, cols, "out")],
        ) {
            return;
        }
        if rows == 0 {
            if !accumulate {
                self.fill_raw(raw(out), cols, 0.0);
            }
            return;
        }
        // Chunks after the first add to what the first wrote.
        self.rows_op(
            "col_sum",
            "bias",
            "bias_backward",
            rows,
            cols,
            &[(3, Arg::Rows(raw(x))), (4, Arg::Whole(raw(out), cols))],
            |r0, n| {
                Params::default()
                    .u(n)
                    .u(cols)
                    .u((accumulate || r0 > 0) as usize)
            },
            |_| cols.div_ceil(64),
        );
    }
    fn sumsq(&self, x: &Tensor<Self>, out: &mut Tensor<Self>, slot: usize) {
        self.reduce("sumsq", x, out, slot, 1);
    }
    fn sum(&self, x: &Tensor<Self>, out: &mut Tensor<Self>, slot: usize) {
        self.reduce("sum", x, out, slot, 0);
    }
    fn inv_norm(&self, x: &Tensor<Self>, out: &mut Tensor<Self>, slot: usize) {
        self.reduce("inv_norm", x, out, slot, 2);
    }

    fn matmul(&self, a: &Tensor<Self>, b: &Tensor<Self>, c: &mut Tensor<Self>, spec: &Gemm) {
        self.matmul_with(self.gemm_kernel(), a, b, c, spec);
    }
    fn permute0213(&self, x: &Tensor<Self>, y: &mut Tensor<Self>, dims: [usize; 4]) {
        let n: usize = dims.iter().product();
        if !self.require("permute0213", &[len_is(x, n, "x"), len_is(y, n, "y")]) || n == 0 {
            return;
        }
        if let Err(e) = check_bindable(self, "permute0213", "x", (n * 4) as u64) {
            return self.reject(format!("{e:#}"));
        }
        // Runs of whole vec4s along d: the vec4 entry.
        let (entry, slots, d3) = if dims[3].is_multiple_of(4) {
            ("permute_forward_vec4", (3, 4), dims[3] / 4)
        } else {
            ("permute_forward", (1, 2), dims[3])
        };
        self.dispatch(
            "permute0213",
            "permute",
            entry,
            &[],
            &Params::default().u(dims[0]).u(dims[1]).u(dims[2]).u(d3),
            &[
                Bind {
                    slot: slots.0,
                    buf: raw(x),
                    offset: 0,
                    size: (n * 4) as u64,
                },
                Bind {
                    slot: slots.1,
                    buf: raw(y),
                    offset: 0,
                    size: (n * 4) as u64,
                },
            ],
            grid(dims[0] * dims[1]),
        );
    }

    fn gelu_forward(&self, x: &Tensor<Self>, y: &mut Tensor<Self>) {
        let n = x.len().min(y.len());
        self.elementwise_vec4(
            "gelu_forward",
            "gelu",
            ("gelu_forward", "gelu_forward_vec4"),
            n,
            &[((1, 4), raw(x)), ((3, 6), raw(y))],
            |c| Params::default().u(c),
        );
    }
    fn gelu_backward(&self, x: &Tensor<Self>, dy: &Tensor<Self>, dx: &mut Tensor<Self>) {
        let n = x.len().min(dy.len()).min(dx.len());
        self.elementwise_vec4(
            "gelu_backward",
            "gelu",
            ("gelu_backward", "gelu_backward_vec4"),
            n,
            &[((1, 4), raw(x)), ((2, 5), raw(dy)), ((3, 6), raw(dx))],
            |c| Params::default().u(c),
        );
    }

    fn tanh_forward(&self, x: &Tensor<Self>, y: &mut Tensor<Self>) {
        let n = x.len().min(y.len());
        self.elementwise(
            "tanh_forward",
            "tanh",
            "tanh_forward",
            n,
            &[(1, raw(x)), (3, raw(y))],
            |c| Params::default().u(c),
        );
    }
    fn tanh_backward(&self, y: &Tensor<Self>, dy: &Tensor<Self>, dx: &mut Tensor<Self>) {
        let n = y.len().min(dy.len()).min(dx.len());
        self.elementwise(
            "tanh_backward",
            "tanh",
            "tanh_backward",
            n,
            &[(1, raw(y)), (2, raw(dy)), (3, raw(dx))],
            |c| Params::default().u(c),
        );
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
        if !self.require(
            "layernorm_forward",
            &[
                len_is(x, rows * cols, "x"),
                len_is(y, rows * cols, "y"),
                len_is(gamma, cols, "gamma"),
                len_is(beta, cols, "beta"),
                len_is(mean, rows, "mean"),
                len_is(rstd, rows, "rstd"),
            ],
        ) {
            return;
        }
        self.rows_op(
            "layernorm_forward",
            "layernorm",
            "layernorm_forward",
            rows,
            cols,
            &[
                (1, Arg::Rows(raw(x))),
                (2, Arg::Whole(raw(gamma), cols)),
                (3, Arg::Whole(raw(beta), cols)),
                (4, Arg::Rows(raw(y))),
                (5, Arg::PerRow(raw(mean))),
                (6, Arg::PerRow(raw(rstd))),
            ],
            |_, n| Params::default().u(n).u(cols).f(eps),
            |n| n.div_ceil(64),
        );
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
        let mut checks = vec![
            len_is(dy, rows * cols, "dy"),
            len_is(x, rows * cols, "x"),
            len_is(dx, rows * cols, "dx"),
            len_is(gamma, cols, "gamma"),
            len_is(mean, rows, "mean"),
            len_is(rstd, rows, "rstd"),
        ];
        if let Some(g) = &dgamma {
            checks.push(len_is(g, cols, "dgamma"));
        }
        if let Some(b) = &dbeta {
            checks.push(len_is(b, cols, "dbeta"));
        }
        if !self.require("layernorm_backward", &checks) {
            return;
        }
        self.rows_op(
            "layernorm_backward",
            "layernorm",
            "layernorm_backward",
            rows,
            cols,
            &[
                (2, Arg::Whole(raw(gamma), cols)),
                (1, Arg::Rows(raw(x))),
                (7, Arg::Rows(raw(dy))),
                (8, Arg::PerRow(raw(mean))),
                (9, Arg::PerRow(raw(rstd))),
                (10, Arg::Rows(raw(dx))),
            ],
            |_, n| Params::default().u(n).u(cols).f(0.0),
            |n| n.div_ceil(64),
        );
        if let Some(dg) = dgamma {
            self.rows_op(
                "layernorm_backward",
                "layernorm",
                "layernorm_backward_dgamma",
                rows,
                cols,
                &[
                    (1, Arg::Rows(raw(x))),
                    (7, Arg::Rows(raw(dy))),
                    (8, Arg::PerRow(raw(mean))),
                    (9, Arg::PerRow(raw(rstd))),
                    (11, Arg::Whole(raw(dg), cols)),
                ],
                |_, n| Params::default().u(n).u(cols).f(0.0),
                |_| cols.div_ceil(64),
            );
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
        if !self.require(
            "rmsnorm_forward",
            &[
                len_is(x, rows * cols, "x"),
                len_is(y, rows * cols, "y"),
                len_is(gamma, cols, "gamma"),
                len_is(rstd, rows, "rstd"),
            ],
        ) {
            return;
        }
        self.rows_op(
            "rmsnorm_forward",
            "rmsnorm",
            "rmsnorm_forward",
            rows,
            cols,
            &[
                (1, Arg::Rows(raw(x))),
                (2, Arg::Whole(raw(gamma), cols)),
                (3, Arg::Rows(raw(y))),
                (4, Arg::PerRow(raw(rstd))),
            ],
            |_, n| Params::default().u(n).u(cols).f(eps),
            |n| n.div_ceil(64),
        );
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
        let mut checks = vec![
            len_is(dy, rows * cols, "dy"),
            len_is(x, rows * cols, "x"),
            len_is(dx, rows * cols, "dx"),
            len_is(gamma, cols, "gamma"),
            len_is(rstd, rows, "rstd"),
        ];
        if let Some(g) = &dgamma {
            checks.push(len_is(g, cols, "dgamma"));
        }
        if !self.require("rmsnorm_backward", &checks) {
            return;
        }
        self.rows_op(
            "rmsnorm_backward",
            "rmsnorm",
            "rmsnorm_backward",
            rows,
            cols,
            &[
                (1, Arg::Rows(raw(x))),
                (2, Arg::Whole(raw(gamma), cols)),
                (5, Arg::Rows(raw(dy))),
                (6, Arg::PerRow(raw(rstd))),
                (7, Arg::Rows(raw(dx))),
            ],
            |_, n| Params::default().u(n).u(cols).f(0.0),
            |n| n.div_ceil(64),
        );
        if let Some(dg) = dgamma {
            // Each row chunk adds its rows' share to dgamma.
            self.rows_op(
                "rmsnorm_backward",
                "rmsnorm",
                "rmsnorm_backward_dgamma",
                rows,
                cols,
                &[
                    (1, Arg::Rows(raw(x))),
                    (5, Arg::Rows(raw(dy))),
                    (6, Arg::PerRow(raw(rstd))),
                    (8, Arg::Whole(raw(dg), cols)),
                ],
                |_, n| Params::default().u(n).u(cols).f(0.0),
                |_| cols.div_ceil(64),
            );
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
        let (n, row) = (positions.len(), heads * head_dim);
        let table_positions = table.len().checked_div(head_dim).unwrap_or(0);
        if !self.require(
            "rope",
            &[
                (
                    head_dim.is_multiple_of(2),
                    format!(
                        "head_dim {head_dim} is odd; the half-split rotation needs an even one"
                    ),
                ),
                len_is(x, n * row, "x"),
                len_is(y, n * row, "y"),
                (
                    positions.buf.n_positions == n,
                    "positions hold IGNORE ids; every row needs a position".into(),
                ),
                (
                    positions
                        .buf
                        .max_id
                        .is_none_or(|p| (p as usize) < table_positions),
                    format!(
                        "position {:?} is outside the table of {table_positions} positions \
                         (build it for more positions with model::rope::rope_table)",
                        positions.buf.max_id
                    ),
                ),
            ],
        ) {
            return;
        }
        self.rows_op(
            "rope",
            "rope",
            "rope_forward",
            n,
            row,
            &[
                (1, Arg::Rows(raw(x))),
                (2, Arg::PerRow(&positions.buf.ids)),
                (3, Arg::Whole(raw(table), table.len())),
                (4, Arg::Rows(raw(y))),
            ],
            |_, rows| {
                Params::default()
                    .u(rows * heads)
                    .u(heads)
                    .u(head_dim / 2)
                    .f(if inverse { -1.0 } else { 1.0 })
            },
            |rows| (rows * heads).div_ceil(64),
        );
    }
    fn swiglu_forward(&self, gate: &Tensor<Self>, up: &Tensor<Self>, out: &mut Tensor<Self>) {
        let n = gate.len().min(up.len()).min(out.len());
        self.elementwise_vec4(
            "swiglu_forward",
            "swiglu",
            ("swiglu_forward", "swiglu_forward_vec4"),
            n,
            &[((1, 7), raw(gate)), ((2, 8), raw(up)), ((4, 10), raw(out))],
            |c| Params::default().u(c),
        );
    }
    fn swiglu_backward(
        &self,
        gate: &Tensor<Self>,
        up: &Tensor<Self>,
        dout: &Tensor<Self>,
        dgate: &mut Tensor<Self>,
        dup: &mut Tensor<Self>,
    ) {
        let n = [gate.len(), up.len(), dout.len(), dgate.len(), dup.len()]
            .into_iter()
            .min()
            .unwrap_or(0);
        self.elementwise_vec4(
            "swiglu_backward",
            "swiglu",
            ("swiglu_backward", "swiglu_backward_vec4"),
            n,
            &[
                ((1, 7), raw(gate)),
                ((2, 8), raw(up)),
                ((3, 9), raw(dout)),
                ((5, 11), raw(dgate)),
                ((6, 12), raw(dup)),
            ],
            |c| Params::default().u(c),
        );
    }

    fn softmax_forward(
        &self,
        scores: &Tensor<Self>,
        probs: &mut Tensor<Self>,
        key_mask: Option<&Tensor<Self>>,
        spec: &Attn,
    ) {
        let mut checks = vec![
            len_is(scores, spec.len(), "scores"),
            len_is(probs, spec.len(), "probs"),
        ];
        if let Some(m) = key_mask {
            checks.push(len_is(m, spec.batch * spec.tk, "key_mask"));
        }
        if !self.require("softmax_forward", &checks) {
            return;
        }
        let (mask, mask_len) = match key_mask {
            Some(m) => (raw(m), spec.batch * spec.tk),
            None => (&self.dummy, 1),
        };
        self.rows_op(
            "softmax_forward",
            "softmax",
            "softmax_forward",
            spec.rows(),
            spec.tk,
            &[
                (1, Arg::Rows(raw(scores))),
                (2, Arg::Whole(mask, mask_len)),
                (3, Arg::Rows(raw(probs))),
            ],
            |r0, n| {
                Params::default()
                    .u(n)
                    .u(spec.tq)
                    .u(spec.tk)
                    .u(spec.heads)
                    .f(spec.scale)
                    .u(spec.causal as usize)
                    .u(key_mask.is_some() as usize)
                    .u(r0)
            },
            |n| n.div_ceil(64),
        );
    }
    fn softmax_backward(
        &self,
        probs: &Tensor<Self>,
        dprobs: &Tensor<Self>,
        dscores: &mut Tensor<Self>,
        spec: &Attn,
    ) {
        if !self.require(
            "softmax_backward",
            &[
                len_is(probs, spec.len(), "probs"),
                len_is(dprobs, spec.len(), "dprobs"),
                len_is(dscores, spec.len(), "dscores"),
            ],
        ) {
            return;
        }
        self.rows_op(
            "softmax_backward",
            "softmax",
            "softmax_backward",
            spec.rows(),
            spec.tk,
            &[
                (4, Arg::Rows(raw(probs))),
                (5, Arg::Rows(raw(dprobs))),
                (6, Arg::Rows(raw(dscores))),
            ],
            |r0, n| {
                Params::default()
                    .u(n)
                    .u(spec.tq)
                    .u(spec.tk)
                    .u(spec.heads)
                    .f(spec.scale)
                    .u(0)
                    .u(0)
                    .u(r0)
            },
            |n| n.div_ceil(64),
        );
    }
    fn embedding_forward(
        &self,
        ids: &Ids<Self>,
        table: &Tensor<Self>,
        out: &mut Tensor<Self>,
        dim: usize,
        accumulate: bool,
    ) {
        let rows_in_table = table.len() / dim.max(1);
        if !self.require(
            "embedding_forward",
            &[
                len_is(out, ids.len() * dim, "out"),
                ids_fit(ids, rows_in_table),
            ],
        ) {
            return;
        }
        if let Err(e) = check_bindable(self, "embedding_forward", "the table", bytes_of(table)) {
            return self.reject(format!("{e:#}"));
        }
        let q = table.dtype();
        if !self.require(
            "embedding_forward",
            &[(
                !q.is_quantized() || dim.is_multiple_of(crate::backend::quant::BLOCK),
                format!(
                    "a {} table needs rows of whole 32-value blocks, not {dim}",
                    q.name()
                ),
            )],
        ) {
            return;
        }
        let bf16 = q == DType::Bf16;
        self.rows_op_consts(
            "embedding_forward",
            "embedding",
            "embedding_forward",
            &[
                ("TABLE_BF16", if bf16 { 1.0 } else { 0.0 }),
                ("TABLE_QUANT", quant_code(q)),
            ],
            ids.len(),
            dim,
            &[
                (1, Arg::PerRow(&ids.buf.ids)),
                (2, Arg::Whole(raw(table), table.dtype().words(table.len()))),
                (3, Arg::Rows(raw(out))),
            ],
            |_, n| Params::default().u(n).u(dim).u(accumulate as usize),
            |n| (n * dim).div_ceil(256),
        );
    }
    fn embedding_backward(
        &self,
        ids: &Ids<Self>,
        dout: &Tensor<Self>,
        dtable: &mut Tensor<Self>,
        dim: usize,
    ) {
        let rows_in_table = dtable.len() / dim.max(1);
        if !self.require(
            "embedding_backward",
            &[
                len_is(dout, ids.len() * dim, "dout"),
                ids_fit(ids, rows_in_table),
            ],
        ) {
            return;
        }
        let nu = ids.buf.n_unique;
        if nu == 0 || dim == 0 {
            return;
        }
        for (what, len) in [("dtable", dtable.len()), ("dout", ids.len() * dim)] {
            if let Err(e) = check_bindable(self, "embedding_backward", what, (len * 4) as u64) {
                return self.reject(format!("{e:#}"));
            }
        }
        let npos = ids.len();
        self.dispatch(
            "embedding_backward",
            "embedding",
            "embedding_backward",
            &[],
            &Params::default().u(nu).u(dim).u(0),
            &[
                Bind {
                    slot: 4,
                    buf: &ids.buf.uniq,
                    offset: 0,
                    size: (nu * 4) as u64,
                },
                Bind {
                    slot: 5,
                    buf: &ids.buf.offsets,
                    offset: 0,
                    size: ((nu + 1) * 4) as u64,
                },
                Bind {
                    slot: 6,
                    buf: &ids.buf.positions,
                    offset: 0,
                    size: (ids.buf.n_positions * 4) as u64,
                },
                Bind {
                    slot: 7,
                    buf: raw(dout),
                    offset: 0,
                    size: (npos * dim * 4) as u64,
                },
                Bind {
                    slot: 8,
                    buf: raw(dtable),
                    offset: 0,
                    size: (dtable.len() * 4) as u64,
                },
            ],
            grid(nu),
        );
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
        if !self.require(
            "cross_entropy",
            &[
                len_is(logits, rows * classes, "logits"),
                len_is(dlogits, rows * classes, "dlogits"),
                len_is(losses, rows, "losses"),
                (
                    targets.len() >= rows,
                    format!("targets has {} ids, needs {rows}", targets.len()),
                ),
            ],
        ) {
            return;
        }
        self.rows_op(
            "cross_entropy",
            "cross_entropy",
            "cross_entropy_forward",
            rows,
            classes,
            &[
                (1, Arg::Rows(raw(logits))),
                (2, Arg::PerRow(&targets.buf.ids)),
                (3, Arg::Rows(raw(dlogits))),
                (4, Arg::PerRow(raw(losses))),
            ],
            |_, n| Params::default().u(n).u(classes).f(grad_scale),
            |n| n,
        );
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
        let n = param.len().min(grad.len()).min(m.len()).min(v.len());
        let (bc1, bc2) = cfg.bias_corrections();
        let (scale_buf, scale_len, slot) = match grad_scale {
            Some((t, i)) => {
                if !self.require(
                    "adamw",
                    &[(
                        i < t.len(),
                        format!("scale slot {i} outside {} values", t.len()),
                    )],
                ) {
                    return;
                }
                (raw(t), t.len(), Some(i))
            }
            None => (&self.dummy, 1, None),
        };
        self.rows_op(
            "adamw",
            "adamw",
            "adamw_forward",
            n,
            1,
            &[
                (1, Arg::Rows(raw(grad))),
                (2, Arg::Rows(raw(param))),
                (3, Arg::Rows(raw(m))),
                (4, Arg::Rows(raw(v))),
                (5, Arg::Whole(scale_buf, scale_len)),
            ],
            |_, c| {
                Params::default()
                    .u(c)
                    .f(cfg.lr)
                    .f(cfg.beta1)
                    .f(cfg.beta2)
                    .f(cfg.eps)
                    .f(cfg.weight_decay)
                    .f(bc1)
                    .f(bc2)
                    .u(slot.is_some() as usize)
                    .u(slot.unwrap_or(0))
            },
            |c| c.div_ceil(256),
        );
    }
    fn importance_ema(
        &self,
        w: &Tensor<Self>,
        g: &Tensor<Self>,
        state: &mut Tensor<Self>,
        beta1: f32,
        beta2: f32,
    ) {
        let n = w.len();
        if !self.require(
            "importance_ema",
            &[len_is(g, n, "g"), len_is(state, 2 * n, "state")],
        ) || n == 0
        {
            return;
        }
        // An adapter's tensors are far below the binding limit; the state is bound whole.
        if let Err(e) = check_bindable(self, "importance_ema", "the state", (2 * n * 4) as u64) {
            return self.reject(format!("{e:#}"));
        }
        fn whole(slot: u32, t: &Tensor<Gpu>, len: usize) -> Bind<'_> {
            Bind {
                slot,
                buf: raw(t),
                offset: 0,
                size: (len * 4) as u64,
            }
        }
        self.dispatch(
            "importance_ema",
            "importance",
            "importance_forward",
            &[],
            &Params::default().u(n).f(beta1).f(beta2),
            &[whole(1, w, n), whole(2, g, n), whole(3, state, 2 * n)],
            grid(n.div_ceil(256)),
        );
    }
    fn clip_factor(&self, sumsq: &Tensor<Self>, count: usize, clip: f32, out: &mut Tensor<Self>) {
        if !self.require(
            "clip_factor",
            &[len_is(sumsq, count.max(1), "sumsq"), len_is(out, 2, "out")],
        ) {
            return;
        }
        self.dispatch(
            "clip_factor",
            "clip",
            "clip_factor",
            &[],
            &Params::default().u(count).f(clip),
            &[
                Bind {
                    slot: 1,
                    buf: raw(sumsq),
                    offset: 0,
                    size: (sumsq.len() * 4) as u64,
                },
                Bind {
                    slot: 2,
                    buf: raw(out),
                    offset: 0,
                    size: (out.len() * 4) as u64,
                },
            ],
            [1, 1, 1],
        );
    }
}
