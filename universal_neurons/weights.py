"""Weight-based summaries of every MLP neuron (the original weights.py), computed blockwise.

Input: a TransformerBridge in compatibility mode (folded LayerNorm, centred writing weights and
unembedding), whose weight views are read and never modified:
    W_in [L, d_model, D], b_in [L, D], W_out [L, D, d_model], W_E [V, d_model], W_U [d_model, V],
    W_Q, W_K, W_V [L, H, d_model, d_head], W_O [L, H, d_head, d_model];
    gated MLPs (Llama, Qwen2, OLMo, ...: post = act(x W_gate) * (x W_in)) also W_gate [L, d_model, D].
Neuron n of layer l reads w_in = W_in[l, :, n] and writes w_out = W_out[l, n, :] (both [d_model]).
In a gated MLP w_in is the linear ("up") input and w_gate = W_gate[l, :, n] the gate's; every
composition below reads w_in, and neuron_stats adds the gate's columns. A model without MLP
biases has input_bias NaN. Grouped-query attention: each key/value head is shared by
H / H_kv query heads, so W_K and W_V are repeated to one per query head.
Flat neuron index: layer * D + neuron (N = L * D).

Artifacts under <save_path>/<model>/weights/ (see ORIGINAL_SPEC.md):
    neuron_stats.csv     layer, neuron_ix, input_weight_norm, input_bias, output_weight_norm,
                         in_out_sim = cos(w_in, w_out); gated MLPs add gate_weight_norm = ||w_gate||,
                         gate_in_sim = cos(w_gate, w_in), gate_out_sim = cos(w_gate, w_out)
    {k,q,v,o}_comps.pt   fp16 [L, D, L_attn, H]  (formulas in `attention_compositions`)
    architecture.json    what decides which of those pairs are causal (`causal_compositions`; the
                         model's config, so an older folder gains it without recomputing):
                         {n_layers, d_mlp, n_heads, parallel_attn_mlp, gated_mlp, normalization_type,
                         positional_embedding_type}
    vocab_comps.pt       {E_in, U_in, E_out, U_out} -> row summaries over the vocabulary (top_k 100)
    neuron_comps.pt      {in_in, in_out, out_in, out_out} -> row summaries over all N neurons
                         (top_k 20), the neuron itself excluded.

Row summaries (`_summarise_rows`), for one neuron's cosines c [C] with C columns:
    top_*_value / top_*_ix       float32 / int64 [L, D, k], descending; bottom_* ascending.
    comp_hist                    int32 [L, D, 101] over edges e = linspace(-1, 1, 100) (float32):
                                 bin 0 = (-inf, e[0]], bin i = (e[i-1], e[i]], bin 100 = (e[99], inf)
                                 (torch.bucketize / np.searchsorted side='left', as the original).
    comp_mean, comp_var, comp_skew, comp_kurt   float32 [L, D]: population moments (divide by
                                 the count), skew = m3 / var^1.5, kurt = m4 / var^2 (plain: a
                                 Gaussian has 3).
Undefined cosines (a zero weight vector, e.g. a dead neuron or a constant vector removed by
centring, or NaN weights) are NaN and EXCLUDED like the neuron's self-similarity: they are in no
histogram bin, no moment and no top/bottom slot; slots left empty hold value NaN and index -1,
and a row with no valid entry has NaN moments.

Memory: every [rows, columns] matrix is computed for `block_size` neuron rows at a time, never
[N, N] or [L, D, V] at once. Measured (benchmarks/weights_bench.py, GPT2-small shape) about
15 bytes per entry of a block, i.e. 15 * block_size * max(V, N) bytes, on top of a fixed part:
a float32 copy of the weights used, unit-norm copies of w_in / w_out (8 N d_model bytes) and of
W_E / W_U (8 V d_model bytes), and the outputs (about 11.3 kB per neuron for vocab_comps and
3.6 kB for neuron_comps). GPT2-medium shape at block_size 512: 2.6 GiB measured over the model
for one layer of rows, about 3.7 GiB with all outputs, about 7.3 GiB for the whole process.
Device-agnostic: runs where the model's weights are (or on `device=`), no .cuda() calls.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import einops
import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from . import paths, runs
from .errors import UserError
from .flags import StageConfig
from .models import model_fingerprint

VOCAB_TOP_K = 100
NEURON_TOP_K = 20
N_HIST_EDGES = 100
VOCAB_KINDS = ("E_in", "U_in", "E_out", "U_out")
NEURON_KINDS = ("in_in", "in_out", "out_in", "out_out")
ATTN_KINDS = ("k", "q", "v", "o")
NEURON_STATS_COLUMNS = ["layer", "neuron_ix", "input_weight_norm", "input_bias", "output_weight_norm", "in_out_sim"]
GATE_STATS_COLUMNS = ["gate_weight_norm", "gate_in_sim", "gate_out_sim"]  # gated MLPs only
DEFAULT_BLOCK_SIZE = 512

# Files written, grouped by the computation that produces them (a group is skipped on rerun
# only if all of its files exist).
RUN_FILE = "run.json"  # runs.py: the model, its weights' fingerprint, the code version
ARTIFACT_GROUPS = {
    "neuron_stats": ("neuron_stats.csv",),
    "attention": tuple(f"{k}_comps.pt" for k in ATTN_KINDS),
    "architecture": ("architecture.json",),  # its own group: a folder made before it gains it cheaply
    "vocab": ("vocab_comps.pt",),
    "neuron": ("neuron_comps.pt",),
}


def hist_edges(device=None) -> torch.Tensor:
    """The histogram edges of every comp_hist: float32 linspace(-1, 1, 100)."""
    return torch.linspace(-1, 1, N_HIST_EDGES, device=device)


@dataclass
class Weights:
    """Detached float32 copies of the weights the summaries use (neuron rows first)."""
    W_in: torch.Tensor   # [L, D, d_model]
    W_out: torch.Tensor  # [L, D, d_model]
    b_in: torch.Tensor   # [L, D]  (NaN: the MLP has no input bias)
    W_E: torch.Tensor    # [V, d_model]
    W_U: torch.Tensor    # [d_model, V]
    W_Q: torch.Tensor    # [L, H, d_model, d_head]
    W_K: torch.Tensor    # [L, H, d_model, d_head]
    W_V: torch.Tensor    # [L, H, d_model, d_head]
    W_O: torch.Tensor    # [L, H, d_head, d_model]
    W_gate: torch.Tensor | None = None  # [L, D, d_model], gated MLPs only

    @property
    def n_layers(self) -> int:
        return self.W_in.shape[0]

    @property
    def d_mlp(self) -> int:
        return self.W_in.shape[1]


def extract_weights(model, device=None) -> Weights:
    """Copy the model's weight views to float32 on `device` (default: where the model's W_in is).

    Copies (`clone`), so nothing done here or downstream can write into the model.
    """
    with torch.no_grad():
        device = torch.device(device) if device is not None else model.W_in.device

        def get(name):
            return getattr(model, name).detach().to(device=device, dtype=torch.float32).clone()

        W_in = einops.rearrange(get("W_in"), "l d n -> l n d").contiguous()   # [L, D, d_model]
        L, D, d_model = W_in.shape
        has_bias = all(getattr(model.blocks[l].mlp, "b_in", None) is not None for l in range(L)) \
            if hasattr(model, "blocks") else True
        gated = bool(getattr(model.cfg, "gated_mlp", False))
        w = Weights(
            W_in=W_in, W_out=get("W_out"), b_in=get("b_in") if has_bias else torch.full((L, D), torch.nan, device=device),
            W_E=get("W_E"), W_U=get("W_U"), W_Q=get("W_Q"), W_K=get("W_K"), W_V=get("W_V"), W_O=get("W_O"),
            W_gate=einops.rearrange(get("W_gate"), "l d n -> l n d").contiguous() if gated else None,
        )
    if w.W_out.shape != (L, D, d_model) or w.W_E.shape[1] != d_model or w.W_U.shape[0] != d_model or \
            (w.W_gate is not None and w.W_gate.shape != (L, D, d_model)):
        gate = f", W_gate {tuple(w.W_gate.shape)}" if w.W_gate is not None else ""
        raise UserError(f"unexpected weight shapes: W_in {tuple(model.W_in.shape)}, W_out {tuple(w.W_out.shape)}, "
                        f"W_E {tuple(w.W_E.shape)}, W_U {tuple(w.W_U.shape)}{gate}")
    H, H_kv = w.W_Q.shape[1], w.W_K.shape[1]
    if H_kv != H:  # grouped-query attention: query head h reads key/value head h // (H / H_kv)
        if H % H_kv or w.W_V.shape[1] != H_kv:
            raise UserError(f"W_K {tuple(w.W_K.shape)} / W_V {tuple(w.W_V.shape)} do not group W_Q {tuple(w.W_Q.shape)}")
        w.W_K, w.W_V = (t.repeat_interleave(H // H_kv, dim=1) for t in (w.W_K, w.W_V))
    if w.W_K.shape != w.W_Q.shape:
        raise UserError(f"W_K {tuple(w.W_K.shape)} differs from W_Q {tuple(w.W_Q.shape)}")
    return w


def _unit_rows(x: torch.Tensor) -> torch.Tensor:
    """x / ||x|| along the last dim; a zero row becomes NaN (its cosines are undefined)."""
    return x / torch.linalg.vector_norm(x, dim=-1, keepdim=True)


def _neuron_units(w: Weights) -> dict[str, torch.Tensor]:
    """{'in': w_in / ||w_in||, 'out': w_out / ||w_out||}, each [N, d_model] in flat neuron order."""
    N, d_model = w.n_layers * w.d_mlp, w.W_in.shape[-1]
    return {"in": _unit_rows(w.W_in.reshape(N, d_model)), "out": _unit_rows(w.W_out.reshape(N, d_model))}


def _row_index(w: Weights, layers) -> torch.Tensor:
    """Flat indices [len(layers) * D] of the row neurons: all layers, or only `layers` (sharding, timing)."""
    layers = range(w.n_layers) if layers is None else list(layers)
    if not all(0 <= l < w.n_layers for l in layers):
        raise UserError(f"layers {layers} out of range for a model with {w.n_layers} layers")
    return (torch.as_tensor(layers, dtype=torch.long)[:, None] * w.d_mlp + torch.arange(w.d_mlp)).flatten()


def check_block_size(block_size: int) -> None:
    if not isinstance(block_size, int) or block_size < 1:
        raise UserError(f"block size must be a positive number of neuron rows, got {block_size!r}")


def _blocks(n: int, block_size: int, progress: bool, desc: str):
    check_block_size(block_size)
    starts = range(0, n, block_size)
    return tqdm(starts, desc=desc, disable=not progress, total=len(starts))


# neuron_stats.csv -------------------------------------------------------------------------------

def neuron_stats(w: Weights) -> pd.DataFrame:
    """One row per neuron (layer-major): norms of w_in and w_out, b_in, cos(w_in, w_out) (float64);
    gated MLPs also ||w_gate||, cos(w_gate, w_in), cos(w_gate, w_out)."""
    W_in, W_out = w.W_in.double(), w.W_out.double()
    in_norm = torch.linalg.vector_norm(W_in, dim=-1)
    out_norm = torch.linalg.vector_norm(W_out, dim=-1)
    in_out = (W_in * W_out).sum(-1) / (in_norm * out_norm)
    L, D = w.n_layers, w.d_mlp
    cols = {
        "layer": np.repeat(np.arange(L), D),
        "neuron_ix": np.tile(np.arange(D), L),
        "input_weight_norm": in_norm.flatten().cpu().numpy(),
        "input_bias": w.b_in.double().flatten().cpu().numpy(),
        "output_weight_norm": out_norm.flatten().cpu().numpy(),
        "in_out_sim": in_out.flatten().cpu().numpy(),
    }
    if w.W_gate is not None:
        W_gate = w.W_gate.double()
        gate_norm = torch.linalg.vector_norm(W_gate, dim=-1)
        gate = (gate_norm, (W_gate * W_in).sum(-1) / (gate_norm * in_norm), (W_gate * W_out).sum(-1) / (gate_norm * out_norm))
        cols.update({c: v.flatten().cpu().numpy() for c, v in zip(GATE_STATS_COLUMNS, gate)})
    return pd.DataFrame(cols, columns=list(cols))


# {k,q,v,o}_comps.pt -----------------------------------------------------------------------------

def _read_factors(w: Weights) -> dict[str, torch.Tensor]:
    """Per head, a [d_model, d_head] matrix M with ||x^T M|| = ||x^T A|| for the d_model x d_model
    matrix A that the composition reads, and ||M||_F = ||A||_F. Returns kind -> M [L, H, d_model, d_head]
    (float64).

    With W_QK = W_Q W_K^T and W_OV = W_V W_O (each [d_model, d_model]), and thin QR factorisations
    W_K = Q_K R_K, W_Q = Q_Q R_Q, W_O^T = Q_O R_O, W_V = Q_V R_V (Q orthonormal columns,
    R [d_head, d_head]); multiplying by Q^T / Q preserves norms, so:
        q:  x^T W_QK          = (x^T W_Q R_K^T) Q_K^T   -> M_q = W_Q R_K^T
        k:  (W_QK x)^T        = (x^T W_K R_Q^T) Q_Q^T   -> M_k = W_K R_Q^T
        v:  x^T W_OV          = (x^T W_V R_O^T) Q_O^T   -> M_v = W_V R_O^T
        o:  (W_OV x)^T        = (x^T W_O^T R_V^T) Q_V^T -> M_o = W_O^T R_V^T
    This avoids forming the d_model x d_model matrices: one [rows, d_model] x [d_model, L*H*d_head]
    product per kind.
    """
    W_Q, W_K, W_V, W_O = (t.double() for t in (w.W_Q, w.W_K, w.W_V, w.W_O))
    W_O_T = W_O.transpose(-1, -2)  # [L, H, d_model, d_head]

    def r_factor(a):  # [.., d_model, d_head] -> R [.., d_head, d_head]
        return torch.linalg.qr(a, mode="r").R

    R_Q, R_K, R_V, R_O = (r_factor(t) for t in (W_Q, W_K, W_V, W_O_T))
    RT = lambda r: r.transpose(-1, -2)  # noqa: E731
    return {"q": W_Q @ RT(R_K), "k": W_K @ RT(R_Q), "v": W_V @ RT(R_O), "o": W_O_T @ RT(R_V)}


def attention_compositions(w: Weights, block_size: int = DEFAULT_BLOCK_SIZE, progress: bool = False,
                           layers=None) -> dict[str, torch.Tensor]:
    """Composition of every neuron with every attention head: kind -> fp16 [L, D, L_attn, H] (CPU);
    with `layers`, only those neuron layers ([len(layers), D, L_attn, H]).

    For neuron (l, n) with output w_out [d_model] and input w_in [d_model], and head (l', h) with
    W_QK = W_Q[l', h] W_K[l', h]^T and W_OV = W_V[l', h] W_O[l', h] ([d_model, d_model]; the
    attention score is x_q^T W_QK x_k for residual vectors x_q at the query and x_k at the key
    position, so W_QK's rows are the query side and its columns the key side; the head writes
    x_v^T W_OV):
        q = ||w_out^T W_QK|| / (||W_QK||_F ||w_out||)   the neuron's output read by the QUERY
        k = ||W_QK w_out||   / (||W_QK||_F ||w_out||)   the neuron's output read by the KEY
        v = ||w_out^T W_OV|| / (||W_OV||_F ||w_out||)   the neuron's output read by the VALUE
        o = ||W_OV w_in||    / (||W_OV||_F ||w_in||)    the head's output read by the neuron
    All values lie in [0, 1]. They are computed for EVERY (neuron, head) pair; only some are
    causal: q, k, v for heads of later layers (l' > l), o for heads of layers l' <= l (the
    attention of a block runs before its MLP; in parallel-attention models such as Pythia only
    l' < l). The others are kept (not masked) so that the tensor stays rectangular; mask them with
    `causal_mask`. A zero w_out / w_in, or a head whose W_QK / W_OV is zero, gives NaN.
    """
    factors = _read_factors(w)
    row_ix = _row_index(w, layers).to(w.W_in.device)
    n_rows = len(row_ix)
    L_attn, H, _, d_head = w.W_Q.shape
    units = _neuron_units(w)
    rows = units if layers is None else {side: u[row_ix] for side, u in units.items()}  # no copy for all rows
    reads = {"q": "out", "k": "out", "v": "out", "o": "in"}
    out = {}
    for kind in ATTN_KINDS:
        M = factors[kind]
        fro = torch.linalg.matrix_norm(M).float()  # [L_attn, H]
        M_flat = einops.rearrange(M, "la h d e -> d (la h e)").float()
        x = rows[reads[kind]]
        scores = torch.empty(n_rows, L_attn, H, dtype=torch.float16)
        for start in _blocks(n_rows, block_size, progress, f"{kind}_comps"):
            proj = einops.rearrange(x[start:start + block_size] @ M_flat, "b (la h e) -> b la h e", la=L_attn, h=H)
            scores[start:start + block_size] = (torch.linalg.vector_norm(proj, dim=-1) / fro).to("cpu", torch.float16)
        out[kind] = scores.view(-1, w.d_mlp, L_attn, H)
    return out


def causal_mask(kind: str, n_layers: int, n_attn_layers: int | None = None, parallel_attn: bool = False
                ) -> torch.Tensor:
    """Bool [L, 1, L_attn, 1]: True where head layer l' can read the neuron of layer l (q, k, v:
    l' > l) or the neuron can read the head (o: l' <= l, or l' < l with parallel attention)."""
    la = torch.arange(n_attn_layers or n_layers)[None, :]
    l = torch.arange(n_layers)[:, None]
    if kind in ("q", "k", "v"):
        m = la > l
    elif kind == "o":
        m = la < l if parallel_attn else la <= l
    else:
        raise ValueError(f"unknown composition kind {kind!r}")
    return m[:, None, :, None]


def architecture(model) -> dict:
    """architecture.json: the config fields the compositions' causality and the gate columns depend on."""
    cfg = model.cfg
    return {"n_layers": int(cfg.n_layers), "d_mlp": int(cfg.d_mlp), "n_heads": int(cfg.n_heads),
            "parallel_attn_mlp": bool(getattr(cfg, "parallel_attn_mlp", False)),
            "gated_mlp": bool(getattr(cfg, "gated_mlp", False)),
            "normalization_type": str(getattr(cfg, "normalization_type", None)),
            "positional_embedding_type": str(getattr(cfg, "positional_embedding_type", None))}


def causal_compositions(summaries: dict) -> dict[str, torch.Tensor]:
    """kind -> float32 [L, D, L_attn, H]: {k,q,v,o}_comps of `read_weight_summaries` with the pairs
    that cannot compose set to NaN (q/k/v: heads of later layers; o: heads of the neuron's layer or
    earlier, strictly earlier in parallel-residual blocks such as Pythia's, where a block's MLP and
    attention read the same residual). Needs the "architecture" entry (architecture.json)."""
    arch = summaries.get("architecture")
    if arch is None:
        raise UserError("these weight summaries have no architecture.json (made by an earlier version): rerun "
                        "weights.py, which adds it")
    out = {}
    for kind in ATTN_KINDS:
        if f"{kind}_comps" not in summaries:
            continue
        comps = summaries[f"{kind}_comps"].float()
        L, _, L_attn, _ = comps.shape
        out[kind] = comps.masked_fill(~causal_mask(kind, L, L_attn, arch["parallel_attn_mlp"]), torch.nan)
    return out


# Row summaries (vocab_comps.pt, neuron_comps.pt) ------------------------------------------------

def _hist_bins(cos: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
    """Bin of each value, as torch.bucketize(cos, edges) (bin i = (e[i-1], e[i]]), for evenly
    spaced edges; float32 [B, C] (NaN stays NaN).

    Why not bucketize: on a CPU its binary search costs about 2x the block's GEMM (0.95 vs 0.42
    CPU-seconds for 512 x 50257 values at d_model 768); this costs about 0.55. The bin is the
    ceiling of the value's position on the edge grid, except within 1e-3 bin widths of an edge,
    where float rounding could put it on the wrong side: those few are looked up exactly.
    """
    n = len(edges)
    lo, hi = edges[0].item(), edges[-1].item()
    scale = (n - 1) / (hi - lo)
    pos = torch.add(torch.tensor(-lo * scale, device=cos.device), cos, alpha=scale)  # (cos - lo) * scale
    bins = pos.ceil()
    near = (bins - pos).sub_(0.5).abs_() > 0.5 - 1e-3  # pos within 1e-3 of an integer
    del pos
    bins.clamp_(0, n)
    if near.any():
        bins[near] = torch.bucketize(cos[near], edges).to(bins.dtype)
    return bins


def _summarise_rows(cos: torch.Tensor, k: int, edges: torch.Tensor, what: str) -> dict[str, torch.Tensor]:
    """Top/bottom-k, histogram and moments of each row of cos [B, C]; NaN entries are excluded.
    Keys as in the artifacts: top_{what}_value, top_{what}_ix, bottom_..., comp_hist, comp_mean, ...

    Overwrites `cos` (its NaNs are filled) to save a [B, C] temporary. Returns CPU tensors.
    """
    B, C = cos.shape
    invalid = torch.isnan(cos)
    all_valid = not bool(invalid.any())
    valid = ~invalid
    del invalid
    count = torch.full((B,), C, device=cos.device) if all_valid else valid.sum(1)  # [B]

    # Histogram: excluded entries go to an extra overflow slot that is dropped; one bincount over
    # row-offset bin ids.
    n_bins = len(edges) + 1
    ids = _hist_bins(cos, edges)
    if not all_valid:
        ids.masked_fill_(~valid, n_bins)
    ids = ids.long()
    ids += torch.arange(B, device=cos.device)[:, None] * (n_bins + 1)
    hist = torch.bincount(ids.flatten(), minlength=B * (n_bins + 1)).view(B, n_bins + 1)[:, :n_bins]
    del ids

    # Moments, two-pass (the whole row is in the block; values lie in [-1, 1], so float32 sums,
    # which torch accumulates pairwise, lose nothing that matters), ratios in float64.
    cnt = count.double()
    mean = (cos.sum(1) if all_valid else cos.nan_to_num(0.0).sum(1)).double() / cnt
    d = cos - mean[:, None].float()
    if not all_valid:
        d.nan_to_num_(0.0)  # excluded entries contribute 0
    d2 = d * d
    var = d2.sum(1).double() / cnt
    m3 = (d2 * d).sum(1).double() / cnt
    m4 = d2.square_().sum(1).double() / cnt
    del d, d2

    # Top / bottom k; excluded entries are filled with -inf / +inf so they come last.
    kk = min(k, C)
    if not all_valid:
        cos.nan_to_num_(nan=-torch.inf)
    top_v, top_i = cos.topk(kk, dim=1, largest=True, sorted=True)
    if not all_valid:
        cos.masked_fill_(~valid, torch.inf)
    bot_v, bot_i = cos.topk(kk, dim=1, largest=False, sorted=True)

    def pad(v, i):
        bad = ~valid.gather(1, i)
        v = v.masked_fill(bad, torch.nan)
        i = i.masked_fill(bad, -1)
        if kk < k:  # fewer columns than k: pad with empty slots
            v = torch.cat([v, v.new_full((B, k - kk), torch.nan)], 1)
            i = torch.cat([i, i.new_full((B, k - kk), -1)], 1)
        return v.cpu(), i.cpu()

    top_v, top_i = pad(top_v, top_i)
    bot_v, bot_i = pad(bot_v, bot_i)
    return {
        f"top_{what}_value": top_v, f"top_{what}_ix": top_i,
        f"bottom_{what}_value": bot_v, f"bottom_{what}_ix": bot_i,
        "comp_hist": hist.to("cpu", torch.int32),
        "comp_mean": mean.float().cpu(), "comp_var": var.float().cpu(),
        "comp_skew": (m3 / var.pow(1.5)).float().cpu(), "comp_kurt": (m4 / var.square()).float().cpu(),
    }


def _row_summary_store(L: int, D: int, k: int, what: str) -> dict[str, torch.Tensor]:
    """Preallocated CPU outputs for one kind; keys named as in the original (top_vocab_value, ...)."""
    return {
        f"top_{what}_value": torch.full((L, D, k), torch.nan), f"top_{what}_ix": torch.full((L, D, k), -1),
        f"bottom_{what}_value": torch.full((L, D, k), torch.nan), f"bottom_{what}_ix": torch.full((L, D, k), -1),
        "comp_hist": torch.zeros(L, D, N_HIST_EDGES + 1, dtype=torch.int32),
        **{f"comp_{m}": torch.full((L, D), torch.nan) for m in ("mean", "var", "skew", "kurt")},
    }


def _store_block(store: dict, summary: dict, start: int) -> None:
    """Write one block's summaries (flat neuron rows start..) into the [L, D, ...] store."""
    stop = start + len(summary["comp_mean"])
    for key, t in summary.items():
        store[key].view(-1, *t.shape[1:])[start:stop] = t


def vocab_compositions(w: Weights, block_size: int = DEFAULT_BLOCK_SIZE, progress: bool = False,
                       layers=None) -> dict:
    """{E_in, U_in, E_out, U_out} -> row summaries of the cosines [L, D, V] between a neuron weight
    and every token: E_* with embedding rows W_E[v, :], U_* with unembedding columns W_U[:, v];
    *_in with w_in, *_out with w_out. Keys top/bottom_vocab_value/ix (k = 100), comp_hist,
    comp_mean/var/skew/kurt (see the module docstring). `layers`: only those neuron layers."""
    row_ix = _row_index(w, layers).to(w.W_in.device)
    edges = hist_edges(w.W_in.device)
    units = _neuron_units(w)
    rows = units if layers is None else {side: u[row_ix] for side, u in units.items()}  # no copy for all rows
    vocab = {"E": _unit_rows(w.W_E), "U": _unit_rows(w.W_U.T)}  # [V, d_model] each
    result = {}
    for kind in VOCAB_KINDS:
        tokens, side = kind.split("_")
        store = _row_summary_store(len(row_ix) // w.d_mlp, w.d_mlp, VOCAB_TOP_K, "vocab")
        for start in _blocks(len(row_ix), block_size, progress, f"vocab {kind}"):
            cos = rows[side][start:start + block_size] @ vocab[tokens].T  # [B, V]
            _store_block(store, _summarise_rows(cos, VOCAB_TOP_K, edges, "vocab"), start)
        result[kind] = store
    return result


def neuron_compositions(w: Weights, block_size: int = DEFAULT_BLOCK_SIZE, progress: bool = False,
                        layers=None) -> dict:
    """{in_in, in_out, out_in, out_out} -> row summaries of the cosines between the row neuron's
    first-named weight and every column neuron's second-named weight ([L, D, N], e.g. in_out[i, j] =
    cos(w_in_i, w_out_j)), with the pair i == j EXCLUDED. Indices are flat (layer * D + neuron);
    keys top/bottom_neuron_value/ix (k = 20), comp_hist, comp_mean/var/skew/kurt. `layers`: only
    those row-neuron layers (the columns are always all N neurons)."""
    row_ix = _row_index(w, layers).to(w.W_in.device)
    edges = hist_edges(w.W_in.device)
    unit = _neuron_units(w)
    result = {}
    for kind in NEURON_KINDS:
        row_side, col_side = kind.split("_")
        store = _row_summary_store(len(row_ix) // w.d_mlp, w.d_mlp, NEURON_TOP_K, "neuron")
        for start in _blocks(len(row_ix), block_size, progress, f"neuron {kind}"):
            block_ix = row_ix[start:start + block_size]
            cos = unit[row_side][block_ix] @ unit[col_side].T  # [B, N]
            cos[torch.arange(len(block_ix), device=cos.device), block_ix] = torch.nan  # exclude self-similarity
            _store_block(store, _summarise_rows(cos, NEURON_TOP_K, edges, "neuron"), start)
        result[kind] = store
    return result


# Public entry points ----------------------------------------------------------------------------

def compute_weight_summaries(model, block_size: int = DEFAULT_BLOCK_SIZE, device=None, progress: bool = False,
                             layers=None) -> dict:
    """All summaries in memory: {'neuron_stats': DataFrame, 'k_comps', 'q_comps', 'v_comps',
    'o_comps': fp16 [L, D, L_attn, H], 'vocab_comps': {...}, 'neuron_comps': {...}} (CPU tensors),
    'architecture' (dict), as `read_weight_summaries` returns them.
    `layers` restricts the row neurons to those layers (outputs [len(layers), D, ...])."""
    check_block_size(block_size)
    w = extract_weights(model, device)
    with torch.no_grad():
        stats = neuron_stats(w)
        attn = attention_compositions(w, block_size, progress, layers)
        return {
            "neuron_stats": stats if layers is None else stats[stats.layer.isin(list(layers))].reset_index(drop=True),
            **{f"{k}_comps": attn[k] for k in ATTN_KINDS},
            "vocab_comps": vocab_compositions(w, block_size, progress, layers),
            "neuron_comps": neuron_compositions(w, block_size, progress, layers),
            "architecture": architecture(model),
        }


@dataclass
class WeightsConfig(StageConfig):
    """weights.py's flags (the original's names; its unused ones accepted), built by the CLI and usable by
    the pipeline; `run()`."""

    model: str = field(metadata={"required": True, "help": "TransformerLens alias, hub id or local Hugging Face folder"})
    save_path: str | None = field(default=None, metadata={"help": "root folder; the output is <save_path>/<model>/weights/ "
                                                                  "(default: $SUMMARY_DIR or summary_data)"})
    device: str = field(default="auto", metadata={"common": True})
    block_size: int = field(default=DEFAULT_BLOCK_SIZE, metadata={"type": int, "help":
                            "neuron rows per block; peak memory ~ 10 x block_size x max(d_vocab, n_neurons) x 4 bytes"})
    force: bool = field(default=False, metadata={"action": "store_true", "aliases": ("--overwrite",), "help":
                        "replace files made from other weights or code (default: stop and say so); files made "
                        "by this run's record are kept"})
    causal_only: bool = field(default=False, metadata={"action": "store_true", "help":
                              "accepted for the original's command lines (unused)"})
    save_precision: int = field(default=8, metadata={"type": int, "choices": [8, 16, 32], "help":
                                "accepted for the original's command lines (unused: fp16 summaries)"})
    compute_full_stats: bool = field(default=False, metadata={"action": "store_true", "help":
                                     "the original's untested full-statistics path (it crashed there): not supported"})

    def run(self, progress: bool = True) -> Path:
        from .device import resolve_device
        from .models import load_model

        if self.compute_full_stats:
            raise UserError("--compute_full_stats is not supported (the original's path behind it crashed); the "
                            "default summaries hold the compositions' histograms, moments and top/bottom entries")
        device = resolve_device(self.device)
        root = Path(self.save_path) if self.save_path is not None else paths.summary_dir()
        out_dir = root / paths.model_dirname(self.model) / "weights"
        check_block_size(self.block_size)  # before the (slow) model load
        if weights_done(self.model, out_dir):
            print(f"{out_dir} exists, made from these weights: skipped")
            return out_dir
        model = load_model(self.model, device=str(device))
        return save_weight_summaries(model, out_dir, block_size=self.block_size, force=self.force, progress=progress)


def read_weight_summaries(model_name: str, out_dir: str | Path | None = None) -> dict:
    """The one reader of a weights/ folder: neuron_stats (DataFrame), k/q/v/o_comps ([L, D, L_attn, H]),
    architecture (dict), vocab_comps, neuron_comps (dicts of dicts, memory-mapped). Missing files are
    absent keys."""
    root = Path(out_dir) if out_dir is not None else paths.weights_summary_path(model_name)
    out: dict = {}
    if (root / "neuron_stats.csv").is_file():
        out["neuron_stats"] = pd.read_csv(root / "neuron_stats.csv")
    for files in ARTIFACT_GROUPS.values():
        for f in files:
            if f.endswith(".pt") and (root / f).is_file():
                out[f[:-3]] = paths.torch_load(root / f, mmap=True)
    if (arch := runs.read_record(root / "architecture.json")) is not None:
        out["architecture"] = arch
    return out


def weights_record(model_name: str) -> dict:
    """What makes a weights/ folder (runs.py): the model, its weights' fingerprint, the code version."""
    return {"model": model_name, "model_fingerprint": model_fingerprint(model_name),
            "code_version": runs.code_version()}


def weights_done(model_name: str, out_dir: str | Path | None = None) -> bool:
    """Every file present and made from these weights by this code (no model load needed)."""
    out_dir = Path(out_dir) if out_dir is not None else paths.weights_summary_path(model_name)
    return all((out_dir / f).exists() for files in ARTIFACT_GROUPS.values() for f in files) and \
        runs.read_record(out_dir / RUN_FILE) == weights_record(model_name)


def _groups_to_compute(out_dir: Path, record: dict, force: bool) -> list[str]:
    """The artifact groups to compute: those missing under the same record; every group when files were
    made otherwise and `force` (their old files removed, the new record written first, so no old group
    survives under it if this run dies); otherwise such files stop the run."""
    have = runs.read_record(out_dir / RUN_FILE)
    present = [g for g, files in ARTIFACT_GROUPS.items() if all((out_dir / f).exists() for f in files)]
    if present and have != record and not force:
        why = (f"has no record of its settings ({RUN_FILE})" if have is None else
               "was made from other weights or code: " + ", ".join(runs.differences(have, record)))
        raise UserError(f"{out_dir} {why}; pass --overwrite to replace it")
    todo = [g for g in ARTIFACT_GROUPS if g not in present] if have == record else list(ARTIFACT_GROUPS)
    if not todo:
        return []
    runs.would(f"compute {out_dir}")
    out_dir.mkdir(parents=True, exist_ok=True)
    if have != record:
        for f in (f for g in ARTIFACT_GROUPS.values() for f in g):
            (out_dir / f).unlink(missing_ok=True)
        runs.write_record(out_dir / RUN_FILE, record)  # groups present later belong to this record
    return todo


def save_weight_summaries(model, out_dir: str | Path | None = None, block_size: int = DEFAULT_BLOCK_SIZE,
                          device=None, force: bool = False, progress: bool = False) -> Path:
    """Compute and write the artifacts to `out_dir` (default paths.weights_summary_path(model.model_name)).

    Each group of files (neuron_stats / attention / vocab / neuron) is written atomically as soon
    as it is computed; a group whose files exist under the same record is kept. run.json records the
    model, its weights' fingerprint and the code version: files made otherwise (another checkpoint
    under the same name, an earlier version) stop the run unless `force` (--overwrite). Returns out_dir.
    """
    check_block_size(block_size)
    if out_dir is None:
        name = getattr(model, "model_name", None)
        if not name:
            raise UserError("the model has no model_name: pass out_dir explicitly")
        out_dir = paths.weights_summary_path(name)
    out_dir = Path(out_dir)
    record = weights_record(getattr(model, "model_name", None) or out_dir.parent.name)
    todo = _groups_to_compute(out_dir, record, force)
    if not todo:
        return out_dir
    w = extract_weights(model, device)
    with torch.no_grad():
        if "neuron_stats" in todo:
            with paths.atomic_path(out_dir / "neuron_stats.csv") as tmp:
                neuron_stats(w).to_csv(tmp, index=False)
        if "attention" in todo:
            for kind, scores in attention_compositions(w, block_size, progress).items():
                paths.torch_save_atomic(scores, out_dir / f"{kind}_comps.pt")
        if "architecture" in todo:
            with paths.atomic_path(out_dir / "architecture.json") as tmp:
                tmp.write_text(json.dumps(architecture(model), indent=1) + "\n")
        if "vocab" in todo:
            paths.torch_save_atomic(vocab_compositions(w, block_size, progress), out_dir / "vocab_comps.pt")
        if "neuron" in todo:
            paths.torch_save_atomic(neuron_compositions(w, block_size, progress), out_dir / "neuron_comps.pt")
    return out_dir
