//! GEMM with a frozen weight in one of GGUF's block formats (QLoRA-style):
//! C (f32) = α · op(A) (f32) · op(B) (Q8_0 / Q4_0 / Q4_1) + β · C.
//!
//! B is never widened whole: each rayon task owns a block of C's columns (a panel of [`NB`]
//! columns, and when there are too few panels to keep every thread busy, a chunk of C's rows),
//! and walks K in slices of [`KC`] values. For each slice it dequantizes just the part of B it
//! needs — [`KC`] × [`NB`] values, 64 KiB, in a thread-local buffer that stays in L2 — and runs
//! the `gemm` crate's f32 microkernels (AVX-512 here) on it, so the arithmetic is plain f32 GEMM
//! and the weight's memory stays at its block size. Dequantizing costs O(k·n) per row chunk
//! against the GEMM's O(m·k·n), under 2% of the work once a chunk has a few hundred rows.
//!
//! Both layouts the model uses are column panels of C: the forward y = x·Wᵀ (B = W stored
//! [n, k], `trans_b`) reads rows j0..j0+NB of W, the backward dx = dy·W (B = W stored [k, n])
//! reads a 32-aligned column strip of W. Either way a stored row is whole blocks (its width a
//! multiple of 32), and every slice starts on a block boundary ([`NB`] and [`KC`] are multiples
//! of 32), so dequantizing a slice is a run of whole blocks per stored row.
//!
//! The result equals the f32 GEMM of A and `dequantize(B)` up to the order of the f32 additions
//! (the same microkernels over the same values): that is what the tests hold it to.

use super::{sgemm, Mat, SendPtr};
use crate::backend::quant::{dequantize_into, BLOCK};
use crate::backend::{DType, Gemm};
use rayon::prelude::*;

/// Columns of C per task (a multiple of [`BLOCK`]).
pub const NB: usize = 64;
/// K values per dequantized slice (a multiple of [`BLOCK`]).
pub const KC: usize = 256;
/// Fewest rows of C per task when rows are split (so dequantizing stays a small share).
const MIN_ROWS: usize = 128;

/// One operand in a block format: `rows × cols` values stored row-major, `cols % 32 == 0`, read
/// as op(B) = B or Bᵀ.
#[derive(Clone, Copy)]
pub struct QuantMat<'a> {
    pub dtype: DType,
    pub bytes: &'a [u8],
    pub rows: usize,
    pub cols: usize,
}

impl QuantMat<'_> {
    /// The bytes of `count` values of row `r` from column `c` (both on block boundaries).
    fn run(&self, r: usize, c: usize, count: usize) -> &[u8] {
        let bb = self.dtype.block_bytes().expect("a block format");
        let first = (r * self.cols + c) / BLOCK;
        &self.bytes[first * bb..(first + count / BLOCK) * bb]
    }
}

thread_local! {
    /// Each rayon thread's dequantized slice of B, reused across calls.
    static PANEL: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// C = α·op(A)·op(B) + β·C for a single (unbatched) GEMM with B in a block format; with more
/// than one of `threads` the tasks run on rayon. The caller has checked the extents and that
/// B's stored rows are whole blocks.
pub fn gemm(s: &Gemm, a: &[f32], b: QuantMat, c: &mut [f32], threads: usize) {
    let (m, n, k) = (s.m, s.n, s.k);
    if m == 0 || n == 0 {
        return;
    }
    debug_assert!(b.cols.is_multiple_of(BLOCK));
    let panels = n.div_ceil(NB);
    // Enough tasks for every thread to get about four, without chunks of under MIN_ROWS rows.
    let want = 4 * threads.max(1);
    let chunks = if threads > 1 && panels < want {
        want.div_ceil(panels).min(m.div_ceil(MIN_ROWS)).max(1)
    } else {
        1
    };
    let rows_per = m.div_ceil(chunks);
    let cp = SendPtr(c.as_mut_ptr());
    let task = |t: usize| {
        let (p, ch) = (t % panels, t / panels);
        let (j0, i0) = (p * NB, ch * rows_per);
        let (nb, mc) = (NB.min(n - j0), rows_per.min(m - i0.min(m)));
        if mc == 0 {
            return;
        }
        PANEL.with_borrow_mut(|panel| {
            panel.resize(KC * NB, 0.0);
            let c_blk = Mat {
                ptr: cp.get().wrapping_add(i0 * n + j0),
                rs: n as isize,
                cs: 1,
            };
            if k == 0 {
                // SAFETY: rows i0..i0+mc, columns j0..j0+nb of C belong to this task.
                unsafe { sgemm(mc, nb, 0, c_blk, c_blk, c_blk, s.alpha, s.beta) };
                return;
            }
            for k0 in (0..k).step_by(KC) {
                let kc = KC.min(k - k0);
                let bp = dequantize_slice(b, s.trans_b, k0, kc, j0, nb, panel);
                let ap = if s.trans_a {
                    Mat {
                        ptr: a[k0 * m + i0..].as_ptr(),
                        rs: 1,
                        cs: m as isize,
                    }
                } else {
                    Mat {
                        ptr: a[i0 * k + k0..].as_ptr(),
                        rs: k as isize,
                        cs: 1,
                    }
                };
                let beta = if k0 == 0 { s.beta } else { 1.0 };
                // SAFETY: A and the panel hold the mc×kc and kc×nb operands at these strides;
                // this task alone writes its block of C.
                unsafe { sgemm(mc, nb, kc, c_blk, ap, bp, s.alpha, beta) };
            }
        });
    };
    let tasks = panels * chunks;
    if threads > 1 && tasks > 1 {
        (0..tasks).into_par_iter().for_each(task);
    } else {
        (0..tasks).for_each(task);
    }
}

/// Dequantizes op(B)[k0..k0+kc, j0..j0+nb] into `panel` and returns it as a kc×nb operand:
/// stored [nb][kc] when `trans_b` (rows of W), [kc][nb] otherwise (a column strip of W).
fn dequantize_slice(
    b: QuantMat,
    trans_b: bool,
    k0: usize,
    kc: usize,
    j0: usize,
    nb: usize,
    panel: &mut [f32],
) -> Mat {
    if trans_b {
        for (jj, dst) in panel.chunks_exact_mut(kc).take(nb).enumerate() {
            dequantize_into(b.dtype, b.run(j0 + jj, k0, kc), dst);
        }
        Mat {
            ptr: panel.as_ptr(),
            rs: 1,
            cs: kc as isize,
        }
    } else {
        for (kk, dst) in panel.chunks_exact_mut(nb).take(kc).enumerate() {
            dequantize_into(b.dtype, b.run(k0 + kk, j0, nb), dst);
        }
        Mat {
            ptr: panel.as_ptr(),
            rs: nb as isize,
            cs: 1,
        }
    }
}
