//! JSON Lines classification data: one object per line, `{"text": "...", "label": 2}`, with an
//! optional `"text_pair"` for sentence-pair tasks. Blank lines are skipped.

use crate::data::glue::Example;
use anyhow::{anyhow, bail, Result};
use std::path::Path;

/// Largest class index a label may name: the classifier head has one row per class, so a label
/// is refused where it is read rather than sizing a head of billions of rows.
pub const MAX_LABEL: u64 = crate::policy::bounds::CLASSES.max - 1;

/// Reads the file line by line (memory follows the examples kept, not the file, and a mistake
/// on line 1 is reported before the rest is read).
pub fn load(path: &Path) -> Result<Vec<Example>> {
    let mut out = Vec::new();
    for next in crate::textfile::lines(path, "data", crate::textfile::MAX_DATA_BYTES)? {
        let (n, line) = next?;
        let line = line.as_str();
        if line.trim().is_empty() {
            continue;
        }
        let at = || format!("{}:{n}", path.display());
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
        let label = match obj.get("label") {
            Some(l) => {
                let x = l.as_u64().ok_or_else(|| {
                    anyhow!(
                        "{}: \"label\" is {l}; it must be a class index (0, 1, 2, ..)",
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
                x as u32
            }
            None => bail!("{}: missing \"label\"", at()),
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
    Ok(out)
}
