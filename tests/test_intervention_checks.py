"""Independent checks of the entropy-neuron experiment and of the pipeline's entropy candidate.

1. Random baselines never hook the target neurons. A spy around `interventions.evaluate` wraps
   every hook it is given and records which neurons each run really changed (before/after
   comparison of the activations, not the hook's arguments); the run folders' meta.json and the
   saved metrics (recomputed with this file's own hooks) must agree with what was observed.
2. The summary's mean reciprocal rank equals a brute-force float64 computation: per position the
   rank of the true next token is found by sorting the logits (0 = best; tokens with an equal logit
   do not count, as documented), then 1 / (rank + 1) is averaged over the documented positions
   (not BOS / EOS / padding inputs, not the last position). The model has exactly duplicated
   unembedding columns, so the true token is often tied with other tokens.
3. `pipeline.entropy_candidate` picks the neuron of its documented rule (last layer; sum of the
   percentile ranks of w_out_norm and of -vocab_var), on frames where plausible wrong rules pick
   other neurons.
"""
from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest
import torch

from analysis.entropy_neurons import read_summary
from conftest import build_gpt2_folder
from universal_neurons import interventions as iv
from universal_neurons import pipeline
from universal_neurons.errors import UserError

N_LAYERS, LAST, D_MLP, VOCAB = 3, 2, 64, 300
N_SEQ, CTX, BATCH = 6, 16, 4
TIE_A = list(range(100, 120))  # 20 tokens sharing one embedding (tied: one unembedding column)
TIE_B = [200, 201, 202]
PUSH = 11                      # last-layer neuron writing along TIE_A's unembedding
MARK = (7.25, -3.5)            # fixed values no natural activation equals: a changed neuron is a hooked one


# ------------------------------------------------------------------------------------------------
# A small GPT-2 with exact logit ties
# ------------------------------------------------------------------------------------------------

def _craft_tied(folder):
    folder, hf = build_gpt2_folder(folder, n_layer=N_LAYERS, d_model=32, d_mlp=D_MLP, n_head=2, vocab=VOCAB,
                                   seed=11, ctx=CTX)
    with torch.no_grad():
        tr = hf.transformer
        wte = tr.wte.weight  # tied with the unembedding
        for group in (TIE_A, TIE_B):
            wte[group[1:]] = wte[group[0]].clone()
        tr.h[LAST].mlp.c_proj.weight[PUSH] = 0.6 * wte[TIE_A[0]]
        tr.ln_f.weight.mul_(20)  # logits of a few nats
    hf.save_pretrained(str(folder))
    return str(folder)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny matrices: on a busy machine a second intra-op thread only adds waiting (10x slower)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def tied(tmp_path_factory):
    from universal_neurons.models import load_model

    folder = _craft_tied(tmp_path_factory.mktemp("ivchecks") / "tied")
    return folder, load_model(folder)


def _special_ids(tok):
    return {i for i in (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) if i is not None}


def _save_rows(folder, seed=0, name="tied.16"):
    """Random rows starting with BOS, many true tokens from the tied groups, a few BOS inside rows."""
    from universal_neurons.models import load_tokenizer, model_family
    from universal_neurons.token_datasets import save_token_dataset

    tok = load_tokenizer(folder)
    rng = np.random.default_rng(seed)
    rows = rng.integers(1, VOCAB, size=(N_SEQ, CTX))
    u = rng.random((N_SEQ, CTX))
    rows[u < 0.35] = rng.choice(TIE_A, size=int((u < 0.35).sum()))
    in_b = (u >= 0.35) & (u < 0.45)
    rows[in_b] = rng.choice(TIE_B, size=int(in_b.sum()))
    rows[:, 0] = tok.bos_token_id
    rows[1, 7] = rows[3, 4] = rows[4, 11] = tok.bos_token_id  # BOS inside rows: not counted either
    save_token_dataset(rows.astype(np.int32), model_family(folder), name, tok)
    return name, torch.tensor(rows, dtype=torch.long)


def _my_mask(tokens, tok):
    """The documented positions: input not BOS / EOS / padding, and not the last position."""
    t = tokens.numpy()
    mask = ~np.isin(t, sorted(_special_ids(tok)))
    mask[:, -1] = False
    return mask


