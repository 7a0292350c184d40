// SwiGLU's gate: out = silu(gate) ⊙ up with silu(z) = z / (1 + e^−z) (PyTorch's form), and its
// backward dgate = dout ⊙ up ⊙ silu'(gate), silu'(z) = σ(z)·(1 + z·(1 − σ(z))),
// dup = dout ⊙ silu(gate). e^−z is taken at min(−z, 88): beyond that σ(z) and silu(z) are 0 to
// f32 precision anyway, and WGSL leaves an overflowing exp's value unspecified.

struct Params {
    n: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> gate: array<f32>;
@group(0) @binding(2) var<storage, read> up: array<f32>;
@group(0) @binding(3) var<storage, read> dout: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;
@group(0) @binding(5) var<storage, read_write> dgate: array<f32>;
@group(0) @binding(6) var<storage, read_write> dup: array<f32>;
// The same tensors as vec4 when n % 4 == 0 (the `_vec4` entries, n in vec4 units).
@group(0) @binding(7) var<storage, read> gate4: array<vec4<f32>>;
@group(0) @binding(8) var<storage, read> up4: array<vec4<f32>>;
@group(0) @binding(9) var<storage, read> dout4: array<vec4<f32>>;
@group(0) @binding(10) var<storage, read_write> out4: array<vec4<f32>>;
@group(0) @binding(11) var<storage, read_write> dgate4: array<vec4<f32>>;
@group(0) @binding(12) var<storage, read_write> dup4: array<vec4<f32>>;

fn index(wid: vec3<u32>, nwg: vec3<u32>, lid: vec3<u32>) -> u32 {
    return (wid.y * nwg.x + wid.x) * 256u + lid.x;
}

// e^x per lane to within 2 ulp, as the CPU backend's `simd::exp` (x ≤ 88 here): n =
// round(x·log2 e), r = x − n·ln 2 in two parts (Cody–Waite; n·0.693359375 is exact), e^r by
// Cephes' degree-6 polynomial, 2^n from the exponent bits as two factors (each a normal f32
// for n in [−126, 128]). Not the builtin: with llvmpipe's exp, silu was measured 7 ulp off
// (1.4 with this one, as the CPU's; tests/gpu_precision.rs). Below −87.3: 0.
fn exp_accurate(x: vec4<f32>) -> vec4<f32> {
    let xc = clamp(x, vec4<f32>(-87.33655), vec4<f32>(88.72283));
    let n = round(xc * 1.4426950408889634);
    let r = xc - n * 0.693359375 + n * 2.1219444e-4;
    let pl = ((((1.9875691e-4 * r + 1.3982e-3) * r + 8.333452e-3) * r + 4.1665796e-2) * r
        + 0.16666665) * r + 0.5;
    let er = pl * (r * r) + r + 1.0;
    let ni = vec4<i32>(n);
    let h = ni >> vec4<u32>(1u);
    let s1 = bitcast<vec4<f32>>(vec4<u32>(h + 127) << vec4<u32>(23u));
    let s2 = bitcast<vec4<f32>>(vec4<u32>(ni - h + 127) << vec4<u32>(23u));
    return select(er * s1 * s2, vec4<f32>(0.0), x < vec4<f32>(-87.33655));
}

// 1 + e^−z, finite for every z.
fn one_plus_exp_neg(z: vec4<f32>) -> vec4<f32> {
    return 1.0 + exp_accurate(min(-z, vec4<f32>(88.0)));
}

@compute @workgroup_size(256)
fn swiglu_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                  @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = index(wid, nwg, lid);
    if (i < p.n) {
        let g = gate[i];
        out[i] = g / one_plus_exp_neg(vec4<f32>(g)).x * up[i];
    }
}

@compute @workgroup_size(256)
fn swiglu_forward_vec4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                       @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = index(wid, nwg, lid);
    if (i < p.n) {
        let g = gate4[i];
        out4[i] = g / one_plus_exp_neg(g) * up4[i];
    }
}

@compute @workgroup_size(256)
fn swiglu_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                   @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = index(wid, nwg, lid);
    if (i < p.n) {
        let g = gate[i];
        let e = one_plus_exp_neg(vec4<f32>(g)).x;
        let s = 1.0 / e;
        dgate[i] = dout[i] * up[i] * (s * (1.0 + g * (1.0 - s)));
        dup[i] = dout[i] * (g / e);
    }
}

@compute @workgroup_size(256)
fn swiglu_backward_vec4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                        @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = index(wid, nwg, lid);
    if (i < p.n) {
        let g = gate4[i];
        let e = one_plus_exp_neg(g);
        let s = 1.0 / e;
        dgate4[i] = dout4[i] * up4[i] * (s * (1.0 + g * (1.0 - s)));
        dup4[i] = dout4[i] * (g / e);
    }
}
