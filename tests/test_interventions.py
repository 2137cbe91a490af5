"""Neuron interventions on a hand-built GPT-2 whose answers are known in closed form.

The crafted model (2 layers, d_model 32, vocab 300) has two last-layer neurons with chosen outputs:
- ENTROPY neuron: writes only along u = e_J - e_K, a direction that nothing else writes and the
  unembedding ignores (token embeddings, hence the tied unembedding, are 0 on J and K). It moves
  the logits only through the final LayerNorm scale: logits = z / scale with z fixed.
- LOGIT neuron: writes along token TOKEN's unembedding: raising it raises that logit.
The final LayerNorm bias is 0, so with compatibility mode (folded, centred weights) the logits are
exactly normalize(resid_final) @ W_U.
"""
from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
import torch

from analysis.entropy_neurons import (intervention_curves, load_intervention_frame, plot_entropy_intervention,
                                     read_summary)
from conftest import build_gpt2_folder
from universal_neurons import interventions as iv
from universal_neurons.capture import position_mask
from universal_neurons.errors import UserError

J, K = 30, 31          # the null coordinates of the residual stream
ENTROPY = 7            # last-layer neuron writing along e_J - e_K
LOGIT, TOKEN = 9, 123  # last-layer neuron writing along token 123's unembedding
LAST = 1
N_SEQ, CTX = 6, 16


def craft(folder):
    folder, hf = build_gpt2_folder(folder, n_layer=2, d_model=32, d_mlp=64, n_head=2, vocab=300, seed=3, ctx=CTX)
    with torch.no_grad():
        tr = hf.transformer
        tr.wte.weight[:, [J, K]] = 0  # tied: also the unembedding
        tr.wpe.weight[:, [J, K]] = 0
        for block in tr.h:
            for proj in (block.attn.c_proj, block.mlp.c_proj):  # Conv1D weights are [in, out]
                proj.weight[:, [J, K]] = 0
                proj.bias[[J, K]] = 0
        out = tr.h[LAST].mlp.c_proj.weight  # [d_mlp, d_model]
        out[ENTROPY] = 0
        out[ENTROPY, J], out[ENTROPY, K] = 1.5, -1.5
        out[LOGIT] = 0.5 * tr.wte.weight[TOKEN]
        tr.ln_f.bias.zero_()
        tr.ln_f.weight.mul_(40)  # logits of a few nats, not the near-uniform ones of a 0.02-std init
    hf.save_pretrained(str(folder))
    return str(folder)


@pytest.fixture(scope="module")
def crafted(tmp_path_factory):
    from universal_neurons.models import load_model

    folder = craft(tmp_path_factory.mktemp("iv") / "crafted")
    return folder, load_model(folder)


def save_tokens(folder, n_seq=N_SEQ, ctx=CTX, seed=0, name="rand.16"):
    """A token dataset of random rows starting with BOS, in the per-test working directory."""
    from universal_neurons.models import load_tokenizer, model_family
    from universal_neurons.token_datasets import save_token_dataset

    tok = load_tokenizer(folder)
    rng = np.random.default_rng(seed)
    rows = rng.integers(1, len(tok), size=(n_seq, ctx))
    rows[:, 0] = tok.bos_token_id
    save_token_dataset(rows.astype(np.int32), model_family(folder), name, tok)
    return name, torch.tensor(rows, dtype=torch.long)


def tokens_for(model, n=3, ctx=CTX, seed=1):
    g = torch.Generator().manual_seed(seed)
    t = torch.randint(1, model.cfg.d_vocab, (n, ctx), generator=g)
    t[:, 0] = model.tokenizer.bos_token_id
    return t


def normalize64(x):
    x = x.double()
    x = x - x.mean(-1, keepdim=True)
    return x / (x.pow(2).mean(-1, keepdim=True) + 1e-5).sqrt()


def clean_cache(model, tokens):
    _, cache = model.run_with_cache(tokens)
    return cache


# ------------------------------------------------------------------------------------------------
# The crafted model is what the docstring claims
# ------------------------------------------------------------------------------------------------

