//! The checker: from the AST (plus `--set` overrides) to one typed plan per arm, with every
//! mistake found on the way collected as a diagnostic.

use super::arm_plan::*;
use super::ast::*;
use super::diag::Diagnostic;
use super::fields::Fields;
use super::layers::{Config, Entry, Layer, Section};
use super::plugins::{self, ParamSetting, PluginChecker};
use super::sections::{self, Shape};
use super::suggest;
use crate::engine::Role;
use std::collections::{BTreeMap, HashSet};
use std::path::Path;

pub const METRICS: &[&str] = &[
    "loss",
    "eval_loss",
    "accuracy",
    "f1",
    "exact_match",
    "grad_norm",
];
const DEFAULT_BASE: &str = "adaptive";
/// Longest arm name: it is part of file names (`adapters/ARM-seedK`, `ARM@lr=RATE-seedK.json`
/// of a sweep cell, lock files), and a file system takes 255 bytes a name, so this leaves room
/// for every suffix the run adds.
pub const MAX_ARM_NAME: usize = 128;

pub struct Checked {
    pub arms: Vec<ArmPlan>,
    pub seeds: Vec<u64>,
    pub baseline: Option<String>,
}

pub fn check(
    exp: &Experiment,
    overrides: &[Setting],
    base_dir: &Path,
    plugin_checker: &mut PluginChecker,
    d: &mut Vec<Diagnostic>,
) -> Option<Checked> {
    let mut base = Config::default();
    base.apply(&exp.items, Layer::Base, d);
    let override_items: Vec<Item> = overrides.iter().cloned().map(Item::Setting).collect();
    base.apply(&override_items, Layer::Override, d);

    let base_name = base_arm_name(&base, d);
    let seeds = seeds(&base, d);

    let mut ctx = Ctx {
        base_dir,
        plugin_checker,
        experiment: exp.name.span,
        params: Vec::new(),
    };
    let mut arms = Vec::new();
    let base_plan = ctx.arm_plan(&base_name, false, &base, d);
    arms.push(base_plan);

    // Sets, not scans: a file may declare a hundred thousand arms, and checking stays linear.
    let mut names: HashSet<&str> = HashSet::from([base_name.as_str()]);
    let base_errors: HashSet<((usize, usize, usize), String)> = d
        .iter()
        .map(|x| (x.span.key(), x.message.clone()))
        .collect();
    let mut baseline: Option<(String, Span)> = None;
    for item in &exp.items {
        let Item::Arm(arm) = item else { continue };
        let name = &arm.name.node;
        if !arm_name_is_new(arm, &base_name, &mut names, d) {
            continue;
        }
        let (is_baseline, ablation) = markers(arm, d);
        if is_baseline {
            note_baseline(arm, &mut baseline, d);
        }
        let mut cfg = base.clone();
        cfg.apply(&arm.items, Layer::Arm, d);
        let mut arm_d = Vec::new();
        let plan = ctx.arm_plan(name, ablation, &cfg, &mut arm_d);
        // Mistakes of the base experiment show once; new ones say which arm meets them.
        for mut e in arm_d {
            if !base_errors.contains(&(e.span.key(), e.message.clone())) {
                e.message = format!("{} (in arm `{name}`)", e.message);
                d.push(e);
            }
        }
        // One run opens one device: `train.device` belongs to the experiment.
        one_device(arm, &arms, &plan, d);
        arms.push(plan);
    }
    let arms: Option<Vec<ArmPlan>> = arms.into_iter().collect();
    if !d.is_empty() {
        return None;
    }
    Some(Checked {
        arms: arms?,
        seeds: seeds?,
        baseline: baseline.map(|b| b.0),
    })
}

/// The base arm's name (`base = NAME`), `adaptive` when unset or not a name.
fn base_arm_name(base: &Config, d: &mut Vec<Diagnostic>) -> String {
    match base.top.get("base").map(|e| &e.value) {
        None => DEFAULT_BASE.to_string(),
        Some(Spanned {
            node: Value::Word(w),
            span,
        }) => {
            if w.len() > MAX_ARM_NAME {
                d.push(
                    Diagnostic::new(
                        *span,
                        format!("the base arm's name has {} bytes; at most {MAX_ARM_NAME} fit in the run's file names", w.len()),
                        "too long",
                    )
                    .help("an arm's name becomes part of its folders (`adapters/ARM-seedK`); shorten it"),
                );
            }
            w.clone()
        }
        Some(v) => {
            d.push(
                Diagnostic::new(
                    v.span,
                    format!("`base` is the base arm's name, found {}", v.node.describe()),
                    "expected a name",
                )
                .help("write e.g. `base = adaptive`"),
            );
            DEFAULT_BASE.to_string()
        }
    }
}

