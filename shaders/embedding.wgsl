// Embedding lookup and its deterministic scatter-add backward.
// The backward needs no atomics: when ids are uploaded the host builds a CSR of positions per
// unique id (positions in token order), and one workgroup per unique id sums its rows in that
// order — the same order as the CPU backend, so results match it bit for bit.

struct Params {
    // forward: number of ids; backward: number of unique ids
    n: u32,
    dim: u32,
    accumulate: u32,
    _pad: u32,
}

const IGNORE: u32 = 0xffffffffu;
// The table as stored: f32, or bf16 two per 32-bit word (value 2i in the low half of word i)
// when TABLE_BF16 (frozen embeddings kept in bf16).
override TABLE_BF16: bool = false;
// The table in one of GGUF's block formats when TABLE_QUANT > 0 (1 Q8_0, 2 Q4_0, 3 Q4_1), bytes
// as llama.cpp stores them, 32 values per block (a row is whole blocks); the same decoding as
// `load_quant` in matmul.wgsl, which documents the formats.
override TABLE_QUANT: u32 = 0u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> ids: array<u32>;
@group(0) @binding(2) var<storage, read> table: array<u32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
@group(0) @binding(4) var<storage, read> uniq: array<u32>;
@group(0) @binding(5) var<storage, read> offsets: array<u32>;
@group(0) @binding(6) var<storage, read> positions: array<u32>;
@group(0) @binding(7) var<storage, read> dout: array<f32>;
@group(0) @binding(8) var<storage, read_write> dtable: array<f32>;

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

fn table_byte(o: u32) -> u32 {
    return (table[o >> 2u] >> ((o & 3u) * 8u)) & 0xffu;
}

fn table_half(o: u32) -> f32 {
    let w = table[o >> 2u];
    return half_to_f32(select(w, w >> 16u, (o & 2u) != 0u));
}

fn load_table_quant(i: u32) -> f32 {
    let blk = i >> 5u;
    let j = i & 31u;
    if (TABLE_QUANT == 1u) {
        let o = blk * 34u;
        let q = bitcast<i32>(table_byte(o + 2u + j) << 24u) >> 24u;
        return table_half(o) * f32(q);
    }
    let o = blk * select(20u, 18u, TABLE_QUANT == 2u);
    let qo = o + select(4u, 2u, TABLE_QUANT == 2u);
    let q = f32((table_byte(qo + (j & 15u)) >> ((j >> 4u) * 4u)) & 15u);
    if (TABLE_QUANT == 2u) {
        return table_half(o) * (q - 8.0);
    }
    return table_half(o) * q + table_half(o + 2u);
}

fn load_table(i: u32) -> f32 {
    if (TABLE_QUANT != 0u) {
        return load_table_quant(i);
    }
    if (TABLE_BF16) {
        let w = table[i >> 1u];
        return bitcast<f32>(select(w << 16u, w & 0xffff0000u, (i & 1u) != 0u));
    }
    return bitcast<f32>(table[i]);
}

// out[i, :] (+)= table[ids[i], :] — one invocation per output element (2-D grid).
@compute @workgroup_size(256)
fn embedding_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                     @builtin(local_invocation_id) lid: vec3<u32>) {
    let e = (wid.y * nwg.x + wid.x) * 256u + lid.x;
    if (e >= p.n * p.dim) { return; }
    let i = e / p.dim;
    let d = e % p.dim;
    let id = ids[i];
    var v = 0.0;
    if (id != IGNORE) { v = load_table(id * p.dim + d); }
    if (p.accumulate != 0u) { v += out[e]; }
    out[e] = v;
}

// dtable[uniq[u], :] += Σ_{pos in CSR row u, in order} dout[pos, :] — one workgroup per unique id.
@compute @workgroup_size(64)
fn embedding_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                      @builtin(local_invocation_id) lid: vec3<u32>) {
    let u = wid.y * nwg.x + wid.x;
    if (u >= p.n) { return; }
    let row = uniq[u] * p.dim;
    let lo = offsets[u];
    let hi = offsets[u + 1u];
    for (var d = lid.x; d < p.dim; d += 64u) {
        var acc = dtable[row + d];
        for (var k = lo; k < hi; k++) { acc += dout[positions[k] * p.dim + d]; }
        dtable[row + d] = acc;
    }
}
