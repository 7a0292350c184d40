//! `adarank bench train` — tokens/s of a LoRA training step (and of full fine-tuning and of the
//! forward pass alone) on the CPU and/or GPU backend, against the GEMM-bound ceiling of the
//! machine: GEMM FLOPs per step (the count of `adarank plan`, from the GEMM shapes the model
//! issues) ÷ the GEMM rate measured in the same run on a GEMM of the model's own FFN shape.
//!
//! Reference on the 2-core development machine (PyTorch 2.15 + PEFT, same configuration, AdamW,
//! f32): LoRA step 2,666 tokens/s (0.77 s/step), full fine-tuning 2,136, forward only 7,039;
//! peak RSS 1.9 GiB.

use crate::adapter::ModuleKind;
use crate::backend::cpu::Cpu;
use crate::backend::{AdamW, Backend};
use crate::experiment::costs::devices::gemm_gflops;
use crate::experiment::costs::{pass_flops, BatchShape};
use crate::model::{
    Batch, Flavour, Head, LoraConfig, Model, ModelConfig, Pooling, Target, TrainMode,
};
use anyhow::{bail, Result};
use clap::{Args, ValueEnum};
use rand::{Rng, SeedableRng};
use std::sync::Arc;
use std::time::Instant;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Device {
    Cpu,
    Gpu,
    Both,
}

#[derive(Args, Debug, Clone)]
pub struct BenchTrainArgs {
    /// Which backend(s) to measure.
    #[arg(long, value_enum, default_value = "both")]
    pub device: Device,
    #[arg(long, default_value_t = 6)]
    pub layers: usize,
    #[arg(long, default_value_t = 384)]
    pub hidden: usize,
    #[arg(long, default_value_t = 12)]
    pub heads: usize,
    #[arg(long, default_value_t = 1536)]
    pub ffn: usize,
    #[arg(long, default_value_t = 30522)]
    pub vocab: usize,
    #[arg(long, default_value_t = 64)]
    pub seq: usize,
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    /// LoRA rank on q, k, v, o, ffn_in and ffn_out of every layer.
    #[arg(long, default_value_t = 8)]
    pub rank: usize,
    /// Timed steps per mode (after one untimed warm-up step); the median is reported.
    #[arg(long, default_value_t = 5)]
    pub steps: usize,
    /// Skip full fine-tuning (the slowest mode).
    #[arg(long)]
    pub no_full: bool,
}

/// GEMM FLOPs of one pass for this configuration, from the cost model `adarank plan` uses
/// (`experiment::costs::flops`: the GEMM shapes the model issues; elementwise ops, norms and
/// softmax are not counted: the ceiling is GEMM-bound).
struct Flops {
    forward: f64,
    lora_step: f64,
    full_step: f64,
}

fn count_flops(a: &BenchTrainArgs) -> Flops {
    let (cfg, head) = (config(a), head());
    let ranks = vec![a.rank; a.layers * ModuleKind::ALL.len()];
    let shape = BatchShape {
        batch: a.batch,
        seq: a.seq,
    };
    let lora = pass_flops(&cfg, &head, false, &ranks, shape, true);
    Flops {
        forward: lora.forward,
        lora_step: lora.total(),
        full_step: pass_flops(&cfg, &head, true, &[], shape, true).total(),
    }
}

/// The benchmark's model: a MiniLM-shaped encoder by default.
fn config(a: &BenchTrainArgs) -> ModelConfig {
    ModelConfig {
        flavour: Flavour::Encoder,
        vocab: a.vocab,
        max_positions: a.seq.max(512),
        type_vocab: 2,
        hidden: a.hidden,
        layers: a.layers,
        heads: a.heads,
        ffn: a.ffn,
        ln_eps: 1e-12,
    }
}

fn head() -> Head {
    Head::Classify {
        classes: 2,
        pooling: Pooling::Mean,
    }
}