/// An arm's name must fit in file names and be unique; `false` skips the arm.
fn arm_name_is_new<'a>(
    arm: &'a Arm,
    base_name: &str,
    names: &mut HashSet<&'a str>,
    d: &mut Vec<Diagnostic>,
) -> bool {
    let name = &arm.name.node;
    if name.len() > MAX_ARM_NAME {
        d.push(
                Diagnostic::new(
                    arm.name.span,
                    format!(
                        "arm name of {} bytes; at most {MAX_ARM_NAME} fit in the run's file names",
                        name.len()
                    ),
                    "too long",
                )
                .help("an arm's name becomes part of its folders (`adapters/ARM-seedK`, `predictions/ARM-seedK.jsonl`, sweep cells `ARM@lr=RATE`) and a file system takes 255 bytes a name; shorten it"),
            );
        return false;
    }
    if !names.insert(name.as_str()) {
        let help = if *name == base_name {
            format!("`{name}` is the base experiment's arm; rename this arm or set `base = OTHER`")
        } else {
            "give each arm its own name".to_string()
        };
        d.push(
            Diagnostic::new(
                arm.name.span,
                format!("arm `{name}` is declared twice"),
                "again here",
            )
            .help(help),
        );
        return false;
    }
    true
}

/// The arm's `baseline` and `ablation` markers, each written at most once.
fn markers(arm: &Arm, d: &mut Vec<Diagnostic>) -> (bool, bool) {
    let mut is_baseline = false;
    let mut ablation = false;
    for m in &arm.markers {
        let flag = if m.node == "baseline" {
            &mut is_baseline
        } else {
            &mut ablation
        };
        if *flag {
            d.push(
                Diagnostic::new(
                    m.span,
                    format!("`{}` is written twice", m.node),
                    "again here",
                )
                .help("write it once"),
            );
        }
        *flag = true;
    }
    (is_baseline, ablation)
}

/// Records the baseline arm; a second one is a mistake.
fn note_baseline(arm: &Arm, baseline: &mut Option<(String, Span)>, d: &mut Vec<Diagnostic>) {
    let name = &arm.name.node;
    if let Some((first, _)) = &baseline {
        let span = arm
            .markers
            .iter()
            .find(|m| m.node == "baseline")
            .map_or(arm.name.span, |m| m.span);
        d.push(
            Diagnostic::new(
                span,
                format!("a second baseline arm (`{first}` is already the baseline)"),
                "second baseline",
            )
            .help("mark exactly one arm `baseline`; reports compare every arm with it"),
        );
    } else {
        *baseline = Some((name.clone(), arm.name.span));
    }
}

/// One run opens one device: an arm may not move `train.device` off the experiment's.
fn one_device(
    arm: &Arm,
    arms: &[Option<ArmPlan>],
    plan: &Option<ArmPlan>,
    d: &mut Vec<Diagnostic>,
) {
    let name = &arm.name.node;
    let base_device = arms
        .first()
        .and_then(|b| b.as_ref())
        .map(|b| b.train.device);
    if let (Some(p), Some(bd)) = (&plan, base_device) {
        if p.train.device != bd {
            d.push(
                    Diagnostic::new(
                        arm.name.span,
                        format!(
                            "arm `{name}` sets `train.device` to {:?}, but the experiment runs on {:?}",
                            p.train.device, bd
                        ),
                        "another device",
                    )
                    .help("every arm of a run trains on one device: set `train.device` in the experiment, not in an arm (or pass `--device`)"),
                );
        }
    }
}

fn seeds(cfg: &Config, d: &mut Vec<Diagnostic>) -> Option<Vec<u64>> {
    let Some(e) = cfg.top.get("seeds") else {
        return Some(vec![1]);
    };
    let header = e.key.span;
    let entries = [e.clone()];
    let mut f = Fields {
        section: "experiment",
        header,
        entries: &entries,
        d,
    };
    let list = f.count_list("seeds", "[1, 2, 3]")?;
    if list.is_empty() {
        f.value_error(
            e.value.span,
            "`seeds` is empty".into(),
            "list at least one seed, e.g. `seeds = [1]`".into(),
        );
        return None;
    }
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    for (s, span) in list {
        if !seen.insert(s) {
            f.value_error(
                span,
                format!("seed {s} is listed twice"),
                "each seed runs every arm once; list each seed once".into(),
            );
            return None;
        }
        out.push(s);
    }
    Some(out)
}

