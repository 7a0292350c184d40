//! Spectra the engine hands to plugins: singular values of W0, of ΔW = s·B·diag(λ)·A, of a
//! gradient second moment, and of an input sample; effective and stable rank.

use nalgebra::DMatrix;

/// Singular values (largest first) of a row-major `rows × cols` matrix, from the eigenvalues of
/// the Gram matrix on its smaller side (W0 is computed once; the Gram route is far cheaper than
/// a full SVD on 768 × 3072 weights and exact enough for spectra summaries).
pub fn singular_values(rows: usize, cols: usize, data: &[f32]) -> Vec<f64> {
    if rows == 0 || cols == 0 {
        return vec![];
    }
    let m = DMatrix::<f64>::from_fn(rows, cols, |i, j| data[i * cols + j] as f64);
    let g = if rows <= cols {
        &m * m.transpose()
    } else {
        m.transpose() * &m
    };
    sym_eig_sv(g)
}

/// Singular values of a symmetric positive semi-definite second moment M = Σ gᵀg, as √eig.
pub fn sv_of_gram(n: usize, gram: &[f64]) -> Vec<f64> {
    if n == 0 {
        return vec![];
    }
    let g = DMatrix::<f64>::from_row_slice(n, n, gram);
    let g = (&g + g.transpose()) * 0.5;
    sym_eig_sv(g)
}

/// Iteration cap for nalgebra's eigen/SVD solvers: their unbounded forms never return on a
/// matrix holding NaN or infinity (a diverged run), which hung a whole experiment once.
pub const MAX_SOLVER_ITERATIONS: usize = 10_000;

/// √eig of a symmetric PSD matrix; all-NaN when the input is not finite or the solver fails,
/// so plugins see (and reject) NaN instead of the engine hanging.
fn sym_eig_sv(g: DMatrix<f64>) -> Vec<f64> {
    let n = g.nrows();
    if !g.iter().all(|v| v.is_finite()) {
        return vec![f64::NAN; n];
    }
    match nalgebra::linalg::SymmetricEigen::try_new(g, f64::EPSILON, MAX_SOLVER_ITERATIONS) {
        Some(e) => eig_to_sv(e.eigenvalues.iter().cloned()),
        None => vec![f64::NAN; n],
    }
}

fn eig_to_sv(e: impl Iterator<Item = f64>) -> Vec<f64> {
    let mut s: Vec<f64> = e.map(|x| x.max(0.0).sqrt()).collect();
    s.sort_by(|a, b| b.total_cmp(a));
    s
}

/// Singular values of ΔW = scale·B·diag(λ)·A with B: [rows, r], A: [r, cols], through thin QR
/// of B and Aᵀ and an r × r core, so the cost is O((rows + cols)·r²).
pub fn lowrank_singular_values(
    rows: usize,
    cols: usize,
    r: usize,
    b: &[f32],
    a: &[f32],
    lambda: Option<&[f32]>,
    scale: f32,
) -> Vec<f64> {
    if r == 0 || b.len() != rows * r || a.len() != r * cols {
        return vec![];
    }
    let bm = DMatrix::<f64>::from_fn(rows, r, |i, j| {
        b[i * r + j] as f64 * lambda.map_or(1.0, |l| l[j] as f64)
    });
    let at = DMatrix::<f64>::from_fn(cols, r, |i, j| a[j * cols + i] as f64);
    let rb = bm.qr().r();
    let ra = at.qr().r();
    let core = rb * ra.transpose() * scale as f64;
    let k = core.nrows().min(core.ncols());
    if !core.iter().all(|v| v.is_finite()) {
        return vec![f64::NAN; k];
    }
    let Some(svd) = core.try_svd(false, false, f64::EPSILON, MAX_SOLVER_ITERATIONS) else {
        return vec![f64::NAN; k];
    };
    let mut s: Vec<f64> = svd.singular_values.iter().cloned().collect();
    s.sort_by(|a, b| b.total_cmp(a));
    s
}

/// Accumulate gᵀg of a row-major `rows × n` matrix into `gram` (n × n, row-major).
pub fn add_gram(rows: usize, n: usize, g: &[f32], gram: &mut [f64]) {
    for row in g.chunks_exact(n).take(rows) {
        for i in 0..n {
            let gi = row[i] as f64;
            if gi == 0.0 {
                continue;
            }
            let out = &mut gram[i * n..(i + 1) * n];
            for (o, gj) in out.iter_mut().zip(row) {
                *o += gi * *gj as f64;
            }
        }
    }
}

