"""Neuron viewer: how long a neuron page takes until all its panels are there, first view and cached.

    PYTHONPATH=. python benchmarks/viewer_panels.py [--workdir /tmp/vpanels] [--neurons 4]

GPT2-small-shaped fake artifacts (benchmarks/viewer_bench.py's writer: 12 layers x 3072 neurons, the
GPT-2 vocabulary, 4 other seeds). One server process per configuration, the same client (this process)
for all; the client does what a browser does: GET the page, then the panel PNGs six at a time (a
browser's connections per host), and records when the last panel arrived. Configurations:
    in-process       make_server() as tests use it: one process draws every panel, one at a time
    render workers   as `universal-neurons view` before prefetch: min(4, cores) render processes
    + prefetch       render workers, and the page queues its panels before the browser asks (now)
The same neurons in the same order for every configuration; 'first view' is a neuron never opened
before in that server, 'cached' the same neuron opened again.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

SERVER = r"""
import os, sys, threading
from universal_neurons.viewer import make_server
mode = sys.argv[2]
workers = 0 if mode == "in-process" else min(4, os.cpu_count() or 1)
server, app = make_server(sys.argv[1], "127.0.0.1", 0, render_workers=workers)
if mode != "prefetch":
    app._queued = threading.Semaphore(0)  # the page queues nothing: the code before prefetch
print(server.server_address[1], flush=True)
server.serve_forever()
"""


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=600) as r:
        return r.read()


def open_page(base: str, layer: int, neuron: int, panels) -> tuple[float, float, float]:
    """(page s, last panel s, slowest single panel s), all from the page request's start."""
    t0 = time.perf_counter()
    _get(f"{base}/neuron/{layer}/{neuron}")
    t_page = time.perf_counter() - t0
    time.sleep(0.05)  # the browser parses the page before it asks for the images

    def one(p):
        t = time.perf_counter()
        _get(f"{base}/plot/{p}/{layer}/{neuron}.png")
        return time.perf_counter() - t

    with ThreadPoolExecutor(6) as pool:
        singles = list(pool.map(one, panels))
    return t_page, time.perf_counter() - t0, max(singles)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--workdir", default="/tmp/vpanels")
    p.add_argument("--neurons", type=int, default=4)
    args = p.parse_args()
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    os.chdir(work)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from universal_neurons import paths
    from universal_neurons.viewer import PANELS

    if not paths.neuron_df_path("gpt2").exists():
        from universal_neurons.tokenizer import gpt2_tokenizer
        from viewer_bench import write_fake_artifacts

        write_fake_artifacts("gpt2", ["gpt2-seed-b"], 12, 3072, 50257, gpt2_tokenizer(), "gpt2",
                             n_seq=256, ctx=256, n_features=200)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    neurons = [(l, (977 * l + 131) % 3072) for l in range(1, 12, max(1, 11 // args.neurons))][:args.neurons]
    rows = []
    for mode, arg in (("in-process", "in-process"), ("render workers", "workers"), ("+ prefetch", "prefetch")):
        proc = subprocess.Popen([sys.executable, "-c", SERVER, "gpt2", arg], stdout=subprocess.PIPE, text=True, env=env)
        base = f"http://127.0.0.1:{proc.stdout.readline().strip()}"
        try:
            open_page(base, 0, 0, PANELS)  # warm-up: imports, tokenizer, memory maps, worker start
            first = [open_page(base, l, n, PANELS) for l, n in neurons]
            again = [open_page(base, l, n, PANELS) for l, n in neurons]
        finally:
            proc.terminate()
            proc.wait()
        med = lambda xs, i: statistics.median(x[i] for x in xs)  # noqa: E731
        rows.append((mode, med(first, 0), med(first, 1), med(first, 2), med(again, 1)))
        print(f"{mode}: first view page {rows[-1][1]:.2f} s, all panels {rows[-1][2]:.2f} s "
              f"(slowest panel {rows[-1][3]:.2f} s); cached {rows[-1][4] * 1000:.0f} ms", flush=True)
    base_all = rows[0][2]
    print(f"\n| configuration | page | page + all {len(PANELS)} panels, first view | slowest panel | cached page + panels | first view vs in-process |")
    print("|---|---|---|---|---|---|")
    for mode, tp, ta, ts, tc in rows:
        print(f"| {mode} | {tp:.2f} s | {ta:.2f} s | {ts:.2f} s | {tc * 1000:.0f} ms | {ta / base_all:.2f}x |")
    print(f"\n{os.cpu_count()} cores; medians over {len(neurons)} neurons {neurons}")


if __name__ == "__main__":
    main()