/// A phase bound's step or epoch count: a whole number ≥ 1.
fn phase_count(n: &Spanned<Number>, d: &mut Vec<Diagnostic>) -> Option<usize> {
    match n.node.as_count() {
        Some(v) if v > 0 => Some(v as usize),
        // Whole, but past what a float holds exactly (and any training length).
        None if n.node.value.fract() == 0.0 && n.node.value > 0.0 => {
            d.push(
                Diagnostic::new(
                    n.span,
                    format!("`{}` is beyond any training length", n.node.text),
                    "too large",
                )
                .help(
                    "a phase bound counts steps or epochs of this run; write e.g. `until step 100`",
                ),
            );
            None
        }
        _ => {
            d.push(
                Diagnostic::new(
                    n.span,
                    format!(
                        "a phase bound is a whole number ≥ 1, found `{}`",
                        n.node.text
                    ),
                    "here",
                )
                .help("write e.g. `until step 100` or `until epoch 2`"),
            );
            None
        }
    }
}

/// `until step 25%`: the share of `train.steps` as a step bound, at least step 1.
fn share_as_step(
    c: &Spanned<Cond>,
    n: &Spanned<Number>,
    steps: Option<usize>,
    d: &mut Vec<Diagnostic>,
) -> Option<Spanned<Cond>> {
    let share = n.node.value;
    let Some(s) = steps else {
        d.push(
            Diagnostic::new(
                n.span,
                "a bound as a share of training needs `train.steps`",
                "share of what?",
            )
            .help("set `train.steps`, or bound the phase by `epoch N`"),
        );
        return None;
    };
    if !(share > 0.0 && share <= 1.0) {
        d.push(
            Diagnostic::new(
                n.span,
                format!("`{}` is not a share of training", n.node.text),
                "here",
            )
            .help("a share lies between 0% and 100%, e.g. `until step 25%`"),
        );
        return None;
    }
    let v = ((share * s as f64).round() as usize).max(1);
    let resolved = Spanned::new(
        Cond::Step(Spanned::new(
            Number {
                text: v.to_string(),
                value: v as f64,
            },
            n.span,
        )),
        c.span,
    );
    Some(resolved)
}

/// `until step N`: after the previous step bound, within training, and the last phase ends with it.
fn step_bound<'p>(
    n: &Spanned<Number>,
    name: &'p str,
    is_last: bool,
    steps: Option<usize>,
    prev_step: &mut (usize, Option<&'p str>),
    d: &mut Vec<Diagnostic>,
) -> Option<Until> {
    let v = phase_count(n, d)?;
    if v <= prev_step.0 && prev_step.1.is_some() {
        let prev = prev_step.1.unwrap_or_default();
        d.push(
            Diagnostic::new(n.span, format!("phase `{name}` ends at step {v}, but phase `{prev}` before it already ends at step {}", prev_step.0), "not after the previous bound")
                .help("phases run in file order, so their step bounds must increase; reorder the phases or fix the bound"),
        );
        return None;
    }
    if let Some(s) = steps {
        if v > s {
            d.push(
                Diagnostic::new(n.span, format!("phase `{name}` ends at step {v}, after training ends (train.steps = {s})"), "beyond train.steps")
                    .help("lower the bound, raise train.steps, or give the bound as a share of training (`until step 60%`) so it follows train.steps"),
            );
            return None;
        }
        if is_last && v < s {
            d.push(
                Diagnostic::new(
                    n.span,
                    format!(
                        "the last phase `{name}` ends at step {v}, but training runs to step {s}"
                    ),
                    "steps after this belong to no phase",
                )
                .help(
                    "drop this `until` so the last phase runs to the end, or add a phase after it",
                ),
            );
            return None;
        }
    }
    *prev_step = (v, Some(name));
    Some(Until::Step(v))
}

/// `until epoch N`: after the previous epoch bound.
fn epoch_bound<'p>(
    n: &Spanned<Number>,
    name: &'p str,
    prev_epoch: &mut (usize, Option<&'p str>),
    d: &mut Vec<Diagnostic>,
) -> Option<Until> {
    let v = phase_count(n, d)?;
    if v <= prev_epoch.0 && prev_epoch.1.is_some() {
        let prev = prev_epoch.1.unwrap_or_default();
        d.push(
            Diagnostic::new(n.span, format!("phase `{name}` ends at epoch {v}, but phase `{prev}` before it already ends at epoch {}", prev_epoch.0), "not after the previous bound")
                .help("phases run in file order, so their epoch bounds must increase"),
        );
        return None;
    }
    *prev_epoch = (v, Some(name));
    Some(Until::Epoch(v))
}

