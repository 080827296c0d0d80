"""xPos: rotary position embedding with an exponential decay (Sun et al. 2022, arXiv 2212.10554).

A third-party effzoo plugin in one module. RoPE rotates each pair of head dimensions by an angle
proportional to the position; xPos also scales pair i of a query at position n by ζ_i^(n/B) and of a
key at position m by ζ_i^(-m/B), so a score q·k carries ζ_i^((n-m)/B): attention to distant tokens
decays smoothly, which the paper shows helps length extrapolation. ζ_i = (i/(d/2) + γ) / (1 + γ) with
γ = 0.4, B = ``xpos_scale_base`` (512).

Queries and keys are treated differently, through ``rotate_queries`` / ``rotate_keys`` of
:class:`effzoo.plugin.PositionalEncoding`; the cos/sin/scale tables are prepared once per forward.
Usable with every variant whose attention rotates through the context (``gqa``, ``mqa``, ``mha``,
``mla``, ...): ``effzoo.build("mla", position="xpos")``.
"""
from __future__ import annotations

import torch
from torch import Tensor

from effzoo import plugin

GAMMA = 0.4
SCALE_BASE = 512

Tables = tuple[Tensor, Tensor, Tensor]


class XPos(plugin.PositionalEncoding):
    """RoPE (half-split layout) on the first ``rotary_dim`` head dims, with xPos's per-pair scale."""

    kind = "rotary"

    def __init__(self, cfg: plugin.ModelConfig) -> None:
        super().__init__()
        self.rotary_dim = cfg.rotary_dim
        self.theta = cfg.rope_theta
        self.scale_base = float(cfg.opt("xpos_scale_base"))
        inv_freq, zeta = self._tables()
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self.register_buffer("zeta", zeta, persistent=False)

    def _tables(self) -> tuple[Tensor, Tensor]:
        half = torch.arange(0, self.rotary_dim, 2, dtype=torch.float32)
        inv_freq = 1.0 / (self.theta ** (half / self.rotary_dim))
        zeta = (half + GAMMA * self.rotary_dim) / ((1 + GAMMA) * self.rotary_dim)
        return inv_freq, zeta

    def init_buffers(self) -> None:
        inv_freq, zeta = self._tables()
        self.inv_freq, self.zeta = inv_freq.to(self.inv_freq.device), zeta.to(self.zeta.device)

    def prepare(self, positions: Tensor) -> Tables:
        """float32 (cos, sin, scale), each (T, rotary_dim): scale = ζ^(position / B)."""
        angles = positions.float()[:, None] * self.inv_freq[None, :]
        scale = self.zeta[None, :] ** (positions.float()[:, None] / self.scale_base)
        return torch.cat((angles, angles), -1).cos(), torch.cat((angles, angles), -1).sin(), torch.cat((scale, scale), -1)

    def _encode(self, x: Tensor, positions: Tensor, tables: Tables | None, power: float) -> Tensor:
        cos, sin, scale = tables if tables is not None else self.prepare(positions)
        rot, rest = x[..., : self.rotary_dim].float(), x[..., self.rotary_dim:]
        rotated = ((rot * cos + plugin.rotate_half(rot) * sin) * scale**power).to(x.dtype)
        return rotated if rest.shape[-1] == 0 else torch.cat((rotated, rest), dim=-1)

    def rotate_queries(self, q: Tensor, positions: Tensor, tables: Tables | None = None) -> Tensor:
        return self._encode(q, positions, tables, 1.0)

    def rotate_keys(self, k: Tensor, positions: Tensor, tables: Tables | None = None) -> Tensor:
        return self._encode(k, positions, tables, -1.0)


@plugin.hookimpl
def effzoo_register(register: plugin.Registrar) -> None:
    register.add_position(
        "xpos", XPos, kind="rotary", aliases=["extrapolatable_rope"],
        options={"xpos_scale_base": plugin.positive_float(SCALE_BASE)},
        description="xPos: RoPE with an exponential relative decay (Sun et al. 2022), scale base xpos_scale_base",
    )
