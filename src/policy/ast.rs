//! The syntax tree of a `.rank` file, built from pest pairs by `parse.rs`. It records what was
//! written (with spans for diagnostics) and gives no meaning to keys: that is the checker's job.

use super::arm_plan::CmpOp;

/// Byte range in one of the sources of a load (the policy file or a `--set` argument).
///
/// Spans never take part in equality: two parses of the same policy compare equal whatever
/// its layout, which is what `parse(fmt(x)) == parse(x)` needs.
#[derive(Clone, Copy, Debug, Default)]
pub struct Span {
    /// Index into the load's sources (0 = the policy file, then one per `--set`).
    pub src: usize,
    pub start: usize,
    pub end: usize,
}

impl PartialEq for Span {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Span {
    /// Identity of the span, for de-duplicating diagnostics (equality ignores spans).
    pub fn key(&self) -> (usize, usize, usize) {
        (self.src, self.start, self.end)
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Spanned<T> {
    pub node: T,
    pub span: Span,
}

impl<T> Spanned<T> {
    pub fn new(node: T, span: Span) -> Self {
        Self { node, span }
    }
}

pub type Ident = Spanned<String>;

#[derive(Clone, Debug, PartialEq)]
pub struct Experiment {
    pub name: Ident,
    pub items: Vec<Item>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Item {
    Block(Block),
    Setting(Setting),
    Phase(Phase),
    Arm(Arm),
}

/// `model encoder { layers = 4, hidden = 128 }`, `train { steps = 600 }`.
#[derive(Clone, Debug, PartialEq)]
pub struct Block {
    pub key: Ident,
    pub kind: Option<Ident>,
    pub entries: Vec<Setting>,
    pub span: Span,
}

/// `key = value` inside a block (one-part path) or `a.b = value` at experiment/arm level.
#[derive(Clone, Debug, PartialEq)]
pub struct Setting {
    pub path: Vec<Ident>,
    pub value: Spanned<Value>,
}

impl Setting {
    pub fn path_span(&self) -> Span {
        let first = self.path[0].span;
        let last = self.path[self.path.len() - 1].span;
        Span {
            src: first.src,
            start: first.start,
            end: last.end,
        }
    }
    pub fn dotted(&self) -> String {
        let parts: Vec<&str> = self.path.iter().map(|p| p.node.as_str()).collect();
        parts.join(".")
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Number {
    /// As written (the formatter keeps `2k`, `3e-3`).
    pub text: String,
    pub value: f64,
}

impl Number {
    /// Written as a percentage (`25%`): a share of training, value in 0..=1.
    pub fn is_share(&self) -> bool {
        self.text.ends_with('%')
    }

    /// The value as a count, when it is a whole non-negative number that fits.
    pub fn as_count(&self) -> Option<u64> {
        if self.is_share() {
            return None;
        }
        let v = self.value;
        (v >= 0.0 && v.fract() == 0.0 && v <= 9.007_199_254_740_992e15).then_some(v as u64)
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Number(Number),
    Str(String),
    /// A bare identifier: `off`, `true`, `cosine`, `q`.
    Word(String),
    List(Vec<Spanned<Value>>),
    Map(Vec<(Ident, Spanned<Value>)>),
    /// `plugin "path.rhai"`, optionally with parameters: `plugin "log_rule" { alpha = 2 }`.
    Plugin(PluginRef),
    /// `sweep [3e-4, 1e-3]`: candidate values, one chosen per arm on the dev split.
    Sweep(Vec<Spanned<Value>>),
}

impl Value {
    /// A number as written (`4294967296`, `1e12`), anything else described.
    pub fn describe_number(&self) -> String {
        match self {
            Value::Number(n) => n.text.clone(),
            other => other.describe(),
        }
    }
    /// What kind of value this is, for "expected X, found Y" messages.
    pub fn describe(&self) -> String {
        match self {
            Value::Number(n) => format!("the number `{}`", n.text),
            Value::Str(s) => format!("the string \"{s}\""),
            Value::Word(w) => format!("`{w}`"),
            Value::List(_) => "a list".into(),
            Value::Map(_) => "a map".into(),
            Value::Plugin(_) => "a plugin reference".into(),
            Value::Sweep(_) => "a sweep".into(),
        }
    }
}

/// `phase adapt until step 400 { every 50 steps: reallocate }`.
#[derive(Clone, Debug, PartialEq)]
pub struct Phase {
    pub name: Ident,
    pub until: Option<Spanned<Cond>>,
    pub actions: Vec<ActionDecl>,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Cond {
    Step(Spanned<Number>),
    Epoch(Spanned<Number>),
    Metric {
        name: Ident,
        op: CmpOp,
        value: Spanned<Number>,
    },
    Plugin(PluginRef),
}

/// `plugin "spectral_gradient" { grad_weight = 0.2 }`: a script and the parameters the policy
/// sets for it (each a one-part [`Setting`]; empty when none are written).
#[derive(Clone, Debug, PartialEq)]
pub struct PluginRef {
    pub path: Spanned<String>,
    pub params: Vec<Setting>,
}

/// `every 50 steps: reallocate, evaluate`.
#[derive(Clone, Debug, PartialEq)]
pub struct ActionDecl {
    pub every: Spanned<Number>,
    pub what: Vec<Ident>,
}

/// `baseline arm fixed { ... }`.
#[derive(Clone, Debug, PartialEq)]
pub struct Arm {
    pub name: Ident,
    pub markers: Vec<Ident>,
    pub items: Vec<Item>,
    pub span: Span,
}
