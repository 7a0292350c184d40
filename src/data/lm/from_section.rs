//! From a checked data section and a loaded causal LM to its [`LmTask`]: the files a section
//! names, the subset it asks for, the tokenization settings and the metric.

use super::encode::{encode_record, Encoder, LmExample};
use super::generation::LabelWords;
use super::lm_task::{LmEvalSet, LmTask};
use super::read::{self, Label, Labelled, RecordBody};
use super::{LmData, LmMetric, LmSettings};
use crate::data::assets;
use crate::data::glue;
use crate::data::prepare::Split;
use crate::data::pretrained::Pretrained;
use crate::policy::arm_plan::{DataSpec, Subset};
use crate::train::order::epoch_permutation;
use anyhow::{bail, Context, Result};
use std::path::PathBuf;
use std::sync::Arc;

/// Longest greedy answer (exact match) when the section sets no `max_new`.
pub const DEFAULT_MAX_NEW: usize = 64;

/// The name, training file, evaluation file and subset of a real data section.
fn files(spec: &DataSpec, split: Split) -> Option<(&'static str, PathBuf, PathBuf, &Subset)> {
    Some(match spec {
        DataSpec::Movies { dir, subset } => {
            let d = dir.clone().unwrap_or_else(assets::movie_reviews_dir);
            let e = d.join(format!("{}.tsv", split.name()));
            ("movies", d.join("train.tsv"), e, subset)
        }
        DataSpec::Shakespeare { dir, subset } => {
            let d = dir.clone().unwrap_or_else(assets::shakespeare_dir);
            let e = d.join(format!("{}.jsonl", split.name()));
            ("shakespeare", d.join("train.jsonl"), e, subset)
        }
        DataSpec::Sst2 { dir, subset } => {
            ("sst2", dir.join("train.tsv"), dir.join("dev.tsv"), subset)
        }
        DataSpec::Mnli { dir, subset } => (
            "mnli",
            dir.join("train.tsv"),
            dir.join("dev_matched.tsv"),
            subset,
        ),
        DataSpec::Jsonl { train, dev, subset } => ("jsonl", train.clone(), dev.clone(), subset),
        DataSpec::Planted { .. } | DataSpec::Synthetic { .. } | DataSpec::Squad { .. } => {
            return None
        }
    })
}

/// `train_samples`: a fixed random subset in file order (the same for every seed and arm, as
/// for the classification sets); `eval_samples`: the first ones.
fn subset_of<T: Clone>(train: &mut Vec<T>, eval: &mut Vec<T>, s: &Subset) {
    if let Some(k) = s.train_samples.filter(|&k| k < train.len()) {
        let mut keep: Vec<usize> = epoch_permutation(train.len(), 0x5EED, 0)[..k].to_vec();
        keep.sort_unstable();
        *train = keep.into_iter().map(|i| train[i].clone()).collect();
    }
    if let Some(k) = s.eval_samples {
        eval.truncate(k);
    }
}

/// A TSV labelled set (movies, SST-2, MNLI) as labelled examples.
fn labelled_tsv(spec: &DataSpec, path: &std::path::Path) -> Result<Vec<Labelled>> {
    let rows = match spec {
        DataSpec::Mnli { .. } => glue::load_mnli(path)?,
        _ => glue::load_sst2(path)?,
    };
    Ok(rows
        .into_iter()
        .map(|e| Labelled {
            line: e.line,
            text: e.text_a,
            text_pair: e.text_b,
            label: Label::Index(e.label),
        })
        .collect())
}

/// The reference answer of a record (exact match): the completion, or the last assistant turn.
fn reference(body: &RecordBody) -> String {
    match body {
        RecordBody::PromptCompletion { completion, .. } => completion.clone(),
        RecordBody::Messages(m) => m
            .iter()
            .rev()
            .find(|m| m.role == "assistant")
            .map(|m| m.content.clone())
            .unwrap_or_default(),
        RecordBody::Text(_) => String::new(),
    }
}

