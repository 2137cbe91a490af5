"""Correlation engine vs the original algorithm vs the bare GEMM floor, in one process.

Synthetic GELU activations with real structure (a shared latent drives both "models"), default
12 layers x 256 neurons per model and 32,768 tokens. Timed, interleaved, `--repeats` times:

  (a) engine:   CorrelationStats with baselines none + rotation in ONE pass (batches of
                --batch-tokens), then CorrelationFinalizer: both summaries of both baselines.
  (b) original: the original correlations_fast.py algorithm, re-implemented faithfully: fp16
                activations [layer, neuron, token], for every layer pair a cast to fp32 and a
                [D1, T] x [T, D2] product added into a float64 [L1, D1, L2, D2] accumulator
                (on a GPU that add was also a device-to-host copy), per-neuron sums; then a SECOND
                full pass for the rotation baseline (its rotation applied per batch, here in fp32,
                which is generous to it); then the full correlation matrix and its summaries.
                --original-fp32 keeps its activations in fp32 (no per-pair casts): a kinder variant.
  (c) floor:    one X^T Y GEMM over all tokens, same shapes and dtype as (a)'s products.

Prints a table, then as its LAST line one JSON object (medians over the repeats):
  engine_s      (a)'s pass over the data (the part that grows with tokens), Gram matrices included
  original_s    (b)'s two passes;  floor_s  (c)
  engine_over_floor, original_over_engine (ratios of medians) and *_paired (medians of the
                per-repeat ratios: steadier on a shared machine)
  engine_finalize_s / original_finalize_s and *_total_s: finalising, O(N1 N2) whatever the token
                count, reported apart (at 32k tokens it is large next to the pass; at the paper's
                1e8 tokens it is noise)
  max_abs_err   engine Pearson (none) vs a float64 reference on --ref-rows model-1 neurons;
                max_abs_err_rotation: rotation baseline vs explicitly rotated data in float64;
                original_max_abs_err: the original's (fp16 activations) vs the same reference
  peak_mem_gb   engine's peak memory above its inputs during the pass (CUDA allocator peak, or RSS
                sampled every 2 ms on CPU); peak_mem_gb_with_finalize, state_gb, accumulator_gb
                (the fp32 [N1, N2] size) and gram_gb for scale
--json prints only that line.

    PYTHONPATH=. python benchmarks/correlation_bench.py [--layers 12 --neurons 256 --tokens 32768]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import threading
import time

import numpy as np
import torch

from universal_neurons.correlations import (
    CorrelationFinalizer, CorrelationStats, bin_edges, rotate_layers, rotation_matrices,
)
from universal_neurons.device import resolve_device, synchronize


def synthetic(tokens, layers, neurons, seed, mean_offset, device):
    """x, y [tokens, layers*neurons] float32: GELU(shared latent @ W + noise), neuron-wise offsets."""
    g = torch.Generator(device=device).manual_seed(seed)
    n = layers * neurons
    z = torch.randn(tokens, 64, generator=g, device=device)
    out = []
    for _ in range(2):
        w = torch.randn(64, n, generator=g, device=device) * (torch.rand(n, generator=g, device=device) * 0.5)
        pre = z @ w + torch.randn(tokens, n, generator=g, device=device) - 0.5
        act = torch.nn.functional.gelu(pre)
        if mean_offset:
            act = act / act.std(0) + mean_offset           # mean = mean_offset x std
        out.append(act)
    return out


_clock = time.perf_counter


class PeakMemory:
    """Peak memory above the level at entry: CUDA allocator peak, or RSS sampled every 2 ms."""

    def __init__(self, device):
        self.device, self.peak = device, 0

    def _rss(self):
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            self.base, self.stop = self._rss(), False
            self.thread = threading.Thread(target=self._poll, daemon=True)
            self.thread.start()
        return self

    def _poll(self):
        while not self.stop:
            self.peak = max(self.peak, self._rss() - self.base)
            time.sleep(0.002)

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated() - self.base
        else:
            self.stop = True
            self.thread.join()
            self.peak = max(self.peak, self._rss() - self.base)


def run_engine(x, y, args, device, gemm_dtype):
    """(a): one pass for none + rotation, then all summaries. Returns (timings, stats)."""
    L, D = args.layers, args.neurons
    bt = args.batch_tokens
    batches = [(x[i:i + bt].clone(), y[i:i + bt].clone()) for i in range(0, x.shape[0], bt)]   # fresh "model outputs"
    with PeakMemory(device) as mem:
        with PeakMemory(device) as mem_acc:
            synchronize(device)
            t0 = _clock()
            stats = CorrelationStats(n_rows=L * D, layers_2=L, d_2=D, baselines=("none", "rotation"), seed=0,
                                     device=device, gemm_dtype=gemm_dtype, allow_tf32=args.dtype == "tf32")
            for i, (xb, yb) in enumerate(batches):
                stats.update(xb, yb, batch_id=i, overwrite_inputs=True)
            synchronize(device)
            t1 = _clock()
        fin = CorrelationFinalizer(L * D, L, D, ("none", "rotation"), seed=0, device=device)
        fin.add(stats)
        fin.results()
        synchronize(device)
        t2 = _clock()
    return {"accumulate": t1 - t0, "finalize": t2 - t1, "total": t2 - t0, "peak_mem": mem.peak,
            "peak_mem_accumulate": mem_acc.peak}, stats


def original_summary(corr):
    """The original's summaries, computed on the full [N1, N2] matrix, rows and columns."""
    edges = bin_edges(corr.device)
    out = []
    for m in (corr, corr.t()):
        m = m.float()
        b = torch.bucketize(m, edges)
        bins = torch.zeros(m.shape[0], 101, dtype=torch.int32, device=m.device).scatter_add_(
            1, b, torch.ones_like(b, dtype=torch.int32))
        mean = m.mean(1)
        var = m.var(1)
        cen = m - mean[:, None]
        out.append((m.max(1), m.min(1), m.topk(50, 1), m.topk(50, 1, largest=False), bins, mean, var,
                    (cen ** 3).mean(1) / var ** 1.5, (cen ** 4).mean(1) / var ** 2, m.diagonal()))
    return out


