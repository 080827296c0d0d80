"""Context parallel (``--cp N``) on torch's own engine, as torchtitan runs it.

Each step's forward and backward run inside ``torch.distributed.tensor.experimental.context_parallel``:
it cuts every sequence of the batch into 2N chunks, gives rank r of the ``cp`` mesh dimension chunks r and
2N-1-r (head-tail load balancing: every rank gets the same share of the causal triangle), and turns each
causal ``F.scaled_dot_product_attention`` into ring attention, the keys and values passed round the ranks.
The decoder takes the matching shard of the positions (``token_positions``), so RoPE and position
embeddings see every token's place in the whole sequence. Parameters are replicated over ``cp``: their
gradients are averaged over dp x cp (``model_parallel.sync_gradients``).

torch's ring attention dispatches the CUDA SDPA kernels only (flash, memory-efficient, cuDNN): elsewhere,
or for a component that mixes tokens any other way, ``check_context_parallel`` refuses before any work.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from ..interfaces import Component

# What torch's context_parallel turns into ring attention (its dispatch table of aten ops).
RING_KERNELS = "flash, memory-efficient and cuDNN scaled_dot_product_attention on CUDA"


def check_device(backend: str) -> None:
    """ConfigError unless the run is on CUDA, the only place torch's ring attention dispatches."""
    if backend not in ("auto", "cuda") or not torch.cuda.is_available():
        where = f"the {backend} backend" if backend not in ("auto", "cuda") else "this machine (no CUDA device)"
        raise ConfigError(f"--cp needs CUDA: torch.distributed.tensor.experimental.context_parallel shards "
                          f"attention only through the {RING_KERNELS}, and {where} has none; train with --cp 1")


def check_context_parallel(model: nn.Module, cp: int, *, backend: str, kernel: str, pp: int,
                           compile: bool | None, seq_len: int | None) -> None:
    """ConfigError, naming what is missing, for a ``--cp`` run that cannot work (before anything is built):
    no CUDA, a component that does not declare ``supports_context_parallel()``, a non-SDPA attention
    kernel, pipeline stages or an explicit ``--compile`` with it, or a sequence not split evenly."""
    check_device(backend)
    if kernel not in ("auto", "sdpa"):
        raise ConfigError(f"--cp {cp}: kernel={kernel} is not scaled_dot_product_attention, the only attention "
                          "context_parallel shards; use kernel=auto or kernel=sdpa")
    blocker = context_parallel_blocker(model)
    if blocker is not None:
        raise ConfigError(f"--cp {cp}: {blocker} declares no context-parallel support "
                          "(Component.supports_context_parallel: its token mixing must be causal "
                          "scaled_dot_product_attention at the positions in MixContext); train it with --cp 1")
    if pp > 1:
        raise ConfigError(f"--cp {cp} with --pp {pp}: the pipeline schedule runs the stages outside the "
                          "context-parallel region; combine --cp with --tp and data parallelism only")
    if compile:
        raise ConfigError(f"--cp {cp} with --compile: context_parallel swaps scaled_dot_product_attention for ring "
                          "attention around each step, which compiled blocks would not see; drop --compile")
    if seq_len is not None:
        check_sequence_split(seq_len, cp)


def check_sequence_split(seq_len: int, cp: int) -> None:
    """ConfigError unless ``seq_len`` splits into the 2 x cp equal chunks of head-tail load balancing."""
    if seq_len % (2 * cp):
        raise ConfigError(f"--cp {cp} splits each sequence into {2 * cp} equal chunks (two per rank, for load "
                          f"balance), and --seq-len {seq_len} is not a multiple of {2 * cp}")


def context_parallel_blocker(model: nn.Module) -> str | None:
    """The first component (outermost first) that does not support context parallelism, as
    'Name (at path)', or None when every one does."""
    for name, module in model.named_modules():
        if isinstance(module, Component) and not module.supports_context_parallel():
            return f"{type(module).__name__} (at {name or 'the model'})"
    return None


def prepare(mesh: Any) -> None:
    """One-time setup on the device mesh: the (dp, cp) dimensions flattened into ``dp_cp``, over which
    replicated gradients are averaged, and the keys/values passed round by all-gather (torchtitan's
    default: one collective per attention, overlapped with the first local block)."""
    from torch.distributed.tensor.experimental._attention import set_rotate_method

    mesh["dp", "cp"]._flatten("dp_cp")
    set_rotate_method("allgather")


@contextlib.contextmanager
def sequence_shard(cp_mesh: Any, inputs: Tensor, targets: Tensor) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
    """Inside: this rank's shard of ``inputs`` and ``targets`` (B, T/cp) and the positions (T/cp,) of its
    tokens in the whole sequences, with every scaled_dot_product_attention call run as ring attention over
    ``cp_mesh``, restricted to the kernels torch can ring (never the math fallback, which it cannot)."""
    from torch.distributed.tensor.experimental import context_parallel
    from torch.nn.attention import SDPBackend, sdpa_kernel

    # own copies: context_parallel shards its buffers in place, and the loader's inputs and targets are
    # overlapping views of one window tensor
    inputs, targets = inputs.clone(), targets.clone()
    positions = torch.arange(inputs.shape[1], device=inputs.device)
    buffers = [inputs, targets, positions]
    kernels = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION]
    with context_parallel(cp_mesh, buffers=buffers, buffer_seq_dims=[1, 1, 0], no_restore_buffers=set(buffers)):
        with sdpa_kernel(kernels):
            try:
                yield inputs, targets, positions
            except RuntimeError as exc:
                if "No available kernel" not in str(exc):
                    raise
                raise ConfigError(f"--cp: no {RING_KERNELS} kernel takes this attention's inputs "
                                  f"({str(exc).splitlines()[0]}); try --dtype bf16") from exc
