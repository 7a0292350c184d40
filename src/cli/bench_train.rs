//! `adarank bench train` — tokens/s of a LoRA training step (and of full fine-tuning and of the
//! forward pass alone) on the CPU and/or GPU backend, against the GEMM-bound ceiling of the
//! machine: GEMM FLOPs per step (the count of `adarank plan`, from the GEMM shapes the model
//! issues) ÷ the GEMM rate measured in the same run on a GEMM of the model's own FFN shape.
//!
//! The LoRA and full fine-tuning steps run through the training loop (`train::train`);
//! `--method` adds a rank engine as its hooks, as a run does, and reports what the engine's
//! steps cost the device (dispatches, read-backs) beside the timed ones.
//!
//! `--profile` adds the wall time of each op (CPU) or dispatch (GPU) per step; `scripts/bench-vs-pytorch` runs PyTorch +
//! PEFT on the same configuration beside it (docs/performance.md).

use crate::backend::cpu::Cpu;
use crate::backend::device::{Device, DeviceChoice};
use crate::backend::profile::OpTotal;
use crate::backend::{Backend, Counters, DType, LedgerSnapshot, MemKind};
use crate::engine::driver::{Collect, DriverHooks, EngineDriver};
use crate::engine::schedule::Schedule;
use crate::engine::source::BUILTIN;
use crate::engine::{AdaLoraConfig, Allocation, EngineConfig, Method, RankEngine};
use crate::experiment::costs::devices::gemm_gflops;
use crate::experiment::costs::{pass_flops, BatchShape};
use crate::model::{
    Batch, Flavour, Head, HostWeights, LlamaArch, LoraConfig, Model, ModelConfig, Pooling, Target,
    TrainMode,
};
use crate::policy::{Action, ActionKind, PhaseSpec, Until};
use crate::train::{train, Decay, Hooks, Metered, NoHooks, StepCost, Task, TrainConfig};
use anyhow::{bail, Result};
use clap::{Args, ValueEnum};
use rand::{Rng, SeedableRng};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

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
    /// The backend to measure: `cpu`, `gpu` (any wgpu adapter, software ones included) or
    /// `auto` (the one `adarank run` would take). Left out: both, the GPU skipped when wgpu
    /// finds no adapter.
    #[arg(long, value_enum)]
    pub device: Option<DeviceChoice>,
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
    /// Without it the weights are random (BERT init), which times the same. `smollm2` is
    /// SmolLM2-135M's shape (Llama family, 30 layers, GQA 9/3 heads, vocabulary 49,152) as a
    /// causal LM with random weights.
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
    /// A rank method to run with the LoRA step, through the training loop's engine hooks as a
    /// run does (statistics after every backward pass, its own work after every step). Its
    /// first re-allocation (AdaLoRA: budget step) comes right after the timed steps and is
    /// reported on its own line, with the step after it. Full fine-tuning and the forward pass
    /// run without one.
    #[arg(long, value_enum, default_value = "none")]
    pub method: BenchMethod,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Weights {
    F32,
    Bf16,
    /// GGUF's 8-bit blocks (34 bytes per 32 values), dequantized inside the GEMM.
    #[value(name = "q8_0")]
    Q8_0,
    /// GGUF's 4-bit blocks with an offset (20 bytes per 32 values).
    #[value(name = "q4_1")]
    Q4_1,
    /// GGUF's 4-bit blocks (18 bytes per 32 values).
    #[value(name = "q4_0")]
    Q4_0,
}

