"""The interfaces every variant plugs into: MixerBlock, Attention, FeedForward, PositionalEncoding, Router.

Data flow of one forward pass (see docs/architecture.md)::

    ids -> embedding -> position.embed -> [MixerBlock(x, ctx, state)] * L -> norm -> head

``MixContext`` carries the token positions, the model's single ``PositionalEncoding`` and the tables
it prepared once for this forward (RoPE cos/sin) to every block. An attention never asks which
encoding it has: it calls ``ctx.rotate_queries(q)`` / ``ctx.rotate_keys(k)`` (identity unless rotary)
and hands ``ctx.position`` to :func:`effzoo.ops.attention.attend`, which turns a bias-type encoding into
a FlexAttention ``score_mod`` on CUDA or a materialised bias elsewhere.

Every optional capability is a declared member with a default (``Component``): the core calls it, it
never probes modules with ``getattr``/``hasattr``.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

ScoreMod = Callable[[Tensor, Tensor, Tensor, Tensor, Tensor], Tensor]
POSITION_KINDS = ("embedding", "rotary", "bias", "none")


class Component(nn.Module):
    """Base of every module a plugin contributes (and of their parts with special initialisation).

    The decoder's ``init_weights`` first draws Normal(0, init_std) for every ``nn.Linear`` and
    ``nn.Embedding`` (zero biases), with std / sqrt(2·layers) for the linear layers a component names in
    ``residual_projections`` (attribute names of its child modules), then calls every component's
    ``init_weights`` and finally ``init_buffers``.
    """

    residual_projections: ClassVar[tuple[str, ...]] = ()

    def init_weights(self) -> None:
        """Initialise parameters the generic rule does not cover (scales, decays, tables); default none."""

    def init_buffers(self) -> None:
        """Recompute non-persistent buffers (RoPE frequencies, ALiBi slopes): what a model materialised
        with ``to_empty`` needs before use; default none."""

    def install_kernels(self, device_type: str) -> list[str]:
        """Switch this module to fused kernels of ``device_type`` (e.g. "npu") where it has them, keeping
        the pure-PyTorch path as fallback; return the kernel names installed (default: none)."""
        return []

    def tensor_parallel_plan(self, tp_size: int) -> dict[str, Any] | None:
        """How this module's own linear layers split over ``tp_size`` tensor-parallel ranks: a
        ``parallelize_module`` plan of child names to ``effzoo.plugin.tensor_parallel`` styles, ``{}`` when
        nothing of its own is sharded (it computes the same on every rank), or None (the default) when
        the component has no plan and refuses tensor parallelism. Raise ConfigError when ``tp_size``
        does not divide what the plan splits (heads, channels, experts)."""
        return None

    def supports_context_parallel(self) -> bool:
        """True when this module's own computation stays right on a context-parallel shard (``--cp``):
        each rank holds chunks of every sequence (in the order of torch's load balancer) and their
        positions in ``MixContext.positions``. Either it works per token, or it mixes tokens only by
        ``attend(..., causal=True)`` on queries and keys rotated at ``ctx.positions`` with no mask or
        bias, which torch's context_parallel turns into ring attention. Child components answer for
        themselves. Default False: a module that may mix tokens otherwise refuses ``--cp``."""
        return False


class PositionalEncoding(Component):
    """Position information. Subclasses override the one place they act; the rest are identities.

    - ``embed``: added to token embeddings (absolute / learned absolute).
    - ``prepare`` + ``rotate`` (or ``rotate_queries`` / ``rotate_keys`` when they differ, e.g. xPos):
      applied to queries and keys of shape (B, H, T, D) (RoPE).
    - ``bias`` / ``score_mod``: an additive attention-score bias (ALiBi, learned relative).

    ``kind`` is also declared at registration (``register.add_position(..., kind=...)``) so the other
    plugins can ask it without building the encoding (``effzoo.plugin.position_kind``).
    """

    kind: ClassVar[str] = "none"  # one of POSITION_KINDS

    def tensor_parallel_plan(self, tp_size: int) -> dict[str, Any] | None:
        """Positions and their tables are computed whole on every tensor-parallel rank: nothing to split."""
        return {}

    def embed(self, x: Tensor, positions: Tensor) -> Tensor:
        """Token embeddings (B, T, d) -> embeddings with position information added."""
        return x

    def prepare(self, positions: Tensor) -> Any:
        """Tables computed once per forward for ``positions`` (T,) and shared by every layer (RoPE cos/sin);
        the decoder stores them in ``MixContext.tables``. Default None."""
        return None

    def rotate(self, x: Tensor, positions: Tensor, tables: Any = None) -> Tensor:
        """Queries or keys (B, H, T, D) at absolute ``positions`` (T,) -> rotated copy (``tables`` is what
        ``prepare(positions)`` returned, or None to compute them here)."""
        return x

    def rotate_queries(self, q: Tensor, positions: Tensor, tables: Any = None) -> Tensor:
        """Queries (B, H, T, D); default ``rotate``."""
        return self.rotate(q, positions, tables)

    def rotate_keys(self, k: Tensor, positions: Tensor, tables: Any = None) -> Tensor:
        """Keys (B, H, T, D); default ``rotate``."""
        return self.rotate(k, positions, tables)

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


class NoPositionalEncoding(PositionalEncoding):
    """The identity encoding of a model whose config selects no position component (attention-free)."""

    def supports_context_parallel(self) -> bool:
        return True


@dataclass
class MixContext:
    """What every block receives besides its input."""

    positions: Tensor  # (T,) absolute positions of this call's tokens
    position: PositionalEncoding
    backend: str = "auto"  # kernel choice (config ``kernel``): auto | reference | a plugin's own names
    aux_losses: list[Tensor] = field(default_factory=list)  # e.g. MoE balance losses, added to the loss
    stats: dict[str, Any] = field(default_factory=dict)  # per-layer metrics (router entropy, ...)
    carry: dict[str, Any] = field(default_factory=dict)  # tensors a layer hands to later layers of this pass
    # Static-shape decoding (effzoo.model.fast_decode): absolute positions of the keys attention sees,
    # e.g. every slot of a preallocated cache. None: the dynamic layout (queries are the last of the keys).
    kv_positions: Tensor | None = None
    tables: Any = None  # what position.prepare(positions) returned (None: not prepared, computed per call)

    def rotate_queries(self, q: Tensor) -> Tensor:
        """Queries (B, H, T, D) of this call's tokens with position information applied."""
        return self.position.rotate_queries(q, self.positions, self.tables)

    def rotate_keys(self, k: Tensor) -> Tensor:
        """Keys (B, H, T, D) of this call's tokens with position information applied."""
        return self.position.rotate_keys(k, self.positions, self.tables)


class Attention(Component, ABC):
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

    def state_bytes(self, bytes_per_value: int = 2) -> int:
        """Cache bytes per sequence that do not grow with length (e.g. NSA's partial compression block)."""
        return 0

    def extra_flops_per_token(self, seq_len: int) -> float:
        """Forward FLOPs per token beyond 2 x parameters (score and value products)."""
        return 0.0

    def supports_static_decode(self) -> bool:
        """True if, when ``ctx.kv_positions`` is set, the layer writes its cache in place at the device
        positions ``ctx.positions`` and attends at those positions with no host sync (CUDA-graph safe)."""
        return False


class FeedForward(Component, ABC):
    """The per-token network of a block: (B, T, d_model) -> (B, T, d_model)."""

    @abstractmethod
    def forward(self, x: Tensor, ctx: MixContext | None = None) -> Tensor:
        """Transform ``x``; an FFN may add auxiliary losses and stats to ``ctx`` (MoE)."""

    def inactive_params(self) -> int:
        """Parameters a single token does not use (the experts it is not routed to); 0 for dense FFNs."""
        return 0

    def supports_context_parallel(self) -> bool:
        """A feed-forward network works per token: right on any shard of the sequence."""
        return True

    def supports_static_decode(self) -> bool:
        """True if it has static shapes and no host sync (safe inside a captured decoding step)."""
        return False


class MixerBlock(Component, ABC):
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


class Router(Component, ABC):
    """Assigns each token to ``top_k`` of ``n_experts`` experts."""

    n_experts: int
    top_k: int

    @abstractmethod
    def forward(self, x: Tensor) -> Routing:
        """Route tokens ``x`` of shape (N, d_model)."""

    def tensor_parallel_plan(self, tp_size: int) -> dict[str, Any] | None:
        """Replicated: every tensor-parallel rank routes all of its (replicated) tokens the same way."""
        return {}

    def supports_context_parallel(self) -> bool:
        """Routing is per token: right on any shard of the sequence."""
        return True
