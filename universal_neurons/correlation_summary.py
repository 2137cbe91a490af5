"""Finalised correlation summaries: blockwise per-row statistics of the similarity matrix, and the
files they are written to (the one reader: read_correlation_summary).

Summary conventions (per row neuron i, over all valid similarities c_ij of the other model):
- bin_counts [N, 101] int32: j counted in bin torch.bucketize(c_ij, edges) with
  edges = linspace(-1, 1, 100), right=False: bin 0 holds c <= -1, bin k holds
  edges[k-1] < c <= edges[k], bin 100 holds c > 1.
- max_corr / min_corr and their indices; max_tail_corr / min_tail_corr [N, 50] sorted from the
  extreme inwards (padded with NaN / index -1 when fewer than 50 valid entries exist).
- corr_mean, corr_var (population, ddof=0), corr_skew, corr_kurt (plain kurtosis: Gaussian = 3).
- diag_corr = M.diagonal(), obo_corr = M.diagonal(1) of the summary's [rows, cols] matrix M.
- values float16, indices int32 into the other model's flattened neurons (layer * D + neuron).
- rotation with n_rotations K > 1: max_corr and min_corr are the per-row max / min averaged over
  the K samples; every other key comes from sample 0; the per-sample values are kept as
  max_corr_per_rotation / min_corr_per_rotation [K, N] (float16).
- `meta`: similarity, baseline, n_tokens, seed, n_rotations, n_dead_other (dead columns).
"""
from __future__ import annotations

from pathlib import Path

import torch

from . import paths

from .correlation_stats import N_BINS, N_EDGES, N_TAIL, CorrelationStats, bin_edges
from .errors import UserError

# Finalising: blockwise summaries ------------------------------------------------------------------

def _bins(c: torch.Tensor) -> torch.Tensor:
    """Histogram bin of every entry, float32: ceil((c + 1) * 49.5) clipped to [0, 100].

    This is torch.bucketize(c, linspace(-1, 1, 100), right=False) - bin k holds
    edges[k-1] < c <= edges[k] - computed arithmetically (4x faster on CPU); the two can differ
    only for c within float rounding of an edge."""
    return c.add(1).mul_((N_EDGES - 1) / 2).ceil_().clamp_(0, N_EDGES)


def _tails(c: torch.Tensor, bins: torch.Tensor, counts: torch.Tensor, k: int, dim: int, largest: bool,
           bound: torch.Tensor | None = None):
    """Top-k (largest) or bottom-k values of every row (dim=1) or column (dim=0) of c, with indices.

    Selection through the histogram instead of torch.topk (which dominated finalising on CPU):
    the bin holding each group's k-th extreme value is read off the cumulative counts, every entry
    in that bin or beyond is a candidate (typically k plus a few), and only candidates are sorted.
    bins: bin of every entry (dead entries = 101); counts [groups, 101]: valid entries per bin;
    bound [groups]: optional value the k-th extreme already reached (earlier blocks), which narrows
    the candidates further. Returns values [groups, k] sorted from the extreme inwards (padded with
    -inf / +inf) and indices [groups, k] along `dim` (padded with -1).
    """
    groups = counts.shape[0]
    k_eff = counts.sum(1).clamp(max=k)
    if largest:
        cum = counts.flip(1).cumsum(1).flip(1)                     # entries in bins >= b
        cut = (cum >= k_eff[:, None]).sum(1) - 1                   # bin of the k-th largest
        if bound is not None:
            cut = torch.maximum(cut, _bins(bound.clamp(-2, 2)).long())
    else:
        cum = counts.cumsum(1)                                     # entries in bins <= b
        cut = (cum < k_eff[:, None]).sum(1)                        # bin of the k-th smallest
        if bound is not None:
            cut = torch.minimum(cut, _bins(bound.clamp(-2, 2)).long())
    cut = (cut.view(-1, 1) if dim == 1 else cut.view(1, -1)).to(bins.dtype)
    nz = (bins >= cut if largest else bins <= cut).nonzero()
    if largest:      # dead entries (bin 101) pass the test above: drop them now
        nz = nz[bins[nz[:, 0], nz[:, 1]] <= N_EDGES]
    vals = c[nz[:, 0], nz[:, 1]]
    group, member = (nz[:, 0], nz[:, 1]) if dim == 1 else (nz[:, 1], nz[:, 0])
    key = group.double() * 4 + (1 - vals.double() if largest else 1 + vals.double())   # |c| <= 1
    order = torch.sort(key, stable=True).indices
    group, member, vals = group[order], member[order], vals[order]
    n_cand = torch.bincount(group, minlength=groups)
    rank = torch.arange(len(group), device=c.device) - (n_cand.cumsum(0) - n_cand)[group]
    keep = rank < k
    out_v = torch.full((groups, k), -float("inf") if largest else float("inf"), device=c.device)
    out_i = torch.full((groups, k), -1, dtype=torch.int64, device=c.device)
    out_v[group[keep], rank[keep]] = vals[keep]
    out_i[group[keep], rank[keep]] = member[keep]
    return out_v, out_i


