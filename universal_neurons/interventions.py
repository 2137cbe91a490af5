"""Neuron interventions: hook chosen MLP neurons, run the model, record next-token metrics.

    intervention.py          one neuron, one intervention  -> <out>/<model>/<dataset>/<type>_<param>/<l.n>/
    entropy_intervention.py  a neuron set, several values  -> <out>/<model>/<dataset>/<l.n_l.n>/<type>_<param>/
    both                     the clean model (no hook)     -> <out>/<model>/<dataset>/clean.n<rows>/

Every run folder holds (n_seq rows of the token dataset, ctx positions each):
    loss.pt     fp16  [n_seq, ctx]  -log p(next token); NaN at the last position (no next token)
    entropy.pt  fp16  [n_seq, ctx]  entropy (nats) of the next-token distribution
    rank.pt     int32 [n_seq, ctx]  rank of the true next token (0 = top: how many tokens have a
                                    strictly larger logit); -1 at the last position
    scale.pt    fp16  [n_seq, ctx]  final LayerNorm scale ln_final.hook_scale (entropy runs and clean)
    meta.json   what was run (model, dataset, neurons, type, param, location, n_seq, weights and
                dataset fingerprints, code version: runs.py); a rerun of the same run skips the
                folder, another one stops with the differences unless --overwrite.
The original wrote [n_seq, ctx - 1] loss/rank in intervention.py and zero-padded them in
entropy_intervention.py; NaN / -1 padding keeps a naive mean from counting a fake zero loss.

Intervention types, applied to the neuron's activation `a` at the hook `blocks.{l}.<location>`
at every position; intervention.py's default location is mlp.hook_pre (the pre-activation, as the
original's), entropy_intervention.py's mlp.hook_post (as the original's):
    zero_ablation        a -> 0
    threshold_ablation   a -> min(a, param)   (values above the threshold are clipped to it, as
                                               the original did; param 0 keeps only negative values)
    relu_ablation        a -> max(a, 0)       (meant for mlp.hook_pre: removes the negative part)
    fixed_activation     a -> param
    multiply_activation  a -> a * param       (entropy_intervention.py only, as in the original)
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from . import paths, runs
from .capture import LOCATIONS, hook_name, position_mask
from .errors import UserError, check_n_seq, check_neuron, parse_neuron
from .flags import StageConfig
from .token_datasets import run_inputs

INTERVENTION_TYPES = ("zero_ablation", "threshold_ablation", "relu_ablation", "fixed_activation")
ENTROPY_INTERVENTION_TYPES = INTERVENTION_TYPES + ("multiply_activation",)
NEEDS_PARAM = ("threshold_ablation", "fixed_activation", "multiply_activation")
METRIC_FILES = ("loss", "entropy", "rank", "scale")
CLEAN = "clean"


def clean_name(n_rows: int | None = None) -> str:
    """The clean reference's folder: one per number of rows (runs of other n_seq share a dataset)."""
    return CLEAN if n_rows is None else f"{CLEAN}.n{n_rows}"
META_FILE = "meta.json"
# logits elements [rows, ctx, vocab] processed at once by next_token_metrics (bounds the
# float32 temporaries: about 3 x 128 MB)
_METRIC_CHUNK = 2 ** 25

Neuron = tuple[int, int]


# Specs and names -------------------------------------------------------------------------------

def parse_neuron_subset(spec: str | list[str]) -> list[Neuron]:
    """'11.3030,11.2859' (or a list of 'l.n' strings, each possibly comma-joined) -> [(11, 3030), (11, 2859)]."""
    items = [spec] if isinstance(spec, str) else list(spec)
    parts = [p for item in items for p in str(item).split(",") if p.strip()]
    if not parts:
        raise UserError("empty neuron subset: expected LAYER.NEURON[,LAYER.NEURON...], e.g. 11.3030,11.2859")
    neurons = [parse_neuron(p) for p in parts]
    if len(set(neurons)) != len(neurons):
        raise UserError(f"neuron subset {','.join(parts)!r} lists a neuron twice")
    return neurons


def neuron_label(neurons: list[Neuron]) -> str:
    """[(11, 3030), (11, 2859)] -> '11.3030_11.2859' (the original's folder name)."""
    return "_".join(f"{l}.{n}" for l, n in neurons)


