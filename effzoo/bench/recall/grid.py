"""The MQAR grid: (sequence length, kv pairs) settings x d_model, and how a variant is sized for a cell.

Every variant is built through ``effzoo.build(variant, size="tiny", **model_overrides(...))``. The
overrides are derived from the variant's own tiny config, never from its name: the head size of the
preset is kept (clamped to 16-32 for attention heads), so the head count follows d_model; the key/value
head count keeps the preset's pattern (one per query head, a single one, or the preset's count when it
is smaller). As in Zoology's MQAR models, blocks are sequence mixers only: a dense MLP is left out
where the block takes one (an MoE FFN stays, it is what that variant is; where an FFN remains, it keeps
its ratio to d_model).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import effzoo
from effzoo.errors import ConfigError

# Zoology Figure 2: (sequence length, kv pairs); d_model swept; 2 layers; vocabulary 8,192.
FULL_SETTINGS: tuple[tuple[int, int], ...] = ((64, 4), (128, 8), (256, 16), (512, 32))
FULL_D_MODELS: tuple[int, ...] = (64, 128, 256)
VOCAB_SIZE = 8192
N_LAYERS = 2


@dataclass(frozen=True)
class RecallCell:
    """One trained model: a variant at a (seq_len, kv_pairs) setting and a d_model."""

    variant: str
    seq_len: int
    kv_pairs: int
    d_model: int

    @property
    def cell_id(self) -> str:
        return f"{self.variant}_L{self.seq_len}_kv{self.kv_pairs}_d{self.d_model}"

    @property
    def setting(self) -> str:
        return f"({self.seq_len}, {self.kv_pairs})"


@dataclass(frozen=True)
class RecallGrid:
    """Variants x settings x d_models; cells are ordered by d_model, setting, variant."""

    variants: tuple[str, ...]
    settings: tuple[tuple[int, int], ...] = FULL_SETTINGS
    d_models: tuple[int, ...] = FULL_D_MODELS

    def cells(self) -> list[RecallCell]:
        return [RecallCell(v, length, pairs, d) for d in self.d_models for length, pairs in self.settings
                for v in self.variants]


def _drops_mlp(variant: str) -> bool:
    """Whether the variant's blocks take a dense MLP that can be left out (not an MoE: that is the
    variant itself; not a block without an ``ffn`` setting, like RWKV's channel mix)."""
    if effzoo.REGISTRY.variant(variant).capabilities.moe:
        return False
    try:
        effzoo.make_config(variant, "tiny", ffn="none")
    except ConfigError:
        return False
    return True


def model_overrides(variant: str, d_model: int, seq_len: int) -> dict[str, Any]:
    """Overrides that size ``variant`` for one grid cell (see the module docstring)."""
    base = effzoo.make_config(variant, "tiny")
    head_dim = min(32, max(16, base.head_dim)) if base.attention is not None else base.head_dim
    n_heads = max(1, d_model // head_dim)
    if base.n_kv_heads == base.n_heads:
        n_kv_heads = n_heads
    else:
        n_kv_heads = math.gcd(base.n_kv_heads, n_heads)
    return {
        "d_model": d_model, "n_layers": N_LAYERS, "vocab_size": VOCAB_SIZE, "max_seq_len": seq_len,
        "n_heads": n_heads, "n_kv_heads": n_kv_heads, "head_dim": d_model // n_heads,
        "ffn_hidden": max(16, round(base.ffn_hidden * d_model / base.d_model / 16) * 16),
        "ffn": "none" if _drops_mlp(variant) else None,
        "layers": None if base.layers is None else base.layers[:N_LAYERS],
    }


def build_cell_model(cell: RecallCell, *, device: str = "cpu") -> Any:
    """The cell's model in fp32 on ``device``."""
    return effzoo.build(cell.variant, size="tiny", device=device, dtype="float32",
                        **model_overrides(cell.variant, cell.d_model, cell.seq_len))
