//! Frozen weights in GGUF's block formats (Q8_0, Q4_0, Q4_1) on the GPU backend.
//!
//! - matmul with a block-format B, on every GEMM kernel and both layouts the model uses (x·Wᵀ
//!   and dy·W), against the CPU backend's f32 matmul over the dequantized B: the kernels decode
//!   each value to the same f32 and multiply in f32, so the bound is that of any summation order,
//!   1e-5 relative to Σ_k |α·a_ik·b_kj| + |β·c_ij| (as tests/gpu_ops.rs);
//! - embedding lookup from a block-format table against the host dequantizer, on the fixture's
//!   corner blocks (f16 subnormal scales, an infinite Q4_1 offset, zero blocks): bit for bit for
//!   Q8_0 and Q4_0 (d·q is one rounding either way), within 1e-6 for Q4_1 (d·q + m may be fused);
//! - download dequantizes, write quantizes, the ledger counts the blocks' bytes.
//!
//! Without an adapter the tests print that they skipped (ADARANK_REQUIRE_GPU=1 fails them).

mod common;

use adarank::backend::cpu::Cpu;
use adarank::backend::gpu::{AdapterFilter, GemmKernel, Gpu};
use adarank::backend::{dequantize, quantize, Backend, DType, Gemm, Ids, MemKind};
use common::{assert_close, rand_vec, test_gpu};

const K: MemKind = MemKind::Scratch;
const FORMATS: [DType; 3] = [DType::Q8_0, DType::Q4_0, DType::Q4_1];

fn abs(v: &[f32]) -> Vec<f32> {
    v.iter().map(|x| x.abs()).collect()
}

/// `spec` with B = a `dtype` weight stored [rows, cols] on the GPU with `kernel`, against the
/// CPU's f32 matmul over the dequantized weight.
fn check(g: &Gpu, kernel: GemmKernel, dtype: DType, spec: Gemm, seed: u64) {
    let cpu = Cpu::new();
    let (ea, eb, ec) = spec.extents();
    let (a, c0) = (rand_vec(ea, seed), rand_vec(ec, seed + 2));
    let w: Vec<f32> = rand_vec(eb, seed + 1).iter().map(|v| 0.1 * v).collect();
    let bytes = quantize(dtype, &w).unwrap();
    let bw = dequantize(dtype, &bytes, eb).unwrap();
    let gb = g.upload_blocks(&bytes, dtype, eb, K).unwrap();
    let ga = g.upload(&a, K).unwrap();
    let mut gc = g.upload(&c0, K).unwrap();
    g.matmul_with(kernel, &ga, &gb, &mut gc, &spec);
    let (ca, cb) = (cpu.upload(&a, K).unwrap(), cpu.upload(&bw, K).unwrap());
    let mut cc = cpu.upload(&c0, K).unwrap();
    cpu.matmul(&ca, &cb, &mut cc, &spec);
    let (aa, ab) = (
        cpu.upload(&abs(&a), K).unwrap(),
        cpu.upload(&abs(&bw), K).unwrap(),
    );
    let mut mag = cpu.upload(&abs(&c0), K).unwrap();
    let mag_spec = Gemm {
        alpha: spec.alpha.abs(),
        beta: spec.beta.abs(),
        ..spec
    };
    cpu.matmul(&aa, &ab, &mut mag, &mag_spec);
    let got = g.download(&gc).unwrap();
    for (i, ((gv, want), m)) in got.iter().zip(&cc.buf).zip(&mag.buf).enumerate() {
        let tol = 1e-5 * (1.0 + m);
        assert!(
            (gv - want).abs() <= tol,
            "{kernel:?} {dtype:?} {spec:?}: C[{i}] = {gv} but the CPU says {want} (tolerance {tol})"
        );
    }
}

/// Forward x·Wᵀ (NT, W [n, k]) and backward dy·W (NN, W [k, n]) of a frozen weight, each with
/// the block-aligned dimension a multiple of 32 and the other odd; shapes that are whole
/// 128×64 tiles and shapes that leave edges for the small tiles.
fn layouts() -> Vec<Gemm> {
    let mut v = Vec::new();
    for &(m, free, aligned) in &[(7, 13, 64), (130, 65, 96), (128, 64, 32), (3, 200, 160)] {
        v.push(Gemm::nt(m, free, aligned));
        v.push(Gemm::nn(m, aligned, free));
    }
    v.push(Gemm::nt(65, 97, 64).alpha(0.5).beta(-1.5));
    v.push(Gemm::nn(129, 96, 33).accumulate());
    v
}

/// Every format on the default kernel (the decoding is one function shared by all kernels),
/// and every other kernel on Q4_1 (its reads of B through that function).
#[test]
fn quantized_matmul_matches_the_cpu_on_every_kernel() {
    let Some(g) = test_gpu() else { return };
    let default = g.gemm_kernel();
    let mut runs: Vec<(GemmKernel, DType)> = FORMATS.iter().map(|&d| (default, d)).collect();
    let mut others = vec![GemmKernel::RegisterBlocked, GemmKernel::Tiled];
    if g.has_subgroups_of_8() {
        others.extend([GemmKernel::Subgroup, GemmKernel::SubgroupSmall]);
    }
    runs.extend(
        others
            .into_iter()
            .filter(|&k| k != default)
            .map(|k| (k, DType::Q4_1)),
    );
    for (ri, &(kernel, dtype)) in runs.iter().enumerate() {
        for (si, spec) in layouts().into_iter().enumerate() {
            check(&g, kernel, dtype, spec, (ri * 20 + si) as u64);
        }
    }
}

