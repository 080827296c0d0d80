"""Each variant of a suite runs in its own process: its memory (AMU, peak) is its own, not what the
variants before it left in the process."""
from __future__ import annotations

import pytest

from effzoo.bench.runner import BenchSettings, child_threads, run_suite
from effzoo.bench.suites import Entry
from effzoo.bench.worker import thread_env
from effzoo.cli.machine import available_cpus

# about 60M parameters: with gradients and AdamW state some 1 GB more than the tiny model, far above the
# few hundred MB by which a process's peak RSS varies between runs (imports, allocator, decode buffers)
LARGE = {"d_model": 1024, "n_layers": 4, "n_heads": 16, "n_kv_heads": 4, "ffn_hidden": 4096}


def _suite(tmp_path, monkeypatch, name, entries):
    monkeypatch.setattr("effzoo.bench.runner.suite_entries", lambda *a, **k: entries)
    settings = BenchSettings.quick_defaults(out=str(tmp_path / name), suite="attention", steps=4, eval_every=4,
                                            seq_len=32, batch_size=4, decode_prompt=4, decode_tokens=4,
                                            sweep_seq_lens=[])
    rows = run_suite(settings)
    assert all(r["status"] == "ok" for r in rows), [r.get("error") for r in rows]
    return rows


def test_the_second_variant_does_not_carry_the_first_ones_memory(tmp_path, monkeypatch):
    large = Entry("attention", "Large", "gqa", "tiny", LARGE)
    small = Entry("attention", "Small", "gqa", "tiny")
    first, second = _suite(tmp_path, monkeypatch, "both", [large, small])
    (alone,) = _suite(tmp_path, monkeypatch, "alone", [small])
    assert first["amu_gb"] > alone["amu_gb"] + 0.5  # the large model needs clearly more
    assert first["peak_memory_gb"] > alone["peak_memory_gb"] + 0.5
    # in one shared process the peak RSS never drops and the average would keep the large model's pages
    assert second["peak_memory_gb"] < first["peak_memory_gb"] - 0.4
    assert second["amu_gb"] == pytest.approx(alone["amu_gb"], abs=0.06)
    assert second["peak_memory_gb"] == pytest.approx(alone["peak_memory_gb"], abs=0.06)


def test_children_get_the_idle_available_cores_not_more(monkeypatch):
    cores = available_cpus()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr("os.getloadavg", lambda: (0.0, 0.0, 0.0))
    assert child_threads(None) == cores  # an idle machine: every core
    monkeypatch.setattr("os.getloadavg", lambda: (cores + 5.0, 0.0, 0.0))
    assert child_threads(None) == 1  # a busy one: waiting OpenMP threads would only lose time
    assert child_threads(3) == 3
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert child_threads(None) == 2
    env = thread_env(2)
    assert env["OMP_NUM_THREADS"] == env["MKL_NUM_THREADS"] == "2"


def test_quick_cpu_suites_run_one_single_thread_child_per_idle_core(monkeypatch):
    from effzoo.bench import runner

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(runner, "_idle_cores", lambda: 4)
    quick = BenchSettings.quick_defaults(backend="cpu")
    assert runner.plan_children(quick) == (1, 4)
    assert runner.plan_children(BenchSettings.quick_defaults(backend="cpu", threads=2)) == (2, 2)
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert runner.plan_children(quick) == (3, 1)
    assert runner.plan_children(BenchSettings(backend="cpu", threads=2)) == (2, 1)  # a real suite: one at a time


CHILD = """
import json, os, resource, sys, time
spec = sys.argv[1]
seconds = float(json.load(open(spec))["entry"]["overrides"]["busy"])
start = time.time()
usage = resource.getrusage(resource.RUSAGE_SELF)
while usage.ru_utime + usage.ru_stime < seconds:
    usage = resource.getrusage(resource.RUSAGE_SELF)
row = {"variant": "gqa", "size": "tiny", "status": "ok", "start": start, "end": time.time()}
json.dump(row, open(os.path.join(os.path.dirname(spec), "bench_row.json"), "w"))
"""


def test_parallel_children_overlap_and_each_row_has_its_own_cpu_time(tmp_path, monkeypatch):
    import sys

    from effzoo.bench import runner

    entries = [Entry("attention", name, "gqa", "tiny", {"busy": busy}) for name, busy in (("A", 1.2), ("B", 0.4))]
    monkeypatch.setattr(runner, "suite_entries", lambda *a, **k: entries)
    monkeypatch.setattr(runner, "_idle_cores", lambda: 2)
    monkeypatch.setattr(runner, "worker_command", lambda spec: [sys.executable, "-c", CHILD, str(spec)])
    monkeypatch.setattr(runner, "write_report", lambda rows, out: [])
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    rows = run_suite(BenchSettings.quick_defaults(out=str(tmp_path), backend="cpu", peak_tflops=1.0, quiet=True))
    a, b = rows
    assert a["start"] < b["end"] and b["start"] < a["end"]  # both children ran at the same time
    assert a["worker_cpu_s"] == pytest.approx(1.2, abs=0.3) and b["worker_cpu_s"] == pytest.approx(0.4, abs=0.3)
