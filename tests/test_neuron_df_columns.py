"""All 23 columns of the neuron dataframe against an independent float64 recomputation.

Three small random GPT-2 models (a, b, c; one tokenizer) are saved as local Hugging Face folders;
every stage the dataframe reads is run for real on a small token dataset (correlations of a vs b and
c with the 'none' and 'rotation' baselines, weight summaries of a, summary.py of a on two datasets),
then `make_neuron_df` assembles the table. Each column is recomputed here in float64 straight from
raw data, never from the library's artifacts:
  - activations: the models' own mlp.hook_pre / mlp.hook_post, captured with hooks of this file;
  - weights: the Hugging Face state dict, with LayerNorm folding and centring done here (checked
    against the bridge's W_in / b_in / W_out / W_U, which is what the library reads);
  - the rotation baseline: the library's seeded rotation generator is the ONLY library code reused
    (`rotation_matrices`: Haar matrices from a seed); it is applied to model 2's activations here.
Adversarial neurons: a dead neuron in model a (zero w_in, constant pre- and post-activation ->
NaN correlations and in_out_sim, var 0, NaN skew / kurt), one with a large mean (mean / std ~ 700,
stresses the streaming correlation's centring), one whose w_out is constant (zero after the
centring of writing weights -> w_out_norm 0, NaN in_out_sim and vocab_*), and dead neurons in the
other models (dead columns must never enter any maximum).
"""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from analysis import neuron_df as ndf
from analysis.neuron_df import NEURON_DF_COLUMNS
from conftest import build_gpt2_folder

L, D_MODEL, D_MLP, N_HEAD, VOCAB, CTX = 2, 32, 64, 2, 300, 32
N = L * D_MLP
DS, DS2 = "ndf.toy.32", "ndf.extra.32"      # correlations + summary, summary only
N_SEQ, N_SEQ2 = 24, 8
DEAD_A = (0, 5)        # zero w_in, b_in = -0.8: constant pre (-0.8) and post (gelu(-0.8))
LARGE_A = (1, 7)       # w_in * 0.01, b_in = 0.9: pre ~ 0.9 +- 0.001
FLAT_OUT_A = (1, 20)   # constant w_out row: zero once the writing weights are centred
DEAD_B = (1, 3)        # a dead neuron of model b (a dead column of the a-vs-b correlations)
# Histogram edges linspace(-1.25, 1.25, 20481) = -1.25 + k 2^-13: every edge is exact in float32 and
# 0 is edge 10240, so the share above 0 read off the histogram is exact; bin width w = 2^-13.
BIN_MIN, BIN_MAX, N_BINS = -1.25, 1.25, 20481
SEED = 0
flat = lambda ln: ln[0] * D_MLP + ln[1]  # noqa: E731


# Models and data --------------------------------------------------------------------------------

def _set_neuron(hf, layer, neuron, *, w_in_scale=None, b_in=None, w_out_value=None):
    mlp = hf.transformer.h[layer].mlp
    with torch.no_grad():
        if w_in_scale is not None:
            mlp.c_fc.weight[:, neuron] *= w_in_scale       # Conv1D: c_fc.weight [d_model, d_mlp]
        if b_in is not None:
            mlp.c_fc.bias[neuron] = b_in
        if w_out_value is not None:
            mlp.c_proj.weight[neuron, :] = w_out_value     # c_proj.weight [d_mlp, d_model]


