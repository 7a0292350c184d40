//! Every GPU kernel against the CPU backend (the oracle) on random inputs and several shapes,
//! odd ones included. Tolerances (see `common::assert_close`: |gpu − cpu| ≤ tol·(1 + |cpu|)):
//! - elementwise, bias, permute, embedding, adamw: exact or 1e-6 (same f32 arithmetic);
//! - gelu: 1e-5 (the kernel's erf approximation is within 1.5e-7 of the CPU's f64 erf);
//! - row reductions (layer norm, softmax, cross-entropy): 1e-5 (summation order may differ);
//! - matmul: 1e-5 relative to Σ_k |α·a_ik·b_kj| + |β·c_ij| (computed by the CPU backend on
//!   absolute values), the scale of the rounding error of any summation order;
//! - sum / sum of squares: 1e-5 relative to Σ|x| (f32 tree on the GPU vs f64 on the CPU).
//!
//! Without an adapter the tests print that they skipped (ADARANK_REQUIRE_GPU=1 fails them).

mod common;

use adarank::backend::cpu::Cpu;
use adarank::backend::gpu::{GemmKernel, Gpu};
use adarank::backend::{AdamW, Attn, Backend, Gemm, Ids, MemKind, Tensor};
use common::{assert_close, rand_vec, test_gpu};

const K: MemKind = MemKind::Scratch;

fn up_both(g: &Gpu, c: &Cpu, data: &[f32]) -> (Tensor<Gpu>, Tensor<Cpu>) {
    (g.upload(data, K).unwrap(), c.upload(data, K).unwrap())
}

fn down(g: &Gpu, t: &Tensor<Gpu>) -> Vec<f32> {
    g.download(t).unwrap()
}

fn abs(v: &[f32]) -> Vec<f32> {
    v.iter().map(|x| x.abs()).collect()
}

fn check_matmul(g: &Gpu, kernel: GemmKernel, spec: Gemm, seed: u64) {
    let cpu = Cpu::new();
    let (ea, eb, ec) = spec.extents();
    let (a, b, c0) = (
        rand_vec(ea, seed),
        rand_vec(eb, seed + 1),
        rand_vec(ec, seed + 2),
    );
    let (ga, ca) = up_both(g, &cpu, &a);
    let (gb, cb) = up_both(g, &cpu, &b);
    let (mut gc, mut cc) = up_both(g, &cpu, &c0);
    g.matmul_with(kernel, &ga, &gb, &mut gc, &spec);
    cpu.matmul(&ca, &cb, &mut cc, &spec);
    // The error scale of each element: the same product on absolute values.
    let mag_spec = Gemm {
        alpha: spec.alpha.abs(),
        beta: spec.beta.abs(),
        ..spec
    };
    let (aa, ab) = (
        cpu.upload(&abs(&a), K).unwrap(),
        cpu.upload(&abs(&b), K).unwrap(),
    );
    let mut mag = cpu.upload(&abs(&c0), K).unwrap();
    cpu.matmul(&aa, &ab, &mut mag, &mag_spec);
    let got = down(g, &gc);
    for (i, ((g, w), m)) in got.iter().zip(&cc.buf).zip(&mag.buf).enumerate() {
        let tol = 1e-5 * (1.0 + m);
        assert!(
            (g - w).abs() <= tol,
            "{kernel:?} {spec:?}: C[{i}] = {g} but the CPU backend says {w} (tolerance {tol})"
        );
    }
}

fn matmul_shapes() -> Vec<(usize, usize, usize)> {
    vec![
        (1, 1, 1),
        (7, 13, 5),
        (65, 127, 33),
        (64, 128, 16),
        (3, 300, 1),
        (130, 9, 70),
    ]
}

/// `kernel` on each shape in all four layouts, plain and with α = 0.5, β = −1.5; seeds from
/// `seed`, 3 apart per layout.
fn check_every_layout(g: &Gpu, kernel: GemmKernel, shapes: &[(usize, usize, usize)], seed: u64) {
    let mut seed = seed;
    for &(m, n, k) in shapes {
        for spec in [
            Gemm::nn(m, n, k),
            Gemm::nt(m, n, k),
            Gemm::tn(m, n, k),
            Gemm::tt(m, n, k),
        ] {
            check_matmul(g, kernel, spec, seed);
            check_matmul(g, kernel, spec.alpha(0.5).beta(-1.5), seed + 7);
            seed += 3;
        }
    }
}

