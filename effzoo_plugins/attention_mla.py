"""Multi-head Latent Attention (DeepSeek-V2, arXiv 2405.04434): keys and values from one shared latent.

Per token the layer computes a compressed latent ``c`` (``kv_lora_rank`` values, normalised) and one
decoupled rotary key ``k_rope`` (``qk_rope_head_dim`` values) shared by every head. Per head,

    q = [q_nope, rotate(q_rope)]        k = [W_UK c, rotate(k_rope)]        v = W_UV c

- Training / no cache: K and V are materialised per head and go through the fused kernel
  (:func:`effzoo.ops.attention.attend`).
- Decoding: the cache holds only ``[c, k_rope]`` per token. The absorbed path folds W_UK into the
  query (``q_nope W_UK`` is a query over the latent) and W_UV into the output, so attention runs
  as multi-query attention with one shared key ``[c, k_rope]`` and value ``c``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from effzoo import plugin
from effzoo.plugin import (
    Attention, Capabilities, ConfigError, MixContext, ModelConfig, TokenCache, attend, make_norm, position_kind,
)

QK_NOPE_HEAD_DIM = 64
QK_ROPE_HEAD_DIM = 64
PAD_CHOICES = ("auto", True, False)

MLA_OPTIONS: dict[str, Any] = {
    "kv_lora_rank": lambda c: c["d_model"] // 8,
    "q_lora_rank": None,
    "qk_nope_head_dim": QK_NOPE_HEAD_DIM,
    "qk_rope_head_dim": QK_ROPE_HEAD_DIM,
    "v_head_dim": lambda c: c["head_dim"] or c["d_model"] // c["n_heads"],
    "rotary_dim": lambda c: c["options"].get("qk_rope_head_dim", QK_ROPE_HEAD_DIM),
    "mla_absorb": True,
    "mla_pad_v": "auto",
}

QWEN25_MLA = {"block": "transformer", "position": "rope", "attention": "mla"}
DEEPSEEK_V2 = dict(kv_lora_rank=512, q_lora_rank=1536, qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128)


@dataclass(frozen=True)
class MLADims:
    """The validated shape of one MLA layer."""

    n_heads: int
    kv_lora_rank: int
    q_lora_rank: int | None
    nope: int
    rope: int
    value: int

    @property
    def qk(self) -> int:
        return self.nope + self.rope

    @property
    def cached(self) -> int:
        """Values cached per token: the latent plus the shared rotary key."""
        return self.kv_lora_rank + self.rope

    @classmethod
    def from_config(cls, cfg: ModelConfig) -> MLADims:
        dims = cls(
            n_heads=cfg.n_heads,
            kv_lora_rank=int(cfg.opt("kv_lora_rank")),
            q_lora_rank=None if cfg.opt("q_lora_rank") is None else int(cfg.opt("q_lora_rank")),
            nope=int(cfg.opt("qk_nope_head_dim")),
            rope=int(cfg.opt("qk_rope_head_dim")),
            value=int(cfg.opt("v_head_dim")),
        )
        dims._check(cfg)
        return dims

    def _check(self, cfg: ModelConfig) -> None:
        for name, value in (("kv_lora_rank", self.kv_lora_rank), ("v_head_dim", self.value)):
            if value <= 0:
                raise ConfigError(f"MLA {name} must be positive, got {value}")
        if self.q_lora_rank is not None and self.q_lora_rank <= 0:
            raise ConfigError(f"MLA q_lora_rank must be positive or None (full-rank queries), got {self.q_lora_rank}")
        if self.nope < 0 or self.rope < 0 or self.qk == 0:
            raise ConfigError(
                f"MLA head dims qk_nope_head_dim={self.nope}, qk_rope_head_dim={self.rope} must be >= 0 "
                "with a positive sum"
            )
        if self.rope % 2:
            raise ConfigError(f"MLA qk_rope_head_dim must be even (RoPE rotates pairs), got {self.rope}")
        if cfg.n_kv_heads != cfg.n_heads:
            raise ConfigError(
                f"n_kv_heads={cfg.n_kv_heads} but MLA materialises one key/value per query head from the shared "
                f"latent; set n_kv_heads={cfg.n_heads} (= n_heads) or use the 'mla' variant, which does"
            )
        if cfg.rotary_pct != 1.0:
            raise ConfigError(
                f"rotary_pct={cfg.rotary_pct} does not apply to MLA: its decoupled rotary key is the rotary part; "
                "set qk_rope_head_dim (and qk_nope_head_dim) instead"
            )
        if cfg.rotary_dim != self.rope:
            raise ConfigError(
                f"rotary_dim={cfg.rotary_dim} must equal qk_rope_head_dim={self.rope} with MLA "
                "(RoPE rotates exactly the decoupled dims); set qk_rope_head_dim only"
            )
        if position_kind(cfg.position) == "rotary" and self.rope == 0:
            raise ConfigError(
                f"position {cfg.position!r} is rotary but qk_rope_head_dim=0 leaves MLA no dims to rotate; "
                "set qk_rope_head_dim > 0 or choose a non-rotary position"
            )
        if cfg.opt("mla_pad_v") not in PAD_CHOICES:
            raise ConfigError(f"mla_pad_v must be one of 'auto', true, false; got {cfg.opt('mla_pad_v')!r}")
        if not isinstance(cfg.opt("mla_absorb"), bool):
            raise ConfigError(f"mla_absorb must be true or false, got {cfg.opt('mla_absorb')!r}")


class LatentCache(TokenCache):
    """Per-token ``[latent, rotary key]`` of one layer, (B, 1, max_len, kv_lora_rank + rope), left to right."""

    def __init__(self, batch: int, max_len: int, width: int, device: torch.device, dtype: torch.dtype) -> None:
        super().__init__(torch.zeros(batch, 1, max_len, width, device=device, dtype=dtype))

    @property
    def entries(self) -> Tensor:
        return self.buffers[0]


def equalise_head_dims(q: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Zero-pad V (or Q and K) so all three share one head dim: scores and outputs are unchanged,
    and kernels that need equal dims (flash, cuDNN) apply. Pass the softmax scale explicitly."""
    qk_dim, v_dim = q.shape[-1], v.shape[-1]
    if v_dim < qk_dim:
        return q, k, F.pad(v, (0, qk_dim - v_dim))
    if qk_dim < v_dim:
        return F.pad(q, (0, v_dim - qk_dim)), F.pad(k, (0, v_dim - qk_dim)), v
    return q, k, v


