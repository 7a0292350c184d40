//! Reading causal-LM records from JSON Lines: one object per line, blank lines skipped, the
//! file streamed line by line (a line longer than [`MAX_LINE_BYTES`] is refused before it is
//! held whole), every refusal naming the file and line.

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{Map, Value};
use std::io::{BufRead, BufReader, Read};
use std::path::Path;

/// One record is a prompt, a conversation or a text: far below this. A longer line is a
/// binary file or a missing newline, and is refused rather than read into memory.
pub const MAX_LINE_BYTES: u64 = 16 << 20;

/// The record kinds a causal-LM JSONL file may hold (one kind per file).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JsonlKind {
    /// `{"prompt", "completion"}`
    PromptCompletion,
    /// `{"messages": [{"role", "content"}, ..]}`
    Messages,
    /// `{"text"}`
    Text,
}

impl JsonlKind {
    pub const NAMES: &'static [&'static str] = &["prompt_completion", "messages", "text"];

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "prompt_completion" => Some(Self::PromptCompletion),
            "messages" => Some(Self::Messages),
            "text" => Some(Self::Text),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::PromptCompletion => "prompt_completion",
            Self::Messages => "messages",
            Self::Text => "text",
        }
    }

    /// What a record of this kind looks like, for messages.
    fn example(self) -> &'static str {
        match self {
            Self::PromptCompletion => r#"{"prompt": "..", "completion": ".."}"#,
            Self::Messages => r#"{"messages": [{"role": "user", "content": ".."}, ..]}"#,
            Self::Text => r#"{"text": ".."}"#,
        }
    }
}

/// One turn of a conversation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub role: String,
    pub content: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RecordBody {
    PromptCompletion { prompt: String, completion: String },
    Messages(Vec<Message>),
    Text(String),
}

impl RecordBody {
    pub fn kind(&self) -> JsonlKind {
        match self {
            Self::PromptCompletion { .. } => JsonlKind::PromptCompletion,
            Self::Messages(_) => JsonlKind::Messages,
            Self::Text(_) => JsonlKind::Text,
        }
    }
}

/// A record and the 1-based line it came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub line: usize,
    pub body: RecordBody,
}

/// A labelled example as the classification-as-generation sets read it: the label is a class
/// index or a label name (JSONL with string labels).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Labelled {
    pub line: usize,
    pub text: String,
    pub text_pair: Option<String>,
    pub label: Label,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Label {
    Index(u32),
    Name(String),
}

/// Calls `each(line, object)` for every non-blank line of the JSONL file at `path`, streaming.
fn for_each_object(
    path: &Path,
    mut each: impl FnMut(usize, &Map<String, Value>) -> Result<()>,
) -> Result<usize> {
    crate::textfile::check_regular(path, "data", crate::textfile::MAX_DATA_BYTES)?;
    let file = std::fs::File::open(path).with_context(|| format!("{}", path.display()))?;
    let mut reader = BufReader::new(file);
    let mut buf = Vec::new();
    let (mut n, mut objects) = (0usize, 0usize);
    loop {
        buf.clear();
        n += 1;
        let got = (&mut reader)
            .take(MAX_LINE_BYTES + 1)
            .read_until(b'\n', &mut buf)
            .with_context(|| format!("{}:{n}: read error", path.display()))?;
        if got == 0 {
            break;
        }
        if buf.len() as u64 > MAX_LINE_BYTES {
            bail!(
                "{}:{n}: line longer than {} MiB; one JSON object per line is expected (a \
                 binary file, or records without newlines between them?)",
                path.display(),
                MAX_LINE_BYTES >> 20
            );
        }
        let line = std::str::from_utf8(&buf).map_err(|e| {
            anyhow!(
                "{}:{n}: not UTF-8 text (invalid byte at column {}); save the file as UTF-8",
                path.display(),
                e.valid_up_to() + 1
            )
        })?;
        let line = line.trim_end_matches(['\n', '\r']);
        if line.trim().is_empty() {
            continue;
        }
        let at = || format!("{}:{n}", path.display());
        let v: Value = serde_json::from_str(line)
            .map_err(|e| anyhow!("{}: invalid JSON at column {}: {e}", at(), e.column()))?;
        let Value::Object(obj) = v else {
            bail!("{}: expected a JSON object, found {}", at(), kind_of(&v));
        };
        each(n, &obj).with_context(at)?;
        objects += 1;
    }
    if objects == 0 {
        bail!(
            "{}: no records (the file is empty or holds only blank lines)",
            path.display()
        );
    }
    Ok(objects)
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn string(obj: &Map<String, Value>, key: &str) -> Result<Option<String>> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(v) => bail!("\"{key}\" must be a string, found {}", kind_of(v)),
    }
}