fn batch(a: &BenchTrainArgs) -> Batch {
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let n = a.batch * a.seq;
    Batch {
        batch: a.batch,
        seq: a.seq,
        ids: (0..n)
            .map(|_| rng.random_range(0..a.vocab as u32))
            .collect(),
        type_ids: vec![],
        mask: vec![],
        target: Target::Classes((0..a.batch).map(|_| rng.random_range(0..2)).collect()),
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// Best-of-5 GFLOP/s of the FFN-shaped GEMM x·Wᵀ: [N, C]·[F, C]ᵀ.
fn gemm_rate<B: Backend>(be: &B, a: &BenchTrainArgs) -> Result<f64> {
    gemm_gflops(be, a.batch * a.seq, a.ffn, a.hidden, 5)
}

struct Row {
    name: &'static str,
    secs: f64,
    flops: f64,
    peak: u64,
}

fn bench_mode<B: Backend>(
    be: &Arc<B>,
    a: &BenchTrainArgs,
    mode: TrainMode,
    forward_only: bool,
) -> Result<(f64, u64)> {
    let mut m = Model::new(be.clone(), config(a), head(), mode, None, 1)?;
    let b = batch(a);
    let opt = AdamW {
        lr: 1e-4,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.0,
        step: 1,
    };
    be.ledger().reset_peak();
    let mut times = vec![];
    for i in 0..=a.steps {
        let t0 = Instant::now();
        if forward_only {
            m.loss(&b)?;
        } else {
            m.zero_grads();
            m.forward_backward(&b, 1.0)?;
            m.optimizer_step(&opt, Some(1.0))?;
        }
        be.sync()?;
        if i > 0 {
            times.push(t0.elapsed().as_secs_f64());
        }
    }
    Ok((median(times), be.ledger().snapshot().total_peak))
}

fn run<B: Backend>(be: Arc<B>, a: &BenchTrainArgs) -> Result<()> {
    let fl = count_flops(a);
    let rate = gemm_rate(&*be, a)?;
    println!(
        "device: {}; GEMM {}×{}×{} (x·Wᵀ): {:.1} GFLOP/s",
        be.name(),
        a.batch * a.seq,
        a.ffn,
        a.hidden,
        rate
    );
    let lora = TrainMode::Lora(LoraConfig::uniform(
        a.layers,
        &ModuleKind::ALL,
        a.rank,
        16.0,
    ));
    let mut rows = vec![];
    let (s, p) = bench_mode(&be, a, lora.clone(), false)?;
    rows.push(Row {
        name: "LoRA step",
        secs: s,
        flops: fl.lora_step,
        peak: p,
    });
    if !a.no_full {
        let (s, p) = bench_mode(&be, a, TrainMode::Full, false)?;
        rows.push(Row {
            name: "full fine-tuning step",
            secs: s,
            flops: fl.full_step,
            peak: p,
        });
    }
    let (s, p) = bench_mode(&be, a, lora, true)?;
    rows.push(Row {
        name: "forward only",
        secs: s,
        flops: fl.forward,
        peak: p,
    });
    let tokens = (a.batch * a.seq) as f64;
    println!(
        "{:<22} {:>8} {:>10} {:>11} {:>14} {:>11} {:>12}",
        "mode", "s/step", "tokens/s", "GFLOP/step", "ceiling tok/s", "of ceiling", "peak ledger"
    );
    for r in rows {
        let ceiling = tokens / (r.flops / (rate * 1e9));
        let tps = tokens / r.secs;
        println!(
            "{:<22} {:>8.3} {:>10.0} {:>11.2} {:>14.0} {:>10.0}% {:>8.0} MiB",
            r.name,
            r.secs,
            tps,
            r.flops / 1e9,
            ceiling,
            100.0 * tps / ceiling,
            r.peak as f64 / (1 << 20) as f64
        );
    }
    Ok(())
}

fn peak_rss() -> Option<String> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(format!("{:.2} GiB", kb / (1 << 20) as f64))
}

pub fn main(a: BenchTrainArgs) -> Result<()> {
    if !a.hidden.is_multiple_of(a.heads) {
        bail!(
            "--hidden {} must be divisible by --heads {}",
            a.hidden,
            a.heads
        );
    }
    if a.steps == 0 || a.batch == 0 || a.seq == 0 {
        bail!("--steps, --batch and --seq must be positive");
    }
    if a.rank > a.hidden.min(a.ffn) {
        bail!("--rank {} exceeds the hidden size {}", a.rank, a.hidden);
    }
    println!(
        "adarank bench train — encoder, {} layers, hidden {}, {} heads, FFN {}, vocab {}, \
         seq {}, batch {} ({} tokens/step); LoRA rank {} on q, k, v, o, ffn_in, ffn_out \
         ({} adapters); AdamW, f32, median of {} steps",
        a.layers,
        a.hidden,
        a.heads,
        a.ffn,
        a.vocab,
        a.seq,
        a.batch,
        a.batch * a.seq,
        a.rank,
        6 * a.layers,
        a.steps
    );
    if matches!(a.device, Device::Cpu | Device::Both) {
        run(Arc::new(Cpu::new()), &a)?;
    }
    if matches!(a.device, Device::Gpu | Device::Both) {
        // Software adapters (lavapipe) count: they run the real kernels, slowly.
        match crate::backend::gpu::Gpu::open(crate::backend::gpu::AdapterFilter::AllowCpu)? {
            Some(g) => run(Arc::new(g), &a)?,
            None if a.device == Device::Gpu => {
                bail!("--device gpu: no wgpu adapter found (set WGPU_BACKEND=vulkan, install a driver)")
            }
            None => println!("gpu: skipped — no wgpu adapter found"),
        }
    }
    if let Some(rss) = peak_rss() {
        println!("peak RSS of this process: {rss}");
    }
    Ok(())
}
