"""The Mamba-1 mixer (Gu & Dao 2023): selective scan with per-channel, per-state decay."""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from effzoo import plugin
from effzoo.plugin import Component, MixContext, ModelConfig

from .kernels import (
    causal_conv1d_missing,
    configured_backend,
    requested_backend,
    resolve_backend,
    selective_scan_mamba_ssm,
)
from .parts import (
    MambaState,
    causal_conv,
    check,
    init_conv,
    init_dt_bias,
    mamba_state_bytes,
)
from .selective_scan_reference import selective_scan_parallel, selective_scan_step

MAMBA1_D_STATE = 16


class Mamba1Mixer(Component):
    """(B, T, d_model) -> (B, T, d_model): x/z projection, causal conv, input-dependent dt/B/C, scan."""

    residual_projections = ("out_proj",)

    def __init__(self, cfg: ModelConfig, layer: int = 0) -> None:
        super().__init__()
        self.d_state = int(cfg.opt("d_state") or MAMBA1_D_STATE)
        self.d_conv, self.d_inner = int(cfg.opt("d_conv")), int(cfg.opt("expand")) * cfg.d_model
        self.dt_rank = int(cfg.opt("dt_rank") or math.ceil(cfg.d_model / 16))
        self.scan_chunk = int(cfg.opt("chunk_size"))
        self.dt_range = (float(cfg.opt("dt_min")), float(cfg.opt("dt_max")))
        self.backend = configured_backend(cfg.kernel)
        check(min(self.d_state, self.d_conv, self.dt_rank, self.scan_chunk, self.d_inner) > 0,
              "d_state, d_conv, dt_rank, chunk_size and expand must be positive")
        self.in_proj = nn.Linear(cfg.d_model, 2 * self.d_inner, bias=False)
        self.conv_weight = nn.Parameter(torch.empty(self.d_inner, self.d_conv))
        self.conv_bias = nn.Parameter(torch.empty(self.d_inner))
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + 2 * self.d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True)
        self.A_log = nn.Parameter(torch.empty(self.d_inner, self.d_state))
        self.D = nn.Parameter(torch.empty(self.d_inner))
        self.out_proj = nn.Linear(self.d_inner, cfg.d_model, bias=False)
        self.tp_split = False  # True once a tensor-parallel plan shards the mixer's own parameters
        self.init_weights()

    def init_weights(self) -> None:
        init_conv(self.conv_weight, self.conv_bias)
        bound = self.dt_rank ** -0.5
        nn.init.uniform_(self.dt_proj.weight, -bound, bound)
        init_dt_bias(self.dt_proj.bias, *self.dt_range)
        with torch.no_grad():
            ranks = torch.arange(1, self.d_state + 1, dtype=torch.float32, device=self.A_log.device)
            self.A_log.copy_(ranks.log().expand_as(self.A_log))  # S4D-real: A = -(1, 2, ..., N)
        nn.init.ones_(self.D)

    def resolved_backend(self, device: torch.device, ctx: MixContext | None = None) -> str:
        """The scan implementation that runs on ``device`` (see :mod:`.kernels`)."""
        return resolve_backend(requested_backend(self.backend, ctx), device, has_triton_kernel=False)

    def forward(self, x: Tensor, ctx: MixContext | None = None,
                state: MambaState | None = None) -> tuple[Tensor, MambaState | None]:
        backend = self.resolved_backend(x.device, ctx)
        xs, z = self.in_proj(x).chunk(2, dim=-1)
        conv_weight, conv_bias, A_log, D = self._own_parameters()
        fused_conv = backend == "mamba_ssm" and causal_conv1d_missing() is None
        xs, conv_state = causal_conv(xs, conv_weight, conv_bias,
                                     state.conv if state is not None else None, fused=fused_conv)
        dt, B, C = self._dt_b_c(xs)
        dt = F.softplus(self.dt_proj(dt).float())
        A = -torch.exp(A_log.float())
        if state is not None and x.shape[1] == 1:
            y, ssm = selective_scan_step(xs[:, 0], dt[:, 0], A, B[:, 0], C[:, 0], state.ssm)
            y = y[:, None]
        elif backend == "mamba_ssm" and (state is None or state.tokens == 0):
            y, ssm = selective_scan_mamba_ssm(xs, dt, A, B, C)
        else:
            initial = state.ssm if state is not None else None
            y, ssm = selective_scan_parallel(xs, dt, A, B, C, initial, chunk_size=self.scan_chunk)
        y = (y + xs * D.to(xs.dtype)) * F.silu(z)
        out = self.out_proj(y)
        if state is not None:
            state = MambaState(conv=conv_state, ssm=ssm, tokens=state.tokens + x.shape[1])
        return out, state

    def _own_parameters(self) -> tuple[Tensor, ...]:
        """conv weight and bias, A_log, D: this rank's channels under tensor parallel."""
        params = (self.conv_weight, self.conv_bias, self.A_log, self.D)
        return tuple(plugin.tensor_parallel.local(p) for p in params) if self.tp_split else params

    def _dt_b_c(self, xs: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The low-rank dt input and B, C from the (conv'd) channels. Under tensor parallel x_proj sums
        every rank's channels; B and C then serve only this rank's channels, so their gradients are summed."""
        if not self.tp_split:
            return self.x_proj(xs).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt, bc = self.x_proj(xs).split([self.dt_rank, 2 * self.d_state], dim=-1)
        B, C = plugin.tensor_parallel.sum_gradients(bc, self.x_proj.weight.device_mesh).chunk(2, dim=-1)
        return dt, B, C

    def tensor_parallel_plan(self, tp_size: int) -> dict[str, Any] | None:
        """Channel split of d_inner: the fused x|z projection per segment, conv, A_log and D by channel,
        x_proj row-split (dt, B and C all-reduced, whole on every rank), dt_proj column-split, the output
        projection reduces."""
        tp = plugin.tensor_parallel
        tp.check_divides("mamba1 mixer", tp_size, d_inner=self.d_inner)
        self.tp_split = True
        channels = (self.d_inner,)
        own = tp.ShardedRows({"conv_weight": channels, "conv_bias": channels, "A_log": channels, "D": channels})
        return {"": own, "in_proj": tp.FusedColwiseParallel((self.d_inner, self.d_inner)), "x_proj": tp.rowwise(),
                "dt_proj": tp.colwise(), "out_proj": tp.rowwise()}

    def init_state(self, batch: int, device: torch.device, dtype: torch.dtype) -> MambaState:
        """Zero conv window (d_inner channels) and SSM state (d_inner, d_state)."""
        return MambaState.empty(batch, self.d_inner, self.d_conv, (self.d_inner, self.d_state), device, dtype)

    def state_bytes(self, bytes_per_value: int = 2) -> int:
        """Conv window in the model dtype plus the SSM state, always float32."""
        return mamba_state_bytes(self.d_inner, self.d_conv, self.d_inner * self.d_state, bytes_per_value)

    def extra_flops_per_token(self) -> float:
        """The scan (decay, update and read-out: about 7 FLOPs per channel and state), conv and skip."""
        return 7.0 * self.d_inner * self.d_state + 2.0 * self.d_inner * self.d_conv + 4.0 * self.d_inner
