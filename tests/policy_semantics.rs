//! What a checked policy means: arms as variants of the base, defaults, phases and actions.

use adarank::adapter::ModuleKind;
use adarank::policy::*;
use std::path::Path;

fn everything() -> Policy {
    load(
        Path::new("tests/fixtures/policy/valid/everything.rank"),
        &[],
    )
    .unwrap_or_else(|d| panic!("{d}"))
}

fn small(extra: &str) -> Result<Policy, Diagnostics> {
    let src = format!(
        "experiment t {{
  model encoder {{ layers = 2, hidden = 32, heads = 4 }}
  data planted {{ ranks = [1] }}
  train {{ steps = 100 }}
  {extra}
}}"
    );
    load_str(
        &src,
        "t.rank",
        Path::new("tests/fixtures/policy/valid"),
        &[],
    )
}

#[test]
fn base_is_the_first_arm_and_arms_follow_in_order() {
    let p = everything();
    let names: Vec<&str> = p.arms.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(
        names,
        ["ours", "fixed", "per_slot", "adalora", "no_learner", "full"]
    );
    assert_eq!(p.baseline.as_deref(), Some("fixed"));
    assert!(p.arm("no_learner").unwrap().ablation);
    assert!(!p.arm("ours").unwrap().ablation);
    assert_eq!(p.seeds, vec![1, 2, 3]);
}

#[test]
fn arm_phase_replaces_the_body_only() {
    let p = everything();
    let base = &p.arm("ours").unwrap().phases[1];
    let fixed = &p.arm("fixed").unwrap().phases[1];
    assert_eq!(base.name, "adapt");
    assert_eq!(base.actions.len(), 3);
    assert!(fixed.actions.is_empty());
    assert_eq!(fixed.until, base.until);
    assert_eq!(
        base.until,
        Until::Metric {
            name: "eval_loss".into(),
            op: CmpOp::Lt,
            value: 0.5
        }
    );
}

#[test]
fn full_fine_tuning_drops_reallocation() {
    let p = everything();
    let full = p.arm("full").unwrap();
    assert_eq!(full.lora, LoraSpec::Off);
    assert_eq!(full.train.lr, 1e-4);
    assert!(full
        .phases
        .iter()
        .flat_map(|ph| &ph.actions)
        .all(|a| a.what != ActionKind::Reallocate));
    // The other actions stay.
    assert!(full.phases[1]
        .actions
        .iter()
        .any(|a| a.what == ActionKind::Evaluate));
}

#[test]
fn ranks_and_adalora() {
    let p = everything();
    let fixed = p.arm("fixed").unwrap().lora.on().unwrap().clone();
    assert_eq!(fixed.rank, RankSpec::Uniform(4));
    let slot = p.arm("per_slot").unwrap().lora.on().unwrap().clone();
    assert_eq!(slot.rank_of(0, ModuleKind::Q), 2);
    assert_eq!(slot.rank_of(2, ModuleKind::FfnIn), 8);
    assert_eq!(
        slot.rank_of(2, ModuleKind::V),
        4,
        "unnamed slots get init_rank"
    );
    let ada = p.arm("adalora").unwrap();
    let spec = ada.adalora.as_ref().unwrap();
    assert_eq!((spec.init_rank, spec.target_rank, spec.tinit), (4, 2, 100));
    assert_eq!(ada.plugins.allocator, None);
    assert!(p.arm("ours").unwrap().adalora.is_none());
}

#[test]
fn values_with_units_and_paths() {
    let p = everything();
    let base = p.arm("ours").unwrap();
    assert!(matches!(
        base.data,
        DataSpec::Synthetic { samples: 2000, .. }
    ));
    assert_eq!(base.train.length, TrainLength::Steps(1000));
    assert_eq!(base.train.clip, None);
    assert_eq!(
        base.plugins.complexity.as_deref(),
        Some(Path::new("tests/fixtures/policy/plugins/complexity.rhai"))
    );
    assert!(matches!(&base.phases[2].until, Until::Plugin { path } if path.ends_with("done.rhai")));
    assert_eq!(base.phases[3].until, Until::End);
}

#[test]
fn defaults_are_filled_in() {
    let p = small("").unwrap();
    let a = &p.arms[0];
    assert_eq!(a.name, "adaptive");
    assert_eq!(p.seeds, vec![1]);
    assert_eq!(p.baseline, None);
    let l = a.lora.on().unwrap();
    assert_eq!(l.targets, vec![ModuleKind::Q, ModuleKind::V]);
    assert_eq!(
        (l.alpha, l.init_rank, l.min_rank, l.max_rank),
        (16.0, 8, 1, 64)
    );
    assert_eq!(a.train.batch, 32);
    assert_eq!(a.train.decay, Decay::Linear);
    assert_eq!(a.train.device, DeviceChoice::Auto);
    assert_eq!(a.train.clip, Some(1.0));
    assert_eq!(
        a.phases,
        vec![PhaseSpec {
            name: "main".into(),
            until: Until::End,
            actions: vec![]
        }]
    );
    match &a.model {
        ModelSpec::Encoder(t) => assert_eq!((t.ffn, t.vocab, t.max_positions), (128, 1000, 128)),
        m => panic!("{m:?}"),
    }
}

