"""Resolve registered components from a config: the only place the model touches the registry."""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ..config import ModelConfig
from ..registry import REGISTRY


def build_component(kind: str, name: str, cfg: ModelConfig, *args: Any, **kwargs: Any) -> nn.Module:
    """Instantiate component ``name`` of ``kind`` (attention, position, block, ffn, router, norm)."""
    return REGISTRY.component(kind, name).load()(cfg, *args, **kwargs)


def make_norm(cfg: ModelConfig, dim: int | None = None) -> nn.Module:
    """The configured normalisation layer over ``dim`` (default d_model)."""
    return build_component("norm", cfg.norm, cfg, dim or cfg.d_model)


class RMSNorm(nn.Module):
    """Root-mean-square normalisation with a learned scale (``F.rms_norm``: fused where available)."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        return torch.nn.functional.rms_norm(x, (x.shape[-1],), self.weight, self.eps)

    def _init_weights(self) -> None:
        nn.init.ones_(self.weight)


class LayerNorm(nn.LayerNorm):
    """LayerNorm with weight and bias (GPT-NeoX / Pythia)."""

    def _init_weights(self) -> None:
        self.reset_parameters()


def rmsnorm(cfg: ModelConfig, dim: int) -> RMSNorm:
    return RMSNorm(dim, cfg.norm_eps)


def layernorm(cfg: ModelConfig, dim: int) -> LayerNorm:
    return LayerNorm(dim, eps=cfg.norm_eps)
