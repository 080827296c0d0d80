"""``effzoo bench --suite recall``: train every cell of the MQAR grid, resumably, then write the report.

Each finished cell is ``OUT/cells/CELL_ID.json``; a rerun reuses those and trains only the missing
cells, so an interrupted grid continues where it stopped. Every cell of a setting shares one
seeded data set (train and test disjoint), and every model starts from the same seed.
"""
from __future__ import annotations

import functools
import json
import multiprocessing
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

import effzoo
from effzoo.atomic import write_json

from .data import make_mqar
from .grid import FULL_D_MODELS, FULL_SETTINGS, RecallCell, RecallGrid, build_cell_model
from .memory import memory_bytes
from .train import TrainSettings, train_cell

# --quick, chosen by measurement on 2 CPU cores (docs/evaluation.md): at (64, 4), d_model 64 and 600
# steps GQA reaches 0.97 while Mamba-2 (0.45) and RWKV-7 (0.00) have not learnt the task yet; 393
# CPU-seconds in all, so about 3.3 minutes with one cell per core.
QUICK_SETTINGS: tuple[tuple[int, int], ...] = ((64, 4),)
QUICK_D_MODELS: tuple[int, ...] = (64,)
QUICK_TRAIN = TrainSettings(steps=600, batch_size=64)


def quick_variants() -> list[str]:
    """The variants the plugins flag ``Capabilities(quick_recall=True)``: attention against the fixed-state
    mixers (built-ins: GQA, Mamba-2, RWKV-7), in the registry's order."""
    return [spec.name for spec in effzoo.REGISTRY.list_variants(quick_recall=True)]


@dataclass
class RecallSettings:
    """What to train: variants (default all registered), grid and training settings, output folder."""

    variants: list[str] | None = None
    settings: tuple[tuple[int, int], ...] = FULL_SETTINGS
    d_models: tuple[int, ...] = FULL_D_MODELS
    train: TrainSettings = field(default_factory=TrainSettings)
    train_examples: int = 60_000  # fewer, seen more often, and attention memorises instead of generalising
    test_examples: int = 1_000
    seed: int = 0
    out: str = "runs/bench/recall"
    threads: int | None = None  # torch threads per worker (default 1)
    workers: int | None = None  # parallel cells (default: one per available CPU core)

    @classmethod
    def quick(cls, **changes: Any) -> "RecallSettings":
        """The grid that separates attention from fixed-state mixers in minutes on 2 CPU cores."""
        base: dict[str, Any] = dict(variants=quick_variants(), settings=QUICK_SETTINGS, d_models=QUICK_D_MODELS,
                                    train=QUICK_TRAIN, train_examples=20_000, test_examples=500)
        base.update({k: v for k, v in changes.items() if v is not None})
        return cls(**base)

    def grid(self) -> RecallGrid:
        names = self.variants or [spec.name for spec in effzoo.REGISTRY.list_variants()]
        for name in names:
            effzoo.make_config(name, "tiny")  # unknown names fail here, with suggestions
        return RecallGrid(tuple(names), tuple(self.settings), tuple(self.d_models))


def run_cell(cell: RecallCell, settings: RecallSettings, data: Any) -> dict[str, Any]:
    """Train one cell from the shared seed and return its result row."""
    torch.manual_seed(settings.seed)
    model = build_cell_model(cell)
    train, test = data
    result = train_cell(model, train, test, settings.train, seed=settings.seed)
    return {"variant": cell.variant, "seq_len": cell.seq_len, "kv_pairs": cell.kv_pairs, "d_model": cell.d_model,
            "setting": cell.setting, **memory_bytes(model, cell.seq_len), **result,
            "train_examples": len(train), "test_examples": len(test), "batch_size": settings.train.batch_size,
            "lr": settings.train.lr, "seed": settings.seed, "status": "ok"}


def _failed(cell: RecallCell, exc: BaseException) -> dict[str, Any]:
    print(f"effzoo bench: recall {cell.cell_id} failed: {type(exc).__name__}: {exc}", file=sys.stderr)
    return {"variant": cell.variant, "seq_len": cell.seq_len, "kv_pairs": cell.kv_pairs, "d_model": cell.d_model,
            "setting": cell.setting, "status": "failed", "error": f"{type(exc).__name__}: {exc}"}


@functools.lru_cache(maxsize=4)
def _dataset(seq_len: int, kv_pairs: int, train_examples: int, test_examples: int, seed: int) -> Any:
    return make_mqar(seq_len, kv_pairs, train_examples=train_examples, test_examples=test_examples, seed=seed)


def _job(cell: RecallCell, settings: RecallSettings) -> dict[str, Any]:
    """One cell in a worker process (its data regenerated from the seed, so identical everywhere)."""
    torch.set_num_threads(settings.threads or 1)
    data = _dataset(cell.seq_len, cell.kv_pairs, settings.train_examples, settings.test_examples, settings.seed)
    return run_cell(cell, settings, data)


def _workers(settings: RecallSettings, pending: int) -> int:
    from effzoo.cli.machine import available_cpus

    return max(1, min(pending, settings.workers or available_cpus()))


def run_recall(settings: RecallSettings) -> list[dict[str, Any]]:
    """Train (or reuse) every cell, write the tables, JSON and plot into ``settings.out``; return the rows.

    Cells train in parallel worker processes, one per CPU core (``workers``), each with one thread
    (``threads``): these models are too small to gain from more threads, and cores are not shared."""
    from .report import write_recall_report

    out = Path(settings.out)
    cells = settings.grid().cells()
    rows: dict[RecallCell, dict[str, Any]] = {}
    for cell in cells:
        path = out / "cells" / f"{cell.cell_id}.json"
        if path.exists():
            rows[cell] = json.loads(path.read_text())
            print(f"[recall] {cell.cell_id}: finished earlier, reusing {path}", flush=True)
    pending = [c for c in cells if c not in rows]
    start = time.perf_counter()

    def finish(cell: RecallCell, row: dict[str, Any]) -> None:
        rows[cell] = row
        if row["status"] == "ok":
            write_json(out / "cells" / f"{cell.cell_id}.json", row)
            print(f"[recall {len(rows)}/{len(cells)}] {cell.cell_id}: accuracy {row['accuracy']:.3f} "
                  f"({row['train_seconds']:.0f} s training, {time.perf_counter() - start:.0f} s so far)", flush=True)

    workers = _workers(settings, len(pending))
    if workers == 1:
        for cell in pending:
            try:
                row = _job(cell, settings)
            except Exception as exc:  # one broken variant must not lose the others' results
                row = _failed(cell, exc)
            finish(cell, row)
    elif pending:
        with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = {pool.submit(_job, cell, settings): cell for cell in pending}
            for future in as_completed(futures):
                cell = futures[future]
                error = future.exception()
                finish(cell, _failed(cell, error) if error is not None else future.result())
    ordered = [rows[c] for c in cells]
    write_recall_report(ordered, out)
    return ordered
