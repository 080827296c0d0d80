"""Exact resume: a run SIGKILLed mid-way and resumed from its latest checkpoint reproduces the losses
of an uninterrupted run bit for bit (CPU)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from effzoo.metrics import read_jsonl
from effzoo.train import TrainConfig, train
from effzoo.train.checkpoint import list_checkpoints

STEPS, EVERY = 60, 5
MODEL = {"d_model": 64, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "ffn_hidden": 128}
FLAGS = ["--size", "tiny", "--seq-len", "32", "--batch-size", "4", "--steps", str(STEPS), "--lr", "3e-3",
         "--warmup-steps", "5", "--ckpt-every", str(EVERY), "--keep-checkpoints", "2", "--eval-every", "0",
         "--log-every", "1000", "--no-tensorboard"] + [f"--set={k}={v}" for k, v in MODEL.items()]


def _cli(out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "effzoo", "train", "gqa", *FLAGS, "--out", str(out), *extra]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


pytestmark = pytest.mark.usefixtures("one_thread")


def test_sigkill_then_resume_matches_an_uninterrupted_run(tmp_path):
    out = tmp_path / "killed"
    proc = subprocess.Popen(_cli(out), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while 2 * EVERY not in list_checkpoints(out):
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    killed_at = max(list_checkpoints(out))
    assert killed_at < STEPS, "the run finished before it could be killed"

    settings = dict(variant="gqa", size="tiny", model=MODEL, seq_len=32, batch_size=4, steps=STEPS, lr=3e-3,
                    warmup_steps=5, ckpt_every=EVERY, keep_checkpoints=2, eval_every=0, tensorboard=False, quiet=True)
    resumed = train(TrainConfig(**settings, out=str(out), resume="latest"))  # same code path as --resume latest
    assert resumed.metrics["resumed_from"] == killed_at
    reference = train(TrainConfig(**settings, out=str(tmp_path / "straight")))
    records = read_jsonl(out / "metrics.jsonl")
    assert [r["step"] for r in records] == list(range(1, STEPS + 1))  # no duplicates from the killed run
    assert [r["loss"] for r in records] == reference.losses  # exact, not approximate
    assert sorted(list_checkpoints(out)) == [STEPS - EVERY, STEPS]  # retention keeps 2
    assert not [p for p in (out / "checkpoints").iterdir() if p.name.startswith(".")]


def test_resume_from_a_given_step(tmp_path):
    settings = dict(variant="gqa", size="tiny", model=MODEL, seq_len=32, batch_size=4, steps=12, lr=3e-3,
                    warmup_steps=2, ckpt_every=4, keep_checkpoints=5, eval_every=0, tensorboard=False, quiet=True)
    full = train(TrainConfig(**settings, out=str(tmp_path / "run")))
    again = train(TrainConfig(**settings, out=str(tmp_path / "run"), resume="4"))
    assert again.losses == full.losses[4:]
    assert again.metrics["resumed_from"] == 4 and again.metrics["steps"] == 8