fn check_all_matmul(kernel: GemmKernel) {
    let Some(g) = test_gpu() else { return };
    check_every_layout(&g, kernel, &matmul_shapes(), 10);
    // k = 0: C = beta·C.
    check_matmul(&g, kernel, Gemm::nn(5, 6, 0).beta(2.0), 1);
    // The large shape, once per transpose pair that the model uses (NT forward, TN weight grad).
    check_matmul(&g, kernel, Gemm::nt(256, 384, 1536), 2);
    check_matmul(&g, kernel, Gemm::tn(256, 384, 1536).accumulate(), 3);
    // Batched (attention: [B·H, T, D] · [B·H, T, D]ᵀ), with a broadcast operand (stride 0).
    check_matmul(
        &g,
        kernel,
        Gemm::nt(17, 19, 8).batched(6, 17 * 8, 19 * 8, 17 * 19),
        4,
    );
    check_matmul(
        &g,
        kernel,
        Gemm::nn(9, 5, 11)
            .batched(4, 0, 55, 60)
            .alpha(2.0)
            .beta(0.25),
        5,
    );
    check_matmul(
        &g,
        kernel,
        Gemm::tt(33, 31, 29).batched(3, 33 * 29, 0, 33 * 31),
        6,
    );
}

#[test]
fn matmul_register_blocked_matches_cpu() {
    check_all_matmul(GemmKernel::RegisterBlocked);
}

#[test]
fn matmul_tiled_matches_cpu() {
    check_all_matmul(GemmKernel::Tiled);
}

#[test]
fn matmul_subgroup_matches_cpu() {
    let Some(g) = test_gpu() else { return };
    // On lavapipe the subgroup kernel must really run, not its register-blocked fallback.
    if g.is_cpu_adapter() {
        assert!(g.has_subgroups_of_8(), "{} has no subgroups of 8", g.name());
    }
    // Whole 128×64 tiles (the shapes the kernel takes), every transpose, alpha/beta, batches.
    check_every_layout(
        &g,
        GemmKernel::Subgroup,
        &[(128, 64, 1), (128, 64, 37), (256, 128, 70)],
        40,
    );
    check_matmul(
        &g,
        GemmKernel::Subgroup,
        Gemm::nt(128, 64, 24).batched(3, 128 * 24, 0, 128 * 64),
        8,
    );
    // Everything else runs split (the edges and k < 16 on the small tiles), and must be right.
    check_all_matmul(GemmKernel::Subgroup);
}

#[test]
fn matmul_subgroup_small_matches_cpu() {
    let Some(g) = test_gpu() else { return };
    if g.is_cpu_adapter() {
        assert!(g.has_subgroups_of_8(), "{} has no subgroups of 8", g.name());
    }
    // Each tile (16×8 for n ≤ 8, 1×64 for m ≤ 8, 8×32 otherwise) on whole and partial blocks:
    // LoRA's rank-r shapes (x·Aᵀ, dY·B, dB, dA, s·h·Bᵀ), attention's batched per-head products.
    let shapes = [
        (300, 8, 37),
        (129, 3, 70),
        (8, 200, 300),
        (5, 70, 33),
        (70, 33, 65),
        (200, 96, 8),
    ];
    check_every_layout(&g, GemmKernel::SubgroupSmall, &shapes, 60);
    check_matmul(
        &g,
        GemmKernel::SubgroupSmall,
        Gemm::nt(64, 64, 32).batched(5, 64 * 32, 64 * 32, 64 * 64),
        9,
    );
    check_all_matmul(GemmKernel::SubgroupSmall);
}

#[test]
fn matmul_beta_zero_ignores_nan_in_c() {
    let Some(g) = test_gpu() else { return };
    for kernel in [
        GemmKernel::RegisterBlocked,
        GemmKernel::Tiled,
        GemmKernel::Subgroup,
    ] {
        for (m, n, k) in [(3, 5, 4), (128, 64, 4)] {
            let a = g.upload(&rand_vec(m * k, 1), K).unwrap();
            let b = g.upload(&rand_vec(k * n, 2), K).unwrap();
            let mut c = g.upload(&vec![f32::NAN; m * n], K).unwrap();
            g.matmul_with(kernel, &a, &b, &mut c, &Gemm::nn(m, n, k));
            assert!(down(&g, &c).iter().all(|v| v.is_finite()), "{kernel:?}");
        }
    }
}

