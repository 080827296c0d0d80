"""effzoo: build, train, measure and compare efficient LLM architecture variants.

    >>> import effzoo
    >>> model = effzoo.build("gqa", size="tiny")
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Literal, overload

__version__ = "0.1.0"

from .analysis import info
from .build import build, build_from_config, make_config
from .config import ModelConfig
from .errors import ConfigError, EffzooError, PluginError, UnknownNameError
from .hookspecs import hookimpl
from .interfaces import Attention, MixContext, MixerBlock, PositionalEncoding, Router, Routing
from .pretrained import from_pretrained, save_pretrained
from .registry import REGISTRY, Capabilities, VariantSpec

if TYPE_CHECKING:
    from .plugins import PluginReport


@overload
def list_variants(pattern: str = "*", *, specs: Literal[False] = False, **filters: object) -> list[str]: ...
@overload
def list_variants(pattern: str = "*", *, specs: Literal[True], **filters: object) -> list[VariantSpec]: ...


def list_variants(pattern: str = "*", *, specs: bool = False, **filters: object) -> list[str] | list[VariantSpec]:
    """Names of the registered variants matching ``pattern`` (fnmatch) and capability filters, e.g.
    ``kv_cache=True`` or ``group="attention"``; ``specs=True`` gives the VariantSpec objects instead."""
    found = REGISTRY.list_variants(pattern, **filters)
    return found if specs else [spec.name for spec in found]


def __getattr__(name: str) -> object:
    if name == "plugin":  # the public plugin API (effzoo.plugin), imported on first use
        import importlib

        return importlib.import_module(".plugin", __name__)
    raise AttributeError(f"module 'effzoo' has no attribute {name!r}")


def plugin_reports() -> list[PluginReport]:
    """One report per plugin found: name, distribution, version and the error if it failed."""
    return REGISTRY.ensure_loaded().reports


__all__ = [
    "Attention", "Capabilities", "ConfigError", "EffzooError", "MixContext", "MixerBlock", "ModelConfig",
    "PluginError", "PositionalEncoding", "REGISTRY", "Router", "Routing", "UnknownNameError", "VariantSpec",
    "build", "build_from_config", "from_pretrained", "hookimpl", "info", "list_variants", "make_config",
    "plugin_reports", "save_pretrained", "__version__",
]