def test_crafted_model_has_a_null_direction_and_exact_logits(crafted):
    _, model = crafted
    W_U = model.W_U.double()
    w = model.W_out[LAST, ENTROPY].double()
    # the unembedding ignores u = e_J - e_K (folding centres W_U's rows over d_model, so rows J and K
    # are not 0 but equal)
    assert (w @ W_U).abs().max() < 1e-6
    assert torch.allclose(w[[J, K]], torch.tensor([1.5, -1.5], dtype=torch.float64))
    assert w.abs().sum() == pytest.approx(3.0)
    t = tokens_for(model)
    logits, cache = model.run_with_cache(t)
    ref = normalize64(cache["ln_final.hook_in"]) @ W_U + model.b_U.double()
    assert torch.allclose(logits.double(), ref, atol=1e-4)
    assert model.b_U.abs().max() < 1e-6


# ------------------------------------------------------------------------------------------------
# Hooks change exactly the hooked activation
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("location", ["mlp.hook_pre", "mlp.hook_post"])
@pytest.mark.parametrize("kind,param", [("zero_ablation", None), ("threshold_ablation", 0.1),
                                        ("relu_ablation", None), ("fixed_activation", 2.5),
                                        ("multiply_activation", -3.0)])
def test_ablation_changes_exactly_the_hooked_activation(crafted, kind, param, location):
    _, model = crafted
    t = tokens_for(model)
    clean = clean_cache(model, t)
    neurons = [(0, 2), (0, 5)]
    with model.hooks(fwd_hooks=iv.neuron_hooks(neurons, kind, param, location)):
        _, cache = model.run_with_cache(t)
    before = clean[f"blocks.0.{location}"].double()
    after = cache[f"blocks.0.{location}"].double()
    idx = [2, 5]
    a = before[..., idx]
    expected = {"zero_ablation": torch.zeros_like(a), "threshold_ablation": torch.minimum(a, torch.tensor(0.1)),
                "relu_ablation": torch.maximum(a, torch.tensor(0.0)),
                "fixed_activation": torch.full_like(a, 2.5), "multiply_activation": -3.0 * a}[kind]
    assert torch.allclose(after[..., idx], expected, atol=1e-6)
    others = [i for i in range(model.cfg.d_mlp) if i not in idx]
    assert torch.equal(after[..., others], before[..., others])
    if kind == "threshold_ablation":  # some values really were clipped, others kept
        assert (a > 0.1).any() and (a <= 0.1).any()
    if location == "mlp.hook_pre":  # the post-activation follows the new pre-activation
        post = cache["blocks.0.mlp.hook_post"].double()[..., idx]
        x = after[..., idx]
        gelu_new = 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))
        assert torch.allclose(post, gelu_new, atol=1e-5)
    # downstream of layer 0 the residual stream changed
    assert not torch.allclose(cache["blocks.1.hook_resid_pre"], clean["blocks.1.hook_resid_pre"])


def test_hooks_reject_unknown_location_and_type():
    with pytest.raises(UserError, match="location"):
        iv.neuron_hooks([(0, 1)], "zero_ablation", None, "attn.hook_z")
    with pytest.raises(UserError, match="unknown intervention type"):
        iv.check_intervention("scale_ablation", 1.0)
    with pytest.raises(UserError, match="needs --intervention_param"):
        iv.check_intervention("fixed_activation", None)
    with pytest.raises(UserError, match="finite"):
        iv.check_intervention("fixed_activation", float("nan"))
    with pytest.raises(UserError):  # multiply only in entropy_intervention.py, as the original
        iv.check_intervention("multiply_activation", 2.0)


# ------------------------------------------------------------------------------------------------
# Known answers: a logit neuron and an entropy neuron
# ------------------------------------------------------------------------------------------------

