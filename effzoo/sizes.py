"""One parser for model-size strings ("0.5B" == "0.5b" == "500M"; MoE "0.5Bx8")."""
from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import ConfigError

_NAMED = ("tiny", "small")
_PATTERN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmb])?\s*(?:x\s*(\d+))?\s*$", re.IGNORECASE)
_SCALE = {"k": 1e3, "m": 1e6, "b": 1e9, None: 1.0}


@dataclass(frozen=True)
class SizeSpec:
    """A parsed size: the canonical dense size name and an expert count (1 = dense)."""

    name: str
    experts: int = 1

    def __str__(self) -> str:
        return self.name if self.experts == 1 else f"{self.name}x{self.experts}"


def canonical_count(n_params: float) -> str:
    """500e6 -> '0.5B', 1.5e9 -> '1.5B', 125e6 -> '125M'."""
    if n_params >= 5e8:
        return f"{n_params / 1e9:g}B"
    return f"{n_params / 1e6:g}M"


def parse_size(size: str | SizeSpec) -> SizeSpec:
    """Normalise a size string. Raises ConfigError on anything unparsable (an expert count below 1 too)."""
    if isinstance(size, SizeSpec):
        return size
    parsed = _parse(size)
    if parsed.experts < 1:
        raise ConfigError(f"size {size!r} has {parsed.experts} experts: the expert count must be at least 1, e.g. '0.5Bx8'")
    return parsed


def _parse(size: str) -> SizeSpec:
    text = str(size).strip()
    base, _, experts = text.lower().partition("x")
    if base in _NAMED:
        if experts and not experts.isdigit():
            raise ConfigError(f"cannot parse size {size!r}: expert count must be a whole number, e.g. 'tinyx8'")
        return SizeSpec(base, int(experts) if experts else 1)
    match = _PATTERN.match(text)
    if not match:
        raise ConfigError(
            f"cannot parse size {size!r}: use e.g. 'tiny', '0.5B', '500M', '1.5B', '3B' or MoE '0.5Bx8'"
        )
    value, unit, experts = match.groups()
    unit = unit.lower() if unit else None
    if unit is None:
        raise ConfigError(f"cannot parse size {size!r}: add a unit (M or B), e.g. '0.5B'")
    return SizeSpec(canonical_count(float(value) * _SCALE[unit]), int(experts) if experts else 1)
