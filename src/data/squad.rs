//! SQuAD 2.0 JSON (`data[].paragraphs[].qas[]`, answers with character offsets, `is_impossible`
//! for unanswerable questions) → question+context token ids with start/end token targets for
//! the span head. Target 0 (the [CLS] position) for both means "no answer": unanswerable
//! questions, and answers that truncation cut out of the context.

use crate::data::tokenizer::Tokenizer;
use anyhow::{anyhow, bail, Context, Result};
use serde::Deserialize;
use std::path::Path;

#[derive(Deserialize)]
struct File {
    data: Vec<Article>,
}
#[derive(Deserialize)]
struct Article {
    paragraphs: Vec<Paragraph>,
}
#[derive(Deserialize)]
struct Paragraph {
    context: String,
    qas: Vec<Qa>,
}
#[derive(Deserialize)]
struct Qa {
    id: String,
    question: String,
    #[serde(default)]
    answers: Vec<Answer>,
    /// Absent in SQuAD 1.1, where every question has an answer.
    #[serde(default)]
    is_impossible: bool,
}
#[derive(Deserialize)]
struct Answer {
    text: String,
    answer_start: usize,
}

/// One tokenized question with its context and span targets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpanExample {
    pub id: String,
    pub question: String,
    pub ids: Vec<u32>,
    pub type_ids: Vec<u32>,
    /// Token index of the answer's first token, 0 when there is no answer.
    pub start: u32,
    /// Token index of the answer's last token (inclusive), 0 when there is no answer.
    pub end: u32,
    /// The question has an answer in the full context (even if truncation cut it off).
    pub answerable: bool,
    /// Every reference answer text (dev sets give several), for exact-match/F1 scoring.
    pub answers: Vec<String>,
}

/// The questions of a SQuAD file, tokenized with their contexts; a malformed file or record is
/// refused at its line.
pub fn load(path: &Path, tok: &Tokenizer) -> Result<Vec<SpanExample>> {
    let text = crate::textfile::read(path, "SQuAD data", crate::textfile::MAX_DATA_BYTES)?;
    let file = parse(path, &text)?;
    // Record errors at the line where the question's id is written.
    let at = |id: &str| {
        let line = text
            .find(&format!("\"{id}\""))
            .map(|off| text[..off].matches('\n').count() + 1)
            .unwrap_or(0);
        format!("{}:{line}: question {id:?}", path.display())
    };
    let mut out = Vec::new();
    for article in &file.data {
        for p in &article.paragraphs {
            let ctx_chars: Vec<char> = p.context.chars().collect();
            for qa in &p.qas {
                check_answers(qa, &ctx_chars).map_err(|e| anyhow!("{}: {e}", at(&qa.id)))?;
                out.push(example(tok, qa, &p.context).with_context(|| at(&qa.id))?);
            }
        }
    }
    Ok(out)
}

/// The layout a SQuAD file must have, as an error names it.
const LAYOUT: &str = concat!(
    "{\"data\": [{\"paragraphs\": [{\"context\", \"qas\": [{\"id\", ",
    "\"question\", \"answers\", \"is_impossible\"}]}]}]}"
);

/// The file's JSON, or an error at its line and column naming the expected layout.
fn parse(path: &Path, text: &str) -> Result<File> {
    serde_json::from_str(text).map_err(|e| {
        anyhow!(
            "{}:{}:{}: not SQuAD JSON ({LAYOUT}): {e}",
            path.display(),
            e.line(),
            e.column()
        )
    })
}

/// A question's answers agree with `is_impossible` and each lies at its `answer_start`.
fn check_answers(qa: &Qa, ctx_chars: &[char]) -> Result<()> {
    if qa.is_impossible && !qa.answers.is_empty() {
        bail!("is_impossible is true but answers is not empty");
    }
    if !qa.is_impossible && qa.answers.is_empty() {
        bail!("no answers; set \"is_impossible\": true for an unanswerable question");
    }
    for a in &qa.answers {
        let n = a.text.chars().count();
        let found: String = ctx_chars.iter().skip(a.answer_start).take(n).collect();
        if n == 0 || a.answer_start + n > ctx_chars.len() || found != a.text {
            bail!(
                "answer {:?} is not at answer_start {} of the context (found {found:?}); \
                 answer_start counts characters from 0",
                a.text,
                a.answer_start
            );
        }
    }
    Ok(())
}

/// One question tokenized with its context, with the token span of its first answer.
fn example(tok: &Tokenizer, qa: &Qa, context: &str) -> Result<SpanExample> {
    let enc = tok.encode_span(&qa.question, context)?;
    let (start, end) = match qa.answers.first() {
        None => (0, 0),
        Some(a) => token_span(
            &enc,
            a.answer_start,
            a.answer_start + a.text.chars().count(),
        )
        .unwrap_or((0, 0)),
    };
    Ok(SpanExample {
        id: qa.id.clone(),
        question: qa.question.clone(),
        ids: enc.get_ids().to_vec(),
        type_ids: enc.get_type_ids().to_vec(),
        start,
        end,
        answerable: !qa.is_impossible,
        answers: qa.answers.iter().map(|a| a.text.clone()).collect(),
    })
}

