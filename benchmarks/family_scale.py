"""Time and peak memory of the weights, summary and correlation stages at full Pythia-160m and
GPT2-medium shape, on the CPU, through the package's own entry points.

    PYTHONPATH=. python benchmarks/family_scale.py [--root /tmp/scale] [--shapes pythia-160m gpt2-medium]
        [--stages weights summary correlations] [--n_seq 8] [--ctx 512]

Models: random weights at full shape, built from configs with transformers and saved as local Hugging
Face folders under --root, two seeds per shape (torch.manual_seed 0 for -a, 1 for -b):
    pythia-160m-shape-{a,b}   GPTNeoXForCausalLM: 12 layers, d_model 768, 12 heads, d_mlp 3072, vocab
                              50304, rotary_pct 0.25, parallel residual, untied embeddings, 2048 positions
    gpt2-medium-shape-{a,b}   GPT2LMHeadModel: 24 layers, d_model 1024, 16 heads, d_mlp 4096, vocab
                              50257, 1024 positions
each with the offline GPT-2 tokenizer (tokenizer.gpt2_tokenizer; its 50257 ids fit NeoX's 50304).
Folders already there (same shape and seed, see their family_scale_build.json) are reused.
Tokens: one text file (a few stdlib modules' sources concatenated) in a local folder, made into rows
of --ctx tokens by make_dataset's code path (token_datasets.MakeDatasetConfig, --n_seq rows) once per
family ('pythia', 'gpt2'): by default 8 x 512 = 4096 tokens.

Each (shape, stage) runs in its own subprocess, so peak-memory readings do not mix:
  weights       load_model, then the functions WeightsConfig.run() runs (weights.py): extract_weights,
                attention_compositions (all neurons) and neuron_stats (all) in full; vocab_compositions
                and neuron_compositions on the row neurons of --weights_layers only (all columns, so the
                cost per row is the full run's), extrapolated linearly to all layers. Nothing is
                written. Estimated full-run peak: the measured one plus the extra outputs the full run
                holds (the larger of the vocab / neuron output stores, scaled to all layers).
  summary       SummaryConfig(...).run() (summary.py's stage: model load, the pass, the files
                written), its defaults (top-100 vocab statistics, batch 32, --max_memory_gb 4 on a CPU)
                except n_seq and device cpu.
  correlations  seed a vs seed b, baselines --corr_baselines (default none + rotation), precision
                fp32, cpu, --corr_batch_size rows a batch (default 8: the 4096 tokens in one batch),
                --corr_max_memory_gb.
                Shapes in --corr_partial (default: both; the finaliser alone costs ~0.3-0.4 us per
                (row, column) pair and baseline on 2 cores, ~16 min for Pythia-160m's 36,864^2, hours
                for GPT2-medium's 98,304^2, whose fp32 accumulators alone would need ~67 GiB): the
                job's own driver (correlations._Job / _Run, what CorrelationConfig.run() builds) with
                the given budget, its memory plan printed, and only the LAST of its tiles run (the
                deepest model-1 forward); totals extrapolated as n_tiles x (both forwards) + N1 / tile
                rows x (statistics update + finaliser add); results() and the writing are not run.
                Other shapes: the whole CorrelationConfig(...).run() (correlations_fast.py's stage).
                Either way the memory plan line the job prints is recorded.

Inside each child some package functions are wrapped in memory (the package files are never edited)
to time their parts: models.load_model, activation_summary.summarize_tokens / run_until_last_hook /
_finish_vocab, capture.masked_activations, CorrelationStats.update, CorrelationFinalizer.add / results,
MemoryPlan.describe (to record the plan line).

Per child: wall and CPU seconds (user + system, all threads), peak RSS of the whole process
(ru_maxrss; VmHWM agrees; model loads included), resident size after the models were loaded,
os.getloadavg() at start and end (the machine has 2 cores and may be shared: CPU seconds are the
steadier measure). Seconds per 1k tokens = the stage's seconds without model loads / (n_seq x ctx / 1000).
Raw results: --out (benchmarks/results/family_scale.json), rewritten after every child.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
GIB = 1024 ** 3
SHAPES = ("pythia-160m", "gpt2-medium")
STAGES = ("weights", "summary", "correlations")
CORPUS_FILES = ("argparse.py", "textwrap.py", "functools.py", "contextlib.py")


# Measuring helpers (used in the children) --------------------------------------------------------

from weights_bench import _reset_peak, _status_kib  # noqa: E402 (this folder is on sys.path: a script)


def _cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _maxrss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB


class Clock:
    """Accumulated wall / CPU seconds and call counts per part name."""

    def __init__(self):
        self.wall, self.cpu, self.calls = {}, {}, {}

    def wrap(self, owner, attr: str, name: str | None = None, key=None):
        """Replace owner.attr by a timed wrapper (in this process only); key(*args) refines the name."""
        orig = getattr(owner, attr)
        name = name or attr

        def timed(*args, **kwargs):
            part = f"{name}:{key(*args)}" if key else name
            t, c = time.perf_counter(), _cpu_s()
            try:
                return orig(*args, **kwargs)
            finally:
                self.wall[part] = self.wall.get(part, 0.0) + time.perf_counter() - t
                self.cpu[part] = self.cpu.get(part, 0.0) + _cpu_s() - c
                self.calls[part] = self.calls.get(part, 0) + 1

        setattr(owner, attr, timed)
        return orig

    def asdict(self):
        return {"wall_s": self.wall, "cpu_s": self.cpu, "calls": self.calls}


def _load_hooks(clock: Clock, rec: dict) -> None:
    """Time every models.load_model and record the resident size after each."""
    from universal_neurons import models

    orig = models.load_model

    def load(*args, **kwargs):
        t = time.perf_counter()
        m = orig(*args, **kwargs)
        clock.wall["load_model"] = clock.wall.get("load_model", 0.0) + time.perf_counter() - t
        rec.setdefault("rss_after_loads_gib", []).append(_status_kib("VmRSS") * 1024 / GIB)
        return m

    models.load_model = load


# Children ------------------------------------------------------------------------------------------

def child_build(spec: dict) -> dict:
    """Save a random model of `spec['shape']` (seed spec['seed']) and the GPT-2 tokenizer to spec['folder']."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, GPTNeoXConfig, GPTNeoXForCausalLM

    from universal_neurons.tokenizer import gpt2_tokenizer

    folder = Path(spec["folder"])
    t0 = time.perf_counter()
    torch.manual_seed(spec["seed"])
    if spec["shape"] == "pythia-160m":
        cfg = GPTNeoXConfig(num_hidden_layers=12, hidden_size=768, num_attention_heads=12, intermediate_size=3072,
                            vocab_size=50304, rotary_pct=0.25, use_parallel_residual=True, tie_word_embeddings=False,
                            max_position_embeddings=2048)
        model = GPTNeoXForCausalLM(cfg)
    else:
        cfg = GPT2Config(n_layer=24, n_embd=1024, n_head=16, vocab_size=50257, n_positions=1024)
        model = GPT2LMHeadModel(cfg)
    n_params = sum(p.numel() for p in model.parameters())
    tmp = folder.with_name(folder.name + ".building")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    gpt2_tokenizer().save_pretrained(tmp)
    (tmp / "family_scale_build.json").write_text(json.dumps({"shape": spec["shape"], "seed": spec["seed"]}) + "\n")
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    return {"folder": str(folder), "n_params": n_params, "build_s": time.perf_counter() - t0}


