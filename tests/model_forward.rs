//! The model's forward pass against a naive reference written independently here: plain loops
//! in f64, one sequence and one token at a time, straight from the BERT / GPT-2 definitions
//! (embeddings, per-head softmax attention with padded keys dropped, post-norm vs pre-norm,
//! GELU, final norm). Tolerance 1e-4 on unit-scale hidden states.

use adarank::backend::cpu::{gelu, Cpu};
use adarank::model::{
    random_weights, Batch, Flavour, Head, HostWeights, Init, Model, ModelConfig, Target, TrainMode,
};
use rand::{Rng, SeedableRng};
use std::sync::Arc;

fn cfg(flavour: Flavour) -> ModelConfig {
    ModelConfig {
        flavour,
        vocab: 29,
        max_positions: 10,
        type_vocab: 2,
        hidden: 16,
        layers: 2,
        heads: 4,
        ffn: 24,
        ln_eps: 1e-12,
        llama: None,
    }
}

type M = Vec<Vec<f64>>;

fn mat(w: &HostWeights, name: &str) -> M {
    let t = &w[name];
    let cols = *t.shape.last().unwrap();
    t.data
        .chunks(cols)
        .map(|r| r.iter().map(|&v| v as f64).collect())
        .collect()
}

fn vecw(w: &HostWeights, name: &str) -> Vec<f64> {
    w[name].data.iter().map(|&v| v as f64).collect()
}

/// y = x·Wᵀ + b for each row
fn linear(x: &M, w: &HostWeights, path: &str) -> M {
    let (wm, b) = (
        mat(w, &format!("{path}.weight")),
        vecw(w, &format!("{path}.bias")),
    );
    x.iter()
        .map(|row| {
            wm.iter()
                .zip(&b)
                .map(|(wr, bb)| wr.iter().zip(row).map(|(a, c)| a * c).sum::<f64>() + bb)
                .collect()
        })
        .collect()
}

fn layernorm(x: &M, w: &HostWeights, path: &str, eps: f64) -> M {
    let (g, b) = (
        vecw(w, &format!("{path}.weight")),
        vecw(w, &format!("{path}.bias")),
    );
    x.iter()
        .map(|r| {
            let n = r.len() as f64;
            let mean = r.iter().sum::<f64>() / n;
            let var = r.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
            r.iter()
                .enumerate()
                .map(|(i, v)| (v - mean) / (var + eps).sqrt() * g[i] + b[i])
                .collect()
        })
        .collect()
}

fn add(a: &M, b: &M) -> M {
    a.iter()
        .zip(b)
        .map(|(x, y)| x.iter().zip(y).map(|(p, q)| p + q).collect())
        .collect()
}

fn attention(x: &M, w: &HostWeights, l: usize, c: &ModelConfig, mask: &[f32], causal: bool) -> M {
    let p = format!("encoder.layer.{l}.attention");
    let (q, k, v) = (
        linear(x, w, &format!("{p}.self.query")),
        linear(x, w, &format!("{p}.self.key")),
        linear(x, w, &format!("{p}.self.value")),
    );
    let (t, d) = (x.len(), c.hidden / c.heads);
    let mut ctx = vec![vec![0.0; c.hidden]; t];
    for h in 0..c.heads {
        for i in 0..t {
            let visible: Vec<usize> = (0..t)
                .filter(|&j| mask[j] != 0.0 && (!causal || j <= i))
                .collect();
            let s: Vec<f64> = visible
                .iter()
                .map(|&j| {
                    (0..d)
                        .map(|e| q[i][h * d + e] * k[j][h * d + e])
                        .sum::<f64>()
                        / (d as f64).sqrt()
                })
                .collect();
            let mx = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let z: f64 = s.iter().map(|v| (v - mx).exp()).sum();
            for (jj, &j) in visible.iter().enumerate() {
                let pr = (s[jj] - mx).exp() / z;
                for e in 0..d {
                    ctx[i][h * d + e] += pr * v[j][h * d + e];
                }
            }
        }
    }
    linear(&ctx, w, &format!("{p}.output.dense"))
}

fn ffn(x: &M, w: &HostWeights, l: usize) -> M {
    let f = linear(x, w, &format!("encoder.layer.{l}.intermediate.dense"));
    let g: M = f
        .iter()
        .map(|r| r.iter().map(|&v| gelu(v as f32) as f64).collect())
        .collect();
    linear(&g, w, &format!("encoder.layer.{l}.output.dense"))
}

