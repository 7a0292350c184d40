//! The causal-LM export round trip against PEFT itself. A tiny deterministic LoRA model — ranks
//! that differ per module, two targeted modules at rank 0, every B nonzero — is exported by
//! `experiment::export::export_cell` into `tests/fixtures/peft/tiny_llama_causal/`.
//! `scripts/make_peft_llm_fixture.py` loaded that committed folder with stock
//! `PeftModel.from_pretrained` on two bases — the tiny Llama of the HF-cache fixture
//! (`AutoModelForCausalLM.from_pretrained(snapshot)`) and the tiny GGUF
//! (`AutoModelForCausalLM.from_pretrained(dir, gguf_file=…)`) — with no missing or unexpected
//! key, and recorded per base the rank and scale PEFT gave each module and its logits for 5
//! prompts (at every position the log-sum-exp over the vocabulary and 16 fixed entries; the
//! whole last row).
//!
//! Here, for each base, the same adapters are built again and exported: the files must equal the
//! committed ones byte for byte (so the fixture is what adarank exports today), the modules PEFT
//! wrapped must be exactly ours at rank > 0 with our scales, and our logits with the adapters
//! must equal PEFT's within 1e-4 — while differing from the base model's by far more than that,
//! so the adapters are really in play. Importing the committed export (`import_peft`) gives the
//! same logits again. `ADARANK_BLESS=1` rewrites the committed export instead of comparing it
//! (then rerun the script).

use adarank::adapter::{AdapterStore, ModuleKind};
use adarank::backend::cpu::Cpu;
use adarank::data::pretrained::Pretrained;
use adarank::experiment::export::{export_cell, import_peft, CellInfo};
use adarank::experiment::peft::{CONFIG_FILE, WEIGHTS_FILE};
use adarank::model::{Batch, Head, LoraConfig, Model, Target, TrainMode};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::Arc;

const TOL: f64 = 1e-4;
/// The adapters must move some logit by at least this much (a thousand times the tolerance).
const EFFECT: f64 = 0.1;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn fixture_dir() -> PathBuf {
    root().join("tests/fixtures/peft/tiny_llama_causal")
}

/// Per-module ranks: every kind differs somewhere, layer 0's k and layer 1's down are targeted
/// at rank 0 (an adaptive run's pruned slots), so the export must leave them out.
fn ranks() -> LoraConfig {
    use ModuleKind::*;
    let table = [
        [
            (Q, 3),
            (K, 0),
            (V, 2),
            (O, 1),
            (Gate, 2),
            (FfnIn, 4),
            (FfnOut, 1),
        ],
        [
            (Q, 1),
            (K, 2),
            (V, 4),
            (O, 3),
            (Gate, 1),
            (FfnIn, 2),
            (FfnOut, 0),
        ],
    ];
    let mut l = LoraConfig::uniform(2, &[], 0, 6.0);
    for (layer, row) in table.iter().enumerate() {
        for &(kind, r) in row {
            l.ranks.insert((layer, kind), r);
        }
    }
    l
}

/// A value in [-0.5, 0.5) from integers only, so the bytes are the same on every machine.
fn det(i: usize, j: usize, salt: usize) -> f32 {
    ((j * 7 + i * 13 + salt * 5) % 17) as f32 / 17.0 - 0.5
}

/// The base with the adapters of [`ranks`] set to fixed values (A ~ ±0.5, B ~ ±0.25, never all
/// zero), as a trained cell would hold them.
fn adapted(p: &Pretrained, with_adapters: bool) -> Model<Cpu> {
    let mut m = Model::new(
        Arc::new(Cpu::new()),
        p.config.clone(),
        Head::LanguageModel,
        TrainMode::Lora(ranks()),
        Some(&p.weights),
        1,
    )
    .unwrap();
    if !with_adapters {
        return m; // B = 0: ΔW = 0, the base model's logits
    }
    for i in 0..m.adapters().len() {
        if m.adapters()[i].rank == 0 {
            continue;
        }
        let mut h = m.adapter_host(i).unwrap();
        h.a.iter_mut()
            .enumerate()
            .for_each(|(j, v)| *v = det(i, j, 1));
        h.b.iter_mut()
            .enumerate()
            .for_each(|(j, v)| *v = 0.5 * det(i, j, 2));
        assert!(h.b.iter().any(|v| *v != 0.0));
        h.grad_a.clear();
        h.grad_b.clear();
        m.set_adapter_host(i, &h).unwrap();
    }
    m
}