#[test]
fn elementwise_ops_match_cpu() {
    let Some(g) = test_gpu() else { return };
    let cpu = Cpu::new();
    for n in [1usize, 3, 255, 256, 257, 100_003] {
        let (x, y) = (rand_vec(n, n as u64), rand_vec(n, n as u64 + 1));
        let (gx, cx) = up_both(&g, &cpu, &x);
        let (mut gy, mut cy) = up_both(&g, &cpu, &y);
        g.axpy(-0.75, &gx, &mut gy);
        cpu.axpy(-0.75, &cx, &mut cy);
        assert_close("axpy", &down(&g, &gy), &cy.buf, 1e-6);
        g.scale(&mut gy, 3.5);
        cpu.scale(&mut cy, 3.5);
        assert_close("scale", &down(&g, &gy), &cy.buf, 1e-6);
        let (mut go, mut co) = (g.zeros(n, K).unwrap(), cpu.zeros(n, K).unwrap());
        g.mul(&gx, &gy, &mut go);
        cpu.mul(&cx, &cy, &mut co);
        assert_close("mul", &down(&g, &go), &co.buf, 1e-6);
        g.fill(&mut go, -2.5);
        assert!(down(&g, &go).iter().all(|&v| v == -2.5), "fill");
        g.fill(&mut go, 0.0);
        assert!(down(&g, &go).iter().all(|&v| v == 0.0), "fill 0");
        let mut big = g.upload(&vec![9.0; n + 5], K).unwrap();
        g.copy(&gx, &mut big);
        let got = down(&g, &big);
        assert_eq!(&got[..n], &x[..], "copy");
        assert_eq!(&got[n..], &[9.0; 5], "copy past src");
        g.gelu_forward(&gx, &mut go);
        cpu.gelu_forward(&cx, &mut co);
        assert_close("gelu_forward", &down(&g, &go), &co.buf, 1e-5);
        g.gelu_backward(&gx, &gy, &mut go);
        cpu.gelu_backward(&cx, &cy, &mut co);
        assert_close("gelu_backward", &down(&g, &go), &co.buf, 1e-5);
    }
}

#[test]
fn gelu_matches_cpu_over_a_wide_range() {
    let Some(g) = test_gpu() else { return };
    let cpu = Cpu::new();
    // A grid over [−10, 10] with 0 exactly, and 4001 values: the last 1 on the scalar path, the
    // rest (when the length is a multiple of 4) on the vec4 one.
    let mut x: Vec<f32> = (0..4000)
        .map(|i| -10.0 + (i as f32 + 0.5) * 0.005)
        .collect();
    x.push(0.0);
    for x in [&x[..4000], &x[..]] {
        gelu_both(&g, &cpu, x);
    }
}

fn gelu_both(g: &Gpu, cpu: &Cpu, x: &[f32]) {
    let (gx, cx) = up_both(g, cpu, x);
    let (mut gy, mut cy) = (g.zeros(x.len(), K).unwrap(), cpu.zeros(x.len(), K).unwrap());
    g.gelu_forward(&gx, &mut gy);
    cpu.gelu_forward(&cx, &mut cy);
    assert_close("gelu_forward", &down(g, &gy), &cy.buf, 1e-5);
    let ones: Vec<f32> = (0..x.len()).map(|i| 1.0 + (i % 7) as f32 * 0.25).collect();
    let (gd, cd) = up_both(g, cpu, &ones);
    g.gelu_backward(&gx, &gd, &mut gy);
    cpu.gelu_backward(&cx, &cd, &mut cy);
    assert_close("gelu_backward", &down(g, &gy), &cy.buf, 1e-5);
}