def child_dataset(spec: dict) -> dict:
    """make_dataset's code path on the corpus folder for the family of spec['model']."""
    from universal_neurons.models import model_family
    from universal_neurons.token_datasets import MakeDatasetConfig

    written = MakeDatasetConfig(model=spec["model"], hf_dataset=spec["corpus"], ctx_len=spec["ctx"],
                                n_seq=spec["n_seq"], output_dir=spec["dataset_dir"], mix_tokens=[],
                                overwrite=True).run()
    return {"family": model_family(spec["model"]), "datasets": [str(p) for p in written],
            "name": Path(written[0]).name}


def child_weights(spec: dict, rec: dict, clock: Clock) -> None:
    import torch

    from universal_neurons import weights as W
    from universal_neurons.models import load_model

    model = load_model(spec["model_a"], device="cpu")
    base_kib = _status_kib("VmRSS")
    reset = _reset_peak()
    layers = spec["weights_layers"]

    def above_gib():
        return (_status_kib("VmHWM") - base_kib) * 1024 / GIB if reset else float("nan")

    def nbytes(result: dict) -> int:
        return sum(t.numel() * t.element_size() for store in result.values() for t in store.values())

    parts, peaks = {}, {}
    with torch.no_grad():
        def timed(name, f):
            t, c = time.perf_counter(), _cpu_s()
            out = f()
            parts[name] = {"wall_s": time.perf_counter() - t, "cpu_s": _cpu_s() - c}
            peaks[name] = above_gib()
            return out

        w = timed("extract", lambda: W.extract_weights(model))
        L, D, d_model = w.W_in.shape
        attn = timed("attention", lambda: W.attention_compositions(w, spec["block_size"]))
        rec["attention_out_bytes"] = sum(t.numel() * t.element_size() for t in attn.values())
        del attn
        vocab = timed("vocab_subset", lambda: W.vocab_compositions(w, spec["block_size"], layers=layers))
        rec["vocab_out_bytes_subset"] = nbytes(vocab)
        del vocab
        neuron = timed("neuron_subset", lambda: W.neuron_compositions(w, spec["block_size"], layers=layers))
        rec["neuron_out_bytes_subset"] = nbytes(neuron)
        del neuron
        timed("neuron_stats", lambda: W.neuron_stats(w))
    scale = L / len(layers)
    rec.update(n_layers=L, d_mlp=D, d_model=d_model, d_vocab=int(w.W_E.shape[0]), block_size=spec["block_size"],
               layers=layers, parts=parts, peak_above_load_gib=peaks, rss_after_load_gib=base_kib * 1024 / GIB,
               extrapolation_factor=scale)
    for unit in ("wall_s", "cpu_s"):
        rec[f"estimated_full_{unit}"] = (parts["extract"][unit] + parts["attention"][unit] + parts["neuron_stats"][unit]
                                         + scale * (parts["vocab_subset"][unit] + parts["neuron_subset"][unit]))
    extra = (scale - 1) * max(rec["vocab_out_bytes_subset"], rec["neuron_out_bytes_subset"])
    rec["estimated_full_peak_gib"] = _maxrss_gib() + extra / GIB


