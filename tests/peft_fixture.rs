//! A fixture made by PEFT itself: `scripts/make_peft_fixture.py` loaded the committed export
//! `tests/fixtures/peft/minilm_cls/` (made by `adarank run`, `pooling = cls`) into the stock
//! `BertForSequenceClassification` with `PeftModel.from_pretrained` — no missing or unexpected
//! key — and recorded its logits for six sentences, and the mean-pooled logits that
//! `examples/load_in_peft.py` computes from the same loaded modules. Here our model imports the
//! same export (`experiment::export::import_peft`) and must give both sets of logits within
//! 1e-5 (CPU backend). Needs the fetched MiniLM (fails under ADARANK_REQUIRE_ASSETS=1).

use adarank::backend::cpu::Cpu;
use adarank::data::{assets, hf};
use adarank::experiment::arm::train_mode;
use adarank::experiment::export::{import_peft, read_cell_info};
use adarank::model::{Batch, Head, Model, Pooling, Target};
use std::path::Path;
use std::sync::Arc;

const DIR: &str = "tests/fixtures/peft/minilm_cls";
const TOL: f64 = 1e-5;

fn logits_of(pooling: Pooling, cases: &[serde_json::Value]) -> Vec<Vec<f32>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(DIR);
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
    if !assets::require_assets("peft_fixture") {
        return;
    }
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(DIR)
        .join("peft_logits.json");
    let fixture: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
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