#[test]
fn row_ops_match_cpu_at_odd_widths() {
    let Some(g) = test_gpu() else { return };
    let cpu = Cpu::new();
    for (rows, cols) in [
        (1usize, 1usize),
        (5, 3),
        (33, 384),
        (7, 1031),
        (70, 65),
        (9, 12),
    ] {
        let n = rows * cols;
        let seed = (rows * 1000 + cols) as u64;
        let x = rand_vec(n, seed);
        let v = rand_vec(cols, seed + 1);
        let (gx, cx) = up_both(&g, &cpu, &x);
        let (gv, cv) = up_both(&g, &cpu, &v);
        // mul_cols
        let (mut go, mut co) = (g.zeros(n, K).unwrap(), cpu.zeros(n, K).unwrap());
        g.mul_cols(&gx, &gv, &mut go, rows, cols);
        cpu.mul_cols(&cx, &cv, &mut co, rows, cols);
        assert_close("mul_cols", &down(&g, &go), &co.buf, 1e-6);
        // add_bias
        g.add_bias(&mut go, &gv, rows, cols);
        cpu.add_bias(&mut co, &cv, rows, cols);
        assert_close("add_bias", &down(&g, &go), &co.buf, 1e-6);
        // col_sum, overwrite then accumulate
        let (mut gs, mut cs) = up_both(&g, &cpu, &rand_vec(cols, seed + 2));
        g.col_sum(&gx, &mut gs, rows, cols, false);
        cpu.col_sum(&cx, &mut cs, rows, cols, false);
        assert_close("col_sum", &down(&g, &gs), &cs.buf, 1e-6);
        g.col_sum(&gx, &mut gs, rows, cols, true);
        cpu.col_sum(&cx, &mut cs, rows, cols, true);
        assert_close("col_sum accumulate", &down(&g, &gs), &cs.buf, 1e-6);
        // layer norm forward and backward
        let gamma = rand_vec(cols, seed + 3);
        let beta = rand_vec(cols, seed + 4);
        let (ggm, cgm) = up_both(&g, &cpu, &gamma);
        let (gbt, cbt) = up_both(&g, &cpu, &beta);
        let (mut gy, mut cy) = (g.zeros(n, K).unwrap(), cpu.zeros(n, K).unwrap());
        let (mut gm, mut cm) = (g.zeros(rows, K).unwrap(), cpu.zeros(rows, K).unwrap());
        let (mut gr, mut cr) = (g.zeros(rows, K).unwrap(), cpu.zeros(rows, K).unwrap());
        g.layernorm_forward(&gx, &ggm, &gbt, &mut gy, &mut gm, &mut gr, rows, cols, 1e-5);
        cpu.layernorm_forward(&cx, &cgm, &cbt, &mut cy, &mut cm, &mut cr, rows, cols, 1e-5);
        assert_close("layernorm y", &down(&g, &gy), &cy.buf, 1e-5);
        assert_close("layernorm mean", &down(&g, &gm), &cm.buf, 1e-6);
        // rstd of a one-wide row is 1/sqrt(eps): compare relatively.
        assert_close("layernorm rstd", &down(&g, &gr), &cr.buf, 1e-5);
        let dy = rand_vec(n, seed + 5);
        let (gdy, cdy) = up_both(&g, &cpu, &dy);
        let (mut gdx, mut cdx) = (g.zeros(n, K).unwrap(), cpu.zeros(n, K).unwrap());
        let (mut gdg, mut cdg) = up_both(&g, &cpu, &rand_vec(cols, seed + 6));
        let (mut gdb, mut cdb) = up_both(&g, &cpu, &rand_vec(cols, seed + 7));
        g.layernorm_backward(
            &gdy,
            &gx,
            &ggm,
            &gm,
            &gr,
            &mut gdx,
            Some(&mut gdg),
            Some(&mut gdb),
            rows,
            cols,
        );
        cpu.layernorm_backward(
            &cdy,
            &cx,
            &cgm,
            &cm,
            &cr,
            &mut cdx,
            Some(&mut cdg),
            Some(&mut cdb),
            rows,
            cols,
        );
        // dx of a one-wide row is 0 up to rounding amplified by rstd = 1/sqrt(eps).
        let tol = if cols == 1 { 1e-2 } else { 1e-4 };
        assert_close("layernorm dx", &down(&g, &gdx), &cdx.buf, tol);
        assert_close("layernorm dgamma", &down(&g, &gdg), &cdg.buf, 1e-4);
        assert_close("layernorm dbeta", &down(&g, &gdb), &cdb.buf, 1e-5);
    }
}

#[test]
fn softmax_matches_cpu_with_causal_and_key_masks() {
    let Some(g) = test_gpu() else { return };
    let cpu = Cpu::new();
    for (batch, heads, tq, tk, causal, masked) in [
        (1, 1, 1, 1, false, false),
        (2, 3, 5, 5, true, false),
        (2, 2, 7, 9, true, true),
        (3, 1, 4, 300, false, true),
        (1, 2, 3, 1000, true, false),
        (2, 3, 70, 64, true, true),
    ] {
        let spec = Attn {
            batch,
            heads,
            kv_heads: heads,
            tq,
            tk,
            scale: 0.37,
            causal,
        };
        let seed = (tq * 100 + tk) as u64;
        let s: Vec<f32> = rand_vec(spec.len(), seed).iter().map(|v| v * 8.0).collect();
        // Key mask: drop every third key, and all keys of the last batch item (an empty row).
        let mask: Vec<f32> = (0..batch * tk)
            .map(|i| {
                if i % 3 == 1 || i / tk == batch - 1 {
                    0.0
                } else {
                    1.0
                }
            })
            .collect();
        let (gs, cs) = up_both(&g, &cpu, &s);
        let (gm, cm) = up_both(&g, &cpu, &mask);
        let (mut gp, mut cp) = up_both(&g, &cpu, &vec![7.0; spec.len()]);
        g.softmax_forward(&gs, &mut gp, masked.then_some(&gm), &spec);
        cpu.softmax_forward(&cs, &mut cp, masked.then_some(&cm), &spec);
        assert_close("softmax_forward", &down(&g, &gp), &cp.buf, 1e-5);
        let dp = rand_vec(spec.len(), seed + 1);
        let (gdp, cdp) = up_both(&g, &cpu, &dp);
        let (mut gds, mut cds) = (
            g.zeros(spec.len(), K).unwrap(),
            cpu.zeros(spec.len(), K).unwrap(),
        );
        g.softmax_backward(&gp, &gdp, &mut gds, &spec);
        cpu.softmax_backward(&cp, &cdp, &mut cds, &spec);
        assert_close("softmax_backward", &down(&g, &gds), &cds.buf, 1e-5);
    }
}