class _RowSummary:
    """Running summary of the rows of a similarity matrix whose columns arrive in blocks.

    State per row: top / bottom N_TAIL values and column indices (block results are kept pending
    and merged a few blocks at a time), a 101-bin histogram, power sums of the valid values and
    their count, diagonal and first off-diagonal entries. extremes_only keeps just max and min.
    """

    def __init__(self, n_rows: int, n_cols: int, device, tail: int = N_TAIL, extremes_only: bool = False):
        self.n_rows, self.n_cols, self.tail, self.extremes_only = n_rows, n_cols, tail, extremes_only
        inf = float("inf")
        if extremes_only:
            self.max_v = torch.full((n_rows,), -inf, device=device)
            self.min_v = torch.full((n_rows,), inf, device=device)
            return
        self.top_v = torch.full((n_rows, tail), -inf, device=device)
        self.bot_v = torch.full((n_rows, tail), inf, device=device)
        self.top_i = torch.full((n_rows, tail), -1, dtype=torch.int64, device=device)
        self.bot_i = torch.full((n_rows, tail), -1, dtype=torch.int64, device=device)
        self.pending = []      # (rows slice, top_v, top_i, bot_v, bot_i) not merged yet
        self.bins = torch.zeros(n_rows, N_BINS, dtype=torch.int64, device=device)
        self.power = torch.zeros(n_rows, 4, dtype=torch.float64, device=device)
        self.count = torch.zeros(n_rows, dtype=torch.int64, device=device)
        self.diag = torch.full((min(n_rows, n_cols),), float("nan"), device=device)
        self.obo = torch.full((max(0, min(n_rows, n_cols - 1)),), float("nan"), device=device)

    def add_tails(self, rows: slice, top_v, top_i, bot_v, bot_i, max_pending: int = 16):
        self.pending.append((rows, top_v, top_i, bot_v, bot_i))
        if len(self.pending) >= max_pending:
            self.flush()

    def flush(self):
        """Merge pending tails: for each row slice, one topk over [current | all pending blocks]."""
        by_rows = {}
        for rows, *t in self.pending:
            by_rows.setdefault((rows.start, rows.stop), []).append(t)
        self.pending = []
        for (r0, r1), parts in by_rows.items():
            rows = slice(r0, r1)
            for vals, idx, j, largest in ((self.top_v, self.top_i, 0, True), (self.bot_v, self.bot_i, 2, False)):
                cat_v = torch.cat([vals[rows]] + [p[j] for p in parts], 1)
                cat_i = torch.cat([idx[rows]] + [p[j + 1] for p in parts], 1)
                v, pos = cat_v.topk(self.tail, dim=1, largest=largest)
                vals[rows], idx[rows] = v, cat_i.gather(1, pos)

    def result(self, dead: torch.Tensor, n_dead_other: int) -> dict:
        """The spec's summary dict (values float16, indices int32, bins int32) for these rows."""
        nan = float("nan")
        if self.extremes_only:
            return {"max_corr": self.max_v.masked_fill(~torch.isfinite(self.max_v) | dead, nan),
                    "min_corr": self.min_v.masked_fill(~torch.isfinite(self.min_v) | dead, nan)}
        self.flush()
        top_v = self.top_v.masked_fill(~torch.isfinite(self.top_v) | dead[:, None], nan)
        bot_v = self.bot_v.masked_fill(~torch.isfinite(self.bot_v) | dead[:, None], nan)
        top_i = self.top_i.masked_fill(torch.isnan(top_v), -1)
        bot_i = self.bot_i.masked_fill(torch.isnan(bot_v), -1)
        cnt = self.count.double().masked_fill(dead, 0)
        p = self.power / cnt[:, None]                                  # raw moments E[c^k]
        m = p[:, 0]
        var = (p[:, 1] - m * m).clamp_min(0)
        m3 = p[:, 2] - 3 * m * p[:, 1] + 2 * m ** 3
        m4 = p[:, 3] - 4 * m * p[:, 2] + 6 * m * m * p[:, 1] - 3 * m ** 4
        skew, kurt = m3 / var ** 1.5, m4 / var ** 2
        bins = self.bins.masked_fill(dead[:, None], 0)
        diag = self.diag.masked_fill(dead[: self.diag.shape[0]], nan)
        obo = self.obo.masked_fill(dead[: self.obo.shape[0]], nan)
        h = lambda t: t.to(torch.float16).cpu()
        i32 = lambda t: t.to(torch.int32).cpu()
        return {
            "diag_corr": h(diag), "obo_corr": h(obo), "bin_counts": i32(bins),
            "max_corr": h(top_v[:, 0]), "max_corr_ix": i32(top_i[:, 0]),
            "min_corr": h(bot_v[:, 0]), "min_corr_ix": i32(bot_i[:, 0]),
            "max_tail_corr": h(top_v), "max_tail_corr_ix": i32(top_i),
            "min_tail_corr": h(bot_v), "min_tail_corr_ix": i32(bot_i),
            "corr_mean": h(m), "corr_var": h(var), "corr_skew": h(skew), "corr_kurt": h(kurt),
            "dead_mask": dead.cpu(), "n_dead": int(dead.sum()), "n_dead_other": int(n_dead_other),
        }


