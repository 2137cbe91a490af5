"""Time and peak memory of the weight summaries on a random GPT2-small-shaped model.

    PYTHONPATH=. python benchmarks/weights_bench.py [--block_sizes 128 512 2048] [--layers 0]

Model: GPT2LMHeadModel(GPT2Config()) with random weights (12 layers, d_model 768, d_mlp 3072,
12 heads, vocab 50257), wrapped in a TransformerBridge in compatibility mode, built in memory.
Each block size runs in its own subprocess so that peak-memory readings do not mix.

Per stage: wall time, and as a ratio to its GEMM floor measured in the same process (the bare
fp32 matmuls of the stage's shapes, no statistics). The vocab and neuron stages are timed on the
row neurons of `--layers` only (all columns, so the per-row cost is the full run's) and
extrapolated linearly to all 12 layers; the attention stage is run in full.

Memory: the process's peak RSS (ru_maxrss, whole life: includes building the HF model and the
bridge) and the peak during the summaries alone (VmHWM reset through /proc/self/clear_refs after
the model is built, minus the resident size at that moment).
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import re
import resource
import subprocess
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return int(re.search(rf"{field}:\s+(\d+)", f.read()).group(1))


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def worker(block_size: int, layers: list[int]) -> dict:
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel
    from transformer_lens.model_bridge.sources._bridge_builder import build_bridge_from_module

    from universal_neurons import weights as W

    torch.manual_seed(0)
    cfg = GPT2Config(n_layer=12, n_embd=768, n_head=12, n_inner=3072, vocab_size=50257)
    bridge = build_bridge_from_module(GPT2LMHeadModel(cfg).eval(), "GPT2LMHeadModel", hf_config=cfg)
    bridge.enable_compatibility_mode()
    gc.collect()
    res = {"block_size": block_size, "layers": layers, "threads": torch.get_num_threads(),
           "rss_after_build_mib": _status_kib("VmRSS") / 1024}
    base_kib = _status_kib("VmRSS")
    peak_reset = _reset_peak()

    def peak_mib():
        return (_status_kib("VmHWM") - base_kib) / 1024 if peak_reset else float("nan")

    def timed(f):
        t = time.perf_counter()
        out = f()
        return out, time.perf_counter() - t

    with torch.no_grad():
        w, res["extract_s"] = timed(lambda: W.extract_weights(bridge))
        L, D, d_model = w.W_in.shape
        N, V = L * D, w.W_E.shape[0]
        n_rows = len(layers) * D
        res["peak_after_extract_mib"] = peak_mib()

        _, res["attention_s"] = timed(lambda: W.attention_compositions(w, block_size))
        res["peak_after_attention_mib"] = peak_mib()
        _, res["vocab_subset_s"] = timed(lambda: W.vocab_compositions(w, block_size, layers=layers))
        res["peak_after_vocab_mib"] = peak_mib()
        _, res["neuron_subset_s"] = timed(lambda: W.neuron_compositions(w, block_size, layers=layers))
        res["peak_after_neuron_mib"] = peak_mib()
        _, res["neuron_stats_s"] = timed(lambda: W.neuron_stats(w))

        # GEMM floors: the same products, blockwise, nothing else
        def floor(rows, cols, n_kinds, n_rows):
            x, y = torch.randn(block_size, d_model), torch.randn(d_model, cols)
            t = time.perf_counter()
            for _ in range(-(-n_rows // block_size)):
                x @ y
            return n_kinds * (time.perf_counter() - t)

        H_cols = w.W_Q.shape[0] * w.W_Q.shape[1] * w.W_Q.shape[3]
        res["attention_floor_s"] = floor(N, H_cols, 4, N)
        res["vocab_subset_floor_s"] = floor(n_rows, V, 4, n_rows)
        res["neuron_subset_floor_s"] = floor(n_rows, N, 4, n_rows)

    scale = L / len(layers)
    res["estimated_full_s"] = (res["extract_s"] + res["attention_s"] + res["neuron_stats_s"]
                               + scale * (res["vocab_subset_s"] + res["neuron_subset_s"]))
    res["ru_maxrss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    res["summaries_peak_mib"] = peak_mib()
    return res


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--block_sizes", type=int, nargs="+", default=[128, 512, 2048])
    p.add_argument("--layers", type=int, nargs="+", default=[0], help="row layers timed for vocab/neuron stages")
    p.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker is not None:
        print(json.dumps(worker(args.worker, args.layers)))
        return

    rows = []
    for b in args.block_sizes:
        cmd = [sys.executable, __file__, "--worker", str(b), "--layers", *map(str, args.layers)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        r = json.loads(out.strip().splitlines()[-1])
        rows.append(r)
        print(json.dumps(r, indent=1), flush=True)

    print("\nblock | attention s (x floor) | vocab s/layer (x floor) | neuron s/layer (x floor) | "
          "est. full run s | summaries peak MiB | ru_maxrss MiB")
    for r in rows:
        nl = len(r["layers"])
        print(f"{r['block_size']:5d} | {r['attention_s']:7.1f} ({r['attention_s'] / r['attention_floor_s']:.2f}) | "
              f"{r['vocab_subset_s'] / nl:7.1f} ({r['vocab_subset_s'] / r['vocab_subset_floor_s']:.2f}) | "
              f"{r['neuron_subset_s'] / nl:7.1f} ({r['neuron_subset_s'] / r['neuron_subset_floor_s']:.2f}) | "
              f"{r['estimated_full_s']:7.0f} | {r['summaries_peak_mib']:7.0f} | {r['ru_maxrss_mib']:7.0f}")


if __name__ == "__main__":
    main()
