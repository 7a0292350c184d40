//! `adarank plan`'s model of a cell against what the cell really does. Oracles: the backend
//! ledger's measured peak of a real run (CPU backend) for memory, and the CPU backend's own tally
//! of the GEMMs it ran for FLOPs. Every arm of `examples/quickstart.rank`,
//! `examples/paper_table.rank` and `examples/movie_sentiment.rank` (the last two shortened where
//! the full run would take minutes), of `tests/experiments/synthetic_adalora.rank` and of a tiny
//! Llama-family model (`llama_peaks_match_the_plan`), must peak within 5% of the plan.

use adarank::adapter::ModuleKind;
use adarank::backend::cpu::Cpu;
use adarank::data::prepare::Split;
use adarank::experiment::arm::{build_task, load_pretrained, train_mode};
use adarank::experiment::costs::{self, devices, pass_flops, BatchShape};
use adarank::experiment::run::{run, DeviceChoice, RunOptions};
use adarank::experiment::{CellStatus, RunDir};
use adarank::model::{Flavour, Head, LoraConfig, Model, ModelConfig, Pooling, TrainMode};
use adarank::policy::{self, Policy};
use adarank::testkit;
use adarank::train::build_model;
use std::path::Path;
use std::sync::Arc;

/// The example `file` with each `(from, to)` replaced (shorter schedules), checked.
fn example(file: &str, edits: &[(&str, &str)]) -> Policy {
    policy_at("examples", file, edits)
}

/// The policy `dir/file` of the checkout with each `(from, to)` replaced, checked.
fn policy_at(dir: &str, file: &str, edits: &[(&str, &str)]) -> Policy {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(dir).join(file);
    let mut text = std::fs::read_to_string(&path).unwrap();
    for (from, to) in edits {
        assert!(text.contains(from), "{file} no longer contains {from:?}");
        text = text.replace(from, to);
    }
    policy::load_str(
        &text,
        &path.display().to_string(),
        path.parent().unwrap(),
        &[],
    )
    .unwrap_or_else(|d| panic!("{d}"))
}

/// Runs seed 1 of every arm and compares each cell's measured ledger peak with the plan.
fn peaks_agree(policy: &Policy) {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let opts = RunOptions {
        out: Some(out.clone()),
        device: DeviceChoice::Cpu,
        quiet: true,
        seeds: vec![policy.seeds[0]],
        ..Default::default()
    };
    run(Some(policy.clone()), &opts).unwrap();
    let summary = RunDir::open(&out).unwrap().load_summary().unwrap();
    let device = devices::DeviceSpec::memory_only(f64::INFINITY, "test");
    let mut worst: f64 = 0.0;
    for arm in &policy.arms {
        let cell = summary.cell(&arm.name, policy.seeds[0]).unwrap();
        assert_eq!(cell.status, CellStatus::Done, "{}", arm.name);
        let plan = costs::arm_costs(policy, &arm.name, &device).unwrap();
        let (planned, measured) = (plan.memory.peak.total(), cell.peak_bytes as f64);
        let dev = (planned - measured) / measured;
        eprintln!(
            "{} {}: planned peak {planned} B (start {} B), measured {measured} B: {:+.3}%",
            policy.name,
            arm.name,
            plan.memory.start.total(),
            100.0 * dev
        );
        assert!(
            dev.abs() <= 0.05,
            "{} arm {}: plan {planned} B vs ledger peak {measured} B ({:+.2}%)",
            policy.name,
            arm.name,
            100.0 * dev
        );
        worst = worst.max(dev.abs());
    }
    eprintln!("{}: worst deviation {:.4}%", policy.name, 100.0 * worst);
}

#[test]
fn quickstart_peaks_match_the_plan() {
    peaks_agree(&example("quickstart.rank", &[]));
}

/// bf16 frozen weights (half the frozen bytes) in the plan as in the ledger.
#[test]
fn quickstart_bf16_peaks_match_the_plan() {
    peaks_agree(&example(
        "quickstart.rank",
        &[(
            "checkpoint_every = 20 }",
            "checkpoint_every = 20, weights = bf16 }",
        )],
    ));
}

