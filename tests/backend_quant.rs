//! GGUF block formats (Q8_0, Q4_0, Q4_1) on the host and in the CPU backend.
//!
//! Oracles:
//! - `gguf.quants` (llama.cpp's own Python package) through `tests/fixtures/quant/gguf_quants.json`
//!   (`scripts/make_quant_fixtures.py`): dequantized values bit for bit, quantized bytes bit for
//!   bit, on synthetic corner blocks and on rows of SmolLM2-135M's real tensors; with the GGUF
//!   file present, whole tensors by the sha256 of their dequantized f32;
//! - closed-form error bounds of round-to-nearest quantization;
//! - for the GEMM: an f64 product over the dequantized B. The kernel multiplies exactly those
//!   f32 values, so it differs only by its f32 additions: |Δ| ≤ 1e-5 · (Σ_k |α·a_ik·b_kj| +
//!   |β·c_ij|). Also the CPU backend's own f32 matmul over the dequantized B, same bound.

use adarank::backend::cpu::{quant_gemm as cq, Cpu};
use adarank::backend::quant::{check_blocks, check_matrix, dequantize_into, BLOCK};
use adarank::backend::{dequantize, quantize, Backend, DType, Gemm, Ids, MemKind};
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Normal};
use serde_json::Value;

const FORMATS: [DType; 3] = [DType::Q8_0, DType::Q4_0, DType::Q4_1];

fn fixture() -> Value {
    let text = include_str!("fixtures/quant/gguf_quants.json");
    serde_json::from_str(text).expect("the quant fixture parses")
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn words(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn dtype_of(name: &str) -> DType {
    FORMATS
        .into_iter()
        .find(|d| d.name() == name)
        .unwrap_or_else(|| panic!("fixture names an unknown type {name}"))
}

/// Bit patterns equal (so NaN and ±inf compare too), reporting the first difference.
fn same_bits(what: &str, got: &[f32], want: &[u32]) {
    assert_eq!(got.len(), want.len(), "{what}: lengths differ");
    for (i, (g, &w)) in got.iter().zip(want).enumerate() {
        assert_eq!(
            g.to_bits(),
            w,
            "{what}: value {i} is {g}, gguf.quants says {}",
            f32::from_bits(w)
        );
    }
}

#[test]
fn dequantize_and_quantize_match_gguf_on_corner_blocks() {
    let fx = fixture();
    for (name, case) in fx["synthetic"].as_object().unwrap() {
        let dtype = dtype_of(name);
        let values: Vec<f32> = words(&case["values"])
            .into_iter()
            .map(f32::from_bits)
            .collect();
        let bytes = hex(case["bytes"].as_str().unwrap());
        let want = words(&case["dequantized"]);
        let got = dequantize(dtype, &bytes, values.len()).unwrap();
        same_bits(&format!("{name} dequantize"), &got, &want);
        let ours = quantize(dtype, &values).unwrap();
        assert_eq!(ours.len(), bytes.len(), "{name}: quantized length");
        for (i, (a, b)) in ours.iter().zip(&bytes).enumerate() {
            assert_eq!(
                a,
                b,
                "{name} quantize: byte {i} (block {}) is {a:#04x}, gguf.quants wrote {b:#04x}",
                i / dtype.block_bytes().unwrap()
            );
        }
    }
}

#[test]
fn dequantize_matches_gguf_on_smollm2_rows() {
    let fx = fixture();
    let rows = fx["real"]["rows"].as_array().unwrap();
    assert!(
        rows.len() >= 6,
        "the fixture has rows of Q8_0 and Q4_1 tensors"
    );
    for row in rows {
        let dtype = dtype_of(row["type"].as_str().unwrap());
        let bytes = hex(row["bytes"].as_str().unwrap());
        let want = words(&row["dequantized"]);
        let got = dequantize(dtype, &bytes, want.len()).unwrap();
        let what = format!("{} row {}", row["tensor"], row["row"]);
        same_bits(&what, &got, &want);
    }
}

/// Where the SmolLM2 GGUF is: `ADARANK_SMOLLM2_GGUF`, else the assets folder's copy.
fn smollm2_gguf() -> Option<std::path::PathBuf> {
    let path = match std::env::var_os("ADARANK_SMOLLM2_GGUF") {
        Some(p) => p.into(),
        None => adarank::data::assets::assets_dir().join("gguf/SmolLM2-135M-Instruct.Q4_1.gguf"),
    };
    if path.is_file() {
        return Some(path);
    }
    let msg = format!("SmolLM2 GGUF not at {}", path.display());
    if std::env::var("ADARANK_REQUIRE_ASSETS").is_ok_and(|v| v == "1") {
        panic!("{msg}; ADARANK_REQUIRE_ASSETS=1 forbids skipping");
    }
    eprintln!("SKIP {msg} (set ADARANK_SMOLLM2_GGUF or run `adarank fetch`)");
    None
}

#[test]
fn whole_smollm2_tensors_dequantize_as_gguf_does() {
    use sha2::{Digest, Sha256};
    use std::io::{Read, Seek, SeekFrom};
    let Some(path) = smollm2_gguf() else { return };
    let fx = fixture();
    let mut file = std::fs::File::open(&path).unwrap();
    for t in fx["real"]["whole_tensors"].as_array().unwrap() {
        let dtype = dtype_of(t["type"].as_str().unwrap());
        let (offset, n_bytes) = (
            t["offset"].as_u64().unwrap(),
            t["n_bytes"].as_u64().unwrap(),
        );
        let len = t["len"].as_u64().unwrap() as usize;
        let mut bytes = vec![0u8; n_bytes as usize];
        file.seek(SeekFrom::Start(offset)).unwrap();
        file.read_exact(&mut bytes).unwrap();
        let values = dequantize(dtype, &bytes, len).unwrap();
        let mut h = Sha256::new();
        for v in &values {
            h.update(v.to_le_bytes());
        }
        let got: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            got,
            t["sha256_f32"].as_str().unwrap(),
            "{} ({} values): the dequantized f32 differ from gguf.quants'",
            t["tensor"],
            len
        );
    }
}

fn normal(n: usize, sigma: f32, seed: u64) -> Vec<f32> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let d = Normal::new(0.0f32, sigma).unwrap();
    (0..n).map(|_| d.sample(&mut rng)).collect()
}

