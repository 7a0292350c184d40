//! Probes of what could tell a module's needed rank on the transformer planted task
//! (`PlantedTask::small`, the task of tests/engine_model_planted.rs), measured after phase 1:
//! every adapter at rank 8, the test's optimizer settings and 400-step schedule, stopped after
//! step `at` (default 200, the first re-allocation). For each slot it prints
//! - E: ‖ΔW‖²_F in units of W0's mean squared singular value (the main term of
//!   `spectral_gradient.rhai`), and how much of the planted change ΔW* it holds,
//!   ⟨ΔW, ΔW*⟩ / ‖ΔW*‖²;
//! - validation loss when the adapter keeps only its k largest SVD components (k = 0..7 of 8),
//!   relative to the untouched model, on 4 batches of the training stream the run never sees
//!   (not the test set): what a validation-driven allocator would score;
//! - the exact task gradient Ḡ = ∂L/∂W of the frozen weight (mean over 8 such batches), formed
//!   column block by column block through 8 extra adapter components with B = 0 and A = unit
//!   rows (∇B = s·Ḡ·Aᵀ): its energy, effective rank and top singular value's share — the most a
//!   sketch G·Ω of it could show.
//!
//! Then Spearman correlations with the planted ranks: E, the loss of removing each adapter,
//! the allocation that spends the budget (48, ranks 1..8) greedily on the largest loss gain per
//! component, ‖Ḡ‖², erank(Ḡ) and E·erank(Ḡ). The figures are in plugins/README.md
//! ("Measured").
//!
//!     cargo run --example planted_probes -- [at=200] [seeds=1,2,3,4,5,6]

use adarank::adapter::{AdapterStore, ModuleKind};
use adarank::backend::cpu::Cpu;
use adarank::backend::Backend;
use adarank::model::{Batch, LoraConfig, Model, TrainMode};
use adarank::testkit::planted_layers::spearman;
use adarank::train::{
    build_model, train, Control, Decay, Hooks, PlantedConfig, PlantedTask, StepMetrics, Task,
    TrainConfig,
};
use nalgebra::DMatrix;
use std::sync::Arc;

/// Phase-1 rank of the test, and the components added to read the gradient.
const R: usize = 8;

struct Probe {
    at: u64,
    planted: Vec<f64>,
    val: Vec<Batch>,
    grad_val: Vec<Batch>,
    /// Planted ΔW* of every slot (empty at rank 0).
    deltas: Vec<Vec<f32>>,
    seed: u64,
}

fn dense(rows: usize, cols: usize, data: &[f32]) -> DMatrix<f64> {
    DMatrix::from_fn(rows, cols, |i, j| data[i * cols + j] as f64)
}

fn erank(sv: &[f64]) -> f64 {
    let t: f64 = sv.iter().sum();
    (-sv.iter()
        .filter(|x| **x > 0.0)
        .map(|x| x / t * (x / t).ln())
        .sum::<f64>())
    .exp()
}

impl Probe {
    fn val_loss<B: Backend>(&self, model: &mut Model<B>) -> anyhow::Result<f64> {
        let mut s = 0.0;
        for b in &self.val {
            s += model.loss(b)? as f64;
        }
        Ok(s / self.val.len() as f64)
    }

