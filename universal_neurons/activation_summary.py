"""Activation summaries (summary.py): per-neuron histograms, max-activating examples, per-token stats.

For one model and token dataset, written to `paths.activation_summary_path(model, dataset)/`
(or `<output_dir>/<model>/activations/<dataset>/`), every file a `torch.save`d tensor:

    neuron_bin_edges.pt             fp32  [n_bins]              linspace(bin_min, bin_max, n_bins)
    neuron_bin_counts.pt            int32 [L, D, n_bins + 1]    histogram of PRE-activations
                                    (blocks.{l}.mlp.hook_pre): bin 0 holds x <= e[0], bin i holds
                                    e[i-1] < x <= e[i], bin n_bins holds x > e[-1]; this is exactly
                                    torch.bucketize(x, edges, right=False). NaN lands in bin n_bins.
    neuron_max_activating_index.pt  int64 [L, D, k]  flat index seq * ctx + pos of the top-k
    neuron_max_activating_value.pt  fp16  [L, D, k]  POST-activations (blocks.{l}.mlp.hook_post),
                                    descending. Slots left empty (fewer than k counted tokens)
                                    hold index -1 and value NaN.
    neuron_vocab_max.pt / _mean.pt  fp16  [L, D, k_vocab]  the k_vocab largest per-token max / mean
    neuron_vocab_max_ix.pt / _mean_ix.pt  int32 [L, D, k_vocab]  POST-activations and their token
                                    ids. Only tokens that occur count (a neuron's negative maximum
                                    is kept); empty slots (fewer than k_vocab distinct tokens) hold
                                    id -1 and value NaN.
                                    With --top_vocab_k_truncate -1: neuron_vocab_max.pt /
                                    neuron_vocab_mean.pt are the full fp16 [L, D, V] tensors (NaN
                                    for tokens never seen) and there are no _ix files; with 0 there
                                    are no vocab files at all.
    vocab_counts.pt                 fp32  [V]  occurrences of each token among the counted positions
    summary_config.json             the settings and token count
    run.json                        the run record (runs.py): settings, model and dataset
                                    fingerprints, code version; a rerun with the same record skips
                                    the folder, with another one stops unless --overwrite

Counted positions: every position, BOS/EOS/padding included, as the original summary.py counted
them. With --exclude_special_tokens (exclude_special=True) the tokenizer's BOS, EOS and padding ids
are left out (dataset rows start with BOS, so position 0 is then never counted; with GPT-2's
tokenizer BOS = EOS, so the end-of-text separators between documents are left out too).
summary_config.json records which was used.

Memory: the histogram and top-k buffers are small ([L, D, n_bins] and [L, D, k]); the per-token
max and sum are [layer, neuron, vocab] float32 each (2 x 7.4 GB for GPT2-small). Those are held
only for a group of layers at a time, sized to --max_memory_gb (plus ~0.3 GB of temporaries and the
batch's activations); the forward pass is re-run for each group and stops after the group's last
layer (benchmarks/summary_bench.md). Everything is accumulated on the model's
device with bucketize + bincount, topk merges, scatter_reduce(amax) and index_add_.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import paths, runs
from .capture import keep_rows, position_mask, run_until_last_hook
from .device import to_device
from .errors import UserError, check_n_seq
from .flags import StageConfig
from .token_datasets import run_inputs

BIN_EDGES = "neuron_bin_edges"
BIN_COUNTS = "neuron_bin_counts"
TOP_INDEX = "neuron_max_activating_index"
TOP_VALUE = "neuron_max_activating_value"
VOCAB_MAX, VOCAB_MAX_IX = "neuron_vocab_max", "neuron_vocab_max_ix"
VOCAB_MEAN, VOCAB_MEAN_IX = "neuron_vocab_mean", "neuron_vocab_mean_ix"
VOCAB_COUNTS = "vocab_counts"
CONFIG_FILE = "summary_config.json"
RUN_FILE = "run.json"  # runs.py: what made the folder
GB = 1024 ** 3
COUNTED = {False: "every position (BOS/EOS/padding included, as the original)",
           True: "all except the tokenizer's BOS, EOS and padding ids (--exclude_special_tokens)"}
FINISH_BYTES = 2 ** 27  # size of the per-chunk temporaries when finishing the per-token statistics


def bin_edges(n_bins: int = 256, bin_min: float = -10.0, bin_max: float = 15.0) -> torch.Tensor:
    """[n_bins] float32 histogram edges; n_bins + 1 bins (see the module docstring)."""
    if n_bins < 2 or not bin_min < bin_max:
        raise UserError(f"need --n_bins >= 2 and --bin_min < --bin_max (got {n_bins}, {bin_min}, {bin_max})")
    return torch.linspace(bin_min, bin_max, n_bins)


def vocab_bytes_per_layer(d_mlp: int, d_vocab: int) -> int:
    """Bytes of one layer's per-token accumulators: max and sum, float32 [D, V] each."""
    return 2 * 4 * d_mlp * d_vocab


