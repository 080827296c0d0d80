"""Decoding caches: a preallocated per-layer KV cache and the whole-model cache."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor


class TokenCache:
    """Preallocated per-token buffers of one layer, each (B, H, max_len, D), sharing one fill level."""

    def __init__(self, *buffers: Tensor) -> None:
        self.buffers = buffers
        self.length = 0

    @property
    def max_len(self) -> int:
        return self.buffers[0].shape[2]

    def append(self, *values: Tensor) -> tuple[Tensor, ...]:
        """Store (B, H, T, D) new values, one per buffer; return views of everything cached so far."""
        end = self.length + values[0].shape[2]
        if end > self.max_len:
            raise RuntimeError(f"KV cache overflow: {end} tokens > max_len {self.max_len}; allocate a larger cache")
        for buffer, value in zip(self.buffers, values):
            buffer[:, :, self.length:end] = value
        self.length = end
        return tuple(buffer[:, :, :end] for buffer in self.buffers)

    def write(self, *values: Tensor, positions: Tensor) -> tuple[Tensor, ...]:
        """Static-shape update: store (B, H, T, D) values in the slots ``positions`` (T,) (a device tensor;
        slot i holds position i) and return the whole buffers. ``length`` is not tracked here: the caller
        masks unwritten slots by causality (see effzoo.model.fast_decode)."""
        for buffer, value in zip(self.buffers, values):
            buffer.index_copy_(2, positions, value.to(buffer.dtype))
        return self.buffers


class KVCache(TokenCache):
    """Preallocated keys/values (B, H, max_len, D) for one attention layer; filled left to right."""

    def __init__(
        self, batch: int, n_heads: int, max_len: int, k_dim: int, v_dim: int | None,
        device: torch.device, dtype: torch.dtype,
    ) -> None:
        super().__init__(torch.zeros(batch, n_heads, max_len, k_dim, device=device, dtype=dtype),
                         torch.zeros(batch, n_heads, max_len, v_dim or k_dim, device=device, dtype=dtype))

    @property
    def k(self) -> Tensor:
        return self.buffers[0]

    @property
    def v(self) -> Tensor:
        return self.buffers[1]


@dataclass
class ModelCache:
    """Per-layer decoding states plus the number of tokens consumed so far."""

    layers: list[Any]
    max_len: int
    offset: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
