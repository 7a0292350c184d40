//! Chat templates rendered as transformers renders them: SmolLM2's template and templates in the
//! shapes Hugging Face models ship (whitespace control, trim/lstrip blocks, loop controls,
//! namespace, raise_exception, Python string methods, tojson), against
//! `apply_chat_template(tokenize=False)` (tests/fixtures/llm/gguf_chat.json, written by
//! scripts/make_gguf_fixtures.py).

use adarank::data::chat::{render_chat, ChatMessage};
use serde_json::Value;

fn fixture() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/llm/gguf_chat.json"
    );
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn messages(v: &Value) -> Vec<ChatMessage> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|m| ChatMessage::new(m["role"].as_str().unwrap(), m["content"].as_str().unwrap()))
        .collect()
}

#[test]
fn renders_match_transformers() {
    let fx = fixture();
    let cases = fx["cases"].as_array().unwrap();
    let (mut rendered, mut raised) = (0, 0);
    for (i, c) in cases.iter().enumerate() {
        let name = c["template"].as_str().unwrap();
        let template = fx["templates"][name].as_str().unwrap();
        let gen = c["add_generation_prompt"].as_bool().unwrap();
        let got = render_chat(
            template,
            &messages(&c["messages"]),
            gen,
            c["bos"].as_str().unwrap(),
            c["eos"].as_str().unwrap(),
        );
        match (&c["rendered"], got) {
            (Value::String(want), Ok(got)) => {
                assert_eq!(&got, want, "case {i} ({name}, generation prompt {gen})");
                rendered += 1;
            }
            (Value::Null, Err(e)) => {
                // The template's own message reaches the caller.
                let want = c["error"].as_str().unwrap();
                assert!(
                    format!("{e:#}").contains(want),
                    "case {i} ({name}): error {e:#} does not carry {want:?}"
                );
                raised += 1;
            }
            (want, got) => panic!("case {i} ({name}, gen {gen}): want {want:?}, got {got:?}"),
        }
    }
    assert!(
        rendered >= 40 && raised >= 2,
        "{rendered} renders, {raised} raises"
    );
}

#[test]
fn template_errors_are_errors() {
    let m = [ChatMessage::new("user", "hi")];
    let e = render_chat("{% for m in messages %}{{ m.content }", &m, false, "", "").unwrap_err();
    assert!(format!("{e:#}").contains("does not parse"), "{e:#}");
    let e = render_chat(
        "{{ raise_exception('no ' + messages[0].role) }}",
        &m,
        false,
        "",
        "",
    )
    .unwrap_err();
    assert!(format!("{e:#}").contains("no user"), "{e:#}");
    // A template that would run far too long ends in an error instead of hanging.
    let slow = "{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}";
    assert!(render_chat(slow, &m, false, "", "").is_err());
}

#[test]
fn strftime_now_formats_the_local_date() {
    let m = [ChatMessage::new("user", "hi")];
    let got = render_chat("{{ strftime_now('%Y-%m-%d') }}", &m, false, "", "").unwrap();
    let parsed = chrono::NaiveDate::parse_from_str(&got, "%Y-%m-%d");
    assert!(parsed.is_ok(), "{got:?} is not a date");
}
