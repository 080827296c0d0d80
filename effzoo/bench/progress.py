"""Progress of a suite: variants done and left with an ETA from the measured speed, and the running
variants' steps. tqdm bars on a terminal (the suite, one per running variant); a plain line every
``interval_s`` seconds otherwise (logs, CI); nothing when quiet."""
from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from statistics import fmean
from typing import Any, TextIO


def format_duration(seconds: float) -> str:
    """``75`` -> ``1m15s``, ``3725`` -> ``1h02m05s``."""
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m{secs:02d}s"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def choose_mode(stream: TextIO, quiet: bool) -> str:
    """'off' when quiet, 'bar' on a terminal with tqdm installed, else 'plain'."""
    if quiet:
        return "off"
    import importlib.util

    isatty = getattr(stream, "isatty", lambda: False)()
    return "bar" if isatty and importlib.util.find_spec("tqdm") is not None else "plain"


@dataclass
class _Running:
    """A variant in flight: its counter, steps, and when it started / finished training."""

    index: int
    steps: int
    total_steps: int
    started: float
    train_end: float = 0.0
    last_line: float = 0.0
    bar: Any = None


class SuiteProgress:
    """Reports a suite of ``total`` variants, ``workers`` of them at a time; the runner calls begin / step /
    end for each variant (``name`` picks the variant when several are in flight)."""

    def __init__(self, total: int, *, mode: str = "plain", stream: TextIO | None = None, interval_s: float = 15.0,
                 clock: Callable[[], float] = time.monotonic, workers: int = 1) -> None:
        self.total, self.mode, self.interval_s, self.clock = total, mode, interval_s, clock
        self.workers = max(1, workers)
        self.stream = stream if stream is not None else sys.stdout
        self.done = 0
        self.durations: list[float] = []  # seconds of each variant run in this session
        self.measure_times: list[float] = []  # seconds after the last training step (decode, sweep)
        self.running: dict[str, _Running] = {}
        self._overall: Any = None
        self._free_bars: list[Any] = []
        if mode == "bar":
            from tqdm import tqdm

            self._overall = tqdm(total=total, desc="suite", unit="variant", position=0, file=self.stream,
                                 bar_format="{desc}: {n_fmt}/{total_fmt} variants |{bar}|")
            self._free_bars = [tqdm(total=1, desc="", unit="step", position=1 + i, leave=False, file=self.stream)
                               for i in range(self.workers)]
            self._all_bars = [self._overall, *self._free_bars]

    # -- what the runner reports --------------------------------------------------------------------
    def begin(self, index: int, name: str, total_steps: int) -> None:
        now = self.clock()
        run = self.running[name] = _Running(index, 0, max(1, total_steps), now, last_line=now)
        if self._overall is not None:
            run.bar = self._free_bars.pop(0)
            run.bar.reset(total=run.total_steps)
            run.bar.set_description(f"[{index}/{self.total}] {name}")
            self._refresh()
        elif self.mode == "plain":
            self._print(f"[{index}/{self.total}] {name}: started | {self._counts()} | ETA {self._eta_text()}")

    def _pick(self, name: str | None) -> tuple[str, _Running]:
        name = name if name is not None else next(reversed(self.running))
        return name, self.running[name]

    def step(self, steps: int, name: str | None = None) -> None:
        """A variant (the latest begun when ``name`` is None) finished ``steps`` training steps (the rest is
        measuring)."""
        name, run = self._pick(name)
        steps = min(steps, run.total_steps)
        now = self.clock()
        if steps == run.total_steps and run.steps < steps:
            run.train_end = now
        if run.bar is not None and steps != run.steps:
            run.bar.update(steps - run.steps)
        run.steps = steps
        if self._overall is not None:
            self._refresh()
        elif self.mode == "plain" and now - run.last_line >= self.interval_s:
            run.last_line = now
            phase = "measuring decode and throughput" if steps >= run.total_steps else \
                f"step {steps}/{run.total_steps}"
            self._print(f"  {name}: {phase} | {self._counts()} | elapsed {format_duration(now - run.started)}"
                        f" | ETA {self._eta_text()}")

    def end(self, message: str, *, ran: bool = True, name: str | None = None) -> None:
        """A variant is done (``ran`` False when an earlier result was reused: it never began)."""
        now = self.clock()
        run = self.running.pop(name if name is not None else next(reversed(self.running))) \
            if ran and self.running else None
        if run is not None:
            self.durations.append(now - run.started)
            if run.train_end:
                self.measure_times.append(now - run.train_end)
            if run.bar is not None:
                self._free_bars.append(run.bar)
        self.done += 1
        if self._overall is not None:
            self._overall.update(1)
            self._refresh()
            self._overall.write(message, file=self.stream)
        elif self.mode == "plain":
            self._print(f"{message} | {self._counts()} | ETA {self._eta_text()}")

    def close(self) -> None:
        if self._overall is not None:
            for bar in reversed(self._all_bars):
                bar.close()

    # -- the estimate -------------------------------------------------------------------------------
    def _expected(self, run: _Running, now: float) -> float | None:
        """A running variant's whole duration, from its step rate and the measured measuring time."""
        if not run.steps:
            return None
        train_s = (run.train_end or now) - run.started
        measure = fmean(self.measure_times) if self.measure_times else 0.0
        return train_s / run.steps * run.total_steps + measure

    def eta_s(self) -> float | None:
        """Seconds left: the running variants' rest from their step rates, the others at the mean measured
        time, shared among the ``workers``."""
        left = self.total - self.done
        if left <= 0:
            return 0.0
        now = self.clock()
        expected = {name: self._expected(run, now) for name, run in self.running.items()}
        known = [e for e in expected.values() if e is not None]
        per_variant = fmean(self.durations) if self.durations else (fmean(known) if known else None)
        if per_variant is None:
            return None
        in_flight = sum(max(0.0, (e if e is not None else per_variant) - (now - self.running[n].started))
                        for n, e in expected.items())
        return (in_flight + per_variant * (left - len(self.running))) / min(self.workers, left)

    def _eta_text(self) -> str:
        eta = self.eta_s()
        return "estimating" if eta is None else format_duration(eta)

    def _counts(self) -> str:
        return f"{self.done}/{self.total} variants done, {self.total - self.done} left"

    def _refresh(self) -> None:
        self._overall.set_description_str(f"suite, ETA {self._eta_text()}", refresh=True)

    def _print(self, line: str) -> None:
        print(f"effzoo bench: {line}", file=self.stream, flush=True)