#[test]
fn embedding_matches_cpu_and_backward_is_bit_exact() {
    let Some(g) = test_gpu() else { return };
    let cpu = Cpu::new();
    for (vocab, dim, n) in [(1usize, 1usize, 1usize), (50, 7, 40), (1000, 384, 300)] {
        let ig = Ids::<Cpu>::IGNORE;
        let ids: Vec<u32> = (0..n)
            .map(|i| {
                if i % 11 == 5 {
                    ig
                } else {
                    ((i * 7919) % vocab) as u32 % (vocab as u32).min(13)
                }
            })
            .collect();
        let table = rand_vec(vocab * dim, 3);
        let (gt, ct) = up_both(&g, &cpu, &table);
        let (gi, ci) = (g.ids(&ids).unwrap(), cpu.ids(&ids).unwrap());
        let (mut go, mut co) = up_both(&g, &cpu, &rand_vec(n * dim, 4));
        g.embedding_forward(&gi, &gt, &mut go, dim, true);
        cpu.embedding_forward(&ci, &ct, &mut co, dim, true);
        assert_close(
            "embedding_forward accumulate",
            &down(&g, &go),
            &co.buf,
            1e-6,
        );
        g.embedding_forward(&gi, &gt, &mut go, dim, false);
        cpu.embedding_forward(&ci, &ct, &mut co, dim, false);
        assert_eq!(down(&g, &go), co.buf, "embedding_forward");
        let dout = rand_vec(n * dim, 5);
        let (gd, cd) = up_both(&g, &cpu, &dout);
        let (mut gdt, mut cdt) = up_both(&g, &cpu, &rand_vec(vocab * dim, 6));
        g.embedding_backward(&gi, &gd, &mut gdt, dim);
        cpu.embedding_backward(&ci, &cd, &mut cdt, dim);
        assert_eq!(
            down(&g, &gdt),
            cdt.buf,
            "embedding_backward must equal the CPU bit for bit"
        );
    }
}

#[test]
fn cross_entropy_matches_cpu_with_ignored_rows() {
    let Some(g) = test_gpu() else { return };
    let cpu = Cpu::new();
    for (rows, classes) in [(1usize, 1usize), (9, 3), (20, 1000), (3, 5000)] {
        let logits: Vec<f32> = rand_vec(rows * classes, 8)
            .iter()
            .map(|v| v * 6.0)
            .collect();
        let targets: Vec<u32> = (0..rows)
            .map(|r| {
                if r % 4 == 2 {
                    Ids::<Cpu>::IGNORE
                } else {
                    ((r * 31) % classes) as u32
                }
            })
            .collect();
        let (gl, cl) = up_both(&g, &cpu, &logits);
        let (gt, ct) = (g.ids(&targets).unwrap(), cpu.ids(&targets).unwrap());
        let (mut gd, mut cd) = up_both(&g, &cpu, &vec![3.0; rows * classes]);
        let (mut gloss, mut closs) = up_both(&g, &cpu, &vec![3.0; rows]);
        g.cross_entropy(&gl, &gt, &mut gd, &mut gloss, rows, classes, 0.125);
        cpu.cross_entropy(&cl, &ct, &mut cd, &mut closs, rows, classes, 0.125);
        assert_close("cross_entropy dlogits", &down(&g, &gd), &cd.buf, 1e-5);
        assert_close("cross_entropy losses", &down(&g, &gloss), &closs.buf, 1e-5);
    }
}

#[test]
fn adamw_matches_cpu() {
    let Some(g) = test_gpu() else { return };
    let cpu = Cpu::new();
    let n = 10_007;
    let (mut gp, mut cp) = up_both(&g, &cpu, &rand_vec(n, 1));
    let (mut gm, mut cm) = up_both(
        &g,
        &cpu,
        &rand_vec(n, 2).iter().map(|v| v * 0.1).collect::<Vec<_>>(),
    );
    let (mut gv, mut cv) = up_both(
        &g,
        &cpu,
        &rand_vec(n, 3)
            .iter()
            .map(|v| v.abs() * 0.01)
            .collect::<Vec<_>>(),
    );
    for step in 1..=3 {
        let grad = rand_vec(n, 10 + step as u64);
        let (gg, cg) = up_both(&g, &cpu, &grad);
        let cfg = AdamW {
            lr: 1e-2,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
            step,
        };
        g.adamw(&mut gp, &gg, &mut gm, &mut gv, &cfg, None);
        cpu.adamw(&mut cp, &cg, &mut cm, &mut cv, &cfg, None);
    }
    assert_close("adamw param", &down(&g, &gp), &cp.buf, 1e-6);
    assert_close("adamw m", &down(&g, &gm), &cm.buf, 1e-6);
    assert_close("adamw v", &down(&g, &gv), &cv.buf, 1e-6);
}

