//! Integer ranks that meet a budget exactly: shift real-valued ranks by a common offset so that,
//! clamped to [r_min, r_max], they add up to the budget, then round by largest remainder.
//!
//! Why a common shift: the log rule r_i = α·log C_i + β fixes the *differences* between ranks
//! through α; β only sets the level, so meeting the budget is a choice of β. Largest remainder
//! is the integer vector with the given sum nearest (in L2) to the real one.

/// Round `x` (real ranks) to integers in `[r_min, r_max]` that add up to `budget` exactly.
/// Returns an error message when `x` holds a non-finite value or the budget cannot be met.
pub fn round_to_budget(
    x: &[f64],
    budget: usize,
    r_min: usize,
    r_max: usize,
) -> Result<Vec<usize>, String> {
    round_to_budget_until(x, budget, r_min, r_max, &|| false)
}

/// [`round_to_budget`] that gives up with an error once `stop()` says so (the plugin sandbox
/// passes its deadline: on a million adapters the search takes a good fraction of a second).
pub fn round_to_budget_until(
    x: &[f64],
    budget: usize,
    r_min: usize,
    r_max: usize,
    stop: &dyn Fn() -> bool,
) -> Result<Vec<usize>, String> {
    let n = x.len();
    if n == 0 {
        return if budget == 0 {
            Ok(vec![])
        } else {
            Err(format!("budget {budget} with no adapters"))
        };
    }
    if r_min > r_max {
        return Err(format!("r_min {r_min} > r_max {r_max}"));
    }
    if let Some((i, v)) = x.iter().enumerate().find(|(_, v)| !v.is_finite()) {
        return Err(format!("rank {i} is not finite ({v})"));
    }
    if budget < n * r_min || budget > n * r_max {
        return Err(format!(
            "budget {budget} cannot be met by {n} adapters with ranks in [{r_min}, {r_max}] \
             (possible totals {}..={})",
            n * r_min,
            n * r_max
        ));
    }
    let y = shift_to_sum_until(x, budget as f64, r_min as f64, r_max as f64, stop)
        .ok_or("stopped: ran past its time budget")?;
    Ok(largest_remainder(&y, budget, r_min, r_max))
}

/// `clamp(x_i + δ, lo, hi)` with δ chosen so the sum is `target` (lo·n ≤ target ≤ hi·n).
pub fn shift_to_sum(x: &[f64], target: f64, lo: f64, hi: f64) -> Vec<f64> {
    shift_to_sum_until(x, target, lo, hi, &|| false).unwrap_or_default()
}

/// [`shift_to_sum`], or `None` once `stop()` says so (checked at every bisection step).
fn shift_to_sum_until(
    x: &[f64],
    target: f64,
    lo: f64,
    hi: f64,
    stop: &dyn Fn() -> bool,
) -> Option<Vec<f64>> {
    let d = budget_shift_until(x, target, lo, hi, stop)?;
    Some(x.iter().map(|v| (v + d).clamp(lo, hi)).collect())
}

/// The offset δ with Σ clamp(x_i + δ, lo, hi) = `target` (lo·n ≤ target ≤ hi·n), found by
/// bisection: the sum is monotone in δ.
pub fn budget_shift(x: &[f64], target: f64, lo: f64, hi: f64) -> f64 {
    budget_shift_until(x, target, lo, hi, &|| false).unwrap_or_default()
}

/// [`budget_shift`], or `None` once `stop()` says so (checked at every bisection step).
pub fn budget_shift_until(
    x: &[f64],
    target: f64,
    lo: f64,
    hi: f64,
    stop: &dyn Fn() -> bool,
) -> Option<f64> {
    let sum_at = |d: f64| -> f64 { x.iter().map(|v| (v + d).clamp(lo, hi)).sum() };
    let xmax = x.iter().cloned().fold(f64::MIN, f64::max);
    let xmin = x.iter().cloned().fold(f64::MAX, f64::min);
    // At d_lo every value sits at lo, at d_hi every value at hi; the sum is monotone in between.
    let (mut d_lo, mut d_hi) = (lo - xmax - 1.0, hi - xmin + 1.0);
    for _ in 0..200 {
        if stop() {
            return None;
        }
        let mid = 0.5 * (d_lo + d_hi);
        if sum_at(mid) < target {
            d_lo = mid;
        } else {
            d_hi = mid;
        }
    }
    Some(0.5 * (d_lo + d_hi))
}

/// The least-squares fit (α, β) of d_i = budget·C_i/ΣC on ln C_i, with α clamped at ≥ 0 (β then
/// re-fitted): the best log-linear summary of the proportional split of the budget.
pub fn proportional_fit(c: &[f64], budget: f64) -> (f64, f64) {
    let n = c.len() as f64;
    if c.is_empty() {
        return (0.0, 0.0);
    }
    let total: f64 = c.iter().sum();
    let x: Vec<f64> = c.iter().map(|v| v.ln()).collect();
    let d: Vec<f64> = c.iter().map(|v| budget * v / total).collect();
    let (mx, md) = (x.iter().sum::<f64>() / n, d.iter().sum::<f64>() / n);
    let sxx: f64 = x.iter().map(|a| (a - mx).powi(2)).sum();
    let sxd: f64 = x.iter().zip(&d).map(|(a, b)| (a - mx) * (b - md)).sum();
    let a = if sxx > 1e-12 {
        (sxd / sxx).max(0.0)
    } else {
        0.0
    };
    (a, md - a * mx)
}