/// Round-to-nearest within each block: |x − x̂| ≤ half a step, plus the f16 rounding of the
/// block's scale (2⁻¹¹ relative, times the largest code) and offset; Q4_0's code range is
/// asymmetric (−8..7), so the extreme of the sign opposite to the block's largest magnitude
/// may land a whole step away.
#[test]
fn quantization_error_stays_within_half_a_step() {
    let f16_eps = 2f32.powi(-11);
    for (fi, dtype) in FORMATS.into_iter().enumerate() {
        let x = normal(64 * BLOCK, 0.05, 11 + fi as u64);
        let y = dequantize(dtype, &quantize(dtype, &x).unwrap(), x.len()).unwrap();
        let (mut err2, mut sig2) = (0.0f64, 0.0f64);
        for (b, (xb, yb)) in x.chunks(BLOCK).zip(y.chunks(BLOCK)).enumerate() {
            let amax = xb.iter().fold(0.0f32, |a, v| a.max(v.abs()));
            let (lo, hi) = xb
                .iter()
                .fold((f32::MAX, f32::MIN), |(l, h), &v| (l.min(v), h.max(v)));
            let bound = match dtype {
                DType::Q8_0 => amax / 127.0 * (0.5 + 127.0 * f16_eps),
                DType::Q4_0 => amax / 8.0 * (1.0 + 8.0 * f16_eps),
                _ => (hi - lo) / 15.0 * (0.5 + 15.0 * f16_eps) + lo.abs() * f16_eps,
            } * 1.0001;
            for (j, (a, b2)) in xb.iter().zip(yb).enumerate() {
                assert!(
                    (a - b2).abs() <= bound,
                    "{dtype:?} block {b} value {j}: {a} came back as {b2} (bound {bound})"
                );
                err2 += ((a - b2) as f64).powi(2);
                sig2 += (*a as f64).powi(2);
            }
        }
        // And on average far below the bound: a typical weight block's relative RMS error.
        let rel = (err2 / sig2).sqrt();
        let most = if dtype == DType::Q8_0 { 0.01 } else { 0.15 };
        eprintln!("{dtype:?}: relative RMS error {rel:.4}");
        assert!(rel < most, "{dtype:?}: relative RMS error {rel} ≥ {most}");
    }
}

