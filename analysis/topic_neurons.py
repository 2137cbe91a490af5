"""Topic neurons: how a neuron's activation differs between corpus subsets (prose / code / tests ...),
from summary.py's per-dataset histograms."""
from __future__ import annotations

import numpy as np
import pandas as pd

from universal_neurons.activation_summary import BIN_COUNTS, BIN_EDGES, histogram_moments


def subset_moments(summaries: dict[str, dict]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(mean, std): [layer * neuron rows (layer-major), dataset columns] pre-activation mean / std per
    dataset from its histogram (activation_summary.histogram_moments)."""
    means, stds = {}, {}
    for name, s in summaries.items():
        m = histogram_moments(s[BIN_COUNTS], s[BIN_EDGES])
        means[name] = m["mean"].reshape(-1).numpy()
        stds[name] = m["var"].sqrt().reshape(-1).numpy()
    L, D = next(iter(summaries.values()))[BIN_COUNTS].shape[:2]
    index = pd.MultiIndex.from_arrays([np.repeat(np.arange(L), D), np.tile(np.arange(D), L)], names=["layer", "neuron"])
    return pd.DataFrame(means, index=index), pd.DataFrame(stds, index=index)


def topic_scores(means: pd.DataFrame, stds: pd.DataFrame) -> pd.DataFrame:
    """Per neuron and dataset: (mean on the dataset - mean of the other datasets' means) / the root mean
    square of the datasets' std. Positive = more active on that subset. Needs >= 2 datasets."""
    if means.shape[1] < 2:
        raise ValueError("topic scores need at least two datasets")
    n = means.shape[1]
    others = (means.sum(axis=1).to_numpy()[:, None] - means.to_numpy()) / (n - 1)
    pooled = np.sqrt((stds.to_numpy() ** 2).mean(axis=1))[:, None]
    with np.errstate(invalid="ignore", divide="ignore"):
        z = (means.to_numpy() - others) / pooled
    return pd.DataFrame(z, index=means.index, columns=means.columns)
