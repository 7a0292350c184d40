// GEMM: C[b] = alpha · op(A[b]) · op(B[b]) + beta · C[b], row-major, any shape.
// Two kernels, selected on the host (`GemmKernel`):
// - `matmul_blocked`: register-blocked, no shared memory. Each invocation computes an 8×16 block
//   of C straight from global memory with 32 vec4 accumulators (written out unrolled: private
//   arrays indexed in loops end up in memory on some compilers). For CPU-type adapters
//   (lavapipe), where "shared memory" is ordinary memory and barriers are expensive: there it
//   runs the shapes matmul_subgroup.wgsl does not take.
// - `matmul_tiled`: the classic shared-memory kernel, 64×64 tiles of C, 16-deep k slices,
//   4×4 outputs per invocation. What wins on real GPUs.
// The transposes are pipeline-override constants, so each of NN/NT/TN/TT is compiled with its
// index arithmetic folded. Edges (shapes not multiples of a tile) are handled: the blocked
// kernel clamps its loads and guards its stores, the tiled kernel zero-fills partial tiles.
// Batches are the z dimension of the grid, offset by `z_base` when there are more than 65535.

override TRANS_A: bool = false;
override TRANS_B: bool = false;
override B_BF16: bool = false;
// B in one of GGUF's block formats when B_QUANT > 0 (1 Q8_0, 2 Q4_0, 3 Q4_1; frozen weights
// kept quantized, QLoRA-style): the bytes as llama.cpp stores them, 32 values per block, so
// element i (a stored row is whole blocks) sits in block i / 32. Q8_0: f16 d, 32 i8 q, x = d·q
// (34 bytes); Q4_0: f16 d, 16 bytes with element j in the low nibble of byte j and j + 16 in its
// high nibble, x = d·(q − 8) (18 bytes); Q4_1: f16 d, f16 m, nibbles as Q4_0, x = d·q + m
// (20 bytes). Every block starts on an even byte, so an f16 never straddles two words.
override B_QUANT: u32 = 0u;

