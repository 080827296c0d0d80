"""Positional encodings: RoPE, ALiBi, learned relative bias, sinusoidal absolute, learned absolute, none."""
from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial
from typing import Any

import torch
from torch import Tensor, nn

from effzoo import plugin
from effzoo.plugin import ConfigError, ModelConfig, PositionalEncoding, ScoreMod, rotate_half

RELATIVE_MAX_DISTANCE = 128


class RotaryEncoding(PositionalEncoding):
    """RoPE (Su et al. 2021) on the first ``rotary_dim`` head dimensions, half-split layout (Qwen2, NeoX)."""

    kind = "rotary"

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.rotary_dim = cfg.rotary_dim
        self.theta = cfg.rope_theta
        self.register_buffer("inv_freq", self._inv_freq(), persistent=False)
        self._npu_rotary_mul: Any = None

    def _inv_freq(self) -> Tensor:
        exponents = torch.arange(0, self.rotary_dim, 2, dtype=torch.float32) / self.rotary_dim
        return 1.0 / (self.theta ** exponents)

    def init_buffers(self) -> None:
        self.inv_freq = self._inv_freq().to(self.inv_freq.device)

    def supports_context_parallel(self) -> bool:
        """Rotates each query and key by the position it is given, wherever in the sequence it sits."""
        return True

    def prepare(self, positions: Tensor) -> tuple[Tensor, Tensor]:
        """float32 (cos, sin) of shape (T, rotary_dim), computed once per forward for every layer."""
        angles = positions.float()[:, None] * self.inv_freq[None, :]
        emb = torch.cat((angles, angles), dim=-1)
        return emb.cos(), emb.sin()

    def rotate(self, x: Tensor, positions: Tensor, tables: tuple[Tensor, Tensor] | None = None) -> Tensor:
        cos, sin = tables if tables is not None else self.prepare(positions)
        if self._npu_rotary_mul is not None and self.rotary_dim == x.shape[-1]:
            return self._npu_rotary_mul(x, cos[None, None].to(x.dtype), sin[None, None].to(x.dtype))
        rot, rest = x[..., : self.rotary_dim], x[..., self.rotary_dim:]
        rotated = (rot.float() * cos + rotate_half(rot.float()) * sin).to(x.dtype)
        return rotated if rest.shape[-1] == 0 else torch.cat((rotated, rest), dim=-1)

    def install_kernels(self, device_type: str) -> list[str]:
        """On Ascend: ``npu_rotary_mul`` (x·cos + rotate_half(x)·sin) when the whole head rotates."""
        torch_npu = plugin.import_torch_npu() if device_type == "npu" else None
        if torch_npu is None:
            return []
        self._npu_rotary_mul = torch_npu.npu_rotary_mul
        return ["npu_rotary_mul"]


def alibi_slopes(n_heads: int) -> Tensor:
    """Head slopes of ALiBi (Press et al. 2022), including the rule for non-power-of-two head counts."""
    def power_of_two_slopes(n: int) -> list[float]:
        start = 2 ** (-(2 ** -(math.log2(n) - 3)))
        return [start * start**i for i in range(n)]

    closest = 2 ** math.floor(math.log2(n_heads))
    slopes = power_of_two_slopes(closest)
    if closest != n_heads:
        slopes += power_of_two_slopes(2 * closest)[0::2][: n_heads - closest]
    return torch.tensor(slopes, dtype=torch.float32)


def _alibi_score_mod(slopes: Tensor) -> ScoreMod:
    def alibi(score, b, h, q_idx, kv_idx):  # type: ignore[no-untyped-def]
        return score + slopes[h] * (kv_idx - q_idx)

    return alibi


def _relative_score_mod(table: Tensor, limit: int) -> ScoreMod:
    def relative(score, b, h, q_idx, kv_idx):  # type: ignore[no-untyped-def]
        index = torch.clamp(kv_idx - q_idx, -limit, limit) + limit
        return score + table[index, h]

    return relative


def _cached_score_mod(module: nn.Module, tensor: Tensor, make: Callable[[Tensor], ScoreMod]) -> ScoreMod:
    """One score_mod function per module and captured tensor: a new closure on every forward would make a
    compiled FlexAttention re-trace, while a stale one would read a tensor the module no longer holds."""
    cached = module.__dict__.get("_score_mod_cache")
    if cached is None or cached[0] is not tensor:
        cached = (tensor, make(tensor))
        module.__dict__["_score_mod_cache"] = cached
    return cached[1]


class ALiBi(PositionalEncoding):
    """Attention with Linear Biases: score += slope_h · (k − q); no parameters."""

    kind = "bias"

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.n_heads = cfg.n_heads
        self.register_buffer("slopes", alibi_slopes(cfg.n_heads), persistent=False)

    def init_buffers(self) -> None:
        self.slopes = alibi_slopes(self.n_heads).to(self.slopes.device)

    def bias(self, q_positions: Tensor, k_positions: Tensor) -> Tensor:
        distance = (k_positions[None, :] - q_positions[:, None]).float()
        return self.slopes[:, None, None] * distance[None]

    def score_mod(self) -> ScoreMod:
        return _cached_score_mod(self, self.slopes, _alibi_score_mod)


