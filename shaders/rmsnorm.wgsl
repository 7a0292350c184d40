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

// Σ x² over the row at `base`, in 16 partial sums (4 vec4 lanes, column c in lane c mod 16),
// then the lanes in order and the tail: the CPU backend's `simd::dot` order. A running sum over
// a 576-wide row rounds 576 times into one accumulator; 16 short sums lose 4× less.
fn sum_squares(base: u32) -> f32 {
    var a0 = vec4<f32>(0.0);
    var a1 = vec4<f32>(0.0);
    var a2 = vec4<f32>(0.0);
    var a3 = vec4<f32>(0.0);
    let body = p.cols / 16u * 16u;
    for (var c = 0u; c < body; c += 16u) {
        let o = base + c;
        let v0 = vec4<f32>(x[o], x[o + 1u], x[o + 2u], x[o + 3u]);
        let v1 = vec4<f32>(x[o + 4u], x[o + 5u], x[o + 6u], x[o + 7u]);
        let v2 = vec4<f32>(x[o + 8u], x[o + 9u], x[o + 10u], x[o + 11u]);
        let v3 = vec4<f32>(x[o + 12u], x[o + 13u], x[o + 14u], x[o + 15u]);
        a0 += v0 * v0;
        a1 += v1 * v1;
        a2 += v2 * v2;
        a3 += v3 * v3;
    }
    // Left to right, as written.
    var s = a0.x + a0.y + a0.z + a0.w + a1.x + a1.y + a1.z + a1.w
        + a2.x + a2.y + a2.z + a2.w + a3.x + a3.y + a3.z + a3.w;
    for (var c = body; c < p.cols; c++) {
        let v = x[base + c];
        s += v * v;
    }
    return s;
}

// x, y: [rows, cols]; gamma: [cols]; rstd: [rows]
@compute @workgroup_size(64)
fn rmsnorm_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                   @builtin(local_invocation_id) lid: vec3<u32>) {
    let row = row_index(wid, nwg, lid);
    if (row >= p.rows) { return; }
    let base = row * p.cols;
    let s2 = sum_squares(base);
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
