//! A fixture made by PEFT itself: `scripts/make_peft_fixture.py` loaded the committed export
//! `tests/fixtures/peft/minilm_cls/` (made by `adarank run`, `pooling = cls`) into the stock
//! `BertForSequenceClassification` with `PeftModel.from_pretrained` — no missing or unexpected
//! key — and recorded its logits for six sentences, and the mean-pooled logits that
//! `examples/load_in_peft.py` computes from the same loaded modules. Here our model imports the
//! same export (`experiment::export::import_peft`) and must give both sets of logits within
//! 1e-5 (CPU backend). Needs the fetched MiniLM (fails under ADARANK_REQUIRE_ASSETS=1).
//!
//! The default export, `tests/fixtures/peft/minilm_default/` (its policy names no pooling), was
//! loaded the same way and classified 48 labelled movie-review sentences by the stock class's
//! own forward and by `pipeline("text-classification")`, as a user would with no adarank code:
//! our model must give the same class for every sentence, hence the same accuracy.

use adarank::backend::cpu::Cpu;
use adarank::data::{assets, hf};
use adarank::experiment::arm::train_mode;
use adarank::experiment::export::{import_peft, read_cell_info};
use adarank::model::{Batch, Head, Model, Pooling, Target};
use adarank::policy::ModelSpec;
use adarank::testkit;
use std::path::Path;
use std::sync::Arc;

const DIR: &str = "tests/fixtures/peft/minilm_cls";
const DEFAULT_DIR: &str = "tests/fixtures/peft/minilm_default";
const TOL: f64 = 1e-5;

fn fixture(dir: &str) -> serde_json::Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(dir)
        .join("peft_logits.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn logits_of(pooling: Pooling, cases: &[serde_json::Value]) -> Vec<Vec<f32>> {
    logits_in(DIR, pooling, cases)
}

/// Our logits for `cases` (their `input_ids`) with the export of `dir` imported.
fn logits_in(dir: &str, pooling: Pooling, cases: &[serde_json::Value]) -> Vec<Vec<f32>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
    let info = read_cell_info(&dir).unwrap();
    let ck = hf::load(assets::MINILM).unwrap();
    let cfg = ck.config.model_config();
    let head = Head::Classify {
        classes: 2,
        pooling,
    };
    let mode = train_mode(&info.arm, cfg.layers);
    let mut m = Model::new(Arc::new(Cpu::new()), cfg, head, mode, Some(&ck.weights), 1).unwrap();
    import_peft(&dir, &mut m).unwrap();
    cases
        .iter()
        .map(|c| {
            let ids: Vec<u32> = c["input_ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as u32)
                .collect();
            let t = ids.len();
            let b = Batch {
                batch: 1,
                seq: t,
                ids,
                type_ids: vec![0; t],
                mask: vec![1.0; t],
                target: Target::Classes(vec![0]),
            };
            m.evaluate(&b).unwrap().logits
        })
        .collect()
}

#[test]
fn our_logits_match_peft_loading_our_export() {
    if !testkit::require_assets("peft_fixture") {
        return;
    }
    let fixture = fixture(DIR);
    assert_eq!(fixture["missing_keys"], serde_json::json!([]));
    assert_eq!(fixture["unexpected_keys"], serde_json::json!([]));
    let cases = fixture["cases"].as_array().unwrap();
    assert!(cases.len() >= 5);
    for (pooling, key) in [(Pooling::Cls, "logits_cls"), (Pooling::Mean, "logits_mean")] {
        let ours = logits_of(pooling, cases);
        let mut worst = 0.0f64;
        for (c, got) in cases.iter().zip(&ours) {
            let want: Vec<f64> = c[key]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap())
                .collect();
            assert_eq!(got.len(), want.len());
            for (g, w) in got.iter().zip(&want) {
                worst = worst.max((*g as f64 - w).abs());
            }
        }
        println!(
            "{key}: largest |ours − PEFT| = {worst:.2e} over {} sentences",
            cases.len()
        );
        assert!(
            worst <= TOL,
            "{key}: largest logit difference {worst:e} > {TOL:e}"
        );
    }
}

fn argmax(v: &[f64]) -> usize {
    (0..v.len()).fold(0, |b, i| if v[i] > v[b] { i } else { b })
}

#[test]
fn the_stock_class_on_the_default_export_gives_our_accuracy() {
    if !testkit::require_assets("peft_fixture") {
        return;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    // The policy says nothing of pooling; the default must be the stock class's computation.
    let policy = adarank::policy::load(&root.join(format!("{DEFAULT_DIR}.rank")), &[]).unwrap();
    assert!(matches!(
        policy.arms[0].model,
        ModelSpec::Hf {
            pooling: Pooling::Cls,
            ..
        }
    ));
    let info = read_cell_info(&root.join(DEFAULT_DIR)).unwrap();
    assert_eq!(
        info.head,
        Head::Classify {
            classes: 2,
            pooling: Pooling::Cls
        }
    );
    let card = std::fs::read_to_string(root.join(DEFAULT_DIR).join("README.md")).unwrap();
    assert!(card.contains("`pipeline()`"), "{card}");
    let fixture = fixture(DEFAULT_DIR);
    assert_eq!(fixture["missing_keys"], serde_json::json!([]));
    assert_eq!(fixture["unexpected_keys"], serde_json::json!([]));
    let cases = fixture["labelled"].as_array().unwrap();
    assert!(cases.len() >= 40);
    let ours = logits_in(DEFAULT_DIR, Pooling::Cls, cases);
    let (mut right_ours, mut right_stock, mut worst) = (0, 0, 0.0f64);
    for (c, got) in cases.iter().zip(&ours) {
        let stock: Vec<f64> = c["logits_stock"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        let got: Vec<f64> = got.iter().map(|&x| x as f64).collect();
        for (g, w) in got.iter().zip(&stock) {
            worst = worst.max((g - w).abs());
        }
        let (label, piped) = (
            c["label"].as_u64().unwrap() as usize,
            c["pred_pipeline"].as_u64().unwrap() as usize,
        );
        assert_eq!(argmax(&got), piped, "{}", c["text"]);
        right_ours += usize::from(argmax(&got) == label);
        right_stock += usize::from(piped == label);
    }
    let n = cases.len() as f64;
    let ours_acc = right_ours as f64 / n;
    println!(
        "default export, {} sentences: accuracy ours {ours_acc:.4}, stock class and pipeline() {:.4}; \
         largest |ours − stock| logit {worst:.2e}",
        cases.len(),
        right_stock as f64 / n
    );
    assert_eq!(right_ours, right_stock);
    assert_eq!(fixture["accuracy_stock"].as_f64().unwrap(), ours_acc);
    assert!(worst <= TOL, "largest logit difference {worst:e} > {TOL:e}");
}
