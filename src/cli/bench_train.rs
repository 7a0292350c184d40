//! `adarank bench train` — tokens/s of a LoRA training step (and of full fine-tuning and of the
//! forward pass alone) on the CPU and/or GPU backend, against the GEMM-bound ceiling of the
//! machine: GEMM FLOPs per step (the count of `adarank plan`, from the GEMM shapes the model
//! issues) ÷ the GEMM rate measured in the same run on a GEMM of the model's own FFN shape.
//!
//! `--profile` adds the wall time of each op (CPU) or dispatch (GPU) per step; `scripts/bench-vs-pytorch` runs PyTorch +
//! PEFT on the same configuration beside it (README, "Speed").

use crate::adapter::ModuleKind;
use crate::backend::cpu::Cpu;
use crate::backend::profile::OpTotal;
use crate::backend::{AdamW, Backend, Counters, DType};
use crate::experiment::costs::devices::gemm_gflops;
use crate::experiment::costs::{pass_flops, BatchShape};
use crate::model::{
    Batch, Flavour, Head, HostWeights, LoraConfig, Model, ModelConfig, Pooling, Target, TrainMode,
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

/// What one measurement times.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// A LoRA training step: forward, backward, AdamW on the adapters and the head.
    Lora,
    /// A full fine-tuning step: every weight trains.
    Full,
    /// The loss of the LoRA model, no gradients.
    Forward,
}

impl Mode {
    fn label(self) -> &'static str {
        match self {
            Mode::Lora => "LoRA step",
            Mode::Full => "full fine-tuning step",
            Mode::Forward => "forward only",
        }
    }
    fn key(self) -> &'static str {
        match self {
            Mode::Lora => "lora",
            Mode::Full => "full",
            Mode::Forward => "forward",
        }
    }
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
    /// Modes to measure, in order (comma list).
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "lora,full,forward"
    )]
    pub modes: Vec<Mode>,
    /// Skip full fine-tuning (the slowest mode).
    #[arg(long)]
    pub no_full: bool,
    /// Pretrained weights (a folder or hub name, as `adarank run` takes): the model's shape comes
    /// from its config.json and overrides --layers, --hidden, --heads, --ffn and --vocab.
    /// Without it the weights are random (BERT init), which times the same.
    #[arg(long)]
    pub model: Option<String>,
    /// Also print one JSON line per mode (for scripts/bench-vs-pytorch).
    #[arg(long)]
    pub json: bool,
    /// Storage of the frozen weights in the LoRA and forward modes (full fine-tuning is f32).
    #[arg(long, value_enum, default_value = "f32")]
    pub weights: Weights,
    /// Also print the wall time of each op per timed step (GEMMs by layout and shape, on the
    /// GPU by kernel too), slowest first. On the GPU every dispatch is then submitted alone and
    /// waited for, so the step itself is slower than without it.
    #[arg(long)]
    pub profile: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Weights {
    F32,
    Bf16,
}

impl Weights {
    fn dtype(self) -> DType {
        match self {
            Weights::F32 => DType::F32,
            Weights::Bf16 => DType::Bf16,
        }
    }
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
    mode: Mode,
    secs: f64,
    flops: f64,
    peak: u64,
    /// Device work per timed step (GPU backend only).
    per_step: Option<PerStep>,
}

/// Averages over the timed steps of a device's counters.
#[derive(Clone, Copy, Debug, serde::Serialize)]
struct PerStep {
    dispatches: f64,
    submits: f64,
    read_backs: f64,
    read_back_bytes: f64,
    uploaded_bytes: f64,
}

impl PerStep {
    fn of(c: Counters, steps: usize) -> Self {
        let s = steps as f64;
        PerStep {
            dispatches: c.dispatches as f64 / s,
            submits: c.submits as f64 / s,
            read_backs: c.read_backs as f64 / s,
            read_back_bytes: c.read_back_bytes as f64 / s,
            uploaded_bytes: c.uploaded_bytes as f64 / s,
        }
    }
}

