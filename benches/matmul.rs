//! GEMM throughput of both backends (criterion): `cargo bench --bench matmul`.
//! The GPU rows run when an adapter exists (lavapipe included), with both GEMM kernels; each
//! GPU iteration is one matmul followed by a sync, so it includes one submit's latency.

use adarank::backend::cpu::Cpu;
use adarank::backend::gpu::{AdapterFilter, GemmKernel, Gpu};
use adarank::backend::{Backend, Gemm, MemKind};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

fn data(n: usize) -> Vec<f32> {
    (0..n)
        .map(|i| ((i * 7919) % 1000) as f32 * 1e-3 - 0.5)
        .collect()
}

fn bench(c: &mut Criterion) {
    let cpu = Cpu::new();
    let gpu = Gpu::open(AdapterFilter::AllowCpu).ok().flatten();
    let mut group = c.benchmark_group("matmul");
    group.sample_size(10);
    for n in [128usize, 256, 512] {
        for (op, spec) in [("nn", Gemm::nn(n, n, n)), ("nt", Gemm::nt(n, n, n))] {
            group.throughput(Throughput::Elements(spec.flops() as u64));
            let (ea, eb, ec) = spec.extents();
            let a = cpu.upload(&data(ea), MemKind::Scratch).unwrap();
            let b = cpu.upload(&data(eb), MemKind::Scratch).unwrap();
            let mut cc = cpu.zeros(ec, MemKind::Scratch).unwrap();
            group.bench_function(BenchmarkId::new(format!("cpu_{op}"), n), |bch| {
                bch.iter(|| cpu.matmul(&a, &b, &mut cc, &spec))
            });
            let Some(g) = &gpu else { continue };
            let a = g.upload(&data(ea), MemKind::Scratch).unwrap();
            let b = g.upload(&data(eb), MemKind::Scratch).unwrap();
            let mut cg = g.zeros(ec, MemKind::Scratch).unwrap();
            for kernel in [
                GemmKernel::RegisterBlocked,
                GemmKernel::Tiled,
                GemmKernel::Subgroup,
            ] {
                let id = BenchmarkId::new(format!("gpu_{}_{op}", kernel.name()), n);
                group.bench_function(id, |bch| {
                    bch.iter(|| {
                        g.matmul_with(kernel, &a, &b, &mut cg, &spec);
                        g.sync().unwrap();
                    })
                });
            }
        }
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
