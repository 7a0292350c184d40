#!/usr/bin/env python3
"""Write tests/fixtures/data/minilm_hidden.json: the reference for the MiniLM fidelity tests.

For a few sentences, the token ids of the Hugging Face tokenizer and the last hidden state of
transformers' BertModel (PyTorch, float32, eval mode) for all-MiniLM-L6-v2, plus the
sentence-transformers mean-pooled embedding. Run once, by hand, after scripts/fetch-assets:

    python3 -m venv /tmp/tv && /tmp/tv/bin/pip install torch transformers
    /tmp/tv/bin/python scripts/make_fixture.py [MODEL_DIR]

MODEL_DIR defaults to the snapshot that scripts/fetch-assets writes under $ADARANK_ASSETS/hf
(default ~/.cache/adarank/hf).
"""
import glob
import json
import os
import sys

import torch
import transformers
from transformers import BertModel, BertTokenizer, BertTokenizerFast

SENTENCES = [
    "The movie was a delight from start to finish.",
    "A dull, lifeless script that wastes a talented cast.",
    "It drowns in sap.",
    "Naïve? Perhaps — but the performances (especially Ms. Kidman's) are wonderful!",
]
# One sentence pair, to check segment ids and the pair template.
PAIR = ("A man is playing a guitar.", "Someone is making music.")

here = os.path.dirname(os.path.abspath(__file__))
root = os.path.dirname(here)
if len(sys.argv) > 1:
    model_dir = sys.argv[1]
else:
    assets = os.environ.get("ADARANK_ASSETS") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "adarank")
    snaps = glob.glob(os.path.join(
        assets, "hf/models--sentence-transformers--all-MiniLM-L6-v2/snapshots/*"))
    if len(snaps) != 1:
        sys.exit("run scripts/fetch-assets first, or pass the model folder")
    model_dir = snaps[0]

torch.manual_seed(0)
model = BertModel.from_pretrained(model_dir, add_pooling_layer=False, attn_implementation="eager")
model.eval()
fast = BertTokenizerFast.from_pretrained(model_dir)
# The pure-Python WordPiece tokenizer, independent of the `tokenizers` library our Rust code uses.
slow = BertTokenizer.from_pretrained(model_dir)

cases = [(s, None) for s in SENTENCES] + [PAIR]
out = {
    "model": "sentence-transformers/all-MiniLM-L6-v2",
    "generator": f"scripts/make_fixture.py, torch {torch.__version__}, transformers {transformers.__version__}",
    "cases": [],
}
with torch.no_grad():
    for a, b in cases:
        enc = slow(a, b) if b is not None else slow(a)
        fenc = fast(a, b) if b is not None else fast(a)
        assert enc["input_ids"] == fenc["input_ids"], (a, enc["input_ids"], fenc["input_ids"])
        ids = torch.tensor([enc["input_ids"]])
        tt = torch.tensor([enc["token_type_ids"]])
        hidden = model(input_ids=ids, token_type_ids=tt, attention_mask=torch.ones_like(ids)).last_hidden_state[0]
        mean = hidden.mean(dim=0)
        out["cases"].append({
            "text": a,
            "text_pair": b,
            "ids": enc["input_ids"],
            "type_ids": enc["token_type_ids"],
            "hidden_size": hidden.shape[1],
            # Full [tokens, hidden] last hidden state, row-major, as decimal text that
            # round-trips float32.
            "last_hidden": [float(f"{x:.9g}") for x in hidden.flatten().tolist()],
            "mean_pooled": [float(f"{x:.9g}") for x in mean.tolist()],
        })


def squad_targets(max_len):
    """Start/end token targets the way transformers' question-answering example computes them
    (offset mapping, truncation="only_second", no answer or a cut-off answer -> [CLS] = 0)."""
    squad = json.load(open(os.path.join(root, "tests/fixtures/data/squad2_dev.json")))
    rows = []
    for art in squad["data"]:
        for p in art["paragraphs"]:
            for qa in p["qas"]:
                enc = fast(qa["question"], p["context"], truncation="only_second",
                           max_length=max_len, return_offsets_mapping=True)
                seq = enc.sequence_ids()
                offs = enc["offset_mapping"]
                start = end = 0
                if qa["answers"]:
                    a = qa["answers"][0]
                    sc, ec = a["answer_start"], a["answer_start"] + len(a["text"])
                    ts = seq.index(1)
                    te = len(seq) - 1 - seq[::-1].index(1)
                    if offs[ts][0] <= sc and offs[te][1] >= ec:
                        while ts < len(offs) and seq[ts] == 1 and offs[ts][0] <= sc:
                            ts += 1
                        start = ts - 1
                        while seq[te] == 1 and offs[te][1] >= ec:
                            te -= 1
                        end = te + 1
                rows.append({"id": qa["id"], "ids": enc["input_ids"], "start": start, "end": end})
    return rows

out["squad"] = {str(n): squad_targets(n) for n in (384, 24)}

path = os.path.join(root, "tests/fixtures/data/minilm_hidden.json")
os.makedirs(os.path.dirname(path), exist_ok=True)
with open(path, "w") as f:
    json.dump(out, f)
    f.write("\n")
print(f"wrote {path}: {len(out['cases'])} cases")