#[test]
fn bad_block_input_is_a_clear_error() {
    let e = dequantize(DType::Q8_0, &[0u8; 34], 33)
        .unwrap_err()
        .to_string();
    assert!(e.contains("not whole blocks of 32"), "{e}");
    let e = dequantize(DType::Q4_1, &[0u8; 39], 64)
        .unwrap_err()
        .to_string();
    assert!(e.contains("take 40 bytes") && e.contains("39 bytes"), "{e}");
    let e = check_blocks(DType::Bf16, 64, 32).unwrap_err().to_string();
    assert!(e.contains("not a block format"), "{e}");
    let e = check_matrix(DType::Q4_0, 3, 48).unwrap_err().to_string();
    assert!(e.contains("[3, 48]") && e.contains("whole"), "{e}");
    assert!(quantize(DType::Q8_0, &[1.0; 31]).is_err());
    let cpu = Cpu::new();
    let e = cpu
        .upload_blocks(&[0u8; 18], DType::Q4_0, 64, MemKind::Frozen)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("36 bytes"), "{e}");
}

/// Storage: the ledger counts the blocks' own bytes; download dequantizes; write quantizes.
#[test]
fn block_tensors_store_their_bytes_and_download_dequantized() {
    let cpu = Cpu::new();
    let x = normal(4 * BLOCK, 1.0, 5);
    for dtype in FORMATS {
        let bytes = quantize(dtype, &x).unwrap();
        let before = cpu.ledger().snapshot().total_current;
        let mut t = cpu
            .upload_blocks(&bytes, dtype, x.len(), MemKind::Frozen)
            .unwrap();
        assert_eq!(t.dtype(), dtype);
        assert_eq!(t.len(), x.len());
        let per_block = dtype.block_bytes().unwrap() as u64;
        assert_eq!(t.bytes(), 4 * per_block, "{dtype:?}: ledger bytes");
        assert_eq!(
            cpu.ledger().snapshot().total_current - before,
            4 * per_block
        );
        let want = dequantize(dtype, &bytes, x.len()).unwrap();
        assert_eq!(cpu.download(&t).unwrap(), want, "{dtype:?}: download");
        let y: Vec<f32> = x.iter().map(|v| -2.0 * v).collect();
        cpu.write(&mut t, &y).unwrap();
        let want = dequantize(dtype, &quantize(dtype, &y).unwrap(), y.len()).unwrap();
        assert_eq!(cpu.download(&t).unwrap(), want, "{dtype:?}: after write");
    }
}

/// C = α·op(A)·op(B) + β·C in f64 over f32 operands, and the error bound per element.
fn oracle(s: &Gemm, a: &[f32], b: &[f32], c: &[f32]) -> (Vec<f32>, Vec<f64>) {
    let mut out = vec![0.0f32; s.m * s.n];
    let mut bound = vec![0.0f64; s.m * s.n];
    for i in 0..s.m {
        for j in 0..s.n {
            let (mut acc, mut mag) = (0.0f64, 0.0f64);
            for k in 0..s.k {
                let av = if s.trans_a {
                    a[k * s.m + i]
                } else {
                    a[i * s.k + k]
                } as f64;
                let bv = if s.trans_b {
                    b[j * s.k + k]
                } else {
                    b[k * s.n + j]
                } as f64;
                acc += av * bv;
                mag += (av * bv).abs();
            }
            let old = if s.beta == 0.0 {
                0.0
            } else {
                s.beta as f64 * c[i * s.n + j] as f64
            };
            out[i * s.n + j] = (s.alpha as f64 * acc + old) as f32;
            bound[i * s.n + j] = 1e-5 * (s.alpha.abs() as f64 * mag + old.abs()) + 1e-30;
        }
    }
    (out, bound)
}

