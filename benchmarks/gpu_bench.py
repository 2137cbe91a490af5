"""The correlation job on its real path (forward passes included) against the GEMM floor, per precision.

Two random GPT-2 models built from configs and saved as local folders (no download), a random token
dataset, and the real driver (`correlations.run_correlations`, baselines none + rotation). For each
precision it reports:

  s_per_batch      the driver's batch loop per batch (after a warm-up run in the same process)
  floor_s          one x^T y GEMM of the same shape [T, N1] x [T, N2] and precision, measured here
  over_floor       s_per_batch / floor_s (the issue's target on a GPU: tf32 <= 1.6, bf16 <= 1.4)
  over_fwd_floor   s_per_batch / (forward of both models alone + floor_s) (CPU target <= 1.3)
  parts            seconds per batch of forward, centring + sums, Gram, cross GEMM (compensation
                   included in fp32), measured one at a time on one batch
  ops / kernels    aten ops (CPU) or CUDA kernels per batch (profiler, one steady-state batch step)
  syncs            ops that make the host wait for a GPU per batch (nonzero, item, ...; on CUDA
                   also torch.cuda.set_sync_debug_mode warnings)
  max_err          max |r - r_float64| over 48 model-1 rows x all model-2 neurons, the float64
                   reference from an fp32 forward over the same batches (so TF32 in the forward counts)
  peak_gb          peak memory of the driver run (CUDA allocator, or RSS above the start on a CPU)
  finalise_s       the finaliser (once per run, not per batch)

then the memory plan of GPT2-small and GPT2-medium pairs on 80 GB and 141 GB devices, and (with
--medium, the default on CUDA) one GPT2-medium pass (peak memory, seconds) and the main shape run as
two shards plus their streaming merge (peak memory of each). The last line is one JSON object.

    python benchmarks/gpu_bench.py                 # GPT2-small shapes on CUDA; CPU shapes on a CPU
    python benchmarks/gpu_bench.py --smoke --json  # seconds-long CPU run (the CI test)
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from correlation_bench import PeakMemory  # noqa: E402

from universal_neurons import correlations as C  # noqa: E402
from universal_neurons.correlation_stats import CorrelationStats, _centre_and_sum  # noqa: E402
from universal_neurons.device import matmul_precision, resolve_device, synchronize  # noqa: E402

SYNC_OPS = ("aten::nonzero", "aten::item", "aten::_local_scalar_dense", "aten::masked_select", "aten::is_nonzero")
SHAPES = {  # layers, d_model, d_mlp, heads, ctx, batch
    "gpt2-small": (12, 768, 3072, 12, 512, 32),
    "gpt2-medium": (24, 1024, 4096, 16, 512, 32),
    "cpu": (12, 128, 512, 4, 64, 32),
    "smoke": (3, 32, 64, 2, 32, 4),
}


def build_model(folder: Path, layers, d_model, d_mlp, heads, ctx, seed) -> str:
    from transformers import GPT2Config, GPT2LMHeadModel

    from universal_neurons.tokenizer import gpt2_tokenizer

    tok = gpt2_tokenizer()
    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=len(tok), n_positions=max(ctx, 64), n_embd=d_model, n_layer=layers, n_head=heads,
                     n_inner=d_mlp, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    GPT2LMHeadModel(cfg).eval().save_pretrained(str(folder))
    tok.save_pretrained(str(folder))
    return str(folder)


def make_dataset(name, n_seq, ctx, seed) -> None:
    from universal_neurons.token_datasets import save_token_dataset
    from universal_neurons.tokenizer import gpt2_tokenizer

    tok = gpt2_tokenizer()
    rows = np.random.default_rng(seed).integers(0, len(tok), size=(n_seq, ctx))
    rows[:, 0] = tok.bos_token_id                    # as real rows: BOS first (left out by the mask)
    save_token_dataset(rows, "gpt2", name, tok)


@contextlib.contextmanager
def timed_batches(device, out: dict):
    """Time the driver's batch loop and its finaliser, and keep the statistics it finalises."""
    real_batches, real_add = C._Run._batches, C.CorrelationFinalizer.add

    def batches(self, *a, **k):
        synchronize(device)
        t0 = time.perf_counter()
        real_batches(self, *a, **k)
        synchronize(device)
        out["batches_s"] = out.get("batches_s", 0.0) + time.perf_counter() - t0

    def add(self, stats, *a, **k):
        out["stats"] = stats
        t0 = time.perf_counter()
        real_add(self, stats, *a, **k)
        synchronize(device)
        out["finalise_s"] = out.get("finalise_s", 0.0) + time.perf_counter() - t0

    C._Run._batches, C.CorrelationFinalizer.add = batches, add
    try:
        yield out
    finally:
        C._Run._batches, C.CorrelationFinalizer.add = real_batches, real_add


