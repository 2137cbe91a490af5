"""Neuron viewer under load: C clients x R requests each on loopback, against one server process.

    PYTHONPATH=. python benchmarks/viewer_load.py [--clients 20 --requests 50] [--code DIR] [--idle 300]

Each client asks, in a seeded random order, for the table, the table's JSON, neuron pages and panel
PNGs of random neurons (GPT2-small-shaped fake artifacts at 2 layers, benchmarks/viewer_bench.py's
writer). Reports errors, latency p50 / p99, requests/s and PNGs/s, the server's peak RSS (VmHWM) and
threads; then opens --idle silent connections and reports the server's threads after 25 s.
--code runs the server from another checkout (e.g. a worktree of an older commit): before / after
in the same machine and the same artifacts.
"""
from __future__ import annotations

import argparse
import os
import random
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

SERVER = r"""
import os, sys
from universal_neurons.viewer import make_server
try:  # as `universal-neurons view` serves: one render process per core, up to 4
    server, app = make_server(sys.argv[1], "127.0.0.1", 0, render_workers=min(4, os.cpu_count() or 1))
except TypeError:  # older code: no render processes
    server, app = make_server(sys.argv[1], "127.0.0.1", 0)
print(server.server_address[1], flush=True)
server.serve_forever()
"""


def status(pid: int) -> dict:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        k, _, v = line.partition(":")
        out[k] = v.strip()
    return out


def children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--workdir", default="/tmp/viewer_load")
    p.add_argument("--clients", type=int, default=20)
    p.add_argument("--requests", type=int, default=50)
    p.add_argument("--idle", type=int, default=300)
    p.add_argument("--code", default=str(Path(__file__).resolve().parent.parent))
    args = p.parse_args()
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    os.chdir(work)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from universal_neurons import paths

    model, L, D = "gpt2", 2, 3072
    if not paths.neuron_df_path(model).exists():
        from universal_neurons.tokenizer import gpt2_tokenizer
        from viewer_bench import write_fake_artifacts

        write_fake_artifacts(model, ["gpt2-seed-b"], L, D, 50257, gpt2_tokenizer(), "gpt2", n_seq=64, ctx=64)
    from universal_neurons.viewer import PANELS

    env = {**os.environ, "PYTHONPATH": args.code}
    proc = subprocess.Popen([sys.executable, "-c", SERVER, model], stdout=subprocess.PIPE, text=True, env=env)
    base = f"http://127.0.0.1:{proc.stdout.readline().strip()}"
    urllib.request.urlopen(base + "/api/neurons", timeout=120).read()  # the table JSON once, as a first visitor
    lat, errors, pngs = [], [], [0]
    lock = threading.Lock()

    def client(i: int):
        rng = random.Random(i)
        for _ in range(args.requests):
            l, n = rng.randrange(L), rng.randrange(D)
            url = rng.choice(["/", "/api/neurons", f"/neuron/{l}/{n}"] + [f"/plot/{p}/{l}/{n}.png" for p in PANELS])
            t = time.perf_counter()
            try:
                with urllib.request.urlopen(base + url, timeout=60) as r:
                    r.read()
                ok = r.status == 200
            except Exception as e:  # noqa: BLE001 (counted, reported)
                ok, _ = False, e
            with lock:
                lat.append(time.perf_counter() - t)
                if not ok:
                    errors.append(url)
                elif url.endswith(".png"):
                    pngs[0] += 1

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(args.clients)]
    for t in threads:
        t.start()
    peak_threads = 0
    while any(t.is_alive() for t in threads):
        peak_threads = max(peak_threads, int(status(proc.pid)["Threads"]))
        time.sleep(0.1)
    wall = time.perf_counter() - t0
    lat.sort()
    st = status(proc.pid)
    print(f"{args.clients} clients x {args.requests} requests: {len(lat)} done in {wall:.1f} s, {len(errors)} errors, "
          f"p50 {lat[len(lat) // 2] * 1000:.0f} ms, p99 {lat[int(len(lat) * 0.99) - 1] * 1000:.0f} ms, "
          f"{len(lat) / wall:.1f} req/s, {pngs[0] / wall:.2f} PNG/s; server peak RSS {st['VmHWM']}, "
          f"peak threads {peak_threads}")
    idle = []
    for _ in range(args.idle):
        try:
            idle.append(socket.create_connection(("127.0.0.1", int(base.rsplit(":", 1)[1])), timeout=5))
        except OSError:
            break
    time.sleep(2)
    held = int(status(proc.pid)["Threads"])
    time.sleep(25)
    rss = sum(int(status(c)["VmHWM"].split()[0]) for c in children(proc.pid))
    print(f"{len(idle)} idle connections: server threads {held} after 2 s, {status(proc.pid)['Threads']} after 27 s; "
          f"render processes {len(children(proc.pid))}, their peak RSS {rss // 1024} MiB in all")
    for s in idle:
        s.close()
    proc.terminate()
    proc.wait()


if __name__ == "__main__":
    main()