class MultiHeadLatentAttention(Attention):
    """MLA with optional low-rank queries, a shared decoupled RoPE key and an absorbed decoding path."""

    residual_projections = ("out_proj",)

    def __init__(self, cfg: ModelConfig, layer: int = 0) -> None:
        super().__init__()
        self.dims = dims = MLADims.from_config(cfg)
        self.absorb = bool(cfg.opt("mla_absorb"))
        self.pad_v = cfg.opt("mla_pad_v")
        heads = dims.n_heads
        if dims.q_lora_rank is None:
            self.q_proj = nn.Linear(cfg.d_model, heads * dims.qk, bias=cfg.qkv_bias)
        else:
            self.q_down = nn.Linear(cfg.d_model, dims.q_lora_rank, bias=cfg.qkv_bias)
            self.q_norm = make_norm(cfg, dims.q_lora_rank)
            self.q_up = nn.Linear(dims.q_lora_rank, heads * dims.qk, bias=False)
        self.kv_down = nn.Linear(cfg.d_model, dims.cached, bias=cfg.qkv_bias)
        self.kv_norm = make_norm(cfg, dims.kv_lora_rank)
        self.kv_up = nn.Linear(dims.kv_lora_rank, heads * (dims.nope + dims.value), bias=False)  # no bias: exact absorption
        self.out_proj = nn.Linear(heads * dims.value, cfg.d_model, bias=cfg.out_bias)
        self.tp_split = False  # True once a tensor-parallel plan splits the heads

    # -- projections -------------------------------------------------------------------------
    def _queries(self, x: Tensor, ctx: MixContext) -> tuple[Tensor, Tensor]:
        """(B, T, d) -> q_nope (B, H, T, nope) and rotated q_rope (B, H, T, rope)."""
        batch, length, _ = x.shape
        q = self.q_proj(x) if self.dims.q_lora_rank is None else self.q_up(self.q_norm(self.q_down(x)))
        q = q.view(batch, length, -1, self.dims.qk).transpose(1, 2)  # -1: this rank's heads under tensor parallel
        q_nope, q_rope = q.split([self.dims.nope, self.dims.rope], dim=-1)
        return q_nope, ctx.rotate_queries(q_rope)

    def _compress(self, x: Tensor, ctx: MixContext) -> Tensor:
        """(B, T, d) -> cache entries (B, 1, T, kv_lora_rank + rope): normalised latent, rotated shared key."""
        latent, k_rope = self.kv_down(x).unsqueeze(1).split([self.dims.kv_lora_rank, self.dims.rope], dim=-1)
        if self.tp_split:  # the shared rotary key serves only this rank's heads: sum its gradient over the ranks
            k_rope = plugin.tensor_parallel.sum_gradients(k_rope, self.kv_up.weight.device_mesh)
        return torch.cat((self.kv_norm(latent), ctx.rotate_keys(k_rope)), dim=-1)

    def _up_weights(self) -> tuple[Tensor, Tensor]:
        """W_UK (H, nope, kv_lora_rank) and W_UV (H, v, kv_lora_rank), views of ``kv_up.weight``."""
        d = self.dims
        return self.kv_up.weight.view(d.n_heads, d.nope + d.value, d.kv_lora_rank).split([d.nope, d.value], dim=1)

    # -- attention ---------------------------------------------------------------------------
    def _attend(self, q: Tensor, k: Tensor, v: Tensor, ctx: MixContext) -> Tensor:
        """Causal attention scaled by the qk head dims, with head dims padded to equal where configured."""
        v_dim = v.shape[-1]
        k, v = k.to(q.dtype), v.to(q.dtype)  # no-op unless autocast left the cache or norm in another dtype
        pad = self.pad_v if self.pad_v != "auto" else (q.is_cuda and ctx.backend != "reference")
        if pad:
            q, k, v = equalise_head_dims(q, k, v)
        static = ctx.kv_positions is not None
        y = attend(q, k, v, causal=True, position=ctx.position, scale=self.dims.qk ** -0.5, backend=ctx.backend,
                   q_positions=ctx.positions if static else None, k_positions=ctx.kv_positions)
        return y[..., :v_dim]

    def attend_materialised(self, q_nope: Tensor, q_rope: Tensor, entries: Tensor, ctx: MixContext) -> Tensor:
        """Per-head K/V up-projected from the latent, then the fused kernel. Returns (B, H, T, v)."""
        d = self.dims
        batch, _, keys, _ = entries.shape
        latent, k_rope = entries.split([d.kv_lora_rank, d.rope], dim=-1)
        kv = self.kv_up(latent.squeeze(1)).view(batch, keys, -1, d.nope + d.value).transpose(1, 2)
        k_nope, value = kv.split([d.nope, d.value], dim=-1)
        query = torch.cat((q_nope, q_rope), dim=-1)
        key = torch.cat((k_nope, k_rope.expand(batch, k_nope.shape[1], keys, d.rope)), dim=-1)
        return self._attend(query, key, value, ctx)

    def attend_absorbed(self, q_nope: Tensor, q_rope: Tensor, entries: Tensor, ctx: MixContext) -> Tensor:
        """W_UK folded into the query, W_UV into the output: MQA over the cached entries. Returns (B, H, T, v)."""
        w_uk, w_uv = self._up_weights()
        q_latent = torch.einsum("bhtn,hnc->bhtc", q_nope, w_uk)
        latent = entries[..., : self.dims.kv_lora_rank]
        out_latent = self._attend(torch.cat((q_latent, q_rope), dim=-1), entries, latent, ctx)
        return torch.einsum("bhtc,hvc->bhtv", out_latent, w_uv)

    def forward(self, x: Tensor, ctx: MixContext, cache: LatentCache | None = None) -> tuple[Tensor, LatentCache | None]:
        batch, length, _ = x.shape
        q_nope, q_rope = self._queries(x, ctx)
        entries = self._compress(x, ctx)
        if cache is None:
            y = self.attend_materialised(q_nope, q_rope, entries, ctx)
        else:
            static = ctx.kv_positions is not None
            (entries,) = cache.write(entries, positions=ctx.positions) if static else cache.append(entries)
            path = self.attend_absorbed if self.absorb else self.attend_materialised
            y = path(q_nope, q_rope, entries, ctx)
        return self.out_proj(y.transpose(1, 2).reshape(batch, length, -1)), cache

    def supports_static_decode(self) -> bool:
        return True

    def tensor_parallel_plan(self, tp_size: int) -> dict[str, Any] | None:
        """Head split: the query and key/value up-projections by heads (rows are head-major), the output
        projection reduces; the latent (kv_down, kv_norm) and low-rank query input stay whole on every rank,
        and the shared rotary key, which each rank's heads use, has its gradient summed over the ranks."""
        tp = plugin.tensor_parallel
        tp.check_divides("mla attention", tp_size, n_heads=self.dims.n_heads)
        self.tp_split = True
        query = "q_proj" if self.dims.q_lora_rank is None else "q_up"
        return {query: tp.colwise(), "kv_up": tp.colwise(), "out_proj": tp.rowwise()}

    # -- accounting --------------------------------------------------------------------------
    def init_cache(self, batch: int, max_len: int, device: torch.device, dtype: torch.dtype) -> LatentCache:
        return LatentCache(batch, max_len, self.dims.cached, device, dtype)

    def cache_bytes_per_token(self, bytes_per_value: int = 2) -> int:
        return self.dims.cached * bytes_per_value

    def extra_flops_per_token(self, seq_len: int) -> float:
        """Training path: scores over qk dims plus the weighted sum over v dims, per head."""
        return 2.0 * self.dims.n_heads * (self.dims.qk + self.dims.value) * seq_len


