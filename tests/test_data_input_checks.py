"""Input checked before the expensive work: token ids against every vocabulary, shard lengths, dtypes,
tokenizer files, data paths and conflicting settings. Each CLI failure is one line, exit code 2."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

import effzoo
from effzoo.cli import main
from effzoo.data import DataError, open_dataset
from effzoo.data.tokenize import tokenize
from effzoo.errors import ConfigError
from effzoo.train import TrainConfig, train

MODEL = {"d_model": 32, "n_layers": 1, "n_heads": 2, "n_kv_heads": 1, "ffn_hidden": 64}
SMALL = ["--seq-len", "16", "--batch-size", "2", "--eval-every", "0", "--no-tensorboard", "--quiet"] + [
    f"--set={k}={v}" for k, v in MODEL.items()]

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def tokens_dir(tmp_path):
    text = tmp_path / "corpus.txt"
    text.write_text("\n\n".join(f"document number {i} says something small." for i in range(200)))
    tokenize([text], tmp_path / "tok", "byte", val_fraction=0.2)
    return tmp_path / "tok"


def _one_line_error(capsys, command: str, *needles: str) -> str:
    err = capsys.readouterr().err
    assert err.startswith(f"effzoo {command}: error: "), err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err
    return err


def _val_shard(directory):
    manifest = json.loads((directory / "manifest.json").read_text())
    return directory / manifest["splits"]["val"]["shards"][0]["path"]


def test_eval_ppl_checks_ids_against_the_model_and_the_tokenizer(tmp_path, capsys):
    shard = tmp_path / "ids.bin"
    np.array([1, 2, 3] * 40 + [600] + [4] * 40, dtype=np.uint16).tofile(shard)  # 600 > tiny's vocab 512
    assert main(["eval", "ppl", "--model", "gqa", "--tokens", str(shard), "--seq-len", "32", "--quiet"]) == 2
    _one_line_error(capsys, "eval", "token 120 is id 600", "(size 257)")
    np.array([1, 2, 3] * 40 + [300] + [4] * 40, dtype=np.uint16).tofile(shard)  # < 512, but >= byte vocab 257
    assert main(["eval", "ppl", "--model", "gqa", "--tokens", str(shard), "--seq-len", "32", "--quiet"]) == 2
    _one_line_error(capsys, "eval", "id 300", "tokenizer byte")


def test_eval_ppl_checks_the_datas_vocabulary(tokens_dir, capsys):
    shard = _val_shard(tokens_dir)
    ids = np.fromfile(shard, dtype=np.uint16)
    ids[5] = 400
    ids.tofile(shard)
    assert main(["eval", "ppl", "--model", "gqa", "--data", str(tokens_dir), "--seq-len", "16", "--quiet"]) == 2
    _one_line_error(capsys, "eval", "token 5 is id 400")


def test_train_checks_both_splits_before_step_one(tokens_dir, tmp_path, capsys):
    shard = _val_shard(tokens_dir)
    ids = np.fromfile(shard, dtype=np.uint16)
    ids[-3] = 999
    ids.tofile(shard)
    out = tmp_path / "run"
    assert main(["train", "gqa", "--data", str(tokens_dir), "--steps", "2", "--out", str(out), *SMALL]) == 2
    _one_line_error(capsys, "train", "val token", "id 999")
    assert not (out / "metrics.jsonl").exists() and not (out / "checkpoints").exists()


def test_a_shard_that_is_not_whole_tokens_names_the_file(tokens_dir, tmp_path, capsys):
    shard = _val_shard(tokens_dir)
    with shard.open("ab") as fh:
        fh.write(b"\x01")  # one odd byte in a uint16 shard
    with pytest.raises(DataError, match=rf"{shard.name}: [\d,]+ bytes is not a whole number of uint16 tokens"):
        open_dataset(tokens_dir)
    assert main(["data", "inspect", str(tokens_dir), "--verify"]) == 2
    _one_line_error(capsys, "data", shard.name, "whole number")
    assert main(["train", "gqa", "--data", str(tokens_dir), "--steps", "1", "--out", str(tmp_path / "r"), *SMALL]) == 2
    _one_line_error(capsys, "train", shard.name)
    assert main(["eval", "ppl", "--model", "gqa", "--tokens", str(shard), "--quiet"]) == 2
    _one_line_error(capsys, "eval", shard.name, "whole number")
    assert main(["eval", "ppl", "--model", "gqa", "--tokens", str(shard), "--dtype-tokens", "bogus", "--quiet"]) == 2
    _one_line_error(capsys, "eval", "unknown token dtype 'bogus'", "uint16")


def test_a_corrupt_tokenizer_json_is_named(tmp_path, capsys):
    bad = tmp_path / "tok"
    bad.mkdir()
    (bad / "tokenizer.json").write_text('{"version": "1.0", "model": ')
    (tmp_path / "a.txt").write_text("hello\n\nworld\n")
    assert main(["data", "tokenize", str(tmp_path / "a.txt"), "--out", str(tmp_path / "o"), "--tokenizer", str(bad),
                 "--quiet"]) == 2
    _one_line_error(capsys, "data", "tokenizer.json: not a readable tokenizer file")
    assert main(["eval", "ppl", "--model", "gqa", "--tokenizer", str(bad), "--quiet"]) == 2
    _one_line_error(capsys, "eval", "tokenizer.json")
    (bad / "tokenizer.json").unlink()
    (bad / "tokenizer_config.json").write_text("{nope")
    (bad / "vocab.json").write_text("{}")
    assert main(["data", "tokenizer", "show", str(bad)]) == 2
    _one_line_error(capsys, "data", str(bad))


def test_a_run_with_a_relative_data_path_evaluates_from_elsewhere(tokens_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tokens_dir.parent)
    assert main(["train", "gqa", "--data", "tok", "--steps", "2", "--out", "run", *SMALL]) == 0
    recorded = json.loads((tmp_path / "run" / "train_config.json").read_text())["data"]
    assert os.path.isabs(recorded) and os.path.samefile(recorded, tokens_dir)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    capsys.readouterr()
    assert main(["eval", "ppl", "--model", str(tmp_path / "run"), "--data", str(tokens_dir), "--seq-len", "16",
                 "--quiet"]) == 0
    assert "| perplexity |" in capsys.readouterr().out


def test_an_explicit_max_seq_len_is_not_silently_overridden(tmp_path):
    config = TrainConfig(variant="gqa", size="tiny", model={**MODEL, "max_seq_len": 32}, seq_len=64, steps=1,
                         batch_size=2, out=str(tmp_path / "r"), quiet=True, tensorboard=False)
    with pytest.raises(ConfigError, match=r"--seq-len 64 is longer than max_seq_len=32 \(from --set\)"):
        train(config)
    assert effzoo.make_config("gqa", "tiny").max_seq_len >= 64  # without the override it grows as before