def _build_models(root):
    kw = dict(n_layer=L, d_model=D_MODEL, d_mlp=D_MLP, n_head=N_HEAD, vocab=VOCAB, ctx=CTX)
    fa, hf_a = build_gpt2_folder(root / "ndf-a", seed=0, **kw)
    _set_neuron(hf_a, *DEAD_A, w_in_scale=0.0, b_in=-0.8)
    _set_neuron(hf_a, *LARGE_A, w_in_scale=0.01, b_in=0.9)
    _set_neuron(hf_a, *FLAT_OUT_A, w_out_value=0.0625)  # 2^-4: its float32 mean is exact, so centring gives exactly 0
    hf_a.save_pretrained(str(fa))
    fb, hf_b = build_gpt2_folder(root / "ndf-b", seed=1, **kw)
    _set_neuron(hf_b, *DEAD_B, w_in_scale=0.0, b_in=0.3)
    hf_b.save_pretrained(str(fb))
    # c: a noisy copy of a (multiplicative noise, so a's dead neuron stays dead there) with the MLP
    # neurons of each layer permuted -> some correlations near 1 well above the rotation baseline
    fc, hf_c = build_gpt2_folder(root / "ndf-c", seed=2, **kw)
    hf_c.load_state_dict(hf_a.state_dict())
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in hf_c.parameters():
            p.mul_(1 + 0.3 * torch.randn(p.shape, generator=g))
        for block in hf_c.transformer.h:
            perm = torch.randperm(D_MLP, generator=g)
            block.mlp.c_fc.weight.copy_(block.mlp.c_fc.weight[:, perm])
            block.mlp.c_fc.bias.copy_(block.mlp.c_fc.bias[perm])
            block.mlp.c_proj.weight.copy_(block.mlp.c_proj.weight[perm])
    hf_c.save_pretrained(str(fc))
    return (str(fa), str(fb), str(fc)), hf_a


def _token_rows(tok, n_seq, seed):
    g = torch.Generator().manual_seed(seed)
    rows = torch.randint(1, VOCAB, (n_seq, CTX), generator=g)
    rows[:, 0] = tok.bos_token_id
    rows[::4, 11] = tok.eos_token_id
    rows[1::3, 6] = tok.encode("\n", add_special_tokens=False)[0]
    return rows


@torch.no_grad()
def _hooked(model, tokens, location):
    """[T, L * D] float64 activations at blocks.{l}.<location>, flattened layer-major."""
    out = {}

    def save(act, hook):
        out[hook.name] = act.detach().double().cpu()

    model.run_with_hooks(tokens, fwd_hooks=[(f"blocks.{l}.{location}", save) for l in range(model.cfg.n_layers)],
                         return_type=None)
    acts = torch.stack([out[f"blocks.{l}.{location}"] for l in range(model.cfg.n_layers)], dim=2)
    return acts.reshape(tokens.numel(), -1).numpy()


# Independent float64 references -----------------------------------------------------------------

def pearson(x, y):
    """[N1, N2] float64 Pearson correlations; NaN for a neuron that is exactly constant."""
    xc, yc = x - x.mean(0), y - y.mean(0)
    nx, ny = np.sqrt((xc ** 2).sum(0)), np.sqrt((yc ** 2).sum(0))
    with np.errstate(invalid="ignore", divide="ignore"):
        c = (xc.T @ yc) / np.outer(nx, ny)
    c[np.ptp(x, 0) == 0] = np.nan
    c[:, np.ptp(y, 0) == 0] = np.nan
    return c


def row_max(c):
    """Max over the valid (non-NaN) columns; NaN for a row without any."""
    out = np.full(c.shape[0], np.nan)
    ok = ~np.isnan(c).all(1)
    out[ok] = np.nanmax(c[ok], 1)
    return out


def moments(v, axis):
    """Population mean, var, skew, plain kurt along `axis` (NaN entries excluded)."""
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows (no valid entry) give NaN
        mean = np.nanmean(v, axis, keepdims=True)
        d = v - mean
        var = np.nanmean(d ** 2, axis)
        return (mean.squeeze(axis), var, np.nanmean(d ** 3, axis) / var ** 1.5, np.nanmean(d ** 4, axis) / var ** 2)


