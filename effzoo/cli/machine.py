"""The CPU cores this process may really use, and a torch thread count that does not oversubscribe them.

On a shared machine, OpenMP threads that wait for each other on cores other processes keep busy lose
far more than they gain: with 2 cores and a load average of 9.5, a 512x512 fp32 matmul ran at a median
2.9 GFLOP/s on 2 threads and 9.7 GFLOP/s on 1 (docs/quickstart.md, "effzoo doctor").
"""
from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path

THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")


def available_cpus(cgroup_cpu_max: Path = CGROUP_CPU_MAX) -> int:
    """Cores this process may use: its CPU affinity, capped by a cgroup v2 CPU quota (containers)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    try:
        quota, period = cgroup_cpu_max.read_text().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cores)


@dataclass(frozen=True)
class ThreadPlan:
    """What effzoo would run with: cores available, other processes' load, and the thread count."""

    cores: int
    load: float
    current: int
    threads: int
    pinned_by: str | None  # the environment variable that fixes the count, if any

    @property
    def oversubscribed(self) -> bool:
        return self.current > self.threads


def plan_threads(current: int, cores: int, load: float, environ: dict[str, str] | None = None) -> ThreadPlan:
    """Threads = the cores that are available and idle (at least 1), unless the environment pins them.

    ``load`` is the 1-minute load average of the other processes; ``current`` torch's thread count.
    """
    environ = os.environ if environ is None else environ
    pinned_by = next((name for name in THREAD_VARIABLES if environ.get(name)), None)
    if pinned_by is not None:
        return ThreadPlan(cores, load, current, current, pinned_by)
    idle = max(1, cores - math.floor(load + 0.5))
    return ThreadPlan(cores, load, current, min(current, cores, idle), None)


def fit_threads(announce: bool = True) -> ThreadPlan:
    """Lower torch's intra-op threads to the idle available cores (the ``effzoo`` command calls this)."""
    import torch

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    plan = plan_threads(torch.get_num_threads(), available_cpus(), load)
    if plan.oversubscribed:
        torch.set_num_threads(plan.threads)
        if announce:
            print(f"effzoo: {plan.cores} cores available, load {plan.load:.1f}: using {plan.threads} torch "
                  f"thread(s) instead of {plan.current} (set OMP_NUM_THREADS to choose)", file=sys.stderr)
    return plan
