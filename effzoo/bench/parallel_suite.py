"""``effzoo bench --suite parallel``: throughput of one model under several parallel layouts and global
batch sizes (the Ascend lab's ablation: TP / PP / CP against pure DP).

Each (layout, batch size) cell is one ``torchrun --standalone`` child running ``effzoo train`` with the
layout's ``--tp/--pp/--cp`` on ``layout.world_size`` processes of this node; a child that fails is a failed
row with its last error line. Columns:

- ``lab_tokens_per_s``: the lab's definition, TOKENS_PER_STEP / sec_per_step, with sec_per_step the mean
  time of every step including the first;
- ``tokens_per_s``: effzoo's, timed tokens / timed seconds (the first step, with its warm-up, excluded);
- ``mfu``, ``peak_memory_gb`` (the largest over the devices), ``comm_s_per_step`` (the trainer's own
  collectives per step: gradient reduction, norm and loss; TP's in-layer all-reduces and PP's
  send/receive count in the step time, not here).
"""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..registry import REGISTRY
from ..train.layout import Layout, parse_layout

COLUMNS = ("layout", "batch_size", "status", "lab_tokens_per_s", "tokens_per_s", "mfu", "peak_memory_gb",
           "comm_s_per_step", "sec_per_step", "error")


@dataclass
class ParallelSweep:
    """What the sweep trains and where it writes."""

    variant: str
    size: str = "0.5B"
    layouts: list[Layout] = field(default_factory=lambda: [Layout(dp=8)])
    batch_sizes: list[int] = field(default_factory=lambda: [8])
    seq_len: int = 2048
    steps: int = 10
    out: Path = Path("runs/bench-parallel")
    extra: list[str] = field(default_factory=list)  # further `effzoo train` flags (--backend, --dtype, --data ...)
    threads: int | None = None  # OMP_NUM_THREADS of every process (None: inherited)


def cell_command(sweep: ParallelSweep, layout: Layout, batch_size: int, out: Path) -> list[str]:
    """The torchrun command of one cell (PP layouts take one micro-batch per stage: --grad-accum = pp)."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(layout.world_size),
            "-m", "effzoo", "train", sweep.variant, "--size", sweep.size, "--seq-len", str(sweep.seq_len),
            "--batch-size", str(batch_size), "--grad-accum", str(layout.pp), "--steps", str(sweep.steps),
            "--tp", str(layout.tp), "--pp", str(layout.pp), "--cp", str(layout.cp),
            "--eval-every", "0", "--eval-batches", "1", "--ckpt-every", "0", "--keep-checkpoints", "1",
            "--no-tensorboard", "--quiet", "--out", str(out), *sweep.extra]


def row_from_run(layout: Layout, batch_size: int, seq_len: int, out: Path) -> dict[str, Any]:
    """One table row from a finished cell's metrics.json and metrics.jsonl."""
    metrics = json.loads((out / "metrics.json").read_text())
    step_times = [json.loads(line)["dt_s"] for line in (out / "metrics.jsonl").read_text().splitlines()
                  if '"kind": "train"' in line]
    sec_per_step = sum(step_times) / len(step_times)
    timed = max(1, int(metrics.get("timed_steps") or 1))
    return {
        "layout": layout.name, "batch_size": batch_size, "status": "ok",
        "lab_tokens_per_s": batch_size * seq_len / sec_per_step, "tokens_per_s": metrics["tokens_per_s"],
        "mfu": metrics.get("mfu"), "peak_memory_gb": metrics.get("peak_memory_gb"),
        "comm_s_per_step": (metrics.get("al_comm_s") or 0.0) if timed else None,
        "sec_per_step": sec_per_step, "error": "",
    }


def run_cell(sweep: ParallelSweep, layout: Layout, batch_size: int) -> dict[str, Any]:
    out = sweep.out / "runs" / f"{layout.name}-b{batch_size}"
    command = cell_command(sweep, layout, batch_size, out)
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    if sweep.threads is not None:
        env["OMP_NUM_THREADS"] = str(sweep.threads)
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    if result.returncode != 0 or not (out / "metrics.json").is_file():
        errors = [line for line in result.stderr.splitlines() if "error" in line.lower()] or result.stderr.splitlines()
        return {"layout": layout.name, "batch_size": batch_size, "status": "failed",
                "error": (errors[-1] if errors else f"exit code {result.returncode}").strip()}
    return row_from_run(layout, batch_size, sweep.seq_len, out)


