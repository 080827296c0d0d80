"""Save and load models as ``config.json`` + ``model.safetensors`` (tied weights stored once)."""
from __future__ import annotations

import json
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
    document = json.loads(path.read_text())
    if "effzoo" not in document:
        raise ConfigError(
            f"{path} is not an effzoo config (model_type={document.get('model_type')!r}); "
            "to import a transformers Qwen2/GPT-NeoX checkpoint use effzoo.hf.import_checkpoint"
        )
    return ModelConfig.from_dict(document["effzoo"])


def from_pretrained(
    directory: str | os.PathLike[str], *, device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
) -> torch.nn.Module:
    """Rebuild a model saved by ``save_pretrained`` (every weight must match the config)."""
    from .build import build_empty, parse_dtype

    model = build_empty(read_config(directory), device=device)
    try:
        load_model(model, str(Path(directory) / WEIGHTS_NAME), strict=True, device=str(model.embed.weight.device))
    except RuntimeError as exc:
        raise ConfigError(f"weights in {directory} do not match its config.json: {exc}") from exc
    torch_dtype = parse_dtype(dtype)
    return model.to(torch_dtype) if torch_dtype is not None else model
