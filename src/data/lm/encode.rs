//! Records to token ids and loss masks.
//!
//! - Prompt–completion (and every labelled example as generation): `[BOS] prompt completion
//!   EOS`, the prompt and the completion tokenized apart, so the sequence's prompt is exactly
//!   the token sequence the model sees when it is asked to generate (or score) the answer, and
//!   the answer position (the last prompt token) is known. BOS only when the tokenizer adds one
//!   (`add_bos`). Targets: the completion's tokens and the EOS.
//! - Messages: the chat template's text, tokenized whole (the template writes its own special
//!   tokens). Each assistant turn's span is found by rendering prefixes, as TRL's
//!   `assistant_only_loss` does without generation markers: the conversation up to turn i with
//!   the generation prompt renders to P, through turn i without it to Q; if P is a prefix of Q
//!   and Q of the whole text, the turn is the bytes [|P|, |Q|), less trailing whitespace (the
//!   newline a template writes after its end-of-turn token is not the model's to predict). A
//!   token is a target when its bytes overlap a turn's span.
//! - Text: `[BOS] text`, every token a target.
//!
//! A sequence longer than `max_len` is cut at the side the settings name; for prompt-type
//! records only the prompt is cut while it lasts, so the answer always survives.

use super::read::{Message, Record, RecordBody};
use super::{LmSettings, Truncation, IGNORE};
use crate::data::bounded::{self, Side};
use crate::data::pretrained::LmTokenizer;
use anyhow::{anyhow, bail, Context, Result};

/// One tokenized record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LmExample {
    pub ids: Vec<u32>,
    /// Per position: whether this token is a target (the loss predicts it from the positions
    /// before it). The first position is never one.
    pub is_target: Vec<bool>,
    /// Prompt-type records: the position of the last prompt token, whose next-token logits
    /// score the answer (label accuracy), and where generation starts.
    pub answer_at: Option<usize>,
    /// 1-based line in the source file.
    pub line: usize,
}

impl LmExample {
    /// Per position the id of the next token when it is a target, else [`IGNORE`].
    pub fn next_token_targets(&self) -> Vec<u32> {
        let n = self.ids.len();
        (0..n)
            .map(|t| {
                if t + 1 < n && self.is_target[t + 1] {
                    self.ids[t + 1]
                } else {
                    IGNORE
                }
            })
            .collect()
    }

    /// Number of target tokens.
    pub fn targets(&self) -> usize {
        self.is_target.iter().skip(1).filter(|&&t| t).count()
    }
}

/// Renders a conversation with a chat template (`messages`, whether to end with the
/// generation prompt) to the model's prompt text.
pub type ChatRenderer = dyn Fn(&[Message], bool) -> Result<String> + Send + Sync;

/// Renders `messages` with a checkpoint's Jinja chat template, as transformers'
/// `apply_chat_template(tokenize=False)` does (through `data::chat`).
pub fn render_chat(
    template: &str,
    messages: &[Message],
    add_generation_prompt: bool,
    bos: &str,
    eos: &str,
) -> Result<String> {
    let msgs: Vec<crate::data::chat::ChatMessage> = messages
        .iter()
        .map(|m| crate::data::chat::ChatMessage {
            role: m.role.clone(),
            content: m.content.clone(),
        })
        .collect();
    crate::data::chat::render_chat(template, &msgs, add_generation_prompt, bos, eos)
}

/// Token ids and their byte offsets (start, end) in the text they came from.
type IdsOffsets = (Vec<u32>, Vec<(usize, usize)>);

/// Tokenizes records for one model.
pub struct Encoder<'a> {
    pub tok: &'a LmTokenizer,
    pub settings: LmSettings,
    /// The chat template's renderer; `None` when the model has no template.
    pub chat: Option<Box<ChatRenderer>>,
}

impl<'a> Encoder<'a> {
    /// An encoder rendering conversations with the tokenizer's own chat template.
    pub fn new(tok: &'a LmTokenizer, settings: LmSettings) -> Self {
        let chat: Option<Box<ChatRenderer>> = tok.chat_template.clone().map(|t| {
            let name = |id: Option<u32>| {
                id.and_then(|i| tok.inner.id_to_token(i))
                    .unwrap_or_default()
            };
            let (bos, eos) = (name(tok.bos), name(Some(tok.eos)));
            Box::new(move |m: &[Message], gen: bool| render_chat(&t, m, gen, &bos, &eos))
                as Box<ChatRenderer>
        });
        Encoder {
            tok,
            settings,
            chat,
        }
    }

