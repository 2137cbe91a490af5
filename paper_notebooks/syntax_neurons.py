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
# # Syntax neurons
#
# Neurons explained by spaCy sequence features (part of speech, dependency, morphology, entities; `analysis/sequence_features.py`): variance reduction of the selected neurons by each sequence feature on the first N_ROWS rows of the dataset.

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
from analysis.sequence_features import SPACY_INSTALL, load_spacy

try:
    nlp = load_spacy()
except UserError as e:
    nlp = None
    display(Markdown(f"**install spacy + en_core_web_sm to run this notebook's analysis** (`{SPACY_INSTALL}`).\n\n{e}"))
    print("NOTE: spaCy missing: showing only the token-feature explanations (what syntax features must beat)")

# %%
with section("token-feature baseline"):
    df = load_df()
    sel, label = load_selection(df)
    ex = load_explained(sel)
    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.hist(ex["variance_reduction"].dropna(), bins=20, color="C0", alpha=0.7, label="current token")
    ax.hist(ex["prev_variance_reduction"].dropna(), bins=20, color="C1", alpha=0.7, label="previous token")
    ax.set_xlabel("best token-feature variance reduction"); ax.set_ylabel("neurons"); ax.legend(fontsize=8)
    ax.set_title(f"{MODEL}: {label} neurons, token features", fontsize=10)
    fig.tight_layout()
    save(fig, "syntax_token_feature_baseline")

# %%
if nlp is not None:
    with section("sequence features"):
        after("ex")
        from analysis.heuristic_explanation import top_features
        from universal_neurons.capture import token_mask
        from universal_neurons.explanations import variance_reduction
        from analysis.sequence_features import sequence_features
        from universal_neurons.viewer_data import get_tokenizer_and_decoded_vocab

        model, tokens, acts = model_activations()
        vocab = get_tokenizer_and_decoded_vocab(MODEL)[1]
        mask = token_mask(tokens, model.tokenizer)
        feats, names = sequence_features(tokens.numpy(), vocab, nlp, mask.numpy())
        keep = mask.numpy().reshape(-1)
        cols = [acts[:, :, int(l), int(n)].reshape(-1).numpy() for l, n in zip(ex["layer"], ex["neuron"])]
        a = np.stack(cols, axis=1)[keep]
        vr = pd.DataFrame(variance_reduction(a, feats.reshape(-1, len(names))[keep]), index=ex.index,
                          columns=sorted(names, key=names.get))
        best = top_features(vr, k=1).set_index("neuron")
        ex["syntax_feature"], ex["syntax_vr"] = best["feature"], best["variance_reduction"]
        display(ex[["syntax_feature", "syntax_vr", "feature", "variance_reduction"]].sort_values("syntax_vr", ascending=False))
        fig, ax = plt.subplots(figsize=(5, 4))
        ax.scatter(ex["variance_reduction"], ex["syntax_vr"], s=14)
        for name, r in ex.sort_values("syntax_vr", ascending=False).head(5).iterrows():
            ax.annotate(f"{name} {r['syntax_feature']}", (r["variance_reduction"], r["syntax_vr"]), fontsize=7)
        ax.set_xlabel("best token-feature VR"); ax.set_ylabel("best sequence-feature VR")
        fig.tight_layout()
        save(fig, "syntax_vs_token_features")
