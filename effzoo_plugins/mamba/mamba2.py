"""The Mamba-2 mixer (Dao & Gu 2024): input projection, causal conv, SSD scan, gated norm, output."""
from __future__ import annotations

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
    ssd_function,
)
from .parts import (
    GatedRMSNorm,
    MambaState,
    causal_conv,
    check,
    init_conv,
    init_dt_bias,
    mamba_state_bytes,
)
from .ssd_reference import ssd_step

MAMBA2_D_STATE = 128


class Mamba2Mixer(Component):
    """(B, T, d_model) -> (B, T, d_model) through a multi-head SSD with scalar decay per head."""

    residual_projections = ("out_proj",)

    def __init__(self, cfg: ModelConfig, layer: int = 0) -> None:
        super().__init__()
        self.d_state = int(cfg.opt("d_state") or MAMBA2_D_STATE)
        self.d_conv, self.head_dim = int(cfg.opt("d_conv")), int(cfg.opt("ssm_head_dim"))
        self.n_groups, self.chunk_size = int(cfg.opt("n_groups")), int(cfg.opt("chunk_size"))
        self.d_inner = int(cfg.opt("expand")) * cfg.d_model
        self.dt_range = (float(cfg.opt("dt_min")), float(cfg.opt("dt_max")))
        self.backend = configured_backend(cfg.kernel)
        check(self.d_state > 0 and self.d_conv > 0 and self.chunk_size > 0,
               "d_state, d_conv and chunk_size must be positive")
        check(self.d_inner % self.head_dim == 0,
               f"expand·d_model = {self.d_inner} is not divisible by ssm_head_dim = {self.head_dim}")
        self.n_heads = self.d_inner // self.head_dim
        check(self.n_heads % self.n_groups == 0,
               f"{self.n_heads} SSM heads cannot be split into n_groups = {self.n_groups}")
        self.conv_dim = self.d_inner + 2 * self.n_groups * self.d_state
        self.in_proj = nn.Linear(cfg.d_model, self.d_inner + self.conv_dim + self.n_heads, bias=False)
        self.conv_weight = nn.Parameter(torch.empty(self.conv_dim, self.d_conv))
        self.conv_bias = nn.Parameter(torch.empty(self.conv_dim))
        self.dt_bias = nn.Parameter(torch.empty(self.n_heads))
        self.A_log = nn.Parameter(torch.empty(self.n_heads))
        self.D = nn.Parameter(torch.empty(self.n_heads))
        self.norm = GatedRMSNorm(self.d_inner, self.n_groups, cfg.norm_eps)
        self.out_proj = nn.Linear(self.d_inner, cfg.d_model, bias=False)
        self.tp_split = False  # True once a tensor-parallel plan shards the mixer's own parameters
        self.init_weights()

    def init_weights(self) -> None:
        init_conv(self.conv_weight, self.conv_bias)
        init_dt_bias(self.dt_bias, *self.dt_range)
        with torch.no_grad():
            self.A_log.copy_(torch.empty_like(self.A_log).uniform_(1.0, 16.0).log())
        nn.init.ones_(self.D)

    def resolved_backend(self, device: torch.device, ctx: MixContext | None = None) -> str:
        """The SSD implementation that runs on ``device`` (see :mod:`.kernels`)."""
        return resolve_backend(requested_backend(self.backend, ctx), device, has_triton_kernel=True,
                               dims=(self.head_dim, self.d_state))

    def forward(self, x: Tensor, ctx: MixContext | None = None,
                state: MambaState | None = None) -> tuple[Tensor, MambaState | None]:
        batch, length, _ = x.shape
        backend = self.resolved_backend(x.device, ctx)
        projected = self.in_proj(x)
        shards = self.in_proj.out_features // projected.shape[-1]  # > 1 under tensor parallel (this rank's heads)
        d_inner, n_heads, n_groups = self.d_inner // shards, self.n_heads // shards, self.n_groups // shards
        conv_weight, conv_bias, dt_bias, A_log, D = self._own_parameters()
        z, xbc, dt = projected.split([d_inner, d_inner + 2 * n_groups * self.d_state, n_heads], dim=-1)
        fused_conv = backend == "mamba_ssm" and causal_conv1d_missing() is None
        xbc, conv_state = causal_conv(xbc, conv_weight, conv_bias,
                                      state.conv if state is not None else None, fused=fused_conv)
        xs, B, C = xbc.split([d_inner, n_groups * self.d_state, n_groups * self.d_state], dim=-1)
        xs = xs.view(batch, length, n_heads, self.head_dim)
        B = B.view(batch, length, n_groups, self.d_state)
        C = C.view(batch, length, n_groups, self.d_state)
        dt = F.softplus(dt.float() + dt_bias.float())
        A = -torch.exp(A_log.float())
        if state is not None and length == 1:
            y, ssm = ssd_step(xs[:, 0], dt[:, 0], A, B[:, 0], C[:, 0], state.ssm)
            y = y[:, None]
        else:
            initial = state.ssm if state is not None else None
            y, ssm = ssd_function(backend)(xs, dt, A, B, C, self.chunk_size, initial)
        y = y + xs * D.to(xs.dtype)[:, None]
        out = self.out_proj(self.norm(y.reshape(batch, length, d_inner), z))
        if state is not None:
            state = MambaState(conv=conv_state, ssm=ssm, tokens=state.tokens + length)
        return out, state

    def _own_parameters(self) -> tuple[Tensor, ...]:
        """conv weight and bias, dt bias, A_log, D: this rank's channels and heads under tensor parallel."""
        params = (self.conv_weight, self.conv_bias, self.dt_bias, self.A_log, self.D)
        return tuple(plugin.tensor_parallel.local(p) for p in params) if self.tp_split else params

    def tensor_parallel_plan(self, tp_size: int) -> dict[str, Any] | None:
        """Head split (whole groups per rank): the fused z|x|B|C|dt projection split per segment, the conv
        channels and per-head parameters alike, the output projection reduces."""
        tp = plugin.tensor_parallel
        tp.check_divides("mamba2 mixer", tp_size, ("n_groups",), n_groups=self.n_groups, n_heads=self.n_heads)
        bc = self.n_groups * self.d_state
        self.tp_split = True
        per_head = (self.n_heads,)
        own = tp.ShardedRows({"conv_weight": (self.d_inner, bc, bc), "conv_bias": (self.d_inner, bc, bc),
                              "dt_bias": per_head, "A_log": per_head, "D": per_head})
        return {"": own, "in_proj": tp.FusedColwiseParallel((self.d_inner, self.d_inner, bc, bc, self.n_heads)),
                "out_proj": tp.rowwise()}

    def init_state(self, batch: int, device: torch.device, dtype: torch.dtype) -> MambaState:
        """Zero conv window (x, B and C channels) and SSM state (heads, head_dim, d_state)."""
        ssm_shape = (self.n_heads, self.head_dim, self.d_state)
        return MambaState.empty(batch, self.conv_dim, self.d_conv, ssm_shape, device, dtype)

    def state_bytes(self, bytes_per_value: int = 2) -> int:
        """Conv window in the model dtype plus the SSM state, always float32."""
        ssm_values = self.n_heads * self.head_dim * self.d_state
        return mamba_state_bytes(self.conv_dim, self.d_conv, ssm_values, bytes_per_value)

    def extra_flops_per_token(self) -> float:
        """The chunked SSD beyond the projections: causal half of the in-chunk products, chunk states
        in and out (4·P·N per head), the convolution and the D skip."""
        chunk = self.chunk_size
        per_head = chunk * (self.d_state * (self.n_groups / self.n_heads) + self.head_dim) + 4 * self.head_dim * self.d_state
        return self.n_heads * per_head + 2.0 * self.conv_dim * self.d_conv + 2.0 * self.d_inner
