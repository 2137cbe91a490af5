"""Rotation baseline with several samples (--n_rotations 3) and dead neurons, against explicit rotation.

The library never rotates the data for pearson: it keeps per-layer Gram matrices of model 2 and
uses cov(x, R_l y_l) = C_xy,l R_l^T, var(R_l y_l) = diag(R_l Sigma_l R_l^T). Here the rotation is
done explicitly instead: every rotated copy of y is built in float64 (y_l R_l^T per token, the
convention of `rotate_layers`), the full Pearson matrix is computed on it in float64, and its
per-row / per-column extremes are compared with what the streaming statistics and the finaliser
store: `max_corr_per_rotation` / `min_corr_per_rotation` [K, N] (float16), `max_corr` /
`min_corr` = their mean over the K samples, `max_corr_ix` / `min_corr_ix` of sample 0, and the
float32 matrix of every sample from `CorrelationStats.correlation_matrix("rotation", sample=k)`.

Rotation matrices: regenerated here from the library's seed mixer (`derive_seed(seed, sample,
_SALT["rotation"])` seeding a CPU torch.Generator whose float64 Gaussians are drawn layer by
layer, as the module documents), but orthogonalised with numpy's QR and the sign fix
Q diag(sign(diag R)) written out here, so a broken generator in the library (identity, wrong
sample, wrong layer) shows up as a mismatch rather than being reused by the reference.

Tolerances: stored values are float16; for |c| <= 1 half an ulp is <= 2^-12 = 2.4e-4, and the
float32 paths add ~1e-6, so a per-sample value is within 3e-4 of float64. The average over K is
formed from float16 values and rounded to float16 again: <= 2 half-ulps + 1e-6 -> 6e-4. The
library's float32 matrices (float64 sums, rotated in float32) agree to ~3e-7; 2e-6 is allowed.
"""
import numpy as np
import pytest
import torch

from universal_neurons import correlations as cm
from universal_neurons.correlations import CorrelationFinalizer, CorrelationStats, finalize

SEED = 29
K = 3
L2, D2 = 3, 8
N2 = L2 * D2
N1 = 10
BATCHES = (97, 130, 64, 111)          # uneven batch sizes, 402 tokens in all
DEAD_X = 0                            # model-1 neuron: constant 0.37
BIG_X = 1                             # model-1 neuron: 1e4 + 0.5 * signal
SPARSE_X = 2                          # model-1 neuron: 0 in the whole first batch, rare spikes later
DEAD_Y = 3                            # model-2 layer 0 neuron 3: constant -0.17
DEAD_LAYER = 2                        # model-2 layer 2: every neuron constant (a dead layer)
DEAD_Y_LAYER = list(range(DEAD_LAYER * D2, (DEAD_LAYER + 1) * D2))
TOL_MATRIX = 2e-6
TOL_SAMPLE = 3e-4
TOL_MEAN = 6e-4
DEAD_REL = 1e-12                      # documented rule: centred SS <= 1e-12 raw SS -> dead


# explicit float64 reference --------------------------------------------------------------------

def explicit_rotations(seed, sample, n_layers, d):
    """[n_layers, d, d] float64: the documented Haar construction, orthogonalised with numpy."""
    gen = torch.Generator().manual_seed(cm.derive_seed(seed, sample, cm._SALT["rotation"]))
    out = []
    for _ in range(n_layers):
        g = torch.randn(d, d, generator=gen, dtype=torch.float64).numpy()
        q, r = np.linalg.qr(g)
        s = np.sign(np.diag(r))
        s[s == 0] = 1
        out.append(q * s[None, :])
    return np.stack(out)


def rotate_explicit(y, rot):
    """y [T, L*D] float64 -> per layer y_l R_l^T (R_l applied to each token's activation vector)."""
    t = y.shape[0]
    y_l = y.reshape(t, rot.shape[0], rot.shape[1])
    return np.einsum("tld,led->tle", y_l, rot).reshape(t, -1)


