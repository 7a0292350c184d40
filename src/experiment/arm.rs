//! From a checked arm plan to what one cell runs: the task, the model's train mode, the loop's
//! settings, the rank engine's configuration, and the labels the report uses.

use super::records::HParams;
use crate::adapter::ModuleKind;
use crate::data::prepare::Split;
use crate::data::{self, hf::PretrainedEncoder};
use crate::engine::{AdaLoraConfig, EngineConfig, Method, SoraConfig};
use crate::model::{Flavour, LoraConfig, ModelConfig, TrainMode};
use crate::policy::{
    ActionKind, ArmPlan, DataSpec, LoraOn, LoraSpec, ModelSpec, RankSpec, TrainLength,
};
use crate::train::{PlantedConfig, PlantedTask, SyntheticConfig, SyntheticTask, Task, TrainConfig};
use anyhow::{bail, Context, Result};

/// Sequences per evaluation batch of the built-in tasks.
pub const EVAL_BATCH: usize = 64;

/// The method label of an arm, for the tables.
pub fn method_label(arm: &ArmPlan) -> String {
    let Some(l) = arm.lora.on() else {
        return "full".into();
    };
    if arm.adalora.is_some() {
        return "adalora".into();
    }
    if arm.sora.is_some() {
        return "sora".into();
    }
    if reallocates(arm) {
        return if arm.plugins.learner.is_some() {
            "adaptive".into()
        } else {
            "adaptive (no learner)".into()
        };
    }
    match l.rank {
        RankSpec::Uniform(_) => "fixed".into(),
        _ => "layerwise".into(),
    }
}

/// The row of the report's hyperparameter table for `arm`.
pub fn hparams(arm: &ArmPlan) -> HParams {
    let adapters = match (arm.lora.on(), &arm.adalora) {
        (None, _) => "full fine-tuning".to_string(),
        (Some(l), Some(a)) => {
            let target = match l.param_budget {
                Some(p) => format!("{p} params"),
                None => format!("rank {}", a.target_rank),
            };
            let how = if a.peft_compat {
                "PEFT's scale".to_string()
            } else {
                format!("gain {}", a.gain)
            };
            format!("AdaLoRA rank {} → {target}, {how}", a.init_rank)
        }
        (Some(l), None) if reallocates(arm) => match (l.param_budget, l.budget) {
            (Some(p), _) => format!("{p} params (from rank {})", l.init_rank),
            (None, Some(b)) => format!("{b} ranks in total (from rank {})", l.init_rank),
            (None, None) => format!("rank {} on average", l.init_rank),
        },
        (Some(l), None) => match &l.rank {
            RankSpec::Uniform(r) => format!("rank {r}"),
            RankSpec::PerKind(m) => m
                .iter()
                .map(|(k, r)| format!("{k}: {r}"))
                .collect::<Vec<_>>()
                .join(", "),
            RankSpec::PerSlot(m) => format!("{} slots set, others rank {}", m.len(), l.init_rank),
        },
    };
    let length = match arm.train.length {
        TrainLength::Steps(n) => format!("{n} steps"),
        TrainLength::Epochs(1) => "1 epoch".into(),
        TrainLength::Epochs(e) => format!("{e} epochs"),
    };
    HParams {
        lr: arm.train.lr,
        lr_sweep: arm.train.lr_sweep.clone(),
        adapters,
        length,
        batch: arm.train.batch,
        accum: arm.train.accum,
    }
}

/// Does any phase re-allocate ranks?
pub fn reallocates(arm: &ArmPlan) -> bool {
    arm.phases
        .iter()
        .any(|p| p.actions.iter().any(|a| a.what == ActionKind::Reallocate))
}

