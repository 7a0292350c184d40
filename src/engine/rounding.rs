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

/// Integer ranks under a budget in parameters: [`round_to_param_budget`]'s answer.
#[derive(Clone, Debug, PartialEq)]
pub struct CostFit {
    pub ranks: Vec<usize>,
    /// Σ r_i·c_i of `ranks`.
    pub params: u64,
    /// `params − budget`: how close the integers came (negative: under the budget).
    pub gap: i64,
}

/// Round `x` (real ranks) to integers in `[r_min, r_max]` whose cost Σ r_i·c_i comes as close to
/// `budget` parameters as integers allow, where `costs[i]` = c_i is what one rank of adapter i
/// costs (rows + cols).
///
/// Why: a rank of a 1536×384 FFN adapter costs 1920 parameters, one of a 384×384 attention
/// adapter 768, so equal rank sums are not equal costs; comparisons at equal cost need the
/// budget in parameters.
///
/// How: (1) one common shift δ so that Σ c_i·clamp(x_i + δ, r_min, r_max) = budget (the cost
/// analogue of [`shift_to_sum`]); (2) adapters of equal cost form a class, whose total rank t_k
/// can be any integer in [n_k·r_min, n_k·r_max]; the class totals are chosen to minimise
/// |Σ c_k·t_k − budget| (ties: nearest to the classes' real totals), by enumeration over all
/// but the last class (whose best total is a rounding) — exact whenever that enumeration has
/// at most 2²⁰ cases, as with a transformer's two classes (attention 2·hidden, FFN
/// hidden + ffn); beyond, a local search over the totals; (3) inside each class,
/// [`round_to_budget`] shares the class total out (largest remainder).
pub fn round_to_param_budget(
    x: &[f64],
    costs: &[u64],
    budget: u64,
    r_min: usize,
    r_max: usize,
) -> Result<CostFit, String> {
    round_to_param_budget_until(x, costs, budget, r_min, r_max, &|| false)
}

/// [`round_to_param_budget`] that gives up with an error as soon as `stop()` says so: the local
/// search over many cost classes can take long, and a plugin's call has a time budget.
pub fn round_to_param_budget_until(
    x: &[f64],
    costs: &[u64],
    budget: u64,
    r_min: usize,
    r_max: usize,
    stop: &dyn Fn() -> bool,
) -> Result<CostFit, String> {
    let n = x.len();
    if costs.len() != n {
        return Err(format!("{} ranks but {} costs", n, costs.len()));
    }
    if r_min > r_max {
        return Err(format!("r_min {r_min} > r_max {r_max}"));
    }
    if let Some((i, v)) = x.iter().enumerate().find(|(_, v)| !v.is_finite()) {
        return Err(format!("rank {i} is not finite ({v})"));
    }
    if let Some(i) = costs.iter().position(|&c| c == 0) {
        return Err(format!(
            "adapter {i} has cost 0; a rank costs rows + cols > 0"
        ));
    }
    let too_big = || format!("the costs of {n} adapters times rank {r_max} do not fit in 64 bits");
    let total = costs
        .iter()
        .try_fold(0u64, |a, &c| a.checked_add(c))
        .ok_or_else(too_big)?;
    let lo = total.checked_mul(r_min as u64).ok_or_else(too_big)?;
    let hi = total.checked_mul(r_max as u64).ok_or_else(too_big)?;
    if budget < lo || budget > hi {
        return Err(format!(
            "parameter budget {budget} cannot be met by {n} adapters with ranks in \
             [{r_min}, {r_max}] (possible costs {lo}..={hi})"
        ));
    }
    if n == 0 {
        // No adapters: the only budget in range is 0, met by no ranks at all.
        return Ok(CostFit {
            ranks: Vec::new(),
            params: 0,
            gap: 0,
        });
    }
    let y = shift_to_cost(x, costs, budget as f64, r_min as f64, r_max as f64);
    // Cost classes: (cost, member indices), cheapest first (a map: thousands of distinct
    // costs stay linear).
    let mut by_cost: std::collections::BTreeMap<u64, Vec<usize>> = Default::default();
    for (i, &c) in costs.iter().enumerate() {
        by_cost.entry(c).or_default().push(i);
    }
    let classes: Vec<(u64, Vec<usize>)> = by_cost.into_iter().collect();
    let spec: Vec<ClassSpec> = classes
        .iter()
        .map(|(c, m)| ClassSpec {
            cost: *c,
            lo: (m.len() * r_min) as u64,
            hi: (m.len() * r_max) as u64,
            real: m.iter().map(|&i| y[i]).sum(),
            n: m.len(),
        })
        .collect();
    let totals = class_totals(&spec, budget, stop)
        .ok_or_else(|| "stopped: ran past its time budget (searching class totals)".to_string())?;
    let mut ranks = vec![0usize; n];
    for ((_, members), t) in classes.iter().zip(&totals) {
        let ys: Vec<f64> = members.iter().map(|&i| y[i]).collect();
        let r = round_to_budget(&ys, *t as usize, r_min, r_max)?;
        for (&i, v) in members.iter().zip(r) {
            ranks[i] = v;
        }
    }
    let params: u64 = ranks.iter().zip(costs).map(|(r, c)| *r as u64 * c).sum();
    Ok(CostFit {
        ranks,
        params,
        gap: params as i64 - budget as i64,
    })
}

