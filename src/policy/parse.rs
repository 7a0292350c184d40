//! Builds the AST from pest pairs. The grammar is `grammar/policy.pest`; comments come through
//! as pairs (the formatter keeps them), so every walk here skips `Rule::COMMENT`.

use super::arm_plan::CmpOp;
use super::ast::*;
use super::diag::Diagnostic;
use pest::iterators::Pair;
use pest::Parser;

#[derive(pest_derive::Parser)]
#[grammar = "../grammar/policy.pest"]
pub struct PolicyParser;

/// Parses a whole `.rank` text into the experiment; `src` is the source index spans carry.
pub fn parse_file(text: &str, src: usize) -> Result<Experiment, Diagnostic> {
    let file = parse_rule(Rule::file, text, src)?;
    let exp = children(file)
        .find(|p| p.as_rule() == Rule::experiment)
        .expect("grammar: file holds an experiment");
    Ok(build_experiment(exp, src))
}

/// Parses one `--set key=value` argument into a setting.
pub fn parse_override(text: &str, src: usize) -> Result<Setting, Diagnostic> {
    let pair = parse_rule(Rule::override_arg, text, src)?;
    let mut it = children(pair);
    let path = build_path(it.next().expect("grammar: path"), src);
    let value = build_value(it.next().expect("grammar: value"), src);
    Ok(Setting { path, value })
}

/// Runs the pest parser; its error becomes a diagnostic in our format.
pub fn parse_rule(rule: Rule, text: &str, src: usize) -> Result<Pair<'_, Rule>, Diagnostic> {
    check_depth(text, src)?;
    match PolicyParser::parse(rule, text) {
        Ok(mut pairs) => Ok(pairs.next().expect("pest: one top pair")),
        Err(e) => Err(syntax_error(e, text, src)),
    }
}

/// Deeper nesting than any policy needs; refusing it keeps the recursive-descent parser and
/// the tree walks far from the stack limit on hostile input.
const MAX_DEPTH: usize = 64;

fn check_depth(text: &str, src: usize) -> Result<(), Diagnostic> {
    let mut depth = 0usize;
    let (mut in_str, mut in_comment, mut escaped) = (false, false, false);
    for (i, c) in text.char_indices() {
        if in_comment {
            in_comment = c != '\n';
        } else if in_str {
            in_str = (escaped || c != '"') && c != '\n';
            escaped = c == '\\' && !escaped;
        } else {
            match c {
                '#' => in_comment = true,
                '"' => in_str = true,
                '{' | '[' => {
                    depth += 1;
                    if depth > MAX_DEPTH {
                        let span = Span {
                            src,
                            start: i,
                            end: i + 1,
                        };
                        return Err(Diagnostic::new(
                            span,
                            format!("nested more than {MAX_DEPTH} levels deep"),
                            "too deep",
                        )
                        .help("a policy needs only a few levels of `{ }` and `[ ]`"));
                    }
                }
                '}' | ']' => depth = depth.saturating_sub(1),
                _ => {}
            }
        }
    }
    Ok(())
}

fn syntax_error(e: pest::error::Error<Rule>, text: &str, src: usize) -> Diagnostic {
    let (start, end) = match e.location {
        pest::error::InputLocation::Pos(p) => (p, p),
        pest::error::InputLocation::Span((s, e)) => (s, e),
    };
    let span = Span { src, start, end };
    let expected = match &e.variant {
        pest::error::ErrorVariant::ParsingError { positives, .. } => {
            let mut names: Vec<&str> = positives.iter().filter_map(|r| rule_name(*r)).collect();
            names.sort_unstable();
            names.dedup();
            names
        }
        pest::error::ErrorVariant::CustomError { .. } => vec![],
    };
    let found = text[start.min(text.len())..].chars().next();
    let message = match (found, expected.is_empty()) {
        (None, _) => "the file ends too early: a closing `}` is missing".to_string(),
        (Some(c), true) => format!("syntax error: unexpected `{c}`"),
        (Some(_), false) => format!("syntax error: expected {}", one_of(&expected)),
    };
    let help = match found {
        None => "close every `{` that is opened; `adarank fmt` shows the nesting".to_string(),
        Some('\'') => "strings use double quotes: \"like this\"".to_string(),
        Some('"') => "this string has no closing `\"` on its line".to_string(),
        Some('=') => {
            "inside a map write `key: value`; `key = value` is for blocks and settings".to_string()
        }
        _ => "see docs/language.md for the syntax: blocks are `name { key = value }`, \
              settings `key = value`, maps `{ key: value }`"
            .to_string(),
    };
    Diagnostic::new(span, message, "here").help(help)
}

