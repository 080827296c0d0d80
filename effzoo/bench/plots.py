"""Figures: a radar chart of min–max normalised metrics per group (the paper's Figure 3), loss
curves against tokens, and training throughput against sequence length. Needs matplotlib."""
from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import EffzooError

# metric key, axis label, True when lower is better
RADAR_METRICS: list[tuple[str, str, bool]] = [
    ("ppl", "PPL", True), ("amu_gb", "AMU", True), ("al_s_per_iter", "AL", True),
    ("tt", "TT", False), ("aec_w", "AEC", True), ("gpu_hours", "GPU h", True),
]


def available() -> bool:
    """Whether matplotlib can be imported."""
    import importlib.util

    return importlib.util.find_spec("matplotlib") is not None


def _pyplot():  # type: ignore[no-untyped-def]
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise EffzooError("plots need matplotlib: pip install 'effzoo[plots]'") from exc
    return plt


def normalise(values: Sequence[float | None], lower_is_better: bool) -> list[float | None]:
    """Min–max scale to [0, 1] with 1 = best; equal values all score 1; missing stay None."""
    present = [v for v in values if v is not None and math.isfinite(v)]
    if not present:
        return [None] * len(values)
    low, high = min(present), max(present)
    out: list[float | None] = []
    for v in values:
        if v is None or not math.isfinite(v):
            out.append(None)
        elif high == low:
            out.append(1.0)
        else:
            scaled = (v - low) / (high - low)
            out.append(1.0 - scaled if lower_is_better else scaled)
    return out


def radar_chart(rows: Sequence[dict[str, Any]], path: str | Path, title: str) -> Path:
    """One polygon per method over the metrics in RADAR_METRICS (outward = better)."""
    plt = _pyplot()
    labels = [label for _, label, _ in RADAR_METRICS]
    angles = [2 * math.pi * i / len(labels) for i in range(len(labels))] + [0.0]
    columns = [normalise([r.get(key) for r in rows], lower) for key, _, lower in RADAR_METRICS]
    fig = plt.figure(figsize=(6, 6))
    ax = fig.add_subplot(projection="polar")
    for index, row in enumerate(rows):
        values = [col[index] if col[index] is not None else 0.0 for col in columns]
        ax.plot(angles, values + values[:1], label=f"{row['method']} {row.get('size', '')}".strip())
        ax.fill(angles, values + values[:1], alpha=0.08)
    ax.set_xticks(angles[:-1], labels)
    ax.set_ylim(0, 1)
    ax.set_title(title)
    ax.legend(loc="upper right", bbox_to_anchor=(1.35, 1.1), fontsize="small")
    return _save(fig, plt, path)


def smooth(values: Sequence[float], window: int) -> list[float]:
    """Trailing moving average over ``window`` points (window <= 1 returns the values)."""
    if window <= 1:
        return list(values)
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def loss_curves(
    curves: dict[str, tuple[Sequence[float], Sequence[float]]], path: str | Path, *, title: str = "Training loss",
    smooth_window: int = 1, token_threshold: float | None = None, exp_loss: bool = False,
) -> Path:
    """Loss (or exp(loss), i.e. perplexity) against tokens; ``token_threshold`` keeps only later tokens."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 5))
    for label, (tokens, losses) in curves.items():
        values = smooth(list(losses), smooth_window)
        points = [(t, math.exp(v) if exp_loss else v) for t, v in zip(tokens, values)
                  if token_threshold is None or t >= token_threshold]
        if points:
            ax.plot([p[0] for p in points], [p[1] for p in points], label=label)
    ax.set_xlabel("tokens")
    ax.set_ylabel("exp(loss)" if exp_loss else "loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, plt, path)


def throughput_chart(sweeps: dict[str, Sequence[tuple[int, float]]], path: str | Path,
                     title: str = "Training throughput vs sequence length") -> Path:
    """Tokens/s of a training step against sequence length, one line per variant (log-2 x axis)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 5))
    for label, points in sweeps.items():
        if points:
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=label)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("sequence length")
    ax.set_ylabel("tokens/s")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, plt, path)


def _save(fig, plt, path: str | Path) -> Path:  # type: ignore[no-untyped-def]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
