//! The optimizer step's device-side pieces against the CPU backend: the clipping factor
//! (norm of per-tensor sums of squares, then clip/norm) and AdamW with a device-held gradient
//! scale; and the GPU's counters (a step's read-backs are what the counters say).
//!
//! Without an adapter the tests print that they skipped (ADARANK_REQUIRE_GPU=1 fails them).

mod common;

use adarank::backend::cpu::Cpu;
use adarank::backend::gpu::{AdapterFilter, Gpu};
use adarank::backend::{AdamW, Backend, MemKind};
use common::{assert_close, rand_vec, test_gpu};

const K: MemKind = MemKind::Scratch;

#[test]
fn clip_factor_and_scaled_adamw_match_cpu() {
    let Some(g) = test_gpu() else { return };
    let cpu = Cpu::new();
    // 300 slots: more than one workgroup's 256 invocations.
    for (count, clip) in [(1usize, 0.0f32), (3, 1.0), (300, 0.5), (300, 1e6)] {
        let sumsq: Vec<f32> = rand_vec(count, 7).iter().map(|v| v.abs() * 2.0).collect();
        let (gs, cs) = (g.upload(&sumsq, K).unwrap(), cpu.upload(&sumsq, K).unwrap());
        let (mut go, mut co) = (g.zeros(2, K).unwrap(), cpu.zeros(2, K).unwrap());
        g.clip_factor(&gs, count, clip, &mut go);
        cpu.clip_factor(&cs, count, clip, &mut co);
        let want = sumsq.iter().map(|&v| v as f64).sum::<f64>().sqrt() as f32;
        assert!((co.buf[0] - want).abs() <= 1e-6 * want, "cpu norm");
        assert_close(
            &format!("clip_factor {count} {clip}"),
            &g.download(&go).unwrap(),
            &co.buf,
            1e-6,
        );
        let f = co.buf[1];
        assert!(f <= 1.0 && (clip == 0.0 || want <= clip || (f * want - clip).abs() < 1e-5));

        let n = 1001;
        let (p0, m0, v0, grad) = (
            rand_vec(n, 1),
            rand_vec(n, 2),
            rand_vec(n, 3).iter().map(|v| v.abs()).collect::<Vec<_>>(),
            rand_vec(n, 4),
        );
        let cfg = AdamW {
            lr: 1e-2,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
            step: 2,
        };
        let upg = |v: &[f32]| g.upload(v, K).unwrap();
        let upc = |v: &[f32]| cpu.upload(v, K).unwrap();
        let (mut gp, mut gm, mut gv) = (upg(&p0), upg(&m0), upg(&v0));
        let (mut cp, mut cm, mut cv) = (upc(&p0), upc(&m0), upc(&v0));
        g.adamw(&mut gp, &upg(&grad), &mut gm, &mut gv, &cfg, Some((&go, 1)));
        cpu.adamw(&mut cp, &upc(&grad), &mut cm, &mut cv, &cfg, Some((&co, 1)));
        assert_close(
            "scaled adamw param",
            &g.download(&gp).unwrap(),
            &cp.buf,
            1e-6,
        );
        // The scaled step equals an unscaled one on pre-scaled gradients.
        let scaled: Vec<f32> = grad.iter().map(|&x| x * f).collect();
        let (mut ep, mut em, mut ev) = (upc(&p0), upc(&m0), upc(&v0));
        cpu.adamw(&mut ep, &upc(&scaled), &mut em, &mut ev, &cfg, None);
        assert_eq!(cp.buf, ep.buf, "scale folded into the update");
    }
    // A non-finite norm poisons the factor.
    let bad = cpu.upload(&[1.0, f32::INFINITY], K).unwrap();
    let mut o = cpu.zeros(2, K).unwrap();
    cpu.clip_factor(&bad, 2, 1.0, &mut o);
    assert!(o.buf[1].is_nan());
    let gbad = g.upload(&[1.0, f32::INFINITY], K).unwrap();
    let mut go = g.zeros(2, K).unwrap();
    g.clip_factor(&gbad, 2, 1.0, &mut go);
    assert!(g.download(&go).unwrap()[1].is_nan());
}

#[test]
fn counters_count_dispatches_submits_and_read_backs() {
    if test_gpu().is_none() {
        return;
    }
    // A device of its own: the shared one counts the other tests' work too.
    let g = Gpu::open(AdapterFilter::AllowCpu).unwrap().unwrap();
    let before = g.counters();
    let x = g.upload(&[1.0; 100], K).unwrap();
    let mut y = g.zeros(100, K).unwrap();
    g.gelu_forward(&x, &mut y);
    g.gelu_forward(&x, &mut y);
    let back = g.download(&y).unwrap();
    assert_eq!(back.len(), 100);
    let d = g.counters().since(&before);
    assert_eq!(d.dispatches, 2, "{d:?}");
    assert_eq!(d.read_backs, 1, "{d:?}");
    assert_eq!(d.read_back_bytes, 400, "{d:?}");
    assert_eq!(d.uploaded_bytes, 400, "{d:?}");
    assert!(d.submits >= 1, "{d:?}");
    assert_eq!(Backend::counters(&Cpu::new()), None);
}
