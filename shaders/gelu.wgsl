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

fn index(wid: vec3<u32>, nwg: vec3<u32>, lid: vec3<u32>) -> u32 {
    return (wid.y * nwg.x + wid.x) * 256u + lid.x;
}

// out = gelu(x)
@compute @workgroup_size(256)
fn gelu_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = index(wid, nwg, lid);
    if (i < p.n) {
        let v = x[i];
        out[i] = v * cdf(v);
    }
}

// out = dy · gelu'(x), gelu'(x) = Φ(x) + x·φ(x)
@compute @workgroup_size(256)
fn gelu_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = index(wid, nwg, lid);
    if (i < p.n) {
        let v = x[i];
        let pdf = exp(-0.5 * v * v) * 0.3989422804014327;
        out[i] = dy[i] * (cdf(v) + v * pdf);
    }
}
