//! The formatter: canonical layout of a `.rank` file, working on pest pairs so comments are
//! kept. Two-space indent; a block, phase or collection stays on one line when it fits and
//! holds no comment; at most one blank line between items; numbers and strings as written.

use super::diag::Diagnostic;
use super::parse::{parse_rule, Rule};
use pest::iterators::Pair;

const WIDTH: usize = 100;

pub fn format(src: &str) -> Result<String, Diagnostic> {
    let file = parse_rule(Rule::file, src, 0)?;
    let mut out = Out {
        src,
        lines: Vec::new(),
        indent: 0,
    };
    out.body(file.into_inner().filter(|p| p.as_rule() != Rule::EOI), 0);
    let mut text = out.lines.join("\n");
    text.push('\n');
    Ok(text)
}

struct Out<'s> {
    src: &'s str,
    lines: Vec<String>,
    indent: usize,
}

/// The text between two offsets (empty when they are out of order, which comments parsed
/// into an enclosing rule can cause).
fn between(src: &str, from: usize, to: usize) -> &str {
    &src[from.min(to)..to]
}

fn is_comment(p: &Pair<'_, Rule>) -> bool {
    p.as_rule() == Rule::COMMENT
}

fn has_comment(p: &Pair<'_, Rule>) -> bool {
    p.clone().into_inner().flatten().any(|c| is_comment(&c))
}

fn comment_text(p: &Pair<'_, Rule>) -> String {
    p.as_str().trim_end().to_string()
}

/// Comments inside a construct that is printed on one line, outside list/map values (which
/// place their own): they move to their own lines before it.
fn loose_comments<'a>(p: &Pair<'a, Rule>, out: &mut Vec<Pair<'a, Rule>>) {
    for c in p.clone().into_inner() {
        match c.as_rule() {
            Rule::COMMENT => out.push(c),
            // A plugin reference is always printed on one line, its parameters included.
            Rule::plugin_ref => out.extend(c.into_inner().flatten().filter(is_comment)),
            Rule::list | Rule::map => {}
            _ => loose_comments(&c, out),
        }
    }
}

