"""Every on-disk location the pipeline reads or writes, in one place.

Defaults are the original code's folder names relative to the working directory; each can be
moved with an environment variable (the original used DATASET_DIR and RESULTS_DIR):

    DATASET_DIR        token_datasets        <family>/<dataset name>  (datasets.save_to_disk)
    RESULTS_DIR        correlation_results   <m1>+<m2>/<dataset>/<sim>.<baseline>/
    SUMMARY_DIR        summary_data          <model>/weights/, <model>/activations/<dataset>/
    ACTIVATION_DIR     cached_activations    <model>/<dataset>/
    INTERVENTION_DIR   intervention_results  <model>/<dataset>/...
    DATAFRAME_DIR      dataframes            neuron_dfs/<model>.csv, interpretable_neurons/...
    EXPLANATION_DIR    $RESULTS_DIR/explanations (results/explanations when RESULTS_DIR is unset, as the
                       original explain.py)
    REPORT_DIR         reports
    UNIVERSAL_NEURONS_ZOO   ~/.cache/universal_neurons/zoo   trained toy models (HF folders)
"""
from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path


def _env_path(var: str, default: str | Path) -> Path:
    return Path(os.environ.get(var) or default)


def dataset_dir() -> Path:
    return _env_path("DATASET_DIR", "token_datasets")


def results_dir() -> Path:
    return _env_path("RESULTS_DIR", "correlation_results")


def summary_dir() -> Path:
    return _env_path("SUMMARY_DIR", "summary_data")


def activation_dir() -> Path:
    return _env_path("ACTIVATION_DIR", "cached_activations")


def intervention_dir() -> Path:
    return _env_path("INTERVENTION_DIR", "intervention_results")


def dataframe_dir() -> Path:
    return _env_path("DATAFRAME_DIR", "dataframes")


def explanation_dir() -> Path:
    # the original explain.py: $RESULTS_DIR/explanations, with RESULTS_DIR defaulting to 'results' there
    return _env_path("EXPLANATION_DIR", _env_path("RESULTS_DIR", "results") / "explanations")


def report_dir() -> Path:
    return _env_path("REPORT_DIR", "reports")


def zoo_dir() -> Path:
    default = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "universal_neurons" / "zoo"
    return _env_path("UNIVERSAL_NEURONS_ZOO", default)


def model_dirname(model_name: str) -> str:
    """A model name as a single folder component ('EleutherAI/pythia-160m' -> 'EleutherAI_pythia-160m')."""
    return model_name.rstrip("/").replace("/", "_") if not Path(model_name).is_dir() else Path(model_name).resolve().name


# Dataset layout --------------------------------------------------------------------------------

def token_dataset_path(family: str, name: str) -> Path:
    return dataset_dir() / family / name


def correlation_path(model_1: str, model_2: str, dataset: str, similarity: str, baseline: str) -> Path:
    return results_dir() / f"{model_dirname(model_1)}+{model_dirname(model_2)}" / dataset / f"{similarity}.{baseline}"


def weights_summary_path(model: str) -> Path:
    return summary_dir() / model_dirname(model) / "weights"


def activation_summary_path(model: str, dataset: str) -> Path:
    return summary_dir() / model_dirname(model) / "activations" / dataset


def neuron_df_path(model: str) -> Path:
    return dataframe_dir() / "neuron_dfs" / f"{model_dirname(model)}.csv"


def interpretable_neurons_path(model: str) -> Path:
    return dataframe_dir() / "interpretable_neurons" / model_dirname(model)


# Atomic writes ----------------------------------------------------------------------------------

@contextmanager
def atomic_path(path: str | Path):
    """Yield a temporary sibling path; rename it onto `path` only if the block succeeds.

    A killed or failing writer therefore never leaves a half-written artifact at `path`.
    Works for files and for folders (e.g. datasets.save_to_disk).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    target = tmp / path.name
    try:
        yield target
        if path.is_dir() and not path.is_symlink():
            import shutil
            shutil.rmtree(path)
        os.replace(target, path)
    finally:
        import shutil
        shutil.rmtree(tmp, ignore_errors=True)


def torch_save_atomic(obj, path: str | Path) -> None:
    """torch.save through a temporary file and a rename."""
    import torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
