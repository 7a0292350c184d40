// Sum, sum of squares and inverse norm of a whole tensor into one slot of an output tensor, in
// two deterministic stages: each workgroup reduces 4096 elements into a partial, then one
// workgroup reduces the partials in a fixed order. (The host runs stage 1 once per bound chunk
// of a tensor larger than the binding limit, writing partials at `part_base`.) The inverse norm
// 1/sqrt(Σ x²) (0 for an all-zero tensor) lets a later op divide by a norm that stays here.

struct Params {
    // stage 1: elements in this chunk; stage 2: number of partials
    n: u32,
    // 0 sum, 1 sum of squares, 2 inverse norm (squares in stage 1, 1/sqrt in stage 2)
    mode: u32,
    part_base: u32,
    slot: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> partials: array<f32>;
@group(0) @binding(3) var<storage, read> partials_in: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;

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

@compute @workgroup_size(256)
fn reduce_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                  @builtin(local_invocation_id) lid3: vec3<u32>) {
    let w = wid.y * nwg.x + wid.x;
    let lid = lid3.x;
    let start = w * 4096u;
    if (start >= p.n) { return; }
    var acc = 0.0;
    for (var i = 0u; i < 16u; i++) {
        let e = start + i * 256u + lid;
        if (e < p.n) {
            let v = x[e];
            acc += select(v, v * v, p.mode != 0u);
        }
    }
    let s = block_sum(acc, lid);
    if (lid == 0u) { partials[p.part_base + w] = s; }
}

@compute @workgroup_size(256)
fn reduce_final(@builtin(local_invocation_id) lid3: vec3<u32>) {
    let lid = lid3.x;
    var acc = 0.0;
    for (var i = lid; i < p.n; i += 256u) { acc += partials_in[i]; }
    let s = block_sum(acc, lid);
    if (lid == 0u) {
        if (p.mode == 2u) {
            out[p.slot] = select(0.0, 1.0 / sqrt(s), s > 0.0);
        } else {
            out[p.slot] = s;
        }
    }
}
