"""Every on-disk location the pipeline reads or writes, in one place.

Defaults are the original code's folder names relative to the working directory; each can be
moved with an environment variable (the original used DATASET_DIR and RESULTS_DIR):

    DATASET_DIR        token_datasets        <family>/<dataset name>  (datasets.save_to_disk)
    RESULTS_DIR        correlation_results   <m1>+<m2>/<dataset>/<sim>.<baseline>/,
                                             attention_deactivation/<model>/<dataset>/<layer>.<head>/
    SUMMARY_DIR        summary_data          <model>/weights/, <model>/activations/<dataset>/
    ACTIVATION_DIR     cached_activations    <model>/<dataset>/
    INTERVENTION_DIR   intervention_results  <model>/<dataset>/<neurons>/<type>_<param>/, .../clean.n<rows>/
    DATAFRAME_DIR      dataframes            neuron_dfs/<model>.csv, interpretable_neurons/<model>/universal.csv
    EXPLANATION_DIR    $RESULTS_DIR/explanations (results/explanations when RESULTS_DIR is unset, as the
                       original explain.py)  <model>/<dataset>/<type>_feature/layer_<l>/
    REPORT_DIR         reports               <model>/report.md
    UNIVERSAL_NEURONS_ZOO   ~/.cache/universal_neurons/zoo   <name>/: trained toy models (HF folders)

Each artifact kind, with its writer and its one reader: universal_neurons/artifacts.py.
"""
from __future__ import annotations

import errno
import os
import socket
import tempfile
from contextlib import contextmanager
from pathlib import Path

from .errors import would


_OVERRIDES: dict[str, str] = {}  # set only inside `overriding(...)`


def _env_path(var: str, default: str | Path) -> Path:
    return Path(_OVERRIDES.get(var) or os.environ.get(var) or default)


@contextmanager
def overriding(**roots: str | Path | None):
    """Within the block, the given roots (e.g. DATASET_DIR=...) replace the environment's, without
    touching os.environ (a script's --output_dir must not leak into later calls in the process)."""
    old = dict(_OVERRIDES)
    _OVERRIDES.update({k: str(v) for k, v in roots.items() if v})
    try:
        yield
    finally:
        _OVERRIDES.clear()
        _OVERRIDES.update(old)


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


# the paper's published dataframes, shipped in the repository (dataframes/README.md), never written
PAPER_DATAFRAMES = Path(__file__).resolve().parent.parent / "dataframes" / "paper" / "interpretable_neurons"


def activation_cache_path(model: str, dataset: str, root: str | Path | None = None) -> Path:
    return (Path(root) if root is not None else activation_dir()) / model_dirname(model) / dataset


def explanation_path(model: str, dataset: str, feature_type: str, layer: int) -> Path:
    return explanation_dir() / model_dirname(model) / dataset / f"{feature_type}_feature" / f"layer_{layer}"


def intervention_path(model: str, dataset: str, *parts: str, root: str | Path | None = None) -> Path:
    """<root>/<model>/<dataset>/<parts...>: parts e.g. ('11.3030', 'fixed_activation_3.0') or ('clean.n256',)."""
    return (Path(root) if root is not None else intervention_dir()).joinpath(model_dirname(model), dataset, *parts)


def attention_deactivation_path(model: str, dataset: str, layer: int, head: int, root: str | Path | None = None) -> Path:
    base = Path(root) if root is not None else results_dir() / "attention_deactivation"
    return base / model_dirname(model) / dataset / f"{layer}.{head}"


def report_path(model: str) -> Path:
    """The report's folder: report.md, figures, explained_neurons.csv."""
    return report_dir() / model_dirname(model)


def zoo_model_path(name: str) -> Path:
    return zoo_dir() / name


# Atomic writes ----------------------------------------------------------------------------------

def artifact_names(root: str | Path) -> list[str]:
    """Sorted names of the finished artifact folders under `root`: never a temporary or dot folder
    (a killed writer's `.<name>.<host>-<pid>.XXXX.tmp`). Every reader that lists folders uses this."""
    root = Path(root)
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")) if root.is_dir() else []