def run_original(x16, y16, args, device, rotations):
    """(b): the original structure, two passes (none, rotation), full-matrix finalise each.
    Returns ({"accumulate", "finalize", "total"} seconds, {baseline: [N1, N2] float16})."""
    L, D = args.layers, args.neurons
    bt = args.batch_tokens
    corr = {}
    t_acc = t_fin = 0.0
    for baseline in ("none", "rotation"):
        synchronize(device)
        t0 = _clock()
        acc = torch.zeros(L, D, L, D, dtype=torch.float64)              # host accumulator
        s1 = torch.zeros(L, D, dtype=torch.float64)
        q1 = torch.zeros_like(s1)
        s2, q2 = torch.zeros_like(s1), torch.zeros_like(s1)
        n = 0
        for i in range(0, x16.shape[-1], bt):
            a = x16[..., i:i + bt]                                       # [L, D, T]
            b = y16[..., i:i + bt]
            if baseline == "rotation":
                b = torch.bmm(rotations, b.float()).to(b.dtype)
            for l1 in range(L):
                a_l1 = a[l1].to(torch.float32)
                for l2 in range(L):
                    acc[l1, :, l2, :] += (a_l1 @ b[l2].to(torch.float32).t()).cpu()
            s1 += a.float().sum(-1).cpu()
            q1 += a.float().square().sum(-1).cpu()
            s2 += b.float().sum(-1).cpu()
            q2 += b.float().square().sum(-1).cpu()
            n += a.shape[-1]
        synchronize(device)
        t1 = _clock()
        layer_corrs = []
        for l1 in range(L):
            num = acc[l1] - torch.einsum("n,lm->nlm", s1[l1], s2) / n
            n1 = (q1[l1] - s1[l1] ** 2 / n).sqrt()
            n2 = (q2 - s2 ** 2 / n).sqrt()
            layer_corrs.append((num / torch.einsum("n,lm->nlm", n1, n2)).to(torch.float16))
        c = torch.stack(layer_corrs).to(device).view(L * D, L * D)
        original_summary(c)
        corr[baseline] = c
        synchronize(device)
        t_acc, t_fin = t_acc + t1 - t0, t_fin + _clock() - t1
    return {"accumulate": t_acc, "finalize": t_fin, "total": t_acc + t_fin}, corr


