//! AdaLoRA as Hugging Face PEFT does it: importance I = |w·∂L/∂w| smoothed (sensitivity Ī) and
//! its deviation smoothed (uncertainty Ū), triplet scores, the cubic budget schedule, and the
//! orthogonality penalty on P and Q.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// AdaLoRA settings (PEFT names: init_r, target_r, tinit, tfinal, deltaT, beta1, beta2,
/// orth_reg_weight, total_step).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AdaLoraConfig {
    pub init_rank: usize,
    pub target_rank: usize,
    pub tinit: usize,
    pub tfinal: usize,
    pub delta_t: usize,
    pub beta1: f64,
    pub beta2: f64,
    pub orth_reg: f64,
    /// Total optimizer steps of the run (not micro-batches).
    pub total_steps: usize,
    /// Resize adapters to their kept triplets when the final budget is fixed, instead of only
    /// masking (PEFT never shrinks tensors).
    #[serde(default)]
    pub resize: bool,
    /// Allocator script; default: the shipped `adalora.rhai`.
    #[serde(default)]
    pub allocator: Option<PathBuf>,
}

impl Default for AdaLoraConfig {
    fn default() -> Self {
        Self {
            init_rank: 12,
            target_rank: 8,
            tinit: 0,
            tfinal: 0,
            delta_t: 1,
            beta1: 0.85,
            beta2: 0.85,
            orth_reg: 0.5,
            total_steps: 0,
            resize: false,
            allocator: None,
        }
    }
}

/// PEFT's `budget_schedule`: (budget, whether to mask at this step).
pub fn budget_schedule(
    c: &AdaLoraConfig,
    init_total: usize,
    target_total: usize,
    step: usize,
) -> (usize, bool) {
    if step <= c.tinit {
        (init_total, false)
    } else if step + c.tfinal > c.total_steps {
        (target_total, true)
    } else {
        let span = (c.total_steps - c.tfinal - c.tinit) as f64;
        let mul = 1.0 - (step - c.tinit) as f64 / span;
        let b = (init_total as f64 - target_total as f64) * mul.powi(3) + target_total as f64;
        (b as usize, c.delta_t > 0 && step.is_multiple_of(c.delta_t))
    }
}

/// Smoothed sensitivity and uncertainty of one tensor's entries.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Importance {
    pub ema_ipt: Vec<f32>,
    pub ema_unc: Vec<f32>,
}

impl Importance {
    /// Ī ← β1·Ī + (1−β1)·I; Ū ← β2·Ū + (1−β2)·|I − Ī| (Ī already updated, as PEFT does).
    pub fn update(&mut self, w: &[f32], g: &[f32], beta1: f64, beta2: f64) {
        if self.ema_ipt.len() != w.len() {
            self.ema_ipt = vec![0.0; w.len()];
            self.ema_unc = vec![0.0; w.len()];
        }
        if g.len() != w.len() {
            return;
        }
        let (b1, b2) = (beta1 as f32, beta2 as f32);
        for k in 0..w.len() {
            let ipt = (w[k] * g[k]).abs();
            let e = b1 * self.ema_ipt[k] + (1.0 - b1) * ipt;
            self.ema_ipt[k] = e;
            self.ema_unc[k] = b2 * self.ema_unc[k] + (1.0 - b2) * (ipt - e).abs();
        }
    }
    pub fn score(&self, k: usize) -> f64 {
        self.ema_ipt[k] as f64 * self.ema_unc[k] as f64
    }
    pub fn mean_sensitivity(&self) -> f64 {
        mean(&self.ema_ipt)
    }
    pub fn mean_uncertainty(&self) -> f64 {
        mean(&self.ema_unc)
    }
}

fn mean(v: &[f32]) -> f64 {
    if v.is_empty() {
        0.0
    } else {
        v.iter().map(|x| *x as f64).sum::<f64>() / v.len() as f64
    }
}

/// Importance state of one adapter in SVD form: P = B [rows, r], λ [r], Q = A [r, cols].
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct TripletImportance {
    pub p: Importance,
    pub lambda: Importance,
    pub q: Importance,
}

impl TripletImportance {
    /// Score of triplet j: s(λ_j) + mean of s over row j of Q + mean of s over column j of P.
    pub fn triplet_scores(&self, rows: usize, cols: usize, r: usize) -> Vec<f64> {
        if self.lambda.ema_ipt.len() != r
            || self.q.ema_ipt.len() != r * cols
            || self.p.ema_ipt.len() != rows * r
        {
            return vec![0.0; r];
        }
        (0..r)
            .map(|j| {
                let sq: f64 =
                    (0..cols).map(|k| self.q.score(j * cols + k)).sum::<f64>() / cols as f64;
                let sp: f64 = (0..rows).map(|k| self.p.score(k * r + j)).sum::<f64>() / rows as f64;
                self.lambda.score(j) + sq + sp
            })
            .collect()
    }
}

/// ‖PᵀP − I‖_F and its gradient with respect to P [rows, r] (row-major): 2·P·N/‖N‖.
pub fn orth_penalty_p(rows: usize, r: usize, p: &[f32]) -> (f64, Vec<f32>) {
    let mut n = vec![0.0f64; r * r];
    for row in p.chunks_exact(r).take(rows) {
        for i in 0..r {
            for j in 0..r {
                n[i * r + j] += row[i] as f64 * row[j] as f64;
            }
        }
    }
    for i in 0..r {
        n[i * r + i] -= 1.0;
    }
    let norm = n.iter().map(|x| x * x).sum::<f64>().sqrt();
    let mut g = vec![0.0f32; rows * r];
    if norm > 0.0 {
        for k in 0..rows {
            for j in 0..r {
                let v: f64 = (0..r).map(|i| p[k * r + i] as f64 * n[i * r + j]).sum();
                g[k * r + j] = (2.0 * v / norm) as f32;
            }
        }
    }
    (norm, g)
}

