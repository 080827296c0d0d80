"""Hugging Face interop: transformers Auto classes for effzoo models, and checkpoint import.

    >>> from effzoo.hf import register_auto_classes, import_checkpoint
    >>> register_auto_classes()          # AutoModelForCausalLM.from_pretrained(effzoo_dir) works
    >>> model = import_checkpoint("path/to/qwen2-or-pythia")   # -> EffzooModel

transformers is imported only when these are used, never by ``import effzoo``.
"""
from __future__ import annotations

from typing import Any

from .auto import register_auto_classes
from .importers import import_checkpoint

__all__ = ["EffzooCache", "EffzooConfig", "EffzooForCausalLM", "import_checkpoint", "register_auto_classes"]


def __getattr__(name: str) -> Any:
    if name == "EffzooCache":
        from .cache import EffzooCache

        return EffzooCache
    if name == "EffzooConfig":
        from .config import EffzooConfig

        return EffzooConfig
    if name == "EffzooForCausalLM":
        from .modeling import EffzooForCausalLM

        return EffzooForCausalLM
    raise AttributeError(f"module 'effzoo.hf' has no attribute {name!r}")
