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
# # Alphabet neurons
#
# Neurons whose best explanation is the token's first letter (`starts_with_<letter>`, `is_single_letter`).

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
KIND = "alphabet"
TOP_N = 8

# %%
with section("features of this kind"):
    from analysis.families import classify_family
    from analysis.heuristic_explanation import load_variance_reduction

    df = load_df()
    sel, label = load_selection(df)
    ex = load_explained(sel)
    ex["family"] = classify_family(ex)
    cur, prev = load_variance_reduction(MODEL, DATASET)
    if KIND == "previous_token":
        vr = prev
    elif KIND == "unigram":
        vr = cur[[c for c in cur.columns if c.startswith("unigram_")]]
    else:  # alphabet
        vr = cur[[c for c in cur.columns if c == "is_single_letter" or (c.startswith("starts_with_") and len(c) == 13)]]
    need(vr.shape[1] > 0, f"{KIND} features in the explanations",
         f"python explain.py --model {MODEL} --dataset {DATASET} (a larger dataset gives unigram features)")
    vr = vr.reindex(ex.index)
    ex["kind_vr"] = vr.max(axis=1, skipna=True)
    ex["kind_feature"] = vr.fillna(-1).idxmax(axis=1)
    members = ex[ex["family"] == KIND]
    print(f"{len(members)} of {len(ex)} {label} neurons are {KIND} neurons (best explanation of that kind)")
    top = ex.sort_values("kind_vr", ascending=False).head(TOP_N)
    display(top[["layer", "neuron", "excess_corr", "family", "kind_feature", "kind_vr", "feature", "variance_reduction"]])

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
    best_any = ex[["variance_reduction", "prev_variance_reduction"]].max(axis=1)
    m = (ex["family"] == KIND).to_numpy()
    axes[0].scatter(best_any[~m], ex["kind_vr"][~m], s=12, color="#999999", label="other families")
    axes[0].scatter(best_any[m], ex["kind_vr"][m], s=16, color="C3", label=f"{KIND} family")
    lim = [0, max(float(np.nanmax(best_any)), 0.05) * 1.05]
    axes[0].plot(lim, lim, "k--", lw=0.7)
    axes[0].set_xlabel("best VR (any feature)"); axes[0].set_ylabel(f"best {KIND} VR"); axes[0].legend(fontsize=8)
    axes[1].barh([f"{i}  {f}" for i, f in zip(top.index, top["kind_feature"])], top["kind_vr"], color="C3")
    axes[1].invert_yaxis(); axes[1].set_xlabel("variance reduction"); axes[1].tick_params(axis="y", labelsize=7)
    fig.suptitle(f"{MODEL}: {KIND} explanations of {label} neurons", fontsize=10)
    fig.tight_layout()
    save(fig, f"{KIND}_variance_reduction")

# %%
with section("activation by feature value"):
    from analysis.families import feature_mask

    after("top")
    model, tokens, acts = model_activations()
    from universal_neurons.viewer_data import get_tokenizer_and_decoded_vocab

    vocab = get_tokenizer_and_decoded_vocab(MODEL)[1]
    show = top.head(4)
    fig, axes = plt.subplots(1, len(show), figsize=(3.2 * len(show), 3), squeeze=False)
    for ax, (name, row) in zip(axes[0], show.iterrows()):
        fmask = torch.as_tensor(np.array(feature_mask(model.tokenizer, vocab, row["kind_feature"]), dtype=bool))
        on = fmask[tokens]  # [rows, pos] feature of the current token
        if KIND == "previous_token":
            on = torch.cat([torch.zeros_like(on[:, :1]), on[:, :-1]], dim=1)  # feature of the previous token
        a = acts[:, :, int(row["layer"]), int(row["neuron"])]
        keep = torch.ones_like(on); keep[:, 0] = False  # BOS position
        ax.hist([a[keep & ~on].numpy(), a[keep & on].numpy()], bins=40, density=True, histtype="step",
                label=["false", "true"], color=["#777777", "C3"])
        ax.set_title(f"L{name}: {row['kind_feature']}", fontsize=8)
        ax.set_xlabel("activation"); ax.legend(fontsize=7, title="feature", title_fontsize=7)
    fig.tight_layout()
    save(fig, f"{KIND}_activation_by_feature")

# %%
with section("top tokens"):
    from universal_neurons import viewer_data as vd

    after("top")
    summaries = vd.load_all_summaries(MODEL)
    vocab = vd.get_tokenizer_and_decoded_vocab(MODEL)[1]
    l, n = int(top.iloc[0]["layer"]), int(top.iloc[0]["neuron"])
    save(vd.panel_top_tokens(summaries, l, n, vocab, "mean", 10), f"{KIND}_top_tokens")
