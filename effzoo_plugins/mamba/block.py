"""The Mamba residual block: norm → Mamba mixer → residual (then norm → FFN → residual if ``ffn`` is set)."""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from effzoo.plugin import ConfigError, MixContext, MixerBlock, ModelConfig, make_norm, optional_ffn, position_kind

SSM_BLOCKS = ("mamba", "mamba1")


class MambaBlock(MixerBlock):
    """One layer around a Mamba mixer; its decoding state is constant in size (no KV cache).

    The ``mamba`` / ``mamba1`` variants set ``ffn="none"`` (the Mamba architecture); in a hybrid built
    from an attention variant the layer keeps that variant's FFN, like the attention layers.
    """

    def __init__(self, cfg: ModelConfig, mixer: nn.Module, layer: int = 0) -> None:
        super().__init__()
        self.mixer_norm = make_norm(cfg)
        self.mixer = mixer
        self.ffn_norm, self.ffn = optional_ffn(cfg, layer)

    def forward(self, x: Tensor, ctx: MixContext, state: Any | None = None) -> tuple[Tensor, Any | None]:
        mixed, state = self.mixer(self.mixer_norm(x), ctx, state)
        x = x + mixed
        if self.ffn is not None:
            x = x + self.ffn(self.ffn_norm(x), ctx)
        return x, state

    def tensor_parallel_plan(self, tp_size: int) -> dict[str, Any] | None:
        """The residual stream is whole on every rank; the mixer (and FFN) declare their own splits."""
        return {}

    def init_state(self, batch: int, max_len: int, device: torch.device, dtype: torch.dtype) -> Any:
        """Conv window + SSM state; ``max_len`` is irrelevant (the state does not grow)."""
        return self.mixer.init_state(batch, device, dtype)

    def state_bytes(self, bytes_per_value: int = 2) -> int:
        return self.mixer.state_bytes(bytes_per_value)

    def extra_flops_per_token(self, seq_len: int) -> float:
        return self.mixer.extra_flops_per_token()

    def inactive_params(self) -> int:
        return 0 if self.ffn is None else self.ffn.inactive_params()


def check_position(cfg: ModelConfig) -> None:
    """A model made only of Mamba layers has no attention scores: reject rotary / score-bias encodings
    (embedding-type encodings, added to the token embeddings, are allowed)."""
    if any(kind not in SSM_BLOCKS for kind in cfg.layer_kinds):
        return
    if position_kind(cfg.position) in ("rotary", "bias"):
        raise ConfigError(
            f"position {cfg.position!r} acts on attention scores, but every layer of this model is a Mamba "
            f"layer ({', '.join(sorted(set(cfg.layer_kinds)))}); use position='none' (the Mamba default) or "
            "an embedding encoding ('absolute', 'learned'), or add attention layers to the schedule"
        )


def mamba2_block(cfg: ModelConfig, layer: int = 0) -> MambaBlock:
    """The ``mamba`` block factory: a Mamba-2 (SSD) mixer."""
    from .mamba2 import Mamba2Mixer

    check_position(cfg)
    return MambaBlock(cfg, Mamba2Mixer(cfg, layer), layer)


def mamba1_block(cfg: ModelConfig, layer: int = 0) -> MambaBlock:
    """The ``mamba1`` block factory: a Mamba-1 (selective scan) mixer."""
    from .mamba1 import Mamba1Mixer

    check_position(cfg)
    return MambaBlock(cfg, Mamba1Mixer(cfg, layer), layer)
