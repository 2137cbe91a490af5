"""Attention deactivation against a by-hand float64 recomputation of the head's attention.

Model: a random 2-layer GPT-2 (d_model 32, 2 heads of 16) whose layer-0 neuron WRITER writes a large
vector into the residual stream, so path-ablating it visibly moves head (1, HEAD)'s query.
"""
from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.stats import pearsonr, spearmanr

from conftest import build_gpt2_folder
from universal_neurons import attention_deactivation as ad
from universal_neurons.errors import UserError

LAYER, HEAD, WRITER = 1, 0, 3
N_SEQ, CTX = 7, 12


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    from universal_neurons.models import load_model

    folder, hf = build_gpt2_folder(tmp_path_factory.mktemp("ad") / "attn", n_layer=2, d_model=32, d_mlp=64,
                                   n_head=2, vocab=300, seed=5, ctx=CTX)
    with torch.no_grad():
        w = hf.transformer.h[0].mlp.c_proj.weight  # [d_mlp, d_model]
        w[WRITER] = 2.0 * torch.randn(32, generator=torch.Generator().manual_seed(0))
        # sharper attention than a 0.02-std init gives, so BOS attention varies across positions
        hf.transformer.h[1].attn.c_attn.weight.mul_(8)
    hf.save_pretrained(str(folder))
    return str(folder), load_model(str(folder))


def save_tokens(folder, n_seq=N_SEQ, seed=0, name="rand.12"):
    from universal_neurons.models import load_tokenizer, model_family
    from universal_neurons.token_datasets import save_token_dataset

    tok = load_tokenizer(folder)
    rows = np.random.default_rng(seed).integers(1, len(tok), size=(n_seq, CTX))
    rows[:, 0] = tok.bos_token_id
    save_token_dataset(rows.astype(np.int32), model_family(folder), name, tok)
    return name, torch.tensor(rows, dtype=torch.long)


def by_hand(model, tokens, neuron):
    """(activation, d_bos_attn, d_norm) [batch, pos] in float64 from the clean cache: the head's
    attention recomputed with the patched query and the clean keys and values."""
    l, n = neuron
    _, c = model.run_with_cache(tokens)
    a = c[f"blocks.{l}.mlp.hook_post"][..., n].double()
    resid = c[f"blocks.{LAYER}.hook_resid_pre"].double() - a[..., None] * model.W_out[l, n].double()
    x = resid - resid.mean(-1, keepdim=True)
    x = x / (x.pow(2).mean(-1, keepdim=True) + model.cfg.eps).sqrt()
    q = x @ model.W_Q[LAYER, HEAD].double() + model.b_Q[LAYER, HEAD].double()  # [b, p, d_head]
    k = c[f"blocks.{LAYER}.attn.hook_k"][:, :, HEAD].double()
    v = c[f"blocks.{LAYER}.attn.hook_v"][:, :, HEAD].double()
    scores = q @ k.transpose(1, 2) / math.sqrt(model.cfg.d_head)
    P = tokens.shape[1]
    scores = scores.masked_fill(torch.triu(torch.ones(P, P, dtype=torch.bool), 1), float("-inf"))
    pattern = scores.softmax(-1)
    W_O = model.W_O[LAYER, HEAD].double()
    norm = (pattern @ v @ W_O).norm(dim=-1)
    clean_pattern = c[f"blocks.{LAYER}.attn.hook_pattern"][:, HEAD].double()
    clean_norm = (c[f"blocks.{LAYER}.attn.hook_z"][:, :, HEAD].double() @ W_O).norm(dim=-1)
    return a, pattern[..., 0] - clean_pattern[..., 0], norm - clean_norm


def tokens_for(model, n=4, seed=1):
    t = torch.randint(1, model.cfg.d_vocab, (n, CTX), generator=torch.Generator().manual_seed(seed))
    t[:, 0] = model.tokenizer.bos_token_id
    return t


