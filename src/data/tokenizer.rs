//! A checkpoint's tokenizer.json through the `tokenizers` crate, with our own maximum length:
//! the file's own padding and truncation (MiniLM's fixes both at 128) are turned off, and
//! sequences are cut at `max_len` tokens including [CLS]/[SEP].

use super::bounded::{self, Side};
use anyhow::{anyhow, bail, Result};
use std::path::{Path, PathBuf};
use tokenizers::{Encoding, TruncationParams, TruncationStrategy};

#[derive(Clone)]
pub struct Tokenizer {
    /// Truncates the longer of the two sequences first (classification).
    pair: tokenizers::Tokenizer,
    /// Truncates only the second sequence (SQuAD: never cut the question).
    span: tokenizers::Tokenizer,
    /// Truncates nothing: counts the tokens of a long text's part (`data::bounded`).
    plain: tokenizers::Tokenizer,
    max_len: usize,
    pad_id: u32,
    path: PathBuf,
}

/// Token ids and segment ids of one (possibly paired) input, with special tokens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Encoded {
    pub ids: Vec<u32>,
    pub type_ids: Vec<u32>,
}

impl Tokenizer {
    pub fn from_file(path: &Path, max_len: usize) -> Result<Self> {
        let mut inner = tokenizers::Tokenizer::from_file(path)
            .map_err(|e| anyhow!("{}: not a usable tokenizer.json: {e}", path.display()))?;
        inner.with_padding(None);
        let pad_id = ["[PAD]", "<pad>"]
            .iter()
            .find_map(|t| inner.token_to_id(t))
            .unwrap_or(0);
        let mut plain = inner.clone();
        plain
            .with_truncation(None)
            .map_err(|e| anyhow!("{}: {e}", path.display()))?;
        let mut t = Tokenizer {
            span: inner.clone(),
            plain,
            pair: inner,
            max_len: 0,
            pad_id,
            path: path.to_path_buf(),
        };
        t.set_max_len(max_len)?;
        Ok(t)
    }

    pub fn max_len(&self) -> usize {
        self.max_len
    }

    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    pub fn vocab_size(&self) -> usize {
        self.pair.get_vocab_size(true)
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.pair.token_to_id(token)
    }

    /// Change the maximum sequence length (tokens, special tokens included).
    pub fn set_max_len(&mut self, max_len: usize) -> Result<()> {
        if max_len < 8 {
            bail!("maximum sequence length {max_len} is too short (at least 8 tokens)");
        }
        for (tok, strategy) in [
            (&mut self.pair, TruncationStrategy::LongestFirst),
            (&mut self.span, TruncationStrategy::OnlySecond),
        ] {
            tok.with_truncation(Some(TruncationParams {
                max_length: max_len,
                strategy,
                ..Default::default()
            }))
            .map_err(|e| anyhow!("{}: {e}", self.path.display()))?;
        }
        self.max_len = max_len;
        Ok(())
    }

    /// The head of `text` whose first `keep` tokens are the whole text's (`data::bounded`),
    /// and how many tokens it has.
    fn head<'t>(&self, text: &'t str, keep: usize) -> Result<(&'t str, usize)> {
        let (range, enc) = bounded::encode_part(text, keep, Side::Head, |t| {
            self.plain
                .encode(t, false)
                .map_err(|e| anyhow!("tokenizing {t:?}: {e}"))
        })?;
        Ok((&text[range], enc.len()))
    }

    fn count(&self, text: &str) -> Result<usize> {
        bounded::count_tokens(text, |t| {
            self.plain
                .encode(t, false)
                .map_err(|e| anyhow!("tokenizing {t:?}: {e}"))
        })
    }

    /// Heads of `a` and `b` that truncate longest-first as the whole texts do. The truncation
    /// keeps at most `max_len` tokens of either, so heads of more than that keep the same ones,
    /// except that when both are cut by it, the longer text keeps one token more (an odd
    /// length): each head must then be longer than the other exactly when its text is.
    fn heads<'t>(&self, a: &'t str, b: &'t str) -> Result<(&'t str, &'t str)> {
        let keep = self.max_len;
        let (mut ha, mut hb) = (self.head(a, keep)?, self.head(b, keep)?);
        let (cut_a, cut_b) = (ha.0.len() < a.len(), hb.0.len() < b.len());
        // Whether `a` has more tokens than `b` (the truncation gives the extra token to `a`
        // then); a head cut past the other's count proves it, else the texts are counted.
        let a_longer = match (cut_a, cut_b) {
            (false, false) => return Ok((ha.0, hb.0)),
            (true, false) => {
                if ha.1 <= hb.1 {
                    ha = self.head(a, hb.1)?;
                }
                return Ok((ha.0, hb.0));
            }
            (false, true) => {
                if hb.1 < ha.1 {
                    hb = self.head(b, ha.1 - 1)?;
                }
                return Ok((ha.0, hb.0));
            }
            (true, true) => self.count(a)? > self.count(b)?,
        };
        if a_longer && ha.1 <= hb.1 {
            ha = self.head(a, hb.1)?;
        } else if !a_longer && ha.1 > hb.1 {
            hb = self.head(b, ha.1 - 1)?;
        }
        Ok((ha.0, hb.0))
    }

    /// Encode a sentence or a sentence pair with special tokens, truncated longest-first. A long
    /// text is tokenized only as far as the truncation keeps (`data::bounded`).
    pub fn encode(&self, a: &str, b: Option<&str>) -> Result<Encoded> {
        let (a, b) = match b {
            Some(b) => {
                let (a, b) = self.heads(a, b)?;
                (a, Some(b))
            }
            None => (self.head(a, self.max_len)?.0, None),
        };
        let enc = match b {
            Some(b) => self.pair.encode((a, b), true),
            None => self.pair.encode(a, true),
        }
        .map_err(|e| anyhow!("tokenizing {a:?}: {e}"))?;
        Ok(Encoded {
            ids: enc.get_ids().to_vec(),
            type_ids: enc.get_type_ids().to_vec(),
        })
    }

    /// Encode question + context, truncating only the context, with offsets in characters
    /// (Unicode scalar values, as SQuAD's `answer_start` counts them).
    pub fn encode_span(&self, question: &str, context: &str) -> Result<Encoding> {
        self.span
            .encode_char_offsets((question, context), true)
            .map_err(|e| {
                anyhow!("tokenizing question {question:?} with its context (question too long for max_len {}?): {e}", self.max_len)
            })
    }
}
