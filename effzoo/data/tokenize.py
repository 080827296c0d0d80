"""Text files -> token shards: one shard pair (train/val) per input file, EOS after every document,
a per-document seeded train/val split, multiprocessing, and resumability.

Layout of ``out``: ``train/<unit>.bin`` and ``val/<unit>.bin`` (raw uint16/uint32 tokens),
``parts/<unit>.json`` (written last for each input: its presence marks the shard pair finished),
``settings.json`` (what a rerun must match) and ``manifest.json`` (written once everything is done).
"""
from __future__ import annotations

import contextlib

import hashlib
import json
import multiprocessing
import os
import re
import shutil
import zlib
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from effzoo.errors import ConfigError

from ..atomic import atomic_path, write_json
from .errors import DataError
from .manifest import FORMAT, MANIFEST_NAME, VERSION, read_manifest, shard_dtype
from .readers import input_files, iter_documents
from .tokenizers import Tokenizer, load_tokenizer

SETTINGS_NAME = "settings.json"


@dataclass(frozen=True)
class TokenizeSettings:
    """Everything that decides the output; a rerun into the same directory must use the same."""

    tokenizer: str
    tokenizer_fingerprint: str
    dtype: str
    val_fraction: float
    seed: int
    text_column: str | None
    on_error: str


@dataclass(frozen=True)
class Unit:
    """One input file and the name of its shards."""

    index: int
    path: str
    name: str
    size: int
    mtime_ns: int


def _unit_name(index: int, path: Path) -> str:
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", path.stem)[:60]
    return f"{index:05d}-{stem}"


def plan_units(files: Sequence[Path]) -> list[Unit]:
    units = []
    for i, f in enumerate(files):
        st = f.stat()
        units.append(Unit(i, str(f.resolve()), _unit_name(i, f), st.st_size, st.st_mtime_ns))
    return units


class _ShardWriter:
    """Append token arrays to a temporary file, hashing as it goes; ``commit`` renames it into place."""

    def __init__(self, target: Path, dtype: np.dtype) -> None:
        self.target, self.dtype = target, dtype
        self._ctx = atomic_path(target)
        self.tmp = self._ctx.__enter__()
        self.fh = open(self.tmp, "wb")
        self.sha = hashlib.sha256()
        self.tokens = self.documents = 0

    def write(self, ids: np.ndarray, documents: int) -> None:
        data = ids.astype(self.dtype, copy=False).tobytes()
        self.fh.write(data)
        self.sha.update(data)
        self.tokens += len(ids)
        self.documents += documents

    def commit(self) -> dict[str, Any]:
        self.fh.close()
        self._ctx.__exit__(None, None, None)
        return {"tokens": self.tokens, "documents": self.documents, "sha256": self.sha.hexdigest()}

    def abort(self, exc: BaseException) -> None:
        self.fh.close()
        with contextlib.suppress(Exception):  # the caller re-raises ``exc``; cleanup must not mask it
            self._ctx.__exit__(type(exc), exc, exc.__traceback__)


_WORKER_TOKENIZER: dict[str, Tokenizer] = {}


def _tokenizer(spec: str) -> Tokenizer:
    if spec not in _WORKER_TOKENIZER:
        _WORKER_TOKENIZER[spec] = load_tokenizer(spec)
    return _WORKER_TOKENIZER[spec]


def _encode(tok: Tokenizer, texts: list[str], eos: int) -> list[np.ndarray]:
    if tok.spec == "byte":
        return [np.append(np.frombuffer(t.encode("utf-8"), dtype=np.uint8).astype(np.uint32), eos) for t in texts]
    return [np.asarray(ids + [eos], dtype=np.int64) for ids in tok.encode_batch(texts)]