/// Reads (and clears) a backend's per-op wall times; `None` for a backend that has none.
type TakeProfile<B> = Option<fn(&B) -> Vec<OpTotal>>;

/// Median seconds per step of `mode`, the ledger's peak bytes, and the device's work per step;
/// prints the per-op profile of the timed steps when `profile` reads one.
fn bench_mode<B: Backend>(
    be: &Arc<B>,
    a: &BenchTrainArgs,
    cfg: &ModelConfig,
    weights: Option<&HostWeights>,
    mode: Mode,
    profile: TakeProfile<B>,
) -> Result<(f64, u64, Option<PerStep>)> {
    let train = match mode {
        Mode::Full => TrainMode::Full,
        Mode::Lora | Mode::Forward => TrainMode::Lora(LoraConfig {
            frozen: a.weights.dtype(),
            ..LoraConfig::uniform(a.layers, &ModuleKind::ALL, a.rank, 16.0)
        }),
    };
    let mut m = Model::new(be.clone(), cfg.clone(), head(), train, weights, 1)?;
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
    let mut start = None;
    for i in 0..=a.steps {
        if i == 1 {
            start = be.counters();
            // Model creation and the warm-up step are not part of the profile.
            if let Some(take) = profile {
                take(be);
            }
        }
        let t0 = Instant::now();
        if mode == Mode::Forward {
            m.loss(&b)?;
        } else {
            // As the training loop does it: one read-back (loss and gradient norm) per step.
            m.zero_grads();
            m.forward_backward_queued(&b, 1.0)?;
            m.optimizer_step_queued(&opt, Some(1.0))?;
            m.step_stats()?;
        }
        be.sync()?;
        if i > 0 {
            times.push(t0.elapsed().as_secs_f64());
        }
    }
    let per_step = match (start, be.counters()) {
        (Some(s), Some(e)) => Some(PerStep::of(e.since(&s), a.steps)),
        _ => None,
    };
    let med = median(times);
    if let Some(take) = profile {
        print_profile(mode, &take(be), a.steps, med);
    }
    Ok((med, be.ledger().snapshot().total_peak, per_step))
}

/// The per-op table of one mode: ms per step, share of the median step, GFLOP/s of GEMMs.
fn print_profile(mode: Mode, ops: &[OpTotal], steps: usize, step_secs: f64) {
    let s = steps as f64;
    let total: f64 = ops.iter().map(|o| o.secs).sum::<f64>() / s;
    println!(
        "{} profile: {:.0} ms of ops per step, {:.0} ms outside them (median step {:.0} ms)",
        mode.label(),
        1e3 * total,
        1e3 * (step_secs - total),
        1e3 * step_secs
    );
    println!(
        "  {:<40} {:>7} {:>9} {:>7} {:>9}",
        "op", "calls", "ms/step", "share", "GFLOP/s"
    );
    for o in ops {
        let rate = if o.flops > 0.0 {
            format!("{:.1}", o.flops / o.secs / 1e9)
        } else {
            String::new()
        };
        println!(
            "  {:<40} {:>7.0} {:>9.2} {:>6.1}% {:>9}",
            o.key,
            o.calls as f64 / s,
            1e3 * o.secs / s,
            100.0 * o.secs / s / step_secs,
            rate
        );
    }
}

