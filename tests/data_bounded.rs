//! Long texts are tokenized only as far as their truncation keeps (`data::bounded`). The oracle
//! is the tokenizer run on the whole text and truncated afterwards: MiniLM's WordPiece with the
//! `tokenizers` crate's own truncation (single texts and longest-first pairs), SmolLM2's
//! byte-level BPE (read from its GGUF) with the documented causal-LM layout — for texts of
//! random words, long runs of mixed whitespace, multibyte UTF-8, digits, no space at all, and a
//! real movie-review sentence repeated. Needs the fetched assets.

use adarank::data::assets;
use adarank::data::bounded::{encode_part, Side};
use adarank::data::lm::{Encoder, LmSettings, Truncation};
use adarank::data::{gguf, hf, Tokenizer};
use adarank::testkit;
use rand::{Rng, SeedableRng};
use tokenizers::{TruncationParams, TruncationStrategy};

/// The `keep` tokens the part (cut from the text at byte `start`) keeps on `side` are the whole
/// text's, ids and offsets alike.
fn assert_keeps(
    name: &str,
    keep: usize,
    side: Side,
    full: &tokenizers::Encoding,
    part: &tokenizers::Encoding,
    start: usize,
) {
    let k = keep.min(full.len());
    assert!(part.len() >= k, "{name}: {} tokens < {k}", part.len());
    let (want, got) = match side {
        Side::Head => (0..k, 0..k),
        Side::Tail => (full.len() - k..full.len(), part.len() - k..part.len()),
    };
    assert_eq!(
        &part.get_ids()[got.clone()],
        &full.get_ids()[want.clone()],
        "{name}: keep {keep} {side:?}"
    );
    let shifted: Vec<(usize, usize)> = part.get_offsets()[got]
        .iter()
        .map(|&(s, e)| (s + start, e + start))
        .collect();
    assert_eq!(shifted, full.get_offsets()[want], "{name}: offsets");
}

/// (name, text) pairs, each tens of kilobytes: far past the bytes the bounded path starts with.
fn texts() -> Vec<(String, String)> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let words = [
        "the",
        "Movie",
        "wasn't",
        "12",
        "3.5",
        "é",
        "naïve",
        "日本語",
        "🎬",
        "co-star",
        "!!",
        "(great)",
        "x",
        "supercalifragilistic",
        "42nd",
        "ÉCLAT",
        "ß",
        "—",
        "'s",
        "you'll",
    ];
    let spaces = [" ", "  ", "\t", "\n", "\u{a0}", "\u{3000}", " \n ", "\r\n"];
    let mut out = Vec::new();
    let join = |rng: &mut rand::rngs::StdRng, seps: &[&str], n: usize| {
        let mut s = String::new();
        while s.len() < n {
            s.push_str(words[rng.random_range(0..words.len())]);
            s.push_str(seps[rng.random_range(0..seps.len())]);
        }
        s
    };
    out.push(("words".into(), join(&mut rng, &[" "], 40_000)));
    out.push(("mixed whitespace".into(), join(&mut rng, &spaces, 40_000)));
    let mut runs = String::new();
    while runs.len() < 60_000 {
        runs.push_str(words[rng.random_range(0..words.len())]);
        let n = rng.random_range(1..400);
        runs.push_str(&spaces[rng.random_range(0..spaces.len())].repeat(n));
    }
    out.push(("long whitespace runs".into(), runs));
    let cjk: String = (0..20_000)
        .map(|i| {
            if i % 97 == 96 {
                ' '
            } else {
                ['日', '本', 'é', '🎬', 'ж'][i % 5]
            }
        })
        .collect();
    out.push(("multibyte, rare spaces".into(), cjk));
    out.push(("no space at all".into(), "abc,def.ghi;".repeat(3_000)));
    let digits: String = (0..8_000)
        .map(|i| format!("{}{}", i, ["  ", " ", "x "][i % 3]))
        .collect();
    out.push(("digits after space runs".into(), digits));
    let tsv = std::fs::read_to_string(assets::movie_reviews_dir().join("train.tsv")).unwrap();
    let sentence = tsv.lines().nth(1).unwrap().split('\t').next().unwrap();
    out.push(("movie sentence repeated".into(), [sentence; 300].join(" ")));
    out.push((
        "spaces at both ends".into(),
        format!("   {}   ", join(&mut rng, &[" "], 30_000)),
    ));
    out
}