def _my_hooks(neurons, value):
    """Own fixed-activation hooks at blocks.<l>.mlp.hook_post (not the library's neuron_hooks)."""
    by_layer = {}
    for layer, n in neurons:
        by_layer.setdefault(layer, []).append(n)
    hooks = []
    for layer, idx in by_layer.items():
        def fix(act, hook, idx=tuple(idx)):
            act = act.clone()
            act[:, :, list(idx)] = value
            return act
        hooks.append((f"blocks.{layer}.mlp.hook_post", fix))
    return hooks


@torch.no_grad()
def _logits64(model, tokens, hooks):
    """float64 logits [n_seq, ctx, vocab], batched as the library batches (BATCH rows)."""
    parts = [model.run_with_hooks(tokens[lo:lo + BATCH], fwd_hooks=hooks) for lo in range(0, len(tokens), BATCH)]
    return torch.cat(parts).double().numpy()


def _brute_rank(logits, tokens):
    """Rank of the true next token by sorting: the first slot of the descending order that holds the
    true token's logit (= how many tokens are strictly larger); -1 at the last position."""
    t = tokens.numpy()
    B, P, _ = logits.shape
    rank = np.full((B, P), -1, dtype=np.int64)
    for b in range(B):
        for p in range(P - 1):
            row = logits[b, p]
            desc = np.sort(row)[::-1]
            rank[b, p] = int(np.flatnonzero(desc == row[t[b, p + 1]])[0])
    return rank


def _n_ties(logits, tokens, mask):
    """Masked positions whose true next token shares its logit with at least one other token."""
    t = tokens.numpy()
    count = 0
    for b, p in zip(*np.nonzero(mask)):
        row = logits[b, p]
        count += int((row == row[t[b, p + 1]]).sum() > 1)
    return count


def _entropy64(logits):
    lg = torch.from_numpy(logits)
    logp = lg.log_softmax(-1)
    return -(logp.exp() * logp).sum(-1).numpy()


def _parse_label(label):
    return frozenset(tuple(int(x) for x in part.split(".")) for part in label.split("_"))


def _metas(runs):
    return [json.loads((r / "meta.json").read_text()) for r in runs]


# ------------------------------------------------------------------------------------------------
# Spy: which neurons does each evaluated run really change?
# ------------------------------------------------------------------------------------------------

def _spy_on_evaluate(monkeypatch):
    """Replace iv.evaluate by a wrapper whose hooks record the (layer, neuron) pairs they changed.
    Returns the list that gets one frozenset per evaluate call (empty for the clean run)."""
    seen = []
    real = iv.evaluate

    def spy(model, tokens, hooks=(), *args, **kwargs):
        changed = set()
        wrapped = []
        for name, fn in hooks:
            layer = int(re.match(r"blocks\.(\d+)\.", name).group(1))

            def watch(act, hook, fn=fn, layer=layer):
                before = act.detach().clone()
                out = fn(act, hook=hook)
                out = act if out is None else out
                diff = (out != before).reshape(-1, before.shape[-1]).any(0)
                changed.update((layer, int(i)) for i in torch.nonzero(diff).flatten())
                return out
            wrapped.append((name, watch))
        result = real(model, tokens, wrapped, *args, **kwargs)
        seen.append(frozenset(changed))
        return result

    monkeypatch.setattr(iv, "evaluate", spy)
    return seen


def _random_sets(seen, targets):
    targets = frozenset(targets)
    return [s for s in seen if s and s != targets]


# ------------------------------------------------------------------------------------------------
# 1. Random baselines never hook the targets
# ------------------------------------------------------------------------------------------------

