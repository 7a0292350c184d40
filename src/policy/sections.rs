//! Typing of each section into its plan type, with defaults filled in (docs/language.md lists
//! them) and the checks that need only the section itself plus the model's shape.

use super::arm_plan::*;
use super::ast::*;
use super::bounds;
use super::fields::Fields;
use super::suggest;
use crate::adapter::ModuleKind;
use crate::model::ModelConfig;
use std::collections::BTreeMap;
use std::path::Path;

pub const MODEL_KINDS: &[&str] = &["encoder", "decoder", "hf", "path", "gguf"];
pub const DATA_KINDS: &[&str] = &[
    "planted",
    "synthetic",
    "movies",
    "shakespeare",
    "sst2",
    "mnli",
    "squad",
    "jsonl",
];

fn unknown_kind(f: &mut Fields<'_>, kind: &Ident, kinds: &[&str]) {
    let section = f.section;
    f.value_error(
        kind.span,
        format!("unknown {section} kind `{}`", kind.node),
        suggest::help(&kind.node, &format!("{section} kind"), kinds),
    );
}

/// `cls` unless the policy says `mean`: the classifier the stock `BertForSequenceClassification`
/// computes (BERT's pooler on the first token), so an export reads correctly in `pipeline()` and
/// `Trainer.evaluate` as it is; a mean-pooled head would load there without a missing key and
/// give other answers.
fn pooling(f: &mut Fields<'_>) -> Pooling {
    match f.choice("pooling", &["mean", "cls"]) {
        Some("mean") => Pooling::Mean,
        _ => Pooling::Cls,
    }
}

/// The model section with its shape: the policy's own, or what the pretrained model's files
/// (or the known table) say; a model that cannot be found or is not supported is reported at
/// the key that names it.
pub fn model(
    f: &mut Fields<'_>,
    kind: &Ident,
    base_dir: &Path,
) -> Option<(ModelSpec, ModelConfig)> {
    let spec = model_spec(f, kind, base_dir)?;
    match super::model_source::shape(&spec) {
        Ok((cfg, _)) => Some((spec, cfg)),
        Err(p) => {
            let span = ["name", "dir", "path"]
                .iter()
                .find_map(|k| f.get(k))
                .map_or(f.header, |e| e.value.span);
            f.value_error(span, p.message, p.help);
            None
        }
    }
}

fn model_spec(f: &mut Fields<'_>, kind: &Ident, base_dir: &Path) -> Option<ModelSpec> {
    match kind.node.as_str() {
        "encoder" | "decoder" => {
            f.only(
                &["layers", "hidden", "heads", "ffn", "vocab", "max_positions"],
                &format!("`model {}`", kind.node),
            );
            let layers = f.required_in("layers", &bounds::LAYERS, "4");
            let hidden = f.required_in("hidden", &bounds::HIDDEN, "128");
            let heads = f.required_in("heads", &bounds::HEADS, "4");
            let ffn = f.count_in("ffn", &bounds::FFN);
            let vocab = f.count_in("vocab", &bounds::VOCAB).unwrap_or(1000);
            let max_positions = f
                .count_in("max_positions", &bounds::MAX_POSITIONS)
                .unwrap_or(128);
            let (layers, hidden, heads) = (layers?, hidden?, heads?);
            if hidden % heads != 0 {
                let span = f.get("heads").map(|e| e.value.span).unwrap_or(f.header);
                f.value_error(
                    span,
                    format!("`hidden = {hidden}` is not divisible by `heads = {heads}`"),
                    "attention splits the hidden width evenly over the heads; pick heads that divide hidden".into(),
                );
                return None;
            }
            let t = TransformerSpec {
                layers: layers as usize,
                hidden: hidden as usize,
                heads: heads as usize,
                ffn: ffn.map_or(4 * hidden as usize, |v| v as usize),
                vocab: vocab as usize,
                max_positions: max_positions as usize,
            };
            Some(if kind.node == "encoder" {
                ModelSpec::Encoder(t)
            } else {
                ModelSpec::Decoder(t)
            })
        }
        "hf" => {
            f.only(&["name", "pooling"], "`model hf`");
            let pooling = pooling(f);
            let name = f.required_string("name", "\"sentence-transformers/all-MiniLM-L6-v2\"")?;
            Some(ModelSpec::Hf { name, pooling })
        }
        "path" => {
            f.only(&["dir", "pooling"], "`model path`");
            let pooling = pooling(f);
            let dir = f.required_string("dir", "\"models/minilm\"")?;
            Some(ModelSpec::Path {
                dir: crate::engine::source::normalize(&base_dir.join(dir)),
                pooling,
            })
        }
        "gguf" => gguf(f, base_dir),
        _ => {
            unknown_kind(f, kind, MODEL_KINDS);
            None
        }
    }
}

