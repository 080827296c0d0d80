"""The one flat, JSON-serialisable model configuration.

Component choices are stored as registry names (strings) and resolved at build time; a kind the
model does not use (``attention`` of an RWKV model) stays None. Plugin-specific settings (MLA ranks,
NSA blocks, MoE experts, Mamba state size, ...) live in ``options``; each plugin declares the option
names it accepts (with an :class:`Option` for their type and range), and ``effzoo.build`` rejects any
key that neither a core field nor a selected plugin declares. Every numeric field has a range
(:data:`CORE_RANGES`), checked whenever a config is made.
"""
from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .errors import ConfigError, unknown_keys_error


class Option:
    """A plugin option's default with its type and allowed range (checked by ``effzoo.make_config``).

    ``low``/``high`` bound numbers (``low_open=True`` excludes ``low``: "> low"), ``choices`` lists the
    allowed values. None is accepted when the default is None (a value derived at build time). A
    callable default is resolved from the other values first (e.g. ``lambda c: c["d_model"] // 8``).
    A plain class, not a dataclass: ``import effzoo`` builds dozens of them.
    """

    __slots__ = ("default", "type", "low", "high", "low_open", "choices")

    def __init__(self, default: Any, type: type | tuple[type, ...] | None = None, *, low: float | None = None,
                 high: float | None = None, low_open: bool = False, choices: tuple[Any, ...] | None = None) -> None:
        self.default, self.type, self.low, self.high = default, type, low, high
        self.low_open, self.choices = low_open, choices

    def __repr__(self) -> str:
        return f"Option({self.default!r}, {self.describe()})"

    def describe(self) -> str:
        """The allowed values in words, e.g. 'an integer >= 1' or 'one of auto, reference'."""
        if self.choices is not None:
            return "one of " + ", ".join(map(str, self.choices))
        kinds = self.type if isinstance(self.type, tuple) else (self.type,) if self.type else ()
        noun = " or ".join(_TYPE_NAMES.get(k, k.__name__) for k in kinds) or "a value"
        bounds = []
        if self.low is not None:
            bounds.append(f"{'>' if self.low_open else '>='} {self.low:g}")
        if self.high is not None:
            bounds.append(f"<= {self.high:g}")
        return f"{noun} {' and '.join(bounds)}".strip()

    def check(self, key: str, value: Any) -> None:
        """Raise ConfigError naming ``key``, ``value`` and the allowed range unless ``value`` fits."""
        if value is None and self.default is None:
            return
        if self.choices is not None:
            if value not in self.choices:
                raise ConfigError(f"{key}={value!r} is not allowed: {key} must be {self.describe()}")
            return
        if self.type is not None and not _is_instance(value, self.type):
            raise ConfigError(f"{key}={value!r} has the wrong type: {key} must be {self.describe()}")
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise ConfigError(f"{key}={value!r} is not finite: {key} must be {self.describe()}")
            too_low = self.low is not None and (value <= self.low if self.low_open else value < self.low)
            too_high = self.high is not None and value > self.high
            if too_low or too_high:
                raise ConfigError(f"{key}={value!r} is out of range: {key} must be {self.describe()}")


_TYPE_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true/false", list: "a list"}


def _is_instance(value: Any, kinds: type | tuple[type, ...]) -> bool:
    """isinstance with two JSON-friendly rules: bool is not a number, an int is a valid float."""
    kinds = kinds if isinstance(kinds, tuple) else (kinds,)
    if isinstance(value, bool):
        return bool in kinds
    return isinstance(value, kinds) or (float in kinds and isinstance(value, int))


def positive_int(default: Any) -> Option:
    """An integer option >= 1."""
    return Option(default, int, low=1)


def non_negative_int(default: Any) -> Option:
    """An integer option >= 0."""
    return Option(default, int, low=0)


def positive_float(default: Any) -> Option:
    """A number option > 0."""
    return Option(default, float, low=0, low_open=True)


def choice(default: str, *choices: str) -> Option:
    """A string option among ``choices`` (``default`` included)."""
    return Option(default, str, choices=tuple(dict.fromkeys((default, *choices))))


def resolve_default(value: Any, context: dict[str, Any]) -> Any:
    """Defaults may be callables of the values chosen so far (e.g. MLA latent = d_model // 8)."""
    return value(context) if isinstance(value, Callable) else value


