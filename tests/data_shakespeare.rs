//! `data shakespeare`: Shakespeare's plays read as plain language modelling.
//!
//! On a committed fixture (tests/fixtures/shakespeare: a few real passages of each split, cut
//! from the fetched asset, so the format is the real one): the section checks, becomes `{"text"}`
//! records whose sequences are the tokenizer's ids with the start kept, evaluates on the split
//! asked for and reports perplexity; `check` refuses what a run would fail on at file:line:col,
//! a missing asset included. On the real asset (CI fetches it; a missing asset fails there):
//! the splits are whole plays, 29/4/4, with the counts the fetch script pins, and no Gutenberg
//! boilerplate is left.

use adarank::data::lm::from_section::lm_task;
use adarank::data::lm::{JsonlKind, LmMetric, Truncation, IGNORE};
use adarank::data::prepare::{load_llm, Split};
use adarank::model::Target;
use adarank::policy::{load_str, DataSpec, Diagnostics, Policy};
use adarank::testkit;
use adarank::train::Task;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn fixture() -> PathBuf {
    root().join("tests/fixtures/shakespeare")
}

fn tiny_gguf() -> PathBuf {
    root().join("tests/fixtures/llm/tiny_llama.gguf")
}

fn policy_text(model: &str, data: &str) -> String {
    format!("experiment t {{\n  {model}\n  {data}\n  train {{ steps = 10 }}\n}}\n")
}

fn check_with(model: &str, data: &str) -> Result<Policy, Diagnostics> {
    load_str(&policy_text(model, data), "t.rank", Path::new("."), &[])
}

fn gguf_model() -> String {
    format!("model gguf {{ path = \"{}\" }}", tiny_gguf().display())
}

/// The error text, which must name `t.rank:3:` (the data line) and contain `want`.
fn refused(model: &str, data: &str, want: &str) {
    let d = match check_with(model, data) {
        Ok(_) => panic!("accepted: {data}"),
        Err(d) => format!("{d}"),
    };
    assert!(d.contains("t.rank:3:"), "names the data line: {d}");
    assert!(d.contains(want), "{want:?} in: {d}");
}

/// The `"text"` of every record of a JSONL file, in order.
fn texts(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["text"].as_str().unwrap().to_string()
        })
        .collect()
}

