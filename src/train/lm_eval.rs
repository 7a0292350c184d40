//! The metrics of a causal LM: perplexity (token-weighted), label accuracy (the label words'
//! first tokens scored at the answer position, arg-max), and greedy-generation exact match.
//!
//! They read the model through [`LmScorer`], so the same code scores the model and a test's
//! closed-form stand-in.

use crate::backend::Backend;
use crate::data::lm::{LmEvalSet, LmMetric};
use crate::model::{Batch, EvalOut, Model};
use anyhow::{ensure, Context, Result};
use std::collections::BTreeMap;

/// What the metrics need of a causal LM.
pub trait LmScorer {
    /// Vocabulary size (the width of a logits row).
    fn vocab(&self) -> usize;
    /// Loss sum and target-token count of a batch, forward only.
    fn eval_batch(&mut self, batch: &Batch) -> Result<EvalOut>;
    /// Full-vocabulary logits at the flattened positions `rows` (b·seq + t): [rows, vocab].
    fn logits_at(&mut self, batch: &Batch, rows: &[usize]) -> Result<Vec<f32>>;
    /// Greedy continuation of `prompt`: at most `max_new` new tokens, stopping after any of
    /// `stop`; only the new tokens are returned.
    fn greedy(&mut self, prompt: &[u32], max_new: usize, stop: &[u32]) -> Result<Vec<u32>>;
}

/// exp(Σ loss / Σ target tokens): the perplexity of a set whose token losses sum to `loss_sum`.
pub fn perplexity(loss_sum: f64, tokens: usize) -> f64 {
    (loss_sum / tokens.max(1) as f64).exp()
}

/// Per row of `logits` ([rows, vocab]) the class whose label token scores highest (the first
/// class on a tie).
pub fn label_predictions(logits: &[f32], vocab: usize, label_first: &[u32]) -> Vec<u32> {
    logits
        .chunks(vocab)
        .map(|row| {
            let mut best = 0usize;
            for (c, &t) in label_first.iter().enumerate() {
                if row[t as usize] > row[label_first[best] as usize] {
                    best = c;
                }
            }
            best as u32
        })
        .collect()
}

/// Everything one causal-LM evaluation measured.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LmScores {
    /// Loss sum, token accuracy and target-token count over the evaluation batches.
    pub out: EvalOut,
    /// Label accuracy and the predicted classes (labelled sets).
    pub accuracy: Option<f64>,
    pub preds: Vec<u32>,
    /// Exact match of greedy generations (when the metric is exact match).
    pub exact_match: Option<f64>,
}

impl LmScores {
    pub fn eval_loss(&self) -> f64 {
        self.out.loss()
    }
    pub fn perplexity(&self) -> f64 {
        perplexity(self.out.loss_sum, self.out.count)
    }
    /// The value of `m`, when it was measured.
    pub fn metric(&self, m: LmMetric) -> Option<f64> {
        match m {
            LmMetric::Accuracy => self.accuracy,
            LmMetric::Perplexity => Some(self.perplexity()),
            LmMetric::ExactMatch => self.exact_match,
            LmMetric::EvalLoss => Some(self.eval_loss()),
        }
    }
    /// Every measured metric by name (`eval_loss`, `perplexity`, `accuracy`, `exact_match`).
    /// `accuracy` is the label accuracy of a labelled set, else the next-token accuracy.
    pub fn named(&self) -> BTreeMap<String, f64> {
        let mut m = BTreeMap::from([
            ("eval_loss".to_string(), self.eval_loss()),
            ("perplexity".to_string(), self.perplexity()),
            (
                "accuracy".to_string(),
                self.accuracy.unwrap_or(self.out.accuracy()),
            ),
        ]);
        if let Some(e) = self.exact_match {
            m.insert("exact_match".into(), e);
        }
        m
    }
}

/// Scores `batches` (the task's evaluation batches) with the metrics `set` asks for.
pub fn evaluate_lm(s: &mut dyn LmScorer, batches: &[Batch], set: &LmEvalSet) -> Result<LmScores> {
    let mut scores = LmScores::default();
    for b in batches {
        scores.out.merge(&s.eval_batch(b).context("evaluation")?);
    }
    if set.labelled() {
        ensure!(
            set.answer_rows.len() == batches.len(),
            "label accuracy: {} answer lists for {} evaluation batches",
            set.answer_rows.len(),
            batches.len()
        );
        let v = s.vocab();
        for (b, rows) in batches.iter().zip(&set.answer_rows) {
            let logits = s
                .logits_at(b, rows)
                .context("label accuracy: logits at the answer positions")?;
            ensure!(
                logits.len() == rows.len() * v,
                "logits_at returned {} values for {} rows of {v}",
                logits.len(),
                rows.len()
            );
            scores
                .preds
                .extend(label_predictions(&logits, v, &set.label_first));
        }
        let right = scores
            .preds
            .iter()
            .zip(&set.classes)
            .filter(|(p, c)| p == c)
            .count();
        scores.accuracy = Some(right as f64 / set.classes.len().max(1) as f64);
    }
    if set.metric == LmMetric::ExactMatch {
        scores.exact_match = Some(exact_match(s, set)?);
    }
    Ok(scores)
}

/// Fraction of `set.prompts` whose greedy answer, decoded without special tokens and
/// stripped, equals the stripped reference.
pub fn exact_match(s: &mut dyn LmScorer, set: &LmEvalSet) -> Result<f64> {
    let tok = &set.tokenizer;
    let mut right = 0usize;
    for p in &set.prompts {
        let new = s.greedy(&p.ids, set.max_new, &[tok.eos])?;
        let text = tok
            .inner
            .decode(&new, true)
            .map_err(|e| anyhow::anyhow!("decoding a generated answer: {e}"))?;
        right += (text.trim() == p.reference.trim()) as usize;
    }
    Ok(right as f64 / set.prompts.len().max(1) as f64)
}

impl<B: Backend> LmScorer for Model<B> {
    fn vocab(&self) -> usize {
        self.config().vocab
    }
    fn eval_batch(&mut self, batch: &Batch) -> Result<EvalOut> {
        self.evaluate(batch)
    }
    fn logits_at(&mut self, _batch: &Batch, _rows: &[usize]) -> Result<Vec<f32>> {
        // The seam to the decoder's own `Model::logits_at` (src/model/generate.rs, written with
        // the Llama model): until it is in the build, label accuracy cannot run on a model.
        anyhow::bail!(
            "label accuracy needs Model::logits_at, which this build does not have; choose \
             `metric = perplexity` or `metric = eval_loss`"
        )
    }
    fn greedy(&mut self, _prompt: &[u32], _max_new: usize, _stop: &[u32]) -> Result<Vec<u32>> {
        // The seam to `Model::generate` (src/model/generate.rs), as for `logits_at`.
        anyhow::bail!(
            "exact match needs Model::generate, which this build does not have; choose \
             `metric = perplexity` or `metric = eval_loss`"
        )
    }
}
