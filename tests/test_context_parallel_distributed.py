"""Context parallel end to end (torchrun): ``--cp 2`` alone, with ``--tp 2`` and with DP=2 (activation
checkpointing, two micro-batches) matches the single-process losses of the same seed and global batch
for 5 steps, and a ``--cp 2`` DCP checkpoint resumes under DP=2.

On CPU the runs go through ``tests/context_parallel_cpu.py``, a test-only launcher that lets torch's ring
attention templates run the CPU flash kernel (the library refuses --cp off CUDA): the rest -- the load
balancer's sharding of inputs, targets and positions, RoPE at the sharded positions, ring attention
forward and backward, gradients averaged over dp x cp, the loss over the ranks -- is the CUDA path's code.
Tolerance: abs 5e-6 (rel 1e-6). The ring merges the attention blocks by their logsumexp, which moves
the losses by ~1e-6; rotating the shards' keys at their local positions instead of their sequence
positions moves them by 5e-5 already at step 1 (measured), so the test sees that mistake.

The GPU test runs the library itself (no launcher) on two CUDA devices, in bf16."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from effzoo.metrics import read_jsonl
from effzoo.train import TrainConfig, train

STEPS = 5
MODEL = {"d_model": 64, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "ffn_hidden": 128}
LAUNCHER = str(Path(__file__).with_name("context_parallel_cpu.py"))
TOLERANCE = {"rel": 1e-6, "abs": 5e-6}


def _single(out: Path, **settings):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return train(TrainConfig(variant="gqa", size="tiny", model=MODEL, seq_len=32, batch_size=4, steps=STEPS,
                                 lr=3e-3, warmup_steps=2, eval_every=0, eval_batches=2, ckpt_every=0, out=str(out),
                                 tensorboard=False, quiet=True, **settings))
    finally:
        torch.set_num_threads(threads)


def torchrun(out: Path, nproc: int, *flags: str, program: list[str] | None = None) -> None:
    settings = ["--size", "tiny", "--seq-len", "32", "--batch-size", "4", "--steps", str(STEPS), "--lr", "3e-3",
                "--warmup-steps", "2", "--eval-every", "0", "--eval-batches", "2", "--no-tensorboard", "--quiet",
                "--out", str(out), *[f"--set={k}={v}" for k, v in MODEL.items()]]
    program = program or [LAUNCHER]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
               *program, "train", "gqa", *settings, *flags]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def losses(out: Path) -> list[float]:
    return [r["loss"] for r in read_jsonl(out / "metrics.jsonl")]


def test_cp2_matches_one_process_and_resumes_under_dp2(tmp_path):
    single = _single(tmp_path / "single")
    out = tmp_path / "cp"
    torchrun(out, 2, "--cp", "2", "--ckpt-every", "3")
    assert losses(out) == pytest.approx(single.losses, **TOLERANCE)
    val = [r["val_loss"] for r in read_jsonl(out / "metrics.jsonl", kind="val")]
    assert val == pytest.approx(list(single.val_losses.values()), **TOLERANCE)
    import json

    summary = json.loads((out / "metrics.json").read_text())
    assert (summary["cp"], summary["dp"], summary["layout"]) == (2, 1, "cp2")
    assert (out / "checkpoints" / "step_00000003" / "dcp").is_dir()
    cp_losses = losses(out)
    shutil.rmtree(out / "checkpoints" / f"step_{STEPS:08d}")  # continue from step 3, now data parallel
    torchrun(out, 2, "--resume", "3", "--ckpt-every", "3", program=["-m", "effzoo"])
    records = read_jsonl(out / "metrics.jsonl")
    assert [r["step"] for r in records] == list(range(1, STEPS + 1))
    assert [r["loss"] for r in records][3:] == pytest.approx(cp_losses[3:], rel=2e-5, abs=2e-5)


@pytest.mark.parametrize("flags", [["--tp", "2"], ["--activation-checkpointing", "--grad-accum", "2"]],
                         ids=["cp2-tp2", "cp2-dp2-checkpointing-accum2"])
def test_cp2_on_four_processes_with_tp_or_dp(tmp_path, flags):
    single = _single(tmp_path / "single", grad_accum=2 if "--grad-accum" in flags else 1)  # the same micro-batches
    out = tmp_path / "run"
    torchrun(out, 4, "--cp", "2", "--ckpt-every", "0", *flags)
    assert losses(out) == pytest.approx(single.losses, **TOLERANCE)


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="context parallel needs two CUDA devices")
def test_cp2_on_two_gpus_matches_one_gpu(tmp_path):
    single = _single(tmp_path / "single", dtype="bf16", compile=False)
    out = tmp_path / "cp"
    torchrun(out, 2, "--cp", "2", "--dtype", "bf16", "--ckpt-every", "0", program=["-m", "effzoo"])
    assert losses(out) == pytest.approx(single.losses, rel=2e-2, abs=2e-2)  # bf16 attention in another order
