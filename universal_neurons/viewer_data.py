"""Loaders and figures for looking at one neuron (the original summary_viewer.py).

Loaders (tensors are memory-mapped: only what a view touches is read):
    load_dataset_summary(model, dataset)   {file stem: tensor} from summary.py's folder
    load_all_summaries(model)              {short dataset name: that dict} for every folder present
    load_weights_summary(model)            weights.py's neuron_stats (DataFrame), k/q/v/o_comps,
                                           vocab_comps, neuron_comps (whatever exists)
    get_tokenizer_and_decoded_vocab(model) (tokenizer, [V] token strings), no model weights

Panels: each `panel_<name>(...)` takes loaded data and returns a matplotlib Figure (made without
pyplot, so a web server can render many); `display_summary` assembles them for a notebook and
puts a note naming the producing command where an artifact is missing.
"""
from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import torch

from . import paths
from .weights import causal_mask, read_weight_summaries
from .activation_summary import read_summary, summary_datasets  # noqa: F401 (the viewer's import names)
from .activation_summary import (BIN_COUNTS, BIN_EDGES, TOP_INDEX, TOP_VALUE, VOCAB_MAX, VOCAB_MAX_IX,
                                 VOCAB_MEAN, VOCAB_MEAN_IX, histogram_quantiles)
from .errors import UserError

ATTN_KINDS = ("k", "q", "v", "o")
VOCAB_KINDS = ("E_in", "U_in", "E_out", "U_out")
NEURON_KINDS = ("in_in", "in_out", "out_in", "out_out")
PERCENTILES = (0.0001, 0.001, 0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99, 0.999, 0.9999)
# Control tokens have no glyph in any font and matplotlib warns for each. One filter at import instead of
# catch_warnings around each drawing: catch_warnings is not thread-safe, and panels draw in threads.
warnings.filterwarnings("ignore", message=r"(?s)Glyph \d+ .*missing from font")


# Loaders ------------------------------------------------------------------------------------------

def _activations_root(model: str, summary_dir: str | Path | None) -> Path:
    root = paths.summary_dir() if summary_dir is None else Path(summary_dir)
    return root / paths.model_dirname(model) / "activations"


def load_dataset_summary(model: str, dataset: str, summary_dir: str | Path | None = None) -> dict[str, torch.Tensor]:
    """{file stem: tensor} of summary.py's artifacts for (model, dataset) (activation_summary.read_summary)."""
    return read_summary(model, dataset, summary_dir)


def short_names(names: list[str]) -> dict[str, str]:
    """Full dataset name -> the dot-separated part that differs between the names.

    'python-stdlib.code.64', 'python-stdlib.docs.64' -> 'code', 'docs'; 'pile.test.arxiv.512' with
    other Pile subsets -> 'arxiv'. A single name keeps its last non-numeric component; names that
    would collide (or become empty) stay whole.
    """
    parts = [n.split(".") for n in names]
    if len(parts) == 1:
        words = [p for p in parts[0] if not p.isdigit()] or parts[0]
        return {names[0]: words[-1]}
    pre = 0
    while all(len(p) > pre for p in parts) and len({p[pre] for p in parts}) == 1:
        pre += 1
    suf = 0
    while all(len(p) - pre > suf for p in parts) and len({p[-1 - suf] for p in parts}) == 1:
        suf += 1
    short = [".".join(p[pre:len(p) - suf]) for p in parts]
    if any(not s for s in short) or len(set(short)) < len(short):
        return {n: n for n in names}
    return dict(zip(names, short))


def load_all_summaries(model: str, summary_dir: str | Path | None = None,
                       datasets: list[str] | None = None) -> dict[str, dict[str, torch.Tensor]]:
    """{short dataset name: load_dataset_summary(...)} for every summarised dataset (or `datasets`)."""
    names = summary_datasets(model, summary_dir) if datasets is None else list(datasets)
    if not names:
        raise UserError(f"no activation summaries under {_activations_root(model, summary_dir)}: run "
                        f"python summary.py --model {model} --token_dataset <dataset> ...")
    return {short: load_dataset_summary(model, full, summary_dir) for full, short in short_names(names).items()}


def full_dataset_names(model: str, summary_dir: str | Path | None = None) -> dict[str, str]:
    """{short name: full dataset name} of the summarised datasets."""
    return {s: f for f, s in short_names(summary_datasets(model, summary_dir)).items()}


