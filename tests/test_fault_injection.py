"""Kill a training run many times (SIGKILL inside checkpoint writes, inside retention, and at random
moments), resume it each time, and check that the result is bitwise the uninterrupted run's and that no
staging or half-deleted folder is left behind."""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from effzoo.metrics import read_jsonl
from effzoo.train import TrainConfig, train
from effzoo.train.checkpoint import list_checkpoints, verify_checkpoint
from effzoo.train.faults import ENV

STEPS, EVERY, KEEP = 14, 2, 2
MODEL = {"d_model": 32, "n_layers": 1, "n_heads": 2, "n_kv_heads": 1, "ffn_hidden": 64}
SETTINGS = dict(variant="gqa", size="tiny", model=MODEL, seq_len=16, batch_size=2, steps=STEPS, lr=3e-3,
                warmup_steps=2, ckpt_every=EVERY, keep_checkpoints=KEEP, eval_every=0, tensorboard=False, quiet=True)
# (crash point, which hit of it in that process); None = a SIGKILL at a random moment
KILLS = [("checkpoint.weights", 1), ("checkpoint.before_manifest", 2), ("retention.renamed", 1),
         ("checkpoint.after_rename", 2), ("retention.deleting", 2), None, ("checkpoint.before_rename", 2), None]

pytestmark = pytest.mark.usefixtures("one_thread")


def _command(out, resume: bool) -> list[str]:
    flags = ["--size", "tiny", "--seq-len", "16", "--batch-size", "2", "--steps", str(STEPS), "--lr", "3e-3",
             "--warmup-steps", "2", "--ckpt-every", str(EVERY), "--keep-checkpoints", str(KEEP), "--eval-every", "0",
             "--no-tensorboard", "--quiet", "--out", str(out)] + [f"--set={k}={v}" for k, v in MODEL.items()]
    return [sys.executable, "-m", "effzoo", "train", "gqa", *flags, *(["--resume"] if resume else [])]


def _run_until_killed(out, kill, rng: random.Random) -> int:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    if kill is not None:
        env[ENV] = f"{kill[0]}:{kill[1]}"
    proc = subprocess.Popen(_command(out, bool(list_checkpoints(out))), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    if kill is None:
        time.sleep(rng.uniform(1.0, 4.0))
        proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode in (0, -signal.SIGKILL), err.decode()
    return proc.returncode


def test_sigkill_anywhere_then_resume_is_bitwise_exact(tmp_path):
    out = tmp_path / "faulty"
    rng = random.Random(0)
    finished = False
    for kill in KILLS:
        finished = _run_until_killed(out, kill, rng) == 0
        for path in list_checkpoints(out).values():  # every visible checkpoint is whole
            assert verify_checkpoint(path) is None, (kill, path)
        if finished:
            break
    if not finished:
        train(TrainConfig(**SETTINGS, out=str(out), resume="latest" if list_checkpoints(out) else None))
    reference = train(TrainConfig(**SETTINGS, out=str(tmp_path / "straight")))

    records = read_jsonl(out / "metrics.jsonl")
    assert [r["step"] for r in records] == list(range(1, STEPS + 1))
    assert [r["loss"] for r in records] == reference.losses  # exact, not approximate
    assert sorted(list_checkpoints(out)) == [STEPS - EVERY, STEPS]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [
        f"step_{STEPS - EVERY:08d}", f"step_{STEPS:08d}"]  # no .tmp-, .old- or .del- folder left
    final, expected = (load_file(str(d / "checkpoints" / f"step_{STEPS:08d}" / "model.safetensors"))
                       for d in (out, tmp_path / "straight"))
    assert final.keys() == expected.keys() and all(torch.equal(final[k], expected[k]) for k in final)
