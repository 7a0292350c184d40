//! The per-adapter statistics plugins read, as one table: key, meaning, cost, how computed.
//! Adding a statistic is one entry in [`STATS`]; `plugins/README.md`'s list of keys is checked
//! against this table by a test, and every entry has a unit test with an independent oracle.
//!
//! Costs, so a training step stays cheap: W0 spectra are computed once; gradient statistics
//! accumulate on the device after every backward pass (two sums of squares and an r×r Gram
//! product per adapter, [`AdapterStore::gather_grad_stats`]) and are read back only when a
//! plugin runs, as AdaLoRA's importance averages are ([`AdapterStore::update_importance`],
//! read back at a budget step); statistics marked *lazy* (they download the adapter's factors or an input
//! sample) are computed only when one of the method's plugins names the key in its source.

use super::adalora::TripletImportance;
use super::spectra;
use crate::adapter::{AdapterHost, AdapterInfo, GradStats, HostTensor};
use serde::{Deserialize, Serialize};

/// How many W0 singular values scripts see.
pub const W0_SV_KEEP: usize = 64;

/// What the engine knows about a slot's frozen weight, computed once at the start.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct W0Stats {
    /// Top singular values, largest first (at most [`W0_SV_KEEP`]).
    pub sv: Vec<f64>,
    /// Effective rank of the full spectrum.
    pub erank: f64,
    /// Stable rank of the full spectrum.
    pub stable_rank: f64,
    /// ‖W0‖²_F (Σ of all squared singular values).
    pub energy: f64,
}

impl W0Stats {
    pub fn of(rows: usize, cols: usize, w: &[f32]) -> Self {
        let sv = spectra::singular_values(rows, cols, w);
        Self {
            erank: spectra::effective_rank(&sv),
            stable_rank: spectra::stable_rank(&sv),
            energy: w.iter().map(|x| (*x as f64).powi(2)).sum(),
            sv: sv.into_iter().take(W0_SV_KEEP).collect(),
        }
    }
}

/// What the rank method adds about a slot for its plugins.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SlotExtra {
    /// C_i from the complexity plugin (1.0 when there is none).
    pub complexity: Option<f64>,
    /// AdaLoRA's importance state.
    pub importance: Option<TripletImportance>,
    /// AdaLoRA's score per triplet.
    pub triplet_scores: Vec<f64>,
    /// Gates on the components (empty: none, g = 1).
    pub gates: Vec<f64>,
    /// Mean of ∂L/∂r_i over the steps since the last re-allocation (relaxed ranks only).
    pub rank_grad: f64,
    /// ‖ΔW‖²_F right after the previous re-allocation (0 before the first).
    pub delta_energy_prev: f64,
}

/// Everything a statistic may be computed from.
pub struct StatIn<'a> {
    pub index: usize,
    pub info: &'a AdapterInfo,
    pub w0: &'a W0Stats,
    pub grads: &'a GradStats,
    /// The adapter's factors, when a lazy key that needs them is named by a plugin.
    pub host: Option<&'a AdapterHost>,
    /// A sample of the slot's inputs, when `input_ev` is named by a plugin.
    pub input: Option<&'a HostTensor>,
    pub extra: &'a SlotExtra,
}

/// A statistic's value, as scripts see it.
#[derive(Clone, Debug, PartialEq)]
pub enum StatValue {
    Int(i64),
    Float(f64),
    Str(String),
    Floats(Vec<f64>),
}

/// What a statistic needs beyond the always-present inputs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Needs {
    Nothing,
    /// A download of A, B (and λ): computed only when a plugin names the key.
    Factors,
    /// A download of an input sample and its SVD: computed only when a plugin names the key.
    Input,
}

/// One entry of the table.
pub struct Stat {
    pub key: &'static str,
    pub meaning: &'static str,
    pub cost: &'static str,
    pub how: &'static str,
    pub needs: Needs,
    pub get: fn(&StatIn) -> StatValue,
}

const FREE: &str = "none";
const ONCE: &str = "once per run (SVD of W0)";
const STEP: &str = "every step on the device, read at a re-allocation";
const REALLOC: &str = "per re-allocation, lazy: download of A, B and an r×r SVD";
const METHOD: &str = "kept by the rank method";

