"""Which implementation computes the RWKV-7 recurrence: feature detection and dispatch.

Choices (the model's ``kernel`` setting; values it does not list, e.g. ``sdpa``, mean ``auto``):

- ``auto``: flash-linear-attention's ``chunk_rwkv7`` on CUDA when installed, else effzoo's Triton
  chunk scan on CUDA, else the PyTorch chunked form; a single decoding token uses the recurrence.
- ``fla``: flash-linear-attention (``pip install 'effzoo[fla]'``); CUDA only.
- ``triton``: effzoo's own kernels (:mod:`effzoo_plugins.rwkv.triton_chunk`).
- ``torch``: the chunked PyTorch form (any device; the CPU training path).
- ``reference``: the per-token oracle, resolved as ``sequential`` (slow; for checking).
"""
from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable

import torch
from torch import Tensor

from effzoo.plugin import ConfigError
from effzoo_plugins.feature_detection import installed, triton_interpreting

from .reference import wkv7_chunked, wkv7_sequential

KERNELS = ("auto", "reference", "fla", "triton", "torch")
LOG_DECAY_BOUND = -math.exp(-0.5)  # the block's log decay lies in (LOG_DECAY_BOUND, 0)
FLA_MISSING = (
    "flash-linear-attention is not installed, so its chunk_rwkv7 kernel is unavailable; "
    "install it with `pip install 'effzoo[fla]'` (pure Python + Triton, needs a CUDA GPU), "
    "or use kernel='triton' / 'torch'"
)


def has_fla() -> bool:
    """Whether flash-linear-attention can be imported (checked without importing it)."""
    return installed("fla")


def has_triton() -> bool:
    """Whether triton can be imported (checked without importing it)."""
    return installed("triton")


@functools.cache
def fla_chunk_rwkv7() -> Callable[..., tuple[Tensor, Tensor]]:
    """flash-linear-attention's ``chunk_rwkv7`` (raises ImportError with install advice when missing)."""
    try:
        from fla.ops.rwkv7 import chunk_rwkv7
    except ImportError as exc:
        reason = FLA_MISSING if not has_fla() else f"flash-linear-attention is installed but failed to import: {exc}"
        raise ImportError(reason) from exc
    return chunk_rwkv7


def _fla_accepts_lower_bound() -> bool:
    return "lower_bound" in inspect.signature(fla_chunk_rwkv7()).parameters


def configured_kernel(kernel: str) -> str:
    """What a model's ``kernel`` setting asks of RWKV: itself when it is one of ``KERNELS``, else ``auto``
    (another component's kernel, validated by ``make_config``)."""
    return kernel if kernel in KERNELS else "auto"


def check_kernel(name: str) -> str:
    """``name`` if it is a known RWKV kernel, else a ConfigError listing the choices."""
    if name not in KERNELS:
        raise ConfigError(f"unknown kernel {name!r} for RWKV; choose one of {', '.join(KERNELS)}")
    return name


def resolve_kernel(kernel: str, device_type: str, length: int, key_dim: int, value_dim: int) -> str:
    """The concrete implementation ``kernel`` means here (raises ConfigError when it cannot run)."""
    check_kernel(kernel)
    if kernel == "reference":
        return "sequential"
    if kernel == "auto":
        if length == 1:
            return "sequential"
        if device_type == "cuda" and has_fla():
            return "fla"
        if device_type == "cuda" and has_triton():
            from .triton_chunk import supports

            if supports(key_dim, value_dim):
                return "triton"
        return "torch"
    if kernel == "fla" and device_type != "cuda":
        raise ConfigError(f"kernel='fla' needs CUDA tensors, got {device_type}; use 'torch' on this device")
    if kernel == "fla" and not has_fla():
        raise ConfigError(FLA_MISSING)
    if kernel == "triton":
        _check_triton(device_type, key_dim, value_dim)
    return kernel


def _check_triton(device_type: str, key_dim: int, value_dim: int) -> None:
    """Raise ConfigError when effzoo's Triton scan cannot run here (no triton, no GPU, head sizes)."""
    if not has_triton():
        raise ConfigError("kernel='triton' needs the triton package (`pip install 'effzoo[cuda]'`)")
    from .triton_chunk import SUPPORTED_DIMS, supports

    if device_type != "cuda" and not triton_interpreting():
        raise ConfigError(f"kernel='triton' needs CUDA tensors (or TRITON_INTERPRET=1 on CPU), got "
                          f"{device_type}; use 'torch' on this device")
    if not supports(key_dim, value_dim):
        raise ConfigError(f"kernel='triton' needs head sizes in {SUPPORTED_DIMS}, got K={key_dim}, "
                          f"V={value_dim}; use kernel='torch' (or 'auto', which falls back to it)")


def wkv7(
    r: Tensor, w: Tensor, k: Tensor, v: Tensor, a: Tensor, b: Tensor, state: Tensor | None,
    *, kernel: str = "auto", chunk_size: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Run the recurrence (inputs (B, T, H, K), ``w`` = log decay) with the chosen implementation.

    ``chunk_size`` None picks 32 tokens for the PyTorch form and 64 for the Triton scan.
    """
    device = v.device.type
    chosen = resolve_kernel(kernel, device, k.shape[1], k.shape[-1], v.shape[-1])
    if chosen == "fla":
        extra = {"lower_bound": LOG_DECAY_BOUND} if _fla_accepts_lower_bound() else {}
        r, w, k, a, b = (t.to(v.dtype) for t in (r, w, k, a, b))
        return fla_chunk_rwkv7()(
            r, w, k, v, a, b, scale=1.0, initial_state=None if state is None else state.float(),
            output_final_state=True, **extra,
        )
    with torch.autocast(device, enabled=False):  # the chunked algebra needs float32 matmuls
        if chosen == "sequential":
            return wkv7_sequential(r, w, k, v, a, b, state)
        if chosen == "torch":
            return wkv7_chunked(r, w, k, v, a, b, state, chunk_size or 32)
        from .triton_chunk import wkv7_triton

        return wkv7_triton(r, w, k, v, a, b, state, chunk_size=chunk_size or 64)