class RelativeBias(PositionalEncoding):
    """Learned per-head bias indexed by the distance k − q clipped to ±``relative_max_distance`` (default 128),
    shared by all layers."""

    kind = "bias"

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.max_distance = int(cfg.opt("relative_max_distance", RELATIVE_MAX_DISTANCE))
        self.std = cfg.init_std
        self.table = nn.Parameter(torch.zeros(2 * self.max_distance + 1, cfg.n_heads))

    def init_weights(self) -> None:
        nn.init.normal_(self.table, 0.0, self.std)

    def _index(self, distance: Tensor) -> Tensor:
        return distance.clamp(-self.max_distance, self.max_distance) + self.max_distance

    def bias(self, q_positions: Tensor, k_positions: Tensor) -> Tensor:
        distance = k_positions[None, :] - q_positions[:, None]
        return self.table[self._index(distance)].permute(2, 0, 1)

    def score_mod(self) -> ScoreMod:
        return _cached_score_mod(self, self.table, partial(_relative_score_mod, limit=self.max_distance))


class SinusoidalEncoding(PositionalEncoding):
    """Fixed sinusoidal absolute encoding (Vaswani et al. 2017) added to the embeddings; any length."""

    kind = "embedding"

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.d_model = cfg.d_model

    def supports_context_parallel(self) -> bool:
        return True  # the encoding of the given positions

    def embed(self, x: Tensor, positions: Tensor) -> Tensor:
        half = self.d_model // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=x.device, dtype=torch.float32) / half)
        angles = positions.float()[:, None] * freqs[None, :]
        table = torch.zeros(positions.shape[0], self.d_model, device=x.device)
        table[:, 0 : 2 * half : 2] = angles.sin()
        table[:, 1 : 2 * half : 2] = angles.cos()
        return x + table.to(x.dtype)


class LearnedAbsolute(PositionalEncoding):
    """A learned table of ``max_seq_len`` absolute position embeddings added to the token embeddings."""

    kind = "embedding"

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.table = nn.Embedding(cfg.max_seq_len, cfg.d_model)

    def supports_context_parallel(self) -> bool:
        return True  # the table rows of the given positions

    def check_positions(self, end: int) -> None:
        if end > self.table.num_embeddings:
            raise ConfigError(
                f"position {end - 1} is beyond the learned table ({self.table.num_embeddings} positions); "
                "build with a larger max_seq_len"
            )

    def embed(self, x: Tensor, positions: Tensor) -> Tensor:
        """No host-side bound check here (the decoder calls ``check_positions`` with host ints)."""
        return x + self.table(positions)[None].to(x.dtype)


class NoPosition(PositionalEncoding):
    """No positional information (NoPE): causal masking alone orders the tokens."""

    kind = "none"

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()

    def supports_context_parallel(self) -> bool:
        return True


POSITION_METHODS = (("RoPE", {}), ("Absolute", {"position": "absolute"}), ("Learnable Absolute", {"position": "learned"}),
                    ("Relative", {"position": "relative"}), ("None", {"position": "none"}), ("ALiBi", {"position": "alibi"}))
"""The EfficientLLM positional-encoding group: the Qwen2.5 GQA baseline with each encoding."""


@plugin.hookimpl
def effzoo_register(register: plugin.Registrar) -> None:
    register.add_position("rope", RotaryEncoding, kind="rotary", aliases=["rotary"],
                          description="Rotary position embedding on q/k (RoFormer); Qwen2.5 default")
    register.add_position("alibi", ALiBi, kind="bias",
                          description="Linear per-head distance bias on attention scores (Press et al.)")
    register.add_position(
        "relative", RelativeBias, kind="bias", aliases=["relative_position", "learned_relative"],
        options={"relative_max_distance": plugin.positive_int(RELATIVE_MAX_DISTANCE)},
        description="Learned per-head bias over clipped relative distance (default ±128), as the EfficientLLM scripts",
    )
    register.add_position("absolute", SinusoidalEncoding, kind="embedding", aliases=["sinusoidal", "absolute_sinusoidal"],
                          description="Fixed sinusoidal absolute encoding added to embeddings")
    register.add_position("learned", LearnedAbsolute, kind="embedding",
                          aliases=["learnable_absolute", "learnable", "learned_absolute"],
                          description="Learned absolute position embeddings (max_seq_len entries)")
    register.add_position("none", NoPosition, kind="none", aliases=["nope"], description="No positional encoding")
    register.add_suite("position", default_sizes=("1.5B",), order=1)
    for rank, (method, overrides) in enumerate(POSITION_METHODS):
        register.add_suite_method("position", method, "gqa", overrides=overrides, order=rank)
