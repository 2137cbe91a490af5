"""The analysis helpers of the paper notebooks, against float64 brute force on adversarial inputs."""
import numpy as np
import pandas as pd
import pytest
import torch

from analysis.correlations import flatten_layers, make_correlation_result_df, unflatten_layers
from analysis.families import classify_family, family_counts, feature_mask, kind_explanations, select_universal
from analysis.position_neurons import mean_by_position, position_correlations
from analysis.prediction_neurons import classify_prediction, counts_by_layer, published_classes, vocab_tokens
from analysis.topic_neurons import subset_moments, topic_scores
from universal_neurons import paths
from universal_neurons.activation_summary import bin_edges, histogram_moments
from universal_neurons.errors import UserError


def test_flatten_unflatten_layer_major():
    x = torch.arange(2 * 3 * 4).reshape(2, 3, 4)
    flat = flatten_layers(x)
    assert flat.shape == (6, 4) and torch.equal(flat[1 * 3 + 2], x[1, 2])  # row l * D + n is neuron l.n
    assert torch.equal(unflatten_layers(flat, 2), x)
    assert np.array_equal(unflatten_layers(flatten_layers(x.numpy()), 2), x.numpy())
    with pytest.raises(UserError):
        unflatten_layers(flat, 4)


def test_correlation_result_df_maps_rows_and_partners():
    d_mlp = 3
    for other, base, mx in (("b", "none", [0.9, np.nan, 0.1, 0.5, 0.2, 0.3]),
                            ("b", "rotation", [0.4, 0.3, 0.2, 0.1, 0.0, -0.1])):
        f = paths.correlation_path("a", other, "ds", "pearson", base) / "correlation_summary.pt"
        f.parent.mkdir(parents=True)
        torch.save({"max_corr": torch.tensor(mx, dtype=torch.float16),
                    "max_corr_ix": torch.tensor([5, 0, 1, 2, 3, 4])}, f)
    df = make_correlation_result_df("a", ["b"], "ds", d_mlp)
    none = df[df.baseline == "none"].reset_index(drop=True)
    assert list(none.layer) == [0, 0, 0, 1, 1, 1] and list(none.neuron) == [0, 1, 2, 0, 1, 2]
    assert none.partner[0] == "1.2" and none.partner[3] == "0.2"
    assert np.isnan(none.max_corr[1]) and none.max_corr[0] == pytest.approx(0.9, abs=1e-3)
    assert len(df[df.baseline == "rotation"]) == 6
    with pytest.raises(UserError, match="correlations.py"):
        make_correlation_result_df("a", ["c"], "ds", d_mlp)


def test_select_universal_falls_back_to_top_excess():
    df = pd.DataFrame({"layer": [0, 0, 1, 1], "neuron": [0, 1, 0, 1], "excess_corr": [0.6, np.nan, 0.2, 0.7]})
    sel, fallback = select_universal(df, 0.5, n_min=2)
    assert not fallback and sorted(sel.excess_corr) == [0.6, 0.7]
    sel, fallback = select_universal(df, 0.5, n_min=3)
    assert fallback and list(sel.excess_corr) == [0.7, 0.6, 0.2]  # NaN never selected


def test_classify_family_rules_in_order():
    rows = [  # feature, vr, prev_feature, prev_vr, position_corr -> family
        ("unigram_the", 0.5, "is_alpha", 0.1, 0.0, "unigram"),
        ("starts_with_a", 0.4, "x", 0.0, 0.0, "alphabet"),
        ("is_single_letter", 0.4, "x", 0.0, 0.0, "alphabet"),
        ("starts_with_upper", 0.4, "x", 0.0, 0.0, "token_property"),  # a case feature, not a letter
        ("is_newline", 0.2, "is_alpha", 0.3, 0.0, "previous_token"),
        ("pos_NOUN", 0.3, "x", 0.0, 0.0, "syntax"),
        ("unigram_the", 0.5, "x", 0.0, -0.8, "position"),  # position wins (measured directly)
        ("is_alpha", 0.05, "x", 0.02, 0.0, "unexplained"),
        (np.nan, np.nan, np.nan, np.nan, 0.9, "position"),  # unexplained by VR, still a position neuron
        (np.nan, np.nan, np.nan, np.nan, np.nan, "unexplained"),
    ]
    df = pd.DataFrame(rows, columns=["feature", "variance_reduction", "prev_feature", "prev_variance_reduction",
                                     "position_corr", "want"])
    got = classify_family(df)
    assert list(got) == list(df.want)
    counts = family_counts(got, pd.Series([0] * 5 + [1] * 5))
    assert counts.loc[0, "alphabet"] == 2 and counts.loc[1, "position"] == 2 and counts.to_numpy().sum() == 10


