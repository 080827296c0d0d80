"""The experiment groups of the EfficientLLM paper, as lists of (method, variant, size, overrides)."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from ..errors import UnknownNameError


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
    """A group: its methods and the sizes it runs at by default."""

    name: str
    methods: tuple[tuple[str, str, dict[str, Any]], ...]
    default_sizes: tuple[str, ...]

    def entries(self, sizes: list[str] | None = None) -> list[Entry]:
        sizes = list(sizes or self.default_sizes)
        return [Entry(self.name, method, variant, size, dict(overrides))
                for size in sizes for method, variant, overrides in self.methods]


class MoESuite(Suite):
    """Dense baselines against 8-expert top-2 MoE: for each size S, ``Dense S`` and ``MoE Sx8``."""

    def entries(self, sizes: list[str] | None = None) -> list[Entry]:
        if sizes is None:  # the paper's table: dense 1.5B / 3B against 0.5B×8 / 1.5B×8
            pairs = [("Dense", "gqa", "1.5B"), ("Dense", "gqa", "3B"), ("MoE", "moe", "0.5Bx8"), ("MoE", "moe", "1.5Bx8")]
            return [Entry(self.name, m, v, s) for m, v, s in pairs]
        out = []
        for size in sizes:
            out.append(Entry(self.name, "Dense", "gqa", size))
            out.append(Entry(self.name, "MoE", "moe", f"{size}x8"))
        return out


SUITES: dict[str, Suite] = {
    "attention": Suite("attention", (("MQA", "mqa", {}), ("GQA", "gqa", {}), ("MLA", "mla", {}), ("NSA", "nsa", {})),
                       ("0.5B", "1.5B", "3B")),
    "position": Suite("position", (
        ("RoPE", "gqa", {}), ("Absolute", "gqa", {"position": "absolute"}),
        ("Learnable Absolute", "gqa", {"position": "learned"}), ("Relative", "gqa", {"position": "relative"}),
        ("None", "gqa", {"position": "none"}), ("ALiBi", "gqa", {"position": "alibi"}),
    ), ("1.5B",)),
    "moe": MoESuite("moe", (), ()),
    "attention-free": Suite("attention-free", (
        ("Qwen2.5", "gqa", {}), ("Mamba", "mamba", {}), ("Pythia", "pythia", {}), ("RWKV", "rwkv", {}),
    ), ("0.5B", "1.5B", "3B")),
}


def resolve_suites(name: str) -> list[Suite]:
    """'all' or one group name -> suites (unknown names suggest close matches)."""
    if name == "all":
        return list(SUITES.values())
    if name not in SUITES:
        raise UnknownNameError("benchmark suite", name, [*SUITES, "all"])
    return [SUITES[name]]


def suite_entries(name: str, sizes: list[str] | None = None, quick: bool = False) -> list[Entry]:
    """All entries of the named suite(s); ``quick`` runs every entry at the tiny size.

    Entries of different groups that train the same model (GQA appears in every group) share one run.
    """
    entries = [e for suite in resolve_suites(name) for e in suite.entries(["tiny"] if quick else sizes)]
    unique: dict[tuple[str, str], Entry] = {}
    for entry in entries:
        unique.setdefault((entry.group, entry.run_id), entry)
    return list(unique.values())