@dataclass
class ModelConfig:
    """Everything needed to rebuild a model: shapes, component names and plugin options."""

    variant: str = ""
    size: str = "tiny"
    vocab_size: int = 512
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    n_kv_heads: int = 2
    head_dim: int | None = None
    ffn_hidden: int = 384
    max_seq_len: int = 2048
    block: str | None = None
    layers: list[str] | None = None
    attention: str | None = None
    position: str | None = None  # None: no positional encoding component
    ffn: str | None = None  # None: not used by the blocks; "none": a block's optional FFN left out
    norm: str | None = None
    norm_eps: float = 1e-6
    parallel_residual: bool = False
    qkv_bias: bool = True
    out_bias: bool = False
    mlp_bias: bool = False
    tie_embeddings: bool = True
    rope_theta: float = 1_000_000.0
    rotary_pct: float = 1.0
    init_std: float = 0.02
    kernel: str = "auto"  # auto: fastest path; reference: pure PyTorch; others declared by components
    options: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, str] = field(default_factory=dict)  # "kind:name" -> "distribution version"

    def __post_init__(self) -> None:
        for name, option in CORE_RANGES.items():
            if name != "head_dim" or self.head_dim is not None:
                option.check(name, getattr(self, name))
        if self.head_dim is None:
            if self.d_model % self.n_heads:
                raise ConfigError(
                    f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}; set head_dim explicitly"
                )
            self.head_dim = self.d_model // self.n_heads
        if self.n_heads % self.n_kv_heads:
            raise ConfigError(
                f"n_heads={self.n_heads} must be a multiple of n_kv_heads={self.n_kv_heads} (grouped-query attention)"
            )
        if self.layers is not None:
            self.layers = list(self.layers)
            if len(self.layers) != self.n_layers:
                raise ConfigError(
                    f"layers lists {len(self.layers)} block kinds but n_layers={self.n_layers}; "
                    "give one entry per layer (or use a repeating pattern via effzoo.build(layers=[...]))"
                )

    @property
    def layer_kinds(self) -> list[str]:
        """The block kind of every layer (the hybrid schedule, or ``block`` repeated)."""
        return list(self.layers) if self.layers is not None else [self.block] * self.n_layers

    @property
    def rotary_dim(self) -> int:
        """Number of head dimensions RoPE rotates (even); an option can override it (e.g. MLA)."""
        if "rotary_dim" in self.options:
            return int(self.options["rotary_dim"])
        dim = int(self.head_dim * self.rotary_pct)
        return dim - dim % 2

    def opt(self, name: str, default: Any = None) -> Any:
        """A plugin option, or ``default`` when it is not set."""
        return self.options.get(name, default)

    @classmethod
    def core_fields(cls) -> set[str]:
        """Names of the dataclass fields other than ``options`` and ``provenance`` (what plugin options
        may not reuse)."""
        return {f.name for f in dataclasses.fields(cls)} - {"options", "provenance"}

    def to_dict(self) -> dict[str, Any]:
        """Every field, ``options`` included, as plain JSON-serialisable values."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """The inverse of :meth:`to_dict`; unknown keys raise ConfigError with close matches."""
        valid = {f.name for f in dataclasses.fields(cls)}
        for key, value in [*data.items(), *dict(data.get("options") or {}).items()]:
            check_not_renamed(key, value)
        unknown = set(data) - valid
        if unknown:
            raise unknown_keys_error("config keys", unknown, valid)
        return cls(**data)

    def to_json(self) -> str:
        """:meth:`to_dict` as indented JSON with sorted keys."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def replace(self, **changes: Any) -> ModelConfig:
        """A copy with ``changes`` applied (validated again)."""
        return dataclasses.replace(self, **changes)


RENAMED_KERNEL_SETTINGS: dict[str, dict[str, str]] = {
    "attn_backend": {}, "ssm_backend": {},
    "rwkv_kernel": {"sequential": "reference"}, "moe_backend": {"loop": "reference"},
}
"""Former per-plugin kernel settings, now the one core ``kernel``; value renames (old -> new)."""


def check_not_renamed(key: str, value: Any) -> None:
    """Raise ConfigError naming ``kernel`` when ``key`` is one of the former kernel settings."""
    if key in RENAMED_KERNEL_SETTINGS:
        new = RENAMED_KERNEL_SETTINGS[key].get(str(value), str(value))
        raise ConfigError(f"unknown setting {key!r}; use kernel={new!r}")


_NAME = Option(None, str)
CORE_RANGES: dict[str, Option] = {
    "variant": Option("", str), "size": Option("tiny", str),
    "vocab_size": positive_int(512), "d_model": positive_int(128), "n_layers": positive_int(4),
    "n_heads": positive_int(4), "n_kv_heads": positive_int(2), "head_dim": positive_int(None),
    "ffn_hidden": positive_int(384), "max_seq_len": positive_int(2048),
    "block": _NAME, "attention": _NAME, "position": _NAME, "ffn": _NAME, "norm": _NAME,
    "norm_eps": positive_float(1e-6), "rope_theta": positive_float(1e6),
    "rotary_pct": Option(1.0, float, low=0, high=1, low_open=True), "init_std": Option(0.02, float, low=0),
    "parallel_residual": Option(False, bool), "qkv_bias": Option(True, bool), "out_bias": Option(False, bool),
    "mlp_bias": Option(False, bool), "tie_embeddings": Option(True, bool), "kernel": Option("auto", str),
}
"""The type and range of every core field, checked in ``ModelConfig.__post_init__``."""