def child_summary(spec: dict, rec: dict, clock: Clock) -> None:
    from universal_neurons import activation_summary as S

    clock.wrap(S, "summarize_tokens")
    clock.wrap(S, "run_until_last_hook", "forward+hooks")
    clock.wrap(S, "_finish_vocab", "finish_vocab")
    groups = {}
    orig_plan = S.plan_layer_groups

    def plan(*args, **kwargs):
        out = orig_plan(*args, **kwargs)
        groups["groups"] = [len(g) for g in out]
        return out

    S.plan_layer_groups = plan
    cfg = S.SummaryConfig(model=spec["model_a"], token_dataset=[spec["dataset"]], output_dir=spec["out_dir"],
                          n_seq=spec["n_seq"], device="cpu", overwrite=True)
    folders = cfg.run(progress=False)
    rec["layer_groups"] = groups.get("groups")
    rec["written_bytes"] = sum(p.stat().st_size for f in folders for p in Path(f).glob("*"))
    rec["stage_s"] = clock.wall["summarize_tokens"]


def child_correlations(spec: dict, rec: dict, clock: Clock) -> None:
    from universal_neurons import capture, correlations as C
    from universal_neurons.correlation_stats import CorrelationStats
    from universal_neurons.correlation_summary import CorrelationFinalizer
    from universal_neurons.device import matmul_precision

    which = {spec["model_a"]: "model_1", spec["model_b"]: "model_2"}
    clock.wrap(capture, "masked_activations", "forward", key=lambda model, *a: which.get(model.model_name, "?"))
    clock.wrap(CorrelationStats, "update", "stats_update")
    clock.wrap(CorrelationFinalizer, "add", "finaliser_add")
    clock.wrap(CorrelationStats, "col_scale", "finaliser_col_scale", key=lambda self, stream, sample=None: sample)
    clock.wrap(CorrelationFinalizer, "results", "finaliser_results")
    plans = []
    orig_describe = C.MemoryPlan.describe

    def describe(self):
        line = orig_describe(self)
        plans.append({"line": line, "tiles": [list(t) for t in self.tiles], "peak_gib": self.peak / GIB})
        return line

    C.MemoryPlan.describe = describe
    tokens_seen = []
    orig_update = CorrelationStats.update

    def update(self, x, y, **kw):
        tokens_seen.append(int(x.shape[0]))
        return orig_update(self, x, y, **kw)

    CorrelationStats.update = update
    cfg = C.CorrelationConfig(model_1_name=spec["model_a"], model_2_name=[spec["model_b"]],
                              token_dataset=spec["dataset"], baseline=spec.get("baselines", ["none", "rotation"]),
                              batch_size=spec["batch_size"], n_seq=spec["n_seq"], model_1_device="cpu",
                              model_2_device="cpu", correlation_device="cpu", precision="fp32",
                              max_memory_gb=spec["max_memory_gb"] or None, overwrite=True)
    t0 = time.perf_counter()
    if not spec["partial"]:
        rec["mode"] = "full run: CorrelationConfig.run()"
        cfg.run()
    else:
        rec["mode"] = "last tile only: correlations._Job / _Run, extrapolated"
        from universal_neurons.models import load_model

        args = C.CorrelationConfig.from_args(cfg)
        job = C._Job(args)
        pending = job.pending()
        with matmul_precision(job.precision):
            m1 = load_model(args.model_1_name, device=str(job.dev1))
            m2 = load_model(spec["model_b"], device=str(job.dev2))
            run = C._Run(job, pending, m1, {spec["model_b"]: m2})
            all_tiles = list(run.tiles)
            run.tiles = all_tiles[-1:]
            run.stream()
        rec["tiles_run"] = [list(t) for t in run.tiles]
        rec["n_tiles_planned"] = len(all_tiles)
        rec["n1"] = run.n1
    rec["run_s"] = time.perf_counter() - t0
    rec["memory_plans"] = plans
    rec["tokens_after_mask"] = tokens_seen
    w = clock.wall
    fwd = w.get("forward:model_1", 0.0) + w.get("forward:model_2", 0.0)
    rec["pass_s"] = fwd + w.get("stats_update", 0.0)       # what grows with the tokens
    rec["finalise_s"] = w.get("finaliser_add", 0.0) + w.get("finaliser_results", 0.0)
    if spec["partial"]:
        r0, r1 = rec["tiles_run"][0]
        per_rows = rec["n1"] / (r1 - r0)
        n_t = rec["n_tiles_planned"]
        rec["extrapolation"] = {
            "n_tiles": n_t, "rows_factor": per_rows,
            "forward_s": n_t * fwd, "stats_update_s": per_rows * w.get("stats_update", 0.0),
            "finaliser_add_s": per_rows * w.get("finaliser_add", 0.0),
            "note": "forwards x n_tiles (model 1 ran to its last layer: an upper bound), update and finaliser add "
                    "x N1 / tile rows; finaliser results() and the writing not included"}
        e = rec["extrapolation"]
        rec["estimated_pass_s"] = e["forward_s"] + e["stats_update_s"]
        rec["estimated_finalise_s"] = e["finaliser_add_s"]