fn fl(x: f64) -> StatValue {
    StatValue::Float(x)
}
fn int(x: usize) -> StatValue {
    StatValue::Int(x as i64)
}

/// The singular values of the ΔW the model applies, s·B·diag(λ ⊙ g)·A (λ: AdaLoRA's, g: the
/// rank engine's gates; 1 where absent).
pub fn delta_sv_of(info: &AdapterInfo, h: &AdapterHost) -> Vec<f64> {
    if info.rank == 0 {
        return vec![];
    }
    let mult: Option<Vec<f32>> = match (&h.lambda, &h.gates) {
        (Some(l), Some(g)) => Some(l.iter().zip(g).map(|(a, b)| a * b).collect()),
        (Some(l), None) => Some(l.clone()),
        (None, Some(g)) => Some(g.clone()),
        (None, None) => None,
    };
    spectra::lowrank_singular_values(
        info.rows,
        info.cols,
        info.rank,
        &h.b,
        &h.a,
        mult.as_deref(),
        h.scale,
    )
}

fn delta_sv(s: &StatIn) -> Vec<f64> {
    s.host.map(|h| delta_sv_of(s.info, h)).unwrap_or_default()
}

fn grad_sv(s: &StatIn) -> Vec<f64> {
    let r = s.info.rank;
    if s.grads.steps == 0 || s.grads.gram.len() != r * r || r == 0 {
        return vec![];
    }
    spectra::sv_of_gram(r, &s.grads.gram)
}

fn mean_importance(s: &StatIn, f: fn(&super::adalora::Importance) -> f64) -> f64 {
    s.extra
        .importance
        .as_ref()
        .map_or(0.0, |t| (f(&t.p) + f(&t.q) + f(&t.lambda)) / 3.0)
}

/// Explained-variance ratios (largest first) of the centred sample [n, cols].
pub fn input_explained_variance(x: &HostTensor) -> Vec<f64> {
    let (n, c) = match x.shape.as_slice() {
        [n, c] if *n > 1 && *c > 0 && x.data.len() == n * c => (*n, *c),
        _ => return vec![],
    };
    let mut centred = x.data.clone();
    for j in 0..c {
        let m: f32 = (0..n).map(|i| x.data[i * c + j]).sum::<f32>() / n as f32;
        for i in 0..n {
            centred[i * c + j] -= m;
        }
    }
    let sv = spectra::singular_values(n, c, &centred);
    let total: f64 = sv.iter().map(|s| s * s).sum();
    if total <= 0.0 {
        return vec![];
    }
    sv.iter().map(|s| s * s / total).collect()
}

