"""Activation summaries against a float64 brute force on the tiny zoo model."""
from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import torch

from universal_neurons import activation_summary as su
from universal_neurons.errors import UserError

BOS = 0  # the toy tokenizer's BOS = EOS = PAD id


@pytest.fixture(scope="module")
def model(tiny_zoo):
    from universal_neurons.models import load_model

    return load_model(tiny_zoo[0])


def make_tokens(n_seq, ctx, vocab_ids, seed=0, bos_inside=True):
    """[n_seq, ctx] rows starting with BOS, ids drawn from vocab_ids, some BOS inside rows too."""
    rng = np.random.default_rng(seed)
    t = rng.choice(vocab_ids, size=(n_seq, ctx))
    t[:, 0] = BOS
    if bos_inside:
        t[::2, ctx // 2] = BOS  # document separators (BOS = EOS): not counted
    return torch.as_tensor(t, dtype=torch.long)


@pytest.fixture(scope="module", params=[False, True], ids=["all-positions", "exclude-special"])
def exclude(request):
    """Default: every position counts (the original's); --exclude_special_tokens: BOS/EOS/PAD do not."""
    return request.param


@pytest.fixture(scope="module")
def reference(model, exclude):
    """Tokens and brute-force float64 activations: (tokens [n, P], pre, post [n, P, L, D], mask [n, P])."""
    from universal_neurons.capture import mlp_activations

    # few distinct ids, so every seen token fits the vocab top-k (negative maxima must then show up)
    ids = np.random.default_rng(1).choice(np.arange(1, model.cfg.d_vocab), 40, replace=False)
    tokens = make_tokens(12, model.cfg.n_ctx, ids)
    pre = mlp_activations(model, tokens, "mlp.hook_pre").double().numpy()
    post = mlp_activations(model, tokens, "mlp.hook_post").double().numpy()
    mask = (tokens != BOS).numpy() if exclude else np.ones(tokens.shape, dtype=bool)
    return tokens, pre, post, mask


@pytest.fixture(scope="module")
def summary(model, reference, exclude):
    tokens = reference[0]
    return su.summarize_tokens(model, tokens, n_bins=16, bin_min=-1.0, bin_max=1.0, top_k=20, vocab_k=100,
                               batch_size=5, exclude_special=exclude, progress=False)


def test_histogram_matches_definition(summary, reference):
    _, pre, _, mask = reference
    x = pre[mask]  # [T, L, D]
    e = summary[su.BIN_EDGES].double().numpy()
    assert np.allclose(e, np.linspace(-1, 1, 16))
    lo = np.concatenate([[-np.inf], e])  # bin i holds (lo[i], hi[i]]
    hi = np.concatenate([e, [np.inf]])
    brute = ((x[..., None] > lo) & (x[..., None] <= hi)).sum(0)  # [L, D, 17]
    counts = summary[su.BIN_COUNTS]
    assert counts.dtype == torch.int32 and counts.shape == brute.shape
    assert brute[..., 0].sum() > 0 and brute[..., -1].sum() > 0  # both open tails are exercised
    np.testing.assert_array_equal(counts.numpy(), brute)


def test_histogram_edge_convention():
    edges = torch.tensor([0.0, 1.0, 2.0])
    x = torch.tensor([[-5.0], [0.0], [0.5], [1.0], [1.0001], [2.0], [2.5], [math.nan]])
    counts = torch.zeros(1, 4, dtype=torch.int64)
    su.update_histogram(counts, x, edges)
    # bins: (-inf, 0], (0, 1], (1, 2], (2, inf) ; NaN lands in the last bin
    assert counts.tolist() == [[2, 2, 2, 2]]


def test_moments_quantiles_and_frequency_from_histograms():
    rng = np.random.default_rng(0)
    raw = np.stack([rng.normal(3.0, 2.0, 20000), rng.gamma(2.0, 1.0, 20000) - 1.0,
                    np.full(20000, 0.3), rng.normal(-0.5, 0.1, 20000)], axis=1)  # [T, D]
    edges = su.bin_edges(256, -10, 15)
    w = float(edges[1] - edges[0])
    counts = torch.zeros(4, 257, dtype=torch.int64)
    su.update_histogram(counts, torch.tensor(raw, dtype=torch.float32), edges)
    m = su.histogram_moments(counts, edges)
    assert np.all(np.abs(m["mean"].numpy() - raw.mean(0)) <= w / 2)
    std = np.sqrt(m["var"].numpy())
    assert np.all(np.abs(std[[0, 1, 3]] - raw.std(0)[[0, 1, 3]]) <= w)
    assert m["var"][2] == 0 and math.isnan(m["kurt"][2])  # a constant neuron: no shape moments
    assert abs(m["kurt"][0] - 3.0) < 0.15 and abs(m["skew"][0]) < 0.1  # Gaussian
    skew_g = ((raw[:, 1] - raw[:, 1].mean()) ** 3).mean() / raw[:, 1].std() ** 3
    assert abs(m["skew"][1] - skew_g) < 0.1
    q = su.histogram_quantiles(counts, edges, [0.01, 0.5, 0.99]).numpy()
    assert np.all(np.abs(q - np.quantile(raw, [0.01, 0.5, 0.99], axis=0).T) <= w)
    freq = su.histogram_fraction_above(counts, edges, 0.0).numpy()
    assert np.all(np.abs(freq - (raw > 0).mean(0)) <= counts.numpy()[:, 100:104].sum(1) / 20000 + 1e-12)
    assert math.isnan(su.histogram_moments(torch.zeros(1, 257), edges)["mean"][0])  # no tokens


def test_top_k_examples_match_brute_force(summary, reference):
    tokens, _, post, mask = reference
    n, P, L, D = post.shape
    flat_post = post.reshape(n * P, L, D)
    idx, val = summary[su.TOP_INDEX], summary[su.TOP_VALUE]
    assert idx.dtype == torch.int64 and val.dtype == torch.float16 and idx.shape == (L, D, 20)
    counted = np.flatnonzero(mask.reshape(-1))
    for l in range(L):
        for d in range(D):
            brute = np.sort(flat_post[counted, l, d])[::-1][:20]
            np.testing.assert_allclose(val[l, d].float().numpy(), brute, rtol=2e-3, atol=1e-3)
            ix = idx[l, d].numpy()
            assert np.isin(ix, counted).all()  # only counted positions (never BOS when excluded), no empty slot
            np.testing.assert_allclose(flat_post[ix, l, d], val[l, d].float().numpy(), rtol=2e-3, atol=1e-3)


def test_vocab_statistics_match_brute_force(summary, reference, model):
    tokens, _, post, mask = reference
    tok = tokens.numpy()[mask]
    x = post[mask]  # [T, L, D]
    seen = np.unique(tok)
    vmax = np.stack([x[tok == t].max(0) for t in seen], -1)  # [L, D, n_seen]
    vmean = np.stack([x[tok == t].mean(0) for t in seen], -1)
    np.testing.assert_array_equal(summary[su.VOCAB_COUNTS].numpy(), np.bincount(tok, minlength=model.cfg.d_vocab))
    assert (summary[su.VOCAB_COUNTS][BOS] == 0) == (~mask).any()  # BOS counted unless excluded
    assert (vmax < 0).any()  # some neuron's maximum over a token is negative: it must be kept
    for name, ix_name, brute in ((su.VOCAB_MAX, su.VOCAB_MAX_IX, vmax), (su.VOCAB_MEAN, su.VOCAB_MEAN_IX, vmean)):
        v, ix = summary[name], summary[ix_name]
        assert v.dtype == torch.float16 and ix.dtype == torch.int32 and v.shape == (*post.shape[2:], 100)
        k = len(seen)  # 40 seen tokens < 100 slots: the rest are empty
        assert (ix[..., k:] == -1).all() and torch.isnan(v[..., k:]).all()
        assert not torch.isnan(v[..., :k]).any()
        order = np.argsort(-brute, axis=-1)
        np.testing.assert_allclose(v[..., :k].float().numpy(), np.take_along_axis(brute, order, -1),
                                   rtol=2e-3, atol=1e-3)
        # the ids are the seen tokens, and each id's value is that token's statistic
        pos = np.searchsorted(seen, ix[..., :k].numpy())
        assert np.array_equal(seen[pos], ix[..., :k].numpy())
        np.testing.assert_allclose(np.take_along_axis(brute, pos, -1), v[..., :k].float().numpy(), rtol=2e-3, atol=1e-3)
    assert (summary[su.VOCAB_MAX][..., :40].float() < 0).any()


def test_full_vocab_tensors_and_truncation_agree(model, reference, summary, exclude):
    tokens = reference[0]
    full = su.summarize_tokens(model, tokens, n_bins=16, bin_min=-1.0, bin_max=1.0, top_k=20, vocab_k=-1,
                               batch_size=5, exclude_special=exclude, progress=False)
    V = model.cfg.d_vocab
    assert full[su.VOCAB_MAX].shape == (*summary[su.VOCAB_MAX].shape[:2], V) and su.VOCAB_MAX_IX not in full
    seen = summary[su.VOCAB_COUNTS] > 0
    assert torch.isnan(full[su.VOCAB_MAX][..., ~seen]).all() and torch.isnan(full[su.VOCAB_MEAN][..., ~seen]).all()
    ix = summary[su.VOCAB_MAX_IX][..., :40].long()
    assert torch.equal(full[su.VOCAB_MAX].gather(-1, ix), summary[su.VOCAB_MAX][..., :40])
    none = su.summarize_tokens(model, tokens, n_bins=16, bin_min=-1.0, bin_max=1.0, top_k=20, vocab_k=0,
                               batch_size=5, exclude_special=exclude, progress=False)
    assert su.VOCAB_MAX not in none and su.VOCAB_MEAN_IX not in none
    assert torch.equal(none[su.BIN_COUNTS], summary[su.BIN_COUNTS])


def test_dataset_smaller_than_k(model):
    tokens = make_tokens(2, model.cfg.n_ctx, np.arange(1, 30), seed=3, bos_inside=False)  # 2 x 31 counted
    out = su.summarize_tokens(model, tokens, top_k=100, vocab_k=50, batch_size=1, exclude_special=True,
                              progress=False)
    n_counted = 2 * (model.cfg.n_ctx - 1)
    idx, val = out[su.TOP_INDEX], out[su.TOP_VALUE]
    assert (idx[..., :n_counted] >= 0).all() and (idx[..., n_counted:] == -1).all()
    assert torch.isnan(val[..., n_counted:]).all() and not torch.isnan(val[..., :n_counted]).any()
    assert not (idx == 0).any()  # position 0 (BOS) never, and empty slots are -1, not 0
    n_seen = int((out[su.VOCAB_COUNTS] > 0).sum())
    assert (out[su.VOCAB_MAX_IX][..., n_seen:] == -1).all() and (out[su.VOCAB_MAX_IX][..., :n_seen] > 0).all()


def test_layer_groups_equal_unblocked(model, reference, summary, exclude):
    tokens = reference[0]
    one_layer = su.vocab_bytes_per_layer(model.cfg.d_mlp, model.cfg.d_vocab) / su.GB
    assert su.plan_layer_groups(model.cfg.n_layers, model.cfg.d_mlp, model.cfg.d_vocab, 100, 1.5 * one_layer) == [[0], [1]]
    blocked = su.summarize_tokens(model, tokens, n_bins=16, bin_min=-1.0, bin_max=1.0, top_k=20, vocab_k=100,
                                  batch_size=5, max_memory_gb=1.5 * one_layer, exclude_special=exclude, progress=False)
    assert blocked.keys() == summary.keys()
    for k in summary:
        torch.testing.assert_close(blocked[k], summary[k], rtol=0, atol=0, equal_nan=True)


def test_plan_layer_groups():
    per = su.vocab_bytes_per_layer(3072, 50257) / su.GB  # GPT2-small: 1.15 GB per layer
    assert su.plan_layer_groups(12, 3072, 50257, 100, 4.0) == [list(range(i, i + 3)) for i in range(0, 12, 3)]
    groups = su.plan_layer_groups(12, 3072, 50257, 100, 5.5 * per)  # 5 fit: 3 passes of 4, not 5 + 5 + 2
    assert [len(g) for g in groups] == [4, 4, 4] and sum(groups, []) == list(range(12))
    assert su.plan_layer_groups(12, 3072, 50257, 0, 0.0) == [list(range(12))]
    with pytest.raises(UserError, match="one layer"):
        su.plan_layer_groups(12, 3072, 50257, 100, 0.5 * per)
    with pytest.raises(UserError, match="full"):
        su.plan_layer_groups(12, 3072, 50257, -1, 4.0)


def _save_dataset(model_name, name, tokens):
    from universal_neurons.models import load_tokenizer, model_family
    from universal_neurons.token_datasets import save_token_dataset

    save_token_dataset(tokens.numpy(), model_family(model_name), name, load_tokenizer(model_name))


def test_cli_writes_skips_and_reports_errors(tiny_zoo, reference, exclude, capsys):
    import summary as cli

    model_name = tiny_zoo[0]
    _save_dataset(model_name, "rand.test.x.32", reference[0])
    args = ["--model", model_name, "--token_dataset", "rand.test.x.32", "--batch_size", "5", "--n_bins", "16",
            "--bin_min", "-1", "--bin_max", "1", *(["--exclude_special_tokens"] if exclude else []),
            "--top_k_dataset_examples", "20"]
    cli.main(args)
    folder = su.summary_path(model_name, "rand.test.x.32")
    names = {p.name for p in folder.iterdir()}
    assert names == {f"{n}.pt" for n in (su.BIN_EDGES, su.BIN_COUNTS, su.TOP_INDEX, su.TOP_VALUE, su.VOCAB_MAX,
                                         su.VOCAB_MAX_IX, su.VOCAB_MEAN, su.VOCAB_MEAN_IX, su.VOCAB_COUNTS)} | {su.CONFIG_FILE,
                                                                                                  su.RUN_FILE}
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")]  # no temporary left behind
    meta = json.loads((folder / su.CONFIG_FILE).read_text())
    assert meta["n_tokens_counted"] == int(reference[3].sum())
    assert meta["settings"]["exclude_special_tokens"] == exclude and ("BOS" in meta["counted_positions"])
    stamp = (folder / "neuron_bin_counts.pt").stat().st_mtime_ns
    cli.main(args)  # same settings: skipped
    assert (folder / "neuron_bin_counts.pt").stat().st_mtime_ns == stamp
    assert "skipped" in capsys.readouterr().out
    run = json.loads((folder / su.RUN_FILE).read_text())
    assert run["top_k"] == 20 and run["model_fingerprint"] and run["dataset_fingerprint"] and run["code_version"]
    with pytest.raises(SystemExit) as e:  # other settings: one message, the finished folder untouched
        cli.main(args[:-2] + ["--top_k_dataset_examples", "7"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "top_k 20 -> 7" in err and "--overwrite" in err
    assert (folder / "neuron_bin_counts.pt").stat().st_mtime_ns == stamp
    cli.main(args[:-2] + ["--top_k_dataset_examples", "7", "--overwrite"])  # replaced on request
    assert torch.load(folder / "neuron_max_activating_index.pt", weights_only=True).shape[-1] == 7
    for bad in (["--token_dataset", "no.such.set"], ["--n_bins", "1"], ["--top_vocab_k_truncate", "-2"]):
        with pytest.raises(SystemExit) as e:
            cli.main(args + bad)
        assert e.value.code == 2
    assert "no.such.set" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------
# Viewer loaders and panels
# ------------------------------------------------------------------------------------------------

def test_short_names():
    from universal_neurons.viewer_data import short_names

    assert short_names(["python-stdlib.code.64", "python-stdlib.prose.64", "python-stdlib.all-1m.64"]) == {
        "python-stdlib.code.64": "code", "python-stdlib.prose.64": "prose", "python-stdlib.all-1m.64": "all-1m"}
    assert short_names(["pile.test.arxiv.512", "pile.test.pile_cc.512"]) == {
        "pile.test.arxiv.512": "arxiv", "pile.test.pile_cc.512": "pile_cc"}
    assert short_names(["pile.test.arxiv.512"]) == {"pile.test.arxiv.512": "arxiv"}
    assert short_names(["pile.test.arxiv.512", "pile.test.arxiv.1024"]) == {
        "pile.test.arxiv.512": "512", "pile.test.arxiv.1024": "1024"}
    mixed = ["pile.test.arxiv.512", "python-stdlib.code.64"]
    assert short_names(mixed) == {n: n for n in mixed}
    assert short_names(["a.b", "a.b.c"]) == {"a.b": "a.b", "a.b.c": "a.b.c"}  # one would be empty


@pytest.fixture(scope="module")
def viewer_setup(tiny_zoo, reference, tmp_path_factory):
    """Two summarised datasets and fake weight summaries under a module folder."""
    import os

    root = tmp_path_factory.mktemp("viewer")
    old = os.getcwd()
    os.chdir(root)
    try:
        tokens = reference[0]
        for name, rows in (("rand.test.one.32", tokens), ("rand.test.two.32", tokens.flip(0))):
            _save_dataset(tiny_zoo[0], name, rows)
        su.run_summary(tiny_zoo[0], ["rand.test.one.32", "rand.test.two.32"], "summary_data", top_k=20,
                       batch_size=6, progress=False)
    finally:
        os.chdir(old)
    return tiny_zoo[0], root


def _fake_weights(folder, L, D, V, H=2):
    import pandas as pd

    folder.mkdir(parents=True)
    pd.DataFrame({"layer": np.repeat(np.arange(L), D), "neuron_ix": np.tile(np.arange(D), L),
                  "input_weight_norm": 1.0, "input_bias": 0.0, "output_weight_norm": 1.0,
                  "in_out_sim": 0.0}).to_csv(folder / "neuron_stats.csv", index=False)
    g = torch.Generator().manual_seed(0)
    torch.save(torch.rand(L, D, L, H, generator=g).half(), folder / "k_comps.pt")

    def rows(what, C, k):
        top = torch.rand(L, D, C, generator=g).topk(k, -1)
        return {f"top_{what}_value": top.values, f"top_{what}_ix": top.indices,
                f"bottom_{what}_value": -top.values, f"bottom_{what}_ix": top.indices.flip(-1),
                "comp_hist": torch.randint(0, 5, (L, D, 101), dtype=torch.int32, generator=g)}

    torch.save({k: rows("vocab", V, 100) for k in ("E_in", "U_in", "E_out", "U_out")}, folder / "vocab_comps.pt")


def test_loaders(viewer_setup, monkeypatch):
    from universal_neurons import viewer_data as vd

    model_name, root = viewer_setup
    monkeypatch.chdir(root)
    assert vd.summary_datasets(model_name) == ["rand.test.one.32", "rand.test.two.32"]
    alls = vd.load_all_summaries(model_name)
    assert list(alls) == ["one", "two"]
    one = vd.load_dataset_summary(model_name, "rand.test.one.32")
    assert set(one) == {su.BIN_EDGES, su.BIN_COUNTS, su.TOP_INDEX, su.TOP_VALUE, su.VOCAB_MAX, su.VOCAB_MAX_IX,
                        su.VOCAB_MEAN, su.VOCAB_MEAN_IX, su.VOCAB_COUNTS}
    assert torch.equal(alls["one"][su.BIN_COUNTS], one[su.BIN_COUNTS])
    with pytest.raises(UserError, match="summary.py --model"):
        vd.load_dataset_summary(model_name, "rand.test.none.32")
    assert vd.load_weights_summary(model_name) == {}
    L, D, _ = one[su.BIN_COUNTS].shape
    V = len(one[su.VOCAB_COUNTS])
    weights_dir = root / "summary_data" / model_name / "weights"
    _fake_weights(weights_dir, L, D, V)
    try:
        w = vd.load_weights_summary(model_name)
    finally:
        shutil.rmtree(weights_dir)
    assert set(w) == {"neuron_stats", "k_comps", "vocab_comps"} and len(w["neuron_stats"]) == L * D
    assert set(w["vocab_comps"]) == {"E_in", "U_in", "E_out", "U_out"}
    tok, vocab = vd.get_tokenizer_and_decoded_vocab(model_name)
    assert len(vocab) == V and vocab[tok.bos_token_id] == tok.bos_token


def test_panel_data(reference):
    from universal_neurons import viewer_data as vd

    edges = torch.tensor([0.0, 1.0, 2.0])
    counts = torch.zeros(4)
    counts[2] = 5  # bin 2 holds (1, 2]
    v, e = vd.histogram_stairs(counts, edges)
    assert list(e) == [-1.0, 0.0, 1.0, 2.0, 3.0] and (e[2], e[3]) == (1.0, 2.0) and v[2] == 5
    tokens = torch.arange(40).view(4, 10)
    summary = {su.TOP_INDEX: torch.tensor([[[12, 9, 30, -1]]]),
               su.TOP_VALUE: torch.tensor([[[3.0, 2.0, 1.0, math.nan]]]).half(),
               su.VOCAB_MAX: torch.tensor([[[0.5, -0.25, math.nan]]]).half(),
               su.VOCAB_MAX_IX: torch.tensor([[[7, 3, -1]]], dtype=torch.int32)}
    ex = vd.max_activating_examples(summary, tokens, 0, 0, n=10, before=4, after=3)
    assert len(ex) == 3  # the empty slot is not an example
    assert ex[0]["seq"] == 1 and ex[0]["pos"] == 2 and ex[0]["before"] == [10, 11]  # clipped at the row start
    assert ex[0]["token"] == 12 and ex[0]["after"] == [13, 14, 15]
    assert ex[1]["before"] == [5, 6, 7, 8] and ex[1]["after"] == []  # clipped at the row end, no wrap into row 1
    assert vd.top_tokens(summary, 0, 0, "max") == [(7, 0.5), (3, -0.25)]
    full = {su.VOCAB_MAX: torch.tensor([[[0.1, math.nan, -0.3, 0.2]]]).half()}
    assert [i for i, _ in vd.top_tokens(full, 0, 0, "max", 10)] == [3, 0, 2]
    assert vd.top_tokens(full, 0, 0, "mean") == []


def test_display_summary_panels_and_notes(viewer_setup, monkeypatch):
    from matplotlib.figure import Figure

    from universal_neurons import viewer_data as vd

    model_name, root = viewer_setup
    monkeypatch.chdir(root)
    figs = vd.display_summary(model_name, 1, 3, show=False)
    assert {"activation_percentiles", "activation_distribution", "top_tokens_max", "top_tokens_mean",
            "max_activating_examples", "weight_cosines", "attention_composition"} <= set(figs)
    assert all(isinstance(f, Figure) for f in figs.values())
    note = figs["attention_composition"].axes[0].texts[0].get_text()
    assert "weights.py --model" in note  # missing weight artifacts name their command
    texts = figs["max_activating_examples"].axes[0].texts  # per example: value, left, token, right
    assert len(texts) == 4 * 10 and sum(t.get_bbox_patch() is not None for t in texts) == 10
    q = vd.activation_percentiles(vd.load_all_summaries(model_name), 1, 3)
    assert set(q) == {"one", "two"} and np.all(np.diff(q["one"]) >= 0)
    L, D, _ = vd.load_dataset_summary(model_name, "rand.test.one.32")[su.BIN_COUNTS].shape
    _fake_weights(root / "summary_data" / model_name / "weights", L, D, 512)
    try:
        figs = vd.display_summary(model_name, 1, 3, datasets=["rand.test.two.32"], show=False)
        assert {"top_vocab_tokens", "attention_composition", "weight_cosines"} <= set(figs)
        assert len(figs["attention_composition"].axes) == 2  # k heatmap and its colour bar
    finally:
        shutil.rmtree(root / "summary_data" / model_name / "weights")
    with pytest.raises(UserError, match="out of range"):
        vd.display_summary(model_name, 5, 3, show=False)


def test_record_holds_the_weights_after_the_load(tiny_zoo, reference, monkeypatch, capsys):
    """A model that only exists once loaded (a zoo model trained on load, a hub model downloaded on load)
    is fingerprinted after the load, so an identical second run skips instead of stopping."""
    from universal_neurons import models

    model_name = tiny_zoo[0]
    _save_dataset(model_name, "rand.test.f.32", reference[0])
    loaded = {"n": 0}
    real_load = models.load_model

    def load(*a, **k):
        loaded["n"] += 1
        return real_load(*a, **k)

    monkeypatch.setattr(models, "load_model", load)
    monkeypatch.setattr(models, "model_fingerprint", lambda name: "after-load" if loaded["n"] else "before-load")
    kw = dict(n_bins=16, bin_min=-1.0, bin_max=1.0, top_k=5, vocab_k=0, batch_size=5, progress=False)
    su.run_summary(model_name, "rand.test.f.32", **kw)
    run = json.loads((su.summary_path(model_name, "rand.test.f.32") / su.RUN_FILE).read_text())
    assert run["model_fingerprint"] == "after-load" and loaded["n"] == 1
    su.run_summary(model_name, "rand.test.f.32", **kw)  # fingerprinted before any load now: the same
    assert loaded["n"] == 1
