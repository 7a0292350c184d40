// Attention softmax over the last axis of scores [batch, heads, tq, tk], with the causal mask
// (query i sees keys j ≤ i + tk − tq) and an optional key mask [batch, tk] (1 keep, 0 drop).
// One invocation per row, the row walked in order: attention rows are short (tk keys), and a
// workgroup-wide tree reduction per row costs ~20 barriers, which software adapters (lavapipe)
// run as a context switch per invocation — 30× slower than the whole row's arithmetic. A row
// with no visible key is all zero.

struct Params {
    // rows in this chunk; `row0` is the global index of its first row (for i and b)
    rows: u32,
    tq: u32,
    tk: u32,
    heads: u32,
    scale: f32,
    causal: u32,
    has_mask: u32,
    row0: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> scores: array<f32>;
@group(0) @binding(2) var<storage, read> key_mask: array<f32>;
@group(0) @binding(3) var<storage, read_write> probs: array<f32>;
@group(0) @binding(4) var<storage, read> probs_in: array<f32>;
@group(0) @binding(5) var<storage, read> dprobs: array<f32>;
@group(0) @binding(6) var<storage, read_write> dscores: array<f32>;

const WG: u32 = 64u;

// e^x to within 2 ulp of the correctly rounded value, as the CPU backend's `simd::exp`: n =
// round(x·log2 e), r = x − n·ln 2 in two parts (Cody–Waite; n·0.693359375 is exact), e^r by
// Cephes' degree-6 polynomial, 2^n from the exponent bits as two factors (each a normal f32
// for n in [−126, 128]). Not the builtin: llvmpipe's exp was measured 12 ulp off in these
// probabilities (7 with this one, as the CPU's; tests/gpu_precision.rs). Below −87.3: 0.
fn exp_accurate(x: f32) -> f32 {
    let xc = clamp(x, -87.33655, 88.72283);
    let n = round(xc * 1.4426950408889634);
    let r = xc - n * 0.693359375 + n * 2.1219444e-4;
    let pl = ((((1.9875691e-4 * r + 1.3982e-3) * r + 8.333452e-3) * r + 4.1665796e-2) * r
        + 0.16666665) * r + 0.5;
    let er = pl * (r * r) + r + 1.0;
    let ni = i32(n);
    let h = ni >> 1u;
    let s1 = bitcast<f32>(u32(h + 127) << 23u);
    let s2 = bitcast<f32>(u32(ni - h + 127) << 23u);
    return select(er * s1 * s2, 0.0, x < -87.33655);
}

fn row_index(wid: vec3<u32>, nwg: vec3<u32>, lid: vec3<u32>) -> u32 {
    return (wid.y * nwg.x + wid.x) * WG + lid.x;
}

@compute @workgroup_size(64)
fn softmax_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                   @builtin(local_invocation_id) lid: vec3<u32>) {
    let row = row_index(wid, nwg, lid);
    if (row >= p.rows) { return; }
    let grow = p.row0 + row;
    let i = grow % p.tq;
    let b = grow / (p.tq * p.heads);
    let base = row * p.tk;
    // Keys j < last pass the causal mask (j + tq ≤ i + tk).
    var last = p.tk;
    if (p.causal != 0u) {
        if (i + p.tk + 1u >= p.tq) { last = min(p.tk, i + p.tk + 1u - p.tq); } else { last = 0u; }
    }
    var mx = -3.4028235e38;
    var seen = false;
    for (var j = 0u; j < last; j++) {
        if (p.has_mask == 0u || key_mask[b * p.tk + j] != 0.0) {
            mx = max(mx, scores[base + j] * p.scale);
            seen = true;
        }
    }
    if (!seen) {
        for (var j = 0u; j < p.tk; j++) { probs[base + j] = 0.0; }
        return;
    }
    var z = 0.0;
    for (var j = 0u; j < p.tk; j++) {
        var e = 0.0;
        if (j < last && (p.has_mask == 0u || key_mask[b * p.tk + j] != 0.0)) {
            e = exp_accurate(scores[base + j] * p.scale - mx);
        }
        probs[base + j] = e;
        z += e;
    }
    let inv = 1.0 / z;
    for (var j = 0u; j < p.tk; j++) { probs[base + j] = probs[base + j] * inv; }
}

// dscores = scale · probs ⊙ (dprobs − Σ_j probs·dprobs), one invocation per row.
@compute @workgroup_size(64)
fn softmax_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                    @builtin(local_invocation_id) lid: vec3<u32>) {
    let row = row_index(wid, nwg, lid);
    if (row >= p.rows) { return; }
    let base = row * p.tk;
    var dot = 0.0;
    for (var j = 0u; j < p.tk; j++) { dot += probs_in[base + j] * dprobs[base + j]; }
    for (var j = 0u; j < p.tk; j++) {
        dscores[base + j] = p.scale * probs_in[base + j] * (dprobs[base + j] - dot);
    }
}
