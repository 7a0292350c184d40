//! Trainable parameters of each arm, counted from its plan before anything runs, and the check
//! that the LoRA arms of one experiment are compared at (nearly) the same cost.
//!
//! Why: a rank costs rows + cols parameters, so arms at the same total rank can differ by tens
//! of percent in what they train (on MiniLM an FFN rank costs 1920, an attention rank 768).
//! A comparison that does not hold the cost fixed measures the budget, not the method.

use crate::adapter::ModuleKind;
use crate::model::weights::{body_shapes, head_shapes};
use crate::model::{Head, Pooling};
use crate::policy::{ArmPlan, RankSpec};
use std::fmt::Write;

/// LoRA arms whose counts differ by more than this share of the smaller one get a warning.
pub const TOLERANCE: f64 = 0.02;

/// What an arm trains at the end of training, in parameters: `lo..=hi` (equal when the plan
/// fixes it; a range when an allocator decides under a rank budget).
#[derive(Clone, Debug, PartialEq)]
pub struct ArmParams {
    pub arm: String,
    /// Adapter parameters Σ r_i·(rows_i + cols_i) (+ r_i for AdaLoRA's λ); `None` for full
    /// fine-tuning.
    pub adapters: Option<(u64, u64)>,
    /// Head (always trained) and, for full fine-tuning, body parameters (a JSONL head is
    /// counted at 2 classes, as `adarank plan` does).
    pub other: Option<u64>,
    /// How the adapter count comes about, in words.
    pub how: String,
}

impl ArmParams {
    /// Total trainable parameters `lo..=hi`, when known.
    pub fn total(&self) -> Option<(u64, u64)> {
        let o = self.other?;
        Some(match self.adapters {
            Some((lo, hi)) => (lo + o, hi + o),
            None => (o, o),
        })
    }
}

fn count(shapes: Vec<(String, Vec<usize>)>) -> u64 {
    shapes
        .iter()
        .map(|(_, s)| s.iter().product::<usize>() as u64)
        .sum()
}

/// The cheapest and dearest way to spend `budget` ranks over adapters costing `costs` per rank,
/// each rank in `[lo, hi]`: fill the cheapest (dearest) adapters first.
fn rank_budget_range(costs: &[u64], budget: usize, lo: usize, hi: usize) -> (u64, u64) {
    let mut sorted = costs.to_vec();
    sorted.sort_unstable();
    let base: u64 = sorted.iter().map(|c| c * lo as u64).sum();
    let extra = budget.saturating_sub(lo * costs.len());
    let fill = |order: &mut dyn Iterator<Item = &u64>| -> u64 {
        let mut left = extra;
        let mut spent = 0;
        for c in order {
            let k = left.min(hi - lo);
            spent += k as u64 * c;
            left -= k;
        }
        spent
    };
    (
        base + fill(&mut sorted.iter()),
        base + fill(&mut sorted.iter().rev()),
    )
}

/// Counts `arm`'s trainable parameters from its plan (the model's shape as `adarank plan` reads
/// it, [`super::costs::arm_shape`]); `None` when that shape is unknown.
pub fn arm_params(arm: &ArmPlan) -> Option<ArmParams> {
    let shape = super::costs::arm_shape(arm).ok()?;
    let cfg = &shape.model;
    let head = Some(count(head_shapes(cfg, &shape.head)));
    let Some(l) = arm.lora.on() else {
        // Full fine-tuning also trains BERT's pooler when the head reads it (`pooling = cls`).
        let pooler = match shape.head {
            Head::Classify {
                pooling: Pooling::Cls,
                ..
            } => count(crate::model::pooler::shapes(cfg.hidden)),
            _ => 0,
        };
        return Some(ArmParams {
            arm: arm.name.clone(),
            adapters: None,
            other: head.map(|h| h + count(body_shapes(cfg)) + pooler),
            how: "full fine-tuning: every weight".into(),
        });
    };
    // The covered slots: every one starts at rank ≥ 1 (init_rank, a fixed rank, or AdaLoRA's).
    let slots: Vec<(usize, ModuleKind, u64)> = shape
        .start_ranks
        .iter()
        .enumerate()
        .filter(|(_, r)| **r > 0)
        .map(|(i, _)| {
            let (layer, kind) = ModuleKind::of_slot(i);
            let (rows, cols) = cfg.module_shape(kind);
            (layer, kind, (rows + cols) as u64)
        })
        .collect();
    let costs: Vec<u64> = slots.iter().map(|s| s.2).collect();
    let at = |ranks: &dyn Fn(usize, ModuleKind) -> usize| -> u64 {
        slots.iter().map(|(l, k, c)| ranks(*l, *k) as u64 * c).sum()
    };
    let reallocates = super::arm::reallocates(arm);
    let (adapters, how) = match (&arm.adalora, l.param_budget) {
        (None, Some(p)) if reallocates => (
            (p as u64, p as u64),
            format!("parameter budget {p} (met as closely as integer ranks allow)"),
        ),
        // AdaLoRA under a parameter budget keeps triplets, best first, while their cost fits:
        // the weights land within one triplet of the budget, and each kept triplet's λ adds one.
        (Some(_), Some(p)) => {
            let p = p as u64;
            let (cmin, cmax) = (
                costs.iter().copied().min().unwrap_or(1).max(1),
                costs.iter().copied().max().unwrap_or(1).max(1),
            );
            let low = p.saturating_sub(cmax - 1);
            (
                (low + low.div_ceil(cmax), p + p / cmin),
                format!("AdaLoRA pruned to parameter budget {p} (+1 per kept triplet for λ)"),
            )
        }
        (Some(a), None) => {
            // Effective parameters once pruned to the target (λ counts one per rank): which
            // triplets survive decides the cost, so it is a range.
            let with_lambda: Vec<u64> = costs.iter().map(|c| c + 1).collect();
            let (lo, hi) =
                rank_budget_range(&with_lambda, a.target_rank * slots.len(), 0, a.init_rank);
            (
                (lo, hi),
                format!(
                    "AdaLoRA pruned to {} triplets: which survive decides the cost",
                    a.target_rank * slots.len(),
                ),
            )
        }
        (None, _) if reallocates => {
            let b = l.budget.unwrap_or(l.init_rank * slots.len());
            let (lo, hi) = rank_budget_range(&costs, b, l.min_rank, l.max_rank);
            (
                (lo, hi),
                format!("rank budget {b}: the allocator decides where, so the cost varies"),
            )
        }
        (None, _) => {
            let n = at(&|layer, kind| l.rank_of(layer, kind));
            let how = match &l.rank {
                RankSpec::Uniform(r) => format!("rank {r} everywhere"),
                _ => "fixed ranks per module".into(),
            };
            ((n, n), how)
        }
    };
    Some(ArmParams {
        arm: arm.name.clone(),
        adapters: Some(adapters),
        other: head,
        how,
    })
}