#[test]
fn reductions_match_cpu() {
    let Some(g) = test_gpu() else { return };
    let cpu = Cpu::new();
    let (mut gout, mut cout) = up_both(&g, &cpu, &[5.0; 8]);
    for (slot, n) in [1usize, 4095, 4096, 4097, 1_000_003]
        .into_iter()
        .enumerate()
    {
        let x = rand_vec(n, n as u64);
        let (gx, cx) = up_both(&g, &cpu, &x);
        let l1: f32 = x.iter().map(|v| v.abs()).sum();
        g.sum(&gx, &mut gout, slot);
        cpu.sum(&cx, &mut cout, slot);
        let got = down(&g, &gout)[slot];
        assert!(
            (got - cout.buf[slot]).abs() <= 1e-5 * (1.0 + l1),
            "sum of {n}: {got} vs {}",
            cout.buf[slot]
        );
        g.sumsq(&gx, &mut gout, slot + 1);
        cpu.sumsq(&cx, &mut cout, slot + 1);
        let got = down(&g, &gout)[slot + 1];
        let want = cout.buf[slot + 1];
        assert!(
            (got - want).abs() <= 1e-5 * (1.0 + want),
            "sumsq of {n}: {got} vs {want}"
        );
    }
    // The other slots are left alone.
    let empty = g.zeros(0, K).unwrap();
    g.sum(&empty, &mut gout, 7);
    assert_eq!(down(&g, &gout)[7], 0.0);
}

#[test]
fn permute0213_matches_cpu() {
    let Some(g) = test_gpu() else { return };
    let cpu = Cpu::new();
    for dims in [
        [1, 1, 1, 1],
        [2, 3, 5, 7],
        [4, 16, 12, 64],
        [3, 70, 9, 13],
        [2, 5, 3, 4],
        [3, 9, 70, 12],
    ] {
        let n: usize = dims.iter().product();
        let (gx, cx) = up_both(&g, &cpu, &rand_vec(n, 1));
        let (mut gy, mut cy) = (g.zeros(n, K).unwrap(), cpu.zeros(n, K).unwrap());
        g.permute0213(&gx, &mut gy, dims);
        cpu.permute0213(&cx, &mut cy, dims);
        assert_eq!(down(&g, &gy), cy.buf, "permute0213 {dims:?}");
    }
}

/// RMSNorm forward and backward (dgamma accumulating onto non-zero values) at odd widths, one
/// row up to more rows than a workgroup: 1e-5 forward, 1e-4 backward (row sums in another
/// order, amplified by rstd).
#[test]
fn rmsnorm_matches_cpu_at_odd_widths() {
    let Some(g) = test_gpu() else { return };
    let cpu = Cpu::new();
    for (rows, cols) in [(1usize, 1usize), (5, 7), (70, 37), (130, 576), (3, 1031)] {
        let seed = (rows * 1000 + cols) as u64;
        let x: Vec<f32> = rand_vec(rows * cols, seed)
            .iter()
            .map(|v| 3.0 * v + 0.2)
            .collect();
        let gamma = rand_vec(cols, seed + 1);
        let (gx, cx) = up_both(&g, &cpu, &x);
        let (gg, cg) = up_both(&g, &cpu, &gamma);
        let (mut gy, mut cy) = up_both(&g, &cpu, &vec![7.0; rows * cols]);
        let (mut gr, mut cr) = up_both(&g, &cpu, &vec![7.0; rows]);
        g.rmsnorm_forward(&gx, &gg, &mut gy, &mut gr, rows, cols, 1e-5);
        cpu.rmsnorm_forward(&cx, &cg, &mut cy, &mut cr, rows, cols, 1e-5);
        assert_close("rmsnorm y", &down(&g, &gy), &cy.buf, 1e-5);
        assert_close("rmsnorm rstd", &down(&g, &gr), &cr.buf, 1e-5);
        let (gdy, cdy) = up_both(&g, &cpu, &rand_vec(rows * cols, seed + 2));
        let (mut gdx, mut cdx) = up_both(&g, &cpu, &vec![7.0; rows * cols]);
        let (mut gdg, mut cdg) = up_both(&g, &cpu, &vec![0.5; cols]);
        g.rmsnorm_backward(&gdy, &gx, &gg, &gr, &mut gdx, Some(&mut gdg), rows, cols);
        cpu.rmsnorm_backward(&cdy, &cx, &cg, &cr, &mut cdx, Some(&mut cdg), rows, cols);
        assert_close("rmsnorm dx", &down(&g, &gdx), &cdx.buf, 1e-4);
        assert_close("rmsnorm dgamma", &down(&g, &gdg), &cdg.buf, 1e-4);
        // Without dgamma, dx alone.
        g.rmsnorm_backward(&gdy, &gx, &gg, &gr, &mut gdx, None, rows, cols);
        assert_close("rmsnorm dx alone", &down(&g, &gdx), &cdx.buf, 1e-4);
    }
}

