#!/usr/bin/env python3
"""Write the GGUF fixtures under tests/fixtures/llm/: the references for tests/data_gguf.rs,
tests/data_llm_tokenizer.rs and tests/data_chat.rs. Run once, by hand, with the venv that has
torch, transformers and gguf (never at test time):

    /root/.cache/adarank/torch-venv/bin/python scripts/make_gguf_fixtures.py [GGUF]

GGUF defaults to the SmolLM2-135M-Instruct file scripts/fetch-assets unpacks under
$ADARANK_ASSETS/gguf (default ~/.cache/adarank/gguf). Files written:

- tiny_llama.gguf: a 2-layer Llama written here with gguf-py (its own writer and quantizers), one
  tensor type per matrix (F32, F16, BF16, Q8_0, Q4_0, Q4_1), Q and K rows permuted the way
  llama.cpp's converter does, an untied output.weight and a tiny byte-level vocabulary;
- gguf_tiny_weights.json: every tensor of that file as transformers loads it (dequantized, Q and
  K rows back in transformers' order), f32 little-endian bytes in base64;
- gguf_smollm2_weights.json: for SmolLM2, transformers' config, the name and shape of every tensor,
  and q/k/v of two layers: a checksum of each row and a few whole rows (the un-permutation), plus
  whole-matrix checksums of the other kinds;
- gguf_tokenizer.json: 200+ strings, the ids of transformers' GGUF tokenizer for each, the ids of
  the same vocabulary split the way SmolLM2 was trained (digits one by one: SmolLM2's own
  tokenizer.json and llama.cpp's "smollm" pre-tokenizer), and the decoded text;
- gguf_chat.json: conversations rendered by transformers' apply_chat_template(tokenize=False), with
  SmolLM2's template and a few others that use what Hugging Face templates use.
"""
import base64
import json
import os
import sys

import numpy as np
import torch
import gguf
from gguf import GGMLQuantizationType as Q
from tokenizers import pre_tokenizers
from transformers import AutoModelForCausalLM, AutoTokenizer

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(os.path.dirname(HERE), "tests", "fixtures", "llm")


def smollm2_path():
    if len(sys.argv) > 1:
        return sys.argv[1]
    assets = os.environ.get("ADARANK_ASSETS") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "adarank")
    path = os.path.join(assets, "gguf", "SmolLM2-135M-Instruct.Q4_1.gguf")
    if not os.path.isfile(path):
        sys.exit(f"{path} missing: run scripts/fetch-assets first, or pass the GGUF file")
    return path


def b64(t):
    return base64.b64encode(np.ascontiguousarray(t, dtype="<f4").tobytes()).decode()


def write_json(name, obj):
    path = os.path.join(OUT, name)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, ensure_ascii=False, indent=0, sort_keys=True)
        f.write("\n")
    print(f"wrote {path} ({os.path.getsize(path)} bytes)")


def load_model(path):
    return AutoModelForCausalLM.from_pretrained(
        os.path.dirname(path), gguf_file=os.path.basename(path), torch_dtype=torch.float32)


# ---------------------------------------------------------------- the tiny synthetic GGUF

TINY = dict(hidden=32, heads=2, kv_heads=1, ffn=64, layers=2, ctx=64, theta=10000.0, eps=1e-5)


