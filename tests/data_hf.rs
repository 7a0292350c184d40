//! Checkpoint loading: a tiny BERT written here as safetensors (no assets needed), the HF cache
//! layout, and the real all-MiniLM-L6-v2 (needs the assets).

use adarank::data::assets;
use adarank::data::hf::{self, BertConfig, Pooling};
use adarank::testkit;
use safetensors::Dtype;
use std::path::Path;

const TINY_CONFIG: &str = r#"{"architectures": ["BertModel"], "model_type": "bert",
  "vocab_size": 11, "hidden_size": 4, "num_hidden_layers": 1, "num_attention_heads": 2,
  "intermediate_size": 8, "max_position_embeddings": 6, "type_vocab_size": 2,
  "layer_norm_eps": 1e-12, "hidden_act": "gelu"}"#;

/// Tensors of the tiny BERT, value = index within the tensor + 1000·(tensor number), so a test
/// can tell which bytes landed where.
fn tiny_tensors(cfg: &BertConfig) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    cfg.expected_tensors()
        .into_iter()
        .enumerate()
        .map(|(k, (n, s))| {
            let len = s.iter().product::<usize>();
            let data = (0..len).map(|i| (k * 1000 + i) as f32).collect();
            (n, s, data)
        })
        .collect()
}

/// Write tensors (name, shape, f32 data, dtype) as model.safetensors in `dir`.
fn write_st(dir: &Path, tensors: &[(String, Vec<usize>, Vec<u8>, Dtype)]) {
    let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
        .iter()
        .map(|(n, s, b, d)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap(),
            )
        })
        .collect();
    let bytes = safetensors::serialize(views.iter().map(|(n, v)| (n, v)), None).unwrap();
    std::fs::write(dir.join("model.safetensors"), bytes).unwrap();
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

#[test]
fn tiny_bert_with_prefix_f16_and_extras() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("config.json"), TINY_CONFIG).unwrap();
    let cfg = BertConfig::from_file(&d.path().join("config.json")).unwrap();
    let mut ts: Vec<(String, Vec<usize>, Vec<u8>, Dtype)> = tiny_tensors(&cfg)
        .into_iter()
        .map(|(n, s, v)| (format!("bert.{n}"), s, f32_bytes(&v), Dtype::F32))
        .collect();
    // One tensor stored in f16 (values exactly representable), plus a pooler and position ids.
    let ln = ts
        .iter_mut()
        .find(|t| t.0 == "bert.embeddings.LayerNorm.bias")
        .unwrap();
    ln.2 = [1.5f32, -2.0, 0.25, 3.0]
        .iter()
        .flat_map(|x| half::f16::from_f32(*x).to_le_bytes())
        .collect();
    ln.3 = Dtype::F16;
    ts.push((
        "bert.pooler.dense.bias".into(),
        vec![4],
        f32_bytes(&[0.0; 4]),
        Dtype::F32,
    ));
    ts.push((
        "bert.embeddings.position_ids".into(),
        vec![1, 6],
        (0..6i64).flat_map(|x| x.to_le_bytes()).collect(),
        Dtype::I64,
    ));
    write_st(d.path(), &ts);
    let (w, ignored) = hf::load_weights(&d.path().join("model.safetensors"), &cfg).unwrap();
    // The pooler is kept (for `pooling = cls`), without its `bert.` prefix.
    assert_eq!(w.len(), cfg.expected_tensors().len() + 1);
    assert_eq!(w["pooler.dense.bias"].shape, vec![4]);
    assert_eq!(ignored, vec!["bert.embeddings.position_ids"]);
    assert_eq!(
        w["embeddings.LayerNorm.bias"].data,
        vec![1.5, -2.0, 0.25, 3.0]
    );
    let q = &w["encoder.layer.0.attention.self.query.weight"];
    assert_eq!(q.shape, vec![4, 4]);
    let k = cfg
        .expected_tensors()
        .iter()
        .position(|(n, _)| n == "encoder.layer.0.attention.self.query.weight")
        .unwrap();
    assert_eq!(q.data[5], (k * 1000 + 5) as f32);
    let total: usize = w.values().map(|t| t.data.len()).sum();
    assert_eq!(
        total,
        cfg.encoder_params() + 4,
        "the encoder and the pooler's bias"
    );
}

