//! `adarank generate` with the base SmolLM2 (the fetched GGUF) against transformers' greedy
//! generations of the same chat prompts (the fixture of `scripts/make_llm_fixtures.py`): the
//! prompt the chat template gives and the tokens generated, id for id.

use serde_json::Value;
use std::path::Path;
use std::process::Command;

fn ids_after(out: &str, label: &str) -> Vec<u32> {
    let line = out
        .lines()
        .find_map(|l| l.strip_prefix(label))
        .unwrap_or_else(|| panic!("no `{label}` line in:\n{out}"));
    line.trim()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| s.trim().parse().unwrap())
        .collect()
}

fn ids_of(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

#[test]
fn generate_reproduces_transformers_greedy_chat_answers() {
    if adarank::testkit::require_smollm2("cli_generate").is_none() {
        return;
    }
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/llm/smollm2.json");
    let f: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    for g in f["generations"].as_array().unwrap() {
        let msgs = g["messages"].as_array().unwrap();
        let user = msgs.last().unwrap()["content"].as_str().unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_adarank"));
        cmd.args(["generate", user, "--model", "smollm2-135m-instruct"])
            .args(["--max-new", "20", "--ids"]);
        if msgs.len() == 2 {
            cmd.args(["--system", msgs[0]["content"].as_str().unwrap()]);
        }
        let out = cmd.output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            ids_after(&stdout, "prompt ids:"),
            ids_of(&g["prompt_ids"]),
            "the chat template's prompt for {user:?}"
        );
        assert_eq!(
            ids_after(&stdout, "generated ids:"),
            ids_of(&g["generated_ids"]),
            "greedy answer to {user:?}"
        );
    }
}

#[test]
fn generate_without_a_model_says_what_to_give() {
    let out = Command::new(env!("CARGO_BIN_EXE_adarank"))
        .args(["generate", "hello"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--model") && err.contains("--cell"), "{err}");
}