impl Out<'_> {
    fn pad(&self) -> String {
        "  ".repeat(self.indent)
    }

    fn line(&mut self, s: &str) {
        let line = format!("{}{s}", self.pad());
        self.lines.push(line);
    }

    fn trailing(&mut self, comment: &str) {
        match self.lines.last_mut() {
            Some(l) => {
                l.push_str("  ");
                l.push_str(comment);
            }
            None => self.lines.push(comment.to_string()),
        }
    }

    /// Items and comments of a container, from byte offset `after` (the end of its header).
    fn body<'a>(&mut self, children: impl Iterator<Item = Pair<'a, Rule>>, after: usize) {
        let mut prev_end = after;
        let mut first = true;
        for c in children {
            let start = c.as_span().start();
            let gap = between(self.src, prev_end, start);
            let blank = gap.matches('\n').count() >= 2;
            if is_comment(&c) && !gap.contains('\n') && !self.lines.is_empty() && prev_end > 0 {
                self.trailing(&comment_text(&c));
            } else {
                if blank && !first {
                    self.lines.push(String::new());
                }
                if is_comment(&c) {
                    self.line(&comment_text(&c));
                } else {
                    self.item(c.clone());
                }
                first = false;
            }
            prev_end = c.as_span().end();
        }
    }

    fn loose(&mut self, p: &Pair<'_, Rule>) {
        let mut cs = Vec::new();
        loose_comments(p, &mut cs);
        for c in cs {
            self.line(&comment_text(&c));
        }
    }

    fn item(&mut self, p: Pair<'_, Rule>) {
        match p.as_rule() {
            Rule::experiment => {
                let mut it = p.into_inner().peekable();
                let mut header_end = 0;
                let mut name = String::new();
                let mut pre = Vec::new();
                while let Some(c) = it.peek() {
                    match c.as_rule() {
                        Rule::kw_experiment => {}
                        Rule::COMMENT if name.is_empty() => pre.push(comment_text(c)),
                        Rule::name => name = c.as_str().to_string(),
                        _ => break,
                    }
                    header_end = c.as_span().end();
                    it.next();
                }
                for c in pre {
                    self.line(&c);
                }
                self.container(&format!("experiment {name}"), it, header_end);
            }
            Rule::arm => {
                let mut head = Vec::new();
                let mut it = p.into_inner().peekable();
                let mut header_end = 0;
                let mut pre = Vec::new();
                let mut named = false;
                while let Some(c) = it.peek() {
                    match c.as_rule() {
                        Rule::marker => head.push(c.as_str().to_string()),
                        Rule::name => {
                            head.push(c.as_str().to_string());
                            named = true;
                        }
                        Rule::kw_arm => head.push("arm".into()),
                        Rule::COMMENT if !named => pre.push(comment_text(c)),
                        _ => break,
                    }
                    header_end = c.as_span().end();
                    it.next();
                }
                for c in pre {
                    self.line(&c);
                }
                self.container(&head.join(" "), it, header_end);
            }
            Rule::block => self.block(p),
            Rule::setting => {
                self.loose(&p);
                let mut it = p.into_inner().filter(|c| !is_comment(c));
                let path = it
                    .next()
                    .map(|c| c.as_str().to_string())
                    .unwrap_or_default();
                let value = it.next().expect("grammar: setting value");
                self.assignment(&format!("{path} = "), value, ",");
            }
            Rule::phase => self.phase(p),
            _ => self.line(p.as_str().trim()),
        }
    }

    /// `head { items }`, or `head {}` when empty.
    fn container<'a>(
        &mut self,
        head: &str,
        rest: impl Iterator<Item = Pair<'a, Rule>>,
        header_end: usize,
    ) {
        let rest: Vec<Pair<'a, Rule>> = rest.collect();
        if rest.is_empty() {
            self.line(&format!("{head} {{}}"));
            return;
        }
        self.line(&format!("{head} {{"));
        self.indent += 1;
        self.body(rest.into_iter(), header_end);
        self.indent -= 1;
        self.line("}");
    }

    /// `prefix value` over one or more lines; `sep` ends every element of a multi-line value.
    fn assignment(&mut self, prefix: &str, value: Pair<'_, Rule>, sep: &str) {
        let lines = self.value_lines(value, sep);
        let mut lines = lines.into_iter();
        let first = lines.next().unwrap_or_default();
        self.line(&format!("{prefix}{first}"));
        for l in lines {
            self.lines.push(l);
        }
    }

    fn block(&mut self, p: Pair<'_, Rule>) {
        let mut head = Vec::new();
        let mut entries = Vec::new();
        let mut header_end = 0;
        for c in p.clone().into_inner() {
            match c.as_rule() {
                Rule::key | Rule::block_kind => {
                    head.push(c.as_str().to_string());
                    header_end = c.as_span().end();
                }
                _ => entries.push(c),
            }
        }
        let head = head.join(" ");
        if entries.is_empty() {
            self.line(&format!("{head} {{}}"));
            return;
        }
        if !has_comment(&p) {
            let parts: Vec<String> = entries.iter().map(|e| self.entry_inline(e)).collect();
            let one = format!("{head} {{ {} }}", parts.join(", "));
            if one.len() + 2 * self.indent <= WIDTH {
                self.line(&one);
                return;
            }
        }
        self.line(&format!("{head} {{"));
        self.indent += 1;
        let mut prev_end = header_end;
        let mut first = true;
        for c in entries {
            let start = c.as_span().start();
            let gap = between(self.src, prev_end, start);
            if is_comment(&c) && !gap.contains('\n') {
                self.trailing(&comment_text(&c));
            } else {
                if gap.matches('\n').count() >= 2 && !first {
                    self.lines.push(String::new());
                }
                if is_comment(&c) {
                    self.line(&comment_text(&c));
                } else {
                    self.loose(&c);
                    let mut it = c.clone().into_inner().filter(|x| !is_comment(x));
                    let key = it
                        .next()
                        .map(|k| k.as_str().to_string())
                        .unwrap_or_default();
                    let value = it.next().expect("grammar: entry value");
                    self.assignment(&format!("{key} = "), value, ",");
                }
                first = false;
            }
            prev_end = c.as_span().end();
        }
        self.indent -= 1;
        self.line("}");
    }

    fn entry_inline(&self, e: &Pair<'_, Rule>) -> String {
        let mut it = e.clone().into_inner().filter(|x| !is_comment(x));
        let key = it
            .next()
            .map(|k| k.as_str().to_string())
            .unwrap_or_default();
        let value = it.next().map(|v| inline(&v)).unwrap_or_default();
        format!("{key} = {value}")
    }

    /// A value's lines: one when it holds no comment and fits, else a list/map laid out with
    /// one element per line (the first line joins whatever precedes the value).
    fn value_lines(&mut self, v: Pair<'_, Rule>, sep: &str) -> Vec<String> {
        if v.as_rule() == Rule::sweep {
            // `sweep` then its list, laid out as any list (comments inside included).
            let list = v
                .clone()
                .into_inner()
                .find(|c| c.as_rule() == Rule::list)
                .expect("grammar: sweep list");
            let mut lines = self.value_lines(list, sep);
            lines[0] = format!("sweep {}", lines[0]);
            return lines;
        }
        let flat = inline(&v);
        let fits = flat.len() + 2 * self.indent + 24 <= WIDTH;
        let collection = matches!(v.as_rule(), Rule::list | Rule::map);
        if !collection || (!has_comment(&v) && fits) {
            return vec![flat];
        }
        let (open, close) = if v.as_rule() == Rule::list {
            ("[", "]")
        } else {
            ("{", "}")
        };
        let children: Vec<Pair<'_, Rule>> = v.clone().into_inner().collect();
        if children.is_empty() {
            return vec![format!("{open}{close}")];
        }
        let mut lines = vec![open.to_string()];
        self.indent += 1;
        let pad = self.pad();
        let mut prev_end = v.as_span().start() + 1;
        for c in children {
            let start = c.as_span().start();
            let gap = between(self.src, prev_end, start);
            if is_comment(&c) {
                if !gap.contains('\n') && lines.len() > 1 {
                    let last = lines.last_mut().expect("non-empty");
                    last.push_str("  ");
                    last.push_str(&comment_text(&c));
                } else {
                    lines.push(format!("{pad}{}", comment_text(&c)));
                }
            } else {
                let (prefix, value) = if c.as_rule() == Rule::map_entry {
                    let mut cs = Vec::new();
                    loose_comments(&c, &mut cs);
                    for x in cs {
                        lines.push(format!("{pad}{}", comment_text(&x)));
                    }
                    let mut it = c.clone().into_inner().filter(|x| !is_comment(x));
                    let k = it
                        .next()
                        .map(|k| k.as_str().to_string())
                        .unwrap_or_default();
                    (format!("{k}: "), it.next().expect("grammar: map value"))
                } else {
                    (String::new(), c.clone())
                };
                let sub = self.value_lines(value, sep);
                let n = sub.len();
                for (i, l) in sub.into_iter().enumerate() {
                    let mut l = if i == 0 {
                        format!("{pad}{prefix}{l}")
                    } else {
                        l
                    };
                    if i + 1 == n {
                        l.push_str(sep);
                    }
                    lines.push(l);
                }
            }
            prev_end = c.as_span().end();
        }
        self.indent -= 1;
        lines.push(format!("{}{close}", self.pad()));
        lines
    }

    fn phase(&mut self, p: Pair<'_, Rule>) {
        let mut head = String::from("phase");
        let mut actions = Vec::new();
        let mut header_end = 0;
        for c in p.clone().into_inner() {
            match c.as_rule() {
                Rule::kw_phase => {}
                Rule::name => {
                    head.push(' ');
                    head.push_str(c.as_str());
                    header_end = c.as_span().end();
                }
                Rule::until => {
                    self.loose(&c);
                    head.push_str(" until ");
                    head.push_str(&until(&c));
                    header_end = c.as_span().end();
                }
                _ => actions.push(c),
            }
        }
        let n_actions = actions.iter().filter(|a| !is_comment(a)).count();
        if actions.is_empty() {
            self.line(&format!("{head} {{}}"));
            return;
        }
        if n_actions == 1 && !actions.iter().any(|a| is_comment(a) || has_comment(a)) {
            let one = format!("{head} {{ {} }}", action(&actions[0]));
            if one.len() + 2 * self.indent <= WIDTH {
                self.line(&one);
                return;
            }
        }
        self.line(&format!("{head} {{"));
        self.indent += 1;
        let mut prev_end = header_end;
        let mut first = true;
        for c in actions {
            let start = c.as_span().start();
            let gap = between(self.src, prev_end, start);
            if is_comment(&c) && !gap.contains('\n') {
                self.trailing(&comment_text(&c));
            } else {
                if gap.matches('\n').count() >= 2 && !first {
                    self.lines.push(String::new());
                }
                if is_comment(&c) {
                    self.line(&comment_text(&c));
                } else {
                    // A comment after the action's last name is parsed into the action (the
                    // `, name` repetition skips it); it belongs after the action.
                    let content_end = c
                        .clone()
                        .into_inner()
                        .filter(|x| !is_comment(x))
                        .map(|x| x.as_span().end())
                        .max()
                        .unwrap_or(start);
                    let (tail, before): (Vec<_>, Vec<_>) = c
                        .clone()
                        .into_inner()
                        .filter(is_comment)
                        .partition(|x| x.as_span().start() >= content_end);
                    for b in before {
                        self.line(&comment_text(&b));
                    }
                    self.line(&action(&c));
                    let mut tail_prev = content_end;
                    for t in tail {
                        if between(self.src, tail_prev, t.as_span().start()).contains('\n') {
                            self.line(&comment_text(&t));
                        } else {
                            self.trailing(&comment_text(&t));
                        }
                        tail_prev = t.as_span().end();
                    }
                }
                first = false;
            }
            prev_end = c.as_span().end();
        }
        self.indent -= 1;
        self.line("}");
    }
}