    /// Token ids of `text` without special tokens added.
    pub fn ids(&self, text: &str) -> Result<Vec<u32>> {
        Ok(self
            .tok
            .inner
            .encode(text, false)
            .map_err(|e| anyhow!("tokenizing: {e}"))?
            .get_ids()
            .to_vec())
    }

    /// The side of a sequence its truncation keeps.
    fn kept_side(&self) -> Side {
        match self.settings.truncation {
            Truncation::Left => Side::Tail,
            Truncation::Right => Side::Head,
        }
    }

    /// Token ids of `text` (no special tokens) and their byte offsets in it, of a part holding
    /// at least the whole text's `keep` tokens at `side` (`data::bounded`): a long text is
    /// tokenized only as far as the truncation keeps.
    fn part(&self, text: &str, keep: usize, side: Side) -> Result<IdsOffsets> {
        let (range, enc) = bounded::encode_part(text, keep, side, |t| {
            self.tok
                .inner
                .encode(t, false)
                .map_err(|e| anyhow!("tokenizing: {e}"))
        })?;
        let offsets = enc
            .get_offsets()
            .iter()
            .map(|&(s, e)| (s + range.start, e + range.start))
            .collect();
        Ok((enc.get_ids().to_vec(), offsets))
    }

    fn bos(&self) -> Vec<u32> {
        match (self.tok.add_bos, self.tok.bos) {
            (true, Some(b)) => vec![b],
            _ => Vec::new(),
        }
    }

    /// `[BOS] prompt completion EOS`, targets on the completion and EOS.
    pub fn prompt_completion(
        &self,
        prompt: &str,
        completion: &str,
        line: usize,
    ) -> Result<LmExample> {
        // At most `max_len` tokens of either are kept (see `join`): of the completion its
        // head; of the prompt its last token when the answer fills the sequence, else the
        // side the settings keep.
        let max = self.settings.max_len;
        let mut answer = self
            .part(completion, max, Side::Head)
            .context("the completion")?
            .0;
        answer.push(self.tok.eos);
        let prefix = self.bos();
        let prompt = match prefix.len() + answer.len() >= max {
            true => self.part(prompt, 1, Side::Tail),
            false => self.part(prompt, max, self.kept_side()),
        }
        .context("the prompt")?
        .0;
        self.join(prefix, prompt, answer, line)
    }

    /// `prefix prompt answer`, cutting the prompt first when too long.
    fn join(
        &self,
        prefix: Vec<u32>,
        mut prompt: Vec<u32>,
        mut answer: Vec<u32>,
        line: usize,
    ) -> Result<LmExample> {
        let max = self.settings.max_len;
        if prefix.len() + answer.len() >= max {
            // Not even one prompt token fits beside the answer: keep what fits of the answer
            // after the last prompt token (one is kept so the answer has a position to follow).
            prompt = prompt.split_off(prompt.len().saturating_sub(1));
            answer.truncate(max.saturating_sub(prefix.len() + prompt.len()));
        } else {
            let room = max - prefix.len() - answer.len();
            if prompt.len() > room {
                match self.settings.truncation {
                    Truncation::Left => prompt = prompt.split_off(prompt.len() - room),
                    Truncation::Right => prompt.truncate(room),
                }
            }
        }
        let lead = prefix.len() + prompt.len();
        if lead == 0 {
            bail!("line {line}: the prompt is empty and the tokenizer adds no BOS, so the answer has no position to follow");
        }
        let mut ids = prefix;
        ids.extend_from_slice(&prompt);
        let n_answer = answer.len();
        ids.extend(answer);
        let mut is_target = vec![false; lead];
        is_target.resize(lead + n_answer, true);
        Ok(LmExample {
            ids,
            is_target,
            answer_at: Some(lead - 1),
            line,
        })
    }

