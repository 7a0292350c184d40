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

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> ids: array<u32>;
@group(0) @binding(2) var<storage, read> table: array<u32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
@group(0) @binding(4) var<storage, read> uniq: array<u32>;
@group(0) @binding(5) var<storage, read> offsets: array<u32>;
@group(0) @binding(6) var<storage, read> positions: array<u32>;
@group(0) @binding(7) var<storage, read> dout: array<f32>;
@group(0) @binding(8) var<storage, read_write> dtable: array<f32>;

fn load_table(i: u32) -> f32 {
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
