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
# # Position neurons
#
# Pearson correlation of each neuron's activation with the token's position in the context (positions 1.., on the first N_ROWS rows of the dataset; `analysis/position_neurons.py`).

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
with section("position correlations"):
    from analysis.position_neurons import mean_by_position, position_correlations

    model, tokens, acts = model_activations()
    pc = position_correlations(acts).numpy()  # [layer, neuron]
    try:
        sel, label = load_selection(load_df())
        is_sel = np.zeros(pc.shape, dtype=bool)
        is_sel[sel["layer"].to_numpy(), sel["neuron"].to_numpy()] = True
    except Missing as e:
        print(f"no neuron dataframe ({e}): all neurons treated alike")
        is_sel, label = np.zeros(pc.shape, dtype=bool), "selected"
    L = pc.shape[0]
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
    for l in range(L):
        x = l + np.random.default_rng(l).uniform(-0.3, 0.3, pc.shape[1])
        axes[0].scatter(x[~is_sel[l]], pc[l][~is_sel[l]], s=5, color="#999999")
        axes[0].scatter(x[is_sel[l]], pc[l][is_sel[l]], s=14, color="C3", label=label if l == 0 else None)
    axes[0].set_xticks(range(L)); axes[0].set_xlabel("layer"); axes[0].set_ylabel("corr(activation, position)")
    axes[0].legend(fontsize=8)
    order = np.argsort(-np.nan_to_num(np.abs(pc), nan=-1).ravel())[:4]
    D = pc.shape[1]
    for ix in order:
        l, n = divmod(int(ix), D)
        axes[1].plot(np.arange(tokens.shape[1]), mean_by_position(acts, l, n), label=f"L{l}.{n} (r={pc[l, n]:.2f})")
    axes[1].set_xlabel("position"); axes[1].set_ylabel("mean activation"); axes[1].legend(fontsize=8)
    fig.suptitle(f"{MODEL}: position neurons ({len(tokens)} rows of {DATASET})", fontsize=10)
    fig.tight_layout()
    save(fig, "position_neurons")
    table = pd.DataFrame({"layer": np.repeat(np.arange(L), D), "neuron": np.tile(np.arange(D), L),
                          "position_corr": pc.ravel(), "selected": is_sel.ravel()})
    display(table.reindex(table["position_corr"].abs().sort_values(ascending=False).index).head(10))
