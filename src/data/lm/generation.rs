//! Classification as generation: a labelled example becomes a prompt (the policy's template
//! with the example's text in it) and a completion (its class's label word). Training puts the
//! loss on the label word's tokens and the EOS; label accuracy asks which label word the model
//! ranks first at the answer position.
//!
//! A label word that is several tokens is scored by its first token, which is sound only when
//! no two label words share their first token; when two do, the set is refused (at `check`
//! time when the tokenizer is at hand, else when the run builds its data).

use super::encode::{Encoder, LmExample};
use super::read::{Label, Labelled};
use crate::data::pretrained::LmTokenizer;
use anyhow::{anyhow, bail, Result};
use serde::{Deserialize, Serialize};

/// `as = generation` settings of a data section.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AsGeneration {
    /// The prompt; `{text}` (and `{text_pair}` for sentence pairs) stand for the example's text.
    pub prompt: String,
    /// One label word per class, in class order (a class index k reads `labels[k]`; a string
    /// label reads the label word equal to it, surrounding whitespace aside).
    pub labels: Vec<String>,
}

impl AsGeneration {
    /// The prompt of one example.
    pub fn render_prompt(&self, text: &str, pair: Option<&str>) -> Result<String> {
        let needs_pair = self.prompt.contains("{text_pair}");
        match (needs_pair, pair) {
            (true, None) => {
                bail!("the prompt template has {{text_pair}} but the example has no second text")
            }
            (false, Some(_)) => bail!(
                "the example is a sentence pair but the prompt template has no {{text_pair}}; \
                 add it, e.g. \"Premise: {{text}}\\nHypothesis: {{text_pair}}\\nAnswer:\""
            ),
            _ => {}
        }
        let mut out = self.prompt.replace("{text}", text);
        if let Some(p) = pair {
            out = out.replace("{text_pair}", p);
        }
        Ok(out)
    }

    /// The class of a label: an index below the number of label words, or a label name.
    pub fn class_of(&self, label: &Label) -> Result<usize> {
        match label {
            Label::Index(k) if (*k as usize) < self.labels.len() => Ok(*k as usize),
            Label::Index(k) => bail!(
                "label {k}, but `labels` lists {} label words (classes 0..{})",
                self.labels.len(),
                self.labels.len() - 1
            ),
            Label::Name(s) => self
                .labels
                .iter()
                .position(|w| w.trim() == s.trim())
                .ok_or_else(|| {
                    anyhow!(
                        "label {s:?} is none of the label words {:?}; list it in `labels`",
                        self.labels
                    )
                }),
        }
    }

    /// Tokenized examples (prompt + label word + EOS) and their classes.
    pub fn examples(
        &self,
        enc: &Encoder<'_>,
        data: &[Labelled],
    ) -> Result<(Vec<LmExample>, Vec<u32>)> {
        let mut out = Vec::with_capacity(data.len());
        let mut classes = Vec::with_capacity(data.len());
        for ex in data {
            let at = |e: anyhow::Error| e.context(format!("line {}", ex.line));
            let class = self.class_of(&ex.label).map_err(at)?;
            let prompt = self
                .render_prompt(&ex.text, ex.text_pair.as_deref())
                .map_err(at)?;
            out.push(enc.prompt_completion(&prompt, &self.labels[class], ex.line)?);
            classes.push(class as u32);
        }
        Ok((out, classes))
    }
}

/// The label words as the model scores them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LabelWords {
    /// Each label word's tokens (tokenized alone, as it follows the prompt).
    pub ids: Vec<Vec<u32>>,
    /// Each label word's first token: what accuracy compares at the answer position.
    pub first: Vec<u32>,
}

impl LabelWords {
    /// Tokenizes `labels`; refuses an empty label word and two label words whose first tokens
    /// are the same (they could not be told apart by the first token's score).
    pub fn new(tok: &LmTokenizer, labels: &[String]) -> Result<Self> {
        if labels.len() < 2 {
            bail!(
                "`labels` needs at least two label words (got {})",
                labels.len()
            );
        }
        let mut ids = Vec::with_capacity(labels.len());
        for w in labels {
            let t = tok
                .inner
                .encode(w.as_str(), false)
                .map_err(|e| anyhow!("tokenizing label word {w:?}: {e}"))?
                .get_ids()
                .to_vec();
            if t.is_empty() {
                bail!("label word {w:?} has no tokens");
            }
            ids.push(t);
        }
        let first: Vec<u32> = ids.iter().map(|t: &Vec<u32>| t[0]).collect();
        for i in 0..labels.len() {
            for j in i + 1..labels.len() {
                if first[i] == first[j] {
                    let tokens = |k: usize| {
                        ids[k]
                            .iter()
                            .map(|&id| tok.inner.id_to_token(id).unwrap_or_default())
                            .collect::<Vec<_>>()
                    };
                    bail!(
                        "label words {:?} ({:?}) and {:?} ({:?}) begin with the same token, so \
                         the model's score of the first token cannot tell them apart; choose \
                         label words that are single tokens or differ in their first token \
                         (a leading space usually helps: \" positive\")",
                        labels[i],
                        tokens(i),
                        labels[j],
                        tokens(j)
                    );
                }
            }
        }
        Ok(LabelWords { ids, first })
    }

    /// Whether every label word is one token (the first-token score is then the word's score).
    pub fn single_tokens(&self) -> bool {
        self.ids.iter().all(|t| t.len() == 1)
    }
}