/// The kind a record's keys say it is.
fn kind_of_record(obj: &Map<String, Value>) -> Result<JsonlKind> {
    let has = |k: &str| obj.contains_key(k);
    Ok(
        match (
            has("messages"),
            has("prompt"),
            has("completion"),
            has("text"),
        ) {
            (true, false, false, false) => JsonlKind::Messages,
            (false, true, true, false) => JsonlKind::PromptCompletion,
            (false, false, false, true) => {
                if has("label") {
                    bail!(
                    "a {{\"text\", \"label\"}} record is labelled data: read it with `data jsonl \
                     {{ as = generation, prompt = .., labels = [..] }}`, or drop \"label\" for \
                     plain language modelling"
                );
                }
                JsonlKind::Text
            }
            (false, true, false, _) => bail!("\"prompt\" without \"completion\""),
            (false, false, true, _) => bail!("\"completion\" without \"prompt\""),
            (false, false, false, false) => bail!(
            "no \"text\", \"prompt\"/\"completion\" or \"messages\" key; a record is one of {}, \
             {} or {}",
            JsonlKind::Text.example(),
            JsonlKind::PromptCompletion.example(),
            JsonlKind::Messages.example()
        ),
            _ => bail!(
                "the record mixes the keys of two kinds (\"messages\", \"prompt\"/\"completion\", \
             \"text\"); write one kind per record"
            ),
        },
    )
}

fn messages(v: &Value) -> Result<Vec<Message>> {
    let Value::Array(items) = v else {
        bail!(
            "\"messages\" must be an array of {{\"role\", \"content\"}} objects, found {}",
            kind_of(v)
        );
    };
    if items.is_empty() {
        bail!("\"messages\" is empty");
    }
    let mut out = Vec::with_capacity(items.len());
    for (i, m) in items.iter().enumerate() {
        let Value::Object(m) = m else {
            bail!("messages[{i}] must be an object, found {}", kind_of(m));
        };
        let role = string(m, "role")
            .with_context(|| format!("messages[{i}]"))?
            .ok_or_else(|| anyhow!("messages[{i}] has no \"role\""))?;
        let content = string(m, "content")
            .with_context(|| format!("messages[{i}]"))?
            .ok_or_else(|| anyhow!("messages[{i}] has no \"content\""))?;
        out.push(Message { role, content });
    }
    if !out.iter().any(|m| m.role == "assistant") {
        bail!("the conversation has no \"assistant\" turn, so nothing in it is trained on");
    }
    Ok(out)
}

/// The records of a causal-LM JSONL file. `expect` is the kind the policy names (`None`: the
/// kind of the first record); every record must be of that kind.
pub fn read_records(path: &Path, expect: Option<JsonlKind>) -> Result<Vec<Record>> {
    let mut out = Vec::new();
    let mut kind = expect.map(|k| (k, 0usize));
    for_each_object(path, |line, obj| {
        let k = kind_of_record(obj)?;
        match kind {
            None => kind = Some((k, line)),
            Some((want, first)) if want != k => bail!(
                "a {} record, but {} holds {} records (one kind per file); expected {}",
                k.name(),
                if first == 0 {
                    "the policy says the file".to_string()
                } else {
                    format!("line {first} says the file")
                },
                want.name(),
                want.example()
            ),
            Some(_) => {}
        }
        let body = match k {
            JsonlKind::Text => RecordBody::Text(string(obj, "text")?.unwrap_or_default()),
            JsonlKind::PromptCompletion => RecordBody::PromptCompletion {
                prompt: string(obj, "prompt")?.unwrap_or_default(),
                completion: string(obj, "completion")?.unwrap_or_default(),
            },
            JsonlKind::Messages => RecordBody::Messages(messages(&obj["messages"])?),
        };
        out.push(Record { line, body });
        Ok(())
    })?;
    Ok(out)
}

/// The labelled examples of a `{"text", "text_pair"?, "label"}` JSONL file, the label an
/// integer class index or a string label name.
pub fn read_labelled(path: &Path) -> Result<Vec<Labelled>> {
    let mut out = Vec::new();
    for_each_object(path, |line, obj| {
        let text = string(obj, "text")?.ok_or_else(|| anyhow!("missing \"text\""))?;
        let text_pair = string(obj, "text_pair")?;
        let label = match obj.get("label") {
            Some(Value::String(s)) => Label::Name(s.clone()),
            Some(v) => Label::Index(v.as_u64().filter(|&x| x <= u32::MAX as u64).ok_or_else(
                || {
                    anyhow!(
                        "\"label\" is {v}; it must be a class index (0, 1, ..) or a label \
                             name (\"positive\")"
                    )
                },
            )? as u32),
            None => bail!("missing \"label\""),
        };
        out.push(Labelled {
            line,
            text,
            text_pair,
            label,
        });
        Ok(())
    })?;
    Ok(out)
}
