"""Passkey retrieval and loss by position: the harness on a tiny model trained in the test."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

from effzoo.cli import main
from effzoo.data import DataError, embedded_dataset
from effzoo.data.tokenizers import load_tokenizer
from effzoo.errors import ConfigError
from effzoo.eval import load_language_model, perplexity
from effzoo.eval.passkey import (INTRO, QUESTION, answered, build_prompt, parse_depths, parse_lengths,
                                 run_passkey)
from effzoo.eval.ppl_positions import loss_by_position, position_plot
from effzoo.train import TrainConfig, train

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("passkey") / "run"
    torch.set_num_threads(1)
    train(TrainConfig(variant="gqa", size="tiny", model={"d_model": 64, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2,
                                                         "ffn_hidden": 128},
                      seq_len=64, batch_size=4, steps=4, lr=3e-3, warmup_steps=1, eval_every=0, ckpt_every=4,
                      out=str(out), tensorboard=False, quiet=True))
    return out


def test_parsing():
    assert parse_lengths("1k,2k,1.5k,512") == [1024, 2048, 1536, 512]
    assert parse_depths("0, 0.25,1") == [0.0, 0.25, 1.0]
    for bad in ("", "1m", "k"):
        with pytest.raises(ConfigError):
            parse_lengths(bad)
    for bad in ("", "1.5", "-0.1", "half"):
        with pytest.raises(ConfigError):
            parse_depths(bad)


@pytest.mark.parametrize("depth", [0.0, 0.3, 0.5, 1.0])
def test_prompt_has_the_exact_length_and_the_needle_at_its_depth(depth):
    tok = load_tokenizer("byte")
    p = build_prompt(tok, 600, depth, "12345")
    assert len(p.ids) + p.answer_tokens == 600
    text = tok.decode(p.ids)
    assert text.startswith(INTRO) and text.endswith(QUESTION)
    needle = text.index("The pass key is 12345")
    assert tok.decode(p.ids[p.needle_start:]).startswith("The pass key is 12345")
    assert len(tok.encode(text[:needle])) == p.needle_start
    filler = 600 - p.answer_tokens - len(tok.encode(INTRO + QUESTION)) - len(tok.encode(
        "The pass key is 12345. Remember it. 12345 is the pass key. "))
    assert p.needle_start - len(tok.encode(INTRO)) == round(depth * filler)
    with pytest.raises(ConfigError, match="too short"):
        build_prompt(tok, 100, depth, "12345")


def test_answer_check():
    assert answered(" 12345. And", "12345") and not answered(" 1234", "12345") and not answered(" no", "12345")
    assert not answered(" 123456", "12345")


def test_a_model_that_answers_right_scores_one_and_grid_shape(run_dir):
    lm = load_language_model(str(run_dir))

    def oracle(ids, n):  # reads the key from the prompt: the harness must then score 1.0 everywhere
        rows = []
        for row in ids.tolist():
            key = re.search(r"pass key is (\d+)", lm.tokenizer.decode(row)).group(1)
            rows.append(lm.tokenizer.encode(f" {key}.")[:n])
        return torch.tensor(rows)

    result = run_passkey(lm, [300, 400, 4096], [0.0, 0.5, 1.0], trials=3, generate=oracle)
    assert result["accuracy"][:2] == [[1.0, 1.0, 1.0], [1.0, 1.0, 1.0]]
    assert result["accuracy"][2] is None and "4096" in result["skipped"]  # beyond the model's maximum length
    wrong = run_passkey(lm, [300], [0.0, 1.0], trials=2, generate=lambda ids, n: torch.full((len(ids), n), 48))
    assert wrong["accuracy"] == [[0.0, 0.0]]  # "000..." is never the key


def test_trained_model_runs_the_grid_with_cached_decoding(run_dir, tmp_path):
    lm = load_language_model(str(run_dir))
    result = run_passkey(lm, [256, 320], [0.0, 0.5, 1.0], trials=2)
    assert len(result["accuracy"]) == 2 and all(len(r) == 3 for r in result["accuracy"])
    assert all(0.0 <= a <= 1.0 for row in result["accuracy"] for a in row)
    code = main(["eval", "passkey", "--model", str(run_dir), "--lengths", "256", "--depths", "0,1", "--trials", "2",
                 "--out", str(tmp_path / "pk"), "--quiet", "--device", "cpu"])
    assert code == 0
    saved = json.loads((tmp_path / "pk.json").read_text())
    assert saved["lengths"] == [256] and saved["depths"] == [0.0, 1.0]
    assert "| 256 |" in (tmp_path / "pk.md").read_text() and (tmp_path / "pk.png").stat().st_size > 0


def test_bad_depth_is_a_one_line_cli_error(run_dir, capsys):
    code = main(["eval", "passkey", "--model", str(run_dir), "--depths", "0,2", "--device", "cpu"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("effzoo eval: error: depths must be numbers between 0 and 1")


def test_loss_by_position_matches_perplexity(run_dir, tmp_path):
    lm = load_language_model(str(run_dir))
    tokens = embedded_dataset("byte").split("val")
    by_pos = loss_by_position(lm, tokens, seq_len=64, batch_size=4, buckets=4, max_tokens=1024)
    overall = perplexity(lm, tokens, seq_len=64, batch_size=4, max_tokens=1024)
    assert len(by_pos["loss_per_position"]) == 64 and by_pos["windows"] == 16
    assert [(b["start"], b["end"]) for b in by_pos["buckets"]] == [(0, 16), (16, 32), (32, 48), (48, 64)]
    assert sum(by_pos["loss_per_position"]) / 64 == pytest.approx(overall["loss"], rel=1e-5)
    assert sum(b["loss"] for b in by_pos["buckets"]) / 4 == pytest.approx(overall["loss"], rel=1e-5)
    assert position_plot(by_pos, tmp_path / "pos.png").stat().st_size > 0
    code = main(["eval", "ppl", "--model", str(run_dir), "--seq-len", "64", "--max-tokens", "512", "--by-position",
                 "--buckets", "4", "--out", str(tmp_path / "ppl"), "--quiet", "--device", "cpu"])
    assert code == 0 and (tmp_path / "ppl-positions.png").stat().st_size > 0
    assert len(json.loads((tmp_path / "ppl.json").read_text())["by_position"]["buckets"]) == 4


def test_loss_by_position_checks_token_ids_first(run_dir):
    lm = load_language_model(str(run_dir))
    tokens = np.array(embedded_dataset("byte").split("val")[:1025], dtype=np.int64)
    tokens[700] = lm.tokenizer.vocab_size  # one id the tokenizer never makes, inside the evaluated windows
    with pytest.raises(DataError, match="token 700 is id"):
        loss_by_position(lm, tokens, seq_len=64, batch_size=4, buckets=4, max_tokens=1024)
