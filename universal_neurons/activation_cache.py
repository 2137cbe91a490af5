"""Activation caches (activations.py): activations of chosen neurons, or of whole layers, on a dataset.

Written to `<output_dir (paths.activation_dir())>/<model>/<dataset>/`:

Neuron mode (a neuron subset is given):
    {l}.{n}.pt   fp16 [n_seq * ctx]  activation at blocks.{l}.<location> of neuron n, flat index
                 seq * ctx + pos over every position (BOS included); fp32 with --save_precision 32.
    loss.pt      fp16 [n_seq, ctx]   next-token loss -log p(token[pos + 1] | tokens[:pos + 1]) in
                                     nats; the last position has no next token: NaN.
    entropy.pt   fp16 [n_seq, ctx]   entropy (nats) of the predicted next-token distribution.
    rank.pt      int32 [n_seq, ctx]  rank of the true next token among the logits (0 = top: the
                                     number of tokens with a strictly larger logit); last position -1.
  Files that exist are kept: a rerun computes only the missing neurons (and the three above if missing).

Layer mode (no subset):
    {l}.all.{agg}.all.pt  per layer: agg 'none' keeps every position [n_seq * ctx, D]; 'mean' and
                 'max' aggregate over the positions of each sequence (all of them, as the original;
                 with --exclude_special_tokens all but BOS/EOS/padding) and 'last' takes the last
                 position: [n_seq, D].
                 --save_precision 16 / 32: a fp16 / fp32 tensor; 8: per-neuron affine uint8 codes,
                 a dict {codes uint8 [rows, D], scale fp32 [D], zero_point fp32 [D], shape}, read
                 back with `dequantize` (x ~ codes * scale + zero_point, error <= scale / 2).

Both modes:
    activation_config.json  the folder's run record (runs.py): {"location": hook under blocks.{l}.,
                 "model", "dataset", "n_seq", "model_fingerprint", "dataset_fingerprint",
                 "code_version", "files": {file name: {"save_precision", ("exclude_special_tokens")}}}.
                 A rerun reuses a file only when the folder-wide settings and the file's own match;
                 other settings stop the run with the differences unless --overwrite (one folder
                 holds one location, model, dataset and n_seq). explain.py --activation_path reads
                 the location to know whether to apply the activation function (pre-activation
                 caches) or not; a folder without the file is taken to hold mlp.hook_pre,
                 activations.py's default and the original's assumption.

Rows are buffered in memory-mapped files under the output folder while streaming (nothing of size
[tokens, neurons] is held in RAM), then saved one file at a time, atomically.
"""
from __future__ import annotations

import math
import shutil
from dataclasses import dataclass, field
import tempfile
from pathlib import Path

import numpy as np
import torch

from . import paths, runs
from .errors import UserError, check_n_seq, check_neuron, parse_neuron
from .flags import StageConfig
from .token_datasets import run_inputs

# location -> the model config attribute giving its width
LOCATIONS = {"mlp.hook_pre": "d_mlp", "mlp.hook_post": "d_mlp", "hook_resid_pre": "d_model",
             "hook_resid_mid": "d_model", "hook_resid_post": "d_model", "hook_mlp_out": "d_model",
             "hook_attn_out": "d_model"}
AGGREGATIONS = ("none", "mean", "max", "last")
PRECISIONS = (8, 16, 32)
CONFIG_FILE = "activation_config.json"


# 8-bit per-channel quantisation -------------------------------------------------------------------

