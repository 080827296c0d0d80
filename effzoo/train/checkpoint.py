"""Atomic, verified, resumable checkpoints.

``OUT/checkpoints/step_00001000/`` holds ``config.json`` + ``model.safetensors`` (loadable with
``effzoo.from_pretrained``), ``trainer_state.pt`` (optimizer, scheduler, loss scaler, step, data
position, every rank's RNG states, the training settings) and, written last, ``manifest.json`` with
every file's size and SHA-256. A checkpoint is staged in ``.tmp-step_*``, fsynced and renamed into
place; retention renames a folder to ``.del-step_*`` before deleting it. Readers take only folders whose
manifest matches and fall back to the newest intact one, saying which they skipped and why.
"""
from __future__ import annotations

import errno
import json
import logging
import os
import random
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..atomic import fsync_path, replace_dir
from ..config import ModelConfig
from ..data.manifest import file_sha256
from ..errors import ConfigError, EffzooError
from ..pretrained import CONFIG_NAME, WEIGHTS_NAME, write_config
from .distributed import DistInfo, barrier, gather_objects
from .layout import Layout
from .faults import fault_point

LOG = logging.getLogger("effzoo.train")
STATE_NAME = "trainer_state.pt"
DCP_DIR = "dcp"  # a TP / PP / CP run's weights and optimizer state, by torch.distributed.checkpoint
MANIFEST_NAME = "manifest.json"
STALE_PREFIXES = (".tmp-", ".old-", ".del-")
_STEP_DIR = re.compile(r"^step_(\d+)$")
_SPACE_MARGIN = 1 << 20  # config.json, manifest and safetensors/pickle headers


class CheckpointError(EffzooError):
    """A checkpoint that cannot be written (disk full) or read (damaged, or from another model)."""


def checkpoint_dir(out: Path) -> Path:
    return Path(out) / "checkpoints"


def list_checkpoints(out: Path) -> dict[int, Path]:
    """Every ``step_*`` folder under ``out`` by step, intact or not (staging folders are never listed)."""
    root = checkpoint_dir(out)
    found = {}
    if root.is_dir():
        for child in root.iterdir():
            match = _STEP_DIR.match(child.name)
            if match and child.is_dir():
                found[int(match.group(1))] = child
    return dict(sorted(found.items()))


def verify_checkpoint(path: Path) -> str | None:
    """Why the checkpoint in ``path`` cannot be used (missing file, wrong size or checksum), or None when
    every file matches its manifest. A folder without a manifest (written by hand, or by an effzoo from
    before manifests) gets the structural checks of :func:`unverified_problem`."""
    manifest = path / MANIFEST_NAME
    if not manifest.is_file():
        return unverified_problem(path)
    try:
        files = json.loads(manifest.read_text(encoding="utf-8"))["files"]
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        return f"{MANIFEST_NAME} is not readable"
    distributed = any(name.startswith(DCP_DIR + "/") for name in files)  # torch.distributed.checkpoint shards
    for name in (CONFIG_NAME, STATE_NAME) if distributed else (CONFIG_NAME, WEIGHTS_NAME, STATE_NAME):
        if name not in files:
            return f"{MANIFEST_NAME} does not list {name}"
    for name, expected in files.items():
        file = path / name
        if not file.is_file():
            return f"{name} is missing"
        size = file.stat().st_size
        if size != expected["bytes"]:
            return f"{name} has {size:,} bytes, the manifest says {expected['bytes']:,}"
        if file_sha256(file) != expected["sha256"]:
            return f"{name} does not match its checksum"
    return None


def unverified_problem(path: Path) -> str | None:
    """Checks that need no manifest: config.json parses, model.safetensors is as long as its header says,
    and trainer_state.pt (when present) has an intact zip directory."""
    try:
        json.loads((path / CONFIG_NAME).read_text(encoding="utf-8"))["effzoo"]
    except FileNotFoundError:
        return f"{CONFIG_NAME} is missing"
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        return f"{CONFIG_NAME} is not an effzoo config"
    weights = path / WEIGHTS_NAME
    if not weights.is_file():
        return f"{WEIGHTS_NAME} is missing"
    size = weights.stat().st_size
    try:
        with weights.open("rb") as fh:
            length = int.from_bytes(fh.read(8), "little")
            header = json.loads(fh.read(length)) if 0 < length < size else None
        end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
    except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError):
        header = None
    if header is None or size != 8 + length + end:
        return f"{WEIGHTS_NAME} is truncated or not a safetensors file ({size:,} bytes)"
    state = path / STATE_NAME
    if state.exists():
        import zipfile

        try:
            zipfile.ZipFile(state).close()
        except (zipfile.BadZipFile, OSError):
            return f"{STATE_NAME} is truncated or not a torch checkpoint ({state.stat().st_size:,} bytes)"
    return None


