"""The correlation job (correlations_fast.py, correlations.py): one pass over the data, shards,
memory tiles, checkpoints, merges; the numerics are in correlation_stats.py, the summaries in
correlation_summary.py (both re-exported here, the import path of scripts and tests).

Runs keyed by their settings: each <sim>.<baseline>/ folder gets run.json last (model names and
weight fingerprints, dataset and its fingerprint, n_seq, activation location, newline mask,
similarity, baseline, seed / n_rotations where they apply, code version: runs.py). A rerun with the same settings skips the folder; a folder
made with other or unrecorded settings stops the run with one message naming the differences,
unless --overwrite replaces it.
"""
from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import runs
from .correlation_stats import *  # noqa: F401,F403  (the engine's public names, for scripts and tests)
from .correlation_stats import (_SALT, BASELINES, SIMILARITIES, CorrelationStats,  # noqa: F401
                                derive_seed, similarity_name)
from .correlation_summary import *  # noqa: F401,F403
from .correlation_summary import (FULL_FILE, SUMMARY_FILES, CorrelationFinalizer,  # noqa: F401
                                  load_correlation_matrix, quantize_rows_int8, read_correlation_summary)
from .device import PRECISIONS, matmul_precision, resolve_precision
from .errors import UserError, check_n_seq
from .flags import StageConfig
from .models import model_fingerprint
from .token_datasets import dataset_fingerprint

RUN_FILE = "run.json"  # the settings that made a <sim>.<baseline>/ folder (written last: it marks it done)
GEMM_DTYPES = {"float32": "fp32", "tf32": "tf32", "bfloat16": "bf16", "float16": "fp16"}  # --gemm_dtype -> --precision

# The command-line driver shared by correlations_fast.py and correlations.py ----------------------

# correlations_fast.py: the script the paper used. correlations.py: the fuller older one, same engine,
# which also wrote the full matrix by default.
DROP_NEWLINES = {"single": "single", "all": "all", "none": "keep"}  # --drop_newlines -> position_mask newlines
FAST_DEFAULTS = {}
FULL_DEFAULTS = {}  # the original correlations.py wrote correlation.pt only with --save_full_correlation_matrix


