// AdamW (decoupled weight decay, as PyTorch's AdamW), one invocation per parameter:
// m = b1·m + (1−b1)·g; v = b2·v + (1−b2)·g²; p −= lr·(m/bc1 / (sqrt(v/bc2) + eps) + wd·p).
// The bias corrections bc1 = 1−b1^t, bc2 = 1−b2^t are computed on the host once per step.
// When `use_scale` is set the gradient is first multiplied by scale[scale_slot], the clipping
// factor clip.wgsl computed on the device.

struct Params {
    n: u32,
    lr: f32,
    beta1: f32,
    beta2: f32,
    eps: f32,
    weight_decay: f32,
    bc1: f32,
    bc2: f32,
    use_scale: u32,
    scale_slot: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> grad: array<f32>;
@group(0) @binding(2) var<storage, read_write> param: array<f32>;
@group(0) @binding(3) var<storage, read_write> m: array<f32>;
@group(0) @binding(4) var<storage, read_write> v: array<f32>;
@group(0) @binding(5) var<storage, read> scale: array<f32>;

@compute @workgroup_size(256)
fn adamw_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = (wid.y * nwg.x + wid.x) * 256u + lid.x;
    if (i >= p.n) { return; }
    var g = grad[i];
    if (p.use_scale != 0u) { g = g * scale[p.scale_slot]; }
    let mi = p.beta1 * m[i] + (1.0 - p.beta1) * g;
    let vi = p.beta2 * v[i] + (1.0 - p.beta2) * g * g;
    m[i] = mi;
    v[i] = vi;
    let mhat = mi / p.bc1;
    let vhat = vi / p.bc2;
    let w = param[i];
    param[i] = w - p.lr * (mhat / (sqrt(vhat) + p.eps) + p.weight_decay * w);
}