/// The shape of a randomly initialised model section (`model encoder|decoder { ... }`).
pub fn transformer(spec: &ModelSpec) -> Result<ModelConfig> {
    let (flavour, t) = match spec {
        ModelSpec::Encoder(t) => (Flavour::Encoder, t),
        ModelSpec::Decoder(t) => (Flavour::Decoder, t),
        ModelSpec::Hf { name, .. } => bail!(
            "model hf \"{name}\": the planted and synthetic tasks need a randomly initialised \
             model (`model encoder {{ ... }}`); pretrained models train on real data"
        ),
        ModelSpec::Path { dir, .. } => bail!(
            "model path {}: the planted and synthetic tasks need a randomly initialised model \
             (`model encoder {{ ... }}`); pretrained models train on real data",
            dir.display()
        ),
        ModelSpec::Gguf(_) => bail!(
            "model gguf: the planted and synthetic tasks need a randomly initialised model \
             (`model encoder {{ ... }}`); pretrained models train on real data"
        ),
    };
    let cfg = ModelConfig {
        flavour,
        vocab: t.vocab,
        max_positions: t.max_positions,
        type_vocab: 2,
        hidden: t.hidden,
        layers: t.layers,
        heads: t.heads,
        ffn: t.ffn,
        ln_eps: 1e-5,
        llama: None,
    };
    cfg.validate()?;
    Ok(cfg)
}

/// Which adapter slots the arm's LoRA covers, in the model's slot order (`ModuleKind::LLAMA`
/// orders every kind as both families' slots do; an encoder's targets never hold the gate).
fn covered(l: &LoraOn, layers: usize) -> Vec<(usize, ModuleKind)> {
    let mut out = Vec::new();
    for layer in 0..layers {
        if l.layers.as_ref().is_some_and(|ls| !ls.contains(&layer)) {
            continue;
        }
        for kind in ModuleKind::LLAMA {
            if l.targets.contains(&kind) {
                out.push((layer, kind));
            }
        }
    }
    out
}

/// The planted rank of every slot of `model` (layer-major, then [`ModuleKind::ALL`]): the
/// policy assigns its planted ranks to the LoRA-covered slots in order, cycling; the task
/// wants one per slot of the model (all six kinds), 0 where nothing is planted.
pub fn planted_slots(arm: &ArmPlan, model: &ModelConfig) -> Vec<(usize, ModuleKind, usize)> {
    let DataSpec::Planted { ranks, .. } = &arm.data else {
        return Vec::new();
    };
    let targets: Vec<(usize, ModuleKind)> = match arm.lora.on() {
        Some(l) => covered(l, model.layers),
        None => (0..model.layers)
            .flat_map(|l| model.module_kinds().iter().map(move |&k| (l, k)))
            .collect(),
    };
    let mut out = Vec::new();
    let mut k = 0;
    for layer in 0..model.layers {
        for kind in ModuleKind::ALL {
            let r = if targets.contains(&(layer, kind)) && !ranks.is_empty() {
                k += 1;
                ranks[(k - 1) % ranks.len()]
            } else {
                0
            };
            out.push((layer, kind, r));
        }
    }
    out
}

/// Indices (in the model's `adapters()` order, `ModelConfig::slots`) of the slots the arm's
/// LoRA targets; the rank engine sees only these.
pub fn targeted_slots(arm: &ArmPlan, model: &ModelConfig) -> Vec<usize> {
    let Some(l) = arm.lora.on() else {
        return Vec::new();
    };
    covered(l, model.layers)
        .into_iter()
        .filter_map(|(layer, kind)| model.slot_index(layer, kind))
        .collect()
}

/// The pretrained checkpoint an arm's model section names (`None` for random models).
pub fn load_pretrained(arm: &ArmPlan) -> Result<Option<PretrainedEncoder>> {
    data::prepare::load_model(&arm.model)
        .with_context(|| format!("loading the model of arm {}", arm.name))
}

/// A key for sharing loaded checkpoints between arms with the same model section.
pub fn pretrained_key(arm: &ArmPlan) -> String {
    serde_json::to_string(&arm.model).unwrap_or_default()
}

