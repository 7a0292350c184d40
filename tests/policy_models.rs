//! `model hf`, `model path` and `model gguf` for Llama-family models: `check` reads the model's
//! config.json (or knows its shape before the download), refuses what it cannot load with
//! file:line:col, budgets parameters by the real (GQA) module shapes, and `plan` costs them.
//! The environment points the HF cache at tests/fixtures/llm/hub and the assets folder at an
//! empty directory, the same values in every test of this file.

use adarank::adapter::ModuleKind;
use adarank::experiment::costs::{self, memory, pass_flops, BatchShape};
use adarank::model::{Flavour, Head};
use adarank::policy::{self, Diagnostics, GgufSpec, ModelSpec, Policy};
use std::path::{Path, PathBuf};
use std::sync::Once;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/llm")
}

fn env() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let empty =
            std::env::temp_dir().join(format!("adarank-empty-assets-{}", std::process::id()));
        std::fs::create_dir_all(&empty).unwrap();
        std::env::set_var("ADARANK_ASSETS", &empty);
        std::env::set_var("HF_HUB_CACHE", fixtures().join("hub"));
        // No user cache: HF_HOME's hub would be searched after HF_HUB_CACHE.
        std::env::set_var("HF_HOME", empty.join("hf-home"));
    });
}

fn load(model: &str, lora: &str) -> Result<Policy, Diagnostics> {
    env();
    // A causal LM reads the movie sentences as generation; MiniLM as a classifier.
    let data = if model.contains("MiniLM") {
        "data movies {}"
    } else {
        "data movies { as = generation, prompt = \"Review: {text}\\nSentiment:\", labels = [\" negative\", \" positive\"] }"
    };
    let src = format!(
        "experiment m {{\n  {model}\n  {data}\n  lora {{ {lora} }}\n  train {{ steps = 10, batch = 4 }}\n  seeds = [1]\n}}\n"
    );
    policy::load_str(&src, "m.rank", &fixtures(), &[])
}

fn text(r: Result<Policy, Diagnostics>) -> String {
    match r {
        Ok(p) => panic!("checked: {:?}", p.arms[0].model),
        Err(e) => e.to_string(),
    }
}

const TINY_QWEN2: &str = "model hf { name = \"adarank-test/tiny-qwen2\" }";
const SMOL_HF: &str = "model hf { name = \"HuggingFaceTB/SmolLM2-135M-Instruct\" }";
const SMOL_GGUF: &str = "model gguf { name = \"smollm2-135m-instruct\" }";

#[test]
fn a_cached_llm_checks_with_its_gate_and_exact_gqa_budget() {
    // tiny-qwen2: hidden 32, kv width 16, ffn 64, 2 layers. One rank of q, k, v, gate costs
    // 64 + 48 + 48 + 96 = 256 per layer: 512..=4096 for ranks 1..=8.
    let ok = "targets = [q, k, v, gate], max_rank = 8, param_budget = 4096";
    let p = load(TINY_QWEN2, ok).unwrap();
    assert!(
        matches!(&p.arms[0].model, ModelSpec::Hf { name, .. } if name == "adarank-test/tiny-qwen2")
    );
    let e = text(load(TINY_QWEN2, &ok.replace("4096", "4097")));
    assert!(e.contains("between 512 and 4096"), "{e}");
    // `up` and `down` are the Llama names of ffn_in and ffn_out.
    assert!(load(TINY_QWEN2, "targets = [up, down]").is_ok());
}

#[test]
fn a_local_llm_folder_checks() {
    let dir =
        "hub/models--adarank-test--tiny-llama/snapshots/585c6a68416dc30b8e4aca921145ca13d72f8634";
    let model = format!("model path {{ dir = \"{dir}\" }}");
    assert!(load(&model, "targets = [gate], layers = [1]").is_ok());
    let e = text(load(&model, "targets = [gate], layers = [2]"));
    assert!(e.contains("the model has 2 layers"), "{e}");
}

#[test]
fn smollm2_checks_before_the_download_by_hub_name_and_gguf_name() {
    for model in [SMOL_HF, SMOL_GGUF] {
        assert!(load(model, "targets = [q, k, v, o, gate, up, down]").is_ok());
        let e = text(load(model, "layers = [30]"));
        assert!(e.contains("the model has 30 layers"), "{model}: {e}");
        // 30 layers × (q 1152 + v 768) × ranks 1..=8.
        let e = text(load(
            model,
            "targets = [q, v], max_rank = 8, param_budget = 460801",
        ));
        assert!(e.contains("between 57600 and 460800"), "{model}: {e}");
    }
}

