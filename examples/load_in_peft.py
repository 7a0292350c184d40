#!/usr/bin/env python3
"""Load an adarank export with transformers + PEFT and compute the logits adarank computes.

    python examples/load_in_peft.py CELL_DIR [--base MODEL_DIR] "a sentence" "another one"

CELL_DIR is `runs/<run>/adapters/<arm>-seed<k>/` (adapter_model.safetensors,
adapter_config.json, adarank.json). A classification export names the modules of the stock
BertForSequenceClassification (the encoder under `bert.`, the classifier in modules_to_save,
task_type SEQ_CLS), so `PeftModel.from_pretrained` on that class loads every key. Then:

- pooling = cls (adarank's default): the class's own forward is adarank's computation (BERT's
  pooler, dense + tanh on the first token, then the classifier): the logits are
  `model(**enc).logits`, and `pipeline()` and `Trainer` work as they are.
- pooling = mean (sentence-transformers' pooling, when the policy asks for it): adarank's
  classifier reads the mean of the final hidden states over the real tokens, not the pooler;
  `mean_pooled_logits` computes exactly that with the loaded modules (the cell's README.md
  says so too).

A span (question answering) export loads into BertForQuestionAnswering the same way (qa_outputs
in modules_to_save, task_type QUESTION_ANS); give `--question` and the sentences as contexts.
Call the wrapped model (`model.base_model.model`) rather than the PeftModel: PEFT 0.21's
PeftModelForQuestionAnswering.forward drops `token_type_ids`, so BERT would see the context as
segment A (start/end logits off by ~0.2 on MiniLM); `span_logits` does this.

MODEL_DIR defaults to adapter_config.json's base_model_name_or_path: a folder as it is, a hub
name from adarank's own assets when `adarank fetch` put it there (`$ADARANK_ASSETS/hf`, else
`~/.cache/adarank/hf`: no network needed), else from the hub.
Needs: torch, transformers, peft (e.g. `pip install torch transformers peft`).
"""
import argparse
import glob
import json
import os

import torch
from peft import PeftModel
from transformers import AutoTokenizer, BertForQuestionAnswering, BertForSequenceClassification


def resolve_base(base):
    """A folder as it is; a hub name as the snapshot in adarank's assets when there is one (so
    loading works offline, as adarank itself does), else the name for the hub."""
    if os.path.isdir(base):
        return base
    assets = os.environ.get("ADARANK_ASSETS") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "adarank")
    entry = "models--" + base.replace("/", "--")
    snaps = sorted(glob.glob(os.path.join(assets, "hf", entry, "snapshots", "*")))
    snaps = [s for s in snaps if os.path.isfile(os.path.join(s, "config.json"))]
    return snaps[-1] if snaps else base


def load(cell_dir, base=None):
    """The stock class with the export loaded, the tokenizer and adarank's pooling."""
    with open(os.path.join(cell_dir, "adarank.json")) as f:
        info = json.load(f)
    with open(os.path.join(cell_dir, "adapter_config.json")) as f:
        config = json.load(f)
    head = info["head"]
    base = resolve_base(base or config["base_model_name_or_path"])
    if head == "span":
        model, pooling = BertForQuestionAnswering.from_pretrained(base), "span"
    elif "classify" in head:
        classes, pooling = head["classify"]["classes"], head["classify"]["pooling"]
        model = BertForSequenceClassification.from_pretrained(base, num_labels=classes)
    else:
        raise SystemExit(f"{cell_dir}: no Hugging Face head class for head {head}")
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


def span_logits(model, enc):
    """Start and end logits per token, with the segment ids the PEFT wrapper would drop."""
    with torch.no_grad():
        out = model.base_model.model(**enc)
    return out.start_logits, out.end_logits


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
    ap.add_argument("--question", help="span exports: the question asked of every sentence")
    a = ap.parse_args()
    model, tok, pooling = load(a.cell_dir, a.base)
    if pooling == "span":
        if not a.question:
            raise SystemExit("a span export needs --question")
        for ctx in a.sentences:
            enc = tok(a.question, ctx, return_tensors="pt")
            start, end = span_logits(model, enc)
            s, e = int(start[0].argmax()), int(end[0].argmax())
            answer = tok.decode(enc["input_ids"][0][s:e + 1]) if s and e >= s else "(no answer)"
            print(f"{s}\t{e}\t{answer}\t{ctx}")
        return
    enc = tok(a.sentences, padding=True, return_tensors="pt")
    out = logits(model, pooling, enc["input_ids"], enc["attention_mask"])
    for s, row in zip(a.sentences, out.tolist()):
        best = max(range(len(row)), key=row.__getitem__)
        print(f"{best}\t{' '.join(f'{x:.6f}' for x in row)}\t{s}")


if __name__ == "__main__":
    main()