def folded_weights(hf):
    """W_in [L, D, d_model], b_in [L, D], W_out [L, D, d_model], W_U [d_model, V] float64 from the
    Hugging Face weights, folded and centred as TransformerLens does: LayerNorm scales folded into
    the reading weights, which are then centred over d_model (the LayerNorm output has mean 0);
    the LayerNorm bias folded into b_in; writing weights (W_out) centred over d_model; W_U also
    centred over the vocabulary (center_unembed)."""
    sd = {k: v.detach().double() for k, v in hf.state_dict().items()}
    W_in, b_in, W_out = [], [], []
    for l in range(L):
        w, b = sd[f"transformer.h.{l}.mlp.c_fc.weight"], sd[f"transformer.h.{l}.mlp.c_fc.bias"]
        gain, beta = sd[f"transformer.h.{l}.ln_2.weight"], sd[f"transformer.h.{l}.ln_2.bias"]
        wi = gain[:, None] * w
        W_in.append((wi - wi.mean(0)).T)
        b_in.append(b + beta @ w)
        wo = sd[f"transformer.h.{l}.mlp.c_proj.weight"]
        W_out.append(wo - wo.mean(1, keepdim=True))
    wu = sd["transformer.ln_f.weight"][:, None] * sd["lm_head.weight"].T
    wu = wu - wu.mean(0)
    wu = wu - wu.mean(1, keepdim=True)
    return torch.stack(W_in).numpy(), torch.stack(b_in).numpy(), torch.stack(W_out).numpy(), wu.numpy()