#[test]
fn an_unknown_model_that_is_not_here_says_where_it_looked() {
    let e = text(load(
        "model hf { name = \"acme/absent-7b\" }",
        "targets = [q]",
    ));
    assert!(
        e.contains("m.rank:2:")
            && e.contains("is not on this machine")
            && e.contains("models--acme--absent-7b")
            && e.contains("huggingface-cli download acme/absent-7b"),
        "{e}"
    );
}

#[test]
fn gate_is_refused_on_bert_shaped_models() {
    let e = text(load(
        "model hf { name = \"sentence-transformers/all-MiniLM-L6-v2\" }",
        "targets = [q, gate]",
    ));
    assert!(
        e.contains("the model has no `gate` module") && e.contains("m.rank:4:"),
        "{e}"
    );
}

#[test]
fn a_gguf_file_that_is_not_readable_is_an_error_at_its_path() {
    env();
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("x.gguf"), b"not a gguf file").unwrap();
    let src = "experiment m {\n  model gguf { path = \"x.gguf\" }\n  data movies {}\n  train { steps = 10 }\n  seeds = [1]\n}\n";
    let e = policy::load_str(src, "m.rank", d.path(), &[])
        .unwrap_err()
        .to_string();
    assert!(e.contains("m.rank:2:") && e.contains("x.gguf"), "{e}");
    let p = load(SMOL_GGUF, "targets = [q]").unwrap();
    match &p.arms[0].model {
        ModelSpec::Gguf(g @ GgufSpec::Name(_)) => {
            let f = g.file().unwrap();
            assert!(f.ends_with("gguf/SmolLM2-135M-Instruct.Q4_1.gguf"), "{f:?}");
        }
        m => panic!("{m:?}"),
    }
}

/// SmolLM2-135M: 134,515,008 parameters (the figure transformers reports for the model),
/// frozen as f32 in a LoRA arm; k and v 192 wide.
#[test]
fn the_plan_costs_smollm2_with_its_real_shapes() {
    let p = load(SMOL_HF, "targets = [q, k, v], rank = 8").unwrap();
    let s = costs::arm_shape(&p.arms[0]).unwrap();
    let m = &s.model;
    assert_eq!(m.flavour, Flavour::Llama);
    assert_eq!(
        (
            m.module_shape(ModuleKind::K),
            m.module_shape(ModuleKind::Gate)
        ),
        ((192, 576), (1536, 576))
    );
    assert!(
        s.notes.iter().any(|n| n.contains("not downloaded yet")),
        "{:?}",
        s.notes
    );
    let params = memory::params(&s, &s.start_ranks);
    let frozen = params.of(adarank::backend::MemKind::Frozen);
    assert_eq!(frozen, 4.0 * 134_515_008.0);
    // Trainable: the adapters only (30 layers × 8 × (1152 + 768 + 768)): a causal LM reads the
    // movie sentences as generation through its own (frozen) LM head, with no classifier.
    let adapters = 30.0 * 8.0 * (1152.0 + 768.0 + 768.0);
    let trainable = params.of(adarank::backend::MemKind::Trainable);
    assert_eq!(trainable, 4.0 * adapters);
    // Forward GEMMs of the language-model head at 1 × 128: every matrix once per token, the
    // attention scores and context per query head, and the tied head over the vocabulary.
    let b = BatchShape { batch: 1, seq: 128 };
    let f = pass_flops(m, &Head::LanguageModel, true, &[], b, false);
    let per_layer = 2.0 * 576.0 * 576.0 + 2.0 * 192.0 * 576.0 + 3.0 * 576.0 * 1536.0;
    let n = 128.0;
    let want = 2.0 * n * 30.0 * per_layer
        + 30.0 * 2.0 * 2.0 * 9.0 * n * n * 64.0
        + 2.0 * n * 49152.0 * 576.0;
    assert_eq!(f.forward, want);
}

#[test]
fn block_formats_cost_their_block_bytes() {
    use adarank::backend::DType;
    assert_eq!(memory::frozen_bytes_per(DType::F32), (4.0, 1.0));
    assert_eq!(memory::frozen_bytes_per(DType::Bf16), (2.0, 1.0));
}
