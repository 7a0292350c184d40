//! GGUF loading against transformers' own loading of the same files
//! (tests/fixtures/llm/, written by scripts/make_gguf_fixtures.py):
//! - a tiny 2-layer Llama written with gguf-py (every storage type we read, Q and K rows
//!   permuted as llama.cpp's converter does, an untied head): every tensor bit for bit;
//! - SmolLM2-135M-Instruct (needs scripts/fetch-assets): config, every name and shape, q/k/v
//!   rows of two layers (whole rows and a checksum of each row), checksums of the other kinds;
//! - hostile files (truncated, bad magic, unknown or unsupported type, wrong architecture,
//!   absurd counts): an error naming the file, never a panic.

use adarank::backend::dequantize;
use adarank::data::gguf;
use adarank::model::Flavour;
use adarank::testkit;
use serde_json::Value;
use std::path::{Path, PathBuf};

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/llm")
}

fn fixture(name: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixture_dir().join(name)).unwrap()).unwrap()
}

/// Standard base64 (the fixture's f32 bytes).
fn base64(s: &str) -> Vec<u8> {
    let val = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => panic!("not base64: {c}"),
    };
    let bytes: Vec<u8> = s.bytes().filter(|&c| c != b'=').collect();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let mut acc = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            acc |= (val(c) as u32) << (18 - 6 * i);
        }
        out.extend_from_slice(&acc.to_be_bytes()[1..chunk.len()]);
    }
    out
}

fn f32s(b64: &Value) -> Vec<f32> {
    base64(b64.as_str().unwrap())
        .chunks_exact(4)
        .map(|w| f32::from_le_bytes([w[0], w[1], w[2], w[3]]))
        .collect()
}

fn usizes(v: &Value) -> Vec<usize> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as usize)
        .collect()
}

/// The config fields transformers reports, against ours.
fn check_config(cfg: &adarank::model::ModelConfig, want: &Value) {
    let l = cfg.llama.as_ref().unwrap();
    assert_eq!(cfg.flavour, Flavour::Llama);
    assert_eq!(cfg.vocab as u64, want["vocab_size"].as_u64().unwrap());
    assert_eq!(cfg.hidden as u64, want["hidden_size"].as_u64().unwrap());
    assert_eq!(cfg.ffn as u64, want["intermediate_size"].as_u64().unwrap());
    assert_eq!(
        cfg.layers as u64,
        want["num_hidden_layers"].as_u64().unwrap()
    );
    assert_eq!(
        cfg.heads as u64,
        want["num_attention_heads"].as_u64().unwrap()
    );
    assert_eq!(
        l.kv_heads as u64,
        want["num_key_value_heads"].as_u64().unwrap()
    );
    assert_eq!(
        cfg.max_positions as u64,
        want["max_position_embeddings"].as_u64().unwrap()
    );
    assert_eq!(
        cfg.ln_eps as f64,
        want["rms_norm_eps"].as_f64().unwrap() as f32 as f64
    );
    assert_eq!(l.rope_theta as f64, want["rope_theta"].as_f64().unwrap());
    assert_eq!(
        l.tie_embeddings,
        want["tie_word_embeddings"].as_bool().unwrap()
    );
    assert!(!l.qkv_bias && l.rope_scaling.is_none());
    assert_eq!(cfg.type_vocab, 0);
}

#[test]
fn tiny_llama_every_tensor_bit_for_bit() {
    let path = fixture_dir().join("tiny_llama.gguf");
    let fx = fixture("gguf_tiny_weights.json");
    let p = gguf::load(&path).unwrap();
    check_config(&p.config, &fx["config"]);
    assert_eq!(gguf::read_config(&path).unwrap(), p.config);
    let want = fx["tensors"].as_object().unwrap();
    let names: Vec<&String> = p.weights.keys().collect();
    assert_eq!(names, want.keys().collect::<Vec<_>>());
    for (name, w) in want {
        let got = &p.weights[name];
        assert_eq!(got.shape, usizes(&w["shape"]), "{name}");
        let want = f32s(&w["f32"]);
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert!(
            bits(&got.data) == bits(&want),
            "{name} differs from transformers"
        );
    }
    // The block copies: same rows in the same order (the un-permutation moved whole blocks).
    // Layer 0 stores q as Q4_1 and k as Q4_0, layer 1 q as Q8_0; the embedding and head are Q8_0.
    for name in [
        "model.layers.0.self_attn.q_proj.weight",
        "model.layers.0.self_attn.k_proj.weight",
        "model.layers.1.self_attn.q_proj.weight",
        "model.layers.1.self_attn.v_proj.weight",
        "model.layers.0.mlp.down_proj.weight",
        "model.embed_tokens.weight",
        "lm_head.weight",
    ] {
        let b = &p.blocks[name];
        let w = &p.weights[name];
        assert_eq!(b.shape.to_vec(), w.shape, "{name}");
        let deq = dequantize(b.dtype, &b.bytes, w.data.len()).unwrap();
        assert_eq!(deq, w.data, "{name}: blocks and f32 disagree");
    }
    // f32/f16/bf16 tensors are not block formats.
    assert!(!p
        .blocks
        .contains_key("model.layers.0.self_attn.v_proj.weight"));
    assert!(!p
        .blocks
        .contains_key("model.layers.0.input_layernorm.weight"));
    assert_eq!(p.blocks.len(), 10);
}

