"""Writes the tiny BERT the hostile-data cases train on: config.json, tokenizer.json (WordPiece
over a few dozen words) and model.safetensors (random weights, 1 layer, hidden 8). Plain Python,
no packages: run `python3 make.py` here to regenerate; the output is deterministic."""
import json, random, struct

words = ("the a movie film was is not very good bad great awful fun dull plot actors "
         "story boring funny sad love hate it and but this that of to best worst").split()
vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + words + ["##s", "##ed", "##ly", "."]
ids = {t: i for i, t in enumerate(vocab)}
cfg = {"model_type": "bert", "vocab_size": len(vocab), "hidden_size": 8, "num_hidden_layers": 1,
       "num_attention_heads": 2, "intermediate_size": 16, "max_position_embeddings": 32,
       "type_vocab_size": 2, "layer_norm_eps": 1e-12, "hidden_act": "gelu", "pad_token_id": 0}
json.dump(cfg, open("config.json", "w"), indent=2)

tok = {
  "version": "1.0", "truncation": None, "padding": None, "added_tokens": [
    {"id": ids[t], "content": t, "single_word": False, "lstrip": False, "rstrip": False,
     "normalized": False, "special": True} for t in ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]],
  "normalizer": {"type": "BertNormalizer", "clean_text": True, "handle_chinese_chars": True,
                 "strip_accents": None, "lowercase": True},
  "pre_tokenizer": {"type": "BertPreTokenizer"},
  "post_processor": {"type": "TemplateProcessing",
    "single": [{"SpecialToken": {"id": "[CLS]", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
               {"SpecialToken": {"id": "[SEP]", "type_id": 0}}],
    "pair": [{"SpecialToken": {"id": "[CLS]", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
             {"SpecialToken": {"id": "[SEP]", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}},
             {"SpecialToken": {"id": "[SEP]", "type_id": 1}}],
    "special_tokens": {t: {"id": t, "ids": [ids[t]], "tokens": [t]} for t in ["[CLS]", "[SEP]"]}},
  "decoder": {"type": "WordPiece", "prefix": "##", "cleanup": True},
  "model": {"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##",
            "max_input_chars_per_word": 100, "vocab": ids},
}
json.dump(tok, open("tokenizer.json", "w"), indent=1)

h, f, v, p = 8, 16, len(vocab), 32
shapes = [("embeddings.word_embeddings.weight", [v, h]),
          ("embeddings.position_embeddings.weight", [p, h]),
          ("embeddings.token_type_embeddings.weight", [2, h]),
          ("embeddings.LayerNorm.weight", [h]), ("embeddings.LayerNorm.bias", [h])]
for m, r, c in [("attention.self.query", h, h), ("attention.self.key", h, h),
                ("attention.self.value", h, h), ("attention.output.dense", h, h),
                ("intermediate.dense", f, h), ("output.dense", h, f)]:
    shapes += [(f"encoder.layer.0.{m}.weight", [r, c]), (f"encoder.layer.0.{m}.bias", [r])]
for ln in ["attention.output.LayerNorm", "output.LayerNorm"]:
    shapes += [(f"encoder.layer.0.{ln}.weight", [h]), (f"encoder.layer.0.{ln}.bias", [h])]
rng = random.Random(7)
header, blobs, off = {}, [], 0
for name, shape in sorted(shapes):
    n = 1
    for d in shape:
        n *= d
    if name.endswith("LayerNorm.weight"):
        vals = [1.0] * n
    elif name.endswith("bias"):
        vals = [0.0] * n
    else:
        vals = [rng.gauss(0, 0.2) for _ in range(n)]
    b = struct.pack(f"<{n}f", *vals)
    header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [off, off + len(b)]}
    blobs.append(b)
    off += len(b)
hj = json.dumps(header, separators=(",", ":")).encode()
hj += b" " * ((8 - len(hj) % 8) % 8)
with open("model.safetensors", "wb") as out:
    out.write(struct.pack("<Q", len(hj)) + hj + b"".join(blobs))
