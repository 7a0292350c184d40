// Global-norm gradient clipping without a read-back: one workgroup sums the per-tensor sums of
// squares (in a fixed order, so the result does not depend on timing), and writes
// out[0] = norm = sqrt(sum) and out[1] = clip / norm when clip > 0 and norm > clip, else 1;
// NaN when the norm is not finite, so a diverged step poisons the update and the step's
// read-back reports it. AdamW multiplies each gradient by out[1].

struct Params {
    count: u32,
    clip: f32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> sumsq: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;

var<workgroup> red: array<f32, 256>;

@compute @workgroup_size(256)
fn clip_factor(@builtin(local_invocation_id) lid3: vec3<u32>) {
    let lid = lid3.x;
    var acc = 0.0;
    for (var i = lid; i < p.count; i += 256u) { acc += sumsq[i]; }
    red[lid] = acc;
    workgroupBarrier();
    for (var s = 128u; s > 0u; s = s >> 1u) {
        if (lid < s) { red[lid] = red[lid] + red[lid + s]; }
        workgroupBarrier();
    }
    if (lid == 0u) {
        let norm = sqrt(red[0]);
        out[0] = norm;
        // Not finite: exponent bits all ones (a bit test, because shader compilers may assume
        // float comparisons never see NaN or inf).
        if ((bitcast<u32>(norm) & 0x7f800000u) == 0x7f800000u) {
            out[1] = bitcast<f32>(0x7fc00000u);
        } else if (p.clip > 0.0 && norm > p.clip) {
            out[1] = p.clip / norm;
        } else {
            out[1] = 1.0;
        }
    }
}
