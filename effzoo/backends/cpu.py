"""The CPU backend: fp32 by default, process RSS as memory, process CPU time as utilisation."""
from __future__ import annotations

import functools
import os
import time
from pathlib import Path

import torch

from .base import BackendAdapter, NoPowerMeter, PowerMeter, PowerReading

RAPL_ENERGY = Path("/sys/class/powercap/intel-rapl:0/energy_uj")


def _rss_bytes() -> int:
    """Resident set size of this process (Linux /proc; 0 elsewhere)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return 0
    return pages * os.sysconf("SC_PAGE_SIZE")


@functools.lru_cache(maxsize=8)
def measured_matmul_flops(dtype: torch.dtype, threads: int) -> tuple[float, str]:
    """The CPU peak MFU is measured against: the best of many square matmuls on ``threads`` threads
    (the same measurement ``effzoo bench`` records), once per process."""
    from ..bench.speed import matmul_peak_flops

    flops, how = matmul_peak_flops(torch.device("cpu"), dtype)
    return flops, f"{how}, {threads} thread{'s' * (threads != 1)}"


class RaplPowerMeter(PowerMeter):
    """Package energy of CPU socket 0 from Intel RAPL (needs read permission on powercap)."""

    source = "rapl"

    def read(self) -> PowerReading:
        try:
            return PowerReading(energy_j=int(RAPL_ENERGY.read_text()) / 1e6)
        except (OSError, ValueError):
            return PowerReading()


class CpuBackend(BackendAdapter):
    name = "cpu"
    dist_backend = "gloo"
    compile_supported = True
    default_seq_len = 256  # keeps `effzoo train gqa --size tiny --steps 20` to seconds on a laptop

    def __init__(self, index: int = 0, peak_tflops: float | None = None) -> None:
        super().__init__(index, peak_tflops)
        self._last_cpu = (time.perf_counter(), time.process_time())

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def device_name(self) -> str:
        return f"CPU ({torch.get_num_threads()} threads)"

    def default_dtype(self) -> str:
        return "fp32"

    def memory_in_use(self) -> int:
        return _rss_bytes()

    def peak_memory(self) -> int:
        """Peak resident set size of the process (Linux reports ru_maxrss in KiB)."""
        import resource

        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024

    def utilization(self) -> float | None:
        """Process CPU time over wall time since the last call, divided by the thread count."""
        wall, cpu = time.perf_counter(), time.process_time()
        last_wall, last_cpu = self._last_cpu
        self._last_cpu = (wall, cpu)
        if wall - last_wall <= 0:
            return None
        return min(1.0, (cpu - last_cpu) / (wall - last_wall) / max(1, torch.get_num_threads()))

    def power_meter(self) -> PowerMeter:
        try:
            RAPL_ENERGY.read_text()
        except OSError:
            return NoPowerMeter()
        return RaplPowerMeter()

    def _table_peak(self, dtype: torch.dtype) -> tuple[float | None, str]:
        return measured_matmul_flops(dtype if dtype != torch.float16 else torch.float32, torch.get_num_threads())
