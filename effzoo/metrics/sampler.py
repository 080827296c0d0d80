"""A background thread that samples device memory, utilisation and power at a fixed interval.

Readings are time-weighted (each sample stands for the time since the previous one), so AMU, PCU
and AEC are true time averages even when the interval jitters. The thread records how long its own
sampling took, so the cost (``overhead_fraction``) is reported rather than assumed.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from ..backends.base import BackendAdapter, PowerMeter, PowerReading


@dataclass
class SampleSummary:
    """Time averages over the sampled window of one device."""

    duration_s: float
    samples: int
    memory_avg_bytes: float | None
    memory_max_bytes: float | None
    utilization_avg: float | None
    power_avg_w: float | None
    energy_j: float | None
    energy_source: str
    overhead_s: float

    @property
    def overhead_fraction(self) -> float:
        return self.overhead_s / self.duration_s if self.duration_s > 0 else 0.0


class _TimeAverage:
    def __init__(self) -> None:
        self.weighted, self.time, self.maximum = 0.0, 0.0, None

    def add(self, value: float | None, dt: float) -> None:
        if value is None or dt <= 0:
            return
        self.weighted += value * dt
        self.time += dt
        self.maximum = value if self.maximum is None else max(self.maximum, value)

    @property
    def mean(self) -> float | None:
        return self.weighted / self.time if self.time > 0 else None


class DeviceSampler:
    """Samples ``adapter``'s device every ``interval`` seconds between ``start()`` and ``stop()``."""

    def __init__(self, adapter: BackendAdapter, interval: float = 1.0, meter: PowerMeter | None = None) -> None:
        self.adapter, self.interval = adapter, interval
        self.meter = meter if meter is not None else adapter.power_meter()
        self._memory, self._util, self._power = _TimeAverage(), _TimeAverage(), _TimeAverage()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._samples, self._overhead = 0, 0.0
        self._first: PowerReading | None = None
        self._last: PowerReading | None = None
        self._start_time = self._last_time = 0.0

    def start(self) -> "DeviceSampler":
        self._start_time = self._last_time = time.perf_counter()
        self._first = self._last = self.meter.read()
        self.adapter.utilization()  # prime the CPU backend's delta
        self._thread = threading.Thread(target=self._run, name="effzoo-metrics-sampler", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def sample(self) -> None:
        """Take one reading (called by the thread; public so tests can drive it)."""
        began = time.perf_counter()
        dt = began - self._last_time
        self._last_time = began
        self._memory.add(float(self.adapter.memory_in_use()), dt)
        self._util.add(self.adapter.utilization(), dt)
        reading = self.meter.read()
        self._power.add(reading.power_w, dt)
        if reading.energy_j is not None:
            self._last = reading
        self._samples += 1
        self._overhead += time.perf_counter() - began

    def stop(self) -> SampleSummary:
        """Stop the thread, take a last reading, and summarise."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.sample()
        duration = time.perf_counter() - self._start_time
        energy, source = None, "none"
        first, last = self._first, self._last
        if first is not None and last is not None and first.energy_j is not None and last.energy_j is not None:
            energy, source = last.energy_j - first.energy_j, f"{self.meter.source} energy counter"
        elif self._power.mean is not None:
            energy, source = self._power.mean * self._power.time, f"{self.meter.source} sampled power"
        self.meter.close()
        return SampleSummary(
            duration_s=duration, samples=self._samples, memory_avg_bytes=self._memory.mean,
            memory_max_bytes=self._memory.maximum, utilization_avg=self._util.mean,
            power_avg_w=(energy / duration if energy is not None and duration > 0 else None),
            energy_j=energy, energy_source=source, overhead_s=self._overhead,
        )
