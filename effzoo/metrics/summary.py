"""The end-of-run summary ``metrics.json`` (keys documented in docs/metrics.md)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from statistics import fmean
from typing import Any

from ..atomic import write_json
from .flops import mfu
from .sampler import SampleSummary

SUMMARY_NAME = "metrics.json"
GB = 1e9


@dataclass
class RunCounters:
    """What the loop counted in this session (the first step is excluded from timing)."""

    steps: int = 0
    tokens: int = 0
    samples: int = 0
    timed_steps: int = 0
    timed_tokens: int = 0
    timed_samples: int = 0
    step_times: list[float] = field(default_factory=list)
    comm_times: list[float] = field(default_factory=list)
    skipped_steps: int = 0
    last_loss: float | None = None
    val_loss: float | None = None

    def add_step(self, dt: float, tokens: int, samples: int, comm_s: float | None, timed: bool) -> None:
        self.steps += 1
        self.tokens += tokens
        self.samples += samples
        if timed:
            self.timed_steps += 1
            self.timed_tokens += tokens
            self.timed_samples += samples
            self.step_times.append(dt)
            if comm_s is not None:
                self.comm_times.append(comm_s)


def perplexity_of(loss: float | None) -> float | None:
    """exp(loss); infinite where that overflows a float (a diverged run), None without a loss."""
    if loss is None:
        return None
    try:
        return math.exp(loss)
    except OverflowError:
        return math.inf


def _mean(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return fmean(present) if present else None


def summarize(*, counters: RunCounters, samples: list[SampleSummary], peak_memory: list[int], run: dict[str, Any],
              params: int, flops_per_token: float, peak_flops: float | None, peak_flops_source: str,
              world_size: int, wall_s: float, previous_wall_s: float = 0.0) -> dict[str, Any]:
    """Combine the loop's counters with every rank's sampler summary into the EfficientLLM metrics."""
    train_time = sum(counters.step_times)
    tokens_per_s = counters.timed_tokens / train_time if train_time > 0 else None
    samples_per_s = counters.timed_samples / train_time if train_time > 0 else None
    al = train_time / counters.timed_steps if counters.timed_steps else None
    comm = fmean(counters.comm_times) if counters.comm_times else (0.0 if world_size == 1 else None)
    memory = [s.memory_avg_bytes / GB if s.memory_avg_bytes is not None else None for s in samples]
    power = [s.power_avg_w for s in samples]
    utilization = [s.utilization_avg for s in samples]
    energy = [s.energy_j for s in samples]
    total_wall = previous_wall_s + wall_s
    return {
        **run,
        "params": params,
        "world_size": world_size,
        "devices": world_size,
        "steps": counters.steps,
        "tokens": counters.tokens,
        "samples": counters.samples,
        "timed_steps": counters.timed_steps,
        "timed_tokens": counters.timed_tokens,
        "train_time_s": train_time,
        "wall_s": wall_s,
        "total_wall_s": total_wall,
        "tokens_per_s": tokens_per_s,
        "samples_per_s": samples_per_s,
        "flops_per_token": flops_per_token,
        "peak_flops_per_device": peak_flops,
        "peak_flops_source": peak_flops_source,
        "mfu": mfu(tokens_per_s, flops_per_token, peak_flops, world_size) if tokens_per_s else None,
        "amu_gb": _mean(memory),
        "amu_gb_per_device": memory,
        "peak_memory_gb": max(peak_memory) / GB if peak_memory else None,
        "peak_memory_gb_per_device": [p / GB for p in peak_memory],
        "pcu": _mean(utilization),
        "pcu_per_device": utilization,
        "al_s": al,
        "al_compute_s": al - comm if al is not None and comm is not None else None,
        "al_comm_s": comm,
        "tt": tokens_per_s / params if tokens_per_s else None,
        "st": samples_per_s / params if samples_per_s else None,
        "aec_w": _mean(power),
        "aec_w_per_device": power,
        "energy_j": sum(energy) if all(e is not None for e in energy) and energy else None,
        "energy_source": samples[0].energy_source if samples else "none",
        "gpu_hours": total_wall * world_size / 3600.0,
        "final_loss": counters.last_loss,
        "val_loss": counters.val_loss,
        "ppl": perplexity_of(counters.val_loss),
        "skipped_steps": counters.skipped_steps,
        "sampler_samples": sum(s.samples for s in samples),
        "sampler_overhead": max((s.overhead_fraction for s in samples), default=0.0),
    }


def write_summary(out: Path, summary: dict[str, Any]) -> Path:
    """Write ``OUT/metrics.json`` atomically (temporary file + rename)."""
    return write_json(out / SUMMARY_NAME, summary)
