//! LoRA adapters: creation, scale, and rank changes (shrink by truncated SVD, grow with zeros).
//!
//! **AdamW moments on a resize.** By default, when an adapter's rank changes, its A, B (and λ)
//! are replaced by factors in a new basis, so the old per-coordinate moments no longer describe
//! the new coordinates: a resized adapter's moments are reset to zero and its AdamW step
//! counter restarts at 0, so bias correction treats it exactly like a freshly created adapter.
//! Adapters whose rank does not change keep their moments and step counters untouched.
//!
//! The rank engine can ask for gentler resizes ([`crate::adapter::ResizeOptions`]): shrinking
//! by dropping trailing components ([`keep_leading`]) and growing ([`grow_factors`]) leave the
//! surviving components in their own coordinates, so their moments can be kept
//! ([`Lora::carry_moments`]); a zeroed, restarted Adam moves every coordinate by about lr on
//! its first steps (bias correction makes m̂/√v̂ ≈ ±1), which is a loss spike on a trained
//! adapter.

use super::linear::Lora;
use super::param::Param;
use crate::adapter::HostTensor;
use crate::backend::{Backend, MemKind};
use anyhow::{ensure, Result};
use nalgebra::DMatrix;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Normal};

/// Output scale of an adapter: α/r (α/√r with rsLoRA); the SVD form keeps α/init_rank.
pub fn lora_scale(alpha: f32, rank: usize, rslora: bool, svd: bool, init_rank: usize) -> f32 {
    if svd {
        return alpha / init_rank.max(1) as f32;
    }
    if rank == 0 {
        return 0.0;
    }
    if rslora {
        alpha / (rank as f32).sqrt()
    } else {
        alpha / rank as f32
    }
}

/// Host factors of an adapter: A [r, cols], B [rows, r], λ [r] (SVD form).
#[derive(Clone, Debug, PartialEq)]
pub struct Factors {
    pub rank: usize,
    pub a: Vec<f32>,
    pub b: Vec<f32>,
    pub lambda: Option<Vec<f32>>,
}

/// Fresh factors at `rank`: LoRA A ~ U(−1/√cols, 1/√cols) (PEFT's Kaiming-uniform), B = 0;
/// SVD form A, B ~ N(0, 0.02), λ = 0. Either way ΔW = 0.
pub fn init_factors(rows: usize, cols: usize, rank: usize, svd: bool, seed: u64) -> Factors {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    if svd {
        let d = Normal::new(0.0f32, 0.02).unwrap();
        Factors {
            rank,
            a: (0..rank * cols).map(|_| d.sample(&mut rng)).collect(),
            b: (0..rows * rank).map(|_| d.sample(&mut rng)).collect(),
            lambda: Some(vec![0.0; rank]),
        }
    } else {
        let bound = 1.0 / (cols as f32).sqrt();
        Factors {
            rank,
            a: (0..rank * cols)
                .map(|_| rng.random_range(-bound..bound))
                .collect(),
            b: vec![0.0; rows * rank],
            lambda: None,
        }
    }
}

/// Dense ΔW = s·B·diag(λ)·A: [rows, cols] (for tests, exports and the planted task).
pub fn delta_w(rows: usize, cols: usize, f: &Factors, scale: f32) -> Vec<f32> {
    let mut out = vec![0.0f32; rows * cols];
    for i in 0..rows {
        for k in 0..f.rank {
            let lam = f.lambda.as_ref().map_or(1.0, |l| l[k]);
            let bik = scale * f.b[i * f.rank + k] * lam;
            if bik == 0.0 {
                continue;
            }
            let arow = &f.a[k * cols..(k + 1) * cols];
            for (o, a) in out[i * cols..(i + 1) * cols].iter_mut().zip(arow) {
                *o += bik * a;
            }
        }
    }
    out
}