/// `model gguf { name = ".." }` (a known checkpoint) or `model gguf { path = ".." }`.
fn gguf(f: &mut Fields<'_>, base_dir: &Path) -> Option<ModelSpec> {
    f.only(&["name", "path"], "`model gguf`");
    let name = f.string("name", "\"smollm2-135m-instruct\"");
    let path = f.string("path", "\"models/model.gguf\"");
    match (name, path) {
        (Some(n), None) => {
            if super::known_models::gguf(&n).is_none() {
                let span = f.get("name").map_or(f.header, |e| e.value.span);
                let p = super::model_source::unknown_gguf(&n);
                let help = match suggest::closest(&n, super::known_models::gguf_names()) {
                    Some(c) => format!("did you mean `{c}`? {}", p.help),
                    None => p.help,
                };
                f.value_error(span, p.message, help);
                return None;
            }
            Some(ModelSpec::Gguf(GgufSpec::Name(n)))
        }
        (None, Some(p)) => Some(ModelSpec::Gguf(GgufSpec::Path(
            crate::engine::source::normalize(&base_dir.join(p)),
        ))),
        (Some(_), Some(_)) => {
            let span = f.get("path").map_or(f.header, |e| e.key.span);
            f.value_error(
                span,
                "`model gguf` sets both `name` and `path`".into(),
                "keep one: `name` for a known checkpoint in the assets folder, `path` for a file"
                    .into(),
            );
            None
        }
        (None, None) => {
            if f.get("name").is_none() && f.get("path").is_none() {
                f.missing("name", "name = \"smollm2-135m-instruct\"");
            }
            None
        }
    }
}

const SUBSET_KEYS: &[&str] = &["max_len", "train_samples", "eval_samples"];

/// The limits of a real data set, and its causal-LM keys when it takes them (`lm`).
fn subset(f: &mut Fields<'_>, lm: bool) -> Subset {
    Subset {
        max_len: f.count_in("max_len", &bounds::MAX_LEN).map(|v| v as usize),
        train_samples: f
            .count_in("train_samples", &bounds::SUBSET)
            .map(|v| v as usize),
        eval_samples: f
            .count_in("eval_samples", &bounds::SUBSET)
            .map(|v| v as usize),
        lm: if lm {
            super::lm::keys(f)
        } else {
            LmDataSpec::default()
        },
    }
}

/// `samples`, `eval_samples` and `seq` of generated data; `seq` may not pass the model's
/// position table (`max_positions`, when the model is known).
fn generated_sizes(f: &mut Fields<'_>, max_positions: Option<usize>) -> (u64, u64, u64) {
    let samples = f.count_in("samples", &bounds::SAMPLES).unwrap_or(4096);
    let eval_samples = f
        .count_in("eval_samples", &bounds::GENERATED_EVAL)
        .unwrap_or(512);
    let seq = f.count_in("seq", &bounds::SEQ).unwrap_or(16);
    if let Some(p) = max_positions.filter(|&p| seq as usize > p) {
        let span = f.get("seq").map_or(f.header, |e| e.value.span);
        f.value_error(
            span,
            format!("`data.seq = {seq}` is longer than the model's `max_positions = {p}`"),
            format!(
                "the model has position embeddings for {p} tokens; lower `seq` to at most {p} \
                 or raise `model.max_positions`"
            ),
        );
    }
    (samples, eval_samples, seq)
}

/// Every element of a counted list within `b`.
fn within_list(
    f: &mut Fields<'_>,
    key: &str,
    list: Vec<(u64, Span)>,
    b: &bounds::Count,
) -> Option<Vec<(u64, Span)>> {
    for (v, span) in &list {
        if *v > b.max {
            f.value_error(
                *span,
                format!(
                    "`{}.{key}` holds {v}, above its limit of {}",
                    f.section,
                    super::fields::group(b.max)
                ),
                format!("the limit is there because {}", b.why),
            );
            return None;
        }
    }
    Some(list)
}

/// `data planted { .. }`: planted ranks a model of `hidden` width can hold.
fn planted(
    f: &mut Fields<'_>,
    what: &str,
    hidden: Option<usize>,
    max_positions: Option<usize>,
) -> Option<DataSpec> {
    f.only(
        &["ranks", "samples", "eval_samples", "seq", "seed", "scale"],
        what,
    );
    if f.get("ranks").is_none() {
        f.missing("ranks", "[0, 2, 8, 16]");
    }
    let ranks = f.count_list("ranks", "[0, 2, 8, 16]");
    let ranks = ranks.and_then(|r| within_list(f, "ranks", r, &bounds::RANK_OR_ZERO));
    let (samples, eval_samples, seq) = generated_sizes(f, max_positions);
    let seed = f.count("seed").unwrap_or(0);
    let scale = f.real_in("scale", &bounds::SCALE, "1.0").unwrap_or(1.0);
    let ranks = ranks?;
    if ranks.is_empty() {
        let span = f.get("ranks").map_or(f.header, |e| e.value.span);
        f.value_error(
            span,
            "`data.ranks` is empty".into(),
            "list at least one planted rank, e.g. `ranks = [2, 8]`".into(),
        );
        return None;
    }
    if let Some(h) = hidden {
        for (r, span) in &ranks {
            if *r as usize > h {
                f.value_error(
                    *span,
                    format!("planted rank {r} exceeds the model's hidden width {h}"),
                    format!("a ΔW of a {h}-wide layer has rank at most {h}"),
                );
                return None;
            }
        }
    }
    Some(DataSpec::Planted {
        ranks: ranks.into_iter().map(|(r, _)| r as usize).collect(),
        samples: samples as usize,
        eval_samples: eval_samples as usize,
        seq: seq as usize,
        seed,
        scale,
    })
}

