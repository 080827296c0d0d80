"""torch.distributed on CPU: 2 processes (gloo, launched with torchrun) match 1 process on the same
global batch, with DDP and with FSDP2 (``fully_shard``)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from effzoo.metrics import read_jsonl
from effzoo.train import TrainConfig, train
from effzoo.train.checkpoint import list_checkpoints

MODEL = {"d_model": 64, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "ffn_hidden": 128}
STEPS = 6


def _settings(out) -> TrainConfig:
    return TrainConfig(variant="gqa", size="tiny", model=MODEL, seq_len=32, batch_size=4, steps=STEPS, lr=3e-3,
                       warmup_steps=2, eval_every=3, eval_batches=2, ckpt_every=0, out=str(out),
                       tensorboard=False, quiet=True)


@pytest.fixture(scope="module")
def single_process(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return train(_settings(tmp_path_factory.mktemp("single") / "run"))
    finally:
        torch.set_num_threads(threads)


def _torchrun(out, *extra: str) -> subprocess.CompletedProcess:
    flags = ["--size", "tiny", "--seq-len", "32", "--batch-size", "4", "--steps", str(STEPS), "--lr", "3e-3",
             "--warmup-steps", "2", "--eval-every", "3", "--eval-batches", "2", "--ckpt-every", "0",
             "--no-tensorboard", "--out", str(out)] + [f"--set={k}={v}" for k, v in MODEL.items()]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "-m", "effzoo", "train", "gqa", *flags, *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_two_processes_match_one(tmp_path, single_process, mode):
    out = tmp_path / mode
    result = _torchrun(out, *(["--fsdp"] if mode == "fsdp" else []))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    records = read_jsonl(out / "metrics.jsonl")
    assert [r["step"] for r in records] == list(range(1, STEPS + 1))
    assert [r["loss"] for r in records] == pytest.approx(single_process.losses, rel=2e-5, abs=2e-5)
    val = [r["val_loss"] for r in read_jsonl(out / "metrics.jsonl", kind="val")]
    assert val == pytest.approx(list(single_process.val_losses.values()), rel=2e-5)

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["fsdp"] is (mode == "fsdp")
    assert len(metrics["amu_gb_per_device"]) == 2 and all(m > 0 for m in metrics["amu_gb_per_device"])
    assert metrics["gpu_hours"] == pytest.approx(metrics["wall_s"] * 2 / 3600)
    assert metrics["al_comm_s"] > 0 and metrics["al_compute_s"] > 0
    assert metrics["tokens"] == single_process.metrics["tokens"]
    # the final checkpoint holds the full (gathered) weights, equal to the 1-process run's
    from safetensors.torch import load_file

    mine = load_file(str(list_checkpoints(out)[STEPS] / "model.safetensors"))
    ref = load_file(str(single_process.checkpoint / "model.safetensors"))
    assert mine.keys() == ref.keys()
    for key in ref:
        torch.testing.assert_close(mine[key], ref[key], rtol=1e-4, atol=1e-5)