def tokenize_unit(unit: Unit, out: str, settings: TokenizeSettings, batch_docs: int = 512) -> dict[str, Any]:
    """Tokenize one input file into ``train/`` and ``val/`` shards and record it in ``parts/``."""
    tok = _tokenizer(settings.tokenizer)
    dtype = np.dtype(settings.dtype)
    root = Path(out)
    rng = np.random.default_rng([settings.seed, zlib.crc32(unit.name.encode())])
    skipped: Counter = Counter()
    writers = {s: _ShardWriter(root / s / f"{unit.name}.bin", dtype) for s in ("train", "val")}
    try:
        batch: list[tuple[int, str]] = []
        docs = iter_documents(unit.path, text_column=settings.text_column, on_error=settings.on_error,
                              skipped=skipped)
        for item in docs:
            batch.append(item)
            if len(batch) >= batch_docs:
                _write_batch(tok, batch, writers, rng, settings.val_fraction, unit)
                batch = []
        if batch:
            _write_batch(tok, batch, writers, rng, settings.val_fraction, unit)
        shards = {s: w.commit() for s, w in writers.items()}
    except BaseException as exc:
        for w in writers.values():
            w.abort(exc)
        raise
    part = {"unit": asdict(unit), "skipped": dict(skipped),
            "shards": {s: {"path": f"{s}/{unit.name}.bin", **meta} for s, meta in shards.items()}}
    write_json(root / "parts" / f"{unit.name}.json", part)
    return part


def _write_batch(tok: Tokenizer, batch: list[tuple[int, str]], writers: dict[str, _ShardWriter],
                 rng: np.random.Generator, val_fraction: float, unit: Unit) -> None:
    eos = tok.eos_id
    encoded = _encode(tok, [text for _, text in batch], eos)
    is_val = rng.random(len(batch)) < val_fraction
    limit = np.iinfo(writers["train"].dtype).max
    for split, mask in (("train", ~is_val), ("val", is_val)):
        chosen = [ids for ids, keep in zip(encoded, mask) if keep]
        if not chosen:
            continue
        joined = np.concatenate(chosen)
        if joined.size and (int(joined.max()) > limit or int(joined.min()) < 0):
            bad = next(i for i, ids in enumerate(encoded) if ids.size and (ids.max() > limit or ids.min() < 0))
            raise DataError(f"token id {int(encoded[bad].max())} does not fit {writers['train'].dtype}",
                            path=unit.path, row=batch[bad][0])
        writers[split].write(joined, len(chosen))


def _settings_match(root: Path, settings: TokenizeSettings, overwrite: bool) -> None:
    """Refuse to mix shards made with other settings; ``on_error`` may change (a finished file had no
    bad rows under ``raise``, so it is the same under ``skip``)."""
    file = root / SETTINGS_NAME
    if file.is_file() and not overwrite:
        saved = json.loads(file.read_text())
        diff = {k: (saved.get(k), v) for k, v in asdict(settings).items() if saved.get(k) != v and k != "on_error"}
        if diff:
            details = "; ".join(f"{k}: {a!r} there, {b!r} now" for k, (a, b) in diff.items())
            raise ConfigError(f"{root} was tokenized with other settings ({details}); use another --out "
                              "or --overwrite")
    elif overwrite:
        for sub in ("train", "val", "parts"):
            shutil.rmtree(root / sub, ignore_errors=True)
        (root / MANIFEST_NAME).unlink(missing_ok=True)
    for sub in ("train", "val", "parts"):  # temporary files of a killed run
        for stale in (root / sub).glob(".*.tmp"):
            stale.unlink()
    write_json(file, asdict(settings))


def _finished(root: Path, unit: Unit) -> dict[str, Any] | None:
    file = root / "parts" / f"{unit.name}.json"
    if not file.is_file():
        return None
    part = json.loads(file.read_text())
    recorded = part.get("unit", {})
    same = all(recorded.get(k) == getattr(unit, k) for k in ("path", "size", "mtime_ns"))
    shards_there = all((root / s["path"]).is_file() for s in part.get("shards", {}).values())
    return part if same and shards_there else None


