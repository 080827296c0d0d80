"""Scaled dot-product attention with one entry point and three backends.

- ``reference``: plain PyTorch math (the oracle; runs everywhere, float32 softmax).
- ``sdpa``: ``F.scaled_dot_product_attention`` (flash / cuDNN / efficient / CPU-fused kernels);
  a bias-type position encoding is passed as a materialised float mask.
- ``flex``: FlexAttention with the position's ``score_mod`` and a causal block mask (CUDA).

``auto`` picks sdpa when there is no score bias, flex for bias encodings on CUDA without a cache
offset, and sdpa with a materialised mask otherwise.

Queries are the last Tq of the Tk key positions unless ``q_positions``/``k_positions`` say otherwise:
the static-shape decoding path (effzoo.model.fast_decode) attends over a whole preallocated cache whose
slot i holds position i, so causality alone masks the slots not written yet. Explicit positions always
materialise the mask (sdpa or reference; ``auto`` picks sdpa).
"""
from __future__ import annotations

import functools
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import ConfigError
from ..interfaces import PositionalEncoding

BACKENDS = ("auto", "sdpa", "flex", "reference")


def _query_key_positions(
    q_len: int, k_len: int, device: torch.device, q_positions: Tensor | None, k_positions: Tensor | None
) -> tuple[Tensor, Tensor]:
    """Absolute positions (Tq,), (Tk,): the given ones, else queries = the last Tq of keys 0..Tk-1."""
    q_pos = q_positions if q_positions is not None else torch.arange(k_len - q_len, k_len, device=device)
    k_pos = k_positions if k_positions is not None else torch.arange(k_len, device=device)
    return q_pos, k_pos


def _bias_and_mask(
    position: PositionalEncoding | None, q_len: int, k_len: int, causal: bool, device: torch.device,
    q_positions: Tensor | None = None, k_positions: Tensor | None = None,
) -> Tensor | None:
    """Float (H|1, Tq, Tk) additive mask = position bias + causal -inf, or None when neither applies."""
    explicit = q_positions is not None or k_positions is not None
    q_pos, k_pos = _query_key_positions(q_len, k_len, device, q_positions, k_positions)
    bias = position.bias(q_pos, k_pos) if position is not None else None
    if causal and (q_len > 1 or bias is not None or explicit):
        causal_mask = _causal_mask(q_pos, k_pos, reuse=explicit)
        bias = causal_mask[None] if bias is None else bias.float() + causal_mask
    return bias


# The last causal mask built for explicit positions: every layer of a static decoding step passes the
# same position tensors, so the step builds its mask once, not once per layer (also inside a CUDA graph:
# the capture records the first layer's mask kernels and the later layers read that mask).
# A mask built outside a capture is never reused inside one (the graph must contain the mask kernels).
_LAST_MASK: list[tuple[Tensor, Tensor, tuple[int, int, bool], Tensor]] = []


def _causal_mask(q_pos: Tensor, k_pos: Tensor, *, reuse: bool) -> Tensor:
    """Float (Tq, Tk) mask, 0 where key position <= query position, -inf elsewhere. With ``reuse``, the
    previous mask is returned while the same position tensors come back unchanged (same version)."""
    reuse = reuse and not torch.compiler.is_compiling()
    if reuse:
        capturing = q_pos.is_cuda and torch.cuda.is_current_stream_capturing()
        key = (q_pos._version, k_pos._version, capturing)
        if _LAST_MASK and _LAST_MASK[0][0] is q_pos and _LAST_MASK[0][1] is k_pos and _LAST_MASK[0][2] == key:
            return _LAST_MASK[0][3]
    future = k_pos[None, :] > q_pos[:, None]
    mask = torch.zeros(q_pos.shape[0], k_pos.shape[0], device=q_pos.device).masked_fill(future, float("-inf"))
    if reuse:
        _LAST_MASK[:] = [(q_pos, k_pos, key, mask)]
    return mask


