"""``open_dataset``: token data for training from an effzoo token directory or a Megatron dataset."""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import DataError
from .loader import TokenLoader
from .manifest import MANIFEST_NAME, read_manifest
from .megatron import megatron_prefix, read_megatron
from .shards import concat_tokens, memmap_tokens
from .tokenizers import Tokenizer, load_tokenizer

log = logging.getLogger(__name__)


@dataclass
class TokenDataset:
    """Train and validation token streams (memory-mapped 1-D arrays) and what they were made with."""

    train: Any
    val: Any
    vocab_size: int
    eos_id: int | None
    tokenizer: str | None
    source: str
    manifest: dict[str, Any] | None = field(default=None, repr=False)

    def split(self, name: str) -> Any:
        if name not in ("train", "val"):
            raise DataError(f"unknown split {name!r}; use 'train' or 'val'")
        tokens = self.train if name == "train" else self.val
        if len(tokens) == 0:
            raise DataError(f"the {name} split of {self.source} has no tokens"
                            + ("; tokenize with a larger --val-fraction" if name == "val" else ""))
        return tokens

    def loader(self, split: str, seq_len: int, batch_size: int, **kwargs: Any) -> TokenLoader:
        """A ``TokenLoader`` over one split that also checks token ids against ``vocab_size``."""
        kwargs.setdefault("vocab_size", self.vocab_size)
        return TokenLoader(self.split(split), seq_len, batch_size, **kwargs)

    def load_tokenizer(self) -> Tokenizer:
        if self.tokenizer is None:
            raise DataError(f"{self.source} does not record its tokenizer; pass one explicitly")
        return load_tokenizer(self.tokenizer)

    def check_range(self, chunk: int = 1 << 24) -> None:
        """Scan every token and raise ``DataError`` naming the first id outside the vocabulary."""
        for name, tokens in (("train", self.train), ("val", self.val)):
            for start in range(0, len(tokens), chunk):
                block = np.asarray(tokens[start:start + chunk])
                bad = np.flatnonzero(block.astype(np.int64) >= self.vocab_size)
                if len(bad):
                    pos = start + int(bad[0])
                    raise DataError(f"{name} token {pos} is id {int(block[bad[0]])}, outside the vocabulary "
                                    f"(size {self.vocab_size})", path=self.source)


def _open_effzoo(directory: Path) -> TokenDataset:
    manifest = read_manifest(directory)
    dtype = np.dtype(manifest["dtype"])
    splits = {}
    for name in ("train", "val"):
        parts = []
        for shard in manifest["splits"].get(name, {}).get("shards", []):
            file = directory / shard["path"]
            if not file.is_file():
                raise DataError(f"shard {shard['path']} listed in the manifest is missing", path=directory / MANIFEST_NAME)
            array = memmap_tokens(file, dtype)
            if len(array) != shard["tokens"]:
                raise DataError(f"has {len(array)} tokens, the manifest says {shard['tokens']}", path=file)
            parts.append(array)
        splits[name] = concat_tokens(parts) if parts else np.zeros(0, dtype=dtype)
    tok = manifest["tokenizer"]
    return TokenDataset(splits["train"], splits["val"], int(tok["vocab_size"]), tok.get("eos_id"), tok.get("spec"),
                        str(directory), manifest)


def _tail_split(tokens: np.ndarray, doc_starts: np.ndarray, val_fraction: float) -> tuple[Any, Any]:
    """Hold out the last whole documents making up at least ``val_fraction`` of the tokens."""
    if val_fraction <= 0 or len(doc_starts) < 2:
        return tokens, tokens[:0]
    cut_target = len(tokens) * (1 - val_fraction)
    candidates = doc_starts[(doc_starts > 0) & (doc_starts <= cut_target)]
    cut = int(candidates[-1]) if len(candidates) else int(doc_starts[1])
    return tokens[:cut], tokens[cut:]


def _open_megatron_prefixes(
    train: list[Path], val: list[Path] | None, source: str, val_fraction: float, vocab_size: int | None,
    eos_id: int | None, tokenizer: str | None,
) -> TokenDataset:
    train_sets = [read_megatron(p) for p in train]
    train_tokens = concat_tokens([d.tokens for d in train_sets])
    if val:
        val_tokens = concat_tokens([read_megatron(p).tokens for p in val])
    elif len(train_sets) == 1:
        d = train_sets[0]
        starts = (d.pointers // d.dtype.itemsize)[np.clip(d.doc_idx[:-1], 0, max(len(d) - 1, 0))] if len(d) else d.pointers
        train_tokens, val_tokens = _tail_split(d.tokens, np.asarray(starts), val_fraction)
    else:
        val_tokens = train_sets[-1].tokens
        train_tokens = concat_tokens([d.tokens for d in train_sets[:-1]])
    if tokenizer is not None:
        tok = load_tokenizer(tokenizer)
        vocab_size = vocab_size or tok.vocab_size
        eos_id = tok.eos_id if eos_id is None else eos_id
        tokenizer = tok.spec
    if vocab_size is None:
        highest = max((int(np.max(t[i:i + (1 << 24)])) for t in (train_tokens, val_tokens)
                       for i in range(0, len(t), 1 << 24)), default=0)
        vocab_size = highest + 1
        log.warning("%s records no vocabulary size; using max token id + 1 = %d (pass vocab_size= or "
                    "tokenizer= to set it)", source, vocab_size)
    return TokenDataset(train_tokens, val_tokens, int(vocab_size), eos_id, tokenizer, source)


def _prefixes_in(directory: Path) -> list[Path]:
    return sorted({p for f in directory.glob("*.idx") if (p := megatron_prefix(f)) is not None})


def open_dataset(
    path: str | os.PathLike[str], *, vocab_size: int | None = None, eos_id: int | None = None,
    tokenizer: str | None = None, val_fraction: float = 0.005,
) -> TokenDataset:
    """Open training data: a directory written by ``effzoo data tokenize`` (``manifest.json`` + shards),
    a Megatron/MindSpeed prefix (``PREFIX``, ``PREFIX.bin`` or ``PREFIX.idx``; the last documents making
    up ``val_fraction`` of the tokens are the validation split), or a directory of Megatron datasets
    (``train/`` + ``val/`` subdirectories, or ``*.idx`` files, the last one used for validation).
    ``vocab_size`` / ``eos_id`` / ``tokenizer`` fill what Megatron files do not record."""
    path = Path(path).expanduser()
    if path.is_dir() and (path / MANIFEST_NAME).is_file():
        return _open_effzoo(path)
    prefix = megatron_prefix(path)
    if prefix is not None:
        return _open_megatron_prefixes([prefix], None, str(prefix), val_fraction, vocab_size, eos_id, tokenizer)
    if path.is_dir():
        train_dir, val_dir = path / "train", path / "val"
        if train_dir.is_dir() and _prefixes_in(train_dir):
            val = _prefixes_in(val_dir) if val_dir.is_dir() else None
            return _open_megatron_prefixes(_prefixes_in(train_dir), val or None, str(path), val_fraction,
                                           vocab_size, eos_id, tokenizer)
        if _prefixes_in(path):
            return _open_megatron_prefixes(_prefixes_in(path), None, str(path), val_fraction,
                                           vocab_size, eos_id, tokenizer)
        return _open_effzoo(path)  # raises the "no manifest" error
    raise FileNotFoundError(
        f"{path} is neither an effzoo token directory (manifest.json), a Megatron dataset (PREFIX.bin + "
        "PREFIX.idx) nor a directory of them"
    )