def test_path_ablation_matches_attention_recomputed_by_hand(lm):
    _, model = lm
    t = tokens_for(model)
    neurons = [(0, WRITER), (0, 11), (0, 40)]
    before = model(t)
    abl = ad.PathAblation(model, LAYER, HEAD, neuron_chunk=2)  # 2 + 1: stacked and single passes
    out = abl.run(t, neurons)
    assert abl.checked  # the query self-check ran and passed
    assert torch.equal(model(t), before)  # passes stopped early by an exception left no hook behind
    for nrn in neurons:
        a, d_bos, d_norm = by_hand(model, t, nrn)
        got_a, got_bos, got_norm = out[nrn]
        assert got_a.shape == (4, CTX)
        assert torch.allclose(got_a.double(), a, atol=1e-6)
        assert torch.allclose(got_bos.double(), d_bos, atol=2e-5)
        assert torch.allclose(got_norm.double(), d_norm, atol=2e-4 * (1 + d_norm.abs().max().item()))
        assert got_bos[:, 0].abs().max() < 1e-6  # position 0 can only attend to BOS
    # the writer really moves the head's BOS attention; keys and values were held clean
    assert out[(0, WRITER)][1][:, 1:].abs().mean() > 1e-3


def test_heuristic_scores_match_a_brute_force_and_rank_by_magnitude(lm):
    _, model = lm
    t = tokens_for(model, n=3)
    k_bos = ad.bos_key(model, t, LAYER, HEAD)
    _, c = model.run_with_cache(t)
    k_ref = c[f"blocks.{LAYER}.attn.hook_k"][:, 0, HEAD].double()
    assert torch.allclose(k_ref, k_ref[:1].expand_as(k_ref))  # same BOS -> same key in every row
    assert torch.allclose(k_bos.double(), k_ref[0], atol=1e-6)
    scores = ad.heuristic_scores(model, LAYER, HEAD, k_bos)
    assert scores.shape == (LAYER, model.cfg.d_mlp)
    W_out, W_Q = model.W_out.double(), model.W_Q[LAYER, HEAD].double()
    for n in range(model.cfg.d_mlp):
        ref = float(W_out[0, n] @ W_Q @ k_ref[0]) / math.sqrt(model.cfg.d_head)
        assert scores[0, n].item() == pytest.approx(ref, rel=1e-4, abs=1e-6)
    rk = ad.ranking_frame(scores)
    assert list(rk.columns) == ["layer", "neuron", "score", "abs_score", "rank"]
    assert rk.abs_score.is_monotonic_decreasing and rk.neuron.iloc[0] == int(scores[0].abs().argmax())
    assert rk.neuron.iloc[0] == WRITER  # the one large writer tops the ranking


def test_correlations_use_all_batches(lm):
    folder, _ = lm
    name, _ = save_tokens(folder)
    out = ad.run_attention_deactivation(folder, name, LAYER, HEAD, neurons=[f"0.{WRITER}", "0.11"], after_pos=2,
                                        batch_size=3, progress=False)  # 3 batches: 3 + 3 + 1 rows
    assert out.parts[-4:] == ("attention_deactivation", "attn", name, f"{LAYER}.{HEAD}")
    corr = torch.load(out / "corr_dict.pt")
    rec = torch.load(out / "records.pt")
    assert set(corr) == {f"0.{WRITER}", "0.11"} and set(corr[f"0.{WRITER}"]) == {"bos_attn", "norm"}
    for label in corr:
        r = rec[label]
        assert r["activation"].shape == (N_SEQ, CTX - 2) and r["activation"].dtype == torch.float16
        for key in ("bos_attn", "norm"):
            x, y = r["activation"].double().numpy().ravel(), r[key].double().numpy().ravel()
            assert corr[label][key]["pearson"] == pytest.approx(pearsonr(x, y)[0], abs=2e-3)  # fp16 records
            assert corr[label][key]["spearman"] == pytest.approx(spearmanr(x, y)[0], abs=2e-2)
            last = slice(6, 7)  # the last batch alone gives another answer
            xl, yl = r["activation"][last].double().numpy().ravel(), r[key][last].double().numpy().ravel()
            assert abs(pearsonr(xl, yl)[0] - corr[label][key]["pearson"]) > 1e-3
    rank = pd.read_csv(out / "heuristic_ranking.csv")
    assert len(rank) == LAYER * 64 and rank["rank"].tolist() == list(range(len(rank)))
    meta = json.loads((out / "meta.json").read_text())
    assert meta["neurons"] == [f"0.{WRITER}", "0.11"] and meta["n_seq"] == N_SEQ


