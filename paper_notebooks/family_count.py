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
# # Family count
#
# The paper's families of universal neurons: each neuron gets the family of its best explanation (`analysis/families.py`: unigram, alphabet, previous token, position, syntax, other token property, unexplained), counted by layer.

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
with section("families"):
    from analysis.families import FAMILIES, classify_family, family_counts
    from analysis.position_neurons import position_correlations

    df = load_df()
    sel, label = load_selection(df)
    ex = load_explained(sel)
    _, _, acts = model_activations()
    pc = position_correlations(acts).numpy()
    ex["position_corr"] = pc[ex["layer"].to_numpy(), ex["neuron"].to_numpy()]
    ex["family"] = classify_family(ex)
    counts = family_counts(ex["family"], ex["layer"])
    display(counts)

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    bottom = np.zeros(len(counts))
    for i, fam in enumerate(FAMILIES):
        axes[0].bar(counts.index, counts[fam], bottom=bottom, label=fam, color=f"C{i}")
        bottom += counts[fam].to_numpy()
    axes[0].set_xlabel("layer"); axes[0].set_ylabel("neurons"); axes[0].set_xticks(counts.index)
    axes[0].set_title(f"{MODEL}: families of {label} neurons", fontsize=10)
    axes[0].legend(fontsize=7)
    total = counts.sum()
    axes[1].barh(FAMILIES, total[FAMILIES], color=[f"C{i}" for i in range(len(FAMILIES))])
    axes[1].invert_yaxis(); axes[1].set_xlabel("neurons")
    axes[1].set_title("all layers", fontsize=10)
    save(fig, "family_counts")
    display(ex[["layer", "neuron", "excess_corr", "family", "feature", "variance_reduction", "prev_feature",
                "prev_variance_reduction", "position_corr"]].sort_values(["family", "layer"]))

# %% [markdown]
# ## The paper's families in this run
#
# Every family by its rule (`universal_neurons/families.py`, the report's table): token families among the
# explained neurons, prediction / suppression neurons by W_U kurtosis, the entropy intervention's verdict;
# and, plainly, the families this run does not show.

# %%
with section("families of this run"):
    from universal_neurons.families import family_table
    from universal_neurons.interventions import read_summary

    after("ex")
    root = paths.intervention_dir() / paths.model_dirname(MODEL) / DATASET
    runs = sorted(root.glob("*/summary_fixed_activation.csv")) if root.is_dir() else []
    table, not_shown = family_table(df, ex, read_summary(runs[0]) if runs else None, THRESHOLD)
    display(table)
    print("Not shown by this run:\n" + "\n".join(f"- {line}" for line in not_shown))
