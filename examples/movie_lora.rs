//! One LoRA fine-tuning run of all-MiniLM-L6-v2 on the movie-review sentences, CPU backend:
//! prints the dev accuracy before and after, the majority-class baseline, wall time, the
//! backend's peak memory and the trainable parameter count.
//!
//!     scripts/fetch-assets && cargo run --example movie_lora -- [steps] [batch] [rank] [max_len] [dev_samples]

use adarank::adapter::ModuleKind;
use adarank::backend::cpu::Cpu;
use adarank::data::{assets, hf, ClassifyTask};
use adarank::model::{LoraConfig, TrainMode};
use adarank::train::{build_model, evaluate, train, Decay, NoHooks, Task, TrainConfig};
use std::sync::Arc;
use std::time::Instant;

fn main() -> anyhow::Result<()> {
    let arg = |i: usize, d: usize| -> usize {
        std::env::args()
            .nth(i)
            .and_then(|s| s.parse().ok())
            .unwrap_or(d)
    };
    let (steps, batch, rank, max_len) = (arg(1, 300), arg(2, 16), arg(3, 8), arg(4, 64));
    let dev_samples = arg(5, 1056);
    let mut ck = hf::load(assets::MINILM)?;
    ck.tokenizer.set_max_len(max_len)?;
    let mut task = ClassifyTask::movie_reviews(&ck, "dev", Some(dev_samples), 0)?;
    let counts = task.eval_data().class_counts();
    println!(
        "movie reviews: {} train, {} dev sentences; dev majority class {:.3}",
        task.train_data().len(),
        task.eval_data().len(),
        *counts.iter().max().unwrap() as f64 / task.eval_data().len() as f64
    );
    let kinds = [
        ModuleKind::Q,
        ModuleKind::V,
        ModuleKind::FfnIn,
        ModuleKind::FfnOut,
    ];
    let lora = LoraConfig::uniform(ck.config.num_hidden_layers, &kinds, rank, 2.0 * rank as f32);
    let mut model = build_model(Arc::new(Cpu::new()), &task, TrainMode::Lora(lora), 0)?;
    let before = evaluate(&mut model, &task, 0)?;
    println!("dev accuracy before training: {:.4}", before.accuracy);
    let cfg = TrainConfig {
        steps: steps as u64,
        batch,
        lr: 1e-3,
        warmup: steps as u64 / 10,
        decay: Decay::Linear,
        eval_every: steps as u64 / 2,
        ..Default::default()
    };
    let t0 = Instant::now();
    let log = train(&mut model, &mut task, &cfg, &mut NoHooks)?;
    let secs = t0.elapsed().as_secs_f64();
    for e in &log.evals {
        println!(
            "step {:>5}: dev loss {:.4}, accuracy {:.4}",
            e.step, e.loss, e.accuracy
        );
    }
    let mem = model.memory();
    println!(
        "{}: {} steps × {} sentences (max_len {}), LoRA r={} on q,v,ffn_in,ffn_out: {} trainable \
         params; {:.1} s wall; backend peak memory {:.1} MiB",
        task.name(),
        steps,
        batch,
        max_len,
        rank,
        model.trainable_params(),
        secs,
        mem.total_peak as f64 / (1 << 20) as f64
    );
    Ok(())
}
