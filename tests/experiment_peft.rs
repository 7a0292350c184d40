//! PEFT export: read back with the safetensors crate, check PEFT's key names and shapes, that
//! rank-0 slots are absent everywhere, and that ΔW = s·B·A under PEFT's scale rule equals ours.

use adarank::adapter::{AdapterHost, AdapterInfo, ModuleKind};
use adarank::experiment::peft::{export, pattern_key, read_back, ExportOptions, WEIGHTS_FILE};
use rand::{Rng, SeedableRng};

#[allow(clippy::too_many_arguments)] // a test fixture spelling out one adapter
fn adapter(
    layer: usize,
    kind: ModuleKind,
    rows: usize,
    cols: usize,
    rank: usize,
    scale: f32,
    svd: bool,
    rng: &mut impl Rng,
) -> (AdapterInfo, AdapterHost) {
    let mut v = |n: usize| {
        (0..n)
            .map(|_| rng.random_range(-1.0f32..1.0))
            .collect::<Vec<_>>()
    };
    let info = AdapterInfo {
        name: AdapterInfo::slot_name(layer, kind),
        layer,
        kind,
        rows,
        cols,
        rank,
    };
    let host = AdapterHost {
        a: v(rank * cols),
        b: v(rows * rank),
        lambda: svd.then(|| v(rank)),
        scale,
        ..Default::default()
    };
    (info, host)
}

/// Our ΔW = s · B · diag(λ) · A, computed straight from the definition.
fn ours(info: &AdapterInfo, h: &AdapterHost) -> Vec<f64> {
    let r = info.rank;
    let mut w = vec![0.0f64; info.rows * info.cols];
    for i in 0..info.rows {
        for j in 0..info.cols {
            let mut acc = 0.0f64;
            for k in 0..r {
                let l = h.lambda.as_ref().map(|l| l[k] as f64).unwrap_or(1.0);
                acc += h.b[i * r + k] as f64 * l * h.a[k * info.cols + j] as f64;
            }
            w[i * info.cols + j] = h.scale as f64 * acc;
        }
    }
    w
}

