//! Text generation with a Llama-family model: the prompt runs once through every block, its keys
//! and values stay in a per-layer cache, and each new token runs alone against that cache, so a
//! generation of n tokens costs n single-token passes instead of n passes over the growing
//! sequence.
//!
//! The cached pass is the training forward's arithmetic (`llama.rs`) with the attention's keys
//! reaching back into the cache: query i of a pass over positions p0..p0+t sees every cached
//! key before p0 and the new keys up to its own position (`Attn` with tq = t, tk = p0 + t,
//! causal). Adapters take part as in training (ΔW is added on its own path), so a trained cell
//! generates with what it learned. One sequence at a time: the cache holds [P, KV] per layer.

use super::config::{Batch, Flavour, Head};
use super::transformer::Model;
use crate::backend::{Attn, Backend, Gemm, MemKind, Tensor};
use anyhow::{bail, ensure, Result};
use rand::{Rng, SeedableRng};

/// How the next token is chosen.
#[derive(Clone, Debug, PartialEq)]
pub struct Sampling {
    /// 0 = greedy (arg-max); otherwise logits are divided by it before the softmax.
    pub temperature: f32,
    /// Nucleus sampling: the smallest set of most likely tokens whose probability reaches
    /// `top_p` (1 = every token).
    pub top_p: f32,
    pub seed: u64,
}

impl Sampling {
    pub fn greedy() -> Self {
        Self {
            temperature: 0.0,
            top_p: 1.0,
            seed: 0,
        }
    }
}

/// A generation request: stop at any of `stop` (e.g. EOS, `<|im_end|>`) or after `max_new`.
#[derive(Clone, Debug, PartialEq)]
pub struct GenConfig {
    pub max_new: usize,
    pub stop: Vec<u32>,
    pub sampling: Sampling,
}

/// Keys and values of the positions seen so far, per layer: [capacity, KV] each (rotated keys).
pub struct KvCache<B: Backend> {
    k: Vec<Tensor<B>>,
    v: Vec<Tensor<B>>,
    /// Positions held.
    len: usize,
    capacity: usize,
}

