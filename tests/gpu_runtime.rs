//! The GPU runtime: memory ledger, errors as `Err`s (never panics), tensors above the 128 MiB
//! storage binding limit, device choice. Skips (with a line) when no adapter exists, unless
//! ADARANK_REQUIRE_GPU=1.

mod common;

use adarank::backend::cpu::Cpu;
use adarank::backend::device::{Device, DeviceChoice};
use adarank::backend::gpu::{AdapterFilter, Gpu};
use adarank::backend::{Backend, BackendKind, Gemm, MemKind};
use common::test_gpu;

#[test]
fn tensors_are_counted_in_the_ledger_by_kind() {
    let Some(g) = test_gpu() else { return };
    // The shared GPU's ledger also sees other tests' tensors: compare only this test's kinds'
    // changes, using kinds no other test in this file allocates.
    let before = g.ledger().snapshot();
    let a = g.zeros(1000, MemKind::Optim).unwrap();
    let b = g.upload(&[1.0; 250], MemKind::Frozen).unwrap();
    let s = g.ledger().snapshot();
    assert_eq!(
        s.current_of(MemKind::Optim) - before.current_of(MemKind::Optim),
        4000
    );
    assert_eq!(
        s.current_of(MemKind::Frozen) - before.current_of(MemKind::Frozen),
        1000
    );
    assert!(s.peak_of(MemKind::Optim) >= 4000);
    drop(a);
    drop(b);
    let after = g.ledger().snapshot();
    assert_eq!(
        after.current_of(MemKind::Optim),
        before.current_of(MemKind::Optim)
    );
    assert_eq!(
        after.current_of(MemKind::Frozen),
        before.current_of(MemKind::Frozen)
    );
    // A freed buffer is reused, and comes back zeroed from `zeros`.
    let mut c = g.upload(&[7.0; 1000], MemKind::Optim).unwrap();
    g.scale(&mut c, 2.0);
    drop(c);
    let d = g.zeros(1000, MemKind::Optim).unwrap();
    assert!(g.download(&d).unwrap().iter().all(|&v| v == 0.0));
}

#[test]
fn a_buffer_above_max_buffer_size_is_an_error_naming_it() {
    let Some(g) = test_gpu() else { return };
    let too_big = (g.limits().max_buffer_size / 4 + 1024) as usize;
    let err = match g.zeros(too_big, MemKind::Activation) {
        Ok(_) => panic!("allocating {too_big} f32 should fail"),
        Err(e) => format!("{e:#}"),
    };
    assert!(err.contains("max_buffer_size"), "{err}");
    assert!(err.contains("activation tensor"), "{err}");
    // The device is still usable.
    let t = g.upload(&[1.0, 2.0], MemKind::Scratch).unwrap();
    assert_eq!(g.download(&t).unwrap(), vec![1.0, 2.0]);
}

#[test]
fn bad_op_arguments_and_device_validation_errors_come_back_from_sync() {
    if test_gpu().is_none() {
        return;
    }
    // Its own device: errors are reported device-wide, and must not reach the other tests.
    let g = Gpu::open(AdapterFilter::AllowCpu).unwrap().unwrap();
    // A matmul whose operands are too small: skipped, reported by the next sync.
    let a = g.zeros(6, MemKind::Scratch).unwrap();
    let b = g.zeros(6, MemKind::Scratch).unwrap();
    let mut c = g.zeros(4, MemKind::Scratch).unwrap();
    g.matmul(&a, &b, &mut c, &Gemm::nn(2, 2, 5));
    let err = format!("{:#}", g.sync().unwrap_err());
    assert!(
        err.contains("matmul") && err.contains("A has 6 values, needs 10"),
        "{err}"
    );
    g.sync().expect("the error is reported once");
    // A validation error raised inside wgpu itself (an invalid buffer usage) reaches the
    // uncaptured-error handler and comes back from sync as well.
    let _bad = g.device().create_buffer(&wgpu::BufferDescriptor {
        label: Some("invalid usage"),
        size: 256,
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::STORAGE,
        mapped_at_creation: false,
    });
    let err = format!("{:#}", g.sync().unwrap_err());
    assert!(err.contains("GPU validation error"), "{err}");
    g.sync().unwrap();
}

