//! The GPU paths added for speed against the CPU backend, on odd shapes.
//!
//! - the subgroup GEMM's host-side split (tile-aligned interior on the subgroup kernel, right
//!   and bottom edges and k < 16 on its small-tile twin), f32 and bf16 B, single and batched;
//! - matmul with a bf16 B (every kernel, both model orientations): the GPU widens B in the
//!   kernel and keeps A in f32, so its oracle is the CPU's f32 matmul over the widened B, within
//!   1e-5 relative to Σ_k |α·a_ik·b_kj| + |β·c_ij| (as tests/gpu_ops.rs);
//! - embedding lookup from a bf16 table: bit-exact (widening is exact);
//! - attention forward and backward (the GPU's composed default) against the CPU's fused
//!   kernel, within 1e-5 scaled.
//!
//! Without an adapter the tests print that they skipped (ADARANK_REQUIRE_GPU=1 fails them).

mod common;

use adarank::backend::cpu::Cpu;
use adarank::backend::gpu::{GemmKernel, Gpu};
use adarank::backend::{Attn, Backend, DType, Gemm, MemKind, Tensor};
use common::{assert_close, rand_vec, test_gpu};

const K: MemKind = MemKind::Scratch;

fn widened(v: &[f32]) -> Vec<f32> {
    v.iter()
        .map(|&x| half::bf16::from_f32(x).to_f32())
        .collect()
}

fn check(g: &Gpu, kernel: GemmKernel, spec: Gemm, seed: u64) {
    check_b(g, kernel, spec, seed, true)
}

/// `spec` on the GPU with `kernel` against the CPU's f32 matmul; B stored bf16 when `bf16`.
fn check_b(g: &Gpu, kernel: GemmKernel, spec: Gemm, seed: u64, bf16: bool) {
    let cpu = Cpu::new();
    let (ea, eb, ec) = spec.extents();
    let (a, b, c0) = (
        rand_vec(ea, seed),
        rand_vec(eb, seed + 1),
        rand_vec(ec, seed + 2),
    );
    let b = if bf16 { b } else { widened(&b) };
    let gb = if bf16 {
        g.upload_bf16(&b, K).unwrap()
    } else {
        g.upload(&b, K).unwrap()
    };
    if bf16 {
        assert_eq!(gb.dtype(), DType::Bf16);
    }
    assert_eq!(g.download(&gb).unwrap(), widened(&b), "B download");
    let ga = g.upload(&a, K).unwrap();
    let mut gc = g.upload(&c0, K).unwrap();
    g.matmul_with(kernel, &ga, &gb, &mut gc, &spec);
    let (ca, cb) = (
        cpu.upload(&a, K).unwrap(),
        cpu.upload(&widened(&b), K).unwrap(),
    );
    let mut cc = cpu.upload(&c0, K).unwrap();
    cpu.matmul(&ca, &cb, &mut cc, &spec);
    let abs = |v: &[f32]| v.iter().map(|x| x.abs()).collect::<Vec<_>>();
    let (aa, ab) = (
        cpu.upload(&abs(&a), K).unwrap(),
        cpu.upload(&abs(&widened(&b)), K).unwrap(),
    );
    let mut mag = cpu.upload(&abs(&c0), K).unwrap();
    let mag_spec = Gemm {
        alpha: spec.alpha.abs(),
        beta: spec.beta.abs(),
        ..spec
    };
    cpu.matmul(&aa, &ab, &mut mag, &mag_spec);
    let got = g.download(&gc).unwrap();
    for (i, ((gv, w), m)) in got.iter().zip(&cc.buf).zip(&mag.buf).enumerate() {
        let tol = 1e-5 * (1.0 + m);
        assert!(
            (gv - w).abs() <= tol,
            "{kernel:?} {spec:?}, bf16 B: C[{i}] = {gv} but the CPU says {w} (tolerance {tol})"
        );
    }
}

#[test]
fn matmul_with_bf16_b_matches_cpu() {
    let Some(g) = test_gpu() else { return };
    let mut seed = 100;
    for kernel in [
        GemmKernel::RegisterBlocked,
        GemmKernel::Tiled,
        GemmKernel::Subgroup,
        GemmKernel::SubgroupSmall,
    ] {
        // Odd shapes and odd B lengths (the last word half empty), then whole subgroup tiles.
        for (m, n, k) in [
            (1, 1, 1),
            (7, 13, 5),
            (65, 33, 127),
            (128, 64, 37),
            (256, 128, 70),
        ] {
            for spec in [Gemm::nt(m, n, k), Gemm::nn(m, n, k)] {
                check(&g, kernel, spec, seed);
                check(&g, kernel, spec.alpha(0.5).beta(1.0), seed + 5);
                seed += 3;
            }
        }
    }
}

