"""Chunked SSD (Mamba-2) in Triton, forward and backward; no compile step, imported only when used.

The work is split so that three small kernels cover both passes (``cum`` is the log-decay summed
from each chunk start, ``xd = dt · x``, and per chunk ``M_ij = exp(cum_i - cum_j)`` for i >= j):

- ``_chunk_state``: per chunk ``sum_j w_j · X_j ⊗ Y_j`` (chunk states forward, dL/dS backward);
- ``_state_passing``: the recurrence across chunks, ``S_{c+1} = exp(cum_last) · S_c + src_c``
  (run backwards for the gradient);
- ``_intra_chunk``: ``out_i = e_i · Q_i S + sum_j (Q_i · K_j) M V_j`` over j <= i (forward: y, dC) or
  j >= i (``REVERSE``: dxd, dB).

The gradient of ``cum`` needs no kernel: every term's exponent is ``cum_i - cum_j``, so
``dcum_k = dy_k·y_k - xd_k·dxd_k`` plus ``<dS_{c+1}, S_{c+1}>`` at the last step of chunk c.
Compared against :mod:`.ssd_reference` (outputs and gradients) under ``TRITON_INTERPRET=1``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from torch import Tensor

from .kernels import TRITON_MAX_DIM

BLOCK_L = 64  # rows per program inside a chunk (chunk sizes are multiples of it or smaller)


@triton.jit
def _chunk_state(
    x_ptr, y_ptr, cum_ptr, out_ptr, H, DX, DY, X_HDIV, Y_HDIV,
    sx_b, sx_t, sx_h, sx_d, sy_b, sy_t, sy_h, sy_d, sc_b, sc_t, sc_h, so_b, so_c, so_h, so_x, so_y,
    CHUNK: tl.constexpr, FROM_END: tl.constexpr, BLOCK_L: tl.constexpr,
    BLOCK_X: tl.constexpr, BLOCK_Y: tl.constexpr, PRECISION: tl.constexpr,
):
    """out[b, c, h] = sum_j w_j X_j ⊗ Y_j with w_j = exp(cum_last - cum_j) (FROM_END) or exp(cum_j)."""
    # batch·heads on grid axis 0 (CUDA limits axes 1 and 2 to 65535); 64-bit ids keep offsets from overflowing
    pid_bh, pid_xy, chunk = tl.program_id(0).to(tl.int64), tl.program_id(1), tl.program_id(2).to(tl.int64)
    bi, hi = pid_bh // H, pid_bh % H
    n_yb = (DY + BLOCK_Y - 1) // BLOCK_Y  # plain arithmetic: runs under the interpreter too
    offs_x = (pid_xy // n_yb) * BLOCK_X + tl.arange(0, BLOCK_X)
    offs_y = (pid_xy % n_yb) * BLOCK_Y + tl.arange(0, BLOCK_Y)
    mask_x, mask_y = offs_x < DX, offs_y < DY
    start = chunk * CHUNK
    x_base = x_ptr + bi * sx_b + (hi // X_HDIV) * sx_h
    y_base = y_ptr + bi * sy_b + (hi // Y_HDIV) * sy_h
    c_base = cum_ptr + bi * sc_b + hi * sc_h
    cum_last = tl.load(c_base + (start + CHUNK - 1) * sc_t)
    acc = tl.full((BLOCK_X, BLOCK_Y), 0.0, tl.float32)  # core builtins only: interpretable in-process
    for l0 in range(0, CHUNK, BLOCK_L):
        offs_l = start + l0 + tl.arange(0, BLOCK_L)
        cum = tl.load(c_base + offs_l * sc_t)
        if FROM_END:
            weight = tl.exp(cum_last - cum)
        else:
            weight = tl.exp(cum)
        xt = tl.load(x_base + offs_l[None, :] * sx_t + offs_x[:, None] * sx_d, mask=mask_x[:, None], other=0.0)
        yv = tl.load(y_base + offs_l[:, None] * sy_t + offs_y[None, :] * sy_d, mask=mask_y[None, :], other=0.0)
        xt = (xt.to(tl.float32) * weight[None, :]).to(yv.dtype)
        acc += tl.dot(xt, yv, input_precision=PRECISION)
    out = out_ptr + bi * so_b + chunk * so_c + hi * so_h + offs_x[:, None] * so_x + offs_y[None, :] * so_y
    tl.store(out, acc, mask=mask_x[:, None] & mask_y[None, :])


@triton.jit
def _state_passing(
    src_ptr, cum_ptr, init_ptr, out_ptr, NC, H, SIZE,
    ss_b, ss_c, ss_h, sc_b, sc_t, sc_h, si_b, si_h, so_b, so_c, so_h,
    CHUNK: tl.constexpr, REVERSE: tl.constexpr, BLOCK: tl.constexpr,
):
    """Forward: out[0] = init, out[c+1] = g_c out[c] + src[c]. REVERSE: out[NC] = init,
    out[c] = g_c out[c+1] + src[c]. g_c = exp(cum at the last step of chunk c); states flattened."""
    pid_bh, pid_blk = tl.program_id(0).to(tl.int64), tl.program_id(1)
    bi, hi = pid_bh // H, pid_bh % H
    offs = pid_blk * BLOCK + tl.arange(0, BLOCK)
    mask = offs < SIZE
    state = tl.load(init_ptr + bi * si_b + hi * si_h + offs, mask=mask, other=0.0).to(tl.float32)
    out_base = out_ptr + bi * so_b + hi * so_h + offs
    if REVERSE:
        tl.store(out_base + NC * so_c, state, mask=mask)
    else:
        tl.store(out_base, state, mask=mask)
    for step in range(0, NC):
        if REVERSE:
            chunk = NC - 1 - step
            target = chunk
        else:
            chunk = step
            target = chunk + 1
        decay = tl.exp(tl.load(cum_ptr + bi * sc_b + (chunk * CHUNK + CHUNK - 1) * sc_t + hi * sc_h))
        src = tl.load(src_ptr + bi * ss_b + chunk * ss_c + hi * ss_h + offs, mask=mask, other=0.0)
        state = decay * state + src
        tl.store(out_base + target * so_c, state, mask=mask)


@triton.jit
def _intra_chunk(
    q_ptr, k_ptr, v_ptr, s_ptr, cum_ptr, out_ptr, H, DQ, DV, Q_HDIV, K_HDIV, V_HDIV,
    sq_b, sq_t, sq_h, sq_d, sk_b, sk_t, sk_h, sk_d, sv_b, sv_t, sv_h, sv_d,
    ss_b, ss_c, ss_h, ss_q, ss_v, sc_b, sc_t, sc_h, so_b, so_t, so_h, so_d,
    CHUNK: tl.constexpr, REVERSE: tl.constexpr, BLOCK_L: tl.constexpr,
    BLOCK_Q: tl.constexpr, BLOCK_V: tl.constexpr, PRECISION: tl.constexpr,
):
    """out_i = e_i · Q_i S_c + sum_j (Q_i·K_j) exp(±(cum_i - cum_j)) V_j over j <= i (e_i = exp(cum_i))
    or, REVERSE, over j >= i with exponent cum_j - cum_i (e_i = exp(cum_last - cum_i))."""
    pid_bh, pid_rv, chunk = tl.program_id(0).to(tl.int64), tl.program_id(1), tl.program_id(2).to(tl.int64)
    bi, hi = pid_bh // H, pid_bh % H
    n_vb = (DV + BLOCK_V - 1) // BLOCK_V
    row_block = pid_rv // n_vb
    start = chunk * CHUNK
    offs_r = start + row_block * BLOCK_L + tl.arange(0, BLOCK_L)
    offs_q = tl.arange(0, BLOCK_Q)
    offs_v = (pid_rv % n_vb) * BLOCK_V + tl.arange(0, BLOCK_V)
    mask_q, mask_v = offs_q < DQ, offs_v < DV
    q_base = q_ptr + bi * sq_b + (hi // Q_HDIV) * sq_h
    k_base = k_ptr + bi * sk_b + (hi // K_HDIV) * sk_h
    v_base = v_ptr + bi * sv_b + (hi // V_HDIV) * sv_h
    c_base = cum_ptr + bi * sc_b + hi * sc_h
    cum_r = tl.load(c_base + offs_r * sc_t)
    q = tl.load(q_base + offs_r[:, None] * sq_t + offs_q[None, :] * sq_d, mask=mask_q[None, :], other=0.0)
    s = tl.load(s_ptr + bi * ss_b + chunk * ss_c + hi * ss_h + offs_q[:, None] * ss_q + offs_v[None, :] * ss_v,
                mask=mask_q[:, None] & mask_v[None, :], other=0.0)
    acc = tl.dot(q, s.to(q.dtype), input_precision=PRECISION)
    if REVERSE:
        acc = acc * tl.exp(tl.load(c_base + (start + CHUNK - 1) * sc_t) - cum_r)[:, None]
        lo = row_block * BLOCK_L
        hi_end = CHUNK
    else:
        acc = acc * tl.exp(cum_r)[:, None]
        lo = 0
        hi_end = (row_block + 1) * BLOCK_L
    for c0 in range(lo, hi_end, BLOCK_L):
        offs_c = start + c0 + tl.arange(0, BLOCK_L)
        cum_c = tl.load(c_base + offs_c * sc_t)
        k = tl.load(k_base + offs_c[:, None] * sk_t + offs_q[None, :] * sk_d, mask=mask_q[None, :], other=0.0)
        v = tl.load(v_base + offs_c[:, None] * sv_t + offs_v[None, :] * sv_d, mask=mask_v[None, :], other=0.0)
        scores = tl.dot(q, tl.trans(k.to(q.dtype)), input_precision=PRECISION)
        if REVERSE:
            keep = offs_c[None, :] >= offs_r[:, None]
            diff = cum_c[None, :] - cum_r[:, None]
        else:
            keep = offs_r[:, None] >= offs_c[None, :]
            diff = cum_r[:, None] - cum_c[None, :]
        scores = tl.where(keep, scores * tl.exp(tl.where(keep, diff, 0.0)), 0.0)
        acc += tl.dot(scores.to(v.dtype), v, input_precision=PRECISION)
    out = out_ptr + bi * so_b + offs_r[:, None] * so_t + hi * so_h + offs_v[None, :] * so_d
    tl.store(out, acc, mask=mask_v[None, :])


def _block(dim: int, cap: int = 64) -> int:
    return min(max(16, triton.next_power_of_2(dim)), max(16, cap))


def _precision(t: Tensor) -> str | None:
    """Exact float32 products for float32 inputs (tests, fp32 training); the default for bf16/fp16."""
    return "ieee" if t.dtype == torch.float32 else None


def _chunk_state_call(x: Tensor, y: Tensor, cum: Tensor, heads: int, chunk: int, from_end: bool) -> Tensor:
    """(b, T, *, DX) ⊗ (b, T, *, DY) weighted and summed per chunk -> (b, chunks, heads, DX, DY) fp32."""
    batch, length = x.shape[:2]
    dx, dy = x.shape[-1], y.shape[-1]
    out = torch.empty(batch, length // chunk, heads, dx, dy, device=x.device, dtype=torch.float32)
    bx, by = _block(dx), _block(dy)
    grid = (batch * heads, triton.cdiv(dx, bx) * triton.cdiv(dy, by), length // chunk)
    _chunk_state[grid](
        x, y, cum, out, heads, dx, dy, heads // x.shape[2], heads // y.shape[2],
        *x.stride(), *y.stride(), *cum.stride(), *out.stride(),
        CHUNK=chunk, FROM_END=from_end, BLOCK_L=min(BLOCK_L, chunk), BLOCK_X=bx, BLOCK_Y=by,
        PRECISION=_precision(x),
    )
    return out


def _state_passing_call(src: Tensor, cum: Tensor, init: Tensor, chunk: int, reverse: bool) -> Tensor:
    """src (b, c, h, P, N), init (b, h, P, N) -> all chunk-boundary states (b, c+1, h, P, N) fp32."""
    batch, chunks, heads, p, n = src.shape
    out = torch.empty(batch, chunks + 1, heads, p, n, device=src.device, dtype=torch.float32)
    block = min(1024, triton.next_power_of_2(p * n))
    _state_passing[(batch * heads, triton.cdiv(p * n, block))](
        src, cum, init, out, chunks, heads, p * n, *src.stride()[:3], *cum.stride(), *init.stride()[:2],
        *out.stride()[:3], CHUNK=chunk, REVERSE=reverse, BLOCK=block,
    )
    return out


def _intra_chunk_call(q: Tensor, k: Tensor, v: Tensor, s: Tensor, cum: Tensor, heads: int, chunk: int,
                      reverse: bool) -> Tensor:
    """See ``_intra_chunk``; ``s`` is (b, chunks, heads, DQ, DV) (any strides) -> (b, T, heads, DV) fp32."""
    batch, length = q.shape[:2]
    dq, dv = q.shape[-1], v.shape[-1]
    out = torch.empty(batch, length, heads, dv, device=q.device, dtype=torch.float32)
    block_l = min(BLOCK_L, chunk)
    bv = _block(dv)
    bq = _block(dq, TRITON_MAX_DIM)  # the whole of DQ in one tile: callers keep dims <= TRITON_MAX_DIM
    grid = (batch * heads, (chunk // block_l) * triton.cdiv(dv, bv), length // chunk)
    _intra_chunk[grid](
        q, k, v, s, cum, out, heads, dq, dv, heads // q.shape[2], heads // k.shape[2], heads // v.shape[2],
        *q.stride(), *k.stride(), *v.stride(), *s.stride(), *cum.stride(), *out.stride(),
        CHUNK=chunk, REVERSE=reverse, BLOCK_L=block_l, BLOCK_Q=bq, BLOCK_V=bv,
        PRECISION=_precision(q),
        # float32 tiles at DQ = 256 need ~240 KB of shared memory with 3 stages (H100 allows 227 KB)
        num_stages=2 if q.element_size() * bq > 512 else 3,
    )
    return out


def _group_sum(t: Tensor, groups: int) -> Tensor:
    """Per-head gradients (b, T, heads, n) -> per-group (b, T, groups, n)."""
    b, length, heads, n = t.shape
    return t.view(b, length, groups, heads // groups, n).sum(3)


class _SSDCore(torch.autograd.Function):
    """xd (b,T,h,p), cum (b,T,h) fp32, B/C (b,T,g,n), init (b,h,p,n) fp32 -> y fp32, final state.
    T is a multiple of the chunk size."""

    @staticmethod
    def forward(ctx, xd: Tensor, cum: Tensor, B: Tensor, C: Tensor, init: Tensor, chunk: int):
        heads = xd.shape[2]
        local = _chunk_state_call(xd, B, cum, heads, chunk, from_end=True)
        states = _state_passing_call(local, cum, init, chunk, reverse=False)
        y = _intra_chunk_call(C, B, xd, states[:, :-1].transpose(-1, -2), cum, heads, chunk, reverse=False)
        ctx.save_for_backward(xd, cum, B, C, states, y)
        ctx.chunk = chunk
        return y, states[:, -1]

    @staticmethod
    def backward(ctx, dy: Tensor, dfinal: Tensor | None):
        xd, cum, B, C, states, y = ctx.saved_tensors
        chunk, heads, groups = ctx.chunk, xd.shape[2], B.shape[2]
        dy = dy.contiguous()
        if dfinal is None:
            dfinal = torch.zeros_like(states[:, -1])
        dy_in = dy.to(xd.dtype)
        local = _chunk_state_call(dy_in, C, cum, heads, chunk, from_end=False)
        dstates = _state_passing_call(local, cum, dfinal.contiguous(), chunk, reverse=True)
        d_out = dstates[:, 1:]  # gradient of the state leaving each chunk
        dxd = _intra_chunk_call(B, C, dy_in, d_out.transpose(-1, -2), cum, heads, chunk, reverse=True)
        dB = _intra_chunk_call(xd, dy_in, C, d_out, cum, heads, chunk, reverse=True)
        dC = _intra_chunk_call(dy_in, xd, B, states[:, :-1], cum, heads, chunk, reverse=False)
        dcum = (dy.float() * y).sum(-1) - (xd.float() * dxd).sum(-1)
        boundary = (d_out * states[:, 1:]).sum((-1, -2))  # (b, chunks, h)
        dcum.view(dcum.shape[0], -1, chunk, heads)[:, :, -1] += boundary
        return (dxd.to(xd.dtype), dcum, _group_sum(dB, groups).to(B.dtype), _group_sum(dC, groups).to(C.dtype),
                dstates[:, 0], None)


def ssd_chunked_triton(
    x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, chunk_size: int,
    initial_state: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Same contract as :func:`.ssd_reference.ssd_chunked`, computed by the Triton kernels
    (``chunk_size`` is rounded down to a power of two >= 16; head_dim, d_state <= TRITON_MAX_DIM)."""
    batch, length, heads, head_dim = x.shape
    if max(head_dim, B.shape[-1]) > TRITON_MAX_DIM:
        raise ValueError(f"the Triton SSD kernels need head_dim and d_state <= {TRITON_MAX_DIM}, got "
                         f"{head_dim} and {B.shape[-1]}; use kernel='reference' or 'mamba_ssm'")
    # Chunking changes the schedule, not the result: use a power of two >= 16, no longer than needed.
    chunk_size = max(16, 1 << (max(chunk_size, 1).bit_length() - 1))
    chunk_size = min(chunk_size, max(16, triton.next_power_of_2(length)))
    pad = (-length) % chunk_size
    xd = (x.float() * dt.float()[..., None]).to(x.dtype)
    log_decay = (dt.float() * A.float())
    if pad:
        xd, B, C = (F.pad(t, (0, 0, 0, 0, 0, pad)) for t in (xd, B, C))
        log_decay = F.pad(log_decay, (0, 0, 0, pad))
    total = length + pad
    cum = log_decay.reshape(batch, total // chunk_size, chunk_size, heads).cumsum(2).reshape(batch, total, heads)
    if initial_state is None:
        initial_state = x.new_zeros(batch, heads, head_dim, B.shape[-1], dtype=torch.float32)
    y, final = _SSDCore.apply(xd.contiguous(), cum.contiguous(), B.contiguous(), C.contiguous(),
                              initial_state.float().contiguous(), chunk_size)
    return y[:, :length].to(x.dtype), final
