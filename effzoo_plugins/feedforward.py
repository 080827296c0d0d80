"""Dense feed-forward networks: SwiGLU (Qwen2.5 / Llama) and GELU MLP (GPT-NeoX / Pythia)."""
from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from effzoo import plugin
from effzoo.plugin import FeedForward, MixContext, ModelConfig


class SwiGLU(FeedForward):
    """down(silu(gate(x)) * up(x)), gate and up fused into one projection."""

    residual_projections = ("down_proj",)

    def __init__(self, d_model: int, hidden: int, bias: bool = False) -> None:
        super().__init__()
        self.hidden = hidden
        self.gate_up_proj = nn.Linear(d_model, 2 * hidden, bias=bias)
        self.down_proj = nn.Linear(hidden, d_model, bias=bias)

    def forward(self, x: Tensor, ctx: MixContext | None = None) -> Tensor:
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        return self.down_proj(F.silu(gate) * up)

    def supports_static_decode(self) -> bool:
        """Static shapes, no host sync: safe inside a captured decoding step."""
        return True

    def tensor_parallel_plan(self, tp_size: int) -> dict[str, Any] | None:
        """Hidden-channel split: gate and up each split by rows (fused projection), down reduces."""
        tp = plugin.tensor_parallel
        tp.check_divides("swiglu feed-forward", tp_size, ffn_hidden=self.hidden)
        return {"gate_up_proj": tp.FusedColwiseParallel((self.hidden, self.hidden)), "down_proj": tp.rowwise()}


class GeluMLP(FeedForward):
    """down(gelu(up(x))) with biases, as GPT-NeoX."""

    residual_projections = ("down_proj",)

    def __init__(self, d_model: int, hidden: int, bias: bool = True) -> None:
        super().__init__()
        self.up_proj = nn.Linear(d_model, hidden, bias=bias)
        self.down_proj = nn.Linear(hidden, d_model, bias=bias)

    def forward(self, x: Tensor, ctx: MixContext | None = None) -> Tensor:
        return self.down_proj(F.gelu(self.up_proj(x)))

    def supports_static_decode(self) -> bool:
        """Static shapes, no host sync: safe inside a captured decoding step."""
        return True

    def tensor_parallel_plan(self, tp_size: int) -> dict[str, Any] | None:
        """Hidden-channel split: up by columns, down by rows (one all-reduce)."""
        tp = plugin.tensor_parallel
        tp.check_divides("gelu feed-forward", tp_size, ffn_hidden=self.up_proj.out_features)
        return {"up_proj": tp.colwise(), "down_proj": tp.rowwise()}


def swiglu(cfg: ModelConfig, layer: int = 0) -> SwiGLU:
    """The ``swiglu`` feed-forward factory (``ffn_hidden`` wide)."""
    return SwiGLU(cfg.d_model, cfg.ffn_hidden, cfg.mlp_bias)


def gelu(cfg: ModelConfig, layer: int = 0) -> GeluMLP:
    """The ``gelu`` feed-forward factory (``ffn_hidden`` wide)."""
    return GeluMLP(cfg.d_model, cfg.ffn_hidden, cfg.mlp_bias)


@plugin.hookimpl
def effzoo_register(register: plugin.Registrar) -> None:
    register.add_ffn("swiglu", swiglu, description="SwiGLU feed-forward (Shazeer 2020), Qwen2.5 default")
    register.add_ffn("gelu", gelu, aliases=["mlp"], description="Two-layer GELU MLP (GPT-NeoX)")
