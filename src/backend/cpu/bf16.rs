//! GEMM with bf16 frozen weights: C (f32) = α · op(A) (f32) · op(B) (bf16) + β · C.
//!
//! On CPUs with AVX-512 BF16 the products are bf16 dot products (`vdpbf16ps`: 32 bf16 products
//! summed pairwise into 16 f32 lanes per instruction, twice the multiply rate of f32 FMA). B is
//! already bf16; A (the activations, f32) is split while it is packed into two bf16 parts,
//! hi = bf16(a) and lo = bf16(a − hi), and each k step issues both products, hi·b + lo·b. That
//! keeps A to ~16 significant bits (rounding A to one bf16 alone put MiniLM's hidden states
//! 1.3e-2 from f32; only the weights' rounding is what `weights = bf16` asks for), at the f32
//! FMA rate in arithmetic but with half of f32's weight traffic. Products of two bf16 are exact
//! in f32 and every sum is an f32 sum, so the result equals an f32 GEMM of A' = hi + lo and the
//! bf16 B up to the order of the f32 additions — that GEMM is the oracle the tests use, and the
//! fallback ([`gemm_widened`]) on CPUs without the instruction.
//!
//! Layout (BLIS-style): K is split into blocks of [`KC`] values; B is packed once per call into
//! panels of [`NR`] columns, each k-pair of a column one u32 (the instruction's operand order);
//! each rayon task packs its own [`MC`]-row block of A (hi and lo parts, rows of u32 pairs) and
//! runs the [`MR`]×[`NR`] microkernel (24 accumulator registers) over it.

use super::SendPtr;
use half::bf16;
use rayon::prelude::*;
use std::sync::Mutex;

/// Microtile rows (A rows per kernel call).
pub const MR: usize = 8;
/// Microtile columns: three registers of 16 f32.
pub const NR: usize = 48;
/// K values per block (a multiple of 2: pairs never straddle blocks).
pub const KC: usize = 256;
/// A rows per task.
pub const MC: usize = 64;

/// One bf16 operand, row-major with `rows × cols` values (two per u32 word in memory, element
/// 2i in the low half of word i), read as op(B) = B or Bᵀ.
#[derive(Clone, Copy)]
pub struct Bf16Mat<'a> {
    pub data: &'a [u16],
    pub rows: usize,
    pub cols: usize,
}

impl Bf16Mat<'_> {
    fn at(&self, r: usize, c: usize) -> u16 {
        self.data[r * self.cols + c]
    }
}

/// f32 → bf16 bits, rounded to nearest even (NaN stays NaN).
pub fn to_bf16(x: f32) -> u16 {
    bf16::from_f32(x).to_bits()
}

pub fn from_bf16(b: u16) -> f32 {
    f32::from_bits((b as u32) << 16)
}

/// Whether this CPU runs the bf16 microkernel (AVX-512 BF16 and the AVX-512 base it needs).
pub fn native() -> bool {
    use super::simd::{isa, Isa};
    static HAVE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *HAVE.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            isa() == Isa::Avx512 && is_x86_feature_detected!("avx512bf16")
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = isa;
            false
        }
    })
}

/// The shape of one call: C is m×n, op(A) m×k f32 with row stride `lda` (stored k×m when
/// `trans_a`), op(B) k×n bf16 (B stored n×k when `trans_b`).
#[derive(Clone, Copy, Debug)]
pub struct Shape {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub trans_a: bool,
    pub trans_b: bool,
    pub alpha: f32,
    pub beta: f32,
}

