// Row-wise layer norm: y = (x − mean)·rstd·gamma + beta, saving mean and rstd per row.
// One invocation per row, the row walked in order (2-D grid past 65535 workgroups): a
// workgroup-wide tree reduction costs ~20 barriers per row, which software adapters (lavapipe)
// run as a context switch per invocation, and sums in order match the CPU backend's.

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

const WG: u32 = 64u;

fn row_index(wid: vec3<u32>, nwg: vec3<u32>, lid: vec3<u32>) -> u32 {
    return (wid.y * nwg.x + wid.x) * WG + lid.x;
}

// x, y: [rows, cols]; gamma, beta: [cols]; mean, rstd: [rows]
@compute @workgroup_size(64)
fn layernorm_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                     @builtin(local_invocation_id) lid: vec3<u32>) {
    let row = row_index(wid, nwg, lid);
    if (row >= p.rows) { return; }
    let base = row * p.cols;
    let n = f32(p.cols);
    var s = 0.0;
    for (var c = 0u; c < p.cols; c++) { s += x[base + c]; }
    let m = s / n;
    // Two passes (mean, then squared deviations), as the CPU backend: no cancellation.
    var s2 = 0.0;
    for (var c = 0u; c < p.cols; c++) {
        let d = x[base + c] - m;
        s2 += d * d;
    }
    let rs = 1.0 / sqrt(s2 / n + p.eps);
    for (var c = 0u; c < p.cols; c++) {
        y[base + c] = (x[base + c] - m) * rs * gamma[c] + beta[c];
    }
    mean_out[row] = m;
    rstd_out[row] = rs;
}

// dx = (dy·gamma − mean(dy·gamma) − x̂·mean(dy·gamma·x̂))·rstd, one invocation per row.
@compute @workgroup_size(64)
fn layernorm_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                      @builtin(local_invocation_id) lid: vec3<u32>) {
    let row = row_index(wid, nwg, lid);
    if (row >= p.rows) { return; }
    let base = row * p.cols;
    let m = mean_in[row];
    let rs = rstd_in[row];
    var sg = 0.0;
    var sgx = 0.0;
    for (var c = 0u; c < p.cols; c++) {
        let g = dy[base + c] * gamma[c];
        sg += g;
        sgx += g * (x[base + c] - m) * rs;
    }
    let n = f32(p.cols);
    let mean_g = sg / n;
    let mean_gx = sgx / n;
    for (var c = 0u; c < p.cols; c++) {
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
