//! From a checked policy's `model` and `data` sections to a loaded checkpoint and a training
//! task, for the runner: `model hf/path` → [`load_model`], `data movies/sst2/mnli/jsonl` →
//! [`classify_task`]. Paths in the plan are already resolved against the policy file.

use crate::data::assets;
use crate::data::batch::epoch_permutation;
use crate::data::classify_task::{ClassifyTask, TextFormat};
use crate::data::glue::Example;
use crate::data::hf::{self, PretrainedEncoder};
use crate::model::Pooling;
use crate::policy::arm_plan::{self as plan, DataSpec, ModelSpec, Subset};
use anyhow::{bail, Result};
use std::path::Path;

/// Sentences per evaluation batch of the text-classification tasks.
pub const CLASSIFY_EVAL_BATCH: usize = 64;
/// Questions per evaluation batch of the extractive question-answering task.
pub const SPAN_EVAL_BATCH: usize = 32;

/// The pretrained checkpoint a model section names (`None` for randomly initialised models).
/// The policy's `pooling` overrides the one the checkpoint's own config names.
pub fn load_model(spec: &ModelSpec) -> Result<Option<PretrainedEncoder>> {
    // A causal LM is loaded with its task (`load_llm`), not as an encoder checkpoint.
    if matches!(
        crate::policy::lm::model_kind(spec),
        crate::policy::lm::ModelKind::CausalLm(_)
    ) {
        return Ok(None);
    }
    let (mut ck, pooling) = match spec {
        ModelSpec::Hf { name, pooling } => (hf::load(name)?, pooling),
        ModelSpec::Path { dir, pooling } => (hf::load_dir(dir)?, pooling),
        // The causal-LM tasks load through `data::gguf` and `data::hf_llm`, not this
        // encoder checkpoint.
        ModelSpec::Gguf(_) => anyhow::bail!(
            "model gguf: a causal LM; the text-classification and span tasks need a \
             BERT-family encoder"
        ),
        ModelSpec::Encoder(_) | ModelSpec::Decoder(_) => return Ok(None),
    };
    ck.pooling = match pooling {
        plan::Pooling::Mean => Pooling::Mean,
        plan::Pooling::Cls => Pooling::Cls,
    };
    Ok(Some(ck))
}

/// A Llama-family causal LM from a GGUF file or a Hugging Face folder.
pub fn load_llm(path: &std::path::Path) -> Result<crate::data::pretrained::Pretrained> {
    if path.extension().is_some_and(|e| e == "gguf") {
        crate::data::gguf::load(path)
    } else {
        crate::data::hf_llm::load_llm(path)
    }
}

/// Which held-out split a cell evaluates on: model selection (a learning-rate sweep) reads the
/// dev split, the final metric the test split.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    clap::ValueEnum,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    #[default]
    Dev,
    Test,
}

impl Split {
    pub fn name(self) -> &'static str {
        match self {
            Split::Dev => "dev",
            Split::Test => "test",
        }
    }
}

/// The split a data section really evaluates on when `split` is asked for: the movie
/// sentences and the built-in tasks have both; GLUE's test files carry no labels and the other
/// loaders take one held-out file, so there both are the dev file.
pub fn split_of(spec: &DataSpec, split: Split) -> Split {
    match spec {
        DataSpec::Movies { .. }
        | DataSpec::Shakespeare { .. }
        | DataSpec::Planted { .. }
        | DataSpec::Synthetic { .. } => split,
        DataSpec::Sst2 { .. }
        | DataSpec::Mnli { .. }
        | DataSpec::Squad { .. }
        | DataSpec::Jsonl { .. } => Split::Dev,
    }
}