def intervention_name(intervention_type: str, param: float | int) -> str:
    """'<type>_<param>' as the original wrote it, str(param): fixed_activation_-0.17, zero_ablation_0.0 for a
    value given on the command line (a float), zero_ablation_0 for intervention.py's default (the int 0)."""
    return f"{intervention_type}_{param if isinstance(param, int) and not isinstance(param, bool) else float(param)}"


def check_intervention(intervention_type: str, param: float | None, allowed=INTERVENTION_TYPES) -> None:
    if intervention_type not in allowed:
        raise UserError(f"unknown intervention type {intervention_type!r}; choose from {', '.join(allowed)}")
    if param is None and intervention_type in NEEDS_PARAM:
        raise UserError(f"{intervention_type} needs --intervention_param")
    if param is not None and not math.isfinite(param):
        raise UserError(f"--intervention_param must be a finite number, got {param}")


def check_neurons(model, neurons: list[Neuron]) -> None:
    for l, n in neurons:
        check_neuron(l, n, model.cfg.n_layers, model.cfg.d_mlp)


def run_dir(output_dir, model: str, dataset: str, *parts: str) -> Path:
    return paths.intervention_path(model, dataset, *parts, root=output_dir)


# Hooks ----------------------------------------------------------------------------------------

def apply_intervention(acts: torch.Tensor, intervention_type: str, param: float | None = None) -> torch.Tensor:
    """The new activations (same shape and dtype as `acts`), see the module docstring."""
    if intervention_type == "zero_ablation":
        return torch.zeros_like(acts)
    if intervention_type == "threshold_ablation":
        return acts.clamp(max=param)
    if intervention_type == "relu_ablation":
        return acts.clamp(min=0)
    if intervention_type == "fixed_activation":
        return torch.full_like(acts, param)
    if intervention_type == "multiply_activation":
        return acts * param
    raise UserError(f"unknown intervention type {intervention_type!r}")


def neuron_hooks(neurons: list[Neuron], intervention_type: str, param: float | None = None,
                 location: str = "mlp.hook_post") -> list[tuple[str, object]]:
    """TransformerLens forward hooks [(hook name, fn)], one per layer, that replace the neurons'
    activations [batch, pos, d_mlp] at `blocks.{l}.<location>` on every position.

    Use with `model.run_with_hooks(tokens, fwd_hooks=...)` or `with model.hooks(fwd_hooks=...)`;
    TransformerLens 4's `run_with_cache(..., fwd_hooks=...)` silently ignores the hooks.
    """
    if location not in LOCATIONS:
        raise UserError(f"unknown activation location {location!r}; choose from {', '.join(LOCATIONS)}")
    by_layer: dict[int, list[int]] = {}
    for l, n in neurons:
        by_layer.setdefault(l, []).append(n)

    def make(idx: list[int]):
        def hook(act, hook):
            ix = torch.tensor(idx, device=act.device)
            act = act.clone()  # the hooked tensor may be shared with the module's internals
            act[..., ix] = apply_intervention(act[..., ix], intervention_type, param)
            return act
        return hook

    return [(hook_name(l, location), make(idx)) for l, idx in sorted(by_layer.items())]


# Metrics ---------------------------------------------------------------------------------------

