"""Pieces both Mamba mixers share: the decoding state, the causal depthwise convolution, dt init."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from effzoo import plugin
from effzoo.plugin import Component, ConfigError


@dataclass
class MambaState:
    """Constant-size decoding state of one Mamba layer.

    ``conv``: the last ``d_conv - 1`` convolution inputs (batch, channels, d_conv - 1) in the model dtype;
    ``ssm``: the recurrent state in float32; ``tokens``: how many tokens it has consumed.
    """

    conv: Tensor
    ssm: Tensor
    tokens: int = 0

    @classmethod
    def empty(cls, batch: int, conv_channels: int, d_conv: int, ssm_shape: tuple[int, ...],
              device: torch.device, dtype: torch.dtype) -> MambaState:
        """A zero state before the first token: conv window in ``dtype``, SSM state (batch, *ssm_shape) in float32."""
        return cls(
            conv=torch.zeros(batch, conv_channels, d_conv - 1, device=device, dtype=dtype),
            ssm=torch.zeros(batch, *ssm_shape, device=device, dtype=torch.float32),
        )


def mamba_state_bytes(conv_channels: int, d_conv: int, ssm_values: int, bytes_per_value: int) -> int:
    """Bytes of one sequence's :class:`MambaState`: conv window in the model dtype plus the float32 SSM state."""
    return conv_channels * (d_conv - 1) * bytes_per_value + 4 * ssm_values


def check(condition: bool, message: str) -> None:
    """Raise a ConfigError naming the Mamba option problem."""
    if not condition:
        raise ConfigError(f"mamba: {message}")


def causal_conv(x: Tensor, weight: Tensor, bias: Tensor | None, conv_state: Tensor | None,
                fused: bool = False) -> tuple[Tensor, Tensor | None]:
    """SiLU of the causal depthwise convolution of ``x`` (batch, T, channels) with ``weight``
    (channels, width). With ``conv_state`` (the previous ``width - 1`` inputs) the sequence continues it
    and the new state is returned; ``fused`` uses the causal-conv1d CUDA kernel (no state)."""
    width = weight.shape[-1]
    xt = x.transpose(1, 2)
    if conv_state is None:
        if fused:
            from .kernels import causal_conv1d_cuda

            return causal_conv1d_cuda(xt.contiguous(), weight, bias).transpose(1, 2), None
        y = F.conv1d(xt, weight[:, None, :], bias, padding=width - 1, groups=weight.shape[0])[..., : x.shape[1]]
        return F.silu(y).transpose(1, 2), None
    full = torch.cat([conv_state.to(x.dtype), xt], dim=-1)
    y = F.conv1d(full, weight[:, None, :], bias, groups=weight.shape[0])
    return F.silu(y).transpose(1, 2), full[..., full.shape[-1] - (width - 1):]


def init_conv(weight: Tensor, bias: Tensor | None) -> None:
    """Uniform(±1/sqrt(width)) like a depthwise ``nn.Conv1d``."""
    bound = 1.0 / math.sqrt(weight.shape[-1])
    nn.init.uniform_(weight, -bound, bound)
    if bias is not None:
        nn.init.uniform_(bias, -bound, bound)


def init_dt_bias(bias: Tensor, dt_min: float, dt_max: float, floor: float = 1e-4) -> None:
    """Set ``bias`` so that softplus(bias) is log-uniform in [dt_min, dt_max] (the Mamba step-size init)."""
    with torch.no_grad():
        log_dt = torch.rand_like(bias, dtype=torch.float32) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
        dt = log_dt.exp().clamp(min=floor)
        bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse of softplus


class GatedRMSNorm(Component):
    """RMSNorm of ``y · silu(z)`` per group of channels (Mamba-2's output norm)."""

    def __init__(self, dim: int, groups: int = 1, eps: float = 1e-5) -> None:
        super().__init__()
        self.groups, self.eps = groups, eps
        self.weight = nn.Parameter(torch.ones(dim))
        self.tp_split = False  # True once a tensor-parallel plan shards the scale

    def forward(self, y: Tensor, z: Tensor) -> Tensor:
        width = self.weight.shape[0] // self.groups  # channels per group (a rank holds whole groups under TP)
        gated = (y * F.silu(z)).unflatten(-1, (-1, width))
        normed = F.rms_norm(gated, (gated.shape[-1],), eps=self.eps).flatten(-2)
        return normed * plugin.tensor_parallel.local(self.weight) if self.tp_split else normed * self.weight

    def init_weights(self) -> None:
        nn.init.ones_(self.weight)

    def tensor_parallel_plan(self, tp_size: int) -> dict[str, Any] | None:
        """Whole groups per rank: the scale split by rows (its input is the rank's channel slice)."""
        tp = plugin.tensor_parallel
        tp.check_divides("mamba gated norm", tp_size, groups=self.groups)
        self.tp_split = True
        return {"": tp.ShardedRows({"weight": (self.weight.shape[0],)})}