def mla(cfg: ModelConfig, layer: int = 0) -> MultiHeadLatentAttention:
    """The ``mla`` attention factory."""
    return MultiHeadLatentAttention(cfg, layer)


@plugin.hookimpl
def effzoo_register(register: plugin.Registrar) -> None:
    register.add_attention(
        "mla", mla, options=MLA_OPTIONS, aliases=["latent", "multi_head_latent"],
        capabilities=Capabilities(fast_path="sdpa/flex"),
        uses={"norm": "rmsnorm"},
        description="Multi-head latent attention: low-rank joint KV latent + shared RoPE key (DeepSeek-V2)",
    )
    register.add_variant(
        "mla", family="qwen2.5", group="attention",
        defaults={**QWEN25_MLA, "n_kv_heads": plugin.one_kv_head_per_query_head},
        capabilities=Capabilities(fast_path="sdpa/flex"),
        description="Multi-head latent attention, EfficientLLM dims: latent d_model/8, qk 64 nope + 64 rope (DeepSeek-V2)",
    )
    register.add_variant(
        "mla_dsv2", family="qwen2.5", group="attention", aliases=["mla_deepseek_v2"],
        defaults={**QWEN25_MLA, "n_kv_heads": plugin.one_kv_head_per_query_head, **DEEPSEEK_V2},
        capabilities=Capabilities(fast_path="sdpa/flex"),
        description="MLA with DeepSeek-V2's dims: latent 512, q rank 1536, qk 128 nope + 64 rope, v 128",
    )
    register.add_suite_method("attention", "MLA", "mla", order=2)
