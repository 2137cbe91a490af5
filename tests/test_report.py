"""The main job's report and selections, checked on content against a constructed neuron dataframe."""
from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from universal_neurons import pipeline, report
from universal_neurons.neuron_df import NEURON_DF_COLUMNS, UNIVERSAL_THRESHOLD, select_universal


def constructed_df(seed: int = 0) -> pd.DataFrame:
    """3 layers x 40 neurons. Universal (excess_corr > 0.5): 4 in layer 0, 10 in layer 1, 0 in layer 2
    (one exactly at 0.5: not universal), and one dead neuron (NaN). The universal neurons have higher
    kurtosis, skew, weight norm and W_U kurtosis and lower input bias and activation frequency than the
    rest of their layer, by construction."""
    rng = np.random.default_rng(seed)
    L, D = 3, 40
    df = pd.DataFrame({"layer": np.repeat(np.arange(L), D), "neuron": np.tile(np.arange(D), L)})
    for c in NEURON_DF_COLUMNS[2:]:
        df[c] = rng.uniform(0.1, 0.4, len(df))
    uni = {0: [1, 5, 9, 30], 1: list(range(10, 20))}
    is_u = np.zeros(len(df), bool)
    for l, ns in uni.items():
        is_u[l * D + np.array(ns)] = True
    df["excess_corr"] = np.where(is_u, rng.uniform(0.55, 0.9, len(df)), rng.uniform(0.0, 0.45, len(df)))
    df.loc[2 * D + 3, "excess_corr"] = 0.5  # at the threshold: not universal (strictly greater)
    df.loc[2 * D + 4, ["excess_corr", "mean_corr"]] = np.nan  # a dead neuron
    up, down = ["kurt", "skew", "l2_penalty", "vocab_kurt"], ["input_bias", "sparsity"]
    df.loc[is_u, up] += 10.0
    df.loc[is_u, down] -= 10.0
    return df


def test_report_headline_per_layer_and_property_signs(tmp_path):
    df = constructed_df()
    path = report.write_report("m", df, others=["m-b"], dataset="ds", toy=True, out_dir=tmp_path,
                               conventions=["positions: every one"])
    md = path.read_text()
    n_u = int((df["excess_corr"] > UNIVERSAL_THRESHOLD).sum())
    assert n_u == 14
    assert f"**{n_u} of {len(df)} ({100 * n_u / len(df):.2f}%)**" in md
    per_layer = dict(re.findall(r"L(\d+): ([\d.]+)%", md.split("- Per layer: ")[1].splitlines()[0]))
    assert per_layer == {"0": f"{100 * 4 / 40:.2f}", "1": f"{100 * 10 / 40:.2f}", "2": "0.00"}
    assert "Dead or constant neurons (NaN correlation): 1" in md and "Conventions of this run: positions" in md
    assert "toy zoo" in md
    # property table: the sign of every difference is the constructed one
    diff = report.property_differences(df)
    signs = dict(zip(diff["column"], np.sign(diff["difference"])))
    assert signs == {"kurt": 1, "skew": 1, "l2_penalty": 1, "vocab_kurt": 1, "input_bias": -1, "sparsity": -1}
    table = md.split("## How universal neurons differ")[1].split("## Top neurons")[0]
    for col, sign in signs.items():
        row = next(line for line in table.splitlines() if f"| {col} |" in line)
        assert float(row.strip("| ").split(" | ")[-1]) * sign > 0
    # the top-10 table lists the highest excess_corr, universal ones, in order
    top = md.split("## Top neurons by excess correlation")[1].split("\n## ")[0]
    rows = [line.split(" | ") for line in top.splitlines() if re.match(r"\| \d+ \| \d+ \|", line)]
    want = df[df.excess_corr > 0.5].sort_values("excess_corr", ascending=False).head(10)
    assert [(int(r[0].strip("| ")), int(r[1])) for r in rows] == list(zip(want.layer, want.neuron))
    for name in ("excess_correlation.png", "universal_by_layer.png", "properties.png"):
        assert (tmp_path / name).stat().st_size > 1000


