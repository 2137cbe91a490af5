"""Streaming correlations vs an independent float64 brute force (numpy), on adversarial data."""
import numpy as np
import pytest
import torch

from universal_neurons.correlations import (
    finalize,
    CorrelationFinalizer, CorrelationStats, N_TAIL, load_correlation_matrix, quantize_rows_int8,
    rotate_layers, rotation_matrices,
)

L1, D1, L2, D2 = 2, 24, 3, 16
N1, N2 = L1 * D1, L2 * D2


def gelu_data(t=4000, seed=0, mean_offset=0.0):
    """GELU of correlated Gaussians (a shared latent) for two 'models': x [t, N1], y [t, N2]."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(t, 6, generator=g, dtype=torch.float64)
    x = torch.nn.functional.gelu(z @ torch.randn(6, N1, generator=g, dtype=torch.float64)
                                 + 0.7 * torch.randn(t, N1, generator=g, dtype=torch.float64))
    y = torch.nn.functional.gelu(z @ torch.randn(6, N2, generator=g, dtype=torch.float64)
                                 + 0.7 * torch.randn(t, N2, generator=g, dtype=torch.float64))
    if mean_offset:
        # neurons whose mean is `mean_offset` x their std
        x = x / x.std(0) + mean_offset
        y = y / y.std(0) + mean_offset
    return x.float(), y.float()


def ref_pearson(x, y):
    """Brute-force float64 Pearson [N1, N2] with NaN for constant neurons."""
    x, y = x.double().numpy(), y.double().numpy()
    xc, yc = x - x.mean(0), y - y.mean(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (xc.T @ yc) / np.outer(np.sqrt((xc ** 2).sum(0)), np.sqrt((yc ** 2).sum(0)))


def run(x, y, batch=900, stats=None, **kw):
    stats = stats or CorrelationStats(n_rows=x.shape[1], layers_2=L2, d_2=D2, **kw)
    for i in range(0, x.shape[0], batch):
        stats.update(x[i:i + batch], y[i:i + batch], batch_id=i)
    return stats


def test_pearson_matches_float64_reference_gelu():
    x, y = gelu_data()
    err = np.abs(run(x, y).correlation_matrix().numpy() - ref_pearson(x, y)).max()
    assert err <= 1e-4


def test_pearson_large_mean():
    x, y = gelu_data(mean_offset=1000.0)
    ref = ref_pearson(x, y)
    err = np.abs(run(x, y).correlation_matrix().numpy() - ref).max()
    assert err <= 1e-3
    # a naive uncentred float32 computation fails here, so the test can fail
    xs, ys = x.sum(0), y.sum(0)
    naive = (x.t() @ y - torch.outer(xs, ys) / x.shape[0]) / torch.outer(
        (x.square().sum(0) - xs ** 2 / x.shape[0]).clamp_min(1e-9).sqrt(),
        (y.square().sum(0) - ys ** 2 / x.shape[0]).clamp_min(1e-9).sqrt())
    assert np.abs(naive.numpy() - ref).max() > 1e-2


def test_compensated_accumulator_keeps_float64_precision():
    """3000 batch partials into the float32 + bfloat16 pair stay within 1e-8 of float64, where a
    plain float32 running sum drifts by ~1e-6."""
    from universal_neurons.correlation_stats import _compensated_add_
    g = torch.Generator().manual_seed(0)
    hi, lo = torch.zeros(32, 48), torch.zeros(32, 48, dtype=torch.bfloat16)
    ref, plain = torch.zeros(32, 48, dtype=torch.float64), torch.zeros(32, 48)
    for _ in range(3000):
        p = torch.rand(32, 48, generator=g) * 100 + 1000
        ref += p.double()
        plain += p
        _compensated_add_(hi, lo, p, torch.empty(7, 48))
    assert ((hi.double() + lo.double() - ref).abs() / ref).max() < 1e-8
    assert ((plain.double() - ref).abs() / ref).max() > 1e-7


def test_dead_neurons_are_nan_and_never_poison():
    x, y = gelu_data()
    x[:, 5] = 3.25                      # constant
    x[:, 7] = 0.0                       # dead
    y[:, 2] = -0.17                     # constant column
    y[:, 9] = 1e4                       # constant, large
    y[:, 11] = 0.0
    y[0, 11] = float("nan")             # NaN data -> invalid neuron
    stats = run(x, y)
    c = stats.correlation_matrix().numpy()
    assert np.isnan(c[[5, 7]]).all() and np.isnan(c[:, [2, 9, 11]]).all()
    alive = np.setdiff1d(np.arange(N2), [2, 9, 11])
    ref = ref_pearson(x, y)
    assert np.abs(c[:, alive][[i for i in range(N1) if i not in (5, 7)]]
                  - ref[:, alive][[i for i in range(N1) if i not in (5, 7)]]).max() < 1e-4
    s = finalize(stats)["none"]
    summ, summ_t = s["summary"], s["summary_T"]
    assert summ["n_dead"] == 2 and summ["dead_mask"].nonzero().flatten().tolist() == [5, 7]
    assert summ_t["n_dead"] == 3 and summ["n_dead_other"] == 3
    for i in range(N1):
        if i in (5, 7):
            assert torch.isnan(summ["max_corr"][i].float()) and summ["max_corr_ix"][i] == -1
            continue
        row = np.where(np.isin(np.arange(N2), alive), ref[i], -np.inf)
        assert summ["max_corr_ix"][i] == row.argmax()
        assert abs(float(summ["max_corr"][i]) - row.max()) < 1e-3
        assert summ["max_tail_corr_ix"][i].tolist()[:3] == list(np.argsort(-row)[:3])
        assert set(summ["max_tail_corr_ix"][i].tolist()).isdisjoint({2, 9, 11})
        assert summ["bin_counts"][i].sum() == len(alive)
    assert not torch.isnan(summ["max_corr"].float()[[0, 1, 2]]).any()
    assert torch.isnan(summ_t["max_corr"].float()[[2, 9, 11]]).all()


def test_summary_matches_brute_force():
    x, y = gelu_data(seed=3)
    ref = ref_pearson(x, y)
    res = finalize(run(x, y), block_rows=7)["none"]      # several row blocks
    edges = np.linspace(-1, 1, 100)
    for summ, m in ((res["summary"], ref), (res["summary_T"], ref.T)):
        expect = {
            "diag_corr": ((min(m.shape),), torch.float16), "obo_corr": ((min(m.shape[0], m.shape[1] - 1),), torch.float16),
            "bin_counts": ((m.shape[0], 101), torch.int32),
            "max_corr": ((m.shape[0],), torch.float16), "max_corr_ix": ((m.shape[0],), torch.int32),
            "min_corr": ((m.shape[0],), torch.float16), "min_corr_ix": ((m.shape[0],), torch.int32),
            "max_tail_corr": ((m.shape[0], N_TAIL), torch.float16), "max_tail_corr_ix": ((m.shape[0], N_TAIL), torch.int32),
            "min_tail_corr": ((m.shape[0], N_TAIL), torch.float16), "min_tail_corr_ix": ((m.shape[0], N_TAIL), torch.int32),
            "corr_mean": ((m.shape[0],), torch.float16), "corr_var": ((m.shape[0],), torch.float16),
            "corr_skew": ((m.shape[0],), torch.float16), "corr_kurt": ((m.shape[0],), torch.float16),
        }
        for key, (shape, dtype) in expect.items():
            assert tuple(summ[key].shape) == shape and summ[key].dtype == dtype, key
        f = lambda k: summ[k].float().numpy()
        assert np.abs(f("diag_corr") - np.diagonal(m)).max() < 1e-3
        assert np.abs(f("obo_corr") - np.diagonal(m, 1)).max() < 1e-3
        assert (summ["max_corr_ix"].numpy() == m.argmax(1)).all()
        assert (summ["min_corr_ix"].numpy() == m.argmin(1)).all()
        assert np.abs(f("max_corr") - m.max(1)).max() < 1e-3
        assert np.abs(f("min_corr") - m.min(1)).max() < 1e-3
        k = min(N_TAIL, m.shape[1])
        top = -np.sort(-m, 1)[:, :k]
        assert np.abs(f("max_tail_corr")[:, :k] - top).max() < 1e-3
        assert np.abs(f("min_tail_corr")[:, :k] - np.sort(m, 1)[:, :k]).max() < 1e-3
        assert np.isnan(f("max_tail_corr")[:, k:]).all() and (summ["max_tail_corr_ix"][:, k:] == -1).all()
        # bin i holds edges[i-1] < c <= edges[i]  (np.searchsorted side='left' == bucketize right=False)
        bins = np.stack([np.bincount(np.searchsorted(edges, r, side="left"), minlength=101) for r in m])
        assert (summ["bin_counts"].numpy() == bins).all()
        mu, var = m.mean(1), m.var(1)
        skew = ((m - mu[:, None]) ** 3).mean(1) / var ** 1.5
        kurt = ((m - mu[:, None]) ** 4).mean(1) / var ** 2
        for key, want in (("corr_mean", mu), ("corr_var", var), ("corr_skew", skew), ("corr_kurt", kurt)):
            assert np.allclose(f(key), want, rtol=2e-3, atol=2e-4), key


def test_rotation_is_orthogonal_haar_and_seeded():
    r = rotation_matrices(7, 0, 3, 32)
    eye = torch.eye(32, dtype=torch.float64)
    assert (r @ r.transpose(1, 2) - eye).abs().max() < 1e-12
    assert torch.equal(r, rotation_matrices(7, 0, 3, 32))
    assert not torch.allclose(r, rotation_matrices(8, 0, 3, 32))
    assert not torch.allclose(r[0], r[1])
    # Haar (sign-fixed QR): the diagonal has no bias towards +1, unlike plain QR's Q
    diag = torch.cat([rotation_matrices(s, 0, 4, 64).diagonal(dim1=1, dim2=2).flatten() for s in range(5)])
    assert abs(float(diag.mean())) < 0.02


def test_rotation_baseline_equals_explicit_rotation():
    x, y = gelu_data()
    x[:, 1] = 5.0
    stats = run(x, y, baselines=("none", "rotation"), seed=11)
    rot = rotation_matrices(11, 0, L2, D2)
    explicit = ref_pearson(x, rotate_layers(y.double(), rot).float())
    got = stats.correlation_matrix("rotation").numpy()
    ok = ~np.isnan(explicit)
    assert np.array_equal(np.isnan(got), ~ok)
    assert np.abs(got[ok] - explicit[ok]).max() <= 1e-5
    # the baseline differs from the data and is recorded with its seed
    res = finalize(stats)
    assert res["rotation"]["summary"]["meta"]["seed"] == 11
    assert np.nanmax(np.abs(got - stats.correlation_matrix("none").numpy())) > 0.1


def test_rotation_several_samples_average_max():
    x, y = gelu_data()
    stats = run(x, y, baselines=("rotation",), n_rotations=3, seed=5)
    summ = finalize(stats)["rotation"]["summary"]
    per = np.stack([ref_pearson(x, rotate_layers(y.double(), rotation_matrices(5, k, L2, D2)).float()).max(1)
                    for k in range(3)])
    assert np.abs(summ["max_corr_per_rotation"].float().numpy() - per).max() < 2e-3
    assert np.abs(summ["max_corr"].float().numpy() - per.mean(0)).max() < 2e-3


@pytest.mark.parametrize("baselines", [("none", "rotation", "permutation", "gaussian")])
def test_merged_shards_equal_single_run_any_order(baselines):
    x, y = gelu_data(mean_offset=30.0)
    kw = dict(baselines=baselines, seed=3)
    single = run(x, y, **kw)
    shards = []      # batch ids stay the global ones, as the seeded baselines need
    for a, b in ((0, 900), (900, 2700), (2700, 4000)):
        st = CorrelationStats(n_rows=N1, layers_2=L2, d_2=D2, **kw)
        for i in range(a, b, 900):
            st.update(x[i:i + 900], y[i:i + 900], batch_id=i)
        shards.append(st)
    for order in ((0, 1, 2), (2, 0, 1)):
        merged = CorrelationStats(n_rows=N1, layers_2=L2, d_2=D2, **kw)
        for k in order:
            merged.merge(CorrelationStats.from_state_dict(shards[k].state_dict()))
        for b in baselines:
            d = np.abs(merged.correlation_matrix(b).numpy() - single.correlation_matrix(b).numpy())
            assert np.nanmax(d) <= 1e-6, b


def test_cosine_and_jaccard_vs_brute_force():
    x, y = gelu_data()
    x[:, 0] = 0.0
    xd, yd = x.double().numpy(), y.double().numpy()
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = (xd.T @ yd) / np.outer(np.linalg.norm(xd, axis=0), np.linalg.norm(yd, axis=0))
    got = run(x, y, similarity="cosine").correlation_matrix().numpy()
    assert np.array_equal(np.isnan(got), np.isnan(cos)) and np.nanmax(np.abs(got - cos)) < 1e-5
    for thr in (0.0, 0.5):
        a, b = (xd > thr).astype(float), (yd > thr).astype(float)
        inter = a.T @ b
        union = a.sum(0)[:, None] + b.sum(0)[None, :] - inter
        jac = inter / union
        jac[a.sum(0) == 0] = np.nan          # never-active neurons are dead
        got = run(x, y, similarity="jaccard", jaccard_threshold=thr).correlation_matrix().numpy()
        assert np.array_equal(np.isnan(got), np.isnan(jac)) and np.nanmax(np.abs(got - jac)) < 1e-6
    j0 = run(x, y, similarity="jaccard", jaccard_threshold=0.0).correlation_matrix().numpy()
    j5 = run(x, y, similarity="jaccard", jaccard_threshold=0.5).correlation_matrix().numpy()
    assert np.nanmax(np.abs(j0 - j5)) > 0.05          # the threshold is used


def test_cosine_rotation_and_jaccard_rotation_equal_explicit():
    x, y = gelu_data()
    rot = rotation_matrices(2, 0, L2, D2)
    yr = rotate_layers(y.double(), rot)
    xd, yrd = x.double().numpy(), yr.numpy()
    cos = (xd.T @ yrd) / np.outer(np.linalg.norm(xd, axis=0), np.linalg.norm(yrd, axis=0))
    got = run(x, y, similarity="cosine", baselines=("rotation",), seed=2).correlation_matrix("rotation").numpy()
    assert np.abs(got - cos).max() < 1e-5
    explicit = run(x, yr.float(), similarity="jaccard", jaccard_threshold=0.2).correlation_matrix().numpy()
    got = run(x, y, similarity="jaccard", jaccard_threshold=0.2, baselines=("rotation",), seed=2).correlation_matrix("rotation").numpy()
    assert np.nanmax(np.abs(got - explicit)) < 1e-6


def test_permutation_and_gaussian_are_real_and_seeded():
    x, y = gelu_data()
    data = run(x, y).correlation_matrix().numpy()
    for b in ("permutation", "gaussian"):
        one = run(x, y, baselines=(b,), seed=1).correlation_matrix(b).numpy()
        again = run(x, y, baselines=(b,), seed=1).correlation_matrix(b).numpy()
        other = run(x, y, baselines=(b,), seed=2).correlation_matrix(b).numpy()
        assert np.array_equal(one, again)
        assert np.abs(one - other).max() > 1e-3
        assert np.abs(data).max() > 0.5 and np.abs(one).max() < 0.2    # structure destroyed


def test_tiled_rows_equal_untiled():
    x, y = gelu_data()
    x[:, 30] = 1.0
    kw = dict(baselines=("none", "rotation"), seed=4)
    whole = finalize(run(x, y, **kw))
    fin = CorrelationFinalizer(N1, L2, D2, kw["baselines"], seed=4)
    for r0, r1 in ((0, 20), (20, 45), (45, N1)):
        fin.add(run(x[:, r0:r1], y, row_offset=r0, **kw))
    tiled = fin.results()
    for b in kw["baselines"]:
        for part in ("summary", "summary_T"):
            for key, v in whole[b][part].items():
                w = tiled[b][part][key]
                if isinstance(v, torch.Tensor):
                    assert torch.equal(torch.nan_to_num(v.float()), torch.nan_to_num(w.float())) \
                        or (v.float() - w.float()).abs().nan_to_num().max() < 2e-3, (b, part, key)
                else:
                    assert v == w, (b, part, key)
    assert (whole["none"]["summary_T"]["max_corr_ix"] == tiled["none"]["summary_T"]["max_corr_ix"]).all()


def test_resume_from_checkpoint(tmp_path):
    x, y = gelu_data()
    kw = dict(baselines=("none", "permutation"), seed=9)
    full = run(x, y, **kw)
    part = CorrelationStats(n_rows=N1, layers_2=L2, d_2=D2, **kw)
    for i in (0, 900):
        part.update(x[i:i + 900], y[i:i + 900], batch_id=i)
    part.save(tmp_path / "ckpt.pt", progress={"next": 1800})
    resumed, saved = CorrelationStats.load(tmp_path / "ckpt.pt")
    for i in range(saved["progress"]["next"], 4000, 900):
        resumed.update(x[i:i + 900], y[i:i + 900], batch_id=i)
    for b in kw["baselines"]:
        assert torch.equal(resumed.correlation_matrix(b).nan_to_num(), full.correlation_matrix(b).nan_to_num())


def test_full_matrix_precisions(tmp_path):
    x, y = gelu_data()
    x[:, 3] = 0.0
    stats = run(x, y)
    ref = torch.from_numpy(ref_pearson(x, y)).float().view(L1, D1, L2, D2)
    for prec, tol in ((32, 1e-5), (16, 1e-3), (8, 1 / 250)):
        fin = CorrelationFinalizer(N1, L2, D2, ("none",), full_matrix=True, save_precision=prec, layers_1=L1)
        fin.add(stats, block_rows=10)
        m = fin.results()["none"]["correlation"]
        torch.save(m, tmp_path / "c.pt")
        back = load_correlation_matrix(tmp_path / "c.pt")
        assert back.shape == (L1, D1, L2, D2)
        assert torch.equal(torch.isnan(back), torch.isnan(ref))
        assert (back - ref).abs().nan_to_num().max() <= tol, prec
    q = quantize_rows_int8(ref.view(N1, N2), L1, L2)
    assert q["q"].dtype == torch.int8 and q["scale"].shape == (L1, D1)


def test_bad_input_shapes_rejected():
    stats = CorrelationStats(n_rows=N1, layers_2=L2, d_2=D2)
    with pytest.raises(ValueError):
        stats.update(torch.zeros(10, N1 + 1), torch.zeros(10, N2))
    with pytest.raises(Exception):
        CorrelationStats(n_rows=N1, layers_2=L2, d_2=D2, baselines=("nonsense",))


# End to end: the scripts on tiny saved GPT-2 models and a tiny token dataset ---------------------

import subprocess
import sys

from conftest import REPO, build_gpt2_folder

from universal_neurons import correlations as corr_mod
from universal_neurons.paths import correlation_path


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    # a small trained BPE (the same for all three) keeps building and loading fast
    return [str(build_gpt2_folder(root / f"m{s}", n_layer=2, d_model=32, d_mlp=40, n_head=2, seed=s, vocab=300)[0])
            for s in range(3)]


@pytest.fixture
def token_data(tiny_models, tmp_path, monkeypatch):
    """DATASET_DIR/<family = m0>/tiny: 10 sequences x 16 tokens, BOS first, some newlines."""
    from datasets import Dataset
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_models[0])
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, len(tok), (10, 16), generator=g)
    tokens[:, 0] = tok.bos_token_id
    tokens[::3, 5] = tok.encode("\n")[0]
    monkeypatch.setenv("DATASET_DIR", str(tmp_path / "token_datasets"))
    Dataset.from_dict({"tokens": tokens.tolist()}).save_to_disk(str(tmp_path / "token_datasets" / "m0" / "tiny"))
    return tokens


def reference_corr(m1, m2, tokens):
    """float64 Pearson of every neuron pair, straight from the models' hook_post activations."""
    from universal_neurons.capture import mlp_activations, token_mask
    from universal_neurons.models import load_model

    a, b = load_model(m1), load_model(m2)
    keep = token_mask(tokens, a.tokenizer).flatten()
    assert not keep.view(tokens.shape)[:, 0].any() and not keep.view(tokens.shape)[::3, 5].any()  # BOS, newlines
    x = mlp_activations(a, tokens).reshape(tokens.numel(), -1)[keep]
    y = mlp_activations(b, tokens).reshape(tokens.numel(), -1)[keep]
    return ref_pearson(x, y)