@torch.no_grad()
def next_token_metrics(logits: torch.Tensor, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-position metrics of next-token prediction, computed in float32.

    logits [batch, pos, vocab], tokens [batch, pos] ->
      loss    float32 [batch, pos]  -log softmax(logits[b, p])[tokens[b, p + 1]], NaN at p = pos - 1
      entropy float32 [batch, pos]  -sum_v p_v log p_v (nats; 0 log 0 = 0)
      rank    int64   [batch, pos]  #{v : logits[b, p, v] > logits[b, p, tokens[b, p + 1]]}, -1 at p = pos - 1
    """
    B, P, V = logits.shape
    loss = torch.full((B, P), float("nan"), device=logits.device)
    entropy = torch.empty((B, P), device=logits.device)
    rank = torch.full((B, P), -1, dtype=torch.long, device=logits.device)
    step = max(1, _METRIC_CHUNK // max(1, P * V))
    for lo in range(0, B, step):
        lg = logits[lo:lo + step].float()
        logp = lg.log_softmax(-1)
        entropy[lo:lo + step] = torch.special.entr(logp.exp()).sum(-1)
        nxt = tokens[lo:lo + step, 1:].to(logits.device).unsqueeze(-1)  # [b, P - 1, 1]
        loss[lo:lo + step, :-1] = -logp[:, :-1].gather(-1, nxt).squeeze(-1)
        true_logit = lg[:, :-1].gather(-1, nxt)
        rank[lo:lo + step, :-1] = (lg[:, :-1] > true_logit).sum(-1)
    return {"loss": loss, "entropy": entropy, "rank": rank}


@torch.no_grad()
def evaluate(model, tokens: torch.Tensor, hooks=(), batch_size: int = 32, record_scale: bool = True,
             progress: bool = True, desc: str = "") -> dict[str, torch.Tensor]:
    """Run `model` with `hooks` over tokens [n_seq, ctx]; returns the run folder's tensors on the CPU:
    loss / entropy / scale fp16 [n_seq, ctx], rank int32 [n_seq, ctx] (scale only if record_scale)."""
    from tqdm.auto import tqdm

    device = next(model.parameters()).device
    n, ctx = tokens.shape
    out = {"loss": torch.empty(n, ctx, dtype=torch.float16), "entropy": torch.empty(n, ctx, dtype=torch.float16),
           "rank": torch.empty(n, ctx, dtype=torch.int32)}
    if record_scale:
        out["scale"] = torch.empty(n, ctx, dtype=torch.float16)
    scale: list[torch.Tensor] = []

    def save_scale(s, hook):  # [batch, pos, 1]
        scale.append(s[..., 0].float())

    fwd = list(hooks) + ([("ln_final.hook_scale", save_scale)] if record_scale else [])
    for lo in tqdm(range(0, n, batch_size), desc=desc or "intervention", disable=not progress):
        batch = tokens[lo:lo + batch_size].to(device)
        scale.clear()
        logits = model.run_with_hooks(batch, fwd_hooks=fwd)
        m = next_token_metrics(logits, batch)
        hi = lo + len(batch)
        out["loss"][lo:hi] = m["loss"].cpu().half()
        out["entropy"][lo:hi] = m["entropy"].cpu().half()
        out["rank"][lo:hi] = m["rank"].cpu().int()
        if record_scale:
            out["scale"][lo:hi] = scale[-1].cpu().half()
    return out


# Run folders -----------------------------------------------------------------------------------

def read_meta(folder: Path) -> dict | None:
    try:
        return json.loads((Path(folder) / META_FILE).read_text())
    except (OSError, ValueError):
        return None


_SAME_RUN = ("n_seq", "ctx", "neurons", "intervention_type", "intervention_param", "location",
             "model_fingerprint", "dataset_fingerprint", "code_version")


def is_done(folder: Path, meta: dict, overwrite: bool = False) -> bool:
    """A finished run folder (written atomically) of the same run: same rows, neurons, intervention,
    hook location, weights, data and code. The location is not part of the folder name (as in the
    original): a folder made otherwise stops the run with the differences unless `overwrite`."""
    return runs.finished(folder, META_FILE, {k: meta.get(k) for k in _SAME_RUN}, overwrite, project=_SAME_RUN)


def write_run(folder: Path, tensors: dict[str, torch.Tensor], meta: dict) -> Path:
    """Write the tensors as <name>.pt and meta.json into `folder`, all at once (atomic rename)."""
    with paths.atomic_path(folder) as tmp:
        tmp.mkdir(parents=True)
        for name, t in tensors.items():
            torch.save(t, tmp / f"{name}.pt")
        (tmp / META_FILE).write_text(json.dumps(meta, indent=1) + "\n")
    return Path(folder)


def load_run(folder: Path) -> dict[str, torch.Tensor]:
    """The tensors of a run folder, {'loss', 'entropy', 'rank'[, 'scale']}."""
    folder = Path(folder)
    return {name: paths.torch_load(folder / f"{name}.pt") for name in METRIC_FILES if (folder / f"{name}.pt").exists()}


def _run_once(model, tokens, folder: Path, hooks, meta: dict, batch_size: int, record_scale: bool,
              progress: bool, desc: str, overwrite: bool = False) -> Path:
    if is_done(folder, meta, overwrite):
        if progress:
            print(f"skip {folder} (done)")
        return folder
    tensors = evaluate(model, tokens, hooks, batch_size, record_scale, progress, desc)
    return write_run(folder, tensors, meta)


def _load(model_name: str, dataset: str, device, n_seq: int):
    from .device import resolve_device
    from .models import load_model
    from .token_datasets import model_rows

    check_n_seq(n_seq)
    dev = resolve_device(device)
    model = load_model(model_name, device=str(dev))
    tokens = model_rows(model, dataset, n_seq)  # [n_seq, ctx]
    return model, tokens


def _meta(model, model_name, dataset, tokens, **kw) -> dict:
    """A run folder's meta.json: what was run, on which weights and rows, by which code (runs.py)."""
    return {"model": model_name, "dataset": dataset, "n_seq": int(tokens.shape[0]), "ctx": int(tokens.shape[1]),
            **run_inputs(model_name, dataset, model.family),
            **kw}


def run_clean(model, model_name: str, dataset: str, tokens: torch.Tensor, output_dir=None, batch_size: int = 32,
              progress: bool = True, overwrite: bool = False) -> Path:
    """The no-intervention reference: <out>/<model>/<dataset>/clean.n<rows>/ (loss, entropy, rank, scale);
    one per number of rows, so runs of other --n_seq on the same dataset never contend for it."""
    folder = run_dir(output_dir, model_name, dataset, clean_name(len(tokens)))
    return _run_once(model, tokens, folder, [], _meta(model, model_name, dataset, tokens, intervention_type=None),
                     batch_size, True, progress, "clean", overwrite)


def run_intervention(model_name: str, dataset: str, neuron: str, intervention_type: str = "zero_ablation",
                     intervention_param: float | int = 0, location: str = "mlp.hook_pre", output_dir=None,
                     batch_size: int = 32, device=None, n_seq: int = -1, overwrite: bool = False,
                     progress: bool = True) -> list[Path]:
    """intervention.py: one neuron ('l.n'), one intervention, plus the clean run.

    Returns [intervention folder, clean folder]; each is skipped when already written by the same
    run (is_done); one made otherwise stops the run unless `overwrite`.
    """
    layer, n = parse_neuron(neuron)
    check_intervention(intervention_type, intervention_param)
    model, tokens = _load(model_name, dataset, device, n_seq)
    check_neurons(model, [(layer, n)])
    hooks = neuron_hooks([(layer, n)], intervention_type, intervention_param, location)
    folder = run_dir(output_dir, model_name, dataset, intervention_name(intervention_type, intervention_param),
                     f"{layer}.{n}")
    meta = _meta(model, model_name, dataset, tokens, neurons=[f"{layer}.{n}"], intervention_type=intervention_type,
                 intervention_param=float(intervention_param), location=location)
    done = _run_once(model, tokens, folder, hooks, meta, batch_size, False, progress,
                     f"{intervention_type} {layer}.{n}", overwrite)
    return [done, run_clean(model, model_name, dataset, tokens, output_dir, batch_size, progress, overwrite)]


# The entropy-neuron experiment -------------------------------------------------------------------

def random_baselines(model, exclude: list[Neuron], n_baselines: int, size: int, seed: int = 0) -> list[list[Neuron]]:
    """`n_baselines` disjoint sets of `size` last-layer neurons, none in `exclude`.

    One seeded permutation of the candidates, cut into consecutive sets: baseline i is the same
    for any n_baselines > i, so a rerun asking for more baselines reuses the finished ones.
    """
    last = model.cfg.n_layers - 1
    excluded = {n for l, n in exclude if l == last}
    candidates = np.array([n for n in range(model.cfg.d_mlp) if n not in excluded])
    if n_baselines * size > len(candidates):
        raise UserError(f"--n_random_baselines {n_baselines} x {size} neuron(s) needs {n_baselines * size} distinct "
                        f"last-layer neurons but only {len(candidates)} are available")
    order = candidates[np.random.default_rng(seed).permutation(len(candidates))]
    return [[(last, int(n)) for n in order[i * size:(i + 1) * size]] for i in range(n_baselines)]


def run_means(folder: Path, mask: torch.Tensor) -> dict[str, float]:
    """Means (float64) over `mask` of a run folder's loss, entropy, scale and reciprocal rank 1 / (rank + 1)."""
    t = load_run(folder)
    out = {}
    for name in ("loss", "entropy", "scale"):
        out[f"mean_{name}"] = float(t[name][mask].double().mean()) if name in t else float("nan")
    out["mean_recip_rank"] = float((1.0 / (t["rank"][mask].double() + 1)).mean())
    return out


SUMMARY_METRICS = ("loss", "entropy", "scale", "recip_rank")


def summary_path(output_dir, model: str, dataset: str, neurons: list[Neuron], intervention_type: str) -> Path:
    return run_dir(output_dir, model, dataset, neuron_label(neurons), f"summary_{intervention_type}.csv")


def read_summary(path: str | Path) -> pd.DataFrame:
    """The summary CSV of `run_entropy_intervention` (its one reader): text columns stay strings."""
    text = ["group", "label", "neurons", "intervention_type"]
    df = pd.read_csv(path, dtype=dict.fromkeys(text, str))
    df[text] = df[text].fillna("")  # the clean row has no neurons / type
    return df


def run_entropy_intervention(model_name: str, dataset: str, neuron_subset: str | list[str],
                             values: list[float] | None, intervention_type: str = "fixed_activation",
                             location: str = "mlp.hook_post", n_random_baselines: int = 0, seed: int = 0,
                             output_dir=None, batch_size: int = 32, device=None, n_seq: int = -1,
                             overwrite: bool = False, progress: bool = True, summary: bool = True) -> dict:
    """entropy_intervention.py and the paper's entropy-neuron experiment.

    The neurons of `neuron_subset` are intervened on together, once per value in `values`; then
    `n_random_baselines` random sets of as many last-layer neurons (seeded, disjoint, excluding the
    chosen ones; the paper used 20 single neurons) get the same interventions; plus the clean run.
    Each run is a folder <out>/<model>/<dataset>/<l.n_l.n>/<type>_<value>/ (scale.pt included).
    A summary CSV <out>/<model>/<dataset>/<subset>/summary_<type>.csv has one row per (run, value):
        group ('target' | 'random' | 'clean'), label (subset label, 'random_<i>', 'clean'), neurons,
        intervention_type, value, mean_loss, mean_entropy, mean_scale, mean_recip_rank,
        delta_<metric> (run minus clean), n_tokens, seed
    with means over `position_mask(tokens, tokenizer, last=False)` positions (not BOS / EOS / padding,
    not the last position: the original left out position ctx-1 and token 50256). The CSV is rewritten only
    when its content changes; summary=False (a Slurm array task) leaves it to the job that collects all values.
    Returns {'runs': [folders], 'clean': folder, 'summary': csv or None}.
    """
    neurons = parse_neuron_subset(neuron_subset)
    values = [0.0] if not values and intervention_type not in NEEDS_PARAM else values
    if not values:
        raise UserError(f"{intervention_type} needs at least one --intervention_param value")
    for v in values:
        check_intervention(intervention_type, v, ENTROPY_INTERVENTION_TYPES)
    if n_random_baselines < 0:
        raise UserError("--n_random_baselines must be >= 0")
    model, tokens = _load(model_name, dataset, device, n_seq)
    check_neurons(model, neurons)
    groups = [("target", neuron_label(neurons), neurons)]
    groups += [("random", f"random_{i}", b)
               for i, b in enumerate(random_baselines(model, neurons, n_random_baselines, len(neurons), seed))]

    clean = run_clean(model, model_name, dataset, tokens, output_dir, batch_size, progress, overwrite)
    folders, rows = [], []
    for group, label, ns in groups:
        for v in values:
            folder = run_dir(output_dir, model_name, dataset, neuron_label(ns), intervention_name(intervention_type, v))
            meta = _meta(model, model_name, dataset, tokens, neurons=[f"{l}.{n}" for l, n in ns],
                         intervention_type=intervention_type, intervention_param=float(v), location=location,
                         group=group, label=label, seed=seed)
            hooks = neuron_hooks(ns, intervention_type, v, location)
            folders.append(_run_once(model, tokens, folder, hooks, meta, batch_size, True, progress,
                                     f"{label} {intervention_type} {v}", overwrite))
            rows.append({"group": group, "label": label, "neurons": neuron_label(ns),
                         "intervention_type": intervention_type, "value": float(v), "folder": folders[-1]})
    if not summary:
        return {"runs": folders, "clean": clean, "summary": None}

    mask = position_mask(tokens, model.tokenizer, special=False, last=False)
    base = run_means(clean, mask)
    records = [{"group": CLEAN, "label": CLEAN, "neurons": "", "intervention_type": "", "value": float("nan"),
                **base, **{f"delta_{m}": 0.0 for m in SUMMARY_METRICS}}]
    for row in rows:
        means = run_means(row.pop("folder"), mask)
        records.append({**row, **means, **{f"delta_{m}": means[f"mean_{m}"] - base[f"mean_{m}"]
                                           for m in SUMMARY_METRICS}})
    df = pd.DataFrame(records)
    df["n_tokens"] = int(mask.sum())
    df["seed"] = seed
    out = summary_path(output_dir, model_name, dataset, neurons, intervention_type)
    text = df.to_csv(index=False)
    if not (out.is_file() and out.read_text() == text):  # a derived file: the same runs give the same text
        with paths.atomic_path(out) as tmp:
            tmp.write_text(text)
    return {"runs": folders, "clean": clean, "summary": out}


@dataclass(kw_only=True)
class _RunFlags(StageConfig):
    """The flags intervention.py and entropy_intervention.py share."""

    model: str = field(metadata={"required": True, "help": "model name (TransformerLens alias, hub id, folder or zoo model)"})
    token_dataset: str = field(metadata={"required": True, "help": "token dataset name under $DATASET_DIR/<family>/"})
    output_dir: str | None = field(default=None, metadata={"help": "default $INTERVENTION_DIR or intervention_results"})
    batch_size: int = field(default=32, metadata={"common": True})
    device: str = field(default="auto", metadata={"common": True})
    n_seq: int = field(default=-1, metadata={"common": True})
    overwrite: bool = field(default=False, metadata={"common": True})
    save_precision: int = field(default=16, metadata={"type": int, "help":
                                "accepted for the original's command lines (unused there too): tensors are fp16 / int32"})


@dataclass(kw_only=True)
class InterventionConfig(_RunFlags):
    """intervention.py's flags (the original's names and defaults); `run()`."""

    activation_location: str = field(default="mlp.hook_pre", metadata={"choices": ["mlp.hook_pre", "mlp.hook_post"],
                                     "help": "hook point of the neuron (default: the pre-activation, as the original)"})
    neuron: str = field(metadata={"required": True, "help": "LAYER.NEURON, e.g. 11.3030"})
    intervention_type: str = field(default="zero_ablation", metadata={"choices": INTERVENTION_TYPES, "help":
                                   "zero_ablation: a->0; threshold_ablation: a->min(a, param); relu_ablation: "
                                   "a->max(a, 0); fixed_activation: a->param"})
    intervention_param: float | int = field(default=0, metadata={"type": float, "help":
                                            "threshold or fixed value (default the int 0: folder <type>_0, as the "
                                            "original)"})

    def run(self, progress: bool = True) -> list[Path]:
        return run_intervention(self.model, self.token_dataset, self.neuron, self.intervention_type,
                                self.intervention_param, self.activation_location, self.output_dir, self.batch_size,
                                self.device, self.n_seq, overwrite=self.overwrite, progress=progress)


@dataclass(kw_only=True)
class EntropyConfig(_RunFlags):
    """entropy_intervention.py's flags (the original's names; --intervention_param takes several values);
    built by the CLI and the pipeline; `run()`."""

    activation_location: str = field(default="mlp.hook_post", metadata={"choices": ["mlp.hook_post", "mlp.hook_pre"]})
    neuron_subset: str = field(metadata={"required": True, "help":
                               "neurons intervened on together: LAYER.NEURON[,LAYER.NEURON...], e.g. 11.3030,11.2859"})
    intervention_type: str = field(default="fixed_activation", metadata={"choices": ENTROPY_INTERVENTION_TYPES,
                                   "help": "... multiply_activation: a -> a * param"})
    values: list[float] | None = field(default=None, metadata={"flag": "intervention_param", "aliases": ("--values",),
                                       "type": float, "nargs": "+", "help":
                                       "one or more values (fixed activation, multiplier or threshold), one run each"})
    n_random_baselines: int = field(default=0, metadata={"type": int, "help":
                                    "also intervene on this many random sets of last-layer neurons (the paper: 20)"})
    seed: int = field(default=0, metadata={"type": int, "help": "seed of the random baselines"})
    no_summary: bool = field(default=False, metadata={"action": "store_true", "help":
                             "write the runs only, not summary_<type>.csv (a Slurm array task: the job that "
                             "collects every value writes it)"})

    def run(self, progress: bool = True) -> dict:
        return run_entropy_intervention(self.model, self.token_dataset, self.neuron_subset, self.values,
                                        self.intervention_type, self.activation_location, self.n_random_baselines,
                                        self.seed, self.output_dir, self.batch_size, self.device, self.n_seq,
                                        overwrite=self.overwrite, progress=progress, summary=not self.no_summary)
