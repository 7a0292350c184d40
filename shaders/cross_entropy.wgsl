// Softmax cross-entropy per row, forward and backward in one pass:
// losses[r] = logsumexp(logits[r]) − logits[r, t_r];
// dlogits[r] = grad_scale · (softmax(logits[r]) − onehot(t_r)); IGNORE rows get 0 and 0.
// One 256-wide workgroup per row, so vocabularies of any size (2 … 50k classes) work.

struct Params {
    rows: u32,
    classes: u32,
    grad_scale: f32,
    _pad: u32,
}

const IGNORE: u32 = 0xffffffffu;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> logits: array<f32>;
@group(0) @binding(2) var<storage, read> targets: array<u32>;
@group(0) @binding(3) var<storage, read_write> dlogits: array<f32>;
@group(0) @binding(4) var<storage, read_write> losses: array<f32>;

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

fn block_max(v: f32, lid: u32) -> f32 {
    red[lid] = v;
    workgroupBarrier();
    for (var s = 128u; s > 0u; s = s >> 1u) {
        if (lid < s) { red[lid] = max(red[lid], red[lid + s]); }
        workgroupBarrier();
    }
    let r = red[0];
    workgroupBarrier();
    return r;
}

@compute @workgroup_size(256)
fn cross_entropy_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                         @builtin(local_invocation_id) lid3: vec3<u32>) {
    let row = wid.y * nwg.x + wid.x;
    if (row >= p.rows) { return; }
    let lid = lid3.x;
    let base = row * p.classes;
    // The target comes from a storage buffer, so the ignore test is not a uniform branch:
    // every invocation runs the reductions and the ignore flag only selects what is written.
    let t = targets[row];
    let ignore = t == IGNORE;
    var mx = -3.4028235e38;
    for (var c = lid; c < p.classes; c += 256u) { mx = max(mx, logits[base + c]); }
    mx = block_max(mx, lid);
    var z = 0.0;
    for (var c = lid; c < p.classes; c += 256u) { z += exp(logits[base + c] - mx); }
    let logz = mx + log(block_sum(z, lid));
    for (var c = lid; c < p.classes; c += 256u) {
        let prob = exp(logits[base + c] - logz);
        let g = p.grad_scale * (prob - select(0.0, 1.0, c == t));
        dlogits[base + c] = select(g, 0.0, ignore);
    }
    if (lid == 0u) {
        var loss = 0.0;
        if (!ignore) {
            // A target past the last class has no logit: report NaN rather than read out of range.
            loss = select(bitcast<f32>(0x7fc00000u), logz - logits[base + min(t, p.classes - 1u)], t < p.classes);
        }
        losses[row] = loss;
    }
}