impl Weights {
    fn dtype(self) -> DType {
        match self {
            Weights::F32 => DType::F32,
            Weights::Bf16 => DType::Bf16,
            Weights::Q8_0 => DType::Q8_0,
            Weights::Q4_1 => DType::Q4_1,
            Weights::Q4_0 => DType::Q4_0,
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

fn count_flops(a: &BenchTrainArgs, cfg: &ModelConfig) -> Flops {
    let head = head(cfg);
    let ranks = vec![a.rank; cfg.slots()];
    let shape = BatchShape {
        batch: a.batch,
        seq: a.seq,
    };
    let lora = pass_flops(cfg, &head, false, &ranks, shape, true);
    Flops {
        forward: lora.forward,
        lora_step: lora.total(),
        full_step: pass_flops(cfg, &head, true, &[], shape, true).total(),
    }
}

/// The benchmark's model: a MiniLM-shaped encoder by default.
pub fn config(a: &BenchTrainArgs) -> ModelConfig {
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
        llama: None,
    }
}

/// SmolLM2-135M's shape (`--model smollm2`), from its GGUF metadata.
pub fn smollm2_config() -> ModelConfig {
    ModelConfig {
        flavour: Flavour::Llama,
        vocab: 49152,
        max_positions: 8192,
        type_vocab: 0,
        hidden: 576,
        layers: 30,
        heads: 9,
        ffn: 1536,
        ln_eps: 1e-5,
        llama: Some(LlamaArch {
            kv_heads: 3,
            rope_theta: 100000.0,
            rope_scaling: None,
            tie_embeddings: true,
            qkv_bias: false,
        }),
    }
}

/// An encoder is benchmarked as a 2-class classifier (mean pooling), a decoder as a causal LM
/// with a loss on every token (as `scripts/bench_vs_pytorch.py` trains PyTorch's).
fn head(cfg: &ModelConfig) -> Head {
    match cfg.flavour {
        Flavour::Encoder => Head::Classify {
            classes: 2,
            pooling: Pooling::Mean,
        },
        Flavour::Decoder | Flavour::Llama => Head::LanguageModel,
    }
}

fn batch(a: &BenchTrainArgs, cfg: &ModelConfig) -> Batch {
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let n = a.batch * a.seq;
    let ids: Vec<u32> = (0..n)
        .map(|_| rng.random_range(0..cfg.vocab as u32))
        .collect();
    let target = match head(cfg) {
        // Next-token targets within each sequence; the last position has none.
        Head::LanguageModel => Target::Tokens(
            (0..n)
                .map(|i| {
                    if (i + 1) % a.seq == 0 {
                        u32::MAX
                    } else {
                        ids[i + 1]
                    }
                })
                .collect(),
        ),
        _ => Target::Classes((0..a.batch).map(|_| rng.random_range(0..2)).collect()),
    };
    Batch {
        batch: a.batch,
        seq: a.seq,
        ids,
        type_ids: vec![],
        mask: vec![],
        target,
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
    flops: f64,
    m: Measured,
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
pub type TakeProfile<B> = Option<fn(&B) -> Vec<OpTotal>>;

/// One measured mode: its steps, the median step and the device's work per timed step.
struct Measured {
    t: Trained,
    secs: f64,
    /// Device work per timed step (GPU backend only).
    per_step: Option<PerStep>,
}

/// Measures `mode`; prints the per-op profile of the timed steps when `profile` reads one.
fn bench_mode<B: Backend>(
    be: &Arc<B>,
    a: &BenchTrainArgs,
    cfg: &ModelConfig,
    weights: Option<&HostWeights>,
    mode: Mode,
    profile: TakeProfile<B>,
) -> Result<Measured> {
    let t = if mode == Mode::Forward {
        forward_steps(be, a, cfg, weights, profile)?
    } else {
        train_steps(be, a, cfg, weights, mode, profile)?
    };
    let secs = median(t.timed.iter().map(|s| s.secs).collect());
    let per_step = t
        .timed
        .iter()
        .try_fold(Counters::default(), |sum, s| {
            s.counters.map(|c| sum.plus(&c))
        })
        .map(|c| PerStep::of(c, t.timed.len()));
    if let Some(ops) = &t.profile {
        print_profile(mode, ops, t.timed.len(), secs);
    }
    Ok(Measured { t, secs, per_step })
}

/// The forward pass alone, `--steps` times after one warm-up pass.
fn forward_steps<B: Backend>(
    be: &Arc<B>,
    a: &BenchTrainArgs,
    cfg: &ModelConfig,
    weights: Option<&HostWeights>,
    profile: TakeProfile<B>,
) -> Result<Trained> {
    let mut m = Model::new(
        be.clone(),
        cfg.clone(),
        head(cfg),
        lora_mode(a, cfg, false),
        weights,
        1,
    )?;
    let b = batch(a, cfg);
    be.ledger().reset_peak();
    m.loss(&b)?;
    be.sync()?;
    // Model creation and the warm-up pass are not part of the profile.
    if let Some(take) = profile {
        take(be);
    }
    let mut timed = vec![];
    for step in 1..=a.steps as u64 {
        let (t0, c0) = (Instant::now(), be.counters());
        m.loss(&b)?;
        be.sync()?;
        timed.push(StepCost {
            step,
            secs: t0.elapsed().as_secs_f64(),
            counters: be.counters().zip(c0).map(|(e, s)| e.since(&s)),
        });
    }
    Ok(Trained {
        timed,
        event: vec![],
        allocations: vec![],
        ledger: be.ledger().snapshot(),
        profile: profile.map(|t| t(be)),
    })
}

/// A rank method run with the LoRA step.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum BenchMethod {
    /// No rank engine: the ranks stay fixed.
    None,
    /// The paper's method as shipped (`examples/quickstart.rank`): complexity
    /// `spectral_gradient`, learner `learn_gates`, allocator `log_rule`, the rank total held at
    /// --rank per adapter.
    Paper,
    /// AdaLoRA (PEFT's importance, cubic budget, orthogonality penalty, masking): triplets from
    /// --rank per adapter towards two thirds of it.
    Adalora,
}

impl BenchMethod {
    fn label(self) -> &'static str {
        match self {
            BenchMethod::None => "none",
            BenchMethod::Paper => "paper",
            BenchMethod::Adalora => "adalora",
        }
    }

    /// The rank engine and the schedule of this method on `model`, with its first
    /// re-allocation (AdaLoRA: budget step) at step `event` and training ending one step later;
    /// `None` without a method. The engine's `on_start` (W0 spectra) runs here, before any
    /// step is measured.
    fn driver<B: Backend>(
        self,
        a: &BenchTrainArgs,
        model: &mut Model<B>,
        event: u64,
    ) -> Result<Option<EngineDriver>> {
        let Some((method, phases)) = self.method(a, event) else {
            return Ok(None);
        };
        let adapters = model.config().slots();
        let mut c = EngineConfig::new(method, a.rank * adapters, a.rank);
        c.min_rank = 1;
        c.max_rank = 4 * a.rank;
        c.seed = 1;
        let mut engine = RankEngine::new(c)?;
        engine.on_start(model)?;
        let schedule = Schedule::new(phases, event + 1, u64::MAX, None);
        Ok(Some(EngineDriver::new(Some(engine), schedule, u64::MAX)))
    }

    /// The engine's method and the policy's phases, re-allocating first at step `event`.
    fn method(self, a: &BenchTrainArgs, event: u64) -> Option<(Method, Vec<PhaseSpec>)> {
        let builtin = |name: &str| PathBuf::from(format!("{BUILTIN}{name}.rhai"));
        let event = event as usize;
        match self {
            BenchMethod::None => None,
            BenchMethod::Paper => Some((
                Method::Adaptive {
                    complexity: builtin("spectral_gradient"),
                    allocator: builtin("log_rule"),
                    learner: Some(builtin("learn_gates")),
                },
                // As the quickstart's phases: uniform ranks, a re-allocating phase (entered at
                // `event`, re-allocating on entry), then the final ranks.
                vec![
                    phase("warmup", Until::Step(event), None),
                    phase(
                        "adapt",
                        Until::Step(event + 1),
                        Some(ActionKind::Reallocate),
                    ),
                    phase("settle", Until::End, None),
                ],
            )),
            BenchMethod::Adalora => Some((
                Method::AdaLora(AdaLoraConfig {
                    init_rank: a.rank,
                    target_rank: (2 * a.rank / 3).max(1),
                    // The cubic schedule's first budget step (one that masks) is `event`.
                    tinit: event - 1,
                    tfinal: 0,
                    delta_t: 1,
                    total_steps: event + 1,
                    ..AdaLoraConfig::default()
                }),
                // AdaLoRA re-allocates at its own budget steps (`Schedule::with_method`).
                vec![],
            )),
        }
    }
}

fn phase(name: &str, until: Until, every_step: Option<ActionKind>) -> PhaseSpec {
    PhaseSpec {
        name: name.into(),
        until,
        actions: every_step
            .map(|what| Action { every: 1, what })
            .into_iter()
            .collect(),
    }
}

/// The LoRA model of the benchmark: rank --rank on every kind of module of every layer (six in
/// an encoder, seven in the Llama family); in AdaLoRA's SVD form when `svd`.
fn lora_mode(a: &BenchTrainArgs, cfg: &ModelConfig, svd: bool) -> TrainMode {
    TrainMode::Lora(LoraConfig {
        frozen: a.weights.dtype(),
        svd_form: svd,
        ..LoraConfig::uniform(cfg.layers, cfg.module_kinds(), a.rank, 16.0)
    })
}

/// The benchmark's one batch as a task: every training batch is it; nothing is evaluated.
struct BenchTask<'a> {
    cfg: ModelConfig,
    batch: Batch,
    weights: Option<&'a HostWeights>,
}

impl Task for BenchTask<'_> {
    fn name(&self) -> String {
        "bench".into()
    }
    fn model_config(&self) -> ModelConfig {
        self.cfg.clone()
    }
    fn head(&self) -> Head {
        head(&self.cfg)
    }
    fn base_weights(&self) -> Result<Option<HostWeights>> {
        Ok(self.weights.cloned())
    }
    fn train_batch(&mut self, _index: u64, _batch_size: usize) -> Result<Batch> {
        Ok(self.batch.clone())
    }
    fn eval_batches(&self) -> &[Batch] {
        &[]
    }
}

