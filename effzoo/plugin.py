"""The public plugin API: everything a plugin may import, built-in and third-party alike.

A plugin module implements one hook and registers through the typed :class:`Registrar` it receives::

    from effzoo import plugin

    @plugin.hookimpl
    def effzoo_register(register: plugin.Registrar) -> None:
        register.add_attention("my_attn", my_factory, description="...", options={"my_k": plugin.positive_int(4)})

What is here is kept stable (see docs/plugins.md for what a plugin may rely on); everything else in
effzoo (``effzoo.model``, ``effzoo.registry``, ...) is internal and may change.
"""
from __future__ import annotations

from typing import Any

from .cache import KVCache, TokenCache
from .config import ModelConfig, Option, choice, non_negative_int, positive_float, positive_int
from .errors import ConfigError, PluginError, UnknownNameError
from .hookspecs import hookimpl
from .interfaces import (
    POSITION_KINDS, Attention, Component, FeedForward, MixContext, MixerBlock, NoPositionalEncoding,
    PositionalEncoding, Router, Routing, ScoreMod,
)
from .model.parts import (
    LayerNorm, RMSNorm, build_component, layernorm, make_norm, one_kv_head_per_query_head, optional_ffn,
    position_kind, rmsnorm, rotate_half, uses_ffn,
)
from .ops.attention import EXTRA_BACKENDS, attend, register_backend
from .registry import Capabilities, Registrar
from .registry_records import CheckpointFormat


def import_torch_npu() -> Any | None:
    """``torch_npu`` if it imports (Ascend NPUs), else None: for ``Component.install_kernels("npu")``."""
    from .backends.npu import import_torch_npu as load

    return load()


def __getattr__(name: str) -> Any:
    if name == "tensor_parallel":  # styles for Component.tensor_parallel_plan, imported when a plan is asked for
        from . import tensor_parallel

        return tensor_parallel
    if name in ("TensorCursor", "rope_settings", "unsupported_checkpoint"):  # effzoo.hf: only when asked for
        from .hf import checkpoint

        return getattr(checkpoint, name)
    raise AttributeError(f"module 'effzoo.plugin' has no attribute {name!r}")


__all__ = [
    "Attention", "Capabilities", "CheckpointFormat", "Component", "ConfigError", "EXTRA_BACKENDS", "FeedForward",
    "KVCache", "LayerNorm", "MixContext", "MixerBlock", "ModelConfig", "NoPositionalEncoding", "Option",
    "POSITION_KINDS", "PluginError", "PositionalEncoding", "RMSNorm", "Registrar", "Router", "Routing",
    "ScoreMod", "TensorCursor", "TokenCache", "UnknownNameError", "attend", "build_component", "choice",
    "hookimpl", "import_torch_npu", "layernorm", "make_norm", "non_negative_int", "one_kv_head_per_query_head",
    "optional_ffn", "position_kind", "positive_float", "positive_int", "register_backend", "rmsnorm",
    "rope_settings", "rotate_half", "unsupported_checkpoint", "uses_ffn",
]