def summaries(m1, m2, sim="pearson", baseline="none"):
    d = correlation_path(m1, m2, "tiny", sim, baseline)
    return [torch.load(d / f, weights_only=True) for f in ("correlation_summary.pt", "correlation_summary_T.pt")]


def cli(*args):
    return corr_mod.main(["--token_dataset", "tiny", "--batch_size", "3", "--model_1_device", "cpu",
                          "--model_2_device", "cpu", "--correlation_device", "cpu", *args])


def test_script_end_to_end_against_reference(tiny_models, token_data, tmp_path):
    m1, m2, m3 = tiny_models
    env = {**__import__("os").environ, "PYTHONPATH": str(REPO)}
    r = subprocess.run([sys.executable, str(REPO / "correlations_fast.py"), "--model_1_name", m1, "--model_2_name", m2, m3,
                        "--token_dataset", "tiny", "--batch_size", "4", "--baseline", "none", "rotation",
                        "--save_full_correlation_matrix", "--model_1_device", "cpu", "--model_2_device", "cpu",
                        "--correlation_device", "cpu"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    for other in (m2, m3):
        ref = reference_corr(m1, other, token_data)
        summ, summ_t = summaries(m1, other)
        alive = ~np.isnan(ref).all(1)
        assert np.abs(summ["max_corr"].float().numpy()[alive] - np.nanmax(ref[alive], 1)).max() < 2e-3
        assert (summ["max_corr_ix"].numpy()[alive] == np.nanargmax(ref[alive], 1)).all()
        assert np.abs(summ_t["max_corr"].float().numpy() - np.nanmax(ref, 0)).max() < 2e-3
        full = load_correlation_matrix(correlation_path(m1, other, "tiny", "pearson", "none") / "correlation.pt")
        assert full.shape == (2, 40, 2, 40)
        assert np.nanmax(np.abs(full.reshape(80, 80).numpy() - ref)) < 1e-3
        rot, _ = summaries(m1, other, baseline="rotation")
        assert rot["meta"]["baseline"] == "rotation" and np.nanmax(np.abs(rot["max_corr"].float().numpy()
                                                                          - summ["max_corr"].float().numpy())) > 0.01
    # finished artifacts are skipped (in-process from here: a subprocess costs seconds of imports)
    before = (correlation_path(m1, m2, "tiny", "pearson", "none") / "correlation_summary.pt").stat().st_mtime_ns
    assert cli("--model_1_name", m1, "--model_2_name", m2, "--baseline", "rotation", "none") == []
    assert (correlation_path(m1, m2, "tiny", "pearson", "none") / "correlation_summary.pt").stat().st_mtime_ns == before


def assert_same_summaries(a, b, tol=2e-3):
    for sa, sb in zip(a, b):
        for key, v in sa.items():
            if isinstance(v, torch.Tensor) and v.is_floating_point():
                assert (v.float() - sb[key].float()).abs().nan_to_num().max() <= tol, key
                assert torch.equal(torch.isnan(v.float()), torch.isnan(sb[key].float())), key
            elif isinstance(v, torch.Tensor) and key not in ("max_tail_corr_ix", "min_tail_corr_ix"):
                assert torch.equal(v, sb[key]), key     # tail order may swap on float16-equal values


def test_shards_merge_tiles_and_resume_equal_single_run(tiny_models, token_data, tmp_path, monkeypatch):
    m1, m2, _ = tiny_models
    base = ["--model_1_name", m1, "--model_2_name", m2, "--baseline", "none", "rotation", "permutation"]
    monkeypatch.setenv("RESULTS_DIR", str(tmp_path / "single"))
    cli(*base)
    single = {b: summaries(m1, m2, baseline=b) for b in ("none", "rotation", "permutation")}
    # 3 shards (run in any order) and a merge, with model-1 rows in tiles of one layer: the budget is
    # what the job holds besides its rows plus one layer of rows (the plan's own accounting)
    monkeypatch.setenv("RESULTS_DIR", str(tmp_path / "sharded"))
    real_plan = corr_mod.plan_memory

    def one_layer(n1, d1, *a, budget, **k):
        free = real_plan(n1, d1, *a, budget=None, **k)
        return real_plan(n1, d1, *a, budget=sum(free.fixed.values()) + free.per_row * d1 + 1, **k)

    monkeypatch.setattr(corr_mod, "plan_memory", one_layer)
    for i in (2, 0, 1):
        cli(*base, "--num_shards", "3", "--shard_index", str(i))
    assert not correlation_path(m1, m2, "tiny", "pearson", "none").exists()
    assert len(list((tmp_path / "sharded").rglob("*.shard-*tile-001-of-002.pt"))) == 3
    cli(*base, "--merge")
    for b, want in single.items():
        assert_same_summaries(summaries(m1, m2, baseline=b), want)
    monkeypatch.setattr(corr_mod, "plan_memory", real_plan)
    # a run killed after 2 batches resumes from its checkpoint
    monkeypatch.setenv("RESULTS_DIR", str(tmp_path / "resumed"))
    calls = {"n": 0}
    real_update = CorrelationStats.update

    def dying_update(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real_update(self, *a, **k)

    monkeypatch.setattr(CorrelationStats, "update", dying_update)
    with pytest.raises(SystemExit):
        cli(*base, "--checkpoint_every", "1")
    assert not correlation_path(m1, m2, "tiny", "pearson", "none").exists()
    calls["n"] = -100
    cli(*base, "--checkpoint_every", "1")
    assert calls["n"] == -100 + 2          # only the 2 batches not yet saved ran again (4 batches of 3)
    for b, want in single.items():
        assert_same_summaries(summaries(m1, m2, baseline=b), want, tol=0)
    assert not list((tmp_path / "resumed").rglob("*.stats/*.pt"))       # checkpoints cleaned up


def test_cli_similarities_and_errors(tiny_models, token_data, tmp_path, monkeypatch, capsys):
    m1, m2, _ = tiny_models
    monkeypatch.setenv("RESULTS_DIR", str(tmp_path / "r"))
    cli("--model_1_name", m1, "--model_2_name", m2, "--similarity_type", "jaccard", "--jaccard_threshold", "0.5",
        "--baseline", "gaussian")
    summ, _ = summaries(m1, m2, sim="jaccard-0.50", baseline="gaussian")
    assert summ["meta"]["similarity"] == "jaccard" and summ["bin_counts"].shape == (80, 101)
    # correlations.py = the same engine and defaults (the original's: no full matrix unless asked)
    argv = ["--token_dataset", "tiny", "--model_1_name", m1, "--model_2_name", m2, "--model_1_device", "cpu",
            "--model_2_device", "cpu", "--correlation_device", "cpu"]
    assert not corr_mod.build_parser(corr_mod.FULL_DEFAULTS).parse_args(argv).save_full_correlation_matrix
    corr_mod.main(argv + ["--save_full_correlation_matrix", "--save_precision", "8"], defaults=corr_mod.FULL_DEFAULTS)
    full = load_correlation_matrix(correlation_path(m1, m2, "tiny", "pearson", "none") / "correlation.pt")
    summ, _ = summaries(m1, m2)
    assert full.shape == (2, 40, 2, 40)
    assert (full.reshape(80, 80).nan_to_num(-2).amax(1) - summ["max_corr"].float()).abs().nan_to_num().max() < 5e-3
    with pytest.raises(SystemExit) as e:
        cli("--model_1_name", m1, "--model_2_name", m2, "--merge", "--baseline", "rotation")
    assert e.value.code == 2
    with pytest.raises(SystemExit) as e:
        cli("--model_1_name", m1, "--model_2_name", m2, "--num_shards", "2", "--shard_index", "2", "--baseline", "rotation")
    assert e.value.code == 2
    with pytest.raises(SystemExit) as e:
        cli("--model_1_name", m1, "--model_2_name", m2, "--token_dataset", "missing", "--baseline", "rotation")
    assert e.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("error: token dataset 'missing' not found")


@pytest.mark.parametrize("changed,field", [(["--n_seq", "-1"], "n_seq"),
                                           (["--activation_location", "mlp.hook_pre"], "activation_location"),
                                           (["--seed", "7"], "seed"),
                                           (["--drop_newlines", "all"], "drop_newlines")])
def test_rerun_with_other_settings_is_never_served_stale(tiny_models, token_data, capsys, changed, field):
    """A finished folder is skipped only for the same settings; other settings stop with one message
    naming the difference (exit 2, the old result untouched) until --overwrite replaces it."""
    import json

    m1, m2, _ = tiny_models
    first = ["--model_1_name", m1, "--model_2_name", m2, "--baseline", "rotation", "--n_seq", "4"]
    cli(*first)
    out = correlation_path(m1, m2, "tiny", "pearson", "rotation")
    run = json.loads((out / "run.json").read_text())
    assert run["n_seq"] == 4 and run["seed"] == 0 and run["model_2"] == m2
    old, _ = summaries(m1, m2, baseline="rotation")
    assert cli(*first) == [] and "nothing to do" in capsys.readouterr().out  # same settings: skipped
    again = [a for a in first if a not in ("--n_seq", "4")] + (["--n_seq", "4"] if field != "n_seq" else []) + changed
    with pytest.raises(SystemExit) as e:
        cli(*again)
    err = capsys.readouterr().err
    assert e.value.code == 2 and field in err and "--overwrite" in err and len(err.strip().splitlines()) == 1
    same, _ = summaries(m1, m2, baseline="rotation")
    assert torch.equal(same["max_corr"], old["max_corr"])  # not destroyed
    cli(*again, "--overwrite")
    new, _ = summaries(m1, m2, baseline="rotation")
    assert json.loads((out / "run.json").read_text())[field] != run[field]
    if field == "n_seq":
        assert new["meta"]["n_tokens"] > old["meta"]["n_tokens"]
    if field != "drop_newlines":  # these rows hold only the one-token newline: the same numbers there
        assert not torch.equal(new["max_corr"], old["max_corr"])
    assert cli(*again) == []  # the replaced folder now matches these settings


def test_unrecorded_folder_is_not_trusted(tiny_models, token_data, capsys):
    """A folder with summaries but no run.json (an earlier version, or files copied in) is not served."""
    m1, m2, _ = tiny_models
    cli("--model_1_name", m1, "--model_2_name", m2)
    (correlation_path(m1, m2, "tiny", "pearson", "none") / "run.json").unlink()
    with pytest.raises(SystemExit):
        cli("--model_1_name", m1, "--model_2_name", m2)
    assert "no record of its settings" in capsys.readouterr().err


def test_shard_statistics_of_other_rows_are_never_merged(tiny_models, token_data, tmp_path, capsys):
    """Shard statistics carry the weights' and rows' fingerprints: after the dataset is rebuilt with other
    rows under the same name, the old shards are not merged into the new result."""
    from datasets import Dataset

    m1, m2, _ = tiny_models
    base = ["--model_1_name", m1, "--model_2_name", m2, "--num_shards", "2"]
    for i in ("0", "1"):
        cli(*base, "--shard_index", i)
    other = token_data.roll(1, dims=1)
    other[:, 0] = token_data[0, 0]
    Dataset.from_dict({"tokens": other.tolist()}).save_to_disk(str(tmp_path / "token_datasets" / "m0" / "tiny2"))
    import shutil

    shutil.rmtree(tmp_path / "token_datasets" / "m0" / "tiny")
    shutil.move(str(tmp_path / "token_datasets" / "m0" / "tiny2"), str(tmp_path / "token_datasets" / "m0" / "tiny"))
    with pytest.raises(SystemExit) as e:
        cli(*base, "--merge")
    err = capsys.readouterr().err
    assert e.value.code == 2 and "dataset_fingerprint" in err and "rerun the shards" in err
    cli(*base, "--shard_index", "0")  # a rerun of a shard ignores its stale statistics and recomputes
    assert "ignoring statistics from a different run" in capsys.readouterr().out


def test_full_matrix_at_another_precision_is_not_served(tiny_models, token_data, capsys):
    m1, m2, _ = tiny_models
    base = ["--model_1_name", m1, "--model_2_name", m2, "--save_full_correlation_matrix"]
    cli(*base, "--save_precision", "32")
    assert cli(*base, "--save_precision", "32") == []  # the same: skipped
    assert cli("--model_1_name", m1, "--model_2_name", m2) == []  # summaries only: the same run, skipped
    with pytest.raises(SystemExit) as e:
        cli(*base, "--save_precision", "16")
    assert e.value.code == 2 and "--save_precision 32, not 16" in capsys.readouterr().err
    cli(*base, "--save_precision", "16", "--overwrite")
    full = torch.load(correlation_path(m1, m2, "tiny", "pearson", "none") / "correlation.pt", weights_only=True)
    assert full.dtype == torch.float16


def test_models_of_other_widths_and_depths(tiny_models, token_data, tmp_path_factory):
    """Cross-size pairs (the original allowed model_1 and model_2 of different sizes): 2 x 40 neurons
    against 3 x 56 and back, every baseline's shapes right, numbers equal a float64 brute force."""
    import os
    import shutil

    m1 = tiny_models[0]
    wide = str(build_gpt2_folder(tmp_path_factory.mktemp("wide") / "w", n_layer=3, d_model=48, d_mlp=56, n_head=2,
                                 seed=7, vocab=300)[0])
    data = os.environ["DATASET_DIR"]
    shutil.copytree(f"{data}/m0/tiny", f"{data}/w/tiny")   # the wide model's family folder holds the same rows
    for a, b, shape in ((m1, wide, (2, 40, 3, 56)), (wide, m1, (3, 56, 2, 40))):
        cli("--model_1_name", a, "--model_2_name", b, "--baseline", "none", "rotation", "--save_full_correlation_matrix")
        ref = reference_corr(a, b, token_data)                       # [N1, N2] float64
        full = load_correlation_matrix(correlation_path(a, b, "tiny", "pearson", "none") / "correlation.pt")
        assert tuple(full.shape) == shape
        assert np.nanmax(np.abs(full.reshape(ref.shape).numpy() - ref)) < 1e-3
        summ, summ_t = summaries(a, b)
        assert summ["max_corr"].shape == (ref.shape[0],) and summ_t["max_corr"].shape == (ref.shape[1],)
        alive = ~np.isnan(ref).all(1)
        assert np.abs(summ["max_corr"].float().numpy()[alive] - np.nanmax(ref[alive], 1)).max() < 2e-3
        assert np.abs(summ_t["max_corr"].float().numpy() - np.nanmax(ref, 0)).max() < 2e-3
        rot, rot_t = summaries(a, b, baseline="rotation")
        assert rot["max_corr"].shape == (ref.shape[0],) and rot_t["max_corr"].shape == (ref.shape[1],)