/// The table. Order is the order of `plugins/README.md`'s list.
pub const STATS: &[Stat] = &[
    Stat {
        key: "name",
        meaning: "slot name, `\"{layer}.{kind}\"`, e.g. `\"3.ffn_in\"`",
        cost: FREE,
        how: "from the model's slot order",
        needs: Needs::Nothing,
        get: |s| StatValue::Str(s.info.name.clone()),
    },
    Stat {
        key: "index",
        meaning: "position in the array (the model's slot order: layer-major, then q k v o ffn_in ffn_out)",
        cost: FREE,
        how: "position",
        needs: Needs::Nothing,
        get: |s| int(s.index),
    },
    Stat {
        key: "layer",
        meaning: "layer index",
        cost: FREE,
        how: "from the slot",
        needs: Needs::Nothing,
        get: |s| int(s.info.layer),
    },
    Stat {
        key: "kind",
        meaning: "module kind, `\"q\"` … `\"ffn_out\"`",
        cost: FREE,
        how: "from the slot",
        needs: Needs::Nothing,
        get: |s| StatValue::Str(s.info.kind.name().to_string()),
    },
    Stat {
        key: "rows",
        meaning: "W is rows × cols (out × in)",
        cost: FREE,
        how: "from the slot",
        needs: Needs::Nothing,
        get: |s| int(s.info.rows),
    },
    Stat {
        key: "cols",
        meaning: "input features of W",
        cost: FREE,
        how: "from the slot",
        needs: Needs::Nothing,
        get: |s| int(s.info.cols),
    },
    Stat {
        key: "rank",
        meaning: "current rank (components held; 0 = adapter removed)",
        cost: FREE,
        how: "from the slot",
        needs: Needs::Nothing,
        get: |s| int(s.info.rank),
    },
    Stat {
        key: "cost",
        meaning: "trainable parameters one rank of this adapter costs (rows + cols)",
        cost: FREE,
        how: "rows + cols",
        needs: Needs::Nothing,
        get: |s| int(s.info.rows + s.info.cols),
    },
    Stat {
        key: "sv",
        meaning: "top 64 singular values of the frozen W0, largest first",
        cost: ONCE,
        how: "SVD of W0 (nalgebra, f64)",
        needs: Needs::Nothing,
        get: |s| StatValue::Floats(s.w0.sv.clone()),
    },
    Stat {
        key: "w0_energy",
        meaning: "‖W0‖²_F, the sum of all squared singular values (`w0_energy / min(rows, cols)` is W0's mean squared singular value)",
        cost: ONCE,
        how: "Σ w² over W0's entries",
        needs: Needs::Nothing,
        get: |s| fl(s.w0.energy),
    },
    Stat {
        key: "w0_erank",
        meaning: "effective rank exp(H(σ/Σσ)) of W0's full spectrum",
        cost: ONCE,
        how: "from the SVD of W0",
        needs: Needs::Nothing,
        get: |s| fl(s.w0.erank),
    },
    Stat {
        key: "w0_stable_rank",
        meaning: "stable rank ‖W0‖²_F / ‖W0‖²₂",
        cost: ONCE,
        how: "from the SVD of W0",
        needs: Needs::Nothing,
        get: |s| fl(s.w0.stable_rank),
    },
    Stat {
        key: "delta_sv",
        meaning: "singular values of the ΔW the model applies, s·B·diag(λ ⊙ g)·A (λ AdaLoRA's, g the gates), largest first",
        cost: REALLOC,
        how: "QR of B and Aᵀ, SVD of the r×r core",
        needs: Needs::Factors,
        get: |s| StatValue::Floats(delta_sv(s)),
    },
    Stat {
        key: "delta_energy",
        meaning: "‖ΔW‖²_F (Σ delta_sv²)",
        cost: REALLOC,
        how: "from delta_sv",
        needs: Needs::Factors,
        get: |s| fl(delta_sv(s).iter().map(|x| x * x).sum()),
    },
    Stat {
        key: "delta_energy_prev",
        meaning: "‖ΔW‖²_F right after the previous re-allocation (0 before the first): with `delta_energy`, whether training grew or shrank the update since",
        cost: REALLOC,
        how: "delta_energy, kept by the rank method at the end of each re-allocation",
        needs: Needs::Factors,
        get: |s| fl(s.extra.delta_energy_prev),
    },
    Stat {
        key: "delta_erank",
        meaning: "effective rank of ΔW",
        cost: REALLOC,
        how: "from delta_sv",
        needs: Needs::Factors,
        get: |s| fl(spectra::effective_rank(&delta_sv(s))),
    },
    Stat {
        key: "grad_norm",
        meaning: "√(‖∇A‖² + ‖∇B‖²) of the last gathered backward pass",
        cost: STEP,
        how: "`sumsq` of the gradients on the device",
        needs: Needs::Nothing,
        get: |s| fl((s.grads.last_a2 + s.grads.last_b2).sqrt()),
    },
    Stat {
        key: "grad_a_norm",
        meaning: "‖∇A‖ of the last gathered backward pass",
        cost: STEP,
        how: "`sumsq` on the device",
        needs: Needs::Nothing,
        get: |s| fl(s.grads.last_a2.sqrt()),
    },
    Stat {
        key: "grad_b_norm",
        meaning: "‖∇B‖ of the last gathered backward pass",
        cost: STEP,
        how: "`sumsq` on the device",
        needs: Needs::Nothing,
        get: |s| fl(s.grads.last_b2.sqrt()),
    },
    Stat {
        key: "grad_energy",
        meaning: "mean over steps since the last resize of (‖∇A‖² + ‖∇B‖²) / rank",
        cost: STEP,
        how: "`sumsq` accumulated with `axpy` on the device",
        needs: Needs::Nothing,
        get: |s| {
            fl(if s.grads.steps > 0 {
                s.grads.energy_sum / s.grads.steps as f64
            } else {
                0.0
            })
        },
    },
    Stat {
        key: "grad_sv",
        meaning: "√eigenvalues of Σ ∇Bᵀ∇B since the last resize, largest first: the task gradient's spectrum seen through A (∇B = s·∂L/∂W·Aᵀ)",
        cost: STEP,
        how: "Gram product accumulated by a TN GEMM with β = 1 on the device; symmetric eigendecomposition of the r×r sum",
        needs: Needs::Nothing,
        get: |s| StatValue::Floats(grad_sv(s)),
    },
    Stat {
        key: "grad_erank",
        meaning: "effective rank of grad_sv",
        cost: STEP,
        how: "from grad_sv",
        needs: Needs::Nothing,
        get: |s| fl(spectra::effective_rank(&grad_sv(s))),
    },
    Stat {
        key: "sensitivity",
        meaning: "AdaLoRA: smoothed sensitivity Ī averaged over P, λ and Q's entries (0 for other methods)",
        cost: METHOD,
        how: "Ī ← β1·Ī + (1−β1)·|w·∂L/∂w| per entry, every step where the adapter lives (Backend::importance_ema), read back at a budget step",
        needs: Needs::Nothing,
        get: |s| fl(mean_importance(s, |x| x.mean_sensitivity())),
    },
    Stat {
        key: "uncertainty",
        meaning: "AdaLoRA: smoothed uncertainty Ū averaged like `sensitivity`",
        cost: METHOD,
        how: "Ū ← β2·Ū + (1−β2)·|I − Ī| per entry, with Ī",
        needs: Needs::Nothing,
        get: |s| fl(mean_importance(s, |x| x.mean_uncertainty())),
    },
    Stat {
        key: "triplet_scores",
        meaning: "AdaLoRA: score of each (P column, λ, Q row) triplet (empty for other methods)",
        cost: METHOD,
        how: "s(λ_j) + mean s over Q row j + mean s over P column j, s = Ī·Ū",
        needs: Needs::Nothing,
        get: |s| StatValue::Floats(s.extra.triplet_scores.clone()),
    },
    Stat {
        key: "gates",
        meaning: "gates g_j on the components while ranks are relaxed or gated (SoRA); empty otherwise",
        cost: METHOD,
        how: "set by the rank method",
        needs: Needs::Nothing,
        get: |s| StatValue::Floats(s.extra.gates.clone()),
    },
    Stat {
        key: "rank_grad",
        meaning: "mean over the steps since the last re-allocation of ∂L/∂r_i through the soft rank gates (0 when ranks are not relaxed)",
        cost: METHOD,
        how: "Σ_j ∂L/∂g_ij · g_ij(1 − g_ij)/τ, ∂L/∂g from the backward pass",
        needs: Needs::Nothing,
        get: |s| fl(s.extra.rank_grad),
    },
    Stat {
        key: "input_ev",
        meaning: "explained-variance ratios of the last input sample, largest first (empty when the model kept none); build the key literally, not from pieces",
        cost: "per re-allocation, lazy: download of an input sample and its SVD",
        how: "SVD of the centred [n, cols] sample",
        needs: Needs::Input,
        get: |s| StatValue::Floats(s.input.map(input_explained_variance).unwrap_or_default()),
    },
    Stat {
        key: "complexity",
        meaning: "C_i from the complexity plugin (1.0 when there is none, or before it ran)",
        cost: METHOD,
        how: "the complexity plugin's return value",
        needs: Needs::Nothing,
        get: |s| fl(s.extra.complexity.unwrap_or(1.0)),
    },
];

