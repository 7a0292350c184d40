//! Llama-family loading from the Hugging Face cache layout, against the tiny checkpoints and
//! the per-tensor sums transformers recorded for them (tests/fixtures/llm, made by
//! scripts/make_llm_fixtures.py): a tied Llama in one f32 file, an untied Qwen2 with q/k/v
//! biases in bf16 shards; and hostile folders made from them.

use adarank::data::hf;
use adarank::data::hf_llm::{self, HfFamily};
use adarank::model::config::RopeScaling;
use adarank::model::Flavour;
use safetensors::{Dtype, SafeTensors};
use serde_json::Value;
use std::path::{Path, PathBuf};

const LLAMA: &str = "adarank-test/tiny-llama";
const QWEN2: &str = "adarank-test/tiny-qwen2";

fn hub() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/llm/hub")
}

fn fixture(name: &str) -> Value {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/fixtures/llm/{name}.json"));
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn snapshot(name: &str) -> PathBuf {
    hf::resolve_in(name, &[hub()]).unwrap()
}

/// A writable copy of a fixture snapshot.
fn copy_of(name: &str) -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(snapshot(name)).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), d.path().join(e.file_name())).unwrap();
    }
    d
}

fn edit_config(dir: &Path, edit: impl FnOnce(&mut serde_json::Map<String, Value>)) {
    let p = dir.join("config.json");
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    edit(v.as_object_mut().unwrap());
    std::fs::write(&p, serde_json::to_string_pretty(&v).unwrap()).unwrap();
}

fn err(dir: &Path) -> String {
    match hf_llm::load_llm(dir) {
        Ok(_) => panic!("{}: loaded", dir.display()),
        Err(e) => format!("{e:#}"),
    }
}

/// Every tensor transformers saw is loaded with its shape, and its sum and sum of squares
/// agree with transformers' (f64 sums of the same f32 values: agreement to rounding).
fn assert_weights_match(p: &adarank::data::pretrained::Pretrained, fx: &Value) {
    let tensors = fx["tensors"].as_object().unwrap();
    let names: Vec<&String> = tensors.keys().collect();
    let loaded: Vec<&String> = p.weights.keys().collect();
    let mut want = names.clone();
    want.sort();
    assert_eq!(loaded, want);
    for (name, t) in tensors {
        let w = &p.weights[name];
        let shape: Vec<usize> = serde_json::from_value(t["shape"].clone()).unwrap();
        assert_eq!(w.shape, shape, "{name}");
        let sum: f64 = w.data.iter().map(|&x| x as f64).sum();
        let sq: f64 = w.data.iter().map(|&x| (x as f64) * (x as f64)).sum();
        let (ws, wq) = (t["sum"].as_f64().unwrap(), t["sum_sq"].as_f64().unwrap());
        assert!(
            (sum - ws).abs() <= 1e-9 * wq.max(1.0),
            "{name}: sum {sum} vs {ws}"
        );
        assert!(
            (sq - wq).abs() <= 1e-9 * wq.max(1.0),
            "{name}: sum_sq {sq} vs {wq}"
        );
    }
}

fn assert_texts_encode(p: &adarank::data::pretrained::Pretrained, fx: &Value) {
    for t in fx["texts"].as_array().unwrap() {
        let text = t["text"].as_str().unwrap();
        let want: Vec<u32> = serde_json::from_value(t["ids"].clone()).unwrap();
        let got = p.tokenizer.inner.encode(text, false).unwrap();
        assert_eq!(got.get_ids(), want.as_slice(), "{text}");
    }
}

#[test]
fn tied_llama_loads_by_hub_name_with_llama3_rope() {
    let dir = snapshot(LLAMA);
    assert!(dir.ends_with("snapshots/585c6a68416dc30b8e4aca921145ca13d72f8634"));
    let p = hf_llm::load_llm(&dir).unwrap();
    let c = &p.config;
    assert_eq!(c.flavour, Flavour::Llama);
    let arch = c.llama.as_ref().unwrap();
    assert_eq!(
        (c.hidden, c.layers, c.heads, c.ffn, c.vocab, c.max_positions),
        (32, 2, 4, 64, 100, 256)
    );
    assert_eq!((arch.kv_heads, c.kv_width()), (2, 16));
    assert!(arch.tie_embeddings && !arch.qkv_bias);
    assert_eq!(arch.rope_theta, 10000.0);
    assert_eq!(
        arch.rope_scaling,
        Some(RopeScaling {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_positions: 64
        })
    );
    assert_eq!(c.ln_eps, 1e-5);
    let fx = fixture("tiny-llama");
    assert_weights_match(&p, &fx);
    assert!(!p.weights.contains_key("lm_head.weight"));
    assert!(p.blocks.is_empty());
    assert_eq!(p.source, dir);
    let t = &p.tokenizer;
    assert_eq!((t.bos, t.eos, t.pad, t.add_bos), (Some(1), 2, 2, true));
    assert!(t.chat_template.as_deref().unwrap().contains("<|im_start|>"));
    assert_texts_encode(&p, &fx);
    assert_eq!(hf_llm::read_llm_config(&dir).unwrap(), p.config);
    assert_eq!(hf_llm::read_model_config(&dir).unwrap(), p.config);
}

