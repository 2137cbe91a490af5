"""How much each difference from the original code moves the numbers, measured on the zoo.

For the README's "Differences from the original" table: every convention where our default is not
the original's (a fixed defect) or where a flag restores the original's, measured on seed a (and b
for correlations) of the default zoo over held-out tokens (python-stdlib.all-1m.<ctx>, its first
--n_seq rows). Each effect is computed both ways in float64 from the same raw activations; the
original's convention is re-implemented here only as far as the measurement needs.

    python benchmarks/fidelity_effects.py --models toy-gpt2-a toy-gpt2-b --n_seq 4000
    -> benchmarks/fidelity_effects.md (table) and benchmarks/results/fidelity_effects.json
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from universal_neurons import token_datasets  # noqa: E402
from universal_neurons.capture import mlp_activations, position_mask, token_mask  # noqa: E402
from universal_neurons.models import load_model  # noqa: E402

ROWS: list[dict] = []


def row(item: str, measure: str, value: float | str, note: str = "") -> None:
    ROWS.append({"item": item, "measure": measure, "value": value, "note": note})
    print(f"{item:28s} {measure:60s} {value}")


def acts_of(model, tokens, location, batch=64) -> torch.Tensor:
    """[n_seq, ctx, L * D] float64 activations."""
    out = [mlp_activations(model, tokens[i:i + batch], location).double() for i in range(0, len(tokens), batch)]
    a = torch.cat(out)
    return a.reshape(*a.shape[:2], -1)


def pearson(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """[T, N1], [T, N2] float64 -> [N1, N2] Pearson correlations (NaN for constant columns)."""
    x = x - x.mean(0)
    y = y - y.mean(0)
    return (x.T @ y) / torch.outer(x.norm(dim=0), y.norm(dim=0))


def row_max(c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    c = torch.nan_to_num(c, nan=-2.0)
    v, i = c.max(1)
    return torch.where(v > -2, v, torch.nan), i


def moments(x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Population moments over dim 0 of [T, N] float64 (kurtosis plain)."""
    m = x.mean(0)
    d = x - m
    var = (d ** 2).mean(0)
    return {"mean": m, "var": var, "skew": (d ** 3).mean(0) / var ** 1.5, "kurt": (d ** 4).mean(0) / var ** 2}


