"""Neuron viewer: start-up and page-load time, and the server's memory, on GPT2-small-shaped artifacts.

    PYTHONPATH=. python benchmarks/viewer_bench.py [--workdir /tmp/viewer_bench] [--layers 12 --d_mlp 3072]

The artifacts are random tensors with the real shapes and dtypes (L=12, D=3072, V=50257, top-k 50
examples, 100 vocab tokens, 256 histogram bins, 4 other seeds), written by `write_fake_artifacts`
(also used by tests/test_viewer*.py at tiny shapes), so no model is run. The model name 'gpt2'
gives the real GPT-2 tokenizer offline. Memory is the server process's peak resident set (VmHWM,
i.e. ru_maxrss of a fresh exec) and current RSS, in a child process so the writer's memory does
not count. 'cold': every load on the first request; 'warm': as the CLI, which loads the tokenizer
and the table JSON in a background thread at start (measured after a 20 s pause).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from universal_neurons import paths
from universal_neurons.activation_summary import (BIN_COUNTS, BIN_EDGES, CONFIG_FILE, TOP_INDEX, TOP_VALUE,
                                                  VOCAB_COUNTS, VOCAB_MAX, VOCAB_MAX_IX, VOCAB_MEAN, VOCAB_MEAN_IX)


def write_fake_artifacts(model: str, others: list[str], n_layers: int, d_mlp: int, vocab: int, tokenizer,
                         family: str, datasets=("fake.code.64", "fake.text.64"), n_seq: int = 64, ctx: int = 64,
                         top_k: int = 50, vocab_k: int = 100, n_bins: int = 256, n_heads: int = 4,
                         n_features: int = 50, universal: list[tuple[int, int]] = (), seed: int = 0) -> None:
    """Random artifacts of every stage for `model` (and activation summaries of `others`), in the
    formats of ORIGINAL_SPEC.md, under the paths.py folders of the working directory.

    universal: neurons given excess_corr 0.9 in the neuron df (every other neuron gets < 0.5).
    """
    g = torch.Generator().manual_seed(seed)
    L, D, N = n_layers, d_mlp, n_layers * d_mlp
    from universal_neurons.token_datasets import save_token_dataset

    for ds in datasets:
        toks = torch.randint(0, vocab, (n_seq, ctx), generator=g).numpy()
        save_token_dataset(toks, family, ds, tokenizer)
    for m in [model, *others]:
        for ds in datasets:
            out = paths.activation_summary_path(m, ds)
            out.mkdir(parents=True, exist_ok=True)
            counts = torch.randint(0, 1000, (L, D, n_bins + 1), generator=g, dtype=torch.int32)
            top_ix = torch.randint(0, n_seq * ctx, (L, D, top_k), generator=g)
            top_val = torch.rand(L, D, top_k, generator=g).sort(-1, descending=True).values.half()
            v_ix = torch.randint(0, vocab, (L, D, vocab_k), generator=g, dtype=torch.int32)
            v_val = torch.rand(L, D, vocab_k, generator=g).sort(-1, descending=True).values.half()
            tensors = {BIN_EDGES: torch.linspace(-10, 15, n_bins), BIN_COUNTS: counts, TOP_INDEX: top_ix,
                       TOP_VALUE: top_val, VOCAB_MAX: v_val, VOCAB_MAX_IX: v_ix, VOCAB_MEAN: v_val * 0.5,
                       VOCAB_MEAN_IX: v_ix, VOCAB_COUNTS: torch.rand(vocab, generator=g)}
            for name, t in tensors.items():
                torch.save(t.contiguous(), out / f"{name}.pt")
            (out / CONFIG_FILE).write_text(json.dumps({"model": m, "dataset": ds, "n_seq": n_seq, "ctx": ctx}))
    # weights.py
    w = paths.weights_summary_path(model)
    w.mkdir(parents=True, exist_ok=True)
    layer, neuron = np.repeat(np.arange(L), D), np.tile(np.arange(D), L)
    pd.DataFrame({"layer": layer, "neuron_ix": neuron, "input_weight_norm": np.random.rand(N),
                  "input_bias": np.random.randn(N), "output_weight_norm": np.random.rand(N),
                  "in_out_sim": np.random.rand(N) - 0.5}).to_csv(w / "neuron_stats.csv", index=False)
    for kind in "kqvo":
        torch.save(torch.rand(L, D, L, n_heads, generator=g).half(), w / f"{kind}_comps.pt")

    def rows(n_cols, k):
        top = torch.rand(L, D, k, generator=g).sort(-1, descending=True).values
        return {"top_{}_value": top, "top_{}_ix": torch.randint(0, n_cols, (L, D, k), generator=g),
                "bottom_{}_value": -top, "bottom_{}_ix": torch.randint(0, n_cols, (L, D, k), generator=g),
                "comp_hist": torch.randint(0, 100, (L, D, 101), generator=g, dtype=torch.int32),
                **{f"comp_{s}": torch.rand(L, D, generator=g) for s in ("mean", "var", "skew", "kurt")}}
    torch.save({kind: {k.format("vocab"): v for k, v in rows(vocab, 100).items()}
                for kind in ("E_in", "U_in", "E_out", "U_out")}, w / "vocab_comps.pt")
    torch.save({kind: {k.format("neuron"): v for k, v in rows(N, 20).items()}
                for kind in ("in_in", "in_out", "out_in", "out_out")}, w / "neuron_comps.pt")
    # correlations: model vs each other seed, on the first dataset
    for o in others:
        c = paths.correlation_path(model, o, datasets[0], "pearson", "none")
        c.mkdir(parents=True, exist_ok=True)
        torch.save({"max_corr": torch.rand(N, generator=g).half(),
                    "max_corr_ix": torch.randint(0, N, (N,), generator=g, dtype=torch.int32)},
                   c / "correlation_summary.pt")
    # neuron dataframe
    from analysis.neuron_df import NEURON_DF_COLUMNS

    df = pd.DataFrame(np.random.default_rng(seed).random((N, len(NEURON_DF_COLUMNS))) * 0.4, columns=NEURON_DF_COLUMNS)
    df["layer"], df["neuron"] = layer, neuron
    for l, n in universal:
        df.loc[l * D + n, "excess_corr"] = 0.9
    out = paths.neuron_df_path(model)
    out.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(out, index=False)
    # explanations (token features) of layer 0 and interventions of neuron 0.0
    from universal_neurons.explanations import write_layer

    labels = [f"{l}.{n}" for l, n in zip(layer, neuron)]
    feats = [f"tok_{i}" for i in range(n_features)]
    for l in range(L):
        idx = labels[l * D:(l + 1) * D]
        vr = pd.DataFrame(np.random.rand(D, n_features), index=idx, columns=feats)
        write_layer(vr, vr * 0.5, model, datasets[0], "token", l)
    iv = paths.intervention_dir() / paths.model_dirname(model) / datasets[0] / "0.0"
    iv.mkdir(parents=True, exist_ok=True)
    pd.DataFrame([{"group": "clean", "label": "clean", "neurons": "", "intervention_type": "", "value": float("nan"),
                   "mean_loss": 3.0, "mean_entropy": 2.0},
                  {"group": "target", "label": "0.0", "neurons": "0.0", "intervention_type": "fixed_activation",
                   "value": 1.0, "mean_loss": 3.1, "mean_entropy": 2.5}]).to_csv(iv / "summary_fixed_activation.csv", index=False)


SERVER = """
import sys, threading, time
t0 = time.perf_counter()
from universal_neurons.viewer import make_server

