#!/usr/bin/env python3
# Prints the constants of tests/model_rope.rs: transformers' LlamaRotaryEmbedding (inv_freq, cos, sin) as f32 bits.
# Run with the venv that has torch and transformers: python scripts/make_rope_fixture.py
import torch, struct, transformers
from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

def cfg(head_dim, theta, scaling=None):
    rp = {"rope_type": "default", "rope_theta": theta}
    if scaling:
        rp = {"rope_type": "llama3", "rope_theta": theta, **scaling}
    return LlamaConfig(hidden_size=head_dim * 2, num_attention_heads=2, head_dim=head_dim,
                       max_position_embeddings=131072, rope_parameters=rp)

def bits(t):
    return [struct.unpack('<I', struct.pack('<f', float(v)))[0] for v in t.flatten().tolist()]

def arr(name, vals):
    out = f"const {name}: [u32; {len(vals)}] = [\n"
    for i in range(0, len(vals), 8):
        out += "    " + ", ".join(f"0x{b:08x}" for b in vals[i:i+8]) + ",\n"
    return out + "];\n"

POS = [1, 37, 4095, 8191]
cases = {
  "SMOLLM2": cfg(64, 100000.0),
  "LLAMA31": cfg(128, 500000.0, {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}),
  "SMALL32": cfg(16, 500000.0, {"factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}),
}
print(f"// transformers {transformers.__version__}, torch {torch.__version__}; positions {POS}")
for name, c in cases.items():
    emb = LlamaRotaryEmbedding(c)
    assert emb.attention_scaling == 1.0
    cos, sin = emb(torch.zeros(1, len(POS), c.head_dim), torch.tensor([POS]))
    half = c.head_dim // 2
    assert torch.equal(cos[..., :half], cos[..., half:])
    print(arr(f"{name}_INV_FREQ", bits(emb.inv_freq)))
    print(arr(f"{name}_COS", bits(cos[0, :, :half])))
    print(arr(f"{name}_SIN", bits(sin[0, :, :half])))