/// Best rank-`new_rank` approximation of ΔW = s·B·diag(λ)·A as new factors at scale `s_new`.
///
/// QR of B = Q_B R_B and of Aᵀ = Q_A R_A reduce the SVD to the small r×r core
/// M = R_B·diag(λ)·R_Aᵀ = U Σ Vᵀ, so ΔW = s·(Q_B U) Σ (Q_A V)ᵀ. LoRA keeps √(sσ/s_new) in
/// both factors (balanced, well conditioned); the SVD form keeps orthonormal factors and puts
/// sσ/s_new into λ. Computed in f64.
///
/// A kept component whose singular value is 0 (ΔW has lower rank than `new_rank`) would get
/// A = B = 0 in LoRA form, and a component with both factors zero never receives a gradient
/// again: it is started fresh instead, as growing does (A drawn from `seed`, B = 0, so ΔW is
/// unchanged).
pub fn shrink_factors(
    rows: usize,
    cols: usize,
    f: &Factors,
    scale: f32,
    new_rank: usize,
    new_scale: f32,
    seed: u64,
) -> Result<Factors> {
    let r = f.rank;
    let svd = f.lambda.is_some();
    if new_rank == 0 {
        return Ok(Factors {
            rank: 0,
            a: vec![],
            b: vec![],
            lambda: svd.then(Vec::new),
        });
    }
    let bm = DMatrix::<f64>::from_row_slice(rows, r, &to64(&f.b));
    let at = DMatrix::<f64>::from_row_slice(r, cols, &to64(&f.a)).transpose();
    let (qb, rb) = {
        let qr = bm.qr();
        (qr.q(), qr.r())
    };
    let (qa, ra) = {
        let qr = at.qr();
        (qr.q(), qr.r())
    };
    let mut rb = rb; // [min(rows, r), r]
    if let Some(l) = &f.lambda {
        for (j, &lj) in l.iter().enumerate() {
            rb.column_mut(j).scale_mut(lj as f64);
        }
    }
    let core = &rb * ra.transpose(); // [min(rows,r), min(cols,r)]
                                     // Bounded iterations: nalgebra's plain `svd` never returns on non-finite input.
    ensure!(
        core.iter().all(|v| v.is_finite()),
        "cannot resize an adapter whose ΔW is not finite (the run diverged: lower the learning rate)"
    );
    let svdc = core
        .try_svd(true, true, f64::EPSILON, 10_000)
        .ok_or_else(|| anyhow::anyhow!("the SVD of an adapter's ΔW did not converge"))?;
    let (u, vt, sv) = (svdc.u.unwrap(), svdc.v_t.unwrap(), svdc.singular_values);
    let left = &qb * u; // [rows, k]
    let right = &qa * vt.transpose(); // [cols, k]
    let k = sv.len();
    let ratio = scale as f64 / new_scale as f64;
    // Fresh components (B = 0) for directions ΔW does not have.
    let fresh = init_factors(rows, cols, new_rank, svd, seed);
    let mut a = fresh.a;
    let mut b = vec![0.0f32; rows * new_rank];
    let mut lambda = svd.then(|| vec![0.0f32; new_rank]);
    if svd {
        b = fresh.b;
    }
    let top = sv.iter().cloned().fold(0.0f64, f64::max);
    for j in 0..new_rank.min(k) {
        if sv[j] <= 1e-9 * top || sv[j] == 0.0 {
            continue;
        }
        let sig = sv[j] * ratio;
        let (fb, fa) = if svd {
            (1.0, 1.0)
        } else {
            (sig.sqrt(), sig.sqrt())
        };
        for i in 0..rows {
            b[i * new_rank + j] = (left[(i, j)] * fb) as f32;
        }
        for c in 0..cols {
            a[j * cols + c] = (right[(c, j)] * fa) as f32;
        }
        if let Some(l) = lambda.as_mut() {
            l[j] = sig as f32;
        }
    }
    Ok(Factors {
        rank: new_rank,
        a,
        b,
        lambda,
    })
}

/// `f` grown to `new_rank` with ΔW unchanged: existing factors rescaled by √(s/s_new) each
/// (LoRA) so s_new·B·A = s·B·A; new A rows drawn as at creation; new B columns zero (LoRA) or
/// new λ zero (SVD form, where new A rows and B columns are drawn N(0, 0.02)).
pub fn grow_factors(
    rows: usize,
    cols: usize,
    f: &Factors,
    scale: f32,
    new_rank: usize,
    new_scale: f32,
    seed: u64,
) -> Factors {
    let (r, svd) = (f.rank, f.lambda.is_some());
    let fresh = init_factors(rows, cols, new_rank - r, svd, seed);
    let k = if svd || r == 0 {
        1.0
    } else {
        (scale / new_scale).sqrt()
    };
    let mut a = Vec::with_capacity(new_rank * cols);
    a.extend(f.a.iter().map(|v| v * k));
    a.extend_from_slice(&fresh.a);
    let mut b = vec![0.0f32; rows * new_rank];
    for i in 0..rows {
        for j in 0..r {
            b[i * new_rank + j] = f.b[i * r + j] * k;
        }
        for j in r..new_rank {
            b[i * new_rank + j] = fresh.b[i * (new_rank - r) + (j - r)];
        }
    }
    let lambda = f.lambda.as_ref().map(|l| {
        let mut l = l.clone();
        l.extend_from_slice(fresh.lambda.as_ref().unwrap());
        l
    });
    Factors {
        rank: new_rank,
        a,
        b,
        lambda,
    }
}

