"""The RWKV-7 ("Goose") block: token shift, time-mix (generalised delta rule), channel-mix.

    x ─(layer 0: LayerNorm)─┬─ LayerNorm → time-mix ──(+)─┬─ LayerNorm → channel-mix ──(+)→
                            └──────────────────────────────┘└────────────────────────────────┘

Time-mix, per head of size K (default 64)::

    x_* = x + (x_{t-1} - x) ⊙ μ_*                                token shift, one μ per branch
    r, k, v = W_r x_r, W_k x_k, W_v x_v
    log w   = -e^{-1/2} · σ(w_0 + tanh(x_w A_w) B_w)              vector decay, in (-0.61, 0)
    α       = σ(a_0 + x_a A_a B_a)                                in-context learning rate
    v       = v + (v_first - v) ⊙ σ(v_0 + x_v A_v B_v)            value residual (not in the first layer)
    g       = σ(x_g A_g) B_g                                      output gate
    κ       = normalize(k ⊙ k_k) per head                         removal key
    k       = k ⊙ (1 + (α - 1) ⊙ k_a)                              replacement key
    S_t     = diag(w_t) S_{t-1} - (κ_t ⊙ α_t)(κ_t^T S_{t-1}) + k_t v_t^T,   o_t = S_t^T r_t
    out     = W_o ((GroupNorm_heads(o) + (Σ r ⊙ k ⊙ r_k) v) ⊙ g)    bonus term per head

Channel-mix: ``W_down relu(W_up (x + (x_{t-1} - x) ⊙ μ_k))²``.
The decoding state is the last input of each mix (token shift) and ``S`` per head.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from effzoo import plugin
from effzoo.plugin import Component, ConfigError, MixContext, MixerBlock, ModelConfig, make_norm

from .kernels import LOG_DECAY_BOUND, configured_kernel, wkv7

V_FIRST_KEY = "rwkv7_v_first"
BRANCHES = ("r", "w", "k", "v", "a", "g")
SHIFT_EXPONENTS = (0.2, 0.9, 0.7, 0.7, 0.9, 0.2)  # initial token-shift ramps, one per branch
GROUP_NORM_EPS = 64e-5
PER_CHANNEL = ("decay_base", "iclr_base", "value_base", "removal_scale", "iclr_key_scale", "out_norm_weight",
               "out_norm_bias")  # time-mix parameters with one value per channel (split by head under TP)


def token_shift(x: Tensor, last: Tensor | None) -> Tensor:
    """The previous token's vector at every position (``last`` or zeros before the first)."""
    first = x.new_zeros(x.shape[0], 1, x.shape[2]) if last is None else last.unsqueeze(1).to(x.dtype)
    return torch.cat((first, x[:, :-1]), dim=1)


@dataclass
class RWKV7State:
    """Constant-size decoding state of one block."""

    time_shift: Tensor  # (B, d_model) last time-mix input
    channel_shift: Tensor  # (B, d_model) last channel-mix input
    wkv: Tensor  # (B, H, K, K) float32