#[test]
fn tiny_llama_tokenizer_from_metadata() {
    let p = gguf::load(&fixture_dir().join("tiny_llama.gguf")).unwrap();
    let t = &p.tokenizer;
    assert_eq!((t.bos, t.eos, t.pad, t.add_bos), (Some(1), 2, 2, false));
    assert!(t.chat_template.is_none());
    // "the" merges to one token; control tokens stay whole; bytes round-trip.
    let enc = t
        .inner
        .encode("<|im_start|> the 12<|im_end|>", true)
        .unwrap();
    let toks = enc.get_tokens();
    assert_eq!(toks, ["<|im_start|>", "Ġthe", "Ġ", "1", "2", "<|im_end|>"]);
    assert_eq!(
        t.inner.decode(enc.get_ids(), false).unwrap(),
        "<|im_start|> the 12<|im_end|>"
    );
}

#[test]
fn smollm2_matches_transformers() {
    let Some(path) = testkit::require_smollm2("smollm2_matches_transformers") else {
        return;
    };
    let fx = fixture("gguf_smollm2_weights.json");
    let p = gguf::load(&path).unwrap();
    check_config(&p.config, &fx["config"]);
    let shapes = fx["shapes"].as_object().unwrap();
    assert_eq!(p.weights.len(), shapes.len());
    for (name, s) in shapes {
        assert_eq!(p.weights[name].shape, usizes(s), "{name}");
    }
    for (name, m) in fx["rows"].as_object().unwrap() {
        let w = &p.weights[name];
        let cols = w.shape[1];
        for (k, r) in usizes(&m["rows"]).into_iter().enumerate() {
            let want = f32s(&m["values"][k]);
            assert!(
                w.data[r * cols..(r + 1) * cols] == want[..],
                "{name} row {r}"
            );
        }
        // Every row by its checksums: a row out of place shows here.
        for (r, row) in w.data.chunks(cols).enumerate() {
            let sum: f64 = row.iter().map(|&x| x as f64).sum();
            let wsum: f64 = row
                .iter()
                .enumerate()
                .map(|(c, &x)| x as f64 * (c + 1) as f64)
                .sum();
            let (s0, w0) = (
                m["row_sum"][r].as_f64().unwrap(),
                m["row_wsum"][r].as_f64().unwrap(),
            );
            assert!(
                (sum - s0).abs() <= 1e-9 * (1.0 + s0.abs()),
                "{name} row {r} sum"
            );
            assert!(
                (wsum - w0).abs() <= 1e-9 * (1.0 + w0.abs()),
                "{name} row {r} weighted sum"
            );
        }
    }
    for (name, c) in fx["whole"].as_object().unwrap() {
        let d = &p.weights[name].data;
        let sum: f64 = d.iter().map(|&x| x as f64).sum();
        let sumsq: f64 = d.iter().map(|&x| x as f64 * x as f64).sum();
        let wsum: f64 = d
            .iter()
            .enumerate()
            .map(|(i, &x)| x as f64 * ((i + 1) % 1009) as f64)
            .sum();
        for (got, key) in [(sum, "sum"), (sumsq, "sumsq"), (wsum, "wsum")] {
            let want = c[key].as_f64().unwrap();
            assert!(
                (got - want).abs() <= 1e-9 * (1.0 + want.abs()),
                "{name} {key}: {got} vs {want}"
            );
        }
    }
    // 210 Q4_1 matrices and the Q8_0 embedding keep their blocks; the q rows in them agree.
    assert_eq!(p.blocks.len(), 211);
    let q = "model.layers.0.self_attn.q_proj.weight";
    let deq = dequantize(p.blocks[q].dtype, &p.blocks[q].bytes, 576 * 576).unwrap();
    assert_eq!(deq, p.weights[q].data);
    assert!(p.tokenizer.chat_template.is_some());
}

// ---------------------------------------------------------------- hostile files

fn tiny_bytes() -> Vec<u8> {
    std::fs::read(fixture_dir().join("tiny_llama.gguf")).unwrap()
}

