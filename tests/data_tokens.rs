//! MiniLM's tokenizer and the SQuAD span targets against transformers (fixture written by
//! scripts/make_fixture.py with the pure-Python BertTokenizer and the span rule of transformers'
//! question-answering example). Needs the assets.

use adarank::data::{assets, hf, squad};
use adarank::testkit;
use serde_json::Value;
use std::path::Path;

fn fixture() -> Value {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/data/minilm_hidden.json");
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn u32s(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

#[test]
fn minilm_token_ids_match_transformers() {
    if !testkit::require_assets("minilm_token_ids_match_transformers") {
        return;
    }
    let ck = hf::load(assets::MINILM).unwrap();
    for case in fixture()["cases"].as_array().unwrap() {
        let a = case["text"].as_str().unwrap();
        let b = case["text_pair"].as_str();
        let enc = ck.tokenizer.encode(a, b).unwrap();
        assert_eq!(enc.ids, u32s(&case["ids"]), "{a:?}");
        assert_eq!(enc.type_ids, u32s(&case["type_ids"]), "{a:?}");
    }
}

#[test]
fn truncation_is_ours_not_the_files() {
    if !testkit::require_assets("truncation_is_ours_not_the_files") {
        return;
    }
    let mut tok = hf::load(assets::MINILM).unwrap().tokenizer;
    let long = "word ".repeat(300);
    // tokenizer.json pads and truncates to 128; we neither pad nor keep its 128.
    assert_eq!(tok.encode("short", None).unwrap().ids, vec![101, 2460, 102]);
    assert_eq!(tok.encode(&long, None).unwrap().ids.len(), 256);
    tok.set_max_len(16).unwrap();
    let e = tok.encode(&long, Some(&long)).unwrap();
    assert_eq!(e.ids.len(), 16);
    assert_eq!(e.ids.iter().filter(|&&i| i == 102).count(), 2);
}

#[test]
fn squad_targets_match_transformers() {
    if !testkit::require_assets("squad_targets_match_transformers") {
        return;
    }
    let mut tok = hf::load(assets::MINILM).unwrap().tokenizer;
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/data/squad2_dev.json");
    let fx = fixture();
    for (max_len, want) in fx["squad"].as_object().unwrap() {
        tok.set_max_len(max_len.parse().unwrap()).unwrap();
        let got = squad::load(&path, &tok).unwrap();
        let want = want.as_array().unwrap();
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(want) {
            assert_eq!(g.id, w["id"].as_str().unwrap());
            assert_eq!(g.ids, u32s(&w["ids"]), "{} at {max_len}", g.id);
            let target = (
                w["start"].as_u64().unwrap() as u32,
                w["end"].as_u64().unwrap() as u32,
            );
            assert_eq!((g.start, g.end), target, "{} at {max_len}", g.id);
        }
    }
}

#[test]
fn squad_errors_name_the_question() {
    if !testkit::require_assets("squad_errors_name_the_question") {
        return;
    }
    let tok = hf::load(assets::MINILM).unwrap().tokenizer;
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/data/squad2_dev.json");
    let good = std::fs::read_to_string(src).unwrap();
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("bad.json");
    for (from, to, want) in [
        ("\"answer_start\": 26", "\"answer_start\": 25", "bad.json:46: question \"cafe-0001\": answer \"crème brûlée\" is not at answer_start 25"),
        ("\"is_impossible\": true", "\"is_impossible\": false", "bad.json:21: question \"5ad39d53604f3c001a3fe8d1\": no answers"),
        ("\"question\": \"What does", "\"questio\": \"What does", "missing field `question`"),
    ] {
        std::fs::write(&p, good.replacen(from, to, 1)).unwrap();
        let e = squad::load(&p, &tok).unwrap_err().to_string();
        assert!(e.contains(want), "{e} (want {want})");
    }
}

#[test]
fn squad_task_batches_carry_span_targets() {
    use adarank::model::Target;
    use adarank::train::Task;
    if !testkit::require_assets("squad_task_batches_carry_span_targets") {
        return;
    }
    let ck = hf::load(assets::MINILM).unwrap();
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/data/squad2_dev.json");
    let ex = squad::load(&path, &ck.tokenizer).unwrap();
    let mut task = squad::SpanTask::new(&ck, ex.clone(), &ex, 3, 5).unwrap();
    let eval = task.eval_batches();
    assert_eq!(eval.len(), 2);
    // Padded to the longest question+context of the batch; targets as the loader set them.
    assert_eq!(eval[0].seq, 60);
    match &eval[0].target {
        Target::Spans { start, end } => {
            assert_eq!(start, &vec![49, 0, 37]);
            assert_eq!(end, &vec![49, 0, 40]);
        }
        t => panic!("{t:?}"),
    }
    let b = task.train_batch(1, 4).unwrap();
    assert_eq!(b, task.train_batch(1, 4).unwrap());
    assert_eq!(b.batch, 4);
}
