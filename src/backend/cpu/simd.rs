//! Vector code for the CPU backend's non-GEMM ops, chosen at run time.
//!
//! The crate is built for the x86-64 baseline (SSE2), so loops written plainly vectorize only
//! 4 wide. [`vectorized!`] compiles a function body three times — for AVX-512, for AVX2+FMA and
//! for the baseline — and calls the best one this CPU has (detected once). The bodies are plain
//! Rust written so LLVM can vectorize them: fixed-width accumulators instead of one running sum,
//! and branch-free math ([`exp`], [`gelu`], [`gelu_grad`]) instead of calls into libm. Rust
//! never contracts `a * b + c` into an FMA on its own, so every ISA gives bit-identical results;
//! the scalar functions in `cpu.rs` (libm's erff, std's exp) are the oracles they are tested
//! against.

use std::sync::OnceLock;

/// The widest vector instruction set this CPU offers to [`vectorized!`] functions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Isa {
    Base,
    Avx2,
    Avx512,
}

/// Detected once. `ADARANK_CPU_ISA=base|avx2|avx512` lowers it (for comparing the paths; it
/// never raises it above what the CPU has).
pub fn isa() -> Isa {
    static ISA: OnceLock<Isa> = OnceLock::new();
    *ISA.get_or_init(|| {
        let have = detect();
        match std::env::var("ADARANK_CPU_ISA").as_deref() {
            Ok("base") => Isa::Base,
            Ok("avx2") => have.min(Isa::Avx2),
            _ => have,
        }
    })
}

