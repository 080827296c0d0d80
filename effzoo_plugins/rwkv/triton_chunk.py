"""RWKV-7 GPU path: chunk-local maps as batched matmuls, the recurrence over chunks as Triton kernels.

The chunk-local part (:func:`~effzoo_plugins.rwkv.reference.chunk_terms`) is the same differentiable
PyTorch code as the CPU path: large batched matmuls and one batched triangular solve. What is
sequential — ``S_{n+1} = P_n S_n + G_n`` over the chunks, and its adjoint
``λ_n = P_n^T λ_{n+1} + ∂L/∂S_n`` in the backward pass — runs in one Triton kernel, one program per
(sequence·head, value tile), keeping the state tile in registers across chunks.

Imported only when the Triton path is chosen (``kernel="triton"`` or ``"auto"`` on CUDA).
Set ``TRITON_INTERPRET=1`` to run the kernels on CPU tensors (slow; used by the tests).
"""
from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
import triton
import triton.language as tl
from torch import Tensor

from effzoo_plugins.feature_detection import triton_interpreting

from .reference import assemble, chunk_terms

SUPPORTED_DIMS = (16, 32, 64, 128)


def _scan(
    mat, add, init, visited, final, n_chunks,
    K: tl.constexpr, V: tl.constexpr, BV: tl.constexpr,
    TRANSPOSE: tl.constexpr, REVERSE: tl.constexpr, HAS_INIT: tl.constexpr,
):
    """x ← M_n x + add_n over chunks n (reversed and with M transposed for the adjoint).

    ``visited[n]`` receives x as it enters step n; ``final`` the x left after the last step.
    """
    i_bh = tl.program_id(0).to(tl.int64)  # batch·heads on axis 0: CUDA limits grid axes 1 and 2 to 65535
    i_v = tl.program_id(1)
    rows = tl.arange(0, K)
    cols = i_v * BV + tl.arange(0, BV)
    tile = rows[:, None] * V + cols[None, :]
    if TRANSPOSE:
        square = rows[None, :] * K + rows[:, None]
    else:
        square = rows[:, None] * K + rows[None, :]
    if HAS_INIT:
        x = tl.load(init + i_bh * K * V + tile).to(tl.float32)
    else:
        x = tl.zeros([K, BV], dtype=tl.float32)
    for step in range(n_chunks):
        if REVERSE:
            n = n_chunks - 1 - step
        else:
            n = step
        base = i_bh * n_chunks + n
        tl.store(visited + base * K * V + tile, x)
        m = tl.load(mat + base * K * K + square)
        x = tl.dot(m, x, input_precision="ieee") + tl.load(add + base * K * V + tile)
    tl.store(final + i_bh * K * V + tile, x)


@functools.cache
def _kernel(interpret: bool) -> Callable[..., Any]:
    """The jitted scan; ``interpret`` is only the cache key (triton.jit picks interpreter or compiler)."""
    return triton.jit(_scan)


def _run_scan(mat: Tensor, add: Tensor, init: Tensor | None, *, adjoint: bool) -> tuple[Tensor, Tensor]:
    """Launch :func:`_scan`: ``mat`` (B, H, N, K, K), ``add`` (B, H, N, K, V), ``init`` (B, H, K, V)."""
    batch, heads, chunks, key_dim, value_dim = add.shape
    mat, add = mat.contiguous(), add.contiguous()
    visited = torch.empty_like(add)
    final = torch.empty(batch, heads, key_dim, value_dim, dtype=add.dtype, device=add.device)
    block_v = min(32, value_dim)
    grid = (batch * heads, value_dim // block_v)
    _kernel(triton_interpreting())[grid](
        mat, add, init.contiguous() if init is not None else final, visited, final, chunks,
        K=key_dim, V=value_dim, BV=block_v, TRANSPOSE=adjoint, REVERSE=adjoint, HAS_INIT=init is not None,
    )
    return visited, final


class ChunkScan(torch.autograd.Function):
    """Differentiable ``S_{n+1} = P_n S_n + G_n``: returns the state entering each chunk and the last."""

    @staticmethod
    def forward(ctx, transition: Tensor, inject: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        entering, final = _run_scan(transition, inject, state, adjoint=False)
        ctx.save_for_backward(transition, entering)
        return entering, final

    @staticmethod
    def backward(ctx, d_entering: Tensor | None, d_final: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        transition, entering = ctx.saved_tensors
        if d_entering is None:
            d_entering = torch.zeros_like(entering)
        d_inject, d_state = _run_scan(transition, d_entering.float(), d_final, adjoint=True)
        d_transition = d_inject @ entering.transpose(-1, -2)
        return d_transition, d_inject, d_state


def supports(key_dim: int, value_dim: int) -> bool:
    """Whether the Triton scan handles these head sizes (``tl.dot`` needs powers of two ≥ 16)."""
    return key_dim in SUPPORTED_DIMS and value_dim in SUPPORTED_DIMS


def wkv7_triton(
    r: Tensor, w: Tensor, k: Tensor, v: Tensor, a: Tensor, b: Tensor,
    state: Tensor | None = None, chunk_size: int = 64,
) -> tuple[Tensor, Tensor]:
    """The wkv recurrence with the Triton chunk scan; same contract as ``wkv7_chunked``."""
    batch, length, heads, key_dim = k.shape
    if not supports(key_dim, v.shape[-1]):
        raise ValueError(
            f"the Triton RWKV-7 path needs head sizes in {SUPPORTED_DIMS}, got K={key_dim}, V={v.shape[-1]}; "
            "use kernel='torch'"
        )
    if state is None:
        state = torch.zeros(batch, heads, key_dim, v.shape[-1], dtype=torch.float32, device=v.device)
    terms = chunk_terms(r, w, k, v, a, b, min(chunk_size, max(length, 1)))
    entering, final = ChunkScan.apply(terms.transition, terms.inject, state.float())
    return assemble(terms, entering, length).to(v.dtype), final