def test_report_says_when_no_neuron_passes(tmp_path):
    df = constructed_df()
    df["excess_corr"] = df["excess_corr"].clip(upper=0.45)
    md = report.write_report("m", df, others=["m-b"], dataset="ds", toy=False, out_dir=tmp_path).read_text()
    assert "**0 of 120 (0.00%)**" in md and "(none passes the threshold)" in md and "toy zoo" not in md


@pytest.mark.parametrize("n_min", [0, 10, 20])
def test_explained_neuron_selection(n_min):
    """The universal neurons; when fewer than n_min pass, the n_min highest excess_corr (never NaN)."""
    df = constructed_df()
    chosen = pipeline.explained_neurons(df, UNIVERSAL_THRESHOLD, n_min=n_min)
    universal = set(zip(*df[df.excess_corr > 0.5][["layer", "neuron"]].values.T))
    got = set(zip(chosen.layer, chosen.neuron))
    if n_min <= 14:
        assert got == universal and not select_universal(df, UNIVERSAL_THRESHOLD, n_min)[1]
    else:
        brute = df.dropna(subset=["excess_corr"]).sort_values("excess_corr", ascending=False).head(n_min)
        assert got == set(zip(brute.layer, brute.neuron)) and len(got) == n_min and universal < got
        assert select_universal(df, UNIVERSAL_THRESHOLD, n_min)[1]
    assert not chosen["excess_corr"].isna().any()


def test_paper_comparison_on_constructed_data(tmp_path):
    """A run of a paper model is put beside the paper's universal.csv: per-layer shares over the model's
    width, Jaccard overlap, how many of theirs pass here, and the shared neurons' excess_corr."""
    ours = constructed_df()                                    # universal: 0.{1,5,9,30}, 1.{10..19}
    paper = ours[ours["layer"] == 1].iloc[12:22].copy()        # theirs: 1.12 .. 1.21
    paper["excess_corr"] = 0.8
    cmp = report.paper_comparison(ours, paper)
    mine, theirs = {(0, n) for n in (1, 5, 9, 30)} | {(1, n) for n in range(10, 20)}, {(1, n) for n in range(12, 22)}
    assert cmp["jaccard"] == pytest.approx(len(mine & theirs) / len(mine | theirs))       # 8 / 16
    assert cmp["found"] == 8 and cmp["n_paper"] == 10 and cmp["n_ours"] == 14
    by = cmp["by_layer"].set_index("layer")
    assert by.loc[0, "ours_pct"] == pytest.approx(10.0) and by.loc[1, "ours_pct"] == pytest.approx(25.0)
    assert by.loc[1, "paper_pct"] == pytest.approx(25.0) and by.loc[2, "paper_pct"] == 0
    assert len(cmp["shared"]) == 10 and (cmp["shared"]["paper"] == 0.8).all()

    # a report of a paper model carries the section (the shipped stanford-gpt2-small-a file, 1533 neurons)
    from universal_neurons.neuron_df import load_paper_dataframe

    pub = load_paper_dataframe("stanford-gpt2-small-a")
    full = pd.DataFrame({"layer": np.repeat(np.arange(12), 3072), "neuron": np.tile(np.arange(3072), 12)})
    full = full.merge(pub[["layer", "neuron", "excess_corr"]], on=["layer", "neuron"], how="left")
    full["excess_corr"] = full["excess_corr"].fillna(0.1)
    full.loc[:99, "excess_corr"] = 0.9                        # 100 extra universal neurons in layer 0
    for c in NEURON_DF_COLUMNS[2:]:
        if c not in full:
            full[c] = np.random.default_rng(0).uniform(0.1, 0.4, len(full))
    path = report.write_report("stanford-gpt2-small-a", full[NEURON_DF_COLUMNS], others=["b"], dataset="ds",
                               toy=False, out_dir=tmp_path)
    text = path.read_text()
    extra = 100 - int(((pub["layer"] == 0) & (pub["neuron"] < 100)).sum())
    assert "## Against the paper's published universal neurons" in text
    assert f"Jaccard overlap **{1533 / (1533 + extra):.3f}**" in text and "1533 of the paper's 1533" in text
    assert (tmp_path / "paper_comparison.png").stat().st_size > 1000
    assert "Against the paper" not in report.write_report("m", ours, others=["b"], dataset="ds", toy=True,
                                                          out_dir=tmp_path / "m").read_text()


