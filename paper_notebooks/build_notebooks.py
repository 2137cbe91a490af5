"""Write the twelve paper notebooks (paper_notebooks/*.ipynb, without outputs) from the cells below.

    python paper_notebooks/build_notebooks.py

Every notebook starts with a `parameters` cell (papermill tag) whose values default to environment
variables (UN_MODEL, UN_OTHERS, UN_DATASET, UN_ARTIFACT_ROOT, UN_FIG_DIR), then the shared SETUP cell,
then its own cells. A missing artifact never raises: the section prints `SKIPPED: ... run <command>`.
"""
from __future__ import annotations

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent

PARAMETERS = '''\
import os

MODEL = os.environ.get("UN_MODEL", "toy-gpt2-a")
OTHERS = [m for m in os.environ.get("UN_OTHERS", "toy-gpt2-b,toy-gpt2-c,toy-gpt2-d,toy-gpt2-e").split(",") if m]
DATASET = os.environ.get("UN_DATASET", "python-stdlib.all-1m.64")  # the correlation mix
ARTIFACT_ROOT = os.environ.get("UN_ARTIFACT_ROOT", "")  # folder holding token_datasets/, correlation_results/, ...
FIG_DIR = os.environ.get("UN_FIG_DIR", "")  # default paper_notebooks/figures/<model>/
THRESHOLD = 0.5  # excess_corr above which a neuron is universal
N_MIN = 20  # study the N_MIN highest excess_corr neurons when fewer are universal (small models)
N_ROWS = int(os.environ.get("UN_N_ROWS", "128"))  # dataset rows run through the model where a notebook needs activations'''

SETUP = '''\
import sys
import warnings
from contextlib import contextmanager
from pathlib import Path

REPO = next((p for p in [Path.cwd(), *Path.cwd().parents] if (p / "universal_neurons").is_dir()), None)
if REPO is not None and str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from IPython.display import Markdown, display

from universal_neurons import paths
from universal_neurons.errors import UserError

FIG_DIR = Path(FIG_DIR or (REPO or Path.cwd()) / "paper_notebooks" / "figures" / paths.model_dirname(MODEL)).resolve()
FIG_DIR.mkdir(parents=True, exist_ok=True)
if ARTIFACT_ROOT:
    os.chdir(ARTIFACT_ROOT)
warnings.filterwarnings("ignore", message="Glyph .* missing")
print(f"model {MODEL}, others {OTHERS}, dataset {DATASET}\\nartifacts in {Path.cwd()}\\nfigures to {FIG_DIR}")


class Missing(Exception):
    """An artifact this section needs is not there."""


@contextmanager
def section(title):
    """Run a block; a missing artifact prints what produces it instead of stopping the notebook."""
    try:
        yield
    except (Missing, UserError, FileNotFoundError) as e:
        print(f"SKIPPED [{title}]: {e}")


def need(ok, what, command):
    if not ok:
        raise Missing(f"{what} is missing: run `{command}`")


def after(*names):
    """Raise Missing unless an earlier section defined every variable in `names`."""
    gone = [n for n in names if n not in globals()]
    if gone:
        raise Missing(f"needs {', '.join(gone)} from an earlier section, which was skipped (see above)")


def save(fig, name):
    """Save `fig` as FIG_DIR/<name>.png and show it."""
    fig.savefig(FIG_DIR / f"{name}.png", dpi=110, bbox_inches="tight")
    display(fig)
    plt.close(fig)


RUN_CMD = f"universal-neurons run --models {MODEL} {' '.join(OTHERS)}"


def load_df():
    """The neuron dataframe (dataframes/neuron_dfs/<model>.csv)."""
    f = paths.neuron_df_path(MODEL)
    need(f.exists(), f"neuron dataframe {f}", RUN_CMD)
    return pd.read_csv(f)


def load_selection(df):
    """(universal neurons, or the N_MIN highest excess_corr when fewer are universal; label for titles)."""
    from analysis.families import select_universal

    sel, fallback = select_universal(df, THRESHOLD, N_MIN)
    if fallback:
        n_u = int((df["excess_corr"] > THRESHOLD).sum())
        print(f"only {n_u} neurons have excess_corr > {THRESHOLD}: studying the {len(sel)} highest instead")
        return sel, f"top {len(sel)} by excess_corr"
    return sel, f"universal (excess_corr > {THRESHOLD})"


def load_explained(sel):
    """sel's rows joined with their best current/previous-token explanation (NaN where not explained)."""
    from analysis.families import explained_df
    from analysis.heuristic_explanation import load_best_features

    best = load_best_features(MODEL, DATASET)
    out = explained_df(sel, best)
    need(out["feature"].notna().any(), "explanations of these neurons",
         f"python explain.py --model {MODEL} --dataset {DATASET} --feature_type token")
    return out


def model_activations(n_rows=N_ROWS):
    """(model, tokens [n_rows, ctx], post-GELU activations [n_rows, ctx, layer, neuron]) on DATASET."""
    from universal_neurons.capture import mlp_activations
    from universal_neurons.models import load_model
    from universal_neurons.token_datasets import load_token_dataset, token_tensor

    from universal_neurons.models import model_family

    where = paths.token_dataset_path(model_family(MODEL), DATASET)
    need(where.is_dir(), f"token dataset {where}", f"python make_dataset.py --model {MODEL} ...")
    model = load_model(MODEL)
    ds = load_token_dataset(DATASET, model.family, model.tokenizer)
    tokens = token_tensor(ds, 0, min(n_rows, len(ds)))
    acts = torch.cat([mlp_activations(model, tokens[i:i + 32]) for i in range(0, len(tokens), 32)])
    return model, tokens, acts'''