#[test]
fn fixture_passages_become_text_sequences_with_their_start_kept() {
    let max_len = 24;
    let data = format!(
        "data shakespeare {{ dir = \"{}\", max_len = {max_len} }}",
        fixture().display()
    );
    let p = check_with(&gguf_model(), &data).unwrap_or_else(|d| panic!("{d}"));
    let spec = &p.arms[0].data;
    let DataSpec::Shakespeare { subset, .. } = spec else {
        panic!("{spec:?}")
    };
    assert_eq!(subset.lm.format, Some(JsonlKind::Text));
    assert_eq!(subset.lm.truncation, Truncation::Right);
    assert_eq!(
        adarank::policy::lm::lm_metric(spec),
        Some(LmMetric::Perplexity)
    );

    let pre = load_llm(&tiny_gguf()).unwrap();
    let task = lm_task(spec, &pre, 128, 1, Split::Dev).unwrap().unwrap();
    assert_eq!(
        task.train_len(),
        texts(&fixture().join("train.jsonl")).len()
    );
    // The oracle: each dev passage through the tokenizer directly, the model's BOS when it adds
    // one, the first `max_len` ids kept; every id but the first is the previous one's target.
    let tok = &pre.tokenizer;
    let want: Vec<Vec<u32>> = texts(&fixture().join("dev.jsonl"))
        .iter()
        .map(|t| {
            let mut ids: Vec<u32> = tok
                .add_bos
                .then_some(tok.bos)
                .flatten()
                .into_iter()
                .collect();
            ids.extend(tok.inner.encode(t.as_str(), false).unwrap().get_ids());
            assert!(
                ids.len() > max_len,
                "a fixture passage is longer than max_len"
            );
            ids.truncate(max_len);
            ids
        })
        .collect();
    let rows: Vec<(Vec<u32>, Vec<u32>)> = task
        .eval_batches()
        .iter()
        .flat_map(|b| {
            let Target::Tokens(t) = &b.target else {
                panic!("a language-model batch has token targets")
            };
            (0..b.batch)
                .map(|r| {
                    let s = r * b.seq..(r + 1) * b.seq;
                    (b.ids[s.clone()].to_vec(), t[s].to_vec())
                })
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(rows.len(), want.len());
    for ((ids, targets), w) in rows.iter().zip(&want) {
        assert_eq!(&ids[..w.len()], &w[..]);
        let next: Vec<u32> = w[1..].iter().copied().chain([IGNORE]).collect();
        assert_eq!(&targets[..w.len()], &next[..]);
    }

    // The final metric reads test.jsonl, model selection dev.jsonl.
    let test = lm_task(spec, &pre, 128, 1, Split::Test).unwrap().unwrap();
    let n: usize = test.eval_batches().iter().map(|b| b.batch).sum();
    assert_eq!(n, texts(&fixture().join("test.jsonl")).len());
}

const BERT_CONFIG: &str = r#"{"architectures": ["BertModel"], "hidden_act": "gelu", "hidden_size": 384, "intermediate_size": 1536, "layer_norm_eps": 1e-12, "max_position_embeddings": 512, "model_type": "bert", "num_attention_heads": 12, "num_hidden_layers": 6, "pad_token_id": 0, "type_vocab_size": 2, "vocab_size": 30522}"#;

#[test]
fn check_refuses_what_a_run_would_fail_on() {
    let dir = fixture();
    let d = dir.display();
    let empty = tempfile::tempdir().unwrap();
    refused(
        &gguf_model(),
        &format!(
            "data shakespeare {{ dir = \"{}\" }}",
            empty.path().display()
        ),
        "has no train.jsonl, dev.jsonl, test.jsonl",
    );
    refused(
        &gguf_model(),
        &format!("data shakespeare {{ dir = \"{d}\", as = generation }}"),
        "unknown key `as`",
    );
    refused(
        &gguf_model(),
        &format!("data shakespeare {{ dir = \"{d}\", format = text }}"),
        "unknown key `format`",
    );
    refused(
        &gguf_model(),
        &format!("data shakespeare {{ dir = \"{d}\", metric = accuracy }}"),
        "no `accuracy` metric",
    );
    refused(
        &gguf_model(),
        &format!("data shakespeare {{ dir = \"{d}\", truncation = middle }}"),
        "truncation",
    );
    // An encoder has no LM head for plain text (MiniLM-L6's config.json: the checker reads
    // the model's kind from it).
    let bert = tempfile::tempdir().unwrap();
    std::fs::write(bert.path().join("config.json"), BERT_CONFIG).unwrap();
    refused(
        &format!("model path {{ dir = \"{}\" }}", bert.path().display()),
        &format!("data shakespeare {{ dir = \"{d}\" }}"),
        "need a pretrained causal LM",
    );
    // What it accepts beside the defaults.
    let p = check_with(
        &gguf_model(),
        &format!("data shakespeare {{ dir = \"{d}\", truncation = left, metric = eval_loss }}"),
    )
    .unwrap_or_else(|d| panic!("{d}"));
    let DataSpec::Shakespeare { subset, .. } = &p.arms[0].data else {
        panic!()
    };
    assert_eq!(subset.lm.truncation, Truncation::Left);
    assert_eq!(subset.lm.metric, Some(LmMetric::EvalLoss));
}

/// `adarank check` in a process of its own, so that its assets folder (an empty one) cannot
/// leak into the other tests.
#[test]
fn check_says_to_fetch_a_missing_asset() {
    let work = tempfile::tempdir().unwrap();
    let empty = tempfile::tempdir().unwrap();
    let file = work.path().join("t.rank");
    std::fs::write(
        &file,
        policy_text(&gguf_model(), "data shakespeare { max_len = 64 }"),
    )
    .unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_adarank"))
        .arg("check")
        .arg(&file)
        .env("ADARANK_ASSETS", empty.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "accepted without the asset: {err}");
    assert!(err.contains("t.rank:3:3"), "located at the section: {err}");
    assert!(err.contains("asset missing"), "{err}");
    assert!(err.contains("adarank fetch"), "{err}");
}

#[test]
fn the_fetched_splits_are_whole_plays() {
    let Some(dir) = testkit::require_shakespeare("the_fetched_splits_are_whole_plays") else {
        return;
    };
    let mut plays: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
    let mut counts = Vec::new();
    for split in ["train", "dev", "test"] {
        let text = std::fs::read_to_string(dir.join(format!("{split}.jsonl"))).unwrap();
        let mut n = 0;
        for line in text.lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            let passage = v["text"].as_str().unwrap();
            // Whole lines of a few hundred tokens, no Gutenberg text left.
            assert!((200..=1700).contains(&passage.len()), "{}", passage.len());
            assert!(!passage.to_lowercase().contains("gutenberg"));
            // Verse lines may be indented; a passage neither starts nor ends with a blank line.
            assert!(!passage.starts_with('\n') && !passage.ends_with(char::is_whitespace));
            plays
                .entry(split)
                .or_default()
                .insert(v["play"].as_str().unwrap().to_string());
            n += 1;
        }
        counts.push(n);
    }
    // The counts fetch-assets prints; its pinned hash holds the text itself.
    assert_eq!(counts, [3851, 523, 564]);
    let sizes: Vec<usize> = plays.values().map(|p| p.len()).collect();
    assert_eq!(
        (
            plays["train"].len(),
            plays["dev"].len(),
            plays["test"].len()
        ),
        (29, 4, 4)
    );
    assert_eq!(sizes.iter().sum::<usize>(), 37, "no play is in two splits");
    let all: BTreeSet<&String> = plays.values().flatten().collect();
    assert_eq!(all.len(), 37);
    assert!(plays["test"].contains("richard_iii") && plays["dev"].contains("hamlet"));
    // The fixture is cut from these files.
    for split in ["train", "dev", "test"] {
        let real = texts(&dir.join(format!("{split}.jsonl")));
        for t in texts(&fixture().join(format!("{split}.jsonl"))) {
            assert!(
                real.contains(&t),
                "a {split} fixture passage is not in the asset"
            );
        }
    }
}
