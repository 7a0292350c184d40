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

pub fn load(path: &Path, tok: &Tokenizer) -> Result<Vec<SpanExample>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{}: cannot read", path.display()))?;
    let file: File = serde_json::from_str(&text).map_err(|e| {
        anyhow!(
            "{}:{}:{}: not SQuAD JSON ({{\"data\": [{{\"paragraphs\": [{{\"context\", \"qas\": \
             [{{\"id\", \"question\", \"answers\", \"is_impossible\"}}]}}]}}]}}): {e}",
            path.display(),
            e.line(),
            e.column()
        )
    })?;
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
                if qa.is_impossible && !qa.answers.is_empty() {
                    bail!(
                        "{}: is_impossible is true but answers is not empty",
                        at(&qa.id)
                    );
                }
                if !qa.is_impossible && qa.answers.is_empty() {
                    bail!(
                        "{}: no answers; set \"is_impossible\": true for an unanswerable question",
                        at(&qa.id)
                    );
                }
                for a in &qa.answers {
                    let n = a.text.chars().count();
                    let found: String = ctx_chars.iter().skip(a.answer_start).take(n).collect();
                    if n == 0 || a.answer_start + n > ctx_chars.len() || found != a.text {
                        bail!(
                            "{}: answer {:?} is not at answer_start {} of the context (found \
                             {found:?}); answer_start counts characters from 0",
                            at(&qa.id),
                            a.text,
                            a.answer_start
                        );
                    }
                }
                let enc = tok
                    .encode_span(&qa.question, &p.context)
                    .with_context(|| at(&qa.id))?;
                let (start, end) = match qa.answers.first() {
                    None => (0, 0),
                    Some(a) => token_span(
                        &enc,
                        a.answer_start,
                        a.answer_start + a.text.chars().count(),
                    )
                    .unwrap_or((0, 0)),
                };
                out.push(SpanExample {
                    id: qa.id.clone(),
                    ids: enc.get_ids().to_vec(),
                    type_ids: enc.get_type_ids().to_vec(),
                    start,
                    end,
                    answerable: !qa.is_impossible,
                    answers: qa.answers.iter().map(|a| a.text.clone()).collect(),
                });
            }
        }
    }
    Ok(out)
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