def tokenize(
    inputs: Iterable[str | os.PathLike[str]], out: str | os.PathLike[str], tokenizer: str = "byte", *,
    val_fraction: float = 0.005, seed: int = 0, text_column: str | None = None, on_error: str = "raise",
    workers: int = 1, progress: bool = False, overwrite: bool = False, eos_token: str | None = None,
) -> dict[str, Any]:
    """Tokenize every document of ``inputs`` into ``out``; returns the manifest. Rerunning the same
    command skips finished inputs, so an interrupted run continues where it stopped."""
    if not 0 <= val_fraction < 1:
        raise ConfigError(f"val_fraction must be in [0, 1), got {val_fraction}")
    tok = load_tokenizer(tokenizer, eos_token=eos_token)
    if tok.eos_id is None:
        raise ConfigError(f"tokenizer {tok.spec} has no end-of-text token; name one with --eos-token")
    units = plan_units(input_files(inputs))
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    settings = TokenizeSettings(tok.spec, tok.fingerprint, shard_dtype(tok.vocab_size).name, val_fraction, seed,
                                text_column, on_error)
    _settings_match(root, settings, overwrite)
    _WORKER_TOKENIZER[tok.spec] = tok
    parts: dict[int, dict[str, Any]] = {}
    pending = []
    for unit in units:
        done = _finished(root, unit)
        if done is None:
            pending.append(unit)
        else:
            parts[unit.index] = done
    bar = _progress(progress, sum(u.size for u in pending), len(units) - len(pending))
    try:
        if workers > 1 and len(pending) > 1:
            ctx = multiprocessing.get_context(_start_method())
            with ctx.Pool(min(workers, len(pending)), initializer=_quiet_worker) as pool:
                jobs = [pool.apply_async(tokenize_unit, (u, str(root), settings)) for u in pending]
                for unit, job in zip(pending, jobs):
                    parts[unit.index] = job.get()
                    bar.update(unit.size)
        else:
            for unit in pending:
                parts[unit.index] = tokenize_unit(unit, str(root), settings)
                bar.update(unit.size)
    finally:
        bar.close()
    manifest = _manifest(tok, settings, units, parts)
    write_json(root / MANIFEST_NAME, manifest)
    return read_manifest(root)


def _start_method() -> str:
    """``fork`` where the platform has it (workers inherit the imports: fast start), else ``spawn``.
    Workers only read files, tokenize and write; they never touch torch or threads of the parent."""
    return "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"


def _quiet_worker() -> None:
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one core per worker process


def _progress(enabled: bool, total: int, skipped_units: int):
    """Input bytes done, rate and ETA: a bar on a terminal, a line every 10 s otherwise, nothing if quiet."""
    from ..metrics.progress import make_progress

    desc = "tokenizing" + (f" ({skipped_units} inputs already done)" if skipped_units else "")
    return make_progress(total, desc=desc, unit="B", unit_scale=True, quiet=not enabled)


def _manifest(tok: Tokenizer, settings: TokenizeSettings, units: list[Unit], parts: dict[int, dict]) -> dict:
    splits: dict[str, dict[str, Any]] = {}
    skipped: Counter = Counter()
    for split in ("train", "val"):
        shards = [{**parts[u.index]["shards"][split], "source": u.path} for u in units]
        splits[split] = {"tokens": sum(s["tokens"] for s in shards), "documents": sum(s["documents"] for s in shards),
                         "shards": shards}
    for u in units:
        skipped.update(parts[u.index].get("skipped", {}))
    return {
        "format": FORMAT, "version": VERSION,
        "tokenizer": {"spec": tok.spec, "name": tok.name, "vocab_size": tok.vocab_size, "eos_id": tok.eos_id,
                      "fingerprint": tok.fingerprint},
        "dtype": settings.dtype, "val_fraction": settings.val_fraction, "seed": settings.seed,
        "text_column": settings.text_column, "on_error": settings.on_error,
        "inputs": [{"path": u.path, "bytes": u.size} for u in units],
        "skipped": dict(skipped), "splits": splits,
    }
