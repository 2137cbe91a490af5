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
# # Properties of universal neurons
#
# Within-layer percentiles of the paper's neuron properties for universal neurons against the rest, the excess-correlation distribution, the universal share by layer, and max correlation against the rotated baseline per layer and seed.

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
with section("properties"):
    from analysis.plots import excess_corr_hist, property_percentiles, universal_by_layer

    df = load_df()
    sel, label = load_selection(df)
    # The group drawn as 'universal': the selection (its lowest excess_corr is the effective threshold).
    thr = THRESHOLD if label.startswith("universal") else float(sel["excess_corr"].min()) - 1e-9
    fig = property_percentiles(df, thr)
    fig.axes[0].set_title(f"{MODEL}: {label} vs other neurons", fontsize=10)
    save(fig, "property_percentiles")
    save(excess_corr_hist(df, THRESHOLD), "excess_correlation")
    save(universal_by_layer(df, THRESHOLD), "universal_by_layer")

# %%
with section("max_corr by layer and seed"):
    from analysis.correlations import make_correlation_result_df, plot_max_corr_by_layer

    df = load_df()
    save(plot_max_corr_by_layer(df), "max_corr_vs_baseline_by_layer")
    d_mlp = int(df["neuron"].max()) + 1
    corr = make_correlation_result_df(MODEL, OTHERS, DATASET, d_mlp)
    table = corr.groupby(["other", "baseline"])["max_corr"].mean().unstack()
    display(table)
    fig, ax = plt.subplots(figsize=(6, 3.2))
    x = np.arange(len(table))
    for j, (b, color) in enumerate((("none", "C0"), ("rotation", "#999999"))):
        if b in table:
            ax.bar(x + (j - 0.5) * 0.38, table[b], width=0.38, color=color, label=b)
    ax.set_xticks(x, table.index, rotation=15, fontsize=8)
    ax.set_ylabel("mean max correlation"); ax.legend(fontsize=8)
    ax.set_title(f"{MODEL} against each seed", fontsize=10)
    fig.tight_layout()
    save(fig, "max_corr_by_seed")

# %% [markdown]
# ## Against the paper's published universal neurons
#
# When MODEL is one of the paper's models (stanford-gpt2-small-a, stanford-gpt2-medium-a, pythia-160m),
# this run's universal set beside the paper's published `universal.csv` (shipped in `dataframes/paper/`):
# the universal share of each layer side by side, the Jaccard overlap of the two sets, how many of the
# paper's neurons pass the threshold here, and the excess_corr of the neurons in both.

# %%
with section("against the paper"):
    from analysis.notebook import PAPER_MODELS
    from universal_neurons.plots import paper_scatter
    from universal_neurons.report import paper_comparison

    if MODEL not in PAPER_MODELS:
        print(f"{MODEL} is not one of the paper's models ({', '.join(PAPER_MODELS)}): nothing to compare; "
              "the next section shows the paper's own neurons")
    else:
        cmp = paper_comparison(load_df(), load_published("universal"), THRESHOLD)
        print(f"{cmp['n_paper']} universal neurons in the paper, {cmp['n_ours']} here; Jaccard {cmp['jaccard']:.3f}; "
              f"{cmp['found']} of the paper's {cmp['n_paper']} have excess_corr > {THRESHOLD} here")
        display(cmp["by_layer"])
        fig, ax = plt.subplots(figsize=(6, 3.2))
        bl = cmp["by_layer"]
        ax.bar(bl["layer"] - 0.2, bl["ours_pct"], width=0.4, color="C3", label="this run")
        ax.bar(bl["layer"] + 0.2, bl["paper_pct"], width=0.4, color="#777777", label="the paper (published)")
        ax.set_xlabel("layer"); ax.set_ylabel("% universal"); ax.legend(fontsize=8)
        ax.set_title(f"{MODEL}: universal share by layer", fontsize=10)
        fig.tight_layout()
        save(fig, "paper_share_by_layer")
        save(paper_scatter(cmp["shared"], THRESHOLD), "paper_excess_corr_scatter")

# %% [markdown]
# ## The paper's own universal neurons, from its published files alone
#
# No run needed: the published `universal.csv` of PAPER_MODEL (MODEL when it is a paper model). Those
# files hold the universal neurons only, so this shows their share per layer and the raw distribution
# of each property per layer; the within-layer percentiles against the other neurons (the first
# section) need a run's full neuron dataframe.

# %%
from analysis.notebook import PAPER_MODELS, PAPER_WIDTHS

PAPER_MODEL = MODEL if MODEL in PAPER_MODELS else os.environ.get("UN_PAPER_MODEL", "stanford-gpt2-small-a")
with section("the paper's published universal neurons"):
    from universal_neurons.plots import PROPERTIES

    pub = load_published("universal", PAPER_MODEL)
    n_layers, d_mlp = PAPER_WIDTHS[PAPER_MODEL]
    share = pub["layer"].value_counts().reindex(range(n_layers), fill_value=0) / d_mlp * 100
    print(f"{PAPER_MODEL}: {len(pub)} universal neurons of {n_layers * d_mlp} "
          f"({100 * len(pub) / (n_layers * d_mlp):.2f}%), excess_corr > {THRESHOLD} (published)")
    cols = [c for c in PROPERTIES if c in pub.columns]
    fig, axes = plt.subplots(2, (len(cols) + 2) // 2, figsize=(14, 5.6), squeeze=False)
    axes = axes.ravel()
    axes[0].bar(share.index, share.values, color="C3")
    axes[0].set_title("% universal by layer", fontsize=9); axes[0].set_xlabel("layer", fontsize=8)
    for ax, c in zip(axes[1:], cols):
        groups = [pub.loc[pub["layer"] == l, c].dropna().to_numpy() for l in range(n_layers)]
        ax.boxplot([g if len(g) else [np.nan] for g in groups], positions=range(n_layers), widths=0.6,
                   showfliers=False)
        ax.set_title(PROPERTIES[c], fontsize=9); ax.tick_params(labelsize=7)
        ax.set_xticks(range(0, n_layers, max(1, n_layers // 6)), range(0, n_layers, max(1, n_layers // 6)))
    for ax in axes[1 + len(cols):]:
        ax.axis("off")
    fig.suptitle(f"{PAPER_MODEL}: the paper's published universal neurons (dataframes/paper/, MIT)", fontsize=10)
    fig.tight_layout()
    save(fig, "paper_published_properties")