def driver(a, b, dataset, precision, device, n_seq, batch, **extra):
    config = C.CorrelationConfig(model_1_name=a, model_2_name=[b], token_dataset=dataset, baseline=["none", "rotation"],
                                 batch_size=batch, n_seq=n_seq, precision=precision, model_1_device=str(device),
                                 model_2_device=str(device), correlation_device=str(device), overwrite=True, **extra)
    return C.run_correlations(config)


def gemm_floor(t, n1, n2, precision, device, repeats=5) -> float:
    """Seconds of one x^T y GEMM [T, N1] x [T, N2] -> float32 [N1, N2] in this precision (median)."""
    g = torch.Generator(device=device).manual_seed(0)
    x = torch.nn.functional.gelu(torch.randn(t, n1, generator=g, device=device))
    y = torch.nn.functional.gelu(torch.randn(t, n2, generator=g, device=device))
    acc = torch.zeros(n1, n2, device=device)
    low = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    if low is not None:
        x, y = x.to(low), y.to(low)
    times = []
    with matmul_precision(precision):
        for i in range(repeats + 1):
            synchronize(device)
            t0 = time.perf_counter()
            if low is not None and device.type == "cuda":
                torch.addmm(acc, x.t(), y, out_dtype=torch.float32, out=acc)
            elif low is not None:      # a CPU has no bf16 GEMM with float32 output: the emulation's cost
                acc.addmm_(x.t().float(), y.float())
            else:
                acc.addmm_(x.t(), y)
            synchronize(device)
            if i:
                times.append(time.perf_counter() - t0)
    return float(np.median(times))


def batch_inputs(a_model, b_model, dataset, batch, device):
    from universal_neurons.capture import keep_rows, token_mask
    from universal_neurons.device import to_device
    from universal_neurons.token_datasets import load_token_dataset, token_tensor

    ds = load_token_dataset(dataset, "gpt2", a_model.tokenizer)
    tokens = token_tensor(ds, 0, batch)
    rows = keep_rows(token_mask(tokens, a_model.tokenizer))
    return to_device(tokens, device), to_device(rows, device)


def parts_and_counts(a_model, b_model, tokens, rows, precision, device) -> dict:
    """One batch's parts, timed one at a time, and the ops / kernels / syncs of one steady-state step."""
    from torch.profiler import ProfilerActivity, profile

    from universal_neurons.capture import masked_activations

    L2, D2 = b_model.cfg.n_layers, b_model.cfg.d_mlp
    n1 = a_model.cfg.n_layers * a_model.cfg.d_mlp
    stats = CorrelationStats(n_rows=n1, layers_2=L2, d_2=D2, baselines=("none", "rotation"), device=device,
                             precision=precision)

    def step():
        x = masked_activations(a_model, tokens, rows)
        y = masked_activations(b_model, tokens, rows)
        stats.update(x, y, overwrite_inputs=True)

    def clock(fn, repeats=3):
        out = []
        for _ in range(repeats):
            synchronize(device)
            t0 = time.perf_counter()
            fn()
            synchronize(device)
            out.append(time.perf_counter() - t0)
        return float(np.median(out))

    with matmul_precision(precision):
        step()                                                             # warm: shifts, caches
        x = masked_activations(a_model, tokens, rows)
        y = masked_activations(b_model, tokens, rows)
        parts = {"forward": clock(lambda: (masked_activations(a_model, tokens, rows), masked_activations(b_model, tokens, rows)))}
        parts["centre_sums"] = clock(lambda: (_centre_and_sum(x.clone(), stats.x_shift), _centre_and_sum(y.clone(), stats.streams["data"].shift, squares=False)))
        y_l = y.view(y.shape[0], L2, D2)
        parts["gram"] = clock(lambda: torch.bmm(y_l.permute(1, 2, 0), y_l.permute(1, 0, 2)))
        parts["cross_gemm"] = clock(lambda: stats._accumulate_cross(stats.streams["data"], x, y))
        parts["step"] = clock(step)
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        with profile(activities=activities) as prof:
            step()
            synchronize(device)
        names = collections.Counter(e.name for e in prof.events() if e.device_type == torch.autograd.DeviceType.CPU)
        kernels = sum(1 for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA)
        syncs = sum(v for k, v in names.items() if k in SYNC_OPS)
        if device.type == "cuda":
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                torch.cuda.set_sync_debug_mode("warn")
                try:
                    step()
                finally:
                    torch.cuda.set_sync_debug_mode("default")
            syncs = max(syncs, sum(1 for w in caught if "synchroniz" in str(w.message)))
    return {"parts": parts, "ops": sum(v for k, v in names.items() if k.startswith("aten::")),
            "kernels": kernels, "syncs": syncs, "tokens": int(rows.numel())}