/// Writes `bytes` to a temp file and loads it: must be an error naming the file, and every
/// loader entry point must agree that it is an error.
fn load_err(bytes: &[u8], what: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hostile.gguf");
    std::fs::write(&path, bytes).unwrap();
    let e = match gguf::load(&path) {
        Ok(_) => panic!("{what}: loaded"),
        Err(e) => format!("{e:#}"),
    };
    assert!(
        e.contains("hostile.gguf"),
        "{what}: {e} does not name the file"
    );
    e
}

fn find(hay: &[u8], needle: &[u8]) -> usize {
    hay.windows(needle.len()).position(|w| w == needle).unwrap()
}

/// Byte offset of the type field of tensor `name` in the tensor table.
fn type_field(bytes: &[u8], name: &str) -> usize {
    let p = find(bytes, name.as_bytes()) + name.len();
    let ndim = u32::from_le_bytes(bytes[p..p + 4].try_into().unwrap()) as usize;
    p + 4 + 8 * ndim
}

#[test]
fn truncated_files_are_errors() {
    let b = tiny_bytes();
    // gguf-py pads the file to its 32-byte alignment after the last tensor (54,226 bytes of
    // content in 54,240): cutting only padding leaves every tensor whole, so the cuts here
    // reach into the content, down to its last byte.
    let end = 54_226;
    let cuts = [
        0,
        3,
        4,
        8,
        23,
        24,
        100,
        1000,
        b.len() / 2,
        end - 100,
        end - 1,
    ];
    for len in cuts {
        load_err(&b[..len], &format!("truncated to {len}"));
    }
    assert!(gguf::load(&fixture_dir().join("tiny_llama.gguf")).is_ok());
}

#[test]
fn bad_magic_and_absurd_counts_are_errors() {
    let mut b = tiny_bytes();
    b[..4].copy_from_slice(b"GGUG");
    load_err(&b, "bad magic");
    let mut b = tiny_bytes();
    b[4..8].copy_from_slice(&99u32.to_le_bytes());
    load_err(&b, "version 99");
    for (at, what) in [(8, "tensor count"), (16, "metadata count")] {
        let mut b = tiny_bytes();
        b[at..at + 8].copy_from_slice(&u64::MAX.to_le_bytes());
        load_err(&b, what);
    }
    // A string length that runs past the end of the file.
    let mut b = tiny_bytes();
    let key = find(&b, b"general.architecture");
    b[key - 8..key].copy_from_slice(&(u64::MAX / 2).to_le_bytes());
    load_err(&b, "huge key length");
}

#[test]
fn unknown_and_unsupported_types_are_errors() {
    let mut b = tiny_bytes();
    let at = type_field(&b, "blk.0.attn_norm.weight");
    b[at..at + 4].copy_from_slice(&99u32.to_le_bytes());
    load_err(&b, "type 99");
    // I32 (26): 32 values of 4 bytes, the norm's own size, so only the type is wrong.
    let mut b = tiny_bytes();
    let at = type_field(&b, "blk.0.attn_norm.weight");
    b[at..at + 4].copy_from_slice(&26u32.to_le_bytes());
    let e = load_err(&b, "type I32");
    assert!(
        e.contains("blk.0.attn_norm.weight") && e.contains("I32"),
        "{e}"
    );
}

#[test]
fn wrong_architecture_is_named() {
    let mut b = tiny_bytes();
    let at = find(&b, b"general.architecture") + "general.architecture".len() + 4 + 8;
    assert_eq!(&b[at..at + 5], b"llama");
    b[at..at + 5].copy_from_slice(b"mamba");
    let e = load_err(&b, "architecture mamba");
    assert!(e.contains("\"mamba\""), "{e}");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.gguf");
    std::fs::write(&path, &b).unwrap();
    assert!(gguf::read_config(&path).is_err());
}

#[test]
fn wrong_shape_is_named() {
    // The metadata says the feed-forward is 64 wide; make it 128 and its tensors disagree.
    let mut b = tiny_bytes();
    let key = b"llama.feed_forward_length";
    let at = find(&b, key) + key.len() + 4;
    assert_eq!(u32::from_le_bytes(b[at..at + 4].try_into().unwrap()), 64);
    b[at..at + 4].copy_from_slice(&128u32.to_le_bytes());
    let e = load_err(&b, "feed-forward length 128");
    assert!(e.contains("dimensions"), "{e}");
}

#[test]
fn missing_file_is_named() {
    let Err(e) = gguf::load(Path::new("/nonexistent/model.gguf")) else {
        panic!("loaded a file that does not exist");
    };
    assert!(format!("{e:#}").contains("/nonexistent/model.gguf"));
}