    /// Relative loss increase when slot `i` keeps only its k largest components, k = 0..R.
    fn truncations<B: Backend>(&self, model: &mut Model<B>, i: usize) -> anyhow::Result<Vec<f64>> {
        let a = model.adapters()[i].clone();
        let h = model.adapter_host(i)?;
        let dw = dense(a.rows, R, &h.b) * dense(R, a.cols, &h.a);
        let svd = dw.svd(true, true);
        let (u, s, vt) = (svd.u.unwrap(), svd.singular_values, svd.v_t.unwrap());
        let mut order: Vec<usize> = (0..s.len()).collect();
        order.sort_by(|x, y| s[*y].total_cmp(&s[*x]));
        let base = self.val_loss(model)?;
        let mut out = vec![];
        for k in 0..R {
            let mut t = h.clone();
            t.grad_a.clear();
            t.grad_b.clear();
            for (j, &c) in order.iter().take(R).enumerate() {
                for q in 0..a.cols {
                    t.a[j * a.cols + q] = vt[(c, q)] as f32;
                }
                for q in 0..a.rows {
                    t.b[q * R + j] = if j < k {
                        (u[(q, c)] * s[c]) as f32
                    } else {
                        0.0
                    };
                }
            }
            model.set_adapter_host(i, &t)?;
            out.push(self.val_loss(model)? / base - 1.0);
        }
        let mut back = h;
        back.grad_a.clear();
        back.grad_b.clear();
        model.set_adapter_host(i, &back)?;
        Ok(out)
    }

    /// Ḡ = ∂L/∂W of slot `i` (mean over `grad_val`), through R extra components with B = 0 (the
    /// model's output is unchanged) whose A rows are unit vectors, R input columns at a time.
    /// Leaves the adapter at rank 2R.
    fn full_gradient<B: Backend>(
        &self,
        model: &mut Model<B>,
        i: usize,
    ) -> anyhow::Result<DMatrix<f64>> {
        let a = model.adapters()[i].clone();
        let r2 = 2 * R;
        model.resize_adapter(i, r2)?;
        let mut g = DMatrix::<f64>::zeros(a.rows, a.cols);
        for blk in 0..a.cols.div_ceil(R) {
            let mut h = model.adapter_host(i)?;
            h.grad_a.clear();
            h.grad_b.clear();
            for j in R..r2 {
                let col = blk * R + j - R;
                for q in 0..a.cols {
                    h.a[j * a.cols + q] = if q == col { 1.0 } else { 0.0 };
                }
                for q in 0..a.rows {
                    h.b[q * r2 + j] = 0.0;
                }
            }
            model.set_adapter_host(i, &h)?;
            for b in &self.grad_val {
                model.zero_grads();
                model.forward_backward(b, 1.0)?;
                let gh = model.adapter_host(i)?;
                for j in R..r2 {
                    let col = blk * R + j - R;
                    if col >= a.cols {
                        continue;
                    }
                    for q in 0..a.rows {
                        g[(q, col)] += gh.grad_b[q * r2 + j] as f64
                            / gh.scale as f64
                            / self.grad_val.len() as f64;
                    }
                }
            }
        }
        model.zero_grads();
        Ok(g)
    }