def _reduce_block(c: torch.Tensor, r0: int, rows: _RowSummary, cols: _RowSummary,
                  dead_r: torch.Tensor, dead_c: torch.Tensor) -> None:
    """Fold a similarity block c [rb, N2] (global rows r0.., all columns; dead entries exactly 0)
    into the row summary (rows r0:r0+rb) and the column summary (every column gets rb new entries).
    Both summaries come from the one block, so the [N1, N2] matrix is never held whole.
    c is destroyed."""
    rb, nc = c.shape
    dev = c.device
    rsl = slice(r0, r0 + rb)
    dr, dc = dead_r.nonzero().flatten(), dead_c.nonzero().flatten()
    inf = float("inf")
    if rows.extremes_only:
        for largest, acc_r, acc_c in ((True, rows.max_v, cols.max_v), (False, rows.min_v, cols.min_v)):
            fill = -inf if largest else inf
            c.index_fill_(1, dc, fill)
            c.index_fill_(0, dr, fill)
            red = torch.amax if largest else torch.amin
            acc_r[rsl] = red(c, 1)
            acc_c.copy_(red(torch.stack([acc_c, red(c, 0)]), 0))
        return
    # diagonal and first off-diagonal (global indices) of M = rows x cols and of M^T
    i = torch.arange(r0, r0 + rb, device=dev)
    nan = float("nan")
    for offset, target, at in ((0, rows.diag, i), (0, cols.diag, i), (1, rows.obo, i), (-1, cols.obo, i - 1)):
        j = i + offset
        ok = (j >= 0) & (j < nc) & (at >= 0) & (at < target.shape[0])
        v = c[(i - r0)[ok], j[ok]]
        target[at[ok]] = v.masked_fill(dead_r[(i - r0)[ok]] | dead_c[j[ok]], nan)
    # histograms of this block, by row and by column; dead entries go to an extra bin 101
    b = _bins(c)
    b.index_fill_(1, dc, N_BINS)
    b.index_fill_(0, dr, N_BINS)
    bl = b.long()
    ones = torch.ones(1, 1, dtype=torch.int64, device=dev).expand(rb, nc)
    row_bins = torch.zeros(rb, N_BINS + 1, dtype=torch.int64, device=dev).scatter_add_(1, bl, ones)[:, :N_BINS]
    col_bins = torch.zeros(N_BINS + 1, nc, dtype=torch.int64, device=dev).scatter_add_(0, bl, ones)[:N_BINS].t()
    del bl
    rows.bins[rsl] += row_bins
    cols.bins += col_bins
    # tails, through the histograms (no topk over the block)
    k = rows.tail
    tv, ti = _tails(c, b, row_bins, k, 1, True)
    bv, bi = _tails(c, b, row_bins, k, 1, False)
    rows.top_v[rsl], rows.top_i[rsl], rows.bot_v[rsl], rows.bot_i[rsl] = tv, ti, bv, bi   # complete rows
    # columns: what earlier blocks already hold bounds the candidates (classic streaming top-k)
    tv, ti = _tails(c, b, col_bins, k, 0, True, bound=cols.top_v[:, -1])
    bv, bi = _tails(c, b, col_bins, k, 0, False, bound=cols.bot_v[:, -1])
    cols.add_tails(slice(0, nc), tv, ti.masked_fill(ti < 0, -1 - r0) + r0, bv, bi.masked_fill(bi < 0, -1 - r0) + r0,
                   max_pending=1)
    del b
    # power sums (dead entries are 0 so they add nothing; the counts leave them out), as
    # matrix-vector products: float32 sums of |c| <= 1 within a block are ample for float16
    # moments, and blocks add up in float64.
    one_c = torch.ones(nc, 1, device=dev)
    one_r = torch.ones(1, rb, device=dev)
    p = c * c
    row_pow, col_pow = [c @ one_c, p @ one_c], [one_r @ c, one_r @ p]
    p.mul_(c)
    row_pow.append(p @ one_c)
    col_pow.append(one_r @ p)
    p.mul_(c)
    row_pow.append(p @ one_c)
    col_pow.append(one_r @ p)
    del p
    rows.power[rsl] += torch.cat(row_pow, 1).double()
    cols.power += torch.cat(col_pow, 0).t().double()
    rows.count[rsl] += nc - len(dc)
    cols.count += rb - len(dr)


