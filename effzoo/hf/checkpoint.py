"""Reading a transformers checkpoint directory: its weight files, a strict key-by-key cursor, and the
helpers the plugins' checkpoint formats share (``effzoo.plugin.TensorCursor`` / ``rope_settings`` /
``unsupported_checkpoint``)."""
from __future__ import annotations

import json
import pickle
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import Tensor

from ..errors import ConfigError

SAFE_WEIGHTS = "model.safetensors"
SAFE_INDEX = "model.safetensors.index.json"
TORCH_WEIGHTS = "pytorch_model.bin"
TORCH_INDEX = "pytorch_model.bin.index.json"


def _load_file(path: Path) -> dict[str, Tensor]:
    try:
        if path.suffix == ".safetensors":
            return load_file(str(path), device="cpu")
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:  # torch's text would advise turning the safety off: never relay it
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
        if found:
            raise ConfigError(f"cannot read weights file {path}: it holds Python objects besides tensors "
                              f"({found.group(1)}), which effzoo does not unpickle; convert it to safetensors "
                              "with a tool you trust") from exc
        raise ConfigError(f"cannot read weights file {path}: not a readable torch file (damaged or truncated)") from exc
    except Exception as exc:  # corrupt or truncated file: name it
        raise ConfigError(f"cannot read weights file {path}: {type(exc).__name__}: {str(exc).splitlines()[0]}") from exc


def _shards(directory: Path, index_name: str) -> list[Path]:
    index_path = directory / index_name
    try:
        weight_map = json.loads(index_path.read_text())["weight_map"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ConfigError(f"{index_path} is not a valid shard index (needs a 'weight_map'): {exc}") from exc
    return [directory / name for name in dict.fromkeys(weight_map.values())]


def read_weights(directory: str | Path) -> dict[str, Tensor]:
    """Every tensor of the checkpoint in ``directory`` (safetensors preferred, sharded or not)."""
    directory = Path(directory)
    if (directory / SAFE_WEIGHTS).is_file():
        return _load_file(directory / SAFE_WEIGHTS)
    for index_name in (SAFE_INDEX, TORCH_INDEX):
        if (directory / index_name).is_file():
            tensors: dict[str, Tensor] = {}
            for shard in _shards(directory, index_name):
                tensors.update(_load_file(shard))
            return tensors
    if (directory / TORCH_WEIGHTS).is_file():
        return _load_file(directory / TORCH_WEIGHTS)
    raise FileNotFoundError(
        f"no weights in {directory}: looked for {SAFE_WEIGHTS}, {SAFE_INDEX}, {TORCH_INDEX} and {TORCH_WEIGHTS}"
    )


class TensorCursor:
    """Hands out checkpoint tensors by name; whatever is never taken must match ``ignore`` patterns."""

    def __init__(self, tensors: dict[str, Tensor], *, source: str = "checkpoint") -> None:
        self.source = source
        self._tensors = dict(tensors)

    def has(self, name: str) -> bool:
        return name in self._tensors

    def take(self, name: str) -> Tensor:
        """The tensor ``name``, removed from the pool; raises if the checkpoint lacks it."""
        if name not in self._tensors:
            raise ConfigError(f"{self.source} does not match its config.json: missing tensor {name!r}")
        return self._tensors.pop(name)

    def drop(self, name: str) -> None:
        self._tensors.pop(name, None)

    def finish(self, ignore: Iterable[str] = ()) -> None:
        """Raise if a tensor no converter took is left over (other than the ``ignore`` regexes)."""
        patterns = [re.compile(p) for p in ignore]
        unexpected = sorted(n for n in self._tensors if not any(p.search(n) for p in patterns))
        if unexpected:
            shown = ", ".join(unexpected[:8]) + (" ..." if len(unexpected) > 8 else "")
            raise ConfigError(f"{self.source} does not match its config.json: unexpected tensors {shown}")


def unsupported_checkpoint(model_type: str, what: str) -> ConfigError:
    """The error for a checkpoint feature effzoo cannot reproduce exactly."""
    return ConfigError(f"cannot import this {model_type} checkpoint: {what} is not supported by effzoo")


def rope_settings(hf_config: Any, model_type: str) -> tuple[float, float]:
    """(rope_theta, partial_rotary_factor) of plain RoPE; scaled variants (YaRN, linear, ...) are rejected."""
    params = dict(getattr(hf_config, "rope_parameters", None) or {})
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type != "default":
        raise unsupported_checkpoint(model_type, f"rope scaling (rope_type={rope_type!r})")
    theta = params.get("rope_theta", getattr(hf_config, "rope_theta", None))
    if theta is None:
        raise unsupported_checkpoint(model_type, "a config without rope_theta")
    return float(theta), float(params.get("partial_rotary_factor", 1.0))