#[test]
fn bounded_parts_keep_the_whole_texts_tokens_minilm() {
    if !testkit::require_assets("bounded_parts_keep_the_whole_texts_tokens_minilm") {
        return;
    }
    let file = hf::resolve(assets::MINILM).unwrap().join("tokenizer.json");
    // The file fixes padding and truncation at 128: the whole text's tokens need neither.
    let mut plain = tokenizers::Tokenizer::from_file(&file).unwrap();
    plain.with_padding(None).with_truncation(None).unwrap();
    let texts = texts();
    for (name, text) in &texts {
        let full = plain.encode(text.as_str(), false).unwrap();
        for keep in [1, 8, 125, 400] {
            for side in [Side::Head, Side::Tail] {
                let (range, part) = encode_part(text, keep, side, |t| {
                    plain.encode(t, false).map_err(|e| anyhow::anyhow!("{e}"))
                })
                .unwrap();
                // Not vacuous: a text with a space is cut when few tokens are kept.
                if keep == 8 && name != "no space at all" {
                    assert!(range.len() < text.len(), "{name}: not cut");
                }
                assert_keeps(name, keep, side, &full, &part, range.start);
            }
        }
    }

    // Classification: the project's tokenizer against the crate's own truncation of the whole
    // text, single and paired, at an odd and an even pair budget (the longer text of a pair
    // keeps the odd token). Paired texts are cut to about 5 KB (still past where a text is
    // first cut): the crate truncates a pair into every combination of the two texts'
    // overflowing pieces, quadratic in their length.
    let five_kb = |t: &str| -> String {
        let mut s = String::new();
        for c in t.chars() {
            if s.len() >= 5_000 {
                break;
            }
            s.push(c);
        }
        s
    };
    let mut pairs: Vec<String> = texts.iter().map(|(_, t)| five_kb(t)).collect();
    // More tokens than a short max_len keeps, in fewer bytes than a text is first cut at.
    pairs.push(texts[0].1.chars().take(600).collect());
    pairs.push("a short second sentence with some words in it, more than eight".into());
    for max_len in [128, 35, 8] {
        let ours = Tokenizer::from_file(&file, max_len).unwrap();
        let mut oracle = plain.clone();
        oracle
            .with_truncation(Some(TruncationParams {
                max_length: max_len,
                strategy: TruncationStrategy::LongestFirst,
                ..Default::default()
            }))
            .unwrap();
        for (name, a) in &texts {
            let want = oracle.encode(a.as_str(), true).unwrap();
            let got = ours.encode(a, None).unwrap();
            assert_eq!(got.ids, want.get_ids(), "{name}: max_len {max_len}");
        }
        if max_len < 35 {
            continue; // pieces of 2 or 3 tokens: too many combinations for the oracle
        }
        for a in &pairs {
            for b in &pairs {
                let want = oracle.encode((a.as_str(), b.as_str()), true).unwrap();
                let got = ours.encode(a, Some(b)).unwrap();
                let head = |t: &str| t.chars().take(20).collect::<String>();
                let what = format!("{:?}.. with {:?}..", head(a), head(b));
                assert_eq!(got.ids, want.get_ids(), "{what}: max_len {max_len}");
                assert_eq!(got.type_ids, want.get_type_ids(), "{what}");
            }
        }
    }
}

/// The causal-LM layout, from the module docs of `data::lm::encode`: `[BOS] text` cut at the
/// kept side; `[BOS] prompt completion EOS`, the prompt cut first (its last token alone when the
/// answer fills the sequence).
fn lm_oracle(
    tok: &adarank::data::pretrained::LmTokenizer,
    max: usize,
    left: bool,
    prompt: &str,
    completion: Option<&str>,
) -> Vec<u32> {
    let ids = |t: &str| tok.inner.encode(t, false).unwrap().get_ids().to_vec();
    let bos: Vec<u32> = match (tok.add_bos, tok.bos) {
        (true, Some(b)) => vec![b],
        _ => vec![],
    };
    let keep = |v: Vec<u32>, n: usize| match left {
        true => v[v.len().saturating_sub(n)..].to_vec(),
        false => v[..n.min(v.len())].to_vec(),
    };
    let Some(completion) = completion else {
        return keep([bos, ids(prompt)].concat(), max);
    };
    let mut answer = ids(completion);
    answer.push(tok.eos);
    let mut p = ids(prompt);
    if bos.len() + answer.len() >= max {
        p = p[p.len() - 1..].to_vec();
        answer.truncate(max - bos.len() - 1);
    } else {
        p = keep(p, max - bos.len() - answer.len());
    }
    [bos, p, answer].concat()
}

#[test]
fn bounded_lm_records_keep_the_whole_texts_tokens_smollm2() {
    let Some(path) = testkit::require_smollm2("bounded_lm_records_keep_the_whole_texts_tokens")
    else {
        return;
    };
    let tok = gguf::read_tokenizer(&path).unwrap();
    let texts = texts();
    for (name, text) in &texts {
        let full = tok.inner.encode(text.as_str(), false).unwrap();
        for keep in [1, 8, 300] {
            for side in [Side::Head, Side::Tail] {
                let (range, part) = encode_part(text, keep, side, |t| {
                    tok.inner
                        .encode(t, false)
                        .map_err(|e| anyhow::anyhow!("{e}"))
                })
                .unwrap();
                // Not vacuous: a text with a space is cut when few tokens are kept.
                if keep == 8 && name != "no space at all" {
                    assert!(range.len() < text.len(), "{name}: not cut");
                }
                assert_keeps(name, keep, side, &full, &part, range.start);
            }
        }
    }

    for (max_len, left) in [(64, true), (64, false), (9, true), (300, false)] {
        let truncation = if left {
            Truncation::Left
        } else {
            Truncation::Right
        };
        let enc = Encoder::new(
            &tok,
            LmSettings {
                max_len,
                truncation,
            },
        );
        for (i, (name, text)) in texts.iter().enumerate() {
            let got = enc.text(text, 1).unwrap();
            assert_eq!(
                got.ids,
                lm_oracle(&tok, max_len, left, text, None),
                "{name}: text, max_len {max_len}, left {left}"
            );
            let other = &texts[(i + 1) % texts.len()].1;
            for completion in [" positive", other.as_str()] {
                let got = enc.prompt_completion(text, completion, 1).unwrap();
                let want = lm_oracle(&tok, max_len, left, text, Some(completion));
                assert_eq!(
                    got.ids, want,
                    "{name}: prompt, max_len {max_len}, left {left}"
                );
            }
        }
    }
}
