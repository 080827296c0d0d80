"""The NSA attention layer: projections, block compressors, per-head sigmoid gates, backend dispatch."""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from effzoo import plugin
from effzoo.plugin import EXTRA_BACKENDS, Attention, Component, ConfigError, MixContext, ModelConfig, position_kind

from .cache import NSACache
from .reference import BranchOutputs, nsa_branches
from .settings import NSASettings

BRANCHES = 3  # compressed, selected, window
BACKENDS = ("auto", "flex", "sdpa", "reference")


class BlockCompressor(Component):
    """φ: each block of l consecutive vectors (stride d) -> one vector, via a learned intra-block
    position embedding and a two-layer MLP over the flattened block; shared by all key/value heads."""

    def __init__(self, settings: NSASettings, head_dim: int, init_std: float) -> None:
        super().__init__()
        self.block, self.stride, self.init_std = settings.compress_block, settings.compress_stride, init_std
        self.position = nn.Parameter(torch.zeros(settings.compress_block, head_dim))
        self.mlp = nn.Sequential(
            nn.Linear(settings.compress_block * head_dim, settings.compress_hidden),
            nn.SiLU(),
            nn.Linear(settings.compress_hidden, head_dim),
        )

    def forward(self, x: Tensor) -> Tensor:
        """(B, G, L, D) tokens -> (B, G, Nc, D), one vector per complete block starting at 0, d, 2d, ..."""
        if x.shape[2] < self.block:
            return x.new_zeros(*x.shape[:2], 0, x.shape[3])
        blocks = x.unfold(2, self.block, self.stride).transpose(-1, -2)  # (B, G, Nc, l, D)
        return self.mlp((blocks + self.position).flatten(-2))

    def init_weights(self) -> None:
        nn.init.normal_(self.position, 0.0, self.init_std)

    def tensor_parallel_plan(self, tp_size: int) -> dict[str, Any] | None:
        """Whole on every rank; under the attention's head split it sees only this rank's key/value
        groups, so its gradients are summed over the ranks."""
        return {"": plugin.tensor_parallel.SummedGradients()}