def pearson64(x, y):
    """float64 Pearson [N1, N2] with NaN at dead neurons (the documented relative-variance rule),
    plus the dead masks and the relative variances (centred SS / raw SS)."""
    xc, yc = x - x.mean(0), y - y.mean(0)
    sx, sy = (xc ** 2).sum(0), (yc ** 2).sum(0)
    dead_x = ~(sx > DEAD_REL * (x ** 2).sum(0))
    dead_y = ~(sy > DEAD_REL * (y ** 2).sum(0))
    with np.errstate(invalid="ignore", divide="ignore"):
        rx, ry = sx / (x ** 2).sum(0), sy / (y ** 2).sum(0)
        c = (xc.T @ yc) / np.sqrt(np.outer(sx, sy))
    c[dead_x] = np.nan
    c[:, dead_y] = np.nan
    return c, dead_x, dead_y, np.nan_to_num(rx, nan=0.0), np.nan_to_num(ry, nan=0.0)


def row_extremes(c):
    """Per-row max, argmax, min, argmin over the valid entries (NaN rows -> NaN, -1), and the gap
    between the best and second-best value (argmax is only well defined where it is large)."""
    n = c.shape[0]
    mx, mn = np.full(n, np.nan), np.full(n, np.nan)
    imx, imn = np.full(n, -1), np.full(n, -1)
    gap_mx, gap_mn = np.zeros(n), np.zeros(n)
    for i in range(n):
        ok = ~np.isnan(c[i])
        if not ok.any():
            continue
        v = np.where(ok, c[i], -np.inf)
        imx[i] = int(np.argmax(v))
        mx[i] = v[imx[i]]
        srt = np.sort(c[i][ok])
        gap_mx[i] = srt[-1] - srt[-2] if len(srt) > 1 else np.inf
        v = np.where(ok, c[i], np.inf)
        imn[i] = int(np.argmin(v))
        mn[i] = v[imn[i]]
        gap_mn[i] = srt[1] - srt[0] if len(srt) > 1 else np.inf
    return mx, imx, mn, imn, gap_mx, gap_mn


# adversarial synthetic activations -------------------------------------------------------------

def synthetic_data():
    """x [T, N1], y [T, L2*D2] float32 (what the library sees) from a shared latent, with a dead
    (constant) model-1 neuron, a 1e4-mean one, a sparse one that is 0 in the whole first batch,
    a constant model-2 neuron, a 1e3-mean model-2 neuron, a sparse one, and a dead model-2 layer.
    The shared component makes some rotated units anti-correlated with every live model-1 neuron:
    their maxima are negative, so a dead neuron's 0 entering a max would show."""
    g = torch.Generator().manual_seed(1234)
    t = sum(BATCHES)
    z = torch.randn(t, 5, generator=g, dtype=torch.float64)
    gelu = torch.nn.functional.gelu
    common = 3.0 * z[:, :1]           # a component every neuron follows with the same sign
    x = gelu(z @ torch.randn(5, N1, generator=g, dtype=torch.float64) + common
             + 0.6 * torch.randn(t, N1, generator=g, dtype=torch.float64))
    y = gelu(z @ torch.randn(5, N2, generator=g, dtype=torch.float64) + common
             + 0.6 * torch.randn(t, N2, generator=g, dtype=torch.float64))
    x[:, DEAD_X] = 0.37
    x[:, BIG_X] = 1e4 + 0.5 * (z[:, 0] + 0.3 * torch.randn(t, generator=g, dtype=torch.float64))
    spikes = torch.rand(t, generator=g) < 0.06
    spikes[:BATCHES[0]] = False
    x[:, SPARSE_X] = torch.where(spikes, 3.0 + z[:, 0], torch.zeros(t, dtype=torch.float64))
    y[:, DEAD_Y] = -0.17
    y[:, 5] = 1e3 + 2.0 * y[:, 5]
    y_spikes = torch.rand(t, generator=g) < 0.08
    y[:, D2 + 2] = torch.where(y_spikes, 2.0 + z[:, 1], torch.zeros(t, dtype=torch.float64))
    y[:, DEAD_Y_LAYER] = torch.linspace(-0.5, 0.5, D2, dtype=torch.float64)[None, :]
    return x.float(), y.float()


def batches(x, y):
    out, a = [], 0
    for b, n in enumerate(BATCHES):
        out.append((b, x[a:a + n], y[a:a + n]))
        a += n
    return out