impl<B: Backend> KvCache<B> {
    /// Room for `capacity` positions in every layer of `model`.
    pub fn new(model: &Model<B>, capacity: usize) -> Result<Self> {
        let cfg = model.config();
        let kv = cfg.kv_width();
        let be = &**model.backend();
        let z = || be.zeros(capacity * kv, MemKind::Activation);
        Ok(Self {
            k: (0..cfg.layers).map(|_| z()).collect::<Result<_>>()?,
            v: (0..cfg.layers).map(|_| z()).collect::<Result<_>>()?,
            len: 0,
            capacity,
        })
    }
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// The activations of one cached pass over t new tokens.
struct Step<B: Backend> {
    x: Tensor<B>,    // [t, C] block input, then output
    a: Tensor<B>,    // [t, C] normed
    rstd: Tensor<B>, // [t]
    q0: Tensor<B>,   // [t, C] before rotation
    q: Tensor<B>,    // [t, C]
    k0: Tensor<B>,   // [t, KV]
    k: Tensor<B>,    // [t, KV]
    v: Tensor<B>,    // [t, KV]
    ctx: Tensor<B>,  // [t, C]
    r1: Tensor<B>,   // [t, C]
    g: Tensor<B>,    // [t, F]
    u: Tensor<B>,    // [t, F]
    h: Tensor<B>,    // [t, F]
    probs: Tensor<B>,
    scores: Tensor<B>,
}

impl<B: Backend> Model<B> {
    /// Runs `ids` (the next positions of one sequence) through the model against `cache`,
    /// appends their keys and values to it, and returns the logits of the last of them: [V].
    pub fn decode(&mut self, ids: &[u32], cache: &mut KvCache<B>) -> Result<Vec<f32>> {
        ensure!(
            self.cfg.flavour == Flavour::Llama,
            "generation runs on Llama-family decoders; this model is a {:?}",
            self.cfg.flavour
        );
        let t = ids.len();
        ensure!(t > 0, "decode: no tokens given");
        let p0 = cache.len;
        let tk = p0 + t;
        ensure!(
            tk <= cache.capacity && tk <= self.cfg.max_positions,
            "generation: {tk} positions exceed the cache ({}) or the model's context ({})",
            cache.capacity,
            self.cfg.max_positions
        );
        if let Some((i, &id)) = ids
            .iter()
            .enumerate()
            .find(|(_, &id)| id as usize >= self.cfg.vocab)
        {
            bail!(
                "generation: token id {id} at position {} is outside the vocabulary of {}",
                p0 + i,
                self.cfg.vocab
            );
        }
        self.ensure_rope(tk)?;
        let be = self.be.clone();
        let be = &*be;
        let cfg = self.cfg.clone();
        let (c, f, kv, d) = (cfg.hidden, cfg.ffn, cfg.kv_width(), cfg.head_dim());
        let z = |len| be.zeros(len, MemKind::Scratch);
        let mut s = Step {
            x: z(t * c)?,
            a: z(t * c)?,
            rstd: z(t)?,
            q0: z(t * c)?,
            q: z(t * c)?,
            k0: z(t * kv)?,
            k: z(t * kv)?,
            v: z(t * kv)?,
            ctx: z(t * c)?,
            r1: z(t * c)?,
            g: z(t * f)?,
            u: z(t * f)?,
            h: z(t * f)?,
            probs: z(cfg.heads * t * tk)?,
            scores: z(cfg.heads * t * tk)?,
        };
        let ids_t = be.ids(ids)?;
        let pos: Vec<u32> = (p0..tk).map(|p| p as u32).collect();
        let pos = be.ids(&pos)?;
        let eps = cfg.ln_eps;
        // x: [t, C] = embed[ids]
        be.embedding_forward(&ids_t, &self.emb.word.w, &mut s.x, c, false);
        let table = &self.rope.as_ref().expect("rope table").0;
        let spec = Attn {
            batch: 1,
            heads: cfg.heads,
            kv_heads: cfg.kv_heads(),
            tq: t,
            tk,
            scale: 1.0 / (d as f32).sqrt(),
            causal: true,
        };
        for (l, blk) in self.blocks.iter_mut().enumerate() {
            be.rmsnorm_forward(&s.x, &blk.ln_a.gamma.w, &mut s.a, &mut s.rstd, t, c, eps);
            blk.q.forward(be, &s.a, &mut s.q0, t)?;
            be.rope(&s.q0, &mut s.q, table, &pos, cfg.heads, d, false);
            blk.k.forward(be, &s.a, &mut s.k0, t)?;
            be.rope(&s.k0, &mut s.k, table, &pos, cfg.kv_heads(), d, false);
            blk.v.forward(be, &s.a, &mut s.v, t)?;
            // The new keys and values join the cache at rows p0..p0+t.
            be.copy_range(&s.k, 0, &mut cache.k[l], p0 * kv, t * kv);
            be.copy_range(&s.v, 0, &mut cache.v[l], p0 * kv, t * kv);
            be.attention_forward(
                &s.q,
                &cache.k[l],
                &cache.v[l],
                None,
                &mut s.probs,
                &mut s.ctx,
                &mut s.scores,
                &spec,
                d,
            )?;
            blk.o
                .forward_residual(be, &s.ctx, Some(&s.x), &mut s.r1, t)?;
            be.rmsnorm_forward(&s.r1, &blk.ln_f.gamma.w, &mut s.a, &mut s.rstd, t, c, eps);
            let gate = blk.gate.as_mut().expect("Llama block");
            gate.forward(be, &s.a, &mut s.g, t)?;
            blk.ffn_in.forward(be, &s.a, &mut s.u, t)?;
            be.swiglu_forward(&s.g, &s.u, &mut s.h);
            blk.ffn_out
                .forward_residual(be, &s.h, Some(&s.r1), &mut s.x, t)?;
        }
        cache.len = tk;
        let ln = self.final_ln.as_ref().expect("final norm");
        be.rmsnorm_forward(&s.x, &ln.gamma.w, &mut s.a, &mut s.rstd, t, c, eps);
        // logits of the last position only: [1, V] = a[t−1] · Wᵀ (its row copied out, so the
        // GEMM reads one row, not the prompt's t).
        let v = cfg.vocab;
        let mut last = z(c)?;
        be.copy_range(&s.a, (t - 1) * c, &mut last, 0, c);
        let head = self.lm_head.as_ref().unwrap_or(&self.emb.word);
        let mut logits = z(v)?;
        be.matmul(&last, &head.w, &mut logits, &Gemm::nt(1, v, c));
        be.download(&logits)
    }

