//! A cell whose training has gone non-finite is stopped as failed, with what to change. A NaN
//! never recovers (every later step computes with it), and written to a JSON log it would read
//! back as `null`: the step is refused before anything records it.

use crate::policy::{ArmPlan, DataSpec};
use anyhow::{bail, Result};

/// The values of the policy that most often make training overflow, for the message.
fn suspects(arm: &ArmPlan) -> String {
    let mut s = vec![format!("train.lr = {}", arm.train.lr)];
    if let Some(l) = arm.lora.on() {
        s.push(format!("lora.alpha = {}", l.alpha));
    }
    if arm.train.weight_decay > 0.0 {
        s.push(format!("train.weight_decay = {}", arm.train.weight_decay));
    }
    if let DataSpec::Planted { scale, .. } = &arm.data {
        s.push(format!("data.scale = {scale}"));
    }
    match arm.train.clip {
        Some(c) => s.push(format!("train.clip = {c}")),
        None => s.push("train.clip = off".into()),
    }
    s.join(", ")
}

/// Refuses a training step whose loss or gradient norm is NaN or infinite.
pub fn check_step(arm: &ArmPlan, step: u64, loss: f32, grad_norm: f32) -> Result<()> {
    if loss.is_finite() && grad_norm.is_finite() {
        return Ok(());
    }
    bail!(
        "training diverged at step {step}: the loss is {loss} and the gradient norm {grad_norm}; \
         the cell stops here as failed. Lower the learning rate or the scales ({}), or clip \
         gradients (`train.clip = 1.0`), then start a new run",
        suspects(arm)
    )
}

/// Refuses an evaluation whose loss is NaN or infinite.
pub fn check_eval(arm: &ArmPlan, step: u64, loss: f64) -> Result<()> {
    if loss.is_finite() {
        return Ok(());
    }
    bail!(
        "evaluation at step {step} gave a loss of {loss}: the model's outputs overflowed; the cell \
         stops here as failed. Lower the learning rate or the scales ({}), then start a new run",
        suspects(arm)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_finite_steps_and_evaluations_are_refused_with_the_settings_to_change() {
        let p = crate::policy::load_str(
            "experiment x { model encoder { layers = 1, hidden = 8, heads = 2 } \
             data planted { ranks = [1] } train { steps = 5, lr = 0.5 } }",
            "x.rank",
            std::path::Path::new("."),
            &[],
        )
        .unwrap();
        let arm = &p.arms[0];
        assert!(check_step(arm, 3, 0.5, 1.0).is_ok());
        for (loss, norm) in [(f32::NAN, 1.0), (f32::INFINITY, 1.0), (0.5, f32::NAN)] {
            let e = check_step(arm, 3, loss, norm).unwrap_err().to_string();
            assert!(
                e.contains("diverged at step 3") && e.contains("train.lr = 0.5"),
                "{e}"
            );
        }
        assert!(check_eval(arm, 4, 0.1).is_ok());
        let e = check_eval(arm, 4, f64::NAN).unwrap_err().to_string();
        assert!(e.contains("evaluation at step 4 gave a loss of NaN"), "{e}");
    }
}
