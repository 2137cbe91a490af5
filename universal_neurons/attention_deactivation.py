"""Attention deactivation: do earlier MLP neurons switch an attention head onto BOS?

For an attention head (layer A, head h) and neurons (l, n) with l < A:

Heuristic ranking (no data beyond one forward pass):
    score[l, n] = (w_out[l, n] . W_Q[A, h]) . k_BOS / sqrt(d_head)
the change of the head's BOS attention score per unit of activation, ignoring the LayerNorm scale.
k_BOS [d_head] is the head's key at position 0, averaged over the dataset's first batch of sequences.
Under causal attention position 0 sees only its own token, so every row starting with BOS has
the same key there and the average is that key. Neurons are ranked by |score| (as the original).

Path ablation, per sequence batch and neuron, all positions at once:
    resid'  = resid_pre[A] - a[l, n] * w_out[l, n]          (the neuron's direct contribution)
    q'_h    = LN(resid') @ W_Q[A, h] + b_Q[A, h]            (compatibility mode: ln1 is folded, so
                                                             LN is the bare normalisation: centre and
                                                             scale, or RMS scale for RMSNorm models;
                                                             b_Q = 0 in models without biases)
replaces the head's query at blocks.{A}.attn.hook_q; keys and values stay clean; the model computes
the pattern and z. Rotary models (Pythia, Llama, ...): hook_q is the query BEFORE the rotation, so
the model rotates q'_h at each position as it rotates its own query (checked against Hugging
Face's attention in tests/test_families.py); the heuristic score ignores the rotation (it is the
score of a query and key at the same position). Grouped-query attention: head h's key is key
head h // (n_heads / n_key_value_heads). Per query position p >= after_pos we record the activation a[p], the change of
attention to BOS  pattern'[p, 0] - pattern[p, 0], and the change of the head's output norm
||z'_h[p] W_O[A, h]|| - ||z_h[p] W_O[A, h]||. Several neurons share one forward pass: the batch is
repeated once per neuron (`neuron_chunk` at a time), and every pass stops at blocks.{A}.attn.hook_z.
(TransformerLens 4's start_at_layer still runs the blocks before it, so restarting at layer A from
the cached residual would save nothing: each patched pass costs the blocks 0..A-1 plus A's attention.)

Pearson and Spearman correlations between activation and each change are taken over the tokens of
ALL batches (the original used its last batch only). Written to
    <results_dir>/attention_deactivation/<model>/<dataset>/<A>.<h>/
        corr_dict.pt           {"l.n": {"bos_attn": {"pearson", "spearman"}, "norm": {...}}} (floats;
                               NaN for a neuron that is constant on the data)
        heuristic_ranking.csv  layer, neuron, score, abs_score, rank (0 = largest |score|), every l < A
        records.pt             {"l.n": {"activation", "bos_attn", "norm"}}: fp16 [n_seq, ctx - after_pos]
        meta.json
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
import math
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from . import paths, runs
from .errors import UserError, check_n_seq, check_neuron, parse_neuron
from .flags import StageConfig
from .token_datasets import run_inputs

Neuron = tuple[int, int]


def output_dir(model: str, dataset: str, layer: int, head: int, root=None) -> Path:
    return paths.attention_deactivation_path(model, dataset, layer, head, root)


def read_run(folder: str | Path) -> dict:
    """The one reader of a run folder: {'corr_dict', 'records', 'heuristic_ranking' (DataFrame), 'meta'}."""
    import pandas as pd

    folder = Path(folder)
    if not (folder / "meta.json").is_file():
        raise UserError(f"no finished attention deactivation run at {folder} (run attention_deactivation.py)")
    return {"corr_dict": paths.torch_load(folder / "corr_dict.pt"),
            "records": paths.torch_load(folder / "records.pt"),
            "heuristic_ranking": pd.read_csv(folder / "heuristic_ranking.csv"),
            "meta": json.loads((folder / "meta.json").read_text())}


def _device(model) -> torch.device:
    return next(model.parameters()).device


def _check_head(model, layer: int, head: int) -> None:
    if not 0 < layer < model.cfg.n_layers:
        raise UserError(f"--layer {layer} must be in [1, {model.cfg.n_layers}) (earlier MLP layers must exist)")
    if not 0 <= head < model.cfg.n_heads:
        raise UserError(f"--head {head} is out of range for {model.cfg.n_heads} heads")


@torch.no_grad()
def bos_key(model, tokens: torch.Tensor, layer: int, head: int) -> torch.Tensor:
    """k_BOS [d_head] float32: the head's key at position 0, averaged over the sequences of `tokens`."""
    store = {}
    kv_head = head // (model.cfg.n_heads // (getattr(model.cfg, "n_key_value_heads", None) or model.cfg.n_heads))

    def save(k, hook):  # [batch, pos, kv_head, d_head]
        store["k"] = k[:, 0, kv_head if k.shape[2] != model.cfg.n_heads else head].float()

    model.run_with_hooks(tokens[:, :1].to(_device(model)), fwd_hooks=[(f"blocks.{layer}.attn.hook_k", save)],
                         stop_at_layer=layer + 1 if layer + 1 < model.cfg.n_layers else None,
                         return_type=None)
    return store["k"].mean(0)


