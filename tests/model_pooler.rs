//! `pooling = cls` is BERT's pooler, as `BertForSequenceClassification` computes it:
//! logits = W·tanh(W_p·h₀ + b_p) + b on the first token's final hidden state h₀. Checked against
//! that formula evaluated on the host in f64 from the model's own hidden states (an oracle
//! independent of the pooler's kernels), its parameters' place (frozen under LoRA, trained under
//! full fine-tuning), and the GPU backend against the CPU backend (the tanh kernels). The
//! backward is checked by finite differences in `model_grad.rs`.

use adarank::adapter::ModuleKind;
use adarank::backend::cpu::Cpu;
use adarank::backend::Backend;
use adarank::model::{
    random_weights, Batch, Flavour, Head, Init, LoraConfig, Model, ModelConfig, Pooling, Target,
    TrainMode,
};
use adarank::testkit::test_gpu;
use std::sync::Arc;

fn cfg() -> ModelConfig {
    ModelConfig {
        flavour: Flavour::Encoder,
        vocab: 31,
        max_positions: 8,
        type_vocab: 2,
        hidden: 16,
        layers: 2,
        heads: 4,
        ffn: 32,
        ln_eps: 1e-12,
        llama: None,
    }
}

const HEAD: Head = Head::Classify {
    classes: 3,
    pooling: Pooling::Cls,
};

fn batch() -> Batch {
    let (b, t) = (3, 7);
    Batch {
        batch: b,
        seq: t,
        ids: (0..b * t).map(|i| ((i * 7 + 3) % 31) as u32).collect(),
        type_ids: vec![0; b * t],
        mask: (0..b * t)
            .map(|i| if i / t == 2 && i % t >= 5 { 0.0 } else { 1.0 })
            .collect(),
        target: Target::Classes(vec![0, 2, 1]),
    }
}

fn model<B: Backend>(be: Arc<B>, mode: TrainMode) -> Model<B> {
    let w = random_weights(&cfg(), &HEAD, Init::FanIn, 11);
    Model::new(be, cfg(), HEAD, mode, Some(&w), 11).unwrap()
}

#[test]
fn cls_logits_are_the_bert_pooler_formula() {
    let c = cfg();
    let w = random_weights(&c, &HEAD, Init::FanIn, 11);
    let mut m = model(Arc::new(Cpu::new()), TrainMode::Full);
    let b = batch();
    let hidden = m.hidden_states(&b).unwrap();
    let out = m.evaluate(&b).unwrap();
    let (h, k) = (c.hidden, 3);
    let get = |n: &str| &w[n].data;
    let (wp, bp, wc, bc) = (
        get("pooler.dense.weight"),
        get("pooler.dense.bias"),
        get("classifier.weight"),
        get("classifier.bias"),
    );
    let mut worst = 0.0f64;
    for s in 0..b.batch {
        let h0 = &hidden[s * b.seq * h..s * b.seq * h + h];
        let pooled: Vec<f64> = (0..h)
            .map(|i| {
                let z: f64 = (0..h)
                    .map(|j| wp[i * h + j] as f64 * h0[j] as f64)
                    .sum::<f64>()
                    + bp[i] as f64;
                z.tanh()
            })
            .collect();
        for j in 0..k {
            let want: f64 = (0..h)
                .map(|i| wc[j * h + i] as f64 * pooled[i])
                .sum::<f64>()
                + bc[j] as f64;
            let got = out.logits[s * k + j] as f64;
            worst = worst.max((got - want).abs());
        }
    }
    assert!(worst < 1e-5, "largest logit difference {worst:e}");
    assert_eq!(out.logits.len(), b.batch * k);
}

#[test]
fn the_pooler_trains_with_the_body() {
    let mut full = model(Arc::new(Cpu::new()), TrainMode::Full);
    let names: Vec<String> = full.trainable_host().unwrap().into_keys().collect();
    assert!(
        names.contains(&"pooler.dense.weight".to_string()),
        "{names:?}"
    );
    let lora = TrainMode::Lora(LoraConfig::uniform(2, &[ModuleKind::Q], 2, 4.0));
    let mut m = model(Arc::new(Cpu::new()), lora);
    let names: Vec<String> = m.trainable_host().unwrap().into_keys().collect();
    assert!(!names.iter().any(|n| n.starts_with("pooler.")), "{names:?}");
    assert!(names.contains(&"classifier.weight".to_string()));
    // Frozen, but readable and writable by name (exports and imports).
    let p = m.named_host(|n| n.starts_with("pooler.")).unwrap();
    assert_eq!(p["pooler.dense.weight"].shape, vec![16, 16]);
    let mut zero = p.clone();
    zero.values_mut().for_each(|t| t.data.fill(0.0));
    m.overwrite(&zero).unwrap();
    // tanh(0) = 0: the classifier sees zeros, every logit is its bias (0 at init).
    let out = m.evaluate(&batch()).unwrap();
    assert!(out.logits.iter().all(|&l| l == 0.0), "{:?}", out.logits);
}

/// Loss, the pooler weight's gradient and the logits of one forward/backward.
fn one_pass<B: Backend>(m: &mut Model<B>, b: &Batch) -> (f32, Vec<f32>, Vec<f32>) {
    m.zero_grads();
    let l = m.forward_backward(b, 1.0).unwrap();
    let g = m.trainable_grads().unwrap();
    (
        l,
        g["pooler.dense.weight"].data.clone(),
        m.evaluate(b).unwrap().logits,
    )
}

#[test]
fn gpu_pooler_matches_cpu() {
    let Some(gpu) = test_gpu() else { return };
    let b = batch();
    let c = one_pass(&mut model(Arc::new(Cpu::new()), TrainMode::Full), &b);
    let g = one_pass(&mut model(gpu, TrainMode::Full), &b);
    assert!(
        (c.0 - g.0).abs() <= 1e-5 * (1.0 + c.0.abs()),
        "loss {} vs {}",
        c.0,
        g.0
    );
    assert!(c.1.iter().any(|&x| x != 0.0), "the pooler gets a gradient");
    for (what, x, y) in [("dW_p", &c.1, &g.1), ("logits", &c.2, &g.2)] {
        for (a, b) in x.iter().zip(y.iter()) {
            assert!(
                (a - b).abs() <= 1e-4 * (1.0 + a.abs()),
                "{what}: cpu {a} gpu {b}"
            );
        }
    }
}