def reference_error(a_model, b_model, dataset, stats, n_seq, batch, device, n_rows=48) -> float:
    """max |r - r64| for n_rows model-1 rows in 3 blocks x all model-2 neurons; r64 from float64 sums of
    an fp32 forward over the same batches."""
    from universal_neurons.capture import keep_rows, masked_activations, token_mask
    from universal_neurons.device import to_device
    from universal_neurons.token_datasets import load_token_dataset, token_tensor

    n1 = stats.n_rows
    k = n_rows // 3
    pick = torch.cat([torch.arange(0, k), torch.arange(n1 // 2, n1 // 2 + k), torch.arange(n1 - k, n1)]).to(device)
    ds = load_token_dataset(dataset, "gpt2", a_model.tokenizer)
    n = 0
    with matmul_precision("fp32"):
        for lo in range(0, n_seq, batch):
            tokens = token_tensor(ds, lo, min(lo + batch, n_seq))
            rows = keep_rows(token_mask(tokens, a_model.tokenizer))
            tokens, rows = to_device(tokens, device), to_device(rows, device)
            x = masked_activations(a_model, tokens, rows).index_select(1, pick).double()   # [T, n_rows]
            y = masked_activations(b_model, tokens, rows).double()                      # [T, N2]
            if n == 0:
                sx, sxx, sy, syy = x.sum(0), (x * x).sum(0), y.sum(0), (y * y).sum(0)
                sxy = x.t() @ y
            else:
                sx += x.sum(0); sxx += (x * x).sum(0); sy += y.sum(0); syy += (y * y).sum(0)  # noqa: E702
                sxy += x.t() @ y
            n += x.shape[0]
    cov = sxy - torch.outer(sx, sy) / n
    ref = cov / torch.outer((sxx - sx * sx / n).sqrt(), (syy - sy * sy / n).sqrt())
    row_inv, _ = stats.row_scale()
    col_inv, _ = stats.col_scale("data")
    got = []
    for r0 in (0, n1 // 2, n1 - k):
        got.append(stats.similarity_block(stats.cross_block("data", r0, r0 + k), r0, "data", None, row_inv, col_inv))
    err = (torch.cat(got).double() - ref).abs()
    return float(err[torch.isfinite(ref)].max())


def memory_plans() -> list[dict]:
    out = []
    for name in ("gpt2-small", "gpt2-medium"):
        L, d, dm, H, ctx, B = SHAPES[name]
        for precision in ("fp32", "tf32", "bf16"):
            for gb in (80, 141):
                plan = C.gpt2_pair_plan(L, d, dm, H, precision, gb, batch=B, ctx=ctx)
                out.append({"pair": name, "precision": precision, "device_gb": gb, "tiles": len(plan.tiles),
                            "peak_gb": round(plan.peak / 2 ** 30, 1)})
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto")
    p.add_argument("--shape", choices=list(SHAPES), default=None, help="default: gpt2-small on CUDA, cpu on a CPU")
    p.add_argument("--batches", type=int, default=None, help="batches per measured run (default 6 on CUDA, 3 on a CPU)")
    p.add_argument("--precisions", nargs="+", default=None, help="default: fp32 tf32 bf16 on CUDA, fp32 bf16 on a CPU")
    p.add_argument("--medium", action=argparse.BooleanOptionalAction, default=None,
                   help="also a GPT2-medium two-shard pass and merge (default: on CUDA)")
    p.add_argument("--smoke", action="store_true", help="tiny shapes on a CPU (the CI test)")
    p.add_argument("--json", action="store_true", help="print only the JSON line")
    args = p.parse_args(argv)
    device = resolve_device(args.device)
    cuda = device.type == "cuda"
    shape = "smoke" if args.smoke else (args.shape or ("gpt2-small" if cuda else "cpu"))
    precisions = args.precisions or (["fp32", "tf32", "bf16"] if cuda else ["fp32", "bf16"])
    n_batches = args.batches or (6 if cuda else 2 if args.smoke else 3)
    medium = (cuda and not args.smoke) if args.medium is None else args.medium
    L, d, dm, H, ctx, B = SHAPES[shape]
    say = (lambda *a: None) if args.json else print
    result = {"device": str(device) + (f" ({torch.cuda.get_device_name(device)})" if cuda else ""),
              "threads": torch.get_num_threads(), "shape": shape, "batch_tokens": B * ctx, "batches": n_batches,
              "n1": L * dm, "n2": L * dm, "modes": {}}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        os.environ.update(RESULTS_DIR=str(root / "results"), DATASET_DIR=str(root / "datasets"))
        t0 = time.perf_counter()
        a = build_model(root / "a", L, d, dm, H, ctx, 1)
        b = build_model(root / "b", L, d, dm, H, ctx, 2)
        make_dataset("bench", (n_batches + 1) * B, ctx, 0)
        say(f"built two {shape} models ({L} x {dm} neurons) and {(n_batches + 1) * B} x {ctx} tokens in "
            f"{time.perf_counter() - t0:.1f} s")
        from universal_neurons.models import load_model

        a_model, b_model = load_model(a, device=str(device)), load_model(b, device=str(device))
        tokens, rows = batch_inputs(a_model, b_model, "bench", B, device)
        for precision in precisions:
            with contextlib.redirect_stdout(sys.stderr if args.json else sys.stdout):
                driver(a, b, "bench", precision, device, B, B)                      # warm-up: one batch
                timing = {}
                with timed_batches(device, timing), PeakMemory(device) as peak:
                    driver(a, b, "bench", precision, device, n_batches * B, B)
            mode = parts_and_counts(a_model, b_model, tokens, rows, precision, device)
            floor = gemm_floor(mode["tokens"], L * dm, L * dm, precision, device)
            per_batch = timing["batches_s"] / n_batches
            mode.update(s_per_batch=per_batch, floor_s=floor, over_floor=per_batch / floor,
                        over_fwd_floor=per_batch / (mode["parts"]["forward"] + floor),
                        finalise_s=timing["finalise_s"], peak_gb=peak.peak / 2 ** 30,
                        max_err=reference_error(a_model, b_model, "bench", timing["stats"], n_batches * B, B, device))
            result["modes"][precision] = mode
            say(f"{precision:5s} {per_batch:8.4f} s/batch  floor {floor:.4f} s  x{mode['over_floor']:.2f} of the floor, "
                f"x{mode['over_fwd_floor']:.2f} of forward + floor; parts "
                + ", ".join(f"{k} {v:.4f}" for k, v in mode["parts"].items())
                + f"; {mode['ops']} ops, {mode['kernels']} kernels, {mode['syncs']} syncs per batch; "
                f"max err {mode['max_err']:.1e}; peak {mode['peak_gb']:.2f} GB; finalise {mode['finalise_s']:.2f} s")
        del a_model, b_model
        result["memory_plans"] = memory_plans()
        for row in result["memory_plans"]:
            say(f"plan {row['pair']:12s} {row['precision']:5s} on {row['device_gb']:3d} GB: {row['tiles']} tile(s), "
                f"peak ~{row['peak_gb']} GiB")
        if medium:  # one GPT2-medium pass (one tile where the plan allows); a two-shard merge of the main shape
            mshape = "gpt2-medium" if cuda else shape
            Lm, dmm, dmlp, Hm, ctxm, Bm = SHAPES[mshape]
            ma = build_model(root / "ma", Lm, dmm, dmlp, Hm, ctxm, 3)
            mb = build_model(root / "mb", Lm, dmm, dmlp, Hm, ctxm, 4)
            make_dataset("bench-m", 2 * Bm, ctxm, 1)
            prec = "tf32" if cuda else "fp32"
            peaks = {}
            with contextlib.redirect_stdout(sys.stderr if args.json else sys.stdout):
                with PeakMemory(device) as pk:
                    t0 = time.perf_counter()
                    driver(ma, mb, "bench-m", prec, device, 2 * Bm, Bm)
                peaks[f"{mshape}_pass"], peaks[f"{mshape}_pass_s"] = pk.peak / 2 ** 30, time.perf_counter() - t0
                for i in (0, 1):   # shard files of the main shape: 5.4 GB each for GPT2-small in tf32
                    with PeakMemory(device) as pk:
                        driver(a, b, "bench", prec, device, 2 * B, B, num_shards=2, shard_index=i)
                    peaks[f"shard_{i}"] = pk.peak / 2 ** 30
                with PeakMemory(device) as pk:
                    driver(a, b, "bench", prec, device, 2 * B, B, merge=True)
                peaks["merge"] = pk.peak / 2 ** 30
            result["medium"] = {"shape": mshape, "precision": prec, **{k: round(v, 2) for k, v in peaks.items()}}
            say(f"{mshape} pair, {prec}, one pass of {2 * Bm} sequences: peak {peaks[mshape + '_pass']:.1f} GB, "
                f"{peaks[mshape + '_pass_s']:.0f} s; {shape} two shards: peak {peaks['shard_0']:.1f} / "
                f"{peaks['shard_1']:.1f} GB, streaming merge {peaks['merge']:.1f} GB")
    print(json.dumps(result, default=float))
    return result


if __name__ == "__main__":
    main()