/// `until METRIC < X`: a known metric and a finite threshold.
fn metric_bound(
    metric: &Ident,
    op: CmpOp,
    value: &Spanned<Number>,
    d: &mut Vec<Diagnostic>,
) -> Option<Until> {
    if !METRICS.contains(&metric.node.as_str()) {
        d.push(
            Diagnostic::new(
                metric.span,
                format!("unknown metric `{}`", metric.node),
                "unknown metric",
            )
            .help(suggest::help(&metric.node, "metric", METRICS)),
        );
        return None;
    }
    if !value.node.value.is_finite() {
        d.push(
            Diagnostic::new(value.span, "the threshold is not a finite number", "here")
                .help("write e.g. `eval_loss < 0.3`"),
        );
        return None;
    }
    Some(Until::Metric {
        name: metric.node.clone(),
        op,
        value: value.node.value,
    })
}

struct Ctx<'a> {
    base_dir: &'a Path,
    plugin_checker: &'a mut PluginChecker,
    experiment: Span,
    /// The plugin parameters of the arm being checked, each with the plugin that takes it.
    params: Vec<(ParamSetting, String)>,
}

/// The metrics an evaluation of `data` reports to phase conditions: the held-out loss always,
/// accuracy where the task classifies (the planted task is a regression). The other names of
/// [`METRICS`] are never measured at an evaluation, so a phase waiting on one would never end.
pub fn evaluated_metrics(data: &DataSpec) -> &'static [&'static str] {
    match data {
        DataSpec::Planted { .. } => &["eval_loss"],
        _ => &["eval_loss", "accuracy"],
    }
}

/// A phase ending on a metric the arm's evaluation never reports would never end (and the phases
/// after it never start): refused here, where the run would only find out by running to the end.
fn metrics_the_data_reports(cfg: &Config, data: &DataSpec, d: &mut Vec<Diagnostic>) {
    let have = evaluated_metrics(data);
    for p in &cfg.phases {
        let Some(Spanned {
            node: Cond::Metric { name, .. },
            ..
        }) = &p.until
        else {
            continue;
        };
        if METRICS.contains(&name.node.as_str()) && !have.contains(&name.node.as_str()) {
            d.push(
                Diagnostic::new(
                    name.span,
                    format!(
                        "phase `{}` waits for `{}`, which this arm's evaluation never reports",
                        p.name.node, name.node
                    ),
                    "never measured",
                )
                .help(format!(
                    "an evaluation of this data reports {}; bound the phase on one of them, a step or an epoch",
                    have.iter().map(|m| format!("`{m}`")).collect::<Vec<_>>().join(" and ")
                )),
            );
        }
    }
}

