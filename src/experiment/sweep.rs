//! Learning-rate sweeps (`train.lr = sweep [3e-4, 1e-3, 3e-3]`): before an arm's seeds run,
//! the arm runs once per candidate rate — with the experiment's first seed, scored on the dev
//! split — and the best dev score picks the rate every seed then trains at, scored on the test
//! split. Why per arm: a method compared at a rate tuned for another method is compared at a
//! handicap; a LoRA whose rate is tuned matches many of its variants. Why dev: choosing on the
//! split the final metric is read from would make the chosen arm look better than it is.

use super::lock::{CellLock, Claim};
use super::records::{CellResult, CellStatus, LrCandidate, LrChoice, Summary};
use super::rundir::RunDir;
use crate::data::prepare::{split_of, Split};
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

/// How many of `arm`'s learning-rate candidates [`choose_lr`] has yet to run: every one before
/// the sweep starts, none for an arm without a sweep.
pub fn candidates_left(arm: &ArmPlan, s: &Summary) -> usize {
    match s.lr_choice(&arm.name) {
        Some(c) => c
            .candidates
            .iter()
            .filter(|k| k.status != CellStatus::Done)
            .count(),
        None => arm.train.lr_sweep.len(),
    }
}

/// Runs the candidates of `arm`'s sweep that have not run yet (through `run_cell`, which trains
/// one arm × seed cell evaluated on the split it is given), records every dev score and the
/// choice in the run directory's summary, and returns the arm at the chosen rate. An arm without
/// a sweep comes back unchanged. A candidate that fails (typically: its rate diverged) is
/// recorded with its error and passed over; a stop on request (`Interrupted`) is returned, and
/// `--resume` continues the sweep from there. The summary is read and written under the run
/// directory's lock, as the runner does for cells.
pub fn choose_lr(
    arm: &ArmPlan,
    policy: &Policy,
    rd: &RunDir,
    say: impl Fn(&str),
    mut run_cell: impl FnMut(&ArmPlan, u64, Split) -> Result<CellResult>,
) -> Result<ArmPlan> {
    if arm.train.lr_sweep.is_empty() {
        return Ok(arm.clone());
    }
    let seed = policy.seeds[0];
    let fresh = LrChoice {
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
    };
    let (s, _) = rd.update_summary(|s| {
        if s.lr_choice(&arm.name).is_none() {
            s.lr_choices.push(fresh);
        }
    })?;
    // The candidates still to run, with what the summary said of each when we looked.
    let pending: Vec<(f64, CandidateState)> = s
        .lr_choice(&arm.name)
        .map(|c| {
            c.candidates
                .iter()
                .filter(|k| k.status != CellStatus::Done)
                .map(|k| (k.lr, state(k)))
                .collect()
        })
        .unwrap_or_default();
    // Several processes may choose one arm's rate at once (the Slurm array tasks of its seeds,
    // or two `--resume`s): each candidate runs under its cell's lock, so it runs once and its
    // records are written once. A process first takes the candidates nobody holds, then waits
    // for the others and reads their scores; a candidate whose holder died is run again.
    let mut held = Vec::new();
    for (lr, seen) in pending {
        let name = candidate_name(&arm.name, lr);
        match CellLock::try_claim(&rd.root, &name, seed)? {
            Claim::Got { lock, .. } => run_candidate(arm, lr, seed, seen, lock, rd, &mut run_cell)?,
            Claim::Busy(holder) => held.push((lr, seen, holder)),
        }
    }
    for (lr, seen, holder) in held {
        let name = candidate_name(&arm.name, lr);
        let who = holder.map_or("another process".into(), |h| h.to_string());
        say(&format!(
            "arm {}: waiting for {who}, which runs candidate {name}",
            arm.name
        ));
        let lock = CellLock::claim_waiting(&rd.root, &name, seed)?;
        run_candidate(arm, lr, seed, seen, lock, rd, &mut run_cell)?;
    }
    let (_, chosen) = rd.update_summary(|s| {
        let higher = s.metric.higher_is_better;
        let c = s.lr_choices.iter_mut().find(|c| c.arm == arm.name)?;
        c.chosen = best(&c.candidates, higher);
        c.chosen
    })?;
    let chosen = chosen.ok_or_else(|| {
        anyhow::anyhow!(
            "arm {}: every learning rate of the sweep failed (see the report's learning-rate \
             table)",
            arm.name
        )
    })?;
    Ok(at_rate(arm, chosen, arm.name.clone()))
}

/// What the summary says of a candidate: its status and error.
type CandidateState = (CellStatus, Option<String>);

fn state(k: &LrCandidate) -> CandidateState {
    (k.status, k.error.clone())
}

/// Runs one sweep candidate while holding its lock, unless another process changed its record
/// since `seen` was read (it ran the candidate meanwhile), and records its dev score.
fn run_candidate(
    arm: &ArmPlan,
    lr: f64,
    seed: u64,
    seen: CandidateState,
    _lock: CellLock,
    rd: &RunDir,
    run_cell: &mut impl FnMut(&ArmPlan, u64, Split) -> Result<CellResult>,
) -> Result<()> {
    let now = rd
        .load_summary()?
        .lr_choice(&arm.name)
        .and_then(|c| c.candidates.iter().find(|k| k.lr == lr).map(state));
    if now != Some(seen) {
        return Ok(());
    }
    let plan = at_rate(arm, lr, candidate_name(&arm.name, lr));
    let (status, metric, error) = match run_cell(&plan, seed, Split::Dev) {
        Ok(cell) => (CellStatus::Done, cell.metric, None),
        Err(e) if e.downcast_ref::<super::run::Interrupted>().is_some() => return Err(e),
        Err(e) => (CellStatus::Failed, None, Some(format!("{e:#}"))),
    };
    rd.update_summary(|s| {
        if let Some(k) = candidate_mut(s, &arm.name, lr) {
            k.status = status;
            k.metric = metric;
            k.error = error;
        }
    })?;
    Ok(())
}

fn candidate_mut<'a>(s: &'a mut Summary, arm: &str, lr: f64) -> Option<&'a mut LrCandidate> {
    s.lr_choices
        .iter_mut()
        .find(|c| c.arm == arm)?
        .candidates
        .iter_mut()
        .find(|k| k.lr == lr)
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
