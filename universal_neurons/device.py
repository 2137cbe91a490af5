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


# Precision: one switch for every stage ------------------------------------------------------------
#
#   fp32  true float32 everywhere (TF32 off); the correlation GEMM keeps a compensated accumulator
#   tf32  float32 storage, TF32 tensor-core products (10-bit mantissa inputs, fp32 accumulation) for
#         every float32 matmul of the stage: forward, Gram, cross GEMM, finaliser
#   bf16  as tf32, but the correlation GEMM's inputs are bfloat16 (8-bit mantissa), its output fp32
#   fp16  as bf16 with float16 inputs (overflows above 65504: activations that large are rare)
#   auto  tf32 on CUDA, fp32 elsewhere (a CPU has no TF32)
PRECISIONS = ("auto", "fp32", "tf32", "bf16", "fp16")
GEMM_INPUT_DTYPES = {"fp32": torch.float32, "tf32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_precision(precision: str | None, device: torch.device) -> str:
    """'auto'/None -> 'tf32' on CUDA, else 'fp32'. tf32 needs CUDA; bf16 / fp16 on a CPU round the
    GEMM's inputs and multiply in fp32 (the same numbers as the tensor cores, no faster)."""
    precision = "auto" if precision is None else str(precision)
    if precision not in PRECISIONS:
        raise UserError(f"unknown precision {precision!r}; choose from {PRECISIONS}")
    if precision == "auto":
        return "tf32" if device.type == "cuda" else "fp32"
    if precision == "tf32" and device.type != "cuda" and not is_checking():  # a check runs on a login node
        raise UserError(f"--precision tf32 needs a CUDA device (got {device}); use fp32 on a CPU")
    return precision


class matmul_precision:
    """Context: TF32 on or off for every float32 matmul / convolution on CUDA inside the block (on for
    tf32 / bf16 / fp16, off for fp32), the previous setting restored after. A no-op on a CPU."""

    def __init__(self, precision: str):
        self.tf32 = precision != "fp32"

    def __enter__(self):
        self.saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = self.tf32
        return self

    def __exit__(self, *exc):
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = self.saved
        return False


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A CPU tensor on `device`; to CUDA through pinned memory without blocking the host (the copy is
    ordered on the stream, so kernels that use it wait for it, and the host never does)."""
    if device.type == "cuda" and t.device.type == "cpu":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def free_bytes(device: torch.device) -> int | None:
    """Free memory on a CUDA device (what budgets default to); None on a CPU or in a check."""
    if device.type != "cuda" or is_checking():
        return None
    return torch.cuda.mem_get_info(device)[0]
