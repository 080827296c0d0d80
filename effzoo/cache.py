"""Decoding caches: a preallocated per-layer KV cache and the whole-model cache."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor


class KVCache:
    """Preallocated keys/values (B, H, max_len, D) for one attention layer; filled left to right."""

    def __init__(
        self, batch: int, n_heads: int, max_len: int, k_dim: int, v_dim: int | None,
        device: torch.device, dtype: torch.dtype,
    ) -> None:
        self.k = torch.zeros(batch, n_heads, max_len, k_dim, device=device, dtype=dtype)
        self.v = torch.zeros(batch, n_heads, max_len, v_dim or k_dim, device=device, dtype=dtype)
        self.length = 0

    @property
    def max_len(self) -> int:
        return self.k.shape[2]

    def append(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Store (B, H, T, D) new keys/values; return views of everything cached so far."""
        end = self.length + k.shape[2]
        if end > self.max_len:
            raise RuntimeError(f"KV cache overflow: {end} tokens > max_len {self.max_len}; allocate a larger cache")
        self.k[:, :, self.length:end] = k
        self.v[:, :, self.length:end] = v
        self.length = end
        return self.k[:, :, :end], self.v[:, :, :end]

    def write(self, k: Tensor, v: Tensor, positions: Tensor) -> tuple[Tensor, Tensor]:
        """Static-shape update: store (B, H, T, D) keys/values in the slots ``positions`` (T,) (a device
        tensor; slot i holds position i) and return the whole buffers. ``length`` is not tracked here:
        the caller masks unwritten slots by causality (see effzoo.model.fast_decode)."""
        self.k.index_copy_(2, positions, k.to(self.k.dtype))
        self.v.index_copy_(2, positions, v.to(self.v.dtype))
        return self.k, self.v


@dataclass
class ModelCache:
    """Per-layer decoding states plus the number of tokens consumed so far."""

    layers: list[Any]
    max_len: int
    offset: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
