"""The neuron dataframe: one row per neuron of a model, the table every figure of the paper reads.

    dataframes/neuron_dfs/<model>.csv                       all neurons, columns NEURON_DF_COLUMNS
    dataframes/interpretable_neurons/<model>/universal.csv  rows with excess_corr > threshold (0.5)
    dataframes/neuron_dfs/<model>.run.json                  the record (runs.py): model, others, datasets,
                                                            threshold, the sha1 of every input's record, code

Columns (the paper's, in its order):
    layer, neuron
    max_corr, mean_corr, min_corr     max / mean / min over the other seeds of the neuron's maximum
                                      Pearson correlation with any neuron of that seed
    max_baseline, min_baseline, mean_baseline   the same against each seed's layers randomly rotated
    w_in_norm, input_bias, w_out_norm, in_out_sim   weights.py: norms, b_in, cos(w_in, w_out)
    l2_penalty                        w_in_norm^2 + w_out_norm^2
    mean, var, skew, kurt             moments of the PRE-activation, from summary.py's histograms summed
                                      over all datasets (kurt plain: Gaussian = 3)
    vocab_mean, vocab_var, vocab_skew, vocab_kurt   moments of cos(w_out, W_U[:, v]) over the vocabulary
    sparsity                          share of tokens with pre-activation > 0 (the activation frequency)
    excess_corr                       mean_corr - mean_baseline
Gated MLPs (Llama, Qwen2, OLMo, ...) append GATE_COLUMNS (weights.py's gate columns of
neuron_stats.csv, renamed): w_gate_norm = ||w_gate||, gate_in_sim = cos(w_gate, w_in),
gate_out_sim = cos(w_gate, w_out). There w_in is the linear ("up") input: input_bias is its bias
(NaN without biases; a gate bias is not reported), l2_penalty leaves ||w_gate||^2 out (the paper's
formula), and the moments and sparsity are of the gate's pre-activation (mlp.hook_pre), so
sparsity is the share of tokens whose gate is open (> 0).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from . import paths, runs
from .activation_summary import histogram_fraction_above, histogram_moments
from .errors import UserError
from .flags import StageConfig

NEURON_DF_COLUMNS = ["layer", "neuron", "max_corr", "mean_corr", "min_corr", "max_baseline", "min_baseline",
                     "mean_baseline", "w_in_norm", "input_bias", "w_out_norm", "in_out_sim", "l2_penalty",
                     "mean", "var", "skew", "kurt", "vocab_mean", "vocab_var", "vocab_skew", "vocab_kurt",
                     "sparsity", "excess_corr"]
GATE_COLUMNS = ["w_gate_norm", "gate_in_sim", "gate_out_sim"]  # gated MLPs only, after NEURON_DF_COLUMNS
UNIVERSAL_THRESHOLD = 0.5  # the paper's: a neuron is universal when excess_corr > 0.5


def per_seed_max(model: str, other: str, dataset: str, baseline: str, similarity: str = "pearson") -> np.ndarray:
    """[N] float: each neuron's max correlation with any neuron of `other` (NaN for dead neurons)."""
    from .correlations import read_correlation_summary

    s = read_correlation_summary(paths.correlation_path(model, other, dataset, similarity, baseline),
                                 hint=f"correlations_fast.py --model_1_name {model} --model_2_name {other} "
                                      f"--token_dataset {dataset} --baseline none rotation")
    return s["max_corr"].float().numpy()


def make_corr_compare_df(model: str, others: list[str], dataset: str, n_layers: int, d_mlp: int,
                         similarity: str = "pearson") -> pd.DataFrame:
    """max/mean/min over `others` of the per-seed maximum correlation, for 'none' and 'rotation'."""
    if not others:
        raise UserError("the neuron dataframe needs at least one other seed to compare with")
    real = np.stack([per_seed_max(model, o, dataset, "none", similarity) for o in others])
    base = np.stack([per_seed_max(model, o, dataset, "rotation", similarity) for o in others])
    if real.shape[1] != n_layers * d_mlp:
        raise UserError(f"correlation summaries have {real.shape[1]} rows, the model has {n_layers * d_mlp} neurons")
    df = pd.DataFrame({"layer": np.repeat(np.arange(n_layers), d_mlp), "neuron": np.tile(np.arange(d_mlp), n_layers)})
    with np.errstate(all="ignore"):
        df["max_corr"], df["mean_corr"], df["min_corr"] = real.max(0), real.mean(0), real.min(0)
        df["max_baseline"], df["min_baseline"], df["mean_baseline"] = base.max(0), base.min(0), base.mean(0)
    return df