def test_fixing_a_logit_neuron_raises_its_token_logit_by_the_computed_amount(crafted):
    _, model = crafted
    t = tokens_for(model)
    clean_logits, clean = model.run_with_cache(t)
    new = 4.0
    hooks = iv.neuron_hooks([(LAST, LOGIT)], "fixed_activation", new)
    with model.hooks(fwd_hooks=hooks):
        logits, cache = model.run_with_cache(t)
    old = clean[f"blocks.{LAST}.mlp.hook_post"][..., LOGIT].double()  # [batch, pos]
    w = model.W_out[LAST, LOGIT].double()
    # the final residual moves by exactly (new - old) * w_out ...
    moved = cache["ln_final.hook_in"].double() - clean["ln_final.hook_in"].double()
    assert torch.allclose(moved, (new - old)[..., None] * w, atol=1e-5)
    # ... so, with the LayerNorm scale accounted for, logit * scale moves by (new - old) * w_out . W_U[:, t]
    W_U = model.W_U.double()
    s_new, s_old = cache["ln_final.hook_scale"].double(), clean["ln_final.hook_scale"].double()
    delta = logits.double() * s_new - clean_logits.double() * s_old  # [batch, pos, vocab]
    assert torch.allclose(delta, (new - old)[..., None] * (w @ W_U), atol=1e-4)
    # and the logits are the LayerNorm of the moved residual, computed independently in float64
    ref = normalize64(clean["ln_final.hook_in"].double() + (new - old)[..., None] * w) @ W_U
    assert torch.allclose(logits.double(), ref, atol=1e-4)
    # the token really gains: its logit goes up at (nearly) every position and becomes the top token
    gain = logits[..., TOKEN] - clean_logits[..., TOKEN]
    assert (gain > 0).float().mean() > 0.9
    assert (logits.argmax(-1) == TOKEN).float().mean() > (clean_logits.argmax(-1) == TOKEN).float().mean()


def test_entropy_neuron_raises_entropy_through_the_layernorm_scale_only(crafted):
    _, model = crafted
    t = tokens_for(model, n=4)
    values = [0.0, 1.0, 3.0, 8.0]
    runs = []
    for v in values:
        scale = {}
        hooks = iv.neuron_hooks([(LAST, ENTROPY)], "fixed_activation", v)
        hooks.append(("ln_final.hook_scale", lambda s, hook: scale.__setitem__("s", s[..., 0].double())))
        logits = model.run_with_hooks(t, fwd_hooks=hooks).double()
        m = iv.next_token_metrics(logits, t)
        runs.append((logits, scale["s"], m["entropy"].double()))
    z0 = runs[0][0] * runs[0][1][..., None]
    for (lg_a, s_a, h_a), (lg_b, s_b, h_b) in zip(runs, runs[1:]):
        assert (s_b > s_a).all()                       # larger activation -> larger LN scale
        assert (h_b >= h_a - 1e-5).all()               # -> smaller logits -> higher entropy
        assert h_b.mean() > h_a.mean() + 1e-3
        assert torch.equal(lg_b.argmax(-1), lg_a.argmax(-1))  # the prediction itself is unchanged
        assert torch.allclose(lg_b * s_b[..., None], z0, atol=1e-4)  # logits = z / scale, z fixed
    # and the scale follows the closed form sqrt((|x_c|^2 + 2 (1.5 v)^2) / d + eps)
    _, clean = model.run_with_cache(t)
    x = clean["ln_final.hook_in"].double()
    a0 = clean[f"blocks.{LAST}.mlp.hook_post"][..., ENTROPY].double()
    x_other = x - a0[..., None] * model.W_out[LAST, ENTROPY].double()
    xc = x_other - x_other.mean(-1, keepdim=True)
    for v, (_, s, _) in zip(values, runs):
        expect = ((xc.pow(2).sum(-1) + 2 * (1.5 * v) ** 2) / 32 + 1e-5).sqrt()
        assert torch.allclose(s, expect, rtol=1e-5)


# ------------------------------------------------------------------------------------------------
# Metrics against float64 references
# ------------------------------------------------------------------------------------------------

def reference_metrics(logits, tokens):
    lg = logits.double()
    logp = lg.log_softmax(-1)
    p = logp.exp()
    ent = -(torch.where(p > 0, p * logp, torch.zeros_like(p))).sum(-1)
    nxt = tokens[:, 1:]
    loss = -logp[:, :-1].gather(-1, nxt[..., None])[..., 0]
    true = lg[:, :-1].gather(-1, nxt[..., None])
    rank = (lg[:, :-1] > true).sum(-1)
    return loss, ent, rank


