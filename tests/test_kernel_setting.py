"""The one ``kernel`` setting: per-variant choices, the former per-plugin names, and what each plugin runs."""
from __future__ import annotations

import pytest
import torch

import effzoo
from effzoo import ConfigError, ModelConfig


@pytest.mark.parametrize("variant, extras", [
    ("gqa", "auto, reference, sdpa, flex"),
    ("mamba", "auto, reference, triton, mamba_ssm"),
    ("rwkv", "auto, reference, fla, triton, torch"),
    ("moe", "auto, reference, sdpa, flex, grouped_mm, bmm"),
])
def test_unknown_kernel_lists_what_the_variant_accepts(variant: str, extras: str) -> None:
    with pytest.raises(ConfigError, match=f"unknown kernel 'turbo' for variant '{variant}'; choose one of {extras}"):
        effzoo.make_config(variant, "tiny", kernel="turbo")


@pytest.mark.parametrize("old, value, new", [
    ("attn_backend", "sdpa", "sdpa"), ("ssm_backend", "reference", "reference"),
    ("rwkv_kernel", "sequential", "reference"), ("moe_backend", "loop", "reference"),
])
def test_former_kernel_settings_name_the_new_one(old: str, value: str, new: str) -> None:
    with pytest.raises(ConfigError, match=f"unknown setting '{old}'; use kernel='{new}'"):
        effzoo.make_config("gqa", "tiny", **{old: value})
    saved = effzoo.make_config("gqa", "tiny").to_dict()
    with pytest.raises(ConfigError, match=f"unknown setting '{old}'"):
        ModelConfig.from_dict({**saved, old: value})
    with pytest.raises(ConfigError, match=f"unknown setting '{old}'"):
        ModelConfig.from_dict({**saved, "options": {old: value}})


def test_reference_means_the_pytorch_oracle_in_every_plugin() -> None:
    mamba = effzoo.build("mamba", "tiny", kernel="reference").blocks[0].mixer
    rwkv = effzoo.build("rwkv", "tiny", kernel="reference").blocks[0].time_mix
    moe = effzoo.build("moe", "tiny", kernel="reference")
    assert (mamba.backend, rwkv.kernel, moe.blocks[0].ffn.backend, moe.attention_backend) == ("reference",) * 4


def test_another_components_kernel_means_auto() -> None:
    """In an MoE model ``kernel="bmm"`` picks the experts' path; attention reads it as auto."""
    torch.manual_seed(0)
    fast = effzoo.build("moe", "tiny", kernel="bmm")
    oracle = effzoo.build_from_config(fast.config.replace(kernel="reference"))
    oracle.load_state_dict(fast.state_dict())
    assert (fast.blocks[0].ffn.backend, fast.attention_backend) == ("bmm", "auto")
    ids = torch.randint(0, fast.config.vocab_size, (2, 12))
    torch.testing.assert_close(fast(ids).logits, oracle(ids).logits, rtol=1e-4, atol=1e-4)
    mamba = effzoo.build("mamba", "tiny", kernel="triton")
    assert mamba.attention_backend == "auto" and mamba.blocks[0].mixer.backend == "triton"


def test_train_cli_kernel_flag_sets_the_model_kernel() -> None:
    import argparse

    from effzoo.cli import train as train_cli

    parser = argparse.ArgumentParser()
    train_cli.add_arguments(parser)
    config = train_cli.config_from_args(parser.parse_args(["mamba", "--kernel", "reference", "--set", "d_state=16"]))
    assert config.model == {"d_state": 16, "kernel": "reference"}
    assert train_cli.config_from_args(parser.parse_args(["mamba"])).model == {}