def make_weight_df(model: str) -> pd.DataFrame:
    from .weights import read_weight_summaries

    w = read_weight_summaries(model)
    if "neuron_stats" not in w or "vocab_comps" not in w:
        raise UserError(f"missing weight summaries in {paths.weights_summary_path(model)} (run weights.py --model {model})")
    w, vocab = w["neuron_stats"].rename(columns={"neuron_ix": "neuron", "input_weight_norm": "w_in_norm",
                                                 "output_weight_norm": "w_out_norm",
                                                 "gate_weight_norm": "w_gate_norm"}), w["vocab_comps"]["U_out"]
    w["l2_penalty"] = w["w_in_norm"] ** 2 + w["w_out_norm"] ** 2
    for k in ("mean", "var", "skew", "kurt"):
        w[f"vocab_{k}"] = vocab[f"comp_{k}"].double().reshape(-1).numpy()
    gate = GATE_COLUMNS if "w_gate_norm" in w else []
    return w[["layer", "neuron", "w_in_norm", "input_bias", "w_out_norm", "in_out_sim", "l2_penalty",
              "vocab_mean", "vocab_var", "vocab_skew", "vocab_kurt", *gate]]


def load_activation_summaries(model: str, datasets: list[str] | None = None) -> dict[str, dict]:
    """{dataset: {neuron_bin_counts, neuron_bin_edges}} of summary.py (every finished dataset by default)."""
    from .activation_summary import BIN_COUNTS, BIN_EDGES, read_summary, summary_datasets

    names = datasets if datasets is not None else summary_datasets(model)
    if not names:
        raise UserError(f"no activation summaries under {paths.summary_dir() / paths.model_dirname(model)}/activations "
                        f"(run summary.py --model {model} --token_dataset ...)")
    out = {}
    for name in names:
        s = read_summary(model, name)
        if BIN_COUNTS not in s or BIN_EDGES not in s:
            raise UserError(f"missing histograms in {paths.activation_summary_path(model, name)} (run summary.py)")
        out[name] = {"neuron_bin_counts": s[BIN_COUNTS], "neuron_bin_edges": s[BIN_EDGES]}
    return out


# Activation statistics from summary.py's histograms ------------------------------------------

