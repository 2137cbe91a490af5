"""Explaining neurons by boolean token features: variance reduction.

For a neuron's activation a over T tokens and a boolean feature F,

    VR = (Var(a) - [p_F Var(a | F) + p_notF Var(a | not F)]) / Var(a)

(population variances, p_F = share of tokens with F). The within-group sum of squares is the
total minus the between-group one, so with n = T, n1 = #F, n0 = n - n1 and the centred
activations x = a - mean(a):

    VR = between / total = n * c^2 / (n1 * n0 * sum(x^2)),   c = sum_{F} x = n * cov(a, F)

i.e. the squared point-biserial correlation of a with F. This form needs only the counts
F^T 1, the sums F^T x and the per-neuron sum of squares: one GEMM [F, T] x [T, N] per batch for
all neurons and features, no sums of squares per feature, and no difference of two large
within-group terms (the cancellation the direct formula suffers when VR is small).

Everything is accumulated in float64 over batches of tokens, with activations shifted by the
first batch's mean (`x = a - shift`, with the exact correction for the residual mean), so a
neuron with a large mean keeps its precision.

Degenerate cases give NaN: a constant (or dead) neuron (Var(a) = 0), a feature true on no token
or on every token (p_F in {0, 1}), no tokens at all, or NaN activations.

`prev_token` VR counts the same positions as the current-token VR, each with the features of
the previous token in its sequence; position 0 has no previous token, so every feature is false
there (the original's convention: its prev_token column holds -1 at position 0).

Counted positions: every position (BOS/EOS/padding included, as the original); with
--exclude_special_tokens the BOS, EOS and padding ids are left out.

From a cache (--activation_path): a cache of pre-activations (activation_config.json says
mlp.hook_pre, or a folder without it) is passed through the model's own activation function
(`capture.activation_function`) first, so both paths explain the same post-activations.

Artifacts: `$RESULTS_DIR/explanations/<model>/<dataset>/<type>_feature/layer_<l>/`
variance_reduction.csv and prev_token_variance_reduction.csv, rows 'l.n', columns features, and
explain_config.json, the run record (runs.py): model, dataset, feature type, n_seq, the activations'
source (hook location, or the cache folder and its record), exclude_special_tokens, min_count,
min_forms, the layer and its neurons, the weights' and dataset's fingerprints, the code version.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from . import paths, runs
from .flags import StageConfig
from .paths import atomic_path
from .token_datasets import run_inputs

VR_FILE = "variance_reduction.csv"
PREV_VR_FILE = "prev_token_variance_reduction.csv"
CONFIG_FILE = "explain_config.json"  # the layer folder's run record (runs.py), written last


class VarianceReduction:
    """Streaming variance reduction of N neurons by F boolean features.

    update(acts [T, N], features [T, F]) any number of times, then result() -> [N, F] float64.
    `add_features(k)` appends k features that were false on every token seen so far (their
    statistics start at zero, which is exact), for feature sets discovered while streaming.
    """

    def __init__(self, n_neurons: int, n_features: int, device: str | torch.device = "cpu"):
        kw = dict(dtype=torch.float64, device=device)
        self.device = torch.device(device)
        self.n = 0
        self.shift: torch.Tensor | None = None  # [N] the first batch's mean
        self.sum = torch.zeros(n_neurons, **kw)  # [N] sum of x
        self.sumsq = torch.zeros(n_neurons, **kw)  # [N] sum of x^2
        self.min = torch.full((n_neurons,), torch.inf, **kw)  # [N] to tell constant neurons exactly
        self.max = torch.full((n_neurons,), -torch.inf, **kw)
        self.count = torch.zeros(n_features, **kw)  # [F] tokens with the feature
        self.fsum = torch.zeros(n_features, n_neurons, **kw)  # [F, N] sum of x over tokens with it

    def add_features(self, k: int) -> None:
        if k > 0:
            self.count = torch.cat([self.count, self.count.new_zeros(k)])
            self.fsum = torch.cat([self.fsum, self.fsum.new_zeros(k, self.fsum.shape[1])])

    def update(self, acts, features) -> None:
        """acts: [T, N] activations; features: [T, F] bool/0-1 (F may be fewer than the
        accumulator's features: the missing trailing ones are false on these tokens)."""
        a_in = torch.as_tensor(acts).to(self.device)
        a = a_in.to(torch.float64, copy=True)  # our own copy: modified in place below
        f = torch.as_tensor(features).to(self.device, torch.float64)
        if a.ndim != 2 or f.ndim != 2 or a.shape[0] != f.shape[0] or a.shape[1] != self.sum.shape[0] \
                or f.shape[1] > self.count.shape[0]:
            raise ValueError(f"expected acts [T, {self.sum.shape[0]}] and features [T, <= {self.count.shape[0]}], "
                             f"got {tuple(a.shape)} and {tuple(f.shape)}")
        if a.shape[0] == 0:
            return
        if self.shift is None:
            self.shift = a.mean(0)
            self.shift = torch.where(torch.isfinite(self.shift), self.shift, 0.0)
        # amin/amax (not min(0)/aminmax: 10x slower on CPU) on the input dtype; NaN propagates.
        self.min = torch.minimum(self.min, a_in.amin(0).to(torch.float64))
        self.max = torch.maximum(self.max, a_in.amax(0).to(torch.float64))
        x = a.sub_(self.shift)
        k = f.shape[1]
        self.n += x.shape[0]
        self.count[:k] += f.sum(0)
        self.fsum[:k] += f.T @ x
        self.sum += x.sum(0)
        self.sumsq += x.square_().sum(0)  # x is ours: square in place, after its last other use

    def result(self) -> torch.Tensor:
        """[N, F] float64 variance reductions (NaN for the degenerate cases above)."""
        n = float(self.n)
        if n == 0:
            return torch.full((self.sum.shape[0], self.count.shape[0]), torch.nan, dtype=torch.float64)
        mean_x = self.sum / n  # [N] residual mean after the shift (small)
        total = self.sumsq - self.sum * mean_x  # [N] sum of squared deviations
        c = self.fsum - self.count[:, None] * mean_x[None, :]  # [F, N] sum over F of deviations
        n1, n0 = self.count, n - self.count
        vr = n * c.square() / (n1 * n0)[:, None] / total[None, :]
        degenerate = (n1 == 0) | (n0 == 0)
        constant = ~(self.max > self.min)  # also True when min/max are NaN
        vr[degenerate, :] = torch.nan
        vr[:, constant] = torch.nan
        return vr.T.cpu()


def variance_reduction(acts, features) -> np.ndarray:
    """acts [T, N] activations, features [T, F] bool -> [N, F] float64 variance reductions."""
    acts = torch.as_tensor(np.asarray(acts) if not torch.is_tensor(acts) else acts)
    features = torch.as_tensor(np.asarray(features) if not torch.is_tensor(features) else features)
    vr = VarianceReduction(acts.shape[1], features.shape[1])
    vr.update(acts, features)
    return vr.result().numpy()


# ------------------------------------------------------------------------------------------------
# A layer's (or any neuron set's) explanation over token sequences
# ------------------------------------------------------------------------------------------------


class SequenceExplainer:
    """Current- and previous-token VR accumulated over batches of sequences.

    update(acts [B, P, N], features [B, P, F] bool, mask [B, P] bool): positions with mask False
    are left out of both; the previous-token statistics take position t's activation with position
    t-1's features (none at position 0).
    """

    def __init__(self, n_neurons: int, n_features: int, device: str | torch.device = "cpu"):
        self.current = VarianceReduction(n_neurons, n_features, device)
        self.previous = VarianceReduction(n_neurons, n_features, device)

    def add_features(self, k: int) -> None:
        self.current.add_features(k)
        self.previous.add_features(k)

    def update(self, acts, features, mask=None) -> None:
        acts = torch.as_tensor(acts)
        features = torch.as_tensor(features)
        mask = torch.ones(acts.shape[:2], dtype=torch.bool) if mask is None else torch.as_tensor(mask, dtype=torch.bool)
        mask = mask.to(acts.device)
        features = features.to(acts.device)
        self.current.update(acts[mask], features[mask])
        prev = torch.zeros_like(features)  # [B, P, F] the previous token's features, false at position 0
        prev[:, 1:] = features[:, :-1]
        self.previous.update(acts[mask], prev[mask])

    def result(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.current.result(), self.previous.result()


def neuron_index(layers, neurons) -> pd.Index:
    """Row labels 'l.n' (the original's format)."""
    return pd.Index([f"{l}.{n}" for l, n in zip(layers, neurons)], name="neuron")


def vr_frame(vr, layers, neurons, feature_names) -> pd.DataFrame:
    """[N, F] values -> DataFrame indexed 'l.n', one column per feature."""
    return pd.DataFrame(np.asarray(vr, dtype=np.float64), index=neuron_index(layers, neurons),
                        columns=pd.Index(list(feature_names), name="feature"))


def vocab_feature_matrix(vocab_df: pd.DataFrame) -> tuple[torch.Tensor, list[str]]:
    """The boolean columns of a vocab df as a [vocab, F] bool tensor, and their names."""
    names = [c for c in vocab_df.columns if vocab_df[c].dtype == bool]
    return torch.tensor(vocab_df[names].to_numpy(dtype=bool)), names


def explain_layer(acts, tokens, vocab_df: pd.DataFrame, mask=None, layer: int = 0,
                  neurons=None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Token-feature explanations of one layer from arrays (no model needed).

    acts: [B, P, N] activations of the layer's neurons `neurons` (default 0..N-1); tokens:
    [B, P] ids; vocab_df: `analysis.vocab_df.make_vocab_df` table (bool columns = features,
    looked up by token id); mask: [B, P] bool positions to use (default all).
    Returns (variance_reduction, prev_token_variance_reduction), DataFrames [N, F] indexed 'l.n'.
    """
    acts = torch.as_tensor(acts)
    tokens = torch.as_tensor(tokens, dtype=torch.long)
    table, names = vocab_feature_matrix(vocab_df)
    if int(tokens.max()) >= table.shape[0] or int(tokens.min()) < 0:
        raise ValueError(f"token ids span [{int(tokens.min())}, {int(tokens.max())}], outside the vocab df's "
                         f"{table.shape[0]} rows")
    neurons = list(range(acts.shape[-1])) if neurons is None else list(neurons)
    ex = SequenceExplainer(acts.shape[-1], len(names))
    ex.update(acts, table[tokens], mask)
    cur, prev = ex.result()
    layers = [layer] * len(neurons)
    return vr_frame(cur, layers, neurons, names), vr_frame(prev, layers, neurons, names)


def layer_dir(model: str, dataset: str, feature_type: str, layer: int) -> Path:
    return paths.explanation_path(model, dataset, feature_type, layer)


def write_layer(vr: pd.DataFrame, prev_vr: pd.DataFrame, model: str, dataset: str, feature_type: str,
                layer: int, config: dict | None = None) -> Path:
    """Write one layer's two CSVs (and its run record, explain_config.json) atomically; returns the folder."""
    out = layer_dir(model, dataset, feature_type, layer)
    (out / CONFIG_FILE).unlink(missing_ok=True)  # a kill while replacing must not leave the old record
    for frame, name in ((vr, VR_FILE), (prev_vr, PREV_VR_FILE)):
        with atomic_path(out / name) as tmp:
            frame.to_csv(tmp)
    runs.write_record(out / CONFIG_FILE, config or {})  # last: marks the folder finished
    return out


def read_vr_csv(path: str | Path) -> pd.DataFrame:
    """A variance-reduction CSV; the 'l.n' labels stay strings ('3.10' must not become 3.1)."""
    return pd.read_csv(path, index_col=0, dtype={0: str})


def read_layer(model: str, dataset: str, feature_type: str, layer: int, prev: bool = False) -> pd.DataFrame:
    return read_vr_csv(layer_dir(model, dataset, feature_type, layer) / (PREV_VR_FILE if prev else VR_FILE))


# ------------------------------------------------------------------------------------------------
# Whole datasets: the explain.py pipeline
# ------------------------------------------------------------------------------------------------


def select_neurons(n_layers: int, d_mlp: int, layer: int = -1, neuron_df_path: str | Path | None = None
                   ) -> dict[int, np.ndarray]:
    """Neurons to explain, {layer: neuron indices}: every neuron of `layer` (-1 = all layers), or
    only the rows (columns `layer`, `neuron`) of the CSV at `neuron_df_path` in those layers."""
    from .errors import UserError

    if layer != -1 and not 0 <= layer < n_layers:
        raise UserError(f"--layer {layer} is out of range for a model with {n_layers} layers (use -1 for all)")
    layers = range(n_layers) if layer == -1 else [layer]
    if neuron_df_path is None:
        return {l: np.arange(d_mlp) for l in layers}
    try:
        df = pd.read_csv(neuron_df_path)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as e:
        raise UserError(f"cannot read neuron dataframe {neuron_df_path}: {e}") from None
    if not {"layer", "neuron"} <= set(df.columns):
        raise UserError(f"{neuron_df_path} needs 'layer' and 'neuron' columns (has {list(df.columns)[:8]})")
    for col in ("layer", "neuron"):  # 1.999 must never become neuron 1
        values = pd.to_numeric(df[col], errors="coerce")
        bad = df[col][values.isna() | (values != values.round())]
        if len(bad):
            raise UserError(f"{neuron_df_path}: {col} {bad.iloc[0]} (row {bad.index[0] + 2}) is not a whole number")
        df[col] = values.astype(np.int64)
    bad = df[(df.layer < 0) | (df.layer >= n_layers) | (df.neuron < 0) | (df.neuron >= d_mlp)]
    if len(bad):
        raise UserError(f"{neuron_df_path}: neuron {bad.layer.iloc[0]}.{bad.neuron.iloc[0]} is out of range for "
                        f"a model with {n_layers} layers x {d_mlp} neurons")
    chosen = {l: np.unique(df.neuron[df.layer == l].to_numpy(dtype=np.int64)) for l in layers}
    chosen = {l: n for l, n in chosen.items() if len(n)}
    if not chosen:
        raise UserError(f"{neuron_df_path} lists no neurons in layer(s) {list(layers)}")
    return chosen


def explain_batches(batches, neurons: dict[int, np.ndarray], feature_type: str = "token", vocab_df=None,
                    vocab: list[str] | None = None, nlp=None, device="cpu", special_ids=()
                    ) -> dict[int, tuple[pd.DataFrame, pd.DataFrame]]:
    """Current/previous-token VR of the chosen neurons over a stream of batches (no model needed).

    batches: iterable of (tokens [B, P] ids, acts [B, P, L, D] or {layer: [B, P, n_chosen]}, mask
    [B, P] bool); neurons: {layer: neuron indices} (`select_neurons`); feature_type 'token' uses the
    bool columns of `vocab_df` looked up by token id, 'sequence' tags the text with the spaCy
    pipeline `nlp` (`analysis.sequence_features`), `vocab` being the decoded vocabulary; tokens in
    `special_ids` (BOS/EOS/padding) are kept out of that text.
    Returns {layer: (variance_reduction, prev_token_variance_reduction)} DataFrames indexed 'l.n'.
    """
    device = torch.device(device)
    if feature_type == "token":
        table, names = vocab_feature_matrix(vocab_df)
        table = table.to(device)
    elif feature_type == "sequence":
        from .sequence_features import sequence_features

        seq_names: dict[str, int] = {}
    else:
        raise ValueError(f"unknown feature type {feature_type!r}")
    n_features = len(names) if feature_type == "token" else 0
    explainers = {l: SequenceExplainer(len(n), n_features, device) for l, n in neurons.items()}
    index = {l: torch.as_tensor(n, dtype=torch.long, device=device) for l, n in neurons.items()}
    for tokens, acts, mask in batches:
        tokens = torch.as_tensor(tokens, dtype=torch.long)
        mask = torch.as_tensor(mask, dtype=torch.bool).to(device)
        if feature_type == "token":
            feats = table[tokens.to(device)]
        else:
            before = len(seq_names)
            # BOS/EOS/padding never enter spaCy's text (their positions get no tag), counted or not
            text_mask = mask.cpu().numpy() & ~np.isin(tokens.numpy(), list(special_ids))
            feats, _ = sequence_features(tokens.numpy(), vocab, nlp, text_mask, seq_names)
            feats = torch.from_numpy(feats).to(device)
            for ex in explainers.values():
                ex.add_features(len(seq_names) - before)
        for l, ex in explainers.items():
            layer_acts = acts[l] if isinstance(acts, dict) else torch.as_tensor(acts)[:, :, l].to(device)[..., index[l]]
            ex.update(torch.as_tensor(layer_acts).to(device), feats, mask)
    if feature_type == "sequence":
        names = sorted(seq_names, key=seq_names.get)
    out = {}
    for l, ex in explainers.items():
        cur, prev = ex.result()
        layers = [l] * len(neurons[l])
        out[l] = (vr_frame(cur, layers, neurons[l], names), vr_frame(prev, layers, neurons[l], names))
    return out


def cached_activation_batches(activation_path: str | Path, model: str, dataset: str, neurons: dict[int, np.ndarray],
                              n_rows: int, ctx: int, batch_size: int, act_fn=None):
    """Yield {layer: [B, ctx, n_chosen] float32} post-activations from activations.py's cache.

    Looks in `<activation_path>/<model>/<dataset>/`, else in `<activation_path>/` itself, for the
    neuron files `{l}.{n}.pt` (fp16/fp32 [n_seq * ctx], flat index seq * ctx + pos; memory-mapped,
    so only each batch's rows are read), else the layer file `{l}.all.none.all.pt` ([n_seq * ctx, D],
    8-bit quantised or float). A cache of pre-activations is passed through `act_fn` (the model's
    activation function, `capture.activation_function`), which must then be given.
    """
    from .activation_cache import load_activations, read_cache_config
    from .errors import UserError

    folder = paths.activation_cache_path(model, dataset, activation_path)
    if not folder.is_dir():
        folder = Path(activation_path)
    cfg = read_cache_config(folder)
    location = cfg["location"] if cfg else "mlp.hook_pre"
    if location not in ("mlp.hook_pre", "mlp.hook_post"):
        raise UserError(f"{folder} caches {location}, not neuron activations (mlp.hook_pre or mlp.hook_post)")
    if cfg is None:
        print(f"note: {folder} has no activation_config.json; taking it to hold mlp.hook_pre (activations.py's "
              f"default) and applying the activation function")
    if location == "mlp.hook_pre" and act_fn is None:
        raise UserError(f"{folder} caches mlp.hook_pre, and this model's post-activation is not an elementwise "
                        f"function of it (gated MLP or unknown act_fn): cache mlp.hook_post instead")
    post = (lambda x: x) if location == "mlp.hook_post" else act_fn
    flat, missing = {}, []
    for l, ns in neurons.items():
        layer_file = folder / f"{l}.all.none.all.pt"
        for n in ns.tolist():
            path = folder / f"{l}.{n}.pt"
            if path.is_file():
                t = paths.torch_load(path, mmap=True).reshape(-1)
            elif layer_file.is_file():
                if l not in flat:  # the whole layer, dequantised once
                    flat[l] = load_activations(layer_file)
                t = flat[l][:, n]
            else:
                missing.append(f"{l}.{n}")
                continue
            if t.numel() < n_rows * ctx:
                raise UserError(f"the cache in {folder} holds {t.numel()} activations of neuron {l}.{n}, fewer than "
                                f"the {n_rows} x {ctx} tokens of {dataset}: it was cached for another dataset")
            flat[l, n] = t[: n_rows * ctx].view(n_rows, ctx)
    if missing:
        raise UserError(f"no cached activations for {len(missing)} neuron(s) ({', '.join(missing[:5])}, ...) in "
                        f"{folder}: run activations.py --model {model} --token_dataset {dataset} "
                        f"--neuron_subset_file <csv> first, or leave out --activation_path to compute them")
    for lo in range(0, n_rows, batch_size):
        hi = min(lo + batch_size, n_rows)
        yield {l: post(torch.stack([flat[l, n][lo:hi].float() for n in ns.tolist()], dim=-1))
               for l, ns in neurons.items()}


@dataclass
class ExplainConfig(StageConfig):
    """explain.py's flags (the original's names; its model-specific defaults became required or None),
    built by the CLI and the pipeline; `run()`."""

    model: str = field(metadata={"required": True, "help": "model name (TransformerLens alias, hub id, folder or zoo model)"})
    dataset: str = field(metadata={"required": True, "help": "token dataset name under $DATASET_DIR/<family>/"})
    layer: int = field(default=-1, metadata={"type": int, "help": "layer to explain (-1 = all)"})
    neuron_df_path: str | None = field(default=None, metadata={"help":
                                       "CSV with layer,neuron columns (e.g. universal.csv): explain only those neurons"})
    activation_path: str | None = field(default=None, metadata={"help":
                                        "folder of cached activations from activations.py ({l}.{n}.pt, or "
                                        "{l}.all.none.all.pt); pre-activation caches go through the model's "
                                        "activation function first; default: compute blocks.{l}.mlp.hook_post "
                                        "with the model"})
    feature_type: str = field(default="token", metadata={"choices": ["token", "sequence"]})
    exclude_special_tokens: bool = field(default=False, metadata={"action": "store_true", "help":
                                         "leave BOS/EOS/padding positions out of the variance reduction (default: "
                                         "count every position, as the original)"})
    min_count: int = field(default=3000, metadata={"type": int, "help":
                           "unigram features: tokens seen more than this often (the original's 3000)"})
    min_forms: int = field(default=3, metadata={"type": int, "help":
                           "unigram features: with more than this many surface forms (the original's 3)"})
    batch_size: int = field(default=32, metadata={"common": True})
    device: str = field(default="auto", metadata={"common": True})
    n_seq: int = field(default=-1, metadata={"common": True})
    overwrite: bool = field(default=False, metadata={"common": True})
    precision: str = field(default="auto", metadata={"choices": ["auto", "fp32", "tf32"], "help":
                           "float32 matmuls of the forward pass and the regressions (auto: tf32 on CUDA, fp32 on a CPU)"})

    def run(self, progress: bool = True) -> list[Path]:
        return run_explanations(self.model, self.dataset, self.feature_type, self.layer, self.neuron_df_path,
                                self.activation_path, self.batch_size, self.device, self.n_seq,
                                min_count=self.min_count, min_forms=self.min_forms,
                                exclude_special=self.exclude_special_tokens, overwrite=self.overwrite,
                                progress=progress, precision=self.precision)


def _act_fn_or_none(model):
    """The model's activation function, or None where post is not a function of pre (gated MLPs):
    a post-activation cache still works there, a pre-activation one is refused when it is read."""
    from .capture import activation_function
    from .errors import UserError

    try:
        return activation_function(model)
    except UserError:
        return None


def _source(activation_path, model_name: str, dataset: str, location: str, neurons: dict) -> str | dict:
    """Where the activations come from, for the record: the hook location, or the cache folder with its
    own record (its entries of the files used here stand for their numbers)."""
    if not activation_path:
        return location
    from .activation_cache import read_cache_config

    folder = paths.activation_cache_path(model_name, dataset, activation_path)
    folder = folder if folder.is_dir() else Path(activation_path)
    cache = read_cache_config(folder) or {"location": "mlp.hook_pre"}
    used = {f"{l}.{n}.pt" for l, ns in neurons.items() for n in ns} | {f"{l}.all.none.all.pt" for l in neurons}
    files = {k: v for k, v in cache.get("files", {}).items() if k in used}
    return {"cache": str(folder.resolve()), **{k: v for k, v in cache.items() if k != "files"}, "files": files}


def _features(model, tokens: torch.Tensor, mask: torch.Tensor, feature_type: str, min_count: int, min_forms: int):
    """(vocab_df, None) for token features (unigram counts from these tokens), (None, decoded vocab) for
    sequence features."""
    from .token_features import decoded_vocab, make_vocab_df

    if feature_type == "token":
        counts = torch.bincount(tokens[mask], minlength=model.W_E.shape[0])
        return make_vocab_df(model.tokenizer, model.W_E, model.W_U, counts.numpy(), min_count, min_forms), None
    return None, decoded_vocab(model.tokenizer)


def run_explanations(model_name: str, dataset: str, feature_type: str = "token", layer: int = -1,
                     neuron_df_path: str | None = None, activation_path: str | None = None, batch_size: int = 32,
                     device: str | None = None, n_seq: int = -1, location: str = "mlp.hook_post",
                     min_count: int = 3000, min_forms: int = 3, exclude_special: bool = False,
                     overwrite: bool = False, progress: bool = True, precision: str = "auto") -> list[Path]:
    """explain.py: explain a model's neurons on a token dataset; returns the layer folders (written or
    skipped: a layer folder whose explain_config.json holds this run's record is reused; one made
    otherwise stops the run with the differences unless `overwrite`).

    Activations are `blocks.{l}.<location>` computed by the model (or read from `activation_path`,
    pre-activation caches passed through the model's activation function); every position counts
    (newlines too, since "is a newline" is one of the features tested), BOS/EOS/padding as well
    unless exclude_special (`capture.position_mask`). Token features come from
    `analysis.vocab_df.make_vocab_df` with unigram counts taken from the same tokens.
    """
    from tqdm.auto import tqdm

    from .sequence_features import load_spacy

    from .capture import mlp_activations, position_mask
    from .device import matmul_precision, resolve_device, resolve_precision, to_device
    from .errors import UserError, check_n_seq
    from .models import load_model
    from .token_datasets import model_rows

    if feature_type not in ("token", "sequence"):
        raise UserError(f"unknown --feature_type {feature_type!r}: choose token or sequence")
    check_n_seq(n_seq)
    nlp = load_spacy() if feature_type == "sequence" else None  # fail before loading anything big
    dev = resolve_device(device)
    precision = resolve_precision(precision, dev)
    model = load_model(model_name, device=str(dev))
    neurons = select_neurons(model.cfg.n_layers, model.cfg.d_mlp, layer, neuron_df_path)
    source = {"activations": _source(activation_path, model_name, dataset, location, neurons)}
    base = {"model": model_name, "dataset": dataset, "feature_type": feature_type, "n_seq": n_seq, **source,
            "exclude_special_tokens": bool(exclude_special), "min_count": min_count, "min_forms": min_forms,
            **run_inputs(model_name, dataset, model.family)}
    records = {l: {**base, "layer": int(l), "neurons": [int(n) for n in ns]} for l, ns in neurons.items()}
    folders = {l: layer_dir(model_name, dataset, feature_type, l) for l in neurons}
    neurons = {l: ns for l, ns in neurons.items()
               if not runs.finished(folders[l], CONFIG_FILE, records[l], overwrite, (VR_FILE, PREV_VR_FILE))}
    if not neurons:
        if progress:
            print(f"explanations of {model_name} on {dataset} exist with these settings: skipped")
        return list(folders.values())
    tokens = model_rows(model, dataset, n_seq)  # [n_seq, ctx]
    mask = position_mask(tokens, model.tokenizer, special=not exclude_special)
    vocab_df, vocab = _features(model, tokens, mask, feature_type, min_count, min_forms)

    starts = range(0, len(tokens), batch_size)
    cached = (cached_activation_batches(activation_path, model_name, dataset, neurons, len(tokens), tokens.shape[1],
                                        batch_size, act_fn=_act_fn_or_none(model)) if activation_path else None)

    def batches():
        for lo in tqdm(starts, desc=f"explain {dataset}", disable=not progress):
            batch = tokens[lo:lo + batch_size]
            if cached is not None:
                acts = next(cached)
            else:
                with torch.no_grad():  # [B, P, len(neurons), D]; the forward pass stops after the last layer needed
                    full = mlp_activations(model, to_device(batch, dev), location=location, layers=list(neurons))
                acts = {l: full[:, :, i, torch.as_tensor(ns, device=full.device)] for i, (l, ns) in enumerate(neurons.items())}
            yield batch, acts, mask[lo:lo + batch_size]

    special = {model.tokenizer.bos_token_id, model.tokenizer.eos_token_id, model.tokenizer.pad_token_id} - {None}
    with matmul_precision(precision):
        results = explain_batches(batches(), neurons, feature_type, vocab_df=vocab_df, vocab=vocab, nlp=nlp,
                                  device=dev, special_ids=sorted(special))
    for l, (cur, prev) in results.items():
        write_layer(cur, prev, model_name, dataset, feature_type, l, records[l])
    return list(folders.values())
