//! The statistics the report quotes: per arm the mean, sample standard deviation, n and a 95%
//! Student-t confidence interval over seeds; per arm and baseline the seed-paired differences,
//! with their mean, 95% t interval and a sign-flip permutation p-value.
//!
//! Why these: seeds are few (3–10), so a normal interval would be too narrow (t with n − 1
//! degrees of freedom is the exact interval for normal errors); pairing by seed removes the
//! spread both arms share when seed k gives both the same data order; the sign-flip test makes
//! no normality assumption at all — under "no difference" each paired difference is as likely
//! to be negative as positive.

use rand::{Rng, SeedableRng};
use statrs::distribution::{ContinuousCDF, StudentsT};

/// Mean and sample standard deviation (n − 1 in the denominator; 0 for a single value).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MeanStd {
    pub mean: f64,
    pub std: f64,
    pub n: usize,
}

impl MeanStd {
    /// Half-width of the 95% Student-t confidence interval of the mean:
    /// t_{0.975, n−1} · s / √n; `None` for n < 2 (no spread to estimate).
    pub fn ci95(&self) -> Option<f64> {
        (self.n >= 2).then(|| t_quantile(0.975, self.n - 1) * self.std / (self.n as f64).sqrt())
    }

    /// The 95% interval `(lo, hi)`, when n ≥ 2.
    pub fn ci95_bounds(&self) -> Option<(f64, f64)> {
        self.ci95().map(|h| (self.mean - h, self.mean + h))
    }

    /// Whether the 95% interval lies wholly on one side of 0.
    pub fn ci_excludes_zero(&self) -> bool {
        self.ci95_bounds()
            .is_some_and(|(lo, hi)| lo > 0.0 || hi < 0.0)
    }
}

/// The `p`-quantile of Student's t distribution with `df` degrees of freedom (`statrs`).
pub fn t_quantile(p: f64, df: usize) -> f64 {
    StudentsT::new(0.0, 1.0, df as f64)
        .map(|t| t.inverse_cdf(p))
        .unwrap_or(f64::NAN)
}

pub fn mean_std(xs: &[f64]) -> Option<MeanStd> {
    let n = xs.len();
    if n == 0 {
        return None;
    }
    let mean = xs.iter().sum::<f64>() / n as f64;
    let std = if n > 1 {
        (xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt()
    } else {
        0.0
    };
    Some(MeanStd { mean, std, n })
}

/// Differences `arm − baseline` over the seeds both have, in the arm's seed order.
pub fn paired_diffs(arm: &[(u64, f64)], baseline: &[(u64, f64)]) -> Vec<f64> {
    arm.iter()
        .filter_map(|(s, x)| baseline.iter().find(|(bs, _)| bs == s).map(|(_, b)| x - b))
        .collect()
}

/// Differences `arm − baseline` over the seeds both have, summarised by [`mean_std`]. Pairing by
/// seed removes the seed-to-seed spread both arms share (same data order, same initial weights).
pub fn paired_diff(arm: &[(u64, f64)], baseline: &[(u64, f64)]) -> Option<MeanStd> {
    mean_std(&paired_diffs(arm, baseline))
}

/// Up to this many pairs the sign-flip test enumerates all 2ⁿ sign vectors (65,536 at 16).
pub const EXACT_MAX_N: usize = 16;
/// Above [`EXACT_MAX_N`], this many random sign vectors (fixed seed, so a report is
/// reproducible).
pub const MONTE_CARLO_DRAWS: usize = 1 << 16;

/// A two-sided sign-flip permutation p-value.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PermutationTest {
    pub p: f64,
    /// All 2ⁿ sign vectors were counted (otherwise a Monte Carlo estimate).
    pub exact: bool,
}

/// Two-sided sign-flip permutation test of "the paired differences are symmetric about 0":
/// p = share of sign vectors ε ∈ {±1}ⁿ with |Σ εᵢdᵢ| ≥ |Σ dᵢ| (the observed vector counts).
/// Exact enumeration for n ≤ [`EXACT_MAX_N`]; above, [`MONTE_CARLO_DRAWS`] random vectors with
/// the observed one added, p = (1 + hits) / (1 + draws), which never reports 0. With n pairs
/// the smallest possible p is 2/2ⁿ: at n ≤ 5 no result reaches p < 0.05.
pub fn sign_flip_p(diffs: &[f64]) -> Option<PermutationTest> {
    let n = diffs.len();
    if n == 0 {
        return None;
    }
    let observed = diffs.iter().sum::<f64>().abs();
    // Sums that equal the observed one up to rounding count as "as extreme".
    let tol = 1e-12
        * diffs
            .iter()
            .map(|d| d.abs())
            .sum::<f64>()
            .max(f64::MIN_POSITIVE);
    let extreme = |mask: u64| {
        let s: f64 = diffs
            .iter()
            .enumerate()
            .map(|(i, d)| if mask >> i & 1 == 1 { -d } else { *d })
            .sum();
        s.abs() >= observed - tol
    };
    if n <= EXACT_MAX_N {
        let total = 1u64 << n;
        let hits = (0..total).filter(|&m| extreme(m)).count();
        return Some(PermutationTest {
            p: hits as f64 / total as f64,
            exact: true,
        });
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5167_F11B);
    let mut hits = 0usize;
    for _ in 0..MONTE_CARLO_DRAWS {
        let s: f64 = diffs
            .iter()
            .map(|d| if rng.random::<bool>() { -d } else { *d })
            .sum();
        if s.abs() >= observed - tol {
            hits += 1;
        }
    }
    Some(PermutationTest {
        p: (1 + hits) as f64 / (1 + MONTE_CARLO_DRAWS) as f64,
        exact: false,
    })
}