def test_unfolded_layernorm_is_refused(lm):
    from universal_neurons.models import load_model

    folder, _ = lm
    raw = load_model(folder, compatibility_mode=False)  # ln1 keeps its weights: q is not LN(x) @ W_Q + b_Q
    with pytest.raises(UserError, match="hook_q is not LN"):
        ad.PathAblation(raw, LAYER, HEAD).run(tokens_for(raw, n=2), [(0, WRITER)])


def test_correlations_of_constant_input_are_nan():
    c = ad._correlations(np.ones(10), np.arange(10.0))
    assert math.isnan(c["pearson"]) and math.isnan(c["spearman"])
    x = np.random.default_rng(0).standard_normal(50)
    y = x ** 3 + 0.1 * np.random.default_rng(1).standard_normal(50)
    c = ad._correlations(x, y)
    assert c["pearson"] == pytest.approx(pearsonr(x, y)[0]) and c["spearman"] == pytest.approx(spearmanr(x, y)[0])


def test_top_k_cli_and_rerun_skip(lm, capsys):
    import attention_deactivation

    folder, _ = lm
    name, _ = save_tokens(folder)
    argv = ["--model", folder, "--token_dataset", name, "--layer", "1", "--head", "0", "--top_k", "3",
            "--batch_size", "4", "--device", "cpu"]
    attention_deactivation.main(argv)
    out = capsys.readouterr().out.strip().splitlines()[-1]
    rank = pd.read_csv(f"{out}/heuristic_ranking.csv")
    expect = [f"{l}.{n}" for l, n in rank[["layer", "neuron"]].values[:3]]
    assert list(torch.load(f"{out}/corr_dict.pt")) == expect
    attention_deactivation.main(argv)
    assert "skip" in capsys.readouterr().out
    # the original's rank range and context length: ranks [1, 3) of the same ranking, first 8 positions
    other = argv[:-6] + ["--min_neuron", "1", "--max_neuron", "3", "--context_length", "8", "--batch_size", "4",
                         "--device", "cpu"]
    with pytest.raises(SystemExit) as e:  # the same folder, other neurons and positions: never served stale
        attention_deactivation.main(other)
    err = capsys.readouterr().err
    assert e.value.code == 2 and "ctx 12 -> 8" in err and "--overwrite" in err
    attention_deactivation.main(other + ["--overwrite"])
    out = capsys.readouterr().out.strip().splitlines()[-1]
    assert list(torch.load(f"{out}/corr_dict.pt")) == expect[1:3]
    records = torch.load(f"{out}/records.pt")
    assert records[expect[1]]["activation"].shape[1] == 8 - 1  # positions after_pos (1) .. 7


@pytest.mark.parametrize("extra,msg", [(["--neurons", "1.3"], "not before attention layer 1"),
                                       (["--neurons", "0.x"], "malformed neuron spec"),
                                       (["--neurons", "0.3", "--top_k", "2"], "one of --neurons, --top_k"),
                                       (["--min_neuron", "2"], "go together"),
                                       (["--min_neuron", "3", "--max_neuron", "3"], "--min_neuron < --max_neuron"),
                                       (["--context_length", "1"], "--context_length"),
                                       (["--top_k", "0"], "--top_k must be"),
                                       (["--layer", "0"], "--layer 0 must be"),
                                       (["--head", "5"], "--head 5"),
                                       (["--after_pos", "12"], "--after_pos")])
def test_bad_input_exits_2_with_one_message(lm, capsys, extra, msg):
    import attention_deactivation

    folder, _ = lm
    name, _ = save_tokens(folder)
    argv = ["--model", folder, "--token_dataset", name, "--layer", "1", "--head", "0", "--device", "cpu"]
    with pytest.raises(SystemExit) as e:  # later flags override the defaults above
        attention_deactivation.main(argv + extra)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and msg in err[0]
