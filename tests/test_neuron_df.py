"""The neuron dataframe: schema against the paper's published files, formula, assembly from artifacts."""
import numpy as np
import pandas as pd
import pytest
import torch

from analysis.neuron_df import (NEURON_DF_COLUMNS, make_neuron_df, universal_neurons,
                                universal_share_by_layer, write_neuron_df)
from universal_neurons import paths
from universal_neurons.errors import UserError
from universal_neurons.neuron_df import load_paper_dataframe


@pytest.mark.parametrize("model,n", [("stanford-gpt2-small-a", 1533), ("stanford-gpt2-medium-a", 1211),
                                     ("pythia-160m", 465)])
def test_schema_and_formula_match_the_published_dataframes(model, n):
    """The paper's universal.csv, shipped in dataframes/paper/: our columns, their count, our formulas."""
    ref = load_paper_dataframe(model)
    assert list(ref.columns) == NEURON_DF_COLUMNS and len(ref) == n
    assert not ref[["layer", "neuron"]].duplicated().any()
    assert ref["layer"].dtype.kind == "i" and ref["neuron"].dtype.kind == "i"
    assert all(ref[c].dtype.kind == "f" for c in NEURON_DF_COLUMNS[2:])
    # our formula, applied to their columns, reproduces their excess_corr (they stored 4 decimals)
    assert np.allclose(ref["mean_corr"] - ref["mean_baseline"], ref["excess_corr"], atol=2e-4)
    assert (ref["excess_corr"] > 0.5).all()
    assert np.allclose(ref["l2_penalty"], ref["w_in_norm"] ** 2 + ref["w_out_norm"] ** 2, rtol=1e-5)


def _fake_artifacts(L=2, D=5, others=("m-b", "m-c"), dataset="ds", seed=0):
    """Write the stages' artifacts for a model 'm-a' by hand; return the ground truth."""
    g = torch.Generator().manual_seed(seed)
    N = L * D
    truth = {"none": [], "rotation": []}
    for o in others:
        for baseline in ("none", "rotation"):
            mx = torch.rand(N, generator=g) * (0.9 if baseline == "none" else 0.4)
            if baseline == "none":
                mx[3] = float("nan")  # a dead neuron
            truth[baseline].append(mx.numpy().astype(np.float16).astype(np.float64))
            out = paths.correlation_path("m-a", o, dataset, "pearson", baseline)
            out.mkdir(parents=True)
            torch.save({"max_corr": mx.half(), "max_corr_ix": torch.zeros(N, dtype=torch.int32)},
                       out / "correlation_summary.pt")
    w = paths.weights_summary_path("m-a")
    w.mkdir(parents=True)
    stats = pd.DataFrame({"layer": np.repeat(np.arange(L), D), "neuron_ix": np.tile(np.arange(D), L),
                          "input_weight_norm": np.arange(N) + 1.0, "input_bias": -np.arange(N) / 10,
                          "output_weight_norm": np.arange(N) / 2 + 0.5, "in_out_sim": np.linspace(-1, 1, N)})
    stats.to_csv(w / "neuron_stats.csv", index=False)
    moments = {f"comp_{k}": torch.rand(L, D, generator=g) for k in ("mean", "var", "skew", "kurt")}
    torch.save({"U_out": moments}, w / "vocab_comps.pt")
    edges = torch.linspace(-10, 15, 256)
    for sub in ("ds.x", "ds.y"):
        a = paths.activation_summary_path("m-a", sub)
        a.mkdir(parents=True)
        counts = torch.zeros(L, D, 257, dtype=torch.int32)
        counts[..., 100] = 7   # just below 0
        counts[..., 110] = 3   # above 0
        torch.save(counts, a / "neuron_bin_counts.pt")
        torch.save(edges, a / "neuron_bin_edges.pt")
    return truth, stats, moments


def test_neuron_df_assembles_every_stage(tmp_path):
    truth, stats, moments = _fake_artifacts()
    df = make_neuron_df("m-a", ["m-b", "m-c"], "ds", 2, 5)
    assert list(df.columns) == NEURON_DF_COLUMNS and len(df) == 10
    real, base = np.stack(truth["none"]), np.stack(truth["rotation"])
    with np.errstate(all="ignore"):
        assert np.allclose(df["mean_corr"], real.mean(0), equal_nan=True)
        assert np.allclose(df["max_corr"], real.max(0), equal_nan=True)
        assert np.allclose(df["min_baseline"], base.min(0))
        assert np.allclose(df["excess_corr"], real.mean(0) - base.mean(0), equal_nan=True)
    assert np.isnan(df.loc[3, "excess_corr"])  # the dead neuron is NaN, never universal
    assert np.allclose(df["l2_penalty"], stats["input_weight_norm"] ** 2 + stats["output_weight_norm"] ** 2)
    assert np.allclose(df["vocab_kurt"], moments["comp_kurt"].reshape(-1).numpy())
    assert np.allclose(df["sparsity"], 0.3)  # 3 of 10 tokens per dataset above 0, summed over both
    out, uni = write_neuron_df(df, "m-a", threshold=0.2)
    back = pd.read_csv(out)
    assert list(back.columns) == NEURON_DF_COLUMNS
    assert pd.read_csv(uni).shape[0] == len(universal_neurons(df, 0.2)) == int((df["excess_corr"] > 0.2).sum())
    share = universal_share_by_layer(df, 0.2)
    assert list(share.index) == [0, 1]


def test_missing_stage_names_the_command(tmp_path):
    _fake_artifacts()
    with pytest.raises(UserError, match="correlations_fast.py"):
        make_neuron_df("m-a", ["m-z"], "ds", 2, 5)
    with pytest.raises(UserError, match="rows"):
        make_neuron_df("m-a", ["m-b"], "ds", 3, 5)


def test_paper_dataframes_are_shipped_with_their_licence():
    """GPT2-medium's prediction neurons and the MIT notice beside the paper's files; a model the paper
    published nothing for is one clear error."""
    pred = load_paper_dataframe("stanford-gpt2-medium-a", "prediction_neurons")
    assert list(pred.columns) == ["layer", "neuron", "feature", "is_surpress"] and len(pred) == 136
    assert "Copyright (c) 2023 Wes Gurnee" in (paths.PAPER_DATAFRAMES.parent / "LICENSE").read_text()
    with pytest.raises(UserError, match="published no universal.csv for 'toy-gpt2-a'"):
        load_paper_dataframe("toy-gpt2-a")