# -- per-notebook cells ------------------------------------------------------------------------------

FAMILY_COUNT = [
    ("md", "# Family count\n\nThe paper's families of universal neurons: each neuron gets the family of its best "
           "explanation (`analysis/families.py`: unigram, alphabet, previous token, position, syntax, other token "
           "property, unexplained), counted by layer."),
    ("code", '''\
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
                "prev_variance_reduction", "position_corr"]].sort_values(["family", "layer"]))'''),
]

PROPERTIES = [
    ("md", "# Properties of universal neurons\n\nWithin-layer percentiles of the paper's neuron properties for "
           "universal neurons against the rest, the excess-correlation distribution, the universal share by "
           "layer, and max correlation against the rotated baseline per layer and seed."),
    ("code", '''\
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
    save(universal_by_layer(df, THRESHOLD), "universal_by_layer")'''),
    ("code", '''\
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
    save(fig, "max_corr_by_seed")'''),
]


def token_family_cells(kind: str, title: str, intro: str) -> list:
    """Cells of the unigram / alphabet / previous-token notebooks (same analysis, another feature set)."""
    return [
        ("md", f"# {title}\n\n{intro}"),
        ("code", f'''\
KIND = "{kind}"
TOP_N = 8'''),
        ("code", '''\
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
    save(fig, f"{KIND}_variance_reduction")'''),
        ("code", '''\
with section("activation by feature value"):
    from analysis.families import feature_mask

    after("top")
    model, tokens, acts = model_activations()
    from universal_neurons.viewer_data import get_tokenizer_and_decoded_vocab

    vocab = get_tokenizer_and_decoded_vocab(MODEL)[1]
    show = top.head(4)
    fig, axes = plt.subplots(1, len(show), figsize=(3.2 * len(show), 3), squeeze=False)
    for ax, (name, row) in zip(axes[0], show.iterrows()):
        fmask = torch.as_tensor(feature_mask(model.tokenizer, vocab, row["kind_feature"]))
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
    save(fig, f"{KIND}_activation_by_feature")'''),
        ("code", '''\
with section("top tokens"):
    from universal_neurons import viewer_data as vd

    after("top")
    summaries = vd.load_all_summaries(MODEL)
    vocab = vd.get_tokenizer_and_decoded_vocab(MODEL)[1]
    l, n = int(top.iloc[0]["layer"]), int(top.iloc[0]["neuron"])
    save(vd.panel_top_tokens(summaries, l, n, vocab, "mean", 10), f"{KIND}_top_tokens")'''),
    ]


SYNTAX = [
    ("md", "# Syntax neurons\n\nNeurons explained by spaCy sequence features (part of speech, dependency, "
           "morphology, entities; `analysis/sequence_features.py`): variance reduction of the selected neurons "
           "by each sequence feature on the first N_ROWS rows of the dataset."),
    ("code", '''\
from analysis.sequence_features import SPACY_INSTALL, load_spacy

try:
    nlp = load_spacy()
except UserError as e:
    nlp = None
    display(Markdown(f"**install spacy + en_core_web_sm to run this notebook's analysis** (`{SPACY_INSTALL}`).\\n\\n{e}"))
    print("NOTE: spaCy missing: showing only the token-feature explanations (what syntax features must beat)")'''),
    ("code", '''\
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
    save(fig, "syntax_token_feature_baseline")'''),
    ("code", '''\
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
        save(fig, "syntax_vs_token_features")'''),
]

