"""effzoo.build / make_config / info: presets, overrides, validation, devices and dtypes."""
from __future__ import annotations

import pytest
import torch

import effzoo
from effzoo.errors import ConfigError, UnknownNameError


def _qwen_layer_params(d: int, heads: int, kv_heads: int, ffn: int) -> int:
    head_dim = d // heads
    q = d * d + d
    kv = 2 * (d * kv_heads * head_dim + kv_heads * head_dim)
    out = d * d
    mlp = 3 * d * ffn
    norms = 2 * d
    return q + kv + out + mlp + norms


@pytest.mark.parametrize("size,expected,layers,d,heads,ffn", [
    ("0.5B", 494_032_768, 24, 896, 14, 4864),
    ("1.5B", 1_543_714_304, 28, 1536, 12, 8960),
    ("3B", 3_085_938_688, 36, 2048, 16, 11008),
])
def test_qwen25_presets_match_real_parameter_counts(size, expected, layers, d, heads, ffn):
    vocab = 151_936
    by_hand = layers * _qwen_layer_params(d, heads, 2, ffn) + vocab * d + d
    assert by_hand == expected
    stats = effzoo.info("gqa", size)
    assert stats["params"] == expected
    assert stats["embedding_params"] == vocab * d
    assert stats["non_embedding_params"] == expected - vocab * d


def test_info_flops_and_cache_for_0_5b():
    stats = effzoo.info("gqa", "0.5B", seq_len=2048)
    n, layers, heads, head_dim = 494_032_768, 24, 14, 64
    assert stats["train_flops_per_token"] == 6 * n + 12 * layers * heads * head_dim * 2048
    assert stats["kv_cache_bytes_per_token"] == layers * 2 * 2 * head_dim * 2  # k+v, 2 kv heads, bf16
    mqa = effzoo.info("mqa", "0.5B")
    assert mqa["kv_cache_bytes_per_token"] == stats["kv_cache_bytes_per_token"] // 2
    mha = effzoo.info("mha", "0.5B")
    assert mha["kv_cache_bytes_per_token"] == stats["kv_cache_bytes_per_token"] * 7


def test_meta_device_allocates_nothing_for_big_sizes():
    model = effzoo.build("gqa", size="1.5B", device="meta")
    assert all(p.is_meta for p in model.parameters())
    assert model.num_parameters() == 1_543_714_304


def test_overrides_and_device_dtype():
    model = effzoo.build("mqa", size="tiny", position="alibi", device="cpu", dtype="float32")
    assert model.config.position == "alibi" and model.config.n_kv_heads == 1
    assert next(model.parameters()).dtype == torch.float32
    bf16 = effzoo.build("gqa", size="tiny", dtype="bf16", vocab_size=300, max_seq_len=64, ffn_hidden=96)
    assert bf16.embed.weight.shape == (300, 128) and bf16.embed.weight.dtype == torch.bfloat16


def test_none_overrides_do_not_override_presets():
    assert effzoo.make_config("gqa", "0.5B", n_kv_heads=None).n_kv_heads == 2


def test_typo_in_override_lists_valid_keys():
    with pytest.raises(ConfigError) as err:
        effzoo.build("gqa", size="tiny", n_kv_head=1)
    message = str(err.value)
    assert "'n_kv_head'" in message and "n_kv_heads" in message and "Valid keys" in message


def test_unknown_component_names_suggest():
    with pytest.raises(UnknownNameError, match="rope"):
        effzoo.build("gqa", position="ropee")
    with pytest.raises(UnknownNameError, match="0.5B"):
        effzoo.build("gqa", size="7B")


def test_invalid_shapes_are_rejected():
    with pytest.raises(ConfigError, match="multiple of n_kv_heads"):
        effzoo.build("gqa", size="tiny", n_kv_heads=3)
    with pytest.raises(ConfigError, match="dtype"):
        effzoo.build("gqa", dtype="float8")


def test_layer_patterns_tile_or_fail():
    cfg = effzoo.make_config("gqa", "tiny", layers=["transformer", "attention"])
    assert cfg.layers == ["transformer"] * 4
    with pytest.raises(ConfigError, match="tile"):
        effzoo.make_config("gqa", "tiny", layers=["transformer"] * 3)
    with pytest.raises(UnknownNameError):
        effzoo.make_config("gqa", "tiny", layers=["transfomer"])


def test_config_json_round_trip():
    cfg = effzoo.make_config("gqa", "tiny", position="relative")
    again = effzoo.ModelConfig.from_dict(cfg.to_dict())
    assert again == cfg
    with pytest.raises(ConfigError, match="unknown config keys"):
        effzoo.ModelConfig.from_dict({**cfg.to_dict(), "colour": "red"})
