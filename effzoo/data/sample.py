"""Sample a training subset from parquet/JSONL corpora: a byte budget, a language mix (e.g. zh 20% /
en 80%), a minimum quality score per language, parquet shards of a target size; deterministic by seed.

Input files are visited in an order shuffled by the seed, and rows within blocks of ``block_rows``
are shuffled too; a row is kept while its language's budget (``target_bytes * ratio`` of UTF-8 text)
is not yet full, so each language overshoots by less than one document. Reading stops once every
budget is full.
"""
from __future__ import annotations

import os
import random
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from effzoo.errors import ConfigError

from ..atomic import atomic_path, write_json
from .errors import DataError, require_pyarrow
from .readers import input_files, iter_records

LANGUAGE_ALIASES = {"zh": "zh", "cn": "zh", "chinese": "zh", "zho": "zh", "en": "en", "english": "en", "eng": "en"}
META_COLUMNS = ["language", "lang", "score", "int_score"]
REPORT_NAME = "sample_report.json"
_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")


def normalize_language(value: Any) -> str | None:
    if not isinstance(value, str) or not value:
        return None
    key = value.strip().lower().replace("_", "-")
    return LANGUAGE_ALIASES.get(key, LANGUAGE_ALIASES.get(key.split("-")[0], key))


def path_language(path: Path) -> str | None:
    """A language named by a folder or file-name part, as in Ultra-FineWeb's ``en/`` and ``zh/``."""
    for part in reversed(path.parts[:-1] + tuple(re.split(r"[-_.]", path.stem))):
        lang = LANGUAGE_ALIASES.get(part.lower())
        if lang:
            return lang
    return None


def text_language(text: str) -> str:
    """``zh`` when over 30% of the first 2,000 characters are CJK ideographs, else ``en``."""
    head = text[:2000]
    return "zh" if head and len(_CJK.findall(head)) > 0.3 * len(head) else "en"


@dataclass
class _Quota:
    budget: int
    taken: int = 0
    documents: int = 0

    @property
    def full(self) -> bool:
        return self.taken >= self.budget


@dataclass
class _ShardSink:
    """Buffers kept rows and writes ``part-NNNNN.parquet`` files of about ``shard_bytes`` of text."""

    out: Path
    shard_bytes: int
    rows: list[dict] = field(default_factory=list)
    size: int = 0
    shards: list[dict] = field(default_factory=list)

    def add(self, row: dict, nbytes: int) -> None:
        self.rows.append(row)
        self.size += nbytes
        if self.size >= self.shard_bytes:
            self.flush()

    def flush(self) -> None:
        if not self.rows:
            return
        pq = require_pyarrow()
        import pyarrow as pa

        schema = pa.schema([("text", pa.string()), ("language", pa.string()), ("score", pa.float64()),
                            ("source", pa.string()), ("source_row", pa.int64())])
        table = pa.Table.from_pylist(self.rows, schema=schema)
        name = f"part-{len(self.shards):05d}.parquet"
        with atomic_path(self.out / name) as tmp:
            pq.write_table(table, tmp)
        self.shards.append({"path": name, "rows": len(self.rows), "text_bytes": self.size})
        self.rows, self.size = [], 0


def _score(record: dict) -> float | None:
    for key in ("score", "int_score"):
        if record.get(key) is not None:
            return float(record[key])
    return None


def _shuffled_blocks(records: Iterator[tuple[int, dict]], rng: random.Random, block_rows: int):
    block: list[tuple[int, dict]] = []
    for item in records:
        block.append(item)
        if len(block) >= block_rows:
            rng.shuffle(block)
            yield from block
            block = []
    rng.shuffle(block)
    yield from block


def sample(
    inputs: Iterable[str | os.PathLike[str]], out: str | os.PathLike[str], *, target_bytes: int,
    ratios: dict[str, float] | None = None, min_score: dict[str, float] | float | None = None,
    shard_bytes: int = 500 * 2**20, seed: int = 0, text_column: str | None = None, on_error: str = "raise",
    block_rows: int = 10_000, overwrite: bool = False, progress: bool = False,
) -> dict[str, Any]:
    """Write the sample to ``out`` as parquet shards plus ``sample_report.json``; returns the report."""
    ratios = {normalize_language(k): float(v) for k, v in (ratios or {"en": 1.0}).items()}
    if any(v < 0 for v in ratios.values()) or abs(sum(ratios.values()) - 1) > 1e-6:
        raise ConfigError(f"language ratios must be non-negative and sum to 1, got {ratios}")
    if not isinstance(min_score, dict):
        min_score = {lang: float(min_score or 0.0) for lang in ratios}
    min_score = {normalize_language(k): float(v) for k, v in min_score.items()}
    out = Path(out)
    if out.exists() and any(out.glob("part-*.parquet")) and not overwrite:
        raise ConfigError(f"{out} already holds sampled shards; choose another --out or pass --overwrite")
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("part-*.parquet"):
        old.unlink()
    files = input_files(inputs, formats=("parquet", "jsonl"))
    rng = random.Random(seed)
    order = list(files)
    rng.shuffle(order)
    quotas = {lang: _Quota(int(target_bytes * r)) for lang, r in ratios.items() if r > 0}
    sink = _ShardSink(out, shard_bytes)
    counts: Counter = Counter()
    files_read = 0
    from tqdm import tqdm

    bar = tqdm(total=sum(q.budget for q in quotas.values()), unit="B", unit_scale=True, desc="sampling",
               disable=not progress)
    for path in order:
        if all(q.full for q in quotas.values()):
            break
        files_read += 1
        fallback = path_language(path)
        records = iter_records(path, META_COLUMNS, text_column=text_column, on_error=on_error, skipped=counts)
        for row, record in _shuffled_blocks(records, rng, block_rows):
            text = record["text"]
            lang = (normalize_language(record.get("language")) or normalize_language(record.get("lang"))
                    or fallback or text_language(text))
            quota = quotas.get(lang)
            if quota is None:
                counts[f"language {lang} not requested"] += 1
                continue
            if quota.full:
                counts[f"{lang} budget full"] += 1
                continue
            score = _score(record)
            threshold = min_score.get(lang, 0.0)
            if threshold > 0 and score is None:
                raise DataError(f"no score or int_score to filter on (min score {threshold} for {lang}); "
                                "use --min-score 0 for unscored corpora", path=path, row=row)
            if score is not None and score < threshold:
                counts[f"{lang} below min score"] += 1
                continue
            nbytes = len(text.encode("utf-8"))
            quota.taken += nbytes
            quota.documents += 1
            bar.update(nbytes)
            sink.add({"text": text, "language": lang, "score": score, "source": str(path), "source_row": row},
                     nbytes)
            if all(q.full for q in quotas.values()):
                break
    bar.close()
    sink.flush()
    report = {
        "target_bytes": target_bytes, "ratios": ratios, "min_score": min_score, "seed": seed,
        "shard_bytes": shard_bytes, "files_read": files_read, "files_available": len(files),
        "languages": {lang: {"budget_bytes": q.budget, "text_bytes": q.taken, "documents": q.documents,
                             "complete": q.full} for lang, q in quotas.items()},
        "skipped": dict(counts), "shards": sink.shards,
    }
    write_json(out / REPORT_NAME, report)
    return report
