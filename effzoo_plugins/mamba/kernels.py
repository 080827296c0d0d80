"""Which scan/convolution implementation runs: feature detection and dispatch.

Backends (the model's ``kernel`` setting; values it does not list, e.g. ``sdpa``, mean ``auto``):

- ``reference``: pure PyTorch (:mod:`.ssd_reference`, :mod:`.selective_scan_reference`), any device;
- ``triton``: effzoo's own chunked-SSD Triton kernels (Mamba-2 only; CUDA, or CPU under
  ``TRITON_INTERPRET=1``), no compile step;
- ``mamba_ssm``: the ``mamba-ssm`` / ``causal-conv1d`` kernels (``pip install 'effzoo[kernels]'``,
  compiled against your CUDA toolkit);
- ``auto``: ``mamba_ssm`` on CUDA when importable, else ``triton`` on CUDA (Mamba-2, head_dim and
  d_state <= ``TRITON_MAX_DIM``), else reference (with a warning on CUDA).
"""
from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
from torch import Tensor

from effzoo.plugin import ConfigError
from effzoo.plugin import MixContext
from effzoo_plugins.feature_detection import import_error, triton_interpreting

BACKENDS = ("auto", "reference", "triton", "mamba_ssm")
TRITON_MAX_DIM = 256  # effzoo's SSD kernel holds a whole head_dim / d_state row in one tile
INSTALL_HINT = (
    "install the CUDA kernels with `pip install 'effzoo[kernels]'` (equivalently "
    "`pip install mamba-ssm causal-conv1d --no-build-isolation`; they compile against the installed torch "
    "and CUDA toolkit), or use kernel='triton' / 'reference'"
)


def mamba_ssm_missing() -> str | None:
    """Why the mamba-ssm kernels are unusable (None when they import)."""
    for module in ("mamba_ssm.ops.triton.ssd_combined", "mamba_ssm.ops.selective_scan_interface"):
        error = import_error(module)
        if error:
            return f"mamba-ssm is not usable ({error}); {INSTALL_HINT}"
    return None


def causal_conv1d_missing() -> str | None:
    """Why the causal-conv1d kernel is unusable (None when it imports)."""
    error = import_error("causal_conv1d")
    return None if error is None else f"causal-conv1d is not usable ({error}); {INSTALL_HINT}"


def fla_missing() -> str | None:
    """Why flash-linear-attention is unusable (benchmarks compare against it; never required)."""
    error = import_error("fla.ops.simple_gla")
    return None if error is None else (
        f"flash-linear-attention is not usable ({error}); `pip install 'effzoo[fla]'`")


def triton_missing(device: torch.device) -> str | None:
    """Why effzoo's Triton kernels cannot run on ``device`` (None when they can)."""
    error = import_error("triton")
    if error:
        return (f"triton is not installed or fails to import ({error}); `pip install triton` "
                "(it ships with CUDA builds of torch)")
    if device.type == "cuda" or triton_interpreting():
        return None
    return f"the Triton kernels need a CUDA device (or TRITON_INTERPRET=1 on CPU), got {device.type}"


def triton_dims_unsupported(dims: tuple[int, ...]) -> str | None:
    """Why effzoo's SSD kernels cannot take these (head_dim, d_state) sizes (None when they can)."""
    if max(dims, default=0) <= TRITON_MAX_DIM:
        return None
    return f"head_dim and d_state must be <= {TRITON_MAX_DIM} for the Triton SSD kernels, got {dims}"


def configured_backend(kernel: str) -> str:
    """The backend a model's ``kernel`` setting asks of the SSM: itself when it is one of ``BACKENDS``,
    else ``auto`` (another component's kernel, validated by ``make_config``)."""
    return kernel if kernel in BACKENDS else "auto"


def check_backend(name: str) -> str:
    """``name`` if it is a known SSM backend, else a ConfigError listing the choices."""
    if name not in BACKENDS:
        raise ConfigError(f"unknown kernel {name!r} for Mamba; choose one of {', '.join(BACKENDS)}")
    return name


def requested_backend(configured: str, ctx: MixContext | None) -> str:
    """The block's backend, or ``reference`` when the model runs with ``backend="reference"``."""
    return "reference" if ctx is not None and ctx.backend == "reference" else configured


def resolve_backend(requested: str, device: torch.device, *, has_triton_kernel: bool,
                    dims: tuple[int, ...] = ()) -> str:
    """The backend that will run for ``requested`` on ``device``; explicit requests that cannot run raise.
    ``dims`` are the block's (head_dim, d_state), checked against what the Triton kernels handle."""
    check_backend(requested)
    if requested == "auto":
        if device.type != "cuda":
            return "reference"
        if mamba_ssm_missing() is None:
            return "mamba_ssm"
        if not has_triton_kernel or triton_missing(device) is not None:
            return "reference"
        why = triton_dims_unsupported(dims)
        if why:
            warnings.warn(f"kernel='auto' runs the PyTorch reference SSD on CUDA: {why}; "
                          f"install mamba-ssm for fused kernels ({INSTALL_HINT})", stacklevel=2)
            return "reference"
        return "triton"
    if requested == "mamba_ssm":
        why = mamba_ssm_missing() or (None if device.type == "cuda" else "mamba-ssm kernels need a CUDA device")
        if why:
            raise ConfigError(f"kernel='mamba_ssm' cannot run: {why}")
    if requested == "triton":
        if not has_triton_kernel:
            raise ConfigError("kernel='triton' exists for Mamba-2 (SSD) only; Mamba-1 uses "
                              "'mamba_ssm' (CUDA) or 'reference'")
        why = triton_missing(device) or triton_dims_unsupported(dims)
        if why:
            raise ConfigError(f"kernel='triton' cannot run: {why}")
    return requested


def ssd_function(backend: str) -> Callable[..., tuple[Tensor, Tensor]]:
    """``f(x, dt, A, B, C, chunk_size, initial_state) -> (y, final_state)`` for a resolved backend."""
    if backend == "triton":
        from .triton_ssd import ssd_chunked_triton

        return ssd_chunked_triton
    if backend == "mamba_ssm":
        return _ssd_mamba_ssm
    from .ssd_reference import ssd_chunked

    return ssd_chunked


def _ssd_mamba_ssm(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, chunk_size: int,
                   initial_state: Tensor | None = None) -> tuple[Tensor, Tensor]:
    from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined

    y, final = mamba_chunk_scan_combined(
        x, dt, A, B, C, chunk_size, initial_states=initial_state, return_final_states=True)
    return y, final.float()


def selective_scan_mamba_ssm(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor,
                             initial_state: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Mamba-1 scan by mamba-ssm's CUDA kernel (layout (batch, channels, T)); no initial state."""
    if initial_state is not None:
        raise ConfigError("mamba-ssm's selective_scan_fn does not take an initial state; "
                          "prefill a cache with kernel='reference'")
    from mamba_ssm.ops.selective_scan_interface import selective_scan_fn

    def channels_first(t: Tensor) -> Tensor:  # the kernel wants (batch, channels, T) in the input dtype
        return t.to(x.dtype).transpose(1, 2).contiguous()

    y, final = selective_scan_fn(channels_first(x), channels_first(dt), A.float(), channels_first(B),
                                 channels_first(C), return_last_state=True)
    return y.transpose(1, 2), final.float()


def causal_conv1d_cuda(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """SiLU(causal depthwise conv) of ``x`` (batch, channels, T) by the causal-conv1d kernel."""
    from causal_conv1d import causal_conv1d_fn

    return causal_conv1d_fn(x, weight, bias, activation="silu")