/// The causal-LM task of a data section on `pre` (`None` when the section is not read as
/// language modelling: no `as = generation` and no LM records), evaluated on `split`.
/// `max_len` is the train section's, used when the data section sets none.
pub fn lm_task(
    spec: &DataSpec,
    pre: &Pretrained,
    max_len: usize,
    seed: u64,
    split: Split,
) -> Result<Option<LmTask>> {
    let Some((name, train_path, eval_path, subset)) = files(spec, split) else {
        return Ok(None);
    };
    if let DataSpec::Shakespeare { dir: None, .. } = spec {
        if !assets::shakespeare_present() {
            bail!(
                "{}: missing; run `adarank fetch` (or scripts/fetch-assets) to download \
                 Shakespeare's plays",
                train_path.display()
            );
        }
    }
    let lm = &subset.lm;
    let settings = LmSettings {
        max_len: subset.max_len.unwrap_or(max_len),
        truncation: lm.truncation,
    };
    let enc = Encoder::new(&pre.tokenizer, settings);
    let tokenize = |what: &str, path: &PathBuf, ex: Result<Vec<LmExample>>| {
        ex.with_context(|| format!("{name} data, {what} split ({})", path.display()))
    };
    let (train, eval, classes, label_first, references, labelled) = if let Some(g) = &lm.generation
    {
        let (mut tr, mut ev) = match spec {
            DataSpec::Jsonl { .. } => (
                read::read_labelled(&train_path)?,
                read::read_labelled(&eval_path)?,
            ),
            _ => (
                labelled_tsv(spec, &train_path)?,
                labelled_tsv(spec, &eval_path)?,
            ),
        };
        subset_of(&mut tr, &mut ev, subset);
        let words = LabelWords::new(&pre.tokenizer, &g.labels)
            .with_context(|| format!("{name} data: the label words"))?;
        let (train, _) = g
            .examples(&enc, &tr)
            .with_context(|| format!("{}", train_path.display()))?;
        let (eval, classes) = g
            .examples(&enc, &ev)
            .with_context(|| format!("{}", eval_path.display()))?;
        let refs = classes
            .iter()
            .map(|&c| g.labels[c as usize].clone())
            .collect();
        (train, eval, classes, words.first, refs, true)
    } else if let DataSpec::Jsonl { .. } | DataSpec::Shakespeare { .. } = spec {
        let mut tr = read::read_records(&train_path, lm.format)?;
        let mut ev = read::read_records(&eval_path, lm.format.or(Some(tr[0].body.kind())))?;
        subset_of(&mut tr, &mut ev, subset);
        let refs = ev.iter().map(|r| reference(&r.body)).collect();
        let train = tokenize(
            "training",
            &train_path,
            tr.iter().map(|r| encode_record(&enc, r)).collect(),
        );
        let eval = tokenize(
            "evaluation",
            &eval_path,
            ev.iter().map(|r| encode_record(&enc, r)).collect(),
        );
        (train?, eval?, Vec::new(), Vec::new(), refs, false)
    } else {
        return Ok(None);
    };
    let set = LmEvalSet {
        metric: lm.metric.unwrap_or(LmMetric::default_for(labelled)),
        answer_rows: Vec::new(),
        classes,
        label_first,
        prompts: Vec::new(),
        max_new: lm.max_new.unwrap_or(DEFAULT_MAX_NEW),
        tokenizer: Arc::new(pre.tokenizer.clone()),
    };
    let pad = pre.tokenizer.pad;
    Ok(Some(LmTask::new(
        name,
        pre.config.clone(),
        Arc::new(pre.weights.clone()),
        LmData::new(train, pad).with_context(|| format!("{}", train_path.display()))?,
        LmData::new(eval, pad).with_context(|| format!("{}", eval_path.display()))?,
        set,
        references,
        seed,
    )?))
}
