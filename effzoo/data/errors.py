"""Data errors that name the file (and row) at fault."""
from __future__ import annotations

import os

from effzoo.errors import EffzooError


class DataError(ValueError, EffzooError):
    """A data file that cannot be used as given; names the file and, where known, the row."""

    def __init__(self, message: str, *, path: str | os.PathLike[str] | None = None, row: int | None = None):
        self.path = None if path is None else str(path)
        self.row = row
        where = ""
        if self.path is not None:
            where = f"{self.path}" + (f", row {row}" if row is not None else "") + ": "
        super().__init__(where + message)


def require_pyarrow():
    """Import pyarrow, or explain how to get it (it is in the ``data`` extra, not the core install)."""
    try:
        import pyarrow.parquet as pq
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise EffzooError(
            "reading or writing parquet needs pyarrow: pip install 'effzoo[data]' (or pip install pyarrow)"
        ) from exc
    return pq