@torch.no_grad()
def heuristic_scores(model, layer: int, head: int, k_bos: torch.Tensor) -> torch.Tensor:
    """score [layer, d_mlp] float32 for the MLP layers 0 .. layer-1 (module docstring)."""
    w_q = model.W_Q[layer, head].float()  # [d_model, d_head]
    w_out = model.W_out[:layer].float()  # [l, d_mlp, d_model]
    direction = w_q @ k_bos.to(w_q.device) / math.sqrt(model.cfg.d_head)  # [d_model]
    return (w_out @ direction).cpu()


def ranking_frame(scores: torch.Tensor) -> pd.DataFrame:
    """One row per neuron: layer, neuron, score, abs_score, rank; sorted by |score| descending."""
    L, D = scores.shape
    s = scores.double().numpy().ravel()
    df = pd.DataFrame({"layer": np.repeat(np.arange(L), D), "neuron": np.tile(np.arange(D), L),
                       "score": s, "abs_score": np.abs(s)})
    df = df.sort_values("abs_score", ascending=False, kind="stable").reset_index(drop=True)
    df["rank"] = np.arange(len(df))
    return df


def normalize(x: torch.Tensor, eps: float, rms: bool = False) -> torch.Tensor:
    """LayerNorm (or RMSNorm: no centring) without weights (folded into the next layer in
    compatibility mode), over the last dim."""
    if not rms:
        x = x - x.mean(-1, keepdim=True)
    return x / (x.pow(2).mean(-1, keepdim=True) + eps).sqrt()


class _Stop(Exception):
    """Raised by the last hook a pass needs, so the forward pass ends there."""