/// The table's entry for `key`.
pub fn stat(key: &str) -> Option<&'static Stat> {
    STATS.iter().find(|s| s.key == key)
}

#[cfg(test)]
mod tests {
    //! One test per statistic, each against an oracle computed another way (dense matrices and
    //! nalgebra's symmetric eigendecomposition instead of the QR/SVD paths the table uses,
    //! sums written out by hand).
    use super::*;
    use crate::adapter::ModuleKind;
    use nalgebra::DMatrix;

    struct Fx {
        info: AdapterInfo,
        w0: Vec<f32>,
        host: AdapterHost,
        /// ∇A, ∇B of three backward passes.
        steps: Vec<(Vec<f32>, Vec<f32>)>,
        input: HostTensor,
    }

    fn lcg(seed: u64, n: usize) -> Vec<f32> {
        let mut x = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
        (0..n)
            .map(|_| {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((x >> 33) as f32 / (1u64 << 31) as f32) - 1.0
            })
            .collect()
    }

    fn fx() -> Fx {
        let (rows, cols, r) = (5, 4, 3);
        let info = AdapterInfo {
            name: "2.v".into(),
            layer: 2,
            kind: ModuleKind::V,
            rows,
            cols,
            rank: r,
        };
        let steps = (0..3)
            .map(|k| (lcg(10 + k, r * cols), lcg(20 + k, rows * r)))
            .collect();
        Fx {
            w0: lcg(1, rows * cols),
            host: AdapterHost {
                a: lcg(2, r * cols),
                b: lcg(3, rows * r),
                scale: 0.5,
                ..Default::default()
            },
            steps,
            input: HostTensor::new(vec![6, cols], lcg(4, 6 * cols)),
            info,
        }
    }