def test_random_baseline_runs_never_hook_the_targets(tied, tmp_path, monkeypatch):
    folder, model = tied
    name, tokens = _save_rows(folder)
    targets = [(0, 5), (LAST, 5), (LAST, 17), (LAST, 40)]
    n_random = 4
    seen = _spy_on_evaluate(monkeypatch)
    out = iv.run_entropy_intervention(folder, name, ",".join(f"{l}.{n}" for l, n in targets), list(MARK),
                                      n_random_baselines=n_random, seed=9, output_dir=tmp_path / "out",
                                      batch_size=BATCH, progress=False)
    # every run was evaluated once: clean, then (target + random) x values
    assert len(seen) == 1 + (1 + n_random) * len(MARK)
    assert seen.count(frozenset()) == 1
    assert seen.count(frozenset(targets)) == len(MARK)  # the target runs changed exactly the targets
    random_sets = _random_sets(seen, targets)
    distinct = list(dict.fromkeys(random_sets))
    assert len(distinct) == n_random
    assert all(random_sets.count(s) == len(MARK) for s in distinct)  # same set for every value
    for s in distinct:
        assert len(s) == len(targets)
        assert all(layer == LAST for layer, _ in s)
        assert not s & set(targets), f"random set {sorted(s)} hooks a target neuron"
    union = frozenset().union(*distinct)
    assert len(union) == n_random * len(targets)  # pairwise disjoint
    # the run folders say the same, and the saved metrics are those of hooking exactly that set
    metas = [m for m in _metas(out["runs"]) if m["group"] == "random"]
    assert len(metas) == n_random * len(MARK)
    assert {frozenset(_parse_label("_".join(m["neurons"]))) for m in metas} == set(distinct)
    target_metas = [m for m in _metas(out["runs"]) if m["group"] == "target"]
    assert all(_parse_label("_".join(m["neurons"])) == frozenset(targets) for m in target_metas)
    df = read_summary(out["summary"])
    assert {_parse_label(x) for x in df[df.group == "random"].neurons} == set(distinct)
    for run, meta in zip(out["runs"], _metas(out["runs"])):
        if meta["group"] != "random":
            continue
        ns = sorted(_parse_label("_".join(meta["neurons"])))
        logits = _logits64(model, tokens, _my_hooks(ns, meta["intervention_param"]))
        saved = iv.load_run(run)
        assert np.array_equal(saved["rank"].numpy(), _brute_rank(logits, tokens))
        assert np.allclose(saved["entropy"].double().numpy(), _entropy64(logits), rtol=2e-3, atol=2e-3)
        # the outputs tell the sets apart: hooking the targets too would give other metrics
        leaked = _logits64(model, tokens, _my_hooks(ns + [(LAST, 5)], meta["intervention_param"]))
        assert not np.allclose(saved["entropy"].double().numpy(), _entropy64(leaked), rtol=2e-3, atol=2e-3)


def test_random_baselines_are_seeded(tied, tmp_path, monkeypatch):
    folder, model = tied
    name, _ = _save_rows(folder)
    found = {}
    for key, seed in (("a", 21), ("b", 21), ("c", 22)):
        seen = _spy_on_evaluate(monkeypatch)
        out = iv.run_entropy_intervention(folder, name, f"{LAST}.3", [MARK[0]], n_random_baselines=3, seed=seed,
                                          output_dir=tmp_path / key, batch_size=BATCH, progress=False)
        observed = _random_sets(seen, [(LAST, 3)])
        assert len(observed) == 3
        labels = {m["label"]: _parse_label("_".join(m["neurons"]))
                  for m in _metas(out["runs"]) if m["group"] == "random"}
        assert set(labels.values()) == set(observed)
        found[key] = labels
    assert found["a"] == found["b"]  # same seed, same sets (and same labels)
    assert set(found["a"].values()) != set(found["c"].values())  # another seed, other sets
    # the function itself: deterministic per seed, different across seeds
    a = iv.random_baselines(model, [(LAST, 3)], 3, 1, seed=21)
    assert a == iv.random_baselines(model, [(LAST, 3)], 3, 1, seed=21)
    assert {frozenset(s) for s in a} == set(found["a"].values())
    assert a != iv.random_baselines(model, [(LAST, 3)], 3, 1, seed=22)


