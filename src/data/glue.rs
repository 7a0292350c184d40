//! GLUE-style tab-separated files: SST-2 (`sentence`, `label`) and MNLI (the real MultiNLI
//! layout: `index promptID pairID genre sentence1_binary_parse … sentence1 sentence2 label1 …
//! gold_label`). Columns are found by header name; fields are not quoted (GLUE files are read
//! with quoting off), so a row must have exactly as many tab-separated fields as the header.

use anyhow::{anyhow, bail, Result};
use std::path::{Path, PathBuf};

/// One labelled text (or text pair) example.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Example {
    pub text_a: String,
    pub text_b: Option<String>,
    pub label: u32,
    /// 1-based line in the source file, for messages.
    pub line: usize,
}

/// A header plus rows of a TSV file, each row with its 1-based line number.
pub struct TextTable {
    pub path: PathBuf,
    pub header: Vec<String>,
    pub rows: Vec<(usize, Vec<String>)>,
}

impl TextTable {
    pub fn read(path: &Path) -> Result<Self> {
        // Line by line (CRLF files read the same as LF ones): a malformed row of a huge file is
        // found without reading the rest, and the file is never held twice.
        let mut lines = crate::textfile::lines(path, "data", crate::textfile::MAX_DATA_BYTES)?;
        let header: Vec<String> = match lines.next().transpose()? {
            // A bare CR inside the first line: the file ends its lines with CR alone (classic
            // Mac), so it reads as one line — say so instead of "no data rows".
            Some((_, h)) if h.contains('\r') => bail!(
                "{}:1:{}: a carriage return with no line feed after it: this file ends its lines \
                 with CR alone; convert them to LF (e.g. `tr '\\r' '\\n' < FILE > NEW`)",
                path.display(),
                h.chars().position(|c| c == '\r').unwrap_or(0) + 1
            ),
            Some((_, h)) if !h.is_empty() => h.split('\t').map(str::to_string).collect(),
            _ => bail!("{}:1: empty file; expected a header row", path.display()),
        };
        let mut rows = Vec::new();
        for next in lines {
            let (n, line) = next?;
            if line.is_empty() {
                continue;
            }
            let fields: Vec<String> = line.split('\t').map(str::to_string).collect();
            if fields.len() != header.len() {
                bail!(
                    "{}:{n}: {} tab-separated fields, the header has {}; a tab inside a text, \
                     or a truncated row?",
                    path.display(),
                    fields.len(),
                    header.len()
                );
            }
            rows.push((n, fields));
        }
        if rows.is_empty() {
            bail!(
                "{}: a header row and no data rows; the split has no examples",
                path.display()
            );
        }
        Ok(TextTable {
            path: path.to_path_buf(),
            header,
            rows,
        })
    }

    /// Index of a header column, or an error naming what the file has.
    pub fn column(&self, name: &str, what: &str) -> Result<usize> {
        self.header.iter().position(|h| h == name).ok_or_else(|| {
            anyhow!(
                "{}:1: no `{name}` column ({what}); the header has: {}",
                self.path.display(),
                self.header.join(", ")
            )
        })
    }
}

/// SST-2 format: `sentence` and `label` (0 or 1) columns, any others ignored (the movie-review
/// files written by `scripts/fetch-assets` use this format).
pub fn load_sst2(path: &Path) -> Result<Vec<Example>> {
    let t = TextTable::read(path)?;
    let s = t.column("sentence", "SST-2 needs sentence and label")?;
    let l = t.column(
        "label",
        "SST-2 needs sentence and label; GLUE's test split has no labels",
    )?;
    t.rows
        .iter()
        .map(|(n, r)| {
            let label = match r[l].trim() {
                "0" => 0,
                "1" => 1,
                other => bail!("{}:{n}: label {other:?} is not 0 or 1", t.path.display()),
            };
            if r[s].trim().is_empty() {
                bail!("{}:{n}: empty sentence", t.path.display());
            }
            Ok(Example {
                text_a: r[s].clone(),
                text_b: None,
                label,
                line: *n,
            })
        })
        .collect()
}

/// MNLI's label names in class order (GLUE's order: entailment 0, neutral 1, contradiction 2).
pub const MNLI_LABELS: [&str; 3] = ["entailment", "neutral", "contradiction"];

/// MNLI train/dev TSV: premise = `sentence1`, hypothesis = `sentence2`, label = `gold_label`.
/// Rows whose gold label is `-` (annotators reached no consensus) are skipped, as GLUE does.
pub fn load_mnli(path: &Path) -> Result<Vec<Example>> {
    let t = TextTable::read(path)?;
    let a = t.column("sentence1", "the premise")?;
    let b = t.column("sentence2", "the hypothesis")?;
    let g = t.column(
        "gold_label",
        "the label; MNLI test files have none and cannot be trained or scored on",
    )?;
    let mut out = Vec::with_capacity(t.rows.len());
    for (n, r) in &t.rows {
        let gold = r[g].trim();
        if gold == "-" {
            continue;
        }
        let label = MNLI_LABELS.iter().position(|x| *x == gold).ok_or_else(|| {
            anyhow!(
                "{}:{n}: gold_label {gold:?} is not one of entailment, neutral, contradiction",
                t.path.display()
            )
        })? as u32;
        out.push(Example {
            text_a: r[a].clone(),
            text_b: Some(r[b].clone()),
            label,
            line: *n,
        });
    }
    if out.is_empty() {
        bail!(
            "{}: every row's gold_label is `-` (no annotator consensus), so the split has no \
             usable examples",
            t.path.display()
        );
    }
    Ok(out)
}
