// Bias add and its backward (column sums).

struct Params {
    // rows × cols of this chunk
    rows: u32,
    cols: u32,
    // col_sum: 1 adds to the existing output (`+=`), 0 overwrites it
    accumulate: u32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> bias: array<f32>;
@group(0) @binding(2) var<storage, read_write> x: array<f32>;
@group(0) @binding(3) var<storage, read> dy: array<f32>;
@group(0) @binding(4) var<storage, read_write> dbias: array<f32>;
// bias and x as vec4 when cols % 4 == 0 (`bias_forward_vec4`, cols in vec4 units).
@group(0) @binding(5) var<storage, read> bias4: array<vec4<f32>>;
@group(0) @binding(6) var<storage, read_write> x4: array<vec4<f32>>;

// x[r, c] += bias[c]; x: [rows, cols] — a workgroup per 8 rows, 8 invocations along each row
// (no integer division per element: software adapters run a vector one as eight scalar ones).
@compute @workgroup_size(8, 8)
fn bias_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_id) lid: vec3<u32>) {
    let r = (wid.y * nwg.x + wid.x) * 8u + lid.y;
    if (r >= p.rows) { return; }
    for (var c = lid.x; c < p.cols; c += 8u) { x[r * p.cols + c] = x[r * p.cols + c] + bias[c]; }
}

@compute @workgroup_size(8, 8)
fn bias_forward_vec4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                     @builtin(local_invocation_id) lid: vec3<u32>) {
    let r = (wid.y * nwg.x + wid.x) * 8u + lid.y;
    if (r >= p.rows) { return; }
    for (var c = lid.x; c < p.cols; c += 8u) { x4[r * p.cols + c] = x4[r * p.cols + c] + bias4[c]; }
}

// dbias[c] (+)= Σ_r dy[r, c] — one invocation per column, rows summed in order so the result
// is deterministic and matches the CPU backend's order; neighbouring invocations read
// neighbouring columns, so every row read is coalesced.
@compute @workgroup_size(64)
fn bias_backward(@builtin(global_invocation_id) gid: vec3<u32>) {
    let c = gid.x;
    if (c >= p.cols) { return; }
    var acc = 0.0;
    for (var r = 0u; r < p.rows; r++) {
        acc += dy[r * p.cols + c];
    }
    if (p.accumulate != 0u) { acc = dbias[c] + acc; }
    dbias[c] = acc;
}
