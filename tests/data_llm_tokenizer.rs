//! SmolLM2's tokenizer built from its GGUF metadata, against transformers'
//! `AutoTokenizer.from_pretrained(DIR, gguf_file=NAME)` on 200+ strings (unicode, CJK, emoji,
//! digits, whitespace runs, code, chat-templated text with special tokens;
//! tests/fixtures/llm/gguf_tokenizer.json, written by scripts/make_gguf_fixtures.py). Needs the
//! SmolLM2 GGUF (scripts/fetch-assets).
//!
//! Two references are in the fixture: transformers' GGUF tokenizer, and the same vocabulary split
//! the way SmolLM2 was trained (digits one by one, as its tokenizer.json and llama.cpp's "smollm"
//! split do). We follow the second; the first must agree everywhere except where whitespace runs
//! into a number, the one place transformers' GGUF converter splits differently.

use adarank::data::gguf;
use adarank::testkit;
use serde_json::Value;

fn fixture() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/llm/gguf_tokenizer.json"
    );
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

/// Whitespace directly followed by a number character: where the two splits differ.
fn space_before_number(s: &str) -> bool {
    let c: Vec<char> = s.chars().collect();
    c.windows(2)
        .any(|w| w[0].is_whitespace() && w[1].is_numeric())
}

#[test]
fn smollm2_token_ids_match_transformers() {
    let Some(path) = testkit::require_smollm2("smollm2_token_ids_match_transformers") else {
        return;
    };
    let tok = gguf::read_tokenizer(&path).unwrap();
    let fx = fixture();
    let cases = fx["cases"].as_array().unwrap();
    assert!(cases.len() >= 200, "only {} strings", cases.len());
    let mut differ = 0;
    for c in cases {
        let text = c["text"].as_str().unwrap();
        let got = tok.inner.encode(text, true).unwrap().get_ids().to_vec();
        assert_eq!(got, ids(&c["smollm_ids"]), "ids of {text:?}");
        if got != ids(&c["ids"]) {
            assert!(
                space_before_number(text),
                "{text:?}: differs from transformers' GGUF tokenizer without whitespace before a number"
            );
            differ += 1;
        }
        let decoded = tok.inner.decode(&got, false).unwrap();
        assert_eq!(decoded, text, "decoding the ids of {text:?}");
        assert_eq!(
            decoded,
            c["decoded"].as_str().unwrap(),
            "transformers' decode of {text:?}"
        );
    }
    // The known difference is exercised, and stays the exception.
    assert!(
        (1..=40).contains(&differ),
        "{differ} strings differ from transformers"
    );
}

#[test]
fn smollm2_special_tokens_and_template() {
    let Some(path) = testkit::require_smollm2("smollm2_special_tokens_and_template") else {
        return;
    };
    let tok = gguf::read_tokenizer(&path).unwrap();
    let fx = fixture();
    let id = |name: &str| tok.inner.token_to_id(fx[name].as_str().unwrap()).unwrap();
    assert_eq!(tok.bos, Some(id("bos")));
    assert_eq!(tok.eos, id("eos"));
    assert_eq!(tok.pad, id("pad"));
    assert!(!tok.add_bos);
    assert_eq!(
        tok.inner.get_vocab_size(true) as u64,
        fx["vocab_size"].as_u64().unwrap()
    );
    // Control tokens are matched whole and are special (skipped when asked).
    let enc = tok
        .inner
        .encode("<|im_start|>user\nhi<|im_end|>", true)
        .unwrap();
    assert_eq!(enc.get_ids()[0], 1);
    assert_eq!(*enc.get_ids().last().unwrap(), 2);
    assert_eq!(tok.inner.decode(enc.get_ids(), true).unwrap(), "user\nhi");
    let template = tok.chat_template.as_deref().unwrap();
    assert!(template.contains("<|im_start|>"), "{template}");
}