def _mem_available_gib() -> float:
    with open("/proc/meminfo") as f:
        return int(re.search(r"MemAvailable:\s+(\d+)", f.read()).group(1)) * 1024 / GIB


def _watchdog(min_available_gib: float) -> None:
    """Exit this process (status 99, a message on stderr) when the machine's free memory falls below
    `min_available_gib`: on a shared machine an out-of-memory kill could hit someone else's process."""
    import threading

    def watch():
        while True:
            avail = _mem_available_gib()
            if avail < min_available_gib:
                sys.stderr.write(f"family_scale watchdog: MemAvailable {avail:.2f} GiB < {min_available_gib} GiB with "
                                 f"this process at VmRSS {_status_kib('VmRSS') * 1024 / GIB:.2f} GiB (peak VmHWM "
                                 f"{_status_kib('VmHWM') * 1024 / GIB:.2f} GiB): stopped before an out-of-memory kill\n")
                sys.stderr.flush()
                os._exit(99)
            time.sleep(0.2)

    threading.Thread(target=watch, daemon=True).start()


def child(kind: str, spec: dict) -> None:
    """Run one measurement; print one JSON line."""
    _watchdog(spec.get("min_available_gib", 2.5))
    if kind == "build":
        print(json.dumps(child_build(spec)))
        return
    if kind == "dataset":
        print(json.dumps(child_dataset(spec)))
        return
    import torch

    rec = {"shape": spec["shape"], "stage": kind, "threads": torch.get_num_threads(),
           "loadavg_start": os.getloadavg(), "n_tokens": spec["n_seq"] * spec["ctx"]}
    clock = Clock()
    _load_hooks(clock, rec)
    t0, c0 = time.perf_counter(), _cpu_s()
    {"weights": child_weights, "summary": child_summary, "correlations": child_correlations}[kind](spec, rec, clock)
    rec.update(wall_s=time.perf_counter() - t0, cpu_s=_cpu_s() - c0, ru_maxrss_gib=_maxrss_gib(),
               vmhwm_gib=_status_kib("VmHWM") * 1024 / GIB, loadavg_end=os.getloadavg(), parts=rec.get("parts") or clock.asdict())
    rec["load_s"] = clock.wall.get("load_model", 0.0)
    print(json.dumps(rec))


