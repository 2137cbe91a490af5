"""The main job's report: headline numbers, figures and tables, printed and written as Markdown.

    reports/<model>/report.md   with the figures (PNG) beside it
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from . import plots
from .families import family_table
from .errors import UserError
from .neuron_df import UNIVERSAL_THRESHOLD, load_paper_dataframe, universal_share_by_layer
from . import paths, runs


def property_differences(df: pd.DataFrame, threshold: float = UNIVERSAL_THRESHOLD) -> pd.DataFrame:
    """Median within-layer percentile of each paper property, universal neurons vs the rest."""
    pct = plots.within_layer_percentiles(df)
    is_u = df["excess_corr"] > threshold
    rows = []
    for col, label in plots.PROPERTIES.items():
        rows.append({"property": label, "column": col,
                     "universal_median_pct": float(pct.loc[is_u, col].median()) if is_u.any() else np.nan,
                     "others_median_pct": float(pct.loc[~is_u, col].median())})
    out = pd.DataFrame(rows)
    out["difference"] = out["universal_median_pct"] - out["others_median_pct"]
    return out


def paper_comparison(df: pd.DataFrame, paper: pd.DataFrame, threshold: float = UNIVERSAL_THRESHOLD) -> dict:
    """Our neuron dataframe `df` (every neuron) against the paper's published universal.csv `paper`:
        by_layer   layer, ours_pct, paper_pct: universal share of each layer's neurons (both over our
                   neuron count per layer, the model's width)
        jaccard    |ours & theirs| / |ours | theirs| of the universal (layer, neuron) sets
        found      how many of the paper's universal neurons have our excess_corr > threshold, of n_paper
        shared     layer, neuron, ours, paper: excess_corr of the neurons in both files (ours may be NaN)"""
    key = ["layer", "neuron"]
    ours_set = set(map(tuple, df.loc[df["excess_corr"] > threshold, key].to_numpy().tolist()))
    theirs = set(map(tuple, paper[key].to_numpy().tolist()))
    width = df.groupby("layer").size()
    ours_pct = universal_share_by_layer(df, threshold) * 100
    paper_pct = paper["layer"].value_counts().reindex(width.index, fill_value=0) / width * 100
    by_layer = pd.DataFrame({"layer": width.index, "ours_pct": ours_pct.to_numpy(), "paper_pct": paper_pct.to_numpy()})
    shared = paper[key + ["excess_corr"]].merge(df[key + ["excess_corr"]], on=key, how="inner", suffixes=("_paper", ""))
    shared = shared.rename(columns={"excess_corr": "ours", "excess_corr_paper": "paper"})[key + ["ours", "paper"]]
    union = ours_set | theirs
    return {"by_layer": by_layer, "jaccard": len(ours_set & theirs) / len(union) if union else float("nan"),
            "found": int((shared["ours"] > threshold).sum()), "n_paper": len(theirs), "n_ours": len(ours_set),
            "shared": shared}


def intervention_table(iv: pd.DataFrame) -> pd.DataFrame:
    """Per value: the target's deltas and the random baselines' mean (std) delta entropy."""
    tgt = iv[iv["group"] == "target"].set_index("value")
    rnd = iv[iv["group"] == "random"].groupby("value")["delta_entropy"]
    out = pd.DataFrame({"neuron": tgt["label"], "delta_entropy": tgt["delta_entropy"],
                        "delta_loss": tgt["delta_loss"], "delta_scale": tgt["delta_scale"]})
    out["random_delta_entropy_mean"] = rnd.mean().reindex(out.index)
    out["random_delta_entropy_std"] = rnd.std().reindex(out.index)
    return out.reset_index()


def _fmt_table(df: pd.DataFrame, floatfmt: str = "{:.3f}") -> str:
    cols = list(df.columns)
    lines = ["| " + " | ".join(map(str, cols)) + " |", "|" + "---|" * len(cols)]
    for r in df.itertuples(index=False):  # not iterrows: it casts an all-number row to float (layer 1 -> 1.000)
        cells = [floatfmt.format(v) if isinstance(v, (float, np.floating)) else str(v) for v in r]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_report(model: str, df: pd.DataFrame, *, others: list[str], dataset: str, toy: bool,
                 zoo_table: str | None = None, partners: pd.DataFrame | None = None,
                 explanations: pd.DataFrame | None = None, intervention: pd.DataFrame | None = None,
                 attention: dict | None = None, timings: dict | None = None,
                 threshold: float = UNIVERSAL_THRESHOLD, out_dir: Path | None = None,
                 conventions: list[str] | None = None) -> Path:
    """Write reports/<model>/report.md with its figures; returns the Markdown path.

    conventions: lines saying which positions each statistic counted (`pipeline.conventions`)."""
    out_dir = out_dir or paths.report_path(model)
    runs.would(f"write the report in {out_dir}")  # a check (runs.checking) draws no figure
    out_dir.mkdir(parents=True, exist_ok=True)
    is_u = df["excess_corr"] > threshold
    n_u, n = int(is_u.sum()), len(df)
    share = is_u.groupby(df["layer"]).mean() * 100
    figures = {
        "excess_correlation.png": plots.excess_corr_hist(df, threshold),
        "universal_by_layer.png": plots.universal_by_layer(df, threshold),
        "properties.png": plots.property_percentiles(df, threshold),
    }
    try:  # a paper model: its universal neurons side by side with the paper's published ones
        paper = paper_comparison(df, load_paper_dataframe(model), threshold)
        figures["paper_comparison.png"] = plots.paper_scatter(paper["shared"], threshold)
    except UserError:  # the paper published nothing for this model
        paper = None
    iv_table = None
    if intervention is not None and len(intervention):
        iv = intervention[intervention["group"] != "clean"]
        figures["entropy_intervention.png"] = plots.intervention_curve(iv, label_col="label")
        iv_table = intervention_table(iv)
    for name, fig in figures.items():
        fig.savefig(out_dir / name, dpi=110)
        plots.plt.close(fig)

    md = [f"# Universal neurons of {model}", ""]
    if toy:
        md += ["> All numbers here come from the **toy zoo** (tiny GPT-2s trained on Python's standard library "
               "on a CPU), not from the paper's GPT-2 models. They show the method working end to end; their "
               "values are not comparable to the paper's.", ""]
    md += [f"Compared against {len(others)} other seed(s): {', '.join(others)}; correlations on `{dataset}`.", ""]
    if conventions:
        md += ["Conventions of this run: " + "; ".join(conventions) + ".", ""]
    if zoo_table:
        md += ["## The zoo", "", "```", zoo_table, "```", ""]
    md += ["## Headline", "",
           f"- Universal neurons (excess_corr > {threshold}): **{n_u} of {n} ({100 * n_u / n:.2f}%)**",
           "- Per layer: " + ", ".join(f"L{l}: {v:.2f}%" for l, v in share.items()),
           f"- Mean of max correlation with other seeds: {df['mean_corr'].mean():.3f}; rotated baseline: "
           f"{df['mean_baseline'].mean():.3f}; max excess_corr {df['excess_corr'].max():.3f}",
           f"- Dead or constant neurons (NaN correlation): {int(df['mean_corr'].isna().sum())}", "",
           "![excess correlation](excess_correlation.png)", "", "![universal by layer](universal_by_layer.png)", ""]
    if paper is not None:
        md += ["## Against the paper's published universal neurons", "",
               f"dataframes/paper/interpretable_neurons/{model}/universal.csv (Gurnee et al. 2024, MIT): "
               f"{paper['n_paper']} universal neurons there, {paper['n_ours']} here; Jaccard overlap "
               f"**{paper['jaccard']:.3f}**; {paper['found']} of the paper's {paper['n_paper']} have excess_corr > "
               f"{threshold} in this run.", "", "Universal share of each layer (%):", "",
               _fmt_table(paper["by_layer"], "{:.2f}"), "", "![against the paper](paper_comparison.png)", ""]
    fam, not_shown = family_table(df, explanations, intervention, threshold)
    md += ["## Families of the paper in this run", "",
           "Each family's rule (universal_neurons/families.py), how many neurons follow it and which († universal; "
           "token families among the explained neurons):", "", _fmt_table(fam), ""]
    if not_shown:
        md += ["Not shown by this run:", ""] + [f"- {line}" for line in not_shown] + [""]
    md += ["## How universal neurons differ", "",
           "Median within-layer percentile of each property (50 = typical neuron of its layer):", "",
           _fmt_table(property_differences(df, threshold), "{:.1f}"), "", "![properties](properties.png)", ""]
    top = df[is_u].sort_values("excess_corr", ascending=False).head(10) if n_u else \
        df.sort_values("excess_corr", ascending=False).head(10)
    md += ["## Top neurons by excess correlation" + ("" if n_u else " (none passes the threshold)"), ""]
    cols = ["layer", "neuron", "excess_corr", "mean_corr", "mean_baseline", "kurt", "sparsity", "vocab_kurt"]
    table = top[cols].copy()
    if partners is not None:
        table = table.merge(partners, on=["layer", "neuron"], how="left")
    if explanations is not None:
        table = table.merge(explanations, on=["layer", "neuron"], how="left")
    md += [_fmt_table(table), ""]
    if iv_table is not None:
        md += ["## Entropy-neuron style intervention", "",
               f"The last-layer neuron most like an entropy neuron (large output norm, output nearly orthogonal "
               f"to the unembedding), `{iv_table['neuron'].iloc[0]}`, fixed to each value on every token: mean "
               "change of next-token entropy (nats), loss and final LayerNorm scale against the clean run, and "
               "the same for random last-layer neurons (grey in the figure):", "",
               _fmt_table(iv_table.drop(columns="neuron")), "", "![intervention](entropy_intervention.png)", ""]
    if attention:
        md += ["## Attention deactivation", "", "```", str(attention), "```", ""]
    if timings:
        md += ["## Run times", "", _fmt_table(pd.DataFrame([{"stage": k, "seconds": v} for k, v in timings.items()]),
                                              "{:.1f}"), ""]
    path = out_dir / "report.md"
    with paths.atomic_path(path) as tmp:
        tmp.write_text("\n".join(md))
    return path
