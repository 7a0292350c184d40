//! Chat templates: a checkpoint's Jinja template (`tokenizer.chat_template` in a GGUF,
//! `chat_template` in a Hugging Face `tokenizer_config.json`) rendered the way transformers'
//! `apply_chat_template(tokenize=False)` renders it.
//!
//! transformers renders with Jinja2's sandbox, `trim_blocks` and `lstrip_blocks` on, the loop
//! controls extension (`{% break %}`, `{% continue %}`), and these globals: `raise_exception(msg)`,
//! `strftime_now(fmt)`, `namespace(..)` and a `tojson` filter that, unlike Jinja's, leaves `<`, `>`,
//! `&` and `'` alone and writes non-ASCII text as is (Python's `json.dumps(ensure_ascii=False)`).
//! The template sees `messages` (maps with `role` and `content`, in that key order),
//! `add_generation_prompt`, `bos_token` and `eos_token`. Python's string methods (`.strip()`,
//! `.upper()`, `.startswith()`, …) come from minijinja-contrib's pycompat layer.
//!
//! A template is untrusted input (it comes with the downloaded checkpoint): rendering runs under a
//! fuel limit, so a template that loops for too long is an error, not a hang.

use anyhow::{Context, Result};
use minijinja::value::{Kwargs, Value, ValueKind};
use minijinja::{Environment, Error, ErrorKind};

/// One turn of a conversation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChatMessage {
    /// "system", "user", "assistant", or whatever roles the template knows.
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: &str, content: &str) -> Self {
        Self {
            role: role.to_string(),
            content: content.to_string(),
        }
    }
}

/// Instructions a template may run before rendering fails: far above what any real chat template
/// needs for a long conversation, far below a hang.
const FUEL: u64 = 50_000_000;

/// Renders `template` for `messages` as transformers' `apply_chat_template(messages,
/// tokenize=False, add_generation_prompt=..)` does, with `bos` and `eos` as `bos_token` and
/// `eos_token`. A template that does not parse, or that calls `raise_exception` (many do on a
/// conversation they do not accept), is an error carrying the template's message.
pub fn render_chat(
    template: &str,
    messages: &[ChatMessage],
    add_generation_prompt: bool,
    bos: &str,
    eos: &str,
) -> Result<String> {
    let env = environment();
    let tmpl = env
        .template_from_str(template)
        .map_err(describe)
        .context("the chat template does not parse")?;
    let messages: Vec<Value> = messages
        .iter()
        .map(|m| {
            Value::from_pairs([
                ("role", Value::from(m.role.as_str())),
                ("content", Value::from(m.content.as_str())),
            ])
        })
        .collect();
    tmpl.render(minijinja::context! {
        messages => messages,
        add_generation_prompt => add_generation_prompt,
        bos_token => bos,
        eos_token => eos,
    })
    .map_err(describe)
    .context("rendering the chat template")
}

/// The Jinja environment transformers renders chat templates in (see the module docs).
fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    let mut syntax = minijinja::syntax::SyntaxConfig::builder();
    syntax.trim_blocks(true).lstrip_blocks(true);
    // The builder only fails on clashing delimiters; the defaults do not clash.
    if let Ok(s) = syntax.build() {
        env.set_syntax(s);
    }
    env.set_fuel(Some(FUEL));
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function("raise_exception", |msg: String| -> Result<Value, Error> {
        Err(Error::new(ErrorKind::InvalidOperation, msg))
    });
    env.add_function("strftime_now", strftime_now);
    env.add_filter("tojson", tojson);
    env
}

/// minijinja's error with its detail and the template line, on one line.
fn describe(e: Error) -> anyhow::Error {
    let mut msg = match e.detail() {
        Some(d) => d.to_string(),
        None => e.kind().to_string(),
    };
    if let Some(line) = e.line() {
        msg.push_str(&format!(" (template line {line})"));
    }
    anyhow::anyhow!(msg)
}

