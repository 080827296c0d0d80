"""Mamba-1's selective scan in pure PyTorch: a chunked parallel scan and its sequential oracle.

Per channel ``d`` and state index ``n`` (A: d_inner × d_state, negative)::

    h_t = exp(dt_t · A) ⊙ h_{t-1} + dt_t · x_t · B_t        (h: d_inner × d_state)
    y_t = h_t · C_t

Shapes: ``x``/``dt`` (batch, T, d_inner) with dt positive, ``A`` (d_inner, d_state), ``B``/``C``
(batch, T, d_state), state (batch, d_inner, d_state) in float32.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _inputs(x: Tensor, dt: Tensor, A: Tensor, B: Tensor) -> tuple[Tensor, Tensor]:
    """Per-step decay (b, T, d, n) and input (b, T, d, n) of the linear recurrence h = a·h + u."""
    decay = torch.exp(dt.float()[..., None] * A.float())
    update = (dt.float() * x.float())[..., None] * B.float()[:, :, None, :]
    return decay, update


def _scan_chunk(decay: Tensor, update: Tensor) -> tuple[Tensor, Tensor]:
    """Inclusive log-depth (Hillis-Steele) scan along dim 1: cumulative decays and states from zero.
    Each round combines step t with step t - offset (decay 1 / input 0 before the start)."""
    length, offset = decay.shape[1], 1
    while offset < length:
        update = update + decay * F.pad(update, (0, 0, 0, 0, offset, 0))[:, :length]
        decay = decay * F.pad(decay, (0, 0, 0, 0, offset, 0), value=1.0)[:, :length]
        offset *= 2
    return decay, update


def selective_scan_parallel(
    x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, initial_state: Tensor | None = None,
    chunk_size: int = 64,
) -> tuple[Tensor, Tensor]:
    """Parallel scan inside chunks of ``chunk_size`` steps, states carried from chunk to chunk.
    Returns ``y`` (like ``x``) and the final state (float32)."""
    batch, length, d_inner = x.shape
    state = (initial_state if initial_state is not None
             else x.new_zeros(batch, d_inner, A.shape[-1])).float()
    ys = []
    for start in range(0, length, chunk_size):
        end = min(start + chunk_size, length)
        decay, update = _inputs(x[:, start:end], dt[:, start:end], A, B[:, start:end])
        decay, states = _scan_chunk(decay, update)
        states = states + decay * state[:, None]
        ys.append(torch.einsum("btdn,btn->btd", states, C[:, start:end].float()))
        state = states[:, -1]
    return torch.cat(ys, dim=1).to(x.dtype), state


def selective_scan_step(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor,
                        state: Tensor) -> tuple[Tensor, Tensor]:
    """One step: ``x``/``dt`` (batch, d_inner), ``B``/``C`` (batch, d_state) -> (y, new state)."""
    decay, update = _inputs(x[:, None], dt[:, None], A, B[:, None])
    state = decay[:, 0] * state + update[:, 0]
    return torch.einsum("bdn,bn->bd", state, C.float()).to(x.dtype), state


def selective_scan_sequential(
    x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, initial_state: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """The recurrence one token at a time: the oracle for the parallel scan and the CUDA kernel."""
    batch, length, d_inner = x.shape
    state = (initial_state if initial_state is not None
             else x.new_zeros(batch, d_inner, A.shape[-1])).float()
    ys = []
    for t in range(length):
        y, state = selective_scan_step(x[:, t], dt[:, t], A, B[:, t], C[:, t], state)
        ys.append(y)
    return torch.stack(ys, dim=1), state
