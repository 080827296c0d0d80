"""The child process of a suite: one entry per process, so a crash stays one failed row and memory
(AMU, peak) is that entry's own. ``python -m effzoo.bench.worker RUN_DIR/bench_spec.json`` reruns one.

The parent writes the spec; the worker sets its thread count, runs the spec's measure function (by
default ``effzoo.bench.runner:measure_entry``: train, then measure decoding; a suite of another kind
names its own function of the same signature), then writes ``bench_row.json`` (success) or
``bench_error.json`` (a Python exception) into the run folder.
"""
from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

SPEC_NAME = "bench_spec.json"
ERROR_NAME = "bench_error.json"
LOG_NAME = "bench.log"
DEFAULT_MEASURE = "effzoo.bench.runner:measure_entry"


def thread_env(threads: int) -> dict[str, str]:
    """Environment of a child: every BLAS / OpenMP pool sized to ``threads`` (no oversubscription)."""
    env = dict(os.environ)
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[name] = str(threads)
    package_root = str(Path(__file__).resolve().parents[2])  # effzoo importable also from a source tree
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    return env


def worker_command(spec_path: Path) -> list[str]:
    """The command line that runs one entry in its own Python process."""
    return [sys.executable, "-m", "effzoo.bench.worker", str(spec_path)]


def write_spec(run_dir: Path, entry: Any, settings: Any, threads: int, measure: str = DEFAULT_MEASURE) -> Path:
    """Save what the child needs (the entry, the suite's settings, its thread count, the ``module:function``
    that measures it) as JSON."""
    from ..atomic import write_json

    return write_json(run_dir / SPEC_NAME, {"entry": asdict(entry), "settings": asdict(settings), "threads": threads,
                                            "measure": measure})


def run_spec(spec_path: Path) -> int:
    """Train and measure the entry of ``spec_path``; 0 with ``bench_row.json`` written, 1 on an error."""
    import importlib

    import torch

    from ..atomic import write_json
    from .runner import ROW_NAME, BenchSettings
    from .suites import Entry

    spec = json.loads(spec_path.read_text())
    torch.set_num_threads(int(spec["threads"]))
    run_dir = spec_path.parent
    entry, settings = Entry(**spec["entry"]), BenchSettings(**spec["settings"])
    module, _, function = spec.get("measure", DEFAULT_MEASURE).partition(":")
    try:
        row = getattr(importlib.import_module(module), function)(entry, settings, run_dir)
    except Exception as exc:  # reported as the entry's failed row by the parent
        import traceback

        traceback.print_exc()
        write_json(run_dir / ERROR_NAME, {"error": f"{type(exc).__name__}: {exc}"})
        return 1
    write_json(run_dir / ROW_NAME, row)
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print("usage: python -m effzoo.bench.worker RUN_DIR/bench_spec.json", file=sys.stderr)
        sys.exit(2)
    sys.exit(run_spec(Path(sys.argv[1])))
