"""Streaming neuron-to-neuron similarities between two models: one pass, every baseline, any shards.

Data flow (shapes use T = tokens of a batch after masking, N1 = rows of model 1 handled here
(a range r0:r1 of its flattened [layer * d_mlp] neurons), N2 = L2 * D2 neurons of model 2):

    x [T, N1], y [T, N2]  --CorrelationStats.update-->  sufficient statistics
    statistics  --merge (any order, any number of shards)-->  statistics
    statistics  --CorrelationFinalizer-->  correlation_summary.pt, correlation_summary_T.pt,
                                           optional correlation.pt [L1, D1, L2, D2]

Numerics
- Every neuron is shifted by a fixed reference, its mean on the first batch, before anything is
  summed, so that S_xx - S_x^2 / n does not cancel even for neurons whose mean is 1000x their std.
  Shards carry their own shifts; `merge` re-centres them onto a common one exactly.
- The cross product S_xy = sum_t x'_t y'_t^T [N1, N2] costs one GEMM per batch (computed as 4 x 4
  output tiles for large N, so the scratch stays at 1/8 of the accumulator) and is kept as a
  compensated pair: `hi` float32 plus `lo` bfloat16 holding the rounding error of every addition
  (Fast2Sum, Kahan-style). The pair carries ~32 significant bits at 1.5x the memory of a float32
  accumulator, with no float64 traffic and no host copies on the hot path. Per-neuron sums, sums of
  squares and Gram matrices are small and kept in float64.
- Rotation baseline without a second pass: for an orthogonal R_l per model-2 layer,
  cov(x, R_l y_l) = C_xy,l R_l^T and var(R_l y_l) = diag(R_l Sigma_l R_l^T), so only the Gram
  matrices G_l = sum_t y'_l y'_l^T [D2, D2] of model 2 are accumulated (1/L1 of the main GEMM).
  R_l is Haar-random: QR of a float64 Gaussian with the signs of diag(R) folded into Q.
- Permutation and gaussian baselines are separate streams: model-2 activations with tokens
  shuffled within the batch, or replaced by gelu(randn) of the same shape. Both are seeded per
  (seed, batch_id), so shards, tiles and resumed runs see exactly the same baseline data.
- Jaccard: binarise a = x > thr, b = y > thr; intersection by the same GEMM, union = |a|+|b|-inter.
  Its rotation baseline is not linear in y, so each rotation sample is a stream of rotated data.

Dead neurons: a neuron whose centred sum of squares is <= 1e-12 of its raw sum of squares
(constant to ~6 significant digits, or NaN/inf anywhere) is dead for pearson; a neuron whose raw
norm is 0 is dead for cosine; a neuron never above the threshold is dead for jaccard. Its
similarities are NaN in the full matrix, and they never enter any max / min / top-k / histogram /
moment of any other neuron. Summaries record `dead_mask` [N] (bool) and `n_dead` (int).

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

Runs keyed by their settings: each <sim>.<baseline>/ folder gets run.json last (model names and
weight fingerprints, dataset and its fingerprint, n_seq, activation location, newline mask,
similarity, baseline, seed / n_rotations where they apply, code version: runs.py). A rerun with the same settings skips the folder; a folder
made with other or unrecorded settings stops the run with one message naming the differences,
unless --overwrite replaces it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from . import runs
from .errors import UserError, check_n_seq
from .models import model_fingerprint
from .token_datasets import dataset_fingerprint

SIMILARITIES = ("pearson", "cosine", "jaccard")
BASELINES = ("none", "gaussian", "permutation", "rotation")
N_EDGES = 100                   # bin edges linspace(-1, 1, 100) -> 101 bins
N_BINS = N_EDGES + 1
N_TAIL = 50
DEAD_RELATIVE_VARIANCE = 1e-12  # centred / raw sum of squares below this -> constant neuron
STATS_VERSION = 1
_SALT = {"rotation": 1, "permutation": 2, "gaussian": 3}


def similarity_name(similarity: str, jaccard_threshold: float = 0.0) -> str:
    """Folder name of a similarity: 'pearson' | 'cosine' | 'jaccard-<thr:.2f>'."""
    if similarity not in SIMILARITIES:
        raise UserError(f"unknown similarity {similarity!r}; choose from {SIMILARITIES}")
    return f"jaccard-{jaccard_threshold:.2f}" if similarity == "jaccard" else similarity


def bin_edges(device=None) -> torch.Tensor:
    return torch.linspace(-1, 1, N_EDGES, device=device)


def derive_seed(*parts: int) -> int:
    """A 63-bit seed mixed from integers (numpy SeedSequence), e.g. (seed, batch_id, salt)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1, dtype=np.uint64)[0] >> 1)


def haar_rotation(d: int, generator: torch.Generator, device=None) -> torch.Tensor:
    """A Haar-random orthogonal matrix [d, d] float64.

    Q of a Gaussian's QR is Haar only after fixing the signs: Q <- Q diag(sign(diag(R))).
    The Gaussian is drawn on the CPU (reproducible everywhere), the QR runs on `device`.
    """
    g = torch.randn(d, d, generator=generator, dtype=torch.float64).to(device)
    q, r = torch.linalg.qr(g)
    sign = torch.sign(torch.diagonal(r))
    sign[sign == 0] = 1
    return q * sign


def rotation_matrices(seed: int, sample: int, n_layers: int, d: int, device=None) -> torch.Tensor:
    """The rotation baseline's matrices for one sample: [layer, d, d] float64, R[l] acts on layer l.
    The same (seed, sample) gives the same matrices on every device and in every shard or tile.
    The result is cached (shared): do not modify it in place."""
    return _rotation_matrices(int(seed), int(sample), int(n_layers), int(d), str(torch.device(device or "cpu")))


@lru_cache(maxsize=4)       # tiles and rotation samples reuse them; a GPT-2 layer's QR is not free
def _rotation_matrices(seed: int, sample: int, n_layers: int, d: int, device: str) -> torch.Tensor:
    gen = torch.Generator().manual_seed(derive_seed(seed, sample, _SALT["rotation"]))
    return torch.stack([haar_rotation(d, gen, device) for _ in range(n_layers)])


def rotate_layers(y: torch.Tensor, rotations: torch.Tensor) -> torch.Tensor:
    """y [T, L*D] -> per layer y_l R_l^T (i.e. R_l applied to every token's activation vector)."""
    n_layers, d, _ = rotations.shape
    y_l = y.reshape(y.shape[0], n_layers, d).transpose(0, 1)          # [L, T, D]
    out = torch.bmm(y_l, rotations.to(y.dtype).transpose(1, 2))       # [L, T, D]
    return out.transpose(0, 1).reshape(y.shape[0], n_layers * d)