fn run<B: Backend>(
    be: Arc<B>,
    a: &BenchTrainArgs,
    cfg: &ModelConfig,
    weights: Option<&HostWeights>,
    profile: TakeProfile<B>,
) -> Result<()> {
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
    let mut rows = vec![];
    for &mode in &a.modes {
        if mode == Mode::Full && a.no_full {
            continue;
        }
        let (secs, peak, per_step) = bench_mode(&be, a, cfg, weights, mode, profile)?;
        let flops = match mode {
            Mode::Lora => fl.lora_step,
            Mode::Full => fl.full_step,
            Mode::Forward => fl.forward,
        };
        rows.push(Row {
            mode,
            secs,
            flops,
            peak,
            per_step,
        });
    }
    let tokens = (a.batch * a.seq) as f64;
    println!(
        "{:<22} {:>8} {:>10} {:>11} {:>14} {:>11} {:>12}",
        "mode", "s/step", "tokens/s", "GFLOP/step", "ceiling tok/s", "of ceiling", "peak ledger"
    );
    for r in &rows {
        let ceiling = tokens / (r.flops / (rate * 1e9));
        let tps = tokens / r.secs;
        println!(
            "{:<22} {:>8.3} {:>10.0} {:>11.2} {:>14.0} {:>10.0}% {:>8.0} MiB",
            r.mode.label(),
            r.secs,
            tps,
            r.flops / 1e9,
            ceiling,
            100.0 * tps / ceiling,
            r.peak as f64 / (1 << 20) as f64
        );
    }
    for r in &rows {
        if let Some(p) = r.per_step {
            println!(
                "{:<22} per step: {:.0} dispatches, {:.1} submits, {:.1} read-backs of {:.0} bytes \
                 in all, {:.0} bytes uploaded",
                r.mode.label(),
                p.dispatches,
                p.submits,
                p.read_backs,
                p.read_back_bytes,
                p.uploaded_bytes
            );
        }
    }
    if a.json {
        for r in &rows {
            let line = serde_json::json!({
                "side": "ours",
                "device": be.name(),
                "mode": r.mode.key(),
                "secs": r.secs,
                "tokens_per_s": tokens / r.secs,
                "gemm_gflops": rate,
                "of_ceiling": (tokens / r.secs) / (tokens / (r.flops / (rate * 1e9))),
                "peak_ledger_bytes": r.peak,
                "weights": format!("{:?}", a.weights).to_lowercase(),
                // The process peak: the caller runs one mode per process to read it per mode.
                "peak_rss_gib": peak_rss_gib().unwrap_or(f64::NAN),
                "per_step": r.per_step,
            });
            println!("{line}");
        }
    }
    Ok(())
}

fn peak_rss_gib() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / (1 << 20) as f64)
}

pub fn main(mut a: BenchTrainArgs) -> Result<()> {
    let (cfg, weights) = match &a.model {
        Some(spec) => {
            let ck = crate::data::hf::load(spec)?;
            let c = ck.config.model_config();
            (a.layers, a.hidden, a.heads, a.ffn, a.vocab) =
                (c.layers, c.hidden, c.heads, c.ffn, c.vocab);
            (c, Some(ck.weights))
        }
        None => (config(&a), None),
    };
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
         ({} adapters); AdamW, frozen weights {:?}, median of {} steps; weights: {}",
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
        a.weights,
        a.steps,
        a.model.as_deref().unwrap_or("random")
    );
    let w = weights.as_ref();
    if matches!(a.device, Device::Cpu | Device::Both) {
        if a.profile {
            run(
                Arc::new(Cpu::profiled()),
                &a,
                &cfg,
                w,
                Some(Cpu::take_profile),
            )?;
        } else {
            run(Arc::new(Cpu::new()), &a, &cfg, w, None)?;
        }
    }
    if matches!(a.device, Device::Gpu | Device::Both) {
        // Software adapters (lavapipe) count: they run the real kernels, slowly.
        match crate::backend::gpu::Gpu::open(crate::backend::gpu::AdapterFilter::AllowCpu)? {
            Some(g) if a.profile => run(
                Arc::new(g.profiled()),
                &a,
                &cfg,
                w,
                Some(crate::backend::gpu::Gpu::take_profile),
            )?,
            Some(g) => run(Arc::new(g), &a, &cfg, w, None)?,
            None if a.device == Device::Gpu => {
                bail!("--device gpu: no wgpu adapter found (set WGPU_BACKEND=vulkan, install a driver)")
            }
            None => println!("gpu: skipped — no wgpu adapter found"),
        }
    }
    if let Some(rss) = peak_rss_gib() {
        println!("peak RSS of this process: {rss:.2} GiB");
    }
    Ok(())
}