def load_weights_summary(model: str, summary_dir: str | Path | None = None) -> dict:
    """weights.py's artifacts (weights.read_weight_summaries): neuron_stats (DataFrame), k/q/v/o_comps,
    vocab_comps, neuron_comps. Missing files are absent keys."""
    root = None if summary_dir is None else Path(summary_dir) / paths.model_dirname(model) / "weights"
    return read_weight_summaries(model, root)


def get_tokenizer_and_decoded_vocab(model: str):
    """(tokenizer, list of V token strings), without loading the model's weights."""
    from .token_features import decoded_vocab

    from .models import load_tokenizer

    tokenizer = load_tokenizer(model)
    return tokenizer, decoded_vocab(tokenizer)


# Data behind the panels ----------------------------------------------------------------------------

def histogram_stairs(counts: torch.Tensor, edges: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(values [n_bins + 1], stair edges [n_bins + 2]) for matplotlib's stairs: bin i is drawn over
    (edges[i-1], edges[i]]; the two open tails as one extra bin width beyond the range."""
    e = edges.double().numpy()
    w = e[1] - e[0]
    return counts.double().numpy(), np.concatenate([[e[0] - w], e, [e[-1] + w]])


def activation_percentiles(summaries: dict, layer: int, neuron: int, qs=PERCENTILES) -> dict[str, np.ndarray]:
    """{dataset: [len(qs)] pre-activation quantiles from its histogram}."""
    return {name: histogram_quantiles(s[BIN_COUNTS][layer, neuron], s[BIN_EDGES], qs).numpy()
            for name, s in summaries.items()}


def top_tokens(summary: dict, layer: int, neuron: int, stat: str = "max", k: int = 10) -> list[tuple[int, float]]:
    """[(token id, value)] of the k tokens with the largest per-token max / mean activation."""
    full, ix_name = (VOCAB_MAX, VOCAB_MAX_IX) if stat == "max" else (VOCAB_MEAN, VOCAB_MEAN_IX)
    if full not in summary:
        return []
    v = summary[full][layer, neuron].float()
    if ix_name in summary:
        ix = summary[ix_name][layer, neuron].long()
    else:  # the full [L, D, V] tensors: NaN = token never seen
        v, ix = torch.topk(torch.nan_to_num(v, nan=-math.inf), min(k, len(v)))
    keep = (ix >= 0) & torch.isfinite(v)
    return [(int(i), float(x)) for i, x in zip(ix[keep][:k], v[keep][:k])]


def max_activating_examples(summary: dict, tokens: torch.Tensor, layer: int, neuron: int, n: int = 10,
                            before: int = 12, after: int = 4) -> list[dict]:
    """The n top dataset examples: dicts rank, value, seq, pos, token, before (ids), after (ids).

    tokens: the dataset's [n_seq, ctx] ids. The window stays inside the example's own row (it is
    clipped at the row's start and end, never wrapping into the neighbouring sequence).
    """
    n_seq, ctx = tokens.shape
    out = []
    for rank, (ix, val) in enumerate(zip(summary[TOP_INDEX][layer, neuron].tolist(),
                                         summary[TOP_VALUE][layer, neuron].float().tolist())):
        if len(out) >= n or ix < 0:
            break
        seq, pos = divmod(int(ix), ctx)
        if seq >= n_seq:
            raise UserError(f"example index {ix} is beyond the token dataset ({n_seq} x {ctx}): "
                            "the summary was made on another dataset")
        row = tokens[seq].tolist()
        out.append({"rank": rank, "value": val, "seq": seq, "pos": pos, "token": row[pos],
                    "before": row[max(0, pos - before):pos], "after": row[pos + 1:pos + 1 + after]})
    return out


def _show(s: str) -> str:
    """A token string as matplotlib text: visible whitespace, no mathtext."""
    return s.replace("\n", "⏎").replace("\t", "⇥").replace("$", r"\$")


def examples_html(examples: list[dict], vocab: list[str]) -> str:
    """The examples as HTML lines with the activating token highlighted (for notebooks / web)."""
    import html

    def text(ids):
        return html.escape("".join(vocab[i] for i in ids)).replace("\n", "⏎")

    rows = [f"<div style='font-family:monospace;white-space:pre'>{e['value']:7.3f}  {text(e['before'])}"
            f"<span style='background:#ffd54f;font-weight:bold'>{text([e['token']])}</span>"
            f"{text(e['after'])}</div>" for e in examples]
    return "\n".join(rows)


# Panels -------------------------------------------------------------------------------------------

def _figure(nrows=1, ncols=1, width=10.0, height=3.5, **kw):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False, **kw)
    return fig, axes


def panel_note(message: str, title: str = ""):
    """A figure holding only a message (what is missing and which command makes it)."""
    fig, ax = _figure(width=10, height=0.8)
    ax = ax[0, 0]
    ax.axis("off")
    ax.text(0, 0.5, _show(message), va="center", ha="left", wrap=True, fontsize=10)
    if title:
        ax.set_title(title, loc="left", fontsize=10)
    return fig


def panel_activation_percentiles(summaries: dict, layer: int, neuron: int, qs=PERCENTILES):
    """Pre-activation percentiles (from the histograms) per dataset."""
    fig, ax = _figure(width=8, height=3.5)
    ax = ax[0, 0]
    for name, q in activation_percentiles(summaries, layer, neuron, qs).items():
        ax.plot(range(len(qs)), q, marker="o", label=name)
    ax.set_xticks(range(len(qs)), [f"{100 * q:g}" for q in qs])
    ax.set_xlabel("percentile")
    ax.set_ylabel("pre-activation")
    ax.set_title(f"L{layer}.{neuron}: activation percentiles by dataset")
    ax.legend(fontsize=7, ncols=2)
    return fig


def panel_activation_distribution(summaries: dict, layer: int, neuron: int, log: bool = True):
    """Share of tokens per histogram bin, drawn on the bin edges (tails as one bin beyond the range)."""
    fig, ax = _figure(width=8, height=3.5)
    ax = ax[0, 0]
    for name, s in summaries.items():
        counts, edges = histogram_stairs(s[BIN_COUNTS][layer, neuron], s[BIN_EDGES])
        ax.stairs(counts / max(counts.sum(), 1), edges, label=name)
    e = next(iter(summaries.values()))[BIN_EDGES]
    for x in (float(e[0]), float(e[-1])):
        ax.axvline(x, color="grey", lw=0.5, ls=":")  # outside these lines: the open tail bins
    if log:
        ax.set_yscale("log")
    ax.set_xlabel("pre-activation")
    ax.set_ylabel("share of tokens")
    ax.set_title(f"L{layer}.{neuron}: activation distribution")
    ax.legend(fontsize=7, ncols=2)
    return fig


def panel_top_tokens(summaries: dict, layer: int, neuron: int, vocab: list[str], stat: str = "max", k: int = 10):
    """Per dataset, the k tokens with the largest per-token `stat` (max or mean) activation."""
    n = len(summaries)
    ncols = min(n, 4)
    fig, axes = _figure(math.ceil(n / ncols), ncols, width=3.2 * ncols, height=0.25 * k * math.ceil(n / ncols) + 1)
    for ax, (name, s) in zip(axes.flat, summaries.items()):
        top = top_tokens(s, layer, neuron, stat, k)
        ax.barh(range(len(top)), [v for _, v in top], color="tab:blue" if stat == "max" else "tab:green")
        ax.set_yticks(range(len(top)), [_show(repr(vocab[i])) for i, _ in top], fontsize=7)
        ax.invert_yaxis()
        ax.set_title(name, fontsize=9)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.suptitle(f"L{layer}.{neuron}: top tokens by {stat} activation")
    return fig


def panel_weight_cosine_distributions(weights: dict, layer: int, neuron: int):
    """Histograms of the neuron's weight cosines with every token (vocab_comps) and neuron (neuron_comps)."""
    edges = torch.linspace(-1, 1, 100)
    groups = [(key, kinds) for key, kinds in (("vocab_comps", VOCAB_KINDS), ("neuron_comps", NEURON_KINDS))
              if key in weights]
    fig, axes = _figure(1, max(len(groups), 1), width=5 * max(len(groups), 1), height=3.2)
    for ax, (key, kinds) in zip(axes.flat, groups):
        for kind in kinds:
            if kind in weights[key]:
                counts, stair_edges = histogram_stairs(weights[key][kind]["comp_hist"][layer, neuron], edges)
                ax.stairs(counts, stair_edges, label=kind)
        ax.set_yscale("log")
        ax.set_xlabel("cosine")
        ax.set_title(f"L{layer}.{neuron}: {key.replace('_comps', '')} weight cosines", fontsize=9)
        ax.legend(fontsize=7)
    return fig


def panel_top_vocab_tokens(weights: dict, layer: int, neuron: int, vocab: list[str], k: int = 10):
    """Top and bottom tokens by cosine of w_in / w_out with the embedding (E) and unembedding (U)."""
    comps = weights["vocab_comps"]
    kinds = [kind for kind in VOCAB_KINDS if kind in comps]
    fig, axes = _figure(1, len(kinds), width=3.4 * len(kinds), height=0.22 * 2 * k + 1)
    for ax, kind in zip(axes.flat, kinds):
        c = comps[kind]
        ids = c["top_vocab_ix"][layer, neuron, :k].tolist() + c["bottom_vocab_ix"][layer, neuron, :k].tolist()[::-1]
        vals = c["top_vocab_value"][layer, neuron, :k].tolist() + c["bottom_vocab_value"][layer, neuron, :k].tolist()[::-1]
        keep = [(i, v) for i, v in zip(ids, vals) if i >= 0]
        ax.barh(range(len(keep)), [v for _, v in keep], color=["tab:red" if v > 0 else "tab:blue" for _, v in keep])
        ax.set_yticks(range(len(keep)), [_show(repr(vocab[i])) for i, _ in keep], fontsize=7)
        ax.invert_yaxis()
        ax.set_title(kind, fontsize=9)
    fig.suptitle(f"L{layer}.{neuron}: top / bottom tokens by weight cosine")
    return fig


def panel_top_neurons(weights: dict, layer: int, neuron: int, k: int = 10):
    """Top and bottom neurons (labelled l.n) by weight cosine, for in/out x in/out."""
    comps = weights["neuron_comps"]
    kinds = [kind for kind in NEURON_KINDS if kind in comps]
    fig, axes = _figure(1, len(kinds), width=3 * len(kinds), height=0.22 * 2 * k + 1)
    for ax, kind in zip(axes.flat, kinds):
        c = comps[kind]
        D = c["top_neuron_ix"].shape[1]
        ids = c["top_neuron_ix"][layer, neuron, :k].tolist() + c["bottom_neuron_ix"][layer, neuron, :k].tolist()[::-1]
        vals = c["top_neuron_value"][layer, neuron, :k].tolist() + c["bottom_neuron_value"][layer, neuron, :k].tolist()[::-1]
        keep = [(i, v) for i, v in zip(ids, vals) if i >= 0]
        ax.barh(range(len(keep)), [v for _, v in keep], color=["tab:red" if v > 0 else "tab:blue" for _, v in keep])
        ax.set_yticks(range(len(keep)), [f"{i // D}.{i % D}" for i, _ in keep], fontsize=7)
        ax.invert_yaxis()
        ax.set_title(kind, fontsize=9)
    fig.suptitle(f"L{layer}.{neuron}: top / bottom neurons by weight cosine")
    return fig


def panel_attention_composition(weights: dict, layer: int, neuron: int):
    """k / q / v / o composition of the neuron with every attention head: heatmaps [layer, head];
    heads that cannot compose with the neuron (weights.causal_mask, from architecture.json) are blank."""
    kinds = [kind for kind in ATTN_KINDS if f"{kind}_comps" in weights]
    arch = weights.get("architecture")
    fig, axes = _figure(1, len(kinds), width=3.2 * len(kinds), height=3.2)
    for ax, kind in zip(axes.flat, kinds):
        comps = weights[f"{kind}_comps"]
        m = comps[layer, neuron].float()  # [L_attn, H]
        if arch is not None:
            m = m.masked_fill(~causal_mask(kind, comps.shape[0], comps.shape[2], arch["parallel_attn_mlp"])[layer, 0], torch.nan)
        m = m.numpy()
        im = ax.imshow(m, aspect="auto", cmap="viridis", origin="upper")
        ax.set_xlabel("head")
        ax.set_ylabel("layer")
        ax.set_title(f"{kind} composition", fontsize=9)
        fig.colorbar(im, ax=ax, shrink=0.8)
    fig.suptitle(f"L{layer}.{neuron}: attention composition")
    return fig


def panel_max_activating_examples(examples: list[dict], vocab: list[str], title: str = ""):
    """One line per example: value, left context, the token highlighted, right context."""
    n = max(len(examples), 1)
    fig, ax = _figure(width=12, height=0.32 * n + 0.6)
    ax = ax[0, 0]
    ax.axis("off")
    renderer = fig.canvas.get_renderer()
    to_axes = ax.transAxes.inverted()
    kw = dict(va="center", family="monospace", fontsize=8)
    for i, e in enumerate(examples):
        y = 1 - (i + 0.5) / n
        ax.text(0.0, y, f"{e['value']:.3f}", ha="left", **kw)
        ax.text(0.45, y, _show("".join(vocab[t] for t in e["before"])), ha="right", **kw)
        tok = ax.text(0.455, y, _show(vocab[e["token"]]) or " ", ha="left", fontweight="bold",
                      bbox=dict(facecolor="#ffd54f", edgecolor="none", pad=1.5), **kw)
        x_end = to_axes.transform(tok.get_window_extent(renderer).get_points())[1, 0]
        ax.text(x_end + 0.006, y, _show("".join(vocab[t] for t in e["after"])), ha="left", **kw)
    ax.set_title(title or "max-activating examples", loc="left", fontsize=10)
    return fig


# Assembly -----------------------------------------------------------------------------------------

def display_summary(model: str, layer: int, neuron: int, datasets: list[str] | None = None,
                    example_dataset: str | None = None, n_examples: int = 10, k: int = 10,
                    summary_dir: str | Path | None = None, show: bool = True) -> dict:
    """Every panel for neuron `layer.neuron` of `model`: {panel name: Figure}; shown in a notebook if `show`.

    datasets: full dataset names to compare (default: all summarised); example_dataset: where the
    max-activating text comes from (default: the first of them). Missing artifacts give a note
    figure naming the command that makes them.
    """
    figs: dict = {}
    summary_cmd = f"python summary.py --model {model} --token_dataset <dataset>"
    try:
        summaries = load_all_summaries(model, summary_dir, datasets)
    except UserError as e:
        summaries = {}
        figs["activations"] = panel_note(str(e) if datasets else f"no activation summaries: run {summary_cmd}")
    weights = load_weights_summary(model, summary_dir)
    vocab = get_tokenizer_and_decoded_vocab(model)[1]
    if summaries:
        s0 = next(iter(summaries.values()))
        L, D = s0[BIN_COUNTS].shape[:2]
        if not (0 <= layer < L and 0 <= neuron < D):
            raise UserError(f"neuron {layer}.{neuron} is out of range for {model} ({L} layers x {D} neurons)")
        figs["activation_percentiles"] = panel_activation_percentiles(summaries, layer, neuron)
        figs["activation_distribution"] = panel_activation_distribution(summaries, layer, neuron)
        for stat in ("max", "mean"):
            if any(top_tokens(s, layer, neuron, stat, 1) for s in summaries.values()):
                figs[f"top_tokens_{stat}"] = panel_top_tokens(summaries, layer, neuron, vocab, stat, k)
            else:
                figs[f"top_tokens_{stat}"] = panel_note(
                    f"no per-token statistics: rerun {summary_cmd} with --top_vocab_k_truncate 100 (not 0)")
        figs["max_activating_examples"] = _examples_figure(model, layer, neuron, summaries, datasets,
                                                           example_dataset, n_examples, vocab, summary_dir)
    weights_cmd = f"python weights.py --model {model}"
    if "vocab_comps" in weights or "neuron_comps" in weights:
        figs["weight_cosines"] = panel_weight_cosine_distributions(weights, layer, neuron)
    else:
        figs["weight_cosines"] = panel_note(f"no weight summaries (vocab_comps.pt / neuron_comps.pt): run {weights_cmd}")
    if "vocab_comps" in weights:
        figs["top_vocab_tokens"] = panel_top_vocab_tokens(weights, layer, neuron, vocab, k)
    if "neuron_comps" in weights:
        figs["top_neurons"] = panel_top_neurons(weights, layer, neuron, k)
    if any(f"{kind}_comps" in weights for kind in ATTN_KINDS):
        figs["attention_composition"] = panel_attention_composition(weights, layer, neuron)
    else:
        figs["attention_composition"] = panel_note(f"no attention compositions (k/q/v/o_comps.pt): run {weights_cmd}")
    if show:
        try:
            from IPython.display import display
        except ImportError:  # pragma: no cover
            return figs
        for fig in figs.values():
            display(fig)
    return figs


def _examples_figure(model, layer, neuron, summaries, datasets, example_dataset, n_examples, vocab, summary_dir):
    from .models import model_family
    from .token_datasets import load_token_dataset, token_tensor

    full = full_dataset_names(model, summary_dir) if datasets is None else \
        {s: f for f, s in short_names(list(datasets)).items()}
    name = example_dataset or next(iter(full.values()))
    short = {f: s for s, f in full.items()}.get(name)
    if short is None or short not in summaries:
        return panel_note(f"no activation summary for {name}: run python summary.py --model {model} --token_dataset {name}")
    try:
        tokens = token_tensor(load_token_dataset(name, model_family(model)))
    except UserError as e:
        return panel_note(f"the token dataset is needed for text examples: {e}")
    examples = max_activating_examples(summaries[short], tokens, layer, neuron, n_examples)
    return panel_max_activating_examples(examples, vocab, f"L{layer}.{neuron}: max-activating examples ({name})")