class CorrelationFinalizer:
    """Builds the spec's artifacts from the statistics of one or several model-1 row tiles.

    add(stats) processes a tile (its rows in blocks); results() returns
    {baseline: {"summary": dict (rows = model-1 neurons), "summary_T": dict (rows = model-2 neurons),
                "correlation": tensor [L1, D1, L2, D2] or None}}.
    """

    def __init__(self, n1: int, layers_2: int, d_2: int, baselines, *, similarity="pearson", n_rotations=1,
                 seed=0, full_matrix=False, save_precision: int = 16, layers_1: int | None = None,
                 device="cpu", block_bytes: int | None = None):
        self.n1, self.layers_2, self.d_2, self.n2 = n1, layers_2, d_2, layers_2 * d_2
        self.layers_1 = layers_1 or 1
        self.baselines, self.similarity, self.n_rotations, self.seed = tuple(baselines), similarity, n_rotations, seed
        # temporaries of one row block (~40 bytes per entry); few large blocks = few kernel launches
        self.device = torch.device(device)
        self.block_bytes = block_bytes or ((1 << 30) if self.device.type == "cuda" else (256 << 20))
        self.full_matrix, self.save_precision = full_matrix, save_precision
        self.edges = bin_edges(self.device)
        self.row_dead = torch.ones(n1, dtype=torch.bool, device=self.device)
        self.n_tokens = None
        self.acc = {}     # (baseline, sample) -> (row summary, column summary)
        self.col_dead = {}
        for b in self.baselines:
            k_max = n_rotations if b == "rotation" else 1
            for k in range(k_max):
                ext = k > 0
                self.acc[(b, k)] = (_RowSummary(n1, self.n2, self.device, extremes_only=ext),
                                    _RowSummary(self.n2, n1, self.device, extremes_only=ext))
        self.full = {b: None for b in self.baselines}
        self.rows_done = torch.zeros(n1, dtype=torch.bool)

    @torch.no_grad()
    def add(self, stats: CorrelationStats, block_rows: int | None = None) -> None:
        if self.n_tokens is not None and stats.n != self.n_tokens:
            raise UserError(f"tiles saw different numbers of tokens ({stats.n} vs {self.n_tokens}): "
                            "their statistics do not come from the same data")
        self.n_tokens = stats.n
        o = stats.row_offset
        row_inv, row_dead = stats.row_scale()
        self.row_dead[o:o + stats.n_rows] = row_dead
        self.rows_done[o:o + stats.n_rows] = True
        rb = block_rows or max(1, min(stats.n_rows, self.block_bytes // (40 * self.n2)))
        # every (baseline, sample) to produce, grouped by stream so each cross block is built once
        work = []
        for b in self.baselines:
            sources = stats.baseline_sources(b)
            self.col_dead[b] = []
            for k, (stream, samp) in enumerate(sources):
                col_inv, col_dead = stats.col_scale(stream, samp)
                self.col_dead[b].append(col_dead)
                work.append((stream, samp, b, k, col_inv, col_dead))
        work.sort(key=lambda w: w[0])
        for r0 in range(0, stats.n_rows, rb):
            r1 = min(r0 + rb, stats.n_rows)
            cross, cross_of = None, None
            for stream, samp, b, k, col_inv, col_dead in work:
                if cross_of != stream:
                    cross = None                      # free the previous stream's block first
                    cross, cross_of = stats.cross_block(stream, r0, r1), stream
                c = stats.similarity_block(cross, r0, stream, samp, row_inv, col_inv)
                if k == 0 and self.full_matrix:
                    self._store_full(b, c, o + r0, row_dead[r0:r1], col_dead)
                rows, cols = self.acc[(b, k)]
                _reduce_block(c, o + r0, rows, cols, row_dead[r0:r1], col_dead)

    def _store_full(self, baseline, c, g0, dead_r, dead_c):
        if self.full[baseline] is None:
            dtype = {16: torch.float16, 32: torch.float32, 8: torch.float32}[self.save_precision]
            self.full[baseline] = torch.empty(self.n1, self.n2, dtype=dtype)
        blk = c.clone()
        blk[dead_r] = float("nan")
        blk[:, dead_c] = float("nan")
        self.full[baseline][g0:g0 + c.shape[0]] = blk.cpu().to(self.full[baseline].dtype)

    def results(self) -> dict:
        if not bool(self.rows_done.all()):
            missing = (~self.rows_done).nonzero().flatten()
            raise UserError(f"model-1 rows {int(missing[0])}..{int(missing[-1])} have no statistics (missing tile)")
        out = {}
        for b in self.baselines:
            col_dead = self.col_dead[b]
            rows, cols = self.acc[(b, 0)]
            summ = rows.result(self.row_dead, int(col_dead[0].sum()))
            summ_t = cols.result(col_dead[0], int(self.row_dead.sum()))
            meta = {"similarity": self.similarity, "baseline": b, "n_tokens": int(self.n_tokens or 0),
                    "seed": self.seed, "n_rotations": self.n_rotations if b == "rotation" else 1,
                    "bin_edges": "linspace(-1, 1, 100); bin k holds edges[k-1] < c <= edges[k] (torch.bucketize, right=False)"}
            if b == "rotation" and self.n_rotations > 1:
                per_r = [self.acc[(b, k)][0].result(self.row_dead, 0) if k else None for k in range(self.n_rotations)]
                per_c = [self.acc[(b, k)][1].result(col_dead[k], 0) if k else None for k in range(self.n_rotations)]
                for s, per in ((summ, per_r), (summ_t, per_c)):
                    for key in ("max_corr", "min_corr"):
                        vals = torch.stack([s[key].float()] + [p[key].float().cpu() for p in per[1:]])
                        s[f"{key}_per_rotation"] = vals.to(torch.float16)
                        s[key] = vals.mean(0).to(torch.float16)
            summ["meta"], summ_t["meta"] = dict(meta), dict(meta)
            out[b] = {"summary": summ, "summary_T": summ_t, "correlation": self._full_result(b)}
        return out

    def _full_result(self, baseline):
        m = self.full[baseline]
        if m is None:
            return None
        if self.save_precision == 8:
            return quantize_rows_int8(m, self.layers_1, self.layers_2)
        return m.view(self.layers_1, self.n1 // self.layers_1, self.layers_2, self.d_2)


def quantize_rows_int8(m: torch.Tensor, layers_1: int, layers_2: int) -> dict:
    """Our 8-bit format of a [N1, N2] similarity matrix: symmetric per-row (per model-1 neuron) int8.

    {'format': 'int8-symmetric-per-row', 'q': int8 [L1, D1, L2, D2], 'scale': float32 [L1, D1]};
    value = q * scale (max abs error scale / 2 <= 1/254), q == -128 marks NaN (dead neurons).
    Read it back with `load_correlation_matrix`.
    """
    n1, n2 = m.shape
    m = m.float()
    nan = torch.isnan(m)
    scale = m.abs().masked_fill(nan, 0).amax(1).clamp_min(1e-12) / 127
    q = torch.round(m / scale[:, None]).clamp_(-127, 127).masked_fill_(nan, 0).to(torch.int8)
    q.masked_fill_(nan, -128)
    return {"format": "int8-symmetric-per-row",
            "q": q.view(layers_1, n1 // layers_1, layers_2, n2 // layers_2),
            "scale": scale.view(layers_1, n1 // layers_1)}


def load_correlation_matrix(path) -> torch.Tensor:
    """correlation.pt at any save precision -> float32 [L1, D1, L2, D2] (NaN at dead neurons)."""
    obj = paths.torch_load(path)
    if isinstance(obj, dict) and obj.get("format") == "int8-symmetric-per-row":
        q = obj["q"]
        out = q.float() * obj["scale"][:, :, None, None]
        return out.masked_fill_(q == -128, float("nan"))
    return obj.float()


SUMMARY_FILES = ("correlation_summary.pt", "correlation_summary_T.pt")
FULL_FILE = "correlation.pt"


def read_correlation_summary(folder, transposed: bool = False, mmap: bool = False, hint: str = "") -> dict:
    """The one reader of a <sim>.<baseline>/ folder's correlation_summary.pt (rows = model-1 neurons) or,
    transposed, correlation_summary_T.pt (rows = model-2 neurons); folder = paths.correlation_path(...).
    hint: the command that writes it, for the message when it is missing."""
    f = Path(folder) / SUMMARY_FILES[int(transposed)]
    if not f.is_file():
        raise UserError(f"missing correlation summary {f}" + (f" (run {hint})" if hint else ""))
    return paths.torch_load(f, mmap=mmap)


def finalize(stats: CorrelationStats, full_matrix: bool = False, block_rows: int | None = None) -> dict:
    """One tile's statistics straight to results: {baseline: {'summary', 'summary_T', 'correlation'?}}."""
    fin = CorrelationFinalizer(stats.row_offset + stats.n_rows, stats.layers_2, stats.d_2, stats.baselines,
                               similarity=stats.similarity, n_rotations=stats.n_rotations, seed=stats.seed,
                               full_matrix=full_matrix, device=stats.device)
    fin.add(stats, block_rows=block_rows)
    return fin.results()
