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
- The cross product S_xy = sum_t x'_t y'_t^T [N1, N2] costs one GEMM per batch. By precision:
  fp32: true float32 products kept as a compensated pair, `hi` float32 plus `lo` bfloat16 holding
    the rounding error of every addition (Fast2Sum, Kahan-style): ~32 significant bits at 1.5x the
    memory of a float32 accumulator (the GEMM runs as 4 x 4 output tiles for large N, so its
    scratch stays at 1/8 of the accumulator);
  tf32 / bf16 / fp16: one GEMM written straight into the float32 accumulator (hi += x^T y, no
    scratch, no `lo`): the products' own rounding (2^-11 / 2^-9 relative) is 100x that of plain
    float32 accumulation over 1e4 batches, so compensating it buys nothing.
  Per-neuron sums, sums of squares and Gram matrices are small and kept in float64.
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

The summaries these statistics finalise into: correlation_summary.py. The job driver (CLI, shards,
tiles, checkpoints, run records): correlations.py.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

from .device import GEMM_INPUT_DTYPES, matmul_precision
from .errors import UserError

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
                    chunk: int | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """t [T, N] float32 -= shift (in place, if given); returns its column sums and (if `squares`)
    sums of squares, float64 [N].

    One sweep in chunks of ~`chunk` elements: centre, then both sums as BLAS matrix-vector products
    (float32 reductions over dim 0 are slow on CPU, and a float64 cast would allocate twice t);
    partial sums over a chunk are float32, their running total float64. On a CPU a chunk is 1M
    elements (still in cache for its second and third use); on a GPU 64M (a GPT-2 batch in ~10
    chunks: a few large kernels instead of thousands of launches).
    """
    chunk = chunk or ((1 << 26) if t.device.type == "cuda" else (1 << 20))
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
    lo: torch.Tensor | None = None         # [N1, N2] bfloat16 (fp32 precision only; else None)
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
                 device="cpu", precision: str | None = None, gemm_dtype: torch.dtype | None = None,
                 allow_tf32: bool = False, tile: tuple[int, int] | None = None):
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
        if precision is None:  # the older keywords: gemm_dtype (bfloat16 / float16) and allow_tf32
            precision = {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(gemm_dtype, "tf32" if allow_tf32 else "fp32")
        if precision not in GEMM_INPUT_DTYPES:
            raise UserError(f"unknown precision {precision!r}; choose from {tuple(GEMM_INPUT_DTYPES)}")
        self.precision = precision
        self.gemm_dtype = GEMM_INPUT_DTYPES[precision]
        self.compensated = precision == "fp32"
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
        s.lo = torch.zeros(self.n_rows, self.n_cols, dtype=torch.bfloat16, device=dev) if self.compensated else None
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
        with matmul_precision(self.precision):  # tf32: the Gram and the rotations too; fp32: none of them
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
            # one layer at a time: a batched [L, D, D] float32 product plus its float64 cast for the
            # in-place add held 4.8 GB at GPT2-medium shape; per layer it is 0.2 GB
            y_l = y.view(y.shape[0], self.layers_2, self.d_2)
            yss = torch.empty(self.layers_2, self.d_2, dtype=torch.float64, device=y.device)
            for l in range(self.layers_2):
                g = y_l[:, l].T @ y_l[:, l]                             # [D, D] float32
                s.gram[l] += g
                yss[l] = g.diagonal()                                   # sums of squares, for free
            yss = yss.reshape(-1)
        s.sumsq += yss
        self._accumulate_cross(s, x, y)

    def _accumulate_cross(self, s: _Stream, x: torch.Tensor, y: torch.Tensor) -> None:
        """hi (+ lo) += x^T y. fp32: one GEMM per output tile, each folded into the compensated pair
        at once (tiles of a quarter of each dimension keep the scratch at 1/8 of the accumulator and
        re-read the inputs only 4x). Other precisions: one GEMM, accumulating in place."""
        if not self.compensated:
            self._accumulate_direct(s.hi, x, y)
            return
        tr, tc = self.tile
        p = torch.empty(min(tr, self.n_rows), min(tc, self.n_cols), device=y.device)
        # Fast2Sum scratch: whole tiles up to 4M entries, row chunks of the tile beyond
        work = torch.empty(min(tr, max(1, (1 << 22) // p.shape[1])), p.shape[1], device=y.device)
        self._tiles(s, x, y, p, work)

    def _accumulate_direct(self, hi: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> None:
        """hi += x^T y in one GEMM: tf32 products on CUDA (update's precision context); bf16 / fp16
        inputs with a float32 output on CUDA; on a CPU bf16 / fp16 inputs are rounded and multiplied
        in float32 (the same products: a product of two bf16 values is exact in float32)."""
        if self.gemm_dtype == torch.float32:
            hi.addmm_(x.t(), y)
            return
        xl, yl = x.to(self.gemm_dtype), y.to(self.gemm_dtype)
        if hi.device.type != "cuda":
            hi.addmm_(xl.t().float(), yl.float())
            return
        try:  # tensor cores with a float32 output, accumulated by the GEMM itself (beta = 1)
            torch.addmm(hi, xl.t(), yl, out_dtype=torch.float32, out=hi)
        except (RuntimeError, TypeError):  # an older torch: one float32 product, then one add
            hi.add_(torch.mm(xl.t(), yl, out_dtype=torch.float32))

    def _tiles(self, s: _Stream, x, y, p, work) -> None:
        tr, tc = self.tile
        for r0 in range(0, self.n_rows, tr):
            r1 = min(r0 + tr, self.n_rows)
            xt = x[:, r0:r1].t()
            for c0 in range(0, self.n_cols, tc):
                c1 = min(c0 + tc, self.n_cols)
                pt, wt = p[: r1 - r0, : c1 - c0], work[:, : c1 - c0]
                torch.mm(xt, y[:, c0:c1], out=pt)
                _compensated_add_(s.hi[r0:r1, c0:c1], s.lo[r0:r1, c0:c1], pt, wt)

    # merging and persistence -------------------------------------------------------------------

    @torch.no_grad()
    def merge(self, other: "CorrelationStats", chunk_bytes: int = 256 << 20) -> "CorrelationStats":
        """Add another shard's statistics (same configuration, any shift) into this one.

        Streaming: `other` may live on the CPU (e.g. a memory-mapped file: CorrelationStats.load with
        mmap=True); its accumulator reaches this device in row chunks of ~chunk_bytes of float64
        work, so a merge holds this accumulator plus one chunk, never a second whole shard."""
        if other.config() != self.config():
            raise UserError(f"cannot merge statistics with different settings: {self.config()} vs {other.config()}")
        if other.n == 0:
            return self
        if self.n == 0:   # copy other's state (row chunks: an accumulator fills this device only once)
            self.x_shift, self.x_sum, self.x_sumsq = (t.to(self.device).clone() for t in (other.x_shift, other.x_sum, other.x_sumsq))
            for name, s in self.streams.items():
                o = other.streams[name]
                for k in ("shift", "sum", "sumsq", "gram"):
                    t = getattr(o, k)
                    setattr(s, k, None if t is None else t.to(self.device).clone())
                rows = max(1, chunk_bytes // (8 * self.n_cols))
                for r0 in range(0, self.n_rows, rows):
                    s.hi[r0:r0 + rows].copy_(o.hi[r0:r0 + rows])
                    if s.lo is not None and o.lo is not None:   # (our fresh lo is zero already)
                        s.lo[r0:r0 + rows].copy_(o.lo[r0:r0 + rows])
            self.n = other.n
            return self
        n_o = other.n
        dx = other.x_shift.to(self.device).double() - self.x_shift.double()    # re-centre other onto our shift
        sx_o = other.x_sum.to(self.device)
        for name, s in self.streams.items():
            o = other.streams[name]
            dy = o.shift.to(self.device).double() - s.shift.double()
            sy_o = o.sum.to(self.device)
            rows = max(1, chunk_bytes // (8 * self.n_cols))
            for r0 in range(0, self.n_rows, rows):
                r1 = min(r0 + rows, self.n_rows)
                total = o.hi[r0:r1].to(self.device).double()                     # [rows, N2] float64
                if o.lo is not None:
                    total += o.lo[r0:r1].to(self.device)
                total.addr_(dx[r0:r1], sy_o).addr_(sx_o[r0:r1] + n_o * dx[r0:r1], dy)
                total += s.hi[r0:r1]
                if s.lo is not None:
                    total += s.lo[r0:r1]
                    _split_(s.hi[r0:r1], s.lo[r0:r1], total)
                else:
                    s.hi[r0:r1].copy_(total)
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
            if stats.compensated and s.lo is None:          # resumed in fp32 from a tf32 / bf16 run
                s.lo = torch.zeros(s.hi.shape, dtype=torch.bfloat16, device=dev)
            elif not stats.compensated and s.lo is not None:  # the other way: fold the error term in
                s.hi, s.lo = s.hi + s.lo.float(), None          # (a new tensor: hi may be a mapped file)
        return stats

    def save(self, path, **extra) -> None:
        """Atomically write the statistics (plus any extra picklable entries, e.g. progress)."""
        from .paths import torch_save_atomic
        torch_save_atomic({**self.state_dict(), **extra}, path)

    @classmethod
    def load(cls, path, device="cpu", mmap: bool = False, **kwargs) -> tuple["CorrelationStats", dict]:
        """-> (stats, the whole saved dict, whose extra entries hold e.g. progress). mmap=True (with
        device='cpu') leaves the accumulators in the file until read: a streaming merge's input."""
        from .paths import torch_load

        state = torch_load(path, mmap=mmap)  # a damaged or crafted file: one UserError naming it
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
        # rotated units: second moments diag(R G R^T) from the Gram matrices, in float64, one layer
        # at a time (all layers at once held four [L, D, D] float64 temporaries: 13 GB at GPT2-medium)
        rot = self._rotation(sample)                                          # [L, D, D]
        b = s.shift.double().view(self.layers_2, self.d_2)
        sy = s.sum.view(self.layers_2, self.d_2)
        n = self.n
        css = torch.empty(self.layers_2, self.d_2, dtype=torch.float64, device=rot.device)
        raw2 = torch.empty_like(css)
        for l in range(self.layers_2):
            cent = s.gram[l] - torch.outer(sy[l], sy[l]) / n                  # centred Gram [D, D]
            css[l] = ((rot[l] @ cent) * rot[l]).sum(-1)                       # diag(R cent R^T)
            mean_raw = b[l] + sy[l] / n
            cent.addr_(mean_raw, mean_raw, alpha=n)                           # raw Gram, in place
            raw2[l] = ((rot[l] @ cent) * rot[l]).sum(-1)
            del cent
        css, raw2 = css.reshape(-1), raw2.reshape(-1)
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
        if s.lo is not None:
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
