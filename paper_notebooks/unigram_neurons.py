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
# # Unigram neurons
#
# Neurons whose best explanation is one token form (`unigram_<form>` features): their variance reduction, activation when the token is present, and top tokens.

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
KIND = "unigram"
TOP_N = 8

# %%
with section("features of this kind"):
    from analysis.families import classify_family, kind_explanations, plot_kind_vr
    from analysis.heuristic_explanation import load_variance_reduction

    df = load_df()
    sel, label = load_selection(df)
    ex = load_explained(sel)
    ex["family"] = classify_family(ex)
    ex = kind_explanations(ex, *load_variance_reduction(MODEL, DATASET), KIND)
    need(ex["kind_vr"].notna().any(), f"{KIND} features in the explanations",
         f"python explain.py --model {MODEL} --dataset {DATASET} (a larger dataset gives unigram features)")
    members = ex[ex["family"] == KIND]
    print(f"{len(members)} of {len(ex)} {label} neurons are {KIND} neurons (best explanation of that kind)")
    top = ex.sort_values("kind_vr", ascending=False).head(TOP_N)
    display(top[["layer", "neuron", "excess_corr", "family", "kind_feature", "kind_vr", "feature", "variance_reduction"]])
    save(plot_kind_vr(ex, top, KIND, f"{MODEL}: {KIND} explanations of {label} neurons"), f"{KIND}_variance_reduction")

# %%
with section("activation by feature value"):
    from analysis.families import plot_activation_by_feature
    from universal_neurons.viewer_data import get_tokenizer_and_decoded_vocab

    after("top")
    model, tokens, acts = model_activations()
    vocab = get_tokenizer_and_decoded_vocab(MODEL)[1]
    save(plot_activation_by_feature(model.tokenizer, vocab, tokens, acts, top.head(4), KIND),
         f"{KIND}_activation_by_feature")

# %%
with section("top tokens"):
    from universal_neurons import viewer_data as vd

    after("top")
    summaries = vd.load_all_summaries(MODEL)
    vocab = vd.get_tokenizer_and_decoded_vocab(MODEL)[1]
    l, n = int(top.iloc[0]["layer"]), int(top.iloc[0]["neuron"])
    save(vd.panel_top_tokens(summaries, l, n, vocab, "mean", 10), f"{KIND}_top_tokens")
