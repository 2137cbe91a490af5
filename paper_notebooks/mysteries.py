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
# # Mysteries
#
# Universal neurons that no token feature explains well (low best variance reduction): their top tokens and max-activating examples.

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
MAX_VR = 0.2  # a mystery: best current / previous-token VR below this
N_SHOW = 3
with section("low-VR universal neurons"):
    from universal_neurons import viewer_data as vd

    df = load_df()
    sel, label = load_selection(df)
    ex = load_explained(sel)
    ex["best_vr"] = ex[["variance_reduction", "prev_variance_reduction"]].max(axis=1)
    myst = ex[ex["best_vr"] < MAX_VR].sort_values("best_vr")
    if myst.empty:  # every neuron is explained: show the least explained ones
        myst = ex.sort_values("best_vr").head(N_SHOW)
        print(f"no {label} neuron has best VR < {MAX_VR}: showing the {len(myst)} least explained")
    display(myst[["layer", "neuron", "excess_corr", "best_vr", "feature", "prev_feature"]])
    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.scatter(ex["excess_corr"], ex["best_vr"], s=12, color="#999999")
    ax.scatter(myst["excess_corr"], myst["best_vr"], s=18, color="C3", label="mysteries")
    ax.axhline(MAX_VR, color="k", ls="--", lw=0.7)
    ax.set_xlabel("excess correlation"); ax.set_ylabel("best variance reduction"); ax.legend(fontsize=8)
    ax.set_title(f"{MODEL}: {label} neurons", fontsize=10)
    fig.tight_layout()
    save(fig, "mysteries_vr")

# %%
with section("top tokens and examples"):
    after("myst")
    summaries = vd.load_all_summaries(MODEL)
    vocab = vd.get_tokenizer_and_decoded_vocab(MODEL)[1]
    full = vd.full_dataset_names(MODEL)
    for name, r in myst.head(N_SHOW).iterrows():
        l, n = int(r["layer"]), int(r["neuron"])
        save(vd.panel_top_tokens(summaries, l, n, vocab, "max", 10), f"mystery_{l}_{n}_top_tokens")
        short, ds = next(iter(full.items()))
        from universal_neurons.models import model_family
        from universal_neurons.token_datasets import load_token_dataset, token_tensor
        tokens = token_tensor(load_token_dataset(ds, model_family(MODEL)))
        examples = vd.max_activating_examples(summaries[short], tokens, l, n, 8)
        save(vd.panel_max_activating_examples(examples, vocab, f"L{l}.{n}: max-activating examples ({ds})"),
             f"mystery_{l}_{n}_examples")
