"""Entropy-neuron analysis: read entropy_intervention.py results, curves against random baselines, plots.

    load_summary(model, dataset, neuron_subset)          the summary CSV as a DataFrame
    intervention_curves(summary, metric)                  [value] target vs random mean / std / min / max
    load_intervention_frame(model, dataset, subset, ...)  per-token frame of several runs (the original's rdf)
    plot_entropy_intervention(summary, ...)               the paper's panels: recip. rank, entropy, loss, scale

Metrics are means over the summary's positions (not the last position, not BOS/EOS/padding inputs).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from universal_neurons import interventions as iv
from universal_neurons.interventions import read_summary  # noqa: F401 (its one reader)

METRIC_LABELS = {"recip_rank": "mean reciprocal rank", "entropy": "mean entropy (nats)",
                 "loss": "mean loss (nats)", "scale": "mean final LayerNorm scale"}


def load_summary(model: str, dataset: str, neuron_subset: str, intervention_type: str = "fixed_activation",
                 output_dir=None) -> pd.DataFrame:
    """summary_<type>.csv of entropy_intervention.py. Neuron labels stay strings ('1.50' is not 1.5)."""
    path = iv.summary_path(output_dir, model, dataset, iv.parse_neuron_subset(neuron_subset), intervention_type)
    return read_summary(path)


def intervention_curves(summary: pd.DataFrame, metric: str = "entropy", delta: bool = False) -> pd.DataFrame:
    """One row per intervention value: the target's metric and the random baselines' mean, std
    (ddof 1; NaN with one baseline), min, max and count, plus the clean value.

    metric: loss | entropy | scale | recip_rank; delta=True uses the differences to the clean run.
    """
    col = f"delta_{metric}" if delta else f"mean_{metric}"
    if col not in summary:
        raise KeyError(f"no column {col!r}; metrics: {', '.join(iv.SUMMARY_METRICS)}")
    target = summary[summary.group == "target"].set_index("value")[col].rename("target")
    rnd = summary[summary.group == "random"].groupby("value")[col]
    out = pd.concat([target, rnd.mean().rename("random_mean"), rnd.std().rename("random_std"),
                     rnd.min().rename("random_min"), rnd.max().rename("random_max"),
                     rnd.count().rename("n_random")], axis=1).sort_index()
    out["n_random"] = out["n_random"].fillna(0).astype(int)
    clean = summary.loc[summary.group == "clean", col]
    out["clean"] = float(clean.iloc[0]) if len(clean) else np.nan
    out.index.name = "value"
    return out


def load_intervention_frame(model: str, dataset: str, neuron_subset: str, values: list[float],
                            intervention_type: str = "fixed_activation", output_dir=None) -> pd.DataFrame:
    """Per-token frame [n_seq * ctx rows] with columns <i>_loss, <i>_entropy, <i>_rank, <i>_recip_rank,
    <i>_scale for run i (values[i]), plus clean_* for the clean run. Rank -1 / loss NaN mark the last position."""
    label = iv.neuron_label(iv.parse_neuron_subset(neuron_subset))
    runs = {str(i): iv.run_dir(output_dir, model, dataset, label, iv.intervention_name(intervention_type, v))
            for i, v in enumerate(values)}
    meta = iv.read_meta(runs["0"]) if runs else None  # the runs' rows name their clean reference
    runs["clean"] = iv.run_dir(output_dir, model, dataset, iv.clean_name(meta["n_seq"]) if meta else iv.CLEAN)
    cols = {}
    for key, folder in runs.items():
        t = iv.load_run(folder)
        rank = t["rank"].numpy().ravel().astype(np.float64)
        rank[rank < 0] = np.nan
        cols[f"{key}_loss"] = t["loss"].numpy().ravel().astype(np.float64)
        cols[f"{key}_entropy"] = t["entropy"].numpy().ravel().astype(np.float64)
        cols[f"{key}_rank"] = rank
        cols[f"{key}_recip_rank"] = 1.0 / (rank + 1)
        if "scale" in t:
            cols[f"{key}_scale"] = t["scale"].numpy().ravel().astype(np.float64)
    return pd.DataFrame(cols)


def plot_entropy_intervention(summary: pd.DataFrame, metrics=("recip_rank", "entropy", "loss", "scale"),
                              title: str | None = None):
    """One panel per metric against the intervention value: the target (blue), each random baseline
    (thin red), their mean +- std (red band), the clean run (dashed black). Returns (fig, axes)."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(metrics), figsize=(3.2 * len(metrics), 3), squeeze=False)
    axes = axes[0]
    target_label = summary.loc[summary.group == "target", "label"]
    for ax, metric in zip(axes, metrics):
        curves = intervention_curves(summary, metric)
        for _, run in summary[summary.group == "random"].groupby("label"):
            run = run.sort_values("value")
            ax.plot(run.value, run[f"mean_{metric}"], color="tab:red", linewidth=0.3, alpha=0.6)
        if curves.n_random.max() > 0:
            ax.plot(curves.index, curves.random_mean, color="tab:red", linewidth=1, label="random (mean)")
            ax.fill_between(curves.index, curves.random_mean - curves.random_std.fillna(0),
                            curves.random_mean + curves.random_std.fillna(0), color="tab:red", alpha=0.15)
        ax.plot(curves.index, curves.target, color="tab:blue", marker="o", markersize=3,
                label=f"L{target_label.iloc[0]}" if len(target_label) else "target")
        ax.axhline(curves.clean.iloc[0], color="black", linestyle="--", linewidth=1, label="no intervention")
        ax.set_xlabel("intervention value")
        ax.set_ylabel(METRIC_LABELS.get(metric, metric))
        ax.spines[["top", "right"]].set_visible(False)
        ax.grid(alpha=0.3, linestyle="--")
    axes[0].legend(fontsize=8).get_frame().set_alpha(0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig, axes