def reference_attention(
    q: Tensor, k: Tensor, v: Tensor, *, causal: bool = True,
    position: PositionalEncoding | None = None, scale: float | None = None,
    q_positions: Tensor | None = None, k_positions: Tensor | None = None,
) -> Tensor:
    """Oracle: q (B, H, Tq, D), k (B, Hk, Tk, D), v (B, Hk, Tk, Dv); queries are the last Tq positions
    unless ``q_positions`` / ``k_positions`` give the absolute positions explicitly."""
    heads, kv_heads = q.shape[1], k.shape[1]
    if heads != kv_heads:
        k = k.repeat_interleave(heads // kv_heads, dim=1)
        v = v.repeat_interleave(heads // kv_heads, dim=1)
    scale = scale if scale is not None else 1.0 / math.sqrt(q.shape[-1])
    scores = torch.einsum("bhqd,bhkd->bhqk", q.float(), k.float()) * scale
    mask = _bias_and_mask(position, q.shape[2], k.shape[2], causal, q.device, q_positions, k_positions)
    if mask is not None:
        scores = scores + mask
    probs = torch.softmax(scores, dim=-1)
    return torch.einsum("bhqk,bhkd->bhqd", probs, v.float()).to(q.dtype)


def sdpa_attention(
    q: Tensor, k: Tensor, v: Tensor, *, causal: bool = True,
    position: PositionalEncoding | None = None, scale: float | None = None,
    q_positions: Tensor | None = None, k_positions: Tensor | None = None,
) -> Tensor:
    """``F.scaled_dot_product_attention``; fused kernels when there is no bias and no offset."""
    q_len, k_len = q.shape[2], k.shape[2]
    heads, kv_heads = q.shape[1], k.shape[1]
    has_bias = position is not None and position.has_bias
    explicit = q_positions is not None or k_positions is not None
    if not has_bias and not explicit and (not causal or q_len == k_len or q_len == 1):
        # grouped K/V go to the kernel as they are (no repeated copies): on torch 2.13's CPU kernels
        # enable_gqa measured 1.2-1.4x faster than repeat_interleave for training and 1.5-2.4x for
        # decoding over strided cache views (docs/performance.md, issue 17)
        is_causal = False
        if causal and q_len > 1 and q_len == k_len:  # an `if`, not a bool expression: a guard under dynamic shapes
            is_causal = True
        return F.scaled_dot_product_attention(q, k, v, is_causal=is_causal, scale=scale, enable_gqa=heads != kv_heads)
    mask = _bias_and_mask(position, q_len, k_len, causal, q.device, q_positions, k_positions)
    if heads != kv_heads:
        return _grouped_masked_sdpa(q, k, v, mask, scale)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=None if mask is None else mask.to(q.dtype), scale=scale)


def _grouped_masked_sdpa(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, scale: float | None) -> Tensor:
    """Masked attention for grouped key/value heads without copying K/V: the G query heads that share a
    key/value head are folded into the query axis, (B, Hk·G, Tq, D) -> (B, Hk, G·Tq, D), and the (H|1, Tq, Tk)
    mask likewise. Masked kernels (memory-efficient, CPU) then apply, which ``enable_gqa`` would rule out."""
    batch, heads, q_len, dim = q.shape
    kv_heads, k_len = k.shape[1], k.shape[2]
    group = heads // kv_heads
    folded = q.reshape(batch, kv_heads, group * q_len, dim)
    if mask is not None:
        mask = mask.reshape(kv_heads, group * q_len, k_len) if mask.shape[0] == heads else mask.repeat(1, group, 1)
        mask = mask.to(q.dtype)
    out = F.scaled_dot_product_attention(folded, k, v, attn_mask=mask, scale=scale)
    return out.reshape(batch, heads, q_len, v.shape[-1])


@functools.lru_cache(maxsize=32)
def _causal_block_mask(q_len: int, k_len: int, device: str):  # type: ignore[no-untyped-def]
    from torch.nn.attention.flex_attention import create_block_mask

    offset = k_len - q_len

    def causal(b, h, q_idx, kv_idx):  # type: ignore[no-untyped-def]
        return kv_idx <= q_idx + offset

    return create_block_mask(causal, B=None, H=None, Q_LEN=q_len, KV_LEN=k_len, device=device)


@functools.lru_cache(maxsize=1)
def _compiled_flex():  # type: ignore[no-untyped-def]
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


def flex_attention(
    q: Tensor, k: Tensor, v: Tensor, *, causal: bool = True,
    position: PositionalEncoding | None = None, scale: float | None = None, compiled: bool | None = None,
) -> Tensor:
    """FlexAttention: the position bias as ``score_mod``, causality as a block mask (skips masked tiles)."""
    from torch.nn.attention.flex_attention import flex_attention as flex

    if q.shape[2] != k.shape[2] and position is not None and position.has_bias:
        raise ConfigError("flex backend assumes no cache offset for score_mod biases; use sdpa or reference")
    score_mod = position.score_mod() if position is not None else None
    block_mask = _causal_block_mask(q.shape[2], k.shape[2], str(q.device)) if causal else None
    compiled = q.is_cuda if compiled is None else compiled
    fn = _compiled_flex() if compiled else flex
    return fn(q, k, v, score_mod=score_mod, block_mask=block_mask, scale=scale, enable_gqa=q.shape[1] != k.shape[1])


# Extra backends installed at run time (e.g. the NPU adapter's ``npu_fusion``), same signature as
# ``sdpa_attention``; see :func:`register_backend`.
EXTRA_BACKENDS: dict[str, Callable[..., Tensor]] = {}


def register_backend(name: str, fn: Callable[..., Tensor]) -> None:
    """Make ``attend(..., backend=name)`` call ``fn(q, k, v, causal=, position=, scale=)``."""
    EXTRA_BACKENDS[name] = fn


def attention_backend(kernel: str) -> str:
    """The attention backend a model's ``kernel`` setting means: itself when attention implements it,
    ``auto`` when it names another component's implementation (a Mamba or MoE kernel)."""
    if kernel in BACKENDS or kernel in EXTRA_BACKENDS:
        return kernel
    from ..registry import REGISTRY

    return "auto" if kernel in REGISTRY.kernel_names() else kernel


def attend(
    q: Tensor, k: Tensor, v: Tensor, *, causal: bool = True,
    position: PositionalEncoding | None = None, scale: float | None = None, backend: str = "auto",
    q_positions: Tensor | None = None, k_positions: Tensor | None = None,
) -> Tensor:
    """Attention of queries over keys/values. Queries are the last Tq of the Tk positions unless
    ``q_positions`` (Tq,) / ``k_positions`` (Tk,) give absolute positions (device tensors, no host sync)."""
    explicit = q_positions is not None or k_positions is not None
    if backend == "auto":
        has_bias = position is not None and position.has_bias
        backend = "flex" if (has_bias and q.is_cuda and q.shape[2] == k.shape[2] and not explicit) else "sdpa"
    if explicit and backend not in ("sdpa", "reference"):
        raise ConfigError(
            f"attention backend {backend!r} does not take explicit query/key positions; use sdpa or reference"
        )
    if backend == "sdpa":
        return sdpa_attention(q, k, v, causal=causal, position=position, scale=scale,
                              q_positions=q_positions, k_positions=k_positions)
    if backend == "flex":
        return flex_attention(q, k, v, causal=causal, position=position, scale=scale)
    if backend == "reference":
        return reference_attention(q, k, v, causal=causal, position=position, scale=scale,
                                   q_positions=q_positions, k_positions=k_positions)
    if backend in EXTRA_BACKENDS:
        return EXTRA_BACKENDS[backend](q, k, v, causal=causal, position=position, scale=scale)
    raise ConfigError(f"unknown attention backend {backend!r}; choose one of {', '.join((*BACKENDS, *EXTRA_BACKENDS))}")