/// First and last context tokens covering characters [start, end) of the context; `None` when
/// truncation removed part of the answer.
fn token_span(enc: &tokenizers::Encoding, start: usize, end: usize) -> Option<(u32, u32)> {
    let seq = enc.get_sequence_ids();
    let offs = enc.get_offsets();
    let ctx: Vec<usize> = (0..offs.len()).filter(|&t| seq[t] == Some(1)).collect();
    let last = *ctx.last()?;
    if offs[last].1 < end {
        return None;
    }
    // A token that ends after the answer starts is the first token of the answer; a token that
    // starts before the answer ends belongs to it.
    let s = *ctx.iter().find(|&&t| offs[t].1 > start)?;
    let e = *ctx.iter().rev().find(|&&t| offs[t].0 < end)?;
    (s <= e).then_some((s as u32, e as u32))
}

/// `train::Task` for SQuAD-format data on a loaded checkpoint (the span head).
pub struct SpanTask {
    config: crate::model::ModelConfig,
    weights: std::sync::Arc<crate::model::HostWeights>,
    train: Vec<SpanExample>,
    eval: Vec<crate::model::Batch>,
    eval_examples: Vec<crate::train::EvalExample>,
    pad_id: u32,
    seed: u64,
}

impl SpanTask {
    pub fn new(
        ckpt: &crate::data::hf::PretrainedEncoder,
        train: Vec<SpanExample>,
        eval: &[SpanExample],
        eval_batch: usize,
        seed: u64,
    ) -> Result<Self> {
        if train.is_empty() || eval.is_empty() {
            bail!("squad: the training and evaluation sets must both have questions");
        }
        let pad_id = ckpt.tokenizer.pad_id();
        let eval_src = eval;
        let eval = eval
            .chunks(eval_batch.max(1))
            .map(|c| span_batch(c.iter(), pad_id))
            .collect();
        Ok(SpanTask {
            config: ckpt.config.model_config(),
            weights: std::sync::Arc::new(ckpt.weights.clone()),
            train,
            eval,
            eval_examples: eval_src
                .iter()
                .map(|e| crate::train::EvalExample {
                    id: e.id.clone(),
                    text: e.question.clone(),
                    text_pair: None,
                })
                .collect(),
            pad_id,
            seed,
        })
    }

    pub fn train_len(&self) -> usize {
        self.train.len()
    }
}

/// Pad span examples into one model batch with `Target::Spans`.
pub fn span_batch<'a>(
    rows: impl Iterator<Item = &'a SpanExample> + Clone,
    pad_id: u32,
) -> crate::model::Batch {
    let seq = rows.clone().map(|r| r.ids.len()).max().unwrap_or(0);
    let n = rows.clone().count();
    let (mut ids, mut type_ids, mut mask) =
        (vec![pad_id; n * seq], vec![0; n * seq], vec![0.0; n * seq]);
    let (mut start, mut end) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for (r, ex) in rows.enumerate() {
        let o = r * seq;
        let l = ex.ids.len();
        ids[o..o + l].copy_from_slice(&ex.ids);
        type_ids[o..o + l].copy_from_slice(&ex.type_ids);
        mask[o..o + l].fill(1.0);
        start.push(ex.start);
        end.push(ex.end);
    }
    crate::model::Batch {
        batch: n,
        seq,
        ids,
        type_ids,
        mask,
        target: crate::model::Target::Spans { start, end },
    }
}

impl crate::train::Task for SpanTask {
    fn name(&self) -> String {
        "squad".into()
    }
    fn model_config(&self) -> crate::model::ModelConfig {
        self.config.clone()
    }
    fn head(&self) -> crate::model::Head {
        crate::model::Head::Span
    }
    fn base_weights(&self) -> Result<Option<crate::model::HostWeights>> {
        Ok(Some((*self.weights).clone()))
    }
    fn train_batch(&mut self, index: u64, batch_size: usize) -> Result<crate::model::Batch> {
        // Same (seed, step) → batch rule as classification (see train::order).
        let rows =
            crate::train::order::batch_indices(self.train.len(), self.seed, index, batch_size)
                .into_iter()
                .map(|i| &self.train[i]);
        Ok(span_batch(rows, self.pad_id))
    }
    fn eval_batches(&self) -> &[crate::model::Batch] {
        &self.eval
    }
    fn eval_examples(&self) -> Vec<crate::train::EvalExample> {
        self.eval_examples.clone()
    }
}