/// Floors of `y`, then +1 to the largest fractional parts until the sum is `budget` (ties go to
/// the earlier adapter). Values are kept in `[r_min, r_max]`.
pub fn largest_remainder(y: &[f64], budget: usize, r_min: usize, r_max: usize) -> Vec<usize> {
    let mut r: Vec<usize> = y
        .iter()
        .map(|v| (v.floor().max(0.0) as usize).clamp(r_min, r_max))
        .collect();
    let frac: Vec<f64> = y.iter().zip(&r).map(|(v, ri)| v - *ri as f64).collect();
    let mut order: Vec<usize> = (0..y.len()).collect();
    order.sort_by(|&a, &b| frac[b].total_cmp(&frac[a]).then(a.cmp(&b)));
    let mut sum: usize = r.iter().sum();
    // The shift is found by bisection, so the floors may miss the budget by more than the
    // number of fractional parts in rare float cases: walk the order until it is met.
    while sum < budget {
        let before = sum;
        for &i in &order {
            if sum == budget {
                break;
            }
            if r[i] < r_max {
                r[i] += 1;
                sum += 1;
            }
        }
        if sum == before {
            break;
        }
    }
    while sum > budget {
        let before = sum;
        for &i in order.iter().rev() {
            if sum == budget {
                break;
            }
            if r[i] > r_min {
                r[i] -= 1;
                sum -= 1;
            }
        }
        if sum == before {
            break;
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every integer vector in [lo, hi]^n with the given sum.
    fn all_vectors(n: usize, lo: usize, hi: usize, sum: usize) -> Vec<Vec<usize>> {
        let mut out = vec![];
        let mut cur = vec![lo; n];
        loop {
            if cur.iter().sum::<usize>() == sum {
                out.push(cur.clone());
            }
            let mut k = 0;
            loop {
                if k == n {
                    return out;
                }
                if cur[k] < hi {
                    cur[k] += 1;
                    break;
                }
                cur[k] = lo;
                k += 1;
            }
        }
    }

    #[test]
    fn rounding_is_nearest_integer_vector_meeting_budget() {
        // Oracle: brute force over all integer rank vectors with the budget's sum; the result
        // must be the L2-nearest one to the shifted, clamped reals.
        let mut seed = 7u64;
        let mut next = || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 11) as f64 / (1u64 << 53) as f64
        };
        for _ in 0..300 {
            let n = 1 + (next() * 4.0) as usize;
            let (lo, hi) = (1 + (next() * 2.0) as usize, 4 + (next() * 3.0) as usize);
            let budget = n * lo + ((n * (hi - lo)) as f64 * next()).round() as usize;
            let x: Vec<f64> = (0..n).map(|_| next() * 10.0 - 3.0).collect();
            let r = round_to_budget(&x, budget, lo, hi).unwrap();
            assert_eq!(r.iter().sum::<usize>(), budget);
            assert!(r.iter().all(|&v| v >= lo && v <= hi));
            let y = shift_to_sum(&x, budget as f64, lo as f64, hi as f64);
            assert!((y.iter().sum::<f64>() - budget as f64).abs() < 1e-6);
            let dist = |v: &[usize]| -> f64 {
                v.iter().zip(&y).map(|(a, b)| (*a as f64 - b).powi(2)).sum()
            };
            let best = all_vectors(n, lo, hi, budget)
                .iter()
                .map(|v| dist(v))
                .fold(f64::MAX, f64::min);
            assert!(dist(&r) <= best + 1e-9, "x={x:?} r={r:?} y={y:?}");
        }
    }

    #[test]
    fn rounding_keeps_order_of_real_ranks() {
        let x = [0.3, 2.9, 1.5, 7.2, -1.0];
        let r = round_to_budget(&x, 20, 1, 8).unwrap();
        for i in 0..x.len() {
            for j in 0..x.len() {
                if x[i] < x[j] {
                    assert!(r[i] <= r[j], "{r:?}");
                }
            }
        }
    }

    #[test]
    fn rounding_rejects_infeasible_and_non_finite() {
        assert!(round_to_budget(&[1.0, 2.0], 20, 1, 8)
            .unwrap_err()
            .contains("cannot be met"));
        assert!(round_to_budget(&[1.0, 2.0], 1, 1, 8).is_err());
        assert!(round_to_budget(&[1.0, f64::NAN], 4, 1, 8)
            .unwrap_err()
            .contains("not finite"));
        assert!(round_to_budget(&[1.0], 3, 4, 2).is_err());
    }
}
