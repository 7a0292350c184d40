//! `adarank bench matmul` — GEMM GFLOP/s of both backends side by side, with the ratio.
//!
//! For each size n it times C = A·B (n×n×n, NN) and the linear-layer form C = A·Bᵀ (NT) on the
//! CPU backend (next to the `gemm` crate called directly, as the reference) and on the GPU backend
//! with each GEMM kernel, after a warm-up call (lavapipe
//! compiles shaders at first dispatch). Each figure is the best of a few timed runs, each run a
//! batch of calls ended by a `sync`, so per-submit latency is amortised as in a training step.

use crate::backend::cpu::Cpu;
use crate::backend::device::{Device, DeviceChoice};
use crate::backend::gpu::{GemmKernel, Gpu};
use crate::backend::{Backend, DType, Gemm, MemKind};
use anyhow::{bail, Result};
use clap::Args;
use std::time::Instant;

#[derive(Args, Debug, Clone)]
pub struct BenchMatmulArgs {
    /// Square sizes n to time (m = n = k), comma-separated [default: 256,512,1024, or none
    /// when --shapes is given].
    #[arg(long, value_delimiter = ',')]
    pub sizes: Option<Vec<usize>>,
    /// Which GPU to compare against: auto (a real GPU, else none), gpu (any adapter, lavapipe
    /// included), cpu (CPU backend only).
    #[arg(long, value_enum, default_value_t = DeviceChoice::Gpu)]
    pub device: DeviceChoice,
    /// Timed runs per figure (the best is reported).
    #[arg(long, default_value_t = 3)]
    pub reps: usize,
    /// Also time these GEMM shapes on the GPU with each kernel, as LAYOUT:MxNxK or
    /// LAYOUT:MxNxKxBATCH, `+=` at the end to accumulate into C (e.g. NT:2048x8x384 for LoRA's
    /// x·Aᵀ, TN:8x384x2048+= for its dA, TN:64x32x64x384 for attention's per-head products;
    /// `bench train --profile` lists a step's shapes).
    #[arg(long, value_delimiter = ',')]
    pub shapes: Vec<String>,
    /// Also time --shapes on the CPU backend with B (a frozen weight) stored as each of these
    /// types: f32, bf16, q8_0, q4_0, q4_1 (e.g. `--weights f32,q8_0,q4_1 --shapes
    /// NT:1024x1536x576`); a block format needs B's stored rows to be whole 32-value blocks.
    #[arg(long, value_delimiter = ',')]
    pub weights: Vec<String>,
}

/// A stored type from its name (`DType::name`).
fn parse_dtype(text: &str) -> Result<DType> {
    [
        DType::F32,
        DType::Bf16,
        DType::Q8_0,
        DType::Q4_0,
        DType::Q4_1,
    ]
    .into_iter()
    .find(|d| d.name() == text.to_ascii_lowercase())
    .ok_or_else(|| anyhow::anyhow!("--weights: {text:?} is not one of f32, bf16, q8_0, q4_0, q4_1"))
}

/// A GEMM from `LAYOUT:MxNxK[xBATCH]`.
fn parse_shape(text: &str) -> Result<Gemm> {
    let bad = || {
        anyhow::anyhow!(
            "--shapes: {text:?} is not LAYOUT:MxNxK[xBATCH] (e.g. NT:2048x8x384, TN:64x32x64x384)"
        )
    };
    let (layout, dims) = text.split_once(':').ok_or_else(bad)?;
    let (dims, accumulate) = match dims.strip_suffix("+=") {
        Some(d) => (d, true),
        None => (dims, false),
    };
    let d: Vec<usize> = dims
        .split('x')
        .map(|v| v.parse::<usize>().map_err(|_| bad()))
        .collect::<Result<_>>()?;
    if !(3..=4).contains(&d.len()) || d.contains(&0) {
        return Err(bad());
    }
    let mut spec = match layout.to_ascii_uppercase().as_str() {
        "NN" => Gemm::nn(d[0], d[1], d[2]),
        "NT" => Gemm::nt(d[0], d[1], d[2]),
        "TN" => Gemm::tn(d[0], d[1], d[2]),
        "TT" => Gemm::tt(d[0], d[1], d[2]),
        _ => return Err(bad()),
    };
    if accumulate {
        spec.beta = 1.0;
    }
    if let Some(&batch) = d.get(3) {
        let (ea, eb, ec) = spec.extents();
        spec = Gemm {
            batch,
            stride_a: ea,
            stride_b: eb,
            stride_c: ec,
            ..spec
        };
    }
    Ok(spec)
}