class PathAblation:
    """Path-ablate neurons' direct contributions to one head's query; see the module docstring.

    `run(tokens [batch, pos], neurons)` -> {neuron: (activation, d_bos_attn, d_norm)}, each
    float32 [batch, pos] on the CPU (position 0 included; the caller drops p < after_pos).
    """

    def __init__(self, model, layer: int, head: int, neuron_chunk: int = 8):
        self.model, self.layer, self.head = model, layer, head
        self.chunk = max(1, neuron_chunk)
        self.w_q = model.W_Q[layer, head].float()  # [d_model, d_head]
        bias = getattr(model.blocks[layer].attn, "b_Q", None) if hasattr(model, "blocks") else model.b_Q[layer]
        self.b_q = bias[head].float() if bias is not None else torch.zeros_like(self.w_q[0])  # [d_head]
        self.rms = str(getattr(model.cfg, "normalization_type", "LN") or "LN").startswith("RMS")
        self.w_o = model.W_O[layer, head].float()  # [d_head, d_model]
        self.w_out = model.W_out.float()  # [L, d_mlp, d_model]
        self.eps = float(model.cfg.eps)
        self.checked = False
        self.A = f"blocks.{layer}"

    def _forward(self, tokens, hooks: list, store: dict) -> dict:
        """Run until layer A's hook_z (the last hook), then stop; adds the head's BOS attention
        store['bos'] [batch, pos] and output norm store['norm'] [batch, pos] (float32)."""
        def save(key, last=False):
            def f(x, hook):
                store[key] = x.detach()
                if last:
                    raise _Stop
            return f

        hooks = hooks + [(f"{self.A}.attn.hook_pattern", save("pattern")), (f"{self.A}.attn.hook_z", save("z", True))]
        try:
            self.model.run_with_hooks(tokens, fwd_hooks=hooks, return_type=None)
        except _Stop:
            pass
        store["bos"] = store.pop("pattern")[:, self.head, :, 0].float()
        store["norm"] = (store.pop("z")[:, :, self.head].float() @ self.w_o).norm(dim=-1)
        return store

    def _query(self, resid: torch.Tensor) -> torch.Tensor:
        """q_h [..., pos, d_head] from a residual stream [..., pos, d_model] (float32)."""
        return normalize(resid.float(), self.eps, self.rms) @ self.w_q + self.b_q

    @torch.no_grad()
    def run(self, tokens: torch.Tensor, neurons: list[Neuron]) -> dict[Neuron, tuple]:
        tokens = tokens.to(_device(self.model))
        clean = {}

        def keep(key):
            def f(x, hook):
                clean[key] = x.detach()
            return f

        hooks = [(f"blocks.{l}.mlp.hook_post", keep(f"post{l}")) for l in sorted({l for l, _ in neurons})]
        hooks += [(f"{self.A}.hook_resid_pre", keep("resid")), (f"{self.A}.attn.hook_q", keep("q"))]
        self._forward(tokens, hooks, clean)
        resid = clean["resid"].float()  # [batch, pos, d_model]
        if not self.checked:
            self._self_check(clean["q"][:, :, self.head].float(), resid)
        out = {}
        for lo in range(0, len(neurons), self.chunk):
            chunk = neurons[lo:lo + self.chunk]
            acts = torch.stack([clean[f"post{l}"][:, :, n].float() for l, n in chunk])  # [k, batch, pos]
            w = torch.stack([self.w_out[l, n] for l, n in chunk])  # [k, d_model]
            q_h = self._query(resid[None] - acts[..., None] * w[:, None, None, :]).flatten(0, 1)  # [k * batch, pos, d_head]

            def set_q(q, hook):
                q = q.clone()
                q[:, :, self.head] = q_h.to(q.dtype)
                return q

            res = self._forward(tokens.repeat(len(chunk), 1), [(f"{self.A}.attn.hook_q", set_q)], {})
            d_bos = (res["bos"].unflatten(0, (len(chunk), -1)) - clean["bos"]).cpu()
            d_norm = (res["norm"].unflatten(0, (len(chunk), -1)) - clean["norm"]).cpu()
            for i, nrn in enumerate(chunk):
                out[nrn] = (acts[i].cpu(), d_bos[i], d_norm[i])
        return out

    def _self_check(self, q_model: torch.Tensor, resid: torch.Tensor) -> None:
        """The query recomputed from the clean residual must be the model's own; otherwise this
        architecture computes queries differently (e.g. LayerNorm not folded, rotary before hook_q)."""
        q_ours = self._query(resid)
        tol = 1e-3 * (1 + q_model.abs().max().item())
        if not torch.allclose(q_ours, q_model, atol=tol, rtol=1e-3):
            raise UserError(f"{self.A}.attn.hook_q is not LN(resid_pre) @ W_Q + b_Q for this model (max error "
                            f"{(q_ours - q_model).abs().max().item():.3g}); load it with compatibility mode "
                            f"(folded LayerNorm) or use an architecture with pre-LayerNorm queries")
        self.checked = True


