"""The ``manifest.json`` that ``effzoo data tokenize`` writes last: tokenizer, dtype, shards with counts
and checksums. A directory without it is an unfinished tokenization."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from .errors import DataError

MANIFEST_NAME = "manifest.json"
FORMAT = "effzoo-tokens"
VERSION = 1
SPLITS = ("train", "val")


def shard_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits, else uint32."""
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file's bytes, read in 4 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_manifest(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """The manifest of a tokenized directory, checked for the fields effzoo reads."""
    path = Path(directory) / MANIFEST_NAME
    if not path.is_file():
        raise FileNotFoundError(
            f"{directory} has no {MANIFEST_NAME}: not an effzoo token directory, or its tokenization did not "
            "finish (rerun the same `effzoo data tokenize` command to complete it)"
        )
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"not valid JSON ({exc})", path=path) from exc
    if manifest.get("format") != FORMAT:
        raise DataError(f"format is {manifest.get('format')!r}, expected {FORMAT!r}", path=path)
    if manifest.get("version") != VERSION:
        raise DataError(f"manifest version {manifest.get('version')!r} is not supported", path=path)
    for key in ("tokenizer", "dtype", "splits"):
        if key not in manifest:
            raise DataError(f"missing key {key!r}", path=path)
    return manifest


def verify_shards(directory: str | os.PathLike[str], manifest: dict[str, Any]) -> list[str]:
    """Problems found by recomputing every shard's size and SHA-256 (empty when all is well)."""
    problems = []
    itemsize = np.dtype(manifest["dtype"]).itemsize
    for split in SPLITS:
        for shard in manifest["splits"].get(split, {}).get("shards", []):
            file = Path(directory) / shard["path"]
            if not file.is_file():
                problems.append(f"{file}: missing")
            elif file.stat().st_size != shard["tokens"] * itemsize:
                problems.append(f"{file}: {file.stat().st_size} bytes, manifest says {shard['tokens']} tokens")
            elif file_sha256(file) != shard["sha256"]:
                problems.append(f"{file}: checksum differs from the manifest")
    return problems