/// GFLOP/s of each GPU kernel on `spec` (the default kernel with its host-side split first).
fn bench_shape(g: &Gpu, text: &str, spec: &Gemm, reps: usize) -> Result<()> {
    let mut kernels = vec![g.gemm_kernel(), GemmKernel::RegisterBlocked];
    if g.has_subgroups_of_8() {
        kernels.push(GemmKernel::SubgroupSmall);
    }
    kernels.dedup();
    let rates = kernels
        .iter()
        .map(|&k| Ok(format!("{} {:.1}", k.name(), bench_gpu(g, k, spec, reps)?)))
        .collect::<Result<Vec<_>>>()?;
    println!("{text:>22}: {} GFLOP/s", rates.join(", "));
    Ok(())
}

fn rand_vec(n: usize, seed: u64) -> Vec<f32> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

/// Best GFLOP/s over `reps` runs of `calls` GEMMs each.
fn time_gflops(
    spec: &Gemm,
    reps: usize,
    calls: usize,
    mut run: impl FnMut() -> Result<()>,
) -> Result<f64> {
    run()?; // warm-up: pipeline compilation, pool, caches
    let mut best = f64::INFINITY;
    for _ in 0..reps.max(1) {
        let t = Instant::now();
        for _ in 0..calls {
            run()?;
        }
        best = best.min(t.elapsed().as_secs_f64() / calls as f64);
    }
    Ok(spec.flops() / best / 1e9)
}

fn calls_for(n: usize) -> usize {
    calls_for_flops(2.0 * (n as f64).powi(3))
}

fn calls_for_flops(flops: f64) -> usize {
    // About 2 GFLOP per timed run: enough to swamp timer and submit overhead, short on lavapipe.
    ((2e9 / flops).ceil() as usize).clamp(1, 64)
}

fn bench_cpu(cpu: &Cpu, spec: &Gemm, reps: usize) -> Result<f64> {
    let (ea, eb, ec) = spec.extents();
    let a = cpu.upload(&rand_vec(ea, 1), MemKind::Scratch)?;
    let b = cpu.upload(&rand_vec(eb, 2), MemKind::Scratch)?;
    let mut c = cpu.zeros(ec, MemKind::Scratch)?;
    let calls = calls_for(spec.m);
    time_gflops(spec, reps, calls, || {
        cpu.matmul(&a, &b, &mut c, spec);
        Ok(())
    })
}

/// The reference in the same run: the `gemm` crate called directly (column-major, its best
/// layout, all threads) — what the CPU backend wraps, so ours/reference shows what the wrapping
/// costs, on whatever machine this is.
fn bench_gemm_crate(n: usize, reps: usize) -> Result<f64> {
    let spec = Gemm::nn(n, n, n);
    let (a, b) = (rand_vec(n * n, 1), rand_vec(n * n, 2));
    let mut c = vec![0f32; n * n];
    let threads = rayon::current_num_threads();
    time_gflops(&spec, reps, calls_for(n), || {
        // SAFETY: three n×n column-major matrices, bounds as allocated above.
        unsafe {
            gemm::gemm(
                n,
                n,
                n,
                c.as_mut_ptr(),
                n as isize,
                1,
                false,
                a.as_ptr(),
                n as isize,
                1,
                b.as_ptr(),
                n as isize,
                1,
                0.0,
                1.0,
                false,
                false,
                false,
                gemm::Parallelism::Rayon(threads),
            )
        };
        Ok(())
    })
}

/// The CPU backend with B stored bf16 (frozen weights): vdpbf16ps where the CPU has it.
fn bench_cpu_bf16(cpu: &Cpu, spec: &Gemm, reps: usize) -> Result<f64> {
    bench_cpu_typed(cpu, spec, reps, DType::Bf16)
}

