"""Reading correlations.py's summaries for figures: per-seed tables and max_corr against the baseline.

    flatten_layers(x [L, D, ...]) -> [L * D, ...]; unflatten_layers(x [L * D, ...], L) -> [L, D, ...]
    make_correlation_result_df(model, others, dataset)   long table, one row per (neuron, other seed)
    plot_max_corr_by_layer(df)                           the paper's max_corr vs rotated baseline per layer

Neuron rows are layer-major: row l * d_mlp + n is neuron l.n (the summaries' and the neuron df's order).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from universal_neurons import paths
from universal_neurons.errors import UserError


def flatten_layers(x):
    """[L, D, ...] -> [L * D, ...] (layer-major: row l * D + n), numpy or torch."""
    return x.reshape(x.shape[0] * x.shape[1], *x.shape[2:])


def unflatten_layers(x, n_layers: int):
    """[L * D, ...] -> [L, D, ...]; the inverse of flatten_layers."""
    if x.shape[0] % n_layers:
        raise UserError(f"{x.shape[0]} rows do not split into {n_layers} layers")
    return x.reshape(n_layers, x.shape[0] // n_layers, *x.shape[1:])


def load_correlation_summary(model: str, other: str, dataset: str, baseline: str = "none",
                             similarity: str = "pearson") -> dict:
    from universal_neurons.correlations import read_correlation_summary

    return read_correlation_summary(paths.correlation_path(model, other, dataset, similarity, baseline),
                                    hint=f"correlations.py --model_1_name {model} --model_2_name {other} "
                                         f"--token_dataset {dataset} --baseline {baseline}")


def make_correlation_result_df(model: str, others: list[str], dataset: str, d_mlp: int,
                               baselines=("none", "rotation"), similarity: str = "pearson") -> pd.DataFrame:
    """One row per (neuron of `model`, other seed, baseline): layer, neuron, other, baseline,
    max_corr (float64, NaN for dead neurons), partner (the best-correlated neuron 'l.n' of the other seed).

    d_mlp: neurons per layer, the same for every seed (the paper compares seeds of one architecture).
    """
    parts = []
    for other in others:
        for b in baselines:
            s = load_correlation_summary(model, other, dataset, b, similarity)
            mx = s["max_corr"].double().numpy()
            ix = s["max_corr_ix"].long().numpy()
            rows = np.arange(len(mx))
            parts.append(pd.DataFrame({"layer": rows // d_mlp, "neuron": rows % d_mlp, "other": other,
                                       "baseline": b, "max_corr": mx,
                                       "partner": [f"{i // d_mlp}.{i % d_mlp}" for i in ix]}))
    if not parts:
        raise UserError("no other seeds to compare with")
    return pd.concat(parts, ignore_index=True)


def plot_max_corr_by_layer(neuron_df: pd.DataFrame, real: str = "mean_corr", base: str = "mean_baseline"):
    """Per layer: the distribution (5/25/50/75/95 percentiles) of the neurons' max correlation with the
    other seeds (`real`) next to the same against randomly rotated seeds (`base`). Returns a Figure."""
    import matplotlib.pyplot as plt

    layers = sorted(neuron_df["layer"].unique())
    fig, ax = plt.subplots(figsize=(max(4, 0.7 * len(layers) + 2), 3.5))
    for col, color, dx, label in ((real, "C0", -0.15, "other seeds"), (base, "#999999", 0.15, "rotated baseline")):
        q = neuron_df.groupby("layer")[col].quantile([0.05, 0.25, 0.5, 0.75, 0.95]).unstack()
        x = np.asarray(layers, dtype=float) + dx
        ax.vlines(x, q[0.05], q[0.95], color=color, lw=1)
        ax.vlines(x, q[0.25], q[0.75], color=color, lw=5, label=label)
        ax.plot(x, q[0.5], "o", color="white", markeredgecolor=color, markersize=4)
    ax.set_xticks(layers)
    ax.set_xlabel("layer")
    ax.set_ylabel("max correlation (mean over seeds)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
