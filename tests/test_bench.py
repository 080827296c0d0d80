"""Benchmark suites: tables in the paper's layout, numbers taken from the runs, resumable suites."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

import effzoo.train
from effzoo.bench.curves import read_loss_curve
from effzoo.bench.plots import normalise, smooth
from effzoo.bench.runner import ROW_NAME, BenchSettings, run_suite
from effzoo.bench.suites import suite_entries
from effzoo.bench.tables import PAPER_COLUMNS, to_latex, to_markdown
from effzoo.cli import main
from effzoo.errors import EffzooError, UnknownNameError

PAPER_HEADERS = ["Method", "Parameters", "Context Length", "PPL", "AMU (GB)", "AL (s/iter)",
                 "TT (Tokens/param/s)", "AEC (W)", "GPU Hours"]


def _settings(out: Path, **changes) -> BenchSettings:
    return BenchSettings.quick_defaults(out=str(out), steps=4, eval_every=2, seq_len=32, batch_size=4,
                                        decode_prompt=8, decode_tokens=8, sweep_seq_lens=[16, 32],
                                        sweep_tokens=128, **changes)


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
    assert [c.strip() for c in header.strip("|").split("|")][:9] == PAPER_HEADERS
    assert [h for h, _, _ in PAPER_COLUMNS] == PAPER_HEADERS
    tex = (out / "results.tex").read_text()
    assert "Method & Parameters & Context Length & PPL & AMU (GB)" in tex and r"\bottomrule" in tex


def test_numbers_come_from_the_runs(position_suite):
    out, rows = position_suite
    csv_rows = (out / "results.csv").read_text().splitlines()
    assert len(csv_rows) == len(rows) + 1
    for row in rows:
        metrics = json.loads((Path(row["run_dir"]) / "metrics.json").read_text())
        assert row["ppl"] == pytest.approx(math.exp(metrics["val_loss"]))
        assert row["tt"] == metrics["tt"] and row["al_s_per_iter"] == metrics["al_s"]
        assert row["amu_gb"] == metrics["amu_gb"] and row["gpu_hours"] == metrics["gpu_hours"]
        assert row["decode_tokens_per_s"] > 0 and row["kv_cache_bytes_per_token"] > 0
        assert row["params"] == effzoo.info(row["variant"], row["size"], **row["overrides"])["params"]
    assert len({r["ppl"] for r in rows}) == len(rows)  # six different models, six different results


def test_interrupted_suite_continues_without_rerunning_finished_entries(tmp_path, monkeypatch):
    settings = _settings(tmp_path, suite="position")
    entries = suite_entries("position", quick=True)[:2]
    monkeypatch.setattr("effzoo.bench.runner.suite_entries", lambda *a, **k: entries)
    run_suite(settings)
    (tmp_path / "runs" / entries[1].run_id / ROW_NAME).unlink()  # as if stopped before its row was written
    calls = []
    real_train = effzoo.train.train
    monkeypatch.setattr(effzoo.train, "train", lambda cfg: calls.append(cfg) or real_train(cfg))
    rows = run_suite(settings)
    assert [c["variant"] for c in calls] == ["gqa"] and calls[0]["resume"] == "latest"
    assert [r["status"] for r in rows] == ["ok", "ok"]


def test_a_failing_variant_is_reported_and_the_rest_written(tmp_path, monkeypatch):
    entries = suite_entries("attention-free", quick=True)[:1]
    broken = type(entries[0])("attention-free", "Broken", "gqa", "tiny", {"n_kv_heads": 3})
    monkeypatch.setattr("effzoo.bench.runner.suite_entries", lambda *a, **k: [broken, *entries])
    rows = run_suite(_settings(tmp_path, suite="attention-free"))
    assert rows[0]["status"] == "failed" and "n_kv_heads" in rows[0]["error"]
    assert rows[1]["status"] == "ok"
    assert "Broken (failed)" in (tmp_path / "results.md").read_text()


def test_suite_names_and_sizes():
    with pytest.raises(UnknownNameError, match="attention"):
        suite_entries("atention")
    moe = suite_entries("moe", ["0.5B"])
    assert [(e.method, e.variant, e.size) for e in moe] == [("Dense", "gqa", "0.5B"), ("MoE", "moe", "0.5Bx8")]
    assert {e.size for e in suite_entries("attention")} == {"0.5B", "1.5B", "3B"}


def test_formatting_helpers():
    assert normalise([1.0, 2.0, 3.0], lower_is_better=True) == [1.0, 0.5, 0.0]
    assert normalise([5.0, None], lower_is_better=False) == [1.0, None]
    assert smooth([1, 2, 3, 4], 2) == [1, 1.5, 2.5, 3.5]
    md = to_markdown([{"group": "g", "method": "X", "ppl": None}])
    assert "| X | – |" in md
    assert r"X & -- &" in to_latex([{"group": "g", "method": "X"}])


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
