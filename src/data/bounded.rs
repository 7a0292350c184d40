//! Tokenizing only as much of a long text as its truncation keeps.
//!
//! A `tokenizers` encoding costs about 85 bytes of memory per input byte (ids, offsets, token
//! strings, word ids, masks), so a 10 MB data row cut to 128 tokens peaked at 855 MiB. Here a
//! text past a few bytes per kept token is tokenized as a part: its head (or its tail, when the
//! tail is kept) up to a *cut*, a space that follows a character that is not whitespace. No
//! split of the tokenizers adarank reads runs a piece across a cut — BERT's splits at every
//! whitespace and punctuation character, the GPT-2 and Llama-3 regexes start a piece of
//! whitespace only at whitespace and end a word before it, digit splits are per character, and
//! the normalizers (lowercasing, accents, NFC, Chinese characters) are per character — so the
//! pieces before a cut are those of the whole text, and so are their tokens. What differs is at
//! the part's open end: a tokenizer may add a space or a `▁` before a text that starts with a
//! word. The kept tokens must therefore lie a whole word inside the part's open end, and the part
//! must hold more tokens than are kept; if it does not, it is doubled, up to the whole text.
//! A text without any cut (one endless word) is tokenized whole.
//!
//! `tests/data_bounded.rs` holds the parts' tokens to the whole texts' ones with MiniLM's
//! WordPiece and SmolLM2's byte-level BPE.

use anyhow::Result;
use std::ops::Range;
use tokenizers::Encoding;

/// Which end of a text the truncation keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Head,
    Tail,
}

/// Bytes per kept token at which a text is first cut (English runs about 4–5 bytes a token).
const BYTES_PER_TOKEN: usize = 8;
/// Texts up to this many bytes are always tokenized whole.
const MIN_PART: usize = 4096;

/// A cut: `text[p]` is a space and the character before it is not whitespace.
fn is_cut(text: &str, p: usize) -> bool {
    p > 0
        && text.as_bytes().get(p) == Some(&b' ')
        && text[..p]
            .chars()
            .next_back()
            .is_some_and(|c| !c.is_whitespace())
}

/// The first cut at or after byte `at`.
fn cut_after(text: &str, at: usize) -> Option<usize> {
    let b = text.as_bytes();
    (at.max(1)..b.len()).find(|&p| b[p] == b' ' && is_cut(text, p))
}

/// The last cut at or before byte `at`.
fn cut_before(text: &str, at: usize) -> Option<usize> {
    let b = text.as_bytes();
    (1..=at.min(b.len().saturating_sub(1)))
        .rev()
        .find(|&p| b[p] == b' ' && is_cut(text, p))
}

/// The part of `text` that `encode` (no special tokens) tokenizes into more than `keep` tokens,
/// the kept `keep` at `side` being those of the whole text (module docs), with its encoding.
/// The range is where the part lies in `text`: add its start to the encoding's offsets.
pub fn encode_part(
    text: &str,
    keep: usize,
    side: Side,
    mut encode: impl FnMut(&str) -> Result<Encoding>,
) -> Result<(Range<usize>, Encoding)> {
    if keep == 0 {
        return Ok((0..0, encode("")?));
    }
    let mut span = keep.saturating_mul(BYTES_PER_TOKEN).max(MIN_PART);
    while span < text.len() {
        let range = match side {
            Side::Head => cut_after(text, span).map(|p| 0..p),
            Side::Tail => cut_before(text, text.len() - span).map(|p| p..text.len()),
        };
        let Some(range) = range else { break };
        let part = &text[range.clone()];
        let enc = encode(part)?;
        let offsets = enc.get_offsets();
        let n = offsets.len();
        // The kept tokens must end before the part's last word (head) or start after its first
        // one (tail): a word at the open end may tokenize differently there.
        let inside = n > keep
            && match side {
                Side::Head => {
                    cut_before(part, part.len() - 1).is_some_and(|q| offsets[keep - 1].1 <= q)
                }
                Side::Tail => cut_after(part, 1).is_some_and(|q| offsets[n - keep].0 >= q),
            };
        if inside {
            return Ok((range, enc));
        }
        span = span.saturating_mul(2);
    }
    Ok((0..text.len(), encode(text)?))
}

/// Tokens of `text` (no special tokens), counted a part at a time so that memory stays that of
/// one part: parts end at cuts, so each tokenizes as it does inside the whole text — exactly for
/// a tokenizer that adds nothing before a text starting with a space (WordPiece, byte-level BPE).
pub fn count_tokens(text: &str, mut encode: impl FnMut(&str) -> Result<Encoding>) -> Result<usize> {
    const PART: usize = 1 << 16;
    let (mut start, mut n) = (0, 0);
    while start < text.len() {
        let end = cut_after(text, start + PART).unwrap_or(text.len());
        n += encode(&text[start..end])?.len();
        start = end;
    }
    Ok(n)
}
