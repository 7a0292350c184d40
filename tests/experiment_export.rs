//! A cell's folder as `adarank run` leaves it (`experiment::export`): the PEFT export is laid
//! out for the stock Hugging Face class of the head — `bert.` module prefix, `task_type`, the
//! head (and a pooler the base does not have) in `modules_to_save` under PEFT 0.21's key names —
//! and reading it back into a freshly drawn model (`import_peft`) gives bit-identical logits, as
//! does the final state (`load_final_state`). The same layouts loaded in real PEFT:
//! `tests/peft_fixture.rs`.

use adarank::adapter::{AdapterStore, ModuleKind};
use adarank::backend::cpu::Cpu;
use adarank::experiment::export::{
    export_cell, import_peft, load_final_state, CellInfo, USAGE_NOTE,
};
use adarank::experiment::peft::{read_export, PeftConfig, CONFIG_FILE};
use adarank::model::{
    random_weights, Batch, Flavour, Head, Init, LoraConfig, Model, ModelConfig, Pooling, Target,
    TrainMode,
};
use rand::{Rng, SeedableRng};
use std::path::Path;
use std::sync::Arc;

fn cfg() -> ModelConfig {
    ModelConfig {
        flavour: Flavour::Encoder,
        vocab: 29,
        max_positions: 12,
        type_vocab: 2,
        hidden: 16,
        layers: 2,
        heads: 4,
        ffn: 24,
        ln_eps: 1e-12,
        llama: None,
    }
}

fn mode() -> TrainMode {
    let mut l = LoraConfig::uniform(2, &[ModuleKind::Q, ModuleKind::V], 2, 8.0);
    l.ranks.insert((1, ModuleKind::V), 3);
    TrainMode::Lora(l)
}

/// A trained-looking model: random adapters (B ≠ 0) on base weights drawn from `seed`.
fn model(head: Head, seed: u64, base_seed: u64) -> Model<Cpu> {
    let w = random_weights(&cfg(), &head, Init::FanIn, base_seed);
    let mut m = Model::new(Arc::new(Cpu::new()), cfg(), head, mode(), Some(&w), seed).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    for i in 0..m.adapters().len() {
        if m.adapters()[i].rank == 0 {
            continue;
        }
        let mut h = m.adapter_host(i).unwrap();
        h.b.iter_mut()
            .for_each(|v| *v = rng.random_range(-0.3..0.3));
        h.grad_a.clear();
        h.grad_b.clear();
        m.set_adapter_host(i, &h).unwrap();
    }
    let mut head_w = m
        .named_host(|n| n.starts_with("classifier.") || n.starts_with("qa_outputs."))
        .unwrap();
    head_w.values_mut().for_each(|t| {
        t.data
            .iter_mut()
            .for_each(|v| *v = rng.random_range(-1.0..1.0))
    });
    m.overwrite(&head_w).unwrap();
    m
}

fn batch(head: &Head) -> Batch {
    let (b, t) = (2, 9);
    Batch {
        batch: b,
        seq: t,
        ids: (0..b * t).map(|i| ((i * 5 + 1) % 29) as u32).collect(),
        type_ids: (0..b * t).map(|i| ((i % t) >= 4) as u32).collect(),
        mask: vec![1.0; b * t],
        target: match head {
            Head::Span => Target::Spans {
                start: vec![0, 5],
                end: vec![0, 6],
            },
            _ => Target::Classes(vec![1, 0]),
        },
    }
}

fn info(head: Head) -> CellInfo {
    let policy = adarank::policy::load_str(
        "experiment e {\n  model encoder { layers = 2, hidden = 16, heads = 4 }\n  \
         data synthetic { classes = 2 }\n  lora { targets = [q, v], init_rank = 2 }\n  \
         train { steps = 1 }\n  seeds = [1]\n}\n",
        "e.rank",
        Path::new("."),
        &[],
    )
    .unwrap();
    CellInfo {
        format: 1,
        seed: 1,
        steps: 1,
        head,
        hf_class: None,
        base_model: None,
        split: Default::default(),
        arm: policy.arms[0].clone(),
    }
}

