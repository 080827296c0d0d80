"""Errors that tell the user what was wrong, what exists, and what to do."""
from __future__ import annotations

import difflib
from collections.abc import Iterable


def close_matches(name: str, candidates: Iterable[str], n: int = 3) -> list[str]:
    """Names in ``candidates`` that look like ``name`` (case-insensitive), best first."""
    lowered = {c.lower(): c for c in candidates}
    hits = difflib.get_close_matches(name.lower(), list(lowered), n=n, cutoff=0.5)
    return [lowered[h] for h in hits]


class EffzooError(Exception):
    """Base class of effzoo's own errors."""


class UnknownNameError(KeyError, EffzooError):
    """A variant/component name that is not registered; suggests close names."""

    def __init__(self, kind: str, name: str, available: Iterable[str], plugins: Iterable[str] = ()):
        self.kind, self.name = kind, name
        self.available = sorted(available)
        self.suggestions = close_matches(name, self.available)
        parts = [f"unknown {kind} {name!r}."]
        if self.suggestions:
            parts.append(f"Did you mean: {', '.join(self.suggestions)}?")
        parts.append(f"Available: {', '.join(self.available) or '(none)'}.")
        loaded = list(plugins)
        if loaded:
            parts.append(f"Loaded plugins: {', '.join(loaded)} (see `effzoo plugins`).")
        super().__init__(" ".join(parts))

    def __str__(self) -> str:  # KeyError would repr() the message
        return self.args[0]


class ConfigError(ValueError, EffzooError):
    """A configuration key or value that is not valid."""


def unknown_keys_error(what: str, bad: Iterable[str], valid: Iterable[str]) -> ConfigError:
    """A ConfigError naming the bad keys, close matches and every valid key."""
    valid = sorted(valid)
    lines = []
    for key in sorted(bad):
        hint = close_matches(key, valid)
        lines.append(f"{key!r}" + (f" (did you mean {', '.join(repr(h) for h in hint)}?)" if hint else ""))
    return ConfigError(f"unknown {what}: {'; '.join(lines)}. Valid keys: {', '.join(valid)}.")


class PluginError(EffzooError):
    """A plugin failed to load or registered something invalid (raised in strict mode)."""