def library_run(x, y, layout):
    """Streams the batches through CorrelationStats and the finaliser.
    single: one statistics object, batches updated in place, summaries in row blocks of 4.
    sharded: model-1 rows in two tiles (row_offset), each from two shards of batches merged
    (different shifts), summaries in row blocks of 3.
    Returns (results of the finaliser, the tiles' statistics)."""
    kw = dict(layers_2=L2, d_2=D2, baselines=("none", "rotation"), n_rotations=K, seed=SEED)
    if layout == "single":
        st = CorrelationStats(n_rows=N1, **kw)
        for b, xb, yb in batches(x, y):
            st.update(xb.clone(), yb.clone(), batch_id=b, overwrite_inputs=True)
        return finalize(st, block_rows=4), [st]
    tiles = []
    for r0, r1 in ((0, 4), (4, N1)):
        shards = [CorrelationStats(n_rows=r1 - r0, row_offset=r0, **kw) for _ in range(2)]
        for b, xb, yb in batches(x, y):
            shards[b // 2].update(xb[:, r0:r1], yb, batch_id=b)
        merged = CorrelationStats.from_state_dict(shards[1].state_dict())
        merged.merge(shards[0])
        tiles.append(merged)
    fin = CorrelationFinalizer(N1, L2, D2, kw["baselines"], n_rotations=K, seed=SEED)
    for st in tiles:
        fin.add(st, block_rows=3)
    return fin.results(), tiles


def f(t):
    return t.float().numpy().astype(np.float64)


def check_argmax(lib_ix, ref_c, ref_ix, gap, rows, largest=True, tol=TOL_MATRIX):
    """lib_ix points at an optimal valid entry of every row, and equals the float64 argmax wherever
    the best is ahead of the second best by more than numerical noise (most rows here)."""
    clear = 0
    for i in rows:
        j = int(lib_ix[i])
        assert 0 <= j < ref_c.shape[1] and not np.isnan(ref_c[i, j]), (i, j)
        best = np.nanmax(ref_c[i]) if largest else np.nanmin(ref_c[i])
        assert abs(ref_c[i, j] - best) <= tol, (i, j)
        if gap[i] > 1e-3:
            assert j == ref_ix[i], (i, j, ref_ix[i])
            clear += 1
    assert clear >= 0.75 * len(rows)          # the exact-index check is not vacuous


# the test ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("layout", ["single", "sharded"])
def test_n_rotations_3_with_dead_neurons_equals_explicit_rotation(layout):
    x, y = synthetic_data()
    x64, y64 = x.double().numpy(), y.double().numpy()

    # 1. the reference's own rotation matrices: orthogonal, |det| 1, distinct samples and layers
    rots = [explicit_rotations(SEED, k, L2, D2) for k in range(K)]
    eye = np.eye(D2)
    for r in rots:
        assert np.abs(r @ r.transpose(0, 2, 1) - eye).max() < 1e-10
        assert np.abs(np.abs(np.linalg.det(r)) - 1).max() < 1e-10
        assert np.abs(r - eye).max() > 0.5                      # not the identity
        for a in range(L2):
            for b in range(a):
                assert np.abs(r[a] - r[b]).max() > 0.1          # layers get their own matrices
    for a in range(K):
        for b in range(a):
            assert np.abs(rots[a] - rots[b]).max() > 0.1        # the three samples differ

    # 2. explicit float64 Pearson on the explicitly rotated data, per sample
    ref = []
    for r in rots:
        c, dead_x, dead_y, rel_x, rel_y = pearson64(x64, rotate_explicit(y64, r))
        # the fixture is far from the dead threshold on both sides, so the masks are unambiguous
        assert dead_x.nonzero()[0].tolist() == [DEAD_X]
        assert dead_y.nonzero()[0].tolist() == DEAD_Y_LAYER     # only the dead layer: the dead
        live_rel = np.concatenate([rel_x[~dead_x], rel_y[~dead_y]])   # neuron is mixed away
        assert live_rel.min() > 1e-9 and max(rel_x[dead_x].max(), rel_y[dead_y].max()) < 1e-20
        ref.append(c)
    live_rows = [i for i in range(N1) if i != DEAD_X]
    live_cols = [j for j in range(N2) if j not in DEAD_Y_LAYER]
    ext = [row_extremes(c) for c in ref]
    ext_t = [row_extremes(c.T) for c in ref]
    per_max = np.stack([e[0] for e in ext])                      # [K, N1]
    per_min = np.stack([e[2] for e in ext])
    per_max_t = np.stack([e[0] for e in ext_t])                  # [K, N2]
    per_min_t = np.stack([e[2] for e in ext_t])
    assert np.isfinite(per_max[:, live_rows]).all() and np.isfinite(per_max_t[:, live_cols]).all()
    assert np.abs(per_max[0] - per_max[1])[live_rows].max() > 0.02   # samples give different maxima
    # in the averaged-only samples (k > 0) some unit's max over live rows is clearly negative, so the
    # dead row (whose entries are 0 inside the library) must really be kept out of the max
    assert (per_max_t[1:, live_cols] < -0.01).any()

    res, tiles = library_run(x, y, layout)
    rot = res["rotation"]
    summ, summ_t = rot["summary"], rot["summary_T"]

    # 3. the library's float32 matrix of every sample equals the explicit one, NaN exactly at dead
    for k in range(K):
        got = np.concatenate([st.correlation_matrix("rotation", sample=k).numpy() for st in tiles]).astype(np.float64)
        assert np.array_equal(np.isnan(got), np.isnan(ref[k])), k
        assert np.nanmax(np.abs(got - ref[k])) <= TOL_MATRIX, k
        mx, imx, mn, imn, gmx, gmn = row_extremes(got)
        check_argmax(imx, ref[k], ext[k][1], ext[k][4], live_rows)
        check_argmax(imn, ref[k], ext[k][3], ext[k][5], live_rows, largest=False)

    # 4. per-rotation maxima / minima (float16) of live rows and live model-2 units
    meta = summ["meta"]
    assert meta["baseline"] == "rotation" and meta["n_rotations"] == K and meta["seed"] == SEED
    assert meta["n_tokens"] == sum(BATCHES)
    for s, want_max, want_min, n, live in ((summ, per_max, per_min, N1, live_rows),
                                            (summ_t, per_max_t, per_min_t, N2, live_cols)):
        for key, want in (("max_corr", want_max), ("min_corr", want_min)):
            per = s[f"{key}_per_rotation"]
            assert per.dtype == torch.float16 and tuple(per.shape) == (K, n), key
            got = f(per)
            assert np.isfinite(got[:, live]).all(), key
            assert np.abs(got[:, live] - want[:, live]).max() <= TOL_SAMPLE, key
            avg = f(s[key])
            assert np.isfinite(avg[live]).all(), key
            assert np.abs(avg[live] - want[:, live].mean(0)).max() <= TOL_MEAN, key
            # the mean of the K samples (formed before their float16 rounding): within a half-ulp of
            # the average and one of the stored per-sample values
            assert np.abs(avg[live] - got[:, live].mean(0)).max() <= 5e-4, key
    # sample 0's indices (the only per-sample indices a summary has)
    check_argmax(summ["max_corr_ix"].numpy(), ref[0], ext[0][1], ext[0][4], live_rows, tol=TOL_SAMPLE)
    check_argmax(summ["min_corr_ix"].numpy(), ref[0], ext[0][3], ext[0][5], live_rows, largest=False, tol=TOL_SAMPLE)
    check_argmax(summ_t["max_corr_ix"].numpy(), ref[0].T, ext_t[0][1], ext_t[0][4], live_cols, tol=TOL_SAMPLE)

    # 5. the dead model-1 neuron: NaN everywhere in its row, -1 indices, and it poisons nothing
    assert summ["dead_mask"].nonzero().flatten().tolist() == [DEAD_X] and summ["n_dead"] == 1
    for key in ("max_corr", "min_corr"):
        assert torch.isnan(summ[key][DEAD_X].float())
        assert torch.isnan(summ[f"{key}_per_rotation"][:, DEAD_X].float()).all()
        assert summ[f"{key}_ix"][DEAD_X] == -1
    assert int(summ["bin_counts"][DEAD_X].sum()) == 0
    n_live_cols = len(live_cols)
    for key in ("corr_mean", "corr_var", "corr_skew", "corr_kurt"):
        assert torch.isfinite(summ[key].float()[live_rows]).all(), key
        assert torch.isfinite(summ_t[key].float()[live_cols]).all(), key
    assert (summ["bin_counts"][live_rows].sum(1) == n_live_cols).all()
    assert (summ_t["bin_counts"][live_cols].sum(1) == len(live_rows)).all()
    assert torch.isfinite(summ["max_tail_corr"].float()[live_rows, :n_live_cols]).all()
    assert not (summ_t["max_corr_ix"][live_cols] == DEAD_X).any()
    assert not (summ_t["min_corr_ix"][live_cols] == DEAD_X).any()
    assert not (summ_t["max_tail_corr_ix"][live_cols] == DEAD_X).any()
    assert summ_t["n_dead_other"] == 1

    # 6. model-2 side under rotation: the single dead neuron is mixed into live rotated units
    #    (no NaN from it), the dead layer's rotated units are NaN and never anyone's extreme
    assert summ["n_dead_other"] == len(DEAD_Y_LAYER)
    assert summ_t["dead_mask"].nonzero().flatten().tolist() == DEAD_Y_LAYER
    assert torch.isnan(summ_t["max_corr_per_rotation"].float()[:, DEAD_Y_LAYER]).all()
    assert torch.isfinite(summ_t["max_corr_per_rotation"].float()[:, :2 * D2]).all()
    for key in ("max_corr_ix", "min_corr_ix", "max_tail_corr_ix", "min_tail_corr_ix"):
        assert not np.isin(summ[key][live_rows].numpy(), DEAD_Y_LAYER).any(), key

    # 7. the same data without rotation: the dead model-2 neuron itself is dead and never chosen
    plain, plain_t = res["none"]["summary"], res["none"]["summary_T"]
    c_plain, _, dead_plain, _, _ = pearson64(x64, y64)
    assert dead_plain.nonzero()[0].tolist() == [DEAD_Y] + DEAD_Y_LAYER
    assert plain["n_dead_other"] == 1 + len(DEAD_Y_LAYER)
    assert plain_t["dead_mask"].nonzero().flatten().tolist() == [DEAD_Y] + DEAD_Y_LAYER
    assert torch.isnan(plain_t["max_corr"].float()[[DEAD_Y] + DEAD_Y_LAYER]).all()
    for key in ("max_corr_ix", "min_corr_ix", "max_tail_corr_ix", "min_tail_corr_ix"):
        assert not np.isin(plain[key][live_rows].numpy(), [DEAD_Y] + DEAD_Y_LAYER).any(), key
    mx0, imx0, mn0, _, gap0, _ = row_extremes(c_plain)
    assert np.isfinite(f(plain["max_corr"])[live_rows]).all()
    assert np.abs(f(plain["max_corr"])[live_rows] - mx0[live_rows]).max() <= TOL_SAMPLE
    assert np.abs(f(plain["min_corr"])[live_rows] - mn0[live_rows]).max() <= TOL_SAMPLE
    check_argmax(plain["max_corr_ix"].numpy(), c_plain, imx0, gap0, live_rows, tol=TOL_SAMPLE)
    # and the rotation really changed something
    assert np.abs(f(plain["max_corr"])[live_rows] - per_max[0, live_rows]).max() > 0.02

    # 8. last: the library's generator is the documented one (same matrices, to rounding)
    for k in range(K):
        assert np.abs(cm.rotation_matrices(SEED, k, L2, D2).numpy() - rots[k]).max() < 1e-10, k


def test_rotation_moments_ignore_nan_and_inf_neurons():
    """Dead by non-finite data (the documented 'NaN/inf anywhere'): a NaN in one model-2 neuron makes
    its whole layer NaN after rotation (explicitly too), an inf in one model-1 neuron makes it dead;
    neither may enter the moments (corr_mean ...) of any other neuron, per the module docstring."""
    x, y = synthetic_data()
    y[7, 1] = float("nan")                  # layer 0 -> every rotated unit of layer 0 is NaN
    x[11, 5] = float("inf")
    st = CorrelationStats(n_rows=N1, layers_2=L2, d_2=D2, baselines=("rotation",), n_rotations=K, seed=SEED)
    for b, xb, yb in batches(x, y):
        st.update(xb, yb, batch_id=b)
    res = finalize(st)["rotation"]
    summ, summ_t = res["summary"], res["summary_T"]
    dead_rows = [DEAD_X, 5]
    dead_cols = list(range(D2)) + DEAD_Y_LAYER
    live_rows = [i for i in range(N1) if i not in dead_rows]
    live_cols = [j for j in range(N2) if j not in dead_cols]
    assert summ["dead_mask"].nonzero().flatten().tolist() == dead_rows
    assert summ_t["dead_mask"].nonzero().flatten().tolist() == dead_cols
    with np.errstate(invalid="ignore"):
        ref = pearson64(x.double().numpy(), rotate_explicit(y.double().numpy(), explicit_rotations(SEED, 0, L2, D2)))[0]
    assert np.abs(f(summ["max_corr_per_rotation"][0])[live_rows] - np.nanmax(ref[live_rows][:, live_cols], 1)).max() <= TOL_SAMPLE
    assert torch.isfinite(summ["max_corr_per_rotation"].float()[:, live_rows]).all()
    assert torch.isfinite(summ_t["max_corr_per_rotation"].float()[:, live_cols]).all()
    for key in ("corr_mean", "corr_var"):
        assert torch.isfinite(summ[key].float()[live_rows]).all(), f"summary {key} poisoned by a NaN neuron"
        assert torch.isfinite(summ_t[key].float()[live_cols]).all(), f"summary_T {key} poisoned by an inf neuron"


# end to end: the CLI on two tiny random GPT-2 folders with a dead neuron each --------------------

CLI_SEED = 13
DEAD_M1 = (1, 5)                      # model 1: layer 1, neuron 5 -> flattened row 45
DEAD_M2 = (0, 7)                      # model 2: layer 0, neuron 7 -> flattened column 7


def _dead_gpt2_folder(folder, seed, layer, neuron):
    """A random GPT-2 folder (conftest's builder) whose MLP neuron (layer, neuron) never fires:
    its W_in column is 0 and its b_in -1e4, so hook_post = gelu(-1e4) = 0 on every token."""
    from conftest import build_gpt2_folder

    folder, model = build_gpt2_folder(folder, n_layer=2, d_model=32, d_mlp=40, n_head=2, seed=seed, vocab=300)
    with torch.no_grad():
        fc = model.transformer.h[layer].mlp.c_fc        # Conv1D: weight [d_model, d_mlp]
        fc.weight[:, neuron] = 0.0
        fc.bias[neuron] = -1e4
    model.save_pretrained(str(folder))
    return str(folder)


def test_cli_n_rotations_3_with_dead_neurons_equals_explicit_rotation(tmp_path, monkeypatch):
    from datasets import Dataset
    from transformers import AutoTokenizer

    from universal_neurons.capture import mlp_activations, token_mask
    from universal_neurons.models import load_model
    from universal_neurons.paths import correlation_path

    m1 = _dead_gpt2_folder(tmp_path / "m0", 0, *DEAD_M1)
    m2 = _dead_gpt2_folder(tmp_path / "m1", 1, *DEAD_M2)
    tok = AutoTokenizer.from_pretrained(m1)
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, len(tok), (10, 16), generator=g)
    tokens[:, 0] = tok.bos_token_id
    tokens[::3, 5] = tok.encode("\n")[0]
    monkeypatch.setenv("DATASET_DIR", str(tmp_path / "token_datasets"))
    monkeypatch.setenv("RESULTS_DIR", str(tmp_path / "results"))
    Dataset.from_dict({"tokens": tokens.tolist()}).save_to_disk(str(tmp_path / "token_datasets" / "m0" / "tiny"))
    cm.main(["--model_1_name", m1, "--model_2_name", m2, "--token_dataset", "tiny", "--batch_size", "3",
             "--baseline", "none", "rotation", "--n_rotations", str(K), "--seed", str(CLI_SEED),
             "--model_1_device", "cpu", "--model_2_device", "cpu", "--correlation_device", "cpu"])

    # explicit: the models' own activations at the counted positions, float64 from here on
    a, b = load_model(m1), load_model(m2)
    keep = token_mask(tokens, a.tokenizer).flatten()
    excluded = {i for i in (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) if i is not None}
    excluded.add(tok.encode("\n")[0])                         # BOS/EOS/padding and the newline
    assert keep.tolist() == [int(t) not in excluded for t in tokens.flatten()]
    x = mlp_activations(a, tokens).reshape(tokens.numel(), -1)[keep].double().numpy()
    y = mlp_activations(b, tokens).reshape(tokens.numel(), -1)[keep].double().numpy()
    n_layers_2, d_2 = b.cfg.n_layers, b.cfg.d_mlp
    dead_row = DEAD_M1[0] * a.cfg.d_mlp + DEAD_M1[1]
    dead_col = DEAD_M2[0] * d_2 + DEAD_M2[1]
    assert (x[:, dead_row] == x[0, dead_row]).all() and (y[:, dead_col] == y[0, dead_col]).all()

    def load(baseline):
        d = correlation_path(m1, m2, "tiny", "pearson", baseline)
        return [torch.load(d / n, weights_only=True) for n in ("correlation_summary.pt", "correlation_summary_T.pt")]

    summ, summ_t = load("rotation")
    assert summ["meta"]["n_rotations"] == K and summ["meta"]["seed"] == CLI_SEED
    assert summ["meta"]["n_tokens"] == x.shape[0]
    live_rows = [i for i in range(x.shape[1]) if i != dead_row]
    live_cols = list(range(y.shape[1]))           # the dead model-2 neuron is mixed into live units
    refs = []
    for k in range(K):
        r = explicit_rotations(CLI_SEED, k, n_layers_2, d_2)
        assert np.abs(r @ r.transpose(0, 2, 1) - np.eye(d_2)).max() < 1e-10
        assert np.abs(np.abs(np.linalg.det(r)) - 1).max() < 1e-10
        assert all(np.abs(r - rr).max() > 0.1 for rr in (explicit_rotations(CLI_SEED, j, n_layers_2, d_2)
                                                          for j in range(k)))
        c, dead_x, dead_y, _, _ = pearson64(x, rotate_explicit(y, r))
        assert dead_x.nonzero()[0].tolist() == [dead_row] and not dead_y.any()
        refs.append(c)
    ext = [row_extremes(c) for c in refs]
    ext_t = [row_extremes(c.T) for c in refs]
    for s, e, n, live in ((summ, ext, x.shape[1], live_rows), (summ_t, ext_t, y.shape[1], live_cols)):
        for key, pos in (("max_corr", 0), ("min_corr", 2)):
            want = np.stack([ek[pos] for ek in e])
            got = f(s[f"{key}_per_rotation"])
            assert got.shape == (K, n)
            assert np.isfinite(got[:, live]).all() and np.isfinite(f(s[key])[live]).all(), key
            assert np.abs(got[:, live] - want[:, live]).max() <= TOL_SAMPLE, key
            assert np.abs(f(s[key])[live] - want[:, live].mean(0)).max() <= TOL_MEAN, key
    check_argmax(summ["max_corr_ix"].numpy(), refs[0], ext[0][1], ext[0][4], live_rows, tol=TOL_SAMPLE)
    check_argmax(summ_t["max_corr_ix"].numpy(), refs[0].T, ext_t[0][1], ext_t[0][4], live_cols, tol=TOL_SAMPLE)
    # the dead model-1 neuron: NaN, index -1, never anyone's extreme, nothing else poisoned
    assert summ["dead_mask"].nonzero().flatten().tolist() == [dead_row] and summ["n_dead"] == 1
    assert torch.isnan(summ["max_corr_per_rotation"][:, dead_row].float()).all()
    assert torch.isnan(summ["max_corr"][dead_row].float()) and summ["max_corr_ix"][dead_row] == -1
    assert not (summ_t["max_corr_ix"] == dead_row).any() and not (summ_t["min_corr_ix"] == dead_row).any()
    assert summ["n_dead_other"] == 0 and summ_t["n_dead"] == 0
    for key in ("corr_mean", "corr_var"):
        assert torch.isfinite(summ[key].float()[live_rows]).all() and torch.isfinite(summ_t[key].float()).all()

    # without rotation the dead model-2 neuron is dead itself and never chosen
    plain, plain_t = load("none")
    c0 = pearson64(x, y)[0]
    assert plain["n_dead_other"] == 1 and plain_t["dead_mask"].nonzero().flatten().tolist() == [dead_col]
    assert not (plain["max_corr_ix"][live_rows] == dead_col).any()
    assert not (plain["min_corr_ix"][live_rows] == dead_col).any()
    assert np.abs(f(plain["max_corr"])[live_rows] - np.nanmax(c0[live_rows], 1)).max() <= TOL_SAMPLE
    assert np.isfinite(f(plain["max_corr"])[live_rows]).all()