fn check(what: &str, got: &[f32], want: &[f32], bound: &[f64]) {
    for (i, ((g, w), b)) in got.iter().zip(want).zip(bound).enumerate() {
        assert!(
            ((g - w).abs() as f64) <= *b,
            "{what}: element {i} is {g}, the f64 oracle says {w} (bound {b:.3e})"
        );
    }
}

fn uniform(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

/// A weight W stored [rows, cols] in `dtype`: its bytes and the values they hold.
fn weight(dtype: DType, rows: usize, cols: usize, seed: u64) -> (Vec<u8>, Vec<f32>) {
    let bytes = quantize(dtype, &normal(rows * cols, 0.05, seed)).unwrap();
    let values = dequantize(dtype, &bytes, rows * cols).unwrap();
    (bytes, values)
}

/// The model's two layouts of a frozen W [out, in] as B: forward y = x·Wᵀ (NT, W is [n, k])
/// and backward dx = dy·W (NN, W is [k, n]); also Aᵀ for each. Shapes cross the kernel's
/// panel (64 columns) and K-slice (256) edges, with odd m and odd free dimensions.
#[test]
fn quantized_gemm_matches_the_f64_oracle_on_both_layouts() {
    let shapes: &[(usize, usize, usize)] = &[
        // (m, free dim, block-aligned dim)
        (1, 1, 32),
        (3, 7, 64),
        (7, 65, 96),
        (37, 97, 288),
        (130, 64, 544),
        (301, 96, 256),
        (257, 130, 320),
    ];
    for (si, &(m, free, aligned)) in shapes.iter().enumerate() {
        for dtype in FORMATS {
            for (trans_a, trans_b) in [(false, true), (false, false), (true, true), (true, false)] {
                // NT: B = W [n, k], k aligned; NN: B = W [k, n], n aligned.
                let (n, k) = if trans_b {
                    (free, aligned)
                } else {
                    (aligned, free)
                };
                let (rows, cols) = if trans_b { (n, k) } else { (k, n) };
                for (alpha, beta) in [(1.0f32, 0.0f32), (-0.5, 1.0)] {
                    let seed = si as u64 * 1000 + trans_b as u64 * 10 + trans_a as u64;
                    let s = Gemm {
                        trans_a,
                        trans_b,
                        alpha,
                        beta,
                        ..Gemm::nn(m, n, k)
                    };
                    let a = uniform(m * k, seed + 1);
                    let c0 = uniform(m * n, seed + 2);
                    let (bytes, bw) = weight(dtype, rows, cols, seed + 3);
                    let (want, bound) = oracle(&s, &a, &bw, &c0);
                    let bm = cq::QuantMat {
                        dtype,
                        bytes: &bytes,
                        rows,
                        cols,
                    };
                    let what = format!("{dtype:?} {m}×{n}×{k} ta {trans_a} tb {trans_b} α {alpha}");
                    for threads in [1, 2, 3] {
                        let mut c = c0.clone();
                        cq::gemm(&s, &a, bm, &mut c, threads);
                        check(&format!("{what}, {threads} threads"), &c, &want, &bound);
                    }
                }
            }
        }
    }
}

/// Through the backend: `matmul` with a block-format B equals `matmul` with its dequantized
/// f32 copy (same bound), and the GEMM tally counts it.
#[test]
fn backend_matmul_with_blocks_equals_matmul_with_their_f32_values() {
    let cpu = Cpu::new();
    for (i, &(m, n, k, trans_b)) in [
        (64, 200, 576, true),
        (300, 576, 192, false),
        (5, 96, 33, false),
    ]
    .iter()
    .enumerate()
    {
        let dtype = FORMATS[i % 3];
        let s = Gemm {
            trans_b,
            ..Gemm::nn(m, n, k)
        };
        let (rows, cols) = if trans_b { (n, k) } else { (k, n) };
        let (bytes, bw) = weight(dtype, rows, cols, 40 + i as u64);
        let a = cpu.upload(&uniform(m * k, 41), MemKind::Scratch).unwrap();
        let bq = cpu
            .upload_blocks(&bytes, dtype, rows * cols, MemKind::Frozen)
            .unwrap();
        let bf = cpu.upload(&bw, MemKind::Scratch).unwrap();
        let mut cq = cpu.zeros(m * n, MemKind::Scratch).unwrap();
        let mut cf = cpu.zeros(m * n, MemKind::Scratch).unwrap();
        let flops = cpu.gemm_flops();
        cpu.matmul(&a, &bq, &mut cq, &s);
        assert_eq!(cpu.gemm_flops() - flops, s.flops() as u64);
        cpu.matmul(&a, &bf, &mut cf, &s);
        let (_, bound) = oracle(&s, &a.buf, &bw, &cf.buf);
        check(
            &format!("{dtype:?} {m}×{n}×{k} tb {trans_b}, backend"),
            &cq.buf,
            &cf.buf,
            &bound.iter().map(|b| 2.0 * b).collect::<Vec<_>>(),
        );
    }
}

/// The tied LM head with a Q8_0 embedding table E [vocab, hidden]: logits = h·Eᵀ and
/// dh = dlogits·E, and the embedding lookup from the same table.
#[test]
fn tied_head_and_embedding_read_one_q8_0_table() {
    let cpu = Cpu::new();
    let (vocab, hidden, tokens) = (1000usize, 96usize, 37usize);
    let (bytes, e) = weight(DType::Q8_0, vocab, hidden, 77);
    let table = cpu
        .upload_blocks(&bytes, DType::Q8_0, vocab * hidden, MemKind::Frozen)
        .unwrap();
    let h = uniform(tokens * hidden, 78);
    let ht = cpu.upload(&h, MemKind::Scratch).unwrap();
    let spec = Gemm::nt(tokens, vocab, hidden);
    let mut logits = cpu.zeros(tokens * vocab, MemKind::Scratch).unwrap();
    cpu.matmul(&ht, &table, &mut logits, &spec);
    let (want, bound) = oracle(&spec, &h, &e, &logits.buf);
    check("logits = h·Eᵀ", &logits.buf, &want, &bound);

    let dl = uniform(tokens * vocab, 79);
    let dlt = cpu.upload(&dl, MemKind::Scratch).unwrap();
    let spec = Gemm::nn(tokens, hidden, vocab);
    let mut dh = cpu.zeros(tokens * hidden, MemKind::Scratch).unwrap();
    cpu.matmul(&dlt, &table, &mut dh, &spec);
    let (want, bound) = oracle(&spec, &dl, &e, &dh.buf);
    check("dh = dlogits·E", &dh.buf, &want, &bound);

    let ids: Vec<u32> = vec![0, 999, Ids::<Cpu>::IGNORE, 17, 17, 500];
    let it = cpu.ids(&ids).unwrap();
    let start = uniform(ids.len() * hidden, 80);
    let mut out = cpu.upload(&start, MemKind::Scratch).unwrap();
    for accumulate in [true, false] {
        let before = out.buf.clone();
        cpu.embedding_forward(&it, &table, &mut out, hidden, accumulate);
        for (r, &id) in ids.iter().enumerate() {
            for d in 0..hidden {
                let base = if accumulate {
                    before[r * hidden + d]
                } else {
                    0.0
                };
                let row = if id == Ids::<Cpu>::IGNORE {
                    0.0
                } else {
                    e[id as usize * hidden + d]
                };
                assert_eq!(
                    out.buf[r * hidden + d],
                    base + row,
                    "embedding row {r} (id {id}) column {d}, accumulate {accumulate}"
                );
            }
        }
    }
}

/// `dequantize_into` on a run of blocks in the middle of a tensor equals the same values of a
/// whole-tensor dequantize (the GEMM's panels start anywhere on a block boundary).
#[test]
fn partial_runs_dequantize_like_the_whole() {
    for dtype in FORMATS {
        let x = normal(10 * BLOCK, 1.0, 3);
        let bytes = quantize(dtype, &x).unwrap();
        let whole = dequantize(dtype, &bytes, x.len()).unwrap();
        let bb = dtype.block_bytes().unwrap();
        let mut part = vec![0.0f32; 3 * BLOCK];
        dequantize_into(dtype, &bytes[4 * bb..7 * bb], &mut part);
        assert_eq!(part, whole[4 * BLOCK..7 * BLOCK], "{dtype:?}");
    }
}
