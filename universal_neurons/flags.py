"""The flags every stage shares, defined once: a typed dataclass whose fields generate the argparse flags.

    CommonOptions   device, batch_size, n_seq, overwrite   (one name, type, default and meaning each)

    add_common(parser, "device", "n_seq", ...)   adds those fields' flags to a script's parser
    add_dataclass(parser, StageConfig)           a stage config's flags from its fields (metadata: help,
                                                 choices, nargs, action, required; common=True fields
                                                 take their flag from CommonOptions)

A script may pass another default (e.g. `universal-neurons run --device cpu`), never another meaning.
"""
from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field


@dataclass(frozen=True)
class CommonOptions:
    device: str = field(default="auto", metadata={"help": "cpu, cuda, cuda:1, ... (auto: cuda if available)"})
    batch_size: int = field(default=32, metadata={"help": "sequences per batch"})
    n_seq: int = field(default=-1, metadata={"help": "use only the first N sequences (-1 = all; 0 is an error)"})
    overwrite: bool = field(default=False, metadata={
        "help": "replace finished artifacts made with other settings (default: stop and say which)"})


FIELDS = {f.name: f for f in dataclasses.fields(CommonOptions)}


class StageConfig:
    """Base of the stage configs (dataclasses): `from_args` turns parsed flags into the typed config.
    The common fields a config has are checked when it is made (CLI, pipeline and Slurm alike)."""

    def __post_init__(self):
        from .errors import UserError, check_n_seq

        batch_size = getattr(self, "batch_size", None)
        if batch_size is not None and batch_size < 1:
            raise UserError(f"--batch_size must be >= 1 (got {batch_size})")
        if hasattr(self, "n_seq"):
            check_n_seq(self.n_seq)

    @classmethod
    def from_args(cls, ns):
        return ns if isinstance(ns, cls) else cls(**{f.name: getattr(ns, f.name) for f in dataclasses.fields(cls)})


def add_common(parser: argparse.ArgumentParser, *names: str, **defaults) -> None:
    """Add the flags of the named CommonOptions fields (all of them by default); `defaults` overrides
    a field's default for this script only."""
    for name in names or FIELDS:
        f = FIELDS[name]
        default = defaults.get(name, f.default)
        if f.type in (bool, "bool"):
            parser.add_argument(f"--{name}", action="store_true", default=default, help=f.metadata["help"])
        else:
            kind = {"int": int, "str": str}.get(f.type, f.type) if isinstance(f.type, str) else f.type
            parser.add_argument(f"--{name}", type=kind, default=default, help=f.metadata["help"])


def add_dataclass(parser: argparse.ArgumentParser, cls, defaults: dict | None = None) -> None:
    """Flags from a stage config dataclass: one flag per field, --<field> (or metadata 'flag', plus
    'aliases'), typed by metadata 'type'; `defaults` overrides defaults for this script (e.g. correlations.py's)."""
    defaults = defaults or {}
    for f in dataclasses.fields(cls):
        meta = dict(f.metadata)
        if meta.pop("common", False):  # the field may carry its own default (e.g. run's --device cpu)
            default = defaults.get(f.name, f.default if f.default is not dataclasses.MISSING else FIELDS[f.name].default)
            add_common(parser, f.name, **{f.name: default})
            continue
        kw = {k: meta[k] for k in ("help", "choices", "nargs", "action", "required") if k in meta}
        if f.default is not dataclasses.MISSING:
            kw["default"] = defaults.get(f.name, f.default)
        elif f.default_factory is not dataclasses.MISSING:
            kw["default"] = defaults.get(f.name, f.default_factory())
        if "action" not in kw and "type" in meta:
            kw["type"] = meta["type"]
        parser.add_argument(f"--{meta.get('flag', f.name)}", *meta.get("aliases", ()), dest=f.name, **kw)