#[test]
fn hf_model_budget_uses_known_shape() {
    let base = "model hf { name = \"sentence-transformers/all-MiniLM-L6-v2\" }";
    let src = |budget: usize| {
        format!(
            "experiment h {{ {base}\n data movies {{}}\n train {{ epochs = 1 }}\n lora {{ targets = [q, v], budget = {budget}, max_rank = 8 }} }}"
        )
    };
    // 6 layers × 2 targets = 12 slots: budget ≤ 96.
    assert!(load_str(&src(96), "h.rank", Path::new("."), &[]).is_ok());
    let err = load_str(&src(97), "h.rank", Path::new("."), &[]).unwrap_err();
    assert!(err.to_string().contains("12 adapter slots"), "{err}");
}

#[test]
fn bare_plugin_names_resolve_to_shipped_plugins() {
    let err = small("allocator = plugin \"no_such_shipped_plugin\"").unwrap_err();
    let text = err.to_string();
    assert!(text.contains("no shipped plugin is called"), "{text}");
}

#[test]
fn arm_block_of_another_kind_replaces_the_section() {
    let p = small("arm big { model decoder { layers = 1, hidden = 16, heads = 2 } }").unwrap();
    match &p.arm("big").unwrap().model {
        ModelSpec::Decoder(t) => assert_eq!((t.layers, t.hidden), (1, 16)),
        m => panic!("{m:?}"),
    }
    // A block of the same kind amends key by key.
    let p = small("arm wide { model encoder { hidden = 64 } }").unwrap();
    match &p.arm("wide").unwrap().model {
        ModelSpec::Encoder(t) => assert_eq!((t.layers, t.hidden, t.heads), (2, 64, 4)),
        m => panic!("{m:?}"),
    }
}

#[test]
fn an_error_only_in_one_arm_names_the_arm() {
    let err = small("lora { budget = 8 }\narm tight { lora.max_rank = 1 }").unwrap_err();
    let text = err.to_string();
    assert!(text.contains("(in arm `tight`)"), "{text}");
}

#[test]
fn step_bounds_as_shares_follow_train_steps() {
    let extra = "allocator = plugin \"../plugins/allocate.rhai\"\n\
                 phase warm until step 25% {}\n\
                 phase adapt until step 75% { every 10 steps: reallocate }\n\
                 phase rest {}";
    let p = small(extra).unwrap();
    let bounds: Vec<&Until> = p.arms[0].phases.iter().map(|ph| &ph.until).collect();
    assert_eq!(bounds, [&Until::Step(25), &Until::Step(75), &Until::End]);
    // `--set train.steps=...` moves the bounds with it.
    let src = std::fs::read_to_string("tests/fixtures/policy/valid/small.rank").unwrap();
    let src = src
        .replace("until step 50", "until step 25%")
        .replace("until step 150", "until step 75%");
    let p = load_str(
        &src,
        "s.rank",
        Path::new("tests/fixtures/policy/valid"),
        &["train.steps=1000".to_string()],
    )
    .unwrap();
    assert_eq!(p.arms[0].phases[1].until, Until::Step(750));
    // A share is not a count.
    let err = small("train.warmup = 10%").unwrap_err();
    assert!(err.to_string().contains("whole number"), "{err}");
}

#[test]
fn an_interval_longer_than_a_later_phase_acts_once_on_entering_it() {
    use adarank::engine::schedule::{Event, Schedule};
    // The no-updates ablation's shape: one re-allocation, on entering the phase.
    let extra = "allocator = plugin \"../plugins/allocate.rhai\"\n\
                 phase warm until step 40 {}\n\
                 phase adapt until step 45 { every 100 steps: reallocate }\n\
                 phase rest {}";
    let p = small(extra).unwrap_or_else(|d| panic!("{d}"));
    // The oracle is the schedule the runner uses: it must fire exactly once, at step 40.
    let (t, _) = Schedule::new(p.arms[0].phases.clone(), 100, 1000, None).timeline();
    let reallocations: Vec<u64> = t
        .iter()
        .filter(|e| e.event == Event::Reallocate)
        .map(|e| e.step)
        .collect();
    assert_eq!(reallocations, [40]);
    // In the first phase nothing fires on entry (step 0 is never reached), so the same interval
    // there is refused.
    let err = small(
        "allocator = plugin \"../plugins/allocate.rhai\"\n\
         phase adapt until step 40 { every 40 steps: reallocate }\n\
         phase rest {}",
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("never fires"), "{err}");
}
