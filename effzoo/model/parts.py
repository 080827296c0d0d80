"""Resolve registered components from a config (the only place the model touches the registry), and
the two norms every plugin may build on."""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ..config import ModelConfig
from ..interfaces import Component, FeedForward
from ..registry import REGISTRY


def build_component(kind: str, name: str, cfg: ModelConfig, *args: Any, **kwargs: Any) -> nn.Module:
    """Instantiate component ``name`` of ``kind`` (attention, position, block, ffn, router, norm)."""
    return REGISTRY.component(kind, name).load()(cfg, *args, **kwargs)


def make_norm(cfg: ModelConfig, dim: int | None = None) -> nn.Module:
    """The configured normalisation layer over ``dim`` (default d_model)."""
    return build_component("norm", cfg.norm, cfg, dim or cfg.d_model)


def uses_ffn(cfg: ModelConfig) -> bool:
    """Whether the config selects a feed-forward network (``ffn`` is neither unset nor "none")."""
    return cfg.ffn is not None and cfg.ffn.lower() != "none"


def optional_ffn(cfg: ModelConfig, layer: int) -> tuple[nn.Module | None, FeedForward | None]:
    """A block's (norm, feed-forward) pair, or (None, None) when the config selects no FFN."""
    if not uses_ffn(cfg):
        return None, None
    return make_norm(cfg), build_component("ffn", cfg.ffn, cfg, layer)


def position_kind(name: str | None) -> str:
    """The kind (embedding, rotary, bias, none) that registered position ``name`` declares; "none" for
    None (a config without a position component)."""
    return "none" if name is None else REGISTRY.component("position", name).position_kind


class RMSNorm(Component):
    """Root-mean-square normalisation with a learned scale (``F.rms_norm``: fused where available;
    ``npu_rms_norm`` once ``install_kernels("npu")`` found torch_npu)."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))
        self._npu_rms_norm: Any = None

    def forward(self, x: Tensor) -> Tensor:
        if self._npu_rms_norm is not None:
            return self._npu_rms_norm(x, self.weight.to(x.dtype), self.eps)[0]
        return torch.nn.functional.rms_norm(x, (x.shape[-1],), self.weight, self.eps)

    def init_weights(self) -> None:
        nn.init.ones_(self.weight)

    def tensor_parallel_plan(self, tp_size: int) -> dict[str, Any] | None:
        """Replicated: the residual stream it normalises is whole on every tensor-parallel rank."""
        return {}

    def supports_context_parallel(self) -> bool:
        return True  # per token

    def install_kernels(self, device_type: str) -> list[str]:
        from ..backends.npu import import_torch_npu

        torch_npu = import_torch_npu() if device_type == "npu" else None
        if torch_npu is None:
            return []
        self._npu_rms_norm = torch_npu.npu_rms_norm
        return ["npu_rms_norm"]


class LayerNorm(nn.LayerNorm, Component):
    """LayerNorm with weight and bias (GPT-NeoX / Pythia)."""

    def init_weights(self) -> None:
        self.reset_parameters()

    def tensor_parallel_plan(self, tp_size: int) -> dict[str, Any] | None:
        """Replicated: the residual stream it normalises is whole on every tensor-parallel rank."""
        return {}

    def supports_context_parallel(self) -> bool:
        return True  # per token


def rmsnorm(cfg: ModelConfig, dim: int) -> RMSNorm:
    """The RMSNorm factory: ``norm_eps`` from the config."""
    return RMSNorm(dim, cfg.norm_eps)


def layernorm(cfg: ModelConfig, dim: int) -> LayerNorm:
    """The LayerNorm factory: ``norm_eps`` from the config."""
    return LayerNorm(dim, eps=cfg.norm_eps)


def rotate_half(x: Tensor) -> Tensor:
    """(x1, x2) -> (-x2, x1) over the two halves of the last dim: a rotation by 90 degrees per pair."""
    first, second = x.chunk(2, dim=-1)
    return torch.cat((-second, first), dim=-1)


def one_kv_head_per_query_head(preset: dict[str, Any]) -> int:
    """A variant default for ``n_kv_heads``: multi-head attention, one key/value head per query head."""
    return preset["n_heads"]
