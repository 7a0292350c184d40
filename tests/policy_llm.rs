//! `check` refuses what a causal-LM run would fail on: a labelled set for a decoder without
//! `as = generation` (it has no classification head), records a model cannot take, label words
//! whose first tokens collide (read with the model's own tokenizer), metrics a data set does
//! not have; each with the file, line and column of the culprit.

use adarank::data::lm::{JsonlKind, LmMetric};
use adarank::policy::{load_str, DataSpec, Diagnostics, Policy};
use std::path::{Path, PathBuf};

struct Models {
    _dir: tempfile::TempDir,
    llama: PathBuf,
    bert: PathBuf,
    data: PathBuf,
}

/// A Llama folder (config.json of model_type llama, the fixture tokenizer), a BERT folder, and
/// the fixture JSONL files.
fn models() -> Models {
    let dir = tempfile::tempdir().unwrap();
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/lmdata");
    let llama = dir.path().join("llama");
    let bert = dir.path().join("bert");
    std::fs::create_dir_all(&llama).unwrap();
    std::fs::create_dir_all(&bert).unwrap();
    // A complete Llama config.json (the checker reads the shape from it): the tiny fixture's,
    // with the lmdata tokenizer's 600-token vocabulary.
    std::fs::write(llama.join("config.json"), LLAMA_CONFIG).unwrap();
    std::fs::copy(
        fixtures.join("tokenizer.json"),
        llama.join("tokenizer.json"),
    )
    .unwrap();
    // MiniLM-L6's config.json (the checker reads the encoder's shape from it).
    std::fs::write(bert.join("config.json"), BERT_CONFIG).unwrap();
    Models {
        llama,
        bert,
        data: fixtures,
        _dir: dir,
    }
}

const BERT_CONFIG: &str = r#"{"architectures": ["BertModel"], "hidden_act": "gelu", "hidden_size": 384, "intermediate_size": 1536, "layer_norm_eps": 1e-12, "max_position_embeddings": 512, "model_type": "bert", "num_attention_heads": 12, "num_hidden_layers": 6, "pad_token_id": 0, "type_vocab_size": 2, "vocab_size": 30522}"#;

const LLAMA_CONFIG: &str = r#"{"architectures": ["LlamaForCausalLM"], "attention_bias": false, "attention_dropout": 0.0, "bos_token_id": 1, "dtype": "float32", "eos_token_id": 2, "head_dim": 8, "hidden_act": "silu", "hidden_size": 32, "initializer_range": 0.02, "intermediate_size": 64, "max_position_embeddings": 256, "mlp_bias": false, "model_type": "llama", "num_attention_heads": 4, "num_hidden_layers": 2, "num_key_value_heads": 2, "pad_token_id": null, "pretraining_tp": 1, "rms_norm_eps": 1e-05, "rope_parameters": {"factor": 8.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0, "original_max_position_embeddings": 64, "rope_theta": 10000.0, "rope_type": "llama3"}, "tie_word_embeddings": true, "transformers_version": "5.25.0", "use_cache": true, "vocab_size": 600}"#;

fn check(model: &Path, data: &str) -> Result<Policy, Diagnostics> {
    let src = format!(
        "experiment t {{\n  model path {{ dir = \"{}\" }}\n  {data}\n  train {{ steps = 10 }}\n}}\n",
        model.display()
    );
    load_str(&src, "t.rank", Path::new("."), &[])
}

/// The error text, which must name `t.rank:3:` (the data line) and contain `want`.
fn refused(model: &Path, data: &str, want: &str) {
    let d = match check(model, data) {
        Ok(_) => panic!("accepted: {data}"),
        Err(d) => format!("{d}"),
    };
    assert!(d.contains("t.rank:3:"), "names the data line: {d}");
    assert!(d.contains(want), "{want:?} in: {d}");
}

const GEN: &str = r#"as = generation, prompt = "Review: {text}\nSentiment:""#;

