"""Search for a zoo preset whose seeds show universal neurons (issue: the zoo must show the phenomenon).

For each candidate configuration: train seeds a.. (in the zoo cache, as presets named by the
config), measure on >= 1M held-out tokens (python-stdlib.all-1m.<ctx>, documents no seed trained on)
the paper's quantities for seed a's neurons against every other seed: max correlation over all
neurons of the other model, and the same against a Haar-rotated copy of each of its layers; then
excess_corr = mean_corr - mean_baseline and the share of neurons with excess_corr > 0.5 per layer.
Then the paper's late-layer families in seed a (`late_families`):
    prediction / suppression  W_U kurtosis of the output weights (weights.vocab_compositions' U_out
                              comp_kurt, plain kurtosis) > 10 in the last two layers, skew > 0 / < 0
    entropy                   the last layer's N_ENTROPY_CANDIDATES most entropy-neuron-like neurons by
                              the pipeline's rule (neuron_df.entropy_candidate: large ||w_out||, low
                              vocab_var) whose activation fixed at 2x its largest value on the
                              held-out rows raises the mean next-token entropy by more than the mean
                              + 2 sd of N_RANDOM random last-layer neurons fixed the same way
and whether each is universal (excess_corr > 0.5). A diagnostic beside the rule (`null_space`): the
effective null space of the folded unembedding (singular directions below NULL_REL x the median,
and those beyond its rank), the share rho of each last-layer w_out in it (rho = ||P w||^2 / ||w||^2),
the same share of the final residual stream, and the N_NULL neurons of largest rho fixed like the
candidates (the paper's entropy neurons write mostly into that space: rho near 1 at a large norm).
Results are appended as JSON lines to benchmarks/zoo_search.jsonl (one line per configuration).

    python benchmarks/zoo_search.py --configs s_shared s_perseed --n_seeds 3
    python benchmarks/zoo_search.py --probe --configs k_l3_d256_v512     # seed a only: W_U kurtosis, entropy
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from universal_neurons import token_datasets, zoo  # noqa: E402
from universal_neurons.capture import mlp_activations, token_mask  # noqa: E402
from universal_neurons.models import load_model  # noqa: E402

P = zoo.Preset
CONFIGS = {
    # 2 layers, narrow, the FACTS baseline shape, data order per seed vs shared
    "s_perseed": P(n_layer=2, d_model=64, d_mlp=256, n_head=4, vocab_size=1024, ctx_len=64, train_tokens=4_000_000),
    "s_shared": P(n_layer=2, d_model=64, d_mlp=256, n_head=4, vocab_size=1024, ctx_len=64, train_tokens=4_000_000,
                  shared_data_order=True),
    "s_shared_v512": P(n_layer=2, d_model=64, d_mlp=256, n_head=4, vocab_size=512, ctx_len=64,
                       train_tokens=4_000_000, shared_data_order=True),
    "s_shared_lr": P(n_layer=2, d_model=64, d_mlp=256, n_head=4, vocab_size=1024, ctx_len=64,
                     train_tokens=4_000_000, shared_data_order=True, lr=6e-3, batch_size=64),
    "s_shared_wd": P(n_layer=2, d_model=64, d_mlp=256, n_head=4, vocab_size=1024, ctx_len=64,
                     train_tokens=4_000_000, shared_data_order=True, weight_decay=0.3),
    "s_shared_128": P(n_layer=2, d_model=128, d_mlp=512, n_head=4, vocab_size=1024, ctx_len=64,
                      train_tokens=4_000_000, shared_data_order=True),
    "s_shared_3l": P(n_layer=3, d_model=64, d_mlp=256, n_head=4, vocab_size=1024, ctx_len=64,
                     train_tokens=4_000_000, shared_data_order=True),
    # byte-sized vocabulary, wide MLP: room for a neuron per input symbol
    "s_bytes": P(n_layer=2, d_model=128, d_mlp=512, n_head=4, vocab_size=300, ctx_len=64,
                 train_tokens=3_000_000, shared_data_order=True),
    # Round 2 (session 3): screens at the default's compute (~6 GFLOP-equivalent tokens), 2 seeds,
    # one thread each, 262k evaluation tokens; the best are re-run with 5 seeds and 1M tokens.
    "r_wd1": P(n_layer=2, d_model=64, d_mlp=256, n_head=4, vocab_size=1024, ctx_len=64, train_tokens=6_000_000,
               weight_decay=1.0),
    "r_bytes": P(n_layer=2, d_model=64, d_mlp=512, n_head=4, vocab_size=300, ctx_len=64, train_tokens=6_000_000),
    "r_d32w512": P(n_layer=2, d_model=32, d_mlp=512, n_head=4, vocab_size=1024, ctx_len=64, train_tokens=9_000_000),
    "r_lr1e2": P(n_layer=2, d_model=64, d_mlp=256, n_head=4, vocab_size=1024, ctx_len=64, train_tokens=6_000_000,
                 lr=1e-2),
    "r_lr2e2": P(n_layer=2, d_model=64, d_mlp=256, n_head=4, vocab_size=1024, ctx_len=64, train_tokens=6_000_000,
                 lr=2e-2),
    "r_lr4e2": P(n_layer=2, d_model=64, d_mlp=256, n_head=4, vocab_size=1024, ctx_len=64, train_tokens=6_000_000,
                 lr=4e-2),
    "r_w512": P(n_layer=2, d_model=64, d_mlp=512, n_head=4, vocab_size=1024, ctx_len=64, train_tokens=4_400_000),
    # narrow residual, many neurons per residual direction
    "r_d32w1024": P(n_layer=2, d_model=32, d_mlp=1024, n_head=4, vocab_size=1024, ctx_len=64, train_tokens=6_000_000),
    "r_d16w512": P(n_layer=2, d_model=16, d_mlp=512, n_head=2, vocab_size=1024, ctx_len=64, train_tokens=18_000_000),
    # the tiny preset (CI's --quick zoo) at higher learning rates
    "t_lr5e3": P(n_layer=2, d_model=32, d_mlp=128, n_head=2, vocab_size=512, ctx_len=32, train_tokens=250_000,
                 batch_size=16, lr=5e-3, tokenizer_docs=40, corpus_docs=60, eval_tokens=16_384),
    "t_lr2e2": P(n_layer=2, d_model=32, d_mlp=128, n_head=2, vocab_size=512, ctx_len=32, train_tokens=250_000,
                 batch_size=16, lr=2e-2, tokenizer_docs=40, corpus_docs=60, eval_tokens=16_384),
    "t_lr4e2": P(n_layer=2, d_model=32, d_mlp=128, n_head=2, vocab_size=512, ctx_len=32, train_tokens=250_000,
                 batch_size=16, lr=4e-2, tokenizer_docs=40, corpus_docs=60, eval_tokens=16_384),
    "r_12m": P(n_layer=2, d_model=64, d_mlp=256, n_head=4, vocab_size=1024, ctx_len=64, train_tokens=12_000_000),
    # Round 3 (issue: the late-layer families): deeper zoos for prediction / suppression / entropy
    # neurons in the last layers, screened with 2 seeds on one thread each.
    "f_l4": P(n_layer=4, d_model=64, d_mlp=256, n_head=4, vocab_size=1024, ctx_len=64, train_tokens=6_000_000,
              lr=2e-2),
    "f_l3_d96": P(n_layer=3, d_model=96, d_mlp=384, n_head=4, vocab_size=1024, ctx_len=64, train_tokens=4_000_000,
                  lr=2e-2),
    # W_U kurtosis scales like (cos / sigma)^4 with sigma ~ 1 / sqrt(d_model): wider residual streams
    "f_l4_d128": P(n_layer=4, d_model=128, d_mlp=512, n_head=4, vocab_size=1024, ctx_len=64, train_tokens=3_000_000,
                   lr=1e-2),
    "f_l3_d128_v2k": P(n_layer=3, d_model=128, d_mlp=512, n_head=4, vocab_size=2048, ctx_len=64,
                       train_tokens=3_000_000, lr=1e-2),
    # rarely trained tokens stay near their random init and make the bulk of the W_U cosines; twice the
    # tokens for the widest
    "f_l4_v4k": P(n_layer=4, d_model=64, d_mlp=256, n_head=4, vocab_size=4096, ctx_len=64, train_tokens=4_000_000,
                  lr=2e-2),
    "f_l4_d128_6m": P(n_layer=4, d_model=128, d_mlp=512, n_head=4, vocab_size=1024, ctx_len=64,
                      train_tokens=6_000_000, lr=1e-2),
    # the CI zoo (--quick): the tiny shape trained 4-8x longer at the default's high rates
    "tq_1m": P(n_layer=2, d_model=32, d_mlp=128, n_head=2, vocab_size=512, ctx_len=32, train_tokens=1_000_000,
               batch_size=16, lr=2e-2, tokenizer_docs=40, corpus_docs=60, eval_tokens=16_384),
    "tq_2m": P(n_layer=2, d_model=32, d_mlp=128, n_head=2, vocab_size=512, ctx_len=32, train_tokens=2_000_000,
               batch_size=16, lr=2e-2, tokenizer_docs=40, corpus_docs=60, eval_tokens=16_384),
    "tq_2m_lr4e2": P(n_layer=2, d_model=32, d_mlp=128, n_head=2, vocab_size=512, ctx_len=32, train_tokens=2_000_000,
                     batch_size=16, lr=4e-2, tokenizer_docs=40, corpus_docs=60, eval_tokens=16_384),
    # Round 4: the W_U kurtosis is set by the residual width (the bulk of cos(w_out, W_U) has sd ~ 1 / sqrt(d_model),
    # so a neuron writing onto a few tokens stands out more in a wider stream); kurtosis probes of one seed at 2M
    # tokens gave max 5.2 at 3 x 128 / BPE 1024, 6.4 at 3 x 128 / 384, 5.5 at 3 x 128 / 512 without weight decay,
    # 4.3 at the default's shape with an untied unembedding, and 13.8 (2 neurons > 10) at 3 x 256 / 512.
    # one-seed kurtosis probes (--probe), 2M tokens
    "k_l3_d128_v384": P(n_layer=3, d_model=128, d_mlp=512, n_head=4, vocab_size=384, ctx_len=64, train_tokens=2_000_000,
                        lr=1e-2),
    "k_l3_d128_v512_wd0": P(n_layer=3, d_model=128, d_mlp=512, n_head=4, vocab_size=512, ctx_len=64,
                            train_tokens=2_000_000, lr=1e-2, weight_decay=0.0),
    "k_l3_d128_v1k": P(n_layer=3, d_model=128, d_mlp=512, n_head=4, vocab_size=1024, ctx_len=64, train_tokens=2_000_000,
                       lr=1e-2),
    "k_l3_d256_v512": P(n_layer=3, d_model=256, d_mlp=1024, n_head=4, vocab_size=512, ctx_len=64,
                        train_tokens=2_000_000, lr=5e-3),
    "k_l2_d64_v1k_untied": P(n_layer=2, d_model=64, d_mlp=256, n_head=4, vocab_size=1024, ctx_len=64,
                             train_tokens=2_000_000, lr=2e-2, tie_embeddings=False),
    "k_l3_d128_v1k_untied": P(n_layer=3, d_model=128, d_mlp=512, n_head=4, vocab_size=1024, ctx_len=64,
                              train_tokens=2_000_000, lr=1e-2, tie_embeddings=False),
    "g_l3_d256_4m": P(n_layer=3, d_model=256, d_mlp=1024, n_head=4, vocab_size=512, ctx_len=64, train_tokens=4_000_000,
                      lr=1e-2),
    # round 5: one more layer, for suppression and entropy neurons (the paper finds both in the final layers)
    "g_l4_d256_4m": P(n_layer=4, d_model=256, d_mlp=1024, n_head=4, vocab_size=512, ctx_len=64, train_tokens=4_000_000,
                      lr=1e-2),
    # and the deep preset trained twice as long
    "g_l3_d256_8m": P(n_layer=3, d_model=256, d_mlp=1024, n_head=4, vocab_size=512, ctx_len=64, train_tokens=8_000_000,
                      lr=1e-2),
    # round 6: bf16 matrix products (2.2x faster at d_model 256), so the deep preset trains 12M tokens; one-seed
    # probes for an entropy neuron: a fourth layer at half the rate, and an untied unembedding (free to keep an
    # effective null space, which a tied one that also embeds every token is not)
    "h_l4_d256_8m_lr5e3": P(n_layer=4, d_model=256, d_mlp=1024, n_head=4, vocab_size=512, ctx_len=64,
                            train_tokens=8_000_000, lr=5e-3, precision="bf16"),
    # and the deep preset trained twice as long again (one seed: does the entropy family grow with training?)
    "h_l3_d256_24m": P(n_layer=3, d_model=256, d_mlp=1024, n_head=4, vocab_size=512, ctx_len=64, train_tokens=24_000_000,
                       lr=1e-2, precision="bf16"),
    "h_l3_d256_12m_untied": P(n_layer=3, d_model=256, d_mlp=1024, n_head=4, vocab_size=512, ctx_len=64,
                              train_tokens=12_000_000, lr=1e-2, precision="bf16", tie_embeddings=False),
    # round 7: a vocabulary whose used tokens span fewer directions than d_model. The byte-level BPE has 257 base
    # ids, of which the training corpus uses 186 (98 more than 1000 times); at 300 ids about 140 tokens carry the
    # text, and the rest decay: their unembeddings leave part of a 256-wide stream as a null space (measured: 45
    # directions; GPT-2's is learned, and small)
    "i_l3_d256_v300": P(n_layer=3, d_model=256, d_mlp=1024, n_head=4, vocab_size=300, ctx_len=64,
                        train_tokens=12_000_000, lr=1e-2, precision="bf16"),
    "i_l3_d256_v300_untied": P(n_layer=3, d_model=256, d_mlp=1024, n_head=4, vocab_size=300, ctx_len=64,
                               train_tokens=12_000_000, lr=1e-2, precision="bf16", tie_embeddings=False),
}


def haar(d: int, gen: torch.Generator) -> torch.Tensor:
    q, r = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r))


@torch.no_grad()
def max_corrs(models, ds, batch_size=64, seed=0):
    """Seed a's neurons against each other model: (max corr, max rotated-baseline corr) [n_other, N1]."""
    a, others = models[0], models[1:]
    L, D = a.cfg.n_layers, a.cfg.d_mlp
    N = L * D
    n = 0
    sx = torch.zeros(N, dtype=torch.float64)
    sxx = torch.zeros(N, dtype=torch.float64)
    stats = [dict(sy=torch.zeros(N, dtype=torch.float64), syy=torch.zeros(N, dtype=torch.float64),
                  sxy=torch.zeros(N, N, dtype=torch.float64), g=torch.zeros(L, D, D, dtype=torch.float64)) for _ in others]
    shift_x = None
    shifts_y = [None] * len(others)
    for toks in token_datasets.iter_token_batches(ds, batch_size):
        m = token_mask(toks, a.tokenizer).reshape(-1)
        x = mlp_activations(a, toks).reshape(-1, N)[m]
        if shift_x is None:
            shift_x = x.mean(0)
        x = (x - shift_x).double()
        n += x.shape[0]
        sx += x.sum(0)
        sxx += (x * x).sum(0)
        for j, (o, st) in enumerate(zip(others, stats)):
            y = mlp_activations(o, toks).reshape(-1, N)[m]
            if shifts_y[j] is None:
                shifts_y[j] = y.mean(0)
            y = (y - shifts_y[j]).double()
            st["sy"] += y.sum(0)
            st["syy"] += (y * y).sum(0)
            st["sxy"] += x.T @ y
            yl = y.reshape(-1, L, D)
            st["g"] += torch.einsum("tld,tle->lde", yl, yl)
    gen = torch.Generator().manual_seed(seed)
    mx = sx / n
    vx = sxx / n - mx ** 2
    out_max, out_base = [], []
    for st in stats:
        my = st["sy"] / n
        cov = st["sxy"] / n - mx[:, None] * my[None, :]
        vy = st["syy"] / n - my ** 2
        corr = cov / torch.sqrt(vx[:, None] * vy[None, :])
        out_max.append(torch.nan_to_num(corr, nan=-2).amax(1))
        rot = []
        for l in range(L):
            R = haar(D, gen)
            sig = st["g"][l] / n - my[l * D:(l + 1) * D, None] * my[None, l * D:(l + 1) * D]
            c_rot = cov[:, l * D:(l + 1) * D] @ R.T
            v_rot = torch.einsum("ij,jk,ik->i", R, sig, R)
            rot.append(c_rot / torch.sqrt(vx[:, None] * v_rot[None, :]))
        out_base.append(torch.nan_to_num(torch.cat(rot, 1), nan=-2).amax(1))
    return torch.stack(out_max), torch.stack(out_base), n


