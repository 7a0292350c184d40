//! JSON Lines classification data: one object per line, `{"text": "...", "label": 2}` (or
//! `"label": "positive"`: class names, numbered in sorted order), with an optional
//! `"text_pair"` for sentence-pair tasks. Blank lines are skipped.

use crate::data::glue::Example;
use anyhow::{anyhow, bail, Result};
use std::path::Path;

/// Largest class index a label may name: the classifier head has one row per class, so a label
/// is refused where it is read rather than sizing a head of billions of rows.
pub const MAX_LABEL: u64 = crate::policy::bounds::CLASSES.max - 1;

/// Reads the file line by line (memory follows the examples kept, not the file, and a mistake
/// on line 1 is reported before the rest is read). Labels must be class indices here; a file
/// with class names goes through [`load_named`].
pub fn load(path: &Path) -> Result<Vec<Example>> {
    match load_named(path, None)? {
        (examples, None) => Ok(examples),
        (examples, Some(names)) => {
            let line = examples.first().map_or(1, |e| e.line);
            bail!(
                "{}:{line}: \"label\" names a class ({:?}); here labels must be class indices \
                 (0, 1, 2, ..)",
                path.display(),
                names[examples[0].label as usize]
            )
        }
    }
}

/// A training file's examples, its held-out file's, and the class names (`None`: indices).
pub type Pair = (Vec<Example>, Vec<Example>, Option<Vec<String>>);

/// A training file and its held-out file, read as [`load_named`] does: with class names, the
/// held-out file is read against the training file's names.
pub fn load_pair(train: &Path, dev: &Path) -> Result<Pair> {
    let (tr, names) = load_named(train, None)?;
    if let Some(names) = names {
        let (ev, _) = load_named(dev, Some(&names))?;
        return Ok((tr, ev, Some(names)));
    }
    match load_named(dev, None)? {
        (ev, None) => Ok((tr, ev, None)),
        (ev, Some(_)) => bail!(
            "{}:{}: \"label\" names a class, but the training file {} numbers its classes \
             (0, 1, 2, ..); label both files the same way",
            dev.display(),
            ev.first().map_or(1, |e| e.line),
            train.display()
        ),
    }
}

/// One line's label: a class index, or a class name.
enum Label {
    Index(u32),
    Name(String),
}

fn label(l: &serde_json::Value, at: &dyn Fn() -> String) -> Result<Label> {
    if let serde_json::Value::String(s) = l {
        if s.is_empty() {
            bail!("{}: \"label\" is an empty string; name the class", at());
        }
        return Ok(Label::Name(s.clone()));
    }
    let x = l.as_u64().ok_or_else(|| {
        anyhow!(
            "{}: \"label\" is {l}; it must be a class index (0, 1, 2, ..) or a class name \
             (a string)",
            at()
        )
    })?;
    if x > MAX_LABEL {
        bail!(
            "{}: \"label\" is {x}, above the largest class index {MAX_LABEL} (a \
             classifier has at most {} classes); labels number the classes 0, 1, 2, ..",
            at(),
            MAX_LABEL + 1
        );
    }
    Ok(Label::Index(x as u32))
}

/// One line's text, text pair and label.
fn record(line: &str, at: &dyn Fn() -> String) -> Result<(String, Option<String>, Label)> {
    let v: serde_json::Value = serde_json::from_str(line)
        .map_err(|e| anyhow!("{}: invalid JSON at column {}: {e}", at(), e.column()))?;
    let obj = v.as_object().ok_or_else(|| {
        anyhow!(
            "{}: expected an object {{\"text\": .., \"label\": ..}}",
            at()
        )
    })?;
    let text_a = match obj.get("text") {
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(_) => bail!("{}: \"text\" must be a string", at()),
        None => bail!("{}: missing \"text\"", at()),
    };
    let text_b = match obj.get("text_pair") {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(s)) => Some(s.clone()),
        Some(_) => bail!("{}: \"text_pair\" must be a string", at()),
    };
    let l = obj
        .get("label")
        .ok_or_else(|| anyhow!("{}: missing \"label\"", at()))?;
    Ok((text_a, text_b, label(l, at)?))
}