def summed_histograms(summaries: dict[str, dict]) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum neuron_bin_counts over datasets (all must share the bin edges). Returns (counts, edges)."""
    counts, edges = None, None
    for name, s in summaries.items():
        e = s["neuron_bin_edges"]
        if edges is None:
            edges, counts = e, s["neuron_bin_counts"].long().clone()
        else:
            if not torch.equal(e, edges):
                raise ValueError(f"dataset {name} uses other histogram bin edges; summaries cannot be summed")
            counts += s["neuron_bin_counts"].long()
    if counts is None:
        raise ValueError("no activation summaries to sum")
    return counts, edges


def activation_moment_df(counts: torch.Tensor, edges: torch.Tensor) -> pd.DataFrame:
    """One row per neuron: mean, var, skew, kurt (plain) and sparsity (share > 0) of the pre-activation."""
    L, D = counts.shape[:2]
    m = histogram_moments(counts, edges)
    m["sparsity"] = histogram_fraction_above(counts, edges, 0.0)
    df = pd.DataFrame({"layer": np.repeat(np.arange(L), D), "neuron": np.tile(np.arange(D), L)})
    for k in ("mean", "var", "skew", "kurt", "sparsity"):
        df[k] = m[k].reshape(-1).cpu().numpy()
    return df


def make_neuron_df(model: str, others: list[str], corr_dataset: str, n_layers: int, d_mlp: int,
                   activation_datasets: list[str] | None = None) -> pd.DataFrame:
    """The full neuron dataframe of `model` (columns NEURON_DF_COLUMNS, then GATE_COLUMNS for a gated
    MLP; one row per neuron)."""
    corr = make_corr_compare_df(model, others, corr_dataset, n_layers, d_mlp)
    weights = make_weight_df(model)
    counts, edges = summed_histograms(load_activation_summaries(model, activation_datasets))
    acts = activation_moment_df(counts, edges)
    df = corr.merge(weights, on=["layer", "neuron"], how="left", validate="one_to_one")
    df = df.merge(acts, on=["layer", "neuron"], how="left", validate="one_to_one")
    df["excess_corr"] = df["mean_corr"] - df["mean_baseline"]
    return df[NEURON_DF_COLUMNS + [c for c in GATE_COLUMNS if c in df]]


def universal_neurons(df: pd.DataFrame, threshold: float = UNIVERSAL_THRESHOLD) -> pd.DataFrame:
    """Rows with excess_corr > threshold (NaN never qualifies)."""
    return df[df["excess_corr"] > threshold]


def select_universal(df: pd.DataFrame, threshold: float = UNIVERSAL_THRESHOLD, n_min: int = 0
                     ) -> tuple[pd.DataFrame, bool]:
    """(the universal rows, False); when fewer than n_min pass, (the n_min rows of highest excess_corr,
    True), so that small models still have neurons to study (the pipeline explains those)."""
    top = universal_neurons(df, threshold)
    if len(top) >= n_min:
        return top, False
    return df.sort_values("excess_corr", ascending=False).head(n_min), True


def entropy_candidate(df: pd.DataFrame) -> str:
    """The last-layer neuron most like an entropy neuron: large output norm, output nearly orthogonal to
    the unembedding (low vocab_var); percentile ranks summed within the last layer, ties to the lowest
    neuron index. The one rule of the pipeline and the Slurm grid ('l.n')."""
    last = df[df["layer"] == df["layer"].max()].sort_values("neuron")  # exact ties: the lowest neuron index
    score = last["w_out_norm"].rank(pct=True) + (-last["vocab_var"]).rank(pct=True)  # NaN (dead) never wins
    if not score.notna().any():
        raise UserError("no last-layer neuron has both w_out_norm and vocab_var: no entropy candidate")
    row = last.loc[score.idxmax()]
    return f"{int(row['layer'])}.{int(row['neuron'])}"


def write_neuron_df(df: pd.DataFrame, model: str, threshold: float = UNIVERSAL_THRESHOLD) -> tuple[Path, Path]:
    out = paths.neuron_df_path(model)
    uni = paths.interpretable_neurons_path(model) / "universal.csv"
    with paths.atomic_path(out) as tmp:
        df.to_csv(tmp, index=False)
    with paths.atomic_path(uni) as tmp:
        universal_neurons(df, threshold).to_csv(tmp, index=False)
    return out, uni


def record_path(model: str) -> Path:
    return paths.neuron_df_path(model).with_suffix(".run.json")


def input_records(model: str, others: list[str], dataset: str, activation_datasets: list[str]) -> dict[str, str]:
    """{input artifact: sha1 of its record}: the correlation folders, weights/ and the summaries read."""
    from .activation_summary import summary_path
    from .correlations import RUN_FILE

    files = {f"correlations {o} {b}": paths.correlation_path(model, o, dataset, "pearson", b) / RUN_FILE
             for o in others for b in ("none", "rotation")}
    files["weights"] = paths.weights_summary_path(model) / RUN_FILE
    files.update({f"summary {d}": summary_path(model, d) / RUN_FILE for d in activation_datasets})
    out = {}
    for k, f in files.items():
        if f.is_file():
            out[k] = hashlib.sha1(f.read_bytes()).hexdigest()[:16]
        elif f.parent.is_dir() and any(f.parent.iterdir()):  # made by an earlier version: nothing vouches for it
            raise UserError(f"input {k} ({f.parent}) has no record of its settings ({f.name}); rerun that stage "
                            f"with --overwrite")
        else:
            out[k] = None  # not made yet
    return out


@dataclass(kw_only=True)
class NeuronDfConfig(StageConfig):
    """`universal-neurons neuron-df`: the dataframe of seed `model` against `others`; `run()`.

    A rerun whose record (settings and the inputs' records) matches skips; one made otherwise stops
    with the differences unless --overwrite (runs.py)."""

    model: str = field(metadata={"required": True, "help": "seed a (the model whose neurons are rows)"})
    others: list[str] = field(metadata={"required": True, "nargs": "+", "help": "the other seeds it was correlated with"})
    dataset: str = field(metadata={"required": True, "help": "token dataset of the correlations"})
    activation_datasets: list[str] | None = field(default=None, metadata={"nargs": "*", "help":
                                                  "datasets whose summary.py histograms to sum (default: all present)"})
    threshold: float = field(default=UNIVERSAL_THRESHOLD, metadata={"type": float,
                             "help": "excess_corr above which a neuron is universal"})
    overwrite: bool = field(default=False, metadata={"common": True})

    def run(self, progress: bool = True) -> pd.DataFrame:
        from .activation_summary import summary_datasets
        from .models import load_model

        datasets = self.activation_datasets if self.activation_datasets is not None else summary_datasets(self.model)
        want = {"model": self.model, "others": sorted(self.others), "dataset": self.dataset,  # order: no effect
                "activation_datasets": sorted(datasets), "threshold": self.threshold,
                "inputs": input_records(self.model, self.others, self.dataset, datasets),
                "code_version": runs.code_version()}
        out, uni = paths.neuron_df_path(self.model), paths.interpretable_neurons_path(self.model) / "universal.csv"
        missing = [k for k, v in want["inputs"].items() if v is None]
        if missing and out.exists():  # the inputs are made later: only the settings can be compared now
            settings = {k: v for k, v in want.items() if k != "inputs"}
            runs.decide(record_path(self.model), settings, self.overwrite, [], f"neuron dataframe {out}",
                        project=tuple(settings))
        if missing:  # a check: todo; a run: make_neuron_df says which input is missing
            runs.would(f"build {out} once its inputs exist ({', '.join(missing)})")
        elif out.exists() and runs.decide(record_path(self.model), want, self.overwrite, [out, uni], f"neuron dataframe {out}"):
            if progress:
                print(f"{out} exists with these settings and inputs: skipped")
            return load_neuron_df(self.model)
        runs.would(f"build {out}")
        cfg = load_model(self.model).cfg
        df = make_neuron_df(self.model, list(self.others), self.dataset, cfg.n_layers, cfg.d_mlp, list(datasets))
        record_path(self.model).unlink(missing_ok=True)  # the old record never vouches for new files
        out, uni = write_neuron_df(df, self.model, self.threshold)
        runs.write_record(record_path(self.model), want)
        if progress:
            share = universal_share_by_layer(df, self.threshold)
            print(f"wrote {out} ({len(df)} neurons) and {uni} ({int((df['excess_corr'] > self.threshold).sum())} "
                  f"universal)")
            print("universal share per layer: " + ", ".join(f"L{l}: {100 * v:.2f}%" for l, v in share.items()))
        return df


def load_neuron_df(model: str) -> pd.DataFrame:
    f = paths.neuron_df_path(model)
    if not f.exists():
        raise UserError(f"no neuron dataframe at {f} (run universal-neurons neuron-df --model {model} ...)")
    return pd.read_csv(f)


def load_paper_dataframe(model: str, name: str = "universal") -> pd.DataFrame:
    """The paper's published dataframes/interpretable_neurons/<model>/<name>.csv (MIT, shipped in
    dataframes/paper/): 'universal' for stanford-gpt2-small-a, stanford-gpt2-medium-a and pythia-160m
    (NEURON_DF_COLUMNS), 'prediction_neurons' for stanford-gpt2-medium-a."""
    f = paths.PAPER_DATAFRAMES / model / f"{name}.csv"
    if not f.is_file():
        have = sorted(f"{d.name}/{c.stem}" for d in paths.PAPER_DATAFRAMES.glob("*") for c in d.glob("*.csv"))
        raise UserError(f"the paper published no {name}.csv for {model!r} (shipped: {', '.join(have) or 'none'})")
    return pd.read_csv(f)


def load_universal(model: str) -> pd.DataFrame:
    f = paths.interpretable_neurons_path(model) / "universal.csv"
    if not f.exists():
        raise UserError(f"no universal neurons at {f} (run universal-neurons neuron-df --model {model} ...)")
    return pd.read_csv(f)


def universal_share_by_layer(df: pd.DataFrame, threshold: float = UNIVERSAL_THRESHOLD) -> pd.Series:
    return (df["excess_corr"] > threshold).groupby(df["layer"]).mean()
