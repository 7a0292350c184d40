//! The tokenizer a GGUF file describes in its `tokenizer.ggml.*` metadata, as a
//! `tokenizers::Tokenizer`.
//!
//! Only byte-level BPE (`tokenizer.ggml.model = "gpt2"`) is built: the vocabulary from `tokens`
//! (a token spelt outside GPT-2's byte alphabet is respelt byte by byte, as transformers' GGUF
//! converter does), the merges from `merges`, and the tokens `token_type` marks as control (3)
//! added as special tokens, matched whole before the BPE runs (`<|im_start|>` stays one token),
//! user-defined ones (4) as plain added tokens.
//!
//! How text is split before BPE depends on `tokenizer.ggml.pre`, the vocabulary's training
//! split. For `"smollm"` (also StarCoder's and a few others) that is every digit on its own, then
//! GPT-2's regex: llama.cpp's split for those types, and SmolLM2's own `tokenizer.json`
//! (`Digits(individual_digits)` then `ByteLevel`). transformers' GGUF converter (5.x) keeps only
//! the GPT-2 regex there; the two differ only where whitespace runs into a number (`"x  12"`:
//! `ĠĠ`,`1`,`2` for the model's split, `Ġ`,`Ġ`,`1`,`2` for transformers), and this follows the
//! split the model was trained with. Other `pre` types are refused by name rather than split in a
//! way nobody checked.

use crate::data::pretrained::LmTokenizer;
use anyhow::{bail, Context, Result};
use gguf_rs_lib::format::metadata::{Metadata, MetadataValue};
use std::collections::HashMap;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::{AddedToken, Tokenizer};

/// `tokenizer.ggml.pre` values split like SmolLM2: digits one by one, then GPT-2's regex
/// (llama.cpp groups these under one rule).
const DIGIT_SPLIT_PRES: &[&str] = &["smollm", "starcoder", "refact", "codeshell"];
/// `tokenizer.ggml.pre` values split by GPT-2's regex alone (and files without the key).
const GPT2_PRES: &[&str] = &["default", "gpt2", "gpt-2"];

/// llama.cpp's token types (`tokenizer.ggml.token_type`).
const CONTROL: i64 = 3;
const USER_DEFINED: i64 = 4;

/// The number of tokens in `tokenizer.ggml.tokens` (the model's vocabulary size).
pub(super) fn token_count(meta: &Metadata) -> Result<usize> {
    Ok(string_array(meta, "tokenizer.ggml.tokens")?.len())
}

/// A metadata array of strings.
fn string_array<'a>(meta: &'a Metadata, key: &str) -> Result<Vec<&'a str>> {
    let Some(MetadataValue::Array(a)) = meta.get(key) else {
        bail!("metadata key {key} is missing or not an array");
    };
    a.values
        .iter()
        .enumerate()
        .map(|(i, v)| match v {
            MetadataValue::String(s) => Ok(s.as_str()),
            other => bail!("{key}[{i}] should be a string, found {other:?}"),
        })
        .collect()
}

/// A metadata array of integers (token types).
fn int_array(meta: &Metadata, key: &str) -> Result<Option<Vec<i64>>> {
    let Some(v) = meta.get(key) else {
        return Ok(None);
    };
    let MetadataValue::Array(a) = v else {
        bail!("metadata key {key} should be an array of integers");
    };
    a.values
        .iter()
        .enumerate()
        .map(|(i, v)| {
            v.as_i64()
                .with_context(|| format!("{key}[{i}] should be an integer, found {v:?}"))
        })
        .collect::<Result<Vec<_>>>()
        .map(Some)
}

/// A token id from the metadata, checked against the vocabulary.
fn token_id(meta: &Metadata, key: &str, vocab: usize) -> Result<Option<u32>> {
    let Some(v) = meta.get(key) else {
        return Ok(None);
    };
    let id = v
        .as_u64()
        .with_context(|| format!("metadata key {key} should be a token id, found {v:?}"))?;
    anyhow::ensure!(
        id < vocab as u64,
        "metadata key {key} is {id}, outside the vocabulary of {vocab} tokens"
    );
    Ok(Some(id as u32))
}

