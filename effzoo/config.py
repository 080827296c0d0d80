"""The one flat, JSON-serialisable model configuration.

Component choices are stored as registry names (strings) and resolved at build time.
Plugin-specific settings (MLA ranks, NSA blocks, MoE experts, Mamba state size, ...) live in
``options``; each plugin declares the option names it accepts, and ``effzoo.build`` rejects any
key that neither a core field nor a selected plugin declares.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from .errors import ConfigError, unknown_keys_error


@dataclass
class ModelConfig:
    """Everything needed to rebuild a model: shapes, component names and plugin options."""

    variant: str = "gqa"
    size: str = "tiny"
    vocab_size: int = 512
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    n_kv_heads: int = 2
    head_dim: int | None = None
    ffn_hidden: int = 384
    max_seq_len: int = 2048
    block: str = "transformer"
    layers: list[str] | None = None
    attention: str = "gqa"
    position: str = "rope"
    ffn: str = "swiglu"
    norm: str = "rmsnorm"
    norm_eps: float = 1e-6
    parallel_residual: bool = False
    qkv_bias: bool = True
    out_bias: bool = False
    mlp_bias: bool = False
    tie_embeddings: bool = True
    rope_theta: float = 1_000_000.0
    rotary_pct: float = 1.0
    init_std: float = 0.02
    attn_backend: str = "auto"
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.head_dim is None:
            if self.d_model % self.n_heads:
                raise ConfigError(
                    f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}; set head_dim explicitly"
                )
            self.head_dim = self.d_model // self.n_heads
        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "head_dim", "max_seq_len"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        if self.n_heads % self.n_kv_heads:
            raise ConfigError(
                f"n_heads={self.n_heads} must be a multiple of n_kv_heads={self.n_kv_heads} (grouped-query attention)"
            )
        if not 0.0 < self.rotary_pct <= 1.0:
            raise ConfigError(f"rotary_pct must be in (0, 1], got {self.rotary_pct}")
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
        """Names of the dataclass fields other than ``options`` (what plugin options may not reuse)."""
        return {f.name for f in dataclasses.fields(cls)} - {"options"}

    def to_dict(self) -> dict[str, Any]:
        """Every field, ``options`` included, as plain JSON-serialisable values."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """The inverse of :meth:`to_dict`; unknown keys raise ConfigError with close matches."""
        valid = {f.name for f in dataclasses.fields(cls)}
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