def _correlations(x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Pearson and Spearman (average ranks for ties) in float64; NaN when either side is constant."""
    from scipy.stats import rankdata

    def pearson(a, b):
        a = a - a.mean()
        b = b - b.mean()
        den = math.sqrt(float(a @ a) * float(b @ b))
        return float(a @ b) / den if den > 0 else float("nan")

    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    return {"pearson": pearson(x, y), "spearman": pearson(rankdata(x), rankdata(y))}


def select_neurons(ranking: pd.DataFrame, neurons: list[str] | None, top_k: int | None, model, layer: int,
                   ranks: tuple[int, int] | None = None) -> list[Neuron]:
    """--neurons as given; or ranks [lo, hi) of the heuristic ranking (the original's --min_neuron /
    --max_neuron); or its top_k (default 10)."""
    if sum(x is not None and x != [] for x in (neurons, top_k, ranks)) > 1:
        raise UserError("give one of --neurons, --top_k or --min_neuron/--max_neuron")
    if ranks is not None:
        lo, hi = ranks
        if not 0 <= lo < hi:
            raise UserError(f"need 0 <= --min_neuron < --max_neuron, got {lo} and {hi}")
        return [(int(l), int(n)) for l, n in ranking[["layer", "neuron"]].values[lo:min(hi, len(ranking))]]
    if neurons:
        chosen = [parse_neuron(s) for spec in neurons for s in str(spec).split(",") if s.strip()]
        for l, n in chosen:
            check_neuron(l, n, model.cfg.n_layers, model.cfg.d_mlp)
            if l >= layer:
                raise UserError(f"neuron {l}.{n} is not before attention layer {layer}: only earlier MLP layers "
                                f"write directly into its query input")
        if len(set(chosen)) != len(chosen):
            raise UserError("--neurons lists a neuron twice")
        return chosen
    k = 10 if top_k is None else top_k
    if not 0 < k <= len(ranking):
        raise UserError(f"--top_k must be in [1, {len(ranking)}], got {k}")
    return [(int(l), int(n)) for l, n in ranking[["layer", "neuron"]].values[:k]]


@dataclass
class AttentionConfig(StageConfig):
    """attention_deactivation.py's flags, built by the CLI (the pipeline passes its own choice of head)."""

    model: str = field(metadata={"required": True, "aliases": ("--model_name",),
                                 "help": "model name (TransformerLens alias, hub id, folder or zoo model)"})
    token_dataset: str = field(metadata={"required": True, "help": "token dataset name under $DATASET_DIR/<family>/"})
    layer: int = field(metadata={"required": True, "type": int, "help": "attention layer"})
    head: int = field(metadata={"required": True, "type": int, "help": "attention head"})
    neurons: list[str] | None = field(default=None, metadata={"nargs": "+", "help":
                                      "earlier-layer neurons LAYER.NEURON ..."})
    top_k: int | None = field(default=None, metadata={"type": int, "help":
                              "instead of --neurons: the top K neurons of the heuristic ranking (default 10)"})
    min_neuron: int | None = field(default=None, metadata={"type": int, "help":
                                   "with --max_neuron: ranks [min, max) of the heuristic ranking (the original's flags)"})
    max_neuron: int | None = field(default=None, metadata={"type": int})
    context_length: int | None = field(default=None, metadata={"type": int, "help":
                                       "use the first N positions of each row (default all; the original used 256)"})
    after_pos: int = field(default=1, metadata={"type": int, "help":
                           "first query position recorded (the original used 64 on 256-token rows)"})
    neuron_chunk: int = field(default=8, metadata={"type": int, "help": "neurons path-ablated in one forward pass"})
    output_dir: str | None = field(default=None, metadata={"help": "default $RESULTS_DIR/attention_deactivation"})
    device: str = field(default="auto", metadata={"common": True})
    batch_size: int = field(default=32, metadata={"common": True})
    n_seq: int = field(default=-1, metadata={"common": True})
    overwrite: bool = field(default=False, metadata={"common": True})

    def run(self, progress: bool = True) -> Path:
        if (self.min_neuron is None) != (self.max_neuron is None):
            raise UserError("--min_neuron and --max_neuron go together")
        ranks = None if self.min_neuron is None else (self.min_neuron, self.max_neuron)
        return run_attention_deactivation(self.model, self.token_dataset, self.layer, self.head, self.neurons,
                                          self.top_k, self.after_pos, self.batch_size, self.device, self.n_seq,
                                          self.neuron_chunk, self.output_dir, context_length=self.context_length,
                                          ranks=ranks, overwrite=self.overwrite, progress=progress)


def _rows(tokens: torch.Tensor, dataset: str, after_pos: int) -> torch.Tensor:
    """The rows [n_seq, ctx] the run uses (model_rows cut them to --context_length), checked."""
    n, ctx = tokens.shape
    if n == 0:
        raise UserError(f"token dataset {dataset!r} is empty")
    if not 1 <= after_pos < ctx:
        raise UserError(f"--after_pos must be in [1, {ctx}) for sequences of {ctx} tokens, got {after_pos}")
    return tokens


def run_attention_deactivation(model_name: str, dataset: str, layer: int, head: int, neurons: list[str] | None = None,
                               top_k: int | None = None, after_pos: int = 1, batch_size: int = 32, device=None,
                               n_seq: int = -1, neuron_chunk: int = 8, results_root=None,
                               context_length: int | None = None, ranks: tuple[int, int] | None = None,
                               overwrite: bool = False, progress: bool = True) -> Path:
    """attention_deactivation.py: the heuristic ranking, path ablation and correlations; returns the folder.

    neurons: 'l.n' specs; else ranks [lo, hi) of the heuristic ranking, or its `top_k` (default 10).
    context_length: use only the first positions of each row (the original: 256 of its 512).
    after_pos: first query position recorded (position 0 attends only to itself: its change is 0).
    A folder already written for the same neurons, rows, positions, weights, data and code is
    skipped; one written otherwise stops the run with the differences unless `overwrite`.
    """
    from tqdm.auto import tqdm

    from .device import resolve_device
    from .models import load_model
    from .token_datasets import model_rows

    for spec in neurons or []:  # malformed specs fail before the model loads
        [parse_neuron(part) for part in str(spec).split(",") if part.strip()]
    check_n_seq(n_seq)
    if context_length is not None and context_length < 2:
        raise UserError(f"--context_length must be >= 2, got {context_length}")
    dev = resolve_device(device)
    model = load_model(model_name, device=str(dev))
    _check_head(model, layer, head)
    tokens = _rows(model_rows(model, dataset, n_seq, context_length), dataset, after_pos)
    n, ctx = tokens.shape

    k_bos = bos_key(model, tokens[:batch_size], layer, head)
    ranking = ranking_frame(heuristic_scores(model, layer, head, k_bos))
    chosen = select_neurons(ranking, neurons, top_k, model, layer, ranks)
    labels = [f"{l}.{nn}" for l, nn in chosen]
    folder = output_dir(model_name, dataset, layer, head, results_root)
    meta = {"model": model_name, "dataset": dataset, "layer": layer, "head": head, "neurons": labels,
            "n_seq": int(n), "ctx": int(ctx), "after_pos": after_pos, "k_bos": k_bos.tolist(),
            **run_inputs(model_name, dataset, model.family)}
    same = ("neurons", "n_seq", "ctx", "after_pos", "model_fingerprint", "dataset_fingerprint", "code_version")
    if runs.finished(folder, "meta.json", {k: meta[k] for k in same}, overwrite, ("corr_dict.pt",),
                     project=same):
        if progress:
            print(f"skip {folder} (done)")
        return folder

    ablation = PathAblation(model, layer, head, neuron_chunk)
    rec = {nrn: {"activation": [], "bos_attn": [], "norm": []} for nrn in chosen}
    for lo in tqdm(range(0, n, batch_size), desc=f"attention deactivation {layer}.{head}", disable=not progress):
        for nrn, (a, d_bos, d_norm) in ablation.run(tokens[lo:lo + batch_size], chosen).items():
            rec[nrn]["activation"].append(a[:, after_pos:])
            rec[nrn]["bos_attn"].append(d_bos[:, after_pos:])
            rec[nrn]["norm"].append(d_norm[:, after_pos:])

    corr, records = {}, {}
    for nrn, label in zip(chosen, labels):
        r = {key: torch.cat(v) for key, v in rec[nrn].items()}  # [n_seq, ctx - after_pos] float32
        act = r["activation"].numpy().ravel()
        corr[label] = {key: _correlations(act, r[key].numpy().ravel()) for key in ("bos_attn", "norm")}
        records[label] = {key: v.half() for key, v in r.items()}

    with paths.atomic_path(folder) as tmp:
        tmp.mkdir(parents=True)
        torch.save(corr, tmp / "corr_dict.pt")
        torch.save(records, tmp / "records.pt")
        ranking.to_csv(tmp / "heuristic_ranking.csv", index=False)
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    return folder
