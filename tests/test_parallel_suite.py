"""effzoo bench --suite parallel: the cell commands, rows from a finished run, tables and plot, and the
one-line errors of bad sweep flags (the torchrun cells themselves run in docs/performance.md's sweep)."""
from __future__ import annotations

import json
from argparse import Namespace
from pathlib import Path

import pytest

from effzoo.bench.parallel_suite import (
    ParallelSweep, cell_command, markdown_table, plot_throughput, row_from_run, sweep_from_args, write_tables,
)
from effzoo.errors import ConfigError
from effzoo.train.layout import Layout


def _args(**changes) -> Namespace:
    values = dict(layouts="dp2,tp2,pp2", sizes="tiny", variants="gqa", batch_sizes="4,8", seq_len=128, steps=6,
                  out="runs/x", backend="cpu", dtype=None, data=None, seed=None, peak_tflops=None, compile=False,
                  threads=1)
    values.update(changes)
    return Namespace(**values)


def test_sweep_flags_and_cell_commands():
    sweep = sweep_from_args(_args())
    assert [layout.name for layout in sweep.layouts] == ["dp2", "tp2", "pp2"] and sweep.batch_sizes == [4, 8]
    command = cell_command(sweep, Layout(pp=2), 8, Path("out"))
    assert command[command.index("--nproc-per-node") + 1] == "2"
    assert command[command.index("--grad-accum") + 1] == "2" and command[command.index("--pp") + 1] == "2"
    assert command[-2:] == ["--backend", "cpu"]
    with pytest.raises(ConfigError, match="needs --layouts"):
        sweep_from_args(_args(layouts=None))
    with pytest.raises(ConfigError, match="one --variants and one --sizes"):
        sweep_from_args(_args(sizes="tiny,small"))
    with pytest.raises(ConfigError, match="not of the form"):
        sweep_from_args(_args(layouts="dp2,tpx"))
    with pytest.raises(ConfigError, match="--batch-sizes takes"):
        sweep_from_args(_args(batch_sizes="4,x"))


def test_rows_tables_and_plot(tmp_path):
    run = tmp_path / "cell"
    run.mkdir()
    (run / "metrics.json").write_text(json.dumps({"tokens_per_s": 900.0, "mfu": 0.01, "peak_memory_gb": 0.4,
                                                  "al_comm_s": 0.002, "timed_steps": 2}))
    steps = [{"kind": "train", "step": i + 1, "dt_s": dt} for i, dt in enumerate([2.0, 1.0, 1.0])]
    (run / "metrics.jsonl").write_text("".join(json.dumps(s) + "\n" for s in steps))
    row = row_from_run(Layout(tp=2), 4, 128, run)
    # the lab's definition: TOKENS_PER_STEP (4 x 128) over the mean of every step's seconds (4/3 s)
    assert row["lab_tokens_per_s"] == pytest.approx(512 / (4 / 3)) and row["tokens_per_s"] == 900.0
    failed = {"layout": "pp2", "batch_size": 4, "status": "failed", "error": "effzoo train: error: boom"}
    table = markdown_table([row, failed])
    assert "| tp2 | 4 | 384.0 | 900.0 | 1.000 | 0.400 | 0.0020 | ok |" in table
    assert "failed: effzoo train: error: boom" in table
    sweep = ParallelSweep(variant="gqa", out=tmp_path / "sweep")
    sweep.out.mkdir()
    write_tables([row, failed], sweep)
    assert json.loads((sweep.out / "results.json").read_text())[1]["status"] == "failed"
    assert (sweep.out / "results.csv").read_text().startswith("layout,batch_size,status")
    plot_throughput([row, failed], sweep.out / "plot.png")
    assert (sweep.out / "plot.png").stat().st_size > 0