/// The task an arm trains on, and the number of training samples (for epochs). `ckpt` is the
/// arm's pretrained checkpoint ([`load_pretrained`]), needed by the real data sets. The data
/// section's own seed fixes the task (planted teacher, synthetic data, splits); the run `seed`
/// orders the training data. The task evaluates on `split` (see [`data::prepare::split_of`]).
pub fn build_task(
    arm: &ArmPlan,
    ckpt: Option<&mut PretrainedEncoder>,
    seed: u64,
    split: Split,
) -> Result<(Box<dyn Task>, Option<usize>)> {
    if let crate::policy::lm::ModelKind::CausalLm(path) = crate::policy::lm::model_kind(&arm.model)
    {
        let pre = data::prepare::load_llm(&path)
            .with_context(|| format!("loading the model of arm {}", arm.name))?;
        let Some(t) =
            data::lm::from_section::lm_task(&arm.data, &pre, arm.train.max_len, seed, split)?
        else {
            bail!(
                "arm {}: a causal LM trains on text (JSONL records, or a labelled set with \
                 `as = generation`)",
                arm.name
            )
        };
        let n = t.train_len();
        return Ok((Box::new(t), Some(n)));
    }
    match &arm.data {
        DataSpec::Planted {
            samples,
            eval_samples,
            seq,
            seed: data_seed,
            scale,
            ..
        } => {
            let model = transformer(&arm.model)?;
            let per_slot = planted_slots(arm, &model)
                .into_iter()
                .map(|(_, _, r)| r)
                .collect();
            let cfg = PlantedConfig {
                model,
                ranks: per_slot,
                strength: *scale as f32,
                seq: *seq,
                eval_batches: eval_samples.div_ceil(EVAL_BATCH).max(1),
                eval_batch_size: (*eval_samples).clamp(1, EVAL_BATCH),
                seed: *data_seed,
            };
            let mut task = PlantedTask::new(cfg)?.with_order(*samples, seed);
            if split == Split::Dev {
                task = task.on_dev_split()?;
            }
            Ok((Box::new(task), Some(*samples)))
        }
        DataSpec::Synthetic {
            classes,
            samples,
            eval_samples,
            seq,
            seed: data_seed,
        } => {
            let model = transformer(&arm.model)?;
            let cfg = SyntheticConfig {
                model,
                classes: *classes,
                seq: *seq,
                signal: 0.5,
                eval_batches: eval_samples.div_ceil(EVAL_BATCH).max(1),
                eval_batch_size: (*eval_samples).clamp(1, EVAL_BATCH),
                seed: *data_seed,
            };
            let mut task = SyntheticTask::new(cfg)?.with_order(*samples, seed);
            if split == Split::Dev {
                task = task.on_dev_split();
            }
            Ok((Box::new(task), Some(*samples)))
        }
        other => {
            let Some(ckpt) = ckpt else {
                bail!(
                    "data {}: real data sets need a pretrained model (`model hf {{ ... }}` or \
                     `model path {{ ... }}`)",
                    serde_json::to_value(other)
                        .ok()
                        .and_then(|v| v.as_object().and_then(|o| o.keys().next().cloned()))
                        .unwrap_or_default()
                )
            };
            let max_len = arm.train.max_len;
            if let Some(t) = data::prepare::classify_task(other, ckpt, max_len, seed, split)? {
                let n = t.train_len();
                return Ok((Box::new(t), Some(n)));
            }
            if let Some(t) = data::prepare::span_task(other, ckpt, max_len, seed)? {
                let n = t.train_len();
                return Ok((Box::new(t), Some(n)));
            }
            bail!("arm {}: this data section has no task", arm.name)
        }
    }
}

/// `true` when the arm's metric is a loss (planted task) rather than an accuracy.
pub fn metric_is_loss(arm: &ArmPlan) -> bool {
    !metric_of(arm).1
}

/// The arm's metric: its name in the evaluation's metrics and whether higher is better. A
/// causal LM's follows its data (`crate::policy::lm::lm_metric`); a data section's `metric =
/// eval_loss` makes a classifier report its loss.
pub fn metric_of(arm: &ArmPlan) -> (&'static str, bool) {
    if let Some(m) = crate::policy::lm::lm_metric(&arm.data) {
        return (m.name(), m.higher_is_better());
    }
    let chosen_loss = match &arm.data {
        DataSpec::Movies { subset, .. }
        | DataSpec::Sst2 { subset, .. }
        | DataSpec::Mnli { subset, .. }
        | DataSpec::Jsonl { subset, .. } => {
            subset.lm.metric == Some(crate::data::lm::LmMetric::EvalLoss)
        }
        _ => false,
    };
    if chosen_loss || matches!(arm.data, DataSpec::Planted { .. }) {
        ("eval_loss", false)
    } else {
        ("accuracy", true)
    }
}

/// Optimizer steps of the arm.
pub fn total_steps(arm: &ArmPlan, train_samples: Option<usize>) -> Result<u64> {
    Ok(match arm.train.length {
        TrainLength::Steps(n) => n as u64,
        TrainLength::Epochs(e) => {
            let Some(n) = train_samples else {
                bail!("arm {}: epochs need a data set with a known size", arm.name)
            };
            (e * steps_per_epoch(arm, n)) as u64
        }
    })
}

