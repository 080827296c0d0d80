"""Multi-head attention with grouped keys/values: MHA (groups = heads), GQA (Qwen2.5), MQA (one KV head)."""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from effzoo import plugin
from effzoo.plugin import Attention, Capabilities, KVCache, MixContext, ModelConfig, attend


class GroupedQueryAttention(Attention):
    """Fused QKV projection, position rotation, cached keys/values, fused attention kernel."""

    residual_projections = ("out_proj",)

    def __init__(self, cfg: ModelConfig, layer: int = 0) -> None:
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        self.qkv_proj = nn.Linear(cfg.d_model, (self.n_heads + 2 * self.n_kv_heads) * self.head_dim, bias=cfg.qkv_bias)
        self.out_proj = nn.Linear(self.n_heads * self.head_dim, cfg.d_model, bias=cfg.out_bias)
        self.tp_shared_kv = False  # True under a tensor-parallel plan with fewer key/value heads than ranks

    def forward(self, x: Tensor, ctx: MixContext, cache: KVCache | None = None) -> tuple[Tensor, KVCache | None]:
        batch, length, _ = x.shape
        qkv = self.qkv_proj(x)
        shards = (self.n_heads + 2 * self.n_kv_heads) * self.head_dim // qkv.shape[-1]  # > 1 under tensor parallel
        n_heads, n_kv_heads = self.n_heads // shards, self.n_kv_heads // shards
        kv_width = self.n_kv_heads * self.head_dim // shards
        q, k, v = qkv.split([n_heads * self.head_dim, kv_width, kv_width], dim=-1)
        if self.tp_shared_kv:
            (k, v), n_kv_heads = self._shared_key_values(k, v), 1
        q = q.view(batch, length, n_heads, self.head_dim).transpose(1, 2)
        k = k.view(batch, length, n_kv_heads, self.head_dim).transpose(1, 2)
        v = v.view(batch, length, n_kv_heads, self.head_dim).transpose(1, 2)
        q, k = ctx.rotate_queries(q), ctx.rotate_keys(k)
        static = ctx.kv_positions is not None  # static-shape decoding: whole cache, device positions
        if cache is not None:
            k, v = cache.write(k, v, positions=ctx.positions) if static else cache.append(k, v)
        y = attend(q, k, v, causal=True, position=ctx.position, backend=ctx.backend,
                   q_positions=ctx.positions if static else None, k_positions=ctx.kv_positions)
        return self.out_proj(y.transpose(1, 2).reshape(batch, length, -1)), cache

    def supports_static_decode(self) -> bool:
        return True

    def supports_context_parallel(self) -> bool:
        """Training mixes tokens only by causal SDPA on keys/queries rotated at ``ctx.positions``."""
        return True

    def _shared_key_values(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Fewer key/value heads than ranks: every rank computed 1/tp of the k and v columns; gather them
        all and keep the one head this rank's query heads use (its gradient is summed back to the ranks
        that computed it, so every query head sharing it contributes)."""
        tp = plugin.tensor_parallel
        mesh = self.qkv_proj.weight.device_mesh
        gathered = tp.gather_columns(torch.stack((k, v)), mesh)  # (2, B, T, n_kv_heads * head_dim)
        head = mesh.get_local_rank() * self.n_kv_heads // mesh.size()
        k, v = gathered[..., head * self.head_dim:(head + 1) * self.head_dim]
        return k, v

    def tensor_parallel_plan(self, tp_size: int) -> dict[str, Any] | None:
        """Head split: each rank computes its own query heads and their key/value heads (the fused q|k|v
        projection split per segment), and the output projection reduces over the ranks. With fewer
        key/value heads than ranks (MQA; ``n_kv_heads`` dividing ``tp``) the k and v columns are split
        too and all-gathered in the forward, each rank keeping the head its query heads share."""
        tp = plugin.tensor_parallel
        tp.check_divides("gqa attention", tp_size, n_heads=self.n_heads)
        self.tp_shared_kv = self.n_kv_heads < tp_size and tp_size % self.n_kv_heads == 0
        if self.tp_shared_kv:
            tp.check_divides("gqa attention", tp_size, key_value_width=self.n_kv_heads * self.head_dim)
        else:
            tp.check_divides("gqa attention", tp_size, n_kv_heads=self.n_kv_heads)
        segments = (self.n_heads * self.head_dim, self.n_kv_heads * self.head_dim, self.n_kv_heads * self.head_dim)
        return {"qkv_proj": tp.FusedColwiseParallel(segments), "out_proj": tp.rowwise()}

    def init_cache(self, batch: int, max_len: int, device: torch.device, dtype: torch.dtype) -> KVCache:
        return KVCache(batch, self.n_kv_heads, max_len, self.head_dim, None, device, dtype)

    def cache_bytes_per_token(self, bytes_per_value: int = 2) -> int:
        return 2 * self.n_kv_heads * self.head_dim * bytes_per_value

    def extra_flops_per_token(self, seq_len: int) -> float:
        return 4.0 * self.n_heads * self.head_dim * seq_len


def gqa(cfg: ModelConfig, layer: int = 0) -> GroupedQueryAttention:
    """The ``gqa`` attention factory (MHA / GQA / MQA by ``n_kv_heads``)."""
    return GroupedQueryAttention(cfg, layer)


@plugin.hookimpl
def effzoo_register(register: plugin.Registrar) -> None:
    register.add_attention(
        "gqa", gqa, aliases=["mha", "mqa", "grouped"],
        capabilities=Capabilities(fast_path="sdpa/flex"),
        description="Multi-head attention with n_kv_heads key/value groups (MHA, GQA, MQA)",
    )
