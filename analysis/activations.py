"""Activation statistics of the neuron dataframe, from the binned histograms of summary.py.

The histogram maths (bin convention, moments, quantiles, share above a threshold) lives in
universal_neurons/activation_summary.py; this module sums datasets and lays the result out per neuron.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from universal_neurons.activation_summary import histogram_fraction_above, histogram_moments


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
    """One row per neuron: mean, var, skew, kurt (plain) and sparsity (share > 0) of the pre-activation."""
    L, D = counts.shape[:2]
    m = histogram_moments(counts, edges)
    m["sparsity"] = histogram_fraction_above(counts, edges, 0.0)
    df = pd.DataFrame({"layer": np.repeat(np.arange(L), D), "neuron": np.tile(np.arange(D), L)})
    for k in ("mean", "var", "skew", "kurt", "sparsity"):
        df[k] = m[k].reshape(-1).cpu().numpy()
    return df
