"""Device and dtype handling, in one place.

Scripts take the original's flags (--device, --model_1_device, --correlation_device, ...);
each is passed through `resolve_device`, so 'cuda' on a machine without a GPU fails with one
clear message instead of a stack trace deep inside torch.
"""
from __future__ import annotations

import torch

from .errors import UserError, is_checking

DTYPES = {
    "float32": torch.float32, "fp32": torch.float32, "32": torch.float32,
    "float16": torch.float16, "fp16": torch.float16, "16": torch.float16,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float64": torch.float64, "fp64": torch.float64, "64": torch.float64,
}


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_device(device: str | torch.device | None) -> torch.device:
    """'auto'/None -> cuda if available else cpu; validates cuda/mps requests. A check (runs.checking,
    e.g. the Slurm grid on a login node) computes nothing: always cpu."""
    if is_checking():
        return torch.device("cpu")
    if device is None or str(device) == "auto":
        dev = torch.device(default_device())
        why = ""
        if dev.type == "cpu" and torch.version.cuda is not None:  # a CUDA build that finds no usable GPU
            why = " (auto: this torch is built for CUDA but finds no usable GPU: check the driver / CUDA_VISIBLE_DEVICES)"
        elif dev.type == "cpu":
            why = " (auto: no CUDA on this machine)"
        _announce(dev, why)
        return dev
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise UserError(f"unknown device {device!r}: {e}") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"device {device!r} requested but CUDA is not available on this machine "
                            "(install a CUDA build of torch, or pass --device cpu)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UserError(f"device {device!r} requested but only {torch.cuda.device_count()} GPU(s) are visible")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"device {device!r} requested but MPS is not available")
    _announce(dev, "")
    return dev


_ANNOUNCED: set[str] = set()


def _announce(dev: torch.device, why: str) -> None:
    """Say once per process which device a stage runs on (a GPU job silently on the CPU runs for days)."""
    if str(dev) not in _ANNOUNCED:
        _ANNOUNCED.add(str(dev))
        name = f" ({torch.cuda.get_device_name(dev)})" if dev.type == "cuda" else ""
        print(f"device: {dev}{name}{why}", flush=True)


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype:
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return DTYPES[str(dtype).lower()]
    except KeyError:
        raise UserError(f"unknown dtype {dtype!r}; choose one of {sorted(DTYPES)}") from None


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