POSITION = [
    ("md", "# Position neurons\n\nPearson correlation of each neuron's activation with the token's position in "
           "the context (positions 1.., on the first N_ROWS rows of the dataset; `analysis/position_neurons.py`)."),
    ("code", '''\
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
    display(table.reindex(table["position_corr"].abs().sort_values(ascending=False).index).head(10))'''),
]

TOPIC = [
    ("md", "# Topic neurons\n\nMean activation of each neuron on each corpus subset (prose / code / tests ...) from "
           "the per-subset activation histograms; the topic score is the subset's mean minus the other subsets' "
           "mean, in units of the pooled standard deviation (`analysis/topic_neurons.py`)."),
    ("code", '''\
with section("topic scores"):
    from analysis.topic_neurons import subset_moments, topic_scores
    from universal_neurons import viewer_data as vd

    summaries = vd.load_all_summaries(MODEL)
    need(len(summaries) >= 2, "activation summaries of at least two corpus subsets",
         f"python summary.py --model {MODEL} --token_dataset <subset datasets>")
    means, stds = subset_moments(summaries)
    z = topic_scores(means, stds)
    picks = sorted({ix for c in z.columns for ix in z[c].nlargest(4).index})
    fig, axes = plt.subplots(1, 2, figsize=(12, 0.3 * len(picks) + 1.5), gridspec_kw={"width_ratios": [1, 1.2]})
    vmax = max(0.5, float(np.nanmax(np.abs(z.loc[picks].to_numpy()))))
    im = axes[0].imshow(z.loc[picks].to_numpy(), cmap="RdBu_r", vmin=-vmax, vmax=vmax, aspect="auto")
    axes[0].set_xticks(range(z.shape[1]), z.columns); axes[0].set_yticks(range(len(picks)), [f"L{l}.{n}" for l, n in picks])
    axes[0].set_title("topic score (top 4 per subset)", fontsize=10); fig.colorbar(im, ax=axes[0], shrink=0.8)
    for c in z.columns:
        axes[1].hist(z[c].dropna(), bins=50, histtype="step", label=c)
    axes[1].set_yscale("log"); axes[1].set_xlabel("topic score"); axes[1].set_ylabel("neurons")
    axes[1].legend(fontsize=8)
    fig.suptitle(f"{MODEL}: topic neurons", fontsize=10)
    fig.tight_layout()
    save(fig, "topic_scores")
    best = z.stack().idxmax()
    (l, n), subset = best[:2], best[2]
    print(f"strongest topic neuron: L{l}.{n}, on {subset} (score {z.loc[(l, n), subset]:.2f})")
    save(vd.panel_activation_distribution(summaries, int(l), int(n)), "topic_neuron_distribution")'''),
]

PREDICTION = [
    ("md", "# Prediction and suppression neurons\n\nKurtosis and skew of each neuron's W_U cosines by layer "
           "(`analysis/prediction_neurons.py`): prediction neurons have vocab_kurt > 10 and positive skew, "
           "suppression neurons negative skew."),
    ("code", '''\
KURT = 10.0
with section("vocab moments"):
    from analysis.prediction_neurons import CLASSES, classify_prediction, counts_by_layer, plot_moments_by_layer

    df = load_df()
    save(plot_moments_by_layer(df, KURT), "vocab_kurt_skew_by_layer")
    counts = counts_by_layer(df, KURT)
    display(counts)
    fig, ax = plt.subplots(figsize=(6, 3.2))
    w = 0.38
    ax.bar(counts.index - w / 2, counts["prediction"], width=w, color="C0", label="prediction")
    ax.bar(counts.index + w / 2, counts["suppression"], width=w, color="C3", label="suppression")
    ax.set_xticks(counts.index); ax.set_xlabel("layer"); ax.set_ylabel("neurons"); ax.legend(fontsize=8)
    ax.set_title(f"{MODEL}: vocab_kurt > {KURT:g}", fontsize=10)
    fig.tight_layout()
    save(fig, "prediction_counts_by_layer")'''),
    ("code", '''\
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
        ax.set_title(f"L{l}.{n} {kind}\\nkurt {r['vocab_kurt']:.1f} skew {r['vocab_skew']:.2f}", fontsize=8)
        ax.set_xlabel("cos(w_out, W_U)")
    fig.tight_layout()
    save(fig, "prediction_top_tokens")'''),
]