def _tmp_prefix(name: str) -> str:
    return f".{name}.{socket.gethostname()}-{os.getpid()}."


def _owner_alive(tmp_name: str, name: str) -> bool:
    """Whether the process that made temporary `tmp_name` for `name` may still be writing it: a live
    pid on this host; for another host (a shared cluster filesystem) or an unknown name, assume so."""
    rest = tmp_name[len(name) + 2:]  # <host>-<pid>.<random>.tmp; the host may hold dots
    owner = rest[:-len(".tmp")].rsplit(".", 1)[0] if rest.endswith(".tmp") else ""
    host, _, pid = owner.rpartition("-")
    if host != socket.gethostname() or not pid.isdigit():
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def clean_stale_temporaries(path: str | Path) -> list[Path]:
    """Remove the temporaries that killed writers of `path` left beside it; returns what was removed."""
    import shutil

    path = Path(path)
    removed = []
    if path.parent.is_dir():
        for tmp in path.parent.glob(f".{path.name}.*.tmp"):
            if tmp.is_dir() and not _owner_alive(tmp.name, path.name):
                shutil.rmtree(tmp, ignore_errors=True)
                removed.append(tmp)
    return removed


def check_writable(folder: str | Path) -> None:
    """Before a stage computes: `folder` (or its nearest existing ancestor) must be a writable folder, so
    an unusable output is one message at the start, not after hours of work."""
    from .errors import UserError

    p = Path(folder)
    while not p.exists() and p != p.parent:
        p = p.parent
    if not p.is_dir():
        raise UserError(f"cannot write under {folder}: {p} is a file, not a folder; choose another output folder")
    if not os.access(p, os.W_OK | os.X_OK):
        raise UserError(f"cannot write under {folder}: {p} is not writable; choose another output folder")


_WRITE_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.ENOTDIR, errno.EEXIST}


def _write_error(path: Path, e: OSError):
    from .errors import UserError

    why = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is exceeded",
           errno.EROFS: "the file system is read-only", errno.ENOTDIR: "a part of the path is a file, not a folder",
           errno.EEXIST: "a part of the path is a file, not a folder"}.get(e.errno, "permission denied")
    return UserError(f"cannot write {path}: {why} ({e.strerror}); nothing was written there; choose another output "
                     f"folder (e.g. --output_dir or the *_DIR variables)")


@contextmanager
def atomic_path(path: str | Path):
    """Yield a temporary sibling path; rename it onto `path` only if the block succeeds.

    A killed or failing writer therefore never leaves a half-written artifact at `path`; the
    temporaries of killed earlier writers of the same artifact are removed first.
    Works for files and for folders (e.g. datasets.save_to_disk).
    """
    import shutil

    path = Path(path)
    would(f"write {path}")  # check mode (runs.checking) writes nothing
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        clean_stale_temporaries(path)
        tmp = Path(tempfile.mkdtemp(prefix=_tmp_prefix(path.name), suffix=".tmp", dir=path.parent))
    except OSError as e:
        raise _write_error(path, e) from None
    target = tmp / path.name
    try:
        yield target
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        os.replace(target, path)
    except OSError as e:
        if e.errno in _WRITE_ERRNOS:
            raise _write_error(path, e) from None
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def torch_load(path: str | Path, mmap: bool = False):
    """The one way an artifact's .pt file is read: weights_only=True (tensors, dicts, lists, numbers and
    strings only, so a crafted pickle in a shared results folder can never run code), on the CPU.
    A file holding anything else, or a damaged one, is one UserError naming it."""
    import pickle

    import torch

    from .errors import UserError

    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        raise UserError(f"refusing to load {path}: it holds objects other than tensors and plain data (a foreign or "
                        f"crafted file; nothing in it was run): {str(e).splitlines()[0][:200]}") from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise UserError(f"cannot read {path} ({type(e).__name__}: {str(e).splitlines()[0][:200]}); it is damaged or "
                        f"not an artifact of this tool: remake it (--overwrite)") from None


def torch_save_atomic(obj, path: str | Path) -> None:
    """torch.save through a temporary file and a rename."""
    import torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
