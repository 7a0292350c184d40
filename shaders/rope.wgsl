// Rotary position embedding, Hugging Face's half-split (rotate_half) form, on x: [N, heads·D]
// (head h in columns h·D..(h+1)·D); row n at position positions[n]; table: [P, D/2, 2] of
// (cos θ, sin θ). With x1, x2 the halves of a head: y1 = x1·cos − x2·sin, y2 = x2·cos + x1·sin;
// `sign` = −1 rotates by −θ (the inverse, which is also the backward).
// One invocation per (row, head), its half-pairs walked in order: one integer division per
// head instead of one per value (software adapters run vector divisions as scalar ones).

struct Params {
    // (row, head) pairs in this chunk
    pairs: u32,
    heads: u32,
    half: u32,
    sign: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> positions: array<u32>;
@group(0) @binding(3) var<storage, read> table: array<f32>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;

const WG: u32 = 64u;

@compute @workgroup_size(64)
fn rope_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_id) lid: vec3<u32>) {
    let idx = (wid.y * nwg.x + wid.x) * WG + lid.x;
    if (idx >= p.pairs) { return; }
    let row = idx / p.heads;
    // Head h of row `row` starts at (row·heads + h)·D = idx·D.
    let base = idx * 2u * p.half;
    let t = positions[row] * p.half * 2u;
    for (var i = 0u; i < p.half; i++) {
        let c = table[t + 2u * i];
        let s = p.sign * table[t + 2u * i + 1u];
        let a = x[base + i];
        let b = x[base + p.half + i];
        y[base + i] = a * c - b * s;
        y[base + p.half + i] = b * c + a * s;
    }
}
