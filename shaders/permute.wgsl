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
// The same tensors as vec4 when d3 % 4 == 0 (`permute_forward_vec4`, d3 in vec4 units): a
// software adapter moves one vec4 per invocation for what a scalar copy moves in one float.
@group(0) @binding(3) var<storage, read> x4: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read_write> y4: array<vec4<f32>>;

// One workgroup per source plane x[a, b, :, :] (d2·d3 contiguous values), 8 invocations along d
// and 8 along c: no integer division per element (software adapters run a vector division
// as eight scalar ones, which cost more than the copy), and each run of 8 along d is contiguous
// on both sides.
@compute @workgroup_size(8, 8)
fn permute_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                   @builtin(local_invocation_id) lid: vec3<u32>) {
    let plane = wid.y * nwg.x + wid.x;
    if (plane >= p.d0 * p.d1) { return; }
    let a = plane / p.d1;
    let b = plane % p.d1;
    for (var c = lid.y; c < p.d2; c += 8u) {
        let src = (plane * p.d2 + c) * p.d3;
        let dst = ((a * p.d2 + c) * p.d1 + b) * p.d3;
        for (var d = lid.x; d < p.d3; d += 8u) { y[dst + d] = x[src + d]; }
    }
}

@compute @workgroup_size(8, 8)
fn permute_forward_vec4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                        @builtin(local_invocation_id) lid: vec3<u32>) {
    let plane = wid.y * nwg.x + wid.x;
    if (plane >= p.d0 * p.d1) { return; }
    let a = plane / p.d1;
    let b = plane % p.d1;
    for (var c = lid.y; c < p.d2; c += 8u) {
        let src = (plane * p.d2 + c) * p.d3;
        let dst = ((a * p.d2 + c) * p.d1 + b) * p.d3;
        for (var d = lid.x; d < p.d3; d += 8u) { y4[dst + d] = x4[src + d]; }
    }
}