ENTROPY = [
    ("md", "# Entropy neurons\n\nThe fixed-activation intervention of `entropy_intervention.py` against random "
           "neurons of the same layer (`analysis/entropy_neurons.py`), and w_out norm against vocab_var for the "
           "last layer (entropy neurons: large norm, output nearly orthogonal to the unembedding)."),
    ("code", '''\
with section("intervention curves"):
    from analysis.entropy_neurons import plot_entropy_intervention, read_summary

    root = paths.intervention_dir() / paths.model_dirname(MODEL) / DATASET
    files = sorted(root.glob("*/summary_*.csv")) if root.is_dir() else []
    need(files, f"entropy intervention summaries under {root}",
         f"python entropy_intervention.py --model {MODEL} --token_dataset {DATASET} --neuron_subset <l.n> ...")
    targets = []
    for f in files:
        s = read_summary(f)
        targets.append(f.parent.name)
        fig, _ = plot_entropy_intervention(s, title=f"{MODEL}: fix L{f.parent.name} ({f.stem.split('_', 1)[1]})")
        save(fig, f"entropy_intervention_{f.parent.name.replace('.', '_')}")'''),
    ("code", '''\
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
    save(fig, "entropy_norm_vs_vocab_var")'''),
]

BOS = [
    ("md", "# BOS-signal neurons\n\nResults of `attention_deactivation.py`: for the neurons ranked by the heuristic "
           "score (the change of the head's BOS attention score per unit of the neuron's activation, through the "
           "query), and the measured effect of removing the neuron's direct path into the head's query: the "
           "correlation of the neuron's activation with the change of attention to BOS and of the head's "
           "output norm."),
    ("code", '''\
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
        axes[2].set_xlabel(f"activation of L{top}"); axes[2].set_ylabel("change of attention to BOS\\nwhen the path is removed")
        fig.suptitle(f"{MODEL}: head L{meta['layer']}H{meta['head']}", fontsize=10)
        fig.tight_layout()
        save(fig, f"bos_signal_L{meta['layer']}H{meta['head']}")'''),
]

MYSTERIES = [
    ("md", "# Mysteries\n\nUniversal neurons that no token feature explains well (low best variance reduction): "
           "their top tokens and max-activating examples."),
    ("code", '''\
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
    save(fig, "mysteries_vr")'''),
    ("code", '''\
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
             f"mystery_{l}_{n}_examples")'''),
]

NOTEBOOKS = {
    "family_count": FAMILY_COUNT,
    "properties_of_universal_neurons": PROPERTIES,
    "unigram_neurons": token_family_cells(
        "unigram", "Unigram neurons", "Neurons whose best explanation is one token form (`unigram_<form>` "
        "features): their variance reduction, activation when the token is present, and top tokens."),
    "alphabet_neurons": token_family_cells(
        "alphabet", "Alphabet neurons", "Neurons whose best explanation is the token's first letter "
        "(`starts_with_<letter>`, `is_single_letter`)."),
    "previous_token_neurons": token_family_cells(
        "previous_token", "Previous-token neurons", "Neurons explained better by a feature of the previous "
        "token than by any feature of the current one."),
    "syntax_neurons": SYNTAX,
    "position_neurons": POSITION,
    "topic_neurons": TOPIC,
    "prediction_neurons": PREDICTION,
    "entropy_neurons": ENTROPY,
    "bos_signal_neurons": BOS,
    "mysteries": MYSTERIES,
}


def build(name: str, cells: list) -> nbformat.NotebookNode:
    nb = new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    params = new_code_cell(PARAMETERS)
    params.metadata["tags"] = ["parameters"]
    body = [new_markdown_cell(src) if kind == "md" else new_code_cell(src) for kind, src in cells]
    nb.cells = [params, body[0], new_code_cell(SETUP), *body[1:]]
    return nb


def main() -> None:
    for name, cells in NOTEBOOKS.items():
        nbformat.write(build(name, cells), HERE / f"{name}.ipynb")
    print(f"wrote {len(NOTEBOOKS)} notebooks to {HERE}")


if __name__ == "__main__":
    main()
