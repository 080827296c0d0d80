"""NSA decoding cache: raw keys/values for selection (all tokens), the window's and the compressor's
recent tokens, and the compressed keys/values of every complete block."""
from __future__ import annotations

import torch
from torch import Tensor

from effzoo.plugin import KVCache

from .settings import NSASettings


class RecentKV:
    """The most recent keys/values (B, G, n, D) of one branch, with the absolute position of the first."""

    def __init__(self, batch: int, groups: int, head_dim: int, device: torch.device, dtype: torch.dtype) -> None:
        self.k = torch.zeros(batch, groups, 0, head_dim, device=device, dtype=dtype)
        self.v = torch.zeros_like(self.k)
        self.start = 0

    def extend(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor, int]:
        """Append new tokens; return everything held (old + new) and its first position."""
        self.k, self.v = torch.cat((self.k, k), dim=2), torch.cat((self.v, v), dim=2)
        return self.k, self.v, self.start

    def drop_before(self, position: int) -> None:
        """Forget tokens before absolute ``position``."""
        cut = max(0, position - self.start)
        if cut:
            self.k, self.v = self.k[:, :, cut:].clone(), self.v[:, :, cut:].clone()
            self.start += cut


class NSACache:
    """What NSA needs to decode: the growing raw selection K/V, the compressed K/V of complete blocks,
    and (with separate per-branch K/V) the last ``window − 1`` window tokens and the compressor's
    unfinished tail. With shared K/V the window and the tail are read from the selection cache."""

    def __init__(self, batch: int, groups: int, max_len: int, head_dim: int, settings: NSASettings,
                 device: torch.device, dtype: torch.dtype) -> None:
        self.settings = settings
        self.selected = KVCache(batch, groups, max_len, head_dim, None, device, dtype)
        self.window = None if settings.shared_kv else RecentKV(batch, groups, head_dim, device, dtype)
        self.pending = None if settings.shared_kv else RecentKV(batch, groups, head_dim, device, dtype)
        self.compressed_k = torch.zeros(batch, groups, 0, head_dim, device=device, dtype=dtype)
        self.compressed_v = torch.zeros_like(self.compressed_k)

    @property
    def length(self) -> int:
        return self.selected.length

    @property
    def n_compressed(self) -> int:
        return self.compressed_k.shape[2]

    def append(
        self, keys: tuple[Tensor, Tensor, Tensor], values: tuple[Tensor, Tensor, Tensor]
    ) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor, int], tuple[Tensor, Tensor]]:
        """Store new (compression, selection, window) keys/values.

        Returns the selection K/V from position 0, the window K/V with its start position, and the raw
        compression K/V from the first block not yet compressed (starts at n_compressed · stride).
        """
        previous = self.length
        k_slc, v_slc = self.selected.append(keys[1], values[1])
        raw_start = self.n_compressed * self.settings.compress_stride
        if self.settings.shared_kv:
            window_start = max(0, previous - self.settings.window + 1)
            window = (k_slc[:, :, window_start:], v_slc[:, :, window_start:], window_start)
            raw = (k_slc[:, :, raw_start:], v_slc[:, :, raw_start:])
        else:
            window = self.window.extend(keys[2], values[2])
            k_raw, v_raw, start = self.pending.extend(keys[0], values[0])
            raw = (k_raw[:, :, raw_start - start:], v_raw[:, :, raw_start - start:])
            self.window.drop_before(self.length - self.settings.window + 1)
        return (k_slc, v_slc), window, raw

    def add_compressed(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Append newly completed compressed blocks; return all of them."""
        if k.shape[2]:
            self.compressed_k = torch.cat((self.compressed_k, k), dim=2)
            self.compressed_v = torch.cat((self.compressed_v, v), dim=2)
        if self.pending is not None:
            self.pending.drop_before(self.n_compressed * self.settings.compress_stride)
        return self.compressed_k, self.compressed_v
