"""Weight summaries vs a float64 brute force on tiny GPT-2 bridges; q/k orientation on a hand-built one."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import json

import numpy as np
import pandas as pd
import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from universal_neurons import weights as W

L, D_MODEL, D_MLP, N_HEAD, VOCAB = 2, 32, 64, 2, 300
N = L * D_MLP
D_HEAD = D_MODEL // N_HEAD


def make_bridge(hf_model):
    from transformer_lens.model_bridge.sources._bridge_builder import build_bridge_from_module

    bridge = build_bridge_from_module(hf_model, "GPT2LMHeadModel", hf_config=hf_model.config)
    bridge.enable_compatibility_mode()
    return bridge


def gpt2(seed=0, vocab=VOCAB):
    torch.manual_seed(seed)
    cfg = GPT2Config(n_layer=L, n_embd=D_MODEL, n_head=N_HEAD, n_inner=D_MLP, vocab_size=vocab, n_positions=16,
                     bos_token_id=0, eos_token_id=0)
    return GPT2LMHeadModel(cfg).eval()


@pytest.fixture(scope="module")
def adversarial():
    """Random GPT-2 (non-trivial LayerNorms, so folding matters) with a dead neuron (zero w_in and
    w_out), a constant w_out (zero after centring), two neurons with identical w_in, a zero and a
    huge token embedding."""
    hf = gpt2(seed=1)
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if ".ln_" in name:
                p.add_(0.3 * torch.randn_like(p))
        mlp0, mlp1 = hf.transformer.h[0].mlp, hf.transformer.h[1].mlp
        mlp0.c_fc.weight[:, 3] = 0          # neuron 0.3: dead
        mlp0.c_proj.weight[3, :] = 0
        mlp1.c_proj.weight[10, :] = 5.0     # neuron 1.10: constant output, removed by centring
        mlp1.c_fc.weight[:, 6] = mlp1.c_fc.weight[:, 5]  # neurons 1.5 and 1.6 read the same direction
        hf.transformer.wte.weight[7] = 0
        hf.transformer.wte.weight[8] *= 1e4
    bridge = make_bridge(hf)
    assert (bridge.W_out[0, 3] == 0).all() and (bridge.W_in[0, :, 3] == 0).all()
    assert (bridge.W_out[1, 10] == 0).all() and (bridge.W_E[7] == 0).all()
    return bridge


@pytest.fixture(scope="module")
def summaries(adversarial):
    return W.compute_weight_summaries(adversarial, block_size=48)  # 48 does not divide N = 128


def ref_weights(model):
    """float64 numpy copies straight from the bridge, independent of extract_weights."""
    g = lambda name: getattr(model, name).detach().double().numpy()  # noqa: E731
    return {"W_in": g("W_in").transpose(0, 2, 1).reshape(N, D_MODEL), "W_out": g("W_out").reshape(N, D_MODEL),
            "b_in": g("b_in").reshape(N), "W_E": g("W_E"), "W_U": g("W_U"),
            "W_Q": g("W_Q"), "W_K": g("W_K"), "W_V": g("W_V"), "W_O": g("W_O")}


def cosines(a, b):
    """[n, d] x [m, d] -> [n, m] float64 cosines; NaN where a vector is zero."""
    with np.errstate(invalid="ignore", divide="ignore"):
        an = a / np.linalg.norm(a, axis=1, keepdims=True)
        bn = b / np.linalg.norm(b, axis=1, keepdims=True)
    return an @ bn.T


def check_row_summaries(got, ref_cos, k, what):
    """Compare one kind's summaries ([L, D, ...]) with a float64 [N, C] cosine matrix whose NaNs
    are the entries to exclude."""
    flat = {key: t.reshape(N, *t.shape[2:]).double().numpy() for key, t in got.items()}
    valid = ~np.isnan(ref_cos)
    count = valid.sum(1)
    edges = W.hist_edges().double().numpy()
    for i in range(N):
        x = ref_cos[i][valid[i]]
        # top / bottom: sorted values match; every returned index points at its value
        for side, order in (("top", -np.sort(-x)), ("bottom", np.sort(x))):
            v, ix = flat[f"{side}_{what}_value"][i], flat[f"{side}_{what}_ix"][i].astype(int)
            kk = min(k, len(x))
            np.testing.assert_allclose(v[:kk], order[:kk], atol=2e-6)
            assert (ix[:kk] >= 0).all() and valid[i, ix[:kk]].all()
            np.testing.assert_allclose(ref_cos[i, ix[:kk]], v[:kk], atol=2e-6)
            assert np.isnan(v[kk:]).all() and (ix[kk:] == -1).all()
        # histogram: bin j holds (e[j-1], e[j]]; exact unless a value sits within 1e-6 of an edge
        ref_hist = np.bincount(np.searchsorted(edges, x, side="left"), minlength=len(edges) + 1)
        hist = flat["comp_hist"][i]
        assert hist.sum() == count[i]
        if not (np.abs(x[:, None] - edges[None]) < 1e-6).any():
            np.testing.assert_array_equal(hist, ref_hist)
        # population moments, plain kurtosis
        if count[i] == 0:
            assert np.isnan([flat[f"comp_{m}"][i] for m in ("mean", "var", "skew", "kurt")]).all()
            continue
        mean = x.mean()
        var = ((x - mean) ** 2).mean()
        np.testing.assert_allclose(flat["comp_mean"][i], mean, atol=1e-6)
        np.testing.assert_allclose(flat["comp_var"][i], var, rtol=1e-4)
        np.testing.assert_allclose(flat["comp_skew"][i], ((x - mean) ** 3).mean() / var ** 1.5, rtol=1e-3, atol=1e-4)
        np.testing.assert_allclose(flat["comp_kurt"][i], ((x - mean) ** 4).mean() / var ** 2, rtol=1e-4)


# Schema -----------------------------------------------------------------------------------------

def test_artifacts_schema_and_rerun(adversarial, tmp_path):
    out = W.save_weight_summaries(adversarial, tmp_path / "m" / "weights", block_size=40)
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["neuron_stats.csv", "k_comps.pt", "q_comps.pt", "v_comps.pt", "o_comps.pt", "vocab_comps.pt", "neuron_comps.pt",
         "architecture.json", "run.json"])
    df = pd.read_csv(out / "neuron_stats.csv")
    assert list(df.columns) == ["layer", "neuron_ix", "input_weight_norm", "input_bias", "output_weight_norm", "in_out_sim"]
    assert len(df) == N and df.layer.tolist() == [0] * D_MLP + [1] * D_MLP and df.neuron_ix.tolist() == list(range(D_MLP)) * 2
    for kind in "kqvo":
        t = torch.load(out / f"{kind}_comps.pt")
        assert t.dtype == torch.float16 and t.shape == (L, D_MLP, L, N_HEAD)
    for fname, kinds, what, k, C in (("vocab_comps.pt", ["E_in", "U_in", "E_out", "U_out"], "vocab", 100, VOCAB),
                                     ("neuron_comps.pt", ["in_in", "in_out", "out_in", "out_out"], "neuron", 20, N)):
        d = torch.load(out / fname)
        assert list(d) == kinds
        for kind in kinds:
            s = d[kind]
            assert sorted(s) == sorted([f"top_{what}_value", f"top_{what}_ix", f"bottom_{what}_value", f"bottom_{what}_ix",
                                        "comp_hist", "comp_mean", "comp_var", "comp_skew", "comp_kurt"])
            for side in ("top", "bottom"):
                assert s[f"{side}_{what}_value"].dtype == torch.float32 and s[f"{side}_{what}_value"].shape == (L, D_MLP, k)
                assert s[f"{side}_{what}_ix"].dtype == torch.int64 and s[f"{side}_{what}_ix"].shape == (L, D_MLP, k)
                assert s[f"{side}_{what}_ix"].max() < C
            assert s["comp_hist"].dtype == torch.int32 and s["comp_hist"].shape == (L, D_MLP, 101)
            for m in ("mean", "var", "skew", "kurt"):
                assert s[f"comp_{m}"].dtype == torch.float32 and s[f"comp_{m}"].shape == (L, D_MLP)

    # a rerun skips finished files; a missing group is recomputed alone; force (--overwrite) keeps what
    # this record made and replaces everything made under another record
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    W.save_weight_summaries(adversarial, out)
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == mtimes
    (out / "q_comps.pt").unlink()
    W.save_weight_summaries(adversarial, out)
    now = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert now["vocab_comps.pt"] == mtimes["vocab_comps.pt"] and now["k_comps.pt"] != mtimes["k_comps.pt"]
    W.save_weight_summaries(adversarial, out, force=True)
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == now
    # a folder made before architecture.json existed gains it from the config, nothing recomputed
    (out / "architecture.json").unlink()
    W.save_weight_summaries(adversarial, out)
    assert {n: t for n, t in ((p.name, p.stat().st_mtime_ns) for p in out.iterdir()) if n != "architecture.json"} == \
        {n: t for n, t in now.items() if n != "architecture.json"}
    assert W.read_weight_summaries("m", out)["architecture"]["n_layers"] == L
    record = json.loads((out / W.RUN_FILE).read_text())
    (out / W.RUN_FILE).write_text(json.dumps({**record, "model_fingerprint": "other-weights"}))
    with pytest.raises(W.UserError, match="model_fingerprint 'other-weights' ->"):
        W.save_weight_summaries(adversarial, out)
    W.save_weight_summaries(adversarial, out, force=True)
    assert all(p.stat().st_mtime_ns != now[p.name] for p in out.iterdir() if p.name in now)
    assert json.loads((out / W.RUN_FILE).read_text()) == record
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temporary leftovers


def test_out_dir_from_model_name(adversarial, tmp_path, monkeypatch):
    monkeypatch.setenv("SUMMARY_DIR", str(tmp_path))
    monkeypatch.setattr(adversarial, "model_name", "org/tiny", raising=False)
    out = tmp_path / "org_tiny" / "weights"
    out.mkdir(parents=True)
    for f in ("k_comps.pt", "q_comps.pt", "v_comps.pt", "o_comps.pt", "vocab_comps.pt", "neuron_comps.pt"):
        (out / f).write_text("done before")  # only neuron_stats is left to compute ...
    with pytest.raises(W.UserError, match="no record of its settings"):  # ... once we know what made them
        W.save_weight_summaries(adversarial)
    W.runs.write_record(out / W.RUN_FILE, W.weights_record("org/tiny"))
    assert not W.weights_done("org/tiny")
    assert W.save_weight_summaries(adversarial) == out
    assert W.weights_done("org/tiny")
    (out / W.RUN_FILE).write_text('{"model": "org/tiny", "model_fingerprint": "other weights"}')
    assert not W.weights_done("org/tiny")
    with pytest.raises(W.UserError, match="model_fingerprint 'other weights'"):
        W.save_weight_summaries(adversarial)
    W.runs.write_record(out / W.RUN_FILE, W.weights_record("org/tiny"))
    assert len(pd.read_csv(out / "neuron_stats.csv")) == N and (out / "vocab_comps.pt").read_text() == "done before"
    monkeypatch.setattr(adversarial, "model_name", None)
    with pytest.raises(W.UserError):
        W.save_weight_summaries(adversarial)


# Numerics vs float64 brute force ----------------------------------------------------------------

def test_neuron_stats(adversarial, summaries):
    r = ref_weights(adversarial)
    df = summaries["neuron_stats"]
    in_norm, out_norm = np.linalg.norm(r["W_in"], axis=1), np.linalg.norm(r["W_out"], axis=1)
    np.testing.assert_allclose(df.input_weight_norm, in_norm, rtol=1e-6)
    np.testing.assert_allclose(df.output_weight_norm, out_norm, rtol=1e-6)
    np.testing.assert_allclose(df.input_bias, r["b_in"], rtol=1e-6)
    with np.errstate(invalid="ignore"):
        ref_sim = (r["W_in"] * r["W_out"]).sum(1) / (in_norm * out_norm)
    np.testing.assert_allclose(df.in_out_sim, ref_sim, rtol=1e-5, atol=1e-7)
    assert np.isnan(df.in_out_sim[3]) and np.isnan(df.in_out_sim[D_MLP + 10])  # dead / constant neurons


def test_attention_compositions_vs_full_matrices(adversarial, summaries):
    r = ref_weights(adversarial)
    with np.errstate(invalid="ignore", divide="ignore"):
        for la in range(L):
            for h in range(N_HEAD):
                W_QK = r["W_Q"][la, h] @ r["W_K"][la, h].T  # [d_model, d_model], rows = query side
                W_OV = r["W_V"][la, h] @ r["W_O"][la, h]
                out_n = np.linalg.norm(r["W_out"], axis=1)
                in_n = np.linalg.norm(r["W_in"], axis=1)
                ref = {
                    "q": np.linalg.norm(r["W_out"] @ W_QK, axis=1) / (np.linalg.norm(W_QK) * out_n),
                    "k": np.linalg.norm(r["W_out"] @ W_QK.T, axis=1) / (np.linalg.norm(W_QK) * out_n),
                    "v": np.linalg.norm(r["W_out"] @ W_OV, axis=1) / (np.linalg.norm(W_OV) * out_n),
                    "o": np.linalg.norm(r["W_in"] @ W_OV.T, axis=1) / (np.linalg.norm(W_OV) * in_n),
                }
                for kind, want in ref.items():
                    got = summaries[f"{kind}_comps"][:, :, la, h].reshape(N).double().numpy()
                    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4)  # fp16 storage
                    assert not np.allclose(ref["q"], ref["k"])  # the test can tell q from k
    assert torch.isnan(summaries["v_comps"][0, 3]).all() and torch.isnan(summaries["o_comps"][0, 3]).all()


def test_vocab_compositions_vs_bruteforce(adversarial, summaries):
    r = ref_weights(adversarial)
    E, U = r["W_E"], r["W_U"].T
    refs = {"E_in": cosines(r["W_in"], E), "U_in": cosines(r["W_in"], U),
            "E_out": cosines(r["W_out"], E), "U_out": cosines(r["W_out"], U)}
    for kind, ref in refs.items():
        check_row_summaries(summaries["vocab_comps"][kind], ref, 100, "vocab")
    # the zero embedding (token 7) is excluded from every E_* row, the huge one (8) is not
    e_in = summaries["vocab_comps"]["E_in"]
    assert (e_in["comp_hist"].sum(-1)[0, 0] == VOCAB - 1) and (e_in["top_vocab_ix"] != 7).all()
    assert (summaries["vocab_comps"]["U_in"]["comp_hist"].sum(-1)[0, 0] == VOCAB)


def test_neuron_compositions_exclude_self(adversarial, summaries):
    r = ref_weights(adversarial)
    ins, outs = r["W_in"], r["W_out"]
    refs = {"in_in": cosines(ins, ins), "in_out": cosines(ins, outs), "out_in": cosines(outs, ins),
            "out_out": cosines(outs, outs)}
    for kind, ref in refs.items():
        np.fill_diagonal(ref, np.nan)  # self-similarity excluded, not zeroed
        check_row_summaries(summaries["neuron_comps"][kind], ref, 20, "neuron")
        got = summaries["neuron_comps"][kind]
        ix = got["top_neuron_ix"].reshape(N, 20)
        assert not (ix == torch.arange(N)[:, None]).any()
        assert not (got["bottom_neuron_ix"].reshape(N, 20) == torch.arange(N)[:, None]).any()
    in_in = summaries["neuron_comps"]["in_in"]
    # 1.5 and 1.6 read the same direction: each is the other's top match at cosine 1 (a real pair)
    assert in_in["top_neuron_ix"][1, 5, 0] == D_MLP + 6 and in_in["top_neuron_ix"][1, 6, 0] == D_MLP + 5
    assert in_in["top_neuron_value"][1, 5, 0] == pytest.approx(1.0, abs=1e-6)
    # a dead neuron's row is empty, and it never appears as a column
    assert in_in["comp_hist"][0, 3].sum() == 0 and torch.isnan(in_in["comp_mean"][0, 3])
    assert (in_in["top_neuron_ix"][0, 3] == -1).all() and torch.isnan(in_in["top_neuron_value"][0, 3]).all()
    assert (in_in["comp_hist"].sum(-1).flatten()[torch.arange(N) != 3] == N - 2).all()
    assert (in_in["top_neuron_ix"] != 3).all()


def test_blockwise_equals_one_block(adversarial, summaries):
    whole = W.compute_weight_summaries(adversarial, block_size=N)
    pd.testing.assert_frame_equal(whole["neuron_stats"], summaries["neuron_stats"])
    for kind in "kqvo":
        torch.testing.assert_close(whole[f"{kind}_comps"], summaries[f"{kind}_comps"], equal_nan=True, atol=1e-3, rtol=1e-3)
    for group in ("vocab_comps", "neuron_comps"):
        for kind, stats in whole[group].items():
            for key, t in stats.items():
                other = summaries[group][kind][key]
                if key.endswith("_ix") or key == "comp_hist":
                    assert torch.equal(t, other), (group, kind, key)
                else:
                    torch.testing.assert_close(t, other, equal_nan=True, atol=1e-6, rtol=1e-5)


def test_weights_unchanged(adversarial):
    before = {k: v.detach().clone() for k, v in adversarial.state_dict().items()}
    views = {n: getattr(adversarial, n).detach().clone() for n in ("W_in", "W_out", "W_E", "W_U", "W_Q", "W_O")}
    W.compute_weight_summaries(adversarial, block_size=64)
    after = adversarial.state_dict()
    assert before.keys() == after.keys()
    for k, v in before.items():
        assert torch.equal(v, after[k]), k
    for n, v in views.items():
        assert torch.equal(v, getattr(adversarial, n)), n


def test_fewer_columns_than_k_and_bad_block_size():
    bridge = make_bridge(gpt2(seed=2, vocab=60))  # 60 tokens < top-100
    s = W.compute_weight_summaries(bridge, block_size=100)["vocab_comps"]["U_out"]
    assert (s["top_vocab_ix"][..., :60] >= 0).all() and (s["top_vocab_ix"][..., 60:] == -1).all()
    assert torch.isnan(s["bottom_vocab_value"][..., 60:]).all() and (s["comp_hist"].sum(-1) == 60).all()
    with pytest.raises(W.UserError):
        W.compute_weight_summaries(bridge, block_size=0)


# q vs k orientation, on a hand-built model --------------------------------------------------------

def test_orientation_on_hand_built_model():
    """Layer 1 head 0 has W_Q = a e0^T and W_K = b e0^T, so W_QK = a b^T: the query reads direction
    a, the key reads b. Head 1 has W_V = c e0^T, W_O = e0 d^T: W_OV = c d^T reads c, writes d.
    Directions are orthonormal and orthogonal to the all-ones vector, so the LayerNorm folding
    and centring of compatibility mode leave them unchanged."""
    hf = gpt2(seed=3)
    g = torch.Generator().manual_seed(0)
    basis = torch.randn(D_MODEL, 4, generator=g)
    basis -= basis.mean(0)  # orthogonal to ones
    a, b, c, d = torch.linalg.qr(basis).Q.T
    with torch.no_grad():
        attn1 = hf.transformer.h[1].attn
        q_cols, k_cols, v_cols = slice(0, D_HEAD), slice(D_MODEL, D_MODEL + D_HEAD), slice(2 * D_MODEL + D_HEAD, 3 * D_MODEL)
        for cols, vec in ((q_cols, a), (k_cols, b), (v_cols, c)):  # HF Conv1D: x @ weight, columns q | k | v
            attn1.c_attn.weight[:, cols] = 0
            attn1.c_attn.weight[:, cols.start] = vec
        attn1.c_proj.weight[D_HEAD:2 * D_HEAD] = 0  # head 1 writes d from its first dimension only
        attn1.c_proj.weight[D_HEAD] = d
        mlp0, mlp1 = hf.transformer.h[0].mlp, hf.transformer.h[1].mlp
        mlp0.c_proj.weight[0], mlp0.c_proj.weight[1] = a, b           # neuron 0.0 writes a, 0.1 writes b
        mlp0.c_proj.weight[2], mlp0.c_proj.weight[3] = c, d           # 0.2 writes c, 0.3 writes d
        mlp1.c_fc.weight[:, 3], mlp1.c_fc.weight[:, 4] = d, c         # 1.3 reads d, 1.4 reads c
    bridge = make_bridge(hf)
    torch.testing.assert_close(bridge.W_Q[1, 0, :, 0], a)  # the construction survived folding
    torch.testing.assert_close(bridge.W_K[1, 0, :, 0], b)

    s = W.compute_weight_summaries(bridge, block_size=16)
    q, k, v, o = (s[f"{x}_comps"].float() for x in "qkvo")
    assert q[0, 0, 1, 0] == pytest.approx(1, abs=1e-3) and k[0, 0, 1, 0] == pytest.approx(0, abs=1e-3)
    assert q[0, 1, 1, 0] == pytest.approx(0, abs=1e-3) and k[0, 1, 1, 0] == pytest.approx(1, abs=1e-3)
    assert v[0, 2, 1, 1] == pytest.approx(1, abs=1e-3) and v[0, 3, 1, 1] == pytest.approx(0, abs=1e-3)
    assert o[1, 3, 1, 1] == pytest.approx(1, abs=1e-3) and o[1, 4, 1, 1] == pytest.approx(0, abs=1e-3)


def test_causal_mask():
    m = W.causal_mask("q", 3)
    assert m.shape == (3, 1, 3, 1) and m[0, 0, 1, 0] and not m[1, 0, 1, 0] and not m[2, 0, 0, 0]
    o = W.causal_mask("o", 3)
    assert o[1, 0, 1, 0] and not o[0, 0, 1, 0] and not W.causal_mask("o", 3, parallel_attn=True)[1, 0, 1, 0]


def test_row_summary_bin_convention_at_edges():
    """Values exactly on edges go to the bin whose right edge they are (e[i-1], e[i]], as
    np.searchsorted(side='left'); NaN is excluded; an all-NaN row is empty."""
    e = W.hist_edges()
    rows = torch.stack([
        torch.cat([e[[0, 1, 50, 99]], torch.tensor([-1.5, 1.5, torch.nan, 0.3])]),
        torch.full((8,), torch.nan),
        torch.tensor([0.5] * 8),
    ])
    s = W._summarise_rows(rows.clone(), 3, e, "x")
    want = np.bincount(np.searchsorted(e.numpy(), rows[0, :6].numpy(), side="left"), minlength=101)
    want[np.searchsorted(e.numpy(), 0.3, side="left")] += 1
    np.testing.assert_array_equal(s["comp_hist"][0].numpy(), want)
    assert s["comp_hist"][0, 0] == 2 and s["comp_hist"][0, 100] == 1  # -1.5 and -1.0 | 1.5
    assert s["comp_hist"][1].sum() == 0 and (s["top_x_ix"][1] == -1).all() and torch.isnan(s["comp_var"][1])
    assert s["top_x_value"][0].tolist() == [1.5, 1.0, rows[0, 7].item()] and s["top_x_ix"][0].tolist() == [5, 3, 7]
    assert s["bottom_x_ix"][0].tolist() == [4, 0, 1]
    assert s["comp_var"][2] == 0 and torch.isnan(s["comp_kurt"][2])  # constant row: undefined shape moments


# Command line -----------------------------------------------------------------------------------

def test_cli_end_to_end(tmp_path, capsys):
    """weights.py on a local Hugging Face folder through the real loader (LayerNorm not trivial)."""
    import importlib.util
    from pathlib import Path

    from universal_neurons import paths
    from conftest import build_gpt2_folder

    from universal_neurons.models import load_model

    folder, _ = build_gpt2_folder(tmp_path / "tiny-gpt2", vocab=300)
    spec = importlib.util.spec_from_file_location("weights_cli", Path(__file__).parents[1] / "weights.py")
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)

    cli.main(["--model", str(folder), "--save_path", str(tmp_path / "out"), "--device", "cpu", "--block_size", "50"])
    out = tmp_path / "out" / paths.model_dirname(str(folder)) / "weights"
    assert sorted(p.name for p in out.iterdir()) == sorted([f for files in W.ARTIFACT_GROUPS.values() for f in files] +
                                                           [W.RUN_FILE])
    # the record holds the content hash of the folder's weights: another checkpoint is told apart
    record = json.loads((out / W.RUN_FILE).read_text())
    assert record["model"] == str(folder) and len(record["model_fingerprint"]) == 16
    want = W.compute_weight_summaries(load_model(str(folder)), block_size=128)
    got = torch.load(out / "neuron_comps.pt", weights_only=True)
    for key, t in want["neuron_comps"]["out_in"].items():
        torch.testing.assert_close(got["out_in"][key], t, equal_nan=True, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(torch.load(out / "q_comps.pt", weights_only=True), want["q_comps"], atol=1e-3, rtol=1e-3)
    pd.testing.assert_frame_equal(pd.read_csv(out / "neuron_stats.csv"), want["neuron_stats"], check_exact=False, rtol=1e-9)

    with pytest.raises(SystemExit) as e:
        cli.main(["--model", str(folder), "--block_size", "0"])
    assert e.value.code == 2 and "block size" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        cli.main(["--model", str(tmp_path / "nowhere")])
    assert e.value.code == 2


def test_layer_subset_equals_slice_of_full(adversarial, summaries):
    part = W.compute_weight_summaries(adversarial, block_size=30, layers=[1])
    assert part["neuron_stats"].layer.tolist() == [1] * D_MLP
    for kind in "kqvo":
        torch.testing.assert_close(part[f"{kind}_comps"], summaries[f"{kind}_comps"][1:], equal_nan=True, atol=1e-3, rtol=1e-3)
    for group in ("vocab_comps", "neuron_comps"):
        for kind, stats in part[group].items():
            for key, t in stats.items():
                full = summaries[group][kind][key][1:]
                assert t.shape == full.shape
                if key.endswith("_ix") or key == "comp_hist":
                    assert torch.equal(t, full), (group, kind, key)
                else:
                    torch.testing.assert_close(t, full, equal_nan=True, atol=1e-6, rtol=1e-5)
    with pytest.raises(W.UserError):
        W.compute_weight_summaries(adversarial, layers=[2])


def test_hist_bins_match_bucketize():
    e = W.hist_edges()
    up, down = torch.full_like(e, 2.0), torch.full_like(e, -2.0)
    x = torch.cat([e, e.nextafter(up), e.nextafter(down), e.nextafter(up).nextafter(up),
                   torch.rand(200_000, generator=torch.Generator().manual_seed(0)) * 2.4 - 1.2,
                   torch.tensor([-1.0, 1.0, 0.0, -7.0, 7.0])])
    np.testing.assert_array_equal(W._hist_bins(x[None], e)[0].long().numpy(), torch.bucketize(x, e).numpy())
    assert torch.isnan(W._hist_bins(torch.tensor([[torch.nan]]), e)).all()
