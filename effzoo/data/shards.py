"""Several memory-mapped token files read as one 1-D token array (no copy)."""
from __future__ import annotations

import bisect
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .errors import DataError


TOKEN_DTYPES = ("uint16", "uint32", "uint8", "int32", "int64")


def token_dtype(name: str | np.dtype) -> np.dtype:
    """The numpy dtype of a token file, from one of ``TOKEN_DTYPES``; a clear error for anything else."""
    if str(name) not in TOKEN_DTYPES:
        raise DataError(f"unknown token dtype {str(name)!r}; choose one of {', '.join(TOKEN_DTYPES)}")
    return np.dtype(str(name))


def memmap_tokens(path: str | os.PathLike[str], dtype: np.dtype | str) -> np.ndarray:
    """``path`` memory-mapped read-only as ``dtype`` (an empty array for an empty file). A file whose
    length is not a whole number of tokens is a ``DataError`` naming it."""
    dtype = np.dtype(dtype)
    size = Path(path).stat().st_size
    if size % dtype.itemsize:
        raise DataError(f"{size:,} bytes is not a whole number of {dtype} tokens ({dtype.itemsize} bytes each): "
                        "the file is truncated or has another dtype", path=path)
    if size == 0:
        return np.zeros(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r")


class ShardedTokens:
    """Concatenation of 1-D arrays supporting ``len``, ``dtype``, ``shape``, integer and slice indexing
    (a slice may cross shard boundaries) and ``np.asarray`` (which copies everything)."""

    def __init__(self, parts: Sequence[np.ndarray]) -> None:
        self.parts = [p for p in parts if len(p)]
        self.dtype = np.dtype(parts[0].dtype) if parts else np.dtype(np.uint16)
        self.offsets = np.concatenate([[0], np.cumsum([len(p) for p in self.parts])]).astype(np.int64)

    def __len__(self) -> int:
        return int(self.offsets[-1])

    @property
    def shape(self) -> tuple[int]:
        return (len(self),)

    def __getitem__(self, key: int | slice) -> np.ndarray:
        if isinstance(key, slice):
            start, stop, step = key.indices(len(self))
            if step != 1:
                return np.asarray(self)[key]
            return self._range(start, stop)
        index = int(key) + (len(self) if key < 0 else 0)
        if not 0 <= index < len(self):
            raise IndexError(f"token index {key} out of range for {len(self)} tokens")
        part = bisect.bisect_right(self.offsets, index) - 1
        return self.parts[part][index - self.offsets[part]]

    def _range(self, start: int, stop: int) -> np.ndarray:
        if stop <= start:
            return np.zeros(0, dtype=self.dtype)
        first = bisect.bisect_right(self.offsets, start) - 1
        last = bisect.bisect_right(self.offsets, stop - 1) - 1
        if first == last:
            base = self.offsets[first]
            return np.asarray(self.parts[first][start - base:stop - base])
        pieces = []
        for part in range(first, last + 1):
            base = self.offsets[part]
            lo, hi = max(start, base) - base, min(stop, self.offsets[part + 1]) - base
            pieces.append(self.parts[part][lo:hi])
        return np.concatenate(pieces)

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        out = np.concatenate(self.parts) if self.parts else np.zeros(0, dtype=self.dtype)
        return out if dtype is None else out.astype(dtype)

    def __repr__(self) -> str:
        return f"ShardedTokens({len(self):,} tokens in {len(self.parts)} shards, dtype={self.dtype})"


def concat_tokens(parts: Sequence[np.ndarray]) -> np.ndarray | ShardedTokens:
    """The single non-empty part itself, else a ``ShardedTokens`` over all parts."""
    non_empty = [p for p in parts if len(p)]
    if len(non_empty) == 1:
        return non_empty[0]
    return ShardedTokens(parts)