fn cell_info() -> CellInfo {
    let src = format!(
        "experiment peft_llm {{\n  model gguf {{ path = \"{}\" }}\n  \
         data jsonl {{ train = \"{t}\", dev = \"{t}\" }}\n  \
         lora {{ targets = [q, k, v, o, gate, ffn_in, ffn_out], init_rank = 2 }}\n  \
         train {{ steps = 1 }}\n  seeds = [1]\n}}\n",
        root().join("tests/fixtures/llm/tiny_llama.gguf").display(),
        t = root().join("tests/fixtures/lmdata/text.jsonl").display(),
    );
    let policy = adarank::policy::load_str(&src, "e.rank", Path::new("."), &[])
        .unwrap_or_else(|d| panic!("{d}"));
    CellInfo {
        format: 1,
        seed: 1,
        steps: 1,
        head: Head::LanguageModel,
        hf_class: None,
        // One export for both bases: no base name in it (PEFT is handed the base).
        base_model: None,
        split: Default::default(),
        arm: policy.arms[0].clone(),
    }
}

fn load(base: &str) -> Pretrained {
    match base {
        "hf" => {
            let hub = root().join("tests/fixtures/llm/hub");
            let dir = adarank::data::hf::resolve_in("adarank-test/tiny-llama", &[hub]).unwrap();
            adarank::data::hf_llm::load_llm(&dir).unwrap()
        }
        "gguf" => {
            adarank::data::gguf::load(&root().join("tests/fixtures/llm/tiny_llama.gguf")).unwrap()
        }
        _ => unreachable!(),
    }
}

/// Logits at every position of `ids`, row-major [positions, vocab].
fn logits(m: &mut Model<Cpu>, ids: &[u32]) -> Vec<f32> {
    let b = Batch {
        batch: 1,
        seq: ids.len(),
        ids: ids.to_vec(),
        type_ids: vec![],
        mask: vec![],
        target: Target::Tokens(vec![u32::MAX; ids.len()]),
    };
    let rows: Vec<usize> = (0..ids.len()).collect();
    m.logits_at(&b, &rows).unwrap()
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .flat_map(|row| match row.as_array() {
            Some(r) => r.iter().map(|x| x.as_f64().unwrap()).collect::<Vec<_>>(),
            None => vec![row.as_f64().unwrap()],
        })
        .collect()
}

/// Largest difference between our logits [positions, vocab] and what the fixture kept of PEFT's:
/// per position the log-sum-exp over the vocabulary and the `subset` entries, the whole last row.
fn against_peft(ours: &[f32], pr: &Value, subset: &[usize], vocab: usize) -> f64 {
    let rows: Vec<&[f32]> = ours.chunks(vocab).collect();
    let lse: Vec<f32> = rows
        .iter()
        .map(|r| {
            let m = r.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
            (m + r.iter().map(|x| (*x as f64 - m).exp()).sum::<f64>().ln()) as f32
        })
        .collect();
    let picked: Vec<f32> = rows
        .iter()
        .flat_map(|r| subset.iter().map(|&i| r[i]))
        .collect();
    let last = rows.last().unwrap();
    max_diff(&lse, &floats(&pr["logsumexp"]))
        .max(max_diff(&picked, &floats(&pr["subset_logits"])))
        .max(max_diff(last, &floats(&pr["last_logits"])))
}

fn max_diff(a: &[f32], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (*x as f64 - y).abs())
        .fold(0.0, f64::max)
}

/// The export of this base's adapted model equals the committed one, byte for byte. Under
/// `ADARANK_BLESS=1` it is written there instead (false: nothing to compare yet).
fn export_matches_fixture(m: &mut Model<Cpu>, base: &str) -> bool {
    let dir = fixture_dir();
    if std::env::var("ADARANK_BLESS").is_ok_and(|v| v == "1") {
        export_cell(&dir, m, &cell_info(), false, false).unwrap();
        for f in ["adarank.json", "final_state.safetensors"] {
            std::fs::remove_file(dir.join(f)).unwrap();
        }
        return false;
    }
    let tmp = tempfile::tempdir().unwrap();
    export_cell(tmp.path(), m, &cell_info(), false, false).unwrap();
    for f in [WEIGHTS_FILE, CONFIG_FILE] {
        assert!(
            std::fs::read(tmp.path().join(f)).unwrap() == std::fs::read(dir.join(f)).unwrap(),
            "{base}: {f} differs from the committed export in {} (ADARANK_BLESS=1 rewrites it; \
             then rerun scripts/make_peft_llm_fixture.py)",
            dir.display()
        );
    }
    true
}