#[test]
fn a_decoder_reads_labelled_sets_as_generation_only() {
    let m = models();
    refused(&m.llama, "data movies { }", "no classification head");
    refused(&m.llama, "data sst2 { dir = \"x\" }", "as = generation");
    let p = check(
        &m.llama,
        &format!("data movies {{ {GEN}, labels = [\" negative\", \" positive\"] }}"),
    )
    .unwrap_or_else(|d| panic!("{d}"));
    let DataSpec::Movies { subset, .. } = &p.arms[0].data else {
        panic!()
    };
    let g = subset.lm.generation.as_ref().unwrap();
    assert_eq!(g.prompt, "Review: {text}\nSentiment:", "\\n is a newline");
    assert_eq!(g.labels, [" negative", " positive"]);
    assert_eq!(
        adarank::policy::lm::lm_metric(&p.arms[0].data),
        Some(LmMetric::Accuracy)
    );
    // Labelled JSONL too.
    let labelled = m.data.join("labelled.jsonl");
    let l = labelled.display();
    refused(
        &m.llama,
        &format!("data jsonl {{ train = \"{l}\", dev = \"{l}\" }}"),
        "no classification head",
    );
}

#[test]
fn label_words_must_differ_in_their_first_token() {
    let m = models();
    // " positive" and " positively" both begin with the token of " positive"'s first piece.
    refused(
        &m.llama,
        &format!("data movies {{ {GEN}, labels = [\" positive\", \" positively\"] }}"),
        "begin with the same token",
    );
    refused(
        &m.llama,
        &format!("data movies {{ {GEN}, labels = [\" positive\"] }}"),
        "1 label word",
    );
    refused(
        &m.llama,
        "data movies { as = generation, prompt = \"Sentiment:\", labels = [\" a\", \" b\"] }",
        "has no `{text}`",
    );
    refused(
        &m.llama,
        "data movies { prompt = \"{text}\" }",
        "applies only to a labelled set read as generation",
    );
}

#[test]
fn records_the_model_cannot_take_are_refused() {
    let m = models();
    let pc = m.data.join("pc.jsonl");
    let pc = pc.display();
    refused(
        &m.bert,
        &format!("data jsonl {{ train = \"{pc}\", dev = \"{pc}\" }}"),
        "need a pretrained causal LM",
    );
    refused(
        &m.bert,
        &format!("data movies {{ {GEN}, labels = [\" negative\", \" positive\"] }}"),
        "need a pretrained causal LM",
    );
    refused(
        &m.llama,
        &format!("data squad {{ train = \"{pc}\", dev = \"{pc}\" }}"),
        "no span head",
    );
    refused(
        &m.llama,
        &format!(
            "data jsonl {{ train = \"{pc}\", dev = \"{pc}\", {GEN}, labels = [\" a\", \" b\"] }}"
        ),
        "this file holds prompt_completion records",
    );
    let p = check(
        &m.llama,
        &format!("data jsonl {{ train = \"{pc}\", dev = \"{pc}\", truncation = right }}"),
    )
    .unwrap_or_else(|d| panic!("{d}"));
    assert_eq!(
        adarank::policy::lm::lm_metric(&p.arms[0].data),
        Some(LmMetric::Perplexity)
    );
    let p = check(
        &m.llama,
        &format!("data jsonl {{ train = \"{pc}\", dev = \"{pc}\", format = prompt_completion, metric = exact_match, max_new = 8 }}"),
    )
    .unwrap_or_else(|d| panic!("{d}"));
    let DataSpec::Jsonl { subset, .. } = &p.arms[0].data else {
        panic!()
    };
    assert_eq!(subset.lm.format, Some(JsonlKind::PromptCompletion));
    assert_eq!(subset.lm.max_new, Some(8));
}

#[test]
fn a_metric_the_data_set_does_not_have_is_refused() {
    let m = models();
    let text = m.data.join("text.jsonl");
    let t = text.display();
    refused(
        &m.llama,
        &format!("data jsonl {{ train = \"{t}\", dev = \"{t}\", metric = accuracy }}"),
        "no `accuracy` metric",
    );
    refused(
        &m.llama,
        &format!("data jsonl {{ train = \"{t}\", dev = \"{t}\", metric = exact_match }}"),
        "no `exact_match` metric",
    );
    refused(
        &m.bert,
        "data movies { metric = perplexity }",
        "no `perplexity` metric",
    );
    refused(
        &m.llama,
        "data movies { metric = bleu }",
        "not a valid `data.metric`",
    );
    // What each accepts.
    check(
        &m.llama,
        &format!("data jsonl {{ train = \"{t}\", dev = \"{t}\", metric = eval_loss }}"),
    )
    .unwrap_or_else(|d| panic!("{d}"));
    let p = check(&m.bert, "data movies { metric = eval_loss }").unwrap_or_else(|d| panic!("{d}"));
    assert_eq!(
        adarank::experiment::arm::metric_of(&p.arms[0]),
        ("eval_loss", false)
    );
}
