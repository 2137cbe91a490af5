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
# # Entropy neurons
#
# The fixed-activation intervention of `entropy_intervention.py` against random neurons of the same layer (`analysis/entropy_neurons.py`), and w_out norm against vocab_var for the last layer (entropy neurons: large norm, output nearly orthogonal to the unembedding).

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
with section("intervention curves"):
    from analysis.entropy_neurons import plot_entropy_intervention, read_summary
    from universal_neurons.families import entropy_verdict

    root = paths.intervention_dir() / paths.model_dirname(MODEL) / DATASET
    files = sorted(root.glob("*/summary_*.csv")) if root.is_dir() else []
    need(files, f"entropy intervention summaries under {root}",
         f"python entropy_intervention.py --model {MODEL} --token_dataset {DATASET} --neuron_subset <l.n> ...")
    targets = []
    for f in files:
        s = read_summary(f)
        targets.append(f.parent.name)
        fig, _ = plot_entropy_intervention(s, title=f"{MODEL}: fix L{f.parent.name} ({f.stem.split('_', 1)[1]})")
        save(fig, f"entropy_intervention_{f.parent.name.replace('.', '_')}")
        # The paper's criterion, said plainly (the report's family table uses the same rule).
        v = entropy_verdict(s)
        if v is None:
            print(f"L{f.parent.name}: no random neurons to compare against, so no verdict")
        else:
            print(f"L{v['neuron']} fixed at {v['value']:g}: next-token entropy {v['delta_entropy']:+.3f} nats against the "
                  f"random neurons' {v['random_mean']:+.3f} + 2 x {v['random_std']:.3f} = {v['bar']:+.3f}: "
                  + ("an entropy neuron" if v["entropy_neuron"] else "not an entropy neuron; this run does not show one"))

# %%
with section("norm vs vocab_var"):
    df = load_df()
    last = df[df["layer"] == df["layer"].max()]
    fig, ax = plt.subplots(figsize=(5, 4))
    ax.scatter(last["vocab_var"], last["w_out_norm"], s=8, color="#888888")
    for t in (globals().get("targets") or []):
        l, n = map(int, t.split("."))
        r = df[(df["layer"] == l) & (df["neuron"] == n)]
        if len(r) and l == int(df["layer"].max()):
            ax.scatter(r["vocab_var"], r["w_out_norm"], s=40, color="C3")
            ax.annotate(f"L{t}", (float(r["vocab_var"].iloc[0]), float(r["w_out_norm"].iloc[0])), fontsize=8)
    ax.set_xscale("log"); ax.set_xlabel("vocab_var (var of cos(w_out, W_U))"); ax.set_ylabel("||w_out||")
    ax.set_title(f"{MODEL}: last-layer neurons (intervened in red)", fontsize=10)
    fig.tight_layout()
    save(fig, "entropy_norm_vs_vocab_var")
