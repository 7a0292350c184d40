#!/usr/bin/env python3
"""Writes tests/fixtures/quant/gguf_quants.json: ggml's block formats (Q8_0, Q4_0, Q4_1) as the
`gguf` Python package (llama.cpp's own, `gguf.quants`) quantizes and dequantizes them — the
oracle `tests/backend_quant.rs` holds `adarank::backend::quant` to.

Run with a Python that has numpy and gguf (e.g. the torch venv):
    python scripts/make_quant_fixtures.py [--gguf PATH/SmolLM2-135M-Instruct.Q4_1.gguf]

Contents:
- `synthetic`: per type, 256 f32 values chosen to reach the formats' corners (an all-zero
  block, a single spike, a negative extreme, ties at .5, huge and tiny scales), gguf's quantized
  bytes and its dequantized values (f32 bit patterns, so the comparison is exact);
- `real` (with --gguf): rows of SmolLM2's tensors as stored (raw block bytes) and gguf's
  dequantized values; and for a few whole tensors their place in the file and the sha256 of
  the dequantized f32 (little-endian), so a test can check every block when the file is there.
"""
import argparse
import hashlib
import json
import os

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf import GGUFReader, quants

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "tests", "fixtures", "quant", "gguf_quants.json")
TYPES = {"q8_0": T.Q8_0, "q4_0": T.Q4_0, "q4_1": T.Q4_1}


def bits(a):
    return np.asarray(a, dtype=np.float32).view(np.uint32).tolist()


def synthetic_values(seed):
    rng = np.random.default_rng(seed)
    blocks = [
        rng.normal(0, 0.05, 32),  # a typical weight block
        np.zeros(32),  # d = 0
        np.eye(1, 32, 7)[0] * -3.25,  # one negative spike
        np.arange(32) - 15.5,  # evenly spaced, ties at .5 after scaling
        rng.normal(0, 1, 32) * 6.0e4,  # near f16's largest normal
        rng.normal(0, 1, 32) * 1.0e-6,  # scales in f16's subnormals
        np.linspace(-1, 1, 32) + 0.3,  # all positive-biased (Q4_1's min)
        rng.uniform(-2, 2, 32),
    ]
    return np.concatenate(blocks).astype(np.float32)


def synthetic():
    out = {}
    for i, (name, qt) in enumerate(TYPES.items()):
        x = synthetic_values(100 + i)
        q = quants.quantize(x.reshape(1, -1), qt).reshape(-1)
        y = quants.dequantize(q, qt).reshape(-1)
        out[name] = {"values": bits(x), "bytes": bytes(q).hex(), "dequantized": bits(y)}
    return out


def real(path):
    r = GGUFReader(path)
    by_name = {t.name: t for t in r.tensors}
    rows = []
    for name, picks in [
        ("token_embd.weight", [0, 1, 2, 49151]),
        ("blk.0.attn_q.weight", [0, 1, 575]),
        ("blk.29.ffn_down.weight", [0, 575]),
    ]:
        t = by_name[name]
        for row in picks:
            raw = np.asarray(t.data[row]).reshape(-1)
            y = quants.dequantize(raw, t.tensor_type).reshape(-1)
            rows.append(
                {
                    "tensor": name,
                    "type": t.tensor_type.name.lower(),
                    "row": row,
                    "bytes": bytes(raw).hex(),
                    "dequantized": bits(y),
                }
            )
    whole = []
    for name in ["token_embd.weight", "blk.0.ffn_down.weight", "blk.15.attn_k.weight"]:
        t = by_name[name]
        y = quants.dequantize(np.asarray(t.data), t.tensor_type).astype("<f4")
        whole.append(
            {
                "tensor": name,
                "type": t.tensor_type.name.lower(),
                "offset": int(t.data_offset),
                "n_bytes": int(t.n_bytes),
                "len": int(t.n_elements),
                "sha256_f32": hashlib.sha256(y.tobytes()).hexdigest(),
            }
        )
    return {"file": os.path.basename(path), "rows": rows, "whole_tensors": whole}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gguf", help="SmolLM2-135M-Instruct.Q4_1.gguf, for the real-tensor part")
    args = ap.parse_args()
    doc = {
        "generator": "scripts/make_quant_fixtures.py (gguf.quants)",
        "synthetic": synthetic(),
    }
    if args.gguf:
        doc["real"] = real(args.gguf)
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w") as f:
        json.dump(doc, f, separators=(",", ":"))
        f.write("\n")
    print(f"wrote {os.path.relpath(OUT)} ({os.path.getsize(OUT)} bytes)")


if __name__ == "__main__":
    main()
