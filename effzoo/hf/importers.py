"""``import_checkpoint``: a transformers checkpoint directory -> an effzoo model with the same outputs.

Each supported ``model_type`` is a checkpoint format registered by the plugin that owns the parameters
(``register.add_checkpoint_format``: Qwen2 by the transformer plugin, GPT-NeoX by the pythia plugin)
with ``to_config(hf_config) -> ModelConfig`` and ``to_state_dict(cursor, config) -> dict``.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from ..build import build_empty, parse_dtype
from ..config import ModelConfig
from ..errors import ConfigError, UnknownNameError
from ..pretrained import CONFIG_NAME, MODEL_TYPE, from_pretrained
from ..registry import REGISTRY
from ..sizes import canonical_count
from .checkpoint import TensorCursor, read_weights


def _model_type(directory: Path) -> str:
    path = directory / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"no {CONFIG_NAME} in {directory}: not a transformers or effzoo checkpoint directory")
    try:
        return str(json.loads(path.read_text()).get("model_type"))
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path} is not valid JSON: {exc}") from exc


def import_checkpoint(
    directory: str | os.PathLike[str], dtype: str | torch.dtype | None = None, *,
    device: str | torch.device | None = None,
) -> torch.nn.Module:
    """Load a transformers checkpoint directory (Qwen2 -> ``gqa``, GPT-NeoX -> ``pythia``) or an
    effzoo one as an ``EffzooModel``. ``dtype=None`` keeps the checkpoint's dtype."""
    directory = Path(directory)
    model_type = _model_type(directory)
    if model_type == MODEL_TYPE:
        return from_pretrained(directory, device=device, dtype=dtype)
    formats = REGISTRY.ensure_loaded().checkpoint_formats
    if model_type not in formats:
        raise UnknownNameError("checkpoint model_type", model_type, [*formats, MODEL_TYPE])
    from transformers import AutoConfig

    fmt = formats[model_type]
    hf_config = AutoConfig.from_pretrained(str(directory), local_files_only=True)
    config = fmt.load("to_config")(hf_config)
    tensors = read_weights(directory)
    cursor = TensorCursor(tensors, source=f"{model_type} checkpoint {directory}")
    state = fmt.load("to_state_dict")(cursor, config)
    torch_dtype = parse_dtype(dtype) or tensors_dtype(state)
    return _materialise(config, state, torch_dtype, device)


def tensors_dtype(state: dict[str, torch.Tensor]) -> torch.dtype:
    """The floating dtype most of the checkpoint's parameters use."""
    counts: dict[torch.dtype, int] = {}
    for tensor in state.values():
        if tensor.is_floating_point():
            counts[tensor.dtype] = counts.get(tensor.dtype, 0) + tensor.numel()
    return max(counts, key=counts.__getitem__) if counts else torch.float32


def _materialise(config: ModelConfig, state: dict[str, torch.Tensor], dtype: torch.dtype,
                 device: str | torch.device | None) -> torch.nn.Module:
    """Build ``config`` without initialising it, then copy the converted tensors in (strictly)."""
    model = build_empty(config, device=device, dtype=dtype)
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ConfigError(
            f"converted checkpoint does not fit the effzoo model: missing {result.missing_keys}, "
            f"unexpected {result.unexpected_keys}"
        )
    model.config.size = canonical_count(model.num_parameters())
    return model