#[test]
fn tiny_bert_errors_name_the_tensor() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("config.json"), TINY_CONFIG).unwrap();
    let cfg = BertConfig::from_file(&d.path().join("config.json")).unwrap();
    let base: Vec<(String, Vec<usize>, Vec<u8>, Dtype)> = tiny_tensors(&cfg)
        .into_iter()
        .map(|(n, s, v)| (n, s, f32_bytes(&v), Dtype::F32))
        .collect();
    let path = d.path().join("model.safetensors");
    let check = |ts: &[(String, Vec<usize>, Vec<u8>, Dtype)], want: &str| {
        write_st(d.path(), ts);
        let e = hf::load_weights(&path, &cfg).unwrap_err().to_string();
        assert!(
            e.contains("model.safetensors") && e.contains(want),
            "{e} (want {want})"
        );
    };
    let mut missing = base.clone();
    missing.retain(|t| t.0 != "encoder.layer.0.output.dense.bias");
    check(&missing, "missing tensor encoder.layer.0.output.dense.bias");
    let mut shape = base.clone();
    shape[0].1 = vec![4, 11];
    check(&shape, "shape [4, 11], config.json implies [11, 4]");
    let mut dtype = base.clone();
    dtype[3].2 = vec![0; 4 * 8];
    dtype[3].3 = Dtype::I64;
    check(&dtype, "dtype I64");

    std::fs::write(
        d.path().join("config.json"),
        TINY_CONFIG.replace("\"gelu\"", "\"relu\""),
    )
    .unwrap();
    let e = BertConfig::from_file(&d.path().join("config.json"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("config.json") && e.contains("hidden_act \"relu\""),
        "{e}"
    );
    let e = hf::load_dir(&d.path().join("nowhere"))
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("config.json: missing") && e.contains("adarank fetch"),
        "{e}"
    );
}

#[test]
fn hub_names_resolve_through_the_cache_layout() {
    let d = tempfile::tempdir().unwrap();
    let repo = d.path().join("hub/models--acme--tiny-bert");
    for rev in ["aaa", "bbb"] {
        std::fs::create_dir_all(repo.join("snapshots").join(rev)).unwrap();
        std::fs::write(
            repo.join("snapshots").join(rev).join("config.json"),
            TINY_CONFIG,
        )
        .unwrap();
    }
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), "aaa\n").unwrap();
    let roots = vec![d.path().join("empty"), d.path().join("hub")];
    let got = hf::resolve_in("acme/tiny-bert", &roots).unwrap();
    assert_eq!(got, repo.join("snapshots/aaa"));
    let e = hf::resolve_in("acme/other", &roots)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("models--acme--other") && e.contains("huggingface-cli download acme/other"),
        "{e}"
    );
    let e = hf::resolve_in("not a model", &roots)
        .unwrap_err()
        .to_string();
    assert!(e.contains("ORG/NAME"), "{e}");
}

#[test]
fn pooling_from_sentence_transformers_config() {
    let d = tempfile::tempdir().unwrap();
    assert_eq!(hf::read_pooling(d.path()).unwrap(), Pooling::Cls);
    std::fs::write(
        d.path().join("modules.json"),
        r#"[{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]"#,
    )
    .unwrap();
    std::fs::create_dir(d.path().join("1_Pooling")).unwrap();
    let pool = |body: &str| {
        std::fs::write(d.path().join("1_Pooling/config.json"), body).unwrap();
        hf::read_pooling(d.path())
    };
    assert_eq!(
        pool(r#"{"pooling_mode_cls_token": true, "pooling_mode_mean_tokens": false}"#).unwrap(),
        Pooling::Cls
    );
    let e = pool(r#"{"pooling_mode_max_tokens": true}"#)
        .unwrap_err()
        .to_string();
    assert!(e.contains("1_Pooling/config.json"), "{e}");
}

#[test]
fn minilm_loads_by_hub_name() {
    if !testkit::require_assets("minilm_loads_by_hub_name") {
        return;
    }
    let ck = hf::load(assets::MINILM).unwrap();
    let c = &ck.config;
    assert_eq!(
        (
            c.vocab_size,
            c.hidden_size,
            c.num_hidden_layers,
            c.num_attention_heads
        ),
        (30522, 384, 6, 12)
    );
    assert_eq!(
        (c.intermediate_size, c.max_position_embeddings),
        (1536, 512)
    );
    assert_eq!(ck.pooling, Pooling::Mean);
    assert_eq!(ck.tokenizer.max_len(), 256);
    // 104 tensors in the file: 101 encoder tensors, the pooler's two and the I64 position ids.
    assert_eq!(ck.weights.len(), 103);
    assert_eq!(ck.ignored, vec!["embeddings.position_ids"]);
    // 22,713,728 values in the file = 22,565,376 encoder + 147,840 pooler + 512 position ids.
    let n: usize = ck.weights.values().map(|t| t.data.len()).sum();
    assert_eq!(n, 22_565_376 + 147_840);
    assert_eq!(n, c.encoder_params() + 384 * 384 + 384);
    let ln = &ck.weights["encoder.layer.5.output.LayerNorm.weight"].data;
    assert!(ln.iter().all(|x| x.is_finite()) && ln.iter().any(|&x| x != 1.0));
}
