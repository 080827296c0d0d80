"""Progress for long commands (train, data tokenize, eval): a tqdm bar on a terminal, a plain line every
``interval_s`` seconds otherwise (logs, CI), nothing when quiet. Without tqdm the plain line is used."""
from __future__ import annotations

import contextlib
import importlib.util
import logging
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

from .logger import format_eta


def progress_mode(stream: TextIO, quiet: bool) -> str:
    """'off' when quiet, 'bar' on a terminal with tqdm installed, else 'plain'."""
    if quiet:
        return "off"
    isatty = getattr(stream, "isatty", lambda: False)()
    return "bar" if isatty and importlib.util.find_spec("tqdm") is not None else "plain"


def _amount(value: float, unit: str, scale: bool) -> str:
    if not scale:
        return f"{value:,.0f} {unit}"
    for prefix in ("", "k", "M", "G", "T"):
        if abs(value) < 1000 or prefix == "T":
            return f"{value:.1f} {prefix}{unit}" if prefix else f"{value:.0f} {unit}"
        value /= 1000
    raise AssertionError("unreachable")


class PlainProgress:
    """tqdm's ``update`` / ``set_postfix_str`` / ``close`` as a line every ``interval_s`` seconds:
    ``DESC: 12.0 MB / 48.0 MB (25%) | 1.5 MB/s | eta 0:00:24``; silent when ``enabled`` is False."""

    def __init__(self, total: float | None, *, desc: str, unit: str = "it", unit_scale: bool = False,
                 initial: float = 0, stream: TextIO | None = None, interval_s: float = 10.0, enabled: bool = True,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.total, self.desc, self.unit, self.unit_scale = total, desc, unit, unit_scale
        self.n = self.start_n = initial
        self.stream, self.interval_s, self.enabled, self.clock = stream or sys.stderr, interval_s, enabled, clock
        self.started = self.last = clock()
        self.postfix = ""

    def set_postfix_str(self, text: str, refresh: bool = False) -> None:
        self.postfix = text

    def update(self, n: float = 1) -> None:
        self.n += n
        now = self.clock()
        if now - self.last >= self.interval_s:
            self.last = now
            self._print(now)

    def line(self, now: float | None = None) -> str:
        now = self.clock() if now is None else now
        rate = (self.n - self.start_n) / max(now - self.started, 1e-9)
        parts = [f"{self.desc}: {_amount(self.n, self.unit, self.unit_scale)}"]
        if self.total:
            parts[0] += f" / {_amount(self.total, self.unit, self.unit_scale)} ({100 * self.n / self.total:.0f}%)"
        if self.postfix:
            parts.append(self.postfix)
        parts.append(f"{_amount(rate, self.unit, self.unit_scale)}/s")
        if self.total and rate > 0:
            parts.append(f"eta {format_eta((self.total - self.n) / rate)}")
        return " | ".join(parts)

    def _print(self, now: float) -> None:
        if self.enabled:
            print(self.line(now), file=self.stream, flush=True)

    def close(self) -> None:
        if self.enabled and self.n > self.start_n:
            self._print(self.clock())
        self.enabled = False


def make_progress(total: float | None, *, desc: str, unit: str = "it", unit_scale: bool = False, initial: float = 0,
                  quiet: bool = False, stream: TextIO | None = None, interval_s: float = 10.0) -> Any:
    """A tqdm bar on a terminal, else a ``PlainProgress`` (silent when ``quiet``); both take ``update(n)``,
    ``set_postfix_str(text)`` and ``close()``."""
    stream = stream or sys.stderr
    if progress_mode(stream, quiet) == "bar":
        from tqdm import tqdm

        return tqdm(total=total, desc=desc, unit=unit, unit_scale=unit_scale, initial=initial, file=stream,
                    dynamic_ncols=True)
    return PlainProgress(total, desc=desc, unit=unit, unit_scale=unit_scale, initial=initial, stream=stream,
                         interval_s=interval_s, enabled=not quiet)


class StepBar:
    """The training bar (step, loss, tokens/s, ETA) on a terminal; nothing otherwise, where the trainer's
    progress line every ``--log-every`` steps is the plain form. While the bar is shown, ``logger``'s lines
    are printed above it instead of through it."""

    def __init__(self, total_steps: int, start_step: int, *, quiet: bool, stream: TextIO | None = None,
                 logger: logging.Logger | None = None) -> None:
        stream = stream or sys.stdout
        self._bar, self._routing = None, contextlib.ExitStack()
        if progress_mode(stream, quiet) == "bar":
            from tqdm import tqdm
            from tqdm.contrib.logging import logging_redirect_tqdm

            self._bar = tqdm(total=total_steps, initial=start_step, desc="train", unit="step", file=stream,
                             dynamic_ncols=True)
            if logger is not None:
                self._routing.enter_context(logging_redirect_tqdm(loggers=[logger]))

    @property
    def active(self) -> bool:
        return self._bar is not None

    def update(self, record: dict[str, Any]) -> None:
        if self._bar is not None:
            self._bar.set_postfix_str(f"loss {record['loss']:.4f}, {record['tokens_per_s']:,.0f} tok/s", refresh=False)
            self._bar.update(1)

    def close(self) -> None:
        self._routing.close()
        if self._bar is not None:
            self._bar.close()
            self._bar = None