def test_excluding_most_of_the_last_layer_forces_the_rest(tied, tmp_path, monkeypatch):
    folder, model = tied
    name, _ = _save_rows(folder)
    rng = np.random.default_rng(4)
    chosen = sorted(int(n) for n in rng.choice(D_MLP, D_MLP // 2, replace=False))  # spread over the layer
    rest = frozenset((LAST, n) for n in range(D_MLP) if n not in chosen)
    targets = [(LAST, n) for n in chosen]
    seen = _spy_on_evaluate(monkeypatch)
    iv.run_entropy_intervention(folder, name, ",".join(f"{LAST}.{n}" for n in chosen), [MARK[0]],
                                n_random_baselines=1, seed=0, output_dir=tmp_path / "out", batch_size=BATCH,
                                progress=False)
    assert _random_sets(seen, targets) == [rest]  # the only possible set: the other half of the layer
    # direct calls: 60 of 64 excluded -> the 4 left, one each, for any seed
    left = [3, 20, 41, 63]
    exclude = [(LAST, n) for n in range(D_MLP) if n not in left]
    for seed in range(6):
        sets = iv.random_baselines(model, exclude, 4, 1, seed=seed)
        assert len(sets) == 4 and all(len(s) == 1 for s in sets)
        assert sorted(s[0] for s in sets) == [(LAST, n) for n in left]
    only = [(LAST, n) for n in range(D_MLP) if n != 27]
    assert iv.random_baselines(model, only, 1, 1, seed=5) == [[(LAST, 27)]]
    with pytest.raises(UserError):
        iv.random_baselines(model, exclude, 5, 1)  # 5 disjoint sets cannot be made of 4 neurons


def test_exclusion_is_per_layer(tied):
    """Excluding neuron n of an earlier layer leaves last-layer neuron n available."""
    _, model = tied
    exclude = [(layer, n) for layer in range(LAST) for n in range(D_MLP)]
    sets = iv.random_baselines(model, exclude, D_MLP, 1, seed=0)
    assert sorted(s[0] for s in sets) == [(LAST, n) for n in range(D_MLP)]


# ------------------------------------------------------------------------------------------------
# 2. Mean reciprocal rank against brute force, with exact ties
# ------------------------------------------------------------------------------------------------

def test_tied_model_has_exact_ties(tied):
    _, model = tied
    _, tokens = _save_rows(tied[0])
    logits = _logits64(model, tokens, [])
    assert np.all(logits[..., TIE_A] == logits[..., TIE_A[:1]])
    assert np.all(logits[..., TIE_B] == logits[..., TIE_B[:1]])
    others = [v for v in range(VOCAB) if v not in TIE_A[1:] + TIE_B[1:]]
    assert len(np.unique(logits[0, 3, others])) == len(others)  # no accidental ties elsewhere


def test_mean_reciprocal_rank_matches_brute_force(tied, tmp_path):
    folder, model = tied
    name, tokens = _save_rows(folder)
    values = [0.0, 6.0]
    out = iv.run_entropy_intervention(folder, name, f"{LAST}.{PUSH}", values, n_random_baselines=1, seed=3,
                                      output_dir=tmp_path / "out", batch_size=BATCH, progress=False)
    df = read_summary(out["summary"])
    mask = _my_mask(tokens, model.tokenizer)
    assert mask.sum() == N_SEQ * (CTX - 2) - 3  # the BOS inputs and the last positions are left out
    assert (df.n_tokens == mask.sum()).all()

    def mrr(rank):
        assert (rank[mask] >= 0).all()
        return float(np.mean(1.0 / (rank[mask].astype(np.float64) + 1.0)))

    clean_logits = _logits64(model, tokens, [])
    clean_rank = _brute_rank(clean_logits, tokens)
    assert np.array_equal(iv.load_run(out["clean"])["rank"].numpy(), clean_rank)
    clean_row = df[df.group == "clean"].iloc[0]
    assert clean_row.mean_recip_rank == pytest.approx(mrr(clean_rank), rel=1e-9)

    by_key = {(m["label"], float(m["intervention_param"])): (run, m) for run, m in zip(out["runs"], _metas(out["runs"]))}
    rows = df[df.group != "clean"]
    assert len(rows) == 2 * len(values) and set(by_key) == {(r.label, float(r.value)) for r in rows.itertuples()}
    ties_seen = strict_matters = 0
    for r in rows.itertuples():
        run, meta = by_key[(r.label, float(r.value))]
        neurons = sorted(_parse_label(r.neurons))
        assert frozenset(neurons) == _parse_label("_".join(meta["neurons"]))
        logits = _logits64(model, tokens, _my_hooks(neurons, float(r.value)))
        rank = _brute_rank(logits, tokens)
        assert np.array_equal(iv.load_run(run)["rank"].numpy(), rank), f"rank.pt of {r.label} {r.value}"
        assert r.mean_recip_rank == pytest.approx(mrr(rank), rel=1e-9), f"{r.label} {r.value}"
        assert r.delta_recip_rank == pytest.approx(mrr(rank) - mrr(clean_rank), rel=1e-9, abs=1e-12)
        ties_seen += _n_ties(logits, tokens, mask)
        t_next = tokens.numpy()[:, 1:]
        true = np.take_along_axis(logits[:, :-1], t_next[..., None], -1)
        non_strict = (logits[:, :-1] >= true).sum(-1) - 1  # ties counted as better: the wrong rule
        strict_matters += int((non_strict != rank[:, :-1])[mask[:, :-1]].sum())
    # the input was adversarial: many tied true tokens, ranks often above 0, and the tie rule matters
    assert ties_seen >= 40 and strict_matters >= 40
    assert (clean_rank[mask] > 0).mean() > 0.5
    # the pushed neuron really moves the ranks (delta is not trivially 0) and tied tokens reach the top
    push = df[(df.group == "target") & (df.value == 6.0)].iloc[0]
    assert push.delta_recip_rank > 0.05
    rank6 = _brute_rank(_logits64(model, tokens, _my_hooks([(LAST, PUSH)], 6.0)), tokens)
    in_a = np.isin(tokens.numpy()[:, 1:], TIE_A) & mask[:, :-1]
    assert (rank6[:, :-1][in_a] == 0).sum() >= 10  # rank 0 although 19 other tokens share the top logit


# ------------------------------------------------------------------------------------------------
# 3. The pipeline's entropy candidate
# ------------------------------------------------------------------------------------------------

COLS = ["layer", "neuron", "w_out_norm", "vocab_var"]
# last layer (2): the documented rule picks 2.16 (average ranks, w_out_norm + (-vocab_var)):
#   neuron  w_out_norm  vocab_var   rank w  rank -v  sum
#     10       1.0       0.0010        1       6       7    lowest vocab_var
#     13       3.0       0.0090        6       1       7    largest w_out_norm, highest vocab_var
#     16       2.5       0.0020        5       5      10    <- the pick
#     19       2.0       0.0040        4       3       7
#     22       1.5       0.0030        3       4       7
#     25       1.2       0.0080        2       2       4    largest index
# earlier layers hold "better" neurons (wrong layer) and neurons interleaving with neuron 10's
# vocab_var, so that ranks taken over the whole frame pick 2.10 instead.
ROWS = [(0, 0, 0.5, 0.0011), (0, 1, 0.6, 0.0012), (0, 2, 0.7, 0.0013), (0, 3, 0.8, 0.0014), (0, 4, 0.9, 0.0015),
        (0, 7, 5.0, 0.0001), (1, 3, 4.0, 0.0002), (1, 1, 0.3, 0.0200),
        (2, 10, 1.0, 0.0010), (2, 13, 3.0, 0.0090), (2, 16, 2.5, 0.0020), (2, 19, 2.0, 0.0040),
        (2, 22, 1.5, 0.0030), (2, 25, 1.2, 0.0080)]


def _frame(rows, seed):
    """Rows in a shuffled order with index labels that are not positions."""
    df = pd.DataFrame(rows, columns=COLS)
    df = df.iloc[np.random.default_rng(seed).permutation(len(df))]
    df.index = 1000 - 7 * np.arange(len(df))
    return df


def _avg_ranks(values):
    """1-based average ranks of the non-NaN values (None for NaN) and how many were ranked."""
    finite = [v for v in values if v == v]
    ranks = [None if v != v else sum(u < v for u in finite) + (sum(u == v for u in finite) + 1) / 2 for v in values]
    return ranks, len(finite)


def _winners(rows, sign=-1.0, layer=None):
    """Brute force of the rule: within `layer` (default the last), percentile rank of w_out_norm plus
    that of sign * vocab_var; neurons with NaN vocab_var (dead) are not candidates. sign=+1 is the
    sign error, layer="all" the missing layer filter. Returns every (layer, neuron) with the top score."""
    layer = max(r[0] for r in rows) if layer is None else layer
    cand = [r for r in rows if layer in ("all", r[0]) and r[3] == r[3]]
    wr, nw = _avg_ranks([r[2] for r in cand])
    vr, nv = _avg_ranks([sign * r[3] for r in cand])
    score = [a / nw + b / nv for a, b in zip(wr, vr)]
    best = max(score)
    return [(r[0], r[1]) for r, s in zip(cand, score) if s == best]


def _global_rank_winner(rows):
    """The wrong variant: ranks over the whole frame, then the best last-layer neuron."""
    wr, _ = _avg_ranks([r[2] for r in rows])
    vr, _ = _avg_ranks([-r[3] for r in rows])
    last = max(r[0] for r in rows)
    scored = [(a + b, (r[0], r[1])) for r, a, b in zip(rows, wr, vr) if r[0] == last]
    return max(scored)[1]


def test_entropy_candidate_follows_the_documented_rule():
    assert _winners(ROWS) == [(2, 16)]
    # the frame tells the documented rule from the plausible wrong ones
    last = [r for r in ROWS if r[0] == 2]
    wrong = {"sign error (highest vocab_var)": (_winners(ROWS, sign=+1.0), [(2, 13)]),
             "w_out_norm alone": ([max(last, key=lambda r: r[2])[:2]], [(2, 13)]),
             "vocab_var alone": ([min(last, key=lambda r: r[3])[:2]], [(2, 10)]),
             "largest index": ([max(last, key=lambda r: r[1])[:2]], [(2, 25)]),
             "first layer": (_winners(ROWS, layer=0), [(0, 7)]),
             "whole frame": (_winners(ROWS, layer="all"), [(0, 7)]),
             "ranks over the whole frame": ([_global_rank_winner(ROWS)], [(2, 10)])}
    for rule, (pick, hand) in wrong.items():
        assert pick == hand != [(2, 16)], rule
    for seed in range(4):
        assert pipeline.entropy_candidate(_frame(ROWS, seed)) == "2.16"


def test_entropy_candidate_ties_are_broken_by_the_other_measure():
    # w_out_norm tied at the top (neurons 2.5 and 2.2): the lower vocab_var wins, whatever the tie method
    rows = [(0, 1, 9.0, 0.0001), (1, 2, 0.1, 0.0500),
            (2, 2, 3.0, 0.0020), (2, 5, 3.0, 0.0010), (2, 8, 1.0, 0.0005), (2, 9, 2.0, 0.0050)]
    assert _winners(rows) == [(2, 5)] and _winners(rows, sign=+1.0) == [(2, 2)]
    # vocab_var tied at the bottom (neurons 2.3 and 2.6): the larger w_out_norm wins
    rows2 = [(0, 0, 9.0, 0.0001),
             (2, 6, 1.5, 0.0010), (2, 3, 2.0, 0.0010), (2, 1, 3.0, 0.0100), (2, 8, 1.0, 0.0050)]
    assert _winners(rows2) == [(2, 3)] and _winners(rows2, sign=+1.0) == [(2, 1)]
    for seed in range(4):
        assert pipeline.entropy_candidate(_frame(rows, seed)) == "2.5"
        assert pipeline.entropy_candidate(_frame(rows2, seed)) == "2.3"
    # two identical best neurons: one of them, the same one for the same frame
    rows3 = [(0, 0, 9.0, 0.0001), (2, 4, 3.0, 0.0010), (2, 9, 3.0, 0.0010), (2, 1, 1.0, 0.0050),
             (2, 7, 2.0, 0.0030)]
    assert _winners(rows3) == [(2, 4), (2, 9)]
    for seed in range(4):
        frame = _frame(rows3, seed)
        pick = pipeline.entropy_candidate(frame)
        assert pick in ("2.4", "2.9") and pipeline.entropy_candidate(frame) == pick


def test_entropy_candidate_never_picks_a_dead_neuron():
    """NaN vocab_var (w_out = 0: a dead neuron, or any neuron whose vocab_var is unknown) is never
    the candidate, even with the largest w_out_norm; NaNs elsewhere do not disturb the pick."""
    rows = [(0, 3, 1.0, float("nan")), (1, 0, 2.0, 0.0010),
            (2, 0, 0.0, float("nan")), (2, 5, 2.5, 0.0005), (2, 6, 2.0, 0.0060), (2, 7, 1.0, 0.0010),
            (2, 9, 9.9, float("nan"))]
    assert _winners(rows) == [(2, 5)]
    for seed in range(4):
        assert pipeline.entropy_candidate(_frame(rows, seed)) == "2.5"
    # the main frame with dead neurons added keeps its pick
    dead = [(2, 30, 0.0, float("nan")), (2, 31, 9.9, float("nan"))]
    assert _winners(ROWS + dead) == [(2, 16)]
    for seed in range(4):
        assert pipeline.entropy_candidate(_frame(ROWS + dead, seed)) == "2.16"



def test_entropy_candidate_tie_break_and_no_candidate():
    """Exact ties go to the lowest neuron index whatever the row order; no live neuron: one clear error."""
    import pandas as pd

    from universal_neurons import pipeline
    from universal_neurons.errors import UserError

    frame = pd.DataFrame({"layer": [1, 1, 1, 0], "neuron": [9, 4, 2, 0], "w_out_norm": [2.0, 2.0, 1.0, 9.0],
                          "vocab_var": [0.1, 0.1, 0.5, 0.0]})
    for order in ([0, 1, 2, 3], [1, 0, 3, 2], [3, 2, 1, 0]):
        assert pipeline.entropy_candidate(frame.iloc[order]) == "1.4"
    dead = frame.assign(vocab_var=float("nan"))
    with pytest.raises(UserError, match="no entropy candidate"):
        pipeline.entropy_candidate(dead)