def plan_layer_groups(n_layers: int, d_mlp: int, d_vocab: int, vocab_k: int, max_memory_gb: float) -> list[list[int]]:
    """Contiguous, equally sized layer groups whose vocab accumulators fit `max_memory_gb`.

    One group of all layers when vocab statistics are skipped (vocab_k == 0). With vocab_k == -1
    the full fp16 [L, D, V] results (2 tensors) must fit the budget too; the accumulators get
    what is left.
    """
    if vocab_k == 0:
        return [list(range(n_layers))]
    budget = max_memory_gb * GB
    per_layer = vocab_bytes_per_layer(d_mlp, d_vocab)
    if vocab_k == -1:
        full = 2 * 2 * n_layers * d_mlp * d_vocab
        budget -= full
        if budget < per_layer:
            raise UserError(f"--top_vocab_k_truncate -1 keeps the full [layer, neuron, vocab] tensors: "
                            f"{(full + per_layer) / GB:.2f} GB needed at least, over --max_memory_gb "
                            f"{max_memory_gb}; raise it or keep the top k tokens (e.g. 100)")
    if per_layer > budget:
        raise UserError(f"one layer's per-token statistics need {per_layer / GB:.2f} GB ([{d_mlp}, {d_vocab}] "
                        f"max and sum, float32), over --max_memory_gb {max_memory_gb}; raise it or pass "
                        f"--top_vocab_k_truncate 0 to skip them")
    per_group = min(n_layers, int(budget // per_layer))
    n_groups = math.ceil(n_layers / per_group)
    bounds = [round(i * n_layers / n_groups) for i in range(n_groups + 1)]
    return [list(range(lo, hi)) for lo, hi in zip(bounds[:-1], bounds[1:])]


# Streaming updates, one layer at a time ------------------------------------------------------------

def update_histogram(counts: torch.Tensor, x: torch.Tensor, edges: torch.Tensor, sync_free: bool | None = None) -> None:
    """counts [D, n_bins + 1] int64 += histogram of x [T, D] per neuron (bucketize convention).
    sync_free (default: on a GPU) adds with index_add_ instead of bincount, whose output size
    comes from the data (a host sync per call on a GPU); on a CPU bincount is faster."""
    n_cols = counts.shape[1]
    bins = torch.bucketize(x, edges)  # [T, D] in [0, n_bins]
    bins += torch.arange(x.shape[1], device=x.device) * n_cols  # one block of bins per neuron
    if not (counts.device.type != "cpu" if sync_free is None else sync_free):
        counts.view(-1).add_(torch.bincount(bins.view(-1), minlength=counts.numel()))
    else:
        counts.view(-1).index_add_(0, bins.view(-1), torch.ones(1, dtype=counts.dtype, device=counts.device).expand(bins.numel()))


def merge_top_k(values: torch.Tensor, index: torch.Tensor, x: torch.Tensor, flat_ix: torch.Tensor) -> None:
    """In place: values / index [D, k] (descending, -inf / -1 when empty) <- top k of themselves
    and the batch x [T, D] whose rows have dataset indices flat_ix [T]."""
    k = values.shape[1]
    batch_v, batch_pos = torch.topk(x.T, min(k, x.shape[0]), dim=1)  # [D, k'] the batch's own top-k first
    cand_v = torch.cat([values, batch_v], dim=1)
    cand_i = torch.cat([index, flat_ix[batch_pos]], dim=1)
    top_v, pick = torch.topk(cand_v, k, dim=1)
    values.copy_(top_v)
    index.copy_(cand_i.gather(1, pick))


def update_vocab(vmax: torch.Tensor, vsum: torch.Tensor, x: torch.Tensor, tok: torch.Tensor) -> None:
    """vmax / vsum [D, V] float32 <- running max / sum of x [T, D] per token id tok [T]."""
    xt = x.T  # [D, T]
    vmax.scatter_reduce_(1, tok.expand_as(xt), xt, reduce="amax")
    vsum.index_add_(1, tok, xt)


def top_vocab(stat: torch.Tensor, ids: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k of stat [D, S] over the S tokens seen (ids [S] their token ids) -> (fp16 values, int32
    token ids) [D, k]; when S < k the remaining slots get value NaN and id -1."""
    kk = min(k, stat.shape[1])
    v, pos = torch.topk(stat, kk, dim=1)
    v, ix = v.half(), ids[pos].int()
    if kk < k:
        v = torch.cat([v, v.new_full((v.shape[0], k - kk), math.nan)], dim=1)
        ix = torch.cat([ix, ix.new_full((ix.shape[0], k - kk), -1)], dim=1)
    return v, ix


# The dataset pass ---------------------------------------------------------------------------------

@torch.no_grad()
def summarize_tokens(model, tokens: torch.Tensor, *, n_bins: int = 256, bin_min: float = -10.0,
                     bin_max: float = 15.0, top_k: int = 50, vocab_k: int = 100, batch_size: int = 32,
                     max_memory_gb: float = 4.0, exclude_special: bool = False,
                     progress: bool = True) -> dict[str, torch.Tensor]:
    """All summary tensors (CPU, artifact dtypes, keyed by file stem) of `model` on tokens [n_seq, ctx].

    vocab_k: top tokens kept per neuron (0 = no vocab statistics, -1 = full [L, D, V] tensors).
    exclude_special: leave BOS/EOS/padding positions out (default: every position counts).
    """
    from tqdm.auto import tqdm

    if top_k < 1:
        raise UserError(f"--top_k_dataset_examples must be >= 1 (got {top_k})")
    if vocab_k < -1:
        raise UserError(f"--top_vocab_k_truncate must be >= -1 (got {vocab_k})")
    cfg = model.cfg
    L, D, V = cfg.n_layers, cfg.d_mlp, cfg.d_vocab
    dev = next(model.parameters()).device
    n_seq, ctx = tokens.shape
    if n_seq and int(tokens.max()) >= V:
        raise UserError(f"the token dataset holds token id {int(tokens.max())}, outside the model's vocabulary of {V}")
    edges = bin_edges(n_bins, bin_min, bin_max).to(dev)
    groups = plan_layer_groups(L, D, V, vocab_k, max_memory_gb)

    bin_counts = torch.zeros(L, D, n_bins + 1, dtype=torch.int64)
    top_value = torch.full((L, D, top_k), -math.inf)
    top_index = torch.full((L, D, top_k), -1, dtype=torch.int64)
    vocab_counts = torch.zeros(V, dtype=torch.int64, device=dev)
    out: dict[str, torch.Tensor] = {}
    if vocab_k == -1:  # NaN = token never seen
        out[VOCAB_MAX] = torch.full((L, D, V), math.nan, dtype=torch.float16)
        out[VOCAB_MEAN] = torch.full((L, D, V), math.nan, dtype=torch.float16)
    elif vocab_k > 0:
        for name, dtype in ((VOCAB_MAX, torch.float16), (VOCAB_MEAN, torch.float16),
                            (VOCAB_MAX_IX, torch.int32), (VOCAB_MEAN_IX, torch.int32)):
            out[name] = torch.empty(L, D, vocab_k, dtype=dtype)

    if vocab_k:  # allocated once for the largest group, refilled for each
        vocab_max = torch.empty(max(map(len, groups)), D, V, device=dev)
        vocab_sum = torch.empty_like(vocab_max)
    bar = tqdm(total=len(groups) * math.ceil(n_seq / batch_size), desc="summary", disable=not progress)
    for g, layers in enumerate(groups):
        # the group's accumulators live on the device; copied into the CPU results after its pass
        g_counts = torch.zeros(len(layers), D, n_bins + 1, dtype=torch.int64, device=dev)
        g_top_v = torch.full((len(layers), D, top_k), -math.inf, device=dev)
        g_top_i = torch.full((len(layers), D, top_k), -1, dtype=torch.int64, device=dev)
        if vocab_k:
            g_max = vocab_max[:len(layers)].fill_(-math.inf)
            g_sum = vocab_sum[:len(layers)].zero_()
        batch: dict[str, torch.Tensor] = {}  # this batch's kept rows, their token ids and flat indices

        def kept(act):  # [T, D] float32: the counted positions (indices from the host: no mask sync)
            return act.reshape(-1, D).index_select(0, batch["rows"]).float()

        def on_pre(act, hook, j):
            update_histogram(g_counts[j], kept(act), edges)

        def on_post(act, hook, j):
            x = kept(act)  # [T, D]
            merge_top_k(g_top_v[j], g_top_i[j], x, batch["flat"])
            if vocab_k:
                update_vocab(g_max[j], g_sum[j], x, batch["tok"])

        hooks = []
        for j, l in enumerate(layers):
            hooks.append((f"blocks.{l}.mlp.hook_pre", lambda a, hook, j=j: on_pre(a, hook, j)))
            hooks.append((f"blocks.{l}.mlp.hook_post", lambda a, hook, j=j: on_post(a, hook, j)))
        for lo in range(0, n_seq, batch_size):
            host = tokens[lo:lo + batch_size].cpu()                                                  # [batch, pos]
            rows = keep_rows(position_mask(host, model.tokenizer, special=not exclude_special))    # [T]
            batch.update(rows=to_device(rows, dev), tok=to_device(host.flatten()[rows], dev),
                         flat=to_device(rows + lo * ctx, dev))
            if g == 0:
                vocab_counts.index_add_(0, batch["tok"], torch.ones_like(batch["tok"]))
            run_until_last_hook(model, to_device(host, dev), hooks)   # stops after the group's last layer
            bar.update()

        sl = slice(layers[0], layers[-1] + 1)
        bin_counts[sl] = g_counts.cpu()
        top_value[sl] = g_top_v.cpu()
        top_index[sl] = g_top_i.cpu()
        if vocab_k:
            _finish_vocab(out, g_max, g_sum, vocab_counts, layers, vocab_k)
    bar.close()
    if vocab_k:
        del vocab_max, vocab_sum, g_max, g_sum

    if bin_counts.numel() and int(bin_counts.max()) > torch.iinfo(torch.int32).max:
        raise UserError("a histogram bin holds more than 2^31 tokens: split the dataset")
    empty = top_value == -math.inf
    out[BIN_EDGES] = edges.cpu()
    out[BIN_COUNTS] = bin_counts.int()
    out[TOP_INDEX] = top_index.masked_fill(empty, -1)
    out[TOP_VALUE] = top_value.masked_fill(empty, math.nan).half()
    out[VOCAB_COUNTS] = vocab_counts.float().cpu()
    return out


def _finish_vocab(out: dict, g_max: torch.Tensor, g_sum: torch.Tensor, vocab_counts: torch.Tensor,
                  layers: list[int], vocab_k: int) -> None:
    """Per-token max / sum [G, D, V] of a layer group -> the CPU results in `out` (top-k or full).

    Only the S tokens seen enter (unseen ones are never reported); rows of neurons are done in
    chunks so the [rows, S] temporaries stay near FINISH_BYTES.
    """
    seen = torch.nonzero(vocab_counts).squeeze(1)  # [S] token ids
    count = vocab_counts[seen].float()
    seen_cpu = seen.cpu()
    D = g_max.shape[1]
    rows = max(1, FINISH_BYTES // (4 * max(len(seen), 1)))
    for j, l in enumerate(layers):
        for r0 in range(0, D, rows):
            r = slice(r0, min(r0 + rows, D))
            vmax = g_max[j, r][:, seen]  # [rows, S]
            vmean = g_sum[j, r][:, seen] / count
            if vocab_k == -1:
                out[VOCAB_MAX][l, r, seen_cpu] = vmax.half().cpu()
                out[VOCAB_MEAN][l, r, seen_cpu] = vmean.half().cpu()
            else:
                for name, ix_name, stat in ((VOCAB_MAX, VOCAB_MAX_IX, vmax), (VOCAB_MEAN, VOCAB_MEAN_IX, vmean)):
                    v, ix = top_vocab(stat, seen, vocab_k)
                    out[name][l, r], out[ix_name][l, r] = v.cpu(), ix.cpu()


# Statistics read back from the histograms ---------------------------------------------------------

def bin_values(edges: torch.Tensor) -> torch.Tensor:
    """[n_bins + 1] float64 value standing for each bin: interior bins their midpoint; the two open
    tails a half bin width beyond the range (values outside [e[0], e[-1]] are thereby clipped)."""
    e = edges.double()
    w = e[1] - e[0]
    return torch.cat([e[:1] - w / 2, (e[:-1] + e[1:]) / 2, e[-1:] + w / 2])


def histogram_moments(counts: torch.Tensor, edges: torch.Tensor) -> dict[str, torch.Tensor]:
    """mean, var, skew, kurt (plain, Gaussian = 3) [...] float64 of binned data counts [..., n_bins + 1].

    Each token counts as its bin's value (bin_values): the mean is off by at most half a bin
    width for data inside the range; the variance is the binned one (no Sheppard correction,
    which would subtract w^2 / 12). NaN where a neuron has no tokens or a constant histogram.
    """
    c = counts.double()
    v = bin_values(edges).to(c.device)
    n = c.sum(-1)
    mean = (c * v).sum(-1) / n
    d = v - mean.unsqueeze(-1)
    var = (c * d ** 2).sum(-1) / n
    skew = (c * d ** 3).sum(-1) / n / var ** 1.5
    kurt = (c * d ** 4).sum(-1) / n / var ** 2
    return {"mean": mean, "var": var, "skew": skew, "kurt": kurt}


def histogram_quantiles(counts: torch.Tensor, edges: torch.Tensor, qs) -> torch.Tensor:
    """[..., len(qs)] float64 quantiles of binned data, linear within a bin (tails at the range ends)."""
    c = counts.double()
    e = edges.double().to(c.device)
    w = e[1] - e[0]
    lo_edges = torch.cat([e[:1] - w, e])  # bin i spans (lo_edges[i], hi_edges[i]]
    hi_edges = torch.cat([e, e[-1:] + w])
    cdf = c.cumsum(-1)
    n = cdf[..., -1:]
    q = torch.as_tensor(qs, dtype=torch.float64, device=c.device)
    target = q * n  # [..., Q]
    i = torch.searchsorted(cdf.contiguous(), target.contiguous()).clamp(max=c.shape[-1] - 1)
    below = torch.where(i > 0, cdf.gather(-1, (i - 1).clamp(min=0)), torch.zeros_like(target))
    inside = c.gather(-1, i)
    frac = torch.where(inside > 0, (target - below) / inside, torch.zeros_like(target))
    out = lo_edges[i] + frac * (hi_edges[i] - lo_edges[i])
    return torch.where(n > 0, out, torch.full_like(out, math.nan))


def histogram_fraction_above(counts: torch.Tensor, edges: torch.Tensor, threshold: float = 0.0) -> torch.Tensor:
    """[...] float64 share of tokens above `threshold` (e.g. 0: the activation frequency), linear
    within the bin containing the threshold (exact when it is an edge)."""
    c = counts.double()
    e = edges.double().to(c.device)
    w = e[1] - e[0]
    lo_edges = torch.cat([e[:1] - w, e])
    hi_edges = torch.cat([e, e[-1:] + w])
    share = ((hi_edges - threshold) / (hi_edges - lo_edges)).clamp(0, 1)  # [n_bins + 1] share of each bin above
    return (c * share).sum(-1) / c.sum(-1)


def default_budget_gb(device: torch.device) -> float:
    """--max_memory_gb when not given: 4 on a CPU; 60% of a GPU's free memory (the rest is the model,
    the forward and the batch's temporaries)."""
    from .device import free_bytes

    free = free_bytes(device)
    return 4.0 if free is None else 0.6 * free / GB


# Files --------------------------------------------------------------------------------------------

def summary_path(model_name: str, dataset: str, output_dir: str | Path | None = None) -> Path:
    if output_dir is None:
        return paths.activation_summary_path(model_name, dataset)
    return Path(output_dir) / paths.model_dirname(model_name) / "activations" / dataset


@dataclass
class SummaryConfig(StageConfig):
    """summary.py's flags (the original's names and defaults), built by the CLI and the pipeline; `run()`."""

    model: str = field(metadata={"required": True, "help": "model name (TransformerLens alias, hub id, folder or zoo model)"})
    token_dataset: list[str] = field(metadata={"required": True, "nargs": "+", "help":
                                     "token dataset name(s) under $DATASET_DIR/<family>/ (several share one model load)"})
    output_dir: str | None = field(default=None, metadata={"help": "summary root (default $SUMMARY_DIR or summary_data)"})
    batch_size: int = field(default=32, metadata={"common": True})
    n_bins: int = field(default=256, metadata={"type": int, "help": "histogram edges; there are n_bins + 1 bins"})
    bin_min: float = field(default=-10.0, metadata={"type": float, "help": "first histogram edge"})
    bin_max: float = field(default=15.0, metadata={"type": float, "help": "last histogram edge"})
    top_k_dataset_examples: int = field(default=50, metadata={"type": int, "help": "max-activating tokens kept per neuron"})
    top_vocab_k_truncate: int = field(default=100, metadata={"type": int, "help":
                                      "top tokens kept per neuron by max / mean activation (0 = skip, -1 = full "
                                      "[L, D, V] tensors)"})
    max_memory_gb: float | None = field(default=None, metadata={"type": float, "help":
                                        "budget for the [layer, neuron, vocab] accumulators; layers are processed in "
                                        "groups that fit, one forward pass each (default: 4 on a CPU, 60%% of a GPU's "
                                        "free memory: one pass for GPT2-small / medium on a 40 GB card)"})
    precision: str = field(default="auto", metadata={"choices": ["auto", "fp32", "tf32"], "help":
                           "float32 matmuls of the forward pass (auto: tf32 on CUDA, fp32 on a CPU)"})
    exclude_special_tokens: bool = field(default=False, metadata={"action": "store_true", "help":
                                         "leave BOS/EOS/padding positions out of every statistic (default: count "
                                         "every position, as the original)"})
    n_seq: int = field(default=-1, metadata={"common": True})
    overwrite: bool = field(default=False, metadata={"common": True})
    device: str = field(default="auto", metadata={"common": True})


    def run(self, progress: bool = True) -> list[Path]:
        return run_summary(self.model, self.token_dataset, self.output_dir, batch_size=self.batch_size,
                           n_bins=self.n_bins, bin_min=self.bin_min, bin_max=self.bin_max,
                           top_k=self.top_k_dataset_examples, vocab_k=self.top_vocab_k_truncate,
                           max_memory_gb=self.max_memory_gb, device=self.device, n_seq=self.n_seq,
                           exclude_special=self.exclude_special_tokens, overwrite=self.overwrite, progress=progress,
                           precision=self.precision)


def summary_datasets(model_name: str, output_dir: str | Path | None = None) -> list[str]:
    """Dataset names that have a finished summary folder for `model_name` (never a temporary)."""
    root = summary_path(model_name, "_", output_dir).parent
    return [name for name in paths.artifact_names(root) if (root / name / f"{BIN_COUNTS}.pt").is_file()]


def read_summary(model_name: str, dataset: str, output_dir: str | Path | None = None) -> dict[str, torch.Tensor]:
    """The one reader of a summary folder: {file stem: tensor} (memory-mapped), keys as written above."""
    folder = summary_path(model_name, dataset, output_dir)
    files = sorted(folder.glob("*.pt")) if folder.is_dir() else []
    if not files:
        raise UserError(f"no activation summary at {folder}: run python summary.py --model {model_name} "
                        f"--token_dataset {dataset}")
    return {p.stem: paths.torch_load(p, mmap=True) for p in files}


def run_summary(model_name: str, datasets: list[str] | str, output_dir: str | Path | None = None, *,
                batch_size: int = 32, n_bins: int = 256, bin_min: float = -10.0, bin_max: float = 15.0,
                top_k: int = 50, vocab_k: int = 100, max_memory_gb: float | None = None, device: str | None = None,
                n_seq: int = -1, exclude_special: bool = False, overwrite: bool = False,
                progress: bool = True, precision: str = "auto") -> list[Path]:
    """summary.py: summarise `model_name` on each token dataset; returns the folders (written or skipped).

    A dataset whose folder holds the same run record (run.json: settings, model and dataset
    fingerprints, code version) is skipped; one made otherwise stops the run with a message unless
    `overwrite`. Every folder is written whole into a temporary sibling and renamed, so an
    interrupted run leaves nothing half-written.
    """
    from .device import matmul_precision, resolve_device, resolve_precision
    from .models import check_model_name, load_model, model_family
    from .token_datasets import load_token_dataset, model_rows

    datasets = [datasets] if isinstance(datasets, str) else list(datasets)
    if batch_size < 1:
        raise UserError(f"--batch_size must be >= 1 (got {batch_size})")
    bin_edges(n_bins, bin_min, bin_max)  # validate before loading anything
    check_n_seq(n_seq)
    if top_k < 1 or vocab_k < -1:
        raise UserError(f"need --top_k_dataset_examples >= 1 and --top_vocab_k_truncate >= -1 (got {top_k}, {vocab_k})")
    settings = dict(n_bins=n_bins, bin_min=bin_min, bin_max=bin_max, top_k=top_k, vocab_k=vocab_k, n_seq=n_seq,
                    exclude_special_tokens=exclude_special)
    check_model_name(model_name)  # an unknown model is said as such, not as a missing dataset
    family = model_family(model_name)
    todo = []
    for ds in datasets:
        load_token_dataset(ds, family)  # fail on a missing dataset before anything else
        folder = summary_path(model_name, ds, output_dir)
        record = {"model": model_name, "token_dataset": ds, **settings,
                  **run_inputs(model_name, ds, family)}
        if runs.finished(folder, RUN_FILE, record, overwrite, (f"{BIN_COUNTS}.pt",)):
            if progress:
                print(f"{folder} exists with these settings: skipped")
            continue
        todo.append((ds, folder, record))
    if not todo:
        return [summary_path(model_name, ds, output_dir) for ds in datasets]
    dev = resolve_device(device)
    precision = resolve_precision(precision, dev)
    max_memory_gb = max_memory_gb or default_budget_gb(dev)
    model = load_model(model_name, device=str(dev))
    for ds, folder, record in todo:
        record = {**record, **run_inputs(model_name, ds, model.family)}  # after the load: trained / downloaded
        tokens = model_rows(model, ds, n_seq)  # [n_seq, ctx]
        with matmul_precision(precision):
            result = summarize_tokens(model, tokens, n_bins=n_bins, bin_min=bin_min, bin_max=bin_max, top_k=top_k,
                                      vocab_k=vocab_k, batch_size=batch_size, max_memory_gb=max_memory_gb,
                                      exclude_special=exclude_special, progress=progress)
        meta = {"model": model_name, "dataset": ds, "settings": settings, "n_seq": int(tokens.shape[0]),
                "ctx": int(tokens.shape[1]), "n_tokens_counted": int(result[VOCAB_COUNTS].sum()),
                "counted_positions": COUNTED[exclude_special]}
        with paths.atomic_path(folder) as tmp:
            tmp.mkdir()
            for name, tensor in result.items():
                torch.save(tensor.contiguous(), tmp / f"{name}.pt")
            (tmp / CONFIG_FILE).write_text(json.dumps(meta, indent=1) + "\n")
            (tmp / RUN_FILE).write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
        if progress:
            print(folder)
    return [summary_path(model_name, ds, output_dir) for ds in datasets]