def test_feature_mask_unigram_and_token_features(tiny_zoo):
    from universal_neurons.viewer_data import get_tokenizer_and_decoded_vocab

    tok, vocab = get_tokenizer_and_decoded_vocab(tiny_zoo[0])
    m = feature_mask(tok, vocab, "unigram_self")
    assert m.shape == (len(vocab),)
    assert all(vocab[i].strip().lower() == "self" for i in np.flatnonzero(m)) and m.any()
    nl = feature_mask(tok, vocab, "is_newline")
    assert all("\n" in vocab[i] for i in np.flatnonzero(nl)) and nl.any()
    with pytest.raises(KeyError):
        feature_mask(tok, vocab, "no_such_feature")


def test_classify_prediction_and_counts():
    df = pd.DataFrame({"layer": [0, 0, 1, 1, 1], "vocab_kurt": [20, 20, 5, np.nan, 11],
                       "vocab_skew": [0.5, -0.5, 1.0, 1.0, 0.0]})
    assert list(classify_prediction(df)) == ["prediction", "suppression", "other", "other", "other"]
    c = counts_by_layer(df)
    assert c.loc[0, "prediction"] == 1 and c.loc[0, "suppression"] == 1 and c.loc[1, "other"] == 3



def test_kind_explanations_pick_each_familys_best_feature():
    """Per neuron the best VR among one family's features and its name; a neuron with no such VR (or
    not in the tables) gets NaN; starts_with_ab is not an alphabet feature."""
    ex = pd.DataFrame({"layer": [0, 0, 1], "neuron": [1, 2, 3]}, index=["0.1", "0.2", "1.3"])
    cur = pd.DataFrame({"unigram_def": [0.5, 0.1], "unigram_if": [0.2, 0.3], "starts_with_d": [0.4, np.nan],
                        "starts_with_ab": [0.9, 0.9], "is_single_letter": [0.1, 0.25]}, index=["0.1", "0.2"])
    prev = pd.DataFrame({"prev_starts_with_x": [0.05, 0.6, 0.2]}, index=["0.1", "0.2", "1.3"])
    u = kind_explanations(ex, cur, prev, "unigram")
    assert list(u["kind_feature"][:2]) == ["unigram_def", "unigram_if"] and list(u["kind_vr"][:2]) == [0.5, 0.3]
    assert pd.isna(u.loc["1.3", "kind_vr"]) and pd.isna(u.loc["1.3", "kind_feature"])
    a = kind_explanations(ex, cur, prev, "alphabet")
    assert list(a["kind_feature"][:2]) == ["starts_with_d", "is_single_letter"]
    p = kind_explanations(ex, cur, prev, "previous_token")
    assert list(p["kind_vr"]) == [0.05, 0.6, 0.2]
    none = kind_explanations(ex, cur[["starts_with_ab"]], prev, "unigram")
    assert none["kind_vr"].isna().all() and none["kind_feature"].isna().all()
    with pytest.raises(ValueError, match="unknown token family"):
        kind_explanations(ex, cur, prev, "bigram")


def test_published_classes_join_and_check_the_rule():
    """The paper's prediction_neurons.csv labels joined with its universal.csv moments: the label from
    is_surpress (CSV text or bools), the rule's class from the moments, NaN for a neuron not universal;
    a flag that is neither True nor False is refused."""
    pred = pd.DataFrame({"layer": [20, 21, 22, 23], "neuron": [1, 2, 3, 4], "feature": ["a", "b", "c", "d"],
                         "is_surpress": ["False", "True", "True", False]})
    uni = pd.DataFrame({"layer": [20, 21, 22, 5], "neuron": [1, 2, 3, 4], "vocab_kurt": [40.0, 15.0, 4.0, 99.0],
                        "vocab_skew": [1.2, -0.8, -2.0, 1.0]})
    out = published_classes(pred, uni)
    assert list(out["published"]) == ["prediction", "suppression", "suppression", "prediction"]
    assert list(out["rule"][:3]) == ["prediction", "suppression", "other"] and pd.isna(out["rule"][3])
    assert np.isnan(out["vocab_kurt"][3]) and out["vocab_kurt"][1] == 15.0  # 23.4 is not 5.4
    with pytest.raises(ValueError, match="is_surpress"):
        published_classes(pred.assign(is_surpress=["yes", "True", "True", "False"]), uni)

