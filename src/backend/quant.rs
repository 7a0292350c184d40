//! GGUF's block formats for frozen weights (llama.cpp's Q8_0, Q4_0, Q4_1), on the host: the
//! dequantizer every kernel is tested against (and that loaders use), and the round-to-nearest
//! quantizer of ggml's reference code (for tests, and for keeping an f32 checkpoint's frozen
//! matrices quantized).
//!
//! Each format stores a row as blocks of [`BLOCK`] = 32 consecutive values, each block one scale
//! (and for Q4_1 one offset) as IEEE f16 followed by the 32 quantized values:
//!
//! | format | block bytes | layout | value |
//! |---|---|---|---|
//! | Q8_0 | 34 | f16 d, 32 × i8 q | d·q |
//! | Q4_0 | 18 | f16 d, 16 bytes: byte j = q_j (low nibble) \| q_{j+16} (high nibble) | d·(q − 8) |
//! | Q4_1 | 20 | f16 d, f16 m, 16 bytes as Q4_0 | d·q + m |
//!
//! (ggml's `block_q8_0`, `block_q4_0`, `block_q4_1` and `dequantize_row_q*`; every f16 is
//! little-endian.) A tensor is its blocks back to back, so a [rows, cols] matrix must have
//! `cols % 32 == 0` for its rows to be whole blocks — the kernels rely on that to find row r's
//! blocks at `r · cols / 32`.

use super::DType;
use anyhow::{bail, ensure, Result};
use half::f16;

/// Values per block, in every format here.
pub const BLOCK: usize = 32;

impl DType {
    /// Whether this is one of GGUF's block formats (see [`crate::backend::quant`]).
    pub fn is_quantized(self) -> bool {
        self.block_bytes().is_some()
    }
    /// Bytes of one block of [`BLOCK`] values, for the block formats.
    pub fn block_bytes(self) -> Option<usize> {
        match self {
            DType::F32 | DType::Bf16 => None,
            DType::Q8_0 => Some(34),
            DType::Q4_0 => Some(18),
            DType::Q4_1 => Some(20),
        }
    }
    /// Bytes that hold `len` values as stored (a block format rounds up to whole blocks).
    pub fn bytes(self, len: usize) -> usize {
        match self {
            DType::F32 => len * 4,
            DType::Bf16 => len * 2,
            q => len.div_ceil(BLOCK) * q.block_bytes().unwrap_or(0),
        }
    }
    /// The name GGUF and llama.cpp use ("f32", "bf16", "q8_0", "q4_0", "q4_1").
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::Bf16 => "bf16",
            DType::Q8_0 => "q8_0",
            DType::Q4_0 => "q4_0",
            DType::Q4_1 => "q4_1",
        }
    }
}

/// Checks that `bytes` bytes hold exactly `len` values of the block format `dtype`, with a
/// message that says what is wrong.
pub fn check_blocks(dtype: DType, bytes: usize, len: usize) -> Result<()> {
    let Some(bb) = dtype.block_bytes() else {
        bail!(
            "{} is not a block format (expected q8_0, q4_0 or q4_1)",
            dtype.name()
        );
    };
    ensure!(
        len.is_multiple_of(BLOCK),
        "{len} {} values are not whole blocks of {BLOCK}: a quantized matrix needs rows whose \
         length is a multiple of {BLOCK}",
        dtype.name()
    );
    ensure!(
        bytes == len / BLOCK * bb,
        "{len} {} values take {} bytes ({} blocks of {bb}), but {bytes} bytes were given",
        dtype.name(),
        len / BLOCK * bb,
        len / BLOCK
    );
    Ok(())
}

/// Checks that a [rows, cols] matrix can be stored as `dtype`: each row whole blocks.
pub fn check_matrix(dtype: DType, rows: usize, cols: usize) -> Result<()> {
    ensure!(
        !dtype.is_quantized() || cols.is_multiple_of(BLOCK),
        "a [{rows}, {cols}] matrix cannot be stored as {}: its rows ({cols} values) are not whole \
         blocks of {BLOCK}; keep it f32 or bf16",
        dtype.name()
    );
    Ok(())
}

/// The `len` values stored in `bytes` as `dtype` (ggml's `dequantize_row_*`); an error when the
/// bytes are not exactly `len` values' worth of whole blocks.
pub fn dequantize(dtype: DType, bytes: &[u8], len: usize) -> Result<Vec<f32>> {
    check_blocks(dtype, bytes.len(), len)?;
    let mut out = vec![0.0f32; len];
    dequantize_into(dtype, bytes, &mut out);
    Ok(out)
}

/// `out.len() / 32` whole blocks of `bytes` dequantized into `out`. For the kernels: the
/// caller guarantees `dtype` is a block format and `bytes` holds at least that many blocks.
pub fn dequantize_into(dtype: DType, bytes: &[u8], out: &mut [f32]) {
    let bb = dtype.block_bytes().expect("a block format");
    debug_assert!(out.len().is_multiple_of(BLOCK) && bytes.len() >= out.len() / BLOCK * bb);
    match dtype {
        DType::Q8_0 => rows_q8_0(bytes, out),
        DType::Q4_0 => rows_q4_0(bytes, out),
        DType::Q4_1 => rows_q4_1(bytes, out),
        DType::F32 | DType::Bf16 => unreachable!("checked above"),
    }
}