/// The training loop's settings for the benchmark, to `steps`: a constant learning rate,
/// clipping at 1, no evaluation.
fn loop_config(a: &BenchTrainArgs, steps: u64) -> TrainConfig {
    TrainConfig {
        steps,
        batch: a.batch,
        lr: 1e-4,
        warmup: 0,
        decay: Decay::Constant,
        weight_decay: 0.0,
        clip: Some(1.0),
        accum: 1,
        eval_every: 0,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
    }
}

/// What [`train_steps`] (or the forward passes) measured.
pub struct Trained {
    /// Steps 2..=steps+1 (the forward passes 1..=steps).
    pub timed: Vec<StepCost>,
    /// With a method: its first re-allocation (AdaLoRA: budget step) and the step after it.
    pub event: Vec<StepCost>,
    /// The allocations the method made (after its starting ranks).
    pub allocations: Vec<Allocation>,
    /// The ledger from the first step on (its peaks: total and by kind).
    pub ledger: LedgerSnapshot,
    /// Per-op wall times of the timed steps, when profiled.
    pub profile: Option<Vec<OpTotal>>,
}

/// Trains `mode` (LoRA or full fine-tuning) on the benchmark batch through the training loop
/// ([`train`]) with the `--method` rank engine as its hooks on the LoRA step, as a run does:
/// step 1 warms up (not measured), steps 2..=steps+1 are timed; with a method, step steps+2 is
/// its first re-allocation and one more step follows.
pub fn train_steps<B: Backend>(
    be: &Arc<B>,
    a: &BenchTrainArgs,
    cfg: &ModelConfig,
    weights: Option<&HostWeights>,
    mode: Mode,
    profile: TakeProfile<B>,
) -> Result<Trained> {
    let method = if mode == Mode::Lora {
        a.method
    } else {
        BenchMethod::None
    };
    let train_mode = match mode {
        Mode::Full => TrainMode::Full,
        Mode::Lora | Mode::Forward => lora_mode(a, cfg, method == BenchMethod::Adalora),
    };
    let mut m = Model::new(be.clone(), cfg.clone(), head(cfg), train_mode, weights, 1)?;
    let timed_end = 1 + a.steps as u64;
    let event = timed_end + 1;
    let adapters = m.config().slots();
    let mut driver = method
        .driver(a, &mut m, event)?
        .map(|d| DriverHooks::new(d, adapters, Collect::default()));
    let mut fixed = NoHooks;
    let hooks: &mut dyn Hooks<B> = match driver.as_mut() {
        Some(d) => d,
        None => &mut fixed,
    };
    let mut task = BenchTask {
        cfg: cfg.clone(),
        batch: batch(a, cfg),
        weights,
    };
    let to = |steps| loop_config(a, steps);
    be.ledger().reset_peak();
    train(&mut m, &mut task, &to(1), hooks)?;
    // Model creation and the warm-up step are not part of the profile.
    if let Some(take) = profile {
        take(be);
    }
    let mut meter = Metered::new(be.clone(), hooks);
    train(&mut m, &mut task, &to(timed_end), &mut meter)?;
    let ops = profile.map(|take| take(be));
    if method != BenchMethod::None {
        train(&mut m, &mut task, &to(event + 1), &mut meter)?;
    }
    let event = meter.steps.split_off(a.steps);
    Ok(Trained {
        timed: meter.steps,
        event,
        allocations: driver.map(|d| d.sink.allocations).unwrap_or_default(),
        ledger: be.ledger().snapshot(),
        profile: ops,
    })
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
    let fl = count_flops(a, cfg);
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
        let m = bench_mode(&be, a, cfg, weights, mode, profile)?;
        let flops = match mode {
            Mode::Lora => fl.lora_step,
            Mode::Full => fl.full_step,
            Mode::Forward => fl.forward,
        };
        rows.push(Row { mode, flops, m });
    }
    let tokens = (a.batch * a.seq) as f64;
    print_table(&rows, tokens, rate);
    for r in &rows {
        print_device_work(a, r);
    }
    if a.json {
        for r in &rows {
            print_json(&*be, a, r, tokens, rate);
        }
    }
    Ok(())
}

