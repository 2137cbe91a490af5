"""Neuron families: each (universal) neuron's kind from its best explanation, as in the paper's
family counts.

    select_universal(df, threshold, n_min)   universal rows, or the n_min highest excess_corr when few pass
    explained_df(model, dataset, neurons)    neuron rows joined with their best current/previous-token feature
    classify_family(row-wise frame)          family per neuron (universal_neurons.families: the rules)
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from universal_neurons.families import (FAMILIES, classify_family, is_alphabet_feature,  # noqa: F401
                                        is_sequence_feature)  # (the one definition: the report uses them too)
from universal_neurons.neuron_df import select_universal  # noqa: F401 (the one definition)


def neuron_labels(df: pd.DataFrame) -> pd.Series:
    """'l.n' labels of rows with layer / neuron columns."""
    return df["layer"].astype(int).astype(str) + "." + df["neuron"].astype(int).astype(str)


def explained_df(df: pd.DataFrame, best: pd.DataFrame) -> pd.DataFrame:
    """df's rows with the columns of analysis.heuristic_explanation.best_features (index 'l.n') joined;
    neurons without explanations get NaN."""
    out = df.copy()
    out.index = neuron_labels(df)
    return out.join(best, how="left")


def family_counts(families: pd.Series, layers: pd.Series) -> pd.DataFrame:
    """[layer, family] neuron counts, every family a column (zeros included)."""
    t = pd.crosstab(layers.rename("layer"), families.rename("family"))
    return t.reindex(columns=FAMILIES, fill_value=0)


def feature_mask(tokenizer, vocab: list[str], feature: str) -> np.ndarray:
    """[len(vocab)] bool: the token feature `feature` (a column of analysis.vocab_df.make_vocab_df, or
    unigram_<form>, true on tokens whose strip().lower() is <form>) for every token id."""
    if feature.startswith("unigram_"):
        form = feature[len("unigram_"):]
        return np.array([t.strip().lower() == form for t in vocab], dtype=bool)
    from analysis.vocab_df import make_vocab_df

    table = make_vocab_df(tokenizer)
    if feature not in table:
        raise KeyError(f"unknown token feature {feature!r}")
    return table[feature].to_numpy(dtype=bool)[:len(vocab)]


def kind_explanations(ex: pd.DataFrame, current: pd.DataFrame, previous: pd.DataFrame, kind: str) -> pd.DataFrame:
    """ex (indexed by 'layer.neuron') with kind_vr, kind_feature: the best variance reduction among the
    features of one token family and that feature (NaN where none), from the explanation stage's VR
    tables of current-token and previous-token features (analysis.heuristic_explanation).
    kind: 'unigram' (unigram_<form>), 'alphabet' (starts_with_<letter>, is_single_letter) or
    'previous_token' (every previous-token feature)."""
    if kind == "previous_token":
        vr = previous
    elif kind == "unigram":
        vr = current[[c for c in current.columns if c.startswith("unigram_")]]
    elif kind == "alphabet":
        vr = current[[c for c in current.columns if is_alphabet_feature(c)]]
    else:
        raise ValueError(f"unknown token family {kind!r}: unigram, alphabet or previous_token")
    vr = vr.reindex(ex.index)
    out = ex.copy()
    out["kind_vr"] = vr.max(axis=1, skipna=True)
    out["kind_feature"] = vr.fillna(-np.inf).idxmax(axis=1).where(out["kind_vr"].notna()) if vr.shape[1] else np.nan
    return out


def plot_kind_vr(ex: pd.DataFrame, top: pd.DataFrame, kind: str, title: str):
    """Left: best VR of this family's features against the best VR of any feature (family members red);
    right: the top neurons' best feature of this family and its VR."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
    best_any = ex[["variance_reduction", "prev_variance_reduction"]].max(axis=1)
    m = (ex["family"] == kind).to_numpy()
    axes[0].scatter(best_any[~m], ex["kind_vr"][~m], s=12, color="#999999", label="other families")
    axes[0].scatter(best_any[m], ex["kind_vr"][m], s=16, color="C3", label=f"{kind} family")
    lim = [0, max(float(np.nanmax(best_any)), 0.05) * 1.05]
    axes[0].plot(lim, lim, "k--", lw=0.7)
    axes[0].set_xlabel("best VR (any feature)")
    axes[0].set_ylabel(f"best {kind} VR")
    axes[0].legend(fontsize=8)
    axes[1].barh([f"{i}  {f}" for i, f in zip(top.index, top["kind_feature"])], top["kind_vr"], color="C3")
    axes[1].invert_yaxis()
    axes[1].set_xlabel("variance reduction")
    axes[1].tick_params(axis="y", labelsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def plot_activation_by_feature(tokenizer, vocab: list[str], tokens, acts, show: pd.DataFrame, kind: str):
    """Per row of `show` (layer, neuron, kind_feature): the neuron's activation histogram where the
    feature is false / true on the current token (the previous one for kind 'previous_token'); BOS
    positions left out. tokens [rows, pos], acts [rows, pos, layer, neuron]."""
    import matplotlib.pyplot as plt
    import torch

    fig, axes = plt.subplots(1, len(show), figsize=(3.2 * len(show), 3), squeeze=False)
    for ax, (name, row) in zip(axes[0], show.iterrows()):
        fmask = torch.as_tensor(np.array(feature_mask(tokenizer, vocab, row["kind_feature"]), dtype=bool))
        on = fmask[tokens]  # [rows, pos] the feature of the current token
        if kind == "previous_token":
            on = torch.cat([torch.zeros_like(on[:, :1]), on[:, :-1]], dim=1)  # of the previous token
        a = acts[:, :, int(row["layer"]), int(row["neuron"])]
        keep = torch.ones_like(on)
        keep[:, 0] = False  # BOS
        ax.hist([a[keep & ~on].numpy(), a[keep & on].numpy()], bins=40, density=True, histtype="step",
                label=["false", "true"], color=["#777777", "C3"])
        ax.set_title(f"L{name}: {row['kind_feature']}", fontsize=8)
        ax.set_xlabel("activation")
        ax.legend(fontsize=7, title="feature", title_fontsize=7)
    fig.tight_layout()
    return fig