def quantize_per_channel(x: torch.Tensor) -> dict:
    """x [rows, D] -> {codes uint8 [rows, D], scale fp32 [D], zero_point fp32 [D], shape}.

    Per neuron (column): zero_point = min, scale = (max - min) / 255, codes = round((x - min) / scale),
    so |dequantize - x| <= scale / 2 (plus float32 rounding). A constant column gets scale 0 and is
    exact. min / max ignore non-finite values; NaN / inf entries cannot be represented and get the
    code of the nearest end (NaN -> 0).
    """
    x = x.float()
    finite = torch.isfinite(x)
    lo = torch.where(finite, x, math.inf).amin(0)
    hi = torch.where(finite, x, -math.inf).amax(0)
    lo = torch.where(torch.isfinite(lo), lo, 0.0)  # an all-NaN column
    hi = torch.where(torch.isfinite(hi), hi, lo)
    scale = (hi - lo) / 255
    safe = torch.where(scale > 0, scale, 1.0)
    codes = torch.nan_to_num((x - lo) / safe, nan=0.0).round_().clamp_(0, 255).to(torch.uint8)
    return {"codes": codes, "scale": scale, "zero_point": lo, "shape": tuple(x.shape)}


def dequantize(q: dict) -> torch.Tensor:
    """The float32 [rows, D] tensor that `quantize_per_channel` encoded."""
    return (q["codes"].float() * q["scale"] + q["zero_point"]).reshape(q["shape"])


def load_activations(path: str | Path) -> torch.Tensor:
    """A cached activation file as float32 (fp16 / fp32 tensors, or quantised dicts)."""
    obj = paths.torch_load(path)
    return dequantize(obj) if isinstance(obj, dict) else obj.float()


def read_cache(model: str, dataset: str, file: str, root: str | Path | None = None) -> torch.Tensor:
    """The one reader of a cache folder's tensors: `file` (e.g. '3.17.pt', '2.all.none.all.pt', 'loss.pt')
    of paths.activation_cache_path(model, dataset, root), 8-bit codes dequantized."""
    path = paths.activation_cache_path(model, dataset, root) / file
    if not path.is_file():
        raise UserError(f"no cached activations {path} (run activations.py --model {model} --token_dataset {dataset})")
    return load_activations(path)


def read_cache_config(folder: str | Path) -> dict | None:
    """A cache folder's activation_config.json (None when the folder has none)."""
    import json

    path = Path(folder) / CONFIG_FILE
    if not path.is_file():
        return None
    try:
        cfg = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read {path}: {e}") from None
    if not isinstance(cfg, dict) or cfg.get("location") not in LOCATIONS:
        raise UserError(f"{path} does not name an activation location ({', '.join(LOCATIONS)})")
    return cfg


def _folder_record(folder: Path, want: dict, overwrite: bool) -> dict:
    """The folder's record for this run: the existing one when its folder-wide settings match (its
    per-file entries kept), a fresh one for a new folder or with `overwrite` (old files removed);
    otherwise UserError naming the differences."""
    old = read_cache_config(folder)
    have = None if old is None else {k: old.get(k) for k in want}
    unrecorded = old is None and folder.is_dir() and any(folder.glob("*.pt"))
    if have == want or (old is None and not unrecorded):
        return {**want, "files": dict(old.get("files", {})) if old else {}}
    if not overwrite:
        why = (f"holds activations with no record of their settings ({CONFIG_FILE})" if unrecorded else
               "holds activations cached with other settings: " + ", ".join(runs.differences(have, want)))
        raise UserError(f"{folder} {why}; pass --overwrite to replace them (or another --output_dir)")
    runs.would(f"replace the activations in {folder}")
    for f in folder.glob("*.pt"):
        f.unlink()
    return {**want, "files": {}}


def _plan_files(record: dict, folder: Path, wanted: dict[str, dict], overwrite: bool) -> list[str]:
    """Files of `wanted` ({name: per-file settings}) to compute: missing, or present but not recorded
    as finished (an interrupted run); present with other per-file settings: UserError unless overwrite."""
    todo = []
    for name, settings in wanted.items():
        have = record["files"].get(name)
        if (folder / name).is_file() and have == settings:
            continue
        if (folder / name).is_file() and have is not None and not overwrite:
            raise UserError(f"{folder / name} was cached with other settings: "
                            f"{', '.join(runs.differences(have, settings))}; pass --overwrite to replace it")
        todo.append(name)
    return todo


