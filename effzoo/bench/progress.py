"""Progress of a suite: variants done and left with an ETA from the measured speed, and the current
variant's steps. Two tqdm bars on a terminal; a plain line every ``interval_s`` seconds otherwise (logs,
CI); nothing when quiet."""
from __future__ import annotations

import sys
import time
from collections.abc import Callable
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


class SuiteProgress:
    """Reports a suite of ``total`` variants; the runner calls begin / step / end for each variant."""

    def __init__(self, total: int, *, mode: str = "plain", stream: TextIO | None = None, interval_s: float = 15.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.total, self.mode, self.interval_s, self.clock = total, mode, interval_s, clock
        self.stream = stream if stream is not None else sys.stdout
        self.done = 0
        self.durations: list[float] = []  # seconds of each variant run in this session
        self.measure_times: list[float] = []  # seconds after the last training step (decode, sweep)
        self.name, self.steps, self.total_steps = "", 0, 0
        self.started = self.train_end = self.last_line = 0.0
        self._bars: tuple[Any, Any] | None = None
        if mode == "bar":
            from tqdm import tqdm

            overall = tqdm(total=total, desc="suite", unit="variant", position=0, file=self.stream,
                           bar_format="{desc}: {n_fmt}/{total_fmt} variants |{bar}|")
            current = tqdm(total=1, desc="", unit="step", position=1, leave=False, file=self.stream)
            self._bars = (overall, current)

    # -- what the runner reports --------------------------------------------------------------------
    def begin(self, index: int, name: str, total_steps: int) -> None:
        self.name, self.steps, self.total_steps = name, 0, max(1, total_steps)
        self.started = self.last_line = self.clock()
        self.train_end = 0.0
        if self._bars:
            current = self._bars[1]
            current.reset(total=self.total_steps)
            current.set_description(f"[{index}/{self.total}] {name}")
            self._refresh()
        elif self.mode == "plain":
            self._print(f"[{index}/{self.total}] {name}: started | {self._counts()} | ETA {self._eta_text()}")

    def step(self, steps: int) -> None:
        """The current variant finished ``steps`` training steps (the rest is measuring)."""
        steps = min(steps, self.total_steps)
        if steps == self.total_steps and self.steps < steps:
            self.train_end = self.clock()
        if self._bars and steps != self.steps:
            self._bars[1].update(steps - self.steps)
        self.steps = steps
        now = self.clock()
        if self._bars:
            self._refresh()
        elif self.mode == "plain" and now - self.last_line >= self.interval_s:
            self.last_line = now
            phase = "measuring decode and throughput" if steps >= self.total_steps else \
                f"step {steps}/{self.total_steps}"
            self._print(f"  {self.name}: {phase} | {self._counts()} | elapsed {format_duration(now - self.started)}"
                        f" | ETA {self._eta_text()}")

    def end(self, message: str, *, ran: bool = True) -> None:
        """The current variant is done (``ran`` False when an earlier result was reused)."""
        now = self.clock()
        if ran:
            self.durations.append(now - self.started)
            if self.train_end:
                self.measure_times.append(now - self.train_end)
        self.done += 1
        self.name = ""
        if self._bars:
            self._bars[0].update(1)
            self._refresh()
            self._bars[0].write(message, file=self.stream)
        elif self.mode == "plain":
            self._print(f"{message} | {self._counts()} | ETA {self._eta_text()}")

    def close(self) -> None:
        if self._bars:
            for bar in reversed(self._bars):
                bar.close()

    # -- the estimate -------------------------------------------------------------------------------
    def eta_s(self) -> float | None:
        """Seconds left: the current variant's rest from its step rate, the others at the mean measured time."""
        left = self.total - self.done
        if left <= 0:
            return 0.0
        now = self.clock()
        elapsed = now - self.started if self.name else 0.0
        current = None
        if self.name and self.steps:
            train_s = (self.train_end or now) - self.started
            measure = fmean(self.measure_times) if self.measure_times else 0.0
            current = train_s / self.steps * self.total_steps + measure
        per_variant = fmean(self.durations) if self.durations else current
        if per_variant is None:
            return None
        in_flight = max(0.0, (current if current is not None else per_variant) - elapsed) if self.name else 0.0
        return in_flight + per_variant * (left - (1 if self.name else 0))

    def _eta_text(self) -> str:
        eta = self.eta_s()
        return "estimating" if eta is None else format_duration(eta)

    def _counts(self) -> str:
        return f"{self.done}/{self.total} variants done, {self.total - self.done} left"

    def _refresh(self) -> None:
        assert self._bars is not None
        self._bars[0].set_description_str(f"suite, ETA {self._eta_text()}", refresh=True)

    def _print(self, line: str) -> None:
        print(f"effzoo bench: {line}", file=self.stream, flush=True)
