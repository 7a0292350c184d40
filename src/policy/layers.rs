//! How an arm's settings come about: the base experiment, then `--set` overrides, then the
//! arm's own items, each layer merged over the one before. The result is still untyped
//! (values with spans); `sections.rs` types it.

use super::ast::*;
use super::diag::Diagnostic;
use super::suggest;
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// Sections that are written as blocks (`train { ... }`) or set by dotted keys (`train.lr`).
pub const SECTIONS: &[&str] = &["model", "data", "lora", "adalora", "sora", "train"];
/// Sections whose block names a kind (`model encoder { ... }`).
pub const KINDED: &[&str] = &["model", "data"];
/// Sections that `= off` may switch off.
pub const SWITCHABLE: &[&str] = &["lora", "adalora", "sora"];
/// Plain settings of the experiment.
pub const TOP: &[&str] = &["seeds", "base", "complexity", "allocator", "learner"];

#[derive(Clone, Debug)]
pub struct Entry {
    pub key: Ident,
    pub value: Spanned<Value>,
}

#[derive(Clone, Debug)]
pub enum Section {
    /// `lora = off`, at the span of the setting.
    Off(Span),
    On {
        kind: Option<Ident>,
        /// Where the section was introduced, for "missing key" errors.
        header: Span,
        entries: Vec<Entry>,
    },
}

#[derive(Clone, Debug, Default)]
pub struct Config {
    pub sections: BTreeMap<String, Section>,
    pub top: BTreeMap<String, Entry>,
    pub phases: Vec<Phase>,
    /// Sections whose absence is already explained by an error (a misspelt or malformed
    /// block), so "missing section" would only repeat it.
    pub flagged: BTreeSet<String>,
    /// Position of each key in its section's entries, so that setting a key stays constant
    /// time however many keys a (hostile) block holds.
    index: HashMap<String, HashMap<String, usize>>,
}

/// Which layer items come from: what they may contain differs.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Layer {
    Base,
    Override,
    Arm,
}

impl Config {
    /// Merges `items` over the config. Arms in the base layer are skipped (the caller handles
    /// them); duplicate keys within one layer are errors.
    pub fn apply(&mut self, items: &[Item], layer: Layer, d: &mut Vec<Diagnostic>) {
        let mut seen: HashMap<String, Span> = HashMap::new();
        for item in items {
            match item {
                Item::Block(b) => self.apply_block(b, &mut seen, d),
                Item::Setting(s) => self.apply_setting(s, &mut seen, d),
                Item::Phase(p) => self.apply_phase(p, layer, &mut seen, d),
                Item::Arm(_) => {}
            }
        }
    }