    fn report<B: Backend>(&self, model: &mut Model<B>) -> anyhow::Result<()> {
        let infos = model.adapters();
        let n = infos.len();
        let (mut e, mut drop_all, mut tables, mut learned) = (vec![], vec![], vec![], vec![]);
        for (i, a) in infos.iter().enumerate() {
            let h = model.adapter_host(i)?;
            let w0 = model.frozen_weight(i)?;
            let unit = w0.data.iter().map(|x| (*x as f64).powi(2)).sum::<f64>()
                / a.rows.min(a.cols) as f64;
            let dw = dense(a.rows, R, &h.b) * dense(R, a.cols, &h.a) * h.scale as f64;
            e.push(dw.norm_squared() / unit);
            learned.push(if self.deltas[i].is_empty() {
                0.0
            } else {
                let p = dense(a.rows, a.cols, &self.deltas[i]);
                dw.dot(&p) / p.norm_squared()
            });
            let t = self.truncations(model, i)?;
            drop_all.push(t[0]);
            tables.push(t);
        }
        // The budget (4 per slot) spent from rank 1 on the largest loss gain per component.
        let mut ranks = vec![1usize; n];
        for _ in 0..(4 * n - n) {
            let gain = |i: usize, k: usize| {
                let at = |k: usize| if k >= R { 0.0 } else { tables[i][k] };
                at(k) - at(k + 1)
            };
            let best = (0..n)
                .filter(|i| ranks[*i] < R)
                .max_by(|x, y| gain(*x, ranks[*x]).total_cmp(&gain(*y, ranks[*y])))
                .unwrap();
            ranks[best] += 1;
        }
        let (mut gn, mut ger, mut top) = (vec![], vec![], vec![]);
        for (i, a) in infos.iter().enumerate() {
            let g = self.full_gradient(model, i)?;
            let sv: Vec<f64> = g.singular_values().iter().copied().collect();
            let s2: f64 = sv.iter().map(|x| x * x).sum();
            let max = sv.iter().cloned().fold(0.0, f64::max);
            gn.push(s2);
            ger.push(erank(&sv));
            top.push(max * max / s2);
            println!(
                "seed {} {:9} planted {} E {:6.3} learned {:4.2} |Ḡ|² {:9.3e} erank(Ḡ) {:5.2} \
                 top share {:4.2} keep-k loss +[{}]",
                self.seed,
                format!("{}.{}", a.layer, a.kind),
                self.planted[i],
                e[i],
                learned[i],
                s2,
                ger[i],
                top[i],
                tables[i]
                    .iter()
                    .map(|x| format!("{x:.3}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            );
        }
        let rho = |v: &[f64]| spearman(v, &self.planted);
        let r: Vec<f64> = ranks.iter().map(|x| *x as f64).collect();
        let e_er: Vec<f64> = e.iter().zip(&ger).map(|(a, b)| a * b).collect();
        println!(
            "seed {} step {}: Spearman with planted: E {:.3}; remove adapter {:.3}; loss-greedy \
             allocation {:.3} {:?}; |Ḡ|² {:.3}; erank(Ḡ) {:.3}; E·erank(Ḡ) {:.3}; mean top share {:.2}",
            self.seed,
            self.at,
            rho(&e),
            rho(&drop_all),
            rho(&r),
            ranks,
            rho(&gn),
            rho(&ger),
            rho(&e_er),
            top.iter().sum::<f64>() / n as f64
        );
        Ok(())
    }
}

impl<B: Backend> Hooks<B> for Probe {
    fn after_step(
        &mut self,
        step: u64,
        model: &mut Model<B>,
        _m: &StepMetrics,
    ) -> anyhow::Result<Control> {
        if step < self.at {
            return Ok(Control::Continue);
        }
        self.report(model)?;
        Ok(Control::Stop)
    }
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let at: u64 = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(200);
    let seeds: Vec<u64> = args
        .get(2)
        .map(|s| s.split(',').filter_map(|x| x.parse().ok()).collect())
        .unwrap_or_else(|| (1..=6).collect());
    for seed in seeds {
        let mut task = PlantedTask::new(PlantedConfig::small(seed))?;
        let planted = task.planted_ranks().unwrap();
        // Held-out batches from the training stream far beyond the 400 steps trained.
        let mut held = |from: u64, k: u64| -> anyhow::Result<Vec<Batch>> {
            (from..from + k).map(|i| task.train_batch(i, 16)).collect()
        };
        let val = held(1_000_000, 4)?;
        let grad_val = held(2_000_000, 8)?;
        let deltas = (0..planted.len())
            .map(|i| task.planted_delta(i).to_vec())
            .collect();
        let lora = LoraConfig::uniform(2, &ModuleKind::ALL, R, 16.0);
        let mut model = build_model(Arc::new(Cpu::new()), &task, TrainMode::Lora(lora), seed)?;
        let cfg = TrainConfig {
            steps: 400,
            batch: 16,
            lr: 1e-2,
            warmup: 10,
            decay: Decay::Linear,
            clip: Some(1.0),
            ..Default::default()
        };
        let mut probe = Probe {
            at,
            planted: planted.iter().map(|x| *x as f64).collect(),
            val,
            grad_val,
            deltas,
            seed,
        };
        train(&mut model, &mut task, &cfg, &mut probe)?;
    }
    Ok(())
}
