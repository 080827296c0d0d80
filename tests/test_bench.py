"""Benchmark suites: tables in the paper's layout with their caption, numbers taken from the runs,
resumable suites, a failing or crashing variant is one failed row."""
from __future__ import annotations

import json
import math
import shutil
import sys
from pathlib import Path

import pytest
import torch

import effzoo
import effzoo.bench.runner
from effzoo.bench.curves import read_loss_curve
from effzoo.bench.plots import RADAR_FLOOR, normalise, radar_axes, smooth
from effzoo.bench.runner import ROW_NAME, BenchSettings, run_suite
from effzoo.bench.suites import suite_entries
from effzoo.bench.tables import PAPER_COLUMNS, caption, to_latex, to_markdown
from effzoo.cli import main
from effzoo.errors import EffzooError, UnknownNameError

PAPER_HEADERS = ["Method", "Parameters", "Context Length", "PPL", "AMU (GB)", "AL (s/iter)",
                 "TT (Tokens/param/s)", "AEC (W)", "Device Hours"]


def _settings(out: Path, **changes) -> BenchSettings:
    base = dict(out=str(out), steps=4, eval_every=2, seq_len=32, batch_size=4, decode_prompt=8, decode_tokens=8,
                sweep_seq_lens=[16, 32], sweep_tokens=128)
    return BenchSettings.quick_defaults(**{**base, **changes})