def test_next_token_metrics_on_adversarial_logits():
    torch.manual_seed(0)
    B, P, V = 3, 5, 11
    logits = torch.randn(B, P, V) * 3
    logits[0] += 1e4                      # a huge common offset
    logits[1, :, 3] = float("-inf")       # an impossible token (0 log 0 = 0)
    logits[2, 1] = 0.0                    # all tied: uniform, rank 0 for any token
    tokens = torch.randint(0, V, (B, P))
    tokens[1, 2] = 4
    m = iv.next_token_metrics(logits, tokens)
    loss, ent, rank = reference_metrics(logits, tokens)
    assert torch.isfinite(m["entropy"]).all()
    assert torch.allclose(m["entropy"].double(), ent, atol=1e-4)
    assert torch.allclose(m["loss"][:, :-1].double(), loss, atol=1e-4)
    assert torch.equal(m["rank"][:, :-1], rank)
    assert torch.isnan(m["loss"][:, -1]).all() and (m["rank"][:, -1] == -1).all()
    assert m["entropy"][2, 1].item() == pytest.approx(math.log(V), abs=1e-5)
    assert m["rank"][2, 1].item() == 0
    # chunked evaluation gives the same answer
    old = iv._METRIC_CHUNK
    try:
        iv._METRIC_CHUNK = 1
        m2 = iv.next_token_metrics(logits, tokens)
    finally:
        iv._METRIC_CHUNK = old
    assert torch.equal(m2["rank"], m["rank"]) and torch.allclose(m2["entropy"], m["entropy"])


def test_intervention_artifacts_match_a_direct_computation(crafted):
    folder, model = crafted
    name, tokens = save_tokens(folder)
    import intervention

    # the default location is the pre-activation, as the original's intervention.py
    assert intervention.parse_args(["--model", "m", "--token_dataset", "d", "--neuron", "1.2"]).activation_location \
        == "mlp.hook_pre"
    written = iv.run_intervention(folder, name, f"{LAST}.{LOGIT}", "fixed_activation", 3.0, batch_size=4,
                                  progress=False)
    run_folder, clean_folder = written
    assert run_folder.parts[-2:] == ("fixed_activation_3.0", f"{LAST}.{LOGIT}")
    assert run_folder.parent.parent.parent.name == "crafted" and clean_folder.name == f"clean.n{N_SEQ}"
    got = iv.load_run(run_folder)
    assert set(got) == {"loss", "entropy", "rank"}
    assert got["loss"].dtype == torch.float16 and got["rank"].dtype == torch.int32
    assert got["loss"].shape == (N_SEQ, CTX)

    def fix(act, hook):  # an independent hook, not the library's
        act = act.clone()
        act[:, :, LOGIT] = 3.0
        return act

    logits = model.run_with_hooks(tokens, fwd_hooks=[(f"blocks.{LAST}.mlp.hook_pre", fix)])
    loss, ent, rank = reference_metrics(logits, tokens)
    assert torch.allclose(got["loss"][:, :-1].double(), loss, rtol=2e-3, atol=2e-3)
    assert torch.allclose(got["entropy"].double(), ent, rtol=2e-3, atol=2e-3)
    assert torch.equal(got["rank"][:, :-1].long(), rank)
    assert torch.isnan(got["loss"][:, -1]).all() and (got["rank"][:, -1] == -1).all()
    clean = iv.load_run(clean_folder)
    c_loss, c_ent, _ = reference_metrics(model(tokens), tokens)
    assert torch.allclose(clean["loss"][:, :-1].double(), c_loss, rtol=2e-3, atol=2e-3)
    _, cache = model.run_with_cache(tokens)
    assert torch.allclose(clean["scale"].double(), cache["ln_final.hook_scale"][..., 0].double(), rtol=1e-3)
    assert not torch.allclose(clean["loss"][:, :-1].float(), got["loss"][:, :-1].float())