#[cfg(target_arch = "x86_64")]
fn detect() -> Isa {
    if is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512dq")
        && is_x86_feature_detected!("avx512vl")
        && is_x86_feature_detected!("fma")
    {
        Isa::Avx512
    } else if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
        Isa::Avx2
    } else {
        Isa::Base
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn detect() -> Isa {
    Isa::Base
}

/// `vectorized! { pub fn name(args) -> R { body } }`: `body` compiled for AVX-512, AVX2+FMA
/// and the baseline; each call runs the best one [`isa`] allows. Arguments must be plain
/// (non-generic) types.
macro_rules! vectorized {
    ($(#[$m:meta])* $vis:vis fn $name:ident($($a:ident : $t:ty),* $(,)?) $(-> $r:ty)? $body:block) => {
        $(#[$m])*
        $vis fn $name($($a: $t),*) $(-> $r)? {
            #[inline(always)]
            fn body($($a: $t),*) $(-> $r)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
                unsafe fn v512($($a: $t),*) $(-> $r)? { body($($a),*) }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn v256($($a: $t),*) $(-> $r)? { body($($a),*) }
                match $crate::backend::cpu::simd::isa() {
                    // SAFETY: `isa()` reports only features the CPU has.
                    $crate::backend::cpu::simd::Isa::Avx512 => return unsafe { v512($($a),*) },
                    $crate::backend::cpu::simd::Isa::Avx2 => return unsafe { v256($($a),*) },
                    $crate::backend::cpu::simd::Isa::Base => {}
                }
            }
            body($($a),*)
        }
    };
}
pub(crate) use vectorized;

/// Lanes of the fixed-width accumulators in reductions: one AVX-512 register of f32.
pub const LANES: usize = 16;

/// e^x for f32, branch-free (so it vectorizes): n = round(x/ln 2), r = x − n·ln 2 in two
/// parts (Cody–Waite), e^r by Cephes' degree-6 polynomial, 2^n from the exponent bits.
/// Within 2 ulp of std's `exp` over [−87.3, 88.7]; 0 below, +inf above, NaN for NaN.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LO: f32 = -87.336_55;
    const HI: f32 = 88.722_83;
    // 1.5·2^23: adding it rounds to an integer, kept in the low mantissa bits.
    const MAGIC: f32 = 12_582_912.0;
    // clamp, not f32::max/min: a NaN input must stay NaN (a diverged run is detected
    // downstream by its non-finite values).
    let xc = x.clamp(LO, HI);
    let t = xc * std::f32::consts::LOG2_E + MAGIC;
    let n = t - MAGIC;
    let r = xc - n * 0.693_359_4 + n * 2.121_944_4e-4;
    let z = r * r;
    let p = ((((1.987_569_1e-4 * r + 1.398_2e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r
        + 0.166_666_65)
        * r
        + 0.5;
    let er = p * z + r + 1.0;
    // 2^n as two factors 2^h · 2^(n−h), h = n/2: each stays a normal f32 for n in [−126, 128]
    // (e^88.72 needs 2^128, one past the largest exponent).
    let n_int = t.to_bits().wrapping_sub(MAGIC.to_bits()) as i32;
    let h = n_int >> 1;
    let s1 = f32::from_bits(((h + 127) as u32) << 23);
    let s2 = f32::from_bits(((n_int - h + 127) as u32) << 23);
    let y = er * s1 * s2;
    if x < LO {
        0.0
    } else if x > HI {
        f32::INFINITY
    } else {
        y
    }
}

/// (Φ(x), φ(x)·x-free part): the standard normal CDF Φ(x) and the Gaussian e^(−x²/2), sharing
/// one exponential. Φ uses Abramowitz & Stegun 7.1.26 for erfc (absolute error ≤ 1.5e-7),
/// evaluated on |x| so the negative side is computed directly, without cancellation.
#[inline(always)]
fn cdf_and_gauss(x: f32) -> (f32, f32) {
    const P: f32 = 0.327_591_1;
    let z = x.abs() * std::f32::consts::FRAC_1_SQRT_2;
    let t = 1.0 / (1.0 + P * z);
    let poly = t
        * (0.254_829_6
            + t * (-0.284_496_74 + t * (1.421_413_8 + t * (-1.453_152 + t * 1.061_405_4))));
    let g = exp(-0.5 * x * x);
    // erfc(|x|/√2)/2 = upper tail of |x|
    let tail = 0.5 * poly * g;
    let cdf = if x >= 0.0 { 1.0 - tail } else { tail };
    (cdf, g)
}

/// GELU, x·Φ(x) (the erf form BERT uses): within 2e-7·max(1, |x|) of the libm version.
#[inline(always)]
pub fn gelu(x: f32) -> f32 {
    x * cdf_and_gauss(x).0
}

/// GELU's derivative Φ(x) + x·φ(x).
#[inline(always)]
pub fn gelu_grad(x: f32) -> f32 {
    let (cdf, g) = cdf_and_gauss(x);
    cdf + x * g * 0.398_942_3
}

/// Σ a·b with 16 independent partial sums (vectorizable; the order differs from a running sum).
#[inline(always)]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; LANES];
    let (ac, ar) = a.split_at(a.len() / LANES * LANES);
    let (bc, br) = b[..a.len()].split_at(ac.len());
    for (x, y) in ac.chunks_exact(LANES).zip(bc.chunks_exact(LANES)) {
        for l in 0..LANES {
            acc[l] += x[l] * y[l];
        }
    }
    let mut s = acc.iter().sum::<f32>();
    for (x, y) in ar.iter().zip(br) {
        s += x * y;
    }
    s
}

/// Σ a with 16 independent partial sums.
#[inline(always)]
pub fn sum(a: &[f32]) -> f32 {
    let mut acc = [0.0f32; LANES];
    let (ac, ar) = a.split_at(a.len() / LANES * LANES);
    for x in ac.chunks_exact(LANES) {
        for l in 0..LANES {
            acc[l] += x[l];
        }
    }
    acc.iter().sum::<f32>() + ar.iter().sum::<f32>()
}

/// Σ (a − m)² with 16 independent partial sums.
#[inline(always)]
pub fn sum_sq_dev(a: &[f32], m: f32) -> f32 {
    let mut acc = [0.0f32; LANES];
    let (ac, ar) = a.split_at(a.len() / LANES * LANES);
    for x in ac.chunks_exact(LANES) {
        for l in 0..LANES {
            let d = x[l] - m;
            acc[l] += d * d;
        }
    }
    acc.iter().sum::<f32>() + ar.iter().map(|v| (v - m) * (v - m)).sum::<f32>()
}

/// Max of a (−∞ for an empty slice), 16 lanes.
#[inline(always)]
pub fn max(a: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let (ac, ar) = a.split_at(a.len() / LANES * LANES);
    for x in ac.chunks_exact(LANES) {
        for l in 0..LANES {
            acc[l] = acc[l].max(x[l]);
        }
    }
    acc.iter()
        .chain(ar)
        .fold(f32::NEG_INFINITY, |m, &v| m.max(v))
}
