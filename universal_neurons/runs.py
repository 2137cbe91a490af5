"""Runs keyed by their settings: what made a finished artifact, and whether a rerun may reuse it.

Every stage that skips finished work writes a record next to its artifact (a JSON dict, written
last, so its presence marks the artifact finished) holding every setting that changes the numbers,
plus the inputs' fingerprints and the code version:

    model / model_2 ...       names as given
    *_fingerprint             `model_fingerprint` (weights) and `dataset_fingerprint` (token rows)
    code_version              universal_neurons.__version__ (FORMAT_VERSION bumps it on a format change)

`finished(folder, record_file, want, overwrite)` is the one decision every stage uses:
    no artifact there                 -> False (compute)
    the same record, files complete   -> True (skip)
    another / no record               -> UserError naming the differing settings and --overwrite,
                                         or False with overwrite=True (replace it)
so a rerun with other settings never serves the old result as new and never destroys it silently.
"""
from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from pathlib import Path

from . import paths
from .errors import UserError

FORMAT_VERSION = 1
WEIGHT_FILES = ("*.safetensors", "pytorch_model*.bin", "model*.bin")


def code_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        v = version("universal-neurons")
    except PackageNotFoundError:  # a checkout that was not pip-installed
        v = "0+unknown"
    return f"{v}/format-{FORMAT_VERSION}"


@lru_cache(maxsize=64)
def _hash_files(files: tuple[tuple[str, int, int], ...]) -> str:
    """sha1 over the content of (path, size, mtime_ns) files (size and mtime key the cache only)."""
    h = hashlib.sha1()
    for path, size, _ in files:
        h.update(f"{Path(path).name}:{size}:".encode())
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 24), b""):
                h.update(chunk)
    return h.hexdigest()[:16]


def _folder_fingerprint(folder: Path) -> str | None:
    files = sorted({p for pat in WEIGHT_FILES for p in folder.glob(pat)})
    if not files:
        return None
    return _hash_files(tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files))


def model_fingerprint(name: str) -> str:
    """A fingerprint of a model's weights: the content hash of its weight files (zoo models and local
    folders; a hub model from the local Hugging Face cache), else 'hub:<id>' (the hub's name only)."""
    from . import zoo
    from .models import hub_id, is_local_folder

    if zoo.is_zoo_name(name):
        if not zoo.is_trained(name):  # (re)trained on load: nothing recorded can match it yet
            return f"zoo-untrained:{name}"
        folder = zoo.model_dir(name)
    elif is_local_folder(name):
        folder = Path(name)
    else:
        try:
            from huggingface_hub import snapshot_download

            folder = Path(snapshot_download(hub_id(name), local_files_only=True))
        except Exception:  # not cached: the name is all we know before loading
            return f"hub:{hub_id(name)}"
    return _folder_fingerprint(folder) or f"folder:{folder.resolve().name}"


def dataset_fingerprint(name: str, family: str) -> str:
    """The content fingerprint save_token_dataset recorded (datasets' own _fingerprint for older folders)."""
    from .token_datasets import CONTENT_FILE

    folder = paths.token_dataset_path(family, name)
    try:
        return (folder / CONTENT_FILE).read_text().strip()
    except OSError:
        pass
    try:
        return "datasets:" + json.loads((folder / "state.json").read_text())["_fingerprint"]
    except (OSError, ValueError, KeyError):
        raise UserError(f"token dataset {name!r} not found under {folder.parent} (run make_dataset.py)") from None


def read_record(path: Path) -> dict | None:
    try:
        rec = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return rec if isinstance(rec, dict) else None


def write_record(path: Path, record: dict) -> None:
    with paths.atomic_path(path) as tmp:
        tmp.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")


def differences(have: dict, want: dict) -> list[str]:
    return [f"{k} {have.get(k)!r} -> {want.get(k)!r}" for k in sorted(set(have) | set(want)) if have.get(k) != want.get(k)]


def finished(folder: Path, record_file: str, want: dict, overwrite: bool, files: tuple[str, ...] = (),
             what: str | None = None, project: tuple[str, ...] | None = None) -> bool:
    """True: `folder` holds this run's finished artifact (skip). False: compute (nothing there, or
    overwrite). Another or no record where an artifact exists: UserError (see the module docstring).
    files: artifact files that must exist for a skip (beyond the record); project: compare only
    these keys of the stored record (for records that also hold results, such as meta.json)."""
    folder = Path(folder)
    record = folder / record_file
    if not folder.exists() or (not record.exists() and not any(folder.iterdir())):
        return False
    have = read_record(record)
    if have is not None and project is not None:
        have = {k: have.get(k) for k in project}
    if have == want and all((folder / f).exists() for f in files):
        return True
    if overwrite or have == want:  # the same run with a file missing: recompute it
        return False
    if have is None:
        why = f"has no record of its settings ({record_file}: an interrupted run or an earlier version)"
    else:
        why = "was made with other settings: " + ", ".join(differences(have, want))
    raise UserError(f"{what or folder} {why}; pass --overwrite to replace it")
