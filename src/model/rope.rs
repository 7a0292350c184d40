//! Rotary position embedding (RoPE) tables for the Llama family, built on the host as
//! transformers builds them, for [`crate::backend::Backend::rope`].
//!
//! transformers computes the inverse frequencies in f32 (`1 / θ^(2i/D)`, or Llama 3's rescaled
//! ones), each angle as one f32 product position·inv_freq, then its cosine and sine. The same
//! steps in the same precision here keep the table within an ulp or two of theirs: an angle
//! computed in f64 instead would differ from theirs by up to position·ulp(inv_freq), about
//! 1e-3 rad at position 8,000 — enough to move logits visibly on a long sequence.

use super::config::RopeScaling;

/// The inverse frequencies inv_freq[i], i < head_dim/2, of transformers'
/// `_compute_default_rope_parameters` (θ^−(2i/D), in f32), rescaled as
/// `_compute_llama3_parameters` does when `scaling` is given.
pub fn inv_freq(head_dim: usize, theta: f32, scaling: Option<&RopeScaling>) -> Vec<f32> {
    let dim = head_dim as f32;
    // torch: 1.0 / (base ** (arange(0, dim, 2, float) / dim)), and `1.0 / t` is
    // t.reciprocal() * 1.0 — the same f32 division.
    let plain = (0..head_dim / 2).map(|i| 1.0 / theta.powf((2 * i) as f32 / dim));
    match scaling {
        None => plain.collect(),
        Some(s) => plain.map(|f| llama3_scale(f, s)).collect(),
    }
}

/// Llama 3's rescaling of one inverse frequency: long wavelengths (beyond the pretraining
/// context / low_freq_factor) slowed by `factor`, short ones (below context / high_freq_factor)
/// kept, the band between blended smoothly. Written in torch's operation order and precision:
/// the Python scalars become f32 operands, and `scalar / tensor` is `tensor.reciprocal() *
/// scalar`.
fn llama3_scale(inv: f32, s: &RopeScaling) -> f32 {
    let old = s.original_max_positions as f64;
    let (lo, hi) = (s.low_freq_factor as f64, s.high_freq_factor as f64);
    let low_wavelen = (old / lo) as f32;
    let high_wavelen = (old / hi) as f32;
    let wavelen = (1.0 / inv) * (2.0 * std::f64::consts::PI) as f32;
    let base = if wavelen > low_wavelen {
        inv / s.factor
    } else {
        inv
    };
    let smooth = ((1.0 / wavelen) * old as f32 - s.low_freq_factor) / (hi - lo) as f32;
    let smoothed = (1.0 - smooth) * base / s.factor + smooth * base;
    // As torch writes it, `~(w < high) * ~(w > low)`: a NaN wavelength counts as medium.
    #[allow(clippy::neg_cmp_op_on_partial_ord)]
    let medium = !(wavelen < high_wavelen) && !(wavelen > low_wavelen);
    if medium {
        smoothed
    } else {
        base
    }
}

/// The table [`crate::backend::Backend::rope`] reads: [positions, head_dim/2, 2], the pair
/// (cos θ, sin θ) of frequency i at position p at (p·head_dim/2 + i)·2, with θ = p·inv_freq[i]
/// computed in f32 as transformers' `LlamaRotaryEmbedding` does (its attention scaling is 1 for
/// the default and Llama 3 RoPE). The cosine and sine of that f32 angle are taken in f64 and
/// rounded once, the correctly rounded values PyTorch's f32 kernels approximate within an ulp.
pub fn rope_table(
    head_dim: usize,
    positions: usize,
    theta: f32,
    scaling: Option<&RopeScaling>,
) -> Vec<f32> {
    let inv = inv_freq(head_dim, theta, scaling);
    let mut table = Vec::with_capacity(positions * inv.len() * 2);
    for p in 0..positions {
        for &f in &inv {
            let angle = (p as f32 * f) as f64;
            table.push(angle.cos() as f32);
            table.push(angle.sin() as f32);
        }
    }
    table
}