/// `data synthetic { .. }`: classes the model's vocabulary has marker tokens for.
fn synthetic(
    f: &mut Fields<'_>,
    what: &str,
    max_positions: Option<usize>,
    vocab: Option<usize>,
) -> Option<DataSpec> {
    f.only(&["classes", "samples", "eval_samples", "seq", "seed"], what);
    let classes = f.required_in("classes", &bounds::CLASSES, "2");
    let (samples, eval_samples, seq) = generated_sizes(f, max_positions);
    let seed = f.count("seed").unwrap_or(0);
    // The generator draws each class's marker tokens from the vocabulary: two per
    // class plus the shared ones, so a small vocabulary cannot hold many classes.
    if let (Some(c), Some(v)) = (classes, vocab) {
        if v <= 2 * (c as usize + 1) {
            let span = f.get("classes").map_or(f.header, |e| e.value.span);
            f.value_error(
                span,
                format!(
                    "{c} classes need a vocabulary of more than {}, the model has {v}",
                    2 * (c + 1)
                ),
                format!(
                    "lower `classes` below {}, or raise the model's `vocab`",
                    v / 2
                ),
            );
            return None;
        }
    }
    Some(DataSpec::Synthetic {
        classes: classes? as usize,
        samples: samples as usize,
        eval_samples: eval_samples as usize,
        seq: seq as usize,
        seed,
    })
}

pub fn data(
    f: &mut Fields<'_>,
    kind: &Ident,
    base_dir: &Path,
    hidden: Option<usize>,
    max_positions: Option<usize>,
    vocab: Option<usize>,
) -> Option<DataSpec> {
    let what = format!("`data {}`", kind.node);
    let path = |f: &mut Fields<'_>, key: &str, example: &str| {
        f.required_string(key, example)
            .map(|s| crate::engine::source::normalize(&base_dir.join(s)))
    };
    // Every real data set but SQuAD takes the causal-LM keys too.
    let with_subset = |extra: &[&'static str]| -> Vec<&'static str> {
        let lm = super::lm::LM_KEYS.iter().filter(|_| kind.node != "squad");
        extra.iter().chain(SUBSET_KEYS).chain(lm).copied().collect()
    };
    match kind.node.as_str() {
        "planted" => planted(f, &what, hidden, max_positions),
        "synthetic" => synthetic(f, &what, max_positions, vocab),
        "movies" => {
            f.only(&with_subset(&["dir"]), &what);
            let dir = f
                .string("dir", "\"data/movies\"")
                .map(|s| crate::engine::source::normalize(&base_dir.join(s)));
            Some(DataSpec::Movies {
                dir,
                subset: subset(f, true),
            })
        }
        "shakespeare" => {
            f.only(super::lm::SHAKESPEARE_KEYS, &what);
            let limits = subset(f, false);
            super::lm::shakespeare(f, base_dir, limits)
        }
        "sst2" | "mnli" => {
            f.only(&with_subset(&["dir"]), &what);
            let subset = subset(f, true);
            let dir = path(f, "dir", "\"data/glue/SST-2\"")?;
            Some(if kind.node == "sst2" {
                DataSpec::Sst2 { dir, subset }
            } else {
                DataSpec::Mnli { dir, subset }
            })
        }
        "squad" | "jsonl" => {
            let extra: &[&str] = if kind.node == "jsonl" {
                &["train", "dev", "format"]
            } else {
                &["train", "dev"]
            };
            f.only(&with_subset(extra), &what);
            let mut subset = subset(f, kind.node == "jsonl");
            if kind.node == "jsonl" {
                subset.lm.format = f
                    .choice("format", crate::data::lm::JsonlKind::NAMES)
                    .and_then(crate::data::lm::JsonlKind::parse);
            }
            let train = path(f, "train", "\"data/train.jsonl\"");
            let dev = path(f, "dev", "\"data/dev.jsonl\"");
            let (train, dev) = (train?, dev?);
            Some(if kind.node == "squad" {
                DataSpec::Squad { train, dev, subset }
            } else {
                DataSpec::Jsonl { train, dev, subset }
            })
        }
        _ => {
            unknown_kind(f, kind, DATA_KINDS);
            None
        }
    }
}

const KIND_NAMES: [&str; 7] = ["q", "k", "v", "o", "ffn_in", "ffn_out", "gate"];

/// What the model tells us about adapter slots: its shape when known statically.
#[derive(Clone, Debug, Default)]
pub struct Shape {
    pub model: Option<ModelConfig>,
}

impl Shape {
    pub fn layers(&self) -> Option<usize> {
        self.model.as_ref().map(|m| m.layers)
    }
    pub fn hidden(&self) -> Option<usize> {
        self.model.as_ref().map(|m| m.hidden)
    }
    /// Parameters one rank of an adapter on `kind` costs: rows + cols of the adapted weight
    /// (k and v are narrower than q under grouped-query attention).
    pub fn rank_cost(&self, kind: ModuleKind) -> Option<usize> {
        let (rows, cols) = self.model.as_ref()?.module_shape(kind);
        Some(rows + cols)
    }
}

