"""Each variant of a suite runs in its own process: its memory (AMU, peak) is its own, not what the
variants before it left in the process."""
from __future__ import annotations

import pytest

from effzoo.bench.runner import BenchSettings, run_suite
from effzoo.bench.suites import Entry
from effzoo.bench.worker import available_cpus, thread_env

# about 15M parameters: with gradients and AdamW state some 250 MB more than the tiny model
LARGE = {"d_model": 512, "n_layers": 4, "n_heads": 8, "n_kv_heads": 2, "ffn_hidden": 2048}


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
    assert first["peak_memory_gb"] > alone["peak_memory_gb"] + 0.15  # the large model needs clearly more
    # in one shared process the peak RSS never drops and the average would keep the large model's pages
    assert second["peak_memory_gb"] < first["peak_memory_gb"] - 0.1
    assert second["amu_gb"] == pytest.approx(alone["amu_gb"], abs=0.06)
    assert second["peak_memory_gb"] == pytest.approx(alone["peak_memory_gb"], abs=0.06)


def test_children_get_the_available_cores_not_more(tmp_path):
    cores = available_cpus()
    assert 1 <= cores <= len(__import__("os").sched_getaffinity(0))
    env = thread_env(cores)
    assert env["OMP_NUM_THREADS"] == env["MKL_NUM_THREADS"] == str(cores)