@dataclass
class CorrelationConfig(StageConfig):
    """One correlation job: correlations_fast.py / correlations.py flags (the original's names and defaults),
    built by the CLI, the pipeline and the Slurm scripts alike; `run_correlations(config)` runs it."""

    model_1_name: str = field(metadata={"required": True, "help": "model whose neurons are the rows"})
    model_2_name: list[str] = field(metadata={"required": True, "nargs": "+", "help":
                                    "one or more models to correlate with model 1 (all in the same pass over the data)"})
    token_dataset: str = field(metadata={"required": True, "help": "token dataset name under $DATASET_DIR/<family>/"})
    baseline: list[str] = field(default_factory=lambda: ["none"], metadata={
        "nargs": "+", "choices": BASELINES, "help": "one or more of none, rotation, permutation, gaussian (all in one pass)"})
    similarity_type: str = field(default="pearson", metadata={"choices": SIMILARITIES})
    jaccard_threshold: float = field(default=0.0, metadata={"type": float, "help": "jaccard: a neuron is on when > this"})
    batch_size: int = field(default=32, metadata={"common": True})
    model_1_device: str = field(default="auto", metadata={"help": "device of model 1 (auto: cuda if available)"})
    model_2_device: str = field(default="auto", metadata={"help": "device of the models 2"})
    correlation_device: str = field(default="auto", metadata={"help": "where the statistics live"})
    save_full_correlation_matrix: bool = field(default=False, metadata={
        "action": argparse.BooleanOptionalAction, "help": f"also write {FULL_FILE} [L1, D1, L2, D2]"})
    save_precision: int = field(default=16, metadata={"type": int, "choices": [8, 16, 32], "help":
                                "full matrix: 16 = float16, 32 = float32, 8 = int8 per model-1 neuron (see quantize_rows_int8)"})
    activation_location: str = field(default="mlp.hook_post", metadata={"choices": ["mlp.hook_post", "mlp.hook_pre"]})
    drop_newlines: str = field(default="single", metadata={"choices": ["single", "all", "none"], "help":
                               "newline tokens left out besides BOS/EOS/padding: single = the one-token '\\n' (the "
                               "original correlations_fast.py), all = every whitespace-only token with a newline "
                               "('\\n\\n', ...), none = no newline token (the older correlations.py)"})
    n_seq: int = field(default=-1, metadata={"common": True})
    n_rotations: int = field(default=1, metadata={"type": int, "help":
                             "rotation samples; with K > 1 max_corr / min_corr average the K per-sample maxima"})
    seed: int = field(default=0, metadata={"type": int, "help": "seeds rotations, permutations and gaussian baselines"})
    num_shards: int = field(default=1, metadata={"type": int, "help": "split the batches into N shards (e.g. a Slurm array)"})
    shard_index: int = field(default=0, metadata={"type": int, "help": "which shard this process runs (saves statistics only)"})
    merge: bool = field(default=False, metadata={"action": "store_true", "help":
                        "add the shards' statistics and write the artifacts"})
    max_memory_gb: float | None = field(default=None, metadata={"type": float, "help":
                                        "cap on everything the job holds on the correlation device (default: 92%% of "
                                        "a GPU's free memory, no cap on a CPU); model-1 neurons are split into balanced "
                                        "tiles that fit, each one pass over the data (forwards repeated per tile)"})
    checkpoint_every: int = field(default=0, metadata={"type": int, "help":
                                  "save the statistics every k batches; a rerun resumes from the last save (0 = off)"})
    precision: str = field(default="auto", metadata={"choices": list(PRECISIONS), "help":
                           "fp32 | tf32 | bf16 | fp16 for the forward passes, Gram matrices, cross GEMM and "
                           "finaliser (auto: tf32 on CUDA, fp32 on a CPU); see the README's precision table"})
    gemm_dtype: str | None = field(default=None, metadata={"choices": list(GEMM_DTYPES), "help":
                                   "older spelling of --precision (float32 = fp32, bfloat16 = bf16, ...)"})
    tf32: bool = field(default=False, metadata={"action": "store_true", "help": "same as --precision tf32"})
    overwrite: bool = field(default=False, metadata={"common": True})

    def __post_init__(self):
        super().__post_init__()
        if not math.isfinite(self.jaccard_threshold):
            raise UserError(f"--jaccard_threshold must be a finite number, got {self.jaccard_threshold}")

    def run(self) -> list[Path]:
        return run_correlations(self)