def _reference(names, hf_a, tokens, tokens2):
    from universal_neurons.capture import token_mask
    from universal_neurons.correlations import rotation_matrices
    from universal_neurons.models import load_model

    models = [load_model(n) for n in names]
    a = models[0]
    tok = a.tokenizer
    ref = {}

    # weights, from the HF state dict; the bridge (what weights.py reads) must agree
    W_in, b_in, W_out, W_U = folded_weights(hf_a)
    for mine, theirs in ((W_in, a.W_in.transpose(1, 2)), (b_in, a.b_in), (W_out, a.W_out), (W_U, a.W_U)):
        assert np.abs(mine - theirs.double().numpy()).max() < 1e-6
    w_in, w_out = W_in.reshape(N, D_MODEL), W_out.reshape(N, D_MODEL)
    ref["w_in_norm"] = np.linalg.norm(w_in, axis=1)
    ref["w_out_norm"] = np.linalg.norm(w_out, axis=1)
    ref["input_bias"] = b_in.reshape(N)
    with np.errstate(invalid="ignore", divide="ignore"):
        ref["in_out_sim"] = (w_in * w_out).sum(1) / (ref["w_in_norm"] * ref["w_out_norm"])
        cos_vocab = (w_out @ W_U) / np.outer(ref["w_out_norm"], np.linalg.norm(W_U, axis=0))  # [N, V]
    ref["l2_penalty"] = ref["w_in_norm"] ** 2 + ref["w_out_norm"] ** 2
    for k, v in zip(("mean", "var", "skew", "kurt"), moments(cos_vocab, 1)):
        ref[f"vocab_{k}"] = v

    # pre-activation moments and sparsity: EVERY position of both summary datasets, BOS included
    pre = np.concatenate([_hooked(a, tokens, "mlp.hook_pre"), _hooked(a, tokens2, "mlp.hook_pre")])
    ref["pre"] = pre
    ref["mean"], ref["var"], ref["skew"], ref["kurt"] = moments(pre, 0)
    ref["sparsity"] = (pre > 0).mean(0)

    # correlations: post-GELU activations at the positions the correlations count, i.e. all but
    # BOS / EOS / padding and the one-token '\n' (computed here; checked against capture.token_mask)
    nl = tok.encode("\n", add_special_tokens=False)
    assert len(nl) == 1
    drop = [i for i in (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id, nl[0]) if i is not None]
    keep = ~np.isin(tokens.numpy(), drop).reshape(-1)
    assert torch.equal(torch.from_numpy(keep), token_mask(tokens, tok).reshape(-1))
    assert 0 < (~keep).sum() < 0.3 * keep.size
    x = _hooked(a, tokens, "mlp.hook_post")[keep]
    real, base = [], []
    for m in models[1:]:
        y = _hooked(m, tokens, "mlp.hook_post")[keep]
        real.append(row_max(pearson(x, y)))
        # the only library code reused: the seeded Haar generator (seed SEED, rotation sample 0)
        R = rotation_matrices(SEED, 0, m.cfg.n_layers, m.cfg.d_mlp).double().numpy()   # [L2, D2, D2]
        assert np.abs(R @ R.transpose(0, 2, 1) - np.eye(m.cfg.d_mlp)).max() < 1e-12    # orthogonal
        y_l = y.reshape(len(y), m.cfg.n_layers, m.cfg.d_mlp)
        y_rot = np.einsum("tld,led->tle", y_l, R).reshape(len(y), -1)                   # R_l y_l per token
        base.append(row_max(pearson(x, y_rot)))
        ref.setdefault("dead_columns", []).append(np.ptp(y, 0) == 0)
    real, base = np.stack(real), np.stack(base)
    ref["max_corr"], ref["mean_corr"], ref["min_corr"] = real.max(0), real.mean(0), real.min(0)
    ref["max_baseline"], ref["min_baseline"], ref["mean_baseline"] = base.max(0), base.min(0), base.mean(0)
    ref["excess_corr"] = ref["mean_corr"] - ref["mean_baseline"]
    ref["layer"], ref["neuron"] = np.repeat(np.arange(L), D_MLP), np.tile(np.arange(D_MLP), L)
    ref["alive_post"] = np.ptp(x, 0) > 0
    ref["x"] = x
    return ref


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    from universal_neurons import activation_summary, correlations
    from universal_neurons.models import load_model, load_tokenizer, model_family
    from universal_neurons.token_datasets import save_token_dataset
    from universal_neurons.weights import save_weight_summaries

    root = tmp_path_factory.mktemp("neuron_df_columns")
    env = {"DATASET_DIR": root / "token_datasets", "RESULTS_DIR": root / "correlation_results",
           "SUMMARY_DIR": root / "summary_data", "DATAFRAME_DIR": root / "dataframes"}
    names, hf_a = _build_models(root)
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, str(v))
        tok = load_tokenizer(names[0])
        tokens, tokens2 = _token_rows(tok, N_SEQ, 0), _token_rows(tok, N_SEQ2, 1)
        for rows, name in ((tokens, DS), (tokens2, DS2)):
            save_token_dataset(rows.numpy().astype(np.int32), model_family(names[0]), name, tok)
        correlations.main(["--model_1_name", names[0], "--model_2_name", names[1], names[2], "--token_dataset", DS,
                           "--baseline", "none", "rotation", "--seed", str(SEED), "--batch_size", "5",
                           "--model_1_device", "cpu", "--model_2_device", "cpu", "--correlation_device", "cpu"])
        save_weight_summaries(load_model(names[0]), block_size=48)
        activation_summary.run_summary(names[0], [DS, DS2], n_bins=N_BINS, bin_min=BIN_MIN, bin_max=BIN_MAX,
                                       top_k=1, vocab_k=0, batch_size=7, device="cpu", progress=False)
    ref = _reference(names, hf_a, tokens, tokens2)
    p = {"env": env, "names": names, "ref": ref}
    p["df"] = make_df(p)
    return p


def make_df(p):
    """make_neuron_df of model a, with the pipeline's artifact folders."""
    with pytest.MonkeyPatch.context() as mp:
        for k, v in p["env"].items():
            mp.setenv(k, str(v))
        a, b, c = p["names"]
        return ndf.make_neuron_df(a, [b, c], DS, L, D_MLP)


# Checks -----------------------------------------------------------------------------------------

