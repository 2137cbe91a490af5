"""Activation statistics from the binned histograms of summary.py.

Histogram convention (summary.py): edges e [n_bins], counts [..., n_bins + 1]; bin 0 holds x <= e[0],
bin i (1 <= i < n_bins) holds e[i-1] < x <= e[i], bin n_bins holds x > e[-1]. Each bin is represented
by its midpoint (the outer bins by the edge they touch), so moments are exact to within a bin width.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch


def bin_centers(edges: torch.Tensor) -> torch.Tensor:
    """[n_bins + 1] representative value of each histogram bin."""
    e = edges.double()
    mids = (e[1:] + e[:-1]) / 2
    return torch.cat([e[:1], mids, e[-1:]])


def moments_from_histogram(counts: torch.Tensor, edges: torch.Tensor) -> dict[str, torch.Tensor]:
    """mean, var, skew, kurt (plain: Gaussian = 3) and sparsity (share of values > 0) over the last axis.

    counts [..., n_bins + 1]; returns tensors of shape [...] (float64). Empty rows give NaN.
    """
    c = counts.double()
    x = bin_centers(edges)
    n = c.sum(-1)
    mean = (c * x).sum(-1) / n
    d = x - mean[..., None]
    var = (c * d ** 2).sum(-1) / n
    skew = (c * d ** 3).sum(-1) / n / var ** 1.5
    kurt = (c * d ** 4).sum(-1) / n / var ** 2
    # share of values > 0: bins whose lower edge is >= 0 (0 is an edge of the default grid)
    lower = torch.cat([torch.tensor([-np.inf], dtype=torch.float64), edges.double()])
    sparsity = (c * (lower >= 0)).sum(-1) / n
    return {"mean": mean, "var": var, "skew": skew, "kurt": kurt, "sparsity": sparsity}


def summed_histograms(summaries: dict[str, dict]) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum neuron_bin_counts over datasets (all must share the bin edges). Returns (counts, edges)."""
    counts, edges = None, None
    for name, s in summaries.items():
        e = s["neuron_bin_edges"]
        if edges is None:
            edges, counts = e, s["neuron_bin_counts"].long().clone()
        else:
            if not torch.equal(e, edges):
                raise ValueError(f"dataset {name} uses other histogram bin edges; summaries cannot be summed")
            counts += s["neuron_bin_counts"].long()
    if counts is None:
        raise ValueError("no activation summaries to sum")
    return counts, edges


def activation_moment_df(counts: torch.Tensor, edges: torch.Tensor) -> pd.DataFrame:
    """One row per neuron (layer, neuron) with mean, var, skew, kurt, sparsity of the pre-activation."""
    L, D = counts.shape[:2]
    m = moments_from_histogram(counts, edges)
    df = pd.DataFrame({"layer": np.repeat(np.arange(L), D), "neuron": np.tile(np.arange(D), L)})
    for k in ("mean", "var", "skew", "kurt", "sparsity"):
        df[k] = m[k].reshape(-1).numpy()
    return df
