"""The four interfaces every variant plugs into: Attention, PositionalEncoding, MixerBlock, Router.

Data flow of one forward pass (see docs/architecture.md)::

    ids -> embedding -> position.embed -> [MixerBlock(x, ctx, state)] * L -> norm -> head

``MixContext`` carries the token positions and the model's single ``PositionalEncoding`` to every
block. An attention never asks which encoding it has: it calls ``position.rotate`` on q/k (identity
unless rotary) and hands ``position`` to :func:`effzoo.ops.attention.attend`, which turns a bias-type
encoding into a FlexAttention ``score_mod`` on CUDA or a materialised bias elsewhere.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

ScoreMod = Callable[[Tensor, Tensor, Tensor, Tensor, Tensor], Tensor]


class PositionalEncoding(nn.Module, ABC):
    """Position information. Subclasses override the one place they act; the rest are identities.

    - ``embed``: added to token embeddings (absolute / learned absolute).
    - ``rotate``: applied to queries and keys, shape (B, H, T, D) (RoPE).
    - ``bias`` / ``score_mod``: an additive attention-score bias (ALiBi, learned relative).
    """

    kind: ClassVar[str] = "none"  # "embedding" | "rotary" | "bias" | "none"

    def embed(self, x: Tensor, positions: Tensor) -> Tensor:
        """Token embeddings (B, T, d) -> embeddings with position information added."""
        return x

    def rotate(self, x: Tensor, positions: Tensor) -> Tensor:
        """Queries or keys (B, H, T, D) at absolute ``positions`` (T,) -> rotated copy."""
        return x

    def bias(self, q_positions: Tensor, k_positions: Tensor) -> Tensor | None:
        """Additive score bias of shape (H, Tq, Tk) for the given absolute positions, or None."""
        return None

    def check_positions(self, end: int) -> None:
        """Raise ConfigError if positions up to ``end`` (exclusive, a host int) cannot be encoded."""

    def score_mod(self) -> ScoreMod | None:
        """The same bias as a FlexAttention ``score_mod(score, b, h, q_idx, kv_idx)``, or None.

        ``q_idx``/``kv_idx`` are absolute positions (FlexAttention is used without a cache offset).
        """
        return None

    @property
    def has_bias(self) -> bool:
        return self.kind == "bias"


@dataclass
class MixContext:
    """What every block receives besides its input."""

    positions: Tensor  # (T,) absolute positions of this call's tokens
    position: PositionalEncoding
    backend: str = "auto"  # attention kernel: auto | sdpa | flex | reference
    aux_losses: list[Tensor] = field(default_factory=list)  # e.g. MoE balance losses, added to the loss
    stats: dict[str, Any] = field(default_factory=dict)  # per-layer metrics (router entropy, ...)
    carry: dict[str, Any] = field(default_factory=dict)  # tensors a layer hands to later layers of this pass
    # Static-shape decoding (effzoo.model.fast_decode): absolute positions of the keys attention sees,
    # e.g. every slot of a preallocated cache. None: the dynamic layout (queries are the last of the keys).
    kv_positions: Tensor | None = None


class Attention(nn.Module, ABC):
    """Token mixing by attention: (B, T, d_model) -> (B, T, d_model), with a cache for decoding."""

    @abstractmethod
    def forward(self, x: Tensor, ctx: MixContext, cache: Any | None = None) -> tuple[Tensor, Any | None]:
        """Mix ``x``; with a cache, append this call's keys/values and attend over everything cached."""

    @abstractmethod
    def init_cache(self, batch: int, max_len: int, device: torch.device, dtype: torch.dtype) -> Any:
        """An empty cache able to hold ``max_len`` tokens."""

    @abstractmethod
    def cache_bytes_per_token(self, bytes_per_value: int = 2) -> int:
        """Bytes this layer caches per decoded token (what MLA shrinks)."""

    def extra_flops_per_token(self, seq_len: int) -> float:
        """Forward FLOPs per token beyond 2 x parameters (score and value products)."""
        return 0.0

    def supports_static_decode(self) -> bool:
        """True if, when ``ctx.kv_positions`` is set, the layer writes its cache in place at the device
        positions ``ctx.positions`` and attends at those positions with no host sync (CUDA-graph safe)."""
        return False


class MixerBlock(nn.Module, ABC):
    """One residual layer of the model: a transformer block, a Mamba block, an RWKV block, ...

    ``state`` is None for training/prefill without a cache; during decoding it is what
    ``init_state`` returned, and the block returns it updated (KV cache or recurrent state).
    """

    @abstractmethod
    def forward(self, x: Tensor, ctx: MixContext, state: Any | None = None) -> tuple[Tensor, Any | None]:
        """(B, T, d_model) -> (B, T, d_model) and the updated state."""

    @abstractmethod
    def init_state(self, batch: int, max_len: int, device: torch.device, dtype: torch.dtype) -> Any:
        """An empty decoding state for ``batch`` sequences of up to ``max_len`` tokens."""

    def cache_bytes_per_token(self, bytes_per_value: int = 2) -> int:
        """Decoding-state bytes that grow with every token (a KV cache); 0 for recurrent blocks."""
        return 0

    def state_bytes(self, bytes_per_value: int = 2) -> int:
        """Decoding-state bytes per sequence that do not grow with length (recurrent state)."""
        return 0

    def extra_flops_per_token(self, seq_len: int) -> float:
        """Forward FLOPs per token beyond 2 x active parameters (attention scores, scans)."""
        return 0.0

    def inactive_params(self) -> int:
        """Parameters not used by any single token (MoE experts a token is not routed to)."""
        return 0

    def supports_static_decode(self) -> bool:
        """True if the block honours ``ctx.kv_positions`` (see ``Attention.supports_static_decode``):
        state updated in place at device positions, static shapes, no host sync. Default False: the
        fast decoder then falls back to the eager cached path for the whole model."""
        return False


@dataclass
class Routing:
    """A router's decision for N tokens over E experts, top-k each."""

    weights: Tensor  # (N, k) combine weights (renormalised over the k choices), 0 where dropped
    experts: Tensor  # (N, k) expert index per slot
    keep: Tensor  # (N, k) bool: False where capacity dropped the assignment
    aux_loss: Tensor  # scalar, already multiplied by its coefficients
    stats: dict[str, Tensor] = field(default_factory=dict)  # detached metrics, e.g. tokens_per_expert


class Router(nn.Module, ABC):
    """Assigns each token to ``top_k`` of ``n_experts`` experts."""

    n_experts: int
    top_k: int

    @abstractmethod
    def forward(self, x: Tensor) -> Routing:
        """Route tokens ``x`` of shape (N, d_model)."""