fn check(use_rslora: bool) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let (h, f) = (8, 20);
    let adapters = vec![
        adapter(0, ModuleKind::Q, h, h, 3, 16.0 / 3.0, false, &mut rng),
        adapter(0, ModuleKind::K, h, h, 0, 0.0, false, &mut rng),
        adapter(0, ModuleKind::FfnIn, f, h, 5, 2.0, false, &mut rng),
        adapter(1, ModuleKind::FfnOut, h, f, 2, 0.7, true, &mut rng),
        adapter(11, ModuleKind::O, h, h, 4, 4.0, false, &mut rng),
    ];
    let dir = tempfile::tempdir().unwrap();
    let opts = ExportOptions {
        base_model: Some("sentence-transformers/all-MiniLM-L6-v2".into()),
        use_rslora,
        module_prefix: String::new(),
        ..Default::default()
    };
    assert_eq!(export(dir.path(), &adapters, &opts).unwrap(), 4);

    // Key names and shapes, straight from the safetensors file.
    let bytes = std::fs::read(dir.path().join(WEIGHTS_FILE)).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut names = st.names().into_iter().map(String::from).collect::<Vec<_>>();
    names.sort();
    assert_eq!(
        names,
        vec![
            "base_model.model.encoder.layer.0.attention.self.query.lora_A.weight",
            "base_model.model.encoder.layer.0.attention.self.query.lora_B.weight",
            "base_model.model.encoder.layer.0.intermediate.dense.lora_A.weight",
            "base_model.model.encoder.layer.0.intermediate.dense.lora_B.weight",
            "base_model.model.encoder.layer.1.output.dense.lora_A.weight",
            "base_model.model.encoder.layer.1.output.dense.lora_B.weight",
            "base_model.model.encoder.layer.11.attention.output.dense.lora_A.weight",
            "base_model.model.encoder.layer.11.attention.output.dense.lora_B.weight",
        ]
    );
    let shape = |n: &str| st.tensor(n).unwrap().shape().to_vec();
    assert_eq!(
        shape("base_model.model.encoder.layer.0.intermediate.dense.lora_A.weight"),
        vec![5, h]
    );
    assert_eq!(
        shape("base_model.model.encoder.layer.0.intermediate.dense.lora_B.weight"),
        vec![f, 5]
    );
    assert_eq!(
        shape("base_model.model.encoder.layer.1.output.dense.lora_A.weight"),
        vec![2, f]
    );

    let (config, modules) = read_back(dir.path()).unwrap();
    assert_eq!(config.peft_type, "LORA");
    assert_eq!(config.use_rslora, use_rslora);
    assert_eq!(
        config.base_model_name_or_path.as_deref(),
        Some("sentence-transformers/all-MiniLM-L6-v2")
    );
    // Rank 0 slot absent from targets and patterns.
    assert!(!config
        .target_modules
        .iter()
        .any(|m| m.contains("attention.self.key")));
    assert!(!config.rank_pattern.keys().any(|k| k.contains("key")));
    assert_eq!(config.rank_pattern.len(), 4);
    assert_eq!(config.alpha_pattern.len(), 4);
    assert_eq!(
        config.rank_pattern[&pattern_key("encoder.layer.0.intermediate.dense")],
        5
    );

    // ΔW preserved: PEFT's scale · B · A equals ours for every exported module.
    for (info, host) in adapters.iter().filter(|(i, _)| i.rank > 0) {
        let path = info.kind.hf_bert_path(info.layer);
        let m = modules.iter().find(|m| m.module == path).unwrap();
        assert_eq!(m.rank, info.rank);
        assert_eq!(m.a_shape, [info.rank, info.cols]);
        assert_eq!(m.b_shape, [info.rows, info.rank]);
        let want = ours(info, host);
        for i in 0..info.rows {
            for j in 0..info.cols {
                let got: f64 = (0..m.rank)
                    .map(|k| m.b[i * m.rank + k] as f64 * m.a[k * info.cols + j] as f64)
                    .sum::<f64>()
                    * m.scale;
                let w = want[i * info.cols + j];
                assert!(
                    (got - w).abs() <= 1e-5 * (1.0 + w.abs()),
                    "{path} [{i},{j}]: {got} vs {w}"
                );
            }
        }
    }
}

#[test]
fn export_preserves_delta_w_with_plain_lora_scale() {
    check(false);
}

#[test]
fn export_preserves_delta_w_with_rslora_scale() {
    check(true);
}

#[test]
fn pattern_keys_match_only_their_module_under_peft_rule() {
    // PEFT resolves rank_pattern keys with re.match(r"(.*\.)?(KEY)$", module name); emulate the
    // suffix rule without a regex engine: the escaped key must equal the whole name or a suffix after a dot.
    let key = pattern_key("encoder.layer.1.output.dense");
    let unescaped = key.replace("\\.", ".");
    let matches = |name: &str| name == unescaped || name.ends_with(&format!(".{unescaped}"));
    assert!(matches("base_model.model.encoder.layer.1.output.dense"));
    assert!(!matches("base_model.model.encoder.layer.11.output.dense"));
    assert!(!matches(
        "base_model.model.encoder.layer.1.attention.output.dense"
    ));
}

#[test]
fn mismatched_tensor_sizes_are_an_error_not_a_panic() {
    let info = AdapterInfo {
        name: "0.q".into(),
        layer: 0,
        kind: ModuleKind::Q,
        rows: 4,
        cols: 4,
        rank: 2,
    };
    let host = AdapterHost {
        a: vec![0.0; 7],
        b: vec![0.0; 8],
        scale: 1.0,
        ..Default::default()
    };
    let dir = tempfile::tempdir().unwrap();
    let e = export(dir.path(), &[(info, host)], &ExportOptions::default()).unwrap_err();
    assert!(e.to_string().contains("adapter 0.q"), "{e}");
}
