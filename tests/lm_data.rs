//! Causal-LM data: every JSONL kind tokenized and masked, checked position by position against
//! masks found by brute force in the rendered strings and against transformers' token ids
//! (tests/fixtures/lmdata, made by scripts/make_lm_data_fixtures.py); padding, truncation,
//! the run-seeded order, and clear errors with file:line.

use adarank::data::lm::encode::assistant_spans;
use adarank::data::lm::{
    read_labelled, read_records, AsGeneration, Encoder, JsonlKind, Label, LabelWords, LmData,
    LmSettings, Message, RecordBody, Truncation, IGNORE,
};
use adarank::data::pretrained::LmTokenizer;
use adarank::model::Target;
use serde_json::Value;
use std::path::{Path, PathBuf};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/lmdata")
        .join(name)
}

fn expected() -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixture("expected.json")).unwrap()).unwrap()
}

fn tokenizer() -> LmTokenizer {
    LmTokenizer {
        inner: tokenizers::Tokenizer::from_file(fixture("tokenizer.json")).unwrap(),
        bos: Some(1),
        eos: 2,
        pad: 2,
        add_bos: false,
        chat_template: Some(expected()["template"].as_str().unwrap().to_string()),
    }
}

/// SmolLM2's chat template written out in Rust (the Jinja renderer is another module's); it is
/// held to transformers' renderings in `the_test_renderer_matches_transformers`.
fn smol_chat(m: &[Message], gen: bool) -> anyhow::Result<String> {
    let mut s = String::new();
    for (i, msg) in m.iter().enumerate() {
        if i == 0 && msg.role != "system" {
            s.push_str("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n");
        }
        s.push_str(&format!(
            "<|im_start|>{}\n{}<|im_end|>\n",
            msg.role, msg.content
        ));
    }
    if gen {
        s.push_str("<|im_start|>assistant\n");
    }
    Ok(s)
}

fn settings(max_len: usize, truncation: Truncation) -> LmSettings {
    LmSettings {
        max_len,
        truncation,
    }
}

fn conversations() -> Vec<Vec<Message>> {
    expected()["conversations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            c.as_array()
                .unwrap()
                .iter()
                .map(|m| Message {
                    role: m["role"].as_str().unwrap().into(),
                    content: m["content"].as_str().unwrap().into(),
                })
                .collect()
        })
        .collect()
}

fn ids_of(text: &str) -> Vec<u32> {
    expected()["ids"][text]
        .as_array()
        .unwrap_or_else(|| panic!("no fixture ids for {text:?}"))
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect()
}

#[test]
fn the_test_renderer_matches_transformers() {
    let e = expected();
    for (c, want) in conversations()
        .iter()
        .zip(e["rendered"].as_array().unwrap())
    {
        assert_eq!(smol_chat(c, false).unwrap(), want.as_str().unwrap());
    }
    for (c, spans) in conversations()
        .iter()
        .zip(e["prefixes"].as_array().unwrap())
    {
        let turns: Vec<usize> = (0..c.len()).filter(|&i| c[i].role == "assistant").collect();
        for (&i, pair) in turns.iter().zip(spans.as_array().unwrap()) {
            assert_eq!(smol_chat(&c[..i], true).unwrap(), pair[0].as_str().unwrap());
            assert_eq!(
                smol_chat(&c[..=i], false).unwrap(),
                pair[1].as_str().unwrap()
            );
        }
    }
}

