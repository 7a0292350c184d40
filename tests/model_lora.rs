//! LoRA adapters: B = 0 leaves the base model's outputs unchanged; shrink gives the best rank-r
//! approximation of ΔW and grow keeps ΔW (both against an independent SVD of the dense ΔW);
//! buffers are really reallocated (ledger); the AdamW-moment rule on resize; AdaLoRA masks;
//! construction errors.

use adarank::adapter::{AdapterStore, ModuleKind};
use adarank::backend::cpu::Cpu;
use adarank::backend::{AdamW, Backend, MemKind};
use adarank::model::{
    delta_w, random_weights, Batch, Factors, Flavour, Head, Init, LoraConfig, Model, ModelConfig,
    Target, TrainMode,
};
use nalgebra::DMatrix;
use rand::{Rng, SeedableRng};
use std::sync::Arc;

fn cfg() -> ModelConfig {
    ModelConfig {
        flavour: Flavour::Encoder,
        vocab: 23,
        max_positions: 8,
        type_vocab: 2,
        hidden: 16,
        layers: 2,
        heads: 2,
        ffn: 24,
        ln_eps: 1e-5,
        llama: None,
    }
}

fn batch(seed: u64) -> Batch {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let (b, t) = (2, 5);
    Batch {
        batch: b,
        seq: t,
        ids: (0..b * t).map(|_| rng.random_range(0..23)).collect(),
        type_ids: vec![],
        mask: vec![],
        target: Target::Values(
            (0..b * t * 16)
                .map(|_| rng.random_range(-1.0..1.0))
                .collect(),
        ),
    }
}

fn lora_mode(rank: usize, svd: bool) -> TrainMode {
    let mut l = LoraConfig::uniform(2, &ModuleKind::ALL, rank, 8.0);
    l.svd_form = svd;
    TrainMode::Lora(l)
}

fn model(mode: TrainMode) -> Model<Cpu> {
    let w = random_weights(&cfg(), &Head::Regress, Init::FanIn, 7);
    Model::new(
        Arc::new(Cpu::new()),
        cfg(),
        Head::Regress,
        mode,
        Some(&w),
        7,
    )
    .unwrap()
}

/// Random factors in slot `i` (so ΔW ≠ 0), returning them.
fn randomise(m: &mut Model<Cpu>, i: usize, seed: u64) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut h = m.adapter_host(i).unwrap();
    h.a.iter_mut()
        .for_each(|v| *v = rng.random_range(-1.0..1.0));
    h.b.iter_mut()
        .for_each(|v| *v = rng.random_range(-1.0..1.0));
    if let Some(l) = h.lambda.as_mut() {
        l.iter_mut().for_each(|v| *v = rng.random_range(-1.0..1.0));
    }
    h.grad_a.clear();
    h.grad_b.clear();
    h.grad_lambda = None;
    m.set_adapter_host(i, &h).unwrap();
}

fn dense(m: &Model<Cpu>, i: usize) -> Vec<f32> {
    let info = &m.adapters()[i];
    let h = m.adapter_host(i).unwrap();
    let f = Factors {
        rank: info.rank,
        a: h.a,
        b: h.b,
        lambda: h.lambda,
    };
    delta_w(info.rows, info.cols, &f, h.scale)
}