/// 36M f32 = 144 MiB, above the 128 MiB binding limit: elementwise, row and reduction ops
/// bind sub-ranges and dispatch per chunk.
#[test]
fn tensors_above_the_binding_limit_are_processed_in_chunks() {
    let Some(g) = test_gpu() else { return };
    let limit = g.max_binding() as usize / 4;
    let cols = 1000;
    let rows = (limit / cols) + 1000;
    let n = rows * cols;
    assert!(n * 4 > g.max_binding() as usize);
    let host: Vec<f32> = (0..n).map(|i| ((i % 1013) as f32) * 1e-3 - 0.5).collect();
    let x = g.upload(&host, MemKind::Scratch).unwrap();
    let mut y = g.zeros(n, MemKind::Scratch).unwrap();
    g.fill(&mut y, 2.0);
    g.axpy(3.0, &x, &mut y);
    g.scale(&mut y, 0.5);
    // y = (2 + 3x)/2; check a sample of rows, including both sides of each chunk boundary.
    let got = g.download(&y).unwrap();
    for i in (0..n).step_by(997).chain(n - 5..n) {
        let want = (2.0 + 3.0 * host[i]) * 0.5;
        assert!(
            (got[i] - want).abs() < 1e-5,
            "y[{i}] = {} want {want}",
            got[i]
        );
    }
    drop(got);
    // A row op across chunks: add a bias per column.
    let bias: Vec<f32> = (0..cols).map(|c| c as f32).collect();
    let gb = g.upload(&bias, MemKind::Scratch).unwrap();
    g.add_bias(&mut y, &gb, rows, cols);
    let got = g.download(&y).unwrap();
    for r in [0, rows / 2, rows - 1] {
        for c in [0, 1, cols - 1] {
            let i = r * cols + c;
            let want = (2.0 + 3.0 * host[i]) * 0.5 + c as f32;
            assert!(
                (got[i] - want).abs() < 1e-4,
                "y[{r},{c}] = {} want {want}",
                got[i]
            );
        }
    }
    drop(got);
    // Reductions over the whole tensor, against the CPU backend's f64 sums.
    let cpu = Cpu::new();
    let cx = cpu.upload(&host, MemKind::Scratch).unwrap();
    let mut cout = cpu.zeros(2, MemKind::Scratch).unwrap();
    cpu.sum(&cx, &mut cout, 0);
    cpu.sumsq(&cx, &mut cout, 1);
    let mut out = g.zeros(2, MemKind::Scratch).unwrap();
    g.sum(&x, &mut out, 0);
    g.sumsq(&x, &mut out, 1);
    let got = g.download(&out).unwrap();
    let l1: f32 = host.iter().map(|v| v.abs()).sum();
    assert!(
        (got[0] - cout.buf[0]).abs() <= 1e-5 * l1,
        "sum {} vs {}",
        got[0],
        cout.buf[0]
    );
    assert!(
        (got[1] - cout.buf[1]).abs() <= 1e-5 * cout.buf[1],
        "sumsq {} vs {}",
        got[1],
        cout.buf[1]
    );
    g.sync().unwrap();
}

#[test]
fn device_choice_cpu_and_gpu() {
    let d = Device::open(DeviceChoice::Cpu).unwrap();
    assert_eq!(d.kind(), BackendKind::Cpu);
    assert!(d.describe().starts_with("cpu backend"));
    if test_gpu().is_none() {
        return;
    }
    let (d, why) = Device::open_explained(DeviceChoice::Gpu).unwrap();
    assert_eq!(d.kind(), BackendKind::Gpu, "{why}");
    let (d, why) = Device::open_explained(DeviceChoice::Auto).unwrap();
    // auto never takes a software adapter.
    if let Device::Gpu(g) = &d {
        assert!(!g.is_cpu_adapter(), "{why}");
    } else {
        assert!(why.starts_with("auto"), "{why}");
    }
}