/// The classification task of a data section on `ckpt` (`None` for data kinds that are not
/// text classification: planted, synthetic, squad), evaluated on `split` (see [`split_of`]).
/// `max_len` is the train section's, used when the data section sets none. Takes `ckpt` mutably
/// to set its tokenizer's maximum length.
pub fn classify_task(
    spec: &DataSpec,
    ckpt: &mut PretrainedEncoder,
    max_len: usize,
    seed: u64,
    split: Split,
) -> Result<Option<ClassifyTask>> {
    let (name, train, eval, format, subset) = match spec {
        DataSpec::Movies { dir, subset } => {
            let d = dir.clone().unwrap_or_else(assets::movie_reviews_dir);
            let e = match split {
                Split::Dev => d.join("dev.tsv"),
                Split::Test => d.join("test.tsv"),
            };
            let t = d.join("train.tsv");
            if dir.is_none() && !t.is_file() {
                bail!(
                    "{}: missing; run `adarank fetch` (or scripts/fetch-assets) to download the \
                     movie-review sentences",
                    t.display()
                );
            }
            ("movies", t, e, TextFormat::Sst2, subset)
        }
        DataSpec::Sst2 { dir, subset } => (
            "sst2",
            dir.join("train.tsv"),
            dir.join("dev.tsv"),
            TextFormat::Sst2,
            subset,
        ),
        DataSpec::Mnli { dir, subset } => (
            "mnli",
            dir.join("train.tsv"),
            dir.join("dev_matched.tsv"),
            TextFormat::Mnli,
            subset,
        ),
        DataSpec::Jsonl { train, dev, subset } => (
            "jsonl",
            train.clone(),
            dev.clone(),
            TextFormat::Jsonl,
            subset,
        ),
        DataSpec::Planted { .. }
        | DataSpec::Synthetic { .. }
        | DataSpec::Squad { .. }
        | DataSpec::Shakespeare { .. } => return Ok(None),
    };
    let read = |p: &Path| -> Result<Vec<Example>> {
        crate::textfile::check_regular(
            p,
            &format!("{name} data"),
            crate::textfile::MAX_DATA_BYTES,
        )?;
        format.load(p)
    };
    let (mut tr, mut ev, classes) = if format == TextFormat::Jsonl {
        for p in [&train, &eval] {
            crate::textfile::check_regular(p, "jsonl data", crate::textfile::MAX_DATA_BYTES)?;
        }
        match crate::data::jsonl::load_pair(&train, &eval)? {
            // Class names: the training file's names are the classes, and the held-out file was
            // read against them (a name it adds is refused at its line).
            (tr, ev, Some(names)) => (tr, ev, names.len()),
            (tr, ev, None) => {
                same_classes(&train, &tr, &eval, &ev)?;
                let classes = format.classes(&tr);
                (tr, ev, classes)
            }
        }
    } else {
        let (tr, ev) = (read(&train)?, read(&eval)?);
        let classes = format.classes(&tr);
        (tr, ev, classes)
    };
    apply_subset(&mut tr, &mut ev, subset);
    ckpt.tokenizer
        .set_max_len(subset.max_len.unwrap_or(max_len))?;
    Ok(Some(ClassifyTask::new(
        name,
        ckpt,
        &tr,
        &ev,
        classes,
        CLASSIFY_EVAL_BATCH,
        seed,
    )?))
}

/// JSONL files name their classes by index, so the number of classes is read off the labels:
/// a held-out file whose labels span a different number of classes than the training file was
/// labelled another way (or is the wrong file), and its accuracy would be meaningless.
fn same_classes(train: &Path, tr: &[Example], dev: &Path, ev: &[Example]) -> Result<()> {
    let count = |x: &[Example]| x.iter().map(|e| e.label as usize + 1).max().unwrap_or(0);
    let (ct, cd) = (count(tr), count(ev));
    if ct == cd {
        return Ok(());
    }
    let top = |x: &[Example], c: usize| {
        x.iter()
            .find(|e| e.label as usize + 1 == c)
            .map_or(0, |e| e.line)
    };
    bail!(
        "{}:{}: the held-out labels run to class {} ({cd} classes), but the training file {} has \
         {ct} classes (its largest label, {}, is on line {}); label both files with the same class \
         indices 0 to {}, or check that this is the right dev file",
        dev.display(),
        top(ev, cd),
        cd - 1,
        train.display(),
        ct - 1,
        top(tr, ct),
        ct - 1,
    )
}

/// `train_samples`: a fixed random subset (same for every seed, so arms and seeds compare on the
/// same data), kept in file order; `eval_samples`: the first ones of the evaluation file.
fn apply_subset(train: &mut Vec<Example>, eval: &mut Vec<Example>, s: &Subset) {
    if let Some(k) = s.train_samples.filter(|&k| k < train.len()) {
        let mut keep: Vec<usize> = epoch_permutation(train.len(), 0x5EED, 0)[..k].to_vec();
        keep.sort_unstable();
        *train = keep.into_iter().map(|i| train[i].clone()).collect();
    }
    if let Some(k) = s.eval_samples {
        eval.truncate(k);
    }
}

/// The extractive question-answering task of a `data squad` section (`None` for other kinds).
/// `train_samples` takes a fixed random subset of the questions, `eval_samples` the first ones.
pub fn span_task(
    spec: &DataSpec,
    ckpt: &mut PretrainedEncoder,
    max_len: usize,
    seed: u64,
) -> Result<Option<crate::data::squad::SpanTask>> {
    let DataSpec::Squad { train, dev, subset } = spec else {
        return Ok(None);
    };
    ckpt.tokenizer
        .set_max_len(subset.max_len.unwrap_or(max_len))?;
    let mut tr = crate::data::squad::load(train, &ckpt.tokenizer)?;
    let mut ev = crate::data::squad::load(dev, &ckpt.tokenizer)?;
    if let Some(k) = subset.train_samples.filter(|&k| k < tr.len()) {
        let mut keep: Vec<usize> = epoch_permutation(tr.len(), 0x5EED, 0)[..k].to_vec();
        keep.sort_unstable();
        tr = keep.into_iter().map(|i| tr[i].clone()).collect();
    }
    if let Some(k) = subset.eval_samples {
        ev.truncate(k);
    }
    Ok(Some(crate::data::squad::SpanTask::new(
        ckpt,
        tr,
        &ev,
        SPAN_EVAL_BATCH,
        seed,
    )?))
}
