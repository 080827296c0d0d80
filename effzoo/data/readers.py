"""Reading documents from parquet, JSONL and text files, with errors that name the file and row.

``on_error="raise"`` (default) stops at the first bad file or row; ``"skip"`` skips it and counts the
reason in a ``collections.Counter`` passed as ``skipped``.
"""
from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path

from .errors import DataError, require_pyarrow

TEXT_COLUMNS = ("text", "content")  # FineWeb-Edu, Ultra-FineWeb
FORMATS = {".parquet": "parquet", ".jsonl": "jsonl", ".json": "jsonl", ".txt": "text", ".text": "text", ".md": "text"}
# Found when searching directories; .json/.md/.text only count when named (reports, READMEs).
DIRECTORY_SUFFIXES = (".parquet", ".jsonl", ".txt")
ON_ERROR = ("raise", "skip")


def file_format(path: str | os.PathLike[str]) -> str:
    """``parquet``, ``jsonl`` or ``text`` from the file suffix."""
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise DataError(f"unsupported file type {suffix!r}; use one of {', '.join(sorted(FORMATS))}", path=path)
    return FORMATS[suffix]


def input_files(paths: Iterable[str | os.PathLike[str]], formats: Iterable[str] | None = None) -> list[Path]:
    """Files named directly plus ``.parquet``/``.jsonl``/``.txt`` files found (recursively, sorted, hidden
    ones excluded) under directories."""
    wanted = set(formats or FORMATS.values())
    found: list[Path] = []
    for entry in map(Path, paths):
        if entry.is_dir():
            hits = sorted(p for p in entry.rglob("*") if p.is_file() and not p.name.startswith(".")
                          and p.suffix.lower() in DIRECTORY_SUFFIXES and FORMATS[p.suffix.lower()] in wanted)
            if not hits:
                raise FileNotFoundError(f"no {'/'.join(sorted(wanted))} files under {entry}")
            found += hits
        elif entry.is_file():
            file_format(entry)
            found.append(entry)
        else:
            raise FileNotFoundError(f"{entry} does not exist")
    return found


def _fail(message: str, path: Path, row: int | None, on_error: str, skipped: Counter | None, reason: str) -> None:
    if on_error == "raise":
        raise DataError(message, path=path, row=row)
    if skipped is not None:
        skipped[reason] += 1


def choose_text_column(columns: Iterable[str], path: Path, text_column: str | None) -> str:
    """``text_column`` if given, else the first of ``text``/``content`` present; a clear error otherwise."""
    columns = list(columns)
    candidates = (text_column,) if text_column else TEXT_COLUMNS
    for name in candidates:
        if name in columns:
            return name
    raise DataError(f"no text column {' or '.join(map(repr, candidates))}; columns are {', '.join(columns)} "
                    "(choose one with --text-column)", path=path)


def open_parquet(path: Path):
    """A ``pyarrow.parquet.ParquetFile``; a corrupt or truncated file raises ``DataError`` naming it."""
    pq = require_pyarrow()
    import pyarrow as pa

    try:
        return pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"not a readable parquet file ({exc})", path=path) from exc


def _parquet_rows(path: Path, columns: list[str], batch_rows: int) -> Iterator[dict]:
    import pyarrow as pa

    handle = open_parquet(path)
    row = 0
    try:
        for batch in handle.iter_batches(batch_size=batch_rows, columns=columns):
            data = batch.to_pydict()
            for i in range(batch.num_rows):
                yield {name: data[name][i] for name in columns}
                row += 1
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"corrupt parquet data near row {row} ({exc})", path=path, row=row) from exc