class TimeMix(Component):
    """RWKV-7 time mixing; ``first`` marks the layer whose values feed the value residual."""

    residual_projections = ("out_proj",)

    def __init__(self, cfg: ModelConfig, layer: int, first: bool) -> None:
        super().__init__()
        d = cfg.d_model
        self.head_size = int(cfg.opt("rwkv_head_size"))
        if self.head_size <= 0 or d % self.head_size:
            raise ConfigError(f"rwkv_head_size={self.head_size} must be positive and divide d_model={d}")
        self.heads = d // self.head_size
        self.layer, self.n_layers, self.first = layer, cfg.n_layers, first
        self.value_residual = bool(cfg.opt("rwkv_value_residual")) and not first
        self.kernel, self.chunk_size = configured_kernel(cfg.kernel), cfg.opt("rwkv_chunk_size")
        if self.chunk_size is not None and int(self.chunk_size) <= 0:
            raise ConfigError(f"rwkv_chunk_size must be positive (or None for the default), got {self.chunk_size}")
        ranks = {name: int(cfg.opt(f"rwkv_{name}_lora")) for name in ("decay", "iclr", "value", "gate")}
        self.shift_mix = nn.Parameter(torch.empty(len(BRANCHES), d))
        self.receptance = nn.Linear(d, d, bias=False)
        self.key = nn.Linear(d, d, bias=False)
        self.value = nn.Linear(d, d, bias=False)
        self.out_proj = nn.Linear(d, d, bias=False)
        self.decay_base = nn.Parameter(torch.empty(d))
        self.decay_down = nn.Parameter(torch.empty(d, ranks["decay"]))
        self.decay_up = nn.Parameter(torch.empty(ranks["decay"], d))
        self.iclr_base = nn.Parameter(torch.empty(d))
        self.iclr_down = nn.Parameter(torch.empty(d, ranks["iclr"]))
        self.iclr_up = nn.Parameter(torch.empty(ranks["iclr"], d))
        if self.value_residual:
            self.value_base = nn.Parameter(torch.empty(d))
            self.value_down = nn.Parameter(torch.empty(d, ranks["value"]))
            self.value_up = nn.Parameter(torch.empty(ranks["value"], d))
        self.gate_down = nn.Parameter(torch.empty(d, ranks["gate"]))
        self.gate_up = nn.Parameter(torch.empty(ranks["gate"], d))
        self.removal_scale = nn.Parameter(torch.empty(d))  # k_k
        self.iclr_key_scale = nn.Parameter(torch.empty(d))  # k_a
        self.bonus = nn.Parameter(torch.empty(self.heads, self.head_size))  # r_k
        self.out_norm_weight = nn.Parameter(torch.empty(d))
        self.out_norm_bias = nn.Parameter(torch.empty(d))
        self.tp_split = False  # True once a tensor-parallel plan shards the heads

    @torch.no_grad()
    def init_weights(self) -> None:
        """Channel ramps for token shift and decay, zero up-projections (data dependence starts at 0)."""
        d = self.shift_mix.shape[1]
        device = self.shift_mix.device
        ramp = torch.arange(d, device=device, dtype=torch.float32) / d
        depth = 1.0 - self.layer / max(self.n_layers, 1)
        for row, exponent in enumerate(SHIFT_EXPONENTS):
            self.shift_mix[row].copy_(1.0 - ramp ** (exponent * depth))
        within_head = torch.arange(self.head_size, device=device, dtype=torch.float32) / max(self.head_size - 1, 1)
        self.decay_base.copy_((6.0 - 12.0 * within_head).repeat(self.heads))  # fast → slow channels in every head
        for down, up in self._loras():
            nn.init.normal_(down, 0.0, d**-0.5)
            nn.init.zeros_(up)
        nn.init.normal_(self.gate_down, 0.0, d**-0.5)
        nn.init.normal_(self.gate_up, 0.0, self.gate_up.shape[0] ** -0.5)
        nn.init.zeros_(self.iclr_base)
        if self.value_residual:
            nn.init.zeros_(self.value_base)
        nn.init.constant_(self.removal_scale, 0.85)
        nn.init.ones_(self.iclr_key_scale)
        nn.init.zeros_(self.bonus)
        nn.init.ones_(self.out_norm_weight)
        nn.init.zeros_(self.out_norm_bias)

    def _loras(self) -> list[tuple[Tensor, Tensor]]:
        pairs = [(self.decay_down, self.decay_up), (self.iclr_down, self.iclr_up)]
        return pairs + ([(self.value_down, self.value_up)] if self.value_residual else [])

    def forward(
        self, x: Tensor, ctx: MixContext, last: Tensor | None, wkv_state: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        """Mix ``x`` (B, T, d); returns the output and the final wkv state (B, H, K, K)."""
        batch, length, _ = x.shape
        delta = token_shift(x, last) - x
        xr, xw, xk, xv, xa, xg = torch.addcmul(x.unsqueeze(0), delta.unsqueeze(0), self.shift_mix[:, None, None])
        r, k, v = self.receptance(xr), self.key(xk), self.value(xv)
        d = r.shape[-1]  # this rank's heads' channels under tensor parallel
        heads, size = d // self.head_size, self.head_size
        own, up = self._own, self._up
        decay = own(self.decay_base) + up(torch.tanh(xw @ self.decay_down), self.decay_up)
        log_w = LOG_DECAY_BOUND * torch.sigmoid(decay)
        iclr = torch.sigmoid(own(self.iclr_base) + up(xa @ self.iclr_down, self.iclr_up))
        if self.first:
            ctx.carry[V_FIRST_KEY] = v
        elif self.value_residual:
            v_first = ctx.carry.get(V_FIRST_KEY)
            if v_first is None:
                raise RuntimeError(
                    f"RWKV-7 layer {self.layer} uses the value residual but no earlier RWKV-7 layer ran in this pass"
                )
            v = v + (v_first - v) * torch.sigmoid(own(self.value_base) + up(xv @ self.value_down, self.value_up))
        gate = up(torch.sigmoid(xg @ self.gate_down), self.gate_up)
        removal = F.normalize((k * own(self.removal_scale)).view(batch, length, heads, size), dim=-1)
        k = k * (1.0 + (iclr - 1.0) * own(self.iclr_key_scale))
        shape = (batch, length, heads, size)
        r4, k4, v4, iclr4 = r.view(shape), k.view(shape), v.view(shape), iclr.view(shape)
        out, wkv_state = wkv7(
            r4, log_w.view(shape), k4, v4, -removal, removal * iclr4, wkv_state,
            kernel=self.kernel, chunk_size=self.chunk_size,
        )
        out = F.group_norm(out.reshape(batch * length, d), heads, own(self.out_norm_weight),
                           own(self.out_norm_bias), GROUP_NORM_EPS).view(batch, length, d)
        bonus = ((r4 * k4 * own(self.bonus)).sum(-1, keepdim=True) * v4).view(batch, length, d)
        return self.out_proj((out + bonus) * gate), wkv_state

    def _own(self, param: Tensor) -> Tensor:
        """A per-channel or per-head parameter: this rank's heads under tensor parallel."""
        return plugin.tensor_parallel.local(param) if self.tp_split else param

    def _up(self, low: Tensor, up: Tensor) -> Tensor:
        """The second matrix of a low-rank projection, ``low @ up``: this rank's channels under tensor parallel."""
        return plugin.tensor_parallel.column_matmul(low, up) if self.tp_split else low @ up

    def tensor_parallel_plan(self, tp_size: int) -> dict[str, Any] | None:
        """Head split: r, k, v column-split by head, every per-channel and per-head parameter sharded
        alike (so GroupNorm and the bonus are per head), each low-rank projection's second matrix
        column-split while its first stays whole, the output projection reduces. The first layer's
        values (the value residual) are then this rank's heads, as the later layers need them."""
        tp = plugin.tensor_parallel
        tp.check_divides("rwkv7 time-mix", tp_size, heads=self.heads)
        self.tp_split = True
        rows = {name: (self.shift_mix.shape[1],) for name in PER_CHANNEL if hasattr(self, name)}
        ups = ("decay_up", "iclr_up", "gate_up") + (("value_up",) if self.value_residual else ())
        own = (tp.ShardedRows({**rows, "bonus": (self.heads,)}), tp.ShardedColumns(ups))
        return {"": own, "receptance": tp.colwise(), "key": tp.colwise(), "value": tp.colwise(),
                "out_proj": tp.rowwise()}


class ChannelMix(Component):
    """Squared-ReLU feed-forward on token-shifted input."""

    residual_projections = ("down_proj",)

    def __init__(self, cfg: ModelConfig, layer: int) -> None:
        super().__init__()
        self.layer, self.n_layers = layer, cfg.n_layers
        self.shift_mix = nn.Parameter(torch.empty(cfg.d_model))
        self.up_proj = nn.Linear(cfg.d_model, cfg.ffn_hidden, bias=False)
        self.down_proj = nn.Linear(cfg.ffn_hidden, cfg.d_model, bias=False)

    @torch.no_grad()
    def init_weights(self) -> None:
        d = self.shift_mix.shape[0]
        ramp = torch.arange(d, device=self.shift_mix.device, dtype=torch.float32) / d
        self.shift_mix.copy_(1.0 - ramp ** (1.0 - self.layer / max(self.n_layers, 1)))

    def forward(self, x: Tensor, last: Tensor | None) -> Tensor:
        shifted = x + (token_shift(x, last) - x) * self.shift_mix
        return self.down_proj(torch.relu(self.up_proj(shifted)).square())

    def tensor_parallel_plan(self, tp_size: int) -> dict[str, Any] | None:
        """Hidden-channel split: up column-split, down reduces; the token-shift mix stays whole."""
        tp = plugin.tensor_parallel
        tp.check_divides("rwkv7 channel-mix", tp_size, ffn_hidden=self.up_proj.out_features)
        return {"up_proj": tp.colwise(), "down_proj": tp.rowwise()}


class RWKV7Block(MixerBlock):
    """LayerNorm → time-mix → residual → LayerNorm → channel-mix → residual (+ a LayerNorm at layer 0)."""

    def __init__(self, cfg: ModelConfig, layer: int = 0) -> None:
        super().__init__()
        kinds = cfg.layer_kinds
        mine = [i for i, kind in enumerate(kinds) if kind == kinds[layer]] if layer < len(kinds) else [layer]
        self.input_norm = make_norm(cfg) if layer == 0 else None
        self.time_norm = make_norm(cfg)
        self.time_mix = TimeMix(cfg, layer, first=layer == min(mine))
        self.channel_norm = make_norm(cfg)
        self.channel_mix = ChannelMix(cfg, layer)

    @property
    def heads(self) -> int:
        return self.time_mix.heads

    @property
    def head_size(self) -> int:
        return self.time_mix.head_size

    def tensor_parallel_plan(self, tp_size: int) -> dict[str, Any] | None:
        """The residual stream is whole on every rank; the time-mix and channel-mix declare their splits."""
        return {}

    def forward(self, x: Tensor, ctx: MixContext, state: RWKV7State | None = None) -> tuple[Tensor, Any | None]:
        if self.input_norm is not None:
            x = self.input_norm(x)
        h = self.time_norm(x)
        mixed, wkv = self.time_mix(h, ctx, None if state is None else state.time_shift,
                                   None if state is None else state.wkv)
        x = x + mixed
        c = self.channel_norm(x)
        x = x + self.channel_mix(c, None if state is None else state.channel_shift)
        if state is None:
            return x, None
        return x, RWKV7State(time_shift=h[:, -1], channel_shift=c[:, -1], wkv=wkv)

    def init_state(self, batch: int, max_len: int, device: torch.device, dtype: torch.dtype) -> RWKV7State:
        d = self.time_mix.shift_mix.shape[1]
        return RWKV7State(
            time_shift=torch.zeros(batch, d, device=device, dtype=dtype),
            channel_shift=torch.zeros(batch, d, device=device, dtype=dtype),
            wkv=torch.zeros(batch, self.heads, self.head_size, self.head_size, device=device, dtype=torch.float32),
        )

    def state_bytes(self, bytes_per_value: int = 2) -> int:
        """Two token-shift vectors in the model dtype plus the float32 wkv state."""
        d = self.heads * self.head_size
        return 2 * d * bytes_per_value + self.heads * self.head_size**2 * 4

    def extra_flops_per_token(self, seq_len: int) -> float:
        """The recurrence per token and head: read, removal, decay, rank-1 updates ≈ 9·K·K."""
        return 9.0 * self.heads * self.head_size**2


def rwkv7_block(cfg: ModelConfig, layer: int = 0) -> RWKV7Block:
    """The ``rwkv7`` block factory."""
    return RWKV7Block(cfg, layer)
