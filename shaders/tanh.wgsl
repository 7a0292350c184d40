// tanh, for BERT's pooler (dense + tanh on the first token): y = tanh(x); its backward
// dx = dy · (1 − y²) reads the saved output, not the input.

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

fn index(wid: vec3<u32>, nwg: vec3<u32>, lid: vec3<u32>) -> u32 {
    return (wid.y * nwg.x + wid.x) * 256u + lid.x;
}

// out = tanh(x). WGSL's tanh is exact enough, but some drivers overflow exp() inside it for
// |x| > ~44; tanh saturates to ±1 in f32 long before that, so clamp first.
@compute @workgroup_size(256)
fn tanh_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = index(wid, nwg, lid);
    if (i < p.n) {
        out[i] = tanh(clamp(x[i], -20.0, 20.0));
    }
}

// out = dy · (1 − y²), with x bound to the forward's output y
@compute @workgroup_size(256)
fn tanh_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = index(wid, nwg, lid);
    if (i < p.n) {
        let y = x[i];
        out[i] = dy[i] * (1.0 - y * y);
    }
}
