"""Differential attention (Ye et al. 2024, "Differential Transformer", arXiv 2410.05258).

A third-party effzoo plugin in one module. Each head computes two softmax attention maps from two
halves of its queries and keys and subtracts them, cancelling attention noise common to both:

    DiffAttn(X) = (softmax(Q1 K1ᵀ/√d) − λ softmax(Q2 K2ᵀ/√d)) V
    λ = exp(λ_q1·λ_k1) − exp(λ_q2·λ_k2) + λ_init,   λ_init = 0.8 − 0.6·exp(−0.3·layer)

The head output (V is 2d wide) is RMS-normalised per head and scaled by (1 − λ_init). With ``n_heads``
query/key heads of ``head_dim`` the layer has ``n_heads / 2`` differential heads, so its projections
match a standard attention of the same width (grouped keys/values: ``n_kv_heads / 2`` groups).

It registers the attention ``diff`` and the variant ``diff`` (the Qwen2.5 GQA baseline with it);
``effzoo.build("gqa", attention="diff")`` works too.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from effzoo import plugin


def lambda_init(layer: int) -> float:
    """The paper's depth-dependent λ_init (``layer`` counted from 0)."""
    return 0.8 - 0.6 * math.exp(-0.3 * layer)


class DifferentialAttention(plugin.Attention):
    """Two softmax maps per head from split queries/keys, subtracted with a learned λ; cached decoding."""

    residual_projections = ("out_proj",)

    def __init__(self, cfg: plugin.ModelConfig, layer: int = 0) -> None:
        super().__init__()
        if cfg.n_heads % 2 or cfg.n_kv_heads % 2:
            raise plugin.ConfigError(
                f"differential attention pairs heads: n_heads={cfg.n_heads} and n_kv_heads={cfg.n_kv_heads} must be even"
            )
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        self.lambda_init, self.lambda_std = lambda_init(layer), float(cfg.opt("diff_lambda_std"))
        d, kv = self.head_dim, self.n_kv_heads * self.head_dim
        self.q_proj = nn.Linear(cfg.d_model, self.n_heads * d, bias=cfg.qkv_bias)
        self.k_proj = nn.Linear(cfg.d_model, kv, bias=cfg.qkv_bias)
        self.v_proj = nn.Linear(cfg.d_model, kv, bias=cfg.qkv_bias)
        self.lambdas = nn.Parameter(torch.zeros(4, d))  # λ_q1, λ_k1, λ_q2, λ_k2
        self.head_norm = plugin.RMSNorm(2 * d, cfg.norm_eps)
        self.out_proj = nn.Linear(self.n_heads * d, cfg.d_model, bias=cfg.out_bias)

    def init_weights(self) -> None:
        nn.init.normal_(self.lambdas, 0.0, self.lambda_std)

    def _lambda(self) -> Tensor:
        q1, k1, q2, k2 = self.lambdas.float()
        return torch.exp((q1 * k1).sum()) - torch.exp((q2 * k2).sum()) + self.lambda_init

    def forward(self, x: Tensor, ctx: plugin.MixContext, cache: plugin.TokenCache | None = None
                ) -> tuple[Tensor, plugin.TokenCache | None]:
        batch, length, _ = x.shape
        q = self.q_proj(x).view(batch, length, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(batch, length, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(batch, length, self.n_kv_heads // 2, 2 * self.head_dim).transpose(1, 2)
        q, k = ctx.rotate_queries(q), ctx.rotate_keys(k)
        if cache is not None:
            k, v = cache.append(k, v)
        pairs_q, pairs_k = q.unflatten(1, (-1, 2)), k.unflatten(1, (-1, 2))  # (B, H/2, 2, T, d)
        maps = [plugin.attend(pairs_q[:, :, i], pairs_k[:, :, i], v, causal=True, position=ctx.position,
                              backend=ctx.backend) for i in (0, 1)]
        y = maps[0] - self._lambda().to(maps[1].dtype) * maps[1]
        y = self.head_norm(y) * (1.0 - self.lambda_init)  # (B, H/2, T, 2d)
        return self.out_proj(y.transpose(1, 2).reshape(batch, length, -1)), cache

    def init_cache(self, batch: int, max_len: int, device: torch.device, dtype: torch.dtype) -> plugin.TokenCache:
        keys = torch.zeros(batch, self.n_kv_heads, max_len, self.head_dim, device=device, dtype=dtype)
        values = torch.zeros(batch, self.n_kv_heads // 2, max_len, 2 * self.head_dim, device=device, dtype=dtype)
        return plugin.TokenCache(keys, values)

    def cache_bytes_per_token(self, bytes_per_value: int = 2) -> int:
        return 2 * self.n_kv_heads * self.head_dim * bytes_per_value

    def extra_flops_per_token(self, seq_len: int) -> float:
        return 2 * 4.0 * (self.n_heads // 2) * self.head_dim * seq_len * 1.5  # two maps; V is twice as wide


def diff_attention(cfg: plugin.ModelConfig, layer: int = 0) -> DifferentialAttention:
    """The ``diff`` attention factory."""
    return DifferentialAttention(cfg, layer)


@plugin.hookimpl
def effzoo_register(register: plugin.Registrar) -> None:
    register.add_attention(
        "diff", diff_attention, aliases=["differential"], uses={"norm": "rmsnorm"},
        options={"diff_lambda_std": plugin.Option(0.1, float, low=0)},
        description="Differential attention: difference of two softmax maps per head (Ye et al. 2024)",
    )
    register.add_variant(
        "diff", base="gqa", group="attention", defaults={"attention": "diff"}, aliases=["diff_transformer"],
        description="Differential Transformer: the Qwen2.5 GQA shape with differential attention (arXiv 2410.05258)",
    )
