// Row-wise RMSNorm (Llama's LlamaRMSNorm): rstd = 1/sqrt(mean x² + eps), y = x·rstd·gamma,
// saving rstd per row. One invocation per row, the row walked in order (2-D grid past 65535
// workgroups), as layernorm.wgsl: a workgroup-wide tree reduction costs ~20 barriers per row,
// which software adapters (lavapipe) run as a context switch per invocation.

struct Params {
    rows: u32,
    cols: u32,
    eps: f32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> gamma: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;
@group(0) @binding(4) var<storage, read_write> rstd_out: array<f32>;
@group(0) @binding(5) var<storage, read> dy: array<f32>;
@group(0) @binding(6) var<storage, read> rstd_in: array<f32>;
@group(0) @binding(7) var<storage, read_write> dx: array<f32>;
@group(0) @binding(8) var<storage, read_write> dgamma: array<f32>;

const WG: u32 = 64u;

fn row_index(wid: vec3<u32>, nwg: vec3<u32>, lid: vec3<u32>) -> u32 {
    return (wid.y * nwg.x + wid.x) * WG + lid.x;
}

// x, y: [rows, cols]; gamma: [cols]; rstd: [rows]
@compute @workgroup_size(64)
fn rmsnorm_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                   @builtin(local_invocation_id) lid: vec3<u32>) {
    let row = row_index(wid, nwg, lid);
    if (row >= p.rows) { return; }
    let base = row * p.cols;
    var s2 = 0.0;
    for (var c = 0u; c < p.cols; c++) {
        let v = x[base + c];
        s2 += v * v;
    }
    let rs = 1.0 / sqrt(s2 / f32(p.cols) + p.eps);
    for (var c = 0u; c < p.cols; c++) {
        y[base + c] = x[base + c] * rs * gamma[c];
    }
    rstd_out[row] = rs;
}

// dx = rstd·(dy·gamma − x̂·mean(dy·gamma·x̂)), x̂ = x·rstd; one invocation per row.
@compute @workgroup_size(64)
fn rmsnorm_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                    @builtin(local_invocation_id) lid: vec3<u32>) {
    let row = row_index(wid, nwg, lid);
    if (row >= p.rows) { return; }
    let base = row * p.cols;
    let rs = rstd_in[row];
    var sgx = 0.0;
    for (var c = 0u; c < p.cols; c++) {
        sgx += dy[base + c] * gamma[c] * x[base + c];
    }
    // x̂·mean(dy·gamma·x̂) = x·rstd²·mean(dy·gamma·x)
    let k = rs * rs * sgx / f32(p.cols);
    for (var c = 0u; c < p.cols; c++) {
        dx[base + c] = rs * (dy[base + c] * gamma[c]) - rs * k * x[base + c];
    }
}

// dgamma[c] += Σ_r dy[r, c]·x[r, c]·rstd[r] — one invocation per column, rows in order
// (deterministic).
@compute @workgroup_size(64)
fn rmsnorm_backward_dgamma(@builtin(global_invocation_id) gid: vec3<u32>) {
    let c = gid.x;
    if (c >= p.cols) { return; }
    var acc = 0.0;
    for (var r = 0u; r < p.rows; r++) {
        let i = r * p.cols + c;
        acc += dy[i] * (x[i] * rstd_in[r]);
    }
    dgamma[c] = dgamma[c] + acc;
}