#[test]
fn paper_table_peaks_match_the_plan() {
    // 80 steps instead of 400, the phases scaled down with them.
    peaks_agree(&example(
        "paper_table.rank",
        &[
            ("steps = 400", "steps = 80"),
            ("checkpoint_every = 100", "checkpoint_every = 20"),
            ("until step 200 {}", "until step 40 {}"),
            (
                "until step 300 { every 50 steps",
                "until step 60 { every 10 steps",
            ),
            (
                "until step 211 { every 50 steps",
                "until step 51 { every 10 steps",
            ),
        ],
    ));
}

/// AdaLoRA keeps its importance averages and its penalty's scratch on the device from the first
/// step; both arms (masking and pruning) against fixed-rank LoRA.
#[test]
fn adalora_peaks_match_the_plan() {
    peaks_agree(&policy_at(
        "tests/experiments",
        "synthetic_adalora.rank",
        &[],
    ));
}

#[test]
fn movie_sentiment_peaks_match_the_plan() {
    if !testkit::require_assets("movie_sentiment_peaks_match_the_plan") {
        return;
    }
    // Four steps instead of 300; re-allocations at steps 1 and 2 and the final allocation at 3
    // still change the ranks. Every arm evaluates 512 sentences in batches of 64, the largest
    // shape of the cell.
    peaks_agree(&example(
        "movie_sentiment.rank",
        &[
            ("steps = 300", "steps = 4"),
            ("warmup = 30", "warmup = 1"),
            ("eval_every = 100", "eval_every = 2"),
            ("until step 100", "until step 1"),
            ("until step 250", "until step 3"),
            ("every 50 steps", "every 1 step"),
        ],
    ));
}

#[test]
fn bert_pooler_peaks_and_flops_match_the_plan() {
    if !testkit::require_assets("bert_pooler_peaks_and_flops_match_the_plan") {
        return;
    }
    // `pooling = cls` adds BERT's pooler: frozen weights under LoRA, trained under full
    // fine-tuning, and its activations in the head.
    let p = example(
        "movie_sentiment.rank",
        &[
            ("pooling = mean", "pooling = cls"),
            ("steps = 300", "steps = 3"),
            ("warmup = 30", "warmup = 1"),
            ("eval_every = 100", "eval_every = 1"),
            ("until step 100", "until step 1"),
            ("until step 250", "until step 2"),
            ("every 50 steps", "every 1 step"),
        ],
    );
    flops_agree(&p);
    peaks_agree(&p);
}

/// GEMM FLOPs of one micro-batch of every arm of `policy`, counted by the CPU backend, against
/// the plan's count at the batch's own shape.
fn flops_agree(policy: &Policy) {
    for arm in &policy.arms {
        let be = Arc::new(Cpu::new());
        let mut ck = load_pretrained(arm).unwrap();
        let (mut task, _) = build_task(arm, ck.as_mut(), 1, Split::Test).unwrap();
        let layers = task.model_config().layers;
        let mode = train_mode(arm, layers);
        let mut model = build_model(be.clone(), task.as_ref(), mode.clone(), 1).unwrap();
        let batch = task.train_batch(0, arm.train.batch).unwrap();
        let before = be.gemm_flops();
        model.forward_backward(&batch, 1.0).unwrap();
        let counted = (be.gemm_flops() - before) as f64;
        let ranks = match &mode {
            TrainMode::Full => vec![],
            TrainMode::Lora(_) => model.ranks(),
        };
        let shape = BatchShape {
            batch: batch.batch,
            seq: batch.seq,
        };
        let planned = pass_flops(
            model.config(),
            model.head(),
            matches!(mode, TrainMode::Full),
            &ranks,
            shape,
            true,
        );
        assert_eq!(
            planned.total(),
            counted,
            "{} arm {}: planned {planned:?}, the backend ran {counted}",
            policy.name,
            arm.name
        );
        // Forward alone.
        let before = be.gemm_flops();
        model.loss(&batch).unwrap();
        assert_eq!(planned.forward, (be.gemm_flops() - before) as f64);
    }
}

