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
# # Prediction and suppression neurons
#
# Kurtosis and skew of each neuron's W_U cosines by layer (`analysis/prediction_neurons.py`): prediction neurons have vocab_kurt > 10 and positive skew, suppression neurons negative skew.

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
KURT = 10.0
with section("vocab moments"):
    from analysis.prediction_neurons import CLASSES, classify_prediction, counts_by_layer, plot_moments_by_layer

    df = load_df()
    save(plot_moments_by_layer(df, KURT), "vocab_kurt_skew_by_layer")
    counts = counts_by_layer(df, KURT)
    display(counts)
    # Said plainly, the same rule as the report's family table (universal_neurons/families.py).
    from universal_neurons.families import neuron_names

    cls = classify_prediction(df, KURT)
    late = df[df["layer"] >= df["layer"].max() - 1]
    top = late.loc[late["vocab_kurt"].idxmax()] if late["vocab_kurt"].notna().any() else None
    found = {c: df[cls == c] for c in ("prediction", "suppression")}
    print(f"{MODEL}: {len(found['prediction'])} prediction and {len(found['suppression'])} suppression neurons "
          f"(vocab_kurt > {KURT:g}); the largest W_U kurtosis in the last two layers is "
          + (f"{top['vocab_kurt']:.1f} (L{int(top['layer'])}.{int(top['neuron'])}; Gaussian: 3)" if top is not None else "unknown"))
    for c, got in found.items():
        if got.empty:
            print(f"  {c} neurons: this run does not show them")
        else:
            print(f"  {c} (\u2020 universal): {neuron_names(got, THRESHOLD, limit=len(got))}")
    fig, ax = plt.subplots(figsize=(6, 3.2))
    w = 0.38
    ax.bar(counts.index - w / 2, counts["prediction"], width=w, color="C0", label="prediction")
    ax.bar(counts.index + w / 2, counts["suppression"], width=w, color="C3", label="suppression")
    ax.set_xticks(counts.index); ax.set_xlabel("layer"); ax.set_ylabel("neurons"); ax.legend(fontsize=8)
    ax.set_title(f"{MODEL}: vocab_kurt > {KURT:g}", fontsize=10)
    fig.tight_layout()
    save(fig, "prediction_counts_by_layer")

# %%
with section("top tokens of the strongest"):
    from analysis.prediction_neurons import vocab_tokens
    from universal_neurons.viewer_data import get_tokenizer_and_decoded_vocab, load_weights_summary

    after("df")
    w = load_weights_summary(MODEL)
    need("vocab_comps" in w, "vocab_comps.pt", f"python weights.py --model {MODEL}")
    vocab = get_tokenizer_and_decoded_vocab(MODEL)[1]
    # The strongest: highest kurtosis among positive / negative skew (whether or not above KURT).
    picks = [("prediction", df[df["vocab_skew"] > 0].nlargest(2, "vocab_kurt")),
             ("suppression", df[df["vocab_skew"] < 0].nlargest(2, "vocab_kurt"))]
    rows = [(kind, r) for kind, frame in picks for _, r in frame.iterrows()]
    fig, axes = plt.subplots(1, len(rows), figsize=(3.2 * len(rows), 3.4), squeeze=False)
    for ax, (kind, r) in zip(axes[0], rows):
        l, n = int(r["layer"]), int(r["neuron"])
        toks = vocab_tokens(w["vocab_comps"], l, n, vocab, 10, bottom=(kind == "suppression"))
        ax.barh([repr(t) for t, _ in toks], [v for _, v in toks], color="C0" if kind == "prediction" else "C3")
        ax.invert_yaxis(); ax.tick_params(axis="y", labelsize=7)
        ax.set_title(f"L{l}.{n} {kind}\nkurt {r['vocab_kurt']:.1f} skew {r['vocab_skew']:.2f}", fontsize=8)
        ax.set_xlabel("cos(w_out, W_U)")
    fig.tight_layout()
    save(fig, "prediction_top_tokens")

# %% [markdown]
# ## GPT2-medium's prediction and suppression neurons, from the paper's published files alone
#
# No run needed: the paper's `prediction_neurons.csv` of stanford-gpt2-medium-a (shipped in
# `dataframes/paper/`, MIT), joined with its published `universal.csv` for each neuron's W_U moments.
# The table checks the paper's labels against its own rule (vocab_kurt > 10, skew sign) applied
# to the published moments.

# %%
with section("the paper's published prediction neurons"):
    from analysis.prediction_neurons import published_classes

    pub = published_classes(load_published("prediction_neurons", "stanford-gpt2-medium-a"),
                            load_published("universal", "stanford-gpt2-medium-a"), KURT)
    agree = pub.dropna(subset=["vocab_kurt"])
    print(f"{len(pub)} published neurons: {int((pub['published'] == 'prediction').sum())} prediction, "
          f"{int((pub['published'] == 'suppression').sum())} suppression; {len(agree)} are in the published "
          f"universal set, and the rule gives the published class for {int((agree['rule'] == agree['published']).sum())} of them")
    display(pd.crosstab(agree["published"], agree["rule"]))
    by_layer = pd.crosstab(pub["layer"], pub["published"]).reindex(range(24), fill_value=0)
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
    axes[0].bar(by_layer.index - 0.2, by_layer.get("prediction", 0), width=0.4, color="C0", label="prediction")
    axes[0].bar(by_layer.index + 0.2, by_layer.get("suppression", 0), width=0.4, color="C3", label="suppression")
    axes[0].set_xlabel("layer"); axes[0].set_ylabel("neurons"); axes[0].legend(fontsize=8)
    axes[0].set_title("published prediction / suppression neurons by layer", fontsize=9)
    for kind, color in (("prediction", "C0"), ("suppression", "C3")):
        m = agree["published"] == kind
        axes[1].scatter(agree.loc[m, "vocab_skew"], agree.loc[m, "vocab_kurt"], s=10, color=color, label=kind)
    axes[1].axhline(KURT, color="k", ls="--", lw=0.7); axes[1].axvline(0, color="k", lw=0.5)
    axes[1].set_yscale("log"); axes[1].set_xlabel("vocab_skew"); axes[1].set_ylabel("vocab_kurt")
    axes[1].legend(fontsize=8); axes[1].set_title("their published W_U moments", fontsize=9)
    fig.suptitle("stanford-gpt2-medium-a: the paper's published prediction neurons (dataframes/paper/, MIT)", fontsize=10)
    fig.tight_layout()
    save(fig, "paper_gpt2_medium_prediction_neurons")
    display(pub.groupby(["published", "feature"]).size().rename("neurons").sort_values(ascending=False).head(12).to_frame())
