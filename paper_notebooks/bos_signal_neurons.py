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
# # BOS-signal neurons
#
# Results of `attention_deactivation.py`: for the neurons ranked by the heuristic score (the change of the head's BOS attention score per unit of the neuron's activation, through the query), and the measured effect of removing the neuron's direct path into the head's query: the correlation of the neuron's activation with the change of attention to BOS and of the head's output norm.

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
with section("attention deactivation"):
    from universal_neurons.attention_deactivation import read_run

    root = paths.attention_deactivation_path(MODEL, DATASET, 0, 0).parent
    runs = [root / name for name in paths.artifact_names(root) if (root / name / "meta.json").is_file()]
    need(runs, f"attention deactivation results under {root}",
         f"python attention_deactivation.py --model {MODEL} --token_dataset {DATASET} --layer <l> --head <h>")
    for run in runs:
        found = read_run(run)
        meta, corr, rank = found["meta"], found["corr_dict"], found["heuristic_ranking"]
        rank.index = rank["layer"].astype(str) + "." + rank["neuron"].astype(str)
        measured = pd.DataFrame({n: {f"{k}_{m}": v[m] for k, v in c.items() for m in v} for n, c in corr.items()}).T
        measured["score"] = rank["score"].reindex(measured.index)
        display(measured)
        fig, axes = plt.subplots(1, 3, figsize=(13, 3.4))
        axes[0].hist(rank["score"], bins=40, color="#999999")
        for s in measured["score"]:
            axes[0].axvline(s, color="C3", lw=0.8)
        axes[0].set_xlabel("heuristic score (all neurons; studied in red)"); axes[0].set_yscale("log")
        axes[1].scatter(measured["score"], measured["bos_attn_pearson"], color="C0", label="change of attention to BOS")
        axes[1].scatter(measured["score"], measured["norm_pearson"], color="C1", label="change of head output norm")
        for n, r in measured.iterrows():
            axes[1].annotate(n, (r["score"], r["bos_attn_pearson"]), fontsize=7)
        axes[1].axhline(0, color="k", lw=0.5)
        axes[1].set_xlabel("heuristic score"); axes[1].set_ylabel("Pearson r with activation"); axes[1].legend(fontsize=8)
        rec = found["records"]
        top = measured["bos_attn_pearson"].abs().idxmax()
        r = rec[top]
        axes[2].scatter(r["activation"].float().ravel(), r["bos_attn"].float().ravel(), s=3, alpha=0.5)
        axes[2].set_xlabel(f"activation of L{top}"); axes[2].set_ylabel("change of attention to BOS\nwhen the path is removed")
        fig.suptitle(f"{MODEL}: head L{meta['layer']}H{meta['head']}", fontsize=10)
        fig.tight_layout()
        save(fig, f"bos_signal_L{meta['layer']}H{meta['head']}")