# Parent -------------------------------------------------------------------------------------------

def run_child(kind: str, spec: dict, env: dict, timeout: float) -> dict:
    t0 = time.perf_counter()
    try:
        out = subprocess.run([sys.executable, __file__, "--child", kind, json.dumps(spec)], capture_output=True,
                             text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        return {"failed": f"timed out after {timeout} s", "stderr_tail": (e.stderr or b"")[-3000:].decode(errors="replace")
                if isinstance(e.stderr, bytes) else (e.stderr or "")[-3000:]}
    lines = out.stdout.strip().splitlines()
    if out.returncode or not lines:
        return {"failed": f"exit status {out.returncode}", "stderr_tail": out.stderr[-4000:],
                "stdout_tail": out.stdout[-2000:], "child_wall_s": time.perf_counter() - t0}
    res = json.loads(lines[-1])
    res["stdout_lines"] = [ln for ln in lines[:-1] if ln.strip()][-20:]
    res["child_wall_s"] = time.perf_counter() - t0
    return res


def write_corpus(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / "stdlib.txt"
    if not target.is_file():
        root = Path(sysconfig.get_paths()["stdlib"])
        target.write_text("\n\n".join((root / f).read_text(encoding="utf-8") for f in CORPUS_FILES), encoding="utf-8")
    return folder


def folder_ok(folder: Path, shape: str, seed: int) -> bool:
    meta = folder / "family_scale_build.json"
    try:
        return json.loads(meta.read_text()) == {"shape": shape, "seed": seed} and (folder / "config.json").is_file()
    except (OSError, ValueError):
        return False


def fmt(x, spec=".1f"):
    return "—" if x is None else format(x, spec)


def table(results: dict, n_tokens: int) -> list[str]:
    """The shape x stage table (markdown)."""
    k = n_tokens / 1000
    lines = ["| shape | stage | peak RSS GiB | time | CPU s | load avg start / end | how |", "|---|---|---|---|---|---|---|"]
    for key, r in results.items():
        shape, stage = key.split("/", 1)
        if "failed" in r:
            lines.append(f"| {shape} | {stage} | — | FAILED: {r['failed']} | — | — | see stderr_tail in the JSON |")
            continue
        la = f"{r['loadavg_start'][0]:.1f} / {r['loadavg_end'][0]:.1f}"
        if stage.startswith("weights"):
            time_s = f"~{r['estimated_full_wall_s']:.0f} s total (est.)"
            peak = f"{r['ru_maxrss_gib']:.2f} (est. full run ~{r['estimated_full_peak_gib']:.2f})"
            cpu = f"~{r['estimated_full_cpu_s']:.0f} (est.)"
            how = (f"attention + neuron_stats in full; vocab/neuron comps on layer(s) {r['layers']} x "
                   f"{r['extrapolation_factor']:.0f}")
        elif stage.startswith("summary"):
            time_s = f"{r['stage_s'] / k:.2f} s / 1k tokens"
            peak = f"{r['ru_maxrss_gib']:.2f}"
            cpu = f"{r['cpu_s']:.0f}"
            how = f"SummaryConfig.run(), layer groups {r['layer_groups']}; load {r['load_s']:.0f} s apart"
        else:
            peak = f"{r['ru_maxrss_gib']:.2f}"
            cpu = f"{r['cpu_s']:.0f}"
            if "extrapolation" in r:
                time_s = (f"~{r['estimated_pass_s'] / k:.1f} s / 1k tokens + ~{r['estimated_finalise_s']:.0f} s "
                          f"finalise (est.)")
                how = (f"last of {r['n_tiles_planned']} tiles run (rows {r['tiles_run'][0]}), extrapolated; "
                       f"{r['memory_plans'][0]['line'] if r['memory_plans'] else ''}")
            else:
                time_s = f"{r['pass_s'] / k:.2f} s / 1k tokens + {r['finalise_s']:.0f} s finalise"
                how = f"CorrelationConfig.run(); {r['memory_plans'][0]['line'] if r['memory_plans'] else ''}"
        lines.append(f"| {shape} | {stage} | {peak} | {time_s} | {cpu} | {la} | {how} |")
    return lines


def readme_rows(results: dict, n_tokens: int) -> list[str]:
    k = n_tokens / 1000
    lines = ["| model (random weights, CPU, 2 cores) | weights: time, peak | summary: s / 1k tokens, peak | "
             "correlations (none + rotation, fp32): s / 1k tokens + finalise, peak |", "|---|---|---|---|"]
    for shape in SHAPES:
        cells = []
        for stage in STAGES:
            keys = sorted((k for k in results if k.startswith(f"{shape}/{stage}")), key=lambda k: "full run" not in k)
            r = results[keys[0]] if keys else None
            if r is None:
                cells.append("not run")
            elif "failed" in r:
                cells.append("failed")
            elif stage == "weights":
                cells.append(f"~{r['estimated_full_wall_s'] / 60:.0f} min (est.), ~{r['estimated_full_peak_gib']:.1f} GiB")
            elif stage == "summary":
                cells.append(f"{r['stage_s'] / k:.1f} s, {r['ru_maxrss_gib']:.1f} GiB")
            elif "extrapolation" in r:
                cells.append(f"~{r['estimated_pass_s'] / k:.0f} s + ~{r['estimated_finalise_s'] / 60:.0f} min (est., "
                             f"{r['n_tiles_planned']} tiles), {r['ru_maxrss_gib']:.1f} GiB")
            else:
                cells.append(f"{r['pass_s'] / k:.1f} s + {r['finalise_s']:.0f} s, {r['ru_maxrss_gib']:.1f} GiB")
        if any(c != "not run" for c in cells):
            lines.append(f"| {shape} shape | " + " | ".join(cells) + " |")
    return lines


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", default="/tmp/scale", help="model folders, corpus, datasets and stage outputs")
    p.add_argument("--shapes", nargs="+", choices=SHAPES, default=list(SHAPES))
    p.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES))
    p.add_argument("--n_seq", type=int, default=8)
    p.add_argument("--ctx", type=int, default=512)
    p.add_argument("--weights_layers", type=int, nargs="+", default=[0], help="row layers of the vocab / neuron comps")
    p.add_argument("--block_size", type=int, default=512, help="weights: neuron rows a block (the default)")
    p.add_argument("--corr_batch_size", type=int, default=8, help="rows a correlation batch (8 x 512: one batch)")
    p.add_argument("--corr_partial", nargs="*", default=list(SHAPES),
                   help="shapes whose correlations run their last tile only (others: the full run)")
    p.add_argument("--corr_max_memory_gb", nargs="*", default=["pythia-160m=8", "gpt2-medium=15.5"],
                   help="SHAPE=GB budgets of the correlation job (a shape not named: no cap, as on a CPU by default)")
    p.add_argument("--corr_baselines", nargs="+", default=["none", "rotation"], help="baselines of the correlation job")
    p.add_argument("--append", action="store_true", help="add to the results already in --out (same settings)")
    p.add_argument("--timeout", type=float, default=1500, help="seconds per child")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "family_scale.json"))
    p.add_argument("--child", nargs=2, default=None, help=argparse.SUPPRESS)
    p.add_argument("--table", action="store_true", help="only print the tables of the results in --out")
    args = p.parse_args()
    if args.child:
        return child(args.child[0], json.loads(args.child[1]))
    if args.table:
        saved = json.loads(Path(args.out).read_text())
        n_tokens = saved["settings"]["n_seq"] * saved["settings"]["ctx"]
        print("\n".join(table(saved["results"], n_tokens)))
        print("\nREADME scale table rows:\n")
        print("\n".join(readme_rows(saved["results"], n_tokens)))
        return

    t_start = time.perf_counter()
    root = Path(args.root)
    root.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "DATASET_DIR": str(root / "token_datasets"), "SUMMARY_DIR": str(root / "summary_data"),
           "RESULTS_DIR": str(root / "correlation_results")}
    budgets = {s: float(g) for s, g in (x.split("=") for x in args.corr_max_memory_gb)}
    corpus = write_corpus(root / "corpus")
    report = {"command": " ".join([os.path.relpath(sys.executable, REPO) if sys.executable.startswith(str(REPO))
                                   else "python", *sys.argv]),
              "settings": {k: v for k, v in vars(args).items() if k != "child"}, "cpu_count": os.cpu_count(),
              "build": {}, "datasets": {}, "results": {}}
    if args.append and Path(args.out).is_file():
        old = json.loads(Path(args.out).read_text())
        report["results"] = old["results"]
        report["build"], report["datasets"] = old.get("build", {}), old.get("datasets", {})
        report["earlier_commands"] = old.get("earlier_commands", []) + [old["command"]]
        report["earlier_wall_s"] = old.get("earlier_wall_s", 0.0) + old.get("total_wall_s", 0.0)

    def save():
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        report["total_wall_s"] = time.perf_counter() - t_start
        Path(args.out).write_text(json.dumps(report, indent=1) + "\n")

    for shape in args.shapes:
        folders = {s: root / f"{shape}-shape-{s}" for s in "ab"}
        for seed, (s, folder) in enumerate(folders.items()):
            if folder_ok(folder, shape, seed):
                report["build"][folder.name] = {"reused": True}
                continue
            r = run_child("build", {"shape": shape, "seed": seed, "folder": str(folder)}, env, args.timeout)
            report["build"][folder.name] = r
            print(f"built {folder}: {r}", flush=True)
        ds = run_child("dataset", {"model": str(folders["a"]), "corpus": str(corpus), "ctx": args.ctx,
                                   "n_seq": args.n_seq, "dataset_dir": str(root / "token_datasets")}, env, args.timeout)
        report["datasets"][shape] = ds
        print(f"dataset for {shape}: {ds}", flush=True)
        if "failed" in ds:
            save()
            continue
        for stage in args.stages:
            spec = {"shape": shape, "model_a": str(folders["a"]), "model_b": str(folders["b"]), "dataset": ds["name"],
                    "n_seq": args.n_seq, "ctx": args.ctx, "weights_layers": args.weights_layers,
                    "block_size": args.block_size, "batch_size": args.corr_batch_size,
                    "partial": shape in args.corr_partial, "max_memory_gb": budgets.get(shape),
                    "out_dir": str(root / "summary_out"), "baselines": args.corr_baselines}
            print(f"--- {shape} / {stage} (load average {os.getloadavg()[0]:.1f})", flush=True)
            r = run_child(stage, spec, env, args.timeout)
            key = f"{shape}/{stage}"
            if stage == "correlations":
                key += (f" ({'+'.join(args.corr_baselines)}, {'last tile' if spec['partial'] else 'full run'}, "
                        f"max_memory_gb {spec['max_memory_gb']})")
            report["results"][key] = r
            save()
            print(json.dumps({k: v for k, v in r.items() if k != "stdout_lines"}, indent=1), flush=True)
    save()
    n_tokens = args.n_seq * args.ctx
    print(f"\n{n_tokens} tokens ({args.n_seq} x {args.ctx}); total wall {report['total_wall_s']:.0f} s\n")
    print("\n".join(table(report["results"], n_tokens)))
    print("\nREADME scale table rows:\n")
    print("\n".join(readme_rows(report["results"], n_tokens)))


if __name__ == "__main__":
    main()
