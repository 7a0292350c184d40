#!/usr/bin/env python3
"""Write tests/fixtures/peft/tiny_llama_causal/peft_logits.json: what stock PEFT computes for the
causal-LM export adarank wrote into that folder, the reference of tests/peft_llm_fixture.rs.
Run by hand (never at test time), from the repository root:

    ADARANK_BLESS=1 cargo test --test peft_llm_fixture peft_on_the_hf   # (re)writes the export
    /root/.cache/adarank/torch-venv/bin/python scripts/make_peft_llm_fixture.py

The export (adapter_model.safetensors, adapter_config.json: task_type CAUSAL_LM, ranks per module
in rank_pattern, two targeted modules at rank 0 left out) is loaded as a user would, with
`PeftModel.from_pretrained(base, folder)`, on two bases of the same shape:
- hf: the tiny LlamaForCausalLM of tests/fixtures/llm/hub (a safetensors folder);
- gguf: tests/fixtures/llm/tiny_llama.gguf through `from_pretrained(dir, gguf_file=name)`
  (transformers dequantizes it and puts q/k rows back in its own order).
For each base it asserts that loading warned about no key and that PEFT's own state-dict load left
no LoRA key missing and none unexpected, then records which modules PEFT wrapped (rank, scaling),
the token ids of 5 prompts (each base's own tokenizer, at most MAX_IDS of them) and their
logits, and how far the adapters move the logits (the same forward with the adapters disabled).
To keep the file small, logits are kept (5 decimals) whole at the last position and, at every
position, as the log-sum-exp over the whole vocabulary (which any wrong logit moves) plus the
entries of SUBSET fixed vocabulary ids.
"""
import json
import os
import warnings

import peft
import torch
import transformers
from peft import PeftModel
from peft.utils import load_peft_weights, set_peft_model_state_dict
from transformers import AutoModelForCausalLM, AutoTokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CELL = os.path.join(ROOT, "tests", "fixtures", "peft", "tiny_llama_causal")
LLM = os.path.join(ROOT, "tests", "fixtures", "llm")
HUB = os.path.join(LLM, "hub", "models--adarank-test--tiny-llama", "snapshots")
PROMPTS = [
    "the cat sat on the mat",
    "paris is the capital of france.",
    "a dull lifeless script",
    "rotary position embeddings",
    "the movie was wonderful",
]
MAX_IDS = 10
SUBSET = 16


def r5(xs):
    return [round(float(x), 5) for x in xs]


def bases():
    snap = os.path.join(HUB, os.listdir(HUB)[0])
    yield "hf", (snap,), {}
    yield "gguf", (LLM,), {"gguf_file": "tiny_llama.gguf"}


def load(args, kwargs):
    base = AutoModelForCausalLM.from_pretrained(*args, dtype=torch.float32, **kwargs)
    return PeftModel.from_pretrained(base, CELL)


def record(name, args, kwargs):
    # 1. As a user would: no warning about missing or unexpected keys.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = load(args, kwargs)
    key_warnings = [str(w.message) for w in caught if "keys" in str(w.message).lower()]
    assert not key_warnings, key_warnings
    # 2. Counted: every tensor of the export lands on a LoRA module, none is left without one.
    probe = load(args, kwargs)
    result = set_peft_model_state_dict(probe, load_peft_weights(CELL))
    missing = [k for k in result.missing_keys if "lora_" in k]
    assert not result.unexpected_keys, result.unexpected_keys
    assert not missing, missing
    model.eval()
    modules = {}
    for path, m in model.base_model.model.named_modules():
        if hasattr(m, "lora_A") and "default" in m.lora_A:
            modules[path] = {"r": m.r["default"], "scaling": m.scaling["default"]}
    tok = AutoTokenizer.from_pretrained(*args, **kwargs)
    prompts, effect = [], 0.0
    vocab = model.config.vocab_size
    subset = [(i * vocab) // SUBSET + 3 for i in range(SUBSET)]
    with torch.no_grad():
        for text in PROMPTS:
            ids = tok(text, return_tensors="pt")["input_ids"][:, :MAX_IDS]
            out = model(input_ids=ids).logits[0]
            with model.disable_adapter():
                plain = model(input_ids=ids).logits[0]
            effect = max(effect, float((out - plain).abs().max()))
            prompts.append({
                "text": text,
                "ids": ids[0].tolist(),
                "logsumexp": r5(torch.logsumexp(out, dim=-1)),
                "subset_logits": [r5(row[subset]) for row in out],
                "last_logits": r5(out[-1]),
            })
    assert effect > 0.1, f"{name}: the adapters barely change the logits ({effect})"
    print(f"{name}: {len(modules)} LoRA modules, ranks "
          f"{sorted({m['r'] for m in modules.values()})}, adapter effect {effect:.3f}")
    return {
        "vocab": model.config.vocab_size,
        "missing_keys": missing,
        "unexpected_keys": list(result.unexpected_keys),
        "lora_modules": modules,
        "adapter_effect": effect,
        "subset_ids": subset,
        "prompts": prompts,
    }


out = {
    "export": os.path.relpath(CELL, ROOT),
    "generator": (f"scripts/make_peft_llm_fixture.py, torch {torch.__version__}, "
                  f"transformers {transformers.__version__}, peft {peft.__version__}"),
    "bases": {name: record(name, a, k) for name, a, k in bases()},
}
path = os.path.join(CELL, "peft_logits.json")
with open(path, "w") as f:
    json.dump(out, f, indent=0)
    f.write("\n")
print(f"wrote {path} ({os.path.getsize(path)} bytes)")
