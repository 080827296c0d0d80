"""The RWKV-7 "wkv" recurrence in pure PyTorch: the per-token oracle and a chunked parallel form.

Per head, with a state ``S`` of shape (K, V) (key rows, value columns) and per-token vectors
``r, w, k, a, b`` (K) and ``v`` (V), ``w`` being the *log* decay (≤ 0)::

    S_t = diag(exp(w_t)) S_{t-1} + b_t (a_t^T S_{t-1}) + k_t v_t^T
    o_t = S_t^T r_t

RWKV-7 calls it with ``a = -κ`` (the normalised removal key) and ``b = κ·α`` (κ scaled by the
in-context learning rate), which makes the transition ``diag(w) - κ̃ κ^T`` a generalised delta rule.
Tensors are (B, T, H, K) and states (B, H, K, V) float32, the layout of flash-linear-attention.

The chunked form turns every chunk of ``C`` tokens into an affine map of the state entering it,
``S_next = P S + G`` and ``O = Q S + O_intra`` (:func:`chunk_terms`, all chunks at once), and then
runs the short recurrence over chunks (:func:`scan_chunks`; a Triton kernel replaces it on GPU).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


def wkv7_sequential(
    r: Tensor, w: Tensor, k: Tensor, v: Tensor, a: Tensor, b: Tensor, state: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """The exact per-token recurrence (the oracle). Returns outputs (B, T, H, V) and the final state."""
    batch, length, heads, key_dim = k.shape
    out_dtype = v.dtype
    r, w, k, v, a, b = (t.float() for t in (r, w, k, v, a, b))
    if state is None:
        state = torch.zeros(batch, heads, key_dim, v.shape[-1], dtype=torch.float32, device=v.device)
    state = state.float()
    outputs = []
    for t in range(length):
        removed = torch.einsum("bhk,bhkv->bhv", a[:, t], state)
        state = (
            state * w[:, t].exp().unsqueeze(-1)
            + b[:, t].unsqueeze(-1) * removed.unsqueeze(-2)
            + k[:, t].unsqueeze(-1) * v[:, t].unsqueeze(-2)
        )
        outputs.append(torch.einsum("bhk,bhkv->bhv", r[:, t], state))
    out = torch.stack(outputs, dim=1) if outputs else v.new_zeros(v.shape)
    return out.to(out_dtype), state


@dataclass
class ChunkTerms:
    """Every chunk as an affine map of its entering state (shapes with N chunks of C tokens).

    ``transition`` P (B, H, N, K, K) and ``inject`` G (B, H, N, K, V): ``S_next = P S + G``;
    ``read`` Q (B, H, N, C, K) and ``local`` (B, H, N, C, V): ``O = Q S + local``.
    """

    transition: Tensor
    inject: Tensor
    read: Tensor
    local: Tensor


def to_chunks(x: Tensor, chunk_size: int) -> Tensor:
    """(B, T, H, D) float32 zero-padded to whole chunks -> (B, H, N, C, D)."""
    batch, length, heads, dim = x.shape
    pad = -length % chunk_size
    x = F.pad(x.float(), (0, 0, 0, 0, 0, pad))
    return x.view(batch, -1, chunk_size, heads, dim).permute(0, 3, 1, 2, 4)


def chunk_terms(r: Tensor, w: Tensor, k: Tensor, v: Tensor, a: Tensor, b: Tensor, chunk_size: int) -> ChunkTerms:
    """The per-chunk affine maps, computed for all chunks in parallel (float32, differentiable).

    Padding tokens carry zero vectors and log decay 0, so they leave the state untouched.
    Decays inside a chunk are factored around its middle token, so the largest exponent is
    ``C/2 · max|w|``; the RWKV-7 block bounds ``|w| ≤ exp(-0.5)``, keeping C = 64 far inside float32.
    """
    r, w, k, v, a, b = (to_chunks(t, chunk_size) for t in (r, w, k, v, a, b))
    size = chunk_size
    total = w.cumsum(dim=-2)  # log Γ_t: decay from the chunk start through token t (inclusive)
    before = total - w  # log Γ_{t-1}
    mid = (size - 1) // 2
    middle = total[..., mid: mid + 1, :]
    inv = torch.exp(middle - total)  # 1 / Γ_s, centred
    a_dec = a * torch.exp(before - middle)  # a_t Γ_{t-1}, centred
    r_dec = r * torch.exp(total - middle)  # r_t Γ_t, centred
    b_inv, k_inv = b * inv, k * inv
    strict = torch.ones(size, size, dtype=torch.bool, device=w.device).tril(-1)
    causal = torch.ones(size, size, dtype=torch.bool, device=w.device).tril(0)
    ab = (a_dec @ b_inv.transpose(-1, -2)).masked_fill(~strict, 0.0)
    ak = (a_dec @ k_inv.transpose(-1, -2)).masked_fill(~strict, 0.0)
    rb = (r_dec @ b_inv.transpose(-1, -2)).masked_fill(~causal, 0.0)
    rk = (r_dec @ k_inv.transpose(-1, -2)).masked_fill(~causal, 0.0)
    # z_t = a_t^T S_{t-1} for every token: (I - ab) Z = a_t Γ_{t-1} S_0 + ak V, solved for both parts at once.
    key_dim = k.shape[-1]
    eye = torch.eye(size, dtype=w.dtype, device=w.device)
    rhs = torch.cat((a * torch.exp(before), ak @ v), dim=-1)
    solved = torch.linalg.solve_triangular(eye - ab, rhs, upper=False, unitriangular=True)
    z_state, z_local = solved[..., :key_dim], solved[..., key_dim:]
    read = r * torch.exp(total) + rb @ z_state
    local = rb @ z_local + rk @ v
    to_end = torch.exp(total[..., -1:, :] - total)  # Γ_C / Γ_s
    b_end, k_end = (b * to_end).transpose(-1, -2), (k * to_end).transpose(-1, -2)
    transition = torch.diag_embed(torch.exp(total[..., -1, :])) + b_end @ z_state
    inject = b_end @ z_local + k_end @ v
    return ChunkTerms(transition, inject, read, local)


def scan_chunks(transition: Tensor, inject: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
    """``S_{n+1} = P_n S_n + G_n`` over chunks: the state entering every chunk (B, H, N, K, V) and the last."""
    entering = []
    for n in range(transition.shape[2]):
        entering.append(state)
        state = transition[:, :, n] @ state + inject[:, :, n]
    return torch.stack(entering, dim=2), state


def assemble(terms: ChunkTerms, entering: Tensor, length: int) -> Tensor:
    """Chunk outputs ``Q S + local`` back to (B, T, H, V), padding removed."""
    out = terms.read @ entering + terms.local  # (B, H, N, C, V)
    batch, heads, chunks, size, dim = out.shape
    return out.permute(0, 2, 3, 1, 4).reshape(batch, chunks * size, heads, dim)[:, :length]


def wkv7_chunked(
    r: Tensor, w: Tensor, k: Tensor, v: Tensor, a: Tensor, b: Tensor,
    state: Tensor | None = None, chunk_size: int = 16,
) -> tuple[Tensor, Tensor]:
    """The same recurrence in chunks (CPU training path). Any length; returns (outputs, final state)."""
    batch, length, heads, key_dim = k.shape
    if state is None:
        state = torch.zeros(batch, heads, key_dim, v.shape[-1], dtype=torch.float32, device=v.device)
    terms = chunk_terms(r, w, k, v, a, b, min(chunk_size, max(length, 1)))
    entering, final = scan_chunks(terms.transition, terms.inject, state.float())
    return assemble(terms, entering, length).to(v.dtype), final