/// One cost class of [`round_to_param_budget`]: its cost per rank, the range of its total rank,
/// its real total, and its size.
struct ClassSpec {
    cost: u64,
    lo: u64,
    hi: u64,
    real: f64,
    n: usize,
}

/// Class totals t_k in [lo_k, hi_k] minimising (|Σ c_k·t_k − budget|, Σ (t_k − real_k)²/n_k).
/// `None` when `stop()` said to give up.
fn class_totals(spec: &[ClassSpec], budget: u64, stop: &dyn Fn() -> bool) -> Option<Vec<u64>> {
    let key = |t: &[u64]| -> (u64, f64) {
        let spent: u64 = t.iter().zip(spec).map(|(t, s)| t * s.cost).sum();
        let dist = t
            .iter()
            .zip(spec)
            .map(|(t, s)| (*t as f64 - s.real).powi(2) / s.n as f64)
            .sum();
        (spent.abs_diff(budget), dist)
    };
    let better = |a: (u64, f64), b: (u64, f64)| a.0 < b.0 || (a.0 == b.0 && a.1 < b.1 - 1e-12);
    let (last, head) = spec.split_last()?;
    // Saturating: thousands of classes overflow any integer, and then only the search applies.
    let cases: u128 = head
        .iter()
        .try_fold(1u128, |a, s| a.checked_mul((s.hi - s.lo + 1) as u128))
        .unwrap_or(u128::MAX);
    let mut best: Option<(Vec<u64>, (u64, f64))> = None;
    let mut polls = 0u32;
    if cases <= 1 << 20 {
        // Exact: every combination of the first classes, the last one's total by rounding.
        let mut t: Vec<u64> = head.iter().map(|s| s.lo).collect();
        loop {
            let spent: u64 = t.iter().zip(head).map(|(t, s)| t * s.cost).sum();
            let want = (budget as f64 - spent as f64) / last.cost as f64;
            for cand in [want.floor(), want.ceil()] {
                let tl = (cand.max(0.0) as u64).clamp(last.lo, last.hi);
                let mut full = t.clone();
                full.push(tl);
                let k = key(&full);
                if best.as_ref().is_none_or(|(_, b)| better(k, *b)) {
                    best = Some((full, k));
                }
            }
            polls = polls.wrapping_add(1);
            if polls.is_multiple_of(4096) && stop() {
                return None;
            }
            // Next combination (odometer over the first classes).
            let mut i = 0;
            loop {
                if i == head.len() {
                    return best.map(|b| b.0);
                }
                if t[i] < head[i].hi {
                    t[i] += 1;
                    break;
                }
                t[i] = head[i].lo;
                i += 1;
            }
        }
    }
    // Local search from the rounded real totals: ±1 on one class, or +1 on one and −1 on
    // another, while |gap| (then the distance) improves.
    let mut t: Vec<u64> = spec
        .iter()
        .map(|s| (s.real.round().max(0.0) as u64).clamp(s.lo, s.hi))
        .collect();
    let mut k_now = key(&t);
    loop {
        let mut step: Option<(Vec<u64>, (u64, f64))> = None;
        for a in 0..spec.len() {
            if stop() {
                return None;
            }
            for da in [1i64, -1] {
                for b in std::iter::once(None).chain((0..spec.len()).map(Some)) {
                    if b == Some(a) {
                        continue;
                    }
                    let mut c = t.clone();
                    let moved = |c: &mut Vec<u64>, i: usize, d: i64| {
                        let v = c[i] as i64 + d;
                        let ok = v >= spec[i].lo as i64 && v <= spec[i].hi as i64;
                        if ok {
                            c[i] = v as u64;
                        }
                        ok
                    };
                    if !moved(&mut c, a, da) || b.is_some_and(|b| !moved(&mut c, b, -da)) {
                        continue;
                    }
                    let k = key(&c);
                    if better(k, k_now) && step.as_ref().is_none_or(|(_, s)| better(k, *s)) {
                        step = Some((c, k));
                    }
                }
            }
        }
        match step {
            Some((c, k)) => {
                t = c;
                k_now = k;
            }
            None => return Some(t),
        }
    }
}