def _batch_generator(seed: int, batch_id: int, salt: str, device) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(derive_seed(seed, batch_id, _SALT[salt]))


def _first_mean(t: torch.Tensor, rows: int = 1024, chunk: int = 64) -> torch.Tensor:
    """The shift of a neuron: its mean over the first <= 1024 tokens it sees (float32 [N]).
    Any value near the mean works; this one costs little and is exact for a constant neuron
    (float64 sums, in chunks so the float64 copy stays small)."""
    k = min(rows, t.shape[0])
    total = sum(t[i:min(i + chunk, k)].sum(0, dtype=torch.float64) for i in range(0, k, chunk))
    return (total / k).float()


def _centre_and_sum(t: torch.Tensor, shift: torch.Tensor | None, squares: bool = True,
                    chunk: int = 1 << 20) -> tuple[torch.Tensor, torch.Tensor | None]:
    """t [T, N] float32 -= shift (in place, if given); returns its column sums and (if `squares`)
    sums of squares, float64 [N].

    One sweep in chunks of ~`chunk` elements (few ops, each chunk still in cache for its second
    and third use): centre, then both sums as BLAS
    matrix-vector products (float32 reductions over dim 0 are slow on CPU, and a float64 cast
    would allocate twice t); partial sums over a chunk are float32, their running total float64.
    """
    rows = max(1, min(chunk // t.shape[1], t.shape[0]))
    ones = torch.ones(1, rows, device=t.device, dtype=t.dtype)
    buf = torch.empty(rows, t.shape[1], device=t.device, dtype=t.dtype)
    part = torch.empty(2, t.shape[1], device=t.device, dtype=t.dtype)
    s = torch.zeros(t.shape[1], device=t.device, dtype=torch.float64)
    ss = torch.zeros_like(s) if squares else None
    for r0 in range(0, t.shape[0], rows):
        blk = t[r0:r0 + rows]
        k = blk.shape[0]
        if shift is not None:
            blk.sub_(shift)
        torch.mm(ones[:, :k], blk, out=part[:1])
        s += part[0]
        if squares:
            torch.mul(blk, blk, out=buf[:k])
            torch.mm(ones[:, :k], buf[:k], out=part[1:])
            ss += part[1]
    return s, ss


def _tile(n: int) -> int:
    """Side of the output tiles of the cross-product GEMM: a quarter of the dimension (16 tiles,
    scratch 1/8 of the accumulator) for large ones, the whole dimension for small ones."""
    return n if n < 2048 else math.ceil(n / 4)


def _own_float32(t: torch.Tensor, may_overwrite: bool) -> torch.Tensor:
    """A float32 tensor that may be modified: t itself if allowed, else one copy."""
    if t.dtype != torch.float32:
        return t.float()
    return t if may_overwrite else t.clone()


def _compensated_add_(hi: torch.Tensor, lo: torch.Tensor, p: torch.Tensor, work: torch.Tensor) -> None:
    """(hi + lo) += p in place. hi float32, lo bfloat16 (the pending rounding error); p float32 is
    destroyed; work is float32 scratch of p's width and any number of rows (the update runs in
    row chunks of that size, so the scratch can be much smaller than p).
    Fast2Sum: y = p + lo; t = hi + y; lo = (hi - t) + y; hi = t."""
    p.add_(lo)                                  # y
    step = work.shape[0]
    for r0 in range(0, p.shape[0], step):
        h, y = hi[r0:r0 + step], p[r0:r0 + step]
        t = work[: h.shape[0], : h.shape[1]]
        torch.add(h, y, out=t)                  # t
        h.sub_(t).add_(y)                       # h <- (h - t) + y: the rounding error of t
        lo[r0:r0 + step].copy_(h)
        h.copy_(t)


def _split_(hi: torch.Tensor, lo: torch.Tensor, total: torch.Tensor) -> None:
    """Store a float64 tensor as hi (float32) + lo (bfloat16)."""
    hi.copy_(total)
    lo.copy_(total - hi.double())


@dataclass
class _Stream:
    """Statistics of one variant of model 2's activations (data, permuted, gaussian, rotated)."""
    name: str
    shift: torch.Tensor | None = None      # [N2] float32
    sum: torch.Tensor | None = None        # [N2] float64, of shifted values
    sumsq: torch.Tensor | None = None      # [N2] float64
    hi: torch.Tensor | None = None         # [N1, N2] float32
    lo: torch.Tensor | None = None         # [N1, N2] bfloat16
    gram: torch.Tensor | None = None       # [L2, D2, D2] float64 or None

    def tensors(self) -> dict:
        return {k: getattr(self, k) for k in ("shift", "sum", "sumsq", "hi", "lo", "gram")}


class CorrelationStats:
    """Additive sufficient statistics for similarities of model-1 rows [r0, r1) vs all model-2 neurons.

    update(x [T, n_rows], y [T, L2*D2], batch_id) accumulates one batch; merge(other) adds another
    shard; state_dict()/from_state_dict() (and save/load) persist it. Finalise with
    CorrelationFinalizer (or the `finalize` shortcut).
    """

    def __init__(self, *, n_rows: int, layers_2: int, d_2: int, row_offset: int = 0,
                 similarity: str = "pearson", jaccard_threshold: float = 0.0,
                 baselines=("none",), n_rotations: int = 1, seed: int = 0,
                 device="cpu", gemm_dtype: torch.dtype = torch.float32, allow_tf32: bool = False,
                 tile: tuple[int, int] | None = None):
        if similarity not in SIMILARITIES:
            raise UserError(f"unknown similarity {similarity!r}; choose from {SIMILARITIES}")
        baselines = tuple(dict.fromkeys(baselines))
        bad = [b for b in baselines if b not in BASELINES]
        if bad or not baselines:
            raise UserError(f"unknown baseline(s) {bad}; choose from {BASELINES}")
        if n_rotations < 1:
            raise UserError("n_rotations must be >= 1")
        self.n_rows, self.layers_2, self.d_2, self.row_offset = int(n_rows), int(layers_2), int(d_2), int(row_offset)
        self.n_cols = self.layers_2 * self.d_2
        self.similarity, self.jaccard_threshold = similarity, float(jaccard_threshold)
        self.baselines, self.n_rotations, self.seed = baselines, int(n_rotations), int(seed)
        self.device = torch.device(device)
        self.gemm_dtype, self.allow_tf32 = gemm_dtype, allow_tf32
        self.tile = tuple(tile) if tile else (_tile(self.n_rows), _tile(self.n_cols))
        self.n = 0
        self.x_shift = self.x_sum = self.x_sumsq = None
        self.streams = {name: self._new_stream(name) for name in self.stream_names()}

    # layout ------------------------------------------------------------------------------------

    def stream_names(self) -> list[str]:
        """Streams in update order: variants that copy y first, the in-place 'data' stream last."""
        names = []
        if "permutation" in self.baselines:
            names.append("permutation")
        if "gaussian" in self.baselines:
            names.append("gaussian")
        if "rotation" in self.baselines and self.similarity == "jaccard":
            names += [f"rotation-{k}" for k in range(self.n_rotations)]
        if "none" in self.baselines or ("rotation" in self.baselines and self.similarity != "jaccard"):
            names.append("data")
        return names

    def baseline_sources(self, baseline: str) -> list[tuple[str, int | None]]:
        """(stream, rotation sample or None) pairs whose similarities make up a baseline."""
        if baseline == "none":
            return [("data", None)]
        if baseline == "rotation":
            if self.similarity == "jaccard":
                return [(f"rotation-{k}", None) for k in range(self.n_rotations)]
            return [("data", k) for k in range(self.n_rotations)]
        return [(baseline, None)]

    def _new_stream(self, name: str) -> _Stream:
        s = _Stream(name)
        dev = self.device
        s.sum = torch.zeros(self.n_cols, dtype=torch.float64, device=dev)
        s.sumsq = torch.zeros_like(s.sum)
        s.hi = torch.zeros(self.n_rows, self.n_cols, dtype=torch.float32, device=dev)
        s.lo = torch.zeros(self.n_rows, self.n_cols, dtype=torch.bfloat16, device=dev)
        if name == "data" and "rotation" in self.baselines:
            s.gram = torch.zeros(self.layers_2, self.d_2, self.d_2, dtype=torch.float64, device=dev)
        return s

    def config(self) -> dict:
        return dict(n_rows=self.n_rows, layers_2=self.layers_2, d_2=self.d_2, row_offset=self.row_offset,
                    similarity=self.similarity, jaccard_threshold=self.jaccard_threshold,
                    baselines=list(self.baselines), n_rotations=self.n_rotations, seed=self.seed)

    def nbytes(self) -> int:
        """Bytes held by the statistics (state only, no per-batch temporaries)."""
        ts = [self.x_shift, self.x_sum, self.x_sumsq]
        for s in self.streams.values():
            ts += list(s.tensors().values())
        return sum(t.numel() * t.element_size() for t in ts if t is not None)

    # accumulation ------------------------------------------------------------------------------

    @torch.no_grad()
    def update(self, x: torch.Tensor, y: torch.Tensor, *, batch_id: int = 0, overwrite_inputs: bool = False) -> None:
        """Accumulate one batch. x [T, n_rows], y [T, L2*D2] (any float dtype, on self.device).

        batch_id seeds the permutation / gaussian baselines: give every batch of the dataset its own
        (e.g. the index of its first sequence) and keep it identical across shards and resumes.
        overwrite_inputs=True lets the update centre x and y in place (saves a copy of each).
        """
        if x.ndim != 2 or y.ndim != 2 or x.shape[0] != y.shape[0]:
            raise ValueError(f"expected x [T, N1] and y [T, N2] with the same T, got {tuple(x.shape)} and {tuple(y.shape)}")
        if x.shape[1] != self.n_rows or y.shape[1] != self.n_cols:
            raise ValueError(f"expected {self.n_rows} model-1 rows and {self.n_cols} model-2 neurons, "
                             f"got {x.shape[1]} and {y.shape[1]}")
        if x.shape[0] == 0:
            return
        x = self._prepare_x(x, overwrite_inputs)
        for name, stream in self.streams.items():
            if name == "data":
                y_s = _own_float32(y, overwrite_inputs)
            else:
                y_s = self._variant(name, y, batch_id)
            self._update_stream(stream, x, y_s)
        self.n += x.shape[0]

    def _binary(self, t: torch.Tensor) -> torch.Tensor:
        return (t > self.jaccard_threshold).to(torch.float32)

    def _prepare_x(self, x: torch.Tensor, overwrite: bool) -> torch.Tensor:
        """x centred by its stored shift (or binarised for jaccard), float32; x-side sums updated."""
        if self.similarity == "jaccard":
            x = self._binary(x)
            if self.x_shift is None:
                self.x_shift = torch.zeros(self.n_rows, device=x.device)
        else:
            x = _own_float32(x, overwrite)
            if self.x_shift is None:
                self.x_shift = _first_mean(x)
        if self.x_sum is None:
            self.x_sum = torch.zeros(self.n_rows, dtype=torch.float64, device=x.device)
            self.x_sumsq = torch.zeros_like(self.x_sum)
        s, ss = _centre_and_sum(x, None if self.similarity == "jaccard" else self.x_shift)
        self.x_sum += s
        self.x_sumsq += ss
        return x

    def _variant(self, name: str, y: torch.Tensor, batch_id: int) -> torch.Tensor:
        """A fresh float32 tensor [T, N2]: model 2's activations as the named stream sees them."""
        if name == "permutation":
            gen = _batch_generator(self.seed, batch_id, "permutation", "cpu")
            perm = torch.randperm(y.shape[0], generator=gen).to(y.device)
            return y.float()[perm]
        if name == "gaussian":
            gen = _batch_generator(self.seed, batch_id, "gaussian", y.device)
            g = torch.randn(y.shape, generator=gen, device=y.device, dtype=torch.float32)
            return torch.nn.functional.gelu(g)
        if name.startswith("rotation-"):
            return rotate_layers(y.float(), self._rotation(int(name.split("-")[1]), torch.float32))
        raise AssertionError(name)

    def _rotation(self, sample: int, dtype=torch.float64) -> torch.Tensor:
        """Rotation matrices [L2, D2, D2] of one sample, on self.device (cached, float64 and dtype)."""
        cache = self.__dict__.setdefault("_rotation_cache", {})
        if (sample, dtype) not in cache:
            if (sample, torch.float64) not in cache:
                cache[(sample, torch.float64)] = rotation_matrices(self.seed, sample, self.layers_2, self.d_2, self.device)
            cache[(sample, dtype)] = cache[(sample, torch.float64)].to(dtype)
        return cache[(sample, dtype)]

    def _update_stream(self, s: _Stream, x: torch.Tensor, y: torch.Tensor) -> None:
        """y is a float32 tensor this stream owns (centred in place)."""
        if self.similarity == "jaccard":
            y = self._binary(y)
            if s.shift is None:
                s.shift = torch.zeros(self.n_cols, device=y.device)
        else:
            if s.shift is None:
                s.shift = _first_mean(y)
        ys, yss = _centre_and_sum(y, None if self.similarity == "jaccard" else s.shift, squares=s.gram is None)
        s.sum += ys
        if s.gram is not None:
            y_l = y.view(y.shape[0], self.layers_2, self.d_2)
            g = torch.bmm(y_l.permute(1, 2, 0), y_l.permute(1, 0, 2))
            s.gram += g
            yss = g.diagonal(dim1=1, dim2=2).reshape(-1).double()     # sums of squares, for free
        s.sumsq += yss
        self._accumulate_cross(s, x, y)

    def _accumulate_cross(self, s: _Stream, x: torch.Tensor, y: torch.Tensor) -> None:
        """(hi + lo) += x^T y: one GEMM per output tile (fp32 products, or gemm_dtype on CUDA),
        each folded into the compensated pair at once. Tiles of a quarter of each dimension keep
        the scratch at 1/8 of the accumulator and re-read the inputs only 4x (rows-only chunks
        would re-read y once per chunk)."""
        low = self.gemm_dtype in (torch.bfloat16, torch.float16)
        if low:
            x, y = x.to(self.gemm_dtype), y.to(self.gemm_dtype)
        tr, tc = self.tile
        p = torch.empty(min(tr, self.n_rows), min(tc, self.n_cols), device=y.device)
        # Fast2Sum scratch: whole tiles up to 4M entries, row chunks of the tile beyond
        work = torch.empty(min(tr, max(1, (1 << 22) // p.shape[1])), p.shape[1], device=y.device)
        tf32 = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = self.allow_tf32
        try:
            self._tiles(s, x, y, p, work, low)
        finally:
            torch.backends.cuda.matmul.allow_tf32 = tf32

    def _tiles(self, s: _Stream, x, y, p, work, low: bool) -> None:
        tr, tc = self.tile
        for r0 in range(0, self.n_rows, tr):
            r1 = min(r0 + tr, self.n_rows)
            xt = x[:, r0:r1].t()
            for c0 in range(0, self.n_cols, tc):
                c1 = min(c0 + tc, self.n_cols)
                pt, wt = p[: r1 - r0, : c1 - c0], work[:, : c1 - c0]
                if low:
                    pt.copy_(torch.mm(xt, y[:, c0:c1], out_dtype=torch.float32))
                else:
                    torch.mm(xt, y[:, c0:c1], out=pt)
                _compensated_add_(s.hi[r0:r1, c0:c1], s.lo[r0:r1, c0:c1], pt, wt)

    # merging and persistence -------------------------------------------------------------------

    @torch.no_grad()
    def merge(self, other: "CorrelationStats") -> "CorrelationStats":
        """Add another shard's statistics (same configuration, any shift) into this one."""
        if other.config() != self.config():
            raise UserError(f"cannot merge statistics with different settings: {self.config()} vs {other.config()}")
        if other.n == 0:
            return self
        if self.n == 0:
            self.x_shift, self.x_sum, self.x_sumsq = (t.to(self.device).clone() for t in (other.x_shift, other.x_sum, other.x_sumsq))
            for name, s in self.streams.items():
                for k, t in other.streams[name].tensors().items():
                    setattr(s, k, None if t is None else t.to(self.device).clone())
            self.n = other.n
            return self
        n_o = other.n
        dx = other.x_shift.to(self.device).double() - self.x_shift.double()    # re-centre other onto our shift
        sx_o = other.x_sum.to(self.device)
        for name, s in self.streams.items():
            o = other.streams[name]
            dy = o.shift.to(self.device).double() - s.shift.double()
            sy_o = o.sum.to(self.device)
            for r0 in range(0, self.n_rows, self.tile[0]):
                r1 = min(r0 + self.tile[0], self.n_rows)
                total = o.hi[r0:r1].to(self.device).double() + o.lo[r0:r1].to(self.device).double()
                total.addr_(dx[r0:r1], sy_o).addr_(sx_o[r0:r1] + n_o * dx[r0:r1], dy)
                total += s.hi[r0:r1].double() + s.lo[r0:r1].double()
                _split_(s.hi[r0:r1], s.lo[r0:r1], total)
            if s.gram is not None:
                g = o.gram.to(self.device).clone()
                dy_l, sy_l = dy.view(self.layers_2, self.d_2), sy_o.view(self.layers_2, self.d_2)
                g += dy_l[:, :, None] * (sy_l + n_o * dy_l)[:, None, :] + sy_l[:, :, None] * dy_l[:, None, :]
                s.gram += g
            s.sumsq += o.sumsq.to(self.device) + 2 * dy * sy_o + n_o * dy * dy
            s.sum += sy_o + n_o * dy
        self.x_sumsq += other.x_sumsq.to(self.device) + 2 * dx * sx_o + n_o * dx * dx
        self.x_sum += sx_o + n_o * dx
        self.n += n_o
        return self

    def state_dict(self) -> dict:
        """Everything needed to resume or merge, on the CPU."""
        cpu = lambda t: None if t is None else t.detach().cpu()
        return {"version": STATS_VERSION, "config": self.config(), "n": self.n,
                "x_shift": cpu(self.x_shift), "x_sum": cpu(self.x_sum), "x_sumsq": cpu(self.x_sumsq),
                "streams": {name: {k: cpu(t) for k, t in s.tensors().items()} for name, s in self.streams.items()}}

    @classmethod
    def from_state_dict(cls, state: dict, device="cpu", **kwargs) -> "CorrelationStats":
        if state.get("version") != STATS_VERSION:
            raise UserError(f"statistics file has version {state.get('version')}, expected {STATS_VERSION}")
        stats = cls(**state["config"], device=device, **kwargs)
        stats.n = int(state["n"])
        dev = stats.device
        to = lambda t: None if t is None else t.to(dev)
        stats.x_shift, stats.x_sum, stats.x_sumsq = to(state["x_shift"]), to(state["x_sum"]), to(state["x_sumsq"])
        for name, s in stats.streams.items():
            for k, t in state["streams"][name].items():
                setattr(s, k, to(t))
        return stats

    def save(self, path, **extra) -> None:
        """Atomically write the statistics (plus any extra picklable entries, e.g. progress)."""
        from .paths import torch_save_atomic
        torch_save_atomic({**self.state_dict(), **extra}, path)

    @classmethod
    def load(cls, path, device="cpu", **kwargs) -> tuple["CorrelationStats", dict]:
        """-> (stats, the whole saved dict, whose extra entries hold e.g. progress)."""
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except (OSError, RuntimeError, EOFError) as e:
            raise UserError(f"cannot read correlation statistics {path}: {e}") from None
        return cls.from_state_dict(state, device, **kwargs), state

    # per-neuron moments ------------------------------------------------------------------------

    def _scale(self, shift, s, ss, n) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> (inverse norm [N] float64 (0 where dead), dead mask [N], raw norm^2 or centred SS).

        pearson: 1/sqrt(centred sum of squares); cosine: 1/sqrt(raw sum of squares); jaccard: 1/count.
        """
        shift = shift.double()
        if self.similarity == "jaccard":
            norm2 = s
            dead = ~(s > 0)
        elif self.similarity == "cosine":
            norm2 = ss + 2 * shift * s + n * shift * shift
            dead = ~(norm2 > 0)
        else:
            norm2 = ss - s * s / n
            raw = ss + 2 * shift * s + n * shift * shift
            dead = ~(norm2 > DEAD_RELATIVE_VARIANCE * raw)
        if n < 2:
            dead = torch.ones_like(dead)
        inv = torch.where(dead, torch.zeros_like(norm2), 1 / norm2.clamp_min(1e-300).sqrt())
        return inv, dead, norm2

    def row_scale(self):
        return self._scale(self.x_shift, self.x_sum, self.x_sumsq, self.n)[:2]

    def col_scale(self, stream: str, sample: int | None = None):
        """Inverse norms and dead mask of model 2's (possibly rotated) neurons [N2]."""
        s = self.streams[stream]
        if sample is None:
            return self._scale(s.shift, s.sum, s.sumsq, self.n)[:2]
        # rotated units: second moments diag(R G R^T) from the Gram matrices, in float64
        rot = self._rotation(sample)                                          # [L, D, D]
        b = s.shift.double().view(self.layers_2, self.d_2)
        sy = s.sum.view(self.layers_2, self.d_2)
        n = self.n
        cent = s.gram - sy[:, :, None] * sy[:, None, :] / n                   # centred Gram [L, D, D]
        mean_raw = b + sy / n
        raw = cent + n * mean_raw[:, :, None] * mean_raw[:, None, :]          # raw Gram
        diag = lambda m: (torch.bmm(rot, m) * rot).sum(-1).reshape(-1)       # diag(R m R^T)
        css, raw2 = diag(cent), diag(raw)
        if self.similarity == "cosine":
            norm2, dead = raw2, ~(raw2 > 0)
        else:
            norm2, dead = css, ~(css > DEAD_RELATIVE_VARIANCE * raw2)
        if n < 2:
            dead = torch.ones_like(dead)
        inv = torch.where(dead, torch.zeros_like(norm2), 1 / norm2.clamp_min(1e-300).sqrt())
        return inv, dead

    # similarities ------------------------------------------------------------------------------

    @torch.no_grad()
    def cross_block(self, stream: str, r0: int, r1: int) -> torch.Tensor:
        """float64 [r1-r0, N2]: pearson: centred cross sums C; cosine: raw cross sums; jaccard: intersections."""
        s = self.streams[stream]
        c = s.hi[r0:r1].double()
        c += s.lo[r0:r1]
        if self.similarity == "pearson":
            c.addr_(self.x_sum[r0:r1], s.sum, alpha=-1.0 / self.n)
        elif self.similarity == "cosine":
            a, b = self.x_shift[r0:r1].double(), s.shift.double()
            c.addr_(a, s.sum + self.n * b).addr_(self.x_sum[r0:r1], b)
        return c

    @torch.no_grad()
    def similarity_block(self, cross: torch.Tensor, r0: int, stream: str, sample: int | None,
                         row_inv: torch.Tensor, col_inv: torch.Tensor) -> torch.Tensor:
        """float32 [rows, N2] similarities from a cross block; dead rows / columns are exactly 0."""
        if sample is not None:
            rot = self._rotation(sample, torch.float32)                        # cov(x, R y) = C R^T
            cross = rotate_layers(cross.float(), rot)
        live_rows = row_inv[r0:r0 + cross.shape[0], None] > 0  # [rows, 1]
        live_cols = col_inv[None, :] > 0                         # [1, N2]
        if self.similarity == "jaccard":
            s = self.streams[stream]
            union = (self.x_sum[r0:r0 + cross.shape[0], None] + s.sum[None, :]).to(cross.dtype) - cross
            out = cross / union.clamp_min(1)
        else:
            out = cross * row_inv[r0:r0 + cross.shape[0], None].to(cross.dtype)
            out *= col_inv[None, :].to(cross.dtype)
        # a fill, not a product: a NaN / inf neuron's cross products are NaN, and 0 * NaN is NaN
        return out.float().masked_fill_(~(live_rows & live_cols), 0.0)

    @torch.no_grad()
    def correlation_matrix(self, baseline: str = "none", sample: int = 0) -> torch.Tensor:
        """The full [n_rows, N2] float32 similarity matrix of one baseline (one rotation sample),
        NaN at dead neurons. For tests and small models; summaries never need it whole."""
        stream, samp = self.baseline_sources(baseline)[sample if baseline == "rotation" else 0]
        row_inv, row_dead = self.row_scale()
        col_inv, col_dead = self.col_scale(stream, samp)
        c = self.similarity_block(self.cross_block(stream, 0, self.n_rows), 0, stream, samp, row_inv, col_inv)
        c[row_dead] = float("nan")
        c[:, col_dead] = float("nan")
        return c

    def finalize(self, full_matrix: bool = False, block_rows: int | None = None) -> dict:
        """Shortcut for a single tile: {baseline: {'summary', 'summary_T', 'correlation'?}}."""
        fin = CorrelationFinalizer(self.row_offset + self.n_rows, self.layers_2, self.d_2, self.baselines,
                                   similarity=self.similarity, n_rotations=self.n_rotations, seed=self.seed,
                                   full_matrix=full_matrix, device=self.device)
        fin.add(self, block_rows=block_rows)
        return fin.results()


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
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(obj, dict) and obj.get("format") == "int8-symmetric-per-row":
        q = obj["q"]
        out = q.float() * obj["scale"][:, :, None, None]
        return out.masked_fill_(q == -128, float("nan"))
    return obj.float()


# The command-line driver shared by correlations_fast.py and correlations.py ----------------------

SUMMARY_FILES = ("correlation_summary.pt", "correlation_summary_T.pt")


def read_correlation_summary(folder, transposed: bool = False, mmap: bool = False, hint: str = "") -> dict:
    """The one reader of a <sim>.<baseline>/ folder's correlation_summary.pt (rows = model-1 neurons) or,
    transposed, correlation_summary_T.pt (rows = model-2 neurons); folder = paths.correlation_path(...).
    hint: the command that writes it, for the message when it is missing."""
    f = Path(folder) / SUMMARY_FILES[int(transposed)]
    if not f.is_file():
        raise UserError(f"missing correlation summary {f}" + (f" (run {hint})" if hint else ""))
    try:
        return torch.load(f, mmap=mmap, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError) as e:
        raise UserError(f"cannot read correlation summary {f}: {e}") from None
FULL_FILE = "correlation.pt"
RUN_FILE = "run.json"  # the settings that made a <sim>.<baseline>/ folder (written last: it marks it done)
GEMM_DTYPES = {"float32": torch.float32, "tf32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# correlations_fast.py: the script the paper used. correlations.py: the fuller older one, same engine,
# which also wrote the full matrix by default.
DROP_NEWLINES = {"single": "single", "all": "all", "none": "keep"}  # --drop_newlines -> position_mask newlines
FAST_DEFAULTS = {}
FULL_DEFAULTS = {}  # the original correlations.py wrote correlation.pt only with --save_full_correlation_matrix


def build_parser(defaults: dict | None = None, description: str | None = None):
    import argparse

    p = argparse.ArgumentParser(description=description or "Neuron-to-neuron correlations between two models "
                                "(one pass over the data for every baseline).",
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model_1_name", required=True, help="model whose neurons are the rows")
    p.add_argument("--model_2_name", required=True, nargs="+",
                   help="one or more models to correlate with model 1 (all in the same pass over the data)")
    p.add_argument("--token_dataset", required=True, help="token dataset name under $DATASET_DIR/<family>/")
    p.add_argument("--baseline", nargs="+", choices=BASELINES, default=["none"],
                   help="one or more of none, rotation, permutation, gaussian (all in one pass)")
    p.add_argument("--similarity_type", choices=SIMILARITIES, default="pearson")
    p.add_argument("--jaccard_threshold", type=float, default=0.0, help="jaccard: a neuron is on when > this")
    p.add_argument("--batch_size", type=int, default=32, help="sequences per batch")
    p.add_argument("--model_1_device", default="auto")
    p.add_argument("--model_2_device", default="auto")
    p.add_argument("--correlation_device", default="auto", help="where the statistics live")
    p.add_argument("--save_full_correlation_matrix", action=argparse.BooleanOptionalAction, default=False,
                   help=f"also write {FULL_FILE} [L1, D1, L2, D2]")
    p.add_argument("--save_precision", type=int, choices=[8, 16, 32], default=16,
                   help="full matrix: 16 = float16, 32 = float32, 8 = int8 per model-1 neuron (see quantize_rows_int8)")
    p.add_argument("--activation_location", default="mlp.hook_post", choices=["mlp.hook_post", "mlp.hook_pre"])
    p.add_argument("--drop_newlines", choices=["single", "all", "none"], default="single",
                   help="newline tokens left out besides BOS/EOS/padding: single = the one-token '\\n' (the "
                        "original correlations_fast.py), all = every whitespace-only token with a newline "
                        "('\\n\\n', ...), none = no newline token (the older correlations.py)")
    p.add_argument("--n_seq", type=int, default=-1, help="use only the first N sequences (-1 = all)")
    p.add_argument("--n_rotations", type=int, default=1,
                   help="rotation samples; with K > 1 max_corr / min_corr average the K per-sample maxima")
    p.add_argument("--seed", type=int, default=0, help="seeds rotations, permutations and gaussian baselines")
    p.add_argument("--num_shards", type=int, default=1, help="split the batches into N shards (e.g. a Slurm array)")
    p.add_argument("--shard_index", type=int, default=0, help="which shard this process runs (saves statistics only)")
    p.add_argument("--merge", action="store_true", help="add the shards' statistics and write the artifacts")
    p.add_argument("--max_memory_gb", type=float, default=None,
                   help="cap on the statistics' memory: model-1 neurons are split into tiles that each take "
                        "a pass over the data (the forward passes are repeated per tile)")
    p.add_argument("--checkpoint_every", type=int, default=0,
                   help="save the statistics every k batches; a rerun resumes from the last save (0 = off)")
    p.add_argument("--gemm_dtype", choices=list(GEMM_DTYPES), default="float32",
                   help="precision of the cross-product GEMM (tf32 / bfloat16 / float16: CUDA)")
    p.add_argument("--tf32", action="store_true", help="same as --gemm_dtype tf32")
    p.add_argument("--overwrite", action="store_true",
                   help="replace finished artifacts that were made with other settings (default: stop and say which)")
    p.set_defaults(**(defaults or {}))
    return p


def _stats_name(args, tile: int, n_tiles: int, shard: int | None, n_shards: int) -> str:
    tag = "+".join(sorted(args.baseline)) + f".seed{args.seed}.k{args.n_rotations}.bs{args.batch_size}.n{args.n_seq}"
    part = "run" if shard is None else f"shard-{shard:05d}-of-{n_shards:05d}"
    return f"{tag}.{part}.tile-{tile:03d}-of-{n_tiles:03d}.pt"


def _plan_tiles(n1: int, d1: int, bytes_per_row: int, max_memory_gb: float | None) -> list[tuple[int, int]]:
    """Model-1 row ranges whose statistics fit the budget; whole layers when a layer fits."""
    if not max_memory_gb:
        return [(0, n1)]
    rows = int(max_memory_gb * 2 ** 30 // bytes_per_row)
    if rows < 1:
        raise UserError(f"--max_memory_gb {max_memory_gb} is too small: one model-1 neuron's statistics "
                        f"need {bytes_per_row / 2 ** 20:.1f} MiB")
    if rows >= n1:
        return [(0, n1)]
    if rows >= d1:
        rows -= rows % d1
    return [(r, min(r + rows, n1)) for r in range(0, n1, rows)]


class _Job:
    """Everything one invocation needs: models, data, batches of this shard, tiles, output folders."""

    def __init__(self, args):
        from .device import resolve_device

        self.args = args
        if args.tf32:
            args.gemm_dtype = "tf32"
        if args.batch_size < 1 or args.n_rotations < 1 or args.num_shards < 1:
            raise UserError("--batch_size, --n_rotations and --num_shards must be >= 1")
        check_n_seq(args.n_seq)
        if not 0 <= args.shard_index < args.num_shards:
            raise UserError(f"--shard_index {args.shard_index} must be in [0, {args.num_shards})")
        self.sim = similarity_name(args.similarity_type, args.jaccard_threshold)
        self.dev1 = resolve_device(args.model_1_device)
        self.dev2 = resolve_device(args.model_2_device)
        self.devc = resolve_device(args.correlation_device)
        self.gemm_dtype = GEMM_DTYPES[args.gemm_dtype]
        if self.devc.type != "cuda" and args.gemm_dtype != "float32":
            raise UserError(f"--gemm_dtype {args.gemm_dtype} needs a CUDA --correlation_device")
        self.baselines = list(dict.fromkeys(args.baseline))

    def out_dir(self, m2: str, baseline: str) -> Path:
        from . import paths
        return paths.correlation_path(self.args.model_1_name, m2, self.args.token_dataset, self.sim, baseline)

    def stats_dir(self, m2: str) -> Path:
        return self.out_dir(m2, "none").parent / f"{self.sim}.stats"

    def settings(self, m2: str, baseline: str) -> dict:
        """The run record: everything that changes a folder's numbers (batching and devices do not,
        beyond float rounding), the inputs' fingerprints and the code version (runs.py)."""
        from .models import model_family

        a = self.args
        out = {"model_1": a.model_1_name, "model_2": m2, "token_dataset": a.token_dataset, "n_seq": a.n_seq,
               "activation_location": a.activation_location, "drop_newlines": a.drop_newlines,
               "similarity": self.sim, "baseline": baseline,
               "model_1_fingerprint": model_fingerprint(a.model_1_name),
               "model_2_fingerprint": model_fingerprint(m2),
               "dataset_fingerprint": dataset_fingerprint(a.token_dataset, model_family(a.model_1_name)),
               "code_version": runs.code_version()}
        if baseline != "none":
            out["seed"] = a.seed
        if baseline == "rotation":
            out["n_rotations"] = a.n_rotations
        return out

    def done(self, m2: str, baseline: str) -> bool:
        """True when the folder holds this run's finished artifacts; a folder finished with other (or
        unrecorded) settings is never served as this run's (runs.finished)."""
        files = SUMMARY_FILES + ((FULL_FILE,) if self.args.save_full_correlation_matrix else ())
        return runs.finished(self.out_dir(m2, baseline), RUN_FILE, self.settings(m2, baseline),
                             self.args.overwrite, files)

    def pending(self) -> dict[str, list[str]]:
        """model 2 -> baselines still to compute (finished artifacts are skipped)."""
        out = {}
        for m2 in dict.fromkeys(self.args.model_2_name):
            todo = [b for b in self.baselines if not self.done(m2, b)]
            if todo:
                out[m2] = todo
        return out


def _stats_for(job, baselines, tile, n2_layers, d2, args):
    r0, r1 = tile
    return CorrelationStats(n_rows=r1 - r0, layers_2=n2_layers, d_2=d2, row_offset=r0,
                            similarity=args.similarity_type, jaccard_threshold=args.jaccard_threshold,
                            baselines=baselines, n_rotations=args.n_rotations, seed=args.seed,
                            device=job.devc, gemm_dtype=job.gemm_dtype, allow_tf32=args.gemm_dtype == "tf32")


def _bytes_per_row(pending: dict, layers: dict, d_2: dict, args) -> int:
    """Statistics bytes per model-1 neuron over every model 2 and stream (hi float32 + lo bfloat16)."""
    total = 0
    for m2, baselines in pending.items():
        probe = CorrelationStats(n_rows=1, layers_2=1, d_2=1, similarity=args.similarity_type,
                                 baselines=baselines, n_rotations=args.n_rotations)
        total += len(probe.streams) * layers[m2] * d_2[m2] * 6
    return int(total * 1.15) + 1      # + row-chunk scratch


def run_correlations(args) -> list[Path]:
    """Run (or shard, or merge) the correlation job described by parsed `args`; returns written folders."""
    import time

    from . import paths
    from .capture import check_same_tokenizer, mlp_activations, token_mask
    from .models import load_model
    from .token_datasets import load_token_dataset, token_tensor

    job = _Job(args)
    pending = job.pending()
    if not pending:
        print(f"correlations: all artifacts exist for {args.model_1_name} vs {', '.join(args.model_2_name)} "
              f"({job.sim}: {', '.join(job.baselines)}); nothing to do")
        return []
    sharded = args.num_shards > 1 and not args.merge
    model_1 = load_model(args.model_1_name, device=str(job.dev1))
    models_2 = {}
    for m2 in pending:
        models_2[m2] = model_1 if m2 == args.model_1_name and job.dev1 == job.dev2 else load_model(m2, device=str(job.dev2))
        check_same_tokenizer(model_1, models_2[m2])
    L1, D1 = model_1.cfg.n_layers, model_1.cfg.d_mlp
    layers2 = {m2: m.cfg.n_layers for m2, m in models_2.items()}
    d2 = {m2: m.cfg.d_mlp for m2, m in models_2.items()}
    n1 = L1 * D1
    tiles = _plan_tiles(n1, D1, _bytes_per_row(pending, layers2, d2, args), args.max_memory_gb)
    nt = len(tiles)

    def stats_path(m2, t, shard, n_shards=args.num_shards):
        return job.stats_dir(m2) / _stats_name(args, t, nt, shard, n_shards)

    written = []
    if args.merge:
        stats_source = "merge"
    else:
        ds = load_token_dataset(args.token_dataset, model_1.family, model_1.tokenizer)
        n_seq = len(ds) if args.n_seq < 0 else min(args.n_seq, len(ds))
        n_batches = math.ceil(n_seq / args.batch_size)
        from .token_datasets import shard_rows
        b_start, b_stop = shard_rows(n_batches, args.num_shards, args.shard_index) if sharded else (0, n_batches)
        progress_key = {"dataset": args.token_dataset, "batches": [b_start, b_stop], "n_seq": n_seq,
                        "batch_size": args.batch_size, "drop_newlines": args.drop_newlines,
                        "activation_location": args.activation_location}
        shard = args.shard_index if sharded else None
        save_tiles = sharded or nt > 1 or args.checkpoint_every > 0
        fins = {m2: None for m2 in pending}
        for t, (r0, r1) in enumerate(tiles):
            l0, l1 = r0 // D1, (r1 - 1) // D1 + 1
            stats, start = {}, {}
            for m2, baselines in pending.items():
                path = stats_path(m2, t, shard)
                st, begin = None, b_start
                if path.exists():
                    st, saved = CorrelationStats.load(path, device=job.devc, gemm_dtype=job.gemm_dtype,
                                                      allow_tf32=args.gemm_dtype == "tf32")
                    prog = saved.get("progress", {})
                    if {k: prog.get(k) for k in progress_key} != progress_key or st.baselines != tuple(baselines):
                        print(f"  ignoring statistics from a different run: {path}")
                        st = None
                    else:
                        begin = prog["next_batch"]
                stats[m2] = st or _stats_for(job, baselines, (r0, r1), layers2[m2], d2[m2], args)
                start[m2] = begin
            first = min(start.values())
            t0 = time.time()
            for b in _progress(range(first, b_stop), f"tile {t + 1}/{nt}" if nt > 1 else "batches"):
                tokens = token_tensor(ds, b * args.batch_size, min((b + 1) * args.batch_size, n_seq))
                mask = token_mask(tokens, model_1.tokenizer, DROP_NEWLINES[args.drop_newlines]).flatten()
                acts = mlp_activations(model_1, tokens, args.activation_location, layers=list(range(l0, l1)))
                x = acts.reshape(-1, (l1 - l0) * D1)[mask.to(acts.device)][:, r0 - l0 * D1:r1 - l0 * D1]
                x = x.to(job.devc)
                todo = [m2 for m2 in pending if start[m2] <= b]
                for i, m2 in enumerate(todo):
                    y = mlp_activations(models_2[m2], tokens, args.activation_location)
                    y = y.reshape(-1, layers2[m2] * d2[m2])[mask.to(y.device)].to(job.devc)
                    last = i == len(todo) - 1
                    stats[m2].update(x if last else x.clone(), y, batch_id=b, overwrite_inputs=True)
                if args.checkpoint_every and (b + 1 - b_start) % args.checkpoint_every == 0 and b + 1 < b_stop:
                    for m2 in todo:
                        stats[m2].save(stats_path(m2, t, shard), progress={**progress_key, "next_batch": b + 1})
            for m2 in pending:
                if save_tiles and start[m2] < b_stop:
                    stats[m2].save(stats_path(m2, t, shard), progress={**progress_key, "next_batch": b_stop})
                if not sharded:
                    fins[m2] = fins[m2] or _finalizer(job, args, pending[m2], n1, L1, layers2[m2], d2[m2])
                    fins[m2].add(stats[m2])
            del stats
            if b_stop > first:
                print(f"  tile {t + 1}/{nt}: {b_stop - first} batches in {time.time() - t0:.1f} s")
        if sharded:
            for m2 in pending:
                written.append(job.stats_dir(m2))
                print(f"shard {args.shard_index}/{args.num_shards} statistics: {job.stats_dir(m2)}")
            return written
        stats_source = fins
    for m2, baselines in pending.items():
        if stats_source == "merge":
            fin = _finalizer(job, args, baselines, n1, L1, layers2[m2], d2[m2])
            for t in range(nt):
                fin.add(_merge_shards(job, args, m2, t, nt, stats_path))
        else:
            fin = stats_source[m2]
        for b, res in fin.results().items():
            out = job.out_dir(m2, b)
            if res["correlation"] is not None:
                paths.torch_save_atomic(res["correlation"], out / FULL_FILE)
            paths.torch_save_atomic(res["summary_T"], out / SUMMARY_FILES[1])
            paths.torch_save_atomic(res["summary"], out / SUMMARY_FILES[0])
            runs.write_record(out / RUN_FILE, job.settings(m2, b))
            written.append(out)
            print(f"wrote {out}")
        if stats_source != "merge":
            for t in range(nt):
                stats_path(m2, t, None).unlink(missing_ok=True)
    return written


def _finalizer(job, args, baselines, n1, layers_1, layers_2, d_2):
    return CorrelationFinalizer(n1, layers_2, d_2, baselines, similarity=args.similarity_type,
                                n_rotations=args.n_rotations, seed=args.seed,
                                full_matrix=args.save_full_correlation_matrix, save_precision=args.save_precision,
                                layers_1=layers_1, device=job.devc)


def _merge_shards(job, args, m2, tile, n_tiles, stats_path) -> CorrelationStats:
    """Add every shard's statistics for one tile (any order); all must be present and complete."""
    n = args.num_shards
    if n == 1:   # not given: read the shard count off the files
        found = sorted(job.stats_dir(m2).glob(_stats_name(args, tile, n_tiles, 0, 1).replace(
            "shard-00000-of-00001", "shard-*-of-*")))
        if not found:
            raise UserError(f"--merge: no shard statistics in {job.stats_dir(m2)} for these settings "
                            f"(run with --num_shards N --shard_index i first)")
        n = int(found[0].name.split(".shard-")[1].split("-of-")[1].split(".")[0])
    merged = None
    missing = [i for i in range(n) if not stats_path(m2, tile, i, n).exists()]
    if missing:
        raise UserError(f"--merge: statistics of shard(s) {missing} of {n} are missing in {job.stats_dir(m2)} "
                        f"(the merge needs the shard runs' --baseline, --seed, --n_rotations, --batch_size, "
                        f"--n_seq and --max_memory_gb)")
    for i in range(n):
        st, saved = CorrelationStats.load(stats_path(m2, tile, i, n), device=job.devc)
        prog = saved.get("progress", {})
        if prog.get("next_batch") != prog.get("batches", [None, None])[1]:
            raise UserError(f"--merge: shard {i} has not finished ({stats_path(m2, tile, i, n)})")
        for key in ("drop_newlines", "activation_location"):
            if prog.get(key, getattr(args, key)) != getattr(args, key):
                raise UserError(f"--merge: shard {i} was run with --{key} {prog[key]}, not {getattr(args, key)} "
                                f"({stats_path(m2, tile, i, n)})")
        merged = st if merged is None else merged.merge(st)
        del st
    return merged


def _progress(it, desc):
    try:
        from tqdm.auto import tqdm
        return tqdm(it, desc=desc, leave=False)
    except ImportError:
        return it


def main(argv=None, defaults: dict | None = None, description: str | None = None) -> list[Path]:
    """Entry point of correlations_fast.py / correlations.py (UserError -> one message, exit 2)."""
    from .errors import cli_entry

    return cli_entry(lambda: run_correlations(build_parser(defaults, description).parse_args(argv)))()
