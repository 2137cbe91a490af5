"""The GPU path's pieces, tested on a CPU: precision modes against float64, the memory plan, the
streaming merge, and the capture (early stop, gather without a boolean mask, no host syncs)."""
import collections

import numpy as np
import pytest
import torch

from test_correlations import D2, L2, N1, gelu_data, ref_pearson, run, tiny_models, token_data  # noqa: F401 (fixtures)
from universal_neurons.correlations import CorrelationStats, gpt2_pair_plan, plan_memory
from universal_neurons.errors import UserError


def adversarial(t=6000):
    """GELU data with a 1000x-std mean on half the neurons, a constant and a NaN model-1 neuron."""
    x, y = gelu_data(t=t, seed=3)
    x[:, : N1 // 2] = x[:, : N1 // 2] / x[:, : N1 // 2].std(0) + 1000.0
    y[:, :8] = y[:, :8] / y[:, :8].std(0) - 500.0
    x[:, 5] = 2.5
    x[100, 7] = float("nan")
    return x, y


@pytest.mark.parametrize("precision, tol", [("fp32", 1e-5), ("tf32", 1e-5), ("bf16", 1e-3), ("fp16", 2e-4)])
def test_precision_modes_against_float64(precision, tol):
    """Each mode's accumulation path (fp32 compensated; tf32 direct fp32 addmm, which is what a CPU
    does with tf32's code path; bf16 / fp16: inputs rounded, fp32 products) vs a float64 reference,
    with large means, a constant and a NaN neuron; dead neurons stay NaN in every mode."""
    x, y = adversarial()
    stats = run(x, y, batch=700, precision=precision)
    assert stats.compensated == (precision == "fp32")
    assert all((s.lo is None) != stats.compensated for s in stats.streams.values())
    got = stats.correlation_matrix().double().numpy()
    ref = ref_pearson(x, y)
    dead = np.isnan(ref)
    assert np.array_equal(np.isnan(got), dead) and dead[5].all() and dead[7].all()
    err = np.abs(got - ref)[~dead].max()
    assert err <= tol, (precision, err)
    if precision in ("bf16", "fp16"):  # the rounding is real: the error is not fp32's
        assert err > 1e-5, err


def test_uncompensated_resume_and_merge_mix_with_compensated(tmp_path):
    """A tf32 checkpoint resumed in fp32 (and the other way) and shards of both kinds merged: all equal
    the single fp32 run to float32 rounding."""
    x, y = adversarial(3000)
    whole = run(x, y, precision="fp32").correlation_matrix()
    a = run(x[:1400], y[:1400], precision="tf32")
    a.save(tmp_path / "a.pt")
    b = run(x[1400:], y[1400:], precision="fp32")
    b.save(tmp_path / "b.pt")
    resumed, _ = CorrelationStats.load(tmp_path / "a.pt", precision="fp32")
    assert resumed.compensated and all(s.lo is not None for s in resumed.streams.values())
    for i in range(1400, 3000, 700):
        resumed.update(x[i:i + 700], y[i:i + 700])
    torch.testing.assert_close(resumed.correlation_matrix(), whole, atol=2e-5, rtol=0, equal_nan=True)
    for prec in ("fp32", "tf32"):
        merged = CorrelationStats(n_rows=N1, layers_2=L2, d_2=D2, precision=prec)
        for p in ("b.pt", "a.pt"):
            st, _ = CorrelationStats.load(tmp_path / p, mmap=True, precision=prec)
            merged.merge(st, chunk_bytes=8 * 3 * 48)   # 3 rows a chunk: the streaming path, many chunks
        torch.testing.assert_close(merged.correlation_matrix(), whole, atol=2e-5, rtol=0, equal_nan=True)


def test_streaming_merge_equals_in_memory_merge():
    """Row chunks of a few rows give the same merged statistics as one chunk of everything."""
    x, y = gelu_data(t=2000, seed=1)
    parts = [run(x[i:i + 500], y[i:i + 500], baselines=("none", "rotation")) for i in range(0, 2000, 500)]
    one, many = (CorrelationStats(n_rows=N1, layers_2=L2, d_2=D2, baselines=("none", "rotation")) for _ in range(2))
    for p in parts:
        one.merge(p, chunk_bytes=1 << 30)
        many.merge(p, chunk_bytes=8 * 48 * 2)
    for name in one.streams:
        for k, t in one.streams[name].tensors().items():
            if t is not None:
                assert torch.equal(t, getattr(many.streams[name], k)), (name, k)


GIB = 2 ** 30


def test_memory_plan_for_gpt2_pairs():
    """GPT2-medium none + rotation: one tile on an H200 in every precision and on an 80 GB card in tf32
    (whose accumulator has no error term); two balanced tiles of whole layers on 80 GB in fp32. Every
    plan's peak stays within its budget, and the accumulator is what grows."""
    medium = {p: {gb: gpt2_pair_plan(24, 1024, 4096, 16, p, gb) for gb in (80, 141)} for p in ("fp32", "tf32", "bf16")}
    for p, by_gb in medium.items():
        for gb, plan in by_gb.items():
            assert plan.peak <= plan.budget, (p, gb, plan.describe())
    assert len(medium["tf32"][80].tiles) == len(medium["bf16"][80].tiles) == 1
    assert all(len(medium[p][141].tiles) == 1 for p in medium)
    assert medium["fp32"][80].tiles == [(0, 12 * 4096), (12 * 4096, 24 * 4096)]
    small = gpt2_pair_plan(12, 768, 3072, 12, "fp32", 80)
    assert len(small.tiles) == 1 and small.peak < 25 * GIB
    # the fp32 accumulator is 1.5x the tf32 one (float32 hi + bfloat16 lo), plus the GEMM scratch
    assert medium["fp32"][141].per_row > 1.5 * (medium["tf32"][141].per_row - 32 * 512 * 4)


def test_memory_plan_tiles_are_balanced_and_budget_covers_everything():
    fixed = dict(weights=10 << 20, forward=5 << 20)
    free = plan_memory(1000, 100, {"b": (4, 50)}, tokens=64, precision="fp32", streams={"b": 2},
                       rotation={"b": False}, budget=None, **fixed)
    base = sum(free.fixed.values())
    for n_tiles in (2, 3, 7):
        budget = base + free.per_row * -(-1000 // n_tiles)
        plan = plan_memory(1000, 100, {"b": (4, 50)}, tokens=64, precision="fp32", streams={"b": 2},
                           rotation={"b": False}, budget=budget, **fixed)
        sizes = [r1 - r0 for r0, r1 in plan.tiles]
        assert len(sizes) == n_tiles and max(sizes) - min(sizes) <= 100, sizes   # balanced (whole layers if free)
        assert plan.tiles[0][0] == 0 and plan.tiles[-1][1] == 1000
        assert all(a[1] == b[0] for a, b in zip(plan.tiles, plan.tiles[1:]))
        assert plan.peak <= budget
    with pytest.raises(UserError, match="too small for this job"):
        plan_memory(1000, 100, {"b": (4, 50)}, tokens=64, precision="fp32", streams={"b": 2},
                    rotation={"b": False}, budget=base, **fixed)


# capture ----------------------------------------------------------------------------------------------

def _sync_ops(fn) -> collections.Counter:
    """aten ops that make a host wait for a GPU (boolean-mask indexing runs nonzero; .item())."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    names = collections.Counter(e.name for e in prof.events())
    return collections.Counter({k: v for k, v in names.items() if k in (
        "aten::nonzero", "aten::item", "aten::_local_scalar_dense", "aten::masked_select", "aten::is_nonzero")})


def test_capture_stops_after_the_last_hook_and_gathers_without_syncs(tiny_zoo):
    """masked_activations == the full forward's hook values at the kept positions; the unembedding
    and final LayerNorm never run (nor later blocks for an early layer); the device-side batch step
    (capture of both models and the statistics update) runs no op that syncs a GPU."""
    from universal_neurons.capture import keep_rows, masked_activations, mlp_activations, token_mask
    from universal_neurons.models import load_model

    a, b = load_model(tiny_zoo[0]), load_model(tiny_zoo[1])
    g = torch.Generator().manual_seed(0)
    toks = torch.randint(0, a.cfg.d_vocab, (3, 24), generator=g)
    toks[:, 0] = a.tokenizer.bos_token_id
    _, cache = a.run_with_cache(toks)
    L, D = a.cfg.n_layers, a.cfg.d_mlp
    full = torch.stack([cache[f"blocks.{l}.mlp.hook_post"] for l in range(L)], 2)   # [batch, pos, layer, d_mlp]
    mask = token_mask(toks, a.tokenizer)
    rows = keep_rows(mask)
    assert rows.numel() == int(mask.sum()) < toks.numel()
    ran = collections.Counter()
    handles = [a.unembed.register_forward_hook(lambda *_: ran.update(["unembed"])),
               a.ln_final.register_forward_hook(lambda *_: ran.update(["ln_final"])),
               a.blocks[L - 1].register_forward_hook(lambda *_: ran.update(["last block"]))]
    try:
        torch.testing.assert_close(masked_activations(a, toks, rows), full.reshape(-1, L * D)[mask.flatten()], rtol=0, atol=0)
        torch.testing.assert_close(mlp_activations(a, toks), full, rtol=0, atol=0)
        assert not ran["unembed"] and not ran["ln_final"]
        torch.testing.assert_close(masked_activations(a, toks, rows, layers=[0]), full[:, :, 0].reshape(-1, D)[mask.flatten()])
        before = ran["last block"]
        a.run_with_hooks(toks, return_type=None)
        assert ran["unembed"] == 1 and ran["last block"] == before + 1   # the hooks do see a full forward
    finally:
        for h in handles:
            h.remove()
    assert not any(hp._forward_hooks for hp in a.hook_dict.values())  # the stop hook is gone again

    stats = CorrelationStats(n_rows=L * D, layers_2=b.cfg.n_layers, d_2=b.cfg.d_mlp, baselines=("none", "rotation"))
    step = lambda: stats.update(masked_activations(a, toks, rows), masked_activations(b, toks, rows), overwrite_inputs=True)
    step()
    assert _sync_ops(step) == collections.Counter()
    # the boolean-mask way it replaced does sync (the check can fail)
    assert _sync_ops(lambda: mlp_activations(a, toks).reshape(-1, L * D)[mask.flatten()])["aten::nonzero"] == 1


def test_precision_flags(tiny_models, token_data, capsys, monkeypatch):
    """--precision tf32 on a CPU and two disagreeing spellings are one message each; a bf16 run is
    recorded as such, and an fp32 rerun is told it is stale."""
    import json

    from test_correlations import cli
    from universal_neurons.paths import correlation_path

    m1, m2, _ = tiny_models
    base = ["--model_1_name", m1, "--model_2_name", m2]
    for bad, msg in ((["--precision", "tf32"], "needs a CUDA device"),
                     (["--precision", "bf16", "--gemm_dtype", "float32"], "disagree")):
        with pytest.raises(SystemExit) as e:
            cli(*base, *bad)
        assert e.value.code == 2 and msg in capsys.readouterr().err
    cli(*base, "--precision", "bf16")
    out = correlation_path(m1, m2, "tiny", "pearson", "none")
    assert json.loads((out / "run.json").read_text())["precision"] == "bf16"
    with pytest.raises(SystemExit) as e:
        cli(*base)
    assert e.value.code == 2 and "precision 'bf16' -> None" in capsys.readouterr().err
    cli(*base, "--gemm_dtype", "bfloat16")                  # the older spelling: the same run, done
    assert "nothing to do" in capsys.readouterr().out


def test_summary_histogram_without_bincount_is_the_same():
    """The GPU's sync-free histogram (index_add_) == the CPU's bincount == torch.histc-free float64
    counting, with values on edges, outside the range and NaN."""
    from universal_neurons.activation_summary import bin_edges, update_histogram

    edges = bin_edges(16, -1.0, 1.0)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(500, 7, generator=g) * 1.5
    x[:20, 0] = edges[3]                      # exactly on an edge: bin 3 (e[2] < x <= e[3])
    x[20:30, 1] = float("nan")                # NaN: the last bin
    a, b = (torch.zeros(7, 17, dtype=torch.int64) for _ in range(2))
    update_histogram(a, x, edges, sync_free=False)
    update_histogram(b, x, edges, sync_free=True)
    assert torch.equal(a, b)
    want = torch.zeros(7, 17, dtype=torch.int64)
    xd, ed = x.double().numpy(), edges.double().numpy()
    for j in range(7):
        for v in xd[:, j]:
            want[j, 17 - 1 if np.isnan(v) else int(np.searchsorted(ed, v, side="left"))] += 1
    assert torch.equal(a, want) and a[0, 3] >= 20 and a[1, 16] >= 10
    assert _sync_ops(lambda: update_histogram(b, x, edges, sync_free=True)) == collections.Counter()


def test_gpu_bench_smoke_runs_on_a_cpu():
    """benchmarks/gpu_bench.py at tiny shapes, as CI runs it so it never rots: its own float64 check
    holds, the batch step has no host syncs, every part and ratio is a positive number, and the
    memory plans are the ones test_memory_plan_for_gpt2_pairs asserts."""
    import json
    import subprocess
    import sys

    from conftest import REPO

    out = subprocess.run([sys.executable, "benchmarks/gpu_bench.py", "--smoke", "--json", "--medium"], cwd=REPO,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert set(result["modes"]) == {"fp32", "bf16"}
    for prec, mode in result["modes"].items():
        assert mode["syncs"] == 0 and mode["ops"] > 0, (prec, mode)
        assert mode["max_err"] <= (1e-5 if prec == "fp32" else 2e-3), (prec, mode["max_err"])
        assert all(v > 0 for v in mode["parts"].values()) and mode["over_floor"] > 1 and mode["s_per_batch"] > 0
    plans = {(p["pair"], p["precision"], p["device_gb"]): p["tiles"] for p in result["memory_plans"]}
    assert plans[("gpt2-medium", "tf32", 80)] == 1 and plans[("gpt2-medium", "fp32", 80)] == 2
    assert result["medium"]["merge"] >= 0 and "shard_1" in result["medium"]
