// Elementwise ops over flat f32 buffers: fill, copy, scale, axpy, mul, mul_cols.
// One invocation per element; the host dispatches a 2-D grid of 256-wide groups (more than
// 65535 groups per dimension are needed past 16M elements) and binds sub-ranges of at most the
// storage binding limit, so `n` is the element count of this chunk.

struct Params {
    n: u32,
    cols: u32,
    s: f32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

fn index(wid: vec3<u32>, nwg: vec3<u32>, lid: vec3<u32>) -> u32 {
    return (wid.y * nwg.x + wid.x) * 256u + lid.x;
}

// out = s
@compute @workgroup_size(256)
fn fill_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = index(wid, nwg, lid);
    if (i < p.n) { out[i] = p.s; }
}

// out = a
@compute @workgroup_size(256)
fn copy_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = index(wid, nwg, lid);
    if (i < p.n) { out[i] = a[i]; }
}

// out *= s
@compute @workgroup_size(256)
fn scale_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = index(wid, nwg, lid);
    if (i < p.n) { out[i] = out[i] * p.s; }
}

// out += s · a
@compute @workgroup_size(256)
fn axpy_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = index(wid, nwg, lid);
    if (i < p.n) { out[i] = out[i] + p.s * a[i]; }
}

// out = a ⊙ b
@compute @workgroup_size(256)
fn mul_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = index(wid, nwg, lid);
    if (i < p.n) { out[i] = a[i] * b[i]; }
}

// out[r, c] = a[r, c] · b[c]; a, out: [rows, cols] (chunks start at whole rows), b: [cols]
@compute @workgroup_size(256)
fn mul_cols_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                    @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = index(wid, nwg, lid);
    if (i < p.n) { out[i] = a[i] * b[i % p.cols]; }
}