pub fn lora(f: &mut Fields<'_>, shape: &Shape) -> Option<LoraOn> {
    f.only(
        &[
            "targets",
            "layers",
            "alpha",
            "rslora",
            "init_rank",
            "rank",
            "budget",
            "param_budget",
            "min_rank",
            "max_rank",
            "resize_basis",
            "resize_moments",
            "resize_scale",
            "rewarm",
            "fade",
        ],
        "`lora`",
    );
    let errors_before = f.d.len();
    let kinds = shape.model.as_ref().map(|m| m.module_kinds());
    let targets = targets(f, kinds).unwrap_or_else(|| vec![ModuleKind::Q, ModuleKind::V]);
    let layers = lora_layers(f, shape.layers());
    let alpha = f.real_in("alpha", &bounds::ALPHA, "16").unwrap_or(16.0);
    let rslora = f.boolean("rslora").unwrap_or(false);
    // 0 lets an allocator remove an adapter (its tensors are freed; it can come back).
    let min_rank = f.count_in("min_rank", &bounds::RANK_OR_ZERO).unwrap_or(1) as usize;
    let max_rank = f.count_in("max_rank", &bounds::RANK).unwrap_or(64) as usize;
    let rank = rank_spec(f, &targets, layers.as_deref(), shape.layers(), max_rank);
    let init_rank = match (f.count_in("init_rank", &bounds::RANK), &rank) {
        (Some(r), _) => r as usize,
        (None, Some(RankSpec::Uniform(r))) => *r,
        (None, _) => 8.min(max_rank),
    };
    let budget = f.count_in("budget", &bounds::BUDGET).map(|b| b as usize);
    let param_budget = f
        .count_in("param_budget", &bounds::PARAM_BUDGET)
        .map(|b| b as usize);
    let resize = resize_options(f);
    if f.d.len() > errors_before {
        return None;
    }
    if let (Some(_), Some(e)) = (budget, f.get("param_budget")) {
        f.value_error(
            e.key.span,
            "`lora` sets both `budget` (ranks) and `param_budget` (parameters)".into(),
            "a budget is one or the other: keep `param_budget` to compare arms at equal cost"
                .into(),
        );
        return None;
    }
    if !rank_bounds_agree(f, shape, min_rank, max_rank, init_rank)
        || !budgets_feasible(
            f,
            shape,
            &targets,
            layers.as_deref(),
            budget,
            param_budget,
            (min_rank, max_rank),
        )
    {
        return None;
    }
    Some(LoraOn {
        targets,
        layers,
        alpha,
        rslora,
        init_rank,
        rank: rank.unwrap_or(RankSpec::Uniform(init_rank)),
        budget,
        param_budget,
        min_rank,
        max_rank,
        resize,
    })
}

/// Where `key`'s value is written, or the section header when it is not.
fn at(f: &Fields<'_>, key: &str) -> Span {
    f.get(key).map_or(f.header, |e| e.value.span)
}

/// min_rank ≤ init_rank ≤ max_rank ≤ the model's width.
fn rank_bounds_agree(
    f: &mut Fields<'_>,
    shape: &Shape,
    min_rank: usize,
    max_rank: usize,
    init_rank: usize,
) -> bool {
    if min_rank > max_rank {
        let span = at(f, "min_rank");
        f.value_error(
            span,
            format!("`min_rank = {min_rank}` is above `max_rank = {max_rank}`"),
            "make min_rank ≤ max_rank".into(),
        );
        return false;
    }
    if let Some(h) = shape.hidden() {
        if max_rank > h && f.get("max_rank").is_some() {
            let span = at(f, "max_rank");
            f.value_error(
                span,
                format!("`max_rank = {max_rank}` exceeds the model's hidden width {h}"),
                format!("an adapter on a {h}-wide layer has rank at most {h}; lower max_rank"),
            );
            return false;
        }
    }
    if init_rank < min_rank || init_rank > max_rank {
        let span = at(f, "init_rank");
        f.value_error(
            span,
            format!("`init_rank = {init_rank}` lies outside [min_rank, max_rank] = [{min_rank}, {max_rank}]"),
            "choose an initial rank between min_rank and max_rank, or widen the bounds".into(),
        );
        return false;
    }
    true
}

/// A rank or parameter budget the adapter slots can meet with every rank in [min_rank, max_rank].
fn budgets_feasible(
    f: &mut Fields<'_>,
    shape: &Shape,
    targets: &[ModuleKind],
    layers: Option<&[usize]>,
    budget: Option<usize>,
    param_budget: Option<usize>,
    ranks: (usize, usize),
) -> bool {
    let (min_rank, max_rank) = ranks;
    if let (Some(b), Some(n_layers)) = (budget, layers.map(|l| l.len()).or(shape.layers())) {
        let slots = n_layers * targets.len();
        let (lo, hi) = (slots * min_rank, slots * max_rank);
        if b < lo || b > hi {
            let span = at(f, "budget");
            f.value_error(
                span,
                format!(
                    "budget {b} is infeasible: {slots} adapter slots ({n_layers} layers × {} targets) need a total rank between {lo} (all at min_rank {min_rank}) and {hi} (all at max_rank {max_rank})",
                    targets.len()
                ),
                format!("set `budget` within {lo}..={hi}, or change min_rank/max_rank, targets or layers"),
            );
            return false;
        }
    }
    if let (Some(p), Some(n_layers)) = (param_budget, layers.map(|l| l.len()).or(shape.layers())) {
        let per_layer: Option<usize> = targets.iter().map(|k| shape.rank_cost(*k)).sum();
        if let Some(per_layer) = per_layer {
            let (lo, hi) = (
                n_layers * per_layer * min_rank,
                n_layers * per_layer * max_rank,
            );
            if p < lo || p > hi {
                let span = at(f, "param_budget");
                f.value_error(
                    span,
                    format!(
                        "param_budget {p} is infeasible: with every adapter between min_rank {min_rank} and max_rank {max_rank}, the {n_layers} layers × {} targets hold between {lo} and {hi} adapter parameters (one rank costs rows + cols)",
                        targets.len()
                    ),
                    format!("set `param_budget` within {lo}..={hi}, or change min_rank/max_rank, targets or layers"),
                );
                return false;
            }
        }
    }
    true
}