/// RoPE both ways (forward and inverse) with repeated and out-of-order positions, at head
/// dims 2 (one pair) to 64 and odd head counts; same f32 arithmetic, so 1e-6.
#[test]
fn rope_matches_cpu_both_ways() {
    let Some(g) = test_gpu() else { return };
    let cpu = Cpu::new();
    for (n, heads, d, positions) in [
        (1usize, 1usize, 2usize, 1usize),
        (7, 3, 10, 12),
        (130, 9, 64, 300),
        (65, 2, 6, 4),
    ] {
        let table = adarank::model::rope::rope_table(d, positions, 10_000.0, None);
        let pos: Vec<u32> = (0..n)
            .map(|i| ((i * 7919 + 3) % positions) as u32)
            .collect();
        let (gt, ct) = up_both(&g, &cpu, &table);
        let (gp, cp) = (g.ids(&pos).unwrap(), cpu.ids(&pos).unwrap());
        let x = rand_vec(n * heads * d, (n * d) as u64);
        let (gx, cx) = up_both(&g, &cpu, &x);
        for inverse in [false, true] {
            let (mut gy, mut cy) = up_both(&g, &cpu, &vec![7.0; n * heads * d]);
            g.rope(&gx, &mut gy, &gt, &gp, heads, d, inverse);
            cpu.rope(&cx, &mut cy, &ct, &cp, heads, d, inverse);
            let what = format!("rope {n}×{heads}×{d} inverse {inverse}");
            assert_close(&what, &down(&g, &gy), &cy.buf, 1e-6);
        }
    }
}

/// A position beyond the table, or an IGNORE position, is refused and named by the next sync
/// (on a device of its own: errors are reported device-wide).
#[test]
fn rope_refuses_positions_outside_the_table() {
    if test_gpu().is_none() {
        return;
    }
    let g = Gpu::open(adarank::backend::gpu::AdapterFilter::AllowCpu)
        .unwrap()
        .unwrap();
    let table = g
        .upload(&adarank::model::rope::rope_table(4, 5, 10_000.0, None), K)
        .unwrap();
    let x = g.zeros(2 * 4, K).unwrap();
    let mut y = g.zeros(2 * 4, K).unwrap();
    g.rope(&x, &mut y, &table, &g.ids(&[1, 5]).unwrap(), 1, 4, false);
    let err = format!("{:#}", g.sync().unwrap_err());
    assert!(
        err.contains("rope") && err.contains("outside the table of 5 positions"),
        "{err}"
    );
    g.rope(
        &x,
        &mut y,
        &table,
        &g.ids(&[1, Ids::<Gpu>::IGNORE]).unwrap(),
        1,
        4,
        false,
    );
    let err = format!("{:#}", g.sync().unwrap_err());
    assert!(err.contains("IGNORE"), "{err}");
}

/// SwiGLU forward and backward on lengths with and without the vec4 path, gates out to the
/// far tails (σ saturating): 1e-5 (the GPU's exp may differ from the CPU's by an ulp or two).
#[test]
fn swiglu_matches_cpu() {
    let Some(g) = test_gpu() else { return };
    let cpu = Cpu::new();
    for n in [1usize, 7, 1024, 4099] {
        let mut gate: Vec<f32> = rand_vec(n, n as u64).iter().map(|v| 12.0 * v).collect();
        if n > 4 {
            gate[..4].copy_from_slice(&[-150.0, -89.0, 89.0, 150.0]);
        }
        let upv = rand_vec(n, n as u64 + 1);
        let dout = rand_vec(n, n as u64 + 2);
        let (gg, cg) = up_both(&g, &cpu, &gate);
        let (gu, cu) = up_both(&g, &cpu, &upv);
        let (gd, cd) = up_both(&g, &cpu, &dout);
        let (mut go, mut co) = up_both(&g, &cpu, &vec![7.0; n]);
        g.swiglu_forward(&gg, &gu, &mut go);
        cpu.swiglu_forward(&cg, &cu, &mut co);
        assert_close(
            &format!("swiglu_forward {n}"),
            &down(&g, &go),
            &co.buf,
            1e-5,
        );
        let (mut gdg, mut cdg) = up_both(&g, &cpu, &vec![7.0; n]);
        let (mut gdu, mut cdu) = up_both(&g, &cpu, &vec![7.0; n]);
        g.swiglu_backward(&gg, &gu, &gd, &mut gdg, &mut gdu);
        cpu.swiglu_backward(&cg, &cu, &cd, &mut cdg, &mut cdu);
        assert_close(
            &format!("swiglu dgate {n}"),
            &down(&g, &gdg),
            &cdg.buf,
            1e-5,
        );
        assert_close(&format!("swiglu dup {n}"), &down(&g, &gdu), &cdu.buf, 1e-5);
    }
}