class NativeSparseAttention(Attention):
    """NSA (Yuan et al. 2025, arXiv 2502.11089): gated sum of compressed, selected and sliding-window attention."""

    residual_projections = ("out_proj",)

    def __init__(self, cfg: ModelConfig, layer: int = 0) -> None:
        super().__init__()
        _check_position(cfg.position)
        self.settings = NSASettings.from_config(cfg)
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        self.kv_sets = 1 if self.settings.shared_kv else BRANCHES
        kv_width = 2 * self.kv_sets * self.n_kv_heads * self.head_dim
        self.qkv_proj = nn.Linear(cfg.d_model, self.n_heads * self.head_dim + kv_width, bias=cfg.qkv_bias)
        self.gate_proj = nn.Linear(cfg.d_model, BRANCHES * self.n_heads)
        self.compress_k = BlockCompressor(self.settings, self.head_dim, cfg.init_std)
        self.compress_v = BlockCompressor(self.settings, self.head_dim, cfg.init_std)
        self.out_proj = nn.Linear(self.n_heads * self.head_dim, cfg.d_model, bias=cfg.out_bias)
        self.scale = 1.0 / math.sqrt(self.head_dim)

    def _project(self, x: Tensor, ctx: MixContext) -> tuple[Tensor, list[Tensor], list[Tensor]]:
        """Queries (B, G, r, T, D) and per-branch keys/values (B, G, T, D), rotated at their positions."""
        batch, length, _ = x.shape
        qkv = self.qkv_proj(x)
        shards = self.qkv_proj.out_features // qkv.shape[-1]  # > 1 under tensor parallel (this rank's heads)
        n_heads, groups = self.n_heads // shards, self.n_kv_heads // shards
        ratio = n_heads // groups
        q, kv = qkv.split([n_heads * self.head_dim, 2 * self.kv_sets * groups * self.head_dim], -1)
        q = ctx.rotate_queries(q.view(batch, length, n_heads, self.head_dim).transpose(1, 2))
        kv = kv.view(batch, length, 2 * self.kv_sets, groups, self.head_dim).permute(2, 0, 3, 1, 4)
        keys = [ctx.rotate_keys(kv[i]) for i in range(self.kv_sets)]
        values = [kv[self.kv_sets + i] for i in range(self.kv_sets)]
        if self.kv_sets == 1:
            keys, values = keys * BRANCHES, values * BRANCHES
        return q.view(batch, groups, ratio, length, self.head_dim), keys, values

    def branches(self, x: Tensor, ctx: MixContext, cache: NSACache | None = None) -> BranchOutputs:
        """The three branch outputs (B, G, r, T, D) before gating."""
        if ctx.position.has_bias:
            raise ConfigError(_BIAS_MESSAGE.format(name=type(ctx.position).__name__))
        q, keys, values = self._project(x, ctx)
        if cache is None:
            compressed = (self.compress_k(keys[0]), self.compress_v(values[0]))
            selected, window = (keys[1], values[1]), (keys[2], values[2], 0)
        else:
            selected, window, (k_raw, v_raw) = cache.append(tuple(keys), tuple(values))
            compressed = cache.add_compressed(self.compress_k(k_raw), self.compress_v(v_raw))
        continuing = cache is not None and cache.length > q.shape[3]
        run = nsa_branches if continuing else self._kernel(q, ctx.backend)  # decode steps: O(T) per query
        return run(q, ctx.positions, compressed, selected, window, self.settings, self.scale)

    def _kernel(self, q: Tensor, backend: str) -> Callable[..., BranchOutputs]:
        """The branch implementation for ``backend``: auto = FlexAttention on CUDA, reference elsewhere;
        sdpa = the FlexAttention patterns as dense masks; a device backend added with
        ``effzoo.ops.attention.register_backend`` (e.g. NPU) runs the reference, NSA has no kernel there."""
        if backend not in BACKENDS and backend not in EXTRA_BACKENDS:
            known = ", ".join((*BACKENDS, *EXTRA_BACKENDS))
            raise ConfigError(f"unknown attention backend {backend!r} for NSA; choose one of {known}")
        if backend in ("reference", *EXTRA_BACKENDS) or (backend == "auto" and not (q.is_cuda and self._flex_ready())):
            return nsa_branches
        if backend == "flex" and q.is_cuda and not self._flex_ready():
            raise ConfigError(
                f"NSA's FlexAttention path needs nsa_select_block to be a multiple of 16 on CUDA, got "
                f"{self.settings.select_block}; use backend='reference' or another block size"
            )
        from .flex import nsa_branches_fast

        kernel = "dense" if backend == "sdpa" else "flex"
        # only a whole sequence from position 0 reaches here (a cache continuation runs the reference)
        return lambda *args: nsa_branches_fast(*args, kernel=kernel, offset=0)

    def _flex_ready(self) -> bool:
        return self.settings.select_block % 16 == 0

    def forward(self, x: Tensor, ctx: MixContext, cache: NSACache | None = None) -> tuple[Tensor, NSACache | None]:
        batch, length, _ = x.shape
        out = self.branches(x, ctx, cache)
        groups = out.window.shape[1]  # this rank's key/value groups under tensor parallel
        gates = torch.sigmoid(self.gate_proj(x)).view(batch, length, BRANCHES, groups, -1)
        gates = gates.permute(2, 0, 3, 4, 1).unsqueeze(-1)  # (3, B, G, r, T, 1)
        mixed = gates[0] * out.compressed + gates[1] * out.selected + gates[2] * out.window
        mixed = mixed.flatten(1, 2).transpose(1, 2).reshape(batch, length, -1)
        return self.out_proj(mixed), cache

    def tensor_parallel_plan(self, tp_size: int) -> dict[str, Any] | None:
        """Head split by key/value group: each rank projects its groups' query heads and their keys and
        values of every branch (the fused projection split per segment) and its heads' three gates, runs
        the three branches for them (selection is per group), and the output projection reduces. The
        block compressors are shared by the groups: whole on every rank, gradients summed."""
        tp = plugin.tensor_parallel
        tp.check_divides("nsa attention", tp_size, n_heads=self.n_heads, n_kv_heads=self.n_kv_heads)
        kv = (self.n_kv_heads * self.head_dim,) * (2 * self.kv_sets)
        return {"qkv_proj": tp.FusedColwiseParallel((self.n_heads * self.head_dim, *kv)),
                "gate_proj": tp.FusedColwiseParallel((self.n_heads,) * BRANCHES), "out_proj": tp.rowwise()}

    def init_cache(self, batch: int, max_len: int, device: torch.device, dtype: torch.dtype) -> NSACache:
        return NSACache(batch, self.n_kv_heads, max_len, self.head_dim, self.settings, device, dtype)

    def cache_bytes_per_token(self, bytes_per_value: int = 2) -> int:
        """Raw selection K/V for every token plus one compressed K/V per ``stride`` tokens (rounded up)."""
        per_vector = self.n_kv_heads * self.head_dim * bytes_per_value
        return 2 * per_vector + math.ceil(2 * per_vector / self.settings.compress_stride)

    def state_bytes(self, bytes_per_value: int = 2) -> int:
        """Fixed-size buffers: the window's last w − 1 tokens and the compressor's tail of < l tokens."""
        if self.settings.shared_kv:
            return 0
        recent = self.settings.window - 1 + self.settings.compress_block - 1
        return 2 * recent * self.n_kv_heads * self.head_dim * bytes_per_value

    def extra_flops_per_token(self, seq_len: int) -> float:
        """Score and value products of the three branches (average over a causal sequence)."""
        s = self.settings
        compressed = s.n_compressed(seq_len) / 2
        selected = min(s.selected_blocks * s.select_block, seq_len / 2)
        window = min(s.window, seq_len / 2)
        return 4.0 * self.n_heads * self.head_dim * (compressed + selected + window)


_BIAS_MESSAGE = (
    "NSA does not support score-bias position encodings ({name}: ALiBi, relative): a compressed token "
    "has no single position to bias. Use position='rope' (default), 'absolute', 'learned' or 'none'."
)


def _check_position(name: str | None) -> None:
    """Reject bias-type encodings at build time when the registered factory declares its kind."""
    if position_kind(name) == "bias":
        raise ConfigError(_BIAS_MESSAGE.format(name=name))


def nsa(cfg: ModelConfig, layer: int = 0) -> NativeSparseAttention:
    """The ``nsa`` attention factory."""
    return NativeSparseAttention(cfg, layer)
