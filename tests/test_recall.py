"""MQAR (Zoology): the data, the grid's model sizing for every registered variant, state-or-cache
accounting, resumable grid runs, the report, and the sanity check that attention solves (64, 4)."""
from __future__ import annotations

import json

import pytest
import torch

import effzoo
from effzoo.bench.recall import RecallCell, RecallSettings, make_mqar, model_overrides, run_recall
from effzoo.bench.recall.data import IGNORE
from effzoo.bench.recall.grid import FULL_D_MODELS, FULL_SETTINGS, VOCAB_SIZE, build_cell_model
from effzoo.bench.recall.memory import memory_bytes
from effzoo.bench.recall.report import accuracy_grid, to_latex, to_markdown
from effzoo.bench.recall.train import TrainSettings, train_cell
from effzoo.errors import ConfigError, UnknownNameError

pytestmark = pytest.mark.usefixtures("one_thread")


def test_mqar_sequences_ask_every_key_once_and_score_only_answers():
    train, test = make_mqar(64, 4, train_examples=200, test_examples=50, seed=3)
    assert train.inputs.shape == (200, 64) and test.inputs.shape == (50, 64)
    half = VOCAB_SIZE // 2
    for split in (train, test):
        assert split.answers == 4 * len(split)
        for inputs, targets in zip(split.inputs, split.targets):
            keys, values = inputs[0:8:2], inputs[1:8:2]
            assert len(set(keys.tolist())) == 4 and bool((keys < half).all()) and bool((values >= half).all())
            pairs = dict(zip(keys.tolist(), values.tolist()))
            where = (targets != IGNORE).nonzero().flatten()
            assert bool((where >= 8).all())  # queries come after the pairs
            assert sorted(inputs[where].tolist()) == sorted(keys.tolist())  # every key asked once
            assert [pairs[k] for k in inputs[where].tolist()] == targets[where].tolist()
            assert bool((inputs[8:][inputs[8:] < half].unsqueeze(1) == keys).any(1).all())  # no stray key tokens


def test_mqar_is_seeded_and_train_test_disjoint():
    a_train, a_test = make_mqar(64, 4, train_examples=300, test_examples=100, seed=1, vocab_size=64)
    b_train, b_test = make_mqar(64, 4, train_examples=300, test_examples=100, seed=1, vocab_size=64)
    assert torch.equal(a_train.inputs, b_train.inputs) and torch.equal(a_test.targets, b_test.targets)
    seen = {tuple(r) for r in a_train.inputs.tolist()}
    assert not any(tuple(r) in seen for r in a_test.inputs.tolist())
    assert not torch.equal(make_mqar(64, 4, train_examples=300, test_examples=10, seed=2)[0].inputs, a_train.inputs)
    with pytest.raises(ConfigError, match="seq_len"):
        make_mqar(16, 8)


@pytest.mark.parametrize("d_model", FULL_D_MODELS)
def test_every_registered_variant_is_sized_for_the_grid(d_model):
    for spec in effzoo.REGISTRY.list_variants():
        overrides = model_overrides(spec.name, d_model, 512)
        model = effzoo.build(spec.name, size="tiny", device="meta", **overrides)
        cfg = model.config
        assert (cfg.d_model, cfg.n_layers, cfg.vocab_size, cfg.max_seq_len) == (d_model, 2, VOCAB_SIZE, 512)
        assert cfg.n_heads * cfg.head_dim == d_model and cfg.n_heads % cfg.n_kv_heads == 0
        base = effzoo.make_config(spec.name, "tiny")
        if base.n_kv_heads == base.n_heads:
            assert cfg.n_kv_heads == cfg.n_heads
        if spec.capabilities.moe:
            assert cfg.ffn == base.ffn  # an MoE keeps its experts: they are the variant


def test_state_or_cache_bytes_per_token_come_from_the_blocks():
    attention = build_cell_model(RecallCell("gqa", 128, 8, 64))
    counted = memory_bytes(attention, 128)
    cfg = attention.config
    assert counted["cache_bytes_per_token"] == 2 * cfg.n_layers * 2 * cfg.n_kv_heads * cfg.head_dim  # K and V, bf16
    assert counted["memory_bytes_per_token"] == counted["cache_bytes_per_token"] + counted["state_bytes"] / 128
    recurrent = build_cell_model(RecallCell("mamba", 128, 8, 64))
    state = memory_bytes(recurrent, 128)
    assert state["cache_bytes_per_token"] == 0 and state["state_bytes"] > 0
    assert state["memory_bytes_per_token"] == state["state_bytes"] / 128
    assert memory_bytes(recurrent, 512)["memory_bytes_per_token"] == state["state_bytes"] / 512


