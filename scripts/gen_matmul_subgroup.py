#!/usr/bin/env python3
"""Writes shaders/matmul_subgroup.wgsl, the GEMM kernel for CPU-type adapters (lavapipe), and
shaders/matmul_small.wgsl, its guarded small-tile twins for the blocks of a GEMM that whole
tiles do not cover (LoRA's rank-r products, attention's per-head GEMMs, edge strips).

Why generated: the kernel must be fully unrolled. On Mesa 22.3's llvmpipe every storage-buffer
load with a per-invocation address becomes a loop over the 8 SIMD lanes (with a store-forwarding
stall per lane), so loads, not FMAs, set the speed; and loops over private arrays combined with
subgroup operations miscompiled there (wrong results) in our tests. WGSL has no macros, so the
unrolled body is written out by this script. Edit the script, not the .wgsl file:

    python3 scripts/gen_matmul_subgroup.py        # rewrites both .wgsl files
    python3 scripts/gen_matmul_subgroup.py --check  # fails if either is stale (tests run it)
"""
import pathlib
import sys

TM = 16  # rows of C per invocation
TN = 64  # columns of C per subgroup, shared by its 8 invocations
LANES = 8  # workgroup = one subgroup of 8 (the host requires a minimum subgroup size of 8)
# k is summed in slices of KC steps, each into fresh accumulators added to running totals at
# its end. llvmpipe runs WGSL's fma() as a multiply and an add (two roundings: measured, the
# fused result 2^-24 of tests/gpu_precision.rs comes out 0), and one running sum over k = 576
# or 1536 rounds into an ever larger accumulator; slices of 64 cut the GEMM's error 3-6x
# (SmolLM2's logits: 1.5e-4 -> 7.8e-5 from transformers') for ~2% GEMM time (slices of 32: ~18%).
KC = 64


def shared_decls() -> str:
    """Overrides, parameters, bindings and the load/store helpers of both generated files."""
    return """override TRANS_A: bool = false;
override TRANS_B: bool = false;
// beta != 0, as a pipeline constant: a branch per store costs minutes of llvmpipe compile time.
override ACCUMULATE: bool = false;
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
// op(A): m x k, stored m x k, or k x m when TRANS_A
@group(0) @binding(1) var<storage, read> a: array<f32>;
// op(B): k x n, stored k x n, or n x k when TRANS_B
@group(0) @binding(2) var<storage, read> b: array<u32>;
// C: m x n
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
    if (ACCUMULATE) {
        c[i] = p.alpha * v + p.beta * c[i];
    } else {
        c[i] = p.alpha * v;
    }
}
"""