def mem():  # this process's peak and current resident set (VmHWM is per exec, unlike ru_maxrss)
    f = dict(l.split(":", 1) for l in open("/proc/self/status"))
    return int(f["VmHWM"].split()[0]) // 1024, int(f["VmRSS"].split()[0]) // 1024

server, app = make_server(sys.argv[1], "127.0.0.1", 0)
print(server.server_address[1], time.perf_counter() - t0, *mem(), flush=True)
threading.Thread(target=server.serve_forever, daemon=True).start()
if sys.argv[2] == "warm":  # as serve() does: tokenizer and table JSON in the background
    art = app.artifacts(sys.argv[1])
    threading.Thread(target=lambda: (art.neuron_df_json(), art.vocab()), daemon=True).start()
for line in sys.stdin:
    print(*mem(), flush=True)
"""


def _get(url: str) -> tuple[float, int]:
    t = time.perf_counter()
    with urllib.request.urlopen(url, timeout=600) as r:
        n = len(r.read())
    return time.perf_counter() - t, n


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--workdir", default="/tmp/viewer_bench")
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--d_mlp", type=int, default=3072)
    args = p.parse_args()
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    os.chdir(work)
    model = "gpt2"
    if not paths.neuron_df_path(model).exists():
        from universal_neurons.tokenizer import gpt2_tokenizer

        t = time.perf_counter()
        write_fake_artifacts(model, ["gpt2-seed-b"], args.layers, args.d_mlp, 50257, gpt2_tokenizer(), "gpt2",
                             n_seq=256, ctx=256, n_features=200)
        print(f"wrote fake artifacts in {time.perf_counter() - t:.1f} s to {work}")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    from universal_neurons.viewer import PANELS

    for mode in ("cold", "warm"):
        proc = subprocess.Popen([sys.executable, "-c", SERVER, model, mode], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True, env=env)
        port, start_s, hwm, rss = proc.stdout.readline().split()
        base = f"http://127.0.0.1:{port}"

        def mem():
            proc.stdin.write("mem\n")
            proc.stdin.flush()
            return "peak {} MiB, now {} MiB".format(*proc.stdout.readline().split())

        print(f"[{mode}] server start-up (imports + make_server): {float(start_s):.2f} s, peak {hwm} MiB, now {rss} MiB")
        if mode == "warm":
            time.sleep(20)  # a user opening the browser
        for what, url in [("table page /", "/"), ("/api/neurons", "/api/neurons"), ("/api/neurons again", "/api/neurons")]:
            s, n = _get(base + url)
            print(f"[{mode}] {what}: {s * 1000:.0f} ms, {n / 1e6:.2f} MB")
        print(f"[{mode}] memory after the table: {mem()}")
        for l, n in [(5, 100), (11, 3071)]:
            s, size = _get(f"{base}/neuron/{l}/{n}")
            pngs = [_get(f"{base}/plot/{p}/{l}/{n}.png")[0] for p in PANELS]
            print(f"[{mode}] neuron {l}.{n}: html {s:.2f} s ({size / 1e3:.0f} kB); {len(PANELS)} panels "
                  f"{sum(pngs):.2f} s (slowest {max(pngs):.2f} s); page + panels {s + sum(pngs):.2f} s")
            print(f"[{mode}] memory after neuron {l}.{n}: {mem()}")
        s, _ = _get(f"{base}/neuron/5/100")
        print(f"[{mode}] neuron 5.100 again (cached): {s * 1000:.1f} ms")
        proc.stdin.close()
        proc.terminate()
        proc.wait()


if __name__ == "__main__":
    main()