/// `clamp(x_i + δ, lo, hi)` with δ chosen so that Σ c_i·y_i is `target`
/// (lo·Σc ≤ target ≤ hi·Σc).
pub fn shift_to_cost(x: &[f64], costs: &[u64], target: f64, lo: f64, hi: f64) -> Vec<f64> {
    let at = |d: f64| -> Vec<f64> { x.iter().map(|v| (v + d).clamp(lo, hi)).collect() };
    let cost_at = |d: f64| -> f64 { at(d).iter().zip(costs).map(|(v, c)| v * *c as f64).sum() };
    let xmax = x.iter().cloned().fold(f64::MIN, f64::max);
    let xmin = x.iter().cloned().fold(f64::MAX, f64::min);
    let (mut d_lo, mut d_hi) = (lo - xmax - 1.0, hi - xmin + 1.0);
    for _ in 0..200 {
        let mid = 0.5 * (d_lo + d_hi);
        if cost_at(mid) < target {
            d_lo = mid;
        } else {
            d_hi = mid;
        }
    }
    at(0.5 * (d_lo + d_hi))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Calls `f` with every integer vector in [lo, hi]^n (an odometer over the entries).
    fn each_vector(n: usize, lo: usize, hi: usize, mut f: impl FnMut(&[usize])) {
        let mut cur = vec![lo; n];
        loop {
            f(&cur);
            let mut k = 0;
            loop {
                if k == n {
                    return;
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

    /// Every integer vector in [lo, hi]^n with the given sum.
    fn all_vectors(n: usize, lo: usize, hi: usize, sum: usize) -> Vec<Vec<usize>> {
        let mut out = vec![];
        each_vector(n, lo, hi, |v| {
            if v.iter().sum::<usize>() == sum {
                out.push(v.to_vec());
            }
        });
        out
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

    /// The smallest |Σ c_i r_i − budget| over every integer vector in [lo, hi]^n.
    fn best_gap(costs: &[u64], lo: usize, hi: usize, budget: u64) -> u64 {
        let mut best = u64::MAX;
        each_vector(costs.len(), lo, hi, |v| {
            let s: u64 = v.iter().zip(costs).map(|(r, c)| *r as u64 * c).sum();
            best = best.min(s.abs_diff(budget));
        });
        best
    }

    #[test]
    fn param_rounding_reaches_the_closest_cost_brute_force_finds() {
        // Oracle: brute force over every integer vector in the bounds. Costs come in the two
        // classes of a transformer (attention 2c, FFN c + f), scaled small, then in three.
        let mut seed = 11u64;
        let mut next = || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 11) as f64 / (1u64 << 53) as f64
        };
        for case in 0..400 {
            let n = 1 + (next() * 5.0) as usize;
            let (a, b, c) = (
                2 + (next() * 30.0) as u64,
                2 + (next() * 80.0) as u64,
                2 + (next() * 50.0) as u64,
            );
            // Two cost classes (a transformer), and from case 300 on three.
            let classes = if case < 300 { 2.0 } else { 3.0 };
            let costs: Vec<u64> = (0..n)
                .map(|_| [a, b, c][(next() * classes) as usize])
                .collect();
            let (lo, hi) = ((next() * 2.0) as usize, 3 + (next() * 3.0) as usize);
            let total: u64 = costs.iter().sum();
            let budget =
                total * lo as u64 + ((total * (hi - lo) as u64) as f64 * next()).round() as u64;
            let x: Vec<f64> = (0..n).map(|_| next() * 8.0 - 2.0).collect();
            let fit = round_to_param_budget(&x, &costs, budget, lo, hi).unwrap();
            assert!(fit.ranks.iter().all(|&r| r >= lo && r <= hi));
            let spent: u64 = fit
                .ranks
                .iter()
                .zip(&costs)
                .map(|(r, c)| *r as u64 * c)
                .sum();
            assert_eq!(fit.params, spent);
            assert_eq!(fit.gap, spent as i64 - budget as i64);
            let best = best_gap(&costs, lo, hi, budget);
            assert_eq!(
                fit.gap.unsigned_abs(),
                best,
                "x={x:?} costs={costs:?} budget={budget} [{lo}, {hi}] got {:?}",
                fit.ranks
            );
        }
    }

    #[test]
    fn param_rounding_with_equal_costs_is_rank_rounding() {
        // Equal costs: a parameter budget of c·B is the rank budget B, met exactly, and the
        // ranks are those round_to_budget gives.
        let x = [0.3, 2.9, 1.5, 7.2, -1.0];
        let fit = round_to_param_budget(&x, &[10; 5], 200, 1, 8).unwrap();
        assert_eq!(fit.gap, 0);
        assert_eq!(fit.ranks, round_to_budget(&x, 20, 1, 8).unwrap());
    }

    #[test]
    fn param_rounding_spends_the_budget_on_cheap_ranks_only_when_the_rule_says_so() {
        // Two adapters, costs 1 and 4, equal real ranks: the shift gives both y = B/5 = 4, so
        // the fit is (4, 4) at cost 20, exactly the budget.
        let fit = round_to_param_budget(&[1.0, 1.0], &[1, 4], 20, 0, 10).unwrap();
        assert_eq!((fit.ranks.clone(), fit.gap), (vec![4, 4], 0));
        assert!(round_to_param_budget(&[1.0], &[4], 100, 0, 10)
            .unwrap_err()
            .contains("cannot be met"));
        assert!(round_to_param_budget(&[1.0], &[0], 0, 0, 10).is_err());
        assert!(round_to_param_budget(&[1.0, 2.0], &[1], 2, 0, 10).is_err());
    }

    #[test]
    fn param_budget_on_no_adapters_and_many_costs_ends() {
        // No adapters and a zero budget: nothing to round, no panic.
        let fit = round_to_param_budget(&[], &[], 0, 1, 4).unwrap();
        assert_eq!(fit.ranks, Vec::<usize>::new());
        assert!(round_to_param_budget(&[], &[], 5, 1, 4).is_err());
        // Costs whose sum overflows are refused, not wrapped.
        assert!(round_to_param_budget(&[1.0, 1.0], &[u64::MAX, 2], 10, 1, 4).is_err());
        // Thousands of distinct costs: the class count overflows any product, the search is
        // used, and a stop request ends it at once.
        let n = 3000;
        let x: Vec<f64> = (0..n).map(|i| 1.0 + i as f64 / 1000.0).collect();
        let costs: Vec<u64> = (0..n as u64).map(|i| 10 + i).collect();
        let budget = costs.iter().sum::<u64>() * 2;
        let e = round_to_param_budget_until(&x, &costs, budget, 1, 4, &|| true).unwrap_err();
        assert!(e.contains("stopped"), "{e}");
    }
}
