"""Neuron families: each (universal) neuron's kind from its best explanation, as in the paper's
family counts.

    select_universal(df, threshold, n_min)   universal rows, or the n_min highest excess_corr when few pass
    explained_df(model, dataset, neurons)    neuron rows joined with their best current/previous-token feature
    classify_family(row-wise frame)          family per neuron (FAMILIES, first matching rule wins)

Rules, in order (VR = variance reduction of the neuron's activation by the best feature):
    unexplained      best VR (current and previous) below min_vr, or no explanation
    position         |corr(activation, position)| >= position_r (when a `position_corr` column is given)
    previous_token   the best previous-token VR beats the best current-token VR
    syntax           best feature is a sequence feature (pos_, dep_, morph_, ent_, is_stop, sent_start)
    unigram          best feature is unigram_<form>
    alphabet         best feature is starts_with_<letter> or is_single_letter
    token_property   any other token feature (case, digits, symbols, code shapes, ...)
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from universal_neurons.neuron_df import select_universal  # noqa: F401 (the one definition)

FAMILIES = ["unigram", "alphabet", "previous_token", "position", "syntax", "token_property", "unexplained"]
SEQUENCE_PREFIXES = ("pos_", "dep_", "morph_", "ent_")
SEQUENCE_NAMES = ("is_stop", "sent_start")


def neuron_labels(df: pd.DataFrame) -> pd.Series:
    """'l.n' labels of rows with layer / neuron columns."""
    return df["layer"].astype(int).astype(str) + "." + df["neuron"].astype(int).astype(str)


def explained_df(df: pd.DataFrame, best: pd.DataFrame) -> pd.DataFrame:
    """df's rows with the columns of analysis.heuristic_explanation.best_features (index 'l.n') joined;
    neurons without explanations get NaN."""
    out = df.copy()
    out.index = neuron_labels(df)
    return out.join(best, how="left")


def is_sequence_feature(name) -> bool:
    return isinstance(name, str) and (name.startswith(SEQUENCE_PREFIXES) or name in SEQUENCE_NAMES)


def classify_family(df: pd.DataFrame, min_vr: float = 0.1, position_r: float = 0.5) -> pd.Series:
    """Family (one of FAMILIES) of each row of a frame with columns feature, variance_reduction,
    prev_feature, prev_variance_reduction and optionally position_corr. NaN VRs count as 0."""
    vr = df["variance_reduction"].fillna(0.0).to_numpy(dtype=float)
    pvr = df["prev_variance_reduction"].fillna(0.0).to_numpy(dtype=float)
    feat = df["feature"].where(df["feature"].notna(), "").astype(str)
    pos = df["position_corr"].abs().fillna(0.0).to_numpy(dtype=float) if "position_corr" in df else np.zeros(len(df))
    conditions = [
        np.maximum(vr, pvr) < min_vr,
        pos >= position_r,
        pvr > vr,
        feat.map(is_sequence_feature).to_numpy(dtype=bool),
        feat.str.startswith("unigram_").to_numpy(dtype=bool),
        (feat.str.fullmatch(r"starts_with_[a-z]") | (feat == "is_single_letter")).to_numpy(dtype=bool),
    ]
    # An unexplained neuron can still be a position neuron: position is measured directly, not by VR.
    conditions[0] = conditions[0] & ~conditions[1]
    choices = ["unexplained", "position", "previous_token", "syntax", "unigram", "alphabet"]
    return pd.Series(np.select(conditions, choices, default="token_property"), index=df.index, name="family")


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
