"""Figures: a radar chart of each metric relative to the group's best (the paper's Figure 3), loss
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
    ("tt", "TT", False), ("aec_w", "AEC", True), ("device_hours", "device h", True),
]
RADAR_FLOOR = 0.2  # the radius of a ratio of 0 to the best: the worst variant stays visible


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


def _usable(value: float | None) -> bool:
    return value is not None and math.isfinite(value) and value > 0


def normalise(values: Sequence[float | None], lower_is_better: bool) -> list[float | None]:
    """Each value's ratio to the best (best / v when lower is better, v / best otherwise), mapped into
    [RADAR_FLOOR, 1]: 1 is the best, and no variant sits at the centre. Missing values stay None."""
    present = [v for v in values if _usable(v)]
    if not present:
        return [None] * len(values)
    best = min(present) if lower_is_better else max(present)
    out: list[float | None] = []
    for v in values:
        if not _usable(v):
            out.append(None)
        else:
            ratio = best / v if lower_is_better else v / best
            out.append(RADAR_FLOOR + (1.0 - RADAR_FLOOR) * ratio)
    return out


def radar_axes(rows: Sequence[dict[str, Any]]) -> list[tuple[str, list[float | None]]]:
    """(axis label, each row's radius) for the metrics of RADAR_METRICS that have a value in some row."""
    axes = [(label, normalise([r.get(key) for r in rows], lower)) for key, label, lower in RADAR_METRICS]
    return [(label, column) for label, column in axes if any(v is not None for v in column)]


def radar_chart(rows: Sequence[dict[str, Any]], path: str | Path, title: str) -> Path:
    """One polygon per method over the metrics that have data (outward = better); a missing value sits
    at the floor of its axis."""
    plt = _pyplot()
    axes = radar_axes(rows)
    if not axes:
        raise EffzooError(f"{path}: no radar metric has a value in any row")
    labels = [label for label, _ in axes]
    angles = [2 * math.pi * i / len(labels) for i in range(len(labels))] + [0.0]
    fig = plt.figure(figsize=(8, 6))
    ax = fig.add_subplot(projection="polar")
    for index, row in enumerate(rows):
        values = [column[index] if column[index] is not None else RADAR_FLOOR for _, column in axes]
        ax.plot(angles, values + values[:1], marker="o", markersize=3,
                label=f"{row['method']} {row.get('size', '')}".strip())
        ax.fill(angles, values + values[:1], alpha=0.06)
    ax.set_xticks(angles[:-1], labels)
    ax.set_ylim(0, 1)
    ax.set_yticks([RADAR_FLOOR, 0.6, 1.0], ["0", "0.5", "1 (best)"], fontsize="x-small")
    ax.set_title(title)
    _legend_outside(ax, gap=1.12)
    return _save(fig, plt, path)


def _legend_outside(ax, gap: float = 1.02) -> None:  # type: ignore[no-untyped-def]
    """The legend right of the axes (``gap`` in axes widths), where it cannot cover a line."""
    ax.legend(loc="upper left", bbox_to_anchor=(gap, 1.0), fontsize="small", borderaxespad=0.0)


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
    fig, ax = plt.subplots(figsize=(9, 5))
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
    _legend_outside(ax)
    return _save(fig, plt, path)


def throughput_chart(sweeps: dict[str, Sequence[tuple[int, float]]], path: str | Path,
                     title: str = "Training throughput vs sequence length") -> Path:
    """Tokens/s of a training step against sequence length, one line per variant (log-2 x axis)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9, 5))
    for label, points in sweeps.items():
        if points:
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=label)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("sequence length")
    ax.set_ylabel("tokens/s")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    _legend_outside(ax)
    return _save(fig, plt, path)


def _save(fig, plt, path: str | Path) -> Path:  # type: ignore[no-untyped-def]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")  # "tight" keeps the legend outside the axes
    plt.close(fig)
    return path
