// GELU, the erf form BERT uses: gelu(x) = x · Φ(x) = ½x(1 + erf(x/√2)).
// WGSL has no erf: Abramowitz–Stegun 7.1.26 (|error| ≤ 1.5e-7), which is below the 1e-5
// tolerance the kernels are tested to against the CPU backend's f64 erf.

struct Params {
    n: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> dy: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
// The same tensors as vec4 when n % 4 == 0 (the `_vec4` entries, n in vec4 units): a software
// adapter loads and stores one vec4 per invocation for what the scalar entries move in a float.
@group(0) @binding(4) var<storage, read> x4: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read> dy4: array<vec4<f32>>;
@group(0) @binding(6) var<storage, read_write> out4: array<vec4<f32>>;

fn erf_as(v: f32) -> f32 {
    let z = abs(v);
    let t = 1.0 / (1.0 + 0.3275911 * z);
    let poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))));
    let r = 1.0 - poly * exp(-z * z);
    return select(r, -r, v < 0.0);
}

fn cdf(v: f32) -> f32 {
    return 0.5 * (1.0 + erf_as(v * 0.70710678118654752));
}

fn gelu(v: f32) -> f32 {
    return v * cdf(v);
}

// gelu'(x) = Φ(x) + x·φ(x)
fn gelu_grad(v: f32) -> f32 {
    return cdf(v) + v * exp(-0.5 * v * v) * 0.3989422804014327;
}

fn index(wid: vec3<u32>, nwg: vec3<u32>, lid: vec3<u32>) -> u32 {
    return (wid.y * nwg.x + wid.x) * 256u + lid.x;
}

// out = gelu(x)
@compute @workgroup_size(256)
fn gelu_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = index(wid, nwg, lid);
    if (i < p.n) {
        out[i] = gelu(x[i]);
    }
}

@compute @workgroup_size(256)
fn gelu_forward_vec4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                     @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = index(wid, nwg, lid);
    if (i < p.n) {
        let v = x4[i];
        out4[i] = vec4<f32>(gelu(v.x), gelu(v.y), gelu(v.z), gelu(v.w));
    }
}

// out = dy · gelu'(x)
@compute @workgroup_size(256)
fn gelu_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = index(wid, nwg, lid);
    if (i < p.n) {
        out[i] = dy[i] * gelu_grad(x[i]);
    }
}

@compute @workgroup_size(256)
fn gelu_backward_vec4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                      @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = index(wid, nwg, lid);
    if (i < p.n) {
        let v = x4[i];
        out4[i] = dy4[i] * vec4<f32>(gelu_grad(v.x), gelu_grad(v.y), gelu_grad(v.z), gelu_grad(v.w));
    }
}