def newest_intact(out: Path, report: Callable[[str], None] | None = None) -> Path | None:
    """The newest checkpoint under ``out`` that verifies; each damaged newer one is passed to ``report``."""
    for step, path in reversed(list_checkpoints(out).items()):
        problem = verify_checkpoint(path)
        if problem is None:
            return path
        if report is not None:
            report(f"checkpoint {path} is damaged ({problem}); trying an older one")
    return None


def find_checkpoint(out: Path, which: str | int) -> Path:
    """The intact checkpoint for ``which`` ('latest': the newest intact one, or a step number)."""
    found = list_checkpoints(out)
    if not found:
        raise ConfigError(f"--resume {which}: no checkpoints in {checkpoint_dir(out)}")
    if str(which) == "latest":
        path = newest_intact(out, LOG.warning)
        if path is None:
            raise CheckpointError(f"--resume latest: none of the {len(found)} checkpoints in {checkpoint_dir(out)} "
                                  "is intact; start a new run with another --out")
        if path != found[max(found)]:
            LOG.warning("resuming from %s, the newest intact checkpoint", path)
        return path
    step = int(which)
    if step not in found:
        raise ConfigError(f"--resume {step}: no checkpoint for step {step} in {checkpoint_dir(out)}; "
                          f"available steps: {', '.join(map(str, found))}")
    problem = verify_checkpoint(found[step])
    if problem is not None:
        raise CheckpointError(f"--resume {step}: checkpoint {found[step]} is damaged ({problem}); "
                              "use --resume latest for the newest intact checkpoint")
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


def tensor_bytes(obj: Any) -> int:
    """Bytes of every tensor inside nested dicts, lists and tuples."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(tensor_bytes(v) for v in obj)
    return 0


def save_checkpoint(out: Path, step: int, *, model: nn.Module, optimizer: torch.optim.Optimizer,
                    trainer_state: dict[str, Any], rng: dict[str, Any], info: DistInfo,
                    keep: int | None, layout: Layout | None = None, config: ModelConfig | None = None) -> Path | None:
    """Collective: every rank calls it; rank 0 writes, then keeps the newest ``keep`` (None: all). Returns
    the folder on rank 0. A failure on rank 0 (disk full) is raised on every rank as a ``CheckpointError``.
    Under a TP / PP / CP ``layout`` every rank writes its shards with torch.distributed.checkpoint."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_optimizer_state_dict

    if layout is not None and layout.model_parallel:
        return save_distributed(out, step, model=model, optimizer=optimizer, trainer_state=trainer_state, rng=rng,
                                info=info, keep=keep, config=config)
    full = StateDictOptions(full_state_dict=True, cpu_offload=True)  # gathers FSDP shards, strips DDP names
    weights = get_model_state_dict(model, options=full)
    optim_state = get_optimizer_state_dict(model, optimizer, options=full)
    rngs = gather_objects(rng, info)
    target = checkpoint_dir(out) / f"step_{step:08d}"
    problem = None
    if info.is_main:
        state = {**trainer_state, "step": step, "optimizer": optim_state, "rng": rngs, "world_size": info.world_size}
        base = model.module if hasattr(model, "module") else model
        try:
            _write(target, base.config, weights, state, step)
            if keep is not None:
                _apply_retention(out, keep)
        except CheckpointError as exc:
            problem = str(exc)
    problems = [p for p in gather_objects(problem, info) if p]  # also the barrier after rank 0's write
    if problems:
        raise CheckpointError(problems[0])
    return target if info.is_main else None


def _write(target: Path, config: ModelConfig, weights: dict[str, torch.Tensor], state: dict[str, Any],
           step: int) -> None:
    """Stage, fsync, manifest last, rename: ``target`` either appears complete or not at all."""
    root = target.parent
    root.mkdir(parents=True, exist_ok=True)
    staging = root / f".tmp-{target.name}"
    shutil.rmtree(staging, ignore_errors=True)
    needed = tensor_bytes(weights) + tensor_bytes(state) + _SPACE_MARGIN
    free = shutil.disk_usage(root).free
    if free < needed:
        raise CheckpointError(f"not enough disk space for checkpoint {target}: it needs about {needed:,} bytes, "
                              f"{free:,} are free in {root}; free space or lower --keep-checkpoints")
    try:
        staging.mkdir()
        write_config(staging, config)
        save_file({k: v.detach().contiguous() for k, v in weights.items()}, str(staging / WEIGHTS_NAME),
                  metadata={"format": "pt", "step": str(step)})
        fault_point("checkpoint.weights")
        torch.save(state, staging / STATE_NAME)
        files = {}
        for name in (CONFIG_NAME, WEIGHTS_NAME, STATE_NAME):
            fsync_path(staging / name)
            files[name] = {"bytes": (staging / name).stat().st_size, "sha256": file_sha256(staging / name)}
        fault_point("checkpoint.before_manifest")
        (staging / MANIFEST_NAME).write_text(json.dumps({"step": step, "files": files}, indent=2))
        fault_point("checkpoint.before_rename")
        replace_dir(staging, target)
        fault_point("checkpoint.after_rename")
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise CheckpointError(f"disk full while writing checkpoint {staging}: it needs about {needed:,} bytes; "
                                  f"the partial folder was removed and earlier checkpoints are intact") from exc
        raise CheckpointError(f"cannot write checkpoint {staging}: {exc}") from exc