    /// The accumulators as the store keeps them, built here by hand.
    fn grads(f: &Fx) -> GradStats {
        let r = f.info.rank;
        let mut g = GradStats {
            gram: vec![0.0; r * r],
            ..Default::default()
        };
        for (ga, gb) in &f.steps {
            let a2: f64 = ga.iter().map(|x| (*x as f64).powi(2)).sum();
            let b2: f64 = gb.iter().map(|x| (*x as f64).powi(2)).sum();
            g.last_a2 = a2;
            g.last_b2 = b2;
            g.energy_sum += (a2 + b2) / r as f64;
            g.steps += 1;
            for i in 0..r {
                for j in 0..r {
                    g.gram[i * r + j] += (0..f.info.rows)
                        .map(|k| gb[k * r + i] as f64 * gb[k * r + j] as f64)
                        .sum::<f64>();
                }
            }
        }
        g
    }

    fn eval(key: &str, f: &Fx, extra: &SlotExtra) -> StatValue {
        let w0 = W0Stats::of(f.info.rows, f.info.cols, &f.w0);
        let g = grads(f);
        let s = StatIn {
            index: 7,
            info: &f.info,
            w0: &w0,
            grads: &g,
            host: Some(&f.host),
            input: Some(&f.input),
            extra,
        };
        (stat(key).expect("key in the table").get)(&s)
    }

