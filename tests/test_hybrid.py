"""Hybrid layer schedules: Mamba and attention layers in one model, validated strictly."""
from __future__ import annotations

import pytest
import torch

import effzoo
from model_checks import cached_logits, train_losses
from effzoo.errors import ConfigError, UnknownNameError
from effzoo_plugins.mamba.block import MambaBlock

SMALL_SSD = dict(d_state=16, ssm_head_dim=32, chunk_size=16)


def test_hybrid_builds_trains_and_decodes_with_mixed_caches():
    model = effzoo.build("gqa", size="tiny", layers=["mamba", "mamba", "mamba", "transformer"], **SMALL_SSD)
    assert model.config.layers == ["mamba", "mamba", "mamba", "transformer"]
    assert [type(b).__name__ for b in model.blocks] == ["MambaBlock"] * 3 + ["TransformerBlock"]
    assert model.blocks[0].ffn is not None  # the attention variant's SwiGLU stays in every layer

    ids = torch.randint(0, 512, (2, 25), generator=torch.Generator().manual_seed(1))
    inputs = ids[:, :-1]
    losses = train_losses(model, ids, steps=5)
    assert losses[-1] < losses[0] - 0.05, losses

    model.eval()
    with torch.no_grad():
        full = model(inputs).logits
        cache = model.new_cache(2, 32)
        torch.testing.assert_close(cached_logits(model, inputs, prefill=15, cache=cache), full, rtol=1e-4, atol=1e-4)
        assert cache.layers[3].length == 24 and cache.layers[0].tokens == 24  # KV cache beside SSM states
        assert model.generate(inputs[:, :5], 4).shape == (2, 9)


def test_short_pattern_tiles_and_accounting_mixes_kv_and_state():
    cfg = effzoo.make_config("gqa", size="tiny", layers="mamba, transformer", **SMALL_SSD)
    assert cfg.layers == ["mamba", "transformer", "mamba", "transformer"]
    info = effzoo.info("gqa", size="tiny", layers=["mamba", "transformer"], **SMALL_SSD)
    dense = effzoo.info("gqa", size="tiny")
    assert info["kv_cache_bytes_per_token"] == dense["kv_cache_bytes_per_token"] // 2
    assert info["state_bytes_per_sequence"] > 0


def test_mamba_variant_with_attention_layers_and_mamba1_mix():
    model = effzoo.build("mamba", size="tiny", layers=["mamba", "mamba1", "mamba", "transformer"], **SMALL_SSD)
    assert isinstance(model.blocks[1], MambaBlock) and model.blocks[3].ffn is None  # mamba variant: ffn none
    ids = torch.randint(0, 512, (1, 12))
    model.eval()
    with torch.no_grad():
        full = model(ids).logits
        cache = model.new_cache(1, 16)
        pieces = [model(ids[:, :7], cache=cache).logits] + [model(ids[:, t:t + 1], cache=cache).logits
                                                            for t in range(7, 12)]
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, rtol=1e-4, atol=1e-4)


def test_invalid_schedules_raise_clearly():
    with pytest.raises(UnknownNameError, match="Did you mean: mamba"):
        effzoo.make_config("gqa", size="tiny", layers=["mamab", "transformer"])
    with pytest.raises(ConfigError, match="does not tile n_layers=4"):
        effzoo.make_config("gqa", size="tiny", layers=["mamba", "mamba", "transformer"])
    with pytest.raises(ConfigError, match="at least one"):
        effzoo.make_config("gqa", size="tiny", layers=[])
    with pytest.raises(ConfigError, match="ssm_head_dim"):
        effzoo.make_config("gqa", size="tiny", layers=["mamba", "transformer"], ssm_headdim=32)
    with pytest.raises(ConfigError, match="d_state"):  # Mamba options are not valid without a Mamba layer
        effzoo.make_config("gqa", size="tiny", d_state=16)