/// The CPU backend on `spec` with B stored as `dtype` (random values, quantized for a block
/// format).
fn bench_cpu_typed(cpu: &Cpu, spec: &Gemm, reps: usize, dtype: DType) -> Result<f64> {
    let (ea, eb, ec) = spec.extents();
    let a = cpu.upload(&rand_vec(ea, 1), MemKind::Scratch)?;
    let w = rand_vec(eb, 2);
    let b = match dtype {
        DType::F32 => cpu.upload(&w, MemKind::Scratch)?,
        DType::Bf16 => cpu.upload_bf16(&w, MemKind::Scratch)?,
        q => {
            let width = if spec.trans_b { spec.k } else { spec.n };
            crate::backend::quant::check_matrix(q, eb / width.max(1), width)?;
            cpu.upload_blocks(&crate::backend::quantize(q, &w)?, q, eb, MemKind::Scratch)?
        }
    };
    let mut c = cpu.zeros(ec, MemKind::Scratch)?;
    time_gflops(spec, reps, calls_for_flops(spec.flops()), || {
        cpu.matmul(&a, &b, &mut c, spec);
        Ok(())
    })
}

/// GFLOP/s of the CPU backend on `spec` for each stored type of B, with the ratio to the first.
fn bench_cpu_weights(
    cpu: &Cpu,
    text: &str,
    spec: &Gemm,
    reps: usize,
    types: &[DType],
) -> Result<()> {
    let mut first = None;
    let mut parts = Vec::new();
    for &t in types {
        let r = bench_cpu_typed(cpu, spec, reps, t)?;
        let base = *first.get_or_insert(r);
        parts.push(format!("{} {r:.1} ({:.2}×)", t.name(), r / base));
    }
    println!("{text:>22}: cpu {} GFLOP/s", parts.join(", "));
    Ok(())
}

fn bench_gpu(gpu: &Gpu, kernel: GemmKernel, spec: &Gemm, reps: usize) -> Result<f64> {
    bench_gpu_b(gpu, kernel, spec, reps, false)
}

/// `bench_gpu` with B stored bf16 when `bf16`.
fn bench_gpu_b(gpu: &Gpu, kernel: GemmKernel, spec: &Gemm, reps: usize, bf16: bool) -> Result<f64> {
    let (ea, eb, ec) = spec.extents();
    let a = gpu.upload(&rand_vec(ea, 1), MemKind::Scratch)?;
    let b = if bf16 {
        gpu.upload_bf16(&rand_vec(eb, 2), MemKind::Scratch)?
    } else {
        gpu.upload(&rand_vec(eb, 2), MemKind::Scratch)?
    };
    let mut c = gpu.zeros(ec, MemKind::Scratch)?;
    let calls = calls_for_flops(spec.flops());
    let g = time_gflops(spec, reps, 1, || {
        for _ in 0..calls {
            gpu.matmul_with(kernel, &a, &b, &mut c, spec);
        }
        gpu.sync()
    })?;
    Ok(g * calls as f64)
}