CORR_COLUMNS = ("max_corr", "mean_corr", "min_corr", "max_baseline", "min_baseline", "mean_baseline", "excess_corr")
# Correlation summaries are stored as float16: half an ulp is <= 2^-12 = 2.4e-4 for |c| < 1, so a
# max / mean / min over seeds is off by <= 2.4e-4 and excess_corr (a difference) by <= 4.9e-4; the
# streaming float32 statistics add far less (the largest error seen here is 2.4e-4, the fp16 rounding,
# the large-mean neuron included). 1e-3 leaves room, and is still far below the gaps between seeds
# that a wrong max / mean / min or a wrong baseline produces (>= 1e-2).
CORR_ATOL = 1e-3
# Weights: the bridge folds the float32 weights in float32 (relative error ~1e-7 against the float64
# folding here); neuron_stats is float64 of those and the CSV round trip is exact.
WEIGHT_RTOL, WEIGHT_ATOL = 1e-5, 1e-7
# vocab_*: float32 unit vectors and cosines (error ~1e-6 per cosine at d_model 32), moments of 300
# cosines summed in float32, stored as float32 -> relative 1e-4 plus 1e-6 absolute (vocab_mean ~ 0).
VOCAB_RTOL, VOCAB_ATOL = 1e-4, 1e-6


def _edges_width():
    e = torch.linspace(BIN_MIN, BIN_MAX, N_BINS).double().numpy()
    return e, np.diff(e).max()


def binned_moment_bounds(pre):
    """Tolerances of the binned moments against the raw ones, per neuron.

    Every value x in [e0, e_-1] is counted as its bin's midpoint v = x + e with |e| <= w/2, so with
    d = x - mean(x), d' = v - mean(v) = d + delta, |delta| <= w, ||delta||_2 = sd(e) <= w/2:
      mean: |mean_v - mean_x| <= w/2
      var:  sd_v in [sd - w/2, sd + w/2] (Minkowski)
      skew: |m3' - m3| <= mean(|delta| |d'^2 + d'd + d^2|) <= 1.5 w (m2 + m2'), over sd_v^3
      kurt: m4'^(1/4) = ||d'||_4 in [||d||_4 - w, ||d||_4 + w], over sd_v^4
    (rigorous worst cases; the real errors are far smaller, as the rounding errors average out).
    """
    _, w = _edges_width()
    mean, var, skew, _ = moments(pre, 0)
    sd = np.sqrt(var)
    q = np.mean((pre - mean) ** 4, 0) ** 0.25
    lo_sd, hi_sd = np.maximum(sd - w / 2, 0), sd + w / 2
    with np.errstate(invalid="ignore", divide="ignore"):   # the dead neuron: sd 0 -> NaN (not compared)
        m3 = skew * var ** 1.5
        d3 = 1.5 * w * (var + hi_sd ** 2)
        skew_corners = np.stack([(m3 + s3) / den ** 3 for s3 in (-d3, d3) for den in (lo_sd, hi_sd)])
        kurt_corners = np.stack([np.maximum(q - w, 0) ** 4 / hi_sd ** 4, (q + w) ** 4 / lo_sd ** 4])
        return {"mean": np.full(pre.shape[1], w / 2),
                "var": np.maximum(np.abs(hi_sd ** 2 - var), np.abs(var - lo_sd ** 2)),
                "skew": np.abs(skew_corners - skew).max(0),
                "kurt": np.abs(kurt_corners - (q / sd) ** 4).max(0)}