/// Speed, share of the GEMM ceiling and ledger peak of each mode.
fn print_table(rows: &[Row], tokens: f64, rate: f64) {
    println!(
        "{:<22} {:>8} {:>10} {:>11} {:>14} {:>11} {:>12}",
        "mode", "s/step", "tokens/s", "GFLOP/step", "ceiling tok/s", "of ceiling", "peak ledger"
    );
    for r in rows {
        let ceiling = tokens / (r.flops / (rate * 1e9));
        let tps = tokens / r.m.secs;
        println!(
            "{:<22} {:>8.3} {:>10.0} {:>11.2} {:>14.0} {:>10.0}% {:>8.0} MiB",
            r.mode.label(),
            r.m.secs,
            tps,
            r.flops / 1e9,
            ceiling,
            100.0 * tps / ceiling,
            r.m.t.ledger.total_peak as f64 / (1 << 20) as f64
        );
    }
}

/// The device's work per timed step (GPU), and with `--method` its allocations and what its
/// re-allocation step and the step after it cost.
fn print_device_work(a: &BenchTrainArgs, r: &Row) {
    let label = r.mode.label();
    if let Some(p) = r.m.per_step {
        println!(
            "{label:<22} per step: {:.0} dispatches, {:.1} submits, {:.1} read-backs of {:.0} \
             bytes in all, {:.0} bytes uploaded",
            p.dispatches, p.submits, p.read_backs, p.read_back_bytes, p.uploaded_bytes
        );
    }
    let method = a.method.label();
    for x in &r.m.t.allocations {
        let before: usize = x.slots.iter().map(|s| s.before).sum();
        println!(
            "{label:<22} {method} step {}: {}, total rank {before} → {}",
            x.step,
            x.reason,
            x.total()
        );
    }
    let whats = ["re-allocation", "the step after it"];
    for (s, what) in r.m.t.event.iter().zip(whats) {
        let c = s.counters.map_or("no device counters".to_string(), |c| {
            format!(
                "{} dispatches, {} submits, {} read-backs of {} bytes in all, {} bytes uploaded",
                c.dispatches, c.submits, c.read_backs, c.read_back_bytes, c.uploaded_bytes
            )
        });
        println!(
            "{label:<22} {method} step {} ({what}): {c}; {:.3} s",
            s.step, s.secs
        );
    }
}

