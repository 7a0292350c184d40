#!/usr/bin/env python3
"""Fixtures of tests/lm_data.rs: a small byte-level BPE tokenizer (trained here on the movie
sentences, with SmolLM2's special tokens at SmolLM2's ids 0, 1, 2) and what transformers makes of
the fixture records with it: the chat-templated text of every `messages` record (SmolLM2's own
template, rendered by transformers' `apply_chat_template`) and the ids of every rendered text.

Run with the torch venv (transformers, tokenizers): python scripts/make_lm_data_fixtures.py
Writes tests/fixtures/lmdata/{tokenizer.json, expected.json}. Deterministic.
"""
import json
import os
import sys

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "lmdata")
MOVIES = os.path.expanduser("~/.cache/adarank/data/movie_reviews/train.tsv")

# SmolLM2-135M-Instruct's chat template (tokenizer.chat_template of its GGUF), verbatim.
SMOL_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
    "<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
    "{% endif %}"
)
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def train_tokenizer():
    lines = []
    with open(MOVIES, encoding="utf-8") as f:
        next(f)
        for i, line in enumerate(f):
            if i >= 3000:
                break
            lines.append(line.split("\t")[0])
    lines += ["system user assistant You are a helpful AI assistant named SmolLM"] * 20
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600,
        special_tokens=SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(lines, trainer)
    return tok


def main():
    os.makedirs(OUT, exist_ok=True)
    tok = train_tokenizer()
    path = os.path.join(OUT, "tokenizer.json")
    tok.save(path)
    fast = PreTrainedTokenizerFast(
        tokenizer_file=path, bos_token="<|im_start|>", eos_token="<|im_end|>",
        pad_token="<|im_end|>", unk_token="<|endoftext|>",
    )
    fast.chat_template = SMOL_TEMPLATE
    conversations = [
        [
            {"role": "user", "content": "Is this review positive? A gorgeous, witty film."},
            {"role": "assistant", "content": "Yes, it is positive."},
        ],
        [
            {"role": "system", "content": "You answer in one word."},
            {"role": "user", "content": "Mood of: a dull, lifeless mess"},
            {"role": "assistant", "content": "negative"},
            {"role": "user", "content": "And: a quiet triumph"},
            {"role": "assistant", "content": "positive"},
        ],
    ]
    rendered = [fast.apply_chat_template(c, tokenize=False) for c in conversations]
    # Prefix renderings as transformers makes them: the conversation up to each assistant turn
    # with the generation prompt, and through it without.
    prefixes = []
    for c in conversations:
        spans = []
        for i, m in enumerate(c):
            if m["role"] == "assistant":
                before = fast.apply_chat_template(c[:i], tokenize=False, add_generation_prompt=True)
                through = fast.apply_chat_template(c[: i + 1], tokenize=False)
                spans.append([before, through])
        prefixes.append(spans)
    texts = rendered + [
        "Review: a gorgeous, witty film\nSentiment:",
        " positive",
        " negative",
        "The movie was wonderful and I loved every minute of it.",
    ]
    expected = {
        "template": SMOL_TEMPLATE,
        "conversations": conversations,
        "rendered": rendered,
        "prefixes": prefixes,
        "ids": {t: fast(t, add_special_tokens=False)["input_ids"] for t in texts},
        "special": {s: tok.token_to_id(s) for s in SPECIAL},
        "vocab": tok.get_vocab_size(),
    }
    with open(os.path.join(OUT, "expected.json"), "w", encoding="utf-8") as f:
        json.dump(expected, f, ensure_ascii=False, indent=1)
    print("wrote", OUT, "vocab", tok.get_vocab_size(), file=sys.stderr)


if __name__ == "__main__":
    main()
