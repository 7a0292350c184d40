//! Learning-rate sweeps (`train.lr = sweep [3e-4, 1e-3, 3e-3]`): before an arm's seeds run,
//! the arm runs once per candidate rate — with the experiment's first seed, scored on the dev
//! split — and the best dev score picks the rate every seed then trains at, scored on the test
//! split. Why per arm: a method compared at a rate tuned for another method is compared at a
//! handicap; a LoRA whose rate is tuned matches many of its variants. Why dev: choosing on the
//! split the final metric is read from would make the chosen arm look better than it is.

use super::records::{CellResult, CellStatus, LrCandidate, LrChoice, Summary};
use super::rundir::RunDir;
use crate::data::plan::{split_of, Split};
use crate::policy::{ArmPlan, Policy};
use anyhow::Result;

/// The name a candidate cell runs under (its logs, checkpoint and adapters are kept apart from
/// the arm's own cells).
pub fn candidate_name(arm: &str, lr: f64) -> String {
    format!("{arm}@lr={lr:e}")
}

/// `arm` at learning rate `lr`, without its sweep.
fn at_rate(arm: &ArmPlan, lr: f64, name: String) -> ArmPlan {
    let mut a = arm.clone();
    a.name = name;
    a.train.lr = lr;
    a.train.lr_sweep.clear();
    a
}

/// The best candidate: highest (or lowest, for a loss) dev score; ties go to the earlier one.
/// Candidates without a finite score (a rate whose training diverged) are passed over.
pub fn best(candidates: &[LrCandidate], higher_is_better: bool) -> Option<f64> {
    let mut best: Option<(f64, f64)> = None;
    for c in candidates {
        let Some(m) = c.metric.filter(|m| m.is_finite()) else {
            continue;
        };
        let better = match best {
            None => true,
            Some((_, b)) if higher_is_better => m > b,
            Some((_, b)) => m < b,
        };
        if better {
            best = Some((c.lr, m));
        }
    }
    best.map(|(lr, _)| lr)
}

/// Runs the candidates of `arm`'s sweep that have not run yet (through `run_cell`, which trains
/// one arm × seed cell evaluated on the split it is given), records every dev score and the
/// choice in `summary`, and returns the arm at the chosen rate. An arm without a sweep comes
/// back unchanged. A candidate that fails (typically: its rate diverged) is recorded with its
/// error and passed over; a stop on request (`Interrupted`) is returned, and `--resume`
/// continues the sweep from there.
pub fn choose_lr(
    arm: &ArmPlan,
    policy: &Policy,
    summary: &mut Summary,
    rd: &RunDir,
    mut run_cell: impl FnMut(&ArmPlan, u64, Split) -> Result<CellResult>,
) -> Result<ArmPlan> {
    if arm.train.lr_sweep.is_empty() {
        return Ok(arm.clone());
    }
    let seed = policy.seeds[0];
    if summary.lr_choice(&arm.name).is_none() {
        summary.lr_choices.push(LrChoice {
            arm: arm.name.clone(),
            seed,
            split: split_of(&arm.data, Split::Dev).name().to_string(),
            candidates: arm
                .train
                .lr_sweep
                .iter()
                .map(|&lr| LrCandidate {
                    lr,
                    status: CellStatus::Pending,
                    metric: None,
                    error: None,
                })
                .collect(),
            chosen: None,
        });
    }
    let idx = summary
        .lr_choices
        .iter()
        .position(|c| c.arm == arm.name)
        .expect("pushed above");
    for k in 0..arm.train.lr_sweep.len() {
        let cand = &summary.lr_choices[idx].candidates[k];
        if cand.status == CellStatus::Done {
            continue;
        }
        let lr = cand.lr;
        let plan = at_rate(arm, lr, candidate_name(&arm.name, lr));
        let result = run_cell(&plan, seed, Split::Dev);
        let cand = &mut summary.lr_choices[idx].candidates[k];
        match result {
            Ok(cell) => {
                cand.status = CellStatus::Done;
                cand.metric = cell.metric;
                cand.error = None;
                rd.write_summary(summary)?;
            }
            Err(e) if e.downcast_ref::<super::runner::Interrupted>().is_some() => return Err(e),
            Err(e) => {
                cand.status = CellStatus::Failed;
                cand.error = Some(format!("{e:#}"));
                rd.write_summary(summary)?;
            }
        }
    }
    let higher = summary.metric.higher_is_better;
    let choice = &mut summary.lr_choices[idx];
    let chosen = best(&choice.candidates, higher).ok_or_else(|| {
        anyhow::anyhow!(
            "arm {}: every learning rate of the sweep failed (see the report's learning-rate \
             table)",
            arm.name
        )
    })?;
    choice.chosen = Some(chosen);
    rd.write_summary(summary)?;
    Ok(at_rate(arm, chosen, arm.name.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cand(lr: f64, m: Option<f64>) -> LrCandidate {
        LrCandidate {
            lr,
            status: CellStatus::Done,
            metric: m,
            error: None,
        }
    }

    #[test]
    fn best_follows_the_metric_direction_and_breaks_ties_early() {
        let c = [
            cand(3e-4, Some(0.80)),
            cand(1e-3, Some(0.85)),
            cand(3e-3, Some(0.85)),
        ];
        assert_eq!(best(&c, true), Some(1e-3));
        assert_eq!(best(&c, false), Some(3e-4));
        assert_eq!(
            best(&[cand(1e-3, Some(0.5)), cand(1e-2, None)], true),
            Some(1e-3)
        );
        assert_eq!(best(&[cand(1e-2, Some(f64::NAN))], true), None);
        assert_eq!(candidate_name("lora_fixed", 3e-4), "lora_fixed@lr=3e-4");
    }
}