thread_local! {
    /// Each rayon thread's packed block of A, reused across calls.
    static APACK: std::cell::RefCell<Vec<u32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Reusable packing buffers (kept by the backend: no allocation per call once grown).
#[derive(Default)]
pub struct Workspace {
    b: Mutex<Vec<u32>>,
}

/// C = α·op(A)·op(B) + β·C with bf16 B; `threads` > 1 splits rows of C across rayon tasks.
pub fn gemm(ws: &Workspace, s: &Shape, a: &[f32], b: Bf16Mat, c: &mut [f32], threads: usize) {
    if s.m == 0 || s.n == 0 {
        return;
    }
    if s.k == 0 || !native() {
        return gemm_widened(s, a, b, c, threads);
    }
    #[cfg(target_arch = "x86_64")]
    {
        let kp_total = s.k.div_ceil(2);
        let panels = s.n.div_ceil(NR);
        let mut packed = ws.b.lock().unwrap();
        let need = panels * kp_total * NR;
        if packed.len() < need {
            packed.resize(need, 0);
        }
        // B, packed: for each K block, for each panel, [pairs of the block][NR] u32.
        let kblocks: Vec<(usize, usize)> = (0..s.k)
            .step_by(KC)
            .map(|k0| (k0, KC.min(s.k - k0)))
            .collect();
        {
            let pk = SendPtr(packed.as_mut_ptr() as *mut f32);
            (0..panels).into_par_iter().for_each(|p| {
                for &(k0, kc) in &kblocks {
                    let kp = kc.div_ceil(2);
                    let off = k0 / 2 * panels * NR + p * kp * NR;
                    // SAFETY: panel p of block k0 owns [off, off + kp·NR), disjoint across tasks.
                    let dst = unsafe {
                        std::slice::from_raw_parts_mut((pk.get() as *mut u32).add(off), kp * NR)
                    };
                    pack_b(b, s.trans_b, k0, kc, p * NR, s.n, dst);
                }
            });
        }
        let packed = &packed[..need];
        let cp = SendPtr(c.as_mut_ptr());
        let blocks = s.m.div_ceil(MC);
        let run = |ib: usize| {
            let i0 = ib * MC;
            let mc = MC.min(s.m - i0);
            APACK.with_borrow_mut(|apack| {
                let half = MC.div_ceil(MR) * MR * KC / 2;
                apack.resize(2 * half, 0);
                let (ahi, alo) = apack.split_at_mut(half);
                for (bi, &(k0, kc)) in kblocks.iter().enumerate() {
                    let kp = kc.div_ceil(2);
                    pack_a(a, s, i0, mc, k0, kc, ahi, alo);
                    let first = bi == 0;
                    for p in 0..panels {
                        let j0 = p * NR;
                        let nr = NR.min(s.n - j0);
                        let bp = &packed[k0 / 2 * panels * NR + p * kp * NR..][..kp * NR];
                        for r0 in (0..mc).step_by(MR) {
                            let mr = MR.min(mc - r0);
                            let ap = (&ahi[r0 * kp..][..MR * kp], &alo[r0 * kp..][..MR * kp]);
                            // SAFETY: rows i0 + r0.. of C belong to this task; `native()` holds.
                            unsafe {
                                kernel::tile(
                                    kp,
                                    ap,
                                    bp,
                                    cp.get().add((i0 + r0) * s.n + j0),
                                    s.n,
                                    mr,
                                    nr,
                                    s.alpha,
                                    if first { s.beta } else { 1.0 },
                                );
                            }
                        }
                    }
                }
            });
        };
        if threads > 1 && blocks > 1 {
            (0..blocks).into_par_iter().for_each(run);
        } else {
            (0..blocks).for_each(run);
        }
    }
}

/// Packs columns j0..j0+NR (zeros past n) of op(B) for K values k0..k0+kc: [pairs][NR] u32.
fn pack_b(b: Bf16Mat, trans_b: bool, k0: usize, kc: usize, j0: usize, n: usize, dst: &mut [u32]) {
    let kp = kc.div_ceil(2);
    let get = |k: usize, j: usize| -> u32 {
        if k >= k0 + kc || j >= n {
            return 0;
        }
        (if trans_b { b.at(j, k) } else { b.at(k, j) }) as u32
    };
    for p in 0..kp {
        let k = k0 + 2 * p;
        let row = &mut dst[p * NR..(p + 1) * NR];
        for (jj, w) in row.iter_mut().enumerate() {
            let j = j0 + jj;
            *w = get(k, j) | (get(k + 1, j) << 16);
        }
    }
}

/// Packs rows i0..i0+mc (zeros up to a multiple of MR) of op(A) for K values k0..k0+kc as
/// its two bf16 parts, `hi` and `lo` ([`split`]): row r at [r·kp, (r+1)·kp) u32 of each, pairs
/// (k, k+1) low then high.
#[allow(clippy::too_many_arguments)]
fn pack_a(
    a: &[f32],
    s: &Shape,
    i0: usize,
    mc: usize,
    k0: usize,
    kc: usize,
    hi: &mut [u32],
    lo: &mut [u32],
) {
    let kp = kc.div_ceil(2);
    let rows = mc.div_ceil(MR) * MR;
    for r in 0..rows {
        let (out_hi, out_lo) = (&mut hi[r * kp..(r + 1) * kp], &mut lo[r * kp..(r + 1) * kp]);
        if r >= mc {
            out_hi.fill(0);
            out_lo.fill(0);
            continue;
        }
        let i = i0 + r;
        let get = |k: usize| -> f32 {
            if k >= k0 + kc {
                0.0
            } else if s.trans_a {
                a[k * s.m + i]
            } else {
                a[i * s.k + k]
            }
        };
        if !s.trans_a && kc.is_multiple_of(2) {
            pack_row(&a[i * s.k + k0..i * s.k + k0 + kc], out_hi, out_lo);
        } else {
            for (p, (h, l)) in out_hi.iter_mut().zip(out_lo.iter_mut()).enumerate() {
                let k = k0 + 2 * p;
                let ((h0, l0), (h1, l1)) = (split(get(k)), split(get(k + 1)));
                *h = h0 | (h1 << 16);
                *l = l0 | (l1 << 16);
            }
        }
    }
}

super::simd::vectorized! {
    /// Pairs of a contiguous f32 row (even length) as the bf16 u32 words of its two parts.
    fn pack_row(src: &[f32], hi: &mut [u32], lo: &mut [u32]) {
        for ((h, l), pair) in hi.iter_mut().zip(lo.iter_mut()).zip(src.chunks_exact(2)) {
            let ((h0, l0), (h1, l1)) = (split(pair[0]), split(pair[1]));
            *h = h0 | (h1 << 16);
            *l = l0 | (l1 << 16);
        }
    }
}

/// x as two bf16 (bits in the low 16 of each): hi = bf16(x), lo = bf16(x − hi), so hi + lo
/// holds x to ~16 significant bits. Branch-free so that it vectorizes; lo is 0 where x − hi is
/// not a number (x infinite or NaN: hi carries it).
#[inline(always)]
pub fn split(x: f32) -> (u32, u32) {
    let hi = round_bits(x);
    let d = x - f32::from_bits(hi << 16);
    let d = if d.is_nan() { 0.0 } else { d };
    (hi, round_bits(d))
}

/// The f32 value the kernel multiplies for x: hi + lo of [`split`] (the tests' oracle).
pub fn split_value(x: f32) -> f32 {
    let (h, l) = split(x);
    from_bf16(h as u16) + from_bf16(l as u16)
}

/// bf16 bits of x (nearest even) in the low 16 bits, branch-free so that it vectorizes;
/// NaN becomes a quiet NaN.
#[inline(always)]
fn round_bits(x: f32) -> u32 {
    let u = x.to_bits();
    let rounded = (u.wrapping_add(0x7fff + ((u >> 16) & 1))) >> 16;
    if x.is_nan() {
        (u >> 16) | 0x40
    } else {
        rounded
    }
}

/// The fallback and oracle: B widened to f32, then the `gemm` crate on A as the kernel holds
/// it (hi + lo of [`split`]), so it computes the same products as the native kernel.
pub fn gemm_widened(s: &Shape, a: &[f32], b: Bf16Mat, c: &mut [f32], threads: usize) {
    let bw: Vec<f32> = b.data[..b.rows * b.cols]
        .iter()
        .map(|&v| from_bf16(v))
        .collect();
    let (ar, ac) = if s.trans_a { (s.k, s.m) } else { (s.m, s.k) };
    let aw: Vec<f32> = a[..ar * ac].iter().map(|&v| split_value(v)).collect();
    let (a_rs, a_cs) = if s.trans_a {
        (1isize, s.m as isize)
    } else {
        (s.k as isize, 1)
    };
    let (b_rs, b_cs) = if s.trans_b {
        (1isize, s.k as isize)
    } else {
        (s.n as isize, 1)
    };
    if s.k == 0 {
        for v in c[..s.m * s.n].iter_mut() {
            *v = if s.beta == 0.0 { 0.0 } else { s.beta * *v };
        }
        return;
    }
    let par = if threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: the slices hold the extents given.
    unsafe {
        gemm::gemm(
            s.m,
            s.n,
            s.k,
            c.as_mut_ptr(),
            1,
            s.n as isize,
            s.beta != 0.0,
            aw.as_ptr(),
            a_cs,
            a_rs,
            bw.as_ptr(),
            b_cs,
            b_rs,
            s.beta,
            s.alpha,
            false,
            false,
            false,
            par,
        );
    }
}

#[cfg(target_arch = "x86_64")]
mod kernel {
    use super::{MR, NR};
    use std::arch::x86_64::*;

    /// One MR×NR tile of C over `kp` k-pairs: C = α·acc + β·C for the first `mr` rows and `nr`
    /// columns. `a`: the hi and lo parts of A, MR rows of `kp` u32 each; `b`: `kp` rows of NR
    /// u32.
    ///
    /// # Safety
    /// AVX-512F/BW and AVX-512 BF16 must be present; `c` valid for mr rows of stride `ldc`
    /// and nr columns.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
    pub unsafe fn tile(
        kp: usize,
        (a, a_lo): (&[u32], &[u32]),
        b: &[u32],
        c: *mut f32,
        ldc: usize,
        mr: usize,
        nr: usize,
        alpha: f32,
        beta: f32,
    ) {
        debug_assert!(a.len() >= MR * kp && a_lo.len() >= MR * kp && b.len() >= NR * kp);
        let mut acc = [[_mm512_setzero_ps(); 3]; MR];
        let ap = a.as_ptr();
        let lp = a_lo.as_ptr();
        let bp = b.as_ptr();
        for p in 0..kp {
            let bv = [
                _mm512_loadu_si512(bp.add(p * NR) as *const _),
                _mm512_loadu_si512(bp.add(p * NR + 16) as *const _),
                _mm512_loadu_si512(bp.add(p * NR + 32) as *const _),
            ];
            for (r, accr) in acc.iter_mut().enumerate() {
                for part in [ap, lp] {
                    let av = _mm512_set1_epi32(*part.add(r * kp + p) as i32);
                    let av: __m512bh = std::mem::transmute(av);
                    for (j, accv) in accr.iter_mut().enumerate() {
                        *accv = _mm512_dpbf16_ps(
                            *accv,
                            av,
                            std::mem::transmute::<__m512i, __m512bh>(bv[j]),
                        );
                    }
                }
            }
        }
        let va = _mm512_set1_ps(alpha);
        let vb = _mm512_set1_ps(beta);
        for (r, accr) in acc.iter().enumerate().take(mr) {
            for (j, &accv) in accr.iter().enumerate() {
                let c0 = j * 16;
                if c0 >= nr {
                    break;
                }
                let left = nr - c0;
                let mask: __mmask16 = if left >= 16 {
                    0xffff
                } else {
                    (1u16 << left) - 1
                };
                let dst = c.add(r * ldc + c0);
                let mut v = _mm512_mul_ps(accv, va);
                if beta != 0.0 {
                    let old = _mm512_maskz_loadu_ps(mask, dst);
                    v = _mm512_fmadd_ps(old, vb, v);
                }
                _mm512_mask_storeu_ps(dst, mask, v);
            }
        }
    }
}