def build_parser(defaults: dict | None = None, description: str | None = None) -> argparse.ArgumentParser:
    """The CLI of correlations_fast.py / correlations.py: the flags of CorrelationConfig's fields."""
    from .flags import add_dataclass

    p = argparse.ArgumentParser(description=description or "Neuron-to-neuron correlations between two models "
                                "(one pass over the data for every baseline).",
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dataclass(p, CorrelationConfig, defaults)
    return p


def _stats_name(args, tile: int, n_tiles: int, shard: int | None, n_shards: int) -> str:
    tag = "+".join(sorted(args.baseline)) + f".seed{args.seed}.k{args.n_rotations}.bs{args.batch_size}.n{args.n_seq}"
    part = "run" if shard is None else f"shard-{shard:05d}-of-{n_shards:05d}"
    return f"{tag}.{part}.tile-{tile:03d}-of-{n_tiles:03d}.pt"


@dataclass
class MemoryPlan:
    """What a correlation job holds on its correlation device, in bytes, and the model-1 row tiles
    that fit the budget (each tile is one pass over the data, forwards included)."""
    budget: int | None                  # None: no cap (a CPU without --max_memory_gb)
    per_row: int                        # grows with the tile: accumulators, GEMM scratch, x rows
    fixed: dict                         # independent of the tile: weights, forward, y, Grams, finaliser
    tiles: list

    @property
    def peak(self) -> int:
        return sum(self.fixed.values()) + self.per_row * max(r1 - r0 for r0, r1 in self.tiles)

    def describe(self) -> str:
        gib = lambda b: f"{b / 2 ** 30:.1f} GiB"
        parts = ", ".join(f"{k} {gib(v)}" for k, v in self.fixed.items() if v)
        cap = "no cap" if self.budget is None else f"budget {gib(self.budget)}"
        return (f"memory plan: {len(self.tiles)} tile(s) of <= {max(r1 - r0 for r0, r1 in self.tiles)} model-1 rows, "
                f"peak ~{gib(self.peak)} ({cap}; per row {self.per_row / 2 ** 20:.2f} MiB; {parts})")


def plan_memory(n1: int, d1: int, models_2: dict, *, tokens: int, precision: str, streams: dict,
                rotation: dict, budget: int | None, weights: int = 0, forward: int = 0,
                finaliser_block: int = 1 << 30, n_baselines: int = 1) -> MemoryPlan:
    """The memory plan of one pass: models_2 {name: (layers, d_mlp)}; tokens: rows of a batch
    (batch_size * context, before masking); streams {name: statistics streams}; rotation {name: bool}.

    Per model-1 row (all model-2 columns N2 of every model 2):
      accumulator  streams * N2 * (4 float32 hi + 2 bfloat16 lo in fp32 precision)
      GEMM scratch fp32 only: a quarter-by-quarter output tile, N2 / 4 * 4 per row (+ 16 MiB work)
      x            tokens * 4 (the row's activations of one batch; + 2 for its bf16 / fp16 copy)
    Fixed: the models' weights and forward temporaries on this device, y [tokens, N2] float32 plus one
    baseline variant's copy, the Gram matrices and rotations (float64 + float32) of rotation
    baselines, and the finaliser's row block plus summaries. Tiles are balanced (equal sizes, whole
    layers when that does not add a tile)."""
    comp, low = precision == "fp32", precision in ("bf16", "fp16")
    per_row = tokens * (6 if low else 4)                       # x, and its bf16 / fp16 copy
    fixed = {"weights": weights, "forward": forward, "y": 0, "gram": 0, "finaliser": 0, "scratch": 0}
    for m2, (l2, d2) in models_2.items():
        n2 = l2 * d2
        per_row += streams[m2] * n2 * (6 if comp else 4) + (n2 if comp else 0)
        fixed["y"] = max(fixed["y"], tokens * n2 * 4 * (2 if streams[m2] > 1 else 1) + tokens * n2 * (2 if low else 0))
        if rotation[m2]:
            fixed["gram"] += l2 * d2 * d2 * (8 + 8 + 4)       # Gram, float64 and float32 rotations
            fixed["finaliser"] = max(fixed["finaliser"], 3 * d2 * d2 * 8)  # col_scale: one layer's float64 scratch
        # one row block of float64 / float32 temporaries (~40 B an entry), and the summaries
        fixed["finaliser"] = max(fixed["finaliser"], min(finaliser_block, 40 * n1 * n2))
        fixed["finaliser"] += n_baselines * (n1 + n2) * (100 * 12 + 101 * 8 + 64)
    # centring chunks, the compensated add's work buffer, allocator rounding
    fixed["scratch"] = (16 << 20) * (2 if comp else 1) + sum(fixed.values()) // 20
    if budget is None:
        return MemoryPlan(None, per_row, fixed, [(0, n1)])
    room = budget - sum(fixed.values())
    if room < per_row:
        need = (sum(fixed.values()) + per_row * min(n1, d1)) / 2 ** 30
        raise UserError(f"--max_memory_gb {budget / 2 ** 30:.2f} is too small for this job: the models, one batch and "
                        f"its statistics need {sum(fixed.values()) / 2 ** 30:.2f} GiB before any model-1 row, and one "
                        f"layer of rows {need:.2f} GiB (lower --batch_size, or use a larger device)")
    n_tiles = math.ceil(n1 / min(n1, room // per_row))
    rows = math.ceil(n1 / n_tiles)
    whole = math.ceil(rows / d1) * d1
    if d1 < rows < n1 and whole * per_row <= room:
        rows = whole
    return MemoryPlan(budget, per_row, fixed, [(r, min(r + rows, n1)) for r in range(0, n1, rows)])


def _device_budget(device, max_memory_gb: float | None) -> int | None:
    """--max_memory_gb in bytes; without it, 92% of a CUDA device's free memory, no cap on a CPU."""
    from .device import free_bytes

    if max_memory_gb:
        return int(max_memory_gb * 2 ** 30)
    free = free_bytes(device)
    return None if free is None else int(free * 0.92)


def forward_bytes(d_model: int, d_mlp: int, n_heads: int, batch: int, ctx: int) -> int:
    """A forward's temporaries: the residual stream and MLP activations of a batch several times over,
    and one layer's attention scores and pattern (float32)."""
    return 4 * batch * ctx * (6 * d_model + 3 * d_mlp) + 3 * 4 * batch * n_heads * ctx * ctx


def gpt2_pair_plan(layers: int, d_model: int, d_mlp: int, heads: int, precision: str, device_gb: float,
                   batch: int = 32, ctx: int = 512, vocab: int = 50257) -> MemoryPlan:
    """The plan of a GPT-2-shaped pair (none + rotation, both models on the device) on a device of
    device_gb with 92% of it free, from the shapes alone: the README's and gpu_bench's table."""
    params = layers * (12 * d_model ** 2 + 13 * d_model) + vocab * d_model + 1024 * d_model
    return plan_memory(layers * d_mlp, d_mlp, {"b": (layers, d_mlp)}, tokens=batch * ctx, precision=precision,
                       streams={"b": 1}, rotation={"b": True}, budget=int(0.92 * device_gb * 2 ** 30),
                       weights=2 * 4 * params, forward=forward_bytes(d_model, d_mlp, heads, batch, ctx), n_baselines=2)


def _recorded_precision(precision: str) -> str | None:
    """The precision a run record names: tf32 rounds like batching does (errors below the summaries'
    float16 storage: README's precision table), so fp32 and tf32 share records; bf16 / fp16 GEMM
    inputs err more and are recorded."""
    return precision if precision in ("bf16", "fp16") else None


class _Job:
    """Everything one invocation needs: models, data, batches of this shard, tiles, output folders."""

    def __init__(self, args):
        from .device import resolve_device

        self.args = args
        if args.batch_size < 1 or args.n_rotations < 1 or args.num_shards < 1:
            raise UserError("--batch_size, --n_rotations and --num_shards must be >= 1")
        check_n_seq(args.n_seq)
        if not 0 <= args.shard_index < args.num_shards:
            raise UserError(f"--shard_index {args.shard_index} must be in [0, {args.num_shards})")
        self.sim = similarity_name(args.similarity_type, args.jaccard_threshold)
        self.dev1 = resolve_device(args.model_1_device)
        self.dev2 = resolve_device(args.model_2_device)
        self.devc = resolve_device(args.correlation_device)
        older = "tf32" if args.tf32 else GEMM_DTYPES.get(args.gemm_dtype)
        if older and args.precision not in ("auto", older):
            raise UserError(f"--precision {args.precision} and --{'tf32' if args.tf32 else 'gemm_dtype ' + args.gemm_dtype} "
                            f"disagree: pass one of them")
        self.precision = resolve_precision(older or args.precision, self.devc)
        self.baselines = list(dict.fromkeys(args.baseline))

    def out_dir(self, m2: str, baseline: str) -> Path:
        from . import paths
        return paths.correlation_path(self.args.model_1_name, m2, self.args.token_dataset, self.sim, baseline)

    def stats_dir(self, m2: str) -> Path:
        return self.out_dir(m2, "none").parent / f"{self.sim}.stats"

    def inputs(self, m2: str) -> dict:
        """The weights, rows and code a folder's (and a statistics file's) numbers come from."""
        from .models import model_family

        a = self.args
        return {"model_1_fingerprint": model_fingerprint(a.model_1_name), "model_2_fingerprint": model_fingerprint(m2),
                "dataset_fingerprint": dataset_fingerprint(a.token_dataset, model_family(a.model_1_name)),
                "code_version": runs.code_version()}

    def settings(self, m2: str, baseline: str) -> dict:
        """The run record: everything that changes a folder's numbers (batching and devices do not,
        beyond float rounding), the inputs' fingerprints and the code version (runs.py)."""
        a = self.args
        out = {"model_1": a.model_1_name, "model_2": m2, "token_dataset": a.token_dataset, "n_seq": a.n_seq,
               "activation_location": a.activation_location, "drop_newlines": a.drop_newlines,
               "similarity": self.sim, "baseline": baseline,
               **self.inputs(m2)}
        if baseline != "none":
            out["seed"] = a.seed
        if baseline == "rotation":
            out["n_rotations"] = a.n_rotations
        out["precision"] = _recorded_precision(self.precision)  # None (fp32 / tf32) also matches earlier records
        return out

    def done(self, m2: str, baseline: str) -> bool:
        """True when the folder holds this run's finished artifacts; a folder finished with other (or
        unrecorded) settings is never served as this run's (runs.finished)."""
        a, folder = self.args, self.out_dir(m2, baseline)
        want = self.settings(m2, baseline)
        files = SUMMARY_FILES + ((FULL_FILE,) if a.save_full_correlation_matrix else ())
        done = runs.finished(folder, RUN_FILE, want, a.overwrite, files, project=tuple(want))
        if done and a.save_full_correlation_matrix:  # the full matrix at another precision is not this run's
            have = (runs.read_record(folder / RUN_FILE) or {}).get("full_matrix_precision")
            if have != a.save_precision and not a.overwrite:
                raise UserError(f"{folder / FULL_FILE} was saved at --save_precision {have}, not {a.save_precision}; "
                                f"pass --overwrite to replace it")
            return have == a.save_precision
        return done

    def pending(self) -> dict[str, list[str]]:
        """model 2 -> baselines still to compute (finished artifacts are skipped)."""
        out = {}
        for m2 in dict.fromkeys(self.args.model_2_name):
            todo = [b for b in self.baselines if not self.done(m2, b)]
            if todo:
                out[m2] = todo
        return out


def _stats_for(job, baselines, tile, n2_layers, d2, args):
    r0, r1 = tile
    return CorrelationStats(n_rows=r1 - r0, layers_2=n2_layers, d_2=d2, row_offset=r0,
                            similarity=args.similarity_type, jaccard_threshold=args.jaccard_threshold,
                            baselines=baselines, n_rotations=args.n_rotations, seed=args.seed,
                            device=job.devc, precision=job.precision)


def run_correlations(config: CorrelationConfig) -> list[Path]:
    """Run (or shard, or merge) the correlation job `config` (or parsed arguments); returns written folders."""
    args = CorrelationConfig.from_args(config)
    job = _Job(args)
    pending = job.pending()
    if not pending:
        print(f"correlations: all artifacts exist for {args.model_1_name} vs {', '.join(args.model_2_name)} "
              f"({job.sim}: {', '.join(job.baselines)}); nothing to do")
        return []
    with matmul_precision(job.precision):  # one precision for the forwards, Grams, GEMMs and finaliser
        return _run_pending(job, pending)


def _run_pending(job: "_Job", pending: dict) -> list[Path]:
    from .capture import check_same_tokenizer
    from .models import load_model

    args = job.args
    model_1 = load_model(args.model_1_name, device=str(job.dev1))
    models_2 = {}
    for m2 in pending:
        models_2[m2] = model_1 if m2 == args.model_1_name and job.dev1 == job.dev2 else load_model(m2, device=str(job.dev2))
        check_same_tokenizer(model_1, models_2[m2])
    run = _Run(job, pending, model_1, models_2)
    if args.merge:
        fins = {m2: run.merged(m2) for m2 in pending}
    else:
        fins = run.stream()
        if run.sharded:
            for m2 in pending:
                print(f"shard {args.shard_index}/{args.num_shards} statistics: {job.stats_dir(m2)}")
            return [job.stats_dir(m2) for m2 in pending]
    written = [out for m2 in pending for out in run.write(m2, fins[m2])]
    if not args.merge:
        run.remove_own_statistics()
    return written


class _Run:
    """One invocation's models, shapes, tiles and statistics files; `stream` makes one pass per tile."""

    def __init__(self, job: "_Job", pending: dict, model_1, models_2: dict):
        self.job, self.args, self.pending = job, job.args, pending
        self.model_1, self.models_2 = model_1, models_2
        self.L1, self.D1 = model_1.cfg.n_layers, model_1.cfg.d_mlp
        self.n1 = self.L1 * self.D1
        self.layers2 = {m2: m.cfg.n_layers for m2, m in models_2.items()}
        self.d2 = {m2: m.cfg.d_mlp for m2, m in models_2.items()}
        self.sharded = self.args.num_shards > 1 and not self.args.merge
        if self.args.merge:   # the shards' own tiling, read off their files
            self.tiles = [None] * self._shard_tiles()
            return
        self.ds = self._dataset()
        self.plan = self._plan(len(self.ds[0]["tokens"]))
        self.tiles = self.plan.tiles
        print(self.plan.describe(), flush=True)

    def _dataset(self):
        from .token_datasets import check_fits, load_token_dataset

        ds = load_token_dataset(self.args.token_dataset, self.model_1.family, self.model_1.tokenizer)
        if len(ds) == 0:
            raise UserError(f"token dataset {self.args.token_dataset!r} is empty: remake it with make_dataset.py")
        check_fits([self.model_1, *self.models_2.values()], self.args.token_dataset, len(ds[0]["tokens"]))
        return ds

    def _plan(self, ctx: int) -> MemoryPlan:
        """The memory plan on the correlation device (models counted where they share it)."""
        job, args = self.job, self.args
        on_c = lambda dev: dev == job.devc
        models = ([self.model_1] if on_c(job.dev1) else []) + \
                 [m for m in dict.fromkeys(self.models_2.values()) if on_c(job.dev2) and m is not self.model_1]
        streams, rotation = {}, {}
        for m2, baselines in self.pending.items():
            probe = CorrelationStats(n_rows=1, layers_2=1, d_2=1, similarity=args.similarity_type,
                                     baselines=baselines, n_rotations=args.n_rotations)
            streams[m2], rotation[m2] = len(probe.streams), any(s.gram is not None for s in probe.streams.values())
        return plan_memory(self.n1, self.D1, {m2: (self.layers2[m2], self.d2[m2]) for m2 in self.pending},
                           tokens=args.batch_size * ctx, precision=job.precision, streams=streams, rotation=rotation,
                           budget=_device_budget(job.devc, args.max_memory_gb),
                           weights=sum(p.numel() * p.element_size() for m in models for p in m.parameters()),
                           forward=max([forward_bytes(m.cfg.d_model, m.cfg.d_mlp, m.cfg.n_heads, args.batch_size, ctx)
                                        for m in models] or [0]),
                           finaliser_block=(1 << 30) if job.devc.type == "cuda" else (256 << 20),
                           n_baselines=max(map(len, self.pending.values())))

    def _shard_tiles(self) -> int:
        """How many row tiles the shards of this merge used (one count for every shard and model 2)."""
        counts = set()
        for m2 in self.pending:
            head = _stats_name(self.args, 0, 1, 0, 1).split(".shard-")[0]
            for f in self.job.stats_dir(m2).glob(f"{head}.shard-*-of-*.tile-*-of-*.pt"):
                counts.add(int(f.name.rsplit("-of-", 1)[1].split(".")[0]))
        if len(counts) > 1:
            raise UserError(f"--merge: the shard statistics were tiled in {sorted(counts)} ways (different "
                            f"--max_memory_gb or devices): rerun the shards with one --max_memory_gb")
        return counts.pop() if counts else 1

    def stats_path(self, m2: str, tile: int, shard: int | None, n_shards: int | None = None) -> Path:
        n = self.args.num_shards if n_shards is None else n_shards
        return self.job.stats_dir(m2) / _stats_name(self.args, tile, len(self.tiles), shard, n)

    def finalizer(self, m2: str) -> CorrelationFinalizer:
        return _finalizer(self.job, self.args, self.pending[m2], self.n1, self.L1, self.layers2[m2], self.d2[m2])

    def merged(self, m2: str) -> CorrelationFinalizer:
        fin = self.finalizer(m2)
        for t in range(len(self.tiles)):
            fin.add(_merge_shards(self.job, self.args, m2, t, len(self.tiles), self.stats_path))
        return fin

    def _resume(self, m2: str, path: Path, tile: tuple[int, int], progress_key: dict, b_start: int):
        """(statistics, first batch to add): a saved checkpoint of this very run (same settings, weights,
        rows and code: `progress_key` holds them), else fresh ones."""
        job, args, baselines = self.job, self.args, self.pending[m2]
        if path.exists():
            st, saved = CorrelationStats.load(path, device=job.devc, precision=job.precision)
            prog = saved.get("progress", {})
            if {k: prog.get(k) for k in progress_key} == progress_key and st.baselines == tuple(baselines):
                return st, prog["next_batch"]
            print(f"  ignoring statistics from a different run: {path}")
        return _stats_for(job, baselines, tile, self.layers2[m2], self.d2[m2], args), b_start

    def stream(self) -> dict:
        """One pass over this shard's batches per tile; returns {model 2: finaliser} (None when sharded)."""
        import time

        from .token_datasets import shard_rows

        args, ds = self.args, self.ds
        n_seq = len(ds) if args.n_seq < 0 else min(args.n_seq, len(ds))
        n_batches = math.ceil(n_seq / args.batch_size)
        b_start, b_stop = shard_rows(n_batches, args.num_shards, args.shard_index) if self.sharded else (0, n_batches)
        base_key = {"dataset": args.token_dataset, "batches": [b_start, b_stop], "n_seq": n_seq,
                    "batch_size": args.batch_size, "drop_newlines": args.drop_newlines,
                    "activation_location": args.activation_location, "precision": _recorded_precision(self.job.precision)}
        keys = {m2: {**base_key, **self.job.inputs(m2)} for m2 in self.pending}  # per model 2: its weights too
        shard = args.shard_index if self.sharded else None
        save_tiles = self.sharded or args.checkpoint_every > 0   # a plain tiled run finalises each tile at once
        fins = {m2: None for m2 in self.pending}
        for t, tile in enumerate(self.tiles):
            stats, start = {}, {}
            for m2 in self.pending:
                stats[m2], start[m2] = self._resume(m2, self.stats_path(m2, t, shard), tile, keys[m2], b_start)
            first = min(start.values())
            t0 = time.time()
            self._batches(ds, n_seq, t, tile, stats, start, first, b_start, b_stop, shard, keys)
            for m2 in self.pending:
                if save_tiles and start[m2] < b_stop:
                    stats[m2].save(self.stats_path(m2, t, shard), progress={**keys[m2], "next_batch": b_stop})
                if not self.sharded:
                    fins[m2] = fins[m2] or self.finalizer(m2)
                    fins[m2].add(stats[m2])
            del stats
            if b_stop > first:
                print(f"  tile {t + 1}/{len(self.tiles)}: {b_stop - first} batches in {time.time() - t0:.1f} s")
        return fins

    def _batches(self, ds, n_seq, t, tile, stats, start, first, b_start, b_stop, shard, keys) -> None:
        """Add batches first..b_stop of tile t to every model 2's statistics (checkpointing as asked)."""
        from .capture import keep_rows, masked_activations, token_mask
        from .device import to_device
        from .token_datasets import token_tensor

        args, job, D1 = self.args, self.job, self.D1
        r0, r1 = tile
        l0, l1 = r0 // D1, (r1 - 1) // D1 + 1
        nt = len(self.tiles)
        for b in _progress(range(first, b_stop), f"tile {t + 1}/{nt}" if nt > 1 else "batches"):
            # the host knows the tokens, so it computes the kept rows: no device ever waits on a mask
            tokens = token_tensor(ds, b * args.batch_size, min((b + 1) * args.batch_size, n_seq))   # [batch, pos]
            rows = keep_rows(token_mask(tokens, self.model_1.tokenizer, DROP_NEWLINES[args.drop_newlines]))  # [T]
            on = {dev: (to_device(tokens, dev), to_device(rows, dev)) for dev in {job.dev1, job.dev2}}
            x = masked_activations(self.model_1, *on[job.dev1], args.activation_location, layers=list(range(l0, l1)))
            x = x[:, r0 - l0 * D1:r1 - l0 * D1].to(job.devc)                                            # [T, rows]
            todo = [m2 for m2 in self.pending if start[m2] <= b]
            for i, m2 in enumerate(todo):
                y = masked_activations(self.models_2[m2], *on[job.dev2], args.activation_location).to(job.devc)  # [T, N2]
                last = i == len(todo) - 1
                stats[m2].update(x if last else x.clone(), y, batch_id=b, overwrite_inputs=True)
            if args.checkpoint_every and (b + 1 - b_start) % args.checkpoint_every == 0 and b + 1 < b_stop:
                for m2 in todo:
                    stats[m2].save(self.stats_path(m2, t, shard), progress={**keys[m2], "next_batch": b + 1})

    def write(self, m2: str, fin: CorrelationFinalizer) -> list[Path]:
        """The summaries (and full matrix) of every pending baseline, then the run record (last)."""
        from . import paths

        written = []
        for b, res in fin.results().items():
            out = self.job.out_dir(m2, b)
            (out / RUN_FILE).unlink(missing_ok=True)  # a kill while replacing must not leave the old record
            if res["correlation"] is not None:
                paths.torch_save_atomic(res["correlation"], out / FULL_FILE)
            paths.torch_save_atomic(res["summary_T"], out / SUMMARY_FILES[1])
            paths.torch_save_atomic(res["summary"], out / SUMMARY_FILES[0])
            record = self.job.settings(m2, b)
            if record["precision"] is None:  # fp32 / tf32 records read as they always did
                del record["precision"]
            if res["correlation"] is not None:
                record["full_matrix_precision"] = self.args.save_precision
            runs.write_record(out / RUN_FILE, record)
            written.append(out)
            print(f"wrote {out}")
        return written

    def remove_own_statistics(self) -> None:
        """A single run's tile / checkpoint statistics, once its artifacts are written."""
        for m2 in self.pending:
            for t in range(len(self.tiles)):
                self.stats_path(m2, t, None).unlink(missing_ok=True)


def _finalizer(job, args, baselines, n1, layers_1, layers_2, d_2):
    return CorrelationFinalizer(n1, layers_2, d_2, baselines, similarity=args.similarity_type,
                                n_rotations=args.n_rotations, seed=args.seed,
                                full_matrix=args.save_full_correlation_matrix, save_precision=args.save_precision,
                                layers_1=layers_1, device=job.devc)


def _merge_shards(job, args, m2, tile, n_tiles, stats_path) -> CorrelationStats:
    """Add every shard's statistics for one tile (any order); all must be present and complete."""
    n = args.num_shards
    if n == 1:   # not given: read the shard count off the files
        found = sorted(job.stats_dir(m2).glob(_stats_name(args, tile, n_tiles, 0, 1).replace(
            "shard-00000-of-00001", "shard-*-of-*")))
        if not found:
            raise UserError(f"--merge: no shard statistics in {job.stats_dir(m2)} for these settings "
                            f"(run with --num_shards N --shard_index i first)")
        n = int(found[0].name.split(".shard-")[1].split("-of-")[1].split(".")[0])
    merged = None
    missing = [i for i in range(n) if not stats_path(m2, tile, i, n).exists()]
    if missing:
        raise UserError(f"--merge: statistics of shard(s) {missing} of {n} are missing in {job.stats_dir(m2)} "
                        f"(the merge needs the shard runs' --baseline, --seed, --n_rotations, --batch_size, "
                        f"--n_seq and --max_memory_gb)")
    for i in range(n):  # streaming: each shard stays in its (memory-mapped) file, read in row chunks
        st, saved = CorrelationStats.load(stats_path(m2, tile, i, n), device="cpu", mmap=True, precision=job.precision)
        prog = saved.get("progress", {})
        if prog.get("next_batch") != prog.get("batches", [None, None])[1]:
            raise UserError(f"--merge: shard {i} has not finished ({stats_path(m2, tile, i, n)})")
        want = {"drop_newlines": args.drop_newlines, "activation_location": args.activation_location,
                "precision": _recorded_precision(job.precision), **job.inputs(m2)}
        diff = runs.differences({k: prog.get(k) for k in want}, want)
        if diff:
            raise UserError(f"--merge: shard {i} was made otherwise ({', '.join(diff)}): rerun the shards "
                            f"({stats_path(m2, tile, i, n)})")
        if merged is None:
            merged = CorrelationStats(**st.config(), device=job.devc, precision=job.precision)
        merged.merge(st)
        del st
    return merged


def _progress(it, desc):
    try:
        from tqdm.auto import tqdm
        return tqdm(it, desc=desc, leave=False)
    except ImportError:
        return it


def main(argv=None, defaults: dict | None = None, description: str | None = None) -> list[Path]:
    """Entry point of correlations_fast.py / correlations.py (UserError -> one message, exit 2)."""
    from .errors import cli_entry

    return cli_entry(lambda: run_correlations(build_parser(defaults, description).parse_args(argv)))()
