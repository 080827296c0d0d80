"""Parallel layouts (--tp/--pp/--cp): a bad layout is a one-line ``effzoo train: error:`` with exit code 2
before any process group or model exists; components declare their tensor-parallel plans."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import effzoo
from effzoo.cli import main
from effzoo.errors import ConfigError
from effzoo.interfaces import Component
from effzoo.tensor_parallel import fused_row_order
from effzoo.train.layout import Layout, parse_layout, resolve_layout, tensor_parallel_plans
from effzoo.train.pipeline import stage_layers

MODEL = ["--set=d_model=64", "--set=n_layers=2", "--set=n_heads=4", "--set=n_kv_heads=2", "--set=ffn_hidden=128"]


def _train_error(monkeypatch, capsys, tmp_path, world: int, *flags: str, variant: str = "gqa") -> str:
    monkeypatch.setenv("WORLD_SIZE", str(world))
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    code = main(["train", variant, "--size", "tiny", "--steps", "2", "--seq-len", "16", "--batch-size", "4",
                 "--out", str(tmp_path / "run"), "--no-tensorboard", "--quiet", *MODEL, *flags])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert err.startswith("effzoo train: error: ")
    assert not torch.distributed.is_initialized()  # refused before any work
    assert not (tmp_path / "run" / "metrics.jsonl").exists()
    return err


@pytest.mark.parametrize("world, flags, expected", [
    (2, ["--tp", "4"], "does not divide the world size 2"),
    (4, ["--tp", "2", "--pp", "3"], "does not divide the world size 4"),
    (4, ["--tp", "4", "--set=d_model=96", "--set=n_heads=12", "--set=n_kv_heads=3"], "n_kv_heads=3"),
    (2, ["--tp", "2", "--set=n_heads=3", "--set=n_kv_heads=3"], "n_heads=3"),
    (4, ["--pp", "4"], "more pipeline stages than the model's 2 layers"),
    (2, ["--pp", "2"], "--pp-schedule 1f1b needs at least as many micro-batches"),
    (2, ["--tp", "2", "--fsdp"], "--fsdp shards only pure data-parallel runs"),
    (2, ["--tp", "0"], "--tp must be at least 1"),
    (2, ["--tp", "2", "--grad-accum", "3"], "data-parallel degree 1"),
    (4, ["--tp", "2", "--batch-size", "3"], "data-parallel degree 2"),
])
def test_bad_layouts_fail_in_one_line_before_any_work(monkeypatch, capsys, tmp_path, world, flags, expected):
    assert expected in _train_error(monkeypatch, capsys, tmp_path, world, *flags)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal where CUDA is missing")
def test_context_parallel_refuses_without_cuda(monkeypatch, capsys, tmp_path):
    err = _train_error(monkeypatch, capsys, tmp_path, 2, "--cp", "2")
    assert "--cp needs CUDA" in err and "context_parallel" in err and "no CUDA device" in err
    assert "flash, memory-efficient and cuDNN scaled_dot_product_attention" in err
    err = _train_error(monkeypatch, capsys, tmp_path, 2, "--cp", "2", "--backend", "cpu")
    assert "the cpu backend has none" in err


class Opaque(Component):
    """A component that declares no plan."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(4, 4)


def test_component_without_plan_refuses_tp_by_name():
    model = nn.Sequential(Opaque())
    with pytest.raises(ConfigError, match=r"Opaque \(at 0\) declares no tensor-parallel plan"):
        tensor_parallel_plans(model, 2)


def test_declared_plans_of_the_gqa_model():
    model = effzoo.build("gqa", "tiny", device="meta")
    plans = {name: plan for name, _, plan in tensor_parallel_plans(model, 2)}
    attention, ffn = plans["blocks.0.mixer"], plans["blocks.0.ffn"]
    assert set(attention) == {"qkv_proj", "out_proj"} and set(ffn) == {"gate_up_proj", "down_proj"}
    assert attention["qkv_proj"].segments == (4 * 32, 2 * 32, 2 * 32)
    assert plans["blocks.0.attn_norm"] == {} and plans["position"] == {}


def test_moe_and_mamba_plans_and_a_refusal_by_name():
    from effzoo.tensor_parallel import ExpertParallel

    model = effzoo.build("moe", "tiny", device="meta", n_experts=4)
    plans = {name: plan for name, _, plan in tensor_parallel_plans(model, 2)}
    assert isinstance(plans["blocks.0.ffn"]["experts"], ExpertParallel) and plans["blocks.0.ffn.router"] == {}
    with pytest.raises(ConfigError, match="moe feed-forward's n_experts=3"):
        tensor_parallel_plans(effzoo.build("moe", "tiny", device="meta", n_experts=3), 2)
    with pytest.raises(ConfigError, match="mamba2 mixer's n_groups=1.*--set n_groups=2"):  # B and C are per group
        tensor_parallel_plans(effzoo.build("mamba", "tiny", device="meta"), 2)
    plans = dict((name, plan) for name, _, plan in tensor_parallel_plans(
        effzoo.build("mamba", "tiny", device="meta", n_groups=2), 2))
    assert set(plans["blocks.0.mixer"]) == {"", "in_proj", "out_proj"} and "" in plans["blocks.0.mixer.norm"]


def test_fused_row_order_gives_each_rank_its_own_heads():
    # q has 4 rows, k and v 2 each: rank 0 gets q rows 0-1, k row 4, v row 6; rank 1 the rest
    assert fused_row_order((4, 2, 2), 2).tolist() == [0, 1, 4, 6, 2, 3, 5, 7]
    assert fused_row_order((3, 3), 1).tolist() == list(range(6))


def test_layout_names_and_replicas():
    assert resolve_layout(2, 1, 1, 8) == Layout(tp=2, dp=4)
    assert parse_layout("tp2dp4") == Layout(tp=2, dp=4) and parse_layout("pp2dp4").name == "pp2dp4"
    assert Layout(dp=8).name == "dp8" and Layout(tp=2).name == "tp2" and Layout().name == "dp1"
    with pytest.raises(ConfigError, match="not of the form"):
        parse_layout("tp2x")
    # mesh (pp, dp, cp, tp), row-major: ranks 0,1 form replica 0's TP pair, 2,3 replica 1's
    assert [Layout(tp=2, dp=2).replica(r) for r in range(4)] == [0, 0, 1, 1]
    assert [Layout(pp=2, dp=2).replica(r) for r in range(4)] == [0, 1, 0, 1]


def test_stage_layers_split_evenly():
    assert stage_layers(5, 2) == [range(0, 3), range(3, 5)]
    assert stage_layers(4, 4) == [range(i, i + 1) for i in range(4)]