N_ENTROPY_CANDIDATES = 5
FAMILY_ROWS = 256  # held-out rows of the entropy interventions
N_RANDOM = 20
KURT = 10.0  # the paper's W_U kurtosis threshold for prediction / suppression neurons
N_NULL = 5  # last-layer neurons with the largest null-space share, intervened on as well (a diagnostic, not the rule)
NULL_REL = 0.1  # effective null space: singular directions of the folded W_U below NULL_REL x the median


def null_space(W_U: torch.Tensor, rel: float = NULL_REL) -> torch.Tensor:
    """Orthonormal basis [d_model, k] of the unembedding's effective null space: the left singular vectors of
    W_U [d_model, V] whose singular value is below rel x the median, plus those beyond its rank when V < d_model."""
    U, S, _ = torch.linalg.svd(W_U.double(), full_matrices=True)  # U [d_model, d_model], S [min(d_model, V)]
    small = torch.ones(U.shape[1], dtype=torch.bool)
    small[:len(S)] = S < rel * S.median()
    return U[:, small]


def null_share(vectors: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """rho [n] = ||P_null v||^2 / ||v||^2 for rows v of vectors [n, d_model]; NaN for a zero row."""
    v = vectors.double()
    return ((v @ basis) ** 2).sum(-1) / (v * v).sum(-1)


@torch.no_grad()
def late_families(model, tokens: torch.Tensor, excess: np.ndarray, seed: int = 0) -> dict:
    """Prediction, suppression and entropy neurons of `model` (see the module docstring) on tokens
    [n_seq, ctx]; excess [L, D] marks which are universal."""
    from universal_neurons.interventions import evaluate as run_metrics, neuron_hooks
    from universal_neurons.weights import extract_weights, vocab_compositions

    w = extract_weights(model)
    L, D = w.n_layers, w.d_mlp
    U = vocab_compositions(w, layers=list(range(max(0, L - 2), L)))["U_out"]  # rows of the last two layers
    kurt, skew, var = (U[f"comp_{m}"].double().numpy() for m in ("kurt", "skew", "var"))  # [<=2, D]

    def listed(mask, first_layer):
        return [{"neuron": f"{first_layer + i}.{n}", "vocab_kurt": round(float(kurt[i, n]), 1),
                 "vocab_skew": round(float(skew[i, n]), 2), "excess": round(float(excess[first_layer + i, n]), 3),
                 "universal": bool(excess[first_layer + i, n] > 0.5)} for i, n in zip(*np.nonzero(mask))]

    first = max(0, L - 2)
    pred = listed((kurt > KURT) & (skew > 0), first)
    supp = listed((kurt > KURT) & (skew < 0), first)

    # entropy: the pipeline's candidate rule, ranked, then the intervention against random neurons
    import pandas as pd

    out_norm = torch.linalg.vector_norm(w.W_out[L - 1].double(), dim=-1).numpy()
    last = pd.DataFrame({"neuron": np.arange(D), "w_out_norm": out_norm, "vocab_var": var[-1]})
    score = last["w_out_norm"].rank(pct=True) + (-last["vocab_var"]).rank(pct=True)
    cands = [int(n) for n in score.sort_values(ascending=False, kind="stable").index[:N_ENTROPY_CANDIDATES]]
    acts = torch.cat([mlp_activations(model, tokens[i:i + 32])[..., L - 1, :] for i in range(0, len(tokens), 32)])
    top = acts[:, 1:].reshape(-1, D).amax(0)  # [D] largest activation after BOS
    clean = run_metrics(model, tokens, record_scale=False, progress=False)["entropy"][:, :-1].float().mean()

    def delta(n: int) -> float:
        hooks = neuron_hooks([(L - 1, n)], "fixed_activation", 2.0 * float(top[n]))
        ent = run_metrics(model, tokens, hooks, record_scale=False, progress=False)["entropy"][:, :-1]
        return float(ent.float().mean() - clean)

    rng = np.random.default_rng(seed)
    others = rng.choice(np.setdiff1d(np.arange(D), cands), N_RANDOM, replace=False)
    rand = np.array([delta(int(n)) for n in others])
    bar = float(rand.mean() + 2 * rand.std(ddof=1))
    entropy = [{"neuron": f"{L - 1}.{n}", "delta_entropy": round(delta(n), 4), "w_out_norm": round(float(out_norm[n]), 3),
                "vocab_var": float(f"{var[-1, n]:.3g}"), "excess": round(float(excess[L - 1, n]), 3),
                "universal": bool(excess[L - 1, n] > 0.5)} for n in cands]
    for e in entropy:
        e["entropy_neuron"] = e["delta_entropy"] > bar

    # diagnostic: where the paper's mechanism would act. The share rho of each last-layer w_out in the folded
    # W_U's effective null space, the same share of the final residual stream (centred, before ln_f: what an
    # entropy neuron's output would add norm to), and the N_NULL neurons of largest rho fixed like the candidates
    basis = null_space(w.W_U)
    rho = null_share(w.W_out[L - 1], basis).numpy()  # [D]
    _, cache = model.run_with_cache(tokens[:32], names_filter=lambda name: name == f"blocks.{L - 1}.hook_resid_post")
    resid = cache[f"blocks.{L - 1}.hook_resid_post"][:, 1:].reshape(-1, w.W_U.shape[0])  # [tokens, d_model]
    resid = resid - resid.mean(-1, keepdim=True)
    norm_pct = pd.Series(out_norm).rank(pct=True).to_numpy()
    top_rho = {int(n): delta(int(n)) for n in np.argsort(-np.nan_to_num(rho, nan=-1.0), kind="stable")[:N_NULL]}
    null = {"dims": int(basis.shape[1]), "resid_share_median": round(float(null_share(resid, basis).median()), 4),
            "neuron_share_median": round(float(np.nanmedian(rho)), 4),
            "top": [{"neuron": f"{L - 1}.{n}", "rho": round(float(rho[n]), 3), "w_out_norm_pct": round(float(norm_pct[n]), 2),
                     "delta_entropy": round(d, 4), "above_bar": d > bar, "universal": bool(excess[L - 1, n] > 0.5)}
                    for n, d in top_rho.items()]}
    return {"prediction": pred, "suppression": supp, "entropy_candidates": entropy, "null_space": null,
            "random_delta_entropy": [round(float(rand.mean()), 4), round(float(rand.std(ddof=1)), 4)],
            "entropy_bar": round(bar, 4), "clean_entropy": round(float(clean), 4),
            "n_prediction": len(pred), "n_suppression": len(supp),
            "n_entropy": sum(e["entropy_neuron"] for e in entropy),
            "max_vocab_kurt_last_two": round(float(np.nanmax(kurt)), 2)}


def _record(metas: list[dict], excess: np.ndarray, mean_baseline: float, mean_max_corr: float) -> dict:
    """The fields every record shares: training cost, losses and excess_corr [layer, neuron] per layer."""
    train_min = sum(m["train_seconds"] for m in metas) / 60
    return {
        "n_seeds": len(metas), "train_min_per_seed": round(train_min / len(metas), 2),
        "train_min_total": round(train_min, 2), "heldout_loss": [round(m["heldout_loss"], 3) for m in metas],
        "unigram_entropy": round(metas[0]["unigram_entropy"], 3),
        "share_gt_0.5_per_layer": [round(float((e > 0.5).mean()), 4) for e in excess],
        "share_gt_0.3_per_layer": [round(float((e > 0.3).mean()), 4) for e in excess],
        "max_excess_per_layer": [round(float(np.nanmax(e)), 3) for e in excess],
        "mean_baseline": round(mean_baseline, 3), "mean_max_corr": round(mean_max_corr, 3),
    }


def heldout_dataset(name: str, tok, eval_tokens: int):
    """The held-out token dataset of config `name` (eval_tokens tokens of documents no seed trained on), made once."""
    ctx = zoo.PRESETS[name].ctx_len
    ds_name = f"zoo-search.{name}-{eval_tokens}.{ctx}"
    try:
        return token_datasets.load_token_dataset(ds_name, "toy", tok)
    except Exception:
        from universal_neurons import corpus

        rows = token_datasets.tokenize_and_concatenate((d for _, d in corpus.iter_all("heldout")), tok, ctx,
                                                       max_rows=eval_tokens // ctx)
        token_datasets.save_token_dataset(rows, "toy", ds_name, tok)
        return token_datasets.load_token_dataset(ds_name, "toy", tok)


def evaluate(name: str, n_seeds: int, eval_tokens: int, workers: int = 1) -> dict:
    preset = zoo.PRESETS[name]
    t0 = time.time()
    metas = zoo.train_zoo(name, n_seeds, progress=False, workers=workers)
    models = [load_model(zoo.zoo_name(name, s)) for s in range(n_seeds)]
    ds = heldout_dataset(name, models[0].tokenizer, eval_tokens)
    mxs, bases, n_tok = max_corrs(models, ds)
    excess = mxs.mean(0) - bases.mean(0)
    L, D = models[0].cfg.n_layers, models[0].cfg.d_mlp
    rows = token_datasets.token_tensor(ds, 0, min(FAMILY_ROWS, len(ds)))
    rec = {"config": name, "threads": torch.get_num_threads(), "preset": json.loads(preset.key()),
           **_record(metas, excess.reshape(L, D).numpy(), float(bases.mean()), float(mxs.mean())),
           "eval_tokens": n_tok, "families": late_families(models[0], rows, excess.reshape(L, D).numpy()),
           "wall_min": round((time.time() - t0) / 60, 2)}
    return rec


def probe(name: str, eval_tokens: int) -> dict:
    """One seed only, no correlations (cheap screen of shapes): seed a's W_U kurtosis in the last two layers and
    its entropy candidates' intervention (late_families, with every neuron's universality unknown)."""
    t0 = time.time()
    meta = zoo.train_zoo(name, 1, progress=False)[0]
    model = load_model(zoo.zoo_name(name, 0))
    L, D = model.cfg.n_layers, model.cfg.d_mlp
    ds = heldout_dataset(name, model.tokenizer, eval_tokens)
    rows = token_datasets.token_tensor(ds, 0, min(FAMILY_ROWS, len(ds)))
    fam = late_families(model, rows, np.full((L, D), np.nan))
    for e in fam["entropy_candidates"] + fam["null_space"]["top"]:
        e["excess"] = e["universal"] = None  # one seed: universality unknown (None, not NaN, keeps the JSON strict)
    from universal_neurons.weights import extract_weights, vocab_compositions

    w = extract_weights(model)
    kurt = vocab_compositions(w, layers=list(range(max(0, L - 2), L)))["U_out"]["comp_kurt"].double().numpy()
    return {"config": name, "probe": True, "threads": torch.get_num_threads(), "preset": json.loads(zoo.PRESETS[name].key()),
            "train_min_per_seed": round(meta["train_seconds"] / 60, 2), "heldout_loss": [round(meta["heldout_loss"], 3)],
            "max_vocab_kurt_last_two": fam["max_vocab_kurt_last_two"],
            "top_vocab_kurt": [round(float(k), 1) for k in np.sort(kurt.ravel())[::-1][:6]],
            "n_prediction": fam["n_prediction"], "n_suppression": fam["n_suppression"],
            "families": {k: v for k, v in fam.items() if k not in ("prediction", "suppression")},
            "wall_min": round((time.time() - t0) / 60, 2)}


def record_run(run_dir: str, zoo_root: str, preset: str = "default") -> dict:
    """The same record for a finished `universal-neurons run` (5 seeds, its correlation mix, the
    real correlation engine): read from its neuron dataframe and the zoo's zoo.json files."""
    import pandas as pd

    a = zoo.zoo_name(preset, 0)
    df = pd.read_csv(Path(run_dir) / "dataframes" / "neuron_dfs" / f"{a}.csv")
    metas = sorted((json.loads(p.read_text()) for p in Path(zoo_root).glob(f"{a[:-1]}?/zoo.json")),
                   key=lambda m: m["seed"])
    metas = [m for m in metas if m["preset"] == preset]
    excess = np.stack([g.to_numpy() for _, g in df.sort_values(["layer", "neuron"]).groupby("layer")["excess_corr"]])
    model = load_model(a)
    from universal_neurons.pipeline import PipelineConfig, settings

    mix = settings(PipelineConfig(preset=preset)).mix_name  # the run's correlation mix (1m; deep: 250k)
    ds = token_datasets.load_token_dataset(mix, "toy", model.tokenizer)
    rows = token_datasets.token_tensor(ds, 0, FAMILY_ROWS)
    return {"config": f"{preset} (universal-neurons run)", "preset": metas[0]["preset_config"],
            **_record(metas, excess, float(df["mean_baseline"].mean()), float(df["mean_corr"].mean())),
            "eval_tokens": mix.rsplit(".", 1)[0], "families": late_families(model, rows, excess)}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--configs", nargs="+", default=list(CONFIGS))
    p.add_argument("--n_seeds", type=int, default=3)
    p.add_argument("--eval_tokens", type=int, default=1_048_576)
    p.add_argument("--workers", type=int, default=1, help="seeds trained side by side")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    p.add_argument("--out", default=str(Path(__file__).with_suffix(".jsonl")))
    p.add_argument("--probe", action="store_true", help="seed a only: its W_U kurtosis and entropy candidates, no correlations")
    p.add_argument("--record_preset", default="default", help="the preset of --record_run's run")
    p.add_argument("--record_run", nargs=2, metavar=("RUN_DIR", "ZOO_DIR"),
                   help="append the record of a finished `universal-neurons run` (default preset) instead")
    args = p.parse_args()
    if args.record_run:
        rec = record_run(*args.record_run, preset=args.record_preset)
        print(json.dumps(rec))
        with open(args.out, "a") as f:
            f.write(json.dumps(rec) + "\n")
        return
    zoo.PRESETS.update(CONFIGS)
    if args.threads:
        torch.set_num_threads(args.threads)
    for c in args.configs:
        rec = probe(c, args.eval_tokens) if args.probe else evaluate(c, args.n_seeds, args.eval_tokens, args.workers)
        print(json.dumps(rec), flush=True)
        with open(args.out, "a") as f:
            f.write(json.dumps(rec) + "\n")


if __name__ == "__main__":
    main()