/// PEFT wrapped exactly our modules at rank > 0, each with our rank and scale.
fn peft_modules_are_ours(m: &Model<Cpu>, rec: &Value, base: &str) {
    let cfg = m.config().clone();
    let mut want = serde_json::Map::new();
    for (i, a) in m.adapters().iter().enumerate() {
        if a.rank > 0 {
            let scale = m.adapter_host(i).unwrap().scale as f64;
            want.insert(
                cfg.module_path(a.layer, a.kind),
                serde_json::json!({ "r": a.rank, "scaling": scale }),
            );
        }
    }
    let got = rec["lora_modules"].as_object().unwrap();
    let names = |m: &serde_json::Map<String, Value>| m.keys().cloned().collect::<Vec<_>>();
    assert_eq!(names(got), names(&want), "{base}: modules PEFT wrapped");
    for (k, w) in &want {
        let g = &got[k];
        assert_eq!(g["r"], w["r"], "{base}: rank of {k}");
        let (gs, ws) = (
            g["scaling"].as_f64().unwrap(),
            w["scaling"].as_f64().unwrap(),
        );
        assert!(
            (gs - ws).abs() <= 1e-6 * ws,
            "{base}: scale of {k}: {gs} vs {ws}"
        );
    }
    let ranks: std::collections::BTreeSet<u64> =
        got.values().map(|v| v["r"].as_u64().unwrap()).collect();
    assert!(
        ranks.len() >= 3,
        "{base}: ranks differ per module: {ranks:?}"
    );
}

fn round_trip(base: &str) {
    let p = load(base);
    let mut m = adapted(&p, true);
    // Two targeted slots at rank 0: the premise of the "rank-0 modules absent" check.
    assert_eq!(m.adapters().iter().filter(|a| a.rank == 0).count(), 2);
    if !export_matches_fixture(&mut m, base) {
        return;
    }
    let text = std::fs::read_to_string(fixture_dir().join("peft_logits.json")).unwrap();
    let fx: Value = serde_json::from_str(&text).unwrap();
    let rec = &fx["bases"][base];
    assert_eq!(rec["missing_keys"], serde_json::json!([]), "{base}");
    assert_eq!(rec["unexpected_keys"], serde_json::json!([]), "{base}");
    assert_eq!(rec["vocab"].as_u64().unwrap() as usize, p.config.vocab);
    peft_modules_are_ours(&m, rec, base);
    let mut plain = adapted(&p, false);
    let mut imported = adapted(&p, false);
    import_peft(&fixture_dir(), &mut imported).unwrap();
    let prompts = rec["prompts"].as_array().unwrap();
    assert_eq!(prompts.len(), 5);
    let subset: Vec<usize> = floats(&rec["subset_ids"])
        .iter()
        .map(|x| *x as usize)
        .collect();
    let (mut worst, mut worst_import, mut effect) = (0.0f64, 0.0f64, 0.0f64);
    for pr in prompts {
        let ids: Vec<u32> = floats(&pr["ids"]).iter().map(|x| *x as u32).collect();
        let ours = logits(&mut m, &ids);
        worst = worst.max(against_peft(&ours, pr, &subset, p.config.vocab));
        let back = logits(&mut imported, &ids);
        worst_import = worst_import.max(against_peft(&back, pr, &subset, p.config.vocab));
        let base_only = logits(&mut plain, &ids);
        let moved = ours.iter().zip(&base_only).map(|(a, b)| (a - b).abs());
        effect = effect.max(moved.fold(0.0f32, f32::max) as f64);
    }
    println!(
        "{base}: largest |ours − PEFT| = {worst:.2e}, after import_peft {worst_import:.2e}; \
         the adapters move logits by up to {effect:.3}"
    );
    assert!(
        worst <= TOL,
        "{base}: logits differ from PEFT's by {worst:e}"
    );
    assert!(worst_import <= TOL, "{base}: imported: {worst_import:e}");
    assert!(
        effect >= EFFECT,
        "{base}: the adapters change the logits by only {effect:e}: the test would not see a \
         misplaced adapter"
    );
    let peft_effect = rec["adapter_effect"].as_f64().unwrap();
    assert!(
        peft_effect >= EFFECT,
        "{base}: PEFT saw an effect of {peft_effect}"
    );
}

#[test]
fn peft_on_the_hf_folder_base_matches_our_logits() {
    round_trip("hf");
}

#[test]
fn peft_on_the_gguf_base_matches_our_logits() {
    round_trip("gguf");
}