#[test]
fn messages_train_on_assistant_turns_only() {
    let tok = tokenizer();
    let mut enc = Encoder::new(&tok, settings(4096, Truncation::Left));
    enc.chat = Some(Box::new(smol_chat));
    for c in conversations() {
        let full = smol_chat(&c, false).unwrap();
        let ex = enc.messages(&c, 1).unwrap();
        // Token ids as transformers tokenizes the rendered conversation.
        assert_eq!(ex.ids, ids_of(&full));
        // Brute force: the bytes of each assistant turn are its content and <|im_end|>, found
        // by searching the rendered text after each "<|im_start|>assistant\n".
        let mut want = vec![false; full.len()];
        let mut from = 0;
        for m in c.iter().filter(|m| m.role == "assistant") {
            let head = "<|im_start|>assistant\n";
            let at = from + full[from..].find(head).unwrap() + head.len();
            let turn = format!("{}<|im_end|>", m.content);
            assert!(full[at..].starts_with(&turn));
            want[at..at + turn.len()].fill(true);
            from = at + turn.len();
        }
        // Decode token by token to find each token's bytes, and mark it when any is in a turn.
        let mut pos = 0;
        for (t, &id) in ex.ids.iter().enumerate() {
            let piece = tok.inner.decode(&[id], false).unwrap();
            let len = piece.len();
            assert_eq!(
                &full[pos..pos + len],
                piece,
                "token {t} decodes to its bytes"
            );
            let in_turn = want[pos..pos + len].iter().any(|&b| b);
            assert_eq!(
                ex.is_target[t],
                in_turn && t > 0,
                "position {t} ({piece:?})"
            );
            pos += len;
        }
        assert_eq!(pos, full.len());
        // The next-token targets shift the mask by one.
        let targets = ex.next_token_targets();
        for (t, &got) in targets.iter().enumerate() {
            let want = if t + 1 < ex.ids.len() && ex.is_target[t + 1] {
                ex.ids[t + 1]
            } else {
                IGNORE
            };
            assert_eq!(got, want);
        }
        // Generation for exact match starts right before the last assistant turn.
        let last = c.iter().rev().find(|m| m.role == "assistant").unwrap();
        let at = ex.answer_at.unwrap();
        let rest = tok.inner.decode(&ex.ids[at + 1..], false).unwrap();
        assert!(rest.starts_with(&last.content), "{rest:?}");
    }
}

#[test]
fn a_template_whose_prefixes_are_not_prefixes_is_refused() {
    // A template that writes the turn count up front renders prefixes that are not prefixes.
    let counted = |m: &[Message], _gen: bool| -> anyhow::Result<String> {
        Ok(format!("{} turns\n{}", m.len(), smol_chat(m, false)?))
    };
    let c = &conversations()[0];
    let full = counted(c, false).unwrap();
    let e = assistant_spans(&counted, c, &full).unwrap_err();
    assert!(format!("{e:#}").contains("prefixes"), "{e:#}");
}

#[test]
fn prompt_completion_targets_the_completion_and_eos() {
    let tok = tokenizer();
    let enc = Encoder::new(&tok, settings(4096, Truncation::Left));
    let recs = read_records(&fixture("pc.jsonl"), None).unwrap();
    assert_eq!(recs.len(), 2);
    assert_eq!(recs[1].line, 3, "blank lines count in line numbers");
    let RecordBody::PromptCompletion { prompt, completion } = &recs[0].body else {
        panic!("{:?}", recs[0].body)
    };
    let ex = adarank::data::lm::encode_record(&enc, &recs[0]).unwrap();
    // transformers' ids of the prompt and of the completion, tokenized apart, then EOS.
    let (p, c) = (ids_of(prompt), ids_of(completion));
    let mut want = p.clone();
    want.extend(&c);
    want.push(2);
    assert_eq!(ex.ids, want);
    let mask: Vec<bool> = (0..want.len()).map(|i| i >= p.len()).collect();
    assert_eq!(ex.is_target, mask);
    assert_eq!(ex.answer_at, Some(p.len() - 1));
    assert_eq!(ex.targets(), c.len() + 1);
}

