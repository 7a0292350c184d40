// Row-wise layer norm: y = (x − mean)·rstd·gamma + beta, saving mean and rstd per row.
// One 256-wide workgroup per row (2-D grid past 65535 rows); sums go through a shared-memory
// tree so a row of any width (1 … 1000s) is handled by the same kernel.

struct Params {
    rows: u32,
    cols: u32,
    eps: f32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> gamma: array<f32>;
@group(0) @binding(3) var<storage, read> beta: array<f32>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;
@group(0) @binding(5) var<storage, read_write> mean_out: array<f32>;
@group(0) @binding(6) var<storage, read_write> rstd_out: array<f32>;
@group(0) @binding(7) var<storage, read> dy: array<f32>;
@group(0) @binding(8) var<storage, read> mean_in: array<f32>;
@group(0) @binding(9) var<storage, read> rstd_in: array<f32>;
@group(0) @binding(10) var<storage, read_write> dx: array<f32>;
@group(0) @binding(11) var<storage, read_write> dgamma: array<f32>;

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

// x, y: [rows, cols]; gamma, beta: [cols]; mean, rstd: [rows]
@compute @workgroup_size(256)
fn layernorm_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                     @builtin(local_invocation_id) lid3: vec3<u32>) {
    let row = wid.y * nwg.x + wid.x;
    if (row >= p.rows) { return; }
    let lid = lid3.x;
    let base = row * p.cols;
    let n = f32(p.cols);
    var s = 0.0;
    for (var c = lid; c < p.cols; c += 256u) { s += x[base + c]; }
    let m = block_sum(s, lid) / n;
    // Two passes (mean, then squared deviations), as the CPU backend: no cancellation.
    var s2 = 0.0;
    for (var c = lid; c < p.cols; c += 256u) {
        let d = x[base + c] - m;
        s2 += d * d;
    }
    let var_ = block_sum(s2, lid) / n;
    let rs = 1.0 / sqrt(var_ + p.eps);
    for (var c = lid; c < p.cols; c += 256u) {
        y[base + c] = (x[base + c] - m) * rs * gamma[c] + beta[c];
    }
    if (lid == 0u) {
        mean_out[row] = m;
        rstd_out[row] = rs;
    }
}

// dx = (dy·gamma − mean(dy·gamma) − x̂·mean(dy·gamma·x̂))·rstd, one workgroup per row.
@compute @workgroup_size(256)
fn layernorm_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                      @builtin(local_invocation_id) lid3: vec3<u32>) {
    let row = wid.y * nwg.x + wid.x;
    if (row >= p.rows) { return; }
    let lid = lid3.x;
    let base = row * p.cols;
    let m = mean_in[row];
    let rs = rstd_in[row];
    var sg = 0.0;
    var sgx = 0.0;
    for (var c = lid; c < p.cols; c += 256u) {
        let g = dy[base + c] * gamma[c];
        sg += g;
        sgx += g * (x[base + c] - m) * rs;
    }
    let n = f32(p.cols);
    let mean_g = block_sum(sg, lid) / n;
    let mean_gx = block_sum(sgx, lid) / n;
    for (var c = lid; c < p.cols; c += 256u) {
        let xhat = (x[base + c] - m) * rs;
        dx[base + c] = (dy[base + c] * gamma[c] - mean_g - xhat * mean_gx) * rs;
    }
}

// dgamma[c] += Σ_r dy[r, c]·x̂[r, c] — one invocation per column, rows in order (deterministic).
// (dbeta is the bias backward: bias.wgsl.)
@compute @workgroup_size(64)
fn layernorm_backward_dgamma(@builtin(global_invocation_id) gid: vec3<u32>) {
    let c = gid.x;
    if (c >= p.cols) { return; }
    var acc = 0.0;
    for (var r = 0u; r < p.rows; r++) {
        let i = r * p.cols + c;
        acc += dy[i] * (x[i] - mean_in[r]) * rstd_in[r];
    }
    dgamma[c] = dgamma[c] + acc;
}
