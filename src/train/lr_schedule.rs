//! Learning-rate schedule: linear warmup, then linear or cosine decay to 0, or constant.

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decay {
    Linear,
    Cosine,
    Constant,
}

/// Learning rate of optimizer step `step` (0-based) of `total`: `peak·(step+1)/warmup` during
/// warmup, then decaying from `peak` (Hugging Face's `get_linear_schedule_with_warmup` /
/// `get_cosine_schedule_with_warmup` shapes).
pub fn lr_at(peak: f32, step: u64, total: u64, warmup: u64, decay: Decay) -> f32 {
    if step < warmup {
        return peak * (step + 1) as f32 / warmup as f32;
    }
    let span = total.saturating_sub(warmup).max(1) as f64;
    let p = ((step - warmup) as f64 / span).min(1.0);
    let f = match decay {
        Decay::Constant => 1.0,
        Decay::Linear => 1.0 - p,
        Decay::Cosine => 0.5 * (1.0 + (std::f64::consts::PI * p).cos()),
    };
    (peak as f64 * f) as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_then_decay_match_closed_forms() {
        assert_eq!(lr_at(1.0, 0, 10, 4, Decay::Linear), 0.25);
        assert_eq!(lr_at(1.0, 3, 10, 4, Decay::Linear), 1.0);
        assert_eq!(lr_at(1.0, 4, 10, 4, Decay::Linear), 1.0);
        assert!((lr_at(1.0, 7, 10, 4, Decay::Linear) - 0.5).abs() < 1e-7);
        assert!((lr_at(2.0, 7, 10, 4, Decay::Cosine) - 1.0).abs() < 1e-6);
        assert!(
            (lr_at(2.0, 5, 10, 4, Decay::Cosine) - (1.0 + (std::f32::consts::PI / 6.0).cos()))
                .abs()
                < 1e-6
        );
        assert_eq!(lr_at(3.0, 9, 10, 0, Decay::Constant), 3.0);
    }
}
