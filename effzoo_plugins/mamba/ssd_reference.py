"""Mamba-2's state-space duality (SSD) in pure PyTorch: the chunked algorithm and its sequential oracle.

Per head ``h`` with scalar decay ``A_h < 0`` the recurrence is::

    S_t = exp(dt_t · A_h) · S_{t-1} + dt_t · x_t ⊗ B_t        (S: head_dim × d_state)
    y_t = S_t · C_t

Shapes: ``x`` (batch, T, heads, head_dim), ``dt`` (batch, T, heads) already positive (softplus
applied), ``A`` (heads,), ``B``/``C`` (batch, T, groups, d_state) shared by ``heads // groups`` heads,
states (batch, heads, head_dim, d_state) in float32.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def segment_decay(cum: Tensor) -> Tensor:
    """``cum`` (..., L) log-decays summed from a chunk start -> (..., L, L) ``exp(cum_i - cum_j)`` for
    i >= j and 0 above the diagonal (the decay from step j to step i)."""
    length = cum.shape[-1]
    keep = torch.ones(length, length, dtype=torch.bool, device=cum.device).tril()
    diff = cum[..., :, None] - cum[..., None, :]
    return torch.exp(diff.masked_fill(~keep, float("-inf")))


def expand_groups(t: Tensor, heads: int, dim: int = 2) -> Tensor:
    """(batch, T, groups, n) -> (batch, T, heads, n), groups on ``dim``: each serves ``heads // groups`` heads."""
    return t.repeat_interleave(heads // t.shape[dim], dim=dim)


def ssd_chunked(
    x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, chunk_size: int,
    initial_state: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """The chunked SSD: quadratic attention-like products inside chunks, a linear recurrence across
    chunk states. Returns ``y`` (like ``x``) and the final state (float32)."""
    batch, length, heads, head_dim = x.shape
    d_state = B.shape[-1]
    chunk_size = max(1, min(chunk_size, length))  # a short sequence is one chunk, unpadded
    pad = (-length) % chunk_size
    xd = (x * dt[..., None]).float()
    log_decay = (dt * A).float()
    Bh, Ch = expand_groups(B, heads).float(), expand_groups(C, heads).float()
    if pad:  # padded steps have dt = 0: no decay, no input, so the final state is unchanged
        xd, Bh, Ch = (F.pad(t, (0, 0, 0, 0, 0, pad)) for t in (xd, Bh, Ch))
        log_decay = F.pad(log_decay, (0, 0, 0, pad))
    chunks = (length + pad) // chunk_size
    xd = xd.view(batch, chunks, chunk_size, heads, head_dim)
    Bh = Bh.view(batch, chunks, chunk_size, heads, d_state)
    Ch = Ch.view(batch, chunks, chunk_size, heads, d_state)
    cum = log_decay.view(batch, chunks, chunk_size, heads).permute(0, 3, 1, 2).cumsum(-1)  # (b, h, c, L)

    scores = torch.einsum("bclhn,bcshn->bhcls", Ch, Bh) * segment_decay(cum)
    y_intra = torch.einsum("bhcls,bcshp->bclhp", scores, xd)

    to_chunk_end = torch.exp(cum[..., -1:] - cum)
    chunk_states = torch.einsum("bhcl,bclhn,bclhp->bchpn", to_chunk_end, Bh, xd)
    if initial_state is None:
        initial_state = xd.new_zeros(batch, heads, head_dim, d_state)
    states = torch.cat([initial_state.float()[:, None], chunk_states], dim=1)  # (b, c+1, h, p, n)
    across = segment_decay(F.pad(cum[..., -1], (1, 0)).cumsum(-1))  # (b, h, c+1, c+1)
    states = torch.einsum("bhzc,bchpn->bzhpn", across, states)  # state entering chunk z
    y_inter = torch.einsum("bclhn,bchpn,bhcl->bclhp", Ch, states[:, :-1], torch.exp(cum))

    y = (y_intra + y_inter).reshape(batch, chunks * chunk_size, heads, head_dim)[:, :length]
    return y.to(x.dtype), states[:, -1]


def ssd_step(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
    """One recurrence step: ``x`` (batch, heads, head_dim), ``dt`` (batch, heads), ``B``/``C``
    (batch, groups, d_state), ``state`` (batch, heads, head_dim, d_state) -> (y, new state)."""
    heads = x.shape[1]
    Bh, Ch = expand_groups(B, heads, dim=1).float(), expand_groups(C, heads, dim=1).float()
    decay = torch.exp(dt.float() * A.float())[..., None, None]
    state = decay * state + (dt.float()[..., None] * x.float())[..., None] * Bh[:, :, None, :]
    y = torch.einsum("bhpn,bhn->bhp", state, Ch)
    return y.to(x.dtype), state


def ssd_sequential(
    x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, initial_state: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """The recurrence one token at a time: the oracle the chunked forms are tested against."""
    batch, length, heads, head_dim = x.shape
    state = (initial_state if initial_state is not None
             else x.new_zeros(batch, heads, head_dim, B.shape[-1])).float()
    ys = []
    for t in range(length):
        y, state = ssd_step(x[:, t], dt[:, t], A, B[:, t], C[:, t], state)
        ys.append(y)
    return torch.stack(ys, dim=1), state