/// One JSON line per mode (for scripts/bench-vs-pytorch).
fn print_json<B: Backend>(be: &B, a: &BenchTrainArgs, r: &Row, tokens: f64, rate: f64) {
    let steps: Vec<_> =
        r.m.t
            .event
            .iter()
            .map(|s| serde_json::json!({"step": s.step, "secs": s.secs, "counters": s.counters}))
            .collect();
    let line = serde_json::json!({
        "side": "ours",
        "device": be.name(),
        "mode": r.mode.key(),
        "secs": r.m.secs,
        "tokens_per_s": tokens / r.m.secs,
        "gemm_gflops": rate,
        "of_ceiling": (tokens / r.m.secs) / (tokens / (r.flops / (rate * 1e9))),
        "peak_ledger_bytes": r.m.t.ledger.total_peak,
        // Where the peak went (each kind's own peak; they need not coincide in time).
        "peak_ledger_by_kind": MemKind::ALL
            .iter()
            .map(|&k| (k.name(), r.m.t.ledger.peak_of(k)))
            .collect::<std::collections::BTreeMap<_, _>>(),
        "weights": format!("{:?}", a.weights).to_lowercase(),
        // The process peak: the caller runs one mode per process to read it per mode.
        "peak_rss_gib": peak_rss_gib().unwrap_or(f64::NAN),
        "per_step": r.m.per_step,
        // Only the LoRA step runs the rank method.
        "method": if r.mode == Mode::Lora { a.method.label() } else { "none" },
        "method_steps": steps,
    });
    println!("{line}");
}

