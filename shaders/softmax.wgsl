// Attention softmax over the last axis of scores [batch, heads, tq, tk], with the causal mask
// (query i sees keys j ≤ i + tk − tq) and an optional key mask [batch, tk] (1 keep, 0 drop).
// One 256-wide workgroup per row; a row with no visible key is all zero.

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

var<workgroup> red: array<f32, 256>;

fn block_sum(v: f32, lid: u32) -> f32 {
    red[lid] = v;
    workgroupBarrier();
    for (var s = 128u; s > 0u; s = s >> 1u) {
        if (lid < s) { red[lid] = red[lid] + red[lid + s]; }
        workgroupBarrier();
    }
    let r = red[0];
    workgroupBarrier();
    return r;
}

fn block_max(v: f32, lid: u32) -> f32 {
    red[lid] = v;
    workgroupBarrier();
    for (var s = 128u; s > 0u; s = s >> 1u) {
        if (lid < s) { red[lid] = max(red[lid], red[lid + s]); }
        workgroupBarrier();
    }
    let r = red[0];
    workgroupBarrier();
    return r;
}

@compute @workgroup_size(256)
fn softmax_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                   @builtin(local_invocation_id) lid3: vec3<u32>) {
    let row = wid.y * nwg.x + wid.x;
    if (row >= p.rows) { return; }
    let lid = lid3.x;
    let grow = p.row0 + row;
    let i = grow % p.tq;
    let b = grow / (p.tq * p.heads);
    let base = row * p.tk;
    var mx = -3.4028235e38;
    var seen = 0.0;
    for (var j = lid; j < p.tk; j += 256u) {
        let vis = (p.causal == 0u || j + p.tq <= i + p.tk) && (p.has_mask == 0u || key_mask[b * p.tk + j] != 0.0);
        if (vis) {
            mx = max(mx, scores[base + j] * p.scale);
            seen += 1.0;
        }
    }
    mx = block_max(mx, lid);
    seen = block_sum(seen, lid);
    if (seen == 0.0) {
        for (var j = lid; j < p.tk; j += 256u) { probs[base + j] = 0.0; }
        return;
    }
    var z = 0.0;
    for (var j = lid; j < p.tk; j += 256u) {
        let vis = (p.causal == 0u || j + p.tq <= i + p.tk) && (p.has_mask == 0u || key_mask[b * p.tk + j] != 0.0);
        var e = 0.0;
        if (vis) { e = exp(scores[base + j] * p.scale - mx); }
        probs[base + j] = e;
        z += e;
    }
    let inv = 1.0 / block_sum(z, lid);
    // Each invocation rescales exactly the entries it wrote: no barrier needed.
    for (var j = lid; j < p.tk; j += 256u) { probs[base + j] = probs[base + j] * inv; }
}

// dscores = scale · probs ⊙ (dprobs − Σ_j probs·dprobs)
@compute @workgroup_size(256)
fn softmax_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                    @builtin(local_invocation_id) lid3: vec3<u32>) {
    let row = wid.y * nwg.x + wid.x;
    if (row >= p.rows) { return; }
    let lid = lid3.x;
    let base = row * p.tk;
    var d = 0.0;
    for (var j = lid; j < p.tk; j += 256u) { d += probs_in[base + j] * dprobs[base + j]; }
    let dot = block_sum(d, lid);
    for (var j = lid; j < p.tk; j += 256u) {
        dscores[base + j] = p.scale * probs_in[base + j] * (dprobs[base + j] - dot);
    }
}