def run_parallel_suite(sweep: ParallelSweep) -> list[dict[str, Any]]:
    """Every (layout, batch size) cell, then results.{md,csv,json} and parallel_throughput.png in ``out``."""
    sweep.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for batch_size in sweep.batch_sizes:
        for layout in sweep.layouts:
            rows.append(run_cell(sweep, layout, batch_size))
            print(f"{layout.name} batch {batch_size}: {rows[-1]['status']}", flush=True)
    write_tables(rows, sweep)
    plot_throughput(rows, sweep.out / "parallel_throughput.png")
    return rows


def _cell(value: Any, digits: int = 1) -> str:
    if value is None or value == "":
        return "-"
    return f"{value:,.{digits}f}" if isinstance(value, float) else str(value)


def markdown_table(rows: list[dict[str, Any]]) -> str:
    header = ("layout", "global batch", "tokens/s (lab)", "tokens/s (effzoo)", "MFU %", "peak GB/device",
              "comm s/step", "status")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        mfu = row.get("mfu")
        lines.append("| " + " | ".join([
            row["layout"], str(row["batch_size"]), _cell(row.get("lab_tokens_per_s")), _cell(row.get("tokens_per_s")),
            _cell(mfu * 100 if mfu is not None else None, 3), _cell(row.get("peak_memory_gb"), 3),
            _cell(row.get("comm_s_per_step"), 4), row["status"] if row["status"] == "ok" else f"failed: {row['error']}",
        ]) + " |")
    return "\n".join(lines) + "\n"


def write_tables(rows: list[dict[str, Any]], sweep: ParallelSweep) -> None:
    out = sweep.out
    (out / "results.md").write_text(f"{sweep.variant} {sweep.size}, seq-len {sweep.seq_len}, {sweep.steps} steps\n\n"
                                    + markdown_table(rows))
    (out / "results.json").write_text(json.dumps(rows, indent=2))
    with (out / "results.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({key: row.get(key, "") for key in COLUMNS})


def plot_throughput(rows: list[dict[str, Any]], path: Path) -> None:
    """effzoo tokens/s against layout, one line per global batch size (failed cells left out)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layouts = list(dict.fromkeys(row["layout"] for row in rows))
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for batch in dict.fromkeys(row["batch_size"] for row in rows):
        points = [(layouts.index(r["layout"]), r["tokens_per_s"]) for r in rows
                  if r["batch_size"] == batch and r["status"] == "ok"]
        if points:
            ax.plot(*zip(*points), marker="o", label=f"batch {batch}")
    ax.set_xticks(range(len(layouts)), layouts)
    ax.set_xlabel("layout")
    ax.set_ylabel("tokens/s")
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def sweep_from_args(args: Any) -> ParallelSweep:
    """The sweep of ``effzoo bench --suite parallel`` flags (one variant, one size)."""
    if not args.layouts:
        raise ConfigError("--suite parallel needs --layouts, e.g. --layouts dp8,tp2dp4,tp4dp2,pp2dp4")
    sizes = args.sizes.split(",") if args.sizes else ["0.5B"]
    variants = args.variants.split(",") if args.variants else [REGISTRY.baseline()]
    if len(sizes) != 1 or len(variants) != 1:
        raise ConfigError("--suite parallel sweeps one --variants and one --sizes value at a time")
    try:
        batch_sizes = [int(b) for b in (args.batch_sizes or "8").split(",")]
    except ValueError as exc:
        raise ConfigError(f"--batch-sizes takes comma-separated integers, got {args.batch_sizes!r}") from exc
    extra = []
    for flag, value in (("--backend", args.backend), ("--dtype", args.dtype), ("--data", args.data),
                        ("--seed", args.seed), ("--peak-tflops", args.peak_tflops)):
        if value is not None:
            extra += [flag, str(value)]
    return ParallelSweep(variant=variants[0], size=sizes[0], layouts=[parse_layout(n) for n in args.layouts.split(",")],
                         batch_sizes=batch_sizes, seq_len=args.seq_len or 2048, steps=args.steps or 10,
                         out=Path(args.out), extra=extra + ([] if not args.compile else ["--compile"]),
                         threads=args.threads)


def run_parallel_command(args: Any) -> int:
    rows = run_parallel_suite(sweep_from_args(args))
    print(f"wrote {args.out}/results.{{md,csv,json}} and parallel_throughput.png for {len(rows)} cells")
    return 1 if any(row["status"] != "ok" for row in rows) else 0