/// `resize_basis = keep | svd`, `resize_moments = keep | reset`, `resize_scale = fixed |
/// rank`, `rewarm = N`, `fade = N` (steps): how a re-allocation resizes the adapters, one switch per cause
/// of a loss spike (docs/allocation.md).
fn resize_options(f: &mut Fields<'_>) -> crate::adapter::ResizeOptions {
    let mut o = crate::adapter::ResizeOptions::policy_default();
    if let Some(c) = f.choice("resize_basis", &["keep", "svd"]) {
        o.keep_basis = c == "keep";
    }
    if let Some(c) = f.choice("resize_moments", &["keep", "reset"]) {
        o.keep_moments = c == "keep";
    }
    if let Some(c) = f.choice("resize_scale", &["fixed", "rank"]) {
        o.fixed_scale = c == "fixed";
    }
    if let Some(n) = f.count_in("rewarm", &bounds::REWARM) {
        o.rewarm = n as u32;
    }
    if let Some(n) = f.count_in("fade", &bounds::FADE) {
        o.fade = n as u32;
    }
    o
}

/// Module kinds are short names; people often write the Hugging Face layer names instead.
fn kind_help(w: &str) -> String {
    let alias = match w {
        "query" | "q_proj" => Some("q"),
        "key" | "k_proj" => Some("k"),
        "value" | "v_proj" => Some("v"),
        "output" | "out" | "dense" | "o_proj" => Some("o"),
        "intermediate" | "ffn" | "up" | "fc1" | "up_proj" => Some("ffn_in"),
        "down" | "fc2" | "down_proj" => Some("ffn_out"),
        "gate_proj" | "w1" => Some("gate"),
        _ => None,
    };
    match alias {
        Some(a) => format!("the module kind for `{w}` is `{a}`"),
        None => suggest::help(w, "module kind", &KIND_NAMES),
    }
}

/// `lora.targets`; with the model's module kinds known, a kind it does not have is an error.
fn targets(f: &mut Fields<'_>, kinds: Option<&[ModuleKind]>) -> Option<Vec<ModuleKind>> {
    let e = f.get("targets")?;
    let Value::List(items) = &e.value.node else {
        f.type_error(e, "a list of module kinds", "[q, v]");
        return None;
    };
    if items.is_empty() {
        f.value_error(
            e.value.span,
            "`lora.targets` is empty".into(),
            "name at least one module kind, or write `lora = off` for full fine-tuning".into(),
        );
        return None;
    }
    let mut out: Vec<ModuleKind> = Vec::new();
    for it in items {
        let Value::Word(w) = &it.node else {
            f.value_error(
                it.span,
                format!("a target is a module kind, found {}", it.node.describe()),
                format!("module kinds: {}", suggest::quoted(&KIND_NAMES)),
            );
            return None;
        };
        let Some(k) = ModuleKind::parse(w) else {
            f.value_error(it.span, format!("unknown module kind `{w}`"), kind_help(w));
            return None;
        };
        if let Some(ks) = kinds.filter(|ks| !ks.contains(&k)) {
            let names: Vec<&str> = ks.iter().map(|k| k.name()).collect();
            f.value_error(
                it.span,
                format!("the model has no `{w}` module"),
                format!(
                    "its modules are {}; `gate` (SwiGLU's gate_proj) exists only in \
                     Llama-family models",
                    suggest::quoted(&names)
                ),
            );
            return None;
        }
        if out.contains(&k) {
            f.value_error(
                it.span,
                format!("`{w}` is listed twice in `lora.targets`"),
                "list each module kind once".into(),
            );
            return None;
        }
        out.push(k);
    }
    Some(out)
}

fn lora_layers(f: &mut Fields<'_>, model_layers: Option<usize>) -> Option<Vec<usize>> {
    let list = f.count_list("layers", "[0, 1, 2]")?;
    let list = within_list(f, "layers", list, &bounds::LAYER_INDEX)?;
    let mut out = Vec::new();
    for (l, span) in list {
        let l = l as usize;
        if out.contains(&l) {
            f.value_error(
                span,
                format!("layer {l} is listed twice"),
                "list each layer once".into(),
            );
            return None;
        }
        if let Some(n) = model_layers {
            if l >= n {
                f.value_error(
                    span,
                    format!(
                        "layer {l} does not exist: the model has {n} layers (0..={})",
                        n - 1
                    ),
                    "layers are numbered from 0".into(),
                );
                return None;
            }
        }
        out.push(l);
    }
    if out.is_empty() {
        let span = f.get("layers").map_or(f.header, |e| e.value.span);
        f.value_error(
            span,
            "`lora.layers` is empty".into(),
            "omit `layers` to adapt every layer".into(),
        );
        return None;
    }
    Some(out)
}

fn rank_spec(
    f: &mut Fields<'_>,
    targets: &[ModuleKind],
    layers: Option<&[usize]>,
    model_layers: Option<usize>,
    max_rank: usize,
) -> Option<RankSpec> {
    let e = f.get("rank")?;
    match &e.value.node {
        Value::Number(_) => rank_value(f, &e.value, max_rank).map(RankSpec::Uniform),
        Value::Map(entries) => {
            let per_slot = entries.iter().any(|(k, _)| k.node.contains('.'));
            let mut kinds = BTreeMap::new();
            let mut slots = BTreeMap::new();
            for (k, v) in entries {
                let r = rank_value(f, v, max_rank)?;
                if per_slot {
                    slot_rank(f, k, r, targets, (layers, model_layers), &mut slots)?;
                } else {
                    kind_rank(f, k, r, targets, &mut kinds)?;
                }
            }
            Some(if per_slot {
                RankSpec::PerSlot(slots)
            } else {
                RankSpec::PerKind(kinds)
            })
        }
        _ => {
            f.type_error(e, "a rank or a map of ranks", "{ q: 4, v: 8 }");
            None
        }
    }
}