def kernel(w, entry: str, tm: int, tn: int, guarded: bool) -> None:
    """Writes entry point `entry`: a subgroup of LANES computes a (LANES·tm)×tn block of C, each
    invocation tm rows, op(B) shared by subgroupBroadcast. `guarded` clamps loads to the last
    row and column and skips stores past m or n (the small tiles); otherwise whole tiles only."""
    q4 = tn // 4  # vec4 accumulators per row
    w(f"""@compute @workgroup_size({LANES})
fn {entry}(@builtin(workgroup_id) wid: vec3<u32>,
                   @builtin(subgroup_invocation_id) lane: u32) {{
    let r0 = wid.y * {LANES * tm}u + lane * {tm}u;
    let c0 = wid.x * {tn}u;
    let batch = wid.z + p.z_base;
    let a_base = p.off_a + batch * p.stride_a;
    let b_base = p.off_b + batch * p.stride_b;
    let c_base = p.off_c + batch * p.stride_c;
    let a_kstep = select(1u, p.lda, TRANS_A);
    let b_kstep = select(p.ldb, 1u, TRANS_B);""")
    if guarded:
        for i in range(tm):
            w(f"    let ra{i} = min(r0 + {i}u, p.m - 1u);")
            w(f"    let ao{i} = a_base + select(ra{i} * p.lda, ra{i}, TRANS_A);")
        for q in range(tn // LANES):
            w(f"    let cb{q} = min(c0 + {q * LANES}u + lane, p.n - 1u);")
            w(f"    let bo{q} = b_base + select(cb{q}, cb{q} * p.ldb, TRANS_B);")
    else:
        w("    // Offsets of this invocation's rows of op(A).")
        for i in range(tm):
            w(f"    let ao{i} = a_base + select((r0 + {i}u) * p.lda, r0 + {i}u, TRANS_A);")
        w("    // The op(B) columns this invocation loads for the subgroup: c0 + 8q + lane.")
        for q in range(tn // LANES):
            w(f"    let cb{q} = c0 + {q * LANES}u + lane;")
            w(f"    let bo{q} = b_base + select(cb{q}, cb{q} * p.ldb, TRANS_B);")
    # k in slices of KC: each slice sums into fresh accumulators (acc), added to the totals
    # (tot) at its end. See KC for why.
    for i in range(tm):
        w("    " + " ".join(f"var tot{i}_{q} = vec4<f32>(0.0);" for q in range(q4)))
    w("    var ka = 0u;")
    w("    var kb = 0u;")
    w(f"    for (var k0 = 0u; k0 < p.k; k0 += {KC}u) {{")
    w(f"        let k1 = min(k0 + {KC}u, p.k);")
    for i in range(tm):
        w("        " + " ".join(f"var acc{i}_{q} = vec4<f32>(0.0);" for q in range(q4)))
    w("        for (var kk = k0; kk < k1; kk++) {")
    for q in range(tn // LANES):
        w(f"            let bl{q} = load_b(bo{q} + kb);")
    for q in range(q4):
        src = (4 * q) // LANES
        lanes = [(4 * q + e) % LANES for e in range(4)]
        parts = ", ".join(f"subgroupBroadcast(bl{src}, {l}u)" for l in lanes)
        w(f"            let b{q} = vec4<f32>({parts});")
    for i in range(tm):
        w(f"            let a{i} = vec4<f32>(a[ao{i} + ka]);")
        for q in range(q4):
            w(f"            acc{i}_{q} = fma(a{i}, b{q}, acc{i}_{q});")
    w("            ka += a_kstep;")
    w("            kb += b_kstep;")
    w("        }")
    for i in range(tm):
        w("        " + " ".join(f"tot{i}_{q} += acc{i}_{q};" for q in range(q4)))
    w("    }")
    if guarded:
        w(f"    let cols = min(p.n - min(p.n, c0), {tn}u);")
        for i in range(tm):
            w(f"    if (r0 + {i}u < p.m) {{")
            w(f"        let row = c_base + (r0 + {i}u) * p.ldc + c0;")
            for q in range(q4):
                for e, comp in enumerate("xyzw"):
                    j = 4 * q + e
                    w(f"        if ({j}u < cols) {{ store(row + {j}u, tot{i}_{q}.{comp}); }}")
            w("    }")
    else:
        for i in range(tm):
            w(f"    let row{i} = c_base + (r0 + {i}u) * p.ldc + c0;")
            for q in range(q4):
                for e, comp in enumerate("xyzw"):
                    w(f"    store(row{i} + {4 * q + e}u, tot{i}_{q}.{comp});")
    w("}")


def generate() -> str:
    out = []
    w = out.append
    w(f"""// GENERATED by scripts/gen_matmul_subgroup.py ({TM}x{TN}) -- edit the script, not this file.
//
// GEMM for CPU-type adapters: C[b] = alpha * op(A[b]) * op(B[b]) + beta * C[b], row-major, any
// shape, same parameters and bindings as matmul.wgsl. A workgroup is one subgroup of {LANES}
// invocations computing a {LANES * TM}x{TN} block of C: each invocation owns {TM} rows, the {TN}
// columns are shared. Per k step each invocation loads its {TM} values of op(A) and {TN // LANES} of
// op(B); the subgroup exchanges the op(B) values with subgroupBroadcast, so every B element is
// loaded once per subgroup instead of once per invocation. On llvmpipe a per-invocation load
// costs about as much as {LANES * 2} FMAs, and this cuts loads per FMA from 24/128 (matmul_blocked) to
// {TM + TN // LANES}/{TM * TN}. Whole tiles only: the host runs the rest of a GEMM (rows past a multiple
// of {LANES * TM}, columns past a multiple of {TN}, k < 16) on the small tiles of matmul_small.wgsl
// (guards here, one branch per store, took llvmpipe minutes to compile).
// Batches are the z dimension of the grid, offset by z_base.
""")
    w(shared_decls())
    kernel(w, "matmul_subgroup", TM, TN, guarded=False)
    return "\n".join(out) + "\n"


# Tiles of matmul_small.wgsl, (rows per invocation, columns per subgroup): the host picks
# 16x8 for n <= 8 (x·Aᵀ, dY·B of LoRA), 1x64 for m <= 8 (dA = dXAᵀ·X), 8x32 otherwise.
SMALL_TILES = [(16, 8), (8, 32), (1, 64)]


def generate_small() -> str:
    out = []
    w = out.append
    tiles = ", ".join(f"{tm}x{tn}" for tm, tn in SMALL_TILES)
    w(f"""// GENERATED by scripts/gen_matmul_subgroup.py (tiles {tiles}) -- edit the script, not this file.
//
// The subgroup GEMM of matmul_subgroup.wgsl on small tiles, with edge guards: for the blocks of
// a GEMM that its whole {LANES * TM}x{TN} tiles do not cover, and for GEMMs smaller than one tile
// (LoRA's rank-r products, attention's per-head GEMMs). Same parameters and bindings. Entry
// matmul_small_RxC: a subgroup of {LANES} computes a {LANES}R x C block, each invocation R rows,
// op(B) loaded once per subgroup and shared by subgroupBroadcast (loads, not FMAs, set the
// speed on llvmpipe). Loads are clamped to the last row and column, so every invocation runs
// the same k loop (subgroup operations need all {LANES} active); stores past m or n are skipped.
""")
    w(shared_decls())
    for tm, tn in SMALL_TILES:
        kernel(w, f"matmul_small_{tm}x{tn}", tm, tn, guarded=True)
        w("")
    return "\n".join(out)


def main() -> None:
    shaders = pathlib.Path(__file__).resolve().parent.parent / "shaders"
    stale = []
    for name, text in [("matmul_subgroup", generate()), ("matmul_small", generate_small())]:
        path = shaders / f"{name}.wgsl"
        if "--check" in sys.argv:
            if not path.exists() or path.read_text() != text:
                stale.append(str(path))
            continue
        path.write_text(text)
        print(f"wrote {path} ({text.count(chr(10))} lines)")
    if stale:
        sys.exit(f"stale: {', '.join(stale)}: run python3 scripts/gen_matmul_subgroup.py")


if __name__ == "__main__":
    main()