@pytest.fixture(scope="module")
def position_suite(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    rows = run_suite(_settings(out, suite="position"))
    return out, rows


def test_suite_writes_every_file(position_suite):
    out, rows = position_suite
    for name in ("results.csv", "results.json", "results.md", "results.tex", "radar-position.png",
                 "loss-position.png", "throughput-position.png"):
        assert (out / name).stat().st_size > 0, name
    assert [r["method"] for r in rows] == ["RoPE", "Absolute", "Learnable Absolute", "Relative", "None", "ALiBi"]
    assert all(r["status"] == "ok" for r in rows)


def test_tables_use_the_paper_columns(position_suite):
    out, rows = position_suite
    header = next(line for line in (out / "results.md").read_text().splitlines() if line.startswith("| Method"))
    assert [c.strip() for c in header.strip("|").split("|")][:9] == PAPER_HEADERS[:8] + ["Device Hours (CPU)"]
    assert [h for h, _, _ in PAPER_COLUMNS] == PAPER_HEADERS
    tex = (out / "results.tex").read_text()
    assert "Method & Parameters & Context Length & PPL & AMU (GB)" in tex and r"\bottomrule" in tex
    assert r"\caption{CPU (" in tex and "pipeline, not the architectures' ranking" in tex


def test_tables_carry_their_caption_and_the_reason_of_empty_cells(position_suite):
    out, rows = position_suite
    md = (out / "results.md").read_text()
    text = caption(rows)
    assert f"*{text}*" in md
    assert f"torch {torch.__version__}" in text and "float32" in text
    assert "4 steps × batch 4 × 32 tokens = 512 training tokens per model" in text
    assert "sizes tiny (" in text and rows[0]["date"] in text
    assert "Tiny models: this shows the pipeline, not the architectures' ranking." in text
    assert "AEC (W) –: no energy counter on CPU" in md
    # MFU's peak: measured once for the whole suite (best of several matmuls), the same in every row
    peaks = {r["peak_tflops"] for r in rows}
    assert len(peaks) == 1 and peaks.pop() > 0 and "best of 30" in rows[0]["peak_source"]
    assert f"MFU against a peak of {rows[0]['peak_tflops']:.3g} TFLOP/s" in text
    for row in rows:
        metrics = json.loads((Path(row["run_dir"]) / "metrics.json").read_text())
        achieved = row["tokens_per_s"] * metrics["flops_per_token"]
        assert row["mfu"] == pytest.approx(achieved / (row["peak_tflops"] * 1e12))


def test_numbers_come_from_the_runs(position_suite):
    out, rows = position_suite
    csv_rows = (out / "results.csv").read_text().splitlines()
    assert len(csv_rows) == len(rows) + 1
    for row in rows:
        metrics = json.loads((Path(row["run_dir"]) / "metrics.json").read_text())
        assert row["ppl"] == pytest.approx(math.exp(metrics["val_loss"]))
        assert row["tt"] == metrics["tt"] and row["al_s_per_iter"] == metrics["al_s"]
        assert row["amu_gb"] == metrics["amu_gb"] and row["device_hours"] == metrics["gpu_hours"]
        assert row["device_kind"] == "cpu" and row["worker_wall_s"] > 0 and row["worker_cpu_s"] > 0
        assert row["decode_tokens_per_s"] > 0 and row["kv_cache_bytes_per_token"] > 0
        assert row["params"] == effzoo.info(row["variant"], row["size"], **row["overrides"])["params"]
    assert len({r["ppl"] for r in rows}) == len(rows)  # six different models, six different results


def test_interrupted_suite_continues_without_rerunning_finished_entries(tmp_path, monkeypatch):
    from effzoo.train.checkpoint import list_checkpoints

    settings = _settings(tmp_path, suite="position")
    entries = suite_entries("position", quick=True)[:2]
    monkeypatch.setattr("effzoo.bench.runner.suite_entries", lambda *a, **k: entries)
    run_suite(settings)
    first, second = (tmp_path / "runs" / e.run_id for e in entries)
    finished = (first / "metrics.json").stat().st_mtime_ns
    (second / ROW_NAME).unlink()  # as if stopped after the checkpoint at step 2, before step 4
    checkpoints = list_checkpoints(second)
    assert sorted(checkpoints) == [2, 4]
    shutil.rmtree(checkpoints[4])
    rows = run_suite(settings)
    assert (first / "metrics.json").stat().st_mtime_ns == finished  # not trained again
    resumed = json.loads((second / "metrics.json").read_text())
    assert resumed["resumed_from"] == 2 and resumed["final_step"] == 4
    assert [r["status"] for r in rows] == ["ok", "ok"]


def test_a_failing_variant_is_reported_and_the_rest_written(tmp_path, monkeypatch):
    entries = suite_entries("attention-free", quick=True)[:1]
    broken = type(entries[0])("attention-free", "Broken", "gqa", "tiny", {"n_kv_heads": 3})
    monkeypatch.setattr("effzoo.bench.runner.suite_entries", lambda *a, **k: [broken, *entries])
    rows = run_suite(_settings(tmp_path, suite="attention-free", peak_tflops=2.5))
    assert rows[0]["status"] == "failed" and "n_kv_heads" in rows[0]["error"]
    assert rows[1]["status"] == "ok"
    md = (tmp_path / "results.md").read_text()
    assert "Broken (failed)" in md and "- Failed — Broken: ConfigError" in md
    # --peak-tflops replaces the measured peak
    assert rows[1]["peak_tflops"] == 2.5 and rows[1]["peak_source"] == "--peak-tflops"
    assert "MFU against a peak of 2.5 TFLOP/s per device (--peak-tflops)" in md


def test_a_crashing_variant_is_one_failed_row(tmp_path, monkeypatch):
    """A child that dies (a segfault, the kernel's OOM killer) does not take the suite with it."""
    entries = suite_entries("attention", quick=True)[:1]
    crash = type(entries[0])("attention", "Crash", "mha", "tiny")
    monkeypatch.setattr("effzoo.bench.runner.suite_entries", lambda *a, **k: [crash, *entries])
    real = effzoo.bench.runner.worker_command

    def command(spec):
        if "mha" in str(spec):
            return [sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"]
        return real(spec)

    monkeypatch.setattr("effzoo.bench.runner.worker_command", command)
    rows = run_suite(_settings(tmp_path, suite="attention", sweep_seq_lens=[]))
    assert rows[0]["status"] == "failed" and "killed by SIGKILL" in rows[0]["error"]
    assert rows[1]["status"] == "ok" and rows[1]["ppl"] > 1


def test_suite_names_and_sizes():
    with pytest.raises(UnknownNameError, match="attention"):
        suite_entries("atention")
    moe = suite_entries("moe", ["0.5B"])
    assert [(e.method, e.variant, e.size) for e in moe] == [("Dense", "gqa", "0.5B"), ("MoE", "moe", "0.5Bx8")]
    assert {e.size for e in suite_entries("attention")} == {"0.5B", "1.5B", "3B"}


def test_formatting_helpers():
    assert normalise([1.0, 2.0, 4.0], lower_is_better=True) == pytest.approx([1.0, 0.6, 0.4])  # 0.2 + 0.8 best/v
    assert normalise([5.0, None, 2.5], lower_is_better=False)[1] is None
    assert normalise([5.0, 2.5], lower_is_better=False) == pytest.approx([1.0, 0.6])
    assert smooth([1, 2, 3, 4], 2) == [1, 1.5, 2.5, 3.5]
    md = to_markdown([{"group": "g", "method": "X", "ppl": None}])
    assert "| X | – |" in md
    assert r"X & -- &" in to_latex([{"group": "g", "method": "X"}])


def test_radar_keeps_every_variant_visible_and_drops_empty_axes(position_suite):
    _, rows = position_suite
    axes = radar_axes(rows)
    labels = [label for label, _ in axes]
    assert "AEC" not in labels and {"PPL", "AMU", "AL", "TT", "device h"} <= set(labels)  # no energy on CPU
    for _, column in axes:
        assert all(v is not None and RADAR_FLOOR < v <= 1.0 for v in column)  # the worst is not at the centre
        assert max(column) == 1.0


def test_text_logs_give_loss_curves(tmp_path):
    megatron = tmp_path / "megatron.log"
    megatron.write_text(
        " iteration      100/   20000 | consumed samples:        51200 | lm loss: 7.5E+00 |\n"
        " iteration      200/   20000 | consumed samples:       102400 | lm loss: 6.25E+00 |\n")
    assert read_loss_curve(megatron, seq_len=4096) == ([51200 * 4096.0, 102400 * 4096.0], [7.5, 6.25])
    nanochat = tmp_path / "nano.log"
    nanochat.write_text("step 01000/05000 (20.00%) | loss: 3.456 | lrm: 1.00 | dt: 180.5ms\n")
    assert read_loss_curve(nanochat, tokens_per_step=262144) == ([1000 * 262144.0], [3.456])
    with pytest.raises(EffzooError, match="tokens-per-step"):
        read_loss_curve(nanochat)


def test_report_and_plot_commands(position_suite, tmp_path, capsys):
    out, rows = position_suite
    assert main(["report", str(out), rows[0]["run_dir"], "--out", str(tmp_path / "report")]) == 0
    report = json.loads((tmp_path / "report" / "results.json").read_text())
    assert len(report) == len(rows) + 1 and report[-1]["group"] == "runs"
    target = tmp_path / "loss.png"
    assert main(["plot", rows[0]["run_dir"], rows[1]["run_dir"], "--output", str(target), "--smooth-window", "2"]) == 0
    assert target.stat().st_size > 0


def test_report_reads_a_copied_results_folder(position_suite, tmp_path, capsys):
    """run_dir relative to the folder (a suite run with a relative --out) is found; a copy without its
    run folders still gives tables and radar charts, and says why the loss curves are missing."""
    out, rows = position_suite
    relative = [{**r, "run_dir": str(Path(r["run_dir"]).relative_to(out))} for r in rows]
    with_runs, without = tmp_path / "with-runs", tmp_path / "without"
    for folder in (with_runs, without):
        folder.mkdir()
        (folder / "results.json").write_text(json.dumps(relative))
    (with_runs / "runs").symlink_to(out / "runs")
    assert main(["report", str(with_runs), "--out", str(tmp_path / "r1")]) == 0
    assert (tmp_path / "r1" / "loss-position.png").exists()
    assert main(["report", str(without), "--out", str(tmp_path / "r2")]) == 0
    assert (tmp_path / "r2" / "radar-position.png").exists() and not (tmp_path / "r2" / "loss-position.png").exists()
    assert "no training log for RoPE" in capsys.readouterr().err


@pytest.mark.slow
def test_quick_all_suites_command_writes_every_group(tmp_path, capsys):
    """The README's main command, shortened to 2 steps per model: every group, every variant."""
    out = tmp_path / "quick"
    code = main(["bench", "--suite", "all", "--quick", "--steps", "2", "--eval-every", "1", "--decode-tokens", "4",
                 "--sweep", "32", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    rows = json.loads((out / "results.json").read_text())
    assert {r["group"] for r in rows} == {"attention", "position", "moe", "attention-free"}
    assert {r["variant"] for r in rows} == {"mqa", "gqa", "mla", "nsa", "moe", "mamba", "pythia", "rwkv"}
    assert all(r["status"] == "ok" and r["ppl"] > 1 for r in rows)
    for group in ("attention", "position", "moe", "attention-free"):
        for kind in ("radar", "loss", "throughput"):
            assert (out / f"{kind}-{group}.png").exists()