/// One size `n`: the gemm crate's reference rate, NN and NT on the CPU and every GPU kernel,
/// and NT with B in bf16.
fn bench_square(cpu: &Cpu, gpu: Option<&Gpu>, n: usize, reps: usize) -> Result<()> {
    let reference = bench_gemm_crate(n, reps)?;
    println!("{n:>6} reference: gemm crate direct {reference:.1} GFLOP/s (column-major NN)");
    for (op, spec) in [("NN", Gemm::nn(n, n, n)), ("NT", Gemm::nt(n, n, n))] {
        let c = bench_cpu(cpu, &spec, reps)?;
        match gpu {
            Some(g) => {
                let blocked = bench_gpu(g, GemmKernel::RegisterBlocked, &spec, reps)?;
                let tiled = bench_gpu(g, GemmKernel::Tiled, &spec, reps)?;
                // Shapes that are not whole 128×64 tiles run split: the interior on the
                // subgroup kernel, the edges on its small tiles.
                let sub = if g.has_subgroups_of_8() {
                    format!("{:.1}", bench_gpu(g, GemmKernel::Subgroup, &spec, reps)?)
                } else {
                    "-".into()
                };
                let best = blocked.max(tiled).max(sub.parse().unwrap_or(0.0));
                println!(
                    "{n:>6} {op:>3} {c:>12.1} {:>8.2} {blocked:>14.1} {tiled:>12.1} {sub:>13} {:>10.3}",
                    c / reference,
                    best / c
                );
            }
            None => println!(
                "{n:>6} {op:>3} {c:>12.1} {:>8.2} {:>14} {:>12} {:>13} {:>10}",
                c / reference,
                "-",
                "-",
                "-",
                "-"
            ),
        }
    }
    // Frozen weights in bf16 (`train.weights = bf16`): the linear layer's x·Wᵀ.
    let spec = Gemm::nt(n, n, n);
    let f32_rate = bench_cpu(cpu, &spec, reps)?;
    let bf = bench_cpu_bf16(cpu, &spec, reps)?;
    let how = if crate::backend::cpu::bf16::native() {
        "vdpbf16ps"
    } else {
        "widened to f32: no AVX-512 BF16 here"
    };
    print!(
        "{n:>6} NT, B bf16: cpu {bf:.1} GFLOP/s ({how}) = {:.2}× its f32 {f32_rate:.1}",
        bf / f32_rate
    );
    match gpu {
        Some(g) => {
            let k = g.gemm_kernel();
            let gb = bench_gpu_b(g, k, &spec, reps, true)?;
            let gf = bench_gpu_b(g, k, &spec, reps, false)?;
            println!("; gpu {} {gb:.1} (f32 {gf:.1})", k.name());
        }
        None => println!(),
    }
    Ok(())
}

pub fn main(args: BenchMatmulArgs) -> Result<()> {
    let sizes = match &args.sizes {
        Some(s) => s.clone(),
        None if args.shapes.is_empty() => vec![256, 512, 1024],
        None => vec![],
    };
    if sizes.contains(&0) {
        bail!("--sizes needs positive sizes, e.g. --sizes 256,512,1024");
    }
    let shapes = args
        .shapes
        .iter()
        .map(|t| Ok((t.as_str(), parse_shape(t)?)))
        .collect::<Result<Vec<_>>>()?;
    let cpu = Cpu::new();
    let gpu = match args.device {
        DeviceChoice::Cpu => None,
        choice => match Device::open(choice)? {
            Device::Gpu(g) => Some(g),
            Device::Cpu(_) => None,
        },
    };
    println!("cpu backend: {}", cpu.name());
    if let Some(g) = &gpu {
        println!(
            "gpu backend: {} ({:?}, {:?}), default gemm kernel {}",
            g.info().name,
            g.info().backend,
            g.info().device_type,
            g.gemm_kernel().name()
        );
    }
    println!(
        "{:>6} {:>3} {:>12} {:>8} {:>14} {:>12} {:>13} {:>10}",
        "n", "op", "cpu GFLOP/s", "cpu/ref", "gpu blocked", "gpu tiled", "gpu subgroup", "gpu/cpu"
    );
    for &n in &sizes {
        bench_square(&cpu, gpu.as_deref(), n, args.reps)?;
    }
    let types = args
        .weights
        .iter()
        .map(|t| parse_dtype(t))
        .collect::<Result<Vec<_>>>()?;
    if !types.is_empty() {
        if shapes.is_empty() {
            bail!("--weights times the CPU backend on --shapes: give some, e.g. --shapes NT:1024x1536x576");
        }
        for (text, spec) in &shapes {
            if spec.batch > 1 && types.iter().any(|t| !t.is_f32()) {
                bail!("--weights: {text} is batched; frozen weights are single GEMMs");
            }
            bench_cpu_weights(&cpu, text, spec, args.reps, &types)?;
        }
    }
    if !shapes.is_empty() && (gpu.is_some() || types.is_empty()) {
        let Some(g) = &gpu else {
            bail!("--shapes times GPU kernels: no GPU backend here (try --device gpu)");
        };
        for (text, spec) in &shapes {
            bench_shape(g, text, spec, args.reps)?;
        }
    }
    Ok(())
}