struct Params {
    m: u32,
    n: u32,
    k: u32,
    z_base: u32,
    stride_a: u32,
    stride_b: u32,
    stride_c: u32,
    // Leading dimensions (row strides) of the stored A, B and C: a sub-block of a larger
    // matrix when the host splits a GEMM (see `gemm_dispatch`).
    lda: u32,
    alpha: f32,
    beta: f32,
    ldb: u32,
    ldc: u32,
    // Element offsets of the sub-block in A, B and C (0 for a whole GEMM).
    off_a: u32,
    off_b: u32,
    off_c: u32,
    _pad0: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
// op(A): m×k, stored m×k, or k×m when TRANS_A
@group(0) @binding(1) var<storage, read> a: array<f32>;
// op(B): k×n, stored k×n, or n×k when TRANS_B
@group(0) @binding(2) var<storage, read> b: array<u32>;
// C: m×n
@group(0) @binding(3) var<storage, read_write> c: array<f32>;

// An IEEE f16 (the low 16 bits of h) as f32, in integer operations: `unpack2x16float` needs a
// capability (f16 in f32) that not every adapter reports.
fn half_to_f32(h: u32) -> f32 {
    let e = (h >> 10u) & 0x1fu;
    let m = h & 0x3ffu;
    let s = (h & 0x8000u) << 16u;
    let normal = bitcast<f32>(s | ((e + 112u) << 23u) | (m << 13u));
    let subnormal = bitcast<f32>(s | bitcast<u32>(ldexp(f32(m), -24)));
    let special = bitcast<f32>(s | 0x7f800000u | (m << 13u));
    return select(select(normal, special, e == 31u), subnormal, e == 0u);
}

fn b_byte(o: u32) -> u32 {
    return (b[o >> 2u] >> ((o & 3u) * 8u)) & 0xffu;
}

fn b_half(o: u32) -> f32 {
    let w = b[o >> 2u];
    return half_to_f32(select(w, w >> 16u, (o & 2u) != 0u));
}

fn load_quant(i: u32) -> f32 {
    let blk = i >> 5u;
    let j = i & 31u;
    if (B_QUANT == 1u) {
        let o = blk * 34u;
        let q = bitcast<i32>(b_byte(o + 2u + j) << 24u) >> 24u;
        return b_half(o) * f32(q);
    }
    let o = blk * select(20u, 18u, B_QUANT == 2u);
    let qo = o + select(4u, 2u, B_QUANT == 2u);
    let q = f32((b_byte(qo + (j & 15u)) >> ((j >> 4u) * 4u)) & 15u);
    if (B_QUANT == 2u) {
        return b_half(o) * (q - 8.0);
    }
    return b_half(o) * q + b_half(o + 2u);
}

// B as stored: f32, or bf16 two per 32-bit word (value 2i in the low half of word i) when
// B_BF16 (frozen weights kept in bf16), or blocks when B_QUANT; widened to f32 here, so the
// arithmetic is f32 either way.
fn load_b(i: u32) -> f32 {
    if (B_QUANT != 0u) {
        return load_quant(i);
    }
    if (B_BF16) {
        let w = b[i >> 1u];
        return bitcast<f32>(select(w << 16u, w & 0xffff0000u, (i & 1u) != 0u));
    }
    return bitcast<f32>(b[i]);
}

fn store(i: u32, v: f32) {
    // beta == 0 overwrites: C may hold garbage or NaN that must not propagate.
    if (p.beta == 0.0) {
        c[i] = p.alpha * v;
    } else {
        c[i] = p.alpha * v + p.beta * c[i];
    }
}

// ---- register-blocked ---------------------------------------------------------------------

@compute @workgroup_size(8, 8)
fn matmul_blocked(@builtin(global_invocation_id) gid: vec3<u32>) {
    let r0 = gid.y * 8u;
    let c0 = gid.x * 16u;
    if (r0 >= p.m || c0 >= p.n) { return; }
    let batch = gid.z + p.z_base;
    let a_base = p.off_a + batch * p.stride_a;
    let b_base = p.off_b + batch * p.stride_b;
    let c_base = p.off_c + batch * p.stride_c;
    // Offsets of the block's rows of op(A) and columns of op(B), clamped to the last row/column
    // so the k loop needs no bounds checks; clamped lanes compute values that are never stored.
    let a_kstep = select(1u, p.lda, TRANS_A);
    let b_kstep = select(p.ldb, 1u, TRANS_B);
    let ra0 = min(r0 + 0u, p.m - 1u);
    let ao0 = a_base + select(ra0 * p.lda, ra0, TRANS_A);
    let ra1 = min(r0 + 1u, p.m - 1u);
    let ao1 = a_base + select(ra1 * p.lda, ra1, TRANS_A);
    let ra2 = min(r0 + 2u, p.m - 1u);
    let ao2 = a_base + select(ra2 * p.lda, ra2, TRANS_A);
    let ra3 = min(r0 + 3u, p.m - 1u);
    let ao3 = a_base + select(ra3 * p.lda, ra3, TRANS_A);
    let ra4 = min(r0 + 4u, p.m - 1u);
    let ao4 = a_base + select(ra4 * p.lda, ra4, TRANS_A);
    let ra5 = min(r0 + 5u, p.m - 1u);
    let ao5 = a_base + select(ra5 * p.lda, ra5, TRANS_A);
    let ra6 = min(r0 + 6u, p.m - 1u);
    let ao6 = a_base + select(ra6 * p.lda, ra6, TRANS_A);
    let ra7 = min(r0 + 7u, p.m - 1u);
    let ao7 = a_base + select(ra7 * p.lda, ra7, TRANS_A);
    let cb0 = min(c0 + 0u, p.n - 1u);
    let bo0 = b_base + select(cb0, cb0 * p.ldb, TRANS_B);
    let cb1 = min(c0 + 1u, p.n - 1u);
    let bo1 = b_base + select(cb1, cb1 * p.ldb, TRANS_B);
    let cb2 = min(c0 + 2u, p.n - 1u);
    let bo2 = b_base + select(cb2, cb2 * p.ldb, TRANS_B);
    let cb3 = min(c0 + 3u, p.n - 1u);
    let bo3 = b_base + select(cb3, cb3 * p.ldb, TRANS_B);
    let cb4 = min(c0 + 4u, p.n - 1u);
    let bo4 = b_base + select(cb4, cb4 * p.ldb, TRANS_B);
    let cb5 = min(c0 + 5u, p.n - 1u);
    let bo5 = b_base + select(cb5, cb5 * p.ldb, TRANS_B);
    let cb6 = min(c0 + 6u, p.n - 1u);
    let bo6 = b_base + select(cb6, cb6 * p.ldb, TRANS_B);
    let cb7 = min(c0 + 7u, p.n - 1u);
    let bo7 = b_base + select(cb7, cb7 * p.ldb, TRANS_B);
    let cb8 = min(c0 + 8u, p.n - 1u);
    let bo8 = b_base + select(cb8, cb8 * p.ldb, TRANS_B);
    let cb9 = min(c0 + 9u, p.n - 1u);
    let bo9 = b_base + select(cb9, cb9 * p.ldb, TRANS_B);
    let cb10 = min(c0 + 10u, p.n - 1u);
    let bo10 = b_base + select(cb10, cb10 * p.ldb, TRANS_B);
    let cb11 = min(c0 + 11u, p.n - 1u);
    let bo11 = b_base + select(cb11, cb11 * p.ldb, TRANS_B);
    let cb12 = min(c0 + 12u, p.n - 1u);
    let bo12 = b_base + select(cb12, cb12 * p.ldb, TRANS_B);
    let cb13 = min(c0 + 13u, p.n - 1u);
    let bo13 = b_base + select(cb13, cb13 * p.ldb, TRANS_B);
    let cb14 = min(c0 + 14u, p.n - 1u);
    let bo14 = b_base + select(cb14, cb14 * p.ldb, TRANS_B);
    let cb15 = min(c0 + 15u, p.n - 1u);
    let bo15 = b_base + select(cb15, cb15 * p.ldb, TRANS_B);
    var acc0_0 = vec4<f32>(0.0);
    var acc0_1 = vec4<f32>(0.0);
    var acc0_2 = vec4<f32>(0.0);
    var acc0_3 = vec4<f32>(0.0);
    var acc1_0 = vec4<f32>(0.0);
    var acc1_1 = vec4<f32>(0.0);
    var acc1_2 = vec4<f32>(0.0);
    var acc1_3 = vec4<f32>(0.0);
    var acc2_0 = vec4<f32>(0.0);
    var acc2_1 = vec4<f32>(0.0);
    var acc2_2 = vec4<f32>(0.0);
    var acc2_3 = vec4<f32>(0.0);
    var acc3_0 = vec4<f32>(0.0);
    var acc3_1 = vec4<f32>(0.0);
    var acc3_2 = vec4<f32>(0.0);
    var acc3_3 = vec4<f32>(0.0);
    var acc4_0 = vec4<f32>(0.0);
    var acc4_1 = vec4<f32>(0.0);
    var acc4_2 = vec4<f32>(0.0);
    var acc4_3 = vec4<f32>(0.0);
    var acc5_0 = vec4<f32>(0.0);
    var acc5_1 = vec4<f32>(0.0);
    var acc5_2 = vec4<f32>(0.0);
    var acc5_3 = vec4<f32>(0.0);
    var acc6_0 = vec4<f32>(0.0);
    var acc6_1 = vec4<f32>(0.0);
    var acc6_2 = vec4<f32>(0.0);
    var acc6_3 = vec4<f32>(0.0);
    var acc7_0 = vec4<f32>(0.0);
    var acc7_1 = vec4<f32>(0.0);
    var acc7_2 = vec4<f32>(0.0);
    var acc7_3 = vec4<f32>(0.0);
    var ka = 0u;
    var kb = 0u;
    for (var kk = 0u; kk < p.k; kk++) {
        let a0 = vec4<f32>(a[ao0 + ka]);
        let a1 = vec4<f32>(a[ao1 + ka]);
        let a2 = vec4<f32>(a[ao2 + ka]);
        let a3 = vec4<f32>(a[ao3 + ka]);
        let a4 = vec4<f32>(a[ao4 + ka]);
        let a5 = vec4<f32>(a[ao5 + ka]);
        let a6 = vec4<f32>(a[ao6 + ka]);
        let a7 = vec4<f32>(a[ao7 + ka]);
        let b0 = vec4<f32>(load_b(bo0 + kb), load_b(bo1 + kb), load_b(bo2 + kb), load_b(bo3 + kb));
        let b1 = vec4<f32>(load_b(bo4 + kb), load_b(bo5 + kb), load_b(bo6 + kb), load_b(bo7 + kb));
        let b2 = vec4<f32>(load_b(bo8 + kb), load_b(bo9 + kb), load_b(bo10 + kb), load_b(bo11 + kb));
        let b3 = vec4<f32>(load_b(bo12 + kb), load_b(bo13 + kb), load_b(bo14 + kb), load_b(bo15 + kb));
        acc0_0 = fma(a0, b0, acc0_0);
        acc0_1 = fma(a0, b1, acc0_1);
        acc0_2 = fma(a0, b2, acc0_2);
        acc0_3 = fma(a0, b3, acc0_3);
        acc1_0 = fma(a1, b0, acc1_0);
        acc1_1 = fma(a1, b1, acc1_1);
        acc1_2 = fma(a1, b2, acc1_2);
        acc1_3 = fma(a1, b3, acc1_3);
        acc2_0 = fma(a2, b0, acc2_0);
        acc2_1 = fma(a2, b1, acc2_1);
        acc2_2 = fma(a2, b2, acc2_2);
        acc2_3 = fma(a2, b3, acc2_3);
        acc3_0 = fma(a3, b0, acc3_0);
        acc3_1 = fma(a3, b1, acc3_1);
        acc3_2 = fma(a3, b2, acc3_2);
        acc3_3 = fma(a3, b3, acc3_3);
        acc4_0 = fma(a4, b0, acc4_0);
        acc4_1 = fma(a4, b1, acc4_1);
        acc4_2 = fma(a4, b2, acc4_2);
        acc4_3 = fma(a4, b3, acc4_3);
        acc5_0 = fma(a5, b0, acc5_0);
        acc5_1 = fma(a5, b1, acc5_1);
        acc5_2 = fma(a5, b2, acc5_2);
        acc5_3 = fma(a5, b3, acc5_3);
        acc6_0 = fma(a6, b0, acc6_0);
        acc6_1 = fma(a6, b1, acc6_1);
        acc6_2 = fma(a6, b2, acc6_2);
        acc6_3 = fma(a6, b3, acc6_3);
        acc7_0 = fma(a7, b0, acc7_0);
        acc7_1 = fma(a7, b1, acc7_1);
        acc7_2 = fma(a7, b2, acc7_2);
        acc7_3 = fma(a7, b3, acc7_3);
        ka += a_kstep;
        kb += b_kstep;
    }
    if (r0 + 0u < p.m) {
        let row0 = c_base + (r0 + 0u) * p.ldc;
        if (c0 + 0u < p.n) { store(row0 + c0 + 0u, acc0_0.x); }
        if (c0 + 1u < p.n) { store(row0 + c0 + 1u, acc0_0.y); }
        if (c0 + 2u < p.n) { store(row0 + c0 + 2u, acc0_0.z); }
        if (c0 + 3u < p.n) { store(row0 + c0 + 3u, acc0_0.w); }
        if (c0 + 4u < p.n) { store(row0 + c0 + 4u, acc0_1.x); }
        if (c0 + 5u < p.n) { store(row0 + c0 + 5u, acc0_1.y); }
        if (c0 + 6u < p.n) { store(row0 + c0 + 6u, acc0_1.z); }
        if (c0 + 7u < p.n) { store(row0 + c0 + 7u, acc0_1.w); }
        if (c0 + 8u < p.n) { store(row0 + c0 + 8u, acc0_2.x); }
        if (c0 + 9u < p.n) { store(row0 + c0 + 9u, acc0_2.y); }
        if (c0 + 10u < p.n) { store(row0 + c0 + 10u, acc0_2.z); }
        if (c0 + 11u < p.n) { store(row0 + c0 + 11u, acc0_2.w); }
        if (c0 + 12u < p.n) { store(row0 + c0 + 12u, acc0_3.x); }
        if (c0 + 13u < p.n) { store(row0 + c0 + 13u, acc0_3.y); }
        if (c0 + 14u < p.n) { store(row0 + c0 + 14u, acc0_3.z); }
        if (c0 + 15u < p.n) { store(row0 + c0 + 15u, acc0_3.w); }
    }
    if (r0 + 1u < p.m) {
        let row1 = c_base + (r0 + 1u) * p.ldc;
        if (c0 + 0u < p.n) { store(row1 + c0 + 0u, acc1_0.x); }
        if (c0 + 1u < p.n) { store(row1 + c0 + 1u, acc1_0.y); }
        if (c0 + 2u < p.n) { store(row1 + c0 + 2u, acc1_0.z); }
        if (c0 + 3u < p.n) { store(row1 + c0 + 3u, acc1_0.w); }
        if (c0 + 4u < p.n) { store(row1 + c0 + 4u, acc1_1.x); }
        if (c0 + 5u < p.n) { store(row1 + c0 + 5u, acc1_1.y); }
        if (c0 + 6u < p.n) { store(row1 + c0 + 6u, acc1_1.z); }
        if (c0 + 7u < p.n) { store(row1 + c0 + 7u, acc1_1.w); }
        if (c0 + 8u < p.n) { store(row1 + c0 + 8u, acc1_2.x); }
        if (c0 + 9u < p.n) { store(row1 + c0 + 9u, acc1_2.y); }
        if (c0 + 10u < p.n) { store(row1 + c0 + 10u, acc1_2.z); }
        if (c0 + 11u < p.n) { store(row1 + c0 + 11u, acc1_2.w); }
        if (c0 + 12u < p.n) { store(row1 + c0 + 12u, acc1_3.x); }
        if (c0 + 13u < p.n) { store(row1 + c0 + 13u, acc1_3.y); }
        if (c0 + 14u < p.n) { store(row1 + c0 + 14u, acc1_3.z); }
        if (c0 + 15u < p.n) { store(row1 + c0 + 15u, acc1_3.w); }
    }
    if (r0 + 2u < p.m) {
        let row2 = c_base + (r0 + 2u) * p.ldc;
        if (c0 + 0u < p.n) { store(row2 + c0 + 0u, acc2_0.x); }
        if (c0 + 1u < p.n) { store(row2 + c0 + 1u, acc2_0.y); }
        if (c0 + 2u < p.n) { store(row2 + c0 + 2u, acc2_0.z); }
        if (c0 + 3u < p.n) { store(row2 + c0 + 3u, acc2_0.w); }
        if (c0 + 4u < p.n) { store(row2 + c0 + 4u, acc2_1.x); }
        if (c0 + 5u < p.n) { store(row2 + c0 + 5u, acc2_1.y); }
        if (c0 + 6u < p.n) { store(row2 + c0 + 6u, acc2_1.z); }
        if (c0 + 7u < p.n) { store(row2 + c0 + 7u, acc2_1.w); }
        if (c0 + 8u < p.n) { store(row2 + c0 + 8u, acc2_2.x); }
        if (c0 + 9u < p.n) { store(row2 + c0 + 9u, acc2_2.y); }
        if (c0 + 10u < p.n) { store(row2 + c0 + 10u, acc2_2.z); }
        if (c0 + 11u < p.n) { store(row2 + c0 + 11u, acc2_2.w); }
        if (c0 + 12u < p.n) { store(row2 + c0 + 12u, acc2_3.x); }
        if (c0 + 13u < p.n) { store(row2 + c0 + 13u, acc2_3.y); }
        if (c0 + 14u < p.n) { store(row2 + c0 + 14u, acc2_3.z); }
        if (c0 + 15u < p.n) { store(row2 + c0 + 15u, acc2_3.w); }
    }
    if (r0 + 3u < p.m) {
        let row3 = c_base + (r0 + 3u) * p.ldc;
        if (c0 + 0u < p.n) { store(row3 + c0 + 0u, acc3_0.x); }
        if (c0 + 1u < p.n) { store(row3 + c0 + 1u, acc3_0.y); }
        if (c0 + 2u < p.n) { store(row3 + c0 + 2u, acc3_0.z); }
        if (c0 + 3u < p.n) { store(row3 + c0 + 3u, acc3_0.w); }
        if (c0 + 4u < p.n) { store(row3 + c0 + 4u, acc3_1.x); }
        if (c0 + 5u < p.n) { store(row3 + c0 + 5u, acc3_1.y); }
        if (c0 + 6u < p.n) { store(row3 + c0 + 6u, acc3_1.z); }
        if (c0 + 7u < p.n) { store(row3 + c0 + 7u, acc3_1.w); }
        if (c0 + 8u < p.n) { store(row3 + c0 + 8u, acc3_2.x); }
        if (c0 + 9u < p.n) { store(row3 + c0 + 9u, acc3_2.y); }
        if (c0 + 10u < p.n) { store(row3 + c0 + 10u, acc3_2.z); }
        if (c0 + 11u < p.n) { store(row3 + c0 + 11u, acc3_2.w); }
        if (c0 + 12u < p.n) { store(row3 + c0 + 12u, acc3_3.x); }
        if (c0 + 13u < p.n) { store(row3 + c0 + 13u, acc3_3.y); }
        if (c0 + 14u < p.n) { store(row3 + c0 + 14u, acc3_3.z); }
        if (c0 + 15u < p.n) { store(row3 + c0 + 15u, acc3_3.w); }
    }
    if (r0 + 4u < p.m) {
        let row4 = c_base + (r0 + 4u) * p.ldc;
        if (c0 + 0u < p.n) { store(row4 + c0 + 0u, acc4_0.x); }
        if (c0 + 1u < p.n) { store(row4 + c0 + 1u, acc4_0.y); }
        if (c0 + 2u < p.n) { store(row4 + c0 + 2u, acc4_0.z); }
        if (c0 + 3u < p.n) { store(row4 + c0 + 3u, acc4_0.w); }
        if (c0 + 4u < p.n) { store(row4 + c0 + 4u, acc4_1.x); }
        if (c0 + 5u < p.n) { store(row4 + c0 + 5u, acc4_1.y); }
        if (c0 + 6u < p.n) { store(row4 + c0 + 6u, acc4_1.z); }
        if (c0 + 7u < p.n) { store(row4 + c0 + 7u, acc4_1.w); }
        if (c0 + 8u < p.n) { store(row4 + c0 + 8u, acc4_2.x); }
        if (c0 + 9u < p.n) { store(row4 + c0 + 9u, acc4_2.y); }
        if (c0 + 10u < p.n) { store(row4 + c0 + 10u, acc4_2.z); }
        if (c0 + 11u < p.n) { store(row4 + c0 + 11u, acc4_2.w); }
        if (c0 + 12u < p.n) { store(row4 + c0 + 12u, acc4_3.x); }
        if (c0 + 13u < p.n) { store(row4 + c0 + 13u, acc4_3.y); }
        if (c0 + 14u < p.n) { store(row4 + c0 + 14u, acc4_3.z); }
        if (c0 + 15u < p.n) { store(row4 + c0 + 15u, acc4_3.w); }
    }
    if (r0 + 5u < p.m) {
        let row5 = c_base + (r0 + 5u) * p.ldc;
        if (c0 + 0u < p.n) { store(row5 + c0 + 0u, acc5_0.x); }
        if (c0 + 1u < p.n) { store(row5 + c0 + 1u, acc5_0.y); }
        if (c0 + 2u < p.n) { store(row5 + c0 + 2u, acc5_0.z); }
        if (c0 + 3u < p.n) { store(row5 + c0 + 3u, acc5_0.w); }
        if (c0 + 4u < p.n) { store(row5 + c0 + 4u, acc5_1.x); }
        if (c0 + 5u < p.n) { store(row5 + c0 + 5u, acc5_1.y); }
        if (c0 + 6u < p.n) { store(row5 + c0 + 6u, acc5_1.z); }
        if (c0 + 7u < p.n) { store(row5 + c0 + 7u, acc5_1.w); }
        if (c0 + 8u < p.n) { store(row5 + c0 + 8u, acc5_2.x); }
        if (c0 + 9u < p.n) { store(row5 + c0 + 9u, acc5_2.y); }
        if (c0 + 10u < p.n) { store(row5 + c0 + 10u, acc5_2.z); }
        if (c0 + 11u < p.n) { store(row5 + c0 + 11u, acc5_2.w); }
        if (c0 + 12u < p.n) { store(row5 + c0 + 12u, acc5_3.x); }
        if (c0 + 13u < p.n) { store(row5 + c0 + 13u, acc5_3.y); }
        if (c0 + 14u < p.n) { store(row5 + c0 + 14u, acc5_3.z); }
        if (c0 + 15u < p.n) { store(row5 + c0 + 15u, acc5_3.w); }
    }
    if (r0 + 6u < p.m) {
        let row6 = c_base + (r0 + 6u) * p.ldc;
        if (c0 + 0u < p.n) { store(row6 + c0 + 0u, acc6_0.x); }
        if (c0 + 1u < p.n) { store(row6 + c0 + 1u, acc6_0.y); }
        if (c0 + 2u < p.n) { store(row6 + c0 + 2u, acc6_0.z); }
        if (c0 + 3u < p.n) { store(row6 + c0 + 3u, acc6_0.w); }
        if (c0 + 4u < p.n) { store(row6 + c0 + 4u, acc6_1.x); }
        if (c0 + 5u < p.n) { store(row6 + c0 + 5u, acc6_1.y); }
        if (c0 + 6u < p.n) { store(row6 + c0 + 6u, acc6_1.z); }
        if (c0 + 7u < p.n) { store(row6 + c0 + 7u, acc6_1.w); }
        if (c0 + 8u < p.n) { store(row6 + c0 + 8u, acc6_2.x); }
        if (c0 + 9u < p.n) { store(row6 + c0 + 9u, acc6_2.y); }
        if (c0 + 10u < p.n) { store(row6 + c0 + 10u, acc6_2.z); }
        if (c0 + 11u < p.n) { store(row6 + c0 + 11u, acc6_2.w); }
        if (c0 + 12u < p.n) { store(row6 + c0 + 12u, acc6_3.x); }
        if (c0 + 13u < p.n) { store(row6 + c0 + 13u, acc6_3.y); }
        if (c0 + 14u < p.n) { store(row6 + c0 + 14u, acc6_3.z); }
        if (c0 + 15u < p.n) { store(row6 + c0 + 15u, acc6_3.w); }
    }
    if (r0 + 7u < p.m) {
        let row7 = c_base + (r0 + 7u) * p.ldc;
        if (c0 + 0u < p.n) { store(row7 + c0 + 0u, acc7_0.x); }
        if (c0 + 1u < p.n) { store(row7 + c0 + 1u, acc7_0.y); }
        if (c0 + 2u < p.n) { store(row7 + c0 + 2u, acc7_0.z); }
        if (c0 + 3u < p.n) { store(row7 + c0 + 3u, acc7_0.w); }
        if (c0 + 4u < p.n) { store(row7 + c0 + 4u, acc7_1.x); }
        if (c0 + 5u < p.n) { store(row7 + c0 + 5u, acc7_1.y); }
        if (c0 + 6u < p.n) { store(row7 + c0 + 6u, acc7_1.z); }
        if (c0 + 7u < p.n) { store(row7 + c0 + 7u, acc7_1.w); }
        if (c0 + 8u < p.n) { store(row7 + c0 + 8u, acc7_2.x); }
        if (c0 + 9u < p.n) { store(row7 + c0 + 9u, acc7_2.y); }
        if (c0 + 10u < p.n) { store(row7 + c0 + 10u, acc7_2.z); }
        if (c0 + 11u < p.n) { store(row7 + c0 + 11u, acc7_2.w); }
        if (c0 + 12u < p.n) { store(row7 + c0 + 12u, acc7_3.x); }
        if (c0 + 13u < p.n) { store(row7 + c0 + 13u, acc7_3.y); }
        if (c0 + 14u < p.n) { store(row7 + c0 + 14u, acc7_3.z); }
        if (c0 + 15u < p.n) { store(row7 + c0 + 15u, acc7_3.w); }
    }
}

// ---- shared-memory tiled ------------------------------------------------------------------

// Tiles of op(A) [16 k][64 rows] and op(B) [16 k][64 cols], k-major so the inner loop reads
// contiguous runs of both.
var<workgroup> tile_a: array<f32, 1024>;
var<workgroup> tile_b: array<f32, 1024>;

@compute @workgroup_size(16, 16)
fn matmul_tiled(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
                @builtin(local_invocation_index) li: u32) {
    let row0 = wid.y * 64u;
    let col0 = wid.x * 64u;
    let batch = wid.z + p.z_base;
    let a_base = p.off_a + batch * p.stride_a;
    let b_base = p.off_b + batch * p.stride_b;
    let c_base = p.off_c + batch * p.stride_c;
    var acc0 = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);
    for (var t = 0u; t < p.k; t += 16u) {
        for (var l = 0u; l < 4u; l++) {
            let e = li + l * 256u;
            // Pick the mapping of invocations to tile elements so that neighbouring invocations
            // read neighbouring addresses of the stored matrix.
            var kk = e % 16u;
            var mm = e / 16u;
            if (TRANS_A) { kk = e / 64u; mm = e % 64u; }
            let gr = row0 + mm;
            let gk = t + kk;
            var va = 0.0;
            if (gr < p.m && gk < p.k) {
                va = a[a_base + select(gr * p.lda + gk, gk * p.lda + gr, TRANS_A)];
            }
            tile_a[kk * 64u + mm] = va;
            var kb = e / 64u;
            var nn = e % 64u;
            if (TRANS_B) { kb = e % 16u; nn = e / 16u; }
            let gc = col0 + nn;
            let gkb = t + kb;
            var vb = 0.0;
            if (gc < p.n && gkb < p.k) {
                vb = load_b(b_base + select(gkb * p.ldb + gc, gc * p.ldb + gkb, TRANS_B));
            }
            tile_b[kb * 64u + nn] = vb;
        }
        workgroupBarrier();
        for (var kk = 0u; kk < 16u; kk++) {
            let ai = kk * 64u + lid.y * 4u;
            let bi = kk * 64u + lid.x * 4u;
            let bv = vec4<f32>(tile_b[bi], tile_b[bi + 1u], tile_b[bi + 2u], tile_b[bi + 3u]);
            acc0 = fma(vec4<f32>(tile_a[ai]), bv, acc0);
            acc1 = fma(vec4<f32>(tile_a[ai + 1u]), bv, acc1);
            acc2 = fma(vec4<f32>(tile_a[ai + 2u]), bv, acc2);
            acc3 = fma(vec4<f32>(tile_a[ai + 3u]), bv, acc3);
        }
        workgroupBarrier();
    }
    let r = row0 + lid.y * 4u;
    let cc = col0 + lid.x * 4u;
    var accs = array<vec4<f32>, 4>(acc0, acc1, acc2, acc3);
    for (var i = 0u; i < 4u; i++) {
        if (r + i < p.m) {
            let rowi = c_base + (r + i) * p.ldc;
            let v = accs[i];
            for (var j = 0u; j < 4u; j++) {
                if (cc + j < p.n) { store(rowi + cc + j, v[j]); }
            }
        }
    }
}