def _apply_retention(out: Path, keep: int) -> None:
    """Keep the newest ``keep`` checkpoints. Each older one is renamed to ``.del-*`` first, so a kill
    mid-delete leaves a stale folder that ``remove_stale`` finishes, never a half-deleted ``step_*``."""
    found = list_checkpoints(out)
    for step in list(found)[:-keep]:
        doomed = found[step].with_name(f".del-{found[step].name}")
        shutil.rmtree(doomed, ignore_errors=True)
        found[step].rename(doomed)
        fsync_path(doomed.parent)
        fault_point("retention.renamed")
        _remove_tree(doomed)


def _remove_tree(folder: Path) -> None:
    for file in sorted(folder.iterdir()):
        file.unlink() if not file.is_dir() else shutil.rmtree(file)
        fault_point("retention.deleting")
    folder.rmdir()


def remove_stale(out: Path) -> list[Path]:
    """Delete staging, moved-aside and half-deleted folders a killed run left behind; returns them."""
    root = checkpoint_dir(out)
    removed = []
    if root.is_dir():
        for child in root.iterdir():
            if child.name.startswith(STALE_PREFIXES):
                shutil.rmtree(child, ignore_errors=True)
                removed.append(child)
    return removed


_NOT_SETTINGS = ("provenance",)  # which package versions built the model: an upgrade is no model change


def model_changes(path: Path, config: ModelConfig) -> list[str]:
    """Model settings that differ between the checkpoint in ``path`` and ``config``, as 'key: old -> new'."""
    saved = json.loads((path / CONFIG_NAME).read_text(encoding="utf-8"))["effzoo"]
    now = config.to_dict()
    return [f"{key}: {saved.get(key)!r} in the checkpoint, {now.get(key)!r} now"
            for key in sorted((set(saved) | set(now)) - set(_NOT_SETTINGS)) if saved.get(key) != now.get(key)]


