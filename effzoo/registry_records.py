"""The registry's smaller records (benchmark suites, overrides, checkpoint formats), imported only when
plugins register them, so ``import effzoo`` does not pay for their dataclasses."""
from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .errors import PluginError


@dataclass(frozen=True)
class SuiteRow:
    """One method of a benchmark group: its display name, variant, overrides and place in the table."""

    suite: str
    method: str
    variant: str
    overrides: dict[str, Any] = field(default_factory=dict)
    order: float = 0.0
    plugin: str = ""


@dataclass(frozen=True)
class SuiteSpec:
    """A benchmark group: its place among the groups, default sizes, and an optional ``pairing``
    callable ``(sizes or None) -> [(method, variant, size)]`` that replaces the rows-times-sizes grid."""

    name: str
    default_sizes: tuple[str, ...]
    order: float = 0.0
    pairing: Callable[[list[str] | None], list[tuple[str, str, str]]] | None = None
    plugin: str = ""


@dataclass(frozen=True)
class Replacement:
    """An ``override=True`` registration that replaced an entry of another plugin."""

    kind: str
    name: str
    old: str  # "plugin (distribution version)" of the replaced entry
    new: str

    def __str__(self) -> str:
        return f"{self.kind} {self.name!r} of {self.old} replaced by {self.new}"


@dataclass
class CheckpointFormat:
    """A foreign checkpoint layout registered by the plugin that owns the parameters it maps (like
    torchtitan's state_dict adapters): transformers ``model_type`` -> effzoo config and tensors.

    ``to_config(hf_config) -> ModelConfig`` and ``to_state_dict(cursor, config) -> {name: tensor}``
    (``cursor``: an ``effzoo.plugin.TensorCursor`` over the checkpoint) may be ``"module:attr"`` strings,
    imported on first use.
    """

    model_type: str
    to_config: Callable[..., Any] | str
    to_state_dict: Callable[..., Any] | str
    description: str = ""
    plugin: str = ""

    def load(self, which: str) -> Callable[..., Any]:
        """``to_config`` or ``to_state_dict``, importing a ``"module:attr"`` string."""
        target = getattr(self, which)
        if callable(target):
            return target
        module_name, _, attr = target.partition(":")
        try:
            return getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as exc:
            raise PluginError(f"checkpoint format {self.model_type!r} (plugin {self.plugin}) cannot load {target!r}: {exc}") from exc
