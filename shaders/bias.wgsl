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

// x[r, c] += bias[c]; x: [rows, cols] — one invocation per element, 2-D grid.
@compute @workgroup_size(256)
fn bias_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = (wid.y * nwg.x + wid.x) * 256u + lid.x;
    if (i < p.rows * p.cols) { x[i] = x[i] + bias[i % p.cols]; }
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
