"""Megatron-LM / MindSpeed indexed datasets (``PREFIX.bin`` + ``PREFIX.idx``): a reader, and a
writer (``write_megatron``) for making small datasets in that format, e.g. in tests.

``.idx`` layout (little-endian): magic ``MMIDIDX\\x00\\x00``, version int64 (1), dtype code uint8,
sequence count int64, document-index count int64, then int32 sequence lengths, int64 byte pointers
into ``.bin``, and int64 document indices (sequence numbers where documents start, plus the end).
"""
from __future__ import annotations

import os
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..atomic import atomic_path
from .errors import DataError

MAGIC = b"MMIDIDX\x00\x00"
VERSION = 1
DTYPE_CODES: dict[int, type] = {
    1: np.uint8, 2: np.int8, 3: np.int16, 4: np.int32, 5: np.int64, 6: np.float64, 7: np.float32, 8: np.uint16,
}
CODE_OF = {np.dtype(v): k for k, v in DTYPE_CODES.items()}
HEADER = struct.Struct("<9sQBQQ")  # magic, version, dtype code, sequence count, doc-index count


def megatron_prefix(path: str | os.PathLike[str]) -> Path | None:
    """``PREFIX`` if ``path`` names ``PREFIX``, ``PREFIX.bin`` or ``PREFIX.idx`` and both files exist."""
    path = Path(path)
    prefix = path.with_suffix("") if path.suffix in (".bin", ".idx") else path
    bin_, idx = prefix.with_name(prefix.name + ".bin"), prefix.with_name(prefix.name + ".idx")
    return prefix if bin_.is_file() and idx.is_file() else None


@dataclass
class MegatronDataset:
    """One indexed dataset: ``tokens`` is the whole ``.bin`` memory-mapped as one token stream."""

    prefix: Path
    dtype: np.dtype
    lengths: np.ndarray
    pointers: np.ndarray
    doc_idx: np.ndarray
    tokens: np.ndarray

    def __len__(self) -> int:
        return len(self.lengths)

    def sequence(self, i: int) -> np.ndarray:
        start = int(self.pointers[i]) // self.dtype.itemsize
        return self.tokens[start:start + int(self.lengths[i])]

    @property
    def num_documents(self) -> int:
        return max(len(self.doc_idx) - 1, 0)


def read_megatron(prefix: str | os.PathLike[str]) -> MegatronDataset:
    """Read ``PREFIX.idx`` and memory-map ``PREFIX.bin``; errors name the file and what is wrong."""
    prefix = Path(prefix)
    idx_path, bin_path = prefix.with_name(prefix.name + ".idx"), prefix.with_name(prefix.name + ".bin")
    for file in (idx_path, bin_path):
        if not file.is_file():
            raise FileNotFoundError(f"{file} does not exist (a Megatron dataset needs PREFIX.bin and PREFIX.idx)")
    raw = idx_path.read_bytes()
    if len(raw) < HEADER.size:
        raise DataError(f"index is {len(raw)} bytes, shorter than the {HEADER.size}-byte header", path=idx_path)
    magic, version, code, n_seq, n_doc = HEADER.unpack_from(raw)
    if magic != MAGIC:
        raise DataError(f"not a Megatron index (magic {magic!r}, expected {MAGIC!r})", path=idx_path)
    if version != VERSION:
        raise DataError(f"unsupported index version {version} (only {VERSION} is known)", path=idx_path)
    if code not in DTYPE_CODES:
        raise DataError(f"unknown dtype code {code} (known: {sorted(DTYPE_CODES)})", path=idx_path)
    expected = HEADER.size + n_seq * 4 + n_seq * 8 + n_doc * 8
    if len(raw) < expected:
        raise DataError(f"index is truncated: {len(raw)} bytes, header promises {expected}", path=idx_path)
    offset = HEADER.size
    lengths = np.frombuffer(raw, dtype="<i4", count=n_seq, offset=offset)
    pointers = np.frombuffer(raw, dtype="<i8", count=n_seq, offset=offset + 4 * n_seq)
    doc_idx = np.frombuffer(raw, dtype="<i8", count=n_doc, offset=offset + 12 * n_seq)
    dtype = np.dtype(DTYPE_CODES[code])
    size = bin_path.stat().st_size
    end = int(pointers[-1]) + int(lengths[-1]) * dtype.itemsize if n_seq else 0
    if end != size or size % dtype.itemsize:
        raise DataError(f"size {size} bytes does not match its index ({end} bytes of {dtype})", path=bin_path)
    tokens = np.memmap(bin_path, dtype=dtype, mode="r") if size else np.zeros(0, dtype=dtype)
    return MegatronDataset(prefix, dtype, lengths, pointers, doc_idx, tokens)


def write_megatron(
    prefix: str | os.PathLike[str], documents: Iterable[Iterable[int] | np.ndarray], dtype: type = np.uint16,
) -> Path:
    """Write one sequence per document to ``PREFIX.bin`` / ``PREFIX.idx`` (each written atomically)."""
    prefix = Path(prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    dtype = np.dtype(dtype)
    if dtype not in CODE_OF:
        raise DataError(f"dtype {dtype} has no Megatron code (use one of {sorted(map(str, CODE_OF))})")
    lengths: list[int] = []
    with atomic_path(prefix.with_name(prefix.name + ".bin")) as tmp, open(tmp, "wb") as fh:
        for doc in documents:
            array = np.asarray(doc, dtype=dtype)
            fh.write(array.tobytes())
            lengths.append(len(array))
    lens = np.asarray(lengths, dtype="<i4")
    pointers = np.concatenate([[0], np.cumsum(lens.astype(np.int64))[:-1]]).astype("<i8") * dtype.itemsize
    doc_idx = np.arange(len(lens) + 1, dtype="<i8")
    with atomic_path(prefix.with_name(prefix.name + ".idx")) as tmp, open(tmp, "wb") as fh:
        fh.write(HEADER.pack(MAGIC, VERSION, CODE_OF[dtype], len(lens), len(doc_idx)))
        fh.write(lens.tobytes() + pointers[: len(lens)].tobytes() + doc_idx.tobytes())
    return prefix