#[test]
fn sharded_bf16_qwen2_loads_with_biases_and_its_own_head() {
    let dir = snapshot(QWEN2);
    let p = hf_llm::load_llm(&dir).unwrap();
    let arch = p.config.llama.as_ref().unwrap();
    assert!(arch.qkv_bias && !arch.tie_embeddings);
    assert_eq!(arch.rope_theta, 1.0e6);
    assert_eq!(arch.rope_scaling, None);
    assert_eq!((p.config.ln_eps, p.config.max_positions), (1e-6, 512));
    let fx = fixture("tiny-qwen2");
    assert_weights_match(&p, &fx);
    assert_eq!(p.weights["lm_head.weight"].shape, vec![100, 32]);
    assert_eq!(
        p.weights["model.layers.1.self_attn.k_proj.bias"].shape,
        vec![16]
    );
    assert!(!p
        .weights
        .contains_key("model.layers.0.self_attn.o_proj.bias"));
    let t = &p.tokenizer;
    assert_eq!((t.bos, t.eos, t.pad, t.add_bos), (None, 4, 4, false));
    assert_texts_encode(&p, &fx);
}

#[test]
fn hub_names_resolve_through_hf_hub_cache() {
    // The only test here that reads the environment, so setting it races no other test.
    std::env::set_var("HF_HUB_CACHE", hub());
    let dir = hf::resolve(QWEN2).unwrap();
    assert_eq!(dir, snapshot(QWEN2));
    assert!(hf_llm::load_llm(&dir).is_ok());
    let e = format!("{:#}", hf::resolve("adarank-test/absent").unwrap_err());
    assert!(
        e.contains("models--adarank-test--absent")
            && e.contains("huggingface-cli download adarank-test/absent")
            && !e.contains("MiniLM"),
        "{e}"
    );
}

#[test]
fn f16_weights_are_widened() {
    let d = copy_of(LLAMA);
    let path = d.path().join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut halves: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    let mut want = std::collections::BTreeMap::new();
    for (name, view) in st.iter() {
        let vals: Vec<half::f16> = view
            .data()
            .chunks_exact(4)
            .map(|c| half::f16::from_f32(f32::from_le_bytes([c[0], c[1], c[2], c[3]])))
            .collect();
        want.insert(
            name.to_string(),
            vals.iter().map(|h| h.to_f32()).collect::<Vec<f32>>(),
        );
        let raw = vals.iter().flat_map(|h| h.to_le_bytes()).collect();
        halves.push((name.to_string(), view.shape().to_vec(), raw));
    }
    let views: Vec<(String, safetensors::tensor::TensorView)> = halves
        .iter()
        .map(|(n, s, b)| {
            let v = safetensors::tensor::TensorView::new(Dtype::F16, s.clone(), b).unwrap();
            (n.clone(), v)
        })
        .collect();
    std::fs::write(&path, safetensors::serialize(views, None).unwrap()).unwrap();
    let p = hf_llm::load_llm(d.path()).unwrap();
    for (name, vals) in want {
        assert_eq!(p.weights[&name].data, vals, "{name}");
    }
}

#[test]
fn a_missing_shard_is_named() {
    let d = copy_of(QWEN2);
    std::fs::remove_file(d.path().join("model-00002-of-00003.safetensors")).unwrap();
    let e = err(d.path());
    assert!(
        e.contains("model-00002-of-00003.safetensors")
            && e.contains("missing")
            && e.contains("model.safetensors.index.json"),
        "{e}"
    );
}

#[test]
fn a_shard_outside_the_folder_is_refused() {
    let d = copy_of(QWEN2);
    let p = d.path().join("model.safetensors.index.json");
    let text = std::fs::read_to_string(&p).unwrap();
    std::fs::write(
        &p,
        text.replacen("\"model-00001-of-00003", "\"../model-00001-of-00003", 1),
    )
    .unwrap();
    let e = err(d.path());
    assert!(e.contains("not a plain file name"), "{e}");
}

#[test]
fn a_tensor_of_the_wrong_shape_is_named() {
    let d = copy_of(LLAMA);
    edit_config(d.path(), |c| {
        c.insert("intermediate_size".into(), 48.into());
    });
    let e = err(d.path());
    assert!(
        e.contains("model.safetensors")
            && e.contains("mlp.")
            && ((e.contains("[64, 32]") && e.contains("[48, 32]"))
                || (e.contains("[32, 64]") && e.contains("[32, 48]"))),
        "{e}"
    );
}

