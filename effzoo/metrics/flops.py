"""Model FLOPs utilisation; the FLOPs per token come from :func:`effzoo.analysis.model_stats`
(6·N + 12·L·H·Q·T generalised per block)."""
from __future__ import annotations


def mfu(tokens_per_s: float, flops_per_token: float, peak_flops_per_device: float | None, devices: int) -> float | None:
    """Achieved model FLOP/s over the summed peak of ``devices`` (None without a peak)."""
    if not peak_flops_per_device:
        return None
    return tokens_per_s * flops_per_token / (peak_flops_per_device * devices)