/// One rank of `lora.rank`: a whole number up to `max_rank`.
fn rank_value(f: &mut Fields<'_>, v: &Spanned<Value>, max_rank: usize) -> Option<usize> {
    match &v.node {
        Value::Number(n) => match n.as_count() {
            Some(r) if r as usize <= max_rank => Some(r as usize),
            Some(r) => {
                f.value_error(
                    v.span,
                    format!("rank {r} exceeds `max_rank = {max_rank}`"),
                    "lower the rank or raise lora.max_rank".into(),
                );
                None
            }
            None => {
                f.value_error(
                    v.span,
                    format!("a rank is a whole number, found `{}`", n.text),
                    "write e.g. `8`".into(),
                );
                None
            }
        },
        other => {
            f.value_error(
                v.span,
                format!("a rank is a whole number, found {}", other.describe()),
                "write e.g. `8`".into(),
            );
            None
        }
    }
}

/// One `LAYER.KIND: RANK` entry of a per-slot rank map: a targeted kind on an adapted layer,
/// given once.
fn slot_rank(
    f: &mut Fields<'_>,
    k: &Ident,
    r: usize,
    targets: &[ModuleKind],
    (layers, model_layers): (Option<&[usize]>, Option<usize>),
    slots: &mut BTreeMap<String, usize>,
) -> Option<()> {
    let Some((l, kind)) = k
        .node
        .split_once('.')
        .and_then(|(l, kn)| Some((l.parse::<usize>().ok()?, ModuleKind::parse(kn)?)))
    else {
        f.value_error(
            k.span,
            format!("`{}` is not an adapter slot", k.node),
            "a per-slot map has keys `LAYER.KIND`, e.g. `{ 0.q: 4, 3.ffn_in: 8 }` (don't mix kinds and slots)".into(),
        );
        return None;
    };
    if !targets.contains(&kind) {
        f.value_error(
            k.span,
            format!(
                "slot `{}` is on `{kind}`, which is not in `lora.targets`",
                k.node
            ),
            "add the kind to targets or drop this entry".into(),
        );
        return None;
    }
    let layer_ok = match (layers, model_layers) {
        (Some(ls), _) => ls.contains(&l),
        (None, Some(n)) => l < n,
        (None, None) => true,
    };
    if !layer_ok {
        f.value_error(
            k.span,
            format!(
                "slot `{}` names layer {l}, which carries no adapter",
                k.node
            ),
            "use a layer of the model (numbered from 0) that is in lora.layers".into(),
        );
        return None;
    }
    if slots.insert(k.node.clone(), r).is_some() {
        f.value_error(
            k.span,
            format!("slot `{}` is given twice", k.node),
            "keep one".into(),
        );
        return None;
    }
    Some(())
}

/// One `KIND: RANK` entry of a per-kind rank map: a targeted kind, given once.
fn kind_rank(
    f: &mut Fields<'_>,
    k: &Ident,
    r: usize,
    targets: &[ModuleKind],
    kinds: &mut BTreeMap<ModuleKind, usize>,
) -> Option<()> {
    let Some(kind) = ModuleKind::parse(&k.node) else {
        f.value_error(
            k.span,
            format!("unknown module kind `{}`", k.node),
            kind_help(&k.node),
        );
        return None;
    };
    if !targets.contains(&kind) {
        f.value_error(
            k.span,
            format!("`lora.rank` names `{kind}`, which is not in `lora.targets`"),
            format!("add `{kind}` to targets, or drop it from the rank map"),
        );
        return None;
    }
    if kinds.insert(kind, r).is_some() {
        f.value_error(
            k.span,
            format!("`{kind}` is given twice"),
            "keep one".into(),
        );
        return None;
    }
    Some(())
}