def llama_cpp_permute(w, heads):
    """What llama.cpp's convert_hf_to_gguf does to q_proj/k_proj rows (its RoPE pairs adjacent)."""
    rows = w.shape[0]
    return w.reshape(heads, 2, rows // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def tiny_vocab():
    """A byte-level BPE vocabulary: three control tokens, the 256 byte symbols, a few merges."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    symbols = list(bytes_to_unicode().values())
    merges = ["Ġ t", "h e", "Ġt he", "i n", "Ġ a", "e r"]
    tokens = specials + symbols + [m.replace(" ", "") for m in merges]
    types = [3] * len(specials) + [1] * (len(tokens) - len(specials))
    return tokens, merges, types


def write_tiny_gguf(path):
    c = TINY
    tokens, merges, types = tiny_vocab()
    vocab, hd = len(tokens), c["hidden"] // c["heads"]
    rng = np.random.default_rng(20240611)

    def mat(rows, cols):
        return (rng.standard_normal((rows, cols)) * 0.5).astype(np.float32)

    w = gguf.GGUFWriter(path, "llama")
    w.add_context_length(c["ctx"])
    w.add_embedding_length(c["hidden"])
    w.add_block_count(c["layers"])
    w.add_feed_forward_length(c["ffn"])
    w.add_head_count(c["heads"])
    w.add_head_count_kv(c["kv_heads"])
    w.add_rope_freq_base(c["theta"])
    w.add_layer_norm_rms_eps(c["eps"])
    w.add_rope_dimension_count(hd)
    w.add_vocab_size(vocab)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("smollm")
    w.add_token_list(tokens)
    w.add_token_merges(merges)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_pad_token_id(2)
    w.add_add_bos_token(False)

    def put(name, data, qtype):
        if qtype in (Q.F32,):
            w.add_tensor(name, data.astype(np.float32))
        elif qtype == Q.F16:
            w.add_tensor(name, data.astype(np.float16))
        else:
            w.add_tensor(name, gguf.quants.quantize(data, qtype), raw_dtype=qtype)

    kv = c["kv_heads"] * hd
    put("token_embd.weight", mat(vocab, c["hidden"]), Q.Q8_0)
    # Layer 0 and 1 put each kind in a different format, so every format meets a Q or K matrix.
    kinds = [
        {"q": Q.Q4_1, "k": Q.Q4_0, "v": Q.F16, "o": Q.BF16, "gate": Q.Q8_0, "up": Q.F32, "down": Q.Q4_1},
        {"q": Q.Q8_0, "k": Q.BF16, "v": Q.Q4_0, "o": Q.F32, "gate": Q.F16, "up": Q.Q4_1, "down": Q.Q8_0},
    ]
    for i, t in enumerate(kinds):
        p = f"blk.{i}."
        put(p + "attn_norm.weight", 1.0 + 0.1 * rng.standard_normal(c["hidden"]).astype(np.float32), Q.F32)
        put(p + "attn_q.weight", llama_cpp_permute(mat(c["hidden"], c["hidden"]), c["heads"]), t["q"])
        put(p + "attn_k.weight", llama_cpp_permute(mat(kv, c["hidden"]), c["kv_heads"]), t["k"])
        put(p + "attn_v.weight", mat(kv, c["hidden"]), t["v"])
        put(p + "attn_output.weight", mat(c["hidden"], c["hidden"]), t["o"])
        put(p + "ffn_norm.weight", 1.0 + 0.1 * rng.standard_normal(c["hidden"]).astype(np.float32), Q.F32)
        put(p + "ffn_gate.weight", mat(c["ffn"], c["hidden"]), t["gate"])
        put(p + "ffn_up.weight", mat(c["ffn"], c["hidden"]), t["up"])
        put(p + "ffn_down.weight", mat(c["hidden"], c["ffn"]), t["down"])
    put("output_norm.weight", np.ones(c["hidden"], dtype=np.float32), Q.F32)
    put("output.weight", mat(vocab, c["hidden"]), Q.Q8_0)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def tiny_fixture():
    path = os.path.join(OUT, "tiny_llama.gguf")
    write_tiny_gguf(path)
    print(f"wrote {path} ({os.path.getsize(path)} bytes)")
    model = load_model(path)
    cfg = model.config
    assert not cfg.tie_word_embeddings, "the tiny model has its own output.weight"
    tensors = {n: {"shape": list(t.shape), "f32": b64(t.detach().numpy())}
               for n, t in model.state_dict().items()}
    write_json("gguf_tiny_weights.json", {
        "config": {k: getattr(cfg, k) for k in (
            "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
            "num_attention_heads", "num_key_value_heads", "rms_norm_eps",
            "max_position_embeddings", "tie_word_embeddings")} | {"rope_theta": rope_theta(cfg)},
        "tensors": tensors,
    })


def rope_theta(cfg):
    theta = getattr(cfg, "rope_theta", None)
    if theta is None:
        theta = (getattr(cfg, "rope_parameters", None) or {}).get("rope_theta")
    return theta


# ---------------------------------------------------------------- SmolLM2's weights

def checksums(t):
    """Per-row sum and position-weighted sum (f64), so a swapped row or column shows."""
    t = t.detach().double()
    cols = torch.arange(1, t.shape[1] + 1, dtype=torch.float64)
    return {"row_sum": t.sum(1).tolist(), "row_wsum": (t * cols).sum(1).tolist()}


def whole(t):
    t = t.detach().double().reshape(-1)
    idx = torch.arange(1, t.numel() + 1, dtype=torch.float64) % 1009
    return {"sum": t.sum().item(), "sumsq": (t * t).sum().item(), "wsum": (t * idx).sum().item()}


def smollm2_fixture(path):
    model = load_model(path)
    cfg = model.config
    sd = model.state_dict()
    sample_rows = [0, 1, 2, 31, 32, 33, 63]
    mats = {}
    for layer in (0, 29):
        for proj in ("q_proj", "k_proj", "v_proj"):
            name = f"model.layers.{layer}.self_attn.{proj}.weight"
            t = sd[name]
            rows = sample_rows + [t.shape[0] - 1]
            mats[name] = checksums(t) | {"rows": rows, "values": [b64(t[r].numpy()) for r in rows]}
    others = {n: whole(sd[n]) for n in (
        "model.embed_tokens.weight", "model.layers.0.self_attn.o_proj.weight",
        "model.layers.0.mlp.gate_proj.weight", "model.layers.0.mlp.up_proj.weight",
        "model.layers.0.mlp.down_proj.weight", "model.layers.0.input_layernorm.weight",
        "model.layers.0.post_attention_layernorm.weight", "model.layers.29.mlp.down_proj.weight",
        "model.norm.weight")}
    write_json("gguf_smollm2_weights.json", {
        "config": {k: getattr(cfg, k) for k in (
            "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
            "num_attention_heads", "num_key_value_heads", "rms_norm_eps",
            "max_position_embeddings", "tie_word_embeddings")} | {"rope_theta": rope_theta(cfg)},
        "shapes": {n: list(t.shape) for n, t in sd.items() if n != "lm_head.weight"},
        "rows": mats,
        "whole": others,
    })


# ---------------------------------------------------------------- the tokenizer

def tokenizer_strings():
    base = [
        "", " ", "  ", "\t", "\n", "\n\n", "\r\n", " \n ", "a", "A", "Hello", "Hello world",
        "Hello, world!", "hello world.", "  leading spaces", "trailing spaces   ", "tab\tseparated\tvalues",
        "multiple\n\nnewlines\n\n\n", "mixed \t\n whitespace", "I'm", "you're", "he'll", "we've", "she'd",
        "they'RE shouting", "don't", "isn't it?", "O'Neil's", "rock 'n' roll",
        "1", "12", "123", "1234", "12345678901234567890", "3.14159", "-42", "+1 (555) 010-9999",
        "2024-06-11", "1,000,000", "0x1F600", "1e-5", "v2.0.1", "x  12", "a\t\t3", "price: $ 99.99",
        "  7 days", "room 101\n  202", "Ⅻ ½ ² ٣ ३",
        "naïve café résumé", "Ünïcödé", "Straße", "ﬁ ligature", "Ελληνικά", "Русский текст",
        "עברית", "العربية", "हिन्दी", "ไทย", "한국어 텍스트", "日本語のテキスト", "中文文本，标点。",
        "混合 mixed 文本 text", "emoji 😀", "👍🏽", "👨‍👩‍👧‍👦 family", "🇫🇷 flag", "❤️", "a😀b",
        "∑ x² ≤ ∞", "→ ← ↑ ↓", "“smart quotes” and ‘apostrophes’", "em — dash – en", "…",
        "def f(x):\n    return x * 2\n", "fn main() {\n\tprintln!(\"hi\");\n}",
        "for (int i = 0; i < n; ++i) { a[i] = i; }", "SELECT * FROM t WHERE id = 42;",
        "<div class=\"x\">text</div>", "{\"key\": [1, 2, 3], \"nested\": {\"a\": null}}",
        "https://huggingface.co/HuggingFaceTB/SmolLM2-135M-Instruct", "user@example.com",
        "C:\\Users\\name\\file.txt", "#include <stdio.h>", "x += 1 // comment", "$$\\frac{a}{b}$$",
        "<|im_start|>", "<|im_end|>", "<|endoftext|>",
        "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
        "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n",
        "text<|im_end|>more", "<|im_start|><|im_end|>", "<|im_start|> spaced <|im_end|>",
        "<repo_name>adarank<file_sep>src/lib.rs", "<|im_start |> not special", "<|IM_START|>",
        "The movie was wonderful and I loved every minute of it.",
        "What is the capital of France?", "The capital of France is Paris.",
        "ALL CAPS SENTENCE", "camelCaseIdentifier", "snake_case_identifier", "kebab-case-word",
        "!!!???...", "((()))", "a.b.c.d", "word,word;word:word", "tab\t", "\ttab", " \t \t ",
        "    indented four", "        indented eight", "line1\nline2\r\nline3\rline4",
        "\u00a0non-breaking\u00a0space", "zero\u200bwidth", "soft\u00adhyphen", "\u3000ideographic space",
        "\x00null byte", "bell\x07char", "control\x1bescape",
        "The quick brown fox jumps over the lazy dog.", "Pack my box with five dozen liquor jugs!",
        "It was the best of times, it was the worst of times.", "To be, or not to be: that is the question.",
        "Ich habe keine Zeit.", "¿Dónde está la biblioteca?", "Ça va très bien, merci !", "Årets bästa dag",
        "Český jazyk", "Język polski", "Türkçe karakterler: ğ ş ı İ", "Tiếng Việt có dấu",
        "我爱自然语言处理。", "東京タワーは333メートルです", "서울은 대한민국의 수도입니다.", "Ελλάδα 2004",
        "a\u0301 combining accent", "Z̤͔ͧ̑̓ä͖̭̈̇lͮ̒ͫǧ̗͚̚o̙̔ͮ̇͐̇", "\ufeffBOM first", "x\u2028y\u2029z",
        "print(f\"{x=}\")", "const add = (a, b) => a + b;", "if x != None and y >= 3:\n\tpass",
        "<|im_start|>assistant\n```python\nprint(1)\n```<|im_end|>", "git commit -m 'fix: 2 bugs'",
        "| col1 | col2 |\n|------|------|\n| 1    | 2    |", "- item one\n- item two\n  - nested",
        "**bold** _italic_ `code`", "# Heading\n\nParagraph.", "> quoted line", "tabs\t\t\tthree",
        "ends with newline\n", "\n starts with newline", "   ", "\t\n\t", "a b  c   d    e",
        "99 bottles of beer", "phone: 06 12 34 56 78", "IPv4 192.168.0.1", "UUID 123e4567-e89b-12d3",
        "2^10 = 1024", "1/3 ≈ 0.333", "50% off!!!", "#hashtag @mention", "I've 2 cats & 3 dogs.",
        "ALLCAPS123lower", "ab12cd34", "née 1990", "Dr. Smith's 3rd patient",
    ]
    # Generated: word/number/space combinations around the places where split rules differ.
    words = ["the", "cat", "über", "東京", "🙂", "x", "I'll"]
    numbers = ["0", "7", "42", "2025", "3.5", "1000000"]
    spaces = ["", " ", "  ", "\t", "\n", " \n", "   "]
    gen = []
    for i, wd in enumerate(words):
        for j, num in enumerate(numbers):
            s1 = spaces[(i + j) % len(spaces)]
            s2 = spaces[(i * 3 + j + 1) % len(spaces)]
            gen.append(f"{wd}{s1}{num}{s2}{wd}")
    gen += [" " * n + "9" for n in range(1, 6)] + ["a" + " " * n + "b" for n in range(1, 6)]
    gen += ["\n" * n + "x" for n in range(1, 4)] + ["x" + "\t" * n for n in range(1, 4)]
    return base + gen


def tokenizer_fixture(path):
    tok = AutoTokenizer.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path))
    # The same vocabulary and merges split the way SmolLM2 was trained (its tokenizer.json:
    # Digits(individual_digits) then ByteLevel with GPT-2's regex; llama.cpp's "smollm" pre-type).
    smol = AutoTokenizer.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path))
    smol.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    cases = []
    for s in tokenizer_strings():
        ids = tok(s, add_special_tokens=True)["input_ids"]
        cases.append({
            "text": s,
            "ids": ids,
            "smollm_ids": smol(s, add_special_tokens=True)["input_ids"],
            "decoded": tok.decode(ids, skip_special_tokens=False),
        })
    differ = [c["text"] for c in cases if c["ids"] != c["smollm_ids"]]
    print(f"tokenizer: {len(cases)} strings, {len(differ)} where the two splits differ: {differ!r}")
    write_json("gguf_tokenizer.json", {
        "bos": tok.bos_token, "eos": tok.eos_token, "pad": tok.pad_token, "unk": tok.unk_token,
        "vocab_size": len(tok), "cases": cases,
    })


# ---------------------------------------------------------------- chat templates

# Templates in the shapes Hugging Face models ship: whitespace control, loop.last/first, `namespace`,
# raise_exception, string methods, bos_token.
LLAMA3_LIKE = (
    "{{- bos_token }}\n{%- if messages[0]['role'] == 'system' %}\n"
    "    {%- set system_message = messages[0]['content']|trim %}\n    {%- set messages = messages[1:] %}\n"
    "{%- else %}\n    {%- set system_message = \"\" %}\n{%- endif %}\n"
    "{{- \"<|start_header_id|>system<|end_header_id|>\\n\\n\" }}\n{{- system_message }}\n{{- \"<|eot_id|>\" }}\n"
    "{%- for message in messages %}\n"
    "    {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' }}\n"
    "{%- endfor %}\n{%- if add_generation_prompt %}\n"
    "    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}\n{%- endif %}\n"
)
MISTRAL_LIKE = (
    "{%- if messages[0]['role'] == 'system' %}{%- set system_message = messages[0]['content'] %}"
    "{%- set loop_messages = messages[1:] %}{%- else %}{%- set loop_messages = messages %}{%- endif %}\n"
    "{{- bos_token }}\n{%- for message in loop_messages %}\n"
    "    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}\n"
    "        {{- raise_exception('After the optional system message, conversation roles must alternate user/assistant/user/assistant...') }}\n"
    "    {%- endif %}\n    {%- if message['role'] == 'user' %}\n"
    "        {%- if loop.first and system_message is defined %}\n"
    "            {{- ' [INST] ' + system_message + '\\n\\n' + message['content'] + ' [/INST]' }}\n"
    "        {%- else %}\n            {{- ' [INST] ' + message['content'] + ' [/INST]' }}\n        {%- endif %}\n"
    "    {%- elif message['role'] == 'assistant' %}\n        {{- ' ' + message['content'] + eos_token}}\n"
    "    {%- else %}\n        {{- raise_exception('Only user and assistant roles are supported, with the exception of an initial optional system message!') }}\n"
    "    {%- endif %}\n{%- endfor %}\n"
)
# Block tags on their own lines without `-`: what trim_blocks/lstrip_blocks remove; loop controls;
# a namespace; string methods that minijinja gets from pycompat.
BLOCKS = (
    "{% set ns = namespace(count=0) %}\n"
    "{% for message in messages %}\n"
    "    {% if message['role'] == 'system' %}\n"
    "        {% continue %}\n"
    "    {% endif %}\n"
    "    {% set ns.count = ns.count + 1 %}\n"
    "    <{{ message['role'].upper() }} n={{ ns.count }}>{{ message['content'].strip() }}\n"
    "    {% if ns.count >= 3 %}{% break %}{% endif %}\n"
    "{% endfor %}\n"
    "{% if add_generation_prompt %}\n"
    "<ASSISTANT n={{ ns.count + 1 }}>\n"
    "{% endif %}\n"
)

# transformers' own tojson filter (json.dumps, ensure_ascii=False), with and without an indent.
TOJSON = (
    "{% for m in messages %}{{ m | tojson }}\n{% endfor %}"
    "{{ {'n': messages | length, 'ok': true, 'none': none, 'half': 0.5, 'tiny': 0.00001,"
    " 'list': [1, 'two', [3]], 'html': '<a href=\"x\">&</a>'} | tojson(indent=2) }}"
)

CONVERSATIONS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "You are a terse assistant."},
     {"role": "user", "content": "Hi!"}],
    [{"role": "user", "content": "Write a haiku."},
     {"role": "assistant", "content": "Autumn moonlight—\na worm digs silently\ninto the chestnut."},
     {"role": "user", "content": "  Another, with spaces around  "}],
    [{"role": "system", "content": "Réponds en français. 日本語も。"},
     {"role": "user", "content": "Emoji 😀 and\ttabs\nand newlines"},
     {"role": "assistant", "content": "D'accord !"},
     {"role": "user", "content": "Merci"},
     {"role": "assistant", "content": "De rien."}],
    [{"role": "user", "content": ""}],
    # Two user turns in a row: the Mistral-style template raises.
    [{"role": "user", "content": "one"}, {"role": "user", "content": "two"}],
]


def chat_fixture(path):
    tok = AutoTokenizer.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path))
    templates = {"smollm2": tok.chat_template, "llama3_like": LLAMA3_LIKE,
                 "mistral_like": MISTRAL_LIKE, "blocks": BLOCKS, "tojson": TOJSON}
    bos, eos = "<s>", "</s>"
    cases = []
    for name, template in templates.items():
        for conv in CONVERSATIONS:
            for gen in (False, True):
                kwargs = dict(tokenize=False, add_generation_prompt=gen, chat_template=template)
                if name != "smollm2":
                    kwargs |= dict(bos_token=bos, eos_token=eos)
                try:
                    out, err = tok.apply_chat_template(conv, **kwargs), None
                except Exception as e:  # the template raised: the Rust side must fail too
                    out, err = None, str(e)
                cases.append({"template": name, "messages": conv, "add_generation_prompt": gen,
                              "bos": tok.bos_token if name == "smollm2" else bos,
                              "eos": tok.eos_token if name == "smollm2" else eos,
                              "rendered": out, "error": err})
    write_json("gguf_chat.json", {"templates": templates, "cases": cases})


def main():
    os.makedirs(OUT, exist_ok=True)
    path = smollm2_path()
    tiny_fixture()
    tokenizer_fixture(path)
    chat_fixture(path)
    smollm2_fixture(path)


if __name__ == "__main__":
    main()
