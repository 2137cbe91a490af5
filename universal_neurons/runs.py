"""Runs keyed by their settings: what made a finished artifact, and whether a rerun may reuse it.

Every stage that skips finished work writes a record next to its artifact (a JSON dict, written
last, so its presence marks the artifact finished) holding every setting that changes the numbers,
plus the inputs' fingerprints and the code version:

    model / model_2 ...       names as given
    *_fingerprint             models.model_fingerprint (weights), token_datasets.dataset_fingerprint (rows)
    code_version              universal_neurons.__version__ (FORMAT_VERSION bumps it on a format change)

`finished(folder, record_file, want, overwrite)` is the one decision every stage uses:
    no artifact there                 -> False (compute)
    the same record, files complete   -> True (skip)
    another / no record               -> UserError naming the differing settings and --overwrite,
                                         or False with overwrite=True (replace it)
so a rerun with other settings never serves the old result as new and never destroys it silently.

Check mode (`with checking():`, the `universal-neurons done` command the Slurm grid asks): a stage
runs its usual decisions without computing or writing anything. A decision that finds work notes it
(errors.defer) and answers "as if done", so every later decision is still made: a stale artifact
anywhere raises the usual UserError, which outranks the noted work. Where a stage would write
(paths.atomic_path), train a zoo model or download, `Pending` is raised. artifacts.check turns that
into done / todo / stale / error.
"""
from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path

from . import paths
from .errors import _CHECKING, Pending, UserError, defer, is_checking, would  # noqa: F401 (check mode lives beside UserError)

FORMAT_VERSION = 1


_MEMO: dict = {}  # check mode: what several checks share (loaded models), dropped when it ends


@contextmanager
def checking():
    """Within the block, stages decide but never compute or write (see the module docstring)."""
    _CHECKING.append(True)
    try:
        yield
    finally:
        _CHECKING.pop()
        if not _CHECKING:
            _MEMO.clear()


def memo(key, make):
    """Check mode: make() once per key for the whole check (e.g. a model every stage check loads)."""
    if key not in _MEMO:
        _MEMO[key] = make()
    return _MEMO[key]


def code_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        v = version("universal-neurons")
    except PackageNotFoundError:  # a checkout that was not pip-installed
        v = "0+unknown"
    return f"{v}/format-{FORMAT_VERSION}"


def read_record(path: Path) -> dict | None:
    try:
        rec = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return rec if isinstance(rec, dict) else None


def write_record(path: Path, record: dict) -> None:
    with paths.atomic_path(path) as tmp:
        tmp.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")


def differences(have: dict, want: dict, prefix: str = "") -> list[str]:
    """'key old -> new' for every differing setting (nested dicts as 'key.sub')."""
    out = []
    for k in sorted(set(have) | set(want)):
        h, w = have.get(k), want.get(k)
        if isinstance(h, dict) and isinstance(w, dict):
            out += differences(h, w, f"{prefix}{k}.")
        elif h != w:
            out.append(f"{prefix}{k} {h!r} -> {w!r}")
    return out


def finished(folder: Path, record_file: str, want: dict, overwrite: bool, files: tuple[str, ...] = (),
             what: str | None = None, project: tuple[str, ...] | None = None) -> bool:
    """True: `folder` holds this run's finished artifact (skip). False: compute (nothing there, or
    overwrite). Another or no record where an artifact exists: UserError (see the module docstring).
    files: artifact files that must exist for a skip (beyond the record); project: compare only
    these keys of the stored record (for records that also hold results, such as meta.json)."""
    folder = Path(folder)
    record = folder / record_file
    if not folder.exists() or (not record.exists() and not any(p for p in folder.iterdir()
                                                                 if not p.name.startswith("."))):
        paths.check_writable(folder.parent)
        return defer(f"compute {what or folder}")  # check mode: as if done (see the module docstring)  # nothing there (a killed writer's temporaries do not count)
    return decide(record, want, overwrite, [folder / f for f in files], what or str(folder), project)


def decide(record: Path, want: dict, overwrite: bool, files: list[Path] = (), what: str | None = None,
           project: tuple[str, ...] | None = None) -> bool:
    """finished()'s decision for an artifact that exists (a folder or a file) and its record file."""
    record = Path(record)
    have = read_record(record)
    record_file = record.name
    if have is not None and project is not None:
        have = {k: have.get(k) for k in project}
    if have == want and all(Path(f).exists() for f in files):
        return True
    if overwrite or have == want:  # the same run with a file missing: recompute it
        paths.check_writable(record.parent)
        return defer(f"compute {what or record.parent}")
    if have is None:
        why = f"has no record of its settings ({record_file}: an interrupted run or an earlier version)"
    else:
        why = "was made with other settings: " + ", ".join(differences(have, want))
    raise UserError(f"{what or record.parent} {why}; pass --overwrite to replace it")
