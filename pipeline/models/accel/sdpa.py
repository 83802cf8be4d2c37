"""Which PyTorch SDPA kernel attention uses on CUDA (`--sdpa-backend`).

`auto` leaves PyTorch's own choice (flash attention first, then the memory-efficient kernel, on the
versions we use), so default images do not change. Naming a backend puts it first, the others after it in
the order flash, memory-efficient, cuDNN, math (math always stays as the fallback, so a shape or dtype a
fast kernel refuses, such as an fp32 VAE's attention, still runs). `--opt-sdp-no-mem-attention` (A1111's
deterministic mode) drops the memory-efficient kernel. The order is PyTorch's process-wide SDPA setting
(`torch.nn.attention.sdpa_kernel(..., set_priority=True)`, held open until the next choice), set when a
model is prepared for a CUDA device, before any compilation: compiled graphs choose their kernel at trace
time from the same setting. On the CPU nothing is changed: PyTorch has one CPU kernel family."""
from __future__ import annotations

import contextlib

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

__all__ = ["SDPA_BACKENDS", "backend_order", "current_order", "reset_sdpa_backend", "set_sdpa_backend"]

_BY_NAME = {"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
            "cudnn": SDPBackend.CUDNN_ATTENTION, "math": SDPBackend.MATH}
SDPA_BACKENDS = ("auto", *_BY_NAME)
_AUTO = ("flash", "efficient", "cudnn", "math")
_held = contextlib.ExitStack()
_current: list[SDPBackend] | None = None


def backend_order(choice: str, no_mem_efficient: bool = False) -> list[SDPBackend]:
    """The kernels in priority order for `choice` (one of SDPA_BACKENDS); math is always there, last
    unless it was named."""
    if choice not in SDPA_BACKENDS:
        raise ValueError(f"SDPA backend must be one of {', '.join(SDPA_BACKENDS)}, got {choice!r}")
    names = [n for n in _AUTO if n != choice]
    if choice != "auto":
        names.insert(0, choice)
    if no_mem_efficient:
        names = [n for n in names if n != "efficient"]
    return [_BY_NAME[n] for n in names]


def set_sdpa_backend(device: torch.device, choice: str = "auto", no_mem_efficient: bool = False
                     ) -> list[SDPBackend] | None:
    """Make `choice`'s order PyTorch's SDPA setting when `device` is CUDA and a backend is named; returns the
    order, or None where nothing was changed (`auto`, or not CUDA)."""
    global _current
    order = backend_order(choice, no_mem_efficient)
    if device.type != "cuda" or choice == "auto":
        return None
    if order != _current:
        _held.close()
        _held.enter_context(sdpa_kernel(order, set_priority=True))
        _current = order
    return order


def current_order() -> list[SDPBackend] | None:
    """The order set by `set_sdpa_backend`, None before any."""
    return _current


def reset_sdpa_backend() -> None:
    """Back to PyTorch's own order (the CUDA tests use it between backends)."""
    global _current
    _held.close()
    _current = None
