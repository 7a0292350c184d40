#!/usr/bin/env python3
"""Load an adarank export with transformers + PEFT and compute the logits adarank computes.

    python examples/load_in_peft.py CELL_DIR [--base MODEL_DIR] "a sentence" "another one"

CELL_DIR is `runs/<run>/adapters/<arm>-seed<k>/` (adapter_model.safetensors,
adapter_config.json, adarank.json). A classification export names the modules of the stock
BertForSequenceClassification (the encoder under `bert.`, the classifier in modules_to_save,
task_type SEQ_CLS), so `PeftModel.from_pretrained` on that class loads every key. Then:

- pooling = cls: the class's own forward is adarank's computation (BERT's pooler, dense + tanh
  on the first token, then the classifier): the logits are `model(**enc).logits`.
- pooling = mean (adarank's default, sentence-transformers' pooling): adarank's classifier reads
  the mean of the final hidden states over the real tokens, not the pooler; `mean_pooled_logits`
  computes exactly that with the loaded modules.

MODEL_DIR defaults to adapter_config.json's base_model_name_or_path (a hub name or a folder).
Needs: torch, transformers, peft (e.g. `pip install torch transformers peft`).
"""
import argparse
import json
import os

import torch
from peft import PeftModel
from transformers import AutoTokenizer, BertForSequenceClassification


def load(cell_dir, base=None):
    """The stock class with the export loaded, the tokenizer and adarank's pooling."""
    with open(os.path.join(cell_dir, "adarank.json")) as f:
        info = json.load(f)
    with open(os.path.join(cell_dir, "adapter_config.json")) as f:
        config = json.load(f)
    head = info["head"]
    if "classify" not in head:
        raise SystemExit(f"{cell_dir}: not a classification export (head {head})")
    classes, pooling = head["classify"]["classes"], head["classify"]["pooling"]
    base = base or config["base_model_name_or_path"]
    model = BertForSequenceClassification.from_pretrained(base, num_labels=classes)
    model = PeftModel.from_pretrained(model, cell_dir)
    model.eval()
    return model, AutoTokenizer.from_pretrained(base), pooling


def mean_pooled_logits(model, input_ids, attention_mask):
    """adarank's `pooling = mean`: the classifier on the masked mean of the final hidden states."""
    seq_cls = model.base_model.model  # BertForSequenceClassification with the adapters in place
    hidden = seq_cls.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    m = attention_mask.unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * m).sum(dim=1) / m.sum(dim=1)
    return seq_cls.classifier(pooled)  # the trained copy (modules_to_save)


def logits(model, pooling, input_ids, attention_mask):
    with torch.no_grad():
        if pooling == "cls":
            return model(input_ids=input_ids, attention_mask=attention_mask).logits
        return mean_pooled_logits(model, input_ids, attention_mask)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("cell_dir")
    ap.add_argument("sentences", nargs="+")
    ap.add_argument("--base", help="the base model (hub name or folder)")
    a = ap.parse_args()
    model, tok, pooling = load(a.cell_dir, a.base)
    enc = tok(a.sentences, padding=True, return_tensors="pt")
    out = logits(model, pooling, enc["input_ids"], enc["attention_mask"])
    for s, row in zip(a.sentences, out.tolist()):
        best = max(range(len(row)), key=row.__getitem__)
        print(f"{best}\t{' '.join(f'{x:.6f}' for x in row)}\t{s}")


if __name__ == "__main__":
    main()
