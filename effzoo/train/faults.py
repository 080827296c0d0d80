"""Crash points for fault tests: with ``EFFZOO_FAULT=POINT:N`` the process SIGKILLs itself the N-th time it
reaches ``fault_point(POINT)`` (``POINT:N,POINT2:M`` for several). Unset, a point costs one dict lookup."""
from __future__ import annotations

import os
import signal

ENV = "EFFZOO_FAULT"
_hits: dict[str, int] = {}


def _plan() -> dict[str, int]:
    plan = {}
    for item in filter(None, os.environ.get(ENV, "").split(",")):
        point, _, count = item.partition(":")
        plan[point.strip()] = int(count or 1)
    return plan


def fault_point(name: str) -> None:
    """Kill this process here when ``EFFZOO_FAULT`` asks for it (a real SIGKILL: no cleanup runs)."""
    if ENV not in os.environ:
        return
    wanted = _plan().get(name)
    if wanted is None:
        return
    _hits[name] = _hits.get(name, 0) + 1
    if _hits[name] == wanted:
        os.kill(os.getpid(), signal.SIGKILL)