#[test]
fn text_targets_every_token_but_the_first() {
    let tok = tokenizer();
    let enc = Encoder::new(&tok, settings(4096, Truncation::Left));
    let recs = read_records(&fixture("text.jsonl"), Some(JsonlKind::Text)).unwrap();
    let ex = adarank::data::lm::encode_record(&enc, &recs[0]).unwrap();
    let RecordBody::Text(t) = &recs[0].body else {
        panic!()
    };
    assert_eq!(ex.ids, ids_of(t));
    assert!(!ex.is_target[0] && ex.is_target[1..].iter().all(|&b| b));
    assert_eq!(ex.answer_at, None);
    // With BOS added, the BOS is no target and the first text token is.
    let mut bos_tok = tokenizer();
    bos_tok.add_bos = true;
    let enc = Encoder::new(&bos_tok, settings(4096, Truncation::Left));
    let ex = enc.text(t, 1).unwrap();
    assert_eq!(ex.ids[0], 1);
    assert_eq!(&ex.ids[1..], &ids_of(t)[..]);
    assert!(!ex.is_target[0] && ex.is_target[1]);
}

#[test]
fn truncation_cuts_the_prompt_at_the_chosen_side_and_keeps_the_answer() {
    let tok = tokenizer();
    let prompt = "Review: a gorgeous, witty film\nSentiment:";
    let (p, c) = (ids_of(prompt), ids_of(" positive"));
    let max = c.len() + 1 + 5;
    let left = Encoder::new(&tok, settings(max, Truncation::Left))
        .prompt_completion(prompt, " positive", 1)
        .unwrap();
    assert_eq!(left.ids.len(), max);
    assert_eq!(
        &left.ids[..5],
        &p[p.len() - 5..],
        "left keeps the prompt's end"
    );
    assert_eq!(&left.ids[5..5 + c.len()], &c[..]);
    assert_eq!(left.answer_at, Some(4));
    let right = Encoder::new(&tok, settings(max, Truncation::Right))
        .prompt_completion(prompt, " positive", 1)
        .unwrap();
    assert_eq!(&right.ids[..5], &p[..5], "right keeps the prompt's start");
    assert_eq!(right.targets(), c.len() + 1);
    // Text is cut as a whole: left keeps the end, right the start; the first kept token is
    // never a target.
    let t = "The movie was wonderful and I loved every minute of it.";
    let all = ids_of(t);
    let l = Encoder::new(&tok, settings(6, Truncation::Left))
        .text(t, 1)
        .unwrap();
    assert_eq!(l.ids, all[all.len() - 6..]);
    assert!(!l.is_target[0] && l.is_target[1..].iter().all(|&b| b));
    let r = Encoder::new(&tok, settings(6, Truncation::Right))
        .text(t, 1)
        .unwrap();
    assert_eq!(r.ids, all[..6]);
}

#[test]
fn batches_pad_right_to_the_longest_and_ignore_padding() {
    let tok = tokenizer();
    let enc = Encoder::new(&tok, settings(4096, Truncation::Left));
    let recs = read_records(&fixture("text.jsonl"), None).unwrap();
    let exs: Vec<_> = recs
        .iter()
        .map(|r| adarank::data::lm::encode_record(&enc, r).unwrap())
        .collect();
    let data = LmData::new(exs.clone(), tok.pad).unwrap();
    let b = data.gather(&[1, 0]);
    let seq = exs.iter().map(|e| e.ids.len()).max().unwrap();
    assert_eq!((b.batch, b.seq), (2, seq));
    let Target::Tokens(y) = &b.target else {
        panic!()
    };
    for (r, ex) in [&exs[1], &exs[0]].iter().enumerate() {
        let row = r * seq;
        for t in 0..seq {
            if t < ex.ids.len() {
                assert_eq!(b.ids[row + t], ex.ids[t]);
                assert_eq!(b.mask[row + t], 1.0);
                assert_eq!(y[row + t], ex.next_token_targets()[t]);
            } else {
                assert_eq!(
                    (b.ids[row + t], b.mask[row + t], y[row + t]),
                    (tok.pad, 0.0, IGNORE),
                    "row {r} position {t} is padding"
                );
            }
        }
    }
    assert!(b.type_ids.is_empty());
    // A training batch is a pure function of (seed, index); seeds order differently.
    let many = LmData::new(
        (0..20)
            .map(|_| exs[0].clone())
            .chain((0..20).map(|_| exs[1].clone()))
            .collect(),
        2,
    )
    .unwrap();
    assert_eq!(many.train_batch(5, 3, 8), many.train_batch(5, 3, 8));
    assert_ne!(
        (0..5)
            .map(|i| many.train_batch(5, i, 8).ids)
            .collect::<Vec<_>>(),
        (0..5)
            .map(|i| many.train_batch(6, i, 8).ids)
            .collect::<Vec<_>>()
    );
}