impl Ctx<'_> {
    fn section<'c>(&self, cfg: &'c Config, key: &str) -> Option<&'c Section> {
        cfg.sections.get(key)
    }

    fn missing_section(&self, cfg: &Config, key: &str, example: &str, d: &mut Vec<Diagnostic>) {
        if cfg.flagged.contains(key) {
            return;
        }
        d.push(
            Diagnostic::new(
                self.experiment,
                format!("the experiment has no `{key}` section"),
                format!("`{key}` missing"),
            )
            .help(format!("add `{example}`")),
        );
    }

    fn arm_plan(
        &mut self,
        name: &str,
        ablation: bool,
        cfg: &Config,
        d: &mut Vec<Diagnostic>,
    ) -> Option<ArmPlan> {
        let before = d.len();
        self.params.clear();
        let model = self.model_section(cfg, d);
        let (model, shape) = match model {
            Some((spec, cfg)) => (Some(spec), Shape { model: Some(cfg) }),
            None => (None, Shape::default()),
        };
        let data = self.data_section(cfg, &model, &shape, d);
        let train = self.train_section(cfg, d);
        let steps = train.as_ref().and_then(|t| t.steps());
        let (lora, lora_off_span) = self.lora_section(cfg, &shape, d);
        let adalora = self.adalora_section(cfg, &lora, lora_off_span, steps, d);
        let sora = self.sora_section(cfg, &lora, lora_off_span, &adalora, d);
        let plugins = self.plugins(cfg, d);
        let lora_on = matches!(lora, Some(LoraSpec::On(_)));
        // AdaLoRA or SoRA: a built-in method that reallocates without an allocator plugin.
        let builtin_method = matches!(adalora, Some(Some(_))) || matches!(sora, Some(Some(_)));
        let phases = self.phases(cfg, steps, lora_on, builtin_method, plugins.as_ref(), d);
        let params = self.arm_params(d);
        if let Some(data) = &data {
            metrics_the_data_reports(cfg, data, d);
            if let Some(model) = &model {
                self.model_fits_data(cfg, model, data, d);
            }
        }
        if d.len() > before {
            return None;
        }
        Some(ArmPlan {
            name: name.to_string(),
            ablation,
            model: model?,
            data: data?,
            lora: lora?,
            adalora: adalora?,
            sora: sora?,
            train: train?,
            plugins: PluginSpec { params, ..plugins? },
            phases: phases?,
        })
    }

    fn model_section(
        &mut self,
        cfg: &Config,
        d: &mut Vec<Diagnostic>,
    ) -> Option<(ModelSpec, crate::model::ModelConfig)> {
        match self.section(cfg, "model") {
            Some(Section::On {
                kind: Some(kind),
                header,
                entries,
            }) => {
                let mut f = Fields {
                    section: "model",
                    header: *header,
                    entries,
                    d,
                };
                sections::model(&mut f, kind, self.base_dir)
            }
            _ => {
                self.missing_section(
                    cfg,
                    "model",
                    "model encoder { layers = 4, hidden = 128, heads = 4 }",
                    d,
                );
                None
            }
        }
    }

    /// The data section, checked against the model it feeds (positions, vocabulary, LM fit).
    fn data_section(
        &mut self,
        cfg: &Config,
        model: &Option<ModelSpec>,
        shape: &Shape,
        d: &mut Vec<Diagnostic>,
    ) -> Option<DataSpec> {
        match self.section(cfg, "data") {
            Some(Section::On {
                kind: Some(kind),
                header,
                entries,
            }) => {
                let mut f = Fields {
                    section: "data",
                    header: *header,
                    entries,
                    d,
                };
                let (max_positions, vocab) = match model {
                    Some(ModelSpec::Encoder(t) | ModelSpec::Decoder(t)) => {
                        (Some(t.max_positions), Some(t.vocab))
                    }
                    _ => (None, None),
                };
                let data = sections::data(
                    &mut f,
                    kind,
                    self.base_dir,
                    shape.hidden(),
                    max_positions,
                    vocab,
                );
                if let (Some(m), Some(dt)) = (model, &data) {
                    super::lm::check(&mut f, m, dt);
                }
                data
            }
            _ => {
                self.missing_section(cfg, "data", "data planted { ranks = [2, 8] }", d);
                None
            }
        }
    }

    fn train_section(&mut self, cfg: &Config, d: &mut Vec<Diagnostic>) -> Option<TrainSpec> {
        match self.section(cfg, "train") {
            Some(Section::On {
                header, entries, ..
            }) => {
                let mut f = Fields {
                    section: "train",
                    header: *header,
                    entries,
                    d,
                };
                sections::train(&mut f)
            }
            _ => {
                self.missing_section(cfg, "train", "train { steps = 1000 }", d);
                None
            }
        }
    }

    /// The lora section and, when it is `off`, where: the rank methods need LoRA on.
    fn lora_section(
        &mut self,
        cfg: &Config,
        shape: &Shape,
        d: &mut Vec<Diagnostic>,
    ) -> (Option<LoraSpec>, Option<Span>) {
        let no_entries: [Entry; 0] = [];
        match self.section(cfg, "lora") {
            Some(Section::Off(span)) => (Some(LoraSpec::Off), Some(*span)),
            Some(Section::On {
                header, entries, ..
            }) => {
                let mut f = Fields {
                    section: "lora",
                    header: *header,
                    entries,
                    d,
                };
                (sections::lora(&mut f, shape).map(LoraSpec::On), None)
            }
            None => {
                let mut f = Fields {
                    section: "lora",
                    header: self.experiment,
                    entries: &no_entries,
                    d,
                };
                (sections::lora(&mut f, shape).map(LoraSpec::On), None)
            }
        }
    }

    fn adalora_section(
        &mut self,
        cfg: &Config,
        lora: &Option<LoraSpec>,
        lora_off_span: Option<Span>,
        steps: Option<usize>,
        d: &mut Vec<Diagnostic>,
    ) -> Option<Option<AdaLoraSpec>> {
        match self.section(cfg, "adalora") {
            Some(Section::On {
                header, entries, ..
            }) => {
                if let Some(off) = lora_off_span {
                    d.push(
                        Diagnostic::new(
                            off,
                            "`lora = off` leaves nothing for `adalora` to adapt",
                            "lora off here",
                        )
                        .help(
                            "remove `lora = off`, or switch AdaLoRA off too with `adalora = off`",
                        ),
                    );
                }
                let lora_init = lora
                    .as_ref()
                    .and_then(|l| l.on())
                    .map_or(8, |l| l.init_rank);
                let param_budget = lora
                    .as_ref()
                    .and_then(|l| l.on())
                    .and_then(|l| l.param_budget);
                let mut f = Fields {
                    section: "adalora",
                    header: *header,
                    entries,
                    d,
                };
                sections::adalora(&mut f, lora_init, param_budget, steps).map(Some)
            }
            Some(Section::Off(_)) | None => Some(None),
        }
    }

    fn sora_section(
        &mut self,
        cfg: &Config,
        lora: &Option<LoraSpec>,
        lora_off_span: Option<Span>,
        adalora: &Option<Option<AdaLoraSpec>>,
        d: &mut Vec<Diagnostic>,
    ) -> Option<Option<SoraSpec>> {
        match self.section(cfg, "sora") {
            Some(Section::On {
                header, entries, ..
            }) => {
                if let Some(off) = lora_off_span {
                    d.push(
                        Diagnostic::new(
                            off,
                            "`lora = off` leaves nothing for `sora` to gate",
                            "lora off here",
                        )
                        .help("remove `lora = off`, or switch SoRA off too with `sora = off`"),
                    );
                }
                if matches!(adalora, Some(Some(_))) {
                    d.push(
                        Diagnostic::new(
                            *header,
                            "an arm is trained by AdaLoRA or by SoRA, not both",
                            "second rank method",
                        )
                        .help("switch one off in this arm: `adalora = off` or `sora = off`"),
                    );
                }
                let lora_init = lora
                    .as_ref()
                    .and_then(|l| l.on())
                    .map_or(8, |l| l.init_rank);
                let mut f = Fields {
                    section: "sora",
                    header: *header,
                    entries,
                    d,
                };
                sections::sora(&mut f, lora_init).map(Some)
            }
            Some(Section::Off(_)) | None => Some(None),
        }
    }

    /// Generated data (planted, synthetic) is built for a randomly initialised model of the
    /// policy's shape; real text needs a pretrained model's tokenizer. Either mismatch is found
    /// here rather than when the cell starts.
    fn model_fits_data(
        &self,
        cfg: &Config,
        model: &ModelSpec,
        data: &DataSpec,
        d: &mut Vec<Diagnostic>,
    ) {
        let generated = matches!(data, DataSpec::Planted { .. } | DataSpec::Synthetic { .. });
        let random = matches!(model, ModelSpec::Encoder(_) | ModelSpec::Decoder(_));
        if generated == random {
            return;
        }
        let span = |s: &str| match cfg.sections.get(s) {
            Some(Section::On { header, .. }) => *header,
            _ => self.experiment,
        };
        let (message, help) = if generated {
            (
                "the planted and synthetic tasks need a randomly initialised model",
                "use `model encoder { layers = .., hidden = .., heads = .. }` with generated data, or real data (`data movies`, `data jsonl { .. }`) with a pretrained model",
            )
        } else {
            (
                "real text needs a pretrained model (its tokenizer and weights)",
                "use `model hf { name = \"...\" }` or `model path { dir = \"...\" }` with real data, or generated data (`data planted`, `data synthetic`) with `model encoder`",
            )
        };
        d.push(
            Diagnostic::new(span("data"), message, "this data does not fit the model").help(help),
        );
    }

    fn plugin(
        &mut self,
        cfg: &Config,
        key: &str,
        role: Role,
        d: &mut Vec<Diagnostic>,
    ) -> Result<Option<std::path::PathBuf>, ()> {
        let Some(e) = cfg.top.get(key) else {
            return Ok(None);
        };
        match &e.value.node {
            Value::Plugin(r) => self.plugin_ref(r, role, d).map(Some).ok_or(()),
            Value::Word(w) if w == "none" => Ok(None),
            other => {
                let f = role.function();
                d.push(
                    Diagnostic::new(e.value.span, format!("`{key}` must be a plugin, found {}", other.describe()), "expected `plugin \"...\"`")
                        .help(format!("write `{key} = plugin \"../plugins/NAME.rhai\"` (a script defining `{f}`), or `{key} = none`")),
                );
                Err(())
            }
        }
    }

    /// Resolves and checks a plugin reference and the parameters it sets (kept for the arm).
    fn plugin_ref(
        &mut self,
        r: &PluginRef,
        role: Role,
        d: &mut Vec<Diagnostic>,
    ) -> Option<std::path::PathBuf> {
        let path = plugins::resolve(&r.path.node, self.base_dir);
        if let Some(diag) = self
            .plugin_checker
            .check(&r.path.node, &path, role, r.path.span)
        {
            d.push(diag);
            return None;
        }
        let params = self.plugin_checker.check_params(r, &path, role, d)?;
        let owner = format!("the {} plugin `{}`", role.name(), r.path.node);
        self.params
            .extend(params.into_iter().map(|p| (p, owner.clone())));
        Some(path)
    }

    /// The arm's plugin parameters as one map (the engine hands one set to all its plugins):
    /// a name two plugins both read must not be set to two values.
    fn arm_params(&mut self, d: &mut Vec<Diagnostic>) -> BTreeMap<String, serde_json::Value> {
        let mut out: BTreeMap<String, (serde_json::Value, &str)> = BTreeMap::new();
        for (p, owner) in &self.params {
            match out.get(&p.name.node) {
                Some((v, first)) if *v != p.value => d.push(
                    Diagnostic::new(
                        p.name.span,
                        format!(
                            "`{}` is set to {v} for {first} and to {} here",
                            p.name.node, p.value
                        ),
                        "a second value",
                    )
                    .help("the plugins of an arm share one set of parameters: give both the same value"),
                ),
                Some(_) => {}
                None => {
                    out.insert(p.name.node.clone(), (p.value.clone(), owner));
                }
            }
        }
        out.into_iter().map(|(k, (v, _))| (k, v)).collect()
    }

    fn plugins(&mut self, cfg: &Config, d: &mut Vec<Diagnostic>) -> Option<PluginSpec> {
        let complexity = self.plugin(cfg, "complexity", Role::Complexity, d);
        let allocator = self.plugin(cfg, "allocator", Role::Allocator, d);
        let learner = self.plugin(cfg, "learner", Role::Learner, d);
        Some(PluginSpec {
            complexity: complexity.ok()?,
            allocator: allocator.ok()?,
            learner: learner.ok()?,
            params: BTreeMap::new(),
        })
    }

    fn phases(
        &mut self,
        cfg: &Config,
        steps: Option<usize>,
        lora_on: bool,
        builtin_method: bool,
        plugins: Option<&PluginSpec>,
        d: &mut Vec<Diagnostic>,
    ) -> Option<Vec<PhaseSpec>> {
        if cfg.phases.is_empty() {
            return Some(vec![PhaseSpec {
                name: "main".into(),
                until: Until::End,
                actions: vec![],
            }]);
        }
        let before = d.len();
        let mut out = Vec::new();
        // Where the previous phase ended, when known statically.
        let mut prev_step: (usize, Option<&str>) = (0, None);
        let mut prev_epoch: (usize, Option<&str>) = (0, None);
        let mut open_ended: Option<&str> = None;
        let last = cfg.phases.len() - 1;
        for (i, p) in cfg.phases.iter().enumerate() {
            let name = p.name.node.as_str();
            if let Some(prev) = open_ended {
                d.push(
                    Diagnostic::new(p.name.span, format!("phase `{name}` can never start"), "unreachable")
                        .help(format!("phase `{prev}` before it runs to the end of training; give `{prev}` an `until` bound")),
                );
            }
            // A later phase starts after at least one step even when the step is not known
            // statically (a metric bound before it).
            let start = if i == 0 { 0 } else { prev_step.0.max(1) };
            let until = match &p.until {
                None => {
                    open_ended = Some(name);
                    Some(Until::End)
                }
                Some(c) => self.until(
                    c,
                    name,
                    i == last,
                    steps,
                    &mut prev_step,
                    &mut prev_epoch,
                    d,
                ),
            };
            // The phase's extent in steps, when known: actions that can't fire are mistakes.
            let end = match until {
                Some(Until::Step(n)) => Some(n),
                Some(Until::End) if i == last => steps,
                _ => None,
            };
            let actions = self.actions(p, start, end, lora_on, builtin_method, plugins, d);
            if i == last && lora_on {
                self.no_reallocation_at_the_end(p, d);
            }
            if let (Some(until), Some(actions)) = (until, actions) {
                out.push(PhaseSpec {
                    name: name.to_string(),
                    until,
                    actions,
                });
            }
        }
        (d.len() == before).then_some(out)
    }

    #[allow(clippy::too_many_arguments)]
    fn until<'p>(
        &mut self,
        c: &Spanned<Cond>,
        name: &'p str,
        is_last: bool,
        steps: Option<usize>,
        prev_step: &mut (usize, Option<&'p str>),
        prev_epoch: &mut (usize, Option<&'p str>),
        d: &mut Vec<Diagnostic>,
    ) -> Option<Until> {
        match &c.node {
            Cond::Step(n) if n.node.is_share() => {
                let resolved = share_as_step(c, n, steps, d)?;
                self.until(&resolved, name, is_last, steps, prev_step, prev_epoch, d)
            }
            Cond::Step(n) => step_bound(n, name, is_last, steps, prev_step, d),
            Cond::Epoch(n) => epoch_bound(n, name, prev_epoch, d),
            Cond::Metric {
                name: metric,
                op,
                value,
            } => metric_bound(metric, *op, value, d),
            Cond::Plugin(r) => {
                let path = self.plugin_ref(r, Role::Condition, d)?;
                Some(Until::Plugin { path })
            }
        }
    }

    /// The last phase runs to the end of training, so a re-allocation in it is followed by
    /// whatever steps remain, possibly none: its ranks would be evaluated untrained. A final
    /// allocation belongs in a phase followed by a declared settle phase.
    fn no_reallocation_at_the_end(&self, p: &Phase, d: &mut Vec<Diagnostic>) {
        for a in &p.actions {
            for w in &a.what {
                if w.node == ActionKind::Reallocate.name() {
                    d.push(
                        Diagnostic::new(
                            w.span,
                            format!(
                                "`reallocate` in the last phase `{}`: its last allocation would be evaluated with little or no training",
                                p.name.node
                            ),
                            "re-allocates until the end",
                        )
                        .help(format!(
                            "bound phase `{}` (e.g. `until step 80%`) and add a phase after it without `reallocate`, e.g. `phase settle {{}}`",
                            p.name.node
                        )),
                    );
                }
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn actions(
        &self,
        p: &Phase,
        start: usize,
        end: Option<usize>,
        lora_on: bool,
        builtin_method: bool,
        plugins: Option<&PluginSpec>,
        d: &mut Vec<Diagnostic>,
    ) -> Option<Vec<Action>> {
        let names: Vec<&str> = ActionKind::ALL.iter().map(|a| a.name()).collect();
        let mut out: Vec<Action> = Vec::new();
        let mut ok = true;
        let mut seen: Vec<ActionKind> = Vec::new();
        for a in &p.actions {
            let every = match a.every.node.as_count() {
                Some(v) if v > 0 => v as usize,
                _ => {
                    d.push(
                        Diagnostic::new(
                            a.every.span,
                            format!(
                                "`every` takes a whole number of steps ≥ 1, found `{}`",
                                a.every.node.text
                            ),
                            "here",
                        )
                        .help("write e.g. `every 50 steps: reallocate`"),
                    );
                    ok = false;
                    continue;
                }
            };
            // Steps are counted from 1 and the schedule acts after a step, so the first phase
            // (start 0) acts at N, 2N, … before its end, while a later phase also acts on
            // entering it: there an interval longer than the phase means "once, on entry".
            if let (0, Some(end)) = (start, end) {
                if every >= end {
                    d.push(
                        Diagnostic::new(a.every.span, format!("`every {every} steps` never fires in phase `{}`, the first phase, which ends at step {end}", p.name.node), "not before the phase ends")
                            .help("the first phase acts at steps N, 2N, … before its end; use a smaller N, or move the action to a later phase, which also acts on entering it"),
                    );
                    ok = false;
                }
            }
            for w in &a.what {
                let Some(kind) = ActionKind::ALL.into_iter().find(|k| k.name() == w.node) else {
                    d.push(
                        Diagnostic::new(
                            w.span,
                            format!("unknown action `{}`", w.node),
                            "unknown action",
                        )
                        .help(suggest::help(&w.node, "action", &names)),
                    );
                    ok = false;
                    continue;
                };
                if seen.contains(&kind) {
                    d.push(
                        Diagnostic::new(
                            w.span,
                            format!("`{}` is scheduled twice in phase `{}`", w.node, p.name.node),
                            "again here",
                        )
                        .help("keep one `every N steps: ...` per action in a phase"),
                    );
                    ok = false;
                    continue;
                }
                seen.push(kind);
                if kind == ActionKind::Reallocate {
                    // Full fine-tuning has no adapters: its arm simply doesn't reallocate.
                    if !lora_on {
                        continue;
                    }
                    let has_allocator = plugins.is_some_and(|p| p.allocator.is_some());
                    if !has_allocator && !builtin_method && plugins.is_some() {
                        d.push(
                            Diagnostic::new(w.span, "`reallocate` needs an allocator", "nothing to reallocate with")
                                .help("set `allocator = plugin \"../plugins/log_rule.rhai\"`, or add an `adalora { ... }` block"),
                        );
                        ok = false;
                        continue;
                    }
                }
                out.push(Action { every, what: kind });
            }
        }
        ok.then_some(out)
    }
}