    fn apply_block(
        &mut self,
        b: &Block,
        seen: &mut HashMap<String, Span>,
        d: &mut Vec<Diagnostic>,
    ) {
        let key = b.key.node.as_str();
        if !SECTIONS.contains(&key) {
            let help = if TOP.contains(&key) {
                format!("`{key}` is a setting: write `{key} = ...`")
            } else {
                suggest::help(key, "block", SECTIONS)
            };
            if let Some(s) = suggest::closest(key, SECTIONS.iter().copied()) {
                self.flagged.insert(s.to_string());
            }
            d.push(
                Diagnostic::new(b.key.span, format!("unknown block `{key}`"), "not a block")
                    .help(help),
            );
            return;
        }
        if let Some(first) = seen.get(&format!("{key}{{}}")) {
            let _ = first;
            d.push(
                Diagnostic::new(
                    b.key.span,
                    format!("a second `{key}` block"),
                    "repeated here",
                )
                .help(format!("merge the two `{key}` blocks into one")),
            );
            return;
        }
        seen.insert(format!("{key}{{}}"), b.key.span);
        let kinded = KINDED.contains(&key);
        if kinded && b.kind.is_none() {
            self.flagged.insert(key.to_string());
            d.push(
                Diagnostic::new(b.key.span, format!("`{key}` needs a kind"), "kind missing").help(
                    format!(
                        "name the kind after `{key}`, e.g. {}",
                        if key == "model" {
                            "`model encoder { layers = 4, hidden = 128, heads = 4 }`"
                        } else {
                            "`data planted { ranks = [2, 8] }`"
                        }
                    ),
                ),
            );
            return;
        }
        if let (false, Some(k)) = (kinded, &b.kind) {
            d.push(
                Diagnostic::new(k.span, format!("`{key}` takes no kind"), "remove this")
                    .help(format!("write `{key} {{ ... }}`")),
            );
            // Reported, then read as if the kind weren't there: the entries are still checked.
        }
        let b_kind = if kinded { b.kind.clone() } else { None };
        // A block of another kind replaces the section; one of the same kind amends it.
        let same_kind = match self.sections.get(key) {
            Some(Section::On { kind, .. }) => {
                kind.as_ref().map(|k| &k.node) == b_kind.as_ref().map(|k| &k.node)
            }
            _ => false,
        };
        if !same_kind {
            self.replace_section(
                key,
                Section::On {
                    kind: b_kind.clone(),
                    header: b.key.span,
                    entries: Vec::new(),
                },
            );
        }
        let mut in_block: HashMap<&str, Span> = HashMap::new();
        for e in &b.entries {
            let k = e.path[0].node.as_str();
            if in_block.insert(k, e.path[0].span).is_some() {
                d.push(
                    Diagnostic::new(
                        e.path[0].span,
                        format!("`{key}.{k}` is set twice in this block"),
                        "again here",
                    )
                    .help("keep one of the two"),
                );
                continue;
            }
            seen.insert(format!("{key}.{k}"), e.path[0].span);
            self.set_entry(key, &e.path[0], &e.value);
        }
    }

    fn set_entry(&mut self, section: &str, key: &Ident, value: &Spanned<Value>) {
        if let Some(Section::On { entries, .. }) = self.sections.get_mut(section) {
            let entry = Entry {
                key: key.clone(),
                value: value.clone(),
            };
            let index = self.index.entry(section.to_string()).or_default();
            match index.get(&key.node) {
                Some(&i) => entries[i] = entry,
                None => {
                    index.insert(key.node.clone(), entries.len());
                    entries.push(entry);
                }
            }
        }
    }

    /// Replaces a whole section (a block of another kind, or `= off`).
    fn replace_section(&mut self, key: &str, section: Section) {
        self.index.remove(key);
        self.sections.insert(key.to_string(), section);
    }

    fn apply_setting(
        &mut self,
        s: &Setting,
        seen: &mut HashMap<String, Span>,
        d: &mut Vec<Diagnostic>,
    ) {
        let dotted = s.dotted();
        if seen.contains_key(&dotted) {
            d.push(
                Diagnostic::new(
                    s.path_span(),
                    format!("`{dotted}` is set twice"),
                    "again here",
                )
                .help("keep one of the two settings"),
            );
            return;
        }
        seen.insert(dotted.clone(), s.path_span());
        let head = s.path[0].node.as_str();
        match s.path.len() {
            1 if SECTIONS.contains(&head) => self.switch_section(s, head, d),
            1 if TOP.contains(&head) => {
                self.top.insert(
                    head.to_string(),
                    Entry {
                        key: s.path[0].clone(),
                        value: s.value.clone(),
                    },
                );
            }
            1 => {
                let all: Vec<&str> = TOP.iter().chain(SECTIONS).copied().collect();
                d.push(
                    Diagnostic::new(
                        s.path[0].span,
                        format!("unknown setting `{head}`"),
                        "not a setting",
                    )
                    .help(suggest::help(head, "setting", &all)),
                );
            }
            2 if SECTIONS.contains(&head) => self.set_section_key(s, head, &dotted, d),
            2 => {
                d.push(
                    Diagnostic::new(
                        s.path[0].span,
                        format!("unknown section `{head}`"),
                        "not a section",
                    )
                    .help(suggest::help(head, "section", SECTIONS)),
                );
            }
            _ => {
                d.push(
                    Diagnostic::new(s.path_span(), format!("`{dotted}` has too many parts"), "")
                        .help("settings are `key = value` or `section.key = value`; maps are written `{ key: value }`"),
                );
            }
        }
    }

