#!/usr/bin/env python3
"""adarank against PyTorch + transformers + PEFT on the same cores, in alternating processes.

Run through `scripts/bench-vs-pytorch` (it makes the venv and the release binary first). Two roles:

  driver (default)   for each pair and mode: one PyTorch process, then one `adarank bench train`
                     process, same configuration; prints every measurement, then each ratio
                     (ours / PyTorch tokens/s) as the median with its min–max over the pairs,
                     and the peak RSS of both.
  --worker MODE      one PyTorch measurement (what the driver starts); prints one JSON line.
                     `--worker matmul --size N` times torch.matmul on N×N×N instead (TF32 off).
                     `--torch-device cuda` measures on the GPU (scripts/device-bench uses both).

The configuration is the one `adarank bench train` uses by default: MiniLM-L6's shape
(6 layers, hidden 384, 12 heads, FFN 1536, vocab 30522) as BertForSequenceClassification with
2 classes, batch 32 × sequence 64, LoRA r = 8, α = 16, dropout 0 on query, key, value, attention
output dense, intermediate dense and output dense (36 adapters; the head trains, as PEFT's
modules_to_save), AdamW (lr 1e-4, no weight decay), gradient clipping at 1.0, sdpa attention,
one untimed warm-up step, median of the timed steps. Modes: `lora` (LoRA training step), `full`
(full fine-tuning step), `forward` (loss of the LoRA model, no gradients).

`--model smollm2` benchmarks the LLM instead: SmolLM2-135M-Instruct, PyTorch's
LlamaForCausalLM loaded from the GGUF file `scripts/fetch-assets` brings (dequantized to f32),
adarank's Llama-family model of the same shape (random weights: the step times the same),
batch 8 × sequence 128 unless given, loss on every token, LoRA r = 8, α = 16, dropout 0 on
q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj and down_proj of every layer (210 adapters),
AdamW, clipping at 1.0, sdpa attention.

The two encoder models differ where the frameworks differ: PyTorch's BertForSequenceClassification pools
the [CLS] token through the pretrained pooler (384×384, tanh), adarank mean-pools (as
sentence-transformers does) — under 0.1% of the FLOPs.
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

MODES = ("lora", "full", "forward")
WORKERS = MODES + ("matmul",)


def parse():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--worker", choices=WORKERS, help="run one PyTorch measurement (internal)")
    p.add_argument("--torch-device", default="cpu", choices=("cpu", "cuda"),
                   help="where the PyTorch worker runs")
    p.add_argument("--size", type=int, default=4096, help="matmul worker: N of N×N×N")
    p.add_argument("--pairs", type=int, default=3, help="alternating pairs per mode (>= 3)")
    p.add_argument("--modes", default="lora,full,forward", help="comma list of lora, full, forward")
    p.add_argument("--steps", type=int, default=5, help="timed steps per process (median)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=0, help="default 32 (8 for smollm2)")
    p.add_argument("--seq", type=int, default=0, help="default 64 (128 for smollm2)")
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--model", default="",
                   help="model folder (both sides load it); `smollm2`: the LLM (see above); "
                        "empty: random weights of MiniLM's shape")
    p.add_argument("--random-weights", action="store_true",
                   help="smollm2: PyTorch builds SmolLM2's shape with random weights instead of "
                        "loading the GGUF (the step times the same; for machines without it)")
    p.add_argument("--weights", default="f32", choices=("f32", "bf16"),
                   help="adarank's frozen weights (PyTorch stays f32)")
    p.add_argument("--adarank", default="target/release/adarank", help="adarank binary")
    a = p.parse_args()
    llm = a.model == "smollm2"
    a.batch = a.batch or (8 if llm else 32)
    a.seq = a.seq or (128 if llm else 64)
    return a


def smollm2_gguf():
    """The GGUF file scripts/fetch-assets unpacks (the asset rule of src/data/assets.rs)."""
    root = os.environ.get("ADARANK_ASSETS") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "adarank")
    path = os.path.join(root, "gguf", "SmolLM2-135M-Instruct.Q4_1.gguf")
    if not os.path.exists(path):
        sys.exit(f"{path} not found: run scripts/fetch-assets")
    return path


def llm_worker(a):
    """The SmolLM2 step in PyTorch: LlamaForCausalLM from the GGUF, f32, loss on every token."""
    import torch
    import peft
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    torch.set_num_threads(a.threads)
    torch.manual_seed(1)
    dev = a.torch_device
    if dev == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    if a.random_weights:
        from transformers import LlamaConfig, LlamaForCausalLM
        cfg = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536,
                          num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                          rms_norm_eps=1e-5, rope_theta=100000.0, max_position_embeddings=8192,
                          tie_word_embeddings=True)
        model = LlamaForCausalLM._from_config(cfg, attn_implementation="sdpa",
                                              torch_dtype=torch.float32)
    else:
        path = smollm2_gguf()
        model = AutoModelForCausalLM.from_pretrained(
            os.path.dirname(path), gguf_file=os.path.basename(path), torch_dtype=torch.float32,
            attn_implementation="sdpa")
    if a.worker in ("lora", "forward"):
        lc = peft.LoraConfig(
            task_type=peft.TaskType.CAUSAL_LM, r=a.rank, lora_alpha=16, lora_dropout=0.0,
            target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                            "down_proj"])
        model = peft.get_peft_model(model, lc)
        adapters = sum(1 for m in model.modules() if isinstance(m, peft.tuners.lora.Linear))
    else:
        adapters = 0
    model.train()
    model.to(dev)
    vocab = model.config.vocab_size
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, vocab, (a.batch, a.seq), generator=g).to(dev)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.0, eps=1e-8)

    def step():
        # labels = ids: transformers shifts them, so every position but the last has a target.
        if a.worker == "forward":
            with torch.no_grad():
                return model(input_ids=ids, labels=ids).loss.item()
        opt.zero_grad()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        return loss.item()

    timed_steps(a, step, adapters, dev)


def timed_steps(a, step, adapters, dev):
    import torch
    import peft
    times = []
    for i in range(a.steps + 1):
        t0 = time.perf_counter()
        step()  # ends in .item(): the step has finished on the device too
        if i > 0:
            times.append(time.perf_counter() - t0)
    s = statistics.median(times)
    print(json.dumps({
        "side": "pytorch", "mode": a.worker, "device": dev, "secs": s,
        "tokens_per_s": a.batch * a.seq / s, "peak_rss_gib": peak_rss_gib(),
        "peak_gpu_gib": (torch.cuda.max_memory_allocated() / (1 << 30)) if dev == "cuda" else None,
        "adapters": adapters, "torch": torch.__version__, "peft": peft.__version__,
    }))


def peak_rss_gib():
    # ru_maxrss is in KiB on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1 << 20)


def sync(dev):
    import torch
    if dev == "cuda":
        torch.cuda.synchronize()


def matmul_worker(a):
    import torch
    torch.set_num_threads(a.threads)
    # Plain f32 (no TF32 tensor-core rounding), the arithmetic adarank's kernels do.
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    dev = a.torch_device
    n = a.size
    x = torch.randn(n, n, device=dev)
    y = torch.randn(n, n, device=dev)
    for _ in range(2):
        torch.matmul(x, y)
    sync(dev)
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        torch.matmul(x, y)
        sync(dev)
        best = min(best, time.perf_counter() - t0)
    print(json.dumps({"side": "pytorch", "mode": "matmul", "n": n, "device": dev,
                      "secs": best, "gflops": 2 * n ** 3 / best / 1e9,
                      "torch": torch.__version__}))


def worker(a):
    if a.worker == "matmul":
        return matmul_worker(a)
    if a.model == "smollm2":
        return llm_worker(a)
    import torch
    import peft
    from transformers import BertConfig, BertForSequenceClassification
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    torch.set_num_threads(a.threads)
    torch.manual_seed(1)
    dev = a.torch_device
    if dev == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    no_dropout = dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                      classifier_dropout=0.0, num_labels=2)
    if a.model:
        model = BertForSequenceClassification.from_pretrained(
            a.model, attn_implementation="sdpa", **no_dropout)
    else:
        cfg = BertConfig(vocab_size=30522, hidden_size=384, num_hidden_layers=6,
                         num_attention_heads=12, intermediate_size=1536,
                         max_position_embeddings=512, **no_dropout)
        model = BertForSequenceClassification._from_config(cfg, attn_implementation="sdpa")
    if a.worker in ("lora", "forward"):
        lc = peft.LoraConfig(
            task_type=peft.TaskType.SEQ_CLS, r=a.rank, lora_alpha=16, lora_dropout=0.0,
            target_modules=r".*\.layer\.\d+\.(attention\.self\.(query|key|value)"
                           r"|attention\.output\.dense|intermediate\.dense|output\.dense)")
        model = peft.get_peft_model(model, lc)
        adapters = sum(1 for m in model.modules() if isinstance(m, peft.tuners.lora.Linear))
    else:
        adapters = 0
    model.train()
    model.to(dev)
    vocab = model.config.vocab_size
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, vocab, (a.batch, a.seq), generator=g).to(dev)
    labels = torch.randint(0, 2, (a.batch,), generator=g).to(dev)
    mask = torch.ones(a.batch, a.seq, dtype=torch.long).to(dev)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.0, eps=1e-8)

    def step():
        if a.worker == "forward":
            with torch.no_grad():
                return model(input_ids=ids, attention_mask=mask, labels=labels).loss.item()
        opt.zero_grad()
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        return loss.item()

    timed_steps(a, step, adapters, dev)


def run_json(cmd, env):
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
    rows = [json.loads(l) for l in out.stdout.splitlines() if l.startswith("{")]
    if not rows:
        sys.exit(f"{' '.join(cmd)} printed no JSON line:\n{out.stdout}\n{out.stderr}")
    return rows


def spread(v):
    return f"{statistics.median(v):.2f}× ({min(v):.2f}–{max(v):.2f})"


def driver(a):
    modes = [m for m in a.modes.split(",") if m]
    for m in modes:
        if m not in MODES:
            sys.exit(f"--modes: unknown mode `{m}` (use {', '.join(MODES)})")
    if a.pairs < 1:
        sys.exit("--pairs must be at least 1")
    if not os.path.exists(a.adarank):
        sys.exit(f"{a.adarank} not found: build it with `cargo build --release`")
    env = dict(os.environ, OMP_NUM_THREADS=str(a.threads), MKL_NUM_THREADS=str(a.threads),
               RAYON_NUM_THREADS=str(a.threads), TOKENIZERS_PARALLELISM="false")
    torch_cmd = [sys.executable, os.path.abspath(__file__), "--steps", str(a.steps),
                 "--threads", str(a.threads), "--batch", str(a.batch), "--seq", str(a.seq),
                 "--rank", str(a.rank), "--model", a.model]
    ours_cmd = [a.adarank, "bench", "train", "--device", "cpu", "--json", "--steps", str(a.steps),
                "--batch", str(a.batch), "--seq", str(a.seq), "--rank", str(a.rank)]
    if a.weights != "f32":
        ours_cmd += ["--weights", a.weights]
    if a.model:
        ours_cmd += ["--model", a.model]
    with open("/proc/loadavg") as f:
        load0 = f.read().split()[:3]
    print(f"bench-vs-pytorch: {a.pairs} alternating pairs per mode, {a.threads} threads, "
          f"batch {a.batch} × seq {a.seq}, LoRA r={a.rank}, weights: "
          f"{a.model or 'random, MiniLM-L6 shape'}; adarank frozen weights {a.weights}; "
          f"load average before: {' '.join(load0)}", flush=True)
    res = {m: {"ours": [], "pytorch": []} for m in modes}
    for pair in range(a.pairs):
        for m in modes:
            # Alternate which side goes first, so a drift in machine load hits both alike.
            sides = [("pytorch", torch_cmd + ["--worker", m]),
                     ("ours", ours_cmd + ["--modes", m])]
            if pair % 2 == 1:
                sides.reverse()
            for side, cmd in sides:
                row = run_json(cmd, env)[-1]
                res[m][side].append(row)
                print(f"pair {pair + 1} {m:<8} {side:<8} {row['tokens_per_s']:8.0f} tokens/s "
                      f"{row['secs']:.3f} s/step  peak RSS {row['peak_rss_gib']:.2f} GiB",
                      flush=True)
    with open("/proc/loadavg") as f:
        load1 = f.read().split()[:3]
    print(f"\nsummary (ratio = adarank / PyTorch tokens/s, per pair; median (min–max) over "
          f"{a.pairs} pairs); load average after: {' '.join(load1)}")
    tps = {}
    for m in modes:
        ours = [r["tokens_per_s"] for r in res[m]["ours"]]
        torch = [r["tokens_per_s"] for r in res[m]["pytorch"]]
        tps[m] = (ours, torch)
        ratios = [o / t for o, t in zip(ours, torch)]
        rss_o = statistics.median(r["peak_rss_gib"] for r in res[m]["ours"])
        rss_t = statistics.median(r["peak_rss_gib"] for r in res[m]["pytorch"])
        print(f"  {m:<8} adarank {statistics.median(ours):6.0f} tokens/s, PyTorch "
              f"{statistics.median(torch):6.0f}: {spread(ratios)};  peak RSS {rss_o:.2f} vs "
              f"{rss_t:.2f} GiB = {rss_o / rss_t:.2f}×")
    if "lora" in tps and "full" in tps:
        for i, side in enumerate(("adarank", "PyTorch")):
            r = [l / f for l, f in zip(tps["lora"][i], tps["full"][i])]
            print(f"  LoRA step / full fine-tuning step, {side}: {spread(r)}")


def main():
    a = parse()
    if a.worker:
        worker(a)
    else:
        driver(a)


if __name__ == "__main__":
    main()