def iter_records(
    path: str | os.PathLike[str], columns: list[str] | None = None, *, text_column: str | None = None,
    on_error: str = "raise", skipped: Counter | None = None, batch_rows: int = 4096,
) -> Iterator[tuple[int, dict]]:
    """``(row, record)`` pairs of a parquet or JSONL file; ``record["text"]`` is the document text and
    ``columns`` (when present in the file) are copied alongside. Rows are counted from 0 (JSONL: lines)."""
    path = Path(path)
    if on_error not in ON_ERROR:
        raise DataError(f"on_error must be one of {ON_ERROR}, not {on_error!r}")
    if path.stat().st_size == 0:
        _fail("file is empty", path, None, on_error, skipped, "empty file")
        return
    kind = file_format(path)
    extra = list(columns or [])
    if kind == "parquet":
        names = open_parquet(path).schema_arrow.names
        column = choose_text_column(names, path, text_column)
        present = [c for c in extra if c in names and c != column]
        rows: Iterable[tuple[int, dict | None, str | None]] = (
            (i, rec, None) for i, rec in enumerate(_parquet_rows(path, [column, *present], batch_rows))
        )
    elif kind == "jsonl":
        column = ""
        rows = _jsonl_rows(path)
    else:
        raise DataError("text files hold no records; use iter_documents", path=path)
    for row, record, problem in rows:
        if problem is not None:
            _fail(problem, path, row, on_error, skipped, problem.split(" (")[0])
            continue
        if kind == "jsonl":
            try:
                column = choose_text_column(record.keys(), path, text_column)
            except DataError as exc:
                _fail(str(exc).split(": ", 1)[1], path, row, on_error, skipped, "no text column")
                continue
        text = record.get(column)
        if text is None or (isinstance(text, str) and not text.strip()):
            if skipped is not None:
                skipped["empty text"] += 1
            continue
        if isinstance(text, bytes):
            try:
                text = text.decode("utf-8")
            except UnicodeDecodeError as exc:
                _fail(f"text is not valid UTF-8 ({exc})", path, row, on_error, skipped, "not UTF-8")
                continue
        if not isinstance(text, str):
            _fail(f"column {column!r} holds {type(text).__name__}, not text", path, row, on_error, skipped,
                  "not text")
            continue
        out = {c: record.get(c) for c in extra if c in record and c != column}
        out["text"] = text
        yield row, out


def _jsonl_rows(path: Path) -> Iterator[tuple[int, dict | None, str | None]]:
    with open(path, "rb") as fh:
        for row, raw in enumerate(fh):
            if not raw.strip():
                continue
            try:
                record = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError as exc:
                yield row, None, f"line is not valid UTF-8 ({exc})"
                continue
            except json.JSONDecodeError as exc:
                yield row, None, f"line is not valid JSON ({exc})"
                continue
            if not isinstance(record, dict):
                yield row, None, f"line is not a JSON object ({type(record).__name__})"
                continue
            yield row, record, None


def _text_documents(path: Path, on_error: str, skipped: Counter | None) -> Iterator[tuple[int, str]]:
    """Blank-line-separated paragraphs; the row is the 0-based line where a paragraph starts."""
    lines: list[str] = []
    start = 0
    with open(path, "rb") as fh:
        for number, raw in enumerate(fh):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                _fail(f"line is not valid UTF-8 ({exc})", path, number, on_error, skipped, "not UTF-8")
                continue
            if line.strip():
                if not lines:
                    start = number
                lines.append(line)
            elif lines:
                yield start, "".join(lines).strip("\n")
                lines = []
    if lines:
        yield start, "".join(lines).strip("\n")


def iter_documents(
    path: str | os.PathLike[str], *, text_column: str | None = None, on_error: str = "raise",
    skipped: Counter | None = None,
) -> Iterator[tuple[int, str]]:
    """``(row, text)`` for every document of a parquet, JSONL or text file."""
    path = Path(path)
    if file_format(path) == "text":
        if path.stat().st_size == 0:
            _fail("file is empty", path, None, on_error, skipped, "empty file")
            return
        yield from _text_documents(path, on_error, skipped)
        return
    for row, record in iter_records(path, text_column=text_column, on_error=on_error, skipped=skipped):
        yield row, record["text"]
