//! Mean, sample standard deviation and seed-paired differences for the report.

/// Mean and sample standard deviation (n − 1 in the denominator; 0 for a single value).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MeanStd {
    pub mean: f64,
    pub std: f64,
    pub n: usize,
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

/// Differences `arm − baseline` over the seeds both have, summarised by [`mean_std`]. Pairing by
/// seed removes the seed-to-seed spread both arms share (same data order, same initial weights).
pub fn paired_diff(arm: &[(u64, f64)], baseline: &[(u64, f64)]) -> Option<MeanStd> {
    let diffs: Vec<f64> = arm
        .iter()
        .filter_map(|(s, x)| baseline.iter().find(|(bs, _)| bs == s).map(|(_, b)| x - b))
        .collect();
    mean_std(&diffs)
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
}