fn until(p: &Pair<'_, Rule>) -> String {
    let c = p
        .clone()
        .into_inner()
        .find(|c| !is_comment(c) && c.as_rule() != Rule::kw_until)
        .expect("grammar: condition");
    if c.as_rule() == Rule::plugin_ref {
        return plugin_inline(&c);
    }
    let parts: Vec<String> = c
        .clone()
        .into_inner()
        .filter(|x| !is_comment(x))
        .map(|x| match x.as_rule() {
            Rule::kw_step => "step".to_string(),
            Rule::kw_epoch => "epoch".to_string(),
            _ => x.as_str().to_string(),
        })
        .collect();
    parts.join(" ")
}

/// `plugin "name" { key = value, ... }` on one line (comments inside are the caller's business).
fn plugin_inline(p: &Pair<'_, Rule>) -> String {
    let mut text = String::from("plugin");
    for c in p.clone().into_inner().filter(|c| !is_comment(c)) {
        match c.as_rule() {
            Rule::string => {
                text.push(' ');
                text.push_str(c.as_str());
            }
            Rule::plugin_args => {
                let entries: Vec<String> = c
                    .into_inner()
                    .filter(|e| !is_comment(e))
                    .map(|e| {
                        let mut it = e.into_inner().filter(|x| !is_comment(x));
                        let key = it.next().map(|k| k.as_str().to_string());
                        let value = it.next().map(|v| inline(&v));
                        format!(
                            "{} = {}",
                            key.unwrap_or_default(),
                            value.unwrap_or_default()
                        )
                    })
                    .collect();
                text.push_str(&format!(" {{ {} }}", entries.join(", ")));
            }
            _ => {}
        }
    }
    text
}