def test_entropy_experiment_summary_and_layout(crafted):
    folder, model = crafted
    name, tokens = save_tokens(folder)
    out = iv.run_entropy_intervention(folder, name, f"{LAST}.{ENTROPY}", [0.0, 4.0, 10.0], n_random_baselines=3,
                                      seed=5, batch_size=4, progress=False)
    root = out["clean"].parent
    assert out["summary"] == root / f"{LAST}.{ENTROPY}" / "summary_fixed_activation.csv"
    assert (root / f"{LAST}.{ENTROPY}" / "fixed_activation_10.0" / "scale.pt").exists()
    assert len(out["runs"]) == 4 * 3
    df = read_summary(out["summary"])
    assert list(df.group.unique()) == ["clean", "target", "random"]
    assert set(df.label) == {"clean", f"{LAST}.{ENTROPY}", "random_0", "random_1", "random_2"}
    target = df[df.group == "target"].sort_values("value")
    assert np.all(np.diff(target.mean_entropy) > 0) and np.all(np.diff(target.mean_scale) > 0)
    # means over the documented mask, recomputed from the saved tensors
    mask = tokens != model.tokenizer.bos_token_id  # BOS/EOS/padding left out (one id here) ...
    mask[:, -1] = False  # ... and the last position, which has no next token
    assert torch.equal(mask, position_mask(tokens, model.tokenizer, special=False, last=False))
    run = iv.load_run(root / f"{LAST}.{ENTROPY}" / "fixed_activation_4.0")
    clean = iv.load_run(out["clean"])
    row = target[target.value == 4.0].iloc[0]
    assert row.mean_entropy == pytest.approx(run["entropy"][mask].double().mean().item(), rel=1e-9)
    assert row.delta_loss == pytest.approx(row.mean_loss - clean["loss"][mask].double().mean().item(), rel=1e-9)
    # random baselines: last layer, distinct, never the chosen neuron
    rnd = df[df.group == "random"]
    picked = rnd.neurons.unique()
    assert len(picked) == 3 and all(p.startswith(f"{LAST}.") for p in picked) and f"{LAST}.{ENTROPY}" not in picked
    meta = json.loads((root / picked[0] / "fixed_activation_0.0" / "meta.json").read_text())
    assert meta["seed"] == 5 and meta["group"] == "random"
    # analysis helpers: curves against the baselines' spread, the per-token frame, the figure
    curves = intervention_curves(df, "entropy")
    assert list(curves.index) == [0.0, 4.0, 10.0] and (curves.n_random == 3).all()
    r4 = rnd[rnd.value == 4.0].mean_entropy
    assert curves.loc[4.0, "random_mean"] == pytest.approx(r4.mean())
    assert curves.loc[4.0, "random_std"] == pytest.approx(r4.std(ddof=1))
    assert curves.loc[4.0, "target"] == pytest.approx(row.mean_entropy)
    assert curves.clean.iloc[0] == pytest.approx(df[df.group == "clean"].mean_entropy.iloc[0])
    assert intervention_curves(df, "loss", delta=True).loc[4.0, "target"] == pytest.approx(row.delta_loss)
    frame = load_intervention_frame(folder, name, f"{LAST}.{ENTROPY}", [0.0, 4.0])
    assert len(frame) == N_SEQ * CTX
    assert np.allclose(frame["1_entropy"], run["entropy"].numpy().ravel())
    assert frame["clean_rank"].isna().sum() == N_SEQ  # the last positions
    fig, axes = plot_entropy_intervention(df)
    assert len(axes) == 4 and len(axes[1].lines) >= 3 + 1 + 1


def test_random_baselines_are_seeded_disjoint_and_prefix_stable(crafted):
    _, model = crafted
    chosen = [(LAST, 3), (LAST, 4)]
    a = iv.random_baselines(model, chosen, 5, 2, seed=1)
    b = iv.random_baselines(model, chosen, 8, 2, seed=1)
    c = iv.random_baselines(model, chosen, 5, 2, seed=2)
    assert a == b[:5] and a != c
    flat = [n for group in b for n in group]
    assert len(set(flat)) == len(flat) and not set(flat) & set(chosen)
    assert all(l == LAST and len(g) == 2 for g in b for l, _ in g)
    with pytest.raises(UserError, match="distinct"):
        iv.random_baselines(model, chosen, 40, 2)


# ------------------------------------------------------------------------------------------------
# Command lines: bad input, reruns
# ------------------------------------------------------------------------------------------------

