"""``effzoo report``: rebuild the tables and plots from finished benchmark folders or training runs."""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from effzoo.bench.runner import ROW_NAME, write_report
from effzoo.errors import EffzooError
from effzoo.metrics.summary import SUMMARY_NAME


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("sources", nargs="+", help="benchmark output folders (results.json) or training run folders")
    parser.add_argument("--out", default="runs/report", help="where to write tables and plots")
    parser.add_argument("--paper", action="store_true",
                        help="also write paper.md/json: the EfficientLLM paper's values beside the measured ones")


def rows_from(source: Path) -> list[dict[str, Any]]:
    """Rows of a benchmark folder (refreshed from each run's bench_row.json) or of one training run."""
    results = source / "results.json"
    if results.exists():
        rows = []
        for row in json.loads(results.read_text()):
            run_dir = Path(row.get("run_dir", ""))
            if not run_dir.is_absolute() and (source / run_dir).is_dir():  # a suite run with a relative --out
                row = {**row, "run_dir": str(source / run_dir)}
            fresh = Path(row["run_dir"]) / ROW_NAME if row.get("run_dir") else None
            row = {**row, **json.loads(fresh.read_text()), "run_dir": row["run_dir"]} \
                if fresh is not None and fresh.exists() else row
            if "gpu_hours" in row and "device_hours" not in row:  # written before effzoo named them device hours
                row["device_hours"] = row.pop("gpu_hours")
            rows.append(row)
        return rows
    summary = source / SUMMARY_NAME
    if summary.exists():
        m = json.loads(summary.read_text())
        return [{
            "group": "runs", "method": source.name, "variant": m.get("variant"), "size": m.get("size"),
            "params": m.get("params"), "context_length": m.get("seq_len"), "ppl": m.get("ppl"),
            "amu_gb": m.get("amu_gb"), "al_s_per_iter": m.get("al_s"), "tt": m.get("tt"), "aec_w": m.get("aec_w"),
            "device_hours": m.get("gpu_hours"), "mfu": m.get("mfu"), "tokens_per_s": m.get("tokens_per_s"),
            "peak_memory_gb": m.get("peak_memory_gb"), "steps": m.get("steps"), "tokens": m.get("tokens"),
            "batch_size": m.get("global_batch"), "device": m.get("device"), "device_kind": m.get("backend"),
            "dtype": m.get("dtype"), "energy_source": m.get("energy_source"),
            "peak_tflops": m["peak_flops_per_device"] / 1e12 if m.get("peak_flops_per_device") else None,
            "peak_source": m.get("peak_flops_source"), "run_dir": str(source), "status": "ok",
        }]
    raise EffzooError(f"{source} has neither results.json (a benchmark folder) nor {SUMMARY_NAME} (a training run)")


def run(args: argparse.Namespace) -> int:
    rows = [row for source in args.sources for row in rows_from(Path(source))]
    paths = write_report(rows, Path(args.out))
    if args.paper:
        from effzoo.bench.paper import write_paper_report

        paths += write_paper_report(rows, Path(args.out))
    print("\n".join(str(p) for p in paths))
    return 0