fn action(p: &Pair<'_, Rule>) -> String {
    let mut every = String::new();
    let mut names = Vec::new();
    for c in p.clone().into_inner() {
        match c.as_rule() {
            Rule::number => every = c.as_str().to_string(),
            Rule::action_name => names.push(c.as_str().to_string()),
            _ => {}
        }
    }
    let unit = if every == "1" { "step" } else { "steps" };
    format!("every {every} {unit}: {}", names.join(", "))
}

/// A value on one line (comments inside are the caller's business).
fn inline(v: &Pair<'_, Rule>) -> String {
    let kids = || v.clone().into_inner().filter(|c| !is_comment(c));
    match v.as_rule() {
        Rule::list => {
            let items: Vec<String> = kids().map(|c| inline(&c)).collect();
            format!("[{}]", items.join(", "))
        }
        Rule::map => {
            let items: Vec<String> = kids()
                .map(|e| {
                    let mut it = e.into_inner().filter(|c| !is_comment(c));
                    let k = it
                        .next()
                        .map(|k| k.as_str().to_string())
                        .unwrap_or_default();
                    let val = it.next().map(|x| inline(&x)).unwrap_or_default();
                    format!("{k}: {val}")
                })
                .collect();
            if items.is_empty() {
                "{}".into()
            } else {
                format!("{{ {} }}", items.join(", "))
            }
        }
        Rule::plugin_ref => plugin_inline(v),
        Rule::sweep => {
            let list = kids()
                .find(|c| c.as_rule() == Rule::list)
                .map(|c| inline(&c))
                .unwrap_or_default();
            format!("sweep {list}")
        }
        _ => v.as_str().to_string(),
    }
}