#[test]
fn labelled_sets_become_prompt_and_label_word() {
    let tok = tokenizer();
    let enc = Encoder::new(&tok, settings(4096, Truncation::Left));
    let data = read_labelled(&fixture("labelled.jsonl")).unwrap();
    assert_eq!(data[0].label, Label::Name("positive".into()));
    assert_eq!(data[1].label, Label::Index(0));
    let g = AsGeneration {
        prompt: "Review: {text}\nSentiment:".into(),
        labels: vec![" negative".into(), " positive".into()],
    };
    let (exs, classes) = g.examples(&enc, &data).unwrap();
    assert_eq!(
        classes,
        vec![1, 0, 1],
        "string labels match label words up to whitespace"
    );
    let p = ids_of("Review: a gorgeous, witty film\nSentiment:");
    let mut want = p.clone();
    want.extend(ids_of(" positive"));
    want.push(2);
    assert_eq!(exs[0].ids, want);
    assert_eq!(exs[0].answer_at, Some(p.len() - 1));
    // Label words: multi-token here, told apart by their first token.
    let w = LabelWords::new(&tok, &g.labels).unwrap();
    assert_eq!(
        w.first,
        vec![ids_of(" negative")[0], ids_of(" positive")[0]]
    );
    assert!(!w.single_tokens());
    let same = LabelWords::new(&tok, &[" positive".into(), " positively".into()]).unwrap_err();
    assert!(format!("{same:#}").contains("same token"), "{same:#}");
    // A label with no label word, and a class index past the label words, name their line.
    let bad = AsGeneration {
        labels: vec![" negative".into(), " neutral".into()],
        ..g.clone()
    };
    let e = bad.examples(&enc, &data).unwrap_err();
    assert!(format!("{e:#}").contains("line 1"), "{e:#}");
    let pair = g.render_prompt("a", Some("b")).unwrap_err();
    assert!(format!("{pair:#}").contains("text_pair"));
}

#[test]
fn bad_records_name_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let cases: &[(&str, &str)] = &[
        (
            "{\"prompt\": \"x\"}\n",
            ":1: \"prompt\" without \"completion\"",
        ),
        ("{\"text\": \"ok\"}\nnot json\n", ":2: invalid JSON"),
        (
            "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}]}\n",
            "no \"assistant\" turn",
        ),
        (
            "{\"messages\": [{\"role\": \"user\"}]}\n",
            "has no \"content\"",
        ),
        ("[1, 2]\n", ":1: expected a JSON object, found an array"),
        ("{\"text\": 3}\n", "\"text\" must be a string"),
        ("\n\n", "no records"),
        ("{\"text\": \"a\", \"label\": 1}\n", "as = generation"),
    ];
    for (i, (body, want)) in cases.iter().enumerate() {
        let p = dir.path().join(format!("{i}.jsonl"));
        std::fs::write(&p, body).unwrap();
        let e = format!("{:#}", read_records(&p, None).unwrap_err());
        assert!(e.contains(want), "case {i}: {e}");
        assert!(
            e.contains(&p.display().to_string()),
            "case {i} names the file: {e}"
        );
    }
    let e = format!(
        "{:#}",
        read_records(&fixture("mixed.jsonl"), None).unwrap_err()
    );
    assert!(
        e.contains("mixed.jsonl:2") && e.contains("line 1 says"),
        "{e}"
    );
    let p = dir.path().join("bytes.jsonl");
    std::fs::write(&p, b"{\"text\": \"a\xff\"}\n").unwrap();
    let e = format!("{:#}", read_records(&p, None).unwrap_err());
    assert!(e.contains(":1: not UTF-8"), "{e}");
    let e = format!("{:#}", read_records(dir.path(), None).unwrap_err());
    assert!(e.contains("directory"), "{e}");
}