/// ‖QQᵀ − I‖_F and its gradient with respect to Q [r, cols] (row-major): 2·M·Q/‖M‖.
pub fn orth_penalty_q(r: usize, cols: usize, q: &[f32]) -> (f64, Vec<f32>) {
    let mut m = vec![0.0f64; r * r];
    for i in 0..r {
        for j in 0..r {
            m[i * r + j] = (0..cols)
                .map(|k| q[i * cols + k] as f64 * q[j * cols + k] as f64)
                .sum();
        }
        m[i * r + i] -= 1.0;
    }
    let norm = m.iter().map(|x| x * x).sum::<f64>().sqrt();
    let mut g = vec![0.0f32; r * cols];
    if norm > 0.0 {
        for i in 0..r {
            for k in 0..cols {
                let v: f64 = (0..r).map(|j| m[i * r + j] * q[j * cols + k] as f64).sum();
                g[i * cols + k] = (2.0 * v / norm) as f32;
            }
        }
    }
    (norm, g)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_schedule_follows_peft_formula() {
        let c = AdaLoraConfig {
            tinit: 10,
            tfinal: 20,
            delta_t: 5,
            total_steps: 110,
            ..Default::default()
        };
        // Hand-evaluated: span = 110 - 20 - 10 = 80; at step 50, mul = 1 - 40/80 = 0.5,
        // b = (120 - 80)·0.125 + 80 = 85.
        assert_eq!(budget_schedule(&c, 120, 80, 0), (120, false));
        assert_eq!(budget_schedule(&c, 120, 80, 10), (120, false));
        assert_eq!(budget_schedule(&c, 120, 80, 50), (85, true));
        assert!(!budget_schedule(&c, 120, 80, 51).1);
        // step 11: mul = 79/80, b = 40·(79/80)^3 + 80 = 118.52... → 118 (PEFT truncates).
        assert_eq!(budget_schedule(&c, 120, 80, 11).0, 118);
        assert_eq!(budget_schedule(&c, 120, 80, 90).0, 80);
        assert_eq!(budget_schedule(&c, 120, 80, 91), (80, true));
    }

    #[test]
    fn importance_ema_matches_recurrence_by_hand() {
        let mut imp = Importance::default();
        imp.update(&[2.0], &[-0.5], 0.85, 0.85); // I = 1
        assert!((imp.ema_ipt[0] - 0.15).abs() < 1e-6);
        assert!((imp.ema_unc[0] - 0.15 * 0.85).abs() < 1e-6);
        imp.update(&[2.0], &[0.0], 0.85, 0.85); // I = 0
        let e = 0.85 * 0.15;
        assert!((imp.ema_ipt[0] - e).abs() < 1e-6);
        assert!((imp.ema_unc[0] - (0.85 * 0.1275 + 0.15 * e)).abs() < 1e-6);
    }

    fn fd_check(f: impl Fn(&[f32]) -> (f64, Vec<f32>), x: &[f32]) {
        let (_, g) = f(x);
        for k in 0..x.len() {
            let h = 1e-3f32;
            let mut xp = x.to_vec();
            xp[k] += h;
            let mut xm = x.to_vec();
            xm[k] -= h;
            let fd = (f(&xp).0 - f(&xm).0) / (2.0 * h as f64);
            assert!(
                (fd - g[k] as f64).abs() < 2e-3 * (1.0 + fd.abs()),
                "k={k} fd={fd} g={}",
                g[k]
            );
        }
    }

    #[test]
    fn orthogonality_gradients_match_finite_differences() {
        let p: Vec<f32> = (0..15).map(|i| ((i * 7 % 11) as f32 - 5.0) / 6.0).collect();
        fd_check(|x| orth_penalty_p(5, 3, x), &p);
        let q: Vec<f32> = (0..12).map(|i| ((i * 5 % 13) as f32 - 6.0) / 5.0).collect();
        fd_check(|x| orth_penalty_q(3, 4, x), &q);
        // Orthonormal rows: zero penalty.
        let (n, _) = orth_penalty_q(2, 3, &[1.0, 0.0, 0.0, 0.0, 1.0, 0.0]);
        assert!(n.abs() < 1e-12);
    }

    #[test]
    fn triplet_score_is_lambda_plus_row_and_column_means() {
        let (rows, cols, r) = (2, 3, 2);
        let mk = |n: usize, base: f32| Importance {
            ema_ipt: (0..n).map(|k| base + k as f32).collect(),
            ema_unc: vec![2.0; n],
        };
        let t = TripletImportance {
            p: mk(rows * r, 1.0),
            lambda: mk(r, 10.0),
            q: mk(r * cols, 0.0),
        };
        let s = t.triplet_scores(rows, cols, r);
        // j = 0: λ 10·2 = 20; Q row 0 = (0,1,2)·2 → mean 2; P column 0 = (1, 3)·2 → mean 4.
        assert!((s[0] - 26.0).abs() < 1e-9);
        // j = 1: λ 11·2 = 22; Q row 1 = (3,4,5)·2 → 8; P column 1 = (2, 4)·2 → 6.
        assert!((s[1] - 36.0).abs() < 1e-9);
    }
}