#[test]
fn step_flops_match_the_backends_tally() {
    flops_agree(&example("quickstart.rank", &[]));
    flops_agree(&example("paper_table.rank", &[]));
    // A decoder and a classification head (the paper-scale example's kinds, at a small size).
    flops_agree(&example(
        "paper_scale.rank",
        &[
            ("layers = 24", "layers = 2"),
            ("hidden = 2048", "hidden = 32"),
            ("heads = 32", "heads = 4"),
            ("ffn = 8192", "ffn = 64"),
            ("vocab = 50257", "vocab = 100"),
            ("max_positions = 512", "max_positions = 16"),
            (
                "samples = 67349, eval_samples = 872, seq = 128",
                "samples = 64, eval_samples = 16, seq = 16",
            ),
            ("budget = 1152", "budget = 96"),
            ("max_rank = 64", "max_rank = 16"),
            ("every 2000 steps", "every 2 steps"),
        ],
    ));
}

#[test]
fn movie_sentiment_flops_match_the_backends_tally() {
    if !testkit::require_assets("movie_sentiment_flops_match_the_backends_tally") {
        return;
    }
    flops_agree(&example("movie_sentiment.rank", &[]));
}

/// `adarank bench train` takes its FLOPs from the same count: its model (an encoder with rank-r
/// adapters on all six kinds, a mean-pooled two-class head), small here.
#[test]
fn bench_train_configuration_flops_match_the_backends_tally() {
    let cfg = ModelConfig {
        flavour: Flavour::Encoder,
        vocab: 100,
        max_positions: 16,
        type_vocab: 2,
        hidden: 32,
        layers: 2,
        heads: 4,
        ffn: 64,
        ln_eps: 1e-12,
        llama: None,
    };
    let head = Head::Classify {
        classes: 2,
        pooling: Pooling::Mean,
    };
    for full in [false, true] {
        let be = Arc::new(Cpu::new());
        let mode = if full {
            TrainMode::Full
        } else {
            TrainMode::Lora(LoraConfig::uniform(2, &ModuleKind::ALL, 8, 16.0))
        };
        let mut m = Model::new(be.clone(), cfg.clone(), head, mode, None, 1).unwrap();
        let b = adarank::model::Batch {
            batch: 4,
            seq: 12,
            ids: (0..48).map(|i| i % 100).collect(),
            type_ids: vec![],
            mask: vec![],
            target: adarank::model::Target::Classes(vec![0, 1, 1, 0]),
        };
        m.forward_backward(&b, 1.0).unwrap();
        let ranks = vec![8; 12];
        let planned = pass_flops(
            &cfg,
            &head,
            full,
            &ranks,
            BatchShape { batch: 4, seq: 12 },
            true,
        );
        assert_eq!(planned.total(), be.gemm_flops() as f64, "full = {full}");
    }
}

/// A Llama-family model (the tiny GGUF fixture: RMSNorm, RoPE, grouped-query attention,
/// SwiGLU) under the adaptive method, fixed rank and full fine-tuning on text records: the
/// plan's Llama pass (what a block keeps and what its backward recomputes) against the ledger.
#[test]
fn llama_peaks_match_the_plan() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let text = root.join("lmdata/text.jsonl");
    let src = format!(
        r#"experiment llama_plan {{
  model gguf {{ path = "{gguf}" }}
  data jsonl {{ train = "{text}", dev = "{text}", metric = perplexity, max_len = 8, eval_samples = 2 }}
  lora {{ targets = [q, k, v, o, gate, up, down], alpha = 8, init_rank = 2, budget = 28, max_rank = 4 }}
  train {{ steps = 8, batch = 2, lr = 1e-3 }}
  complexity = plugin "spectral_gradient"
  allocator = plugin "log_rule"
  learner = plugin "learn_gates"
  phase uniform until step 2 {{}}
  phase adapt until step 6 {{ every 2 steps: reallocate }}
  phase settle {{}}
  baseline arm fixed {{ phase adapt {{}} }}
  arm full {{ lora = off }}
  seeds = [1]
}}
"#,
        gguf = root.join("llm/tiny_llama.gguf").display(),
        text = text.display(),
    );
    let policy =
        policy::load_str(&src, "llama_plan.rank", &root, &[]).unwrap_or_else(|d| panic!("{d}"));
    peaks_agree(&policy);
}