def test_vocab_tokens_skips_missing_ids():
    comps = {"U_out": {"top_vocab_ix": torch.tensor([[[2, 0, -1]]]), "top_vocab_value": torch.tensor([[[0.9, 0.5, 0.0]]]),
                       "bottom_vocab_ix": torch.tensor([[[1, -1, -1]]]), "bottom_vocab_value": torch.tensor([[[-0.7, 0, 0]]])}}
    vocab = ["a", "b", "c"]
    assert vocab_tokens(comps, 0, 0, vocab, 3) == [("c", pytest.approx(0.9)), ("a", pytest.approx(0.5))]
    assert vocab_tokens(comps, 0, 0, vocab, 3, bottom=True) == [("b", pytest.approx(-0.7))]


def test_position_correlations_match_float64_brute_force():
    g = torch.Generator().manual_seed(0)
    B, P, L, D = 5, 9, 2, 4
    pos = torch.arange(P, dtype=torch.float32).view(1, P, 1, 1)
    acts = torch.randn(B, P, L, D, generator=g)
    acts[..., 0, 0] += 0.5 * pos[..., 0, 0]  # a position neuron
    acts[..., 0, 1] = 1e4 + acts[..., 0, 1] * 1e-2 - 0.3 * pos[..., 0, 0] * 1e-2  # large mean, small spread
    acts[..., 1, 2] = 3.0  # constant -> NaN
    acts[:, 0] = 100.0  # BOS position: left out
    got = position_correlations(acts).numpy()
    a = acts[:, 1:].double().numpy()
    p = np.broadcast_to(np.arange(1, P, dtype=np.float64)[None, :], (B, P - 1)).ravel()
    for l in range(L):
        for n in range(D):
            x = a[:, :, l, n].ravel()
            want = np.nan if x.std() == 0 else np.corrcoef(x, p)[0, 1]
            np.testing.assert_allclose(got[l, n], want, rtol=1e-6, atol=1e-9, equal_nan=True)
    assert got[0, 0] > 0.5 and got[0, 1] < -0.3
    np.testing.assert_allclose(mean_by_position(acts, 0, 0), acts[:, :, 0, 0].double().mean(0).numpy())


def test_topic_scores_match_brute_force():
    edges = bin_edges(16, -2.0, 2.0)
    g = torch.Generator().manual_seed(1)
    summaries = {name: {"neuron_bin_counts": torch.randint(0, 50, (2, 3, 17), generator=g),
                        "neuron_bin_edges": edges} for name in ("code", "prose", "tests")}
    summaries["code"]["neuron_bin_counts"][1, 2] = 0  # no tokens: NaN moments
    means, stds = subset_moments(summaries)
    assert list(means.columns) == ["code", "prose", "tests"] and means.index[4] == (1, 1)
    m = histogram_moments(summaries["prose"]["neuron_bin_counts"], edges)
    np.testing.assert_allclose(means.loc[(0, 2), "prose"], float(m["mean"][0, 2]))
    np.testing.assert_allclose(stds.loc[(1, 0), "prose"], float(m["var"][1, 0].sqrt()))
    z = topic_scores(means, stds)
    mu, sd = means.loc[(0, 1)].to_numpy(), stds.loc[(0, 1)].to_numpy()
    want = (mu[1] - (mu[0] + mu[2]) / 2) / np.sqrt((sd ** 2).mean())
    np.testing.assert_allclose(z.loc[(0, 1), "prose"], want, rtol=1e-12)
    assert z.loc[(1, 2)].isna().all()  # a subset without tokens poisons the neuron's scores, never silently 0
    with pytest.raises(ValueError):
        topic_scores(means[["code"]], stds[["code"]])