/// `strftime_now(fmt)`: the local time formatted with a C `strftime` format (chrono's, which
/// covers the codes templates use, e.g. "%d %b %Y"). A bad format is an error, not a panic.
fn strftime_now(fmt: String) -> Result<String, Error> {
    use std::fmt::Write;
    let mut out = String::new();
    write!(out, "{}", chrono::Local::now().format(&fmt)).map_err(|_| {
        Error::new(
            ErrorKind::InvalidOperation,
            format!("strftime_now: invalid format {fmt:?}"),
        )
    })?;
    Ok(out)
}

/// `x | tojson` or `x | tojson(indent=N)`: Python's `json.dumps(x, ensure_ascii=False,
/// indent=N)`, the filter transformers installs (its separators: ", " and ": " without an indent,
/// "," and ": " with one).
fn tojson(value: Value, kwargs: Kwargs) -> Result<String, Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    kwargs.assert_all_used()?;
    let mut out = String::new();
    write_json(&mut out, &value, indent, 0)?;
    Ok(out)
}

fn write_json(
    out: &mut String,
    v: &Value,
    indent: Option<usize>,
    depth: usize,
) -> Result<(), Error> {
    // Newline and indentation before an item at `depth` (only when indenting).
    let brk = |out: &mut String, depth: usize| {
        if let Some(n) = indent {
            out.push('\n');
            out.push_str(&" ".repeat(n * depth));
        }
    };
    let sep = if indent.is_some() { "," } else { ", " };
    match v.kind() {
        ValueKind::Undefined | ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if v.is_true() { "true" } else { "false" }),
        ValueKind::Number => out.push_str(&python_number(v)),
        ValueKind::String => out.push_str(&json_string(v.as_str().unwrap_or_default())),
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = v.try_iter()?.collect();
            if items.is_empty() {
                out.push_str("[]");
                return Ok(());
            }
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(sep);
                }
                brk(out, depth + 1);
                write_json(out, item, indent, depth + 1)?;
            }
            brk(out, depth);
            out.push(']');
        }
        ValueKind::Map => {
            let keys: Vec<Value> = v.try_iter()?.collect();
            if keys.is_empty() {
                out.push_str("{}");
                return Ok(());
            }
            out.push('{');
            for (i, key) in keys.iter().enumerate() {
                if i > 0 {
                    out.push_str(sep);
                }
                brk(out, depth + 1);
                let name = match key.as_str() {
                    Some(s) => s.to_string(),
                    None => key.to_string(),
                };
                out.push_str(&json_string(&name));
                out.push_str(": ");
                write_json(out, &v.get_item(key)?, indent, depth + 1)?;
            }
            brk(out, depth);
            out.push('}');
        }
        _ => {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                format!("tojson: cannot serialize a value of kind {}", v.kind()),
            ))
        }
    }
    Ok(())
}

/// A number as Python's `json.dumps` writes it: integers as is, floats by `repr` (`1.0`, `0.5`,
/// `1e-05`, `1e+20`; NaN and infinities as `NaN`, `Infinity`).
fn python_number(v: &Value) -> String {
    if let Some(i) = v.as_i64() {
        if v.to_string() == i.to_string() {
            return i.to_string();
        }
    }
    let Ok(f) = f64::try_from(v.clone()) else {
        return v.to_string();
    };
    if f.is_nan() {
        return "NaN".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "Infinity" } else { "-Infinity" }.into();
    }
    // Python's repr: the shortest round-trip digits, in scientific form outside [1e-4, 1e16).
    let a = f.abs();
    if a != 0.0 && !(1e-4..1e16).contains(&a) {
        let s = format!("{f:e}"); // e.g. "1e-5", "1.5e20"
        let (mant, exp) = s.split_once('e').unwrap_or((&s, "0"));
        let exp: i32 = exp.parse().unwrap_or(0);
        return format!("{mant}e{}{:02}", if exp < 0 { '-' } else { '+' }, exp.abs());
    }
    let s = format!("{f}");
    if s.contains('.') {
        s
    } else {
        format!("{s}.0")
    }
}

/// A JSON string literal with only what JSON requires escaped (`"`, `\`, control characters),
/// as Python's `json.dumps(ensure_ascii=False)` writes it.
fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}
