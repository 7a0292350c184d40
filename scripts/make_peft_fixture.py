#!/usr/bin/env python3
"""Write tests/fixtures/peft/<name>/peft_logits.json: logits computed by PyTorch + transformers +
PEFT for an adarank export, the reference of tests/peft_fixture.rs. Run by hand (not in CI):

    /root/.cache/adarank/torch-venv/bin/python scripts/make_peft_fixture.py \
        tests/fixtures/peft/minilm_cls [MODEL_DIR]

The export folder (adapter_model.safetensors, adapter_config.json, adarank.json) is committed
beside the output. MODEL_DIR defaults to the all-MiniLM-L6-v2 snapshot of the fetched assets.
For a handful of sentences it records the token ids, then:
- `logits_cls`: the stock BertForSequenceClassification + PeftModel.from_pretrained forward
  (BERT's pooler + classifier: adarank's `pooling = cls`), after checking that loading found
  every key of the export and left no adapter or head key missing;
- `logits_mean`: the same loaded modules through examples/load_in_peft.py's
  `mean_pooled_logits` (adarank's `pooling = mean`).
For the first 48 labelled sentences of the movie reviews' test split (`labelled`), as a user of
the stock class would classify them: the class's own logits and `pipeline("text-classification")`'s
label (which must agree), and the accuracy they give (`accuracy_stock`).
"""
import glob
import json
import os
import sys
import warnings

import peft
import torch
import transformers
from peft import PeftModel
from peft.utils import load_peft_weights, set_peft_model_state_dict
from transformers import BertForSequenceClassification, BertTokenizerFast

here = os.path.dirname(os.path.abspath(__file__))
root = os.path.dirname(here)
sys.path.insert(0, os.path.join(root, "examples"))
import load_in_peft  # noqa: E402  (the shipped example: the fixture checks its mean pooling)

SENTENCES = [
    "The movie was a delight from start to finish.",
    "A dull, lifeless script that wastes a talented cast.",
    "It drowns in sap.",
    "Naïve? Perhaps — but the performances are wonderful!",
    "Not bad at all.",
    "An ambitious, sprawling mess.",
]

LABELLED = 48

cell = sys.argv[1]
assets = os.environ.get("ADARANK_ASSETS") or os.path.join(
    os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "adarank")
if len(sys.argv) > 2:
    base = sys.argv[2]
else:
    snaps = glob.glob(os.path.join(
        assets, "hf/models--sentence-transformers--all-MiniLM-L6-v2/snapshots/*"))
    if len(snaps) != 1:
        sys.exit("run scripts/fetch-assets first, or pass the model folder")
    base = snaps[0]

torch.manual_seed(0)
info = json.load(open(os.path.join(cell, "adarank.json")))
classes = info["head"]["classify"]["classes"]

# 1. Loading as a user would: no warning about missing or unexpected keys.
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    model = BertForSequenceClassification.from_pretrained(
        base, num_labels=classes, attn_implementation="eager")
    model = PeftModel.from_pretrained(model, cell)
key_warnings = [str(w.message) for w in caught if "keys" in str(w.message).lower()]
assert not key_warnings, key_warnings

# 2. The same, counted: every tensor of the export lands on a module, none is left out.
probe = BertForSequenceClassification.from_pretrained(
    base, num_labels=classes, attn_implementation="eager")
probe = PeftModel.from_pretrained(probe, cell)
result = set_peft_model_state_dict(probe, load_peft_weights(cell))
missing = [k for k in result.missing_keys if "lora_" in k or "modules_to_save" in k]
assert not result.unexpected_keys, result.unexpected_keys
assert not missing, missing
model.eval()

tok = BertTokenizerFast.from_pretrained(base)
cases = []
with torch.no_grad():
    for s in SENTENCES:
        enc = tok(s, return_tensors="pt")
        ids, mask = enc["input_ids"], enc["attention_mask"]
        cases.append({
            "text": s,
            "input_ids": ids[0].tolist(),
            "logits_cls": model(input_ids=ids, attention_mask=mask).logits[0].tolist(),
            "logits_mean": load_in_peft.mean_pooled_logits(model, ids, mask)[0].tolist(),
        })

# 3. Labelled sentences through the stock class as it stands, and through pipeline().
with open(os.path.join(assets, "data/movie_reviews/test.tsv"), encoding="utf-8") as f:
    rows = [line.rstrip("\n").split("\t") for line in f][1:LABELLED + 1]
classify = transformers.pipeline("text-classification", model=model, tokenizer=tok)
labelled = []
with torch.no_grad():
    for text, label in rows:
        enc = tok(text, return_tensors="pt")
        logits = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits[0]
        pred = int(logits.argmax())
        piped = classify(text)[0]["label"]
        assert piped == f"LABEL_{pred}", (piped, pred, text)
        labelled.append({
            "text": text,
            "label": int(label),
            "input_ids": enc["input_ids"][0].tolist(),
            "logits_stock": logits.tolist(),
            "pred_pipeline": pred,
        })
accuracy = sum(c["pred_pipeline"] == c["label"] for c in labelled) / len(labelled)

out = {
    "export": os.path.relpath(cell, root),
    "base_model": "sentence-transformers/all-MiniLM-L6-v2",
    "hf_class": "BertForSequenceClassification",
    "generator": (f"scripts/make_peft_fixture.py, torch {torch.__version__}, "
                  f"transformers {transformers.__version__}, peft {peft.__version__}"),
    "missing_keys": missing,
    "unexpected_keys": list(result.unexpected_keys),
    "cases": cases,
    "labelled": labelled,
    "accuracy_stock": accuracy,
}
path = os.path.join(cell, "peft_logits.json")
with open(path, "w") as f:
    json.dump(out, f, indent=1)
    f.write("\n")
print(f"wrote {path}: {len(cases)} sentences, {len(labelled)} labelled "
      f"(stock class and pipeline(): accuracy {accuracy:.4f})")
