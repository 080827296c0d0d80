"""Every built-in variant declares a tensor-parallel plan for each of its components at --tp 2 (with the
overrides its tiny preset needs), or refuses with a one-line ConfigError that names the component and what
to change. The plans are checked on meta-device models; tests/test_parallel_distributed.py runs them."""
from __future__ import annotations

import pytest

import effzoo
from effzoo.errors import ConfigError
from effzoo.interfaces import Component
from effzoo.train.layout import tensor_parallel_plans

BUILT_INS = [spec.name for spec in effzoo.list_variants(specs=True) if spec.distribution == "effzoo"]
# the tiny mamba preset has one B/C group, and a rank must hold whole groups (Megatron requires it too)
REFUSED_AT_TINY = {"mamba": ({"n_groups": 2}, r"mamba2 mixer's n_groups=1; .*, or --set n_groups=2$")}


def _plans(variant: str, tp: int = 2, **overrides: object) -> dict[str, dict]:
    model = effzoo.build(variant, "tiny", device="meta", **overrides)
    plans = tensor_parallel_plans(model, tp)
    components = [name for name, module in model.named_modules() if isinstance(module, Component)]
    assert [name for name, _, _ in plans] == components  # every component answered
    return {name: plan for name, _, plan in plans}


@pytest.mark.parametrize("variant", BUILT_INS)
def test_every_built_in_variant_has_plans_at_tp2_or_says_what_to_set(variant):
    if variant not in REFUSED_AT_TINY:
        _plans(variant)
        return
    overrides, message = REFUSED_AT_TINY[variant]
    with pytest.raises(ConfigError, match=message) as refusal:
        _plans(variant)
    assert len(str(refusal.value).splitlines()) == 1
    _plans(variant, **overrides)


def test_the_built_ins_are_all_checked():
    assert {"gqa", "mha", "mqa", "mla", "mla_dsv2", "nsa", "moe", "mamba", "mamba1", "rwkv", "pythia"} <= set(BUILT_INS)


def test_mqa_splits_the_one_key_value_head_by_columns():
    plans = _plans("mqa")
    assert plans["blocks.0.mixer"]["qkv_proj"].segments == (4 * 32, 32, 32)
    model = effzoo.build("gqa", "tiny", device="meta", n_heads=4, n_kv_heads=2)
    tensor_parallel_plans(model, 4)  # two ranks per key/value head
    assert model.blocks[0].mixer.tp_shared_kv
    model = effzoo.build("gqa", "tiny", device="meta")
    tensor_parallel_plans(model, 2)
    assert not model.blocks[0].mixer.tp_shared_kv  # enough key/value heads: each rank its own


def test_nsa_rwkv_and_mamba1_plans():
    nsa = _plans("nsa")
    segments = nsa["blocks.0.mixer"]["qkv_proj"].segments
    assert segments == (4 * 32,) + (2 * 32,) * 6  # q, then k and v of the three branches
    assert nsa["blocks.0.mixer"]["gate_proj"].segments == (4, 4, 4)
    assert set(nsa["blocks.0.mixer.compress_k"]) == {""}
    rwkv = _plans("rwkv")
    rows, columns = rwkv["blocks.1.time_mix"][""]
    assert {"bonus", "value_base", "out_norm_weight"} <= set(rows.segments) and "value_up" in columns.names
    assert "value_base" not in rwkv["blocks.0.time_mix"][""][0].segments  # layer 0 has no value residual
    assert set(rwkv["blocks.0.channel_mix"]) == {"up_proj", "down_proj"}
    mamba1 = _plans("mamba1")["blocks.0.mixer"]
    assert set(mamba1) == {"", "in_proj", "x_proj", "dt_proj", "out_proj"}


@pytest.mark.parametrize("variant, tp, overrides, message", [
    ("mqa", 4, {"n_heads": 6, "d_model": 96}, "gqa attention's n_heads=6"),
    ("gqa", 2, {"n_heads": 6, "n_kv_heads": 3, "d_model": 96}, "gqa attention's n_kv_heads=3"),
    ("nsa", 2, {"n_kv_heads": 1}, "nsa attention's n_kv_heads=1"),
    ("rwkv", 4, {}, "rwkv7 time-mix's heads=2"),
    ("rwkv", 2, {"ffn_hidden": 511}, "rwkv7 channel-mix's ffn_hidden=511"),
    ("mamba1", 3, {}, "mamba1 mixer's d_inner=256"),
])
def test_a_split_that_does_not_divide_is_refused_by_name(variant, tp, overrides, message):
    with pytest.raises(ConfigError, match=f"--tp {tp} does not divide {message}; choose a tensor-parallel degree"):
        _plans(variant, tp, **overrides)
