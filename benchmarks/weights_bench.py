"""Time and peak memory of the weight summaries on a random GPT2-small-shaped model.

    PYTHONPATH=. python benchmarks/weights_bench.py [--block_sizes 128 512 2048] [--layers 0]
    PYTHONPATH=. python benchmarks/weights_bench.py --shape medium --block_sizes 512 --skip_attention

Model: GPT2LMHeadModel with random weights, GPT2-small shape (12 layers, d_model 768, d_mlp 3072,
12 heads, vocab 50257) or GPT2-medium shape (24 layers, d_model 1024, d_mlp 4096, 16 heads),
wrapped in a TransformerBridge in compatibility mode, built in memory.
Each block size runs in its own subprocess so that peak-memory readings do not mix.

Per stage: wall time, and as a ratio to its GEMM floor measured in the same process (the bare
fp32 matmuls of the stage's shapes, no statistics). The vocab and neuron stages are timed on the
row neurons of `--layers` only (all columns, so the per-row cost is the full run's) and
extrapolated linearly to all 12 layers; the attention stage is run in full.

Memory (read before the GEMM floors run): the process's peak RSS (ru_maxrss, whole life:
includes building the HF model and the bridge) and the peak during the summaries alone (VmHWM reset through /proc/self/clear_refs after
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


SHAPES = {"small": dict(n_layer=12, n_embd=768, n_head=12, n_inner=3072),
          "medium": dict(n_layer=24, n_embd=1024, n_head=16, n_inner=4096)}


def worker(block_size: int, layers: list[int], shape: str, skip_attention: bool) -> dict:
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel
    from transformer_lens.model_bridge.sources._bridge_builder import build_bridge_from_module

    from universal_neurons import weights as W

    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=50257, **SHAPES[shape])
    bridge = build_bridge_from_module(GPT2LMHeadModel(cfg).eval(), "GPT2LMHeadModel", hf_config=cfg)
    bridge.enable_compatibility_mode()
    gc.collect()
    res = {"shape": shape, "block_size": block_size, "layers": layers, "threads": torch.get_num_threads(),
           "rss_after_build_mib": _status_kib("VmRSS") / 1024}
    base_kib = _status_kib("VmRSS")
    peak_reset = _reset_peak()

    def peak_mib():
        return (_status_kib("VmHWM") - base_kib) / 1024 if peak_reset else float("nan")

    cpu = {}

    def timed(f, name):
        """Wall seconds (returned) and CPU seconds of all threads (cpu[name]): on a shared machine
        the CPU time is the stable measure of work."""
        t, c = time.perf_counter(), time.process_time()
        out = f()
        cpu[name] = time.process_time() - c
        return out, time.perf_counter() - t

    with torch.no_grad():
        w, res["extract_s"] = timed(lambda: W.extract_weights(bridge), "extract")
        L, D, d_model = w.W_in.shape
        N, V = L * D, w.W_E.shape[0]
        n_rows = len(layers) * D
        res["peak_after_extract_mib"] = peak_mib()

        if skip_attention:
            res["attention_s"], cpu["attention"] = 0.0, 0.0
        else:
            _, res["attention_s"] = timed(lambda: W.attention_compositions(w, block_size), "attention")
        res["peak_after_attention_mib"] = peak_mib()
        _, res["vocab_subset_s"] = timed(lambda: W.vocab_compositions(w, block_size, layers=layers), "vocab_subset")
        res["peak_after_vocab_mib"] = peak_mib()
        _, res["neuron_subset_s"] = timed(lambda: W.neuron_compositions(w, block_size, layers=layers), "neuron_subset")
        res["peak_after_neuron_mib"] = peak_mib()
        _, res["neuron_stats_s"] = timed(lambda: W.neuron_stats(w), "neuron_stats")
        # memory readings before the GEMM floors below, which allocate their own matrices
        res["summaries_peak_mib"] = peak_mib()
        res["ru_maxrss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

        # GEMM floors: the same products, blockwise, nothing else
        def floor(cols, n_rows, name):
            x, y = torch.randn(block_size, d_model), torch.randn(d_model, cols)

            def gemms():
                for _ in range(4 * -(-n_rows // block_size)):  # 4 kinds
                    x @ y
            return timed(gemms, name)[1]

        H_cols = w.W_Q.shape[0] * w.W_Q.shape[1] * w.W_Q.shape[3]
        res["attention_floor_s"] = floor(H_cols, N if not skip_attention else 0, "attention_floor")
        res["vocab_subset_floor_s"] = floor(V, n_rows, "vocab_subset_floor")
        res["neuron_subset_floor_s"] = floor(N, n_rows, "neuron_subset_floor")

    scale = L / len(layers)
    res["estimated_full_s"] = (res["extract_s"] + res["attention_s"] + res["neuron_stats_s"]
                               + scale * (res["vocab_subset_s"] + res["neuron_subset_s"]))
    res["cpu_s"] = cpu
    res["estimated_full_cpu_s"] = (cpu["extract"] + cpu["attention"] + cpu["neuron_stats"]
                                   + scale * (cpu["vocab_subset"] + cpu["neuron_subset"]))
    return res


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--block_sizes", type=int, nargs="+", default=[128, 512, 2048])
    p.add_argument("--layers", type=int, nargs="+", default=[0], help="row layers timed for vocab/neuron stages")
    p.add_argument("--shape", choices=sorted(SHAPES), default="small")
    p.add_argument("--skip_attention", action="store_true", help="time only the vocab and neuron stages")
    p.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker is not None:
        print(json.dumps(worker(args.worker, args.layers, args.shape, args.skip_attention)))
        return

    rows = []
    for b in args.block_sizes:
        cmd = [sys.executable, __file__, "--worker", str(b), "--layers", *map(str, args.layers), "--shape", args.shape]
        cmd += ["--skip_attention"] if args.skip_attention else []
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        r = json.loads(out.strip().splitlines()[-1])
        rows.append(r)
        print(json.dumps(r, indent=1), flush=True)

    print("\nCPU seconds (all threads; x = ratio to the stage's bare GEMMs, same process)")
    print("block | attention (x) | vocab per layer (x) | neuron per layer (x) | est. full run CPU s (wall s) "
          "| summaries peak MiB | ru_maxrss MiB")
    for r in rows:
        nl, c = len(r["layers"]), r["cpu_s"]
        att = c["attention"] / c["attention_floor"] if c["attention"] else float("nan")
        print(f"{r['block_size']:5d} | {c['attention']:6.1f} ({att:.2f}) | "
              f"{c['vocab_subset'] / nl:6.1f} ({c['vocab_subset'] / c['vocab_subset_floor']:.2f}) | "
              f"{c['neuron_subset'] / nl:6.1f} ({c['neuron_subset'] / c['neuron_subset_floor']:.2f}) | "
              f"{r['estimated_full_cpu_s']:6.0f} ({r['estimated_full_s']:6.0f}) | "
              f"{r['summaries_peak_mib']:6.0f} | {r['ru_maxrss_mib']:6.0f}")


if __name__ == "__main__":
    main()
