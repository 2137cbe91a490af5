"""Errors a user can cause. CLIs turn them into one message on stderr and exit code 2."""
from __future__ import annotations

import functools
import sys


class UserError(Exception):
    """Bad input: unknown model, missing dataset, malformed neuron spec, mismatched tokenizers..."""


EXIT_USER_ERROR = 2


class Pending(Exception):
    """Check mode (runs.checking): the stage has work to do; the message says which."""


_CHECKING: list[bool] = []  # non-empty inside runs.checking(): decide, never compute or write


_DEFERRED: list[str] = []  # check mode: work a decision found, noted while the later decisions are made


def is_checking() -> bool:
    return bool(_CHECKING)


def defer(what: str) -> bool:
    """A decision found work to do: in check mode note it and answer True ("as if done"), so that the
    stage goes on to its other decisions (a later one may be stale, which outranks todo); else False."""
    if _CHECKING:
        _DEFERRED.append(what)
        return True
    return False


def would(what: str) -> None:
    """Called before work that check mode must not do (compute, write, train, download)."""
    if _CHECKING:
        raise Pending(what)


def cli_entry(func):
    """Decorator for script `main` functions: UserError -> 'error: ...' on stderr, exit 2."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except UserError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(EXIT_USER_ERROR)
        except KeyboardInterrupt:
            print("interrupted; finished artifacts are kept, partial ones were not written", file=sys.stderr)
            sys.exit(130)

    return wrapper


def parse_neuron(spec: str) -> tuple[int, int]:
    """'3.1024' -> (3, 1024). Rejects '3.99999'-style floats only by range check later; rejects junk now."""
    parts = str(spec).strip().split(".")
    if len(parts) != 2 or not all(p.isascii() and p.isdigit() for p in parts):  # ASCII: never superscripts
        raise UserError(f"malformed neuron spec {spec!r}: expected LAYER.NEURON, e.g. 3.1024")
    return int(parts[0]), int(parts[1])


def check_neuron(layer: int, neuron: int, n_layers: int, d_mlp: int, spec: str | None = None) -> None:
    if not (0 <= layer < n_layers and 0 <= neuron < d_mlp):
        shown = spec if spec is not None else f"{layer}.{neuron}"
        raise UserError(f"neuron {shown} is out of range for a model with {n_layers} layers x {d_mlp} neurons")


def check_n_seq(n_seq: int) -> int:
    """--n_seq: -1 = every sequence, N > 0 = the first N; anything else is one clear error."""
    if n_seq != -1 and n_seq < 1:
        raise UserError(f"--n_seq must be -1 (every sequence) or a positive number of sequences, got {n_seq}")
    return n_seq