fn one_of(names: &[&str]) -> String {
    match names {
        [one] => one.to_string(),
        [init @ .., last] => format!("{} or {}", init.join(", "), last),
        [] => String::new(),
    }
}

/// Names pest's expected rules as a reader would say them (`None` hides helper rules).
fn rule_name(r: Rule) -> Option<&'static str> {
    Some(match r {
        Rule::EOI => "end of file",
        Rule::experiment | Rule::kw_experiment => "`experiment NAME { ... }`",
        Rule::block => "a block",
        Rule::entry => "`key = value`",
        Rule::setting | Rule::path => "a setting (`key = value`)",
        Rule::phase | Rule::kw_phase => "`phase`",
        Rule::arm | Rule::kw_arm => "`arm`",
        Rule::marker | Rule::kw_baseline | Rule::kw_ablation => "`baseline` or `ablation`",
        Rule::until | Rule::kw_until => "`until`",
        Rule::step_cond | Rule::kw_step => "`step N`",
        Rule::epoch_cond | Rule::kw_epoch => "`epoch N`",
        Rule::metric_cond | Rule::metric => "a metric condition (`eval_loss < 0.3`)",
        Rule::cmp_op => "a comparison (<, <=, >, >=)",
        Rule::action | Rule::kw_every => "an action (`every N steps: reallocate`)",
        Rule::action_name => "an action name",
        Rule::plugin_ref | Rule::kw_plugin => "`plugin \"file.rhai\"`",
        Rule::plugin_args => "plugin parameters (`{ name = value }`)",
        Rule::sweep | Rule::kw_sweep => "`sweep [v1, v2, ...]`",
        Rule::list => "a list",
        Rule::map => "a map",
        Rule::map_entry => "`key: value`",
        Rule::slot_key => "a slot (`3.q`)",
        Rule::number => "a number",
        Rule::string => "a string",
        Rule::word | Rule::ident | Rule::key | Rule::block_kind => "a name",
        Rule::name => "a name",
        Rule::value => "a value",
        _ => return None,
    })
}

pub(crate) fn span_of(p: &Pair<'_, Rule>, src: usize) -> Span {
    let s = p.as_span();
    Span {
        src,
        start: s.start(),
        end: s.end(),
    }
}

fn children(p: Pair<'_, Rule>) -> impl Iterator<Item = Pair<'_, Rule>> {
    p.into_inner().filter(|c| c.as_rule() != Rule::COMMENT)
}

fn ident(p: Pair<'_, Rule>, src: usize) -> Ident {
    Spanned::new(p.as_str().to_string(), span_of(&p, src))
}

fn build_experiment(p: Pair<'_, Rule>, src: usize) -> Experiment {
    let mut it = children(p).filter(|c| c.as_rule() != Rule::kw_experiment);
    let name = ident(it.next().expect("grammar: experiment name"), src);
    let items = build_items(it, src);
    Experiment { name, items }
}

fn build_items<'a>(pairs: impl Iterator<Item = Pair<'a, Rule>>, src: usize) -> Vec<Item> {
    pairs
        .map(|p| match p.as_rule() {
            Rule::block => Item::Block(build_block(p, src)),
            Rule::setting => Item::Setting(build_setting(p, src)),
            Rule::phase => Item::Phase(build_phase(p, src)),
            Rule::arm => Item::Arm(build_arm(p, src)),
            r => unreachable!("grammar: unexpected item {r:?}"),
        })
        .collect()
}