def load_checkpoint(path: Path, *, model: nn.Module, optimizer: torch.optim.Optimizer,
                    info: DistInfo, layout: Layout | None = None) -> dict[str, Any]:
    """Load weights and optimizer state into the (possibly wrapped) model; return the trainer state
    with ``rng`` replaced by this rank's generator states. A torch.distributed.checkpoint folder (written
    under TP / PP / CP) loads under any layout; a single-file one under data parallel only."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict, set_optimizer_state_dict
    if not (path / STATE_NAME).is_file():
        raise CheckpointError(f"{path} holds no {STATE_NAME}: a saved model, not a checkpoint to resume")
    if (path / DCP_DIR).is_dir():
        return load_distributed(path, model=model, optimizer=optimizer, info=info)
    if layout is not None and layout.model_parallel:
        raise CheckpointError(f"checkpoint {path} is a single-file data-parallel checkpoint; --tp/--pp/--cp runs "
                              "resume from checkpoints written under such a layout (torch.distributed.checkpoint)")
    try:
        state = torch.load(path / STATE_NAME, map_location="cpu", weights_only=True)
        weights = load_file(str(path / WEIGHTS_NAME))
    except Exception as exc:  # pickle.UnpicklingError, safetensors errors: the file, not the code, is at fault
        raise CheckpointError(f"checkpoint {path} cannot be read: {type(exc).__name__}; it is damaged or was "
                              "not written by effzoo") from exc
    if state["world_size"] != info.world_size:
        raise ConfigError(
            f"{path} was written by {state['world_size']} processes, this run has {info.world_size}; "
            "resume with the same number of processes for an exact continuation"
        )
    try:
        set_model_state_dict(model, weights, options=StateDictOptions(full_state_dict=True))
        set_optimizer_state_dict(model, optimizer, state["optimizer"], options=StateDictOptions(full_state_dict=True))
    except (RuntimeError, KeyError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {path} does not fit this model: {str(exc).splitlines()[0]}") from exc
    state["rng"] = state["rng"][info.rank]
    return state


def finite_flag(model: nn.Module) -> torch.Tensor:
    """1.0 when every parameter (this rank's shard under FSDP) is finite, else 0.0, on the device."""
    flags = [torch.isfinite(p.to_local() if hasattr(p, "to_local") else p.detach()).all() for p in model.parameters()]
    return torch.stack(flags).all().float() if flags else torch.ones(())


# -- torch.distributed.checkpoint: every layout -----------------------------------------------
_FLAT = {"flatten_optimizer_state_dict": True}  # per-parameter keys: the same under every layout


def _base(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") else model


def _fused_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """Parameters split per segment by ``FusedColwiseParallel`` (rows in tensor-parallel order), by name."""
    from ..tensor_parallel import ROW_ORDER

    return {name: p for name, p in _base(model).named_parameters() if hasattr(p, ROW_ORDER)}


def _natural_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Model and optimizer state keyed the same under every layout, fused rows in natural order."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_optimizer_state_dict

    from ..tensor_parallel import ROW_ORDER, natural_rows

    weights = get_model_state_dict(model)
    optim_state = get_optimizer_state_dict(model, optimizer, options=StateDictOptions(**_FLAT))
    for name, param in _fused_parameters(model).items():
        order = getattr(param, ROW_ORDER)
        weights[name] = natural_rows(weights[name], order)
        for key in [k for k in optim_state if k.startswith(f"state.{name}.")]:
            if getattr(optim_state[key], "ndim", 0) == param.ndim:
                optim_state[key] = natural_rows(optim_state[key], order)
    return {"model": weights, "optim": optim_state}


def save_distributed(out: Path, step: int, *, model: nn.Module, optimizer: torch.optim.Optimizer,
                     trainer_state: dict[str, Any], rng: dict[str, Any], info: DistInfo, keep: int | None,
                     config: ModelConfig | None) -> Path | None:
    """Every rank writes its shards into the staging folder with ``dcp.save``; rank 0 adds config, trainer
    state and the manifest, and renames the folder into place (atomic like the single-file format)."""
    import torch.distributed.checkpoint as dcp

    target = checkpoint_dir(out) / f"step_{step:08d}"
    staging = target.parent / f".tmp-{target.name}"
    if info.is_main:
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
    barrier(info)
    problem = None
    try:
        dcp.save(_natural_state(model, optimizer), checkpoint_id=str(staging / DCP_DIR))
    except OSError as exc:
        problem = f"cannot write checkpoint {staging}: {exc}"
    rngs = gather_objects(rng, info)
    problems = [p for p in gather_objects(problem, info) if p]
    if info.is_main and not problems:
        state = {**trainer_state, "step": step, "rng": rngs, "world_size": info.world_size}
        try:
            write_config(staging, config or _base(model).config)
            torch.save(state, staging / STATE_NAME)
            files = {}
            for file in sorted(f for f in staging.rglob("*") if f.is_file()):
                fsync_path(file)
                name = file.relative_to(staging).as_posix()
                files[name] = {"bytes": file.stat().st_size, "sha256": file_sha256(file)}
            (staging / MANIFEST_NAME).write_text(json.dumps({"step": step, "files": files}, indent=2))
            replace_dir(staging, target)
            if keep is not None:
                _apply_retention(out, keep)
        except OSError as exc:
            shutil.rmtree(staging, ignore_errors=True)
            problem = f"cannot write checkpoint {staging}: {exc}"
    problems += [p for p in gather_objects(problem if info.is_main else None, info) if p]
    if problems:
        raise CheckpointError(problems[0])
    return target if info.is_main else None


def load_distributed(path: Path, *, model: nn.Module, optimizer: torch.optim.Optimizer,
                     info: DistInfo) -> dict[str, Any]:
    """``dcp.load`` into this rank's parameters and optimizer state, resharded to the current layout."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict, set_optimizer_state_dict

    from ..tensor_parallel import ROW_ORDER, sharded_rows

    try:
        state = torch.load(path / STATE_NAME, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"checkpoint {path} cannot be read: {type(exc).__name__}; it is damaged or was "
                              "not written by effzoo") from exc
    if state["world_size"] != info.world_size:
        raise ConfigError(f"{path} was written by {state['world_size']} processes, this run has {info.world_size}; "
                          "resume with the same number of processes for an exact continuation")
    current = _natural_state(model, optimizer)
    try:
        dcp.load(current, checkpoint_id=str(path / DCP_DIR))
        for name, param in _fused_parameters(model).items():
            order = getattr(param, ROW_ORDER)
            current["model"][name] = sharded_rows(current["model"][name], param, order)
            for key in [k for k in current["optim"] if k.startswith(f"state.{name}.")]:
                if getattr(current["optim"][key], "ndim", 0) == param.ndim:
                    current["optim"][key] = sharded_rows(current["optim"][key], param, order)
        set_model_state_dict(model, current["model"])
        set_optimizer_state_dict(model, optimizer, current["optim"], options=StateDictOptions(**_FLAT))
    except (RuntimeError, KeyError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {path} does not fit this model: {str(exc).splitlines()[0]}") from exc
    state["rng"] = state["rng"][info.rank]
    return state
