"""Training settings from YAML / TOML files with command-line overrides, and the ``effzoo train`` command."""
from __future__ import annotations

import json

import pytest

from effzoo.cli import main
from effzoo.errors import ConfigError
from effzoo.train import TrainConfig


pytestmark = pytest.mark.usefixtures("one_thread")


YAML = """\
variant: gqa
size: tiny
seq_len: 32
batch_size: 4
steps: 3
lr: 3.0e-3
eval_every: 0
tensorboard: false
model:
  d_model: 64
  n_layers: 2
  ffn_hidden: 128
"""

TOML = """\
variant = "mqa"
size = "tiny"
steps = 5
grad-accum = 2

[model]
position = "alibi"
"""


def test_yaml_file_with_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(YAML)
    config = TrainConfig.from_file(path, steps=7, model={"n_layers": 1})
    assert config.steps == 7 and config.seq_len == 32 and config.lr == 3e-3
    assert config.model == {"d_model": 64, "n_layers": 1, "ffn_hidden": 128}


def test_toml_file_accepts_dashed_keys(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text(TOML)
    config = TrainConfig.from_file(path)
    assert (config.variant, config.grad_accum, config.model) == ("mqa", 2, {"position": "alibi"})


@pytest.mark.parametrize("name, text, message", [
    ("bad.yaml", "variant: gqa\nlearning_rate: 1\n", r"unknown training config keys in .*bad.yaml: 'learning_rate'"),
    ("bad.toml", "steps = [\n", "cannot parse"),
    ("bad.json", "{}", "must end in .yaml"),
    ("list.yaml", "- 1\n- 2\n", "must hold a mapping"),
])
def test_bad_config_files(tmp_path, name, text, message):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        TrainConfig.from_file(path)


def test_cli_trains_from_a_config_file_with_flag_overrides(tmp_path, capsys):
    path = tmp_path / "run.yaml"
    path.write_text(YAML)
    out = tmp_path / "run"
    code = main(["train", "--config", str(path), "--steps", "2", "--set", "n_heads=2", "--set", "n_kv_heads=1",
                 "--out", str(out)])
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    saved = json.loads((out / "train_config.json").read_text())
    assert metrics["steps"] == 2 and saved["model"] == {"d_model": 64, "n_layers": 2, "ffn_hidden": 128,
                                                         "n_heads": 2, "n_kv_heads": 1}
    assert "done: 2 steps" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["train", "gqx", "--steps", "1"], "Did you mean: gqa"),
    (["train", "gqa", "--steps", "1", "--batch-size", "6", "--grad-accum", "4"], "not divisible"),
    (["train", "gqa", "--steps", "1", "--data", "/no/such/dir"], "does not exist"),
    (["train", "gqa", "--steps", "1", "--set", "n_kv_head=1"], "did you mean 'n_kv_heads'"),
    (["train", "gqa"], "--steps N or --tokens N"),
    (["train", "--steps", "1"], "name a variant"),
])
def test_cli_errors_are_clear(tmp_path, capsys, argv, message):
    assert main([*argv, "--out", str(tmp_path / "run")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