fn reference(c: &ModelConfig, w: &HostWeights, b: &Batch) -> Vec<f32> {
    let eps = c.ln_eps as f64;
    let (we, pe) = (
        mat(w, "embeddings.word_embeddings.weight"),
        mat(w, "embeddings.position_embeddings.weight"),
    );
    let mut out = vec![];
    for s in 0..b.batch {
        let mask = &b.mask[s * b.seq..(s + 1) * b.seq];
        let mut x: M = (0..b.seq)
            .map(|t| {
                let id = b.ids[s * b.seq + t] as usize;
                (0..c.hidden).map(|e| we[id][e] + pe[t][e]).collect()
            })
            .collect();
        let layer = |l: usize, p: &str| format!("encoder.layer.{l}.{p}");
        if c.flavour == Flavour::Encoder {
            let te = mat(w, "embeddings.token_type_embeddings.weight");
            for (t, row) in x.iter_mut().enumerate() {
                let ty = b.type_ids[s * b.seq + t] as usize;
                row.iter_mut().zip(&te[ty]).for_each(|(v, e)| *v += e);
            }
            x = layernorm(&x, w, "embeddings.LayerNorm", eps);
            for l in 0..c.layers {
                let a = attention(&x, w, l, c, mask, false);
                let h = layernorm(
                    &add(&x, &a),
                    w,
                    &layer(l, "attention.output.LayerNorm"),
                    eps,
                );
                x = layernorm(
                    &add(&h, &ffn(&h, w, l)),
                    w,
                    &layer(l, "output.LayerNorm"),
                    eps,
                );
            }
        } else {
            for l in 0..c.layers {
                let a_in = layernorm(&x, w, &layer(l, "attention.output.LayerNorm"), eps);
                let r1 = add(&x, &attention(&a_in, w, l, c, mask, true));
                let f_in = layernorm(&r1, w, &layer(l, "output.LayerNorm"), eps);
                x = add(&r1, &ffn(&f_in, w, l));
            }
            x = layernorm(&x, w, "final_layernorm", eps);
        }
        out.extend(x.into_iter().flatten().map(|v| v as f32));
    }
    out
}

fn check(flavour: Flavour, seed: u64) {
    let c = cfg(flavour);
    let w = random_weights(&c, &Head::Regress, Init::FanIn, seed);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let (bs, t) = (3, 7);
    let b = Batch {
        batch: bs,
        seq: t,
        ids: (0..bs * t).map(|_| rng.random_range(0..29)).collect(),
        type_ids: (0..bs * t).map(|i| (i % t >= 4) as u32).collect(),
        // the third sequence is padded after 3 tokens
        mask: (0..bs * t)
            .map(|i| if i / t == 2 && i % t >= 3 { 0.0 } else { 1.0 })
            .collect(),
        target: Target::Values(vec![]),
    };
    let mut m = Model::new(
        Arc::new(Cpu::new()),
        c.clone(),
        Head::Regress,
        TrainMode::Full,
        Some(&w),
        1,
    )
    .unwrap();
    let got = m.hidden_states(&b).unwrap();
    let want = reference(&c, &w, &b);
    let err = got
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    println!("{flavour:?}: max |model − reference| = {err:.2e}");
    assert!(
        err < 1e-4,
        "{flavour:?}: forward differs from the reference by {err}"
    );
}

#[test]
fn encoder_forward_matches_the_reference() {
    check(Flavour::Encoder, 3);
}

#[test]
fn decoder_forward_matches_the_reference() {
    check(Flavour::Decoder, 4);
}

#[test]
fn padded_tokens_change_nothing_for_span_and_mean_pooled_heads() {
    use adarank::model::Pooling;
    let c = cfg(Flavour::Encoder);
    for head in [
        Head::Span,
        Head::Classify {
            classes: 3,
            pooling: Pooling::Mean,
        },
    ] {
        let w = random_weights(&c, &head, Init::FanIn, 8);
        let mut m = Model::new(
            Arc::new(Cpu::new()),
            c.clone(),
            head,
            TrainMode::Full,
            Some(&w),
            1,
        )
        .unwrap();
        let (bs, t) = (2, 6);
        let mut b = Batch {
            batch: bs,
            seq: t,
            ids: (0..bs * t).map(|i| (i * 5 % 29) as u32).collect(),
            type_ids: vec![],
            mask: (0..bs * t)
                .map(|i| if i % t >= 4 { 0.0 } else { 1.0 })
                .collect(),
            target: match head {
                Head::Span => Target::Spans {
                    start: vec![1, 0],
                    end: vec![3, 0],
                },
                _ => Target::Classes(vec![2, 0]),
            },
        };
        let l1 = m.loss(&b).unwrap();
        b.ids[4] = 28;
        b.ids[11] = 27;
        let l2 = m.loss(&b).unwrap();
        assert_eq!(l1, l2, "{head:?}");
        b.ids[3] = 26; // a real token does matter
        assert_ne!(l1, m.loss(&b).unwrap(), "{head:?}");
    }
}