/// `param_budget`: the arm's `lora.param_budget`, which replaces `target_rank` as the final size.
pub fn adalora(
    f: &mut Fields<'_>,
    lora_init: usize,
    param_budget: Option<usize>,
    steps: Option<usize>,
) -> Option<AdaLoraSpec> {
    f.only(
        &[
            "init_rank",
            "target_rank",
            "tinit",
            "tfinal",
            "delta_t",
            "beta1",
            "beta2",
            "orth_reg",
            "resize",
            "gain",
            "peft_compat",
        ],
        "`adalora`",
    );
    let before = f.d.len();
    let init_rank = f
        .count_in("init_rank", &bounds::RANK)
        .map_or(lora_init, |v| v as usize);
    let target_rank = match param_budget {
        None => f
            .required_in("target_rank", &bounds::RANK, "4")
            .map(|v| v as usize),
        Some(p) => {
            if let Some(e) = f.get("target_rank") {
                f.value_error(
                    e.key.span,
                    format!("`target_rank` and `lora.param_budget = {p}` both set AdaLoRA's final size"),
                    "under a parameter budget AdaLoRA prunes to the budget: drop `target_rank`, or drop `lora.param_budget`".into(),
                );
            }
            // Not a bound: the parameter budget sets the final size.
            Some(init_rank)
        }
    };
    let dflt = crate::engine::AdaLoraConfig::default();
    let tinit = f
        .count_in("tinit", &bounds::ADALORA_STEPS)
        .map_or(dflt.tinit, |v| v as usize);
    let tfinal = f
        .count_in("tfinal", &bounds::ADALORA_STEPS)
        .map_or(dflt.tfinal, |v| v as usize);
    let delta_t = f
        .count_in("delta_t", &bounds::STEP_COUNT)
        .map_or(dflt.delta_t, |v| v as usize);
    let beta1 = f
        .real_in("beta1", &bounds::BETA, "0.85")
        .unwrap_or(dflt.beta1);
    let beta2 = f
        .real_in("beta2", &bounds::BETA, "0.85")
        .unwrap_or(dflt.beta2);
    let orth_reg = f
        .real_in("orth_reg", &bounds::ORTH_REG, "0.5")
        .unwrap_or(dflt.orth_reg);
    let resize = f.boolean("resize").unwrap_or(dflt.resize);
    let peft_compat = f.boolean("peft_compat").unwrap_or(false);
    let gain = f.real_in("gain", &bounds::GAIN, "16");
    if let (true, Some(e)) = (peft_compat, f.get("gain")) {
        f.value_error(
            e.key.span,
            "`adalora` sets `gain` and `peft_compat = true`".into(),
            "PEFT's AdaLoRA has gain 1: drop `gain`, or drop `peft_compat`".into(),
        );
        return None;
    }
    let gain = match (peft_compat, gain) {
        (true, _) => 1.0,
        (false, g) => g.unwrap_or(ADALORA_GAIN),
    };
    let target_rank = target_rank?;
    if f.d.len() > before {
        return None;
    }
    if target_rank > init_rank {
        let span = f.get("target_rank").map_or(f.header, |e| e.value.span);
        f.value_error(
            span,
            format!("`target_rank = {target_rank}` is above the initial rank {init_rank}"),
            "AdaLoRA only prunes: make target_rank ≤ init_rank".into(),
        );
        return None;
    }
    if let Some(s) = steps {
        if tinit + tfinal >= s {
            let span = f
                .get("tfinal")
                .or(f.get("tinit"))
                .map_or(f.header, |e| e.value.span);
            f.value_error(
                span,
                format!(
                    "tinit + tfinal = {} leaves no steps for pruning out of {s}",
                    tinit + tfinal
                ),
                "make tinit + tfinal smaller than train.steps".into(),
            );
            return None;
        }
    }
    Some(AdaLoraSpec {
        init_rank,
        target_rank,
        tinit,
        tfinal,
        delta_t,
        beta1,
        beta2,
        orth_reg,
        resize,
        gain,
        peft_compat,
    })
}

pub fn sora(f: &mut Fields<'_>, lora_init: usize) -> Option<SoraSpec> {
    f.only(
        &["init_rank", "gate_lr", "threshold", "threshold_max"],
        "`sora`",
    );
    let before = f.d.len();
    let dflt = crate::engine::SoraConfig::default();
    let init_rank = f
        .count_in("init_rank", &bounds::RANK)
        .map_or(lora_init, |v| v as usize);
    let gate_lr = f
        .real_in("gate_lr", &bounds::GATE_LR, "1e-2")
        .unwrap_or(dflt.gate_lr);
    let threshold = f
        .real_in("threshold", &bounds::THRESHOLD, "1e-3")
        .unwrap_or(dflt.threshold);
    let threshold_max = f
        .real_in("threshold_max", &bounds::THRESHOLD, "1e-2")
        .unwrap_or(threshold);
    if f.d.len() > before {
        return None;
    }
    if threshold_max < threshold {
        let span = f.get("threshold_max").map_or(f.header, |e| e.value.span);
        f.value_error(
            span,
            format!("`threshold_max = {threshold_max}` is below `threshold = {threshold}`"),
            "the threshold rises from `threshold` to `threshold_max` over training; make threshold_max ≥ threshold".into(),
        );
        return None;
    }
    Some(SoraSpec {
        init_rank,
        gate_lr,
        threshold,
        threshold_max,
    })
}

pub fn train(f: &mut Fields<'_>) -> Option<TrainSpec> {
    f.only(
        &[
            "steps",
            "epochs",
            "batch",
            "lr",
            "warmup",
            "decay",
            "weight_decay",
            "clip",
            "accum",
            "eval_every",
            "checkpoint_every",
            "max_len",
            "device",
            "weights",
        ],
        "`train`",
    );
    let before = f.d.len();
    let steps = f.count_in("steps", &bounds::STEPS);
    let epochs = f.count_in("epochs", &bounds::EPOCHS);
    let length = train_length(f, steps, epochs);
    let batch = f.count_in("batch", &bounds::BATCH).unwrap_or(32) as usize;
    let (lr, lr_sweep) = learning_rate(f).unwrap_or((1e-3, vec![]));
    let warmup = f.count_in("warmup", &bounds::WARMUP).unwrap_or(0) as usize;
    let decay = match f.choice("decay", &["linear", "cosine", "constant"]) {
        Some("cosine") => Decay::Cosine,
        Some("constant") => Decay::Constant,
        _ => Decay::Linear,
    };
    let weight_decay = f
        .real_in("weight_decay", &bounds::WEIGHT_DECAY, "0.01")
        .unwrap_or(0.0);
    let clip = clip(f);
    let accum = f.count_in("accum", &bounds::ACCUM).unwrap_or(1) as usize;
    let eval_every = f
        .count_in("eval_every", &bounds::STEP_COUNT)
        .map(|v| v as usize);
    let checkpoint_every = f
        .count_in("checkpoint_every", &bounds::STEP_COUNT)
        .map(|v| v as usize);
    let max_len = f.count_in("max_len", &bounds::MAX_LEN).unwrap_or(128) as usize;
    let device = match f.choice("device", &["auto", "cpu", "gpu"]) {
        Some("cpu") => DeviceChoice::Cpu,
        Some("gpu") => DeviceChoice::Gpu,
        _ => DeviceChoice::Auto,
    };
    let weights = match f.choice("weights", &["f32", "bf16"]) {
        Some("bf16") => DType::Bf16,
        _ => DType::F32,
    };
    let length = length?;
    if f.d.len() > before {
        return None;
    }
    if !train_values_agree(f, batch, accum, lr, weight_decay, warmup, &length) {
        return None;
    }
    Some(TrainSpec {
        length,
        batch,
        lr,
        lr_sweep,
        warmup,
        decay,
        weight_decay,
        clip,
        accum,
        eval_every,
        checkpoint_every,
        max_len,
        device,
        weights,
    })
}