fn fmt_range((lo, hi): (u64, u64)) -> String {
    if lo == hi {
        lo.to_string()
    } else {
        format!("{lo}–{hi}")
    }
}

/// One line per arm: trainable parameters (adapters + head, or every weight) and how.
pub fn describe(arms: &[ArmParams]) -> String {
    let mut out = String::new();
    for a in arms {
        let total = a
            .total()
            .map(fmt_range)
            .unwrap_or_else(|| "unknown until the data loads".into());
        let adapters = a
            .adapters
            .map(|r| format!(" ({} in adapters)", fmt_range(r)))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "  {}: {total} trainable parameters{adapters}; {}",
            a.arm, a.how
        );
    }
    out
}

/// A warning when two LoRA arms may train adapter parameter counts more than [`TOLERANCE`]
/// apart.
pub fn mismatch(arms: &[ArmParams]) -> Option<String> {
    let lora: Vec<(&str, (u64, u64))> = arms
        .iter()
        .filter_map(|a| a.adapters.map(|r| (a.arm.as_str(), r)))
        .collect();
    let lo = lora.iter().map(|(_, r)| r.0).min()?;
    let hi = lora.iter().map(|(_, r)| r.1).max()?;
    let spread = (hi as f64 - lo as f64) / (lo as f64).max(1.0);
    (spread > TOLERANCE).then(|| {
        let each: Vec<String> = lora
            .iter()
            .map(|(a, r)| format!("`{a}` {}", fmt_range(*r)))
            .collect();
        format!(
            "LoRA arms may differ in adapter parameters by up to {:.1}%, more than {:.0}% ({}): \
             the comparison is not at equal cost. Set `lora.param_budget` for arms that \
             allocate, and ranks whose cost matches it for the fixed ones.",
            spread * 100.0,
            TOLERANCE * 100.0,
            each.join(", ")
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rank_budget_range_fills_cheap_or_dear_slots_first() {
        // Costs 2, 2, 5 (a small transformer's attention and FFN ranks), budget 6 in [1, 3]:
        // base 1·(2 + 2 + 5) = 9; 3 extra ranks cheapest-first: 2 + 2 on the two 2s (each up by
        // at most 2) → 2·2 + 1·2 = 6 → 15; dearest-first: 2 on the 5 (10), 1 on a 2 → 12 → 21.
        assert_eq!(rank_budget_range(&[2, 5, 2], 6, 1, 3), (15, 21));
        assert_eq!(rank_budget_range(&[4, 4], 4, 1, 3), (16, 16));
    }

    #[test]
    fn mismatch_flags_arms_more_than_two_percent_apart() {
        let a = |arm: &str, lo, hi| ArmParams {
            arm: arm.into(),
            adapters: Some((lo, hi)),
            other: Some(10),
            how: String::new(),
        };
        assert!(mismatch(&[a("x", 1000, 1000), a("y", 1019, 1019)]).is_none());
        let m = mismatch(&[a("x", 1000, 1000), a("y", 1000, 1210)]).unwrap();
        assert!(m.contains("21.0%"), "{m}");
        let full = ArmParams {
            arm: "full".into(),
            adapters: None,
            other: Some(1_000_000),
            how: String::new(),
        };
        assert!(mismatch(&[a("x", 1000, 1000), full]).is_none());
    }
}