/// The tied LM head's two products with one Q8_0 table E [vocab, hidden] on the default kernel.
#[test]
fn tied_head_products_match_the_cpu() {
    let Some(g) = test_gpu() else { return };
    let (vocab, hidden, tokens) = (1000, 96, 37);
    let kernel = g.gemm_kernel();
    check(&g, kernel, DType::Q8_0, Gemm::nt(tokens, vocab, hidden), 1);
    check(&g, kernel, DType::Q8_0, Gemm::nn(tokens, hidden, vocab), 2);
}

fn fixture() -> serde_json::Value {
    serde_json::from_str(include_str!("fixtures/quant/gguf_quants.json")).unwrap()
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// The fixture's corner blocks as an embedding table of one block per row: every row looked up
/// (and one IGNORE), against the host dequantizer.
#[test]
fn embedding_from_corner_blocks_matches_the_host_dequantizer() {
    let Some(g) = test_gpu() else { return };
    let fx = fixture();
    for dtype in FORMATS {
        let bytes = hex(fx["synthetic"][dtype.name()]["bytes"].as_str().unwrap());
        let rows = bytes.len() / dtype.block_bytes().unwrap();
        let dim = 32;
        let want_rows = dequantize(dtype, &bytes, rows * dim).unwrap();
        let table = g.upload_blocks(&bytes, dtype, rows * dim, K).unwrap();
        let mut ids: Vec<u32> = (0..rows as u32).rev().collect();
        ids.push(Ids::<Gpu>::IGNORE);
        let gi = g.ids(&ids).unwrap();
        let mut out = g.zeros(ids.len() * dim, K).unwrap();
        g.embedding_forward(&gi, &table, &mut out, dim, false);
        let got = g.download(&out).unwrap();
        for (r, &id) in ids.iter().enumerate() {
            for d in 0..dim {
                let gv = got[r * dim + d];
                let want = if id == Ids::<Gpu>::IGNORE {
                    0.0
                } else {
                    want_rows[id as usize * dim + d]
                };
                let ok = if dtype == DType::Q4_1 && want.is_finite() {
                    (gv - want).abs() <= 1e-6 * (1.0 + want.abs())
                } else {
                    gv.to_bits() == want.to_bits()
                };
                assert!(
                    ok,
                    "{dtype:?} row {r} (id {id}) value {d}: {gv}, host {want}"
                );
            }
        }
    }
}

/// A larger table with accumulation, against the CPU backend's lookup.
#[test]
fn embedding_accumulates_like_the_cpu() {
    let Some(g) = test_gpu() else { return };
    let cpu = Cpu::new();
    let (vocab, dim, n) = (500usize, 96usize, 300usize);
    for dtype in FORMATS {
        let bytes = quantize(dtype, &rand_vec(vocab * dim, 3)).unwrap();
        let gt = g.upload_blocks(&bytes, dtype, vocab * dim, K).unwrap();
        let ct = cpu.upload_blocks(&bytes, dtype, vocab * dim, K).unwrap();
        let ids: Vec<u32> = (0..n).map(|i| ((i * 7919) % vocab) as u32).collect();
        let (gi, ci) = (g.ids(&ids).unwrap(), cpu.ids(&ids).unwrap());
        let start = rand_vec(n * dim, 4);
        let mut go = g.upload(&start, K).unwrap();
        let mut co = cpu.upload(&start, K).unwrap();
        g.embedding_forward(&gi, &gt, &mut go, dim, true);
        cpu.embedding_forward(&ci, &ct, &mut co, dim, true);
        assert_close(
            &format!("{dtype:?} accumulate"),
            &g.download(&go).unwrap(),
            &co.buf,
            1e-6,
        );
    }
}

#[test]
fn block_tensors_download_dequantized_and_count_their_bytes() {
    let Some(g) = test_gpu() else { return };
    // 7 blocks: Q8_0's 238 bytes and Q4_0's 126 are not whole words.
    let x = rand_vec(7 * 32, 9);
    for dtype in FORMATS {
        let bytes = quantize(dtype, &x).unwrap();
        let mut t = g.upload_blocks(&bytes, dtype, x.len(), K).unwrap();
        assert_eq!(t.dtype(), dtype);
        assert_eq!(t.bytes(), (bytes.len().div_ceil(4) * 4) as u64, "{dtype:?}");
        let want = dequantize(dtype, &bytes, x.len()).unwrap();
        assert_eq!(g.download(&t).unwrap(), want, "{dtype:?}: download");
        let y: Vec<f32> = x.iter().map(|v| 3.0 * v).collect();
        g.write(&mut t, &y).unwrap();
        let want = dequantize(dtype, &quantize(dtype, &y).unwrap(), y.len()).unwrap();
        assert_eq!(g.download(&t).unwrap(), want, "{dtype:?}: after write");
    }
    let e = g
        .upload_blocks(&[0u8; 20], DType::Q4_1, 33, K)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("not whole blocks"), "{e}");
}

/// A block-format B whose stored rows are not whole blocks is refused (reported by the next
/// sync), not read out of place.
#[test]
fn a_misaligned_quantized_b_is_an_error() {
    if test_gpu().is_none() {
        return;
    }
    // Its own device: errors are reported device-wide, and must not reach the other tests.
    let g = Gpu::open(AdapterFilter::AllowCpu).unwrap().unwrap();
    let bytes = quantize(DType::Q8_0, &rand_vec(64, 1)).unwrap();
    let b = g.upload_blocks(&bytes, DType::Q8_0, 64, K).unwrap();
    let a = g.upload(&rand_vec(8, 2), K).unwrap();
    let mut c = g.zeros(32, K).unwrap();
    // NN with n = 16: B stored [4, 16], rows of half a block.
    g.matmul(&a, &b, &mut c, &Gemm::nn(2, 16, 4));
    let e = g.sync().unwrap_err().to_string();
    assert!(e.contains("whole 32-value blocks"), "{e}");
}