fn half_at(b: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

// Each loop body is written so LLVM vectorizes the 32 (or 16) values of a block; `vectorized!`
// compiles it for AVX-512 and AVX2 too. No FMA contraction: d·q + m rounds like ggml's C.
crate::backend::cpu::simd::vectorized! {
    fn rows_q8_0(bytes: &[u8], out: &mut [f32]) {
        for (blk, o) in bytes.chunks_exact(34).zip(out.chunks_exact_mut(BLOCK)) {
            let d = half_at(blk, 0);
            for (o, &q) in o.iter_mut().zip(&blk[2..34]) {
                *o = d * (q as i8) as f32;
            }
        }
    }
}

crate::backend::cpu::simd::vectorized! {
    fn rows_q4_0(bytes: &[u8], out: &mut [f32]) {
        for (blk, o) in bytes.chunks_exact(18).zip(out.chunks_exact_mut(BLOCK)) {
            let d = half_at(blk, 0);
            let (lo, hi) = o.split_at_mut(BLOCK / 2);
            for ((l, h), &q) in lo.iter_mut().zip(hi.iter_mut()).zip(&blk[2..18]) {
                *l = d * ((q & 15) as i32 - 8) as f32;
                *h = d * ((q >> 4) as i32 - 8) as f32;
            }
        }
    }
}

crate::backend::cpu::simd::vectorized! {
    fn rows_q4_1(bytes: &[u8], out: &mut [f32]) {
        for (blk, o) in bytes.chunks_exact(20).zip(out.chunks_exact_mut(BLOCK)) {
            let (d, m) = (half_at(blk, 0), half_at(blk, 2));
            let (lo, hi) = o.split_at_mut(BLOCK / 2);
            for ((l, h), &q) in lo.iter_mut().zip(hi.iter_mut()).zip(&blk[4..20]) {
                *l = d * (q & 15) as f32 + m;
                *h = d * (q >> 4) as f32 + m;
            }
        }
    }
}

/// `values` quantized to `dtype` by ggml's reference (round-to-nearest) quantizer, bit for bit
/// what `quantize_row_q*_ref` (and `gguf.quants`) write. `values.len()` must be whole blocks.
pub fn quantize(dtype: DType, values: &[f32]) -> Result<Vec<u8>> {
    let bb = dtype.block_bytes();
    let Some(bb) = bb else {
        bail!(
            "{} is not a block format (expected q8_0, q4_0 or q4_1)",
            dtype.name()
        );
    };
    check_blocks(dtype, values.len() / BLOCK * bb, values.len())?;
    let mut out = Vec::with_capacity(values.len() / BLOCK * bb);
    for x in values.chunks_exact(BLOCK) {
        match dtype {
            DType::Q8_0 => quantize_q8_0(x, &mut out),
            DType::Q4_0 => quantize_q4_0(x, &mut out),
            _ => quantize_q4_1(x, &mut out),
        }
    }
    Ok(out)
}

/// 1/d, or 0 when d is 0 (an all-zero block stores zeros).
fn inverse(d: f32) -> f32 {
    if d == 0.0 {
        0.0
    } else {
        1.0 / d
    }
}

fn quantize_q8_0(x: &[f32], out: &mut Vec<u8>) {
    let amax = x.iter().fold(0.0f32, |a, v| a.max(v.abs()));
    let d = amax / 127.0;
    let id = inverse(d);
    out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
    // roundf: halves away from zero, as ggml's reference.
    out.extend(x.iter().map(|v| (v * id).round() as i8 as u8));
}

/// Packs 32 codes of 0..=15 as Q4's 16 bytes: element j low nibble, element j + 16 high.
fn pack_nibbles(q: impl Fn(usize) -> u8, out: &mut Vec<u8>) {
    out.extend((0..BLOCK / 2).map(|j| q(j) | (q(j + BLOCK / 2) << 4)));
}

fn quantize_q4_0(x: &[f32], out: &mut Vec<u8>) {
    // The value of largest magnitude, sign kept (the first one on ties), maps to code 0.
    let mut max = 0.0f32;
    for &v in x {
        if v.abs() > max.abs() {
            max = v;
        }
    }
    let d = max / -8.0;
    let id = inverse(d);
    out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
    pack_nibbles(|j| ((x[j] * id + 8.5) as i8).min(15) as u8, out);
}

fn quantize_q4_1(x: &[f32], out: &mut Vec<u8>) {
    let (min, max) = x
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| {
            (lo.min(v), hi.max(v))
        });
    let d = (max - min) / 15.0;
    let id = inverse(d);
    out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
    out.extend_from_slice(&f16::from_f32(min).to_le_bytes());
    pack_nibbles(|j| (((x[j] - min) * id + 0.5) as i8).min(15) as u8, out);
}