    /// `SECTION = off`: only a switchable section, and only to `off`.
    fn switch_section(&mut self, s: &Setting, head: &str, d: &mut Vec<Diagnostic>) {
        let off = matches!(&s.value.node, Value::Word(w) if w == "off");
        if !SWITCHABLE.contains(&head) {
            d.push(
                Diagnostic::new(
                    s.value.span,
                    format!("`{head}` cannot be set to a value"),
                    "",
                )
                .help(format!(
                    "write a block: `{head} KIND {{ ... }}`, or set one key: `{head}.KEY = ...`"
                )),
            );
        } else if !off {
            d.push(
                Diagnostic::new(
                    s.value.span,
                    format!("`{head}` can only be set to `off`"),
                    "expected `off`",
                )
                .help(format!(
                    "write `{head} = off`, or a block `{head} {{ ... }}`"
                )),
            );
        } else {
            self.replace_section(head, Section::Off(s.path_span()));
        }
    }

    /// `SECTION.KEY = VALUE`: into a section that is on, opening a kindless one when needed.
    fn set_section_key(&mut self, s: &Setting, head: &str, dotted: &str, d: &mut Vec<Diagnostic>) {
        let key = &s.path[1];
        match self.sections.get(head) {
            Some(Section::On { .. }) => {}
            Some(Section::Off(_)) => {
                d.push(
                    Diagnostic::new(
                        s.path_span(),
                        format!("`{head}` is off here, so `{dotted}` has no effect"),
                        "",
                    )
                    .help(format!("remove `{head} = off`, or this setting")),
                );
                return;
            }
            None if KINDED.contains(&head) => {
                d.push(
                    Diagnostic::new(
                        s.path[0].span,
                        format!("there is no `{head}` block to set `{}` in", key.node),
                        "",
                    )
                    .help(format!(
                        "declare the section first: `{head} KIND {{ ... }}`"
                    )),
                );
                return;
            }
            None => {
                self.replace_section(
                    head,
                    Section::On {
                        kind: None,
                        header: s.path[0].span,
                        entries: Vec::new(),
                    },
                );
            }
        }
        self.set_entry(head, key, &s.value);
    }

    fn apply_phase(
        &mut self,
        p: &Phase,
        layer: Layer,
        seen: &mut HashMap<String, Span>,
        d: &mut Vec<Diagnostic>,
    ) {
        let name = &p.name.node;
        let tag = format!("phase {name}");
        if seen.contains_key(&tag) {
            d.push(
                Diagnostic::new(
                    p.name.span,
                    format!("phase `{name}` is declared twice"),
                    "again here",
                )
                .help("give each phase its own name"),
            );
            // Kept in the base so that the phases after it are still checked in place.
            if layer != Layer::Arm {
                self.phases.push(p.clone());
            }
            return;
        }
        seen.insert(tag, p.name.span);
        match layer {
            Layer::Base | Layer::Override => self.phases.push(p.clone()),
            Layer::Arm => match self.phases.iter_mut().find(|q| q.name.node == *name) {
                // An arm's phase replaces the body; a bound, when given, replaces the bound.
                Some(q) => {
                    q.actions = p.actions.clone();
                    if p.until.is_some() {
                        q.until = p.until.clone();
                    }
                }
                None => {
                    let names: Vec<&str> =
                        self.phases.iter().map(|q| q.name.node.as_str()).collect();
                    d.push(
                        Diagnostic::new(
                            p.name.span,
                            format!("the experiment has no phase `{name}` for this arm to change"),
                            "unknown phase",
                        )
                        .help(suggest::help(name, "phase", &names)),
                    );
                }
            },
        }
    }
}
