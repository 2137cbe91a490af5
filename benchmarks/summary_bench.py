"""Peak memory and time of the activation summary on a GPT2-small-shaped model, by layer grouping.

A random GPT-2 with GPT2-small's shapes (12 layers x 3072 neurons, d_model 768, vocab 50257) is
saved to a temporary folder and loaded through models.load_model; a few random token rows are the
dataset. Each configuration runs in its own process (ru_maxrss is a per-process high-water mark):

    no-vocab     --top_vocab_k_truncate 0: histograms + top-k examples only (the baseline)
    budget-1-layer  vocab top-100, budget of one layer's accumulators (one forward pass per layer)
    budget-4gb   the default --max_memory_gb 4 (for 12 layers: 4 passes of 3 layers)
    unblocked    one group of all layers (13.8 GiB of accumulators for 12 layers; skipped if RAM
                 is short: --n_layer 4 gives a 4-layer model whose unblocked run needs 4.6 GiB)

    PYTHONPATH=. python benchmarks/summary_bench.py [--n_seq 4] [--ctx 128] [--n_layer 12] [--skip_unblocked]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
GB = 1024 ** 3
D, V = 3072, 50257


def child(cfg: dict) -> None:
    """Run one configuration; print one JSON line with times (s) and memory (GiB)."""
    import torch

    from universal_neurons.activation_summary import plan_layer_groups, summarize_tokens
    from universal_neurons.models import load_model

    torch.set_num_threads(cfg["threads"])
    t0 = time.perf_counter()
    model = load_model(cfg["folder"])
    t_load = time.perf_counter() - t0
    rss_loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2
    tokens = torch.load(cfg["tokens"], weights_only=True)
    cpu0 = sum(resource.getrusage(resource.RUSAGE_SELF)[:2])
    t0 = time.perf_counter()
    summarize_tokens(model, tokens, vocab_k=cfg["vocab_k"], max_memory_gb=cfg["gb"], batch_size=cfg["batch_size"],
                     progress=False)
    t_sum = time.perf_counter() - t0
    cpu = sum(resource.getrusage(resource.RUSAGE_SELF)[:2]) - cpu0  # user + system, all threads
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2
    groups = plan_layer_groups(model.cfg.n_layers, D, V, cfg["vocab_k"], cfg["gb"])
    print(json.dumps({"name": cfg["name"], "groups": len(groups), "load_s": t_load, "summary_s": t_sum, "summary_cpu_s": cpu,
                      "rss_after_load_gib": rss_loaded, "peak_rss_gib": peak}))


def mem_available_gib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable"):
            return int(line.split()[1]) / 1024 ** 2
    return float("inf")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n_seq", type=int, default=4)
    p.add_argument("--ctx", type=int, default=128)
    p.add_argument("--batch_size", type=int, default=4)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--n_layer", type=int, default=12, help="fewer layers make the unblocked run fit in RAM")
    p.add_argument("--skip_unblocked", action="store_true")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(json.loads(args.child))

    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from universal_neurons.activation_summary import vocab_bytes_per_layer
    from universal_neurons.tokenizer import gpt2_tokenizer

    L = args.n_layer
    per_layer = vocab_bytes_per_layer(D, V) / GB
    configs = [("no-vocab", 0, 4.0), ("budget-1-layer", 100, 1.5 * per_layer), ("budget-4gb", 100, 4.0)]
    need = L * per_layer + 3  # accumulators + model + activations
    if not args.skip_unblocked:
        if mem_available_gib() > need + 2:
            configs.append(("unblocked", 100, L * per_layer + 0.1))
        else:
            print(f"unblocked skipped: needs ~{need:.1f} GiB, {mem_available_gib():.1f} GiB available")
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        cfg = GPT2Config(vocab_size=V, n_positions=max(args.ctx, 1024), n_embd=768, n_layer=L, n_head=12, n_inner=D)
        GPT2LMHeadModel(cfg).save_pretrained(f"{tmp}/gpt2-small-shaped")
        tok = gpt2_tokenizer()
        tok.save_pretrained(f"{tmp}/gpt2-small-shaped")
        tokens = torch.randint(0, V, (args.n_seq, args.ctx))
        tokens[:, 0] = tok.bos_token_id
        torch.save(tokens, f"{tmp}/tokens.pt")
        print(f"GPT2-small shape: {L} layers x {D}, vocab {V}; {args.n_seq} x {args.ctx} tokens, batch {args.batch_size}, "
              f"{args.threads} threads; one layer's vocab accumulators = {per_layer:.2f} GiB")
        rows = []
        for name, vocab_k, gb in configs:
            spec = dict(name=name, vocab_k=vocab_k, gb=gb, folder=f"{tmp}/gpt2-small-shaped", tokens=f"{tmp}/tokens.pt",
                        batch_size=args.batch_size, threads=args.threads)
            out = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True,
                                 text=True, env={**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"})
            if out.returncode:
                print(f"{name} failed:\n{out.stderr[-2000:]}")
                continue
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(rows[-1], flush=True)
    base = next((r for r in rows if r["name"] == "no-vocab"), None)
    print("\n| config | groups | wall s | CPU s | CPU x no-vocab | peak RSS GiB | RSS after load GiB |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        ratio = r["summary_cpu_s"] / base["summary_cpu_s"] if base else float("nan")
        print(f"| {r['name']} | {r['groups']} | {r['summary_s']:.1f} | {r['summary_cpu_s']:.1f} | {ratio:.2f} | "
              f"{r['peak_rss_gib']:.2f} | {r['rss_after_load_gib']:.2f} |")


if __name__ == "__main__":
    main()
