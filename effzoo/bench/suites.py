"""The experiment groups of the EfficientLLM paper, as lists of (method, variant, size, overrides).

The groups and their rows are declared by the plugins that own the variants (``register.add_suite``,
``register.add_suite_method``); this module only orders and expands them.
"""
from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..errors import UnknownNameError
from ..registry import REGISTRY


@dataclass(frozen=True)
class Entry:
    """One row of a table: a display name, the variant to build, its size and config overrides."""

    group: str
    method: str
    variant: str
    size: str
    overrides: dict[str, Any] = field(default_factory=dict)

    @property
    def run_id(self) -> str:
        """A filesystem-safe name of what is trained: entries that train the same model share a run."""
        parts = [self.variant, self.size.lower()] + [f"{k}-{v}" for k, v in sorted(self.overrides.items())]
        return re.sub(r"[^a-z0-9.=-]+", "-", "_".join(parts).lower())


@dataclass(frozen=True)
class Suite:
    """A group: its methods (in table order), the sizes it runs at by default, and an optional pairing
    that replaces the methods-times-sizes grid (the MoE group: dense S against MoE Sx8)."""

    name: str
    methods: tuple[tuple[str, str, dict[str, Any]], ...]
    default_sizes: tuple[str, ...]
    pairing: Callable[[list[str] | None], list[tuple[str, str, str]]] | None = None

    def entries(self, sizes: list[str] | None = None) -> list[Entry]:
        if self.pairing is not None:
            return [Entry(self.name, method, variant, size) for method, variant, size in self.pairing(sizes)]
        sizes = list(sizes or self.default_sizes)
        return [Entry(self.name, method, variant, size, dict(overrides))
                for size in sizes for method, variant, overrides in self.methods]


def suites() -> dict[str, Suite]:
    """The groups the plugins declared (``register.add_suite`` / ``add_suite_method``), in table order."""
    registry = REGISTRY.ensure_loaded()
    out = {}
    for spec in sorted(registry.suites.values(), key=lambda s: (s.order, s.name)):
        rows = sorted((r for r in registry.suite_rows if r.suite == spec.name), key=lambda r: r.order)
        methods = tuple((r.method, r.variant, dict(r.overrides)) for r in rows if r.variant in registry.variants)
        out[spec.name] = Suite(spec.name, methods, spec.default_sizes, spec.pairing)
    return out


def __getattr__(name: str) -> Any:
    if name == "SUITES":  # computed from the registry when asked for, so importing this module loads nothing
        return suites()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def resolve_suites(name: str) -> list[Suite]:
    """'all' or one group name -> suites (unknown names suggest close matches)."""
    table = suites()
    if name == "all":
        return list(table.values())
    if name not in table:
        raise UnknownNameError("benchmark suite", name, [*table, "recall", "all"])  # recall: effzoo.bench.recall
    return [table[name]]


def suite_entries(name: str, sizes: list[str] | None = None, quick: bool = False) -> list[Entry]:
    """All entries of the named suite(s); ``quick`` runs every entry at the tiny size.

    Entries of different groups that train the same model (GQA appears in every group) share one run.
    """
    entries = [e for suite in resolve_suites(name) for e in suite.entries(["tiny"] if quick else sizes)]
    unique: dict[tuple[str, str], Entry] = {}
    for entry in entries:
        unique.setdefault((entry.group, entry.run_id), entry)
    return list(unique.values())