def run_floor(x, y, device, gemm_dtype):
    if gemm_dtype in (torch.bfloat16, torch.float16):
        x, y = x.to(gemm_dtype), y.to(gemm_dtype)
    synchronize(device)
    t0 = _clock()
    if gemm_dtype in (torch.bfloat16, torch.float16):
        torch.mm(x.t(), y, out_dtype=torch.float32)
    else:
        torch.mm(x.t(), y)
    synchronize(device)
    return _clock() - t0


def reference(x, y, rows, rotations):
    """float64 Pearson of model-1 neurons `rows` vs all of model 2, plain and rotated."""
    xr = x[:, rows].double()
    xr -= xr.mean(0)
    out = []
    for yy in (y.double(), rotate_layers(y.double(), rotations)):
        yy -= yy.mean(0)
        out.append((xr.t() @ yy) / torch.outer(xr.norm(dim=0), yy.norm(dim=0)))
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--neurons", type=int, default=256)
    p.add_argument("--tokens", type=int, default=32768)
    p.add_argument("--batch-tokens", type=int, default=16384, help="tokens per batch (paper: 32 x 512)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "tf32", "bfloat16", "float16"],
                   help="GEMM precision of the engine and the floor")
    p.add_argument("--mean-offset", type=float, default=0.0, help="give every neuron mean = this x its std")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--ref-rows", type=int, default=256, help="model-1 neurons checked against float64")
    p.add_argument("--original-fp32", action="store_true", help="original with fp32 activations (kinder)")
    p.add_argument("--skip-original", action="store_true")
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    p.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                   help="cpu = process CPU time: steadier on a shared machine, meaningful with --threads 1")
    p.add_argument("--json", action="store_true", help="print only the JSON line")
    args = p.parse_args(argv)
    device = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.clock == "cpu":
        if device.type == "cuda":
            raise SystemExit("--clock cpu is for CPU runs")
        global _clock
        _clock = time.process_time
    gemm_dtype = {"float32": torch.float32, "tf32": torch.float32,
                  "bfloat16": torch.bfloat16, "float16": torch.float16}[args.dtype]
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = args.dtype == "tf32"
    say = (lambda *a: None) if args.json else print

    x, y = synthetic(args.tokens, args.layers, args.neurons, 0, args.mean_offset, device)
    L, D = args.layers, args.neurons
    act_dtype = torch.float32 if args.original_fp32 else torch.float16
    x16 = x.t().reshape(L, D, -1).to(act_dtype).contiguous()            # the original's layout
    y16 = y.t().reshape(L, D, -1).to(act_dtype).contiguous()
    rotations = rotation_matrices(0, 0, L, D, device)
    say(f"{L} layers x {D} neurons per model, {args.tokens} tokens, batches of {args.batch_tokens}, "
        f"{args.dtype} on {device} ({torch.get_num_threads()} threads), mean offset {args.mean_offset}")

    times = {"engine": [], "finalize": [], "engine_total": [], "original": [], "original_finalize": [],
             "original_total": [], "floor": []}
    peak = peak_acc = 0
    stats = corr_orig = None
    for rep in range(args.repeats):
        order = ["engine", "original", "floor"][rep % 3:] + ["engine", "original", "floor"][:rep % 3]
        for what in order:
            if what == "engine":
                t, stats = run_engine(x, y, args, device, gemm_dtype)
                times["engine"].append(t["accumulate"])
                times["finalize"].append(t["finalize"])
                times["engine_total"].append(t["total"])
                peak = max(peak, t["peak_mem"])
                peak_acc = max(peak_acc, t["peak_mem_accumulate"])
            elif what == "original" and not args.skip_original:
                t, corr_orig = run_original(x16, y16, args, device, rotations.float())
                times["original"].append(t["accumulate"])
                times["original_finalize"].append(t["finalize"])
                times["original_total"].append(t["total"])
            elif what == "floor":
                times["floor"].append(run_floor(x, y, device, gemm_dtype))
        say(f"  repeat {rep}: " + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in times.items() if v))

    med = {k: statistics.median(v) if v else None for k, v in times.items()}
    rows = torch.linspace(0, L * D - 1, min(args.ref_rows, L * D)).round().long().to(device)
    ref, ref_rot = reference(x, y, rows, rotations)
    got = stats.correlation_matrix("none")[rows].double()
    got_rot = stats.correlation_matrix("rotation")[rows].double()
    err = float((got - ref).abs().nan_to_num().max())
    err_rot = float((got_rot - ref_rot).abs().nan_to_num().max())
    err_orig = None if corr_orig is None else float((corr_orig["none"][rows].double() - ref).abs().nan_to_num().max())
    n1 = n2 = L * D
    r = lambda v: None if v is None else round(v, 4)
    paired = lambda a, b: round(statistics.median(x / y for x, y in zip(a, b)), 3) if a and b else None
    ratio = lambda a, b: None if a is None or b is None else round(a / b, 3)
    result = {
        "engine_s": r(med["engine"]), "original_s": r(med["original"]), "floor_s": r(med["floor"]),
        "max_abs_err": err, "peak_mem_gb": round(peak_acc / 2 ** 30, 4),
        "engine_over_floor": ratio(med["engine"], med["floor"]),
        "original_over_engine": ratio(med["original"], med["engine"]),
        # paired: median over repeats of the ratio within a repeat (adjacent in time, so steadier
        # when other jobs load the machine)
        "engine_over_floor_paired": paired(times["engine"], times["floor"]),
        "original_over_engine_paired": paired(times["original"], times["engine"]),
        "engine_finalize_s": r(med["finalize"]), "engine_total_s": r(med["engine_total"]),
        "original_finalize_s": r(med["original_finalize"]), "original_total_s": r(med["original_total"]),
        "total_original_over_engine": ratio(med["original_total"], med["engine_total"]),
        "max_abs_err_rotation": err_rot, "original_max_abs_err": err_orig,
        "peak_mem_gb_with_finalize": round(peak / 2 ** 30, 4), "state_gb": round(stats.nbytes() / 2 ** 30, 4),
        "accumulator_gb": round(n1 * n2 * 4 / 2 ** 30, 4), "gram_gb": round(L * D * D * 8 / 2 ** 30, 4),
        "layers": L, "neurons": D, "tokens": args.tokens, "batch_tokens": args.batch_tokens,
        "dtype": args.dtype, "device": str(device), "threads": torch.get_num_threads(), "clock": args.clock,
        "mean_offset": args.mean_offset, "original_activations": "fp32" if args.original_fp32 else "fp16",
        "repeats": args.repeats,
    }
    say("")
    say(f"{'median seconds':34}{'s':>9}{'x floor':>9}")
    rows_ = (("(a) engine: one pass, none + rotation", "engine"), ("    + finalise (4 summaries)", "finalize"),
             ("    total", "engine_total"), ("(b) original: two passes", "original"),
             ("    + finalise (full matrices)", "original_finalize"), ("    total", "original_total"),
             ("(c) floor: one X^T Y GEMM", "floor"))
    for name, key in rows_:
        if med[key] is not None:
            say(f"{name:34}{med[key]:9.3f}{med[key] / med['floor']:9.2f}")
    say(f"paired per-repeat ratios: (a)/(c) {result['engine_over_floor_paired']}, "
        f"(b)/(a) {result['original_over_engine_paired']}")
    say(f"(b)/(a) passes {result['original_over_engine']}, totals {result['total_original_over_engine']}; "
        f"engine max |err| {err:.2e} (rotation {err_rot:.2e}; original {err_orig if err_orig is None else f'{err_orig:.2e}'})")
    say(f"engine peak memory above its inputs: {result['peak_mem_gb']:.3f} GB in the pass, "
        f"{result['peak_mem_gb_with_finalize']:.3f} GB with finalise (state {result['state_gb']:.3f} GB = "
        f"fp32 accumulator {result['accumulator_gb']:.3f} x 1.5 + Gram {result['gram_gb']:.3f})")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
