// permute0213: y[a, c, b, d] = x[a, b, c, d], e.g. [B, T, H, D] ↔ [B, H, T, D].

struct Params {
    d0: u32,
    d1: u32,
    d2: u32,
    d3: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;

// One invocation per output element, so writes are coalesced; reads are contiguous along d.
@compute @workgroup_size(256)
fn permute_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                   @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = (wid.y * nwg.x + wid.x) * 256u + lid.x;
    if (i >= p.d0 * p.d1 * p.d2 * p.d3) { return; }
    // y: [d0, d2, d1, d3]
    let d = i % p.d3;
    let row = i / p.d3;
    let b = row % p.d1;
    let c = (row / p.d1) % p.d2;
    let a = row / (p.d1 * p.d2);
    y[i] = x[((a * p.d1 + b) * p.d2 + c) * p.d3 + d];
}