    fn float(v: StatValue) -> f64 {
        match v {
            StatValue::Float(x) => x,
            other => panic!("expected a float, got {other:?}"),
        }
    }
    fn floats(v: StatValue) -> Vec<f64> {
        match v {
            StatValue::Floats(x) => x,
            other => panic!("expected floats, got {other:?}"),
        }
    }
    fn close(a: &[f64], b: &[f64], tol: f64) {
        assert_eq!(a.len(), b.len(), "{a:?} vs {b:?}");
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() <= tol * (1.0 + y.abs()), "{a:?} vs {b:?}");
        }
    }

    /// Singular values of a dense matrix as √eigenvalues of MᵀM, largest first.
    fn sv_by_eigen(rows: usize, cols: usize, m: &[f64]) -> Vec<f64> {
        let mm = DMatrix::from_row_slice(rows, cols, m);
        let e = (mm.transpose() * &mm).symmetric_eigen();
        let mut v: Vec<f64> = e.eigenvalues.iter().map(|x| x.max(0.0).sqrt()).collect();
        v.sort_by(|a, b| b.total_cmp(a));
        v.truncate(rows.min(cols));
        v
    }

    fn w0_sv_oracle(f: &Fx) -> Vec<f64> {
        let m: Vec<f64> = f.w0.iter().map(|x| *x as f64).collect();
        sv_by_eigen(f.info.rows, f.info.cols, &m)
    }

    fn delta_oracle(f: &Fx) -> Vec<f64> {
        let (rows, cols, r) = (f.info.rows, f.info.cols, f.info.rank);
        let mut d = vec![0.0f64; rows * cols];
        for i in 0..rows {
            for j in 0..cols {
                for k in 0..r {
                    d[i * cols + j] += f.host.scale as f64
                        * f.host.b[i * r + k] as f64
                        * f.host.a[k * cols + j] as f64;
                }
            }
        }
        sv_by_eigen(rows, cols, &d)
    }

    fn erank_by_hand(sv: &[f64]) -> f64 {
        let t: f64 = sv.iter().sum();
        (-sv.iter()
            .filter(|s| **s > 0.0)
            .map(|s| (s / t) * (s / t).ln())
            .sum::<f64>())
        .exp()
    }

    #[test]
    fn stat_name() {
        assert_eq!(
            eval("name", &fx(), &SlotExtra::default()),
            StatValue::Str("2.v".into())
        );
    }
    #[test]
    fn stat_index() {
        assert_eq!(
            eval("index", &fx(), &SlotExtra::default()),
            StatValue::Int(7)
        );
    }
    #[test]
    fn stat_layer() {
        assert_eq!(
            eval("layer", &fx(), &SlotExtra::default()),
            StatValue::Int(2)
        );
    }
    #[test]
    fn stat_kind() {
        assert_eq!(
            eval("kind", &fx(), &SlotExtra::default()),
            StatValue::Str("v".into())
        );
    }
    #[test]
    fn stat_rows() {
        assert_eq!(
            eval("rows", &fx(), &SlotExtra::default()),
            StatValue::Int(5)
        );
    }
    #[test]
    fn stat_cols() {
        assert_eq!(
            eval("cols", &fx(), &SlotExtra::default()),
            StatValue::Int(4)
        );
    }
    #[test]
    fn stat_rank() {
        assert_eq!(
            eval("rank", &fx(), &SlotExtra::default()),
            StatValue::Int(3)
        );
    }
    #[test]
    fn stat_cost() {
        // A (3 × 4) and B (5 × 3) grow by 4 + 5 parameters per rank.
        let f = fx();
        assert_eq!(
            eval("cost", &f, &SlotExtra::default()),
            StatValue::Int((f.info.params_at(4) - f.info.params_at(3)) as i64)
        );
    }
    #[test]
    fn stat_sv() {
        let f = fx();
        close(
            &floats(eval("sv", &f, &SlotExtra::default())),
            &w0_sv_oracle(&f),
            1e-9,
        );
    }
    #[test]
    fn stat_w0_energy() {
        let f = fx();
        let want: f64 = w0_sv_oracle(&f).iter().map(|s| s * s).sum();
        close(
            &[float(eval("w0_energy", &f, &SlotExtra::default()))],
            &[want],
            1e-9,
        );
    }
    #[test]
    fn stat_w0_erank() {
        let f = fx();
        close(
            &[float(eval("w0_erank", &f, &SlotExtra::default()))],
            &[erank_by_hand(&w0_sv_oracle(&f))],
            1e-9,
        );
    }
    #[test]
    fn stat_w0_stable_rank() {
        let f = fx();
        let sv = w0_sv_oracle(&f);
        let want = sv.iter().map(|s| s * s).sum::<f64>() / (sv[0] * sv[0]);
        close(
            &[float(eval("w0_stable_rank", &f, &SlotExtra::default()))],
            &[want],
            1e-9,
        );
    }
    #[test]
    fn stat_delta_sv() {
        let f = fx();
        close(
            &floats(eval("delta_sv", &f, &SlotExtra::default())),
            &delta_oracle(&f)[..3],
            1e-6,
        );
    }
    #[test]
    fn stat_delta_energy() {
        let f = fx();
        let want: f64 = delta_oracle(&f).iter().map(|s| s * s).sum();
        close(
            &[float(eval("delta_energy", &f, &SlotExtra::default()))],
            &[want],
            1e-6,
        );
    }
    #[test]
    fn stat_delta_energy_prev() {
        let e = SlotExtra {
            delta_energy_prev: 2.5,
            ..Default::default()
        };
        assert_eq!(eval("delta_energy_prev", &fx(), &e), StatValue::Float(2.5));
    }
    #[test]
    fn stat_delta_sv_includes_the_gates() {
        // Gates scale B's columns: oracle from the dense ΔW with B·diag(g).
        let mut f = fx();
        let g = [1.0f32, 0.5, 0.0];
        let mut gated = f.host.clone();
        for row in gated.b.chunks_mut(3) {
            for (v, gj) in row.iter_mut().zip(&g) {
                *v *= gj;
            }
        }
        let plain = Fx {
            host: gated,
            ..fx()
        };
        let want = delta_oracle(&plain);
        f.host.gates = Some(g.to_vec());
        close(
            &floats(eval("delta_sv", &f, &SlotExtra::default()))[..2],
            &want[..2],
            1e-6,
        );
    }
    #[test]
    fn stat_delta_erank() {
        let f = fx();
        close(
            &[float(eval("delta_erank", &f, &SlotExtra::default()))],
            &[erank_by_hand(&delta_oracle(&f)[..3])],
            1e-6,
        );
    }
    fn last_step_sums(f: &Fx) -> (f64, f64) {
        let (ga, gb) = f.steps.last().unwrap();
        (
            ga.iter().map(|x| (*x as f64).powi(2)).sum(),
            gb.iter().map(|x| (*x as f64).powi(2)).sum(),
        )
    }
    #[test]
    fn stat_grad_norm() {
        let f = fx();
        let (a2, b2) = last_step_sums(&f);
        close(
            &[float(eval("grad_norm", &f, &SlotExtra::default()))],
            &[(a2 + b2).sqrt()],
            1e-12,
        );
    }
    #[test]
    fn stat_grad_a_norm() {
        let f = fx();
        close(
            &[float(eval("grad_a_norm", &f, &SlotExtra::default()))],
            &[last_step_sums(&f).0.sqrt()],
            1e-12,
        );
    }
    #[test]
    fn stat_grad_b_norm() {
        let f = fx();
        close(
            &[float(eval("grad_b_norm", &f, &SlotExtra::default()))],
            &[last_step_sums(&f).1.sqrt()],
            1e-12,
        );
    }
    #[test]
    fn stat_grad_energy() {
        let f = fx();
        let want = f
            .steps
            .iter()
            .map(|(a, b)| a.iter().chain(b).map(|x| (*x as f64).powi(2)).sum::<f64>() / 3.0)
            .sum::<f64>()
            / 3.0;
        close(
            &[float(eval("grad_energy", &f, &SlotExtra::default()))],
            &[want],
            1e-12,
        );
    }
    /// Σ ∇Bᵀ∇B = MᵀM for M the ∇B of every step stacked: grad_sv are M's singular values.
    fn grad_sv_oracle(f: &Fx) -> Vec<f64> {
        let r = f.info.rank;
        let stacked: Vec<f64> = f
            .steps
            .iter()
            .flat_map(|(_, gb)| gb.iter().map(|x| *x as f64))
            .collect();
        sv_by_eigen(stacked.len() / r, r, &stacked)
    }
    #[test]
    fn stat_grad_sv() {
        let f = fx();
        close(
            &floats(eval("grad_sv", &f, &SlotExtra::default())),
            &grad_sv_oracle(&f),
            1e-9,
        );
    }
    #[test]
    fn stat_grad_erank() {
        let f = fx();
        close(
            &[float(eval("grad_erank", &f, &SlotExtra::default()))],
            &[erank_by_hand(&grad_sv_oracle(&f))],
            1e-9,
        );
    }
    fn importance() -> TripletImportance {
        use super::super::adalora::Importance;
        let mk = |v: &[f32], u: &[f32]| Importance {
            ema_ipt: v.to_vec(),
            ema_unc: u.to_vec(),
        };
        TripletImportance {
            p: mk(&[1.0, 2.0], &[0.5, 0.5]),
            lambda: mk(&[4.0], &[2.0]),
            q: mk(&[0.0, 6.0, 3.0], &[1.0, 1.0, 1.0]),
        }
    }
    #[test]
    fn stat_sensitivity() {
        // Means of Ī: P 1.5, λ 4, Q 3 → (1.5 + 4 + 3) / 3.
        let e = SlotExtra {
            importance: Some(importance()),
            ..Default::default()
        };
        close(
            &[float(eval("sensitivity", &fx(), &e))],
            &[8.5 / 3.0],
            1e-12,
        );
    }
    #[test]
    fn stat_uncertainty() {
        // Means of Ū: P 0.5, λ 2, Q 1 → 3.5 / 3.
        let e = SlotExtra {
            importance: Some(importance()),
            ..Default::default()
        };
        close(
            &[float(eval("uncertainty", &fx(), &e))],
            &[3.5 / 3.0],
            1e-12,
        );
    }
    #[test]
    fn stat_triplet_scores() {
        let e = SlotExtra {
            triplet_scores: vec![3.0, 1.0],
            ..Default::default()
        };
        assert_eq!(
            eval("triplet_scores", &fx(), &e),
            StatValue::Floats(vec![3.0, 1.0])
        );
    }
    #[test]
    fn stat_gates() {
        let e = SlotExtra {
            gates: vec![1.0, 0.25],
            ..Default::default()
        };
        assert_eq!(eval("gates", &fx(), &e), StatValue::Floats(vec![1.0, 0.25]));
    }
    #[test]
    fn stat_rank_grad() {
        let e = SlotExtra {
            rank_grad: -0.125,
            ..Default::default()
        };
        assert_eq!(eval("rank_grad", &fx(), &e), StatValue::Float(-0.125));
    }
    #[test]
    fn stat_input_ev() {
        // Oracle: eigenvalues of the sample covariance, normalised to sum 1.
        let f = fx();
        let (n, c) = (6, 4);
        let x: Vec<f64> = f.input.data.iter().map(|v| *v as f64).collect();
        let mut centred = x.clone();
        for j in 0..c {
            let m = (0..n).map(|i| x[i * c + j]).sum::<f64>() / n as f64;
            for i in 0..n {
                centred[i * c + j] -= m;
            }
        }
        let mm = DMatrix::from_row_slice(n, c, &centred);
        let mut ev: Vec<f64> = (mm.transpose() * &mm)
            .symmetric_eigen()
            .eigenvalues
            .iter()
            .map(|v| v.max(0.0))
            .collect();
        ev.sort_by(|a, b| b.total_cmp(a));
        let t: f64 = ev.iter().sum();
        let want: Vec<f64> = ev.iter().map(|v| v / t).collect();
        close(
            &floats(eval("input_ev", &f, &SlotExtra::default())),
            &want,
            1e-5,
        );
    }
    #[test]
    fn stat_complexity() {
        assert_eq!(
            eval("complexity", &fx(), &SlotExtra::default()),
            StatValue::Float(1.0)
        );
        let e = SlotExtra {
            complexity: Some(2.5),
            ..Default::default()
        };
        assert_eq!(eval("complexity", &fx(), &e), StatValue::Float(2.5));
    }

    #[test]
    fn every_statistic_has_its_own_test_above() {
        let src = include_str!("stats.rs");
        for s in STATS {
            assert!(
                src.contains(&format!("fn stat_{}()", s.key)),
                "statistic `{}` has no `fn stat_{}` test",
                s.key,
                s.key
            );
        }
    }

    #[test]
    fn plugins_readme_lists_exactly_the_table() {
        let readme = include_str!("../../plugins/README.md");
        let section = readme
            .split("## What scripts receive")
            .nth(1)
            .expect("plugins/README.md has a `## What scripts receive` section");
        let section = section.split("\n## ").next().unwrap_or(section);
        let mut listed: Vec<String> = Vec::new();
        for line in section.lines() {
            let Some(first) = line.strip_prefix('|').and_then(|l| l.split('|').next()) else {
                continue;
            };
            let first = first.trim();
            if first.is_empty() || first == "key" || first.starts_with("---") {
                continue;
            }
            listed.extend(
                first
                    .split(',')
                    .map(|k| k.trim().trim_matches('`').to_string()),
            );
        }
        let table: Vec<String> = STATS.iter().map(|s| s.key.to_string()).collect();
        let missing: Vec<&String> = table.iter().filter(|k| !listed.contains(k)).collect();
        let extra: Vec<&String> = listed.iter().filter(|k| !table.contains(k)).collect();
        assert!(
            missing.is_empty() && extra.is_empty(),
            "plugins/README.md's adapter keys differ from engine::stats::STATS: missing {missing:?}, \
             not in the table {extra:?}"
        );
    }
}