/// The first `new_rank` components of `f` (no re-factorisation: ΔW loses exactly the dropped
/// components), rescaled as in [`grow_factors`] so the kept ones keep their share of ΔW at
/// scale `new_scale`.
pub fn keep_leading(
    rows: usize,
    cols: usize,
    f: &Factors,
    scale: f32,
    new_rank: usize,
    new_scale: f32,
) -> Factors {
    let (r, svd) = (f.rank, f.lambda.is_some());
    let k = if svd || new_rank == 0 {
        1.0
    } else {
        (scale / new_scale).sqrt()
    };
    let a = f.a[..new_rank * cols].iter().map(|v| v * k).collect();
    let mut b = Vec::with_capacity(rows * new_rank);
    for row in f.b.chunks_exact(r.max(1)).take(rows) {
        b.extend(row[..new_rank].iter().map(|v| v * k));
    }
    Factors {
        rank: new_rank,
        a,
        b,
        lambda: f.lambda.as_ref().map(|l| l[..new_rank].to_vec()),
    }
}

/// AdamW state of A and B, read back to carry it through a resize.
pub struct Moments {
    pub rank: usize,
    /// (m, v, step) of A [rank, cols] and of B [rows, rank].
    pub a: (Vec<f32>, Vec<f32>, u32),
    pub b: (Vec<f32>, Vec<f32>, u32),
}

fn mean(v: &[f32]) -> f32 {
    if v.is_empty() {
        0.0
    } else {
        v.iter().sum::<f32>() / v.len() as f32
    }
}