/// Shapes with a non-empty tile-aligned interior and both edges, in every orientation, f32 and
/// bf16 B, alone and batched; then shapes with only one edge, and none.
#[test]
fn subgroup_gemm_split_edges_match_cpu() {
    let Some(g) = test_gpu() else { return };
    if !g.has_subgroups_of_8() {
        eprintln!("skipped: {} has no subgroups of 8", g.name());
        return;
    }
    let mut seed = 300;
    for (m, n, k) in [
        (257, 130, 19),
        (200, 100, 37),
        (128, 70, 5),
        (130, 64, 9),
        (384, 192, 3),
    ] {
        for spec in [
            Gemm::nn(m, n, k),
            Gemm::nt(m, n, k),
            Gemm::tn(m, n, k),
            Gemm::tt(m, n, k),
        ] {
            for bf16 in [false, true] {
                check_b(&g, GemmKernel::Subgroup, spec, seed, bf16);
                check_b(
                    &g,
                    GemmKernel::Subgroup,
                    spec.alpha(0.5).beta(-1.5),
                    seed + 1,
                    bf16,
                );
                seed += 2;
            }
        }
    }
    let (m, n, k) = (131, 67, 6);
    check_b(
        &g,
        GemmKernel::Subgroup,
        Gemm::nt(m, n, k).batched(3, m * k, n * k, m * n),
        7,
        false,
    );
}

#[test]
fn embedding_from_a_bf16_table_is_exact() {
    let Some(g) = test_gpu() else { return };
    let cpu = Cpu::new();
    for (vocab, dim, n) in [(3usize, 1usize, 5usize), (50, 7, 40), (1000, 385, 300)] {
        let ids: Vec<u32> = (0..n).map(|i| ((i * 7919) % vocab) as u32).collect();
        let table = rand_vec(vocab * dim, 3);
        let gt = g.upload_bf16(&table, K).unwrap();
        let ct = cpu.upload_bf16(&table, K).unwrap();
        let (gi, ci) = (g.ids(&ids).unwrap(), cpu.ids(&ids).unwrap());
        let start = rand_vec(n * dim, 4);
        let mut go = g.upload(&start, K).unwrap();
        let mut co = cpu.upload(&start, K).unwrap();
        g.embedding_forward(&gi, &gt, &mut go, dim, true);
        cpu.embedding_forward(&ci, &ct, &mut co, dim, true);
        assert_eq!(
            g.download(&go).unwrap(),
            co.buf,
            "accumulate, {vocab}×{dim}"
        );
        g.embedding_forward(&gi, &gt, &mut go, dim, false);
        cpu.embedding_forward(&ci, &ct, &mut co, dim, false);
        assert_eq!(g.download(&go).unwrap(), co.buf, "{vocab}×{dim}");
    }
}

fn up<B: Backend>(be: &B, v: &[f32]) -> Tensor<B> {
    be.upload(v, K).unwrap()
}

#[test]
fn attention_matches_the_cpu_fused_kernel() {
    let Some(g) = test_gpu() else { return };
    let cpu = Cpu::new();
    for (ci, &(batch, heads, t, d, causal)) in
        [(2, 3, 7, 5, false), (3, 2, 9, 4, true)].iter().enumerate()
    {
        let spec = Attn {
            batch,
            heads,
            kv_heads: heads,
            tq: t,
            tk: t,
            scale: 1.0 / (d as f32).sqrt(),
            causal,
        };
        let n = batch * t * heads * d;
        let seed = 50 + ci as u64 * 10;
        let (q, k, v, dctx) = (
            rand_vec(n, seed),
            rand_vec(n, seed + 1),
            rand_vec(n, seed + 2),
            rand_vec(n, seed + 3),
        );
        let mask: Vec<f32> = (0..batch * t)
            .map(|i| if i % t == t - 1 { 0.0 } else { 1.0 })
            .collect();
        fn run<B: Backend>(be: &B, inputs: [&[f32]; 5], spec: &Attn, d: usize) -> [Vec<f32>; 5] {
            let [q, k, v, dctx, mask] = inputs.map(|x| up(be, x));
            let z = |len| be.zeros(len, K).unwrap();
            let n = q.len();
            let (mut probs, mut ctx, mut s1, mut s2) =
                (z(spec.len()), z(n), z(spec.len()), z(spec.len()));
            be.attention_forward(
                &q,
                &k,
                &v,
                Some(&mask),
                &mut probs,
                &mut ctx,
                &mut s1,
                spec,
                d,
            )
            .unwrap();
            let (mut dq, mut dk, mut dv) = (z(n), z(n), z(n));
            be.attention_backward(
                &q, &k, &v, &probs, &dctx, &mut dq, &mut dk, &mut dv, &mut s1, &mut s2, spec, d,
            )
            .unwrap();
            [&probs, &ctx, &dq, &dk, &dv].map(|t| be.download(t).unwrap())
        }
        let inputs = [&q[..], &k, &v, &dctx, &mask];
        let (gr, cr) = (run(&*g, inputs, &spec, d), run(&cpu, inputs, &spec, d));
        for (name, (a, b)) in ["probs", "ctx", "dq", "dk", "dv"]
            .iter()
            .zip(gr.iter().zip(&cr))
        {
            assert_close(&format!("attention case {ci}: {name}"), a, b, 1e-5);
        }
    }
}
