//! Where a setting that applies to an arm was written, for errors found after the check (the
//! run's memory pre-flight): the arm's own items win, then the last `--set`, then the base
//! experiment — the order in which `layers.rs` merges them.

use super::arm_plan::Policy;
use super::ast::{Experiment, Item, Setting, Span, Value};
use super::diag::{Diagnostic, Diagnostics, Source};
use super::{parse, OVERRIDE_SOURCE};

/// A checked policy's text parsed again, with its `--set` overrides, to point into.
pub struct Locator {
    sources: Vec<Source>,
    exp: Experiment,
    overrides: Vec<Setting>,
}

impl Locator {
    /// `None` when the text no longer parses (it did when the policy was checked, so only a
    /// policy built by hand gets here).
    pub fn new(policy: &Policy) -> Option<Self> {
        let mut sources = vec![Source {
            name: policy.source_path.display().to_string(),
            text: policy.source_text.clone(),
        }];
        let exp = parse::parse_file(&policy.source_text, 0).ok()?;
        let mut overrides = Vec::new();
        for (i, o) in policy.overrides.iter().enumerate() {
            sources.push(Source {
                name: OVERRIDE_SOURCE.to_string(),
                text: o.clone(),
            });
            overrides.push(parse::parse_override(o, i + 1).ok()?);
        }
        Some(Self {
            sources,
            exp,
            overrides,
        })
    }

    /// The value of `section.key` as it applies to `arm`, or `None` when it was never written
    /// (a default). Without a key: a `section = value` setting (`lora = off`) or the section's
    /// block header (`model encoder`).
    pub fn setting(&self, arm: &str, section: &str, key: Option<&str>) -> Option<Span> {
        let own = self.exp.items.iter().find_map(|i| match i {
            Item::Arm(a) if a.name.node == arm => Some(&a.items),
            _ => None,
        });
        let in_items = |items: &[Item]| -> Option<Span> {
            items.iter().rev().find_map(|i| match i {
                Item::Block(b) if b.key.node == section => match key {
                    // The section itself: its header (`model encoder`).
                    None => Some(b.kind.as_ref().map_or(b.key.span, |k| Span {
                        end: k.span.end,
                        ..b.key.span
                    })),
                    Some(key) => b
                        .entries
                        .iter()
                        .rev()
                        .find(|s| s.path.len() == 1 && s.path[0].node == key)
                        .map(|s| s.value.span),
                },
                Item::Setting(s) => matches(s, section, key).then_some(s.value.span),
                _ => None,
            })
        };
        own.and_then(|items| in_items(items))
            .or_else(|| {
                self.overrides
                    .iter()
                    .rev()
                    .find(|s| matches(s, section, key))
                    .map(|s| s.value.span)
            })
            .or_else(|| in_items(&self.exp.items))
    }

    /// The arm's name where it is declared (the experiment's name for the base arm).
    pub fn arm(&self, arm: &str) -> Span {
        self.exp
            .items
            .iter()
            .find_map(|i| match i {
                Item::Arm(a) if a.name.node == arm => Some(a.name.span),
                _ => None,
            })
            .unwrap_or(self.exp.name.span)
    }

    /// One error at `span`, ready to print with file:line:col and the line.
    pub fn error(&self, d: Diagnostic) -> Diagnostics {
        let mut out = Diagnostics::new(self.sources.clone());
        out.push(d);
        out
    }
}

/// `section.key = v`, or `section = v` when `key` is `None` (e.g. `lora = off`).
fn matches(s: &Setting, section: &str, key: Option<&str>) -> bool {
    let p: Vec<&str> = s.path.iter().map(|p| p.node.as_str()).collect();
    match key {
        Some(k) => p == [section, k],
        None => p == [section] && !matches!(s.value.node, Value::Map(_)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    const SRC: &str = r#"experiment t {
  model encoder { layers = 1, hidden = 8, heads = 2, ffn = 16, vocab = 16, max_positions = 8 }
  data synthetic { classes = 2, samples = 64, eval_samples = 16, seq = 4, seed = 1 }
  lora { targets = [q], init_rank = 2 }
  train { steps = 4, batch = 8 }
  arm big { train.batch = 16 }
  arm full { lora = off }
}"#;

    fn line_col(l: &Locator, span: Span) -> (usize, usize, usize) {
        let d = l.error(Diagnostic::new(span, "x", ""));
        let (line, col) = d.line_col(span.src, span.start);
        (span.src, line, col)
    }

    #[test]
    fn arm_items_then_overrides_then_base() {
        let p = crate::policy::load_str(SRC, "t.rank", Path::new("."), &[]).unwrap();
        let l = Locator::new(&p).unwrap();
        let at = |arm, s, k| line_col(&l, l.setting(arm, s, k).unwrap());
        assert_eq!(at("adaptive", "train", Some("batch")), (0, 5, 30));
        assert_eq!(at("big", "train", Some("batch")), (0, 6, 27));
        assert_eq!(at("full", "lora", None), (0, 7, 21));
        assert_eq!(at("full", "model", None), (0, 2, 3));
        assert_eq!(at("adaptive", "lora", None), (0, 4, 3));
        assert!(l.setting("adaptive", "train", Some("accum")).is_none());
        assert_eq!(line_col(&l, l.arm("full")), (0, 7, 7));
        assert_eq!(line_col(&l, l.arm("adaptive")), (0, 1, 12));

        let p = crate::policy::load_str(
            SRC,
            "t.rank",
            Path::new("."),
            &["train.batch=4".to_string()],
        )
        .unwrap();
        let l = Locator::new(&p).unwrap();
        let span = l.setting("adaptive", "train", Some("batch")).unwrap();
        assert_eq!(span.src, 1, "the --set wins over the base");
        assert_eq!(
            line_col(&l, l.setting("big", "train", Some("batch")).unwrap()).0,
            0,
            "the arm's own setting wins over --set"
        );
    }
}