    /// Full-vocabulary logits of a causal LM at chosen positions of `batch` (flattened row
    /// indices b·seq + t), forward only: [rows.len(), V]. For scoring label words, a
    /// completion's first token, or per-position diagnostics without materialising [N, V].
    pub fn logits_at(&mut self, batch: &Batch, rows: &[usize]) -> Result<Vec<f32>> {
        ensure!(
            matches!(self.head, Head::LanguageModel),
            "logits_at: the model has no language-model head"
        );
        let n = batch.tokens();
        if let Some(&r) = rows.iter().find(|&&r| r >= n) {
            bail!("logits_at: row {r} is outside the batch's {n} positions");
        }
        if rows.is_empty() {
            return Ok(vec![]);
        }
        self.forward_body(batch)?;
        let be = self.be.clone();
        let c = self.cfg.hidden;
        // h: [rows, C], the chosen rows of the final hidden states, copied on the device.
        let mut h = be.zeros(rows.len() * c, MemKind::Scratch)?;
        for (i, &r) in rows.iter().enumerate() {
            be.copy_range(self.hidden(), r * c, &mut h, i * c, c);
        }
        let v = self.cfg.vocab;
        let head = self.lm_head.as_ref().unwrap_or(&self.emb.word);
        let mut logits = be.zeros(rows.len() * v, MemKind::Scratch)?;
        be.matmul(&h, &head.w, &mut logits, &Gemm::nt(rows.len(), v, c));
        be.download(&logits)
    }

    /// Generates after `prompt` (token ids, the chat template already applied); returns the new
    /// tokens, the stop token included when one ended it.
    pub fn generate(&mut self, prompt: &[u32], g: &GenConfig) -> Result<Vec<u32>> {
        ensure!(!prompt.is_empty(), "generation needs a non-empty prompt");
        let capacity = (prompt.len() + g.max_new).min(self.cfg.max_positions);
        ensure!(
            prompt.len() < capacity || g.max_new == 0,
            "the prompt ({} tokens) fills the model's context of {} positions",
            prompt.len(),
            self.cfg.max_positions
        );
        let mut cache = KvCache::new(self, capacity)?;
        let mut rng = rand::rngs::StdRng::seed_from_u64(g.sampling.seed);
        let mut out = Vec::new();
        let mut logits = self.decode(prompt, &mut cache)?;
        while out.len() < g.max_new {
            let next = pick(&logits, &g.sampling, &mut rng);
            out.push(next);
            if g.stop.contains(&next) || cache.len() >= capacity {
                break;
            }
            logits = self.decode(&[next], &mut cache)?;
        }
        Ok(out)
    }
}

/// The next token from `logits` under `s`: the arg-max (the first on ties, as transformers'
/// greedy search), or a draw from the temperature-scaled, nucleus-truncated softmax.
pub fn pick(logits: &[f32], s: &Sampling, rng: &mut impl Rng) -> u32 {
    if s.temperature <= 0.0 {
        let mut best = 0;
        for (i, &v) in logits.iter().enumerate() {
            if v > logits[best] {
                best = i;
            }
        }
        return best as u32;
    }
    let mx = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut p: Vec<(u32, f64)> = logits
        .iter()
        .enumerate()
        .map(|(i, &v)| (i as u32, (((v - mx) / s.temperature) as f64).exp()))
        .collect();
    let z: f64 = p.iter().map(|x| x.1).sum();
    p.iter_mut().for_each(|x| x.1 /= z);
    p.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    let mut kept = 0;
    let mut mass = 0.0;
    for x in &p {
        kept += 1;
        mass += x.1;
        if mass >= s.top_p as f64 {
            break;
        }
    }
    let mut r = rng.random::<f64>() * mass;
    for x in &p[..kept] {
        r -= x.1;
        if r <= 0.0 {
            return x.0;
        }
    }
    p[kept - 1].0
}