fn to64(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

impl<B: Backend> Lora<B> {
    /// A slot at rank `f.rank` holding factors `f`, trainable (fresh moments).
    pub fn from_factors(
        be: &B,
        path: &str,
        rows: usize,
        cols: usize,
        f: &Factors,
        scale: f32,
        init_rank: usize,
    ) -> Result<Self> {
        let mut l = Lora {
            rank: 0,
            a: None,
            b: None,
            lambda: None,
            mask: vec![],
            scale,
            svd: f.lambda.is_some(),
            init_rank,
            xa: None,
            xal: None,
            gates: None,
            acc: None,
            importance: None,
            orth: None,
        };
        l.set_factors(be, path, rows, cols, f, scale)?;
        Ok(l)
    }

    /// Replace the factors by `f` (any rank): buffers are reallocated at the new size, moments
    /// reset and the AdamW step counters restarted (see the module docs).
    pub fn set_factors(
        &mut self,
        be: &B,
        path: &str,
        rows: usize,
        cols: usize,
        f: &Factors,
        scale: f32,
    ) -> Result<()> {
        ensure!(
            f.a.len() == f.rank * cols && f.b.len() == f.rank * rows,
            "adapter {path}: factors of rank {} need A {}×{} and B {}×{}",
            f.rank,
            f.rank,
            cols,
            rows,
            f.rank
        );
        // Drop the old buffers first so the ledger never counts both sizes at once.
        self.a = None;
        self.b = None;
        self.lambda = None;
        self.xa = None;
        self.xal = None;
        // Gates, gradient statistics and importance describe the old components.
        self.gates = None;
        self.acc = None;
        self.importance = None;
        self.orth = None;
        self.rank = f.rank;
        self.scale = scale;
        self.mask = vec![false; f.rank];
        if f.rank == 0 {
            return Ok(());
        }
        self.a = Some(Param::new(
            be,
            format!("{path}.lora_A.weight"),
            &HostTensor::new(vec![f.rank, cols], f.a.clone()),
            true,
        )?);
        self.b = Some(Param::new(
            be,
            format!("{path}.lora_B.weight"),
            &HostTensor::new(vec![rows, f.rank], f.b.clone()),
            true,
        )?);
        if let Some(l) = &f.lambda {
            ensure!(
                l.len() == f.rank,
                "adapter {path}: λ needs {} values",
                f.rank
            );
            let mut p = Param::new(
                be,
                format!("{path}.lora_E"),
                &HostTensor::new(vec![f.rank], l.clone()),
                true,
            )?;
            p.decay = false;
            self.lambda = Some(p);
        }
        Ok(())
    }

    pub fn factors(&self, be: &B) -> Result<Factors> {
        if self.rank == 0 {
            return Ok(Factors {
                rank: 0,
                a: vec![],
                b: vec![],
                lambda: self.svd.then(Vec::new),
            });
        }
        Ok(Factors {
            rank: self.rank,
            a: be.download(&self.a.as_ref().unwrap().w)?,
            b: be.download(&self.b.as_ref().unwrap().w)?,
            lambda: match &self.lambda {
                Some(l) => Some(be.download(&l.w)?),
                None => None,
            },
        })
    }

    /// λ_j ← 0 where `masked[j]`, on the device (λ ⊙ keep with keep_j ∈ {0, 1}), so masking
    /// reads nothing back. Nothing to do without λ or without a masked entry.
    pub fn zero_lambda(&mut self, be: &B, masked: &[bool]) -> Result<()> {
        let Some(lam) = self.lambda.as_mut() else {
            return Ok(());
        };
        ensure!(
            masked.len() == self.rank,
            "λ mask of {} entries for an adapter of rank {}",
            masked.len(),
            self.rank
        );
        if !masked.iter().any(|&m| m) {
            return Ok(());
        }
        let keep: Vec<f32> = masked.iter().map(|&m| if m { 0.0 } else { 1.0 }).collect();
        let keep = be.upload(&keep, MemKind::Scratch)?;
        let mut kept = be.zeros(keep.len(), MemKind::Scratch)?;
        be.mul(&lam.w, &keep, &mut kept);
        be.copy(&kept, &mut lam.w);
        Ok(())
    }

    /// A and B's AdamW moments and step counters (LoRA form; `None` at rank 0 or without
    /// moments).
    pub fn moments(&self, be: &B) -> Result<Option<Moments>> {
        let (Some(a), Some(b)) = (self.a.as_ref(), self.b.as_ref()) else {
            return Ok(None);
        };
        let (Some(oa), Some(ob)) = (a.opt.as_ref(), b.opt.as_ref()) else {
            return Ok(None);
        };
        Ok(Some(Moments {
            rank: self.rank,
            a: (be.download(&oa.m)?, be.download(&oa.v)?, oa.step),
            b: (be.download(&ob.m)?, be.download(&ob.v)?, ob.step),
        }))
    }

    /// After a resize that kept components 0..min(old, new) in their coordinates (scaled by
    /// `k`): their moments come back (m·k, v·k²) with the old step counters; new components
    /// start at m = 0 and v = the tensor's mean v, so their first Adam steps are of the
    /// ordinary size rather than ≈ lr on every coordinate.
    pub fn carry_moments(
        &mut self,
        be: &B,
        rows: usize,
        cols: usize,
        old: &Moments,
        k: f32,
    ) -> Result<()> {
        let (r, ro) = (self.rank, old.rank);
        let n = r.min(ro);
        let (Some(a), Some(b)) = (self.a.as_mut(), self.b.as_mut()) else {
            return Ok(());
        };
        // A: component j is row j.
        let (va_mean, vb_mean) = (mean(&old.a.1), mean(&old.b.1));
        let mut ma = vec![0.0f32; r * cols];
        let mut vaa = vec![va_mean; r * cols];
        for i in 0..n * cols {
            ma[i] = old.a.0[i] * k;
            vaa[i] = old.a.1[i] * k * k;
        }
        // B: component j is column j of every row.
        let mut mb = vec![0.0f32; rows * r];
        let mut vbb = vec![vb_mean; rows * r];
        for row in 0..rows {
            for j in 0..n {
                mb[row * r + j] = old.b.0[row * ro + j] * k;
                vbb[row * r + j] = old.b.1[row * ro + j] * k * k;
            }
        }
        for (p, m, v, step) in [(a, ma, vaa, old.a.2), (b, mb, vbb, old.b.2)] {
            let o = p.opt.as_mut().expect("adapter factors train");
            be.write(&mut o.m, &m)?;
            be.write(&mut o.v, &v)?;
            o.step = step;
        }
        Ok(())
    }

    /// The trainable tensors of this slot, A, B, λ (in that order).
    pub fn params_mut(&mut self) -> impl Iterator<Item = &mut Param<B>> {
        self.a
            .iter_mut()
            .chain(self.b.iter_mut())
            .chain(self.lambda.iter_mut())
    }

    pub fn params(&self) -> impl Iterator<Item = &Param<B>> {
        self.a.iter().chain(self.b.iter()).chain(self.lambda.iter())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeping_leading_components_drops_exactly_the_trailing_ones() {
        let (rows, cols) = (5, 7);
        let mut f = init_factors(rows, cols, 4, false, 3);
        for (i, b) in f.b.iter_mut().enumerate() {
            *b = ((i * 7 % 11) as f32 - 5.0) / 10.0;
        }
        let (s, s_new) = (2.0, 0.5);
        let kept = keep_leading(rows, cols, &f, s, 2, s_new);
        // Oracle: Σ_{j<2} s·b_j·a_jᵀ summed entry by entry from the old factors.
        let got = delta_w(rows, cols, &kept, s_new);
        for i in 0..rows {
            for c in 0..cols {
                let want: f32 = (0..2).map(|j| s * f.b[i * 4 + j] * f.a[j * cols + c]).sum();
                assert!((got[i * cols + c] - want).abs() < 1e-5, "({i}, {c})");
            }
        }
    }
}
