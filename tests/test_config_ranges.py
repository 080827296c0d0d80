"""Every numeric setting has a type and range, checked when a config is made (issue 11, item 13):
the error names the key, the value and the allowed range, before any weight is allocated."""
from __future__ import annotations

import math

import pytest

import effzoo
from effzoo.cli import main
from effzoo.config import CORE_RANGES, ModelConfig, Option
from effzoo.errors import ConfigError

BAD = [
    ("gqa", {"rope_theta": 0}, "rope_theta=0 is out of range: rope_theta must be a number > 0"),
    ("gqa", {"rope_theta": -5.0}, "rope_theta=-5.0 is out of range"),
    ("gqa", {"norm_eps": -1e-6}, "norm_eps=-1e-06 is out of range: norm_eps must be a number > 0"),
    ("gqa", {"norm_eps": 0.0}, "norm_eps=0.0 is out of range"),
    ("gqa", {"ffn_hidden": 0}, "ffn_hidden=0 is out of range: ffn_hidden must be an integer >= 1"),
    ("gqa", {"n_heads": "four"}, "n_heads='four' has the wrong type: n_heads must be an integer >= 1"),
    ("gqa", {"n_layers": 2.5}, "n_layers=2.5 has the wrong type"),
    ("gqa", {"qkv_bias": 1}, "qkv_bias=1 has the wrong type: qkv_bias must be true/false"),
    ("gqa", {"init_std": math.inf}, "init_std=inf is not finite"),
    ("gqa", {"rotary_pct": 1.5}, "rotary_pct=1.5 is out of range: rotary_pct must be a number > 0 and <= 1"),
    ("mamba", {"d_state": 0}, "d_state=0 is out of range: d_state must be an integer >= 1"),
    ("mamba", {"dt_min": -0.1}, "dt_min=-0.1 is out of range"),
    ("rwkv", {"rwkv_head_size": "64"}, "rwkv_head_size='64' has the wrong type"),
    ("moe", {"top_k": 0}, "top_k=0 is out of range: top_k must be an integer >= 1"),
    ("moe", {"aux_loss_coef": -1.0}, "aux_loss_coef=-1.0 is out of range"),
    ("gqa", {"position": "relative", "relative_max_distance": 0}, "relative_max_distance=0 is out of range"),
]


@pytest.mark.parametrize("variant,settings,message", BAD, ids=[f"{v}-{next(iter(s))}" for v, s, _ in BAD])
def test_bad_setting_names_key_value_and_range(variant, settings, message):
    with pytest.raises(ConfigError) as err:
        effzoo.make_config(variant, "tiny", **settings)
    assert message in str(err.value)


def test_a_zero_expert_size_is_rejected():
    with pytest.raises(ConfigError, match="expert count must be at least 1"):
        effzoo.make_config("gqa", "tinyx0")


def test_saved_configs_are_checked_too():
    with pytest.raises(ConfigError, match="vocab_size=0 is out of range"):
        ModelConfig.from_dict({**effzoo.make_config("gqa").to_dict(), "vocab_size": 0})


def test_every_numeric_core_field_has_a_range():
    numeric = {k for k, v in ModelConfig().to_dict().items() if isinstance(v, (int, float))}
    assert numeric <= set(CORE_RANGES)


def test_option_describes_its_range():
    assert Option(1, int, low=1).describe() == "an integer >= 1"
    assert Option(0.5, float, low=0, high=1, low_open=True).describe() == "a number > 0 and <= 1"
    Option(None, int, low=1).check("d", None)  # None: derived at build time
    with pytest.raises(ConfigError, match="x='b' is not allowed: x must be one of a, c"):
        Option("a", str, choices=("a", "c")).check("x", "b")


def test_cli_set_with_a_bad_type_is_one_line_exit_2(capsys):
    assert main(["info", "gqa", "--set", "n_heads=four"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "effzoo info: error: n_heads='four' has the wrong type: n_heads must be an integer >= 1"