fn peak_rss_gib() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / (1 << 20) as f64)
}

pub fn main(mut a: BenchTrainArgs) -> Result<()> {
    let (cfg, weights) = match a.model.as_deref() {
        // SmolLM2-135M's shape with random weights: the step times the same as with the real
        // ones (scripts/bench-vs-pytorch loads the real GGUF into PyTorch beside it).
        Some("smollm2") => {
            let c = smollm2_config();
            (a.layers, a.hidden, a.heads, a.ffn, a.vocab) =
                (c.layers, c.hidden, c.heads, c.ffn, c.vocab);
            (c, None)
        }
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
    let kinds: Vec<&str> = cfg.module_kinds().iter().map(|k| k.name()).collect();
    println!(
        "adarank bench train — {:?}, {} layers, hidden {}, {} heads ({} kv), FFN {}, vocab {}, \
         seq {}, batch {} ({} tokens/step); LoRA rank {} on {} ({} adapters); AdamW, frozen \
         weights {:?}, median of {} steps; weights: {}; rank method: {}",
        cfg.flavour,
        a.layers,
        a.hidden,
        a.heads,
        cfg.kv_heads(),
        a.ffn,
        a.vocab,
        a.seq,
        a.batch,
        a.batch * a.seq,
        a.rank,
        kinds.join(", "),
        cfg.slots(),
        a.weights,
        a.steps,
        a.model.as_deref().unwrap_or("random"),
        a.method.label()
    );
    let w = weights.as_ref();
    let (cpu, gpu) = match a.device {
        None => (true, true),
        Some(DeviceChoice::Cpu) => (true, false),
        Some(DeviceChoice::Gpu) => (false, true),
        Some(DeviceChoice::Auto) => match Device::open(DeviceChoice::Auto)? {
            Device::Cpu(_) => (true, false),
            Device::Gpu(_) => (false, true),
        },
    };
    if cpu {
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
    if gpu {
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
            None if a.device.is_some() => {
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
