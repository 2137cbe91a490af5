# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Topic neurons
#
# Mean activation of each neuron on each corpus subset (prose / code / tests ...) from the per-subset activation histograms; the topic score is the subset's mean minus the other subsets' mean, in units of the pooled standard deviation (`analysis/topic_neurons.py`).

# %% tags=["parameters"]
import os

MODEL = os.environ.get("UN_MODEL", "toy-gpt2-a")
OTHERS = [m for m in os.environ.get("UN_OTHERS", "toy-gpt2-b,toy-gpt2-c,toy-gpt2-d,toy-gpt2-e").split(",") if m]
DATASET = os.environ.get("UN_DATASET", "python-stdlib.all-1m.64")  # the correlation mix
ARTIFACT_ROOT = os.environ.get("UN_ARTIFACT_ROOT", "")  # folder holding token_datasets/, correlation_results/, ...
FIG_DIR = os.environ.get("UN_FIG_DIR", "")  # default paper_notebooks/figures/<model>/
THRESHOLD = 0.5  # excess_corr above which a neuron is universal (the paper's)
N_MIN = 20  # study the N_MIN highest excess_corr neurons when fewer are universal (small models)
N_ROWS = int(os.environ.get("UN_N_ROWS", "128"))  # dataset rows run through the model where a notebook needs activations

# %%
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from IPython.display import Markdown, display

from analysis.notebook import Missing, after, load_df, load_explained, load_published, load_selection, model_activations, need, save, section, setup
from universal_neurons import paths
from universal_neurons.errors import UserError

setup(MODEL, OTHERS, DATASET, ARTIFACT_ROOT, FIG_DIR, N_ROWS, THRESHOLD, N_MIN);

# %%
with section("topic scores"):
    from analysis.topic_neurons import subset_moments, topic_scores
    from universal_neurons import viewer_data as vd

    summaries = vd.load_all_summaries(MODEL)
    need(len(summaries) >= 2, "activation summaries of at least two corpus subsets",
         f"python summary.py --model {MODEL} --token_dataset <subset datasets>")
    means, stds = subset_moments(summaries)
    z = topic_scores(means, stds)
    picks = sorted({ix for c in z.columns for ix in z[c].nlargest(4).index})
    fig, axes = plt.subplots(1, 2, figsize=(12, 0.3 * len(picks) + 1.5), gridspec_kw={"width_ratios": [1, 1.2]})
    vmax = max(0.5, float(np.nanmax(np.abs(z.loc[picks].to_numpy()))))
    im = axes[0].imshow(z.loc[picks].to_numpy(), cmap="RdBu_r", vmin=-vmax, vmax=vmax, aspect="auto")
    axes[0].set_xticks(range(z.shape[1]), z.columns); axes[0].set_yticks(range(len(picks)), [f"L{l}.{n}" for l, n in picks])
    axes[0].set_title("topic score (top 4 per subset)", fontsize=10); fig.colorbar(im, ax=axes[0], shrink=0.8)
    for c in z.columns:
        axes[1].hist(z[c].dropna(), bins=50, histtype="step", label=c)
    axes[1].set_yscale("log"); axes[1].set_xlabel("topic score"); axes[1].set_ylabel("neurons")
    axes[1].legend(fontsize=8)
    fig.suptitle(f"{MODEL}: topic neurons", fontsize=10)
    fig.tight_layout()
    save(fig, "topic_scores")
    best = z.stack().idxmax()
    (l, n), subset = best[:2], best[2]
    print(f"strongest topic neuron: L{l}.{n}, on {subset} (score {z.loc[(l, n), subset]:.2f})")
    save(vd.panel_activation_distribution(summaries, int(l), int(n)), "topic_neuron_distribution")