fn keys(dir: &Path) -> Vec<String> {
    let bytes = std::fs::read(dir.join("adapter_model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut k: Vec<String> = st.names().into_iter().map(String::from).collect();
    k.sort();
    k
}

/// Exports `head`'s model, checks the layout, then re-imports into a model drawn from another
/// seed (same base) and compares logits bit for bit.
fn round_trip(head: Head, base_has_pooler: bool) -> (PeftConfig, Vec<String>) {
    let dir = tempfile::tempdir().unwrap();
    let mut m = model(head, 3, 9);
    export_cell(dir.path(), &mut m, &info(head), false, base_has_pooler).unwrap();
    let b = batch(&head);
    let want = m.evaluate(&b).unwrap();
    let config: PeftConfig =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join(CONFIG_FILE)).unwrap())
            .unwrap();
    // Another seed: other adapters and another head, the same base weights.
    let mut fresh = model(head, 4, 9);
    assert_ne!(fresh.evaluate(&b).unwrap().logits, want.logits);
    import_peft(dir.path(), &mut fresh).unwrap();
    let got = fresh.evaluate(&b).unwrap();
    assert_eq!(got.logits, want.logits, "{head:?}: PEFT import");
    let mut again = model(head, 5, 9);
    load_final_state(dir.path(), &mut again).unwrap();
    assert_eq!(
        again.evaluate(&b).unwrap().logits,
        want.logits,
        "{head:?}: final state"
    );
    assert_eq!(read_export(dir.path()).unwrap().modules.len(), 4);
    (config, keys(dir.path()))
}

#[test]
fn classification_exports_load_as_bert_for_sequence_classification() {
    let head = Head::Classify {
        classes: 2,
        pooling: Pooling::Cls,
    };
    // A pooler drawn here (no pretrained one) travels with the head.
    let (c, k) = round_trip(head, false);
    assert_eq!(c.task_type.as_deref(), Some("SEQ_CLS"));
    assert_eq!(
        c.modules_to_save,
        Some(vec!["classifier".to_string(), "pooler".to_string()])
    );
    assert!(c
        .target_modules
        .iter()
        .all(|m| m.starts_with("bert.encoder.layer.")));
    for key in [
        "base_model.model.classifier.weight",
        "base_model.model.classifier.bias",
        "base_model.model.bert.pooler.dense.weight",
        "base_model.model.bert.pooler.dense.bias",
        "base_model.model.bert.encoder.layer.1.attention.self.value.lora_B.weight",
    ] {
        assert!(k.contains(&key.to_string()), "{key} missing from {k:?}");
    }
    assert_eq!(
        c.rank_pattern["bert\\.encoder\\.layer\\.1\\.attention\\.self\\.value"],
        3
    );
    // With a pretrained pooler in the base, only the classifier (as PEFT's own exports).
    let (c, k) = round_trip(
        Head::Classify {
            classes: 2,
            pooling: Pooling::Mean,
        },
        true,
    );
    assert_eq!(c.modules_to_save, Some(vec!["classifier".to_string()]));
    assert!(!k.iter().any(|k| k.contains("pooler")));
}

#[test]
fn span_exports_load_as_bert_for_question_answering() {
    let (c, k) = round_trip(Head::Span, false);
    assert_eq!(c.task_type.as_deref(), Some("QUESTION_ANS"));
    assert_eq!(c.modules_to_save, Some(vec!["qa_outputs".to_string()]));
    assert!(
        k.contains(&"base_model.model.qa_outputs.weight".to_string()),
        "{k:?}"
    );
    assert_eq!(k.len(), 4 * 2 + 2);
}

/// The folder's README.md says how to load the export; for a mean-pooled classifier it says that
/// the stock class's own forward (and so `pipeline()` and `Trainer`) would read the pooler and
/// answer wrongly, and what to compute instead.
#[test]
fn the_cell_card_says_what_a_mean_pooled_head_needs() {
    let card = |pooling| {
        let head = Head::Classify {
            classes: 2,
            pooling,
        };
        let dir = tempfile::tempdir().unwrap();
        let mut m = model(head, 3, 9);
        export_cell(dir.path(), &mut m, &info(head), false, true).unwrap();
        std::fs::read_to_string(dir.path().join(USAGE_NOTE)).unwrap()
    };
    let mean = card(Pooling::Mean);
    for want in [
        "BertForSequenceClassification",
        "**Pooling: mean.**",
        "`pipeline()`",
        "wrong answers",
        "mean_pooled_logits",
        "logits = bert.classifier((hidden * m).sum(1) / m.sum(1))",
    ] {
        assert!(mean.contains(want), "{want:?} missing from\n{mean}");
    }
    let cls = card(Pooling::Cls);
    assert!(cls.contains("give adarank's answers as they are"), "{cls}");
    assert!(!cls.contains("Pooling: mean"), "{cls}");
}
