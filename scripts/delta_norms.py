#!/usr/bin/env python3
"""Mean ‖ΔW‖_F per adapted module kind (attention / FFN) of adarank PEFT exports.

Usage: scripts/delta_norms.py RUN_DIR/adapters/ARM-seedK [...]
ΔW = (lora_alpha_m / r_m) · B · A, with each module's alpha and rank resolved from
alpha_pattern / rank_pattern as PEFT does (adarank writes one exact pattern per module).
Needs numpy and safetensors (e.g. the torch venv); run by hand, not in CI.
"""
import json
import re
import sys

import numpy as np
from safetensors.numpy import load_file


def pattern_value(patterns, module, default):
    for p, v in patterns.items():
        if re.fullmatch(p, module) or re.search(r"(^|\.)" + p + r"$", module):
            return v
    return default


for d in sys.argv[1:]:
    cfg = json.load(open(f"{d}/adapter_config.json"))
    t = load_file(f"{d}/adapter_model.safetensors")
    norms = {}
    for k, a in t.items():
        if not k.endswith(".lora_A.weight"):
            continue
        m = k[: -len(".lora_A.weight")]
        b = t[m + ".lora_B.weight"]
        module = m.replace("base_model.model.", "")
        alpha = pattern_value(cfg.get("alpha_pattern", {}), module, cfg["lora_alpha"])
        dw = (alpha / a.shape[0]) * (b.astype(np.float64) @ a.astype(np.float64))
        kind = "attention" if ".attention." in module else "ffn"
        norms.setdefault(kind, []).append(np.linalg.norm(dw))
    summary = {k: f"{np.mean(v):.3f} over {len(v)}" for k, v in sorted(norms.items())}
    print(d.rstrip("/").split("/")[-1], summary)