/// `steps` or `epochs`, exactly one of them.
fn train_length(
    f: &mut Fields<'_>,
    steps: Option<u64>,
    epochs: Option<u64>,
) -> Option<TrainLength> {
    match (steps, epochs, f.get("steps"), f.get("epochs")) {
        (Some(s), None, _, None) => Some(TrainLength::Steps(s as usize)),
        (None, Some(e), None, _) => Some(TrainLength::Epochs(e as usize)),
        (_, _, Some(_), Some(e)) => {
            f.value_error(
                e.key.span,
                "`train` sets both `steps` and `epochs`".into(),
                "training length is one or the other: remove one".into(),
            );
            None
        }
        (_, _, None, None) => {
            f.missing("steps", "1000");
            None
        }
        _ => None,
    }
}

/// `clip = off` or a positive norm; 1.0 when unset.
fn clip(f: &mut Fields<'_>) -> Option<f64> {
    match f.get("clip").map(|e| &e.value.node) {
        Some(Value::Word(w)) if w == "off" => None,
        Some(Value::Number(_)) => f.real_in("clip", &bounds::CLIP, "1.0"),
        Some(_) => {
            let e = f.get("clip").expect("checked above");
            f.type_error(e, "a positive number or `off`", "1.0");
            None
        }
        None => Some(1.0),
    }
}

/// Values each in bounds can still clash: examples a step, decay against the rate, warmup
/// against the length.
fn train_values_agree(
    f: &mut Fields<'_>,
    batch: usize,
    accum: usize,
    lr: f64,
    weight_decay: f64,
    warmup: usize,
    length: &TrainLength,
) -> bool {
    if (batch * accum) as u64 > bounds::EXAMPLES_PER_STEP {
        let span = f
            .get("accum")
            .or(f.get("batch"))
            .map_or(f.header, |e| e.value.span);
        f.value_error(
            span,
            format!(
                "`batch × accum` = {batch} × {accum} = {} examples per optimizer step is above the \
                 limit of {}",
                batch * accum,
                super::fields::group(bounds::EXAMPLES_PER_STEP)
            ),
            "each optimizer step runs batch × accum examples forward and backward; lower one of them".into(),
        );
        return false;
    }
    if lr * weight_decay >= bounds::MAX_LR_TIMES_DECAY {
        let span = f
            .get("weight_decay")
            .or(f.get("lr"))
            .map_or(f.header, |e| e.value.span);
        f.value_error(
            span,
            format!(
                "`lr × weight_decay` = {lr} × {weight_decay} = {} is not below 1",
                lr * weight_decay
            ),
            "decoupled weight decay multiplies every weight by 1 − lr·weight_decay at each step, \
             which then flips or zeroes them; typical values are weight_decay = 0.01–0.1"
                .into(),
        );
        return false;
    }
    if let TrainLength::Steps(s) = *length {
        if warmup >= s {
            let span = f.get("warmup").map_or(f.header, |e| e.value.span);
            f.value_error(
                span,
                format!("`warmup = {warmup}` is not shorter than training ({s} steps)"),
                "make warmup smaller than steps".into(),
            );
            return false;
        }
    }
    true
}

/// `lr = 1e-3`, or `lr = sweep [3e-4, 1e-3, 3e-3]`: at least two distinct rates in (0, 10]. A
/// sweep's plan carries its first candidate as `lr` until the runner has chosen.
fn learning_rate(f: &mut Fields<'_>) -> Option<(f64, Vec<f64>)> {
    let e = f.get("lr")?;
    let Value::Sweep(items) = &e.value.node else {
        return f.real_in("lr", &bounds::LR, "1e-3").map(|v| (v, vec![]));
    };
    let mut out: Vec<f64> = Vec::new();
    for it in items {
        match &it.node {
            Value::Number(n)
                if n.value.is_finite() && n.value > bounds::LR.min && n.value <= bounds::LR.max =>
            {
                if out.contains(&n.value) {
                    f.value_error(
                        it.span,
                        format!("learning rate `{}` is in the sweep twice", n.text),
                        "list each candidate once".into(),
                    );
                    return None;
                }
                out.push(n.value);
            }
            other => {
                f.value_error(
                    it.span,
                    format!(
                        "a swept learning rate is a number between 0 and 10, found {}",
                        other.describe()
                    ),
                    "write e.g. `lr = sweep [3e-4, 1e-3, 3e-3]`".into(),
                );
                return None;
            }
        }
    }
    if out.len() < 2 {
        f.value_error(
            e.value.span,
            format!(
                "a sweep needs at least two learning rates, found {}",
                out.len()
            ),
            "add candidates, e.g. `lr = sweep [3e-4, 1e-3, 3e-3]`, or give one rate: `lr = 1e-3`"
                .into(),
        );
        return None;
    }
    Some((out[0], out))
}