    /// `[BOS] text`, every token a target.
    pub fn text(&self, text: &str, line: usize) -> Result<LmExample> {
        let mut ids = self.bos();
        let max = self.settings.max_len;
        ids.extend(self.part(text, max, self.kept_side())?.0);
        if ids.len() < 2 {
            bail!("line {line}: the text has fewer than two tokens, so nothing in it can be predicted");
        }
        let mut is_target = vec![true; ids.len()];
        is_target[0] = false;
        let mut ex = LmExample {
            ids,
            is_target,
            answer_at: None,
            line,
        };
        self.cut(&mut ex);
        Ok(ex)
    }

    /// The whole of a too-long sequence cut at the settings' side.
    fn cut(&self, ex: &mut LmExample) {
        let max = self.settings.max_len;
        if ex.ids.len() <= max {
            return;
        }
        match self.settings.truncation {
            Truncation::Left => {
                let drop = ex.ids.len() - max;
                ex.ids.drain(..drop);
                ex.is_target.drain(..drop);
            }
            Truncation::Right => {
                ex.ids.truncate(max);
                ex.is_target.truncate(max);
            }
        }
        ex.is_target[0] = false;
    }

    /// The chat-templated conversation, targets on the assistant turns.
    pub fn messages(&self, messages: &[Message], line: usize) -> Result<LmExample> {
        let render = self.chat.as_ref().ok_or_else(|| {
            anyhow!(
                "line {line}: a `messages` record needs the model's chat template, and this \
                 model has none; write the conversation as {{\"prompt\", \"completion\"}} instead"
            )
        })?;
        let full = render(messages, false).with_context(|| format!("line {line}"))?;
        let spans = assistant_spans(render.as_ref(), messages, &full)
            .with_context(|| format!("line {line}"))?;
        let (ids, offsets) = self
            .part(&full, self.settings.max_len, self.kept_side())
            .with_context(|| format!("line {line}"))?;
        let is_target: Vec<bool> = offsets
            .iter()
            .map(|&(s, e)| spans.iter().any(|&(a, b)| s < b && e > a))
            .collect();
        let mut ex = LmExample {
            ids,
            is_target,
            answer_at: None,
            line,
        };
        if let Some(t) = ex.is_target.first_mut() {
            *t = false;
        }
        self.cut(&mut ex);
        // Generation (exact match) starts where the last assistant turn does.
        ex.answer_at = last_run_start(&ex.is_target).map(|s| s - 1);
        Ok(ex)
    }
}

/// Byte spans of the assistant turns in `full` (see the module docs).
pub fn assistant_spans(
    render: &ChatRenderer,
    messages: &[Message],
    full: &str,
) -> Result<Vec<(usize, usize)>> {
    let mut spans = Vec::new();
    for (i, m) in messages.iter().enumerate() {
        if m.role != "assistant" {
            continue;
        }
        let before = render(&messages[..i], true)?;
        let through = render(&messages[..=i], false)?;
        if !through.starts_with(&before) || !full.starts_with(&through) {
            bail!(
                "the chat template does not render a conversation's prefixes as prefixes of \
                 it (turn {i}), so the assistant's tokens cannot be found; write the data as \
                 {{\"prompt\", \"completion\"}} records instead"
            );
        }
        let end = before.len() + through[before.len()..].trim_end().len();
        if end > before.len() {
            spans.push((before.len(), end));
        }
    }
    Ok(spans)
}

/// Tokenizes one record.
pub fn encode_record(enc: &Encoder<'_>, r: &Record) -> Result<LmExample> {
    match &r.body {
        RecordBody::PromptCompletion { prompt, completion } => {
            enc.prompt_completion(prompt, completion, r.line)
        }
        RecordBody::Messages(m) => enc.messages(m, r.line),
        RecordBody::Text(t) => enc.text(t, r.line),
    }
}

/// Start of the last run of targets (never 0: the first position is no target).
fn last_run_start(is_target: &[bool]) -> Option<usize> {
    let last = is_target.iter().rposition(|&t| t)?;
    let start = is_target[..last]
        .iter()
        .rposition(|&t| !t)
        .map_or(0, |p| p + 1);
    (start > 0).then_some(start)
}