def check_column(df, ref, col):
    """Assert one dataframe column against the float64 reference (NaN exactly where expected)."""
    got = df[col].to_numpy(dtype=np.float64)
    want = ref[col].astype(np.float64)
    assert got.shape == want.shape == (N,), col
    nan_got, nan_want = np.isnan(got), np.isnan(want)
    assert (nan_got == nan_want).all(), f"{col}: NaN at {np.flatnonzero(nan_got)}, expected {np.flatnonzero(nan_want)}"
    g, r = got[~nan_want], want[~nan_want]
    if col in ("layer", "neuron"):
        assert (got == want).all(), col
        return
    if col in CORR_COLUMNS:
        tol = np.full(len(r), CORR_ATOL)
    elif col in ("w_in_norm", "w_out_norm", "input_bias", "in_out_sim", "l2_penalty"):
        tol = WEIGHT_ATOL + WEIGHT_RTOL * np.abs(r)
    elif col.startswith("vocab_"):
        tol = VOCAB_ATOL + VOCAB_RTOL * np.abs(r)
    elif col in ("mean", "var", "skew", "kurt"):
        tol = binned_moment_bounds(ref["pre"])[col][~nan_want] * (1 + 1e-6) + 1e-12
    elif col == "sparsity":
        tol = np.full(len(r), 1e-12)   # 0 is a bin edge: the histogram's share above 0 is exact
    else:
        raise AssertionError(f"no reference for column {col}")
    err = np.abs(g - r)
    bad = np.flatnonzero(err > tol)
    assert not len(bad), (f"{col}: {len(bad)} neurons off, worst flat index {bad[np.argmax(err[bad])]}: "
                          f"got {g[bad][:4]}, want {r[bad][:4]}, tol {tol[bad][:4]}")


def test_columns_and_rows(pipeline):
    df = pipeline["df"]
    assert list(df.columns) == NEURON_DF_COLUMNS and len(NEURON_DF_COLUMNS) == 23 and len(df) == N


@pytest.mark.parametrize("col", NEURON_DF_COLUMNS)
def test_column_matches_float64_reference(pipeline, col):
    check_column(pipeline["df"], pipeline["ref"], col)


def test_adversarial_neurons_are_what_they_claim(pipeline):
    """The special neurons really are special (so the column checks above exercise them)."""
    ref, df = pipeline["ref"], pipeline["df"]
    dead, large, flat_out = flat(DEAD_A), flat(LARGE_A), flat(FLAT_OUT_A)
    # the dead neuron: constant pre and post -> every correlation column NaN, never universal
    assert ref["var"][dead] == 0 and np.ptp(ref["pre"][:, dead]) == 0 and not ref["alive_post"][dead]
    assert ref["alive_post"].sum() == N - 1
    for col in CORR_COLUMNS:
        assert np.isnan(df.loc[dead, col]), col
    assert np.isnan(df.loc[dead, "in_out_sim"]) and df.loc[dead, "w_in_norm"] == 0
    assert df.loc[dead, "var"] == 0 and np.isnan(df.loc[dead, "skew"]) and np.isnan(df.loc[dead, "kurt"])
    assert df.loc[dead, "sparsity"] == 0 and abs(df.loc[dead, "mean"] + 0.8) <= 2.0 ** -14
    assert not ndf.universal_neurons(df).index.isin([dead]).any()
    # dead columns exist in both other models (b: DEAD_B; c: the copy of a's dead neuron)
    assert [int(d.sum()) for d in ref["dead_columns"]] == [1, 1] and ref["dead_columns"][0][flat(DEAD_B)]
    # the large-mean neuron
    x = ref["x"][:, large]
    assert x.mean() / x.std() > 300 and ref["sparsity"][large] == 1
    assert ref["max_corr"][large] > 0.8
    # the constant w_out: zero after centring
    assert df.loc[flat_out, "w_out_norm"] < 1e-6
    assert all(np.isnan(df.loc[flat_out, c]) for c in ("in_out_sim", "vocab_mean", "vocab_var", "vocab_skew",
                                                       "vocab_kurt"))
    # every raw pre-activation lies inside the histogram range (else the bounds would not hold)
    e, _ = _edges_width()
    assert ref["pre"].min() > e[0] and ref["pre"].max() < e[-1] and e[np.argmin(np.abs(e))] == 0.0
    # the copy c gives real correlations clearly above the rotation baseline (b alone would not)
    assert np.nanmedian(df["max_corr"] - df["max_baseline"]) > 0.1 and np.nanmin(df["excess_corr"]) > 0