/// Grouped-query attention (the GPU runs the unfused composition) against the CPU backend's
/// fused kernel: kv heads 1, a divisor and all of the query heads, causal with tq < tk, a key
/// mask; 1e-4 (per-head GEMMs summed in another order, through the softmax).
#[test]
fn grouped_query_attention_matches_cpu() {
    let Some(g) = test_gpu() else { return };
    let cpu = Cpu::new();
    for (batch, heads, kv_heads, tq, tk, d, causal) in [
        (2, 4, 1, 5, 7, 8, true),
        (1, 9, 3, 13, 13, 16, true),
        (3, 6, 2, 9, 9, 5, false),
        (2, 3, 3, 6, 6, 4, true),
    ] {
        let spec = Attn {
            batch,
            heads,
            kv_heads,
            tq,
            tk,
            scale: 1.0 / (d as f32).sqrt(),
            causal,
        };
        let (nq, nk) = (batch * tq * heads * d, batch * tk * kv_heads * d);
        let seed = (heads * 100 + kv_heads * 10 + d) as u64;
        let mask: Vec<f32> = (0..batch * tk)
            .map(|i| if i % 5 == 4 { 0.0 } else { 1.0 })
            .collect();
        let (gq, cq) = up_both(&g, &cpu, &rand_vec(nq, seed));
        let (gk, ck) = up_both(&g, &cpu, &rand_vec(nk, seed + 1));
        let (gv, cv) = up_both(&g, &cpu, &rand_vec(nk, seed + 2));
        let (gdc, cdc) = up_both(&g, &cpu, &rand_vec(nq, seed + 3));
        let (gm, cm) = up_both(&g, &cpu, &mask);
        let gz = |n| g.zeros(n, K).unwrap();
        let cz = |n| cpu.zeros(n, K).unwrap();
        let (mut gp, mut gc, mut gs) = (gz(spec.len()), gz(nq), gz(spec.len()));
        let (mut cp, mut cc, mut cs) = (cz(spec.len()), cz(nq), cz(spec.len()));
        g.attention_forward(
            &gq,
            &gk,
            &gv,
            Some(&gm),
            &mut gp,
            &mut gc,
            &mut gs,
            &spec,
            d,
        )
        .unwrap();
        cpu.attention_forward(
            &cq,
            &ck,
            &cv,
            Some(&cm),
            &mut cp,
            &mut cc,
            &mut cs,
            &spec,
            d,
        )
        .unwrap();
        let what = format!("attention H {heads} KVH {kv_heads} causal {causal}");
        assert_close(&format!("{what}: probs"), &down(&g, &gp), &cp.buf, 1e-4);
        assert_close(&format!("{what}: ctx"), &down(&g, &gc), &cc.buf, 1e-4);
        let (mut gdq, mut gdk, mut gdv) = (gz(nq), gz(nk), gz(nk));
        let (mut cdq, mut cdk, mut cdv) = (cz(nq), cz(nk), cz(nk));
        let (mut g1, mut g2, mut c1, mut c2) = (
            gz(spec.len()),
            gz(spec.len()),
            cz(spec.len()),
            cz(spec.len()),
        );
        g.attention_backward(
            &gq, &gk, &gv, &gp, &gdc, &mut gdq, &mut gdk, &mut gdv, &mut g1, &mut g2, &spec, d,
        )
        .unwrap();
        cpu.attention_backward(
            &cq, &ck, &cv, &cp, &cdc, &mut cdq, &mut cdk, &mut cdv, &mut c1, &mut c2, &spec, d,
        )
        .unwrap();
        assert_close(&format!("{what}: dq"), &down(&g, &gdq), &cdq.buf, 1e-4);
        assert_close(&format!("{what}: dk"), &down(&g, &gdk), &cdk.buf, 1e-4);
        assert_close(&format!("{what}: dv"), &down(&g, &gdv), &cdv.buf, 1e-4);
    }
}