#[test]
fn a_missing_tensor_is_named() {
    let d = copy_of(LLAMA);
    // An untied config needs lm_head.weight, which a tied checkpoint does not store.
    edit_config(d.path(), |c| {
        c.insert("tie_word_embeddings".into(), false.into());
    });
    let e = err(d.path());
    assert!(
        e.contains("missing tensor lm_head.weight") && e.contains("model.safetensors"),
        "{e}"
    );
    // The sharded form names the shard the index puts it in.
    let d = copy_of(QWEN2);
    edit_config(d.path(), |c| {
        c.insert("num_hidden_layers".into(), 3.into());
    });
    let e = err(d.path());
    assert!(e.contains("missing tensor model.layers.2."), "{e}");
}

#[test]
fn unknown_architectures_are_named_with_what_loads() {
    for (arch, model_type) in [
        ("GPT2LMHeadModel", "gpt2"),
        ("T5ForConditionalGeneration", "t5"),
    ] {
        let d = copy_of(LLAMA);
        edit_config(d.path(), |c| {
            c.insert("architectures".into(), serde_json::json!([arch]));
            c.insert("model_type".into(), model_type.into());
        });
        for e in [
            err(d.path()),
            format!("{:#}", hf_llm::read_model_config(d.path()).unwrap_err()),
            format!("{:#}", hf::load_dir(d.path()).err().unwrap()),
        ] {
            assert!(
                e.contains(arch)
                    && e.contains("config.json")
                    && e.contains("LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM"),
                "{e}"
            );
        }
    }
}

#[test]
fn unsupported_settings_are_refused_with_the_reason() {
    let cases: Vec<(&str, Value, &str)> = vec![
        ("head_dim", 16.into(), "head_dim 16 differs"),
        (
            "rope_parameters",
            serde_json::json!({"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e4}),
            "\"yarn\" is not supported",
        ),
        ("hidden_act", "gelu".into(), "hidden_act \"gelu\""),
        ("num_key_value_heads", 3.into(), "does not divide"),
        ("attention_bias", true.into(), "attention_bias = true"),
        ("hidden_size", (1u64 << 40).into(), "hidden_size"),
    ];
    for (key, value, needle) in cases {
        let d = copy_of(LLAMA);
        edit_config(d.path(), |c| {
            c.insert(key.into(), value.clone());
        });
        let e = format!("{:#}", hf_llm::read_llm_config(d.path()).unwrap_err());
        assert!(
            e.contains(needle) && e.contains("config.json"),
            "{key}: {e}"
        );
    }
}

#[test]
fn older_config_forms_and_mistral_windows_load() {
    let d = copy_of(LLAMA);
    edit_config(d.path(), |c| {
        c.remove("rope_parameters");
        c.remove("architectures");
        c.remove("num_key_value_heads");
        c.insert("model_type".into(), "mistral".into());
        c.insert("rope_theta".into(), 5e5.into());
        c.insert(
            "rope_scaling".into(),
            serde_json::json!({"type": "llama3", "factor": 2.0, "low_freq_factor": 1.0,
                "high_freq_factor": 4.0, "original_max_position_embeddings": 128}),
        );
        c.insert("sliding_window".into(), 100.into());
    });
    let path = d.path().join("config.json");
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(
        hf_llm::family_of(&path, &v).unwrap(),
        HfFamily::Llama { qkv_bias: false }
    );
    let c = hf_llm::read_llm_config(d.path()).unwrap();
    let a = c.llama.unwrap();
    // Without num_key_value_heads every head has its own k/v.
    assert_eq!((a.kv_heads, a.rope_theta), (4, 5e5));
    assert_eq!(a.rope_scaling.unwrap().original_max_positions, 128);
    // Full attention equals the sliding window only up to the window.
    assert_eq!(c.max_positions, 100);
}

#[test]
fn a_tokenizer_larger_than_the_embedding_is_refused() {
    let d = copy_of(LLAMA);
    edit_config(d.path(), |c| {
        c.insert("vocab_size".into(), 90.into());
    });
    let e = err(d.path());
    assert!(
        e.contains("tokenizer.json") && e.contains("beyond the 90 rows"),
        "{e}"
    );
    let d = copy_of(LLAMA);
    std::fs::remove_file(d.path().join("tokenizer.json")).unwrap();
    let e = err(d.path());
    assert!(e.contains("tokenizer.json: missing"), "{e}");
}

#[test]
fn the_bert_loader_names_a_causal_lm() {
    let e = format!("{:#}", hf::load_dir(&snapshot(LLAMA)).err().unwrap());
    assert!(
        e.contains("a causal LM (LlamaForCausalLM)") && !e.contains("invalid type"),
        "{e}"
    );
}