pub fn steps_per_epoch(arm: &ArmPlan, samples: usize) -> usize {
    samples.div_ceil(arm.train.batch * arm.train.accum).max(1)
}

pub fn train_config(arm: &ArmPlan, steps: u64) -> TrainConfig {
    let t = &arm.train;
    TrainConfig {
        steps,
        batch: t.batch,
        lr: t.lr as f32,
        warmup: t.warmup as u64,
        decay: t.decay,
        weight_decay: t.weight_decay as f32,
        clip: t.clip.map(|c| c as f32),
        accum: t.accum,
        // Evaluations are the runner's (phase actions and the end).
        eval_every: 0,
        ..TrainConfig::default()
    }
}

/// The model's train mode: full fine-tuning, or LoRA at the arm's starting ranks.
pub fn train_mode(arm: &ArmPlan, layers: usize) -> TrainMode {
    let Some(l) = arm.lora.on() else {
        return TrainMode::Full;
    };
    let adaptive = reallocates(arm);
    // AdaLoRA's gain multiplies its output scale α/init_rank (see `policy::ADALORA_GAIN`).
    let gain = arm.adalora.as_ref().map_or(1.0, |a| a.gain);
    let mut cfg = LoraConfig {
        alpha: (l.alpha * gain) as f32,
        rslora: l.rslora,
        svd_form: arm.adalora.is_some(),
        frozen: arm.train.weights,
        ..LoraConfig::default()
    };
    for (layer, kind) in covered(l, layers) {
        let r = match (&arm.adalora, &arm.sora, adaptive) {
            (Some(a), _, _) => a.init_rank,
            (None, Some(s), _) => s.init_rank,
            (None, None, true) => l.init_rank,
            (None, None, false) => l.rank_of(layer, kind),
        };
        cfg.ranks.insert((layer, kind), r);
    }
    TrainMode::Lora(cfg)
}

/// The rank engine of an arm on a model of `layers` layers; `None` when its ranks never change
/// (full, fixed, layer-wise). `lora.param_budget` is handed to plugins as `ctx.param_budget` and
/// `param("param_budget")`.
pub fn engine_config(arm: &ArmPlan, layers: usize, steps: u64, seed: u64) -> Option<EngineConfig> {
    let l = match &arm.lora {
        LoraSpec::Off => return None,
        LoraSpec::On(l) => l,
    };
    let method = if let Some(a) = &arm.adalora {
        Method::AdaLora(AdaLoraConfig::from_spec(
            a,
            steps,
            arm.plugins.allocator.clone(),
        ))
    } else if let Some(s) = &arm.sora {
        Method::Sora(SoraConfig::from_spec(s, steps))
    } else if reallocates(arm) {
        let allocator = arm.plugins.allocator.clone()?;
        match &arm.plugins.complexity {
            Some(c) => Method::Adaptive {
                complexity: c.clone(),
                allocator,
                learner: arm.plugins.learner.clone(),
            },
            None => Method::Script {
                allocator,
                complexity: None,
            },
        }
    } else {
        return None;
    };
    let slots = covered(l, layers).len();
    let rank_budget = match l.param_budget {
        // The allocator meets the parameter budget; the rank total only has to stay feasible.
        Some(_) => slots * l.max_rank,
        None => l.budget.unwrap_or(l.init_rank * slots),
    };
    let mut cfg = EngineConfig::new(method, rank_budget, l.init_rank);
    cfg.params.clone_from(&arm.plugins.params);
    if let Some(p) = l.param_budget {
        cfg.params.insert("param_budget".into(), p.into());
    }
    cfg.param_budget = l.param_budget;
    cfg.min_rank = l.min_rank;
    cfg.max_rank = l.max_rank;
    cfg.resize = l.resize;
    cfg.seed = seed;
    // Plugin paths in the plan are already resolved against the policy file's directory.
    Some(cfg)
}