def _write_record(folder: Path, record: dict) -> None:
    runs.write_record(folder / CONFIG_FILE, record)


# Next-token statistics -----------------------------------------------------------------------------

def next_token_stats(logits: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """logits [B, P, V], tokens [B, P] -> loss, entropy (float32 [B, P], nats), rank (int32 [B, P]).

    Position p predicts tokens[p + 1]; the last position has loss NaN and rank -1.
    """
    logp = torch.log_softmax(logits.float(), dim=-1)
    entropy = -(logp.exp() * logp).sum(-1)
    target = tokens[:, 1:].unsqueeze(-1)  # [B, P - 1, 1]
    logp_next = logp[:, :-1].gather(-1, target)
    loss = torch.full(tokens.shape, math.nan, device=logits.device)
    loss[:, :-1] = -logp_next.squeeze(-1)
    rank = torch.full(tokens.shape, -1, dtype=torch.int32, device=logits.device)
    rank[:, :-1] = (logp[:, :-1] > logp_next).sum(-1).int()
    return loss, entropy, rank


# Neuron specs ---------------------------------------------------------------------------------------

def parse_neuron_subset(specs: list[str] | None, subset_file: str | Path | None, n_layers: int,
                        width: int) -> list[tuple[int, int]]:
    """'l.n' specs and/or a CSV with layer, neuron columns -> [(layer, neuron)], in order, deduplicated."""
    import pandas as pd

    pairs = []
    for spec in specs or []:
        for part in str(spec).split(","):  # the original also accepted comma-joined lists
            if part.strip():
                l, n = parse_neuron(part)
                check_neuron(l, n, n_layers, width, part.strip())
                pairs.append((l, n))
    if subset_file is not None:
        path = Path(subset_file)
        if not path.is_file():
            raise UserError(f"--neuron_subset_file {path} not found")
        try:
            df = pd.read_csv(path)
        except (ValueError, pd.errors.ParserError) as e:
            raise UserError(f"cannot read --neuron_subset_file {path}: {e}") from None
        if not {"layer", "neuron"} <= set(df.columns):
            raise UserError(f"--neuron_subset_file {path} needs columns 'layer' and 'neuron' (has {list(df.columns)})")
        for l, n in zip(df["layer"], df["neuron"]):
            if not (float(l).is_integer() and float(n).is_integer()):
                raise UserError(f"--neuron_subset_file {path}: non-integer neuron {l}.{n}")
            check_neuron(int(l), int(n), n_layers, width)
            pairs.append((int(l), int(n)))
    return list(dict.fromkeys(pairs))


# Streaming into memory-mapped buffers ---------------------------------------------------------------

class _Buffers:
    """Named numpy memmaps in a temporary folder (removed by close())."""

    def __init__(self, parent: Path):
        parent.mkdir(parents=True, exist_ok=True)
        self.dir = Path(tempfile.mkdtemp(prefix=".buffers.", dir=parent))
        self.arrays: dict = {}

    def new(self, key, shape, dtype) -> np.ndarray:
        self.arrays[key] = np.lib.format.open_memmap(self.dir / f"{len(self.arrays)}.npy", mode="w+",
                                                     dtype=dtype, shape=shape)
        return self.arrays[key]

    def close(self):
        self.arrays.clear()
        shutil.rmtree(self.dir, ignore_errors=True)


def _save(obj, path: Path) -> None:
    paths.torch_save_atomic(obj, path)


@torch.no_grad()
def cache_neurons(model, tokens: torch.Tensor, neurons: list[tuple[int, int]], folder: Path,
                  location: str = "mlp.hook_pre", batch_size: int = 32, precision: int = 16,
                  next_token: bool = True, progress: bool = True) -> list[Path]:
    """Neuron mode on tokens [n_seq, ctx]: write {l}.{n}.pt (and loss / entropy / rank if next_token)."""
    from tqdm.auto import tqdm

    n_seq, ctx = tokens.shape
    dev = next(model.parameters()).device
    by_layer: dict[int, list[int]] = {}
    for l, n in neurons:
        by_layer.setdefault(l, []).append(n)
    dtype = np.float32 if precision == 32 else np.float16
    buf = _Buffers(folder)
    written = []
    try:
        acts = {l: buf.new(l, (len(ns), n_seq * ctx), dtype) for l, ns in by_layer.items()}  # [neurons, tokens]
        if next_token:
            stats = {name: buf.new(name, (n_seq, ctx), np.int32 if name == "rank" else np.float16)
                     for name in ("loss", "entropy", "rank")}
        span = {}

        def save(act, hook, l):
            x = act[..., torch.as_tensor(by_layer[l], device=act.device)]  # [B, P, n]
            acts[l][:, span["lo"]:span["hi"]] = x.reshape(-1, x.shape[-1]).T.float().cpu().numpy()

        hooks = [(f"blocks.{l}.{location}", lambda a, hook, l=l: save(a, hook, l)) for l in by_layer]
        stop = None if next_token or max(by_layer) + 1 >= model.cfg.n_layers else max(by_layer) + 1
        for lo in tqdm(range(0, n_seq, batch_size), desc="activations", disable=not progress):
            toks = tokens[lo:lo + batch_size].to(dev)
            span.update(lo=lo * ctx, hi=(lo + len(toks)) * ctx)
            out = model.run_with_hooks(toks, fwd_hooks=hooks, return_type="logits" if next_token else None,
                                       stop_at_layer=stop)
            if next_token:
                for name, t in zip(("loss", "entropy", "rank"), next_token_stats(out, toks)):
                    stats[name][lo:lo + len(toks)] = t.cpu().numpy()
        for l, ns in by_layer.items():
            for i, n in enumerate(ns):
                path = folder / f"{l}.{n}.pt"
                _save(torch.from_numpy(np.array(acts[l][i])), path)
                written.append(path)
        if next_token:
            for name, arr in stats.items():
                _save(torch.from_numpy(np.array(arr)), folder / f"{name}.pt")
                written.append(folder / f"{name}.pt")
    finally:
        buf.close()
    return written


@torch.no_grad()
def cache_layers(model, tokens: torch.Tensor, folder: Path, location: str = "mlp.hook_pre",
                 aggregation: str = "mean", batch_size: int = 32, precision: int = 8,
                 layers: list[int] | None = None, exclude_special: bool = False,
                 progress: bool = True) -> list[Path]:
    """Layer mode on tokens [n_seq, ctx]: write {l}.all.{agg}.all.pt for each layer."""
    from tqdm.auto import tqdm

    from .capture import position_mask, run_until_last_hook

    if aggregation not in AGGREGATIONS:
        raise UserError(f"unknown --activation_aggregation {aggregation!r}; choose from {AGGREGATIONS}")
    n_seq, ctx = tokens.shape
    width = getattr(model.cfg, LOCATIONS[location])
    layers = list(range(model.cfg.n_layers)) if layers is None else layers
    rows = n_seq * ctx if aggregation == "none" else n_seq
    dtype = np.float16 if precision == 16 else np.float32
    dev = next(model.parameters()).device
    buf = _Buffers(folder)
    written = []
    try:
        out = {l: buf.new(l, (rows, width), dtype) for l in layers}
        span = {}

        def save(act, hook, l):
            x = act.float()  # [B, P, width]
            if aggregation == "none":
                x = x.reshape(-1, width)
            elif aggregation == "last":
                x = x[:, -1]
            else:
                m = span["mask"].unsqueeze(-1)
                if aggregation == "mean":
                    x = (x * m).sum(1) / m.sum(1)  # NaN for a row without counted positions
                else:
                    x = x.masked_fill(~m, -math.inf).amax(1)
                    x = x.masked_fill(x == -math.inf, math.nan)
            out[l][span["lo"]:span["lo"] + len(x)] = x.cpu().numpy()

        hooks = [(f"blocks.{l}.{location}", lambda a, hook, l=l: save(a, hook, l)) for l in layers]
        for lo in tqdm(range(0, n_seq, batch_size), desc="activations", disable=not progress):
            toks = tokens[lo:lo + batch_size].to(dev)
            span.update(lo=lo * ctx if aggregation == "none" else lo,
                        mask=position_mask(toks, model.tokenizer, special=not exclude_special))
            run_until_last_hook(model, toks, hooks)  # no unembedding, even for the last layer
        for l in layers:
            x = torch.from_numpy(np.array(out[l]))
            obj = quantize_per_channel(x) if precision == 8 else x
            path = folder / f"{l}.all.{aggregation}.all.pt"
            _save(obj, path)
            written.append(path)
    finally:
        buf.close()
    return written


@dataclass
class ActivationsConfig(StageConfig):
    """activations.py's flags (the original's names and defaults), built by the CLI; `run()`."""

    model: str = field(metadata={"required": True, "help": "model name (TransformerLens alias, hub id, folder or zoo model)"})
    token_dataset: str = field(metadata={"required": True, "help": "token dataset name under $DATASET_DIR/<family>/"})
    activation_location: str = field(default="mlp.hook_pre", metadata={"choices": list(LOCATIONS),
                                     "help": "hook under blocks.{l}. to read"})
    batch_size: int = field(default=32, metadata={"common": True})
    activation_aggregation: str = field(default="none", metadata={"choices": AGGREGATIONS, "help":
                                        "layer mode: how positions of a sequence are aggregated"})
    neuron_subset: list[str] | None = field(default=None, metadata={"nargs": "+", "help":
                                            "neurons as LAYER.NEURON, e.g. 3.1024 11.3030"})
    neuron_subset_file: str | None = field(default=None, metadata={"help": "CSV with 'layer' and 'neuron' columns"})
    save_precision: int = field(default=8, metadata={"type": int, "choices": list(PRECISIONS), "help":
                                "layer mode: 8 = per-neuron uint8 quantisation, 16 / 32 = float; neuron mode: fp16 "
                                "unless 32"})
    output_dir: str | None = field(default=None, metadata={"help": "cache root (default $ACTIVATION_DIR or "
                                                                  "cached_activations)"})
    exclude_special_tokens: bool = field(default=False, metadata={"action": "store_true", "help":
                                         "layer mode, mean / max: leave BOS/EOS/padding positions out (default: "
                                         "every position)"})
    device: str = field(default="auto", metadata={"common": True})
    n_seq: int = field(default=-1, metadata={"common": True})
    overwrite: bool = field(default=False, metadata={"common": True})

    def run(self, progress: bool = True) -> list[Path]:
        return run_activations(self.model, self.token_dataset, self.activation_location, self.batch_size,
                               self.activation_aggregation, self.neuron_subset, self.neuron_subset_file,
                               self.save_precision, self.output_dir, self.device, self.n_seq,
                               exclude_special=self.exclude_special_tokens, overwrite=self.overwrite,
                               progress=progress)


def activation_folder(model_name: str, dataset: str, output_dir: str | Path | None = None) -> Path:
    return paths.activation_cache_path(model_name, dataset, output_dir)


def _check_args(location: str, aggregation: str, save_precision: int, batch_size: int, n_seq: int,
                neuron_mode: bool, neuron_subset: list[str] | None) -> None:
    """activations.py's flags, checked before anything loads."""
    if location not in LOCATIONS:
        raise UserError(f"unknown --activation_location {location!r}; choose from {', '.join(LOCATIONS)}")
    if aggregation not in AGGREGATIONS:
        raise UserError(f"unknown --activation_aggregation {aggregation!r}; choose from {AGGREGATIONS}")
    if save_precision not in PRECISIONS:
        raise UserError(f"--save_precision must be one of {PRECISIONS} (got {save_precision})")
    if batch_size < 1:
        raise UserError(f"--batch_size must be >= 1 (got {batch_size})")
    check_n_seq(n_seq)
    if neuron_mode and aggregation != "none":
        raise UserError("--activation_aggregation applies to layer mode only: neuron mode keeps every position")
    for spec in neuron_subset or []:  # malformed specs fail before the model loads
        [parse_neuron(part) for part in str(spec).split(",") if part.strip()]


def _wanted_files(model, neurons: list[tuple[int, int]] | None, aggregation: str, save_precision: int,
                  exclude_special: bool) -> dict[str, tuple[dict, object]]:
    """{file name: (its per-file settings, what computes it)}: a neuron (l, n) or 'next_token' in neuron
    mode (`neurons` given), a layer index in layer mode."""
    if neurons is not None:
        per_file = {"save_precision": 32 if save_precision == 32 else 16}
        out = {f"{l}.{n}.pt": (per_file, (l, n)) for l, n in neurons}
        out.update({f"{s}.pt": ({}, "next_token") for s in ("loss", "entropy", "rank")})
        return out
    per_file = {"save_precision": save_precision,
                "exclude_special_tokens": bool(exclude_special and aggregation in ("mean", "max"))}
    return {f"{l}.all.{aggregation}.all.pt": (per_file, l) for l in range(model.cfg.n_layers)}


def run_activations(model_name: str, dataset: str, location: str = "mlp.hook_pre", batch_size: int = 32,
                    aggregation: str = "none", neuron_subset: list[str] | None = None,
                    neuron_subset_file: str | Path | None = None, save_precision: int = 8,
                    output_dir: str | Path | None = None, device: str | None = None, n_seq: int = -1,
                    exclude_special: bool = False, overwrite: bool = False, progress: bool = True) -> list[Path]:
    """activations.py: neuron mode when a subset is given, else layer mode. Returns the files written."""
    from .device import resolve_device
    from .models import check_model_name, load_model, model_family
    from .token_datasets import load_token_dataset, model_rows

    neuron_mode = bool(neuron_subset) or neuron_subset_file is not None
    _check_args(location, aggregation, save_precision, batch_size, n_seq, neuron_mode, neuron_subset)
    check_model_name(model_name)  # an unknown model is said as such, not as a missing dataset
    load_token_dataset(dataset, model_family(model_name))  # a missing dataset fails before the model loads
    dev = resolve_device(device)
    model = load_model(model_name, device=str(dev))
    folder = activation_folder(model_name, dataset, output_dir)
    tokens = model_rows(model, dataset, n_seq)  # [n_seq, ctx]
    want = {"location": location, "model": model_name, "dataset": dataset, "n_seq": n_seq,
            **run_inputs(model_name, dataset, model.family)}
    record = _folder_record(folder, want, overwrite)
    neurons = None
    if neuron_mode:
        neurons = parse_neuron_subset(neuron_subset, neuron_subset_file, model.cfg.n_layers,
                                      getattr(model.cfg, LOCATIONS[location]))
        if not neurons:
            raise UserError("the neuron subset is empty")
    files = _wanted_files(model, neurons, aggregation, save_precision, exclude_special)
    wanted = {name: settings for name, (settings, _) in files.items()}
    todo_files = _plan_files(record, folder, wanted, overwrite)
    if not todo_files:
        return []
    runs.would(f"compute {', '.join(todo_files[:3])}{' ...' if len(todo_files) > 3 else ''} in {folder}")
    todo = [files[f][1] for f in todo_files]
    folder.mkdir(parents=True, exist_ok=True)
    _write_record(folder, record)  # explain.py reads the location from it, even mid-run
    if neuron_mode:
        written = cache_neurons(model, tokens, [t for t in todo if t != "next_token"], folder, location, batch_size,
                                save_precision, "next_token" in todo, progress)
    else:
        written = cache_layers(model, tokens, folder, location, aggregation, batch_size, save_precision, todo,
                               exclude_special, progress)
    record["files"].update({p.name: wanted[p.name] for p in written})
    _write_record(folder, record)
    return written
