"""Figures shared by the report, the notebooks and the viewer (matplotlib; each returns a Figure)."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg") if matplotlib.get_backend().lower() == "agg" else None
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from .neuron_df import UNIVERSAL_THRESHOLD  # noqa: E402

PROPERTIES = {  # neuron-df column -> label, as in the paper's "properties of universal neurons" figure
    "kurt": "activation kurtosis",
    "skew": "activation skew",
    "input_bias": "input bias",
    "sparsity": "activation frequency",
    "l2_penalty": "weight norm (L2 penalty)",
    "vocab_kurt": "W_U kurtosis",
}


def excess_corr_hist(df: pd.DataFrame, threshold: float = UNIVERSAL_THRESHOLD):
    """Distribution of mean_corr (seeds) against mean_baseline (rotated seeds), and excess_corr."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    bins = np.linspace(-0.2, 1, 61)
    axes[0].hist(df["mean_corr"].dropna(), bins=bins, alpha=0.7, label="other seeds (mean of max corr)")
    axes[0].hist(df["mean_baseline"].dropna(), bins=bins, alpha=0.7, label="rotated baseline")
    axes[0].set_xlabel("max Pearson correlation, mean over other seeds")
    axes[0].set_ylabel("neurons")
    axes[0].legend(fontsize=8)
    axes[1].hist(df["excess_corr"].dropna(), bins=np.linspace(-0.3, 1, 66), color="C2")
    axes[1].axvline(threshold, color="k", ls="--", lw=1)
    axes[1].set_xlabel("excess correlation (mean_corr - mean_baseline)")
    axes[1].set_yscale("log")
    fig.tight_layout()
    return fig


def universal_by_layer(df: pd.DataFrame, threshold: float = UNIVERSAL_THRESHOLD):
    share = (df["excess_corr"] > threshold).groupby(df["layer"]).mean() * 100
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.bar(share.index, share.values, color="C3")
    ax.set_xlabel("layer")
    ax.set_ylabel("% universal neurons")
    ax.set_xticks(share.index)
    fig.tight_layout()
    return fig


def within_layer_percentiles(df: pd.DataFrame, columns=tuple(PROPERTIES)) -> pd.DataFrame:
    """Each property as its percentile (0-100) among the neurons of the same layer."""
    out = df[["layer", "neuron"]].copy()
    for c in columns:
        out[c] = df.groupby("layer")[c].rank(pct=True) * 100
    return out


def property_percentiles(df: pd.DataFrame, threshold: float = UNIVERSAL_THRESHOLD):
    """Box plots of within-layer percentiles of each property, universal neurons against the rest."""
    pct = within_layer_percentiles(df)
    is_u = df["excess_corr"] > threshold
    fig, ax = plt.subplots(figsize=(10, 3.5))
    cols = list(PROPERTIES)
    pos = np.arange(len(cols))
    data_u = [pct.loc[is_u, c].dropna().values for c in cols]
    data_r = [pct.loc[~is_u, c].dropna().values for c in cols]
    b1 = ax.boxplot([d if len(d) else [np.nan] for d in data_r], positions=pos - 0.18, widths=0.3,
                    patch_artist=True, showfliers=False)
    b2 = ax.boxplot([d if len(d) else [np.nan] for d in data_u], positions=pos + 0.18, widths=0.3,
                    patch_artist=True, showfliers=False)
    for b, color in ((b1, "#bbbbbb"), (b2, "C3")):
        for patch in b["boxes"]:
            patch.set_facecolor(color)
    ax.set_xticks(pos, [PROPERTIES[c] for c in cols], rotation=15, fontsize=8)
    ax.set_ylabel("within-layer percentile")
    ax.legend([b1["boxes"][0], b2["boxes"][0]], ["other neurons", "universal neurons"], fontsize=8)
    fig.tight_layout()
    return fig


def intervention_curve(curve: pd.DataFrame, x: str = "value", y: str = "delta_entropy", label_col: str = "neuron"):
    """Mean change of a metric against the fixed activation value, one line per neuron (baselines grey)."""
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for name, g in curve.groupby(label_col):
        g = g.sort_values(x)
        is_random = str(name).startswith("random")
        ax.plot(g[x], g[y], color="#bbbbbb" if is_random else None, lw=1 if is_random else 2,
                label=None if is_random else str(name), zorder=1 if is_random else 2)
    ax.axhline(0, color="k", lw=0.5)
    ax.set_xlabel("fixed activation value")
    ax.set_ylabel(y.replace("_", " "))
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def paper_scatter(shared: pd.DataFrame, threshold: float = UNIVERSAL_THRESHOLD):
    """excess_corr of the paper's universal neurons: the paper's value against this run's."""
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.scatter(shared["paper"], shared["ours"], s=6, alpha=0.5)
    lo = float(np.nanmin([shared["paper"].min(), shared["ours"].min(), 0.0]))
    ax.plot([lo, 1], [lo, 1], color="grey", lw=0.8)
    ax.axhline(threshold, color="red", lw=0.8, ls="--")
    ax.set_xlabel("excess_corr, the paper's universal.csv")
    ax.set_ylabel("excess_corr, this run")
    ax.set_title(f"{len(shared)} neurons universal in the paper")
    fig.tight_layout()
    return fig