def test_malformed_neuron_spec_exits_2_with_one_message(capsys):
    import intervention

    with pytest.raises(SystemExit) as e:
        intervention.main(["--model", "no-such-model", "--token_dataset", "x", "--neuron", "3.x"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "malformed neuron spec '3.x'" in err[0]


def test_entropy_cli_errors_exit_2(crafted, capsys):
    import entropy_intervention

    folder, _ = crafted
    name, _ = save_tokens(folder)
    cases = [(["--neuron_subset", "1.2,1.2", "--values", "1"], "twice"),
             (["--neuron_subset", "1.9999", "--values", "1"], "out of range"),
             (["--neuron_subset", "1.2"], "needs at least one"),
             (["--neuron_subset", "1.2", "--values", "1", "--n_random_baselines", "999"], "distinct")]
    for extra, msg in cases:
        with pytest.raises(SystemExit) as e:
            entropy_intervention.main(["--model", folder, "--token_dataset", name, *extra])
        assert e.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and msg in err[0]


def test_rerun_skips_and_a_new_n_seq_recomputes(crafted, capsys):
    import intervention

    folder, _ = crafted
    name, _ = save_tokens(folder)
    argv = ["--model", folder, "--token_dataset", name, "--neuron", "1.9", "--intervention_type",
            "threshold_ablation", "--intervention_param", "0.5", "--batch_size", "4", "--device", "cpu"]
    intervention.main(argv)
    out = capsys.readouterr().out.split()
    run_folder = [p for p in out if p.endswith("threshold_ablation_0.5/1.9")][0]
    stamp = os.stat(run_folder + "/loss.pt").st_mtime_ns
    intervention.main(argv)
    assert capsys.readouterr().out.count("skip") == 2  # the run and the clean reference
    assert os.stat(run_folder + "/loss.pt").st_mtime_ns == stamp
    assert json.loads(open(run_folder + "/meta.json").read())["location"] == "mlp.hook_pre"  # the default
    # another location or n_seq: one message naming the difference, nothing replaced ...
    for extra, diff in ((["--activation_location", "mlp.hook_post"], "location 'mlp.hook_pre' -> 'mlp.hook_post'"),
                        (["--n_seq", "2"], "n_seq")):
        with pytest.raises(SystemExit) as e:
            intervention.main(argv + extra)
        err = capsys.readouterr().err
        assert e.value.code == 2 and diff in err and "--overwrite" in err
        assert os.stat(run_folder + "/loss.pt").st_mtime_ns == stamp
    # ... until --overwrite replaces it
    intervention.main(argv + ["--activation_location", "mlp.hook_post", "--overwrite"])
    assert capsys.readouterr().out.count("skip") == 1  # only the clean run
    assert json.loads(open(run_folder + "/meta.json").read())["location"] == "mlp.hook_post"
    intervention.main(argv + ["--n_seq", "2", "--overwrite"])
    assert "skip" not in capsys.readouterr().out
    assert torch.load(run_folder + "/loss.pt").shape == (2, CTX)


def test_folder_names_follow_the_original():
    """str(param) as the original: its default (the int 0) gives zero_ablation_0, a value typed on the
    command line (a float) zero_ablation_0.0 / fixed_activation_-0.17."""
    import intervention

    args = intervention.parse_args(["--model", "m", "--token_dataset", "d", "--neuron", "1.2"])
    assert iv.intervention_name(args.intervention_type, args.intervention_param) == "zero_ablation_0"
    args = intervention.parse_args(["--model", "m", "--token_dataset", "d", "--neuron", "1.2",
                                    "--intervention_param", "0"])
    assert iv.intervention_name(args.intervention_type, args.intervention_param) == "zero_ablation_0.0"
    assert iv.intervention_name("fixed_activation", -0.17) == "fixed_activation_-0.17"
    assert iv.intervention_name("fixed_activation", 3) == "fixed_activation_3"


def test_clean_reference_per_row_count(crafted, capsys):
    """Runs of other --n_seq on one dataset each get their own clean reference: neither stops the other."""
    folder, _ = crafted
    name, _ = save_tokens(folder)
    a = iv.run_intervention(folder, name, "1.9", "zero_ablation", 0, n_seq=2, batch_size=4, progress=False)
    b = iv.run_intervention(folder, name, "1.8", "zero_ablation", 0, batch_size=4, progress=False)
    assert a[1].name == "clean.n2" and b[1].name == f"clean.n{N_SEQ}"
    assert iv.load_run(a[1])["loss"].shape == (2, CTX) and iv.load_run(b[1])["loss"].shape == (N_SEQ, CTX)