/// Effective rank (Roy & Vetterli): exp of the entropy of the normalised singular values.
/// 0 for an all-zero spectrum.
pub fn effective_rank(sv: &[f64]) -> f64 {
    let total: f64 = sv.iter().map(|s| s.abs()).sum();
    if total <= 0.0 || !total.is_finite() {
        return 0.0;
    }
    let h: f64 = sv
        .iter()
        .map(|s| s.abs() / total)
        .filter(|p| *p > 0.0)
        .map(|p| -p * p.ln())
        .sum();
    h.exp()
}

/// Stable rank ‖W‖²_F / ‖W‖²₂ = Σσ² / σ_max². 0 for an all-zero spectrum.
pub fn stable_rank(sv: &[f64]) -> f64 {
    let max = sv.iter().cloned().fold(0.0, f64::max);
    if max <= 0.0 {
        return 0.0;
    }
    sv.iter().map(|s| s * s).sum::<f64>() / (max * max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gram_route_matches_full_svd() {
        let (r, c) = (7, 11);
        let data: Vec<f32> = (0..r * c)
            .map(|i| ((i * 37 % 23) as f32 - 11.0) / 7.0)
            .collect();
        let m = DMatrix::<f64>::from_fn(r, c, |i, j| data[i * c + j] as f64);
        let mut want: Vec<f64> = m.singular_values().iter().cloned().collect();
        want.sort_by(|a, b| b.total_cmp(a));
        for (a, b) in singular_values(r, c, &data).iter().zip(&want) {
            assert!((a - b).abs() < 1e-6 * want[0], "{a} vs {b}");
        }
        // Transposed shape goes through the other Gram side.
        let t: Vec<f32> = (0..c * r).map(|k| data[(k % r) * c + k / r]).collect();
        for (a, b) in singular_values(c, r, &t).iter().zip(&want) {
            assert!((a - b).abs() < 1e-6 * want[0]);
        }
    }

    #[test]
    fn lowrank_spectrum_matches_dense_product() {
        let (rows, cols, r) = (9, 6, 3);
        let b: Vec<f32> = (0..rows * r)
            .map(|i| ((i * 13 % 7) as f32 - 3.0) / 3.0)
            .collect();
        let a: Vec<f32> = (0..r * cols)
            .map(|i| ((i * 5 % 11) as f32 - 5.0) / 4.0)
            .collect();
        let lam = [2.0f32, 0.5, -1.0];
        let dense = DMatrix::<f64>::from_fn(rows, cols, |i, j| {
            (0..r)
                .map(|k| 0.7 * b[i * r + k] as f64 * lam[k] as f64 * a[k * cols + j] as f64)
                .sum()
        });
        let mut want: Vec<f64> = dense.singular_values().iter().cloned().collect();
        want.sort_by(|a, b| b.total_cmp(a));
        let got = lowrank_singular_values(rows, cols, r, &b, &a, Some(&lam), 0.7);
        assert_eq!(got.len(), r);
        for k in 0..r {
            assert!((got[k] - want[k]).abs() < 1e-6 * want[0].max(1.0)); // scale is f32
        }
    }

    #[test]
    fn effective_and_stable_rank_closed_forms() {
        // k equal singular values: both ranks are exactly k.
        assert!((effective_rank(&[2.0, 2.0, 2.0, 0.0]) - 3.0).abs() < 1e-12);
        assert!((stable_rank(&[2.0, 2.0, 2.0, 0.0]) - 3.0).abs() < 1e-12);
        // σ = (3, 1): p = (3/4, 1/4), erank = exp(H).
        let h: f64 = -(0.75f64 * 0.75f64.ln() + 0.25 * 0.25f64.ln());
        assert!((effective_rank(&[3.0, 1.0]) - h.exp()).abs() < 1e-12);
        assert!((stable_rank(&[3.0, 1.0]) - 10.0 / 9.0).abs() < 1e-12);
        assert_eq!(effective_rank(&[0.0, 0.0]), 0.0);
    }

    #[test]
    fn gram_accumulation_matches_product() {
        let g: Vec<f32> = (0..12).map(|i| i as f32 - 5.0).collect(); // 4 × 3
        let mut gram = vec![0.0; 9];
        add_gram(4, 3, &g, &mut gram);
        for i in 0..3 {
            for j in 0..3 {
                let want: f64 = (0..4).map(|r| (g[r * 3 + i] * g[r * 3 + j]) as f64).sum();
                assert_eq!(gram[i * 3 + j], want);
            }
        }
    }
}
