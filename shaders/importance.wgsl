// AdaLoRA's importance averages of a parameter's entries (PEFT's sensitivity and uncertainty),
// updated where the adapter lives so a training step reads nothing back. One invocation per
// entry k, with I = |w[k]·g[k]|:
//   sensitivity  s[k] ← β1·s[k] + (1−β1)·I
//   uncertainty  u[k] ← β2·u[k] + (1−β2)·|I − s[k]|   (the updated s[k], as PEFT does)
// state: [2, n], row 0 the sensitivity, row 1 the uncertainty. The host binds every tensor
// whole (an adapter's tensors are far below the binding limit).

struct Params {
    n: u32,
    beta1: f32,
    beta2: f32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> w: array<f32>;
@group(0) @binding(2) var<storage, read> g: array<f32>;
@group(0) @binding(3) var<storage, read_write> state: array<f32>;

@compute @workgroup_size(256)
fn importance_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                      @builtin(local_invocation_id) lid: vec3<u32>) {
    let k = (wid.y * nwg.x + wid.x) * 256u + lid.x;
    if (k >= p.n) { return; }
    let ipt = abs(w[k] * g[k]);
    let s = p.beta1 * state[k] + (1.0 - p.beta1) * ipt;
    state[k] = s;
    state[p.n + k] = p.beta2 * state[p.n + k] + (1.0 - p.beta2) * abs(ipt - s);
}