/// Everything the report says about one paired comparison.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Paired {
    pub diff: MeanStd,
    pub test: PermutationTest,
}

/// [`paired_diff`] with its sign-flip test; `None` when no seed is shared.
pub fn paired(arm: &[(u64, f64)], baseline: &[(u64, f64)]) -> Option<Paired> {
    let d = paired_diffs(arm, baseline);
    Some(Paired {
        diff: mean_std(&d)?,
        test: sign_flip_p(&d)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_std_matches_hand_computation() {
        // 2, 4, 4, 4, 5, 5, 7, 9: mean 5, Σ(x−5)² = 32, sample var 32/7.
        let m = mean_std(&[2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0]).unwrap();
        assert_eq!(m.mean, 5.0);
        assert!((m.std - (32.0f64 / 7.0).sqrt()).abs() < 1e-12);
        assert_eq!(mean_std(&[3.0]).unwrap().std, 0.0);
        assert!(mean_std(&[]).is_none());
    }

    #[test]
    fn paired_diff_pairs_by_seed_and_skips_unpaired() {
        let arm = [(0, 0.9), (1, 0.8), (2, 0.7), (5, 0.1)];
        let base = [(2, 0.5), (0, 0.6), (1, 0.7)];
        let d = paired_diff(&arm, &base).unwrap();
        // diffs 0.3, 0.1, 0.2
        assert_eq!(d.n, 3);
        assert!((d.mean - 0.2).abs() < 1e-12);
        assert!((d.std - 0.1).abs() < 1e-12);
    }

    #[test]
    fn t_quantiles_match_the_printed_table() {
        // t_{0.975, df} from a standard table (e.g. NIST/SEMATECH e-Handbook, Table 1.4.2.7.4.3).
        let table = [
            (1, 12.706),
            (2, 4.303),
            (3, 3.182),
            (4, 2.776),
            (5, 2.571),
            (9, 2.262),
            (29, 2.045),
            (100, 1.984),
        ];
        for (df, t) in table {
            let q = t_quantile(0.975, df);
            assert!((q - t).abs() < 5e-4, "df {df}: {q} vs table {t}");
        }
    }

    #[test]
    fn ci_is_t_times_standard_error() {
        // 1..5: mean 3, s² = 10/4 = 2.5, se = √(2.5/5) = √0.5; half-width = 2.776445·√0.5.
        let m = mean_std(&[1.0, 2.0, 3.0, 4.0, 5.0]).unwrap();
        let h = m.ci95().unwrap();
        assert!((h - 2.776_445 * 0.5f64.sqrt()).abs() < 1e-5, "{h}");
        let (lo, hi) = m.ci95_bounds().unwrap();
        assert!((lo - (3.0 - h)).abs() < 1e-12 && (hi - (3.0 + h)).abs() < 1e-12);
        assert!(m.ci_excludes_zero());
        // Two values 0.1, 0.3: mean 0.2, s = √0.02, half = 12.7062·√0.02/√2 = 1.27062.
        let m = mean_std(&[0.1, 0.3]).unwrap();
        assert!((m.ci95().unwrap() - 1.270_62).abs() < 1e-4);
        assert!(!m.ci_excludes_zero());
        assert!(mean_std(&[1.0]).unwrap().ci95().is_none());
    }

    #[test]
    fn sign_flip_p_values_by_hand() {
        // ±1 ±2 ±3 takes 6, 4, 2, 0, 0, −2, −4, −6: only ±6 reach |6| → 2/8.
        let t = sign_flip_p(&[1.0, 2.0, 3.0]).unwrap();
        assert!(t.exact);
        assert_eq!(t.p, 0.25);
        // 2, 3, 5, 1: observed 11, reached only by all-plus and all-minus → 2/16.
        assert_eq!(sign_flip_p(&[2.0, 3.0, 5.0, 1.0]).unwrap().p, 0.125);
        // 1, −1: observed 0, every sum has |s| ≥ 0 → 1.
        assert_eq!(sign_flip_p(&[1.0, -1.0]).unwrap().p, 1.0);
        // 1, 1, 1, 1, −4: observed 0 → p = 1 again.
        assert_eq!(sign_flip_p(&[1.0, 1.0, 1.0, 1.0, -4.0]).unwrap().p, 1.0);
        // 3, 1, 1, 1: observed 6; sums of ±3±1±1±1 with |s| ≥ 6: all-plus (6), all-minus (−6)
        // → 2/16; sums of 4 need the 3 and two 1s agreeing with the third flipped: |4| < 6.
        assert_eq!(sign_flip_p(&[3.0, 1.0, 1.0, 1.0]).unwrap().p, 0.125);
        // 0.5, 0.1 (6 pairs of equal values): with n = 6 all positive, the minimum 2/64.
        let six = [0.5, 0.1, 0.5, 0.1, 0.5, 0.1];
        assert_eq!(sign_flip_p(&six).unwrap().p, 2.0 / 64.0);
        assert!(sign_flip_p(&[]).is_none());
    }

    #[test]
    fn sign_flip_p_above_the_exact_limit_is_a_close_monte_carlo_estimate() {
        // 20 equal positive differences: only the all-plus and all-minus vectors reach the
        // observed sum, p = 2/2²⁰ ≈ 1.9e-6; the estimate is (1 + hits)/(1 + 65,536) ≈ 1.5e-5.
        let t = sign_flip_p(&[1.0; 20]).unwrap();
        assert!(!t.exact);
        assert!(t.p < 1e-4, "{}", t.p);
        // 20 differences ±1 alternating: observed 0, every vector as extreme → p = 1.
        let alt: Vec<f64> = (0..20)
            .map(|i| if i % 2 == 0 { 1.0 } else { -1.0 })
            .collect();
        assert_eq!(sign_flip_p(&alt).unwrap().p, 1.0);
    }
}