/// Best rank-r approximation of a dense matrix by an SVD of the whole matrix.
fn best_rank(d: &[f32], rows: usize, cols: usize, r: usize) -> Vec<f32> {
    let m = DMatrix::<f64>::from_row_slice(
        rows,
        cols,
        &d.iter().map(|&v| v as f64).collect::<Vec<_>>(),
    );
    let svd = m.svd(true, true);
    let (u, vt, s) = (svd.u.unwrap(), svd.v_t.unwrap(), svd.singular_values);
    let mut out = DMatrix::<f64>::zeros(rows, cols);
    for j in 0..r {
        out += s[j] * u.column(j) * vt.row(j);
    }
    let mut v = vec![0.0f32; rows * cols];
    for i in 0..rows {
        for c in 0..cols {
            v[i * cols + c] = out[(i, c)] as f32;
        }
    }
    v
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn max_abs(a: &[f32]) -> f32 {
    a.iter().fold(0.0f32, |m, v| m.max(v.abs()))
}

#[test]
fn zero_b_gives_the_base_model_outputs() {
    let b = batch(1);
    let base = model(TrainMode::Full).hidden_states(&b).unwrap();
    let mut m = model(lora_mode(4, false));
    let adapted = m.hidden_states(&b).unwrap();
    assert_eq!(max_diff(&base, &adapted), 0.0);
    // and ΔW ≠ 0 does change them, so the comparison above can fail
    randomise(&mut m, 0, 3);
    assert!(max_diff(&base, &m.hidden_states(&b).unwrap()) > 1e-3);
}

/// The adapted model equals a full model whose W0 of every slot is W0 + ΔW (merged weights).
fn assert_matches_merged(m: &mut Model<Cpu>, b: &Batch) {
    let mut w = random_weights(&cfg(), &Head::Regress, Init::FanIn, 7);
    for (i, info) in m.adapters().iter().enumerate() {
        if info.rank == 0 {
            continue;
        }
        let dw = dense(m, i);
        let t = w
            .get_mut(&format!("{}.weight", info.kind.hf_bert_path(info.layer)))
            .unwrap();
        t.data.iter_mut().zip(&dw).for_each(|(x, d)| *x += d);
    }
    let mut merged = Model::new(
        Arc::new(Cpu::new()),
        cfg(),
        Head::Regress,
        TrainMode::Full,
        Some(&w),
        7,
    )
    .unwrap();
    let d = max_diff(
        &merged.hidden_states(b).unwrap(),
        &m.hidden_states(b).unwrap(),
    );
    assert!(d < 1e-4, "adapted vs merged outputs differ by {d}");
}

#[test]
fn shrink_is_the_best_rank_r_approximation_and_grow_keeps_delta_w() {
    for svd in [false, true] {
        let mut m = model(lora_mode(6, svd));
        let b = batch(2);
        for i in 0..m.adapters().len() {
            randomise(&mut m, i, 10 + i as u64);
        }
        assert_matches_merged(&mut m, &b);
        let i = 4; // 0.ffn_in: 24×16
        let info = m.adapters()[i].clone();
        let before = dense(&m, i);
        let want = best_rank(&before, info.rows, info.cols, 3);
        m.resize_adapter(i, 3).unwrap();
        assert_eq!(m.adapters()[i].rank, 3);
        let h = m.adapter_host(i).unwrap();
        assert_eq!((h.a.len(), h.b.len()), (3 * info.cols, info.rows * 3));
        let after = dense(&m, i);
        let err = max_diff(&after, &want);
        assert!(
            err < 1e-4 * max_abs(&want).max(1.0),
            "svd {svd}: shrink error {err}"
        );
        // a truncation that drops real singular values must differ from ΔW itself
        assert!(max_diff(&after, &before) > 1e-2);
        assert_matches_merged(&mut m, &b);

        m.resize_adapter(i, 8).unwrap();
        assert_eq!(m.adapters()[i].rank, 8);
        let grown = dense(&m, i);
        let err = max_diff(&grown, &after);
        assert!(
            err < 1e-5 * max_abs(&after).max(1.0),
            "svd {svd}: grow changed ΔW by {err}"
        );
        let h = m.adapter_host(i).unwrap();
        if svd {
            assert!(h.lambda.as_ref().unwrap()[3..].iter().all(|&v| v == 0.0));
            assert!(h.a[3 * info.cols..].iter().any(|&v| v != 0.0));
        } else {
            // new B columns are zero, new A rows are not
            for r in 0..info.rows {
                assert!(h.b[r * 8 + 3..r * 8 + 8].iter().all(|&v| v == 0.0));
            }
            assert!(h.a[3 * info.cols..].iter().any(|&v| v != 0.0));
            assert_eq!(h.scale, 8.0 / 8.0, "scale α/r follows the rank");
        }
        assert_matches_merged(&mut m, &b);
    }
}

#[test]
fn resize_reallocates_buffers_in_the_ledger() {
    let mut m = model(lora_mode(6, false));
    let ledger = m.backend().ledger().clone();
    let before = ledger.snapshot();
    // frozen weights have no gradient or optimizer buffers: those match the trainable bytes
    let t = before.current_of(MemKind::Trainable);
    assert_eq!(t, 4 * m.trainable_params() as u64);
    assert_eq!(before.current_of(MemKind::Grad), t);
    assert_eq!(before.current_of(MemKind::Optim), 2 * t);
    // every body weight is frozen: embeddings 23·16 + 8·16 + 2·16 + LN 2·16, and per layer
    // 4·(16·16 + 16) + (24·16 + 24) + (16·24 + 16) + 2 LN·2·16
    let body = 23 * 16 + 8 * 16 + 2 * 16 + 2 * 16 + 2 * (4 * (16 * 16 + 16) + 408 + 400 + 64);
    assert_eq!(before.current_of(MemKind::Frozen), 4 * body as u64);
    let (rows, cols) = (24, 16);
    m.resize_adapter(4, 2).unwrap();
    let after = ledger.snapshot();
    let freed = (4 * (rows + cols) * 4) as u64;
    assert_eq!(
        before.current_of(MemKind::Trainable) - after.current_of(MemKind::Trainable),
        freed
    );
    assert_eq!(
        before.current_of(MemKind::Grad) - after.current_of(MemKind::Grad),
        freed
    );
    assert_eq!(
        before.current_of(MemKind::Optim) - after.current_of(MemKind::Optim),
        2 * freed
    );
    m.resize_adapter(4, 0).unwrap();
    m.resize_adapter(4, 9).unwrap();
    let grown = ledger.snapshot();
    assert_eq!(
        grown.current_of(MemKind::Trainable) - before.current_of(MemKind::Trainable),
        (3 * (rows + cols) * 4) as u64
    );
    // rank 6 on every slot of 2 layers, slot 0.ffn_in now at 9, plus the 16 + 1 head weights
    assert_eq!(
        m.trainable_params(),
        2 * (4 * 6 * 32 + 2 * 6 * 40) + 3 * 40 + 17
    );
}

#[test]
fn resize_resets_the_moments_of_the_changed_adapter_only() {
    let mut m = model(lora_mode(4, false));
    for i in 0..m.adapters().len() {
        randomise(&mut m, i, 30 + i as u64);
    }
    let b = batch(3);
    let opt = AdamW {
        lr: 1e-3,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.0,
        step: 1,
    };
    for _ in 0..2 {
        m.zero_grads();
        m.forward_backward(&b, 1.0).unwrap();
        m.optimizer_step(&opt, None).unwrap();
    }
    m.resize_adapter(0, 2).unwrap();
    let st = m.state().unwrap();
    let q0 = "encoder.layer.0.attention.self.query.lora_A.weight";
    let k0 = "encoder.layer.0.attention.self.key.lora_A.weight";
    assert_eq!(st.meta.param_steps[q0], 0);
    assert_eq!(st.meta.param_steps[k0], 2);
    assert!(st.tensors[&format!("{q0}.exp_avg")]
        .data
        .iter()
        .all(|&v| v == 0.0));
    assert!(st.tensors[&format!("{q0}.exp_avg_sq")]
        .data
        .iter()
        .all(|&v| v == 0.0));
    assert!(st.tensors[&format!("{k0}.exp_avg")]
        .data
        .iter()
        .any(|&v| v != 0.0));
    // the reset adapter then trains like a new one: its first update is bounded by lr·(1+ε)
    let a0 = m.adapter_host(0).unwrap().a;
    m.zero_grads();
    m.forward_backward(&b, 1.0).unwrap();
    m.optimizer_step(&opt, None).unwrap();
    let a1 = m.adapter_host(0).unwrap().a;
    let step = max_diff(&a0, &a1);
    assert!(
        step > 0.0 && step <= 1.0001e-3,
        "first update after reset {step}"
    );
}

#[test]
fn a_rank_zero_slot_grows_and_trains() {
    let mut l = LoraConfig::uniform(2, &[ModuleKind::Q], 2, 4.0);
    l.ranks.insert((1, ModuleKind::FfnOut), 0);
    let mut m = model(TrainMode::Lora(l));
    let i = 6 + 5; // 1.ffn_out
    assert_eq!(m.adapters()[i].rank, 0);
    let b = batch(4);
    let base = m.hidden_states(&b).unwrap();
    m.resize_adapter(i, 3).unwrap();
    assert_eq!(max_diff(&base, &m.hidden_states(&b).unwrap()), 0.0);
    m.zero_grads();
    m.forward_backward(&b, 1.0).unwrap();
    let h = m.adapter_host(i).unwrap();
    assert!(max_abs(&h.grad_b) > 0.0, "grown adapter gets a gradient");
}

#[test]
fn masked_lambda_stays_zero() {
    let mut m = model(lora_mode(3, true));
    randomise(&mut m, 2, 5);
    m.set_lambda_mask(2, &[false, true, false]).unwrap();
    assert_eq!(m.adapter_host(2).unwrap().lambda.unwrap()[1], 0.0);
    let opt = AdamW {
        lr: 1e-2,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.0,
        step: 1,
    };
    for s in 0..3 {
        m.zero_grads();
        m.forward_backward(&batch(s), 1.0).unwrap();
        m.optimizer_step(&opt, None).unwrap();
    }
    let lam = m.adapter_host(2).unwrap().lambda.unwrap();
    assert_eq!(lam[1], 0.0);
    assert!(lam[0] != 0.0 && lam[2] != 0.0);
    let err = m.set_lambda_mask(2, &[true]).unwrap_err().to_string();
    assert!(err.contains("rank 3"), "{err}");
}

#[test]
fn construction_errors_name_the_tensor() {
    let mut w = random_weights(&cfg(), &Head::Regress, Init::Bert, 1);
    w.remove("encoder.layer.1.intermediate.dense.bias");
    let be = Arc::new(Cpu::new());
    let err = Model::new(
        be.clone(),
        cfg(),
        Head::Regress,
        TrainMode::Full,
        Some(&w),
        1,
    )
    .err()
    .unwrap()
    .to_string();
    assert!(
        err.contains("encoder.layer.1.intermediate.dense.bias"),
        "{err}"
    );
    let mut w = random_weights(&cfg(), &Head::Regress, Init::Bert, 1);
    w.get_mut("embeddings.word_embeddings.weight")
        .unwrap()
        .shape = vec![22, 16];
    let err = Model::new(
        be.clone(),
        cfg(),
        Head::Regress,
        TrainMode::Full,
        Some(&w),
        1,
    )
    .err()
    .unwrap()
    .to_string();
    assert!(
        err.contains("expected shape [23, 16], found [22, 16]"),
        "{err}"
    );
    let err = Model::new(
        be.clone(),
        cfg(),
        Head::Regress,
        lora_mode(17, false),
        None,
        1,
    )
    .err()
    .unwrap()
    .to_string();
    assert!(err.contains("exceeds min(rows, cols) = 16"), "{err}");
    // the head is initialised when absent
    let mut w = random_weights(&cfg(), &Head::Regress, Init::Bert, 1);
    w.remove("classifier.weight");
    assert!(Model::new(
        be.clone(),
        cfg(),
        Head::Regress,
        TrainMode::Full,
        Some(&w),
        1
    )
    .is_ok());
    // bad batches are errors, not panics
    let mut m = model(lora_mode(2, false));
    let mut bad = batch(1);
    bad.ids[3] = 99;
    let err = m.forward_backward(&bad, 1.0).unwrap_err().to_string();
    assert!(
        err.contains("token id 99 at sequence 0, position 3"),
        "{err}"
    );
    let mut bad = batch(1);
    bad.target = Target::Classes(vec![0, 1]);
    let err = m.forward_backward(&bad, 1.0).unwrap_err().to_string();
    assert!(err.contains("needs Values targets"), "{err}");
    let err = m.resize_adapter(0, 40).unwrap_err().to_string();
    assert!(err.contains("at most min(rows, cols) = 16"), "{err}");
}

#[test]
fn input_sample_is_what_the_slot_saw() {
    // Layer 1's q input is layer 0's output: the final hidden states of the same model cut to
    // one layer (the extra layer-1 weights are ignored by a 1-layer model).
    let mut m = model(lora_mode(2, false));
    let b = batch(6);
    assert!(m.input_sample(6).is_none(), "no forward yet");
    m.hidden_states(&b).unwrap();
    let s = m.input_sample(6).unwrap(); // 1.q
    assert_eq!(s.shape, vec![10, 16]);
    let w = random_weights(&cfg(), &Head::Regress, Init::FanIn, 7);
    let one = ModelConfig { layers: 1, ..cfg() };
    let mut m1 = Model::new(
        Arc::new(Cpu::new()),
        one,
        Head::Regress,
        TrainMode::Full,
        Some(&w),
        7,
    )
    .unwrap();
    assert_eq!(max_diff(&s.data, &m1.hidden_states(&b).unwrap()), 0.0);
    assert_eq!(
        m.input_sample(11).unwrap().shape,
        vec![10, 24],
        "ffn_out sees [n, ffn]"
    );
}