/// GPT-2's byte ↔ character table (`bytes_to_unicode`): printable Latin-1 bytes stand for
/// themselves, the other 68 for U+0100 onwards, in byte order.
fn byte_chars() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut extra = 0u32;
    for (b, slot) in table.iter_mut().enumerate() {
        let printable = matches!(b, 33..=126 | 161..=172 | 174..=255);
        *slot = if printable {
            char::from(b as u8)
        } else {
            extra += 1;
            char::from_u32(255 + extra).unwrap_or('\u{fffd}')
        };
    }
    table
}

/// The tokenizer, special token ids and chat template a GGUF file describes.
pub(super) fn tokenizer_from_metadata(meta: &Metadata) -> Result<LmTokenizer> {
    let model = meta.get_string("tokenizer.ggml.model").unwrap_or("(none)");
    if model != "gpt2" {
        bail!(
            "tokenizer.ggml.model is {model:?}; adarank builds byte-level BPE tokenizers \
             (\"gpt2\") from GGUF files"
        );
    }
    let tokens = string_array(meta, "tokenizer.ggml.tokens")?;
    let n = tokens.len();
    let types = int_array(meta, "tokenizer.ggml.token_type")?.unwrap_or_default();
    anyhow::ensure!(
        types.is_empty() || types.len() == n,
        "tokenizer.ggml.token_type has {} entries for {n} tokens",
        types.len()
    );
    let table = byte_chars();
    let alphabet: std::collections::HashSet<char> = table.iter().copied().collect();
    let spell = |t: &str| -> String {
        if t.chars().all(|c| alphabet.contains(&c)) {
            t.to_string()
        } else {
            t.bytes().map(|b| table[b as usize]).collect()
        }
    };
    let vocab: Vocab = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (spell(t), i as u32))
        .collect::<HashMap<_, _>>()
        .into_iter()
        .collect();
    let merges = string_array(meta, "tokenizer.ggml.merges")?
        .iter()
        .enumerate()
        .map(|(i, m)| {
            m.split_once(' ')
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .with_context(|| format!("tokenizer.ggml.merges[{i}] {m:?} is not two tokens"))
        })
        .collect::<Result<Vec<_>>>()?;
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .build()
        .map_err(|e| anyhow::anyhow!("the BPE vocabulary and merges do not fit together: {e}"))?;
    let mut tok = Tokenizer::new(bpe);
    tok.with_pre_tokenizer(Some(pre_tokenizer(meta)?));
    tok.with_decoder(Some(ByteLevelDecoder::default()));
    let added = |kind: i64, special: bool| -> Vec<AddedToken> {
        tokens
            .iter()
            .zip(&types)
            .filter(|(t, &ty)| ty == kind && t.chars().all(|c| alphabet.contains(&c)))
            .map(|(t, _)| AddedToken::from(t.to_string(), special).normalized(false))
            .collect()
    };
    tok.add_special_tokens(&added(CONTROL, true));
    tok.add_tokens(&added(USER_DEFINED, false));
    let eos = token_id(meta, "tokenizer.ggml.eos_token_id", n)?
        .context("metadata key tokenizer.ggml.eos_token_id is missing")?;
    Ok(LmTokenizer {
        inner: tok,
        bos: token_id(meta, "tokenizer.ggml.bos_token_id", n)?,
        eos,
        pad: token_id(meta, "tokenizer.ggml.padding_token_id", n)?.unwrap_or(eos),
        add_bos: meta
            .get_bool("tokenizer.ggml.add_bos_token")
            .unwrap_or(false),
        chat_template: meta
            .get_string("tokenizer.chat_template")
            .map(str::to_string),
    })
}

/// The split before BPE for `tokenizer.ggml.pre` (module docs).
fn pre_tokenizer(meta: &Metadata) -> Result<PreTokenizerWrapper> {
    // GPT-2's: no space added in front, offsets trimmed, GPT-2's split regex.
    let byte_level = PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, true, true));
    let pre = meta.get_string("tokenizer.ggml.pre").unwrap_or("default");
    if DIGIT_SPLIT_PRES.contains(&pre) {
        return Ok(PreTokenizerWrapper::Sequence(Sequence::new(vec![
            PreTokenizerWrapper::Digits(Digits::new(true)),
            byte_level,
        ])));
    }
    if GPT2_PRES.contains(&pre) {
        return Ok(byte_level);
    }
    bail!(
        "tokenizer.ggml.pre is {pre:?}, a split adarank does not build; it builds {:?} and {:?} \
         (load the model from its Hugging Face folder instead, whose tokenizer.json says how)",
        DIGIT_SPLIT_PRES,
        GPT2_PRES
    )
}
