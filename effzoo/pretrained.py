"""Save and load models as ``config.json`` + ``model.safetensors`` (tied weights stored once)."""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_model, save_model

from .atomic import atomic_dir
from .config import ModelConfig
from .errors import ConfigError

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
MODEL_TYPE = "effzoo"


def config_document(config: ModelConfig) -> dict[str, Any]:
    """The JSON written to config.json: effzoo's config plus the keys transformers' Auto classes read."""
    from . import __version__

    return {
        "model_type": MODEL_TYPE,
        "architectures": ["EffzooForCausalLM"],
        "effzoo_version": __version__,
        "effzoo": config.to_dict(),
        "vocab_size": config.vocab_size,
        "tie_word_embeddings": config.tie_embeddings,
    }


def write_config(directory: Path, config: ModelConfig) -> None:
    """Write ``directory/config.json`` (see :func:`config_document`)."""
    (directory / CONFIG_NAME).write_text(json.dumps(config_document(config), indent=2, sort_keys=True))


def save_pretrained(model: torch.nn.Module, directory: str | os.PathLike[str]) -> Path:
    """Write the model atomically: everything goes to a temporary sibling folder, then one rename."""
    with atomic_dir(directory) as staging:
        write_config(staging, model.config)
        save_model(model, str(staging / WEIGHTS_NAME))
    return Path(directory)


def read_config(directory: str | os.PathLike[str]) -> ModelConfig:
    """The effzoo config stored in ``directory/config.json``."""
    path = Path(directory) / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"no {CONFIG_NAME} in {directory}: not a saved effzoo model")
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path} is not valid JSON ({exc}); the saved model is damaged") from exc
    if not isinstance(document, dict) or "effzoo" not in document:
        raise ConfigError(
            f"{path} is not an effzoo config (model_type={document.get('model_type') if isinstance(document, dict) else None!r}); "
            "to import a transformers Qwen2/GPT-NeoX checkpoint use effzoo.hf.import_checkpoint"
        )
    return ModelConfig.from_dict(document["effzoo"])


def model_directory(directory: str | os.PathLike[str]) -> Path:
    """``directory`` itself, or for a training run folder (``checkpoints/step_*``) its newest intact
    checkpoint; a folder that holds neither is named in the error."""
    path = Path(directory).expanduser()
    if (path / CONFIG_NAME).is_file() or not path.is_dir():
        return path
    from .train.checkpoint import checkpoint_dir, list_checkpoints, newest_intact

    if list_checkpoints(path):
        found = newest_intact(path, logging.getLogger("effzoo").warning)
        if found is None:
            raise ConfigError(f"{path} is a training run, but no checkpoint in {checkpoint_dir(path)} is intact")
        return found
    raise FileNotFoundError(f"no {CONFIG_NAME} in {path}: not a saved effzoo model or a training run folder "
                            "with checkpoints/step_*")


def from_pretrained(
    directory: str | os.PathLike[str], *, device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
) -> torch.nn.Module:
    """Rebuild a model saved by ``save_pretrained``, or a training run's newest intact checkpoint (every
    weight must match the config)."""
    from .build import build_empty, parse_dtype

    directory = model_directory(directory)
    model = build_empty(read_config(directory), device=device)
    weights = directory / WEIGHTS_NAME
    if not weights.is_file():
        raise FileNotFoundError(f"no {WEIGHTS_NAME} in {directory}")
    try:
        load_model(model, str(weights), strict=True, device=str(model.embed.weight.device))
    except RuntimeError as exc:
        raise ConfigError(f"weights in {directory} do not match its config.json: {exc}") from exc
    except Exception as exc:  # safetensors' SafetensorError for a truncated or foreign file
        raise ConfigError(f"{weights} is not a readable safetensors file ({str(exc).splitlines()[0]}); "
                          "it is damaged or was not written by effzoo") from exc
    torch_dtype = parse_dtype(dtype)
    return model.to(torch_dtype) if torch_dtype is not None else model