fn build_plugin_ref(p: Pair<'_, Rule>, src: usize) -> PluginRef {
    let mut path = None;
    let mut params = Vec::new();
    for c in children(p) {
        match c.as_rule() {
            Rule::kw_plugin => {}
            Rule::string => path = Some(build_string(c, src)),
            Rule::plugin_args => params.extend(children(c).map(|e| build_entry(e, src))),
            r => unreachable!("grammar: unexpected in plugin reference {r:?}"),
        }
    }
    PluginRef {
        path: path.expect("grammar: plugin path"),
        params,
    }
}

/// `key = value` inside a block or a plugin's parameters: a one-part setting.
fn build_entry(p: Pair<'_, Rule>, src: usize) -> Setting {
    let mut it = children(p);
    let k = ident(it.next().expect("grammar: entry key"), src);
    let value = build_value(it.next().expect("grammar: entry value"), src);
    Setting {
        path: vec![k],
        value,
    }
}

fn build_block(p: Pair<'_, Rule>, src: usize) -> Block {
    let span = span_of(&p, src);
    let mut key = None;
    let mut kind = None;
    let mut entries = Vec::new();
    for c in children(p) {
        match c.as_rule() {
            Rule::key => key = Some(ident(c, src)),
            Rule::block_kind => kind = Some(ident(c, src)),
            Rule::entry => entries.push(build_entry(c, src)),
            r => unreachable!("grammar: unexpected in block {r:?}"),
        }
    }
    Block {
        key: key.expect("grammar: block key"),
        kind,
        entries,
        span,
    }
}

fn build_path(p: Pair<'_, Rule>, src: usize) -> Vec<Ident> {
    p.into_inner().map(|k| ident(k, src)).collect()
}

fn build_setting(p: Pair<'_, Rule>, src: usize) -> Setting {
    let mut it = children(p);
    let path = build_path(it.next().expect("grammar: setting path"), src);
    let value = build_value(it.next().expect("grammar: setting value"), src);
    Setting { path, value }
}

fn build_number(p: Pair<'_, Rule>, src: usize) -> Spanned<Number> {
    let span = span_of(&p, src);
    let text = p.as_str().to_string();
    let (digits, mult) = match text.strip_suffix('k') {
        Some(d) => (d, 1e3),
        None => match text.strip_suffix('M') {
            Some(d) => (d, 1e6),
            None => match text.strip_suffix('%') {
                Some(d) => (d, 1e-2),
                None => (text.as_str(), 1.0),
            },
        },
    };
    let clean: String = digits.chars().filter(|c| *c != '_').collect();
    // The grammar only admits well-formed decimals, so this parse cannot fail.
    let value = clean.parse::<f64>().unwrap_or(f64::NAN) * mult;
    Spanned::new(Number { text, value }, span)
}