def _row(variant, length, pairs, d_model, acc, memory):
    return {"variant": variant, "seq_len": length, "kv_pairs": pairs, "d_model": d_model,
            "setting": f"({length}, {pairs})", "accuracy": acc, "memory_bytes_per_token": memory, "status": "ok"}


def test_report_tables_and_plot(tmp_path):
    from effzoo.bench.recall.report import write_recall_report

    rows = [_row("gqa", 64, 4, 64, 1.0, 512), _row("gqa", 128, 8, 64, 0.99, 512),
            _row("mamba", 64, 4, 64, 0.9, 900.5), _row("mamba", 128, 8, 64, 0.5, 450.25),
            {"variant": "mamba", "seq_len": 64, "kv_pairs": 4, "d_model": 128, "setting": "(64, 4)",
             "status": "failed", "error": "RuntimeError: boom"}]
    settings, lines = accuracy_grid(rows)
    assert settings == ["(64, 4)", "(128, 8)"]
    assert lines == [("gqa", 64, [1.0, 0.99]), ("mamba", 64, [0.9, 0.5]), ("mamba", 128, [None, None])]
    md = to_markdown(rows)
    assert "| gqa | 64 | 1.000 | 0.990 | 512 |" in md and "| mamba | 64 | 0.900 | 0.500 | 450 |" in md
    assert "failed: mamba (64, 4) d_model 128: RuntimeError: boom" in md
    assert r"gqa & 64 & 1.000 & 0.990 \\" in to_latex(rows)
    paths = write_recall_report(rows, tmp_path)
    assert {p.name for p in paths} == {"recall.md", "recall.tex", "recall.csv", "recall.json",
                                       "recall-accuracy-vs-memory.png"}
    assert json.loads((tmp_path / "recall.json").read_text())[0]["accuracy"] == 1.0


def test_grid_runs_resume_and_unknown_variants_suggest(tmp_path, monkeypatch, capsys):
    import effzoo.bench.recall.suite as suite

    settings = RecallSettings(variants=["gqa", "mamba"], settings=((64, 4),), d_models=(64,),
                              train=TrainSettings(steps=2, batch_size=4, warmup=1), train_examples=20,
                              test_examples=5, out=str(tmp_path / "recall"))
    rows = run_recall(settings)
    assert [r["status"] for r in rows] == ["ok", "ok"] and all(0 <= r["accuracy"] <= 1 for r in rows)
    assert rows[0]["cache_bytes_per_token"] > 0 and rows[1]["cache_bytes_per_token"] == 0
    monkeypatch.setattr(suite, "run_cell", lambda *a: pytest.fail("a finished cell was trained again"))
    assert run_recall(settings) == rows
    assert "finished earlier" in capsys.readouterr().out
    with pytest.raises(UnknownNameError, match="gqa"):
        run_recall(RecallSettings(variants=["gqaa"], out=str(tmp_path / "x")))


def test_bench_cli_recall_suite(tmp_path):
    from effzoo.cli import main

    out = tmp_path / "bench"
    code = main(["bench", "--suite", "recall", "--quick", "--variants", "mqa", "--steps", "2", "--out", str(out)])
    assert code == 0
    rows = json.loads((out / "recall" / "recall.json").read_text())
    assert {r["variant"] for r in rows} == {"mqa"} and len(rows) == len(RecallSettings.quick().settings)


def test_full_grid_is_zoologys():
    assert FULL_SETTINGS == ((64, 4), (128, 8), (256, 16), (512, 32)) and FULL_D_MODELS == (64, 128, 256)
    grid = RecallSettings(variants=["gqa", "rwkv"]).grid()
    assert len(grid.cells()) == 2 * 4 * 3


def test_attention_solves_the_smallest_setting():
    """The harness check: GQA at (64, 4), d_model 64 reaches >= 0.99 (Zoology: about 1.0), with the full
    grid's 1,500 steps (0.9945 on one thread; 800 steps gave 0.9865-0.9925 by thread count, 1,200 0.9905).
    One thread, so the result does not move with the machine's core count."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        train, test = make_mqar(64, 4, train_examples=60_000, test_examples=500, seed=0)
        model = build_cell_model(RecallCell("gqa", 64, 4, 64))
        result = train_cell(model, train, test, TrainSettings(steps=1500, batch_size=64), seed=0)
    finally:
        torch.set_num_threads(threads)
    assert result["accuracy"] >= 0.99, result
