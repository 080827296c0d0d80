"""Atomic, resumable checkpoints.

``OUT/checkpoints/step_00001000/`` holds ``config.json`` + ``model.safetensors`` (loadable with
``effzoo.from_pretrained``) and ``trainer_state.pt`` (optimizer, scheduler, loss scaler, step, data
position, every rank's RNG states, the training settings). A checkpoint is written into a hidden
temporary folder and renamed into place, so a crash never leaves a half-written ``step_*`` folder.
"""
from __future__ import annotations

import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..atomic import replace_dir
from ..errors import ConfigError
from ..pretrained import WEIGHTS_NAME, write_config
from .distributed import DistInfo, barrier, gather_objects

STATE_NAME = "trainer_state.pt"
_STEP_DIR = re.compile(r"^step_(\d+)$")


def checkpoint_dir(out: Path) -> Path:
    return out / "checkpoints"


def list_checkpoints(out: Path) -> dict[int, Path]:
    """Complete checkpoints under ``out`` by step (temporary folders are ignored)."""
    root = checkpoint_dir(out)
    found = {}
    if root.is_dir():
        for child in root.iterdir():
            match = _STEP_DIR.match(child.name)
            if match and (child / STATE_NAME).is_file():
                found[int(match.group(1))] = child
    return dict(sorted(found.items()))


def find_checkpoint(out: Path, which: str | int) -> Path:
    """The checkpoint for ``which`` ('latest' or a step number), with a clear error when absent."""
    found = list_checkpoints(out)
    if not found:
        raise ConfigError(f"--resume {which}: no checkpoints in {checkpoint_dir(out)}")
    if str(which) == "latest":
        return found[max(found)]
    step = int(which)
    if step not in found:
        raise ConfigError(f"--resume {step}: no checkpoint for step {step} in {checkpoint_dir(out)}; "
                          f"available steps: {', '.join(map(str, found))}")
    return found[step]


def rng_state(device_state: torch.Tensor | None) -> dict[str, Any]:
    """This process's random generators, in a form ``torch.load(weights_only=True)`` accepts."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    return {
        "torch": torch.get_rng_state(), "device": device_state, "python": random.getstate(),
        "numpy": [name, torch.from_numpy(np.asarray(keys, dtype=np.int64)), pos, has_gauss, gauss],
    }


def set_rng_state(state: dict[str, Any]) -> torch.Tensor | None:
    """Restore ``rng_state``'s generators; returns the device state for the backend to restore."""
    torch.set_rng_state(state["torch"])
    python = state["python"]
    random.setstate((python[0], tuple(python[1]), python[2]))
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    return state["device"]


def save_checkpoint(out: Path, step: int, *, model: nn.Module, optimizer: torch.optim.Optimizer,
                    trainer_state: dict[str, Any], rng: dict[str, Any], info: DistInfo, keep: int) -> Path | None:
    """Collective: every rank calls it; rank 0 writes. Returns the folder on rank 0."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_optimizer_state_dict

    full = StateDictOptions(full_state_dict=True, cpu_offload=True)  # gathers FSDP shards, strips DDP names
    weights = get_model_state_dict(model, options=full)
    optim_state = get_optimizer_state_dict(model, optimizer, options=full)
    rngs = gather_objects(rng, info)
    target = checkpoint_dir(out) / f"step_{step:08d}"
    if info.is_main:
        root = checkpoint_dir(out)
        root.mkdir(parents=True, exist_ok=True)
        staging = root / f".tmp-{target.name}"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        base = model.module if hasattr(model, "module") else model
        write_config(staging, base.config)
        save_file({k: v.detach().contiguous() for k, v in weights.items()}, str(staging / WEIGHTS_NAME),
                  metadata={"format": "pt", "step": str(step)})
        torch.save({**trainer_state, "step": step, "optimizer": optim_state, "rng": rngs,
                    "world_size": info.world_size}, staging / STATE_NAME)
        replace_dir(staging, target)
        _apply_retention(out, keep)
    barrier(info)
    return target if info.is_main else None


def _apply_retention(out: Path, keep: int) -> None:
    """Keep the newest ``keep`` checkpoints; remove older ones and stale temporary folders."""
    found = list_checkpoints(out)
    for step in list(found)[:-keep]:
        shutil.rmtree(found[step], ignore_errors=True)


def remove_stale(out: Path) -> None:
    """Delete temporary folders a killed run left behind."""
    root = checkpoint_dir(out)
    if root.is_dir():
        for child in root.iterdir():
            if child.name.startswith((".tmp-", ".old-")):
                shutil.rmtree(child, ignore_errors=True)


def load_checkpoint(path: Path, *, model: nn.Module, optimizer: torch.optim.Optimizer,
                    info: DistInfo) -> dict[str, Any]:
    """Load weights and optimizer state into the (possibly wrapped) model; return the trainer state
    with ``rng`` replaced by this rank's generator states."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict, set_optimizer_state_dict
    state = torch.load(path / STATE_NAME, map_location="cpu", weights_only=True)
    if state["world_size"] != info.world_size:
        raise ConfigError(
            f"{path} was written by {state['world_size']} processes, this run has {info.world_size}; "
            "resume with the same number of processes for an exact continuation"
        )
    weights = load_file(str(path / WEIGHTS_NAME))
    set_model_state_dict(model, weights, options=StateDictOptions(full_state_dict=True))
    set_optimizer_state_dict(model, optimizer, state["optimizer"], options=StateDictOptions(full_state_dict=True))
    state["rng"] = state["rng"][info.rank]
    return state