def vr_both(a: torch.Tensor, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Variance reduction of a [T, N] by boolean features f [T, F] -> (population, sample) [N, F].

    population (ours): (Var - [p Var_F + q Var_notF]) / Var with ddof 0; sample (the original's pandas
    .var(), ddof 1 for the total and for each group).
    """
    a = a - a.mean(0)
    f = f.double()
    n, n1 = a.shape[0], f.sum(0)  # [F]
    n0 = n - n1
    s1, s = f.T @ a, a.sum(0)  # [F, N], [N]
    q1, q = f.T @ a ** 2, (a ** 2).sum(0)
    ss1 = q1 - s1 ** 2 / n1[:, None]  # within-group sums of squares
    ss0 = (q - q1) - (s - s1) ** 2 / n0[:, None]
    tot = q - s ** 2 / n
    pop = (tot - ss1 - ss0) / tot
    samp_tot = tot / (n - 1)
    samp = (samp_tot - (n1 / n)[:, None] * ss1 / (n1 - 1)[:, None] - (n0 / n)[:, None] * ss0 / (n0 - 1)[:, None]) / samp_tot
    bad = (n1 < 2) | (n0 < 2)
    pop[bad], samp[bad] = torch.nan, torch.nan
    return pop.T, samp.T


def best(vr: torch.Tensor) -> torch.Tensor:
    return torch.nan_to_num(vr, nan=-1.0).argmax(1)


def gelu_tanh(x):
    return torch.nn.functional.gelu(x, approximate="tanh")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs=2, default=["toy-gpt2-a", "toy-gpt2-b"])
    p.add_argument("--dataset", default=None, help="token dataset (default python-stdlib.all-1m.<ctx>, built if missing)")
    p.add_argument("--n_seq", type=int, default=4000)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "fidelity_effects.md"))
    args = p.parse_args(argv)
    t0 = time.time()
    torch.manual_seed(0)
    a_name, b_name = args.models
    a, b = load_model(a_name), load_model(b_name)
    ctx = a.cfg.n_ctx
    name = args.dataset or f"python-stdlib.all-1m.{ctx}"
    if name not in token_datasets.available_datasets(a.family):
        token_datasets.main_make_dataset(token_datasets.MakeDatasetConfig(
            model=a_name, hf_dataset="python-stdlib", ctx_len=ctx, mix_tokens=["1m"]))
    ds = token_datasets.load_token_dataset(name, a.family, a.tokenizer)
    tokens = token_datasets.token_tensor(ds, 0, args.n_seq)  # [n, P]
    flat_tok = tokens.reshape(-1)
    tok = a.tokenizer
    L, D = a.cfg.n_layers, a.cfg.d_mlp
    print(f"{a_name} vs {b_name} on {name}: {tokens.shape[0]} rows x {tokens.shape[1]} = {tokens.numel()} tokens")

    pre_a = acts_of(a, tokens, "mlp.hook_pre")  # [n, P, N]
    post_a = gelu_tanh(pre_a)
    post_b = gelu_tanh(acts_of(b, tokens, "mlp.hook_pre"))
    Xa, Xb = post_a.reshape(-1, L * D), post_b.reshape(-1, L * D)
    special = ~position_mask(tokens, tok, special=False).reshape(-1)

    # -- 1. EOS separators: the original's rows had none (TransformerLens dropped pad = EOS)
    eos_inside = (tokens[:, 1:] == tok.eos_token_id).float().mean().item()
    row("EOS document separators", "share of positions 1.. that are EOS in our rows", f"{100 * eos_inside:.2f}%",
        "the original's rows hold BOS at position 0 only")

    # -- 2. correlation token mask: single '\n' (the original's, now default) vs every newline-only token
    m_single = token_mask(tokens, tok, "single").reshape(-1)
    m_all = token_mask(tokens, tok, "all").reshape(-1)
    c_single = pearson(Xa[m_single], Xb[m_single])
    c_all = pearson(Xa[m_all], Xb[m_all])
    v1, i1 = row_max(c_single)
    v2, i2 = row_max(c_all)
    live = ~torch.isnan(v1)
    row("correlation newline mask", "tokens left out: single / all", f"{(~m_single).float().mean() * 100:.2f}% / "
        f"{(~m_all).float().mean() * 100:.2f}%")
    row("correlation newline mask", "neurons whose best partner in seed b changes", f"{(i1 != i2)[live].float().mean() * 100:.1f}%")
    row("correlation newline mask", "max / mean |d max_corr|", f"{(v1 - v2)[live].abs().max():.4f} / {(v1 - v2)[live].abs().mean():.4f}")

    # -- 3. fp16 activations (the original correlations_fast.py cast activations to fp16)
    c_half = pearson(Xa[m_single].half().double(), Xb[m_single].half().double())
    v3, i3 = row_max(c_half)
    row("fp16 activations (orig.)", "max |d max_corr|, partners changed",
        f"{(v1 - v3)[live].abs().max():.2e}, {(i1 != i3)[live].float().mean() * 100:.2f}%")

    # -- 4. rotation baseline: Haar (ours) vs the original's row-normalised Gaussian (not orthogonal)
    g = torch.Generator().manual_seed(0)
    yb = Xb[m_single].reshape(-1, L, D)
    haar, gauss = [], []
    for l in range(L):
        q, r = torch.linalg.qr(torch.randn(D, D, generator=g, dtype=torch.float64))
        q = q * torch.sign(torch.diagonal(r))
        rn = torch.randn(D, D, generator=g, dtype=torch.float64)
        rn = rn / rn.norm(dim=1, keepdim=True)
        haar.append(yb[:, l] @ q.T)
        gauss.append(yb[:, l] @ rn.T)
    vh, _ = row_max(pearson(Xa[m_single], torch.cat(haar, 1)))
    vg, _ = row_max(pearson(Xa[m_single], torch.cat(gauss, 1)))
    row("rotation baseline", "mean baseline: Haar (ours) / normalised Gaussian rows (orig.)",
        f"{vh[live].mean():.4f} / {vg[live].mean():.4f}")
    row("rotation baseline", "share with corr - baseline > 0.5 (one seed): Haar / orig.",
        f"{((v1 - vh) > 0.5)[live].float().mean() * 100:.2f}% / {((v1 - vg) > 0.5)[live].float().mean() * 100:.2f}%")

    # -- 5. summaries / neuron df: BOS/EOS counted (original, default) or not (--exclude_special_tokens)
    P_a = pre_a.reshape(-1, L * D)
    m_all_pos, m_nospec = moments(P_a), moments(P_a[~special])
    for k in ("skew", "kurt"):
        d = (m_all_pos[k] - m_nospec[k]).abs()
        row("summary: BOS/EOS counted", f"pre-activation {k}: max / median |d|", f"{d.max():.3f} / {d.median():.4f}")
    freq_all, freq_no = (P_a > 0).double().mean(0), (P_a[~special] > 0).double().mean(0)
    row("summary: BOS/EOS counted", "sparsity (share > 0): max |d|", f"{(freq_all - freq_no).abs().max():.4f}")

    # -- 6. sparsity: the original counted pre-activations > -0.098 (one histogram bin too many)
    edges = torch.linspace(-10, 15, 256)  # float32, as summary.py wrote them
    first = int(torch.nonzero(edges >= 0)[0])  # the original's zero_bin; counts[first:] = values > edges[first - 1]
    lo = float(edges[first - 1])
    over = (P_a > lo).double().mean(0) - freq_all
    row("sparsity > -0.098 (orig.)", f"share in ({lo:.3f}, 0]: mean / max over neurons", f"{over.mean():.4f} / {over.max():.4f}")

    # -- 7. top-k examples / vocab max initialised at 0 in the original
    n_pos = (Xa > 0).sum(0)
    row("top-k init 0 (orig.)", "neurons with < 50 positive post-activations", f"{(n_pos < 50).sum().item()} of {L * D}",
        "their top-50 lists hold fake zeros (index 0) in the original")

    # -- 8. explanations: pre-activation cache without GELU (the bug), erf GELU (orig.), positions, variance
    from analysis.vocab_df import make_vocab_df
    from universal_neurons.explanations import explain_layer

    counts = torch.bincount(flat_tok, minlength=a.W_E.shape[0]).numpy()
    vdf = make_vocab_df(tok, a.W_E, a.W_U, counts, min_count=300)
    feat_cols = [c for c in vdf.columns if vdf[c].dtype == bool]
    F = torch.tensor(vdf[feat_cols].to_numpy(dtype=bool))[flat_tok]  # [T, F]
    for l in range(L):
        sl = slice(l * D, (l + 1) * D)
        ref, _ = explain_layer(post_a[..., sl], tokens, vdf, layer=l)
        raw, _ = explain_layer(pre_a[..., sl], tokens, vdf, layer=l)
        erf, _ = explain_layer(torch.nn.functional.gelu(pre_a[..., sl]), tokens, vdf, layer=l)
        r, w, e = (torch.tensor(x.to_numpy()) for x in (ref, raw, erf))
        row("explain: cache w/o GELU (bug)", f"L{l}: max |d VR|, best feature changed",
            f"{(r - w).abs().nan_to_num().max():.3f}, {(best(r) != best(w)).float().mean() * 100:.1f}%")
        row("explain: erf GELU (orig.)", f"L{l}: max |d VR|", f"{(r - e).abs().nan_to_num().max():.2e}")
        nospec = position_mask(tokens, tok, special=False)
        ex, _ = explain_layer(post_a[..., sl], tokens, vdf, mask=nospec, layer=l)
        x = torch.tensor(ex.to_numpy())
        row("explain: BOS/EOS counted", f"L{l}: max |d VR|, best feature changed",
            f"{(r - x).abs().nan_to_num().max():.3f}, {(best(r) != best(x)).float().mean() * 100:.1f}%")
        pop, samp = vr_both(post_a[..., sl].reshape(-1, D), F)
        row("explain: sample variance (orig.)", f"L{l}: max |d VR|", f"{(pop - samp).abs().nan_to_num().max():.2e}")

    # -- 9. intervention.py location: hook_pre (the original's, now default) vs hook_post, same command
    from universal_neurons import interventions as iv

    small = token_datasets.token_tensor(ds, 0, 256)
    clean = iv.evaluate(a, small, record_scale=False, progress=False)
    neuron = (L - 1, int(Xa[:, (L - 1) * D:].std(0).argmax()))
    # zero / relu ablation and threshold 0 give the same run at both hooks (GELU(0) = 0, and GELU is
    # negative exactly where its input is): only fixed values and non-zero thresholds differ
    for t, v in (("fixed_activation", -0.17), ("fixed_activation", 2.0), ("threshold_ablation", 0.5),
                 ("zero_ablation", 0.0)):
        d = {}
        for loc in ("mlp.hook_pre", "mlp.hook_post"):
            res = iv.evaluate(a, small, iv.neuron_hooks([neuron], t, v, loc), record_scale=False, progress=False)
            mask = position_mask(small, tok, special=False, last=False)
            d[loc] = (res["loss"][mask].double().mean() - clean["loss"][mask].double().mean()).item()
        row("intervention location", f"{t} {v} on L{neuron[0]}.{neuron[1]}: d loss pre / post",
            f"{d['mlp.hook_pre']:+.4f} / {d['mlp.hook_post']:+.4f}")

    out = {"models": args.models, "dataset": name, "n_seq": int(tokens.shape[0]), "tokens": int(tokens.numel()),
           "seconds": round(time.time() - t0, 1), "rows": ROWS}
    res_dir = ROOT / "benchmarks" / "results"
    res_dir.mkdir(exist_ok=True)
    (res_dir / "fidelity_effects.json").write_text(json.dumps(out, indent=1) + "\n")
    md = ["# Effects of the differences from the original, measured on the zoo", "",
          f"`python benchmarks/fidelity_effects.py --models {' '.join(args.models)} --n_seq {args.n_seq}`: "
          f"{a_name} (and {b_name} for correlations) on {tokens.shape[0]} rows of `{name}` "
          f"({tokens.numel():,} tokens), {out['seconds']} s.", "",
          "| difference | measure | value | note |", "|---|---|---|---|"]
    md += [f"| {r['item']} | {r['measure']} | {r['value']} | {r['note']} |" for r in ROWS]
    Path(args.out).write_text("\n".join(md) + "\n")
    print(f"wrote {args.out} in {out['seconds']} s")


if __name__ == "__main__":
    main()