def test_family_table_names_each_family_and_what_is_missing():
    """Constructed run: token families from the explained neurons' best features, prediction and
    suppression from vocab_kurt / vocab_skew of every neuron, entropy from the intervention against
    the random neurons' mean + 2 sd; families with none are said plainly."""
    from universal_neurons.families import family_table

    df = pd.DataFrame({"layer": [0, 0, 0, 1, 1, 1, 1], "neuron": [0, 1, 2, 0, 1, 2, 3],
                       "excess_corr": [0.7, 0.2, 0.6, 0.55, 0.1, 0.9, 0.3],
                       "vocab_kurt": [3.0, 3.1, 2.9, 25.0, 12.0, 40.0, np.nan],
                       "vocab_skew": [0.1, 0.0, 0.2, 1.5, -2.0, -0.5, 1.0]})
    ex = pd.DataFrame({"layer": [0, 0, 1], "neuron": [0, 2, 2],
                       "feature": ["unigram_def", "starts_with_a", "is_upper"], "variance_reduction": [0.6, 0.4, 0.05],
                       "prev_feature": ["x", "y", "z"], "prev_variance_reduction": [0.1, 0.5, 0.02]})
    iv = pd.DataFrame({"group": ["clean", "target", "target"] + ["random"] * 6, "label": ["clean", "1.3", "1.3"] + ["r"] * 6,
                       "value": [np.nan, 1.0, 3.0, 1.0, 1.0, 1.0, 3.0, 3.0, 3.0],
                       "delta_entropy": [0.0, 0.9, 0.5, 0.0, 0.1, 0.2, 0.1, 0.2, 0.3]})
    table, missing = family_table(df, ex, iv, 0.5)
    t = table.set_index("family")
    assert t.loc["unigram", "names"] == "L0.0†" and t.loc["previous_token", "names"] == "L0.2†"
    assert t.loc["unexplained", "names"] == "L1.2†" and t.loc["alphabet", "neurons"] == 0
    assert t.loc["prediction", "names"] == "L1.0†" and t.loc["prediction", "universal"] == 1
    assert t.loc["suppression", "names"] == "L1.2†, L1.1" and t.loc["suppression", "universal"] == 1
    # at the largest value 3.0: 0.5 > 0.2 + 2 x 0.1 = 0.4, an entropy neuron (at 1.0 it would also be)
    assert t.loc["entropy", "names"] == "L1.3" and t.loc["entropy", "universal"] == 0
    assert "position" not in t.index and "syntax" not in t.index
    assert any(m.startswith("alphabet: none among the 3 explained") for m in missing)
    assert not any(m.startswith(("prediction", "suppression", "entropy")) for m in missing)
    # no entropy neuron, no heavy tails, no explanations: each said once
    iv2 = iv.assign(delta_entropy=np.where(iv["group"] == "target", 0.3, iv["delta_entropy"]))
    _, missing = family_table(df.assign(vocab_kurt=4.0), None, iv2, 0.5)
    assert "prediction: no neuron has W_U kurtosis > 10 (largest 4.0)" in missing
    assert any(m.startswith("entropy: the candidate L1.3 fixed at 3 changes entropy by +0.300 nats, not above") for m in missing)
    assert "token families: no explanations in this run" in missing
    _, missing = family_table(df.assign(vocab_kurt=np.nan), ex, None, 0.5)
    assert "prediction: no neuron has W_U kurtosis > 10 (no W_U moments in this run)" in missing
    assert "entropy: no entropy intervention with random baselines in this run" in missing