/// One event of an arm's static timeline.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct TimelineEvent {
    pub step: u64,
    pub phase: String,
    /// `reallocate`, `finalize` (a no-op for methods that do not relax ranks), `evaluate`,
    /// `checkpoint`, `log`, AdaLoRA's `mask` / `prune`, or `cut`: where a re-allocation's fade
    /// (`lora.fade`) ends and the adapters resize (listed without a phase; under an allocator
    /// without a learner only a re-allocation that shrinks an adapter fades).
    pub action: String,
}

/// Every action of an arm with the step it fires at, as far as the schedule is static.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Timeline {
    pub arm: String,
    /// Optimizer steps (unknown for `epochs` on a data set whose size is only known at run time).
    pub steps: Option<u64>,
    pub events: Vec<TimelineEvent>,
    /// Where the timeline stops being static: the first phase that ends on a metric or plugin
    /// condition, or why the length is unknown.
    pub dynamic_from: Option<String>,
    /// Methods that act after every step on their own (SoRA's gates).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub every_step: Option<String>,
}

/// The fades' cuts of a scripted method, as the engine makes them (`engine::fade`,
/// `engine::relax`): a re-allocation at step s fades over `fade` steps and is cut at s + fade,
/// unless the next decision comes first (that decision makes the cut itself) or training ends
/// first. `finalize` (a relaxed method's last decision) cuts at once.
fn add_cuts(events: &mut Vec<TimelineEvent>, fade: u64, total: u64) {
    if fade == 0 {
        return;
    }
    let decisions: Vec<(u64, bool)> = events
        .iter()
        .filter(|e| e.action == "reallocate" || e.action == "finalize")
        .map(|e| (e.step, e.action == "reallocate"))
        .collect();
    for (i, &(s, fades)) in decisions.iter().enumerate() {
        let cut = s + fade;
        let next = decisions.get(i + 1).map_or(u64::MAX, |d| d.0);
        if fades && cut <= total && cut <= next {
            events.push(TimelineEvent {
                step: cut,
                phase: String::new(),
                action: "cut".into(),
            });
        }
    }
    // At one step the engine's step work (the cut) comes before the schedule's events.
    events.sort_by_key(|e| (e.step, e.action != "cut"));
}

/// The static timeline of `arm` (for `adarank check --plan`), by the same [`Schedule`] the
/// runner applies.
///
/// [`Schedule`]: crate::engine::schedule::Schedule
pub fn timeline(arm: &ArmPlan) -> Timeline {
    use crate::engine::schedule::Schedule;
    let samples = match &arm.data {
        DataSpec::Planted { samples, .. } | DataSpec::Synthetic { samples, .. } => Some(*samples),
        _ => None,
    };
    let steps = total_steps(arm, samples).ok();
    let Some(total) = steps else {
        return Timeline {
            arm: arm.name.clone(),
            steps: None,
            events: vec![],
            dynamic_from: Some("training length (epochs of a data set read at run time)".into()),
            every_step: None,
        };
    };
    let spe = samples
        .map(|n| steps_per_epoch(arm, n) as u64)
        .unwrap_or(u64::MAX);
    let mut sched = Schedule::new(
        arm.phases.clone(),
        total,
        spe,
        arm.train.eval_every.map(|n| n as u64),
    )
    .with_checkpoint_every(arm.train.checkpoint_every.map(|n| n as u64));
    // The method decides which events apply (AdaLoRA: its budget steps); its layer count does
    // not matter here.
    if let Some(c) = engine_config(arm, 1, total, 0) {
        sched = sched.with_method(&c.method);
    }
    let (planned, dynamic) = sched.timeline();
    let mut events: Vec<TimelineEvent> = planned
        .into_iter()
        .filter(|p| arm.lora.on().is_some() || p.event.name() != "finalize")
        .map(|p| TimelineEvent {
            step: p.step,
            phase: p.phase,
            action: p.event.name().into(),
        })
        .collect();
    if let (Some(l), Some(c)) = (arm.lora.on(), engine_config(arm, 1, total, 0)) {
        if matches!(c.method, Method::Adaptive { .. } | Method::Script { .. }) {
            add_cuts(&mut events, l.resize.fade as u64, total);
        }
    }
    Timeline {
        arm: arm.name.clone(),
        steps: Some(total),
        events,
        dynamic_from: dynamic.map(|p| format!("phase `{p}` (ends on a condition)")),
        every_step: arm
            .sora
            .as_ref()
            .map(|_| "SoRA: gate step and pruning of gates at 0".into()),
    }
}