fn unquote(s: &str) -> String {
    let inner = &s[1..s.len() - 1];
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            // `\n` and `\t` are a newline and a tab (prompt templates need them); `\"` and
            // `\\` the character itself.
            match chars.next() {
                Some('n') => out.push('\n'),
                Some('t') => out.push('\t'),
                Some(n) => out.push(n),
                None => {}
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn build_string(p: Pair<'_, Rule>, src: usize) -> Spanned<String> {
    Spanned::new(unquote(p.as_str()), span_of(&p, src))
}

fn build_value(p: Pair<'_, Rule>, src: usize) -> Spanned<Value> {
    let span = span_of(&p, src);
    let v = match p.as_rule() {
        Rule::number => Value::Number(build_number(p, src).node),
        Rule::string => Value::Str(unquote(p.as_str())),
        Rule::word => Value::Word(p.as_str().to_string()),
        Rule::plugin_ref => Value::Plugin(build_plugin_ref(p, src)),
        Rule::list => Value::List(children(p).map(|c| build_value(c, src)).collect()),
        Rule::sweep => {
            let list = children(p)
                .find(|c| c.as_rule() == Rule::list)
                .expect("grammar: sweep list");
            Value::Sweep(children(list).map(|c| build_value(c, src)).collect())
        }
        Rule::map => Value::Map(
            children(p)
                .map(|e| {
                    let mut it = children(e);
                    let k = it.next().expect("grammar: map key");
                    let key = if k.as_rule() == Rule::string {
                        build_string(k, src)
                    } else {
                        ident(k, src)
                    };
                    (
                        key,
                        build_value(it.next().expect("grammar: map value"), src),
                    )
                })
                .collect(),
        ),
        r => unreachable!("grammar: unexpected value {r:?}"),
    };
    Spanned::new(v, span)
}

fn build_phase(p: Pair<'_, Rule>, src: usize) -> Phase {
    let span = span_of(&p, src);
    let mut name = None;
    let mut until = None;
    let mut actions = Vec::new();
    for c in children(p) {
        match c.as_rule() {
            Rule::kw_phase => {}
            Rule::name => name = Some(ident(c, src)),
            Rule::until => until = Some(build_until(c, src)),
            Rule::action => actions.push(build_action(c, src)),
            r => unreachable!("grammar: unexpected in phase {r:?}"),
        }
    }
    Phase {
        name: name.expect("grammar: phase name"),
        until,
        actions,
        span,
    }
}

fn build_until(p: Pair<'_, Rule>, src: usize) -> Spanned<Cond> {
    let c = children(p)
        .find(|c| c.as_rule() != Rule::kw_until)
        .expect("grammar: condition");
    let span = span_of(&c, src);
    let number_in = |c: Pair<'_, Rule>| {
        let n = children(c)
            .find(|x| x.as_rule() == Rule::number)
            .expect("grammar: bound");
        build_number(n, src)
    };
    let cond = match c.as_rule() {
        Rule::step_cond => Cond::Step(number_in(c)),
        Rule::epoch_cond => Cond::Epoch(number_in(c)),
        Rule::plugin_ref => Cond::Plugin(build_plugin_ref(c, src)),
        Rule::metric_cond => {
            let mut it = children(c);
            let name = ident(it.next().expect("grammar: metric"), src);
            let op = match it.next().expect("grammar: op").as_str() {
                "<" => CmpOp::Lt,
                "<=" => CmpOp::Le,
                ">" => CmpOp::Gt,
                _ => CmpOp::Ge,
            };
            let value = build_number(it.next().expect("grammar: threshold"), src);
            Cond::Metric { name, op, value }
        }
        r => unreachable!("grammar: unexpected condition {r:?}"),
    };
    Spanned::new(cond, span)
}

fn build_action(p: Pair<'_, Rule>, src: usize) -> ActionDecl {
    let mut every = None;
    let mut what = Vec::new();
    for c in children(p) {
        match c.as_rule() {
            Rule::number => every = Some(build_number(c, src)),
            Rule::action_name => what.push(ident(c, src)),
            _ => {}
        }
    }
    ActionDecl {
        every: every.expect("grammar: every N"),
        what,
    }
}

fn build_arm(p: Pair<'_, Rule>, src: usize) -> Arm {
    let span = span_of(&p, src);
    let mut name = None;
    let mut markers = Vec::new();
    let mut items = Vec::new();
    for c in children(p) {
        match c.as_rule() {
            Rule::marker => markers.push(ident(c, src)),
            Rule::kw_arm => {}
            Rule::name => name = Some(ident(c, src)),
            Rule::block | Rule::setting | Rule::phase => {
                items.extend(build_items(std::iter::once(c), src))
            }
            r => unreachable!("grammar: unexpected in arm {r:?}"),
        }
    }
    Arm {
        name: name.expect("grammar: arm name"),
        markers,
        items,
        span,
    }
}
