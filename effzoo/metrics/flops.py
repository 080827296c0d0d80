"""Model FLOPs per token and MFU (6·N + 12·L·H·Q·T generalised per block; see effzoo.analysis)."""
from __future__ import annotations

from torch import nn

from ..analysis import model_stats


def train_flops_per_token(model: nn.Module, seq_len: int) -> float:
    """Forward + backward model FLOPs per token (recomputation from checkpointing not counted)."""
    return float(model_stats(model, seq_len)["train_flops_per_token"])


def mfu(tokens_per_s: float, flops_per_token: float, peak_flops_per_device: float | None, devices: int) -> float | None:
    """Achieved model FLOP/s over the summed peak of ``devices`` (None without a peak)."""
    if not peak_flops_per_device:
        return None
    return tokens_per_s * flops_per_token / (peak_flops_per_device * devices)