/// Reads a file whose labels are all class indices (`None` back) or all class names. Names
/// become indices in sorted order (as `datasets`' `class_encode_column` numbers them), so the
/// numbering does not depend on which class comes first in the file; with `known` (the
/// training file's names), a name outside them is refused at its line. At most
/// [`MAX_LABEL`] + 1 distinct names.
pub fn load_named(
    path: &Path,
    known: Option<&[String]>,
) -> Result<(Vec<Example>, Option<Vec<String>>)> {
    let mut out = Vec::new();
    // Per example (class names only): its name's index in `seen` until the names are sorted.
    let mut named: Vec<u32> = Vec::new();
    let mut seen: std::collections::HashMap<String, u32> = Default::default();
    let mut first: Option<(usize, bool)> = None;
    for next in crate::textfile::lines(path, "data", crate::textfile::MAX_DATA_BYTES)? {
        let (n, line) = next?;
        let line = line.as_str();
        if line.trim().is_empty() {
            continue;
        }
        let at = || format!("{}:{n}", path.display());
        let (text_a, text_b, l) = record(line, &at)?;
        let is_name = matches!(l, Label::Name(_));
        match first {
            None => first = Some((n, is_name)),
            Some((m, was_name)) if was_name != is_name => bail!(
                "{}: \"label\" is {}, but line {m} {}; a file labels its classes one way",
                at(),
                if is_name {
                    "a class name"
                } else {
                    "a class index"
                },
                if was_name {
                    "names its class"
                } else {
                    "numbers its class"
                }
            ),
            _ => {}
        }
        let label = match l {
            Label::Index(x) => x,
            Label::Name(s) => {
                let k = seen.len() as u32;
                let i = match seen.get(&s) {
                    Some(&i) => i,
                    None if seen.len() as u64 > MAX_LABEL => bail!(
                        "{}: \"label\" {s:?} is class name number {}, more than a classifier \
                         has ({} at most)",
                        at(),
                        k + 1,
                        MAX_LABEL + 1
                    ),
                    None => {
                        if let Some(names) = known {
                            if names.binary_search(&s).is_err() {
                                bail!(
                                    "{}: \"label\" is {s:?}, a class the training file does not \
                                     name (it names {})",
                                    at(),
                                    list(names)
                                );
                            }
                        }
                        seen.insert(s, k);
                        k
                    }
                };
                named.push(i);
                0
            }
        };
        out.push(Example {
            text_a,
            text_b,
            label,
            line: n,
        });
    }
    if out.is_empty() {
        bail!(
            "{}: no records (the file is empty or holds only blank lines)",
            path.display()
        );
    }
    if let Some(names) = known {
        if named.is_empty() {
            bail!(
                "{}:{}: \"label\" is a class index, but the training file names its classes \
                 ({}); label both files the same way",
                path.display(),
                out[0].line,
                list(names)
            );
        }
    }
    if named.is_empty() {
        return Ok((out, None));
    }
    // Sorted names; each example's index follows its name.
    let names: Vec<String> = match known {
        Some(n) => n.to_vec(),
        None => {
            let mut v: Vec<String> = seen.keys().cloned().collect();
            v.sort();
            v
        }
    };
    let mut order = vec![0u32; seen.len()];
    for (name, &i) in &seen {
        order[i as usize] = names.binary_search(name).expect("a known name") as u32;
    }
    for (e, &i) in out.iter_mut().zip(&named) {
        e.label = order[i as usize];
    }
    Ok((out, Some(names)))
}

/// Up to 8 names, quoted.
fn list(names: &[String]) -> String {
    let mut s = names
        .iter()
        .take(8)
        .map(|n| format!("{n:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    if names.len() > 8 {
        s += &format!(" and {} more", names.len() - 8);
    }
    s
}
