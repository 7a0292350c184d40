//! The CPU backend: plain Rust, rows split across rayon threads, GEMM through the `gemm` crate.
//!
//! This is the oracle the WGSL kernels are tested against, so every op is written for clarity
//! first; the hot ones (GEMM, softmax, layer norm) are still parallel and cache-friendly because
//! this is also the fast path on machines without a GPU.

use super::{AdamW, Attn, Backend, BackendKind, Gemm, Ids, Ledger, MemKind, Tensor};
use anyhow::{ensure, Result};
use rayon::prelude::*;
use std::sync::atomic::{AtomicU64, Ordering};

/// Rows per rayon task for row-wise ops; small enough to balance, large enough to amortise.
const ROW_CHUNK: usize = 16;
/// Elements per rayon task for elementwise ops.
const ELEM_CHUNK: usize = 1 << 14;

pub struct Cpu {
    ledger: Ledger,
    threads: usize,
    /// GEMM FLOPs run so far (2·m·n·k per batch item), the tally `adarank plan` is held to.
    gemm_flops: AtomicU64,
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
            gemm_flops: AtomicU64::new(0),
        }
    }

    fn tensor(&self, data: Vec<f32>, kind: MemKind) -> Tensor<Self> {
        let len = data.len();
        let guard = self.ledger.hold(kind, (len * 4) as u64);
        Tensor::from_parts(data, len, guard)
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
    fn download(&self, t: &Tensor<Self>) -> Result<Vec<f32>> {
        Ok(t.buf.clone())
    }
    fn write(&self, t: &mut Tensor<Self>, data: &[f32]) -> Result<()> {
        ensure!(
            data.len() == t.len(),
            "write of {} values into a tensor of {}",
            data.len(),
            t.len()
        );
        t.buf.copy_from_slice(data);
        Ok(())
    }
    fn ids(&self, ids: &[u32]) -> Result<Ids<Self>> {
        Ok(Ids::from_parts(ids.to_vec(), ids.len()))
    }
    fn sync(&self) -> Result<()> {
        Ok(())
    }

    fn fill(&self, x: &mut Tensor<Self>, value: f32) {
        x.buf.fill(value);
    }
    fn copy(&self, src: &Tensor<Self>, dst: &mut Tensor<Self>) {
        dst.buf[..src.len()].copy_from_slice(&src.buf);
    }
    fn scale(&self, x: &mut Tensor<Self>, s: f32) {
        x.buf
            .par_chunks_mut(ELEM_CHUNK)
            .for_each(|c| c.iter_mut().for_each(|v| *v *= s));
    }
    fn axpy(&self, alpha: f32, x: &Tensor<Self>, y: &mut Tensor<Self>) {
        y.buf
            .par_chunks_mut(ELEM_CHUNK)
            .zip(x.buf.par_chunks(ELEM_CHUNK))
            .for_each(|(y, x)| y.iter_mut().zip(x).for_each(|(y, x)| *y += alpha * x));
    }
    fn mul(&self, a: &Tensor<Self>, b: &Tensor<Self>, out: &mut Tensor<Self>) {
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
        x.buf[..rows * cols]
            .par_chunks_mut(cols)
            .for_each(|r| r.iter_mut().zip(&bias.buf).for_each(|(x, b)| *x += b));
    }
    fn col_sum(
        &self,
        x: &Tensor<Self>,
        out: &mut Tensor<Self>,
        rows: usize,
        cols: usize,
        accumulate: bool,
    ) {
        // Column blocks in parallel, rows summed in order: deterministic for any thread count.
        out.buf[..cols]
            .par_chunks_mut(64)
            .enumerate()
            .for_each(|(bi, o)| {
                let c0 = bi * 64;
                let mut acc = vec![0.0f32; o.len()];
                for r in 0..rows {
                    let row = &x.buf[r * cols + c0..r * cols + c0 + o.len()];
                    acc.iter_mut().zip(row).for_each(|(a, v)| *a += v);
                }
                for (o, a) in o.iter_mut().zip(acc) {
                    *o = if accumulate { *o + a } else { a };
                }
            });
    }
    fn sumsq(&self, x: &Tensor<Self>, out: &mut Tensor<Self>, slot: usize) {
        let s: f64 = x
            .buf
            .par_chunks(ELEM_CHUNK)
            .map(|c| c.iter().map(|&v| (v as f64) * (v as f64)).sum::<f64>())
            .sum();
        out.buf[slot] = s as f32;
    }
    fn sum(&self, x: &Tensor<Self>, out: &mut Tensor<Self>, slot: usize) {
        let s: f64 = x
            .buf
            .par_chunks(ELEM_CHUNK)
            .map(|c| c.iter().map(|&v| v as f64).sum::<f64>())
            .sum();
        out.buf[slot] = s as f32;
    }

    fn matmul(&self, a: &Tensor<Self>, b: &Tensor<Self>, c: &mut Tensor<Self>, spec: &Gemm) {
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
        y.buf
            .par_chunks_mut(ELEM_CHUNK)
            .zip(x.buf.par_chunks(ELEM_CHUNK))
            .for_each(|(y, x)| y.iter_mut().zip(x).for_each(|(y, &x)| *y = gelu(x)));
    }
    fn gelu_backward(&self, x: &Tensor<Self>, dy: &Tensor<Self>, dx: &mut Tensor<Self>) {
        dx.buf
            .par_chunks_mut(ELEM_CHUNK)
            .zip(
                x.buf
                    .par_chunks(ELEM_CHUNK)
                    .zip(dy.buf.par_chunks(ELEM_CHUNK)),
            )
            .for_each(|(dx, (x, dy))| {
                dx.iter_mut()
                    .zip(x.iter().zip(dy))
                    .for_each(|(dx, (&x, &dy))| *dx = dy * gelu_grad(x))
            });
    }

    fn tanh_forward(&self, x: &Tensor<Self>, y: &mut Tensor<Self>) {
        y.buf
            .par_chunks_mut(ELEM_CHUNK)
            .zip(x.buf.par_chunks(ELEM_CHUNK))
            .for_each(|(y, x)| y.iter_mut().zip(x).for_each(|(y, &x)| *y = x.tanh()));
    }
    fn tanh_backward(&self, y: &Tensor<Self>, dy: &Tensor<Self>, dx: &mut Tensor<Self>) {
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
                let m = x.iter().sum::<f32>() / cols as f32;
                let var = x.iter().map(|v| (v - m) * (v - m)).sum::<f32>() / cols as f32;
                let s = 1.0 / (var + eps).sqrt();
                for c in 0..cols {
                    y[c] = (x[c] - m) * s * gamma.buf[c] + beta.buf[c];
                }
                *mu = m;
                *rs = s;
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
        dx.buf[..rows * cols]
            .par_chunks_mut(cols)
            .enumerate()
            .with_min_len(ROW_CHUNK)
            .for_each(|(r, dx)| {
                let x = &x.buf[r * cols..(r + 1) * cols];
                let dy = &dy.buf[r * cols..(r + 1) * cols];
                let (m, s) = (mean.buf[r], rstd.buf[r]);
                let mut mean_g = 0.0f32;
                let mut mean_gx = 0.0f32;
                for c in 0..cols {
                    let g = dy[c] * gamma.buf[c];
                    let xhat = (x[c] - m) * s;
                    mean_g += g;
                    mean_gx += g * xhat;
                }
                mean_g /= cols as f32;
                mean_gx /= cols as f32;
                for c in 0..cols {
                    let xhat = (x[c] - m) * s;
                    dx[c] = (dy[c] * gamma.buf[c] - mean_g - xhat * mean_gx) * s;
                }
            });
        if let Some(dg) = dgamma {
            dg.buf[..cols]
                .par_chunks_mut(64)
                .enumerate()
                .for_each(|(bi, o)| {
                    for (j, o) in o.iter_mut().enumerate() {
                        let c = bi * 64 + j;
                        let mut acc = 0.0f32;
                        for r in 0..rows {
                            acc += dy.buf[r * cols + c]
                                * (x.buf[r * cols + c] - mean.buf[r])
                                * rstd.buf[r];
                        }
                        *o += acc;
                    }
                });
        }
        if let Some(db) = dbeta {
            self.col_sum(dy, db, rows, cols, true);
        }
    }

    fn softmax_forward(
        &self,
        scores: &Tensor<Self>,
        probs: &mut Tensor<Self>,
        key_mask: Option<&Tensor<Self>>,
        spec: &Attn,
    ) {
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

    fn embedding_forward(
        &self,
        ids: &Ids<Self>,
        table: &Tensor<Self>,
        out: &mut Tensor<Self>,
        dim: usize,
        accumulate: bool,
    ) {
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
                let row = &table.buf[id as usize * dim..(id as usize + 1) * dim];
                if accumulate {
                    o.iter_mut().zip(row).for_each(|(o, r)| *o += r);
                } else {
                    o.copy_from_slice(row);
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
    ) {
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
                    m[i] = beta1 * m[i] + (1.0 - beta1) * g[i];
                    v[i] = beta2 * v[i] + (1.0 - beta2) * g[i] * g[i];
                    let mhat = m[i] / bc1;
                    let vhat = v[i] / bc2;
                    p[i] -= lr * (mhat / (vhat.sqrt() + eps) + weight_decay * p[i]);
                }
            });
    }
}
