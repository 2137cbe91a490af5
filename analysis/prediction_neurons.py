"""Prediction, suppression and partition neurons: the shape of each neuron's output-vocabulary cosines.

A neuron's W_U cosines are cos(w_out, W_U[:, v]) over the vocabulary v; weights.py stores their moments
(vocab_comps['U_out'] comp_mean / var / skew / kurt, also the neuron df's vocab_* columns) and the top /
bottom tokens. The paper's classes (kurtosis plain, Gaussian = 3):
    prediction    vocab_kurt > kurt_threshold and vocab_skew > 0   (boosts a small set of tokens)
    suppression   vocab_kurt > kurt_threshold and vocab_skew < 0   (suppresses a small set of tokens)
    other         the rest
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from universal_neurons.families import PREDICTION_CLASSES as CLASSES, classify_prediction  # noqa: F401 (one rule)


def counts_by_layer(df: pd.DataFrame, kurt_threshold: float = 10.0) -> pd.DataFrame:
    """[layer, class] neuron counts, every class a column."""
    cls = classify_prediction(df, kurt_threshold)
    return pd.crosstab(df["layer"], cls).reindex(columns=CLASSES, fill_value=0)


def vocab_tokens(vocab_comps: dict, layer: int, neuron: int, vocab: list[str], k: int = 10,
                 kind: str = "U_out", bottom: bool = False) -> list[tuple[str, float]]:
    """[(token string, cosine)] of the k tokens with the highest (bottom=False) or lowest cosine."""
    side = "bottom" if bottom else "top"
    c = vocab_comps[kind]
    ix = c[f"{side}_vocab_ix"][layer, neuron, :k].tolist()
    val = c[f"{side}_vocab_value"][layer, neuron, :k].tolist()
    return [(vocab[i], float(v)) for i, v in zip(ix, val) if i >= 0]


def plot_moments_by_layer(df: pd.DataFrame, kurt_threshold: float = 10.0):
    """Two panels: vocab_kurt (log) and vocab_skew of every neuron against its layer (jittered), classes coloured."""
    import matplotlib.pyplot as plt

    cls = classify_prediction(df, kurt_threshold)
    rng = np.random.default_rng(0)
    x = df["layer"].to_numpy(dtype=float) + rng.uniform(-0.3, 0.3, len(df))
    colors = {"prediction": "C0", "suppression": "C3", "other": "#bbbbbb"}
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    for ax, col in zip(axes, ("vocab_kurt", "vocab_skew")):
        for c in CLASSES[::-1]:
            m = (cls == c).to_numpy()
            ax.scatter(x[m], df[col].to_numpy()[m], s=4, color=colors[c], label=f"{c} ({m.sum()})")
        ax.set_xlabel("layer")
        ax.set_ylabel(col.replace("_", " "))
        ax.set_xticks(sorted(df["layer"].unique()))
    axes[0].set_yscale("log")
    axes[0].axhline(kurt_threshold, color="k", ls="--", lw=0.8)
    axes[1].axhline(0, color="k", lw=0.5)
    axes[0].legend(fontsize=8, markerscale=3)
    fig.tight_layout()
    return fig


def published_classes(pred: pd.DataFrame, universal: pd.DataFrame, kurt_threshold: float = 10.0) -> pd.DataFrame:
    """The paper's published prediction_neurons.csv `pred` (layer, neuron, feature, is_surpress) joined
    with its universal.csv `universal` (for vocab_kurt, vocab_skew):
        layer, neuron, feature, published ('prediction' / 'suppression' from is_surpress), vocab_kurt,
        vocab_skew and rule (classify_prediction of those moments); both NaN for a neuron not in `universal`."""
    out = pred[["layer", "neuron", "feature"]].copy()
    flag = pred["is_surpress"].astype(str).str.lower().map({"true": True, "false": False})
    if flag.isna().any():
        raise ValueError(f"is_surpress holds values other than True / False: {sorted(set(pred['is_surpress'][flag.isna()]))}")
    out["published"] = np.where(flag.to_numpy(dtype=bool), "suppression", "prediction")
    out = out.merge(universal[["layer", "neuron", "vocab_kurt", "vocab_skew"]], on=["layer", "neuron"], how="left")
    out["rule"] = classify_prediction(out, kurt_threshold).where(out["vocab_kurt"].notna()).to_numpy()
    return out
